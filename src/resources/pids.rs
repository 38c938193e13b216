//! The `pids` controller: OCI `pids.limit` → `pids.max` (both versions); systemd
//! `TasksMax`.

use oci_spec::runtime::LinuxResources;

use super::systemd::{limit, PropValue, UnitProperty};
use super::{max_or, HostSupport, ResourceError, Rules, Write};
use crate::cgroup::{CgroupVersion, Controller, HierarchyKey};

/// The pids limit as written: positive as given, 0 → 1 (runc 1.4: the runtime spec
/// makes 0 a real limit, and systemd refuses `TasksMax=0`), negative → unlimited.
pub fn effective_pids(limit: i64) -> i64 {
    match limit {
        0 => 1,
        l if l < 0 => -1,
        l => l,
    }
}

/// The `pids` controller's rules.
pub(super) struct Pids;

impl Rules for Pids {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Controller(Controller::Pids)
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[("pids", &["limit"])]
    }

    fn writes(
        &self,
        res: &LinuxResources,
        _version: CgroupVersion,
        _host: &HostSupport,
        w: &mut Vec<Write>,
    ) -> Result<(), ResourceError> {
        if let Some(p) = res.pids() {
            w.push(Write::new(
                Controller::Pids,
                "pids.max",
                max_or(effective_pids(p.limit())),
            ));
        }
        Ok(())
    }

    fn properties(
        &self,
        res: &LinuxResources,
        _version: CgroupVersion,
        p: &mut Vec<UnitProperty>,
    ) -> Result<(), ResourceError> {
        if let Some(pids) = res.pids() {
            p.push(UnitProperty::new(
                "TasksMax",
                PropValue::U64(limit(effective_pids(pids.limit()))),
            ));
        }
        Ok(())
    }

    fn covered(&self, _version: CgroupVersion) -> &'static [&'static str] {
        &["pids.max"]
    }
}
