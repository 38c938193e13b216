//! OCI resources → systemd unit properties: the pure mapping shared by the
//! systemd driver (which sends them) and `resolve` (which prints them).
//!
//! The conversions follow runc's and crun's systemd drivers, so a sandbox gets
//! the same limits whichever runtime created it; where this module differs it
//! says why.

use serde_json::json;

use crate::cgroup::CgroupVersion;
use crate::path::SystemdUnit;
use crate::resources::{self, Checked, CpuList, ResourceError, Write, RULES};

/// A unit property and the value that would be sent to systemd, as `resolve` prints it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Property {
    /// systemd's property name.
    pub name: String,
    /// The value, in JSON form.
    pub value: serde_json::Value,
}

/// The CFS period systemd and the kernel assume when none is given, in µs.
pub const DEFAULT_CFS_PERIOD_US: u64 = 100_000;
/// How long systemd waits after SIGTERM before SIGKILL when the unit is stopped.
pub const TIMEOUT_STOP_USEC: u64 = 300_000_000;
/// systemd's `USEC_INFINITY` / `CGROUP_LIMIT_MAX`: "no limit" in every u64 property.
pub const INFINITY: u64 = u64::MAX;
/// First systemd with `CPUQuotaPeriodUSec`.
pub const SYSTEMD_CPU_QUOTA_PERIOD: u32 = 242;
/// First systemd with `AllowedCPUs` / `AllowedMemoryNodes`.
pub const SYSTEMD_ALLOWED_CPUS: u32 = 244;
/// First systemd with `FreezeUnit` / `ThawUnit`.
pub const SYSTEMD_FREEZE: u32 = 246;
/// First systemd with `AttachProcessesToUnit`.
pub const SYSTEMD_ATTACH: u32 = 238;

/// A property value in the D-Bus type systemd expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    /// `b`
    Bool(bool),
    /// `t`
    U64(u64),
    /// `s`
    Str(String),
    /// `as`
    Strs(Vec<String>),
    /// `au`
    U32s(Vec<u32>),
    /// `ay`
    Bytes(Vec<u8>),
    /// `a(st)`: device path and value (`BlockIODeviceWeight=`, `IOReadBandwidthMax=`, ...).
    DevU64s(Vec<(String, u64)>),
}

/// One unit property, with the oldest systemd that knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitProperty {
    /// systemd's property name.
    pub name: &'static str,
    /// The value sent.
    pub value: PropValue,
    /// The first systemd version that accepts it (`None`: every supported one).
    pub min_systemd: Option<u32>,
}

impl UnitProperty {
    pub(crate) fn new(name: &'static str, value: PropValue) -> Self {
        UnitProperty {
            name,
            value,
            min_systemd: None,
        }
    }

    pub(crate) fn since(mut self, version: u32) -> Self {
        self.min_systemd = Some(version);
        self
    }

    /// The property as `resolve` prints it: name and the exact value, in JSON.
    pub fn to_plan(&self) -> Property {
        let value = match &self.value {
            PropValue::Bool(b) => json!(b),
            PropValue::U64(v) => json!(v),
            PropValue::Str(s) => json!(s),
            PropValue::Strs(v) => json!(v),
            PropValue::U32s(v) => json!(v),
            PropValue::Bytes(v) => json!(v),
            PropValue::DevU64s(v) => json!(v),
        };
        Property {
            name: self.name.to_string(),
            value,
        }
    }

    /// Whether systemd `version` knows this property (an unknown version is assumed recent).
    pub fn supported_by(&self, version: Option<u32>) -> bool {
        match (self.min_systemd, version) {
            (Some(min), Some(v)) => v >= min,
            _ => true,
        }
    }
}

