//! Creating and removing the cgroup's directories in every hierarchy, by the rules
//! that bite real hosts: v1 `cpuset` parents filled before tasks can join, v2
//! controllers enabled at every level, parents that vanish under us (ENOENT, retried),
//! EBUSY for a moment after the last task leaves, and foreign processes never moved.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::io::{injected, io_err, own_threads, read_file, read_ids, write_file};
use super::lock::TreeLock;
use super::{count_migration_writes, marks, FsManager, Hier};
use crate::failpoint;
use crate::host::{CgroupVersion, V2_CONTROLLERS};
use crate::manager::CgroupError;
use std::io::ErrorKind;

/// How long `destroy` retries an `rmdir` that answers EBUSY.
const RMDIR_RETRY: Duration = Duration::from_secs(3);
/// How often creation restarts when a parent vanishes under it (ENOENT).
const CREATE_ATTEMPTS: usize = 10;

impl FsManager {
    /// Creates the cgroup in every hierarchy; on failure removes exactly what this call
    /// made, deepest first ([`crate::manager::Manager::create`]).
    pub(super) fn create_all(&mut self) -> Result<(), CgroupError> {
        // The lock keeps a parent from being removed while a cgroup is made below it; right
        // below the hierarchy roots there is no such parent (the roots are never removed).
        let _lock = self.has_parents().then(|| TreeLock::take(false));
        let mut made = Vec::new();
        let mut known = Vec::new();
        let mut result = Ok(());
        for h in &self.hiers {
            result = self.create_in(h, &mut made, &mut known);
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result {
            // Undo exactly what this call made, deepest first.
            for d in made.iter().rev() {
                match std::fs::remove_dir(d) {
                    Ok(()) => marks::remove(d),
                    Err(re) => {
                        warn!(dir = %d.display(), error = %re, "rollback could not remove cgroup")
                    }
                }
            }
            return Err(e);
        }
        for d in made {
            if !self.created.contains(&d) {
                self.created.push(d);
            }
        }
        self.initial = known.into_iter().collect();
        Ok(())
    }

    /// Removes the leaves, then the parents this manager (or a sibling sandbox, by its
    /// mark) made ([`crate::manager::Manager::destroy`]).
    pub(super) fn destroy_all(&mut self) -> Result<(), CgroupError> {
        for h in &mut self.hiers {
            h.tasks = None;
        }
        // Leaves first, in every hierarchy; refuse if a stranger is inside.
        let me = std::process::id() as i32;
        let mut own = None;
        for h in &self.hiers {
            self.remove_leaf(h, &h.dir(&self.relative), me, &mut own)?;
        }
        // A cgroup right below the hierarchy roots has no parent to remove (the roots are
        // never removed): then neither the lock nor the marks are needed.
        if !self.has_parents() {
            self.created.clear();
            self.initial.clear();
            return Ok(());
        }
        // Then the parents this manager made, deepest first, while no sibling is being created.
        let _lock = TreeLock::take(true);
        let mut parents: Vec<PathBuf> = self
            .created
            .iter()
            .filter(|d| !self.hiers.iter().any(|h| h.dir(&self.relative) == **d))
            .cloned()
            .collect();
        // And the parents a sibling sandbox made and left to the last one out.
        for h in &self.hiers {
            let leaf = h.dir(&self.relative);
            for a in leaf.ancestors().skip(1) {
                if a == h.mount || !a.starts_with(&h.mount) {
                    break;
                }
                if !parents.iter().any(|p| p == a) && marks::matches(a) {
                    parents.push(a.to_path_buf());
                }
            }
        }
        parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in parents {
            match std::fs::remove_dir(&p) {
                Ok(()) => {
                    debug!(dir = %p.display(), "removed parent cgroup");
                    marks::remove(&p);
                }
                // In use by another sandbox: not ours to force; its mark stays for the last one out.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOTEMPTY)) => {
                }
                // Already gone.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => marks::remove(&p),
                Err(e) => return Err(io_err("rmdir", &p, e)),
            }
        }
        self.created.clear();
        self.initial.clear();
        Ok(())
    }

