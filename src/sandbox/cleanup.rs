//! Cleanup after a crash: exactly what a run made, from its state file (or from a
//! cgroups path when the state is gone), sorted into removed, absent and kept.

use super::*;

/// What `cleanup` found and did, item by item.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanupReport {
    /// The sandbox id.
    pub sandbox_id: String,
    /// Where the list came from: the state file, or the cgroups path given.
    pub source: String,
    /// Cgroups that existed and are now gone (relative paths or units).
    pub removed: Vec<String>,
    /// Cgroups that were not there.
    pub absent: Vec<String>,
    /// Cgroups that stay, each with the reason.
    pub kept: Vec<String>,
    /// The state file removed, if one was used.
    pub state_removed: Option<PathBuf>,
    /// Errors; cleanup goes on past each.
    pub errors: Vec<String>,
}

impl Sandbox {
    /// Removes what a crashed run of `sandbox_id` left, from its state file in
    /// `state_dir`: exactly the directories (and units) that run created, deepest
    /// first, then the state file.
    ///
    /// Called from the very process the state names (after [`Sandbox::keep`], say), it
    /// is not refused: it acts as a teardown without the VMM's stop. Before each
    /// cgroupfs directory is removed this process's threads in it are moved out, to the
    /// hierarchy roots when this process was inside the sandbox cgroup when `cleanup`
    /// read its own cgroups (its cgroups from before the sandbox are not recorded).
    /// It must not be used on a sandbox this process still runs (a live [`Sandbox`] of
    /// the same id): its VMM's threads would be moved out from under it, and a KVM VM's
    /// worker thread makes the removal fail as busy; use [`Sandbox::teardown`] there.
    /// Another process's live VMM in the sandbox cgroup is refused
    /// ([`SandboxError::Running`]).
    ///
    /// # Errors
    /// [`SandboxError::NoState`] when there is no state file;
    /// [`SandboxError::Running`] when the run's VMM process is still alive in the
    /// sandbox cgroup; [`SandboxError::State`] for a state that cannot be trusted.
    /// Failures to remove single cgroups are listed in the report, not returned.
    pub fn cleanup(state_dir: &Path, sandbox_id: &str) -> Result<CleanupReport, SandboxError> {
        validate_sandbox_id(sandbox_id)?;
        let layout = CgroupLayout::detect()?;
        let file = SandboxState::file(state_dir, sandbox_id);
        if !file.exists() {
            return Err(SandboxError::NoState {
                sandbox_id: sandbox_id.to_string(),
                state_dir: state_dir.to_path_buf(),
                state_file: file,
            });
        }
        let state = SandboxState::load(state_dir, sandbox_id, &layout.mount_points())?;
        refuse_running(&state, &layout)?;
        let mut report = CleanupReport {
            sandbox_id: sandbox_id.to_string(),
            source: file.display().to_string(),
            ..Default::default()
        };
        // The nested layout's vCPU child first: its parent cannot go while it exists.
        if state.vcpus.is_some() {
            destroy_child(&layout, &state.sandbox.path, &mut report);
        }
        let mut targets = vec![(state.sandbox.path.clone(), state.sandbox.created.clone())];
        if let Some(o) = &state.overhead {
            targets.push((o.path.clone(), o.created.clone()));
        }
        destroy_all(&layout, targets, &mut report);
        if report.errors.is_empty() {
            match SandboxState::remove(state_dir, sandbox_id) {
                Ok(()) => {
                    report.state_removed = Some(file);
                    // The path is free again: its claim goes after the state.
                    super::claim::Claim::remove_for(state_dir, sandbox_id, &state.sandbox.path);
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        Ok(report)
    }

    /// Removes a sandbox cgroup (and its overhead cgroup) by path, without state.
    /// Only the leaf cgroups are removed: without a state file nothing says which
    /// parents the run created, so they are reported as `kept`.
    ///
    /// When a state file for `sandbox_id` exists in `state_dir`, it is used instead
    /// (parents included), provided it names the same cgroups path.
    ///
    /// # Errors
    /// A malformed path or id; a state file for the id that names another path;
    /// [`SandboxError::Running`] as for [`Sandbox::cleanup`].
    pub fn cleanup_path(
        cgroups_path: &str,
        sandbox_id: &str,
        state_dir: &Path,
    ) -> Result<CleanupReport, SandboxError> {
        validate_sandbox_id(sandbox_id)?;
        let parsed = CgroupsPath::parse(cgroups_path, sandbox_id)?;
        let file = SandboxState::file(state_dir, sandbox_id);
        if file.exists() {
            let layout = CgroupLayout::detect()?;
            let state = SandboxState::load(state_dir, sandbox_id, &layout.mount_points())?;
            if state.sandbox.path != parsed {
                return Err(SandboxError::State(StateError::Untrusted {
                    path: file,
                    reason: format!(
                        "it records cgroups path {:?}, not {:?}; clean up with --state-dir instead",
                        state.sandbox.path.raw(),
                        cgroups_path
                    ),
                }));
            }
            return Self::cleanup(state_dir, sandbox_id);
        }
        let layout = CgroupLayout::detect()?;
        let mut report = CleanupReport {
            sandbox_id: sandbox_id.to_string(),
            source: format!("cgroups path {cgroups_path:?}"),
            ..Default::default()
        };
        // A nested layout's vCPU child, if there is one (only an empty one is removed).
        destroy_child(&layout, &parsed, &mut report);
        let mut targets = vec![(parsed.clone(), Vec::new())];
        for p in parsed.overhead_candidates(sandbox_id)? {
            targets.push((p, Vec::new()));
        }
        destroy_all(&layout, targets, &mut report);
        // Parents that exist stay: without a state file nothing says this run made them.
        let mut up = parsed.relative();
        while let Some((parent, _)) = up.rsplit_once('/') {
            up = parent.to_string();
            let exists = layout.mount_points().iter().any(|m| m.join(&up).is_dir());
            if exists {
                report.kept.push(format!(
                    "{up}: parents are kept when no state file says this run created them"
                ));
            }
        }
        if report.errors.is_empty() {
            // A claim the lost run left for this path (a crash before its state file).
            super::claim::Claim::remove_for(state_dir, sandbox_id, &parsed);
        }
        Ok(report)
    }
}

/// Removes the nested layout's vCPU child of the sandbox at `path` when it exists.
pub(super) fn destroy_child(layout: &CgroupLayout, path: &CgroupsPath, report: &mut CleanupReport) {
    let mut c = manager::VcpuChild::adopt(layout, &path.relative(), Vec::new());
    if !c.exists() {
        return;
    }
    let name = c.relative().to_string();
    match c.destroy() {
        Ok(()) => report.removed.push(name),
        Err(e) => report.errors.push(format!("{name}: {e}")),
    }
}

/// Destroys each target, sorting it into removed / absent / kept / errors.
///
/// Every directory the target names (its own, in each hierarchy, and the parents the
/// run created) is looked at before and after: `removed` lists the cgroups (relative
/// to the hierarchy roots) that existed and are gone, `absent` a target none of whose
/// directories existed, `kept` a created parent that is still there.
pub(super) fn destroy_all(
    layout: &CgroupLayout,
    targets: Vec<(CgroupsPath, Vec<PathBuf>)>,
    report: &mut CleanupReport,
) {
    let mounts = layout.mount_points();
    for (path, created) in targets {
        let name = path.relative();
        let mut dirs: Vec<PathBuf> = created.clone();
        let mut m = match manager::build(&path, layout, created) {
            Ok(m) => m,
            Err(e) => {
                report.errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        let state_less = dirs.is_empty();
        dirs.extend(m.paths().into_values());
        if state_less && m.exists() {
            // Without a record of the parents the run made, every existing parent below
            // the hierarchy roots is watched: the driver removes the ones sandboxes made
            // (marked when made), and the report then says so; the rest are `kept`.
            let own: Vec<PathBuf> = dirs.clone();
            for d in own {
                let root = mounts
                    .iter()
                    .filter(|r| d.starts_with(r))
                    .max_by_key(|r| r.components().count());
                let Some(root) = root else { continue };
                let mut up = d.parent();
                while let Some(p) = up.filter(|p| p.starts_with(root) && *p != root.as_path()) {
                    dirs.push(p.to_path_buf());
                    up = p.parent();
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        let before: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
        let existed = m.exists();
        let result = m.destroy();
        let (gone, stay) = gone_and_standing(&before, &mounts);
        match result {
            Ok(()) if existed || !gone.is_empty() => report.removed.extend(gone),
            Ok(()) => report.absent.push(name),
            Err(e) => {
                report.removed.extend(gone);
                report.errors.push(format!("{name}: {e}"));
                continue;
            }
        }
        for r in stay {
            if !report.kept.iter().any(|k| k.starts_with(&format!("{r}:"))) {
                report
                    .kept
                    .push(format!("{r}: still holds other cgroups or tasks"));
            }
        }
    }
    crate::metrics::METRICS
        .cgroups_removed
        .add(report.removed.len());
}
