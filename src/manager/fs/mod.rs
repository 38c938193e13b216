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

mod apply;
mod io;
mod lock;
mod marks;
mod stats;
mod tasks;
mod tree;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;

use crate::cgroup::HierarchyKey;
use crate::resources::Checked;

// The systemd driver restores its cgroupfs writes through the same rule.
#[cfg(feature = "systemd")]
pub(crate) use crate::resources::restore_value;
pub(crate) use io::count_migration_writes;
pub use io::{migration_writes, read_file, write_file};
pub use lock::TREE_LOCK;
pub use marks::PARENT_MARKS;

use super::{CgroupError, Manager, Stats};
use crate::host::{CgroupLayout, CgroupVersion, DirSet};
use crate::path::Driver;
use io::read_ids;

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
                CgroupVersion::V2 => crate::host::UNIFIED_KEY.to_string(),
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

    /// From the directory map ([`CgroupLayout::cgroup_dirs`]) of this manager's layout.
    fn paths(&self) -> BTreeMap<HierarchyKey, PathBuf> {
        self.layout
            .cgroup_dirs(&self.relative, Driver::Cgroupfs, DirSet::Sandbox)
    }

    fn create(&mut self) -> Result<(), CgroupError> {
        self.create_all()
    }

    fn add_proc(&mut self, pid: i32) -> Result<(), CgroupError> {
        self.write_ids("cgroup.procs", pid)
    }

    fn add_thread(&mut self, tid: i32) -> Result<(), CgroupError> {
        self.add_thread_all(tid)
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

    fn check(&self, res: &Checked) -> Result<(), CgroupError> {
        self.check_all(res)
    }

    fn set(&mut self, res: &Checked) -> Result<(), CgroupError> {
        self.set_all(res)
    }

    fn freeze(&mut self) -> Result<(), CgroupError> {
        self.freeze_to(true)
    }

    fn thaw(&mut self) -> Result<(), CgroupError> {
        self.freeze_to(false)
    }

    fn stats(&self) -> Result<Stats, CgroupError> {
        self.read_stats()
    }

    fn destroy(&mut self) -> Result<(), CgroupError> {
        self.destroy_all()
    }

    fn created(&self) -> Vec<PathBuf> {
        self.created.clone()
    }

    fn missing(&self) -> Vec<PathBuf> {
        self.missing_dirs()
    }
}
