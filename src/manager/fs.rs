//! `FsManager`: the cgroupfs driver, for cgroup v1 (legacy and hybrid) and v2.
//!
//! The rules that bite real hosts live here:
//! - v1 `cpuset`: a new cgroup starts with empty `cpuset.cpus`/`cpuset.mems`
//!   and refuses tasks (ENOSPC) until they are filled from the parent;
//! - v2: a controller's files exist in a cgroup only once every ancestor has it
//!   in `cgroup.subtree_control`;
//! - `rmdir` answers EBUSY for a moment after the last task leaves;
//! - a failed creation removes exactly what it made; a parent that exists
//!   (EEXIST) is success, and a parent removed under us (ENOENT) is retried.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use tracing::{debug, warn};

use super::{CgroupError, Manager, Stats};
use crate::failpoint;
use crate::host::{online_cpus, CgroupLayout, CgroupVersion, V2_CONTROLLERS};
use crate::path::Driver;
use crate::resources::{self, CpuList};

/// How long `destroy` retries an `rmdir` that answers EBUSY.
const RMDIR_RETRY: Duration = Duration::from_secs(3);
/// How often creation restarts when a parent vanishes under it (ENOENT).
const CREATE_ATTEMPTS: usize = 10;
/// Lock serialising the removal of shared parents against creation below them.
pub const TREE_LOCK: &str = "/run/host-cgroups/tree.lock";

/// The hierarchies a probe was made on: v1 mounts and the unified mount.
type SupportKey = (BTreeMap<String, PathBuf>, Option<PathBuf>);

/// The last [`resources::HostSupport`] probed by this driver, and where (see `FsManager::plan`).
static SUPPORT: Mutex<Option<(SupportKey, resources::HostSupport)>> = Mutex::new(None);

/// Writes of a pid, a tid or `0` to a `tasks`, `cgroup.procs` or `cgroup.threads` file
/// made by this process through the library (the manager's and the vCPU hooks').
static MIGRATION_WRITES: AtomicU64 = AtomicU64::new(0);

/// How many task migration writes (`tasks`, `cgroup.procs`, `cgroup.threads`) this
/// process has made through the library since it started: one per file written, so
/// placing one thread in the 8 hierarchies of a cgroup v1 host counts 8. Tests and
/// benchmarks read it before and after an operation to count its writes.
pub fn migration_writes() -> u64 {
    MIGRATION_WRITES.load(Ordering::Relaxed)
}

/// Adds `n` to [`migration_writes`].
pub(crate) fn count_migration_writes(n: u64) {
    MIGRATION_WRITES.fetch_add(n, Ordering::Relaxed);
}

/// Where the parent cgroups a sandbox made are registered (one file per directory),
/// so that the last sandbox to leave a shared parent removes it, not only its maker.
pub const PARENT_MARKS: &str = "/run/host-cgroups/parents";

