//! `host-cgroups inspect`: where the threads of a process sit (`--pid`), or what a
//! sandbox left on the host (`--sandbox-id`): from its state file and the cgroup tree,
//! which cgroups exist, which processes and threads are in each, whether its VMM runs.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::{bad, print_json, runtime, CliError};
use host_cgroups::host::{
    task_cgroups, task_cpu_ns, thread_role, CgroupLayout, DirSet, ThreadInfo,
};
use host_cgroups::path::{validate_sandbox_id, CgroupsPath};
use host_cgroups::plan::CgroupPlan;
use host_cgroups::state::{SandboxState, StateError, DEFAULT_STATE_DIR};
use host_cgroups::Driver;

/// Arguments of `inspect`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["pid", "sandbox_id"])))]
pub struct InspectArgs {
    /// A process: every thread with its cgroups.
    #[arg(long, value_name = "PID")]
    pub pid: Option<i32>,
    /// A sandbox: its cgroups from the state file, what is in them, whether its VMM runs.
    #[arg(long, value_name = "ID")]
    pub sandbox_id: Option<String>,
    /// The state directory the sandbox's run used (with --sandbox-id).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR, requires = "sandbox_id")]
    pub state_dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Runs `inspect`.
pub fn inspect(args: &InspectArgs) -> Result<(), CliError> {
    match (&args.pid, &args.sandbox_id) {
        (Some(pid), _) => inspect_pid(*pid, args.json),
        (None, Some(id)) => inspect_sandbox(id, &args.state_dir, args.json),
        (None, None) => Err(bad("give --pid or --sandbox-id")),
    }
}

/// Gives every thread the role `-` unless the process is a sandbox VMM (it has vCPU
/// threads or this project's supervisor thread): the roles are read from thread names,
/// which mean nothing in another process.
pub fn roles_for_vmm_only(threads: &mut [ThreadInfo]) {
    let vmm = threads
        .iter()
        .any(|t| t.role == "vcpu" || t.role == "supervisor");
    if !vmm {
        for t in threads.iter_mut() {
            t.role = "-";
        }
    }
}

#[derive(Serialize)]
struct PidReport {
    version: &'static str,
    pid: i32,
    threads: Vec<ThreadInfo>,
}

fn inspect_pid(pid: i32, json: bool) -> Result<(), CliError> {
    if pid <= 0 {
        return Err(bad(format!("--pid {pid} is not a process id")));
    }
    let mut threads =
        host_cgroups::host::threads(pid).map_err(|e| bad(format!("process {pid}: {e}")))?;
    roles_for_vmm_only(&mut threads);
    if json {
        return print_json(&PidReport {
            version: super::VERSION,
            pid,
            threads,
        });
    }
    super::print_threads(&threads);
    Ok(())
}

/// A task found in a cgroup: the thread object every command prints, plus its process.
#[derive(Debug, Serialize)]
struct Task {
    /// Its process (thread group) id.
    pid: i32,
    /// tid, name, role (`vcpu`, `controller`, `kvm` or `vmm` for a thread of the
    /// sandbox's running VMM; `-` for any other process), cgroups, cpu_ns.
    #[serde(flatten)]
    thread: ThreadInfo,
}

/// One directory of a cgroup (one per hierarchy; v2 has one).
#[derive(Debug, Serialize)]
struct Directory {
    /// The controllers of the hierarchy (`unified` on v2).
    controllers: Vec<String>,
    /// The absolute directory.
    dir: PathBuf,
    /// Whether it exists now.
    exists: bool,
    /// Process ids in `cgroup.procs`.
    procs: Vec<i32>,
    /// Every thread (`tasks` on v1, `cgroup.threads` on v2).
    threads: Vec<Task>,
}

/// A directory the run created (a parent, or the cgroup itself), and whether it is still there.
#[derive(Debug, Serialize)]
struct Created {
    dir: PathBuf,
    exists: bool,
}

#[derive(Debug, Serialize)]
struct CgroupReport {
    /// `sandbox`, `overhead` or `vcpus` (the nested layout's vCPU child).
    role: &'static str,
    /// The cgroup, in the shape every command uses: {path, slice, unit, paths}.
    cgroup: CgroupPlan,
    /// Whether any of its directories exists.
    exists: bool,
    directories: Vec<Directory>,
    created: Vec<Created>,
}

#[derive(Debug, Serialize)]
struct Vmm {
    pid: i32,
    /// The process is alive and still in the sandbox cgroup (a reused pid elsewhere is not).
    running: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct SandboxReport {
    version: &'static str,
    sandbox_id: String,
    state_file: PathBuf,
    driver: host_cgroups::path::Driver,
    cgroup_version: u8,
    placement: host_cgroups::placement::Placement,
    /// `sandbox-only`, `sibling` or `nested`; `null` for a state file written before
    /// the layout was recorded.
    vcpu_layout: Option<host_cgroups::placement::VcpuLayout>,
    vmm: Vmm,
    cgroups: Vec<CgroupReport>,
}

fn read_ids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The thread group of task `tid` (`Tgid:` in `/proc/<tid>/status`).
fn tgid(tid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn comm(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Whether `pid` is alive and sits in `rel` (or below) in some hierarchy.
fn vmm_state(layout: &CgroupLayout, pid: i32, rel: &str) -> Vmm {
    if pid <= 0 {
        return Vmm {
            pid,
            running: false,
            detail: "no VMM pid recorded".into(),
        };
    }
    match layout.pid_in(pid, rel) {
        None => Vmm {
            pid,
            running: false,
            detail: format!("process {pid} is gone"),
        },
        Some(inside) => {
            if inside {
                Vmm {
                    pid,
                    running: true,
                    detail: format!(
                        "process {pid} ({}) is alive in the sandbox cgroup",
                        comm(pid)
                    ),
                }
            } else {
                Vmm {
                    pid,
                    running: false,
                    detail: format!(
                        "process {pid} ({}) is alive but not in the sandbox cgroup: another process reused the pid",
                        comm(pid)
                    ),
                }
            }
        }
    }
}

/// The sandbox or overhead cgroup at `parsed`, as its driver places it (the library's
/// directory map).
fn cgroup_of(parsed: &CgroupsPath, layout: &CgroupLayout) -> CgroupPlan {
    let path = parsed.relative();
    CgroupPlan {
        parsed: parsed.clone(),
        paths: layout.cgroup_dirs(&path, parsed.driver(), DirSet::Sandbox),
        path,
        slice: parsed.unit().map(|u| u.slice.clone()),
        unit: parsed.unit().map(|u| u.unit.clone()),
    }
}

/// The nested layout's vCPU child of the sandbox cgroup `sandbox`: a plain directory
/// below it in the vCPU hierarchies (no unit of its own, under either driver).
fn vcpus_child_of(sandbox: &CgroupsPath, layout: &CgroupLayout) -> CgroupPlan {
    let path = format!(
        "{}/{}",
        sandbox.relative(),
        host_cgroups::placement::VCPU_CHILD
    );
    CgroupPlan {
        parsed: sandbox.clone(),
        paths: layout.cgroup_dirs(&path, Driver::Cgroupfs, DirSet::VcpusChild),
        path,
        slice: None,
        unit: None,
    }
}

fn cgroup_report(
    role: &'static str,
    cgroup: CgroupPlan,
    created: &[PathBuf],
    layout: &CgroupLayout,
    vmm: &Vmm,
) -> Result<CgroupReport, CliError> {
    let paths = cgroup.paths.clone();
    // One directory per hierarchy: controllers sharing a mount share it.
    let mut dirs: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for (c, d) in &paths {
        match dirs.iter_mut().find(|(p, _)| p == d) {
            Some((_, cs)) => cs.push(c.name().to_string()),
            None => dirs.push((d.clone(), vec![c.name().to_string()])),
        }
    }
    let v2 = layout.version() == host_cgroups::host::CgroupVersion::V2;
    let directories: Vec<Directory> = dirs
        .into_iter()
        .map(|(dir, controllers)| {
            let exists = dir.is_dir();
            let procs = read_ids(&dir.join("cgroup.procs"));
            let tids = read_ids(&dir.join(if v2 { "cgroup.threads" } else { "tasks" }));
            let threads = tids
                .into_iter()
                .map(|tid| {
                    let pid = tgid(tid).unwrap_or(0);
                    let name = comm(tid);
                    let role = if vmm.running && pid == vmm.pid {
                        thread_role(&name)
                    } else {
                        "-"
                    };
                    let cgroups = task_cgroups(pid, tid).unwrap_or_default();
                    Task {
                        pid,
                        thread: ThreadInfo {
                            tid,
                            name,
                            role,
                            cgroups,
                            cpu_ns: task_cpu_ns(pid, tid).unwrap_or(0),
                        },
                    }
                })
                .collect();
            Directory {
                controllers,
                dir,
                exists,
                procs,
                threads,
            }
        })
        .collect();
    Ok(CgroupReport {
        role,
        exists: directories.iter().any(|d| d.exists),
        cgroup,
        directories,
        created: created
            .iter()
            .map(|d| Created {
                dir: d.clone(),
                exists: d.is_dir(),
            })
            .collect(),
    })
}

fn inspect_sandbox(id: &str, state_dir: &Path, json: bool) -> Result<(), CliError> {
    validate_sandbox_id(id).map_err(bad)?;
    let layout = CgroupLayout::detect().map_err(runtime)?;
    let file = SandboxState::file(state_dir, id);
    if !file.exists() {
        return Err(bad(format!(
            "no state for sandbox {id} in {} (searched {}); pass the directory the run used with --state-dir",
            state_dir.display(),
            file.display()
        )));
    }
    let state = SandboxState::load(state_dir, id, &layout.mount_points()).map_err(|e| match e {
        StateError::Untrusted { .. }
        | StateError::Corrupt { .. }
        | StateError::NewerFormat { .. } => bad(e),
        e => runtime(e),
    })?;
    let vmm = vmm_state(&layout, state.vmm_pid, &state.sandbox.path.relative());
    let mut cgroups = vec![cgroup_report(
        "sandbox",
        cgroup_of(&state.sandbox.path, &layout),
        &state.sandbox.created,
        &layout,
        &vmm,
    )?];
    // The vCPU threads of a nested sandbox are in its child, not in the sandbox cgroup.
    if let Some(v) = &state.vcpus {
        let child = vcpus_child_of(&state.sandbox.path, &layout);
        cgroups.push(cgroup_report("vcpus", child, &v.created, &layout, &vmm)?);
    }
    if let Some(o) = &state.overhead {
        let cgroup = cgroup_of(&o.path, &layout);
        cgroups.push(cgroup_report(
            "overhead", cgroup, &o.created, &layout, &vmm,
        )?);
    }
    let report = SandboxReport {
        version: super::VERSION,
        sandbox_id: id.to_string(),
        state_file: file,
        driver: state.driver,
        cgroup_version: state.cgroup_version.number(),
        placement: state.placement,
        vcpu_layout: state.vcpu_layout,
        vmm,
        cgroups,
    };
    if json {
        return print_json(&report);
    }
    let mounts = layout.mount_points();
    println!(
        "sandbox {}  driver {}  cgroup v{}  placement {}  layout {}  state {}",
        report.sandbox_id,
        report.driver,
        report.cgroup_version,
        report.placement,
        report
            .vcpu_layout
            .map_or_else(|| "-".to_string(), |l| l.to_string()),
        report.state_file.display()
    );
    println!(
        "vmm: pid {}: {} ({})",
        report.vmm.pid,
        if report.vmm.running {
            "running"
        } else {
            "not running"
        },
        report.vmm.detail
    );
    for c in &report.cgroups {
        println!(
            "{} cgroup {}: {}",
            c.role,
            c.cgroup.path,
            if c.exists { "exists" } else { "absent" }
        );
        if let (Some(s), Some(u)) = (&c.cgroup.slice, &c.cgroup.unit) {
            println!("  slice/unit: {s} / {u}");
        }
        for d in &c.directories {
            println!(
                "  {:<8} {} ({}; {} procs, {} threads)",
                if d.exists { "exists" } else { "absent" },
                d.dir.display(),
                d.controllers.join(","),
                d.procs.len(),
                d.threads.len()
            );
            for t in &d.threads {
                println!(
                    "    tid {:<8} pid {:<8} {:<16} {}",
                    t.thread.tid, t.pid, t.thread.name, t.thread.role
                );
            }
        }
        // The run's directories, by cgroup (one per hierarchy each).
        let mut by_rel: Vec<(String, usize, usize)> = Vec::new();
        for d in &c.created {
            let rel = mounts
                .iter()
                .filter_map(|m| d.dir.strip_prefix(m).ok())
                .map(|r| r.display().to_string())
                .min_by_key(|r| r.len())
                .unwrap_or_else(|| d.dir.display().to_string());
            match by_rel.iter_mut().find(|(r, _, _)| *r == rel) {
                Some((_, n, there)) => {
                    *n += 1;
                    *there += usize::from(d.exists);
                }
                None => by_rel.push((rel, 1, usize::from(d.exists))),
            }
        }
        for (rel, n, there) in by_rel {
            println!("  created by the run: {rel} ({there} of {n} directories still there)");
        }
    }
    Ok(())
}
