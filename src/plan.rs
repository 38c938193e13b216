//! Everything a sandbox's cgroup setup will be, computed without side effects.
//!
//! `resolve` prints a [`SandboxPlan`]; `run` builds its managers from the same
//! plan, so what is printed is what is done.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use thiserror::Error;

use crate::cgroup::HierarchyKey;
use crate::config::RuntimeConfig;
use crate::host::{
    CgroupLayout, CgroupVersion, DirSet, Hierarchy, CGROUP_ROOT, V1_CONTROLLERS, V2_CONTROLLERS,
};
use crate::path::{CgroupsPath, Driver, PathError};
use crate::placement::{Placement, VcpuLayout};
use crate::resources::systemd as sd_props;
pub use crate::resources::systemd::Property;
use crate::resources::{self, ResourceError, Write};

/// Input that cannot make a plan.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A bad cgroups path or sandbox id.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Bad resources.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// A vCPU split this host kind cannot do.
    #[error(transparent)]
    Layout(#[from] crate::placement::LayoutError),
}

/// The nested layout's vCPU child cgroup, `<sandbox>/vcpus`.
#[derive(Debug, Clone, Serialize)]
pub struct ChildPlan {
    /// Relative to each hierarchy's root.
    pub path: String,
    /// Controller → absolute directory (v1: the cpu, cpuacct and cpuset hierarchies;
    /// v2: `unified`).
    pub paths: BTreeMap<HierarchyKey, PathBuf>,
    /// v2: `threaded`, written to the child's `cgroup.type`; v1: `None`.
    pub cgroup_type: Option<String>,
    /// v2: threaded controllers enabled in the sandbox's `cgroup.subtree_control`
    /// (`cpu` required; `cpuset`, `pids` when available); v1: the hierarchies.
    pub controllers: Vec<String>,
    /// Which file each per-container CPU field lands in.
    pub routing: Vec<String>,
    /// The child's cgroupfs writes for the given resources taken as one container's
    /// (`resolve --resources`): the CPU part only, combined as
    /// [`resources::vcpu_child_resources`] does.
    pub writes: Vec<Write>,
}

/// One cgroup of the plan (sandbox or overhead).
#[derive(Debug, Clone, Serialize)]
pub struct CgroupPlan {
    /// The parsed path.
    #[serde(skip)]
    pub parsed: CgroupsPath,
    /// Relative to each hierarchy's root.
    pub path: String,
    /// The systemd slice (systemd driver only).
    pub slice: Option<String>,
    /// The systemd unit (systemd driver only).
    pub unit: Option<String>,
    /// Controller → absolute directory.
    pub paths: BTreeMap<HierarchyKey, PathBuf>,
}

/// The whole cgroup setup of one sandbox.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxPlan {
    /// The sandbox id.
    pub sandbox_id: String,
    /// cgroupfs or systemd.
    pub driver: Driver,
    /// 1 or 2.
    pub cgroup_version: u8,
    /// The sandbox cgroup.
    pub sandbox: CgroupPlan,
    /// The overhead cgroup, when one is used.
    pub overhead: Option<CgroupPlan>,
    /// `sandbox_cgroup_only` as configured.
    pub configured_sandbox_cgroup_only: bool,
    /// `sandbox_cgroup_only` in effect (true whenever the whole process is placed).
    pub sandbox_cgroup_only: bool,
    /// vcpu-threads or vmm-process: what the supervisor moves into the sandbox cgroup
    /// (or, for the nested layout, the process; vCPUs then move into the child).
    pub placement: Placement,
    /// sandbox-only, sibling or nested.
    pub vcpu_layout: VcpuLayout,
    /// Why that layout (settings and host kind).
    pub vcpu_layout_reason: String,
    /// The nested layout's vCPU child.
    pub vcpus_child: Option<ChildPlan>,
    /// cgroupfs writes for the given resources.
    pub writes: Vec<Write>,
    /// systemd unit properties for the given resources (systemd driver).
    pub properties: Vec<Property>,
    /// vCPU counts as configured and in force (Kata's adjustments on this host's CPUs).
    pub vcpus: crate::config::VcpuCounts,
    /// Decisions worth telling the user about, and warnings (unknown keys, clamped values).
    pub notes: Vec<String>,
    /// The layout the plan is for.
    #[serde(skip)]
    pub layout: CgroupLayout,
    /// The sandbox resources the plan was made with, validated once here
    /// ([`resources::Checked`]); `Sandbox::start` and the supervisor apply these
    /// without checking them again.
    #[serde(skip)]
    pub resources: Option<resources::Checked>,
}

