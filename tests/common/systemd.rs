//! Helpers of the tests that need a real systemd (PID 1, the sd-* test hosts): whether
//! this host has one, a unique slice for one test, and what `systemctl` lists.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use host_cgroups::host::CgroupLayout;
use host_cgroups::path::{CgroupsPath, SystemdUnit};

use super::skip::skip;
use super::{mounts, CgroupGuard};

/// Whether systemd is PID 1 here (the sd-* test hosts).
pub fn systemd_host() -> bool {
    Path::new("/run/systemd/system").is_dir()
        && std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// True on a systemd host; elsewhere records that `test` is skipped and returns false.
pub fn needs_systemd(test: &str) -> bool {
    if systemd_host() {
        return true;
    }
    skip(test, "systemd is not PID 1 on this host");
    false
}

/// A unique nested slice `hcg<hex>-pods.slice` (so `hcg<hex>.slice` above it); stops the
/// top slice (and so every unit below it) and resets the failed units of its tag on drop.
pub struct SliceGuard {
    /// `hcg<hex>`
    pub tag: String,
    /// `hcg<hex>-pods.slice`
    pub slice: String,
    /// `hcg<hex>.slice`, its parent.
    pub top: String,
    /// Removes cgroupfs leftovers below the top slice (v1 cpuset/freezer).
    _cg: CgroupGuard,
}

impl SliceGuard {
    pub fn new() -> Self {
        let tag = format!("hcg{:08x}", rand::random::<u32>());
        SliceGuard {
            slice: format!("{tag}-pods.slice"),
            top: format!("{tag}.slice"),
            _cg: CgroupGuard::new(&format!("{tag}.slice")),
            tag,
        }
    }

    /// The systemd cgroups path of sandbox `id` in this slice: `<slice>:kata:<id>`.
    pub fn path(&self, id: &str) -> String {
        format!("{}:kata:{id}", self.slice)
    }

    /// Scope directories below the top slice in every hierarchy.
    pub fn scope_dirs_left(&self, layout: &CgroupLayout) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for m in mounts(layout) {
            let mut stack = vec![m.join(&self.top)];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        let p = e.path();
                        if p.to_string_lossy().ends_with(".scope") {
                            out.push(p.clone());
                        }
                        stack.push(p);
                    }
                }
            }
        }
        out
    }
}

impl Drop for SliceGuard {
    fn drop(&mut self) {
        if systemd_host() {
            let _ = Command::new("systemctl").args(["stop", &self.top]).status();
            let _ = Command::new("systemctl")
                .args(["reset-failed", &format!("{}*", self.tag)])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The systemd unit of cgroups path `path` for sandbox `id` (panics if it is not a
/// systemd path).
pub fn unit_of(path: &str, id: &str) -> SystemdUnit {
    match CgroupsPath::parse(path, id).expect("parse") {
        CgroupsPath::Systemd(u) => u,
        other => panic!("not a systemd path: {other:?}"),
    }
}

/// Whether `systemctl list-units --all` still lists `unit`.
pub fn listed(unit: &str) -> bool {
    let out = Command::new("systemctl")
        .args(["list-units", "--all", "--no-legend", "--plain"])
        .output()
        .expect("systemctl list-units");
    String::from_utf8_lossy(&out.stdout).contains(unit)
}

/// Whether PID 1 answers on the system bus.
pub fn bus_answers() -> bool {
    Command::new("busctl")
        .args([
            "get-property",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "Version",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Restores the system bus on drop (a test stopped it), and waits (up to 120 s) until
/// systemd answers on it again.
pub struct BusRestorer;

impl Drop for BusRestorer {
    fn drop(&mut self) {
        // systemctl talks to PID 1 over its private socket, so it works without the bus.
        let _ = Command::new("systemctl")
            .args(["start", "dbus.socket", "dbus.service"])
            .status();
        let start = Instant::now();
        while !bus_answers() && start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