/// OCI quota/period → `CPUQuotaPerSecUSec`, rounded up to whole 10 ms per second as runc does.
///
/// systemd keeps the quota as a per-second value and derives `cpu.max` /
/// `cpu.cfs_quota_us` from it at whole percent; rounding up (not down) keeps the
/// container from getting less CPU than it asked for. Any negative quota (or 0 with
/// only a period given) is `infinity`. Computed in 128 bits: `None` when the
/// per-second value does not fit systemd's 64-bit property (never for a quota within
/// [`resources::CFS_QUOTA_MAX`]).
pub fn cpu_quota_per_sec(quota: i64, period: u64) -> Option<u64> {
    if quota <= 0 {
        return Some(INFINITY);
    }
    let period = if period == 0 {
        DEFAULT_CFS_PERIOD_US
    } else {
        period
    };
    let per_sec = u128::from(quota.unsigned_abs()) * 1_000_000 / u128::from(period);
    let rounded = per_sec.div_ceil(10_000) * 10_000;
    u64::try_from(rounded).ok().filter(|v| *v != INFINITY)
}

/// The CFS quota systemd derives from a per-second value for `period`
/// (`per_sec · period / 1 s`), which the kernel must accept.
pub fn quota_from_per_sec(per_sec: u64, period: u64) -> u128 {
    u128::from(per_sec) * u128::from(period) / 1_000_000
}

/// A CPU or node list → systemd's `ay` bitmask: byte i holds members 8i..8i+7, lowest bit first.
///
/// (`0-3,32-33` is `0f 00 00 00 03`; cgroups-rs and youki reverse the byte order, runc fixed it.)
pub fn cpuset_mask(list: &CpuList) -> Vec<u8> {
    let Some(max) = list.iter().last() else {
        return Vec::new();
    };
    let mut bytes = vec![0u8; max as usize / 8 + 1];
    for c in list.iter() {
        bytes[c as usize / 8] |= 1 << (c % 8);
    }
    bytes
}

/// OCI "-1 = no limit" → systemd's infinity; other values (validated non-negative) as they are.
pub(super) fn limit(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(INFINITY)
}

/// The unit properties that apply `res` on cgroup `version` (validated first), from
/// each controller's rules (`Rules::properties`).
///
/// v1 cpuset, v1 `memory.memsw.limit_in_bytes` and v1 `memory.soft_limit_in_bytes`
/// have no unit property; they are in [`cgroupfs_writes`].
pub fn resource_properties(
    res: &Checked,
    version: CgroupVersion,
) -> Result<Vec<UnitProperty>, ResourceError> {
    // Every rule of the cgroupfs plan holds here too (version support).
    resources::plan(res, version)?;
    let mut p = Vec::new();
    for r in RULES {
        r.properties(res.resources(), version, &mut p)?;
    }
    Ok(p)
}

/// The cgroupfs writes that go with the properties: what systemd has no unit
/// property for, written by the driver as runc's systemd drivers do. On v1: the
/// cpuset, hugetlb, net_cls and net_prio hierarchies (systemd does not manage them),
/// memory+swap, the soft limit, swappiness, OOM control, TCP memory, real-time
/// scheduling, CFS burst, `cpu.idle` and block I/O IOPS throttles. On v2: CFS burst,
/// `cpu.idle` and OCI `unified`. On v2, huge page limits are refused: systemd does
/// not enable the hugetlb controller for its units.
pub fn cgroupfs_writes(res: &Checked, version: CgroupVersion) -> Result<Vec<Write>, ResourceError> {
    cgroupfs_writes_for(res, version, &resources::HostSupport::assumed())
}

/// [`cgroupfs_writes`] for a host offering `host`: the plan less the files each
/// controller's properties cover (`Rules::covered`).
pub fn cgroupfs_writes_for(
    res: &Checked,
    version: CgroupVersion,
    host: &resources::HostSupport,
) -> Result<Vec<Write>, ResourceError> {
    let mut w = resources::plan_for(res, version, host)?;
    w.retain(|w| {
        !RULES
            .iter()
            .any(|r| r.covered(version).contains(&w.file.as_str()))
    });
    for r in RULES {
        r.systemd_refusal(res.resources(), version)?;
    }
    Ok(w)
}