/// A stand-in layout for planning on a host of the other cgroup version.
pub fn nominal_layout(version: CgroupVersion) -> CgroupLayout {
    let root = PathBuf::from(CGROUP_ROOT);
    match version {
        CgroupVersion::V1 => CgroupLayout {
            hierarchy: Hierarchy::Hybrid,
            mounts: V1_CONTROLLERS
                .iter()
                .map(|c| (c.to_string(), root.join(c)))
                .collect(),
            unified: Some(root.join("unified")),
            v2_controllers: Vec::new(),
            own: BTreeMap::new(),
            roots: BTreeMap::new(),
        },
        CgroupVersion::V2 => CgroupLayout {
            hierarchy: Hierarchy::Unified,
            mounts: [("unified".to_string(), root.clone())].into(),
            unified: Some(root),
            v2_controllers: V2_CONTROLLERS.iter().map(|c| c.to_string()).collect(),
            own: BTreeMap::new(),
            roots: BTreeMap::new(),
        },
    }
}

fn cgroup_plan(parsed: CgroupsPath, layout: &CgroupLayout) -> CgroupPlan {
    let path = parsed.relative();
    // The drivers' own directories (the directory map), so the plan is what a run uses.
    let paths = layout.cgroup_dirs(&path, parsed.driver(), DirSet::Sandbox);
    let (slice, unit) = match parsed.unit() {
        Some(u) => (Some(u.slice.clone()), Some(u.unit.clone())),
        None => (None, None),
    };
    CgroupPlan {
        parsed,
        path,
        slice,
        unit,
        paths,
    }
}

impl SandboxPlan {
    /// Plans sandbox `sandbox_id` at `cgroups_path` on `layout`, with optional resources.
    /// The id comes before the path, as in [`crate::sandbox::Sandbox::new`].
    ///
    /// # Errors
    /// A cgroups path that does not parse, settings that cannot hold on this host, and
    /// resources that break a rule ([`resources::Checked::new`], then the version's and
    /// the host's rules), each named.
    pub fn new(
        config: &RuntimeConfig,
        sandbox_id: &str,
        cgroups_path: &str,
        layout: &CgroupLayout,
        resources: Option<&LinuxResources>,
    ) -> Result<Self, PlanError> {
        // The path's error comes first, as it always has.
        CgroupsPath::parse(cgroups_path, sandbox_id)?;
        let checked = resources
            .map(|r| resources::Checked::new(r.clone()))
            .transpose()?;
        Self::new_checked(config, sandbox_id, cgroups_path, layout, checked.as_ref())
    }

