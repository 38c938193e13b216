//! [`VcpuChild`]: the vCPU child cgroup of the nested layout, `<sandbox>/vcpus`.
//!
//! The whole VMM process stays in the sandbox cgroup (so memory, pids and I/O are
//! charged there: memory follows the thread-group leader, not the thread that
//! touches it); only the vCPU threads move themselves into the child. Written
//! through cgroupfs with both drivers: with systemd the child is inside the
//! transient scope, which has `Delegate=yes` (v1: the `cpu,cpuacct` directory is
//! the delegated scope's, the `cpuset` one the driver's own).
//!
//! - cgroup v1: the child exists in the hierarchies holding `cpu`, `cpuacct` and
//!   `cpuset`, where per-thread control means something. Its `cpuset.cpus`/`mems`
//!   are filled from the sandbox cgroup (the kernel refuses tasks while empty).
//! - cgroup v2: `mkdir`, then `threaded` written to the child's `cgroup.type` (the
//!   sandbox becomes `domain threaded`), then the threaded controllers the sandbox
//!   has (`cpu` required; `cpuset`, `pids` when available) enabled in the sandbox's
//!   `cgroup.subtree_control`. Nothing above the sandbox cgroup is written. The
//!   kernel's rules (cgroup-v2.rst, "Threads"): a thread moves only within its
//!   threaded domain; a cgroup becomes a thread root only without populated domain
//!   children and without domain controllers in its `subtree_control`;
//!   `cgroup.procs` of a threaded cgroup cannot be read (`EOPNOTSUPP`), so this
//!   module reads `cgroup.threads`.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use tracing::debug;

use super::fs::{count_migration_writes, read_file, write_file, FsManager};
use super::{CgroupError, Manager, Stats};
use crate::cgroup::Driver;
use crate::cgroup::HierarchyKey;
use crate::failpoint;
use crate::host::{CgroupLayout, CgroupVersion, DirSet, Hierarchy};
use crate::placement::VCPU_CHILD;

pub use crate::host::{V1_CHILD_CONTROLLERS, V2_CHILD_CONTROLLERS};

/// The layout restricted to the child's hierarchies (v1) or controllers (v2).
fn child_layout(layout: &CgroupLayout) -> CgroupLayout {
    let mut l = layout.clone();
    match layout.version() {
        CgroupVersion::V1 => {
            let keep: Vec<PathBuf> = V1_CHILD_CONTROLLERS
                .iter()
                .filter_map(|c| layout.mounts.get(*c).cloned())
                .collect();
            l.mounts.retain(|_, m| keep.contains(m));
            if l.hierarchy == Hierarchy::Hybrid {
                l.unified = None;
                l.hierarchy = Hierarchy::Legacy;
            }
        }
        CgroupVersion::V2 => {
            l.v2_controllers
                .retain(|c| V2_CHILD_CONTROLLERS.contains(&c.as_str()));
        }
    }
    l
}