/// The registry of parents made by sandboxes. Two sandboxes created at once under a
/// fresh parent: one makes it, the other finds it (EEXIST); if the maker ends first its
/// rmdir meets the sibling (EBUSY), and the sibling, which did not make it, would leave
/// it behind. With a mark the last one out removes it. A mark holds the directory's
/// inode number and path: a parent removed and made again by someone else (a container
/// manager) has another inode, is not the sandboxes' and is never removed through a mark.
/// Failing to write or remove a mark is logged (warn), never fatal: without it only the
/// shared-parent case above leaves an empty parent, as before.
mod marks {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};

    use tracing::warn;

    use super::PARENT_MARKS;

    /// The mark's file: FNV-1a of the path (stable across builds; the content is checked).
    fn file(dir: &Path) -> PathBuf {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in dir.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        Path::new(PARENT_MARKS).join(format!("{h:016x}"))
    }

    fn content(dir: &Path) -> Option<String> {
        let ino = std::fs::metadata(dir).ok()?.ino();
        Some(format!("{ino} {}\n", dir.display()))
    }

    /// Drops marks whose directory is gone or is another directory now (removed, or
    /// removed and made again, by someone else): they would otherwise pile up.
    fn sweep() {
        let Ok(rd) = std::fs::read_dir(PARENT_MARKS) else {
            return;
        };
        for e in rd.flatten() {
            let Ok(m) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Some((_, path)) = m.trim_end().split_once(' ') else {
                continue;
            };
            if content(Path::new(path)).as_deref() != Some(m.as_str()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Marks `dir`, just made by this process, as a sandbox-made parent.
    pub(super) fn add(dir: &Path) {
        sweep();
        let Some(c) = content(dir) else { return };
        let f = file(dir);
        let r = std::fs::create_dir_all(PARENT_MARKS).and_then(|()| std::fs::write(&f, c));
        if let Err(e) = r {
            warn!(dir = %dir.display(), mark = %f.display(), error = %e, "cannot mark a parent cgroup as sandbox-made");
        }
    }

    /// Whether `dir` is the very directory a sandbox made and marked.
    pub(super) fn matches(dir: &Path) -> bool {
        match (std::fs::read_to_string(file(dir)), content(dir)) {
            (Ok(m), Some(c)) => m == c,
            _ => false,
        }
    }

    /// Drops `dir`'s mark (the directory is gone).
    pub(super) fn remove(dir: &Path) {
        let f = file(dir);
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(mark = %f.display(), error = %e, "cannot remove a parent mark"),
        }
    }
}

/// One hierarchy the cgroup spans: its mount point and the controllers on it.
#[derive(Debug)]
struct Hier {
    mount: PathBuf,
    controllers: Vec<String>,
    /// `tasks` (v1) kept open, since placing threads one by one is the hot path.
    tasks: Option<File>,
}

impl Hier {
    fn dir(&self, relative: &str) -> PathBuf {
        self.mount.join(relative)
    }
}

/// The cgroupfs driver.
#[derive(Debug)]
pub struct FsManager {
    version: CgroupVersion,
    relative: String,
    hiers: Vec<Hier>,
    /// Our own cgroup per hierarchy mount, to move ourselves back to before rmdir.
    home: BTreeMap<PathBuf, String>,
    created: Vec<PathBuf>,
    /// Values of files in the leaves the last `create` made, known without reading them
    /// (see [`new_cgroup_values`]): `set` records these for rollback instead of reading
    /// each file before its first write. An entry goes once its file is written.
    initial: BTreeMap<PathBuf, String>,
    /// The layout, for probing what the kernel offers.
    layout: CgroupLayout,
}

fn io_err(op: impl Into<String>, path: &Path, source: std::io::Error) -> CgroupError {
    CgroupError::Io {
        op: op.into(),
        path: path.into(),
        source,
    }
}

/// Writes `value` to a cgroup file in one write(2), as cgroupfs expects.
pub fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    failpoint::hit(crate::failpoint::Point::FsWrite).map_err(|e| injected(path, e))?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err(format!("open {value:?} for writing"), path, e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| io_err(format!("write {value:?} to"), path, e))
}

/// Reads a cgroup file, trimmed.
///
/// # Errors
/// [`CgroupError::Io`] naming `path` when it cannot be opened or read, or does not hold
/// UTF-8 (`ErrorKind::InvalidData`).
pub fn read_file(path: &Path) -> Result<String, CgroupError> {
    read_whole(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| io_err("read", path, e))
}

/// Size of one `read(2)` of [`read_whole`]: one page, what cgroupfs and sysfs hand out per
/// read at most for most files, and far more than a limit, a cpuset or a short pid list.
const READ_CHUNK: usize = 4096;

