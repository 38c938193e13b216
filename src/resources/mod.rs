//! OCI `LinuxResources` checked and turned into cgroupfs writes and systemd unit
//! properties, for cgroup v1 and v2: one file per controller.
//!
//! Each controller's file holds every rule about its fields (`Rules`): the OCI
//! keys it reads, its checks, its v1 and v2 writes in the kernel's order, its systemd
//! properties and the files those cover, and how to restore a file from what reading
//! it gave. The rest of the library iterates the table (`RULES`): the cgroupfs plan
//! ([`plan_for`]), the systemd properties ([`systemd::resource_properties`]), the
//! rollback values ([`restore_value`]), the fields given ([`given_fields`]), the
//! notes ([`not_applied`]) and the keys the JSON parser knows. Adding an OCI field
//! is one controller file plus its tests (docs/design.md, "Change map").
//!
//! This is pure logic, shared by the cgroupfs driver (which performs the writes),
//! the systemd driver (which writes what systemd has no property for) and `resolve`
//! (which prints both). Every value is validated here, before the first write.

mod blkio;
mod container;
mod cpu;
mod cpuset;
mod devices;
mod hugetlb;
mod memory;
mod network;
mod parse;
mod pids;
mod rdma;
mod support;
pub mod systemd;
mod unified;

use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use thiserror::Error;

use crate::cgroup::{CgroupVersion, HierarchyKey};
pub use crate::cpulist::{CpuList, CpuListError};

pub use blkio::{blkio_weight_to_io, throttle_lists, Throttles, BLKIO_WEIGHT_RANGE};
pub use container::{
    container_applied_fields, container_update, vcpu_child_resources, vcpu_child_routing,
    ContainerUpdate, DEFAULT_CFS_PERIOD_US,
};
pub use cpu::{
    effective_quota, shares_to_weight, CFS_PERIOD_RANGE, CFS_QUOTA_MAX, CFS_QUOTA_MIN, SHARES_RANGE,
};
pub use cpuset::cpuset_of;
pub use hugetlb::hugepage_size_name;
pub use memory::{
    check_vmm_memory_floor, memsw_first, order_v1_memory, swap_to_v2, VMM_MEMORY_MIN,
};
pub use parse::{from_json, parse_json, parse_value, Parsed};
pub use pids::effective_pids;
pub use support::HostSupport;

/// A resource value that cannot be applied, naming the field and value.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ResourceError {
    /// A cpu or memory node list that does not parse, or names CPUs or nodes the host
    /// (or the parent cgroup) does not offer.
    #[error(transparent)]
    List(#[from] CpuListError),
    /// A number outside its allowed range.
    #[error("invalid {field} = {value}: {reason}")]
    OutOfRange {
        /// The OCI field.
        field: &'static str,
        /// The value as given.
        value: String,
        /// The allowed range.
        reason: String,
    },
    /// A field this host, cgroup version or driver cannot apply; refused rather than dropped.
    #[error("{field} cannot be applied: {reason}")]
    Unsupported {
        /// The OCI field (dotted, such as `cpu.realtimeRuntime` or `unified["memory.high"]`).
        field: String,
        /// Why, and what would work.
        reason: String,
    },
}

fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> ResourceError {
    ResourceError::Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A field cgroup v2 has no setting for.
fn only_v1(field: &str, why: &str) -> ResourceError {
    unsupported(field, format!("cgroup v2 has no such setting ({why})"))
}

/// A field whose file this host's kernel lacks.
fn missing(field: &str, what: &str) -> ResourceError {
    unsupported(field, format!("this host's kernel has no {what}"))
}

fn range_err(
    field: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> ResourceError {
    ResourceError::OutOfRange {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `-1` → `max` (the v2 spelling of "no limit"), any other value as it is.
fn max_or(v: i64) -> String {
    if v == -1 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// One cgroupfs write: `value` into `file` of `controller`'s cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Write {
    /// Where the file lives: the controller whose hierarchy holds it (v1) or whose
    /// file it is (v2), or [`HierarchyKey::Unified`] for the keys of OCI `unified`, which
    /// all live in the one v2 directory. In JSON the controller's name or `unified`.
    pub controller: HierarchyKey,
    /// The file name, such as `cpu.max`.
    pub file: String,
    /// The exact bytes written.
    pub value: String,
}

impl Write {
    fn new(
        controller: impl Into<HierarchyKey>,
        file: impl Into<String>,
        value: impl ToString,
    ) -> Self {
        Write {
            controller: controller.into(),
            file: file.into(),
            value: value.to_string(),
        }
    }
}

/// Every rule about one controller's OCI fields. One implementation per controller
/// file; `RULES` lists them in the order their writes are made.
pub(crate) trait Rules: Sync {
    /// The kernel controller the file is about (block I/O: `blkio`, whose v2 successor
    /// is `io`; the network rules: `net_cls`, with `net_prio`), or
    /// [`HierarchyKey::Unified`] for OCI `unified`.
    fn controller(&self) -> HierarchyKey;

    /// The runtime spec's keys this controller reads: `(section, keys)`, where `""` is
    /// the top level of `LinuxResources` (config-linux.md).
    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])];

    /// The checks that hold on every cgroup version and driver (ranges, shapes); none by
    /// default.
    fn validate(&self, _res: &LinuxResources) -> Result<(), ResourceError> {
        Ok(())
    }

    /// The cgroupfs writes, in order, on `version` of a host offering `host`; a field
    /// this host or version cannot apply is refused, naming it. `res` is validated. None
    /// by default (a field that is refused or only noted).
    fn writes(
        &self,
        _res: &LinuxResources,
        _version: CgroupVersion,
        _host: &HostSupport,
        _w: &mut Vec<Write>,
    ) -> Result<(), ResourceError> {
        Ok(())
    }

    /// The systemd unit properties that apply the fields (systemd.resource-control(5),
    /// as runc's and crun's systemd drivers map them). `res` is validated.
    fn properties(
        &self,
        _res: &LinuxResources,
        _version: CgroupVersion,
        _p: &mut Vec<systemd::UnitProperty>,
    ) -> Result<(), ResourceError> {
        Ok(())
    }

    /// The cgroupfs files `Rules::properties` set on `version`, which the systemd
    /// driver therefore does not write itself.
    fn covered(&self, _version: CgroupVersion) -> &'static [&'static str] {
        &[]
    }

    /// A field the systemd driver cannot apply at all on `version` (no property, and
    /// systemd does not enable the controller).
    fn systemd_refusal(
        &self,
        _res: &LinuxResources,
        _version: CgroupVersion,
    ) -> Result<(), ResourceError> {
        Ok(())
    }

    /// The value to write back to `file` (one of this controller's) to restore it, from
    /// what reading it gave, when the read form is not the write form; `None`: as read.
    fn restore(&self, _file: &str, _old: &str) -> Option<String> {
        None
    }

    /// The fields of `res` (as JSON, the runtime spec's spelling) that are set, dotted
    /// (`cpu.quota`); by default every key of `Rules::oci_keys` that is present, not
    /// null and not empty.
    fn given(&self, res: &serde_json::Value, out: &mut Vec<String>) {
        for (section, keys) in self.oci_keys() {
            for key in *keys {
                let v = if section.is_empty() {
                    res.get(*key)
                } else {
                    res.get(*section).and_then(|s| s.get(*key))
                };
                if v.is_some_and(is_set) {
                    out.push(if section.is_empty() {
                        (*key).to_string()
                    } else {
                        format!("{section}.{key}")
                    });
                }
            }
        }
    }

    /// Notes for fields of `res` that are deliberately not applied, or need no write.
    fn notes(&self, _res: &LinuxResources, _out: &mut Vec<String>) {}
}