/// The properties `StartTransientUnit` creates the unit with, before any resources.
pub fn start_properties(
    unit: &SystemdUnit,
    version: CgroupVersion,
    pid: Option<u32>,
) -> Vec<UnitProperty> {
    let mut p = Vec::new();
    if let Some(pid) = pid {
        p.push(UnitProperty::new("PIDs", PropValue::U32s(vec![pid])));
    }
    if unit.is_slice() {
        // A slice's parent comes from its name; Wants= orders it after the requested slice.
        p.push(UnitProperty::new(
            "Wants",
            PropValue::Strs(vec![unit.slice.clone()]),
        ));
    } else {
        p.push(UnitProperty::new(
            "Slice",
            PropValue::Str(unit.slice.clone()),
        ));
        // Delegate= exists for scopes and services only; it lets us write below the unit.
        p.push(UnitProperty::new("Delegate", PropValue::Bool(true)));
    }
    p.push(UnitProperty::new(
        "Description",
        PropValue::Str(format!("host-cgroups sandbox {}", unit.name)),
    ));
    // No implicit Conflicts=shutdown.target/After=: the runtime stops the unit itself.
    p.push(UnitProperty::new(
        "DefaultDependencies",
        PropValue::Bool(false),
    ));
    for name in ["CPUAccounting", "MemoryAccounting", "TasksAccounting"] {
        p.push(UnitProperty::new(name, PropValue::Bool(true)));
    }
    p.push(UnitProperty::new(
        match version {
            CgroupVersion::V1 => "BlockIOAccounting",
            CgroupVersion::V2 => "IOAccounting",
        },
        PropValue::Bool(true),
    ));
    if !unit.is_slice() {
        // Slices have no processes to stop, hence no stop timeout.
        p.push(UnitProperty::new(
            "TimeoutStopUSec",
            PropValue::U64(TIMEOUT_STOP_USEC),
        ));
    }
    p
}

/// The resource properties of `res` on cgroup `version`, as `resolve` prints them.
pub fn systemd_properties(
    res: &Checked,
    version: CgroupVersion,
) -> Result<Vec<Property>, ResourceError> {
    Ok(resource_properties(res, version)?
        .iter()
        .map(UnitProperty::to_plan)
        .collect())
}

/// Splits `props` into those systemd `version` knows and those it is too old for.
pub fn gate(
    props: Vec<UnitProperty>,
    version: Option<u32>,
) -> (Vec<UnitProperty>, Vec<UnitProperty>) {
    props.into_iter().partition(|p| p.supported_by(version))
}

