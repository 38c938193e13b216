//! Placing tasks: a pid in `cgroup.procs`, and on v1 a thread in every hierarchy's
//! `tasks` (kept open: placing threads one by one is the hot path).

use std::fs::OpenOptions;
use std::io::Write as _;

use super::io::{injected, io_err, map_place_err};
use super::{count_migration_writes, FsManager};
use crate::failpoint;
use crate::host::CgroupVersion;
use crate::manager::CgroupError;
use crate::path::Driver;

impl FsManager {
    pub(super) fn write_ids(&mut self, file: &'static str, id: i32) -> Result<(), CgroupError> {
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

    /// Places thread `tid` in the cgroup of every hierarchy (v1 only: on v2 a single
    /// thread would need threaded mode up to the root, in cgroups we do not own).
    pub(super) fn add_thread_all(&mut self, tid: i32) -> Result<(), CgroupError> {
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
}