    /// Every level of the cgroup's path that does not exist, in every hierarchy.
    pub(super) fn missing_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in &self.hiers {
            let mut dir = h.mount.clone();
            for comp in self.relative.split('/') {
                dir.push(comp);
                if !dir.exists() {
                    out.push(dir.clone());
                }
            }
        }
        out
    }

    /// Creates the cgroup in one hierarchy, level by level, recording what it made.
    /// Values known without reading for the leaf, when this call made it, go to `known`.
    fn create_in(
        &self,
        h: &Hier,
        made: &mut Vec<PathBuf>,
        known: &mut Vec<(PathBuf, String)>,
    ) -> Result<(), CgroupError> {
        let is_cpuset =
            self.version == CgroupVersion::V1 && h.controllers.iter().any(|c| c == "cpuset");
        'attempt: for attempt in 0..CREATE_ATTEMPTS {
            let mut dir = h.mount.clone();
            for comp in self.relative.split('/') {
                if self.version == CgroupVersion::V2 {
                    enable_subtree(&dir, &h.controllers)?;
                }
                let parent = dir.clone();
                dir.push(comp);
                let leaf = dir == h.dir(&self.relative);
                let mut just_made = false;
                match std::fs::create_dir(&dir) {
                    Ok(()) => {
                        just_made = true;
                        debug!(dir = %dir.display(), "created cgroup");
                        made.push(dir.clone());
                        if !leaf {
                            marks::add(&dir);
                        }
                        failpoint::hit(crate::failpoint::Point::FsMkdir)
                            .map_err(|e| injected(&dir, e))?;
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        if !dir.is_dir() {
                            return Err(io_err("mkdir (a file is in the way)", &dir, e));
                        }
                    }
                    // A parent removed by a concurrent destroy: start again from the top.
                    Err(e) if e.kind() == ErrorKind::NotFound && attempt + 1 < CREATE_ATTEMPTS => {
                        debug!(dir = %dir.display(), attempt, "parent vanished; retrying");
                        continue 'attempt;
                    }
                    Err(e) => return Err(io_err("mkdir", &dir, e)),
                }
                if is_cpuset {
                    let filled = fill_cpuset(&parent, &dir, just_made)?;
                    if leaf && just_made {
                        known.extend(filled);
                    }
                }
                if leaf && just_made && self.version == CgroupVersion::V1 {
                    known.extend(new_cgroup_values(&h.controllers, &dir));
                }
            }
            if self.version == CgroupVersion::V2 {
                // On a systemd host systemd owns the root's subtree_control and drops the
                // controllers none of its units needs (at daemon-reload, unit start and
                // stop). Once every level below enables one the kernel keeps it (EBUSY),
                // but if systemd dropped it between our writes a level lacks it: enable
                // again from the top, and fail naming it if it never holds.
                let has = read_file(&dir.join("cgroup.controllers"))?;
                let missing = h.controllers.iter().find(|c| {
                    V2_CONTROLLERS.contains(&c.as_str())
                        && !has.split_whitespace().any(|x| x == c.as_str())
                });
                if let Some(c) = missing {
                    if attempt + 1 < CREATE_ATTEMPTS {
                        debug!(dir = %dir.display(), controller = %c, attempt, "controller dropped above us; enabling again");
                        continue 'attempt;
                    }
                    return Err(CgroupError::NoController {
                        controller: c.clone(),
                        path: dir,
                    });
                }
            }
            return Ok(());
        }
        Ok(())
    }

    /// `rmdir` of a cgroup whose tasks are gone: `Ok(true)` removed, `Ok(false)` it
    /// was not there. EBUSY right after the last task left is retried for
    /// [`RMDIR_RETRY`], then `StillBusy`.
    pub(crate) fn rmdir_retry(path: &Path) -> Result<bool, CgroupError> {
        Self::rmdir_retry_with(path, || Ok(true))
    }

    /// [`FsManager::rmdir_retry`], asking `on_busy` at every EBUSY whether to go on:
    /// `Ok(true)` retry, `Ok(false)` stop (the cgroup is gone), an error ends it.
    fn rmdir_retry_with(
        path: &Path,
        mut on_busy: impl FnMut() -> Result<bool, CgroupError>,
    ) -> Result<bool, CgroupError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match std::fs::remove_dir(path) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    if !on_busy()? {
                        return Ok(false);
                    }
                    if start.elapsed() >= RMDIR_RETRY {
                        return Err(CgroupError::StillBusy {
                            path: path.into(),
                            waited_ms: start.elapsed().as_millis() as u64,
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(io_err("rmdir", path, e)),
            }
        }
    }

    /// Removes the leaf `dir` of hierarchy `h`, moving this process's own threads out
    /// first (home) and never a foreign one; a foreign process inside stops the removal
    /// (`Busy`, naming it).
    ///
    /// The first `cgroup.procs` read decides: it also tells that the cgroup is gone
    /// (ENOENT, nothing to do; no separate existence check), and when it lists only this
    /// process no second read is made before `rmdir`. A process that joins after that read
    /// is caught by the kernel itself: `rmdir` of a populated cgroup fails with EBUSY, and
    /// every EBUSY reads `cgroup.procs` again, so the joiner is named in `Busy` (never
    /// moved); a thread of ours born in the meantime is moved out and `rmdir` retried. An
    /// EBUSY with nobody inside is the kernel's moment after the last task leaves: retried
    /// for [`RMDIR_RETRY`], then `StillBusy`.
    fn remove_leaf(
        &self,
        h: &Hier,
        dir: &Path,
        me: i32,
        own: &mut Option<Vec<i32>>,
    ) -> Result<(), CgroupError> {
        let procs_file = dir.join("cgroup.procs");
        let read_procs = || -> Result<Option<Vec<i32>>, CgroupError> {
            match read_ids(&procs_file) {
                Ok(p) => Ok(Some(p)),
                Err(CgroupError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        };
        // Any process but this one inside stops the removal, named (never moved).
        let refuse_foreign = |procs: &[i32]| -> Result<(), CgroupError> {
            let foreign: Vec<i32> = procs.iter().copied().filter(|p| *p != me).collect();
            if foreign.is_empty() {
                return Ok(());
            }
            Err(CgroupError::Busy {
                path: dir.into(),
                pids: foreign,
            })
        };
        let Some(procs) = read_procs()? else {
            return Ok(());
        };
        if procs.contains(&me) {
            self.evacuate_self(h, dir, me, own)?;
        }
        if procs.iter().any(|p| *p != me) {
            // Read again once ours are out, to name only the foreign ones still inside.
            refuse_foreign(&read_procs()?.unwrap_or_default())?;
        }
        Self::rmdir_retry_with(dir, || {
            let Some(procs) = read_procs()? else {
                return Ok(false);
            };
            refuse_foreign(&procs)?;
            if procs.contains(&me) {
                // A thread of ours born since the list was taken: list again.
                *own = None;
                self.evacuate_self(h, dir, me, own)?;
            }
            Ok(true)
        })?;
        failpoint::hit(crate::failpoint::Point::FsRmdir).map_err(|e| injected(dir, e))
    }

    /// Moves this process's own threads out of `dir` (back home); foreign ones stay.
    /// `own` is this process's thread list, taken at the first need and kept for the
    /// whole `destroy` (listing `/proc/self/task` costs five calls, and with many threads
    /// — vCPUs of other sandboxes in this process — it is what destroy costs most). A
    /// thread born after the list was taken is not in it; `remove_leaf` lists again when
    /// `rmdir` meets one. A listed thread that has exited since is skipped (ESRCH); its
    /// tid could be reused by a foreign thread only after the kernel's cyclic pid
    /// allocator wraps round `pid_max`, as with a list taken per hierarchy.
    fn evacuate_self(
        &self,
        h: &Hier,
        dir: &Path,
        me: i32,
        own: &mut Option<Vec<i32>>,
    ) -> Result<(), CgroupError> {
        let home = h
            .mount
            .join(self.home.get(&h.mount).map(String::as_str).unwrap_or(""));
        let home = if home == dir || home.starts_with(dir) {
            // Our original cgroup is inside the one being removed: go to the root.
            h.mount.clone()
        } else {
            home
        };
        match self.version {
            CgroupVersion::V2 => {
                count_migration_writes(1);
                write_file(&home.join("cgroup.procs"), &me.to_string())?;
            }
            CgroupVersion::V1 => {
                if own.is_none() {
                    *own = Some(own_threads()?);
                }
                let own = own.as_deref().unwrap_or_default();
                // Threads, not the process: other threads may sit elsewhere by design.
                for tid in read_ids(&dir.join("tasks"))? {
                    if own.contains(&tid) {
                        count_migration_writes(1);
                        let r = write_file(&home.join("tasks"), &tid.to_string());
                        if let Err(e) = r {
                            if !matches!(e, CgroupError::Io { ref source, .. } if source.raw_os_error() == Some(libc::ESRCH))
                            {
                                return Err(e);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Enables our controllers in `dir`'s `cgroup.subtree_control` where they are missing.
fn enable_subtree(dir: &Path, wanted: &[String]) -> Result<(), CgroupError> {
    let available = read_file(&dir.join("cgroup.controllers"))?;
    let enabled = read_file(&dir.join("cgroup.subtree_control"))?;
    for c in V2_CONTROLLERS {
        if !wanted.iter().any(|w| w == c) {
            continue;
        }
        let has = |list: &str| list.split_whitespace().any(|x| x == *c);
        if has(&available) && !has(&enabled) {
            match write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
                // ENOENT: no longer available here, dropped above us since we read
                // cgroup.controllers (systemd, at the root). Creation checks the leaf and
                // enables again from the top.
                Err(CgroupError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    debug!(dir = %dir.display(), controller = c, "controller dropped above us");
                }
                r => r?,
            }
        }
    }
    Ok(())
}

/// v1 cpuset: a cgroup with empty `cpuset.cpus`/`mems` refuses tasks, so copy the parent's.
/// A cgroup this call has `just_made` is not read first: the kernel makes it empty, or a
/// copy of the parent's when the parent has `cgroup.clone_children` set, and writing the
/// parent's value gives the same in both cases. Returns the files written and their values.
fn fill_cpuset(
    parent: &Path,
    dir: &Path,
    just_made: bool,
) -> Result<Vec<(PathBuf, String)>, CgroupError> {
    let mut filled = Vec::new();
    for f in ["cpuset.cpus", "cpuset.mems"] {
        if just_made || read_file(&dir.join(f))?.is_empty() {
            let v = read_file(&parent.join(f))?;
            if !v.is_empty() {
                write_file(&dir.join(f), &v)?;
            }
            filled.push((dir.join(f), v));
        }
    }
    Ok(filled)
}

/// v1: what a new cgroup's files hold, by the kernel's rule, for the files `set` most
/// often writes: a new `cpu` group has `cpu.shares` 1024 (`NICE_0_LOAD`), no quota
/// (`cpu.cfs_quota_us` -1, `RUNTIME_INF`) and a period of 100 ms (`cpu.cfs_period_us`,
/// `default_cfs_period()`), whatever its parent has (kernel/sched: `sched_create_group`,
/// `init_cfs_bandwidth`). Rollback of a `set` on a cgroup the manager has just made
/// restores these without reading them first; any other file is read before its write.
fn new_cgroup_values(controllers: &[String], dir: &Path) -> Vec<(PathBuf, String)> {
    const DEFAULTS: [(&str, &str, &str); 3] = [
        ("cpu", "cpu.shares", "1024"),
        ("cpu", "cpu.cfs_quota_us", "-1"),
        ("cpu", "cpu.cfs_period_us", "100000"),
    ];
    DEFAULTS
        .iter()
        .filter(|(c, _, _)| controllers.iter().any(|x| x == c))
        .map(|(_, f, v)| (dir.join(f), (*v).to_string()))
        .collect()
}