/// The leading number of systemd's `Version` property (`"252.19-1~deb12u1"` → 252).
pub fn parse_version(v: &str) -> Option<u32> {
    let v = v.trim().trim_start_matches('v');
    let digits: String = v.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OCI resources from JSON, checked as the library's entry points check them.
    fn from_json(json: &str) -> Result<Checked, ResourceError> {
        crate::resources::from_json(json).and_then(Checked::new)
    }

    fn props(json: &str, v: CgroupVersion) -> Vec<(String, serde_json::Value)> {
        resource_properties(&from_json(json).unwrap(), v)
            .unwrap()
            .iter()
            .map(|p| (p.name.to_string(), p.to_plan().value))
            .collect()
    }

    fn get(p: &[(String, serde_json::Value)], name: &str) -> Option<serde_json::Value> {
        p.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn quota_rounding_like_runc() {
        for (quota, period, want) in [
            (50_000, 100_000, 500_000),
            (100_000, 100_000, 1_000_000),
            (200_000, 100_000, 2_000_000),
            (12_345, 100_000, 130_000),
            (33_333, 100_000, 340_000),
            (1_000, 1_000_000, 10_000),
            (1_500, 100_000, 20_000),
            (10_000, 1_000, 10_000_000),
            (50_000, 0, 500_000),
            (-1, 100_000, u64::MAX),
            (0, 100_000, u64::MAX),
            (-500, 100_000, u64::MAX),
            // No saturation: 20971520000000 · 10^6 overflows 64 bits before the division.
            (20_971_520_000_000, 100_000, 209_715_200_000_000),
        ] {
            assert_eq!(
                cpu_quota_per_sec(quota, period),
                Some(want),
                "quota {quota} period {period}"
            );
        }
    }

    #[test]
    fn cpu_properties_v1_and_v2() {
        let j = r#"{"cpu":{"shares":2048,"quota":12345,"period":100000}}"#;
        let v1 = props(j, CgroupVersion::V1);
        assert_eq!(get(&v1, "CPUShares"), Some(json!(2048)));
        assert_eq!(get(&v1, "CPUWeight"), None);
        assert_eq!(get(&v1, "CPUQuotaPerSecUSec"), Some(json!(130_000)));
        assert_eq!(get(&v1, "CPUQuotaPeriodUSec"), Some(json!(100_000)));
        let v2 = props(j, CgroupVersion::V2);
        assert_eq!(get(&v2, "CPUWeight"), Some(json!(174)));
        assert_eq!(get(&v2, "CPUShares"), None);
        for (shares, weight) in [(2, 1), (512, 59), (1024, 100), (262_144, 10_000)] {
            let p = props(
                &format!(r#"{{"cpu":{{"shares":{shares}}}}}"#),
                CgroupVersion::V2,
            );
            assert_eq!(get(&p, "CPUWeight"), Some(json!(weight)), "shares {shares}");
        }
        let unlimited = props(r#"{"cpu":{"quota":-1}}"#, CgroupVersion::V2);
        assert_eq!(
            unlimited,
            vec![("CPUQuotaPerSecUSec".to_string(), json!(u64::MAX))]
        );
        assert!(props(r#"{"cpu":{"shares":0}}"#, CgroupVersion::V2).is_empty());
    }

    #[test]
    fn cpuset_bitmask_little_endian_by_byte() {
        let m = |s: &str| cpuset_mask(&CpuList::parse("cpus", s).unwrap());
        assert_eq!(m("0-3,32-33"), vec![0x0f, 0, 0, 0, 0x03]);
        assert_eq!(m("0"), vec![0x01]);
        assert_eq!(m("7"), vec![0x80]);
        assert_eq!(m("8"), vec![0x00, 0x01]);
        assert_eq!(m("1,3,5-6"), vec![0x6a]);
        assert_eq!(m("0-15"), vec![0xff, 0xff]);
        assert_eq!(m(""), Vec::<u8>::new());
        let v2 = props(
            r#"{"cpu":{"cpus":"0-3,32-33","mems":"0"}}"#,
            CgroupVersion::V2,
        );
        assert_eq!(get(&v2, "AllowedCPUs"), Some(json!([15, 0, 0, 0, 3])));
        assert_eq!(get(&v2, "AllowedMemoryNodes"), Some(json!([1])));
        // v1: no property; written to cgroupfs instead.
        let r = from_json(r#"{"cpu":{"cpus":"0-1","mems":"0"}}"#).unwrap();
        assert!(resource_properties(&r, CgroupVersion::V1)
            .unwrap()
            .is_empty());
        let w = cgroupfs_writes(&r, CgroupVersion::V1).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].file.as_str(), w[0].value.as_str()),
            ("cpuset.cpus", "0-1")
        );
        // The kernel's list syntax: empty entries and blanks are skipped.
        let v2 = props(r#"{"cpu":{"cpus":",0,1,"}}"#, CgroupVersion::V2);
        assert_eq!(get(&v2, "AllowedCPUs"), Some(json!([3])));
        assert!(cgroupfs_writes(&r, CgroupVersion::V2).unwrap().is_empty());
    }

    #[test]
    fn memory_properties() {
        let j = r#"{"memory":{"limit":268435456,"reservation":134217728,"swap":536870912}}"#;
        let v2 = props(j, CgroupVersion::V2);
        assert_eq!(get(&v2, "MemoryMax"), Some(json!(268_435_456u64)));
        assert_eq!(get(&v2, "MemoryLow"), Some(json!(134_217_728u64)));
        assert_eq!(get(&v2, "MemorySwapMax"), Some(json!(268_435_456u64)));
        let v1 = props(j, CgroupVersion::V1);
        assert_eq!(v1, vec![("MemoryLimit".to_string(), json!(268_435_456u64))]);
        let r = from_json(j).unwrap();
        let files: Vec<String> = cgroupfs_writes(&r, CgroupVersion::V1)
            .unwrap()
            .into_iter()
            .map(|w| w.file)
            .collect();
        assert_eq!(
            files,
            ["memory.memsw.limit_in_bytes", "memory.soft_limit_in_bytes"]
        );
        // -1 is infinity; swap unset with unlimited memory is unlimited swap.
        let v2 = props(r#"{"memory":{"limit":-1}}"#, CgroupVersion::V2);
        assert_eq!(get(&v2, "MemoryMax"), Some(json!(u64::MAX)));
        assert_eq!(get(&v2, "MemorySwapMax"), Some(json!(u64::MAX)));
        // swap == limit: no swap at all.
        let v2 = props(
            r#"{"memory":{"limit":1048576,"swap":1048576}}"#,
            CgroupVersion::V2,
        );
        assert_eq!(get(&v2, "MemorySwapMax"), Some(json!(0)));
        let v1 = props(r#"{"memory":{"limit":-1}}"#, CgroupVersion::V1);
        assert_eq!(get(&v1, "MemoryLimit"), Some(json!(u64::MAX)));
        let r = from_json(r#"{"memory":{"limit":-1}}"#).unwrap();
        let w = cgroupfs_writes(&r, CgroupVersion::V1).unwrap();
        assert_eq!(
            (w[0].file.as_str(), w[0].value.as_str()),
            ("memory.memsw.limit_in_bytes", "-1")
        );
        let v2 = props(r#"{"memory":{"limit":-1,"swap":300}}"#, CgroupVersion::V2);
        assert_eq!(get(&v2, "MemoryMax"), Some(json!(u64::MAX)));
        assert_eq!(get(&v2, "MemorySwapMax"), Some(json!(300)));
        // memory+swap below the limit: refused where the resources are checked.
        assert!(from_json(r#"{"memory":{"limit":100,"swap":50}}"#).is_err());
    }

    #[test]
    fn tasks_max() {
        let p = props(r#"{"pids":{"limit":256}}"#, CgroupVersion::V1);
        assert_eq!(p, vec![("TasksMax".to_string(), json!(256))]);
        let p = props(r#"{"pids":{"limit":-1}}"#, CgroupVersion::V2);
        assert_eq!(p, vec![("TasksMax".to_string(), json!(u64::MAX))]);
        // runc 1.4: 0 is a real limit; systemd refuses TasksMax=0, so 1.
        let p = props(r#"{"pids":{"limit":0}}"#, CgroupVersion::V2);
        assert_eq!(p, vec![("TasksMax".to_string(), json!(1))]);
        assert!(props(r#"{"pids":{}}"#, CgroupVersion::V2).is_empty());
    }

    #[test]
    fn quota_past_the_kernel_ceiling_is_refused() {
        // Past the kernel's ceiling: refused where the resources are checked, so no
        // property is ever made of it.
        let e = from_json(r#"{"cpu":{"quota":20971520000000,"period":100000}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cpu.quota") && e.contains("17592186044415"),
            "{e}"
        );
        // Within the ceiling, but systemd's rounding up would push it past: refused too.
        let r = from_json(r#"{"cpu":{"quota":17592186044415,"period":100000}}"#).unwrap();
        let e = resource_properties(&r, CgroupVersion::V2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CPUQuotaPerSecUSec"), "{e}");
    }

    #[test]
    fn block_io_properties_and_writes() {
        let j = r#"{"blockIO":{"weight":500,"weightDevice":[{"major":8,"minor":0,"weight":100}],
            "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}],
            "throttleWriteIOPSDevice":[{"major":8,"minor":0,"rate":100}]}}"#;
        let v2 = props(j, CgroupVersion::V2);
        assert_eq!(get(&v2, "IOWeight"), Some(json!(4950)));
        assert_eq!(
            get(&v2, "IODeviceWeight"),
            Some(json!([["/dev/block/8:0", 910]]))
        );
        assert_eq!(
            get(&v2, "IOReadBandwidthMax"),
            Some(json!([["/dev/block/8:0", 1048576]]))
        );
        assert_eq!(
            get(&v2, "IOWriteIOPSMax"),
            Some(json!([["/dev/block/8:0", 100]]))
        );
        let v1 = props(j, CgroupVersion::V1);
        assert_eq!(get(&v1, "BlockIOWeight"), Some(json!(500)));
        assert_eq!(
            get(&v1, "BlockIOReadBandwidth"),
            Some(json!([["/dev/block/8:0", 1048576]]))
        );
        let r = from_json(j).unwrap();
        let w = cgroupfs_writes(&r, CgroupVersion::V1).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].file, "blkio.throttle.write_iops_device");
        assert!(cgroupfs_writes(&r, CgroupVersion::V2).unwrap().is_empty());
        let hp = from_json(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":1048576}]}"#).unwrap();
        assert!(cgroupfs_writes(&hp, CgroupVersion::V2).is_err());
        assert_eq!(
            cgroupfs_writes(&hp, CgroupVersion::V1).unwrap()[0].file,
            "hugetlb.2MB.limit_in_bytes"
        );
    }

    #[test]
    fn version_gating() {
        let r = from_json(r#"{"cpu":{"quota":50000,"period":50000,"cpus":"0"}}"#).unwrap();
        let all = resource_properties(&r, CgroupVersion::V2).unwrap();
        let names = |v: &[UnitProperty]| v.iter().map(|p| p.name).collect::<Vec<_>>();
        let (kept, dropped) = gate(all.clone(), Some(241));
        assert_eq!(names(&kept), ["CPUQuotaPerSecUSec"]);
        assert_eq!(names(&dropped), ["CPUQuotaPeriodUSec", "AllowedCPUs"]);
        let (kept, dropped) = gate(all.clone(), Some(243));
        assert_eq!(names(&kept), ["CPUQuotaPeriodUSec", "CPUQuotaPerSecUSec"]);
        assert_eq!(names(&dropped), ["AllowedCPUs"]);
        let (kept, dropped) = gate(all, Some(252));
        assert_eq!(kept.len(), 3);
        assert!(dropped.is_empty());
        assert_eq!(parse_version("252.19-1~deb12u1"), Some(252));
        assert_eq!(parse_version("v255"), Some(255));
        assert_eq!(parse_version("249"), Some(249));
        assert_eq!(parse_version("x"), None);
    }

    #[test]
    fn start_properties_scope_and_slice() {
        let scope = SystemdUnit {
            slice: "kata-pods.slice".into(),
            prefix: "kata".into(),
            name: "sb1".into(),
            unit: "kata-sb1.scope".into(),
        };
        let p: Vec<Property> = start_properties(&scope, CgroupVersion::V2, Some(42))
            .iter()
            .map(UnitProperty::to_plan)
            .collect();
        let g = |n: &str| p.iter().find(|x| x.name == n).map(|x| x.value.clone());
        assert_eq!(g("PIDs"), Some(json!([42])));
        assert_eq!(g("Slice"), Some(json!("kata-pods.slice")));
        assert_eq!(g("Delegate"), Some(json!(true)));
        assert_eq!(g("DefaultDependencies"), Some(json!(false)));
        assert_eq!(g("IOAccounting"), Some(json!(true)));
        assert_eq!(g("TimeoutStopUSec"), Some(json!(300_000_000)));
        let v1: Vec<&str> = start_properties(&scope, CgroupVersion::V1, None)
            .iter()
            .map(|p| p.name)
            .collect();
        assert!(v1.contains(&"BlockIOAccounting") && !v1.contains(&"PIDs"));
        let slice = SystemdUnit {
            slice: "kata.slice".into(),
            prefix: "".into(),
            name: "kata-pod1.slice".into(),
            unit: "kata-pod1.slice".into(),
        };
        let names: Vec<&str> = start_properties(&slice, CgroupVersion::V2, None)
            .iter()
            .map(|p| p.name)
            .collect();
        assert!(names.contains(&"Wants"));
        assert!(!names.contains(&"Delegate") && !names.contains(&"TimeoutStopUSec"));
    }
}
