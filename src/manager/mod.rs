//! One trait for the cgroup drivers: cgroupfs ([`FsManager`]) and systemd.
//!
//! The supervisor and the CLI hold a `Box<dyn Manager>` and never ask which
//! driver is behind it, except to decide placement (see [`crate::placement`]).

pub mod child;
pub mod fs;
#[cfg(feature = "systemd")]
pub mod systemd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

pub use child::VcpuChild;
pub use fs::FsManager;
#[cfg(feature = "systemd")]
pub use systemd::SystemdManager;

use crate::cgroup::HierarchyKey;
use crate::host::{CgroupLayout, CgroupVersion, HostError};
use crate::path::{CgroupsPath, Driver};
use crate::resources::{Checked, ResourceError};

/// A cgroup operation that failed, naming the cgroup file or unit and the value.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// A filesystem operation on cgroupfs failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted (`mkdir`, `write 1234 to`, ...).
        op: String,
        /// The file or directory.
        path: PathBuf,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// A process or thread to place does not exist (any more).
    #[error("no such process or thread {pid} (writing {path})")]
    NoSuchTask {
        /// The pid or tid.
        pid: i32,
        /// The file written.
        path: PathBuf,
    },
    /// The resources are invalid for this host.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// Processes this component did not place are in the cgroup; they are never moved or killed.
    #[error("cgroup {path} still holds processes {pids:?} that this component did not put there; they are left alone and the cgroup is kept")]
    Busy {
        /// The cgroup directory.
        path: PathBuf,
        /// The foreign pids.
        pids: Vec<i32>,
    },
    /// The cgroup could not be removed in time.
    #[error("cgroup {path} could not be removed: still busy after {waited_ms} ms")]
    StillBusy {
        /// The cgroup directory.
        path: PathBuf,
        /// How long removal was retried.
        waited_ms: u64,
    },
    /// The nested layout cannot be made here (kernel rules of cgroup v2 threaded mode);
    /// found before anything was created.
    #[error("the nested vCPU layout cannot be made at {path}: {why}")]
    NestedRefused {
        /// The cgroup or file in the way.
        path: PathBuf,
        /// What is in the way and why.
        why: String,
    },
    /// The operation does not exist for this driver or cgroup version.
    #[error("{what} is not supported on {driver} with cgroup v{version}: {why}")]
    Unsupported {
        /// The operation.
        what: &'static str,
        /// The driver.
        driver: Driver,
        /// The cgroup version.
        version: CgroupVersion,
        /// Why.
        why: &'static str,
    },
    /// A controller the operation needs is not mounted or not enabled.
    #[error("controller {controller} is not available for cgroup {path}")]
    NoController {
        /// The controller.
        controller: String,
        /// The cgroup.
        path: PathBuf,
    },
    /// Reading the host failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// systemd refused or could not be reached.
    #[error("systemd: {0}")]
    Systemd(String),
    /// systemd is not on the system bus (not PID 1, or no bus daemon); nothing was created.
    #[error("systemd is not reachable on the system bus ({address}): {message}")]
    SystemdUnreachable {
        /// The bus address tried.
        address: String,
        /// The D-Bus answer.
        message: String,
    },
    /// systemd refused a request on a unit, or the unit's job did not end `done`.
    #[error("systemd unit {unit}: {message}")]
    SystemdUnit {
        /// The unit.
        unit: String,
        /// The method and systemd's D-Bus error or job result.
        message: String,
    },
}

/// Usage and throttling counters of a cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// CPU time used, in nanoseconds.
    pub cpu_usage_ns: u64,
    /// CFS periods elapsed.
    pub nr_periods: u64,
    /// CFS periods in which the cgroup was throttled.
    pub nr_throttled: u64,
    /// Time spent throttled, in nanoseconds.
    pub throttled_ns: u64,
    /// Memory in use, in bytes.
    pub memory_bytes: Option<u64>,
    /// Tasks in the cgroup.
    pub pids_current: Option<u64>,
}

