//! The ways of placing vCPU threads the bench compares, and their configurations.

use crate::BenchError;
use host_cgroups::config::RuntimeConfig;

/// One way of placing vCPU threads (a row of the table, a field of each size's results).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// This project, default mode: vCPUs are born in the sandbox cgroup.
    Born,
    /// This project, split mode: each vCPU moves itself.
    SelfPlace,
    /// cgroup v1 only: the nested split (`vcpu_cgroup_layout = "nested"`), where a vCPU
    /// moves in the cpu, cpuacct and cpuset hierarchies only (on v2 `SelfPlace` is it).
    SelfNested,
    /// This project before issue 11, split mode: the supervisor thread writes the tids.
    CtlWrites,
    /// runtime-rs + dragonball, default mode: no hook, pinning pulled after start.
    Upstream,
    /// `cgroups-rs` 0.5.1 `Cgroup::add_task` from a supervisor thread, split mode.
    CgroupsRs,
}

/// Every mode, in the order of the table.
pub const MODES: [Mode; 6] = [
    Mode::Born,
    Mode::SelfPlace,
    Mode::SelfNested,
    Mode::CtlWrites,
    Mode::Upstream,
    Mode::CgroupsRs,
];

impl Mode {
    /// Its field in each size's results.
    pub fn key(self) -> &'static str {
        match self {
            Mode::Born => "born",
            Mode::SelfPlace => "self_place",
            Mode::SelfNested => "self_place_nested",
            Mode::CtlWrites => "controller_writes",
            Mode::Upstream => "upstream",
            Mode::CgroupsRs => "cgroups_rs",
        }
    }
    /// Its label in the table and the plot.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Born => "born (default mode)",
            Mode::SelfPlace => "self-placement (split)",
            Mode::SelfNested => "self-placement (nested split)",
            Mode::CtlWrites => "controller writes tids (split, before)",
            Mode::Upstream => "upstream (default mode, pinning pulled)",
            Mode::CgroupsRs => "cgroups-rs add_task (split)",
        }
    }
    /// Whether it runs in split mode (`sandbox_cgroup_only = false`).
    pub fn split(self) -> bool {
        matches!(
            self,
            Mode::SelfPlace | Mode::SelfNested | Mode::CtlWrites | Mode::CgroupsRs
        )
    }
    /// Whether it pins vCPUs (where pinning applies).
    pub fn pins(self) -> bool {
        !matches!(self, Mode::CgroupsRs)
    }
}

/// The embedded configuration, in split mode or not, pinning or not.
pub fn config(split: bool, pin: bool) -> Result<RuntimeConfig, BenchError> {
    let mut c = RuntimeConfig::embedded().map_err(|e| BenchError::step("embedded config", e))?;
    c.sandbox_cgroup_only = !split;
    c.enable_vcpus_pinning = pin;
    Ok(c)
}

/// The configuration of `mode`'s runs.
pub fn mode_config(mode: Mode, pin: bool) -> Result<RuntimeConfig, BenchError> {
    let mut c = config(mode.split(), pin)?;
    if mode == Mode::SelfNested {
        c.vcpu_cgroup_layout = Some(host_cgroups::placement::SplitChoice::Nested);
    }
    Ok(c)
}