    /// [`SandboxPlan::new`] with resources already checked (a caller that validated its
    /// input on entry, as the command does): they are not checked again.
    ///
    /// # Errors
    /// As [`SandboxPlan::new`], less the resources' own checks.
    pub fn new_checked(
        config: &RuntimeConfig,
        sandbox_id: &str,
        cgroups_path: &str,
        layout: &CgroupLayout,
        checked: Option<&resources::Checked>,
    ) -> Result<Self, PlanError> {
        let parsed = CgroupsPath::parse(cgroups_path, sandbox_id)?;
        let resources = checked.map(resources::Checked::resources);
        let checked = checked.cloned();
        let driver = parsed.driver();
        let version = layout.version();
        let (vcpu_layout, vcpu_layout_reason, mut notes) = VcpuLayout::choose(
            driver,
            version,
            config.sandbox_cgroup_only,
            config.vcpu_cgroup_layout,
        )?;
        let placement = match vcpu_layout {
            // The whole process goes into the sandbox cgroup; vCPUs then move to the child.
            VcpuLayout::Nested => Placement::VmmProcess,
            _ => Placement::for_host(driver, version),
        };
        let overhead = if vcpu_layout == VcpuLayout::Sibling {
            Some(cgroup_plan(parsed.overhead(sandbox_id)?, layout))
        } else {
            None
        };
        if !config.vmm_in_process() {
            notes.push(format!(
                "hypervisor {} does not run in-process: the vCPU controller stays inactive",
                config.hypervisor_name
            ));
        }
        if let Some(r) = resources {
            check_vmm_cgroup_resources(r, version, vcpu_layout, &parsed.relative())?;
        }
        let support = resources::HostSupport::probe(layout);
        let (writes, mut properties) = match &checked {
            // systemd owns every controller it manages: resources become unit properties,
            // and only what it has no property for is written to cgroupfs.
            Some(r) if driver == Driver::Systemd => (
                sd_props::cgroupfs_writes_for(r, version, &support)?,
                sd_props::systemd_properties(r, version)?,
            ),
            Some(r) => (resources::plan_for(r, version, &support)?, Vec::new()),
            None => (Vec::new(), Vec::new()),
        };
        if let Some(r) = resources {
            notes.extend(resources::not_applied(r));
        }
        if version == CgroupVersion::V1
            && support.probed
            && !support.memsw
            && resources.is_some_and(|r| r.memory().as_ref().is_some_and(|m| m.limit() == Some(-1)))
        {
            notes.push("memory.limit = -1: memory.memsw.limit_in_bytes is not written, this host has no swap accounting".into());
        }
        if !support.probed && resources.is_some() {
            notes.push(format!(
                "planned for a cgroup v{version} host other than this one: optional kernel files (memory+swap, real-time, burst, block I/O, huge pages) are assumed present"
            ));
        }
        let host_cpus = crate::host::online_cpus()
            .map(|c| u32::try_from(c.len()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let vcpus = config.vcpus(host_cpus);
        notes.extend(config.warnings.iter().cloned());
        notes.extend(vcpus.note(&config.source));
        if let Some(u) = parsed.unit() {
            let start: Vec<Property> = sd_props::start_properties(u, version, None)
                .iter()
                .map(sd_props::UnitProperty::to_plan)
                .collect();
            properties.splice(0..0, start);
            if !u.is_slice() {
                notes.push(format!(
                    "{} is started by the first process placed, with PIDs = [that pid] and the properties above",
                    u.unit
                ));
            }
            let gated: Vec<String> = checked
                .as_ref()
                .map(|r| sd_props::resource_properties(r, version))
                .transpose()?
                .unwrap_or_default()
                .into_iter()
                .filter_map(|p| {
                    p.min_systemd
                        .map(|v| format!("{} (systemd >= {v})", p.name))
                })
                .collect();
            if !gated.is_empty() {
                notes.push(format!(
                    "left out with a warning on an older systemd: {}",
                    gated.join(", ")
                ));
            }
        }
        let sandbox = cgroup_plan(parsed, layout);
        let vcpus_child = if vcpu_layout == VcpuLayout::Nested {
            let child = crate::placement::VCPU_CHILD;
            let path = format!("{}/{child}", sandbox.path);
            let paths = layout.cgroup_dirs(&path, Driver::Cgroupfs, DirSet::VcpusChild);
            let child_writes = match resources {
                Some(r) => {
                    let child = resources::Checked::new(resources::vcpu_child_resources([r])?)?;
                    resources::plan_for(&child, version, &support)?
                }
                None => Vec::new(),
            };
            Some(ChildPlan {
                controllers: match version {
                    CgroupVersion::V1 => paths.keys().map(|k| k.name().to_string()).collect(),
                    CgroupVersion::V2 => ["cpu", "cpuset", "pids"]
                        .iter()
                        .filter(|c| {
                            !support.probed
                                || support.v2_controllers.is_empty()
                                || support.v2_controllers.iter().any(|x| x == *c)
                        })
                        .map(|c| c.to_string())
                        .collect(),
                },
                cgroup_type: (version == CgroupVersion::V2).then(|| "threaded".to_string()),
                routing: resources::vcpu_child_routing(version, &path),
                writes: child_writes,
                paths,
                path,
            })
        } else {
            None
        };
        Ok(SandboxPlan {
            sandbox_id: sandbox_id.to_string(),
            driver,
            cgroup_version: version.number(),
            sandbox,
            overhead,
            configured_sandbox_cgroup_only: config.sandbox_cgroup_only,
            sandbox_cgroup_only: vcpu_layout == VcpuLayout::SandboxOnly,
            placement,
            vcpu_layout,
            vcpu_layout_reason,
            vcpus_child,
            writes,
            properties,
            vcpus,
            notes,
            layout: layout.clone(),
            resources: checked,
        })
    }

    /// The cgroup version planned for.
    pub fn version(&self) -> CgroupVersion {
        self.layout.version()
    }

    /// Whether the whole VMM process is placed in the sandbox cgroup (layouts
    /// `sandbox-only` and `nested`; with `sibling` it stays in the overhead cgroup).
    pub fn vmm_in_sandbox_cgroup(&self) -> bool {
        self.vcpu_layout != VcpuLayout::Sibling
    }

    /// The rules sandbox resources must meet for this plan beyond the values
    /// themselves: where the VMM process is in the sandbox cgroup, no memory limit
    /// below [`resources::VMM_MEMORY_MIN`]. [`SandboxPlan::new`] runs it on the planned
    /// resources; the supervisor on the resources it is started with and on every
    /// `set_sandbox_resources`.
    ///
    /// # Errors
    /// [`ResourceError::OutOfRange`] naming the field, the value and the cgroup.
    pub fn check_sandbox_resources(&self, res: &LinuxResources) -> Result<(), ResourceError> {
        check_vmm_cgroup_resources(res, self.version(), self.vcpu_layout, &self.sandbox.path)
    }
}

/// The layout-dependent rule of [`SandboxPlan::check_sandbox_resources`].
fn check_vmm_cgroup_resources(
    res: &LinuxResources,
    version: CgroupVersion,
    layout: VcpuLayout,
    cgroup: &str,
) -> Result<(), ResourceError> {
    if layout == VcpuLayout::Sibling {
        return Ok(());
    }
    resources::check_vmm_memory_floor(res, version, cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(only: bool) -> RuntimeConfig {
        let mut c = RuntimeConfig::embedded().unwrap();
        c.sandbox_cgroup_only = only;
        c
    }

    /// Resources are validated once per plan (issue 19: before, about 4 times per start
    /// on cgroupfs and 10 on systemd): `new` checks them, `new_checked` takes them
    /// checked, and the nested layout's child checks only the value it derives.
    #[test]
    fn resources_are_validated_once_per_plan() {
        use crate::resources::{from_json, Checked, VALIDATIONS};
        let count = || VALIDATIONS.with(|v| v.get());
        let res = from_json(r#"{"cpu":{"shares":512,"quota":50000,"period":100000}}"#).unwrap();
        let mut nested = cfg(false);
        nested.vcpu_cgroup_layout = Some(crate::placement::SplitChoice::Nested);
        for config in [cfg(true), cfg(false), nested] {
            for driver_path in ["hcg/sb", "hcg.slice:kata:sb"] {
                for version in [CgroupVersion::V1, CgroupVersion::V2] {
                    let layout = nominal_layout(version);
                    let before = count();
                    let p = SandboxPlan::new(&config, "sb", driver_path, &layout, Some(&res));
                    let Ok(p) = p else { continue };
                    // The nested layout's child checks the one value it derives.
                    let child = u32::from(p.vcpu_layout == VcpuLayout::Nested);
                    assert_eq!(count() - before, 1 + child, "{driver_path} {version}");
                    let checked = p.resources.clone().unwrap();
                    let before = count();
                    let again = SandboxPlan::new_checked(
                        &config,
                        "sb",
                        driver_path,
                        &layout,
                        Some(&checked),
                    )
                    .unwrap();
                    assert_eq!(count() - before, child, "{driver_path} {version}");
                    assert_eq!(again.writes, p.writes);
                    assert_eq!(
                        Checked::reuse_or_new(Some(&checked), res.clone()),
                        Ok(checked)
                    );
                    assert_eq!(count() - before, child, "reuse_or_new validated again");
                }
            }
        }
    }

    #[test]
    fn default_path_v1_and_v2() {
        let p = SandboxPlan::new(
            &cfg(true),
            "sb1",
            "",
            &nominal_layout(CgroupVersion::V1),
            None,
        )
        .unwrap();
        assert_eq!(p.driver, Driver::Cgroupfs);
        assert_eq!(p.placement, Placement::VcpuThreads);
        assert_eq!(p.sandbox.path, "kata_sandboxed_pod/sb1");
        assert_eq!(
            p.sandbox.paths["cpu"],
            PathBuf::from("/sys/fs/cgroup/cpu/kata_sandboxed_pod/sb1")
        );
        assert!(p.overhead.is_none());
        let p = SandboxPlan::new(
            &cfg(false),
            "sb1",
            "",
            &nominal_layout(CgroupVersion::V1),
            None,
        )
        .unwrap();
        assert_eq!(p.overhead.unwrap().path, "kata_overhead/sb1");
        let p = SandboxPlan::new(
            &cfg(false),
            "sb1",
            "/a/b",
            &nominal_layout(CgroupVersion::V2),
            None,
        )
        .unwrap();
        // v2 + cgroupfs with sandbox_cgroup_only = false: the nested split, the only one there.
        assert_eq!(p.placement, Placement::VmmProcess);
        assert_eq!(p.vcpu_layout, VcpuLayout::Nested);
        assert!(p.overhead.is_none());
        assert!(!p.sandbox_cgroup_only);
        let child = p.vcpus_child.as_ref().unwrap();
        assert_eq!(child.path, "a/b/vcpus");
        assert_eq!(child.cgroup_type.as_deref(), Some("threaded"));
        assert_eq!(
            child.paths["unified"],
            PathBuf::from("/sys/fs/cgroup/a/b/vcpus")
        );
        assert_eq!(
            p.sandbox.paths["unified"],
            PathBuf::from("/sys/fs/cgroup/a/b")
        );
    }

    #[test]
    fn nested_child_writes_and_refused_sibling() {
        let mut c = cfg(false);
        c.vcpu_cgroup_layout = Some(crate::placement::SplitChoice::Nested);
        let r =
            resources::from_json(r#"{"cpu":{"quota":50000,"period":100000,"cpus":"0"}}"#).unwrap();
        let p =
            SandboxPlan::new(&c, "sb1", "x", &nominal_layout(CgroupVersion::V1), Some(&r)).unwrap();
        assert_eq!(p.vcpu_layout, VcpuLayout::Nested);
        assert!(p.overhead.is_none());
        let ch = p.vcpus_child.unwrap();
        assert_eq!(
            ch.paths.keys().collect::<Vec<_>>(),
            ["cpu", "cpuacct", "cpuset"]
        );
        let w: Vec<(&str, &str)> = ch
            .writes
            .iter()
            .map(|w| (w.file.as_str(), w.value.as_str()))
            .collect();
        assert_eq!(
            w,
            [
                ("cpu.shares", "1024"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("cpuset.cpus", "0")
            ]
        );
        c.vcpu_cgroup_layout = Some(crate::placement::SplitChoice::Sibling);
        let e =
            SandboxPlan::new(&c, "sb1", "x", &nominal_layout(CgroupVersion::V2), None).unwrap_err();
        assert!(e.to_string().contains("\"sibling\""), "{e}");
    }

    #[test]
    fn vcpu_child_resources_sum_quotas_and_shares() {
        let r = |j: &str| resources::from_json(j).unwrap();
        let a = r(r#"{"cpu":{"quota":25000,"period":100000,"shares":512,"cpus":"0"}}"#);
        let b = r(r#"{"cpu":{"quota":25000,"period":100000,"shares":256,"cpus":"1"}}"#);
        let c = resources::vcpu_child_resources([&a, &b]).unwrap();
        let cpu = c.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(50000));
        assert_eq!(cpu.period(), Some(100000));
        assert_eq!(cpu.shares(), Some(768));
        assert_eq!(cpu.cpus().as_deref(), Some("0-1"));
        // Different periods: CPU-s/s summed over a 100 ms period (0.5 + 0.25).
        let d = r(r#"{"cpu":{"quota":5000,"period":10000}}"#);
        let e = r(r#"{"cpu":{"quota":50000,"period":200000}}"#);
        let c = resources::vcpu_child_resources([&d, &e]).unwrap();
        let cpu = c.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.period()), (Some(75000), Some(100000)));
        // None with a quota: no limit (lifts an earlier one); no shares: the default.
        let c = resources::vcpu_child_resources([&r(r#"{"cpu":{"cpus":"0"}}"#)]).unwrap();
        let cpu = c.cpu().as_ref().unwrap();
        assert_eq!((cpu.quota(), cpu.shares()), (Some(-1), Some(1024)));
    }

    #[test]
    fn memory_floor_where_the_vmm_process_is_in_the_sandbox_cgroup() {
        use CgroupVersion::{V1, V2};
        let plan = |only: bool, path: &str, v: CgroupVersion, json: &str| {
            let r = resources::from_json(json).unwrap();
            SandboxPlan::new(&cfg(only), "sb1", path, &nominal_layout(v), Some(&r))
        };
        // sandbox-only and nested (every host kind, both drivers): refused, naming the
        // field, the value, the floor and the cgroup.
        for (only, path, v) in [
            (true, "hcgX/sb", V1),
            (true, "hcgX/sb", V2),
            (false, "hcgX/sb", V2),
            (true, "kata.slice:kata:sb1", V1),
            (true, "kata.slice:kata:sb1", V2),
            (false, "kata.slice:kata:sb1", V2),
        ] {
            for limit in [1, 4096, resources::VMM_MEMORY_MIN - 1] {
                let e = plan(
                    only,
                    path,
                    v,
                    &format!(r#"{{"memory":{{"limit":{limit}}}}}"#),
                )
                .unwrap_err()
                .to_string();
                assert!(
                    e.contains("memory.limit") && e.contains(&limit.to_string()),
                    "{e}"
                );
                assert!(e.contains("6291456"), "{e}");
                let cgroup = if path.contains(':') {
                    "kata.slice/kata-sb1.scope"
                } else {
                    "hcgX/sb"
                };
                assert!(e.contains(cgroup), "{e}");
            }
            for ok in [resources::VMM_MEMORY_MIN, -1, 0] {
                plan(only, path, v, &format!(r#"{{"memory":{{"limit":{ok}}}}}"#)).unwrap();
            }
        }
        // v1 memory+swap bounds memory too; v2 swap does not.
        let e = plan(true, "x", V1, r#"{"memory":{"swap":4096}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory.swap"), "{e}");
        let e = plan(true, "x", V2, r#"{"unified":{"memory.max":"4096"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory.max"), "{e}");
        plan(true, "x", V2, r#"{"unified":{"memory.max":"max"}}"#).unwrap();
        // sibling (v1 + cgroupfs, sandbox_cgroup_only = false): only vCPU threads move,
        // memory stays charged to the overhead cgroup.
        let p = plan(false, "x", V1, r#"{"memory":{"limit":4096}}"#).unwrap();
        assert_eq!(p.vcpu_layout, VcpuLayout::Sibling);
        assert!(!p.vmm_in_sandbox_cgroup());
        let small = resources::from_json(r#"{"memory":{"limit":4096}}"#).unwrap();
        p.check_sandbox_resources(&small).unwrap();
        let p = plan(true, "x", V1, "{}").unwrap();
        assert!(p.check_sandbox_resources(&small).is_err());
    }

    #[test]
    fn systemd_path() {
        let p = SandboxPlan::new(
            &cfg(true),
            "sb1",
            "kata-pods.slice:kata:sb1",
            &nominal_layout(CgroupVersion::V2),
            None,
        )
        .unwrap();
        assert_eq!(p.driver, Driver::Systemd);
        assert_eq!(p.sandbox.unit.as_deref(), Some("kata-sb1.scope"));
        assert_eq!(p.sandbox.slice.as_deref(), Some("kata-pods.slice"));
        assert_eq!(p.sandbox.path, "kata.slice/kata-pods.slice/kata-sb1.scope");
    }

    #[test]
    fn writes_for_v2() {
        let r = resources::from_json(r#"{"cpu":{"shares":1024}}"#).unwrap();
        let p = SandboxPlan::new(
            &cfg(true),
            "sb1",
            "x",
            &nominal_layout(CgroupVersion::V2),
            Some(&r),
        )
        .unwrap();
        assert_eq!(p.writes[0].file, "cpu.weight");
        assert_eq!(p.writes[0].value, "100");
    }
}
