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

/// What makes `plan` a sandbox that may not start (both `start` and `preflight` check
/// it, before anything is made): state that exists for its id, or a cgroups path another
/// sandbox uses.
pub(super) fn refuse_taken(plan: &SandboxPlan, state_dir: &Path) -> Result<(), SandboxError> {
    let file = SandboxState::file(state_dir, &plan.sandbox_id);
    if file.exists() {
        return Err(SandboxError::AlreadyExists {
            sandbox_id: plan.sandbox_id.clone(),
            state_file: file,
            state_dir: state_dir.to_path_buf(),
        });
    }
    refuse_shared_path(plan, state_dir)
}

/// Refuses a sandbox cgroups path that another sandbox uses (the rule of
/// docs/design.md, "One sandbox per cgroup"):
/// (a) another state file in `state_dir` records the same sandbox cgroup (any driver);
/// (b) with the cgroupfs driver, the sandbox cgroup exists and it or a cgroup below it
///     holds a process (`cgroup.procs` non-empty in any hierarchy; this very process
///     counts, which is how a second in-process sandbox shows).
///
/// An existing cgroup without processes (a leftover) stays adoptable. With the systemd
/// driver only (a) applies: a unit cannot tell which sandbox its processes belong to.
pub(super) fn refuse_shared_path(plan: &SandboxPlan, state_dir: &Path) -> Result<(), SandboxError> {
    let want = &plan.sandbox.parsed;
    let in_use = |other: Option<String>, holder: String| SandboxError::PathInUse {
        sandbox_id: plan.sandbox_id.clone(),
        cgroups_path: want.relative(),
        other_sandbox: other,
        holder,
    };
    let mounts = plan.layout.mount_points();
    // What a state file that records this cgroup must contain, as JSON writes it: the
    // cgroupfs path, or the systemd unit (its cgroup path is derived, not stored).
    let needle = serde_json::to_string(&match want.unit() {
        Some(u) => u.unit.clone(),
        None => want.relative(),
    })
    .unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir(state_dir) {
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let Some(id) = f
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.') && *n != plan.sandbox_id)
            else {
                continue;
            };
            // Cheap first: a state file that does not name the path (as JSON writes it)
            // cannot record it; the state directory holds every sandbox of the host.
            match std::fs::read_to_string(&f) {
                Ok(text) if text.contains(needle.as_str()) => {}
                _ => continue,
            }
            // A file that is not a sandbox's state (or one this host cannot trust) says
            // nothing about the path; `cleanup` reports it when asked for that id.
            let state = match SandboxState::load(state_dir, id, &mounts) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(file = %f.display(), error = %e, "state file skipped in the shared-path check");
                    continue;
                }
            };
            if state.sandbox.path.driver() == want.driver()
                && state.sandbox.path.relative() == want.relative()
            {
                return Err(in_use(
                    Some(state.sandbox_id.clone()),
                    format!(
                        "sandbox {} records it in {} (if that sandbox is gone: host-cgroups cleanup --sandbox-id {} --state-dir {})",
                        state.sandbox_id,
                        f.display(),
                        state.sandbox_id,
                        state_dir.display()
                    ),
                ));
            }
        }
    }
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
