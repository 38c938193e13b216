//! `host-cgroups check`: whether this host can run sandboxes, item by item, with a
//! verdict line and an exit code (0 it can, 1 it cannot), as `kata-runtime check` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::{print_json, runtime, CliError};
use host_cgroups::host::{CgroupLayout, Hierarchy, KvmInfo, SystemdInfo};

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print one JSON object (with the per-item verdicts) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One item's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Sandboxes run, with a limitation the detail names.
    Warn,
    /// Sandboxes cannot run here.
    Fail,
}

/// One checked item.
#[derive(Debug, Serialize)]
pub struct Item {
    /// `root`, `cgroups`, `cgroup-access`, `controllers`, `systemd` or `kvm`.
    pub name: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found, with the OS error when something failed.
    pub detail: String,
}

#[derive(Serialize)]
struct CheckReport {
    version: &'static str,
    /// `ok` when every item is ok or warn, else `fail`.
    verdict: Verdict,
    /// The names of the failing items.
    failed: Vec<&'static str>,
    items: Vec<Item>,
    hierarchy: Option<Hierarchy>,
    cgroup_version: Option<u8>,
    controllers: Vec<String>,
    mounts: BTreeMap<String, PathBuf>,
    unified: Option<PathBuf>,
    own_cgroups: BTreeMap<String, String>,
    systemd: SystemdInfo,
    kvm: KvmInfo,
    vcpu_backend: &'static str,
}

