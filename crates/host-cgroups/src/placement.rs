//! Where a sandbox's threads go: the placement policy.
//!
//! Only cgroup v1 with the cgroupfs driver can place a single thread (a `tasks`
//! write). systemd moves whole processes (`add_thread` is `add_proc` there), and
//! cgroup v2 would need threaded mode enabled from the leaf up to the root,
//! rewriting cgroups the container manager owns; so v2 + cgroupfs is aligned
//! with systemd and the whole VMM process is placed once.

use serde::Serialize;

use crate::cgroup::{CgroupVersion, Driver};

/// What the controller moves into the sandbox cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Each vCPU thread, one by one, as it starts (v1 + cgroupfs).
    VcpuThreads,
    /// The whole VMM process, once (every other combination).
    VmmProcess,
}

impl Placement {
    /// The policy for a driver on a host of `version`.
    pub fn for_host(driver: Driver, version: CgroupVersion) -> Self {
        match (driver, version) {
            (Driver::Cgroupfs, CgroupVersion::V1) => Placement::VcpuThreads,
            _ => Placement::VmmProcess,
        }
    }

    /// Whether an overhead cgroup is used: only thread placement can split
    /// vCPUs from the rest of the process, and only when `sandbox_cgroup_only` is off.
    pub fn uses_overhead(self, sandbox_cgroup_only: bool) -> bool {
        self == Placement::VcpuThreads && !sandbox_cgroup_only
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::VcpuThreads => "vcpu-threads",
            Placement::VmmProcess => "vmm-process",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        use CgroupVersion::*;
        use Driver::*;
        assert_eq!(Placement::for_host(Cgroupfs, V1), Placement::VcpuThreads);
        assert_eq!(Placement::for_host(Cgroupfs, V2), Placement::VmmProcess);
        assert_eq!(Placement::for_host(Systemd, V1), Placement::VmmProcess);
        assert_eq!(Placement::for_host(Systemd, V2), Placement::VmmProcess);
        assert!(Placement::VcpuThreads.uses_overhead(false));
        assert!(!Placement::VcpuThreads.uses_overhead(true));
        assert!(!Placement::VmmProcess.uses_overhead(false));
    }
}