/// The whole content of a cgroupfs, sysfs or procfs file, without asking its size:
/// these files report a size of 0 or 4096 whatever they hold, so `read_to_string`'s
/// `statx` buys nothing. Small files take `openat`, one `read`, the `read` that returns 0,
/// `close`. Reads go on until one returns 0, never stopping at a short read: cgroup files
/// are `seq_file`s, which hand out at most their internal buffer (a page at first) per
/// `read`, so a short read is not the end of a `tasks` or `cgroup.procs` holding
/// thousands of ids.
pub(crate) fn read_whole(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut f = File::open(path)?;
    let mut out = Vec::new();
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(out).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

fn read_ids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    Ok(read_file(path)?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// This process's thread ids, from `/proc/self/task`.
fn own_threads() -> Result<Vec<i32>, CgroupError> {
    let task = Path::new("/proc/self/task");
    Ok(std::fs::read_dir(task)
        .map_err(|e| io_err("read", task, e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// Parses `key value` lines (`cpu.stat`, `memory.stat`).
fn read_keyed(path: &Path) -> Result<BTreeMap<String, u64>, CgroupError> {
    Ok(read_file(path)?
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

/// Holds `TREE_LOCK` (shared for creation, exclusive for removing parents) until dropped.
struct TreeLock(#[allow(dead_code)] Option<File>);

/// How long `TreeLock::take` waits for the lock before going on without it. Holders keep it
/// for a few `mkdir`s or `rmdir`s (microseconds); a holder that is stopped (SIGSTOP, a
/// debugger) or stuck in the kernel must not hang every sandbox start and cleanup on the
/// node. Without the lock, creation still survives a parent removed under it (ENOENT
/// retries) and removal refuses a non-empty parent (EBUSY), so the cost is a retry.
const TREE_LOCK_WAIT: Duration = Duration::from_secs(10);

impl TreeLock {
    fn take(exclusive: bool) -> Self {
        let path = Path::new(TREE_LOCK);
        let open = || -> std::io::Result<File> {
            let open = || {
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(path)
            };
            match open() {
                // The directory is made once per boot (/run is a tmpfs): only then.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    open()
                }
                r => r,
            }
        };
        let f = match open() {
            Ok(f) => f,
            Err(e) => {
                // Without the lock, creation still survives a vanished parent by retrying.
                warn!(path = TREE_LOCK, error = %e, "cannot open the tree lock");
                return TreeLock(None);
            }
        };
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        let start = Instant::now();
        let mut pause = Duration::from_micros(100);
        loop {
            // SAFETY: flock on a file descriptor we own; it cannot touch memory.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return TreeLock(Some(f));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                warn!(path = TREE_LOCK, error = %e, "flock failed; relying on ENOENT retries");
                return TreeLock(None);
            }
            if start.elapsed() >= TREE_LOCK_WAIT {
                warn!(
                    path = TREE_LOCK,
                    waited_ms = start.elapsed().as_millis() as u64,
                    "tree lock still held by another process; going on without it (ENOENT retries)"
                );
                return TreeLock(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl FsManager {
    /// A manager for `relative` (below each hierarchy root) on `layout`; touches nothing yet.
    pub fn new(layout: &CgroupLayout, relative: &str) -> Self {
        let version = layout.version();
        let hiers: Vec<Hier> = match version {
            CgroupVersion::V1 => layout
                .v1_hierarchies()
                .into_iter()
                .map(|(mount, controllers)| Hier {
                    mount,
                    controllers,
                    tasks: None,
                })
                .collect(),
            CgroupVersion::V2 => layout
                .unified
                .iter()
                .map(|u| Hier {
                    mount: u.clone(),
                    controllers: layout.v2_controllers.clone(),
                    tasks: None,
                })
                .collect(),
        };
        let mut home = BTreeMap::new();
        for h in &hiers {
            let key: String = match version {
                CgroupVersion::V1 => h.controllers.first().cloned().unwrap_or_default(),
                CgroupVersion::V2 => String::new(),
            };
            if let Some(p) = layout.own.get(&key) {
                home.insert(h.mount.clone(), p.trim_start_matches('/').to_string());
            }
        }
        FsManager {
            version,
            relative: relative.trim_matches('/').to_string(),
            hiers,
            home,
            created: Vec::new(),
            initial: BTreeMap::new(),
            layout: layout.clone(),
        }
    }

    /// A manager that also owns `created` (restored from state after a restart).
    pub fn adopt(layout: &CgroupLayout, relative: &str, created: Vec<PathBuf>) -> Self {
        let mut m = Self::new(layout, relative);
        m.created = created;
        m
    }

    fn hier_of(&self, controller: &str) -> Result<&Hier, CgroupError> {
        self.hiers
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
            .ok_or_else(|| CgroupError::NoController {
                controller: controller.into(),
                path: PathBuf::from(&self.relative),
            })
    }

    /// The directory holding `controller`'s files.
    fn dir_of(&self, controller: &str) -> Result<PathBuf, CgroupError> {
        Ok(self.hier_of(controller)?.dir(&self.relative))
    }

    /// Whether the cgroup has parents of its own between it and the hierarchy roots
    /// (`a/b`, not `b`), or this manager holds created directories other than its leaves
    /// (restored by [`Self::adopt`]): only then is there a parent to make or remove.
    fn has_parents(&self) -> bool {
        self.relative.contains('/')
            || self
                .created
                .iter()
                .any(|d| !self.hiers.iter().any(|h| h.dir(&self.relative) == *d))
    }

    fn first_dir(&self) -> Result<PathBuf, CgroupError> {
        self.hiers
            .first()
            .map(|h| h.dir(&self.relative))
            .ok_or_else(|| CgroupError::NoController {
                controller: "any".into(),
                path: PathBuf::from(&self.relative),
            })
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

    fn write_ids(&mut self, file: &'static str, id: i32) -> Result<(), CgroupError> {
        let value = id.to_string();
        for h in &self.hiers {
            let path = h.dir(&self.relative).join(file);
            failpoint::hit(crate::failpoint::Point::FsWrite).map_err(|e| injected(&path, e))?;
            count_migration_writes(1);
            let r = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(value.as_bytes()));
            map_place_err(r, id, &path)?;
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

    fn set_inner(
        &mut self,
        res: &LinuxResources,
        undo: &mut Vec<(PathBuf, String)>,
    ) -> Result<(), CgroupError> {
        let mut writes = self.plan(res)?;
        self.check_cpuset(res)?;
        self.order_memory(&mut writes)?;
        let mut known = std::mem::take(&mut self.initial);
        let r = self.apply_writes_known(&writes, undo, &mut known);
        self.initial = known;
        r
    }

    /// The writes `res` needs on this host ([`resources::plan_for`]), against what the
    /// kernel offers. Probing that costs some twenty calls (a `statx` per feature file,
    /// the huge page sizes), so it is kept per process and hierarchy set and reused; what
    /// it finds is fixed at boot (kernel build, `swapaccount`, huge page sizes, mounts)
    /// except a block I/O scheduler module loaded or unloaded later. A refusal is never
    /// made on a kept probe: the host is probed again and the plan made again, so a
    /// feature that appeared since is seen. A feature gone since shows as the failed
    /// write naming its file.
    fn plan(&self, res: &LinuxResources) -> Result<Vec<resources::Write>, CgroupError> {
        if let Some(kept) = self.kept_support() {
            if let Ok(w) = resources::plan_for(res, self.version, &kept) {
                return Ok(w);
            }
        }
        let fresh = resources::HostSupport::probe(&self.layout);
        let r = resources::plan_for(res, self.version, &fresh);
        if let Ok(mut kept) = SUPPORT.lock() {
            *kept = Some((self.support_key(), fresh));
        }
        Ok(r?)
    }

    fn support_key(&self) -> SupportKey {
        (self.layout.mounts.clone(), self.layout.unified.clone())
    }

    fn kept_support(&self) -> Option<resources::HostSupport> {
        let kept = SUPPORT.lock().ok()?;
        match kept.as_ref() {
            Some((k, s)) if *k == self.support_key() => Some(s.clone()),
            _ => None,
        }
    }

    /// v1: orders the memory limit and memory+swap writes by the kernel's rule
    /// ([`resources::memsw_first`]) against the limit in force.
    pub(crate) fn order_memory(&self, writes: &mut [resources::Write]) -> Result<(), CgroupError> {
        if self.version != CgroupVersion::V1 {
            return Ok(());
        }
        if !writes
            .iter()
            .any(|w| w.file == "memory.memsw.limit_in_bytes")
        {
            return Ok(());
        }
        let cur = self.dir_of("memory")?.join("memory.limit_in_bytes");
        // Absent (not created yet): the kernel's initial limit is unlimited.
        let current = read_file(&cur)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        resources::order_v1_memory(writes, current);
        Ok(())
    }

    /// Writes each of `writes` in order, recording the previous values (read from each
    /// file before its write) in `undo`.
    /// On v2 every file lives in the one directory (OCI `unified` keys too).
    pub(crate) fn apply_writes(
        &self,
        writes: &[resources::Write],
        undo: &mut Vec<(PathBuf, String)>,
    ) -> Result<(), CgroupError> {
        self.apply_writes_known(writes, undo, &mut BTreeMap::new())
    }

    /// [`Self::apply_writes`], where a file listed in `known` is not read: its value there
    /// is recorded instead, and the entry dropped once the file is written. `set` passes
    /// the values a leaf the last `create` made was made with (the parent's cpuset as
    /// filled, the kernel's defaults of [`new_cgroup_values`]), so rollback restores the
    /// cgroup as made; a value another process wrote there in between is not kept.
    fn apply_writes_known(
        &self,
        writes: &[resources::Write],
        undo: &mut Vec<(PathBuf, String)>,
        known: &mut BTreeMap<PathBuf, String>,
    ) -> Result<(), CgroupError> {
        for w in writes {
            let dir = match self.version {
                CgroupVersion::V2 => self.first_dir()?,
                CgroupVersion::V1 => self.dir_of(w.controller)?,
            };
            let path = dir.join(&w.file);
            let old = match known.get(&path) {
                Some(v) => v.clone(),
                None => read_file(&path)?,
            };
            write_file(&path, &w.value)?;
            known.remove(&path);
            undo.push((path, restore_value(&w.file, &old)));
        }
        Ok(())
    }

    /// Real-time bandwidth (v1): the kernel lets a cgroup have only what its parent
    /// grants, and a parent this manager creates starts with none; refused before
    /// anything is created, naming the parent's value.
    /// Both drivers run it: on the systemd driver the parent is the unit's slice.
    pub(crate) fn check_rt(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        let Some(cpu) = res.cpu() else { return Ok(()) };
        let Some(runtime) = cpu.realtime_runtime() else {
            return Ok(());
        };
        if self.version != CgroupVersion::V1 || runtime == 0 {
            return Ok(());
        }
        let dir = self.dir_of("cpu")?;
        let parent = dir.parent().unwrap_or(&dir).to_path_buf();
        let field = "cpu.realtimeRuntime".to_string();
        if !parent.is_dir() {
            return Err(resources::ResourceError::Unsupported {
                field,
                reason: format!(
                    "the parent cgroup {} does not exist yet and would be created with cpu.rt_runtime_us = 0, which grants no real-time time to children",
                    parent.display()
                ),
            }
            .into());
        }
        let p_runtime: i64 = read_file(&parent.join("cpu.rt_runtime_us"))?
            .parse()
            .unwrap_or(0);
        let p_period: i64 = read_file(&parent.join("cpu.rt_period_us"))?
            .parse()
            .unwrap_or(1);
        let period = cpu
            .realtime_period()
            .and_then(|p| i64::try_from(p).ok())
            .unwrap_or(p_period);
        // runtime/period <= p_runtime/p_period, cross-multiplied in 128 bits.
        let enough = if runtime < 0 {
            p_runtime < 0
        } else {
            p_runtime < 0
                || i128::from(runtime) * i128::from(p_period.max(1))
                    <= i128::from(p_runtime) * i128::from(period.max(1))
        };
        if !enough {
            return Err(resources::ResourceError::Unsupported {
                field,
                reason: format!(
                    "{runtime} µs per {period} µs is more than the parent {} grants (cpu.rt_runtime_us = {p_runtime} per {p_period} µs)",
                    parent.display()
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Checks requested CPUs and memory nodes against the host and the parent cgroup.
    pub(crate) fn check_cpuset(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        let (cpus, mems) = resources::cpuset_of(res)?;
        if cpus.is_none() && mems.is_none() {
            return Ok(());
        }
        let dir = self.dir_of("cpuset")?;
        // The nearest existing ancestor grants the CPUs: the cgroup may not exist yet.
        let parent = dir
            .ancestors()
            .skip(1)
            .find(|a| a.is_dir())
            .unwrap_or(&dir)
            .to_path_buf();
        let eff = |name: &str| -> Result<Option<CpuList>, CgroupError> {
            // v2 lists what the parent really grants in *.effective; v1 in the plain file.
            let f = match self.version {
                CgroupVersion::V1 => parent.join(name),
                CgroupVersion::V2 => parent.join(format!("{name}.effective")),
            };
            match read_whole(&f) {
                Ok(s) => Ok(Some(CpuList::parse("cpus", s.trim())?)),
                Err(_) => Ok(None),
            }
        };
        if let (Some(want), Some(cpu)) = (&cpus, res.cpu()) {
            let raw = cpu.cpus().clone().unwrap_or_default();
            want.check_within("cpus", &raw, &online_cpus()?)?;
            if let Some(avail) = eff("cpuset.cpus")? {
                if !avail.is_empty() {
                    want.check_within("cpus", &raw, &avail)?;
                }
            }
        }
        if let (Some(want), Some(cpu)) = (&mems, res.cpu()) {
            let raw = cpu.mems().clone().unwrap_or_default();
            if let Some(avail) = eff("cpuset.mems")? {
                if !avail.is_empty() {
                    want.check_within("mems", &raw, &avail)?;
                }
            }
        }
        Ok(())
    }

    fn freeze_to(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value, state_file, want) = match self.version {
            CgroupVersion::V1 => (
                self.dir_of("freezer")?.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
                None,
                "",
            ),
            CgroupVersion::V2 => (
                self.first_dir()?.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                Some(self.first_dir()?.join("cgroup.events")),
                if frozen { "frozen 1" } else { "frozen 0" },
            ),
        };
        write_file(&file, value)?;
        // Freezing is asynchronous: v1 passes through FREEZING, v2 reports in cgroup.events.
        let start = Instant::now();
        loop {
            let done = match &state_file {
                None => read_file(&file)? == value,
                Some(ev) => read_file(ev)?.lines().any(|l| l.trim() == want),
            };
            if done {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(5) {
                return Err(io_err(
                    format!("wait for {value:?} in"),
                    &file,
                    std::io::Error::from(ErrorKind::TimedOut),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The value to write back to restore `file` from what reading it gave (files whose
/// read form is not their write form: `cpu.max` "max 100000" is fine, but v1
/// `memory.oom_control` reads as key/value lines). Both drivers restore through it.
pub(crate) fn restore_value(file: &str, old: &str) -> String {
    if file == "memory.oom_control" {
        let on = old.lines().any(|l| l.trim() == "oom_kill_disable 1");
        return u8::from(on).to_string();
    }
    if file == "net_prio.ifpriomap"
        || file.starts_with("blkio.")
        || file == "io.max"
        || file == "io.weight"
    {
        // Multi-entry files: each write changes one entry; the first line is the best restore.
        return old.lines().next().unwrap_or("").to_string();
    }
    old.to_string()
}

fn injected(path: &Path, e: std::io::Error) -> CgroupError {
    io_err("failpoint at".to_string(), path, e)
}

fn map_place_err(r: std::io::Result<()>, id: i32, path: &Path) -> Result<(), CgroupError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(CgroupError::NoSuchTask {
            pid: id,
            path: path.into(),
        }),
        Err(e) => Err(io_err(format!("write {id} to"), path, e)),
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

impl Manager for FsManager {
    fn driver(&self) -> Driver {
        Driver::Cgroupfs
    }

    fn version(&self) -> CgroupVersion {
        self.version
    }

    fn relative(&self) -> &str {
        &self.relative
    }

    fn paths(&self) -> BTreeMap<String, PathBuf> {
        let mut out = BTreeMap::new();
        for h in &self.hiers {
            for c in &h.controllers {
                out.insert(c.clone(), h.dir(&self.relative));
            }
            if self.version == CgroupVersion::V2 {
                out.insert("unified".into(), h.dir(&self.relative));
            }
        }
        out
    }

    fn create(&mut self) -> Result<(), CgroupError> {
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

    fn add_proc(&mut self, pid: i32) -> Result<(), CgroupError> {
        self.write_ids("cgroup.procs", pid)
    }

    fn add_thread(&mut self, tid: i32) -> Result<(), CgroupError> {
        if self.version == CgroupVersion::V2 {
            return Err(CgroupError::Unsupported {
                what: "placing a single thread",
                driver: Driver::Cgroupfs,
                version: self.version,
                why: "it needs threaded mode from the leaf to the root, in cgroups the container manager owns; the whole process is placed instead",
            });
        }
        let value = tid.to_string();
        let relative = self.relative.clone();
        for h in &mut self.hiers {
            let path = h.dir(&relative).join("tasks");
            if h.tasks.is_none() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| io_err("open for writing", &path, e))?;
                h.tasks = Some(f);
            }
            // cgroupfs takes each write(2) as one request, whatever the offset.
            count_migration_writes(1);
            let r = match h.tasks.as_ref() {
                Some(mut f) => f.write(value.as_bytes()).map(|_| ()),
                None => Ok(()),
            };
            map_place_err(r, tid, &path)?;
        }
        Ok(())
    }

    fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        read_ids(&self.first_dir()?.join("cgroup.procs"))
    }

    fn threads(&self) -> Result<Vec<i32>, CgroupError> {
        let file = match self.version {
            CgroupVersion::V1 => "tasks",
            CgroupVersion::V2 => "cgroup.threads",
        };
        read_ids(&self.first_dir()?.join(file))
    }

    fn check(&self, res: &LinuxResources) -> Result<(), CgroupError> {
        self.plan(res)?;
        self.check_rt(res)?;
        self.check_cpuset(res)
    }

    fn set(&mut self, res: &LinuxResources) -> Result<(), CgroupError> {
        let mut undo = Vec::new();
        let r = self.set_inner(res, &mut undo);
        if r.is_err() {
            for (path, old) in undo.iter().rev() {
                if let Err(e) = write_file(path, old) {
                    warn!(error = %e, "could not restore previous value");
                }
            }
        }
        r
    }

    fn freeze(&mut self) -> Result<(), CgroupError> {
        self.freeze_to(true)
    }

    fn thaw(&mut self) -> Result<(), CgroupError> {
        self.freeze_to(false)
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        let mut s = Stats::default();
        let opt = |p: PathBuf| read_file(&p).ok().and_then(|v| v.parse().ok());
        match self.version {
            CgroupVersion::V1 => {
                let acct = self.dir_of("cpuacct")?;
                s.cpu_usage_ns = read_file(&acct.join("cpuacct.usage"))?.parse().unwrap_or(0);
                let st = read_keyed(&self.dir_of("cpu")?.join("cpu.stat"))?;
                s.nr_periods = st.get("nr_periods").copied().unwrap_or(0);
                s.nr_throttled = st.get("nr_throttled").copied().unwrap_or(0);
                s.throttled_ns = st.get("throttled_time").copied().unwrap_or(0);
                s.memory_bytes = self
                    .dir_of("memory")
                    .ok()
                    .and_then(|d| opt(d.join("memory.usage_in_bytes")));
            }
            CgroupVersion::V2 => {
                let d = self.first_dir()?;
                let st = read_keyed(&d.join("cpu.stat"))?;
                s.cpu_usage_ns = st.get("usage_usec").copied().unwrap_or(0) * 1000;
                s.nr_periods = st.get("nr_periods").copied().unwrap_or(0);
                s.nr_throttled = st.get("nr_throttled").copied().unwrap_or(0);
                s.throttled_ns = st.get("throttled_usec").copied().unwrap_or(0) * 1000;
                s.memory_bytes = opt(d.join("memory.current"));
            }
        }
        s.pids_current = self
            .dir_of("pids")
            .ok()
            .and_then(|d| opt(d.join("pids.current")));
        Ok(s)
    }

    fn destroy(&mut self) -> Result<(), CgroupError> {
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

    fn created(&self) -> Vec<PathBuf> {
        self.created.clone()
    }

    fn missing(&self) -> Vec<PathBuf> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_whole_reads_past_the_first_chunk() {
        // Longer than several chunks, as a `tasks` file with thousands of tids is.
        let want: String = (100_000..108_000).map(|t| format!("{t}\n")).collect();
        assert!(want.len() > 10 * READ_CHUNK);
        let dir = std::env::temp_dir().join(format!("hcg-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("tasks");
        std::fs::write(&f, &want).expect("write");
        let got = read_whole(&f);
        let ids = read_ids(&f);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got.expect("read"), want);
        assert_eq!(ids.expect("ids").len(), 8000);
    }

    #[test]
    fn read_file_names_a_missing_file() {
        let p = Path::new("/proc/self/no-such-file");
        match read_file(p) {
            Err(CgroupError::Io { path, source, .. }) => {
                assert_eq!(path, p);
                assert_eq!(source.kind(), ErrorKind::NotFound);
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }
}
