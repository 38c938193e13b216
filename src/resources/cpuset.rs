//! The `cpuset` controller: OCI `cpu.cpus` and `cpu.mems`.
//!
//! Both versions write `cpuset.cpus` and `cpuset.mems`; an empty list is unset.
//! systemd: `AllowedCPUs` / `AllowedMemoryNodes` (v2 only: systemd applies them on
//! the unified hierarchy alone, so on v1 the driver writes the cpuset itself).

use oci_spec::runtime::LinuxResources;

use super::systemd::{cpuset_mask, PropValue, UnitProperty, SYSTEMD_ALLOWED_CPUS};
use super::{CpuList, HostSupport, ResourceError, Rules, Write};
use crate::cgroup::{CgroupVersion, Controller, HierarchyKey};

/// The cpuset lists `res` asks for, parsed: `(cpus, mems)`; an empty list is unset.
///
/// # Errors
/// [`ResourceError::List`] naming the list that does not parse.
pub fn cpuset_of(
    res: &LinuxResources,
) -> Result<(Option<CpuList>, Option<CpuList>), ResourceError> {
    let Some(cpu) = res.cpu() else {
        return Ok((None, None));
    };
    let parse = |field, v: &Option<String>| -> Result<Option<CpuList>, ResourceError> {
        match v {
            Some(s) => {
                let l = CpuList::parse(field, s)?;
                Ok((!l.is_empty()).then_some(l))
            }
            None => Ok(None),
        }
    };
    Ok((parse("cpus", cpu.cpus())?, parse("mems", cpu.mems())?))
}

/// The `cpuset` controller's rules.
pub(super) struct Cpuset;

impl Rules for Cpuset {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Controller(Controller::Cpuset)
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[("cpu", &["cpus", "mems"])]
    }

    fn validate(&self, res: &LinuxResources) -> Result<(), ResourceError> {
        cpuset_of(res).map(|_| ())
    }

    fn writes(
        &self,
        res: &LinuxResources,
        _version: CgroupVersion,
        _host: &HostSupport,
        w: &mut Vec<Write>,
    ) -> Result<(), ResourceError> {
        let (cpus, mems) = cpuset_of(res)?;
        if let Some(c) = cpus {
            w.push(Write::new(Controller::Cpuset, "cpuset.cpus", c));
        }
        if let Some(m) = mems {
            w.push(Write::new(Controller::Cpuset, "cpuset.mems", m));
        }
        Ok(())
    }

    fn properties(
        &self,
        res: &LinuxResources,
        version: CgroupVersion,
        p: &mut Vec<UnitProperty>,
    ) -> Result<(), ResourceError> {
        if version != CgroupVersion::V2 {
            return Ok(());
        }
        let (cpus, mems) = cpuset_of(res)?;
        if let Some(c) = cpus {
            p.push(
                UnitProperty::new("AllowedCPUs", PropValue::Bytes(cpuset_mask(&c)))
                    .since(SYSTEMD_ALLOWED_CPUS),
            );
        }
        if let Some(m) = mems {
            p.push(
                UnitProperty::new("AllowedMemoryNodes", PropValue::Bytes(cpuset_mask(&m)))
                    .since(SYSTEMD_ALLOWED_CPUS),
            );
        }
        Ok(())
    }

    fn covered(&self, version: CgroupVersion) -> &'static [&'static str] {
        match version {
            CgroupVersion::V1 => &[],
            CgroupVersion::V2 => &["cpuset.cpus", "cpuset.mems"],
        }
    }
}
