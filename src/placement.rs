//! Where a sandbox's threads go: the placement policy.
//!
//! Only cgroup v1 with the cgroupfs driver can place a single thread (a `tasks`
//! write). systemd moves whole processes (`add_thread` is `add_proc` there), and
//! cgroup v2 would need threaded mode enabled from the leaf up to the root,
//! rewriting cgroups the container manager owns; so v2 + cgroupfs is aligned
//! with systemd and the whole VMM process is placed once.

use serde::Serialize;

use crate::cgroup::{CgroupVersion, Driver};

/// What the supervisor moves into the sandbox cgroup.
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

/// The name of the vCPU child cgroup of the nested layout, below the sandbox cgroup.
pub const VCPU_CHILD: &str = "vcpus";

/// The `[runtime]` key choosing a split: `vcpu_cgroup_layout = "nested" | "sibling"`
/// (this component's own key; Kata has no such key).
pub const LAYOUT_KEY: &str = "vcpu_cgroup_layout";

/// A split asked for with [`LAYOUT_KEY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitChoice {
    /// vCPU threads in a child `vcpus` of the sandbox cgroup; the whole process in the
    /// sandbox cgroup. Every host kind.
    Nested,
    /// Upstream Kata's split: the process in `kata_overhead/<id>`, vCPU threads in the
    /// sandbox cgroup. cgroup v1 with the cgroupfs driver only.
    Sibling,
}

impl SplitChoice {
    /// The spellings the key accepts.
    pub const VALUES: [&'static str; 2] = ["nested", "sibling"];

    /// Parses a value of [`LAYOUT_KEY`]; `None` for an unknown value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nested" => Some(SplitChoice::Nested),
            "sibling" => Some(SplitChoice::Sibling),
            _ => None,
        }
    }
}

impl std::fmt::Display for SplitChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SplitChoice::Nested => "nested",
            SplitChoice::Sibling => "sibling",
        })
    }
}

/// Where the VMM process and its vCPU threads go, as decided for one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VcpuLayout {
    /// `sandbox_cgroup_only = true`: everything in the sandbox cgroup.
    SandboxOnly,
    /// The process in the overhead cgroup, vCPU threads in the sandbox cgroup (v1 + cgroupfs).
    Sibling,
    /// The process in the sandbox cgroup, vCPU threads in its child [`VCPU_CHILD`].
    Nested,
}

impl std::fmt::Display for VcpuLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VcpuLayout::SandboxOnly => "sandbox-only",
            VcpuLayout::Sibling => "sibling",
            VcpuLayout::Nested => "nested",
        })
    }
}

/// A split that this host kind cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value:?} cannot be used with {driver} on cgroup v{version}: {why}")]
pub struct LayoutError {
    /// The key ([`LAYOUT_KEY`]).
    pub key: &'static str,
    /// The value asked for.
    pub value: String,
    /// The driver.
    pub driver: Driver,
    /// The cgroup version.
    pub version: CgroupVersion,
    /// Why, and what to use instead.
    pub why: String,
}

