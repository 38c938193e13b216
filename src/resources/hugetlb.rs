//! The `hugetlb` controller: OCI `hugepageLimits` → `hugetlb.<size>.limit_in_bytes`
//! (v1) / `hugetlb.<size>.max` (v2), for the host's huge page sizes only. systemd has
//! no property for it and does not enable the controller for its units on v2, so
//! there the systemd driver refuses the field.

use oci_spec::runtime::LinuxResources;

use super::{max_or, range_err, unsupported, HostSupport, ResourceError, Rules, Write};
use crate::cgroup::{CgroupVersion, Controller, HierarchyKey};

/// A huge page size in kB → the cgroup files' spelling (`2048` → `2MB`, `1048576` → `1GB`).
pub fn hugepage_size_name(kb: u64) -> String {
    if kb >= 1 << 20 && kb % (1 << 20) == 0 {
        format!("{}GB", kb >> 20)
    } else if kb >= 1 << 10 && kb % (1 << 10) == 0 {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}KB")
    }
}

/// Checks an OCI huge page size (`2MB`, `1GB`, `64KB`) and returns it.
fn hugepage_size(size: &str) -> Result<&str, ResourceError> {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(unit, "KB" | "MB" | "GB")
    {
        return Err(range_err(
            "hugepageLimits.pageSize",
            format!("{size:?}"),
            "must be a number followed by KB, MB or GB (as in hugetlb.2MB.*)",
        ));
    }
    Ok(size)
}

/// The `hugetlb` controller's rules.
pub(super) struct Hugetlb;

impl Rules for Hugetlb {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Controller(Controller::Hugetlb)
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[("", &["hugepageLimits"])]
    }

    fn validate(&self, res: &LinuxResources) -> Result<(), ResourceError> {
        for h in res.hugepage_limits().iter().flatten() {
            hugepage_size(h.page_size())?;
            if h.limit() < -1 {
                return Err(range_err(
                    "hugepageLimits.limit",
                    h.limit(),
                    "must be -1 (no limit) or a byte count",
                ));
            }
        }
        Ok(())
    }

    fn writes(
        &self,
        res: &LinuxResources,
        version: CgroupVersion,
        host: &HostSupport,
        w: &mut Vec<Write>,
    ) -> Result<(), ResourceError> {
        let v1 = version == CgroupVersion::V1;
        for h in res.hugepage_limits().iter().flatten() {
            let size = hugepage_size(h.page_size())?;
            let field = format!("hugepageLimits[{size}]");
            if !host.hugetlb {
                return Err(unsupported(
                    field,
                    "the hugetlb controller is not available on this host",
                ));
            }
            if host.probed && !host.hugepage_sizes.iter().any(|s| s == size) {
                return Err(unsupported(
                    field,
                    format!("this host's huge page sizes are {:?}", host.hugepage_sizes),
                ));
            }
            w.push(if v1 {
                Write::new(
                    Controller::Hugetlb,
                    format!("hugetlb.{size}.limit_in_bytes"),
                    h.limit(),
                )
            } else {
                Write::new(
                    Controller::Hugetlb,
                    format!("hugetlb.{size}.max"),
                    max_or(h.limit()),
                )
            });
        }
        Ok(())
    }

    fn systemd_refusal(
        &self,
        res: &LinuxResources,
        version: CgroupVersion,
    ) -> Result<(), ResourceError> {
        let Some(h) = res.hugepage_limits().iter().flatten().next() else {
            return Ok(());
        };
        if version == CgroupVersion::V2 {
            return Err(unsupported(
                format!("hugepageLimits (hugetlb.{}.max)", h.page_size()),
                "systemd does not enable the hugetlb controller for its units on cgroup v2, and has no property for it",
            ));
        }
        Ok(())
    }
}
