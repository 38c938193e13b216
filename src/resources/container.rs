//! Containers' resources inside one sandbox: which fields each vCPU layout applies
//! on the host, and the nested layout's vCPU child made from the containers' CPU
//! limits.

use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use super::{cpuset_of, from_json, given_fields, CpuList, ResourceError};
use crate::cgroup::CgroupVersion;

/// What a container's resources changed on the host, as [`crate::sandbox::Sandbox::update_container`]
/// reports it: the fields it did not apply, so that an embedder can act without a
/// `tracing` subscriber (the sandbox also logs them with `tracing::warn!`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ContainerUpdate {
    /// OCI fields given for the container and applied to no host cgroup, dotted as in
    /// the runtime spec (`cpu.quota`, `memory.limit`, `pids.limit`, `blockIO`), in the
    /// spec's order; empty when everything given was applied.
    pub not_applied: Vec<String>,
    /// Why those fields were not applied (the layout and what it applies); empty when
    /// nothing was left out.
    pub reason: String,
}

impl ContainerUpdate {
    /// Whether every field given was applied.
    pub fn is_complete(&self) -> bool {
        self.not_applied.is_empty()
    }

    /// One line for `notes` naming the container, the fields and why; `None` when
    /// everything was applied.
    pub fn note(&self, container_id: &str) -> Option<String> {
        (!self.is_complete()).then(|| {
            format!(
                "container {container_id}: not applied to the host: {} ({})",
                self.not_applied.join(", "),
                self.reason
            )
        })
    }
}

/// The fields a container's resources apply in `layout`, in the runtime spec's names:
/// with `nested`, the CPU part the vCPU child takes ([`vcpu_child_resources`]); with
/// `sandbox-only` and `sibling`, the cpuset only (the sandbox cgroup gets the union of
/// the containers' cpusets, as Kata's runtime-rs does).
pub fn container_applied_fields(layout: crate::placement::VcpuLayout) -> &'static [&'static str] {
    match layout {
        crate::placement::VcpuLayout::Nested => &[
            "cpu.shares",
            "cpu.quota",
            "cpu.period",
            "cpu.cpus",
            "cpu.mems",
        ],
        _ => &["cpu.cpus", "cpu.mems"],
    }
}

/// What applying `res` as a container's resources in `layout` leaves out
/// ([`container_applied_fields`]), with the reason.
pub fn container_update(
    res: &LinuxResources,
    layout: crate::placement::VcpuLayout,
) -> ContainerUpdate {
    let applied = container_applied_fields(layout);
    let not_applied: Vec<String> = given_fields(res)
        .into_iter()
        .filter(|f| !applied.contains(&f.as_str()))
        .collect();
    if not_applied.is_empty() {
        return ContainerUpdate::default();
    }
    let reason = match layout {
        crate::placement::VcpuLayout::Nested => "with the nested layout a container's cpu.shares, cpu.quota, cpu.period, cpu.cpus and cpu.mems go to the vCPU child; its other limits are the guest's to enforce (sandbox-wide limits: sandbox resources)".to_string(),
        other => format!("with the {other} layout only a container's cpuset (cpu.cpus, cpu.mems) is applied, as the union of the containers' cpusets on the sandbox cgroup, as Kata's runtime-rs does; its other limits are the guest's to enforce (sandbox-wide limits: sandbox resources; vcpu_cgroup_layout = \"nested\" applies containers' CPU limits to the vCPUs)"),
    };
    ContainerUpdate {
        not_applied,
        reason,
    }
}

/// Default CFS period, µs (the kernel's, and the period of a summed quota when the
/// containers' periods differ).
pub const DEFAULT_CFS_PERIOD_US: u64 = 100_000;

