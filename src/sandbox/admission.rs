//! Admission: what keeps a sandbox from starting (its id or its cgroups path taken,
//! the host unable to do what the plan asks), checked before anything is made.

use super::*;

impl Sandbox {
    /// Runs, without changing the host, every check [`Sandbox::start`] runs before it
    /// creates anything for `plan` (the driver's resource checks: CPUs and memory nodes
    /// against the host and the nearest existing parent cgroup, values the host's files
    /// refuse), and lists the directories the drivers will use, which exist and which
    /// would be made. `host-cgroups resolve` shows it, so that `resolve` is the dry run
    /// of `run`.
    ///
    /// # Errors
    /// What `start` would refuse as bad input: state that exists for the id, a cgroups
    /// path another sandbox uses ([`SandboxError::PathInUse`]), resources the host refuses.
    pub fn preflight(plan: &SandboxPlan, opts: &SandboxOptions) -> Result<Preflight, SandboxError> {
        refuse_taken(plan, &opts.state_dir)?;
        Claim::check(&opts.state_dir, &plan.sandbox_id, &plan.sandbox.parsed)?;
        refuse_shared_path(plan)?;
        let sandbox = manager::build(&plan.sandbox.parsed, &plan.layout, Vec::new())?;
        if let Some(r) = &opts.sandbox_resources {
            let r = Checked::reuse_or_new(plan.resources.as_ref(), r.clone())
                .map_err(CgroupError::from)?;
            sandbox.check(&r)?;
        }
        let overhead = match &plan.overhead {
            Some(o) => Some(manager::build(&o.parsed, &plan.layout, Vec::new())?),
            None => None,
        };
        let mut out = Preflight {
            paths: sandbox.paths(),
            overhead_paths: overhead.as_ref().map(|o| o.paths()),
            ..Default::default()
        };
        for m in std::iter::once(&sandbox).chain(overhead.as_ref()) {
            let mut dirs: Vec<PathBuf> = m.paths().into_values().collect();
            dirs.extend(m.missing());
            dirs.sort();
            dirs.dedup();
            for d in dirs {
                if d.is_dir() {
                    out.existing.push(d);
                } else {
                    out.would_create.push(d);
                }
            }
        }
        if plan.driver == crate::cgroup::Driver::Systemd {
            let sd = crate::host::SystemdInfo::detect();
            if !sd.reachable {
                out.notes.push(format!(
                    "systemd is not reachable here (PID 1 systemd: {}, system bus: {}): run would fail",
                    sd.pid1,
                    std::path::Path::new(crate::host::SYSTEM_BUS_SOCKET).exists()
                ));
            }
        }
        Ok(out)
    }
}

/// Refuses to clean up a sandbox whose VMM process is alive and still in the
/// sandbox cgroup (a reused pid elsewhere does not count).
pub(super) fn refuse_running(
    state: &SandboxState,
    layout: &CgroupLayout,
) -> Result<(), SandboxError> {
    let pid = state.vmm_pid;
    if pid <= 0 || pid == std::process::id() as i32 {
        return Ok(());
    }
    if layout.pid_in(pid, &state.sandbox.path.relative()) == Some(true) {
        return Err(SandboxError::Running {
            sandbox_id: state.sandbox_id.clone(),
            pid,
        });
    }
    Ok(())
}

/// State that exists for `plan`'s sandbox id: a sandbox of that id ran and was not
/// cleaned up (both `start` and `preflight` check it, before anything is made).
pub(super) fn refuse_taken(plan: &SandboxPlan, state_dir: &Path) -> Result<(), SandboxError> {
    let file = SandboxState::file(state_dir, &plan.sandbox_id);
    if file.exists() {
        return Err(SandboxError::AlreadyExists {
            sandbox_id: plan.sandbox_id.clone(),
            state_file: file,
            state_dir: state_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Refuses a sandbox cgroup that already holds a process (the rule of docs/design.md,
/// "One sandbox per cgroup", beside the claim on the path, `claim.rs`): with the
/// cgroupfs driver, the sandbox cgroup exists and it or a cgroup below it holds a
/// process (`cgroup.procs` non-empty in any hierarchy; this very process counts, which
/// is how a second in-process sandbox shows) — a process no claim speaks for, such as
/// a sandbox made without this component.
///
/// An existing cgroup without processes (a leftover) stays adoptable. With the systemd
/// driver only the claim applies: a unit cannot tell which sandbox its processes
/// belong to.
pub(super) fn refuse_shared_path(plan: &SandboxPlan) -> Result<(), SandboxError> {
    let want = &plan.sandbox.parsed;
    let in_use = |other: Option<String>, holder: String| SandboxError::PathInUse {
        sandbox_id: plan.sandbox_id.clone(),
        cgroups_path: want.relative(),
        other_sandbox: other,
        holder,
    };
    if plan.driver != crate::cgroup::Driver::Cgroupfs {
        return Ok(());
    }
    let me = std::process::id() as i32;
    for dir in plan.sandbox.paths.values() {
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            let procs = d.join("cgroup.procs");
            let pids: Vec<i32> = std::fs::read_to_string(&procs)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if !pids.is_empty() {
                let ours = if pids.contains(&me) {
                    " (this process among them: a sandbox of this process is there)"
                } else {
                    ""
                };
                return Err(in_use(
                    None,
                    format!("{} holds pids {pids:?}{ours}", procs.display()),
                ));
            }
        }
    }
    Ok(())
}