/// A cgroup driver: creates, fills, limits and removes one sandbox cgroup.
pub trait Manager: Send {
    /// cgroupfs or systemd.
    fn driver(&self) -> Driver;
    /// The cgroup version of the host.
    fn version(&self) -> CgroupVersion;
    /// The cgroup relative to each hierarchy's root.
    fn relative(&self) -> &str;
    /// Controller → absolute cgroup directory.
    fn paths(&self) -> BTreeMap<HierarchyKey, PathBuf>;
    /// Creates the cgroup (or joins it when it exists).
    fn create(&mut self) -> Result<(), CgroupError>;
    /// Moves a whole process (thread group) into the cgroup.
    fn add_proc(&mut self, pid: i32) -> Result<(), CgroupError>;
    /// Moves a single thread into the cgroup (only cgroup v1 cgroupfs can).
    fn add_thread(&mut self, tid: i32) -> Result<(), CgroupError>;
    /// Processes (tgids) in the cgroup.
    fn procs(&self) -> Result<Vec<i32>, CgroupError>;
    /// Threads in the cgroup.
    fn threads(&self) -> Result<Vec<i32>, CgroupError>;
    /// Checks resources against this host and the cgroup's parent before anything is written.
    fn check(&self, _res: &Checked) -> Result<(), CgroupError> {
        Ok(())
    }
    /// Applies resources; on failure the previous values are restored.
    fn set(&mut self, res: &Checked) -> Result<(), CgroupError>;
    /// Freezes every task in the cgroup.
    fn freeze(&mut self) -> Result<(), CgroupError>;
    /// Thaws the cgroup.
    fn thaw(&mut self) -> Result<(), CgroupError>;
    /// Reads usage counters.
    fn stats(&self) -> Result<Stats, CgroupError>;
    /// Removes the cgroup; never moves or kills processes it did not place.
    fn destroy(&mut self) -> Result<(), CgroupError>;
    /// Whether the cgroup exists now (any of its directories).
    fn exists(&self) -> bool {
        self.paths().values().any(|p| p.is_dir())
    }
    /// Directories this manager created, outermost first (for state and crash cleanup).
    fn created(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// Directories `create` would make now (absent ones), recorded before creating so a
    /// crash in between still leaves a complete record.
    fn missing(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// The driver for `path` on `layout`, with `created` directories already owned (restore).
#[cfg_attr(not(feature = "systemd"), allow(unused_variables))]
pub fn build(
    path: &CgroupsPath,
    layout: &CgroupLayout,
    created: Vec<PathBuf>,
) -> Result<Box<dyn Manager>, CgroupError> {
    match path {
        CgroupsPath::Cgroupfs { path } => Ok(Box::new(FsManager::adopt(layout, path, created))),
        #[cfg(feature = "systemd")]
        CgroupsPath::Systemd(u) => Ok(Box::new(SystemdManager::adopt(layout, u, created))),
        #[cfg(not(feature = "systemd"))]
        CgroupsPath::Systemd(_) => Err(CgroupError::Unsupported {
            what: "a systemd cgroups path",
            driver: Driver::Systemd,
            version: layout.version(),
            why: "this build of host-cgroups has no systemd driver (feature `systemd`)",
        }),
    }
}

/// What this host's systemd looks like: [`crate::host::SystemdInfo::detect`] plus, with the `systemd`
/// feature, its version read over D-Bus (the Manager's `Version` property; up to 5 s).
pub fn systemd_info() -> crate::host::SystemdInfo {
    #[allow(unused_mut)]
    let mut info = crate::host::SystemdInfo::detect();
    #[cfg(feature = "systemd")]
    if info.reachable {
        info.version = systemd::query_version(std::time::Duration::from_secs(5));
    }
    info
}

impl From<crate::cpulist::CpuListError> for CgroupError {
    fn from(e: crate::cpulist::CpuListError) -> Self {
        CgroupError::Resource(ResourceError::List(e))
    }
}

/// Sorts the cgroup directories `watched` (absolute, as they existed before a
/// removal) into the cgroups now gone and those still standing, by their path
/// relative to the hierarchy roots in `mounts`.
///
/// A cgroup counts as gone only when none of the hierarchies the sandbox spans holds
/// it any more (one the run did not create it in included). `gone` is deepest first.
pub fn gone_and_standing(watched: &[PathBuf], mounts: &[PathBuf]) -> (Vec<String>, Vec<String>) {
    let rel = |d: &Path| -> String {
        mounts
            .iter()
            .filter_map(|m| d.strip_prefix(m).ok())
            .min_by_key(|r| r.components().count())
            .map(|r| r.display().to_string())
            .unwrap_or_else(|| d.display().to_string())
    };
    let hiers: Vec<&PathBuf> = mounts
        .iter()
        .filter(|m| watched.iter().any(|d| d.starts_with(m)))
        .collect();
    let mut gone: Vec<String> = Vec::new();
    let mut stay: Vec<String> = Vec::new();
    for d in watched {
        let r = rel(d);
        let there = hiers.iter().any(|m| m.join(&r).is_dir());
        let list = if there { &mut stay } else { &mut gone };
        if !list.contains(&r) {
            list.push(r);
        }
    }
    gone.sort_by_key(|r| std::cmp::Reverse(r.matches('/').count()));
    (gone, stay)
}
