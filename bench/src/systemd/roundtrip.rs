//! One round trip to systemd, three ways: start a transient scope holding a process
//! until that process is in the unit's cgroup, set a CPU quota, stop the unit.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchError;
use host_cgroups::host::{parse_proc_cgroup, CgroupLayout, CgroupVersion};
use host_cgroups::manager;
use host_cgroups::path::CgroupsPath;

/// One implementation of the round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// This project's systemd driver, through the `Manager` trait.
    Project,
    /// `systemd-run --scope`, `systemctl set-property --runtime`, `systemctl stop`.
    SystemdRun,
    /// `cgroups-rs`'s `SystemdManager`.
    CgroupsRs,
}

impl Impl {
    /// Every implementation, in the order of the table.
    pub const ALL: [Impl; 3] = [Impl::Project, Impl::SystemdRun, Impl::CgroupsRs];

    /// Its name in the results.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Project => "host-cgroups",
            Impl::SystemdRun => "systemd-run --scope",
            Impl::CgroupsRs => "cgroups-rs SystemdManager",
        }
    }
}

/// A `sleep` this bench started; killed (by its pid) and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn spawn(cmd: &mut Command) -> Result<Self, BenchError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Sleeper)
            .map_err(|e| BenchError::step("spawn sleep", e))
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `pid` is in the cgroup `relative` of the systemd-managed hierarchy.
fn wait_in_cgroup(pid: i32, relative: &str, version: CgroupVersion) -> Result<(), BenchError> {
    let key = match version {
        CgroupVersion::V1 => "name=systemd",
        CgroupVersion::V2 => "unified",
    };
    let want = format!("/{}", relative.trim_start_matches('/'));
    let start = Instant::now();
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|t| parse_proc_cgroup(&t))
            .map_err(|e| BenchError::step(format!("read /proc/{pid}/cgroup"), e))?;
        if now.get(key).is_some_and(|p| p == &want) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(BenchError::step(
                format!("process {pid} in {want}"),
                format!("still in {:?} after 10 s", now.get(key)),
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn sleep_cmd() -> Command {
    let mut c = Command::new("sleep");
    c.arg("300");
    c
}

fn systemctl(args: &[&str]) -> Result<(), BenchError> {
    let st = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| BenchError::step("run systemctl", e))?;
    if !st.success() {
        return Err(BenchError::step(
            format!("systemctl {}", args.join(" ")),
            st,
        ));
    }
    Ok(())
}

/// (start, set, stop) in µs.
pub type Steps = (f64, f64, f64);

/// One round trip of `which` for the scope `<slice>:hcgbench:<id>`.
pub fn once(
    which: Impl,
    layout: &CgroupLayout,
    slice: &str,
    id: &str,
    res: &oci_spec::runtime::LinuxResources,
) -> Result<Steps, BenchError> {
    let raw = format!("{slice}:hcgbench:{id}");
    let parsed = CgroupsPath::parse(&raw, id).map_err(|e| BenchError::step("cgroups path", e))?;
    let unit = parsed
        .unit()
        .map(|u| u.unit.clone())
        .ok_or_else(|| BenchError::step("cgroups path", "not a systemd path"))?;
    let rel = parsed.relative();
    let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
    let version = layout.version();
    match which {
        Impl::Project => {
            let child = Sleeper::spawn(&mut sleep_cmd())?;
            let t = Instant::now();
            let mut m = manager::build(&parsed, layout, Vec::new())
                .map_err(|e| BenchError::step("host-cgroups systemd driver", e))?;
            m.create()
                .map_err(|e| BenchError::step("host-cgroups create", e))?;
            m.add_proc(child.pid())
                .map_err(|e| BenchError::step("host-cgroups add_proc", e))?;
            wait_in_cgroup(child.pid(), &rel, version)?;
            let start = us(t);
            let t = Instant::now();
            // Validated in the timed round trip, as a runtime's entry point does.
            let checked = host_cgroups::resources::Checked::new(res.clone())
                .map_err(|e| BenchError::step("host-cgroups set", e))?;
            m.set(&checked)
                .map_err(|e| BenchError::step("host-cgroups set", e))?;
            let set = us(t);
            let t = Instant::now();
            let d = m.destroy();
            let stop = us(t);
            drop(child);
            d.map_err(|e| BenchError::step("host-cgroups destroy", e))?;
            Ok((start, set, stop))
        }
        Impl::SystemdRun => {
            let t = Instant::now();
            let mut cmd = Command::new("systemd-run");
            cmd.args(["--scope", "--quiet", "--collect"])
                .arg(format!("--unit={unit}"))
                .arg(format!("--slice={slice}"))
                .args(["sleep", "300"]);
            // systemd-run --scope puts itself in the scope, then execs the command.
            let child = Sleeper::spawn(&mut cmd)?;
            wait_in_cgroup(child.pid(), &rel, version)?;
            let start = us(t);
            let t = Instant::now();
            systemctl(&["set-property", "--runtime", &unit, "CPUQuota=50%"])?;
            let set = us(t);
            let t = Instant::now();
            let r = systemctl(&["stop", &unit]);
            let stop = us(t);
            drop(child);
            r?;
            Ok((start, set, stop))
        }
        Impl::CgroupsRs => {
            use cgroups_rs::manager::Manager as _;
            let child = Sleeper::spawn(&mut sleep_cmd())?;
            let t = Instant::now();
            let mut m = cgroups_rs::manager::SystemdManager::new(&raw)
                .map_err(|e| BenchError::step("cgroups-rs SystemdManager", e))?;
            m.add_proc(cgroups_rs::CgroupPid::from(child.pid() as u64))
                .map_err(|e| BenchError::step("cgroups-rs add_proc", e))?;
            wait_in_cgroup(child.pid(), &rel, version)?;
            let start = us(t);
            let t = Instant::now();
            m.set(res)
                .map_err(|e| BenchError::step("cgroups-rs set", e))?;
            let set = us(t);
            let t = Instant::now();
            let d = m.destroy();
            let stop = us(t);
            drop(child);
            d.map_err(|e| BenchError::step("cgroups-rs destroy", e))?;
            Ok((start, set, stop))
        }
    }
}