impl VcpuLayout {
    /// The layout for `sandbox_cgroup_only` and the optional [`LAYOUT_KEY`] on a
    /// host kind, with the reason `resolve` prints, and notes for settings that
    /// have no effect.
    ///
    /// Unset key with `sandbox_cgroup_only = false`: `sibling` on v1 + cgroupfs (what
    /// upstream Kata does there), `nested` on the other host kinds (the only split
    /// they can do).
    ///
    /// # Errors
    /// `sibling` asked for where only v1 + cgroupfs can place single threads outside
    /// the process's cgroup.
    pub fn choose(
        driver: Driver,
        version: CgroupVersion,
        sandbox_cgroup_only: bool,
        choice: Option<SplitChoice>,
    ) -> Result<(VcpuLayout, String, Vec<String>), LayoutError> {
        let sibling_ok = driver == Driver::Cgroupfs && version == CgroupVersion::V1;
        let mut notes = Vec::new();
        if sandbox_cgroup_only {
            if let Some(c) = choice {
                notes.push(format!(
                    "{LAYOUT_KEY} = \"{c}\" has no effect: sandbox_cgroup_only = true puts the whole VMM process, vCPUs included, in the sandbox cgroup"
                ));
            }
            return Ok((
                VcpuLayout::SandboxOnly,
                "sandbox_cgroup_only = true: the whole VMM process, vCPU threads included, in the sandbox cgroup".into(),
                notes,
            ));
        }
        match choice {
            Some(SplitChoice::Sibling) if !sibling_ok => Err(LayoutError {
                key: LAYOUT_KEY,
                value: "sibling".into(),
                driver,
                version,
                why: match (driver, version) {
                    (Driver::Systemd, _) => "systemd places whole processes, so vCPU threads cannot leave the process's overhead cgroup for a sibling; use \"nested\"".into(),
                    _ => "a cgroup v2 thread can move only within its own threaded subtree, and a sibling of the overhead cgroup is outside it; use \"nested\"".into(),
                },
            }),
            Some(SplitChoice::Sibling) => Ok((
                VcpuLayout::Sibling,
                format!("sandbox_cgroup_only = false and {LAYOUT_KEY} = \"sibling\": the VMM process in kata_overhead/<sandbox-id>, each vCPU thread moves itself into the sandbox cgroup (upstream Kata's layout; the process's memory is charged to the overhead cgroup)"),
                notes,
            )),
            None if sibling_ok => Ok((
                VcpuLayout::Sibling,
                format!("sandbox_cgroup_only = false on cgroup v1 + cgroupfs without {LAYOUT_KEY}: upstream Kata's sibling layout, the VMM process in kata_overhead/<sandbox-id>, each vCPU thread moves itself into the sandbox cgroup (the process's memory is charged to the overhead cgroup; {LAYOUT_KEY} = \"nested\" keeps it in the sandbox cgroup)"),
                notes,
            )),
            Some(SplitChoice::Nested) | None => Ok((
                VcpuLayout::Nested,
                format!(
                    "sandbox_cgroup_only = false{}: the whole VMM process (memory, pids, I/O) in the sandbox cgroup, each vCPU thread moves itself into its child {VCPU_CHILD}{}",
                    if choice.is_some() { format!(" and {LAYOUT_KEY} = \"nested\"") } else { format!(" without {LAYOUT_KEY} (nested is the only split on {driver} with cgroup v{version})") },
                    match version {
                        CgroupVersion::V2 => " (a threaded child; cpu, cpuset, pids enabled for it)",
                        CgroupVersion::V1 => " (in the cpu, cpuacct and cpuset hierarchies; memory, pids, blkio, devices, freezer stay with the process)",
                    }
                ),
                notes,
            )),
        }
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

    #[test]
    fn layout_table() {
        use CgroupVersion::*;
        use Driver::*;
        let l = |d, v, only, c| VcpuLayout::choose(d, v, only, c).map(|(l, _, _)| l);
        assert_eq!(l(Cgroupfs, V1, true, None), Ok(VcpuLayout::SandboxOnly));
        assert_eq!(l(Cgroupfs, V1, false, None), Ok(VcpuLayout::Sibling));
        assert_eq!(
            l(Cgroupfs, V1, false, Some(SplitChoice::Nested)),
            Ok(VcpuLayout::Nested)
        );
        for (d, v) in [(Cgroupfs, V2), (Systemd, V1), (Systemd, V2)] {
            assert_eq!(l(d, v, false, None), Ok(VcpuLayout::Nested));
            assert_eq!(
                l(d, v, false, Some(SplitChoice::Nested)),
                Ok(VcpuLayout::Nested)
            );
            let e = l(d, v, false, Some(SplitChoice::Sibling)).unwrap_err();
            assert_eq!(e.value, "sibling");
        }
        let (_, _, notes) =
            VcpuLayout::choose(Systemd, V2, true, Some(SplitChoice::Nested)).unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(SplitChoice::parse("nested"), Some(SplitChoice::Nested));
        assert_eq!(SplitChoice::parse("Nested"), None);
    }
}