fn item(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Item {
    Item {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// Whether this process may write (create cgroups) in `dir`: `access(2)` with `W_OK`.
fn writable(dir: &Path) -> Result<(), std::io::Error> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Checks the host; prints the items and a verdict line; exits 1 when a sandbox cannot run.
pub fn check(args: &CheckArgs) -> Result<(), CliError> {
    let mut items = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    items.push(if euid == 0 {
        item("root", Verdict::Ok, "running as root")
    } else {
        item(
            "root",
            Verdict::Fail,
            format!(
                "not running as root (euid {euid}): creating cgroups and moving threads needs root"
            ),
        )
    });
    let layout = CgroupLayout::detect();
    match &layout {
        Ok(l) => {
            items.push(item(
                "cgroups",
                Verdict::Ok,
                format!(
                    "{} hierarchy; the drivers act on cgroup v{}",
                    hierarchy_name(l.hierarchy),
                    l.version().number()
                ),
            ));
            let dirs: Vec<PathBuf> = match l.version() {
                host_cgroups::host::CgroupVersion::V1 => {
                    l.v1_hierarchies().into_iter().map(|(m, _)| m).collect()
                }
                host_cgroups::host::CgroupVersion::V2 => l.unified.iter().cloned().collect(),
            };
            // Grouped by error: `Permission denied (os error 13) in /sys/fs/cgroup/cpu, …`.
            let mut by_error: Vec<(String, Vec<String>)> = Vec::new();
            for d in &dirs {
                if let Err(e) = writable(d) {
                    let e = e.to_string();
                    let d = d.display().to_string();
                    match by_error.iter_mut().find(|(k, _)| *k == e) {
                        Some((_, ds)) => ds.push(d),
                        None => by_error.push((e, vec![d])),
                    }
                }
            }
            let denied: Vec<String> = by_error
                .into_iter()
                .map(|(e, ds)| format!("{e} in {}", ds.join(", ")))
                .collect();
            items.push(if dirs.is_empty() {
                item(
                    "cgroup-access",
                    Verdict::Fail,
                    "no cgroup hierarchy to create cgroups in",
                )
            } else if denied.is_empty() {
                item(
                    "cgroup-access",
                    Verdict::Ok,
                    format!("{} hierarchies writable", dirs.len()),
                )
            } else {
                item(
                    "cgroup-access",
                    Verdict::Fail,
                    format!("cannot create cgroups: {}", denied.join("; ")),
                )
            });
            let have = l.controllers();
            let missing: Vec<&str> = ["cpu", "cpuset", "memory"]
                .into_iter()
                .filter(|c| !have.iter().any(|h| h == c))
                .collect();
            items.push(if missing.is_empty() {
                item("controllers", Verdict::Ok, have.join(" "))
            } else {
                item(
                    "controllers",
                    Verdict::Warn,
                    format!(
                        "{} (missing {}: resources for them cannot be applied)",
                        have.join(" "),
                        missing.join(", ")
                    ),
                )
            });
        }
        Err(e) => items.push(item("cgroups", Verdict::Fail, e.to_string())),
    }
    let systemd = host_cgroups::systemd_info();
    items.push(if systemd.reachable {
        item(
            "systemd",
            Verdict::Ok,
            match systemd.version {
                Some(v) => format!("systemd {v} is PID 1 and answers on D-Bus"),
                None => "systemd is PID 1 and answers on D-Bus".into(),
            },
        )
    } else if systemd.pid1 {
        item(
            "systemd",
            Verdict::Warn,
            format!(
                "systemd is PID 1 but {} does not answer: systemd cgroups paths (slice:prefix:name) fail",
                host_cgroups::host::SYSTEM_BUS_SOCKET
            ),
        )
    } else {
        item(
            "systemd",
            Verdict::Warn,
            "systemd is not PID 1: only cgroupfs cgroups paths can be used",
        )
    });
    let kvm = KvmInfo::detect();
    items.push(match (&kvm.api_version, &kvm.reason) {
        (Some(v), None) => item("kvm", Verdict::Ok, format!("/dev/kvm works (API version {v})")),
        (_, r) => item(
            "kvm",
            Verdict::Fail,
            format!(
                "{}; no VM can be created (`run` falls back to its thread vCPU backend, for testing only)",
                r.as_deref().unwrap_or("/dev/kvm unusable")
            ),
        ),
    });
    let failed: Vec<&'static str> = items
        .iter()
        .filter(|i| i.verdict == Verdict::Fail)
        .map(|i| i.name)
        .collect();
    let verdict = if failed.is_empty() {
        Verdict::Ok
    } else {
        Verdict::Fail
    };
    let l = layout.as_ref().ok();
    let report = CheckReport {
        version: super::VERSION,
        verdict,
        failed: failed.clone(),
        hierarchy: l.map(|l| l.hierarchy),
        cgroup_version: l.map(|l| l.version().number()),
        controllers: l.map(|l| l.controllers()).unwrap_or_default(),
        mounts: l.map(|l| l.mounts.clone()).unwrap_or_default(),
        unified: l.and_then(|l| l.unified.clone()),
        own_cgroups: l.map(|l| l.own.clone()).unwrap_or_default(),
        systemd,
        vcpu_backend: if kvm.available { "kvm" } else { "thread" },
        kvm,
        items,
    };
    if args.json {
        print_json(&report)?;
    } else {
        for i in &report.items {
            let v = match i.verdict {
                Verdict::Ok => "ok",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            println!("{v:<5} {:<14} {}", i.name, i.detail);
        }
        if let Some(l) = l {
            for (c, m) in &l.mounts {
                println!("      mount {c:<14} {}", m.display());
            }
            if let Some(u) = &l.unified {
                println!("      mount {:<14} {}", "(cgroup2)", u.display());
            }
        }
        if failed.is_empty() {
            println!("verdict: this host can run sandboxes");
        } else {
            println!(
                "verdict: this host cannot run sandboxes (failed: {})",
                failed.join(", ")
            );
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        let why: Vec<String> = report
            .items
            .iter()
            .filter(|i| i.verdict == Verdict::Fail)
            .map(|i| format!("{}: {}", i.name, i.detail))
            .collect();
        let e = runtime(format!(
            "this host cannot run sandboxes: {}",
            why.join("; ")
        ));
        // With --json the verdict and the items are the result on stdout.
        Err(if args.json { e.reported() } else { e })
    }
}

fn hierarchy_name(h: Hierarchy) -> &'static str {
    match h {
        Hierarchy::Legacy => "legacy",
        Hierarchy::Hybrid => "hybrid",
        Hierarchy::Unified => "unified",
    }
}