/// Whether a JSON value counts as given: not null, and not an empty string, list or map.
fn is_set(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::String(s) => !s.trim().is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// Every controller's rules, in the order their writes are made (cpu before cpuset, as
/// runc; OCI `unified` after everything else, the runtime spec's rule). `devices`
/// comes first only for its note; it writes nothing.
pub(crate) const RULES: &[&dyn Rules] = &[
    &devices::Devices,
    &cpu::Cpu,
    &cpuset::Cpuset,
    &memory::Memory,
    &pids::Pids,
    &blkio::BlockIo,
    &hugetlb::Hugetlb,
    &network::Network,
    &unified::Unified,
    &rdma::Rdma,
];

/// The runtime spec's keys by section (`""`: the top level), from every controller's
/// rules, for the JSON parser's unknown-key warnings.
fn known_keys() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = vec![("", Vec::new())];
    for r in RULES {
        for (section, keys) in r.oci_keys() {
            if !section.is_empty() && !out[0].1.contains(section) {
                out[0].1.push(section);
            }
            match out.iter_mut().find(|(s, _)| s == section) {
                Some((_, k)) => k.extend_from_slice(keys),
                None => out.push((section, keys.to_vec())),
            }
        }
    }
    out
}

/// Checks every value of `res` against the kernel's and the OCI runtimes' rules that
/// do not depend on the cgroup version (those are in [`plan`]).
///
/// # Errors
/// The first field that breaks a rule, named with its value.
pub fn validate(res: &LinuxResources) -> Result<(), ResourceError> {
    RULES.iter().try_for_each(|r| r.validate(res))
}

/// OCI resources that passed every controller's checks ([`validate`]). Only
/// [`Checked::new`] makes one, so a layer handed a `Checked` (the plan, both drivers,
/// the `vcpus` child) plans and writes without checking again: resources are validated
/// once, where they enter the library (`SandboxPlan::new`, `Sandbox::start`,
/// `update_container`, `set_sandbox_resources`, a restored state file), and derived
/// values (the containers' union, the `vcpus` child's sum) once where they are made.
/// What depends on the cgroup version or the host is refused when planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked(LinuxResources);

impl Checked {
    /// Validates `res` ([`validate`]) and keeps it.
    ///
    /// # Errors
    /// The first field that breaks a rule, named with its value.
    pub fn new(res: LinuxResources) -> Result<Self, ResourceError> {
        validate(&res)?;
        #[cfg(test)]
        VALIDATIONS.with(|v| v.set(v.get() + 1));
        Ok(Checked(res))
    }

    /// The resources.
    pub fn resources(&self) -> &LinuxResources {
        &self.0
    }

    /// The resources, given back.
    pub fn into_resources(self) -> LinuxResources {
        self.0
    }