/// The directories (one per hierarchy) of the child of the sandbox at `sandbox_relative`.
pub fn child_dirs(layout: &CgroupLayout, sandbox_relative: &str) -> Vec<PathBuf> {
    let rel = child_relative(sandbox_relative);
    let mut out: Vec<PathBuf> = layout
        .cgroup_dirs(&rel, Driver::Cgroupfs, DirSet::VcpusChild)
        .into_values()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `<sandbox_relative>/vcpus`.
pub fn child_relative(sandbox_relative: &str) -> String {
    format!("{}/{VCPU_CHILD}", sandbox_relative.trim_matches('/'))
}

/// The vCPU child cgroup of one sandbox.
#[derive(Debug)]
pub struct VcpuChild {
    version: CgroupVersion,
    relative: String,
    /// One directory per hierarchy (v1: cpu/cpuacct/cpuset hierarchies; v2: one).
    dirs: Vec<PathBuf>,
    /// Resources and counters go through a cgroupfs manager on the restricted layout.
    fs: FsManager,
    created: Vec<PathBuf>,
    /// v2: the threaded controllers enabled in the sandbox's `subtree_control`.
    enabled: Vec<String>,
}

fn io_err(op: impl Into<String>, path: &Path, source: std::io::Error) -> CgroupError {
    CgroupError::Io {
        op: op.into(),
        path: path.to_path_buf(),
        source,
    }
}

fn injected(path: &Path, e: std::io::Error) -> CgroupError {
    io_err("failpoint at", path, e)
}

impl VcpuChild {
    /// The child of the sandbox cgroup at `sandbox_relative` (below each hierarchy
    /// root) on `layout`, with `created` directories already owned (restore); touches
    /// nothing.
    pub fn adopt(layout: &CgroupLayout, sandbox_relative: &str, created: Vec<PathBuf>) -> Self {
        let relative = child_relative(sandbox_relative);
        let cl = child_layout(layout);
        VcpuChild {
            version: layout.version(),
            dirs: child_dirs(layout, sandbox_relative),
            fs: FsManager::adopt(&cl, &relative, Vec::new()),
            relative,
            created,
            enabled: Vec::new(),
        }
    }

    /// The child's path relative to each hierarchy root.
    pub fn relative(&self) -> &str {
        &self.relative
    }

    /// The child's directories, one per hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Controller → directory.
    pub fn paths(&self) -> BTreeMap<HierarchyKey, PathBuf> {
        self.fs.paths()
    }

    /// Directories this child created (for state and crash cleanup).
    pub fn created(&self) -> Vec<PathBuf> {
        self.created.clone()
    }

    /// The directories that do not exist yet (recorded before creating them).
    pub fn missing(&self) -> Vec<PathBuf> {
        self.dirs.iter().filter(|d| !d.exists()).cloned().collect()
    }

    /// Whether any of the child's directories exists.
    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.is_dir())
    }

    fn sandbox_dir(dir: &Path) -> PathBuf {
        dir.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// Checks, before anything is created, that the host can hold the child.
    ///
    /// # Errors
    /// v1: no `cpu` hierarchy mounted ([`CgroupError::NoController`]). v2: the `cpu`
    /// controller is not in the hierarchy root's `cgroup.controllers`, so creating the
    /// sandbox cannot make it available to it ([`CgroupError::NestedRefused`] naming
    /// the file); an existing sandbox cgroup
    /// with domain children, or with domain controllers in its `subtree_control`
    /// ([`CgroupError::NestedRefused`] naming the cgroup and what is in the way).
    pub fn preflight(&self) -> Result<(), CgroupError> {
        let Some(first) = self.dirs.first() else {
            return Err(CgroupError::NoController {
                controller: "cpu".into(),
                path: PathBuf::from(&self.relative),
            });
        };
        if self.version == CgroupVersion::V1 {
            if !self.fs.paths().contains_key("cpu") {
                return Err(CgroupError::NoController {
                    controller: "cpu".into(),
                    path: PathBuf::from(&self.relative),
                });
            }
            return Ok(());
        }
        let sandbox = Self::sandbox_dir(first);
        // Creating the sandbox enables controllers level by level from the hierarchy's
        // root (cgroupfs), or systemd does for a `Delegate=yes` scope: `cpu` reaches the
        // sandbox exactly when the root offers it.
        let root = self
            .fs
            .paths()
            .get("unified")
            .map(|d| {
                let mut r = d.clone();
                for _ in Path::new(&self.relative).components() {
                    r.pop();
                }
                r
            })
            .unwrap_or_default();
        let available = read_file(&root.join("cgroup.controllers"))?;
        if !available.split_whitespace().any(|c| c == "cpu") {
            return Err(CgroupError::NestedRefused {
                path: root.join("cgroup.controllers"),
                why: format!(
                    "the cpu controller is not offered there ({available:?}), so it cannot be enabled for a vCPU child"
                ),
            });
        }
        if sandbox.is_dir() {
            let enabled = read_file(&sandbox.join("cgroup.subtree_control"))?;
            let domain: Vec<&str> = enabled
                .split_whitespace()
                .filter(|c| !V2_CHILD_CONTROLLERS.contains(c))
                .collect();
            if !domain.is_empty() {
                return Err(CgroupError::NestedRefused {
                    path: sandbox.join("cgroup.subtree_control"),
                    why: format!(
                        "domain controllers {} are enabled for its children; a threaded vCPU child needs a sandbox cgroup with only threaded controllers (cpu, cpuset, pids) enabled",
                        domain.join(" ")
                    ),
                });
            }
            let rd = std::fs::read_dir(&sandbox).map_err(|e| io_err("read", &sandbox, e))?;
            for e in rd.flatten() {
                let p = e.path();
                if !p.is_dir() || p == *first {
                    continue;
                }
                let ty = read_file(&p.join("cgroup.type")).unwrap_or_default();
                if ty != "threaded" {
                    return Err(CgroupError::NestedRefused {
                        path: p,
                        why: format!(
                            "the sandbox cgroup already has this child of type {ty:?}; a cgroup with domain children cannot become the threaded domain of a vCPU child"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates the child (joins it when it exists), as the module docs say.
    ///
    /// # Errors
    /// The failing `mkdir` or write, naming the file; what this call made is removed.
    pub fn create(&mut self) -> Result<(), CgroupError> {
        let mut made = Vec::new();
        let r = self.create_inner(&mut made);
        if r.is_err() {
            for d in made.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
            return r;
        }
        for d in made {
            if !self.created.contains(&d) {
                self.created.push(d);
            }
        }
        Ok(())
    }

    fn create_inner(&mut self, made: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
        for dir in self.dirs.clone() {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    debug!(dir = %dir.display(), "created vCPU child cgroup");
                    made.push(dir.clone());
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(io_err("mkdir", &dir, e)),
            }
            failpoint::hit(crate::failpoint::Point::VcpusMkdir).map_err(|e| injected(&dir, e))?;
            let sandbox = Self::sandbox_dir(&dir);
            match self.version {
                CgroupVersion::V1 => {
                    if read_file(&dir.join("cpuset.cpus")).is_ok() {
                        for f in ["cpuset.cpus", "cpuset.mems"] {
                            if read_file(&dir.join(f))?.is_empty() {
                                let v = read_file(&sandbox.join(f))?;
                                if !v.is_empty() {
                                    write_file(&dir.join(f), &v)?;
                                }
                            }
                        }
                    }
                }
                CgroupVersion::V2 => {
                    let ty = dir.join("cgroup.type");
                    if read_file(&ty)? != "threaded" {
                        write_file(&ty, "threaded")?;
                    }
                    failpoint::hit(crate::failpoint::Point::VcpusThreaded)
                        .map_err(|e| injected(&ty, e))?;
                    let sc = sandbox.join("cgroup.subtree_control");
                    let available = read_file(&sandbox.join("cgroup.controllers"))?;
                    let enabled = read_file(&sc)?;
                    let mut on = Vec::new();
                    for c in V2_CHILD_CONTROLLERS {
                        let has = |l: &str| l.split_whitespace().any(|x| x == c);
                        if !has(&available) {
                            if c == "cpu" {
                                return Err(CgroupError::NoController {
                                    controller: c.into(),
                                    path: sandbox.clone(),
                                });
                            }
                            continue;
                        }
                        if !has(&enabled) {
                            write_file(&sc, &format!("+{c}"))?;
                        }
                        on.push(c.to_string());
                    }
                    self.enabled = on;
                    failpoint::hit(crate::failpoint::Point::VcpusControllers)
                        .map_err(|e| injected(&sc, e))?;
                }
            }
        }
        Ok(())
    }

    /// v2: the threaded controllers enabled for the child (after [`VcpuChild::create`]).
    pub fn enabled_controllers(&self) -> &[String] {
        &self.enabled
    }

    /// Applies the CPU part of resources to the child (cpuset, quota and period,
    /// shares/weight); on failure the previous values are restored.
    ///
    /// # Errors
    /// As [`Manager::set`] of the cgroupfs driver.
    pub fn set(&mut self, res: &crate::resources::Checked) -> Result<(), CgroupError> {
        self.fs.set(res)
    }

    /// The child's CPU counters (memory is charged to the sandbox cgroup, so `None`).
    ///
    /// # Errors
    /// A counter file could not be read.
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        let mut s = self.fs.stats()?;
        s.memory_bytes = None;
        Ok(s)
    }

    /// Threads in the child (`tasks` / `cgroup.threads` of its first directory).
    ///
    /// # Errors
    /// The file could not be read.
    pub fn threads(&self) -> Result<Vec<i32>, CgroupError> {
        let Some(d) = self.dirs.first() else {
            return Ok(Vec::new());
        };
        read_tids(&d.join(self.thread_file()))
    }

    fn thread_file(&self) -> &'static str {
        match self.version {
            CgroupVersion::V1 => "tasks",
            CgroupVersion::V2 => "cgroup.threads",
        }
    }

    /// Moves thread `tid` of this process into the child (the supervisor-writes
    /// path; vCPU threads normally move themselves by writing `0`).
    ///
    /// # Errors
    /// [`CgroupError::NoSuchTask`] when the thread is gone; the failing write.
    pub fn add_thread(&mut self, tid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let path = d.join(self.thread_file());
            count_migration_writes(1);
            match std::fs::write(&path, tid.to_string()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                    return Err(CgroupError::NoSuchTask { pid: tid, path })
                }
                Err(e) => return Err(io_err(format!("write {tid} to"), &path, e)),
            }
        }
        Ok(())
    }

    /// Removes the child: threads of this process still in it go back to the sandbox
    /// cgroup; a thread of another process keeps it ([`CgroupError::Busy`]).
    ///
    /// # Errors
    /// Foreign threads; a failing `rmdir` (EBUSY retried for up to 3 s).
    pub fn destroy(&mut self) -> Result<(), CgroupError> {
        let own: Vec<i32> = std::fs::read_dir("/proc/self/task")
            .map_err(|e| io_err("read", Path::new("/proc/self/task"), e))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for dir in self.dirs.clone() {
            if !dir.is_dir() {
                continue;
            }
            let file = self.thread_file();
            let sandbox = Self::sandbox_dir(&dir);
            let mut foreign = Vec::new();
            for tid in read_tids(&dir.join(file))? {
                if !own.contains(&tid) {
                    foreign.push(tid);
                    continue;
                }
                count_migration_writes(1);
                match std::fs::write(sandbox.join(file), tid.to_string()) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        return Err(io_err(format!("write {tid} to"), &sandbox.join(file), e))
                    }
                }
            }
            if !foreign.is_empty() {
                return Err(CgroupError::Busy {
                    path: dir,
                    pids: foreign,
                });
            }
            FsManager::rmdir_retry(&dir)?;
            failpoint::hit(crate::failpoint::Point::VcpusRmdir).map_err(|e| injected(&dir, e))?;
        }
        self.created.clear();
        Ok(())
    }
}