/// The CPU resources of the nested layout's vCPU child, from the containers'
/// resources (the guest runs exactly these containers):
/// - `cpus`, `mems`: the union of the containers' lists (unset when none has one);
/// - `quota`/`period`: the containers' limits summed as CPU-seconds per second over
///   containers with a positive quota (period default 100000 µs); with one common
///   period the quotas are added, otherwise `quota = ceil(Σ qᵢ·100000/pᵢ)` with
///   period 100000; no container with a quota → `quota = -1` (no limit, lifting an
///   earlier one);
/// - `shares`: the sum of the containers' shares, at most 262144 (the kernel's
///   maximum); none → 1024 (the kernel's default), lifting an earlier value.
///
/// # Errors
/// A container's cpuset list does not parse.
pub fn vcpu_child_resources<'a>(
    containers: impl IntoIterator<Item = &'a LinuxResources>,
) -> Result<LinuxResources, ResourceError> {
    let (mut cpus, mut mems) = (CpuList::default(), CpuList::default());
    let mut limits: Vec<(u64, u64)> = Vec::new();
    let mut shares: Option<u64> = None;
    for r in containers {
        let (c, m) = cpuset_of(r)?;
        if let Some(c) = c {
            cpus = cpus.union(&c);
        }
        if let Some(m) = m {
            mems = mems.union(&m);
        }
        if let Some(cpu) = r.cpu() {
            if let Some(q) = cpu.quota().filter(|q| *q > 0) {
                let p = cpu
                    .period()
                    .filter(|p| *p > 0)
                    .unwrap_or(DEFAULT_CFS_PERIOD_US);
                limits.push((q as u64, p));
            }
            if let Some(s) = cpu.shares().filter(|s| *s > 0) {
                shares = Some(shares.unwrap_or(0).saturating_add(s).min(262_144));
            }
        }
    }
    let mut cpu = serde_json::Map::new();
    if !cpus.is_empty() {
        cpu.insert("cpus".into(), cpus.to_string().into());
    }
    if !mems.is_empty() {
        cpu.insert("mems".into(), mems.to_string().into());
    }
    match limits.first() {
        None => {
            cpu.insert("quota".into(), (-1i64).into());
        }
        Some(&(_, p0)) if limits.iter().all(|&(_, p)| p == p0) => {
            let q: u64 = limits.iter().map(|&(q, _)| q).fold(0, u64::saturating_add);
            cpu.insert("quota".into(), q.min(i64::MAX as u64).into());
            cpu.insert("period".into(), p0.into());
        }
        Some(_) => {
            let num: u128 = limits
                .iter()
                .map(|&(q, p)| {
                    u128::from(q) * u128::from(DEFAULT_CFS_PERIOD_US) * 1_000_000 / u128::from(p)
                })
                .sum();
            let q = num.div_ceil(1_000_000).min(i64::MAX as u128) as u64;
            cpu.insert("quota".into(), q.into());
            cpu.insert("period".into(), DEFAULT_CFS_PERIOD_US.into());
        }
    }
    cpu.insert("shares".into(), shares.unwrap_or(1024).into());
    from_json(&serde_json::json!({ "cpu": cpu }).to_string())
}

/// Where each CPU field of the containers' resources lands in the nested layout's
/// vCPU child on cgroup `version` (`child` is its path relative to the hierarchy
/// roots), as `resolve` prints it.
pub fn vcpu_child_routing(version: CgroupVersion, child: &str) -> Vec<String> {
    let v1 = version == CgroupVersion::V1;
    let f = |v1f: &str, v2f: &str| format!("{child}/{}", if v1 { v1f } else { v2f });
    vec![
        format!(
            "containers' cpu.cpus (union) → {}",
            f("cpuset.cpus (cpuset hierarchy)", "cpuset.cpus")
        ),
        format!(
            "containers' cpu.mems (union) → {}",
            f("cpuset.mems (cpuset hierarchy)", "cpuset.mems")
        ),
        format!(
            "containers' cpu.quota/period (summed as CPU-s/s; one common period kept, else 100000 µs; none → no limit) → {}",
            if v1 {
                format!("{child}/cpu.cfs_period_us then {child}/cpu.cfs_quota_us (cpu hierarchy)")
            } else {
                format!("{child}/cpu.max")
            }
        ),
        format!(
            "containers' cpu.shares (summed, at most 262144; none → 1024) → {}",
            f("cpu.shares (cpu hierarchy)", "cpu.weight (shares mapped as runc does)")
        ),
        "sandbox resources (run --resources, the bundle's linux.resources) → the sandbox cgroup itself, as without the split (they bound the VMM's own threads and the vCPUs together)".into(),
        "enable_vcpus_pinning → each vCPU's affinity, within the child's cpuset (the containers' union)".into(),
    ]
}