    /// `Some(checked)` for `res` when it equals `known`'s resources (no second
    /// validation), else a new [`Checked`].
    ///
    /// # Errors
    /// As [`Checked::new`].
    pub fn reuse_or_new(
        known: Option<&Checked>,
        res: LinuxResources,
    ) -> Result<Self, ResourceError> {
        match known {
            Some(k) if k.0 == res => Ok(k.clone()),
            _ => Checked::new(res),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Validations made by this thread, for the unit test that counts them.
    pub(crate) static VALIDATIONS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The cgroupfs writes, in order, that apply `res` on a host of cgroup `version`,
/// with every optional file assumed present (see [`plan_for`]).
pub fn plan(res: &Checked, version: CgroupVersion) -> Result<Vec<Write>, ResourceError> {
    plan_for(res, version, &HostSupport::assumed())
}

/// The cgroupfs writes, in order, that apply `res` on cgroup `version` of a host
/// offering `host`. Every field is either written or refused naming the field:
/// nothing is dropped (OCI `devices` excepted, see [`not_applied`]).
pub fn plan_for(
    res: &Checked,
    version: CgroupVersion,
    host: &HostSupport,
) -> Result<Vec<Write>, ResourceError> {
    let res = res.resources();
    let mut w = Vec::new();
    for r in RULES {
        let before = w.len();
        r.writes(res, version, host, &mut w)?;
        if w.len() > before {
            tracing::trace!(controller = %r.controller(), writes = w.len() - before, "planned");
        }
    }
    Ok(w)
}

/// The value to write back to restore `file` from what reading it gave: the owning
/// controller's rule (`Rules::restore`), else the value as read (`cpu.max`'s
/// `max 100000` is its own write form). Both drivers' rollbacks restore through it.
pub fn restore_value(file: &str, old: &str) -> String {
    RULES
        .iter()
        .find_map(|r| r.restore(file, old))
        .unwrap_or_else(|| old.to_string())
}

/// Every field set in `res`, dotted as in the runtime spec, controller by controller
/// in `RULES`' order (sections without sub-fields of their own, such as `blockIO`,
/// by section name). Empty strings, lists and maps count as unset.
pub fn given_fields(res: &LinuxResources) -> Vec<String> {
    let json = serde_json::to_value(res).unwrap_or_default();
    let mut out = Vec::new();
    for r in RULES.iter().skip(1) {
        r.given(&json, &mut out);
    }
    // `devices` last, as the runtime spec's readers expect it after the limits.
    RULES[0].given(&json, &mut out);
    out
}

/// Fields of `res` this component deliberately does not apply, with why, for `notes`.
pub fn not_applied(res: &LinuxResources) -> Vec<String> {
    let mut out = Vec::new();
    for r in RULES {
        r.notes(res, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::plan`] on resources checked first, as every caller in the library has
    /// them: a test of a refusal sees the validation's or the plan's, whichever comes.
    fn plan(r: &LinuxResources, v: CgroupVersion) -> Result<Vec<Write>, ResourceError> {
        super::plan(&Checked::new(r.clone())?, v)
    }

    /// [`super::plan_for`] on resources checked first.
    fn plan_for(
        r: &LinuxResources,
        v: CgroupVersion,
        host: &HostSupport,
    ) -> Result<Vec<Write>, ResourceError> {
        super::plan_for(&Checked::new(r.clone())?, v, host)
    }

    fn res(json: &str) -> LinuxResources {
        from_json(json).unwrap()
    }

    #[test]
    fn shares_to_weight_vectors() {
        for (shares, weight) in [
            (0, 0),
            (1, 1),
            (2, 1),
            (512, 59),
            (1024, 100),
            (3, 2),
            (2048, 174),
            (4096, 303),
            (100_000, 4340),
            (262_143, 10_000),
            (262_144, 10_000),
            (300_000, 10_000),
        ] {
            assert_eq!(shares_to_weight(shares), weight, "shares {shares}");
        }
        // monotonic over the whole range
        let mut last = 0;
        for s in 2..=262_144u64 {
            let w = shares_to_weight(s);
            assert!(w >= last, "{s}");
            last = w;
        }
    }

    #[test]
    fn swap_conversion() {
        assert_eq!(swap_to_v2(0, -1), Ok(-1));
        assert_eq!(swap_to_v2(-1, 100), Ok(-1));
        assert_eq!(swap_to_v2(0, 100), Ok(0));
        assert_eq!(swap_to_v2(300, 100), Ok(200));
        assert_eq!(swap_to_v2(100, 100), Ok(0));
        assert!(swap_to_v2(50, 100).is_err());
        assert!(swap_to_v2(50, 0).is_err());
        // Unlimited memory: the memory+swap figure is the swap limit itself.
        assert_eq!(swap_to_v2(300, -1), Ok(300));
    }

    #[test]
    fn cpu_lists() {
        for (s, canon, n) in [
            ("0-3", "0-3", 4),
            ("0,1,2,3", "0-3", 4),
            ("3,0-1", "0-1,3", 3),
            ("0-3,32-33", "0-3,32-33", 6),
            (" 5 ", "5", 1),
            ("", "", 0),
            (",0,1,", "0-1", 2),
            ("1,,2", "1-2", 2),
            (" 0 ,\n3", "0,3", 2),
            ("0-7:2/4", "0-1,4-5", 4),
            (",", "", 0),
        ] {
            let l = CpuList::parse("cpus", s).unwrap();
            assert_eq!(l.to_string(), canon);
            assert_eq!(l.len(), n);
        }
        for bad in [
            "0-",
            "-1",
            "3-1",
            "a",
            "1 - 2",
            "1-2-3",
            "1:1/2",
            "0-7:3/0",
            "0-7:3/2",
            "N",
            "0x1",
            "9000",
            "99999999999",
        ] {
            assert!(CpuList::parse("cpus", bad).is_err(), "{bad:?}");
        }
        let avail = CpuList::parse("cpus", "0-1").unwrap();
        let want = CpuList::parse("cpus", "1-2").unwrap();
        let err = want.check_within("cpus", "1-2", &avail).unwrap_err();
        assert!(err.to_string().contains("\"1-2\""));
        assert!(err.to_string().contains("names 2"));
    }

    #[test]
    fn plan_v1() {
        let r = res(
            r#"{"cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1","mems":"0"},
                        "memory":{"limit":268435456,"swap":536870912,"reservation":134217728},
                        "pids":{"limit":100}}"#,
        );
        let w = plan(&r, CgroupVersion::V1).unwrap();
        let got: Vec<(&str, &str)> = w
            .iter()
            .map(|w| (w.file.as_str(), w.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cpu.shares", "1024"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000"),
                ("cpuset.cpus", "0-1"),
                ("cpuset.mems", "0"),
                ("memory.limit_in_bytes", "268435456"),
                ("memory.memsw.limit_in_bytes", "536870912"),
                ("memory.soft_limit_in_bytes", "134217728"),
                ("pids.max", "100"),
            ]
        );
    }

    #[test]
    fn plan_v2() {
        let r = res(
            r#"{"cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1"},
                        "memory":{"limit":268435456,"swap":536870912,"reservation":134217728},
                        "pids":{"limit":-1}}"#,
        );
        let w = plan(&r, CgroupVersion::V2).unwrap();
        let got: Vec<(&str, &str)> = w
            .iter()
            .map(|w| (w.file.as_str(), w.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cpu.weight", "100"),
                ("cpu.max", "50000 100000"),
                ("cpuset.cpus", "0-1"),
                ("memory.max", "268435456"),
                ("memory.swap.max", "268435456"),
                ("memory.low", "134217728"),
                ("pids.max", "max"),
            ]
        );
        let w = plan(
            &res(r#"{"cpu":{"quota":-1,"period":50000}}"#),
            CgroupVersion::V2,
        )
        .unwrap();
        assert_eq!(w[0].value, "max 50000");
        let w = plan(
            &res(r#"{"memory":{"limit":100,"swap":100}}"#),
            CgroupVersion::V2,
        )
        .unwrap();
        assert_eq!(w[1].file, "memory.swap.max");
        assert_eq!(w[1].value, "0");
        let w = plan(&res(r#"{"memory":{"limit":-1}}"#), CgroupVersion::V2).unwrap();
        assert_eq!(
            w.iter()
                .map(|w| (w.file.as_str(), w.value.as_str()))
                .collect::<Vec<_>>(),
            vec![("memory.max", "max"), ("memory.swap.max", "max")]
        );
    }

    #[test]
    fn bad_resources_name_field_and_value() {
        for (json, needle) in [
            (r#"{"cpu":{"cpus":"0-"}}"#, "0-"),
            (r#"{"cpu":{"cpus":"3-1"}}"#, "3-1"),
            (r#"{"cpu":{"mems":"x"}}"#, "mems"),
            (r#"{"cpu":{"quota":0}}"#, "cpu.quota"),
            (r#"{"cpu":{"quota":17592186044416}}"#, "17592186044416"),
            (r#"{"cpu":{"quota":999}}"#, "999"),
            (r#"{"cpu":{"period":999}}"#, "cpu.period"),
            (r#"{"cpu":{"period":1000001}}"#, "1000001"),
            (r#"{"cpu":{"period":0}}"#, "cpu.period"),
            (r#"{"cpu":{"shares":1}}"#, "cpu.shares"),
            (r#"{"cpu":{"shares":300000}}"#, "cpu.shares"),
            (r#"{"cpu":{"burst":5000,"quota":4000}}"#, "cpu.burst"),
            (r#"{"cpu":{"idle":2}}"#, "cpu.idle"),
            (
                r#"{"cpu":{"realtimeRuntime":2000,"realtimePeriod":1000}}"#,
                "realtimeRuntime",
            ),
            (r#"{"memory":{"kernel":1048576}}"#, "memory.kernel"),
            (r#"{"memory":{"useHierarchy":false}}"#, "useHierarchy"),
            (r#"{"memory":{"swappiness":101}}"#, "swappiness"),
            (r#"{"blockIO":{"weight":5}}"#, "blockIO.weight"),
            (r#"{"blockIO":{"leafWeight":500}}"#, "leafWeight"),
            (
                r#"{"blockIO":{"throttleReadBpsDevice":[{"major":-1,"minor":0,"rate":1}]}}"#,
                "throttleReadBpsDevice",
            ),
            (
                r#"{"hugepageLimits":[{"pageSize":"2M","limit":1}]}"#,
                "pageSize",
            ),
            (
                r#"{"hugepageLimits":[{"pageSize":"2MB","limit":-3}]}"#,
                "hugepageLimits.limit",
            ),
            (
                r#"{"network":{"priorities":[{"name":"a b","priority":1}]}}"#,
                "network.priorities.name",
            ),
            (r#"{"unified":{"cgroup.procs":"1"}}"#, "cgroup.procs"),
            (r#"{"unified":{"../x":"1"}}"#, "unified"),
            (r#"{"rdma":{"mlx5_0":{"hcaHandles":1}}}"#, "rdma"),
            (r#"{"memory":{"limit":-7}}"#, "memory.limit"),
            (r#"{"memory":{"limit":200,"swap":100}}"#, "memory.swap"),
        ] {
            let err = plan(&res(json), CgroupVersion::V1)
                .and_then(|_| plan(&res(json), CgroupVersion::V2))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
        assert!(from_json("{\"cpu\":3}").is_err());
    }

    fn files(json: &str, v: CgroupVersion) -> Vec<(String, String)> {
        plan(&res(json), v)
            .unwrap()
            .into_iter()
            .map(|w| (w.file, w.value))
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn negative_quota_is_no_limit_and_pids_zero_is_one() {
        use CgroupVersion::{V1, V2};
        assert_eq!(
            files(r#"{"cpu":{"quota":-500}}"#, V1),
            pairs(&[("cpu.cfs_quota_us", "-1")])
        );
        assert_eq!(
            files(r#"{"cpu":{"quota":-500,"period":100000}}"#, V2),
            pairs(&[("cpu.max", "max 100000")])
        );
        assert_eq!(
            files(r#"{"cpu":{"quota":17592186044415}}"#, V1),
            pairs(&[("cpu.cfs_quota_us", "17592186044415")])
        );
        assert_eq!(
            files(r#"{"pids":{"limit":0}}"#, V1),
            pairs(&[("pids.max", "1")])
        );
        assert_eq!(
            files(r#"{"pids":{"limit":-7}}"#, V2),
            pairs(&[("pids.max", "max")])
        );
        // An absent limit: the pids section is dropped at parse time.
        assert!(files(r#"{"pids":{}}"#, V2).is_empty());
        assert!(res(r#"{"pids":{}}"#).pids().is_none());
    }

    #[test]
    fn memory_unlimited_and_swap() {
        use CgroupVersion::{V1, V2};
        assert_eq!(
            files(r#"{"memory":{"limit":-1,"swap":300}}"#, V2),
            pairs(&[("memory.max", "max"), ("memory.swap.max", "300")])
        );
        assert_eq!(
            files(r#"{"memory":{"limit":-1}}"#, V1),
            pairs(&[
                ("memory.limit_in_bytes", "-1"),
                ("memory.memsw.limit_in_bytes", "-1")
            ])
        );
        assert!(plan(&res(r#"{"memory":{"limit":-1,"swap":300}}"#), V1).is_err());
        let no_memsw = HostSupport {
            memsw: false,
            probed: true,
            ..HostSupport::assumed()
        };
        let w = plan_for(&res(r#"{"memory":{"limit":-1}}"#), V1, &no_memsw).unwrap();
        assert_eq!(w.len(), 1);
        assert!(plan_for(
            &res(r#"{"memory":{"limit":100,"swap":200}}"#),
            V1,
            &no_memsw
        )
        .is_err());
    }

    #[test]
    fn memsw_order_rule() {
        // Raising (or lifting to -1): memory+swap first; lowering: the limit first.
        assert!(memsw_first(-1, 1 << 20));
        assert!(memsw_first(4 << 20, 2 << 20));
        assert!(!memsw_first(1 << 20, 2 << 20));
        let mut w = plan(&res(r#"{"memory":{"limit":-1}}"#), CgroupVersion::V1).unwrap();
        order_v1_memory(&mut w, 100 << 20);
        assert_eq!(w[0].file, "memory.memsw.limit_in_bytes");
        let mut w = plan(
            &res(r#"{"memory":{"limit":1048576,"swap":2097152}}"#),
            CgroupVersion::V1,
        )
        .unwrap();
        order_v1_memory(&mut w, u64::MAX);
        assert_eq!(w[0].file, "memory.limit_in_bytes");
    }

    #[test]
    fn every_field_applied_or_refused() {
        use CgroupVersion::{V1, V2};
        let rt = r#"{"cpu":{"realtimeRuntime":950000,"realtimePeriod":1000000}}"#;
        assert_eq!(
            files(rt, V1),
            pairs(&[
                ("cpu.rt_period_us", "1000000"),
                ("cpu.rt_runtime_us", "950000")
            ])
        );
        let e = plan(&res(rt), V2).unwrap_err().to_string();
        assert!(e.contains("cpu.realtimeRuntime"), "{e}");
        let hp = r#"{"hugepageLimits":[{"pageSize":"2MB","limit":1048576}]}"#;
        assert_eq!(
            files(hp, V1),
            pairs(&[("hugetlb.2MB.limit_in_bytes", "1048576")])
        );
        assert_eq!(files(hp, V2), pairs(&[("hugetlb.2MB.max", "1048576")]));
        let bio = r#"{"blockIO":{"weight":500,"weightDevice":[{"major":8,"minor":0,"weight":100}],
            "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}],
            "throttleWriteIOPSDevice":[{"major":8,"minor":16,"rate":0}]}}"#;
        assert_eq!(
            files(bio, V1),
            pairs(&[
                ("blkio.bfq.weight", "500"),
                ("blkio.bfq.weight", "8:0 100"),
                ("blkio.throttle.read_bps_device", "8:0 1048576"),
                ("blkio.throttle.write_iops_device", "8:16 0"),
            ])
        );
        assert_eq!(
            files(bio, V2),
            pairs(&[
                ("io.weight", "default 4950"),
                ("io.weight", "8:0 910"),
                ("io.max", "8:0 rbps=1048576"),
                ("io.max", "8:16 wiops=max"),
            ])
        );
        let net = r#"{"network":{"classID":1048577,"priorities":[{"name":"eth0","priority":5}]}}"#;
        assert_eq!(
            files(net, V1),
            pairs(&[
                ("net_cls.classid", "1048577"),
                ("net_prio.ifpriomap", "eth0 5")
            ])
        );
        assert!(plan(&res(net), V2)
            .unwrap_err()
            .to_string()
            .contains("network.classID"));
        let uni = r#"{"unified":{"memory.high":"104857600"}}"#;
        assert_eq!(files(uni, V2), pairs(&[("memory.high", "104857600")]));
        assert!(plan(&res(uni), V1)
            .unwrap_err()
            .to_string()
            .contains("memory.high"));
        let extra = r#"{"cpu":{"quota":50000,"burst":20000,"idle":1},"memory":{"swappiness":10,"disableOOMKiller":true,"kernelTCP":1048576}}"#;
        assert_eq!(
            files(extra, V1),
            pairs(&[
                ("cpu.cfs_quota_us", "50000"),
                ("cpu.cfs_burst_us", "20000"),
                ("cpu.idle", "1"),
                ("memory.kmem.tcp.limit_in_bytes", "1048576"),
                ("memory.swappiness", "10"),
                ("memory.oom_control", "1"),
            ])
        );
        for f in ["swappiness", "disableOOMKiller", "kernelTCP"] {
            let j = format!(
                r#"{{"memory":{{"{f}":{}}}}}"#,
                if f == "disableOOMKiller" {
                    "true"
                } else {
                    "10"
                }
            );
            let e = plan(&res(&j), V2).unwrap_err().to_string();
            assert!(e.contains(f), "{e}");
        }
        let missing = HostSupport {
            rt: false,
            probed: true,
            ..HostSupport::assumed()
        };
        assert!(plan_for(&res(rt), V1, &missing)
            .unwrap_err()
            .to_string()
            .contains("cpu.realtimeRuntime"));
        let sizes = HostSupport {
            probed: true,
            hugepage_sizes: vec!["2MB".into()],
            ..HostSupport::assumed()
        };
        assert!(plan_for(
            &res(r#"{"hugepageLimits":[{"pageSize":"1GB","limit":1}]}"#),
            V2,
            &sizes
        )
        .is_err());
        let devices = res(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#);
        assert!(plan(&devices, V1).unwrap().is_empty());
        assert!(not_applied(&devices)[0].contains("devices"));
    }

    #[test]
    fn container_fields_not_applied_per_layout() {
        use crate::placement::VcpuLayout;
        let r = res(
            r#"{"cpu":{"cpus":"0","quota":50000,"period":100000},"memory":{"limit":536870912},"pids":{"limit":10}}"#,
        );
        for l in [VcpuLayout::SandboxOnly, VcpuLayout::Sibling] {
            let u = container_update(&r, l);
            assert_eq!(
                u.not_applied,
                ["cpu.quota", "cpu.period", "memory.limit", "pids.limit"],
                "{l}"
            );
            assert!(u.reason.contains(&l.to_string()), "{}", u.reason);
            let n = u.note("ctr-1").unwrap();
            assert!(n.contains("ctr-1") && n.contains("cpu.quota"), "{n}");
        }
        let u = container_update(&r, VcpuLayout::Nested);
        assert_eq!(u.not_applied, ["memory.limit", "pids.limit"]);
        assert!(u.reason.contains("nested"));
        // Only a cpuset: complete everywhere; an empty list is unset.
        let c = res(r#"{"cpu":{"cpus":"0","mems":""}}"#);
        for l in [
            VcpuLayout::SandboxOnly,
            VcpuLayout::Sibling,
            VcpuLayout::Nested,
        ] {
            let u = container_update(&c, l);
            assert!(u.is_complete() && u.note("c").is_none(), "{u:?}");
        }
        assert_eq!(
            given_fields(&res(
                r#"{"cpu":{"burst":1,"idle":0},"blockIO":{"weight":100},"unified":{"a.b":"1"}}"#
            )),
            ["cpu.burst", "cpu.idle", "blockIO", "unified"]
        );
    }

    #[test]
    fn unknown_keys_warn_with_the_nearest() {
        let p = parse_json(r#"{"cpu":{"peroid":100000},"memroy":{}}"#).unwrap();
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert!(p
            .warnings
            .iter()
            .any(|w| w.contains("resources.cpu.peroid") && w.contains("\"period\"")));
        assert!(p
            .warnings
            .iter()
            .any(|w| w.contains("resources.memroy") && w.contains("\"memory\"")));
        assert!(parse_json(r#"{"cpu":{"period":100000}}"#)
            .unwrap()
            .warnings
            .is_empty());
    }
}

#[cfg(test)]
mod rules_tests {
    use super::*;

    #[test]
    fn each_controller_has_one_file_and_each_key_one_owner() {
        let mut controllers: Vec<HierarchyKey> = RULES.iter().map(|r| r.controller()).collect();
        let n = controllers.len();
        controllers.sort();
        controllers.dedup();
        assert_eq!(controllers.len(), n, "two rule files claim one controller");
        let mut keys: Vec<String> = RULES
            .iter()
            .flat_map(|r| r.oci_keys().iter())
            .flat_map(|(s, ks)| ks.iter().map(move |k| format!("{s}.{k}")))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "an OCI key is claimed by two controllers");
    }

    #[test]
    fn restore_rules_come_from_the_owning_controller() {
        assert_eq!(
            restore_value("memory.oom_control", "oom_kill_disable 1\nunder_oom 0"),
            "1"
        );
        assert_eq!(
            restore_value("io.max", "8:0 rbps=1\n8:16 rbps=2"),
            "8:0 rbps=1"
        );
        assert_eq!(restore_value("cpu.max", "max 100000"), "max 100000");
    }
}