fn read_tids(path: &Path) -> Result<Vec<i32>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t.lines().filter_map(|l| l.trim().parse().ok()).collect()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::nominal_layout;

    #[test]
    fn child_lives_in_cpu_cpuacct_cpuset_on_v1_and_once_on_v2() {
        let l = nominal_layout(CgroupVersion::V1);
        let d = child_dirs(&l, "/pod/sb/");
        assert_eq!(
            d,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu/pod/sb/vcpus"),
                PathBuf::from("/sys/fs/cgroup/cpuacct/pod/sb/vcpus"),
                PathBuf::from("/sys/fs/cgroup/cpuset/pod/sb/vcpus"),
            ]
        );
        let c = VcpuChild::adopt(&l, "pod/sb", Vec::new());
        let paths = c.paths();
        assert!(paths.contains_key("cpu") && paths.contains_key("cpuset"));
        assert!(!paths.contains_key("memory") && !paths.contains_key("pids"));
        let l = nominal_layout(CgroupVersion::V2);
        assert_eq!(
            child_dirs(&l, "pod/sb"),
            vec![PathBuf::from("/sys/fs/cgroup/pod/sb/vcpus")]
        );
        let c = VcpuChild::adopt(&l, "pod/sb", Vec::new());
        assert!(!c.paths().contains_key("memory"));
    }
}
