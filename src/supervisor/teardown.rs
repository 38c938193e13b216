//! Tearing down: the vCPU threads gone, the VMM moved home, the cgroups removed
//! (or kept for `cleanup`), the state file last.

use super::*;

impl Worker {
    /// Tears down (with `destroy`) and reports, for cgroupfs, every directory that
    /// existed before and is gone after, parents included.
    pub(super) fn teardown(&mut self, destroy: bool) -> TeardownReport {
        let watch = (destroy && self.sandbox.driver() == Driver::Cgroupfs).then(|| self.watched());
        let mut report = self.teardown_cgroups(destroy);
        // Nothing on disk to look at (no directory existed): the driver's own list.
        if let Some((own, all, mounts)) = watch.filter(|(_, all, _)| !all.is_empty()) {
            let (gone, _) = manager::gone_and_standing(&all, &mounts);
            let (_, stay) = manager::gone_and_standing(&own, &mounts);
            report.removed = gone;
            report.standing = stay
                .into_iter()
                .map(|r| format!("{r}: still holds other cgroups or tasks"))
                .collect();
        }
        report
    }

    /// The directories a cgroupfs teardown may remove, as they exist now: this sandbox's
    /// own (its cgroups and the parents it created) and, with them, every existing
    /// ancestor below a hierarchy root (a parent a sibling sandbox made goes with the
    /// last one out); and the hierarchy roots.
    pub(super) fn watched(&self) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
        let mut own: Vec<PathBuf> = Vec::new();
        let mut mounts: Vec<PathBuf> = Vec::new();
        for m in std::iter::once(&self.sandbox).chain(self.overhead.as_ref()) {
            let depth = m.relative().split('/').filter(|c| !c.is_empty()).count();
            for p in m.paths().into_values() {
                if let Some(root) = p.ancestors().nth(depth) {
                    mounts.push(root.to_path_buf());
                }
                own.push(p);
            }
            own.extend(m.created());
        }
        if let Some(c) = &self.child {
            own.extend(c.dirs().iter().cloned());
            own.extend(c.created());
        }
        mounts.sort();
        mounts.dedup();
        let mut all = own.clone();
        for d in &own {
            let Some(root) = mounts.iter().find(|r| d.starts_with(r)) else {
                continue;
            };
            all.extend(
                d.ancestors()
                    .skip(1)
                    .take_while(|a| *a != root.as_path() && a.starts_with(root))
                    .map(Path::to_path_buf),
            );
        }
        for v in [&mut own, &mut all] {
            v.sort();
            v.dedup();
            v.retain(|d| d.is_dir());
        }
        (own, all, mounts)
    }

    pub(super) fn teardown_cgroups(&mut self, destroy: bool) -> TeardownReport {
        let mut report = TeardownReport {
            kept: !destroy,
            ..Default::default()
        };
        if !destroy {
            return report;
        }
        let started = Instant::now();
        // The vCPU child first: its parent cannot go while it exists. A failure does not
        // stop the sandbox's removal (with systemd, stopping the scope removes the
        // delegated subtree, the child included); what is left is retried after it.
        if let Some(c) = self.child.as_mut() {
            match c.destroy() {
                Ok(()) => {
                    report.removed.push(c.relative().to_string());
                    if let Err(e) = failpoint::hit(Point::VcpusRemoved) {
                        report.errors.push(e.to_string());
                        return report;
                    }
                }
                Err(e) => warn!(error = %e, "vCPU child cgroup: retried after the sandbox cgroup"),
            }
        }
        for (name, m) in std::iter::once(("sandbox", &mut self.sandbox))
            .chain(self.overhead.as_mut().map(|o| ("overhead", o)))
        {
            match m.destroy() {
                Ok(()) => report.removed.push(m.relative().to_string()),
                Err(e) => report.errors.push(format!("{name} cgroup: {e}")),
            }
        }
        if let Some(c) = self.child.as_mut() {
            if c.exists() {
                match c.destroy() {
                    Ok(()) => report.removed.push(c.relative().to_string()),
                    Err(e) => report.errors.push(format!("vCPU child cgroup: {e}")),
                }
            }
        }
        if report.errors.is_empty() {
            if let Err(e) = failpoint::hit(Point::StateRemove) {
                report.errors.push(e.to_string());
                return report;
            }
            if let Some(dir) = &self.state_dir {
                if let Err(e) = SandboxState::remove(dir, &self.state.sandbox_id) {
                    report.errors.push(e.to_string());
                }
            }
        }
        debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "teardown"
        );
        report
    }
}
