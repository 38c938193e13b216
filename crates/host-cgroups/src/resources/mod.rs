//! OCI `LinuxResources` checked and turned into cgroupfs writes, for v1 and v2.
//!
//! This is pure logic, shared by the cgroupfs driver (which performs the writes),
//! the systemd driver (which writes cpuset on v1 itself) and `resolve` (which
//! prints them). Every value is validated here, before the first write.

pub mod systemd;

use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use thiserror::Error;

use crate::cgroup::CgroupVersion;
pub use crate::cpulist::{CpuList, CpuListError};

/// Kernel bounds of a CFS period in µs (`cpu.cfs_period_us`, `cpu.max`): 1 ms to 1 s.
pub const CFS_PERIOD_RANGE: (u64, u64) = (1_000, 1_000_000);
/// Smallest CFS quota the kernel accepts, in µs.
pub const CFS_QUOTA_MIN: i64 = 1_000;
/// Bounds of v1 `cpu.shares` as the OCI runtimes accept them.
pub const SHARES_RANGE: (u64, u64) = (2, 262_144);

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
}

/// One cgroupfs write: `value` into `file` of `controller`'s cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Write {
    /// The controller whose hierarchy holds the file (v1) or the controller name (v2).
    pub controller: &'static str,
    /// The file name, such as `cpu.max`.
    pub file: &'static str,
    /// The exact bytes written.
    pub value: String,
}

impl Write {
    fn new(controller: &'static str, file: &'static str, value: impl ToString) -> Self {
        Write {
            controller,
            file,
            value: value.to_string(),
        }
    }
}

/// cgroup v1 `cpu.shares` → v2 `cpu.weight`, the mapping runc ≥ 1.3 and crun use.
///
/// A quadratic in log2 space through (2, 1), (1024, 100) and (262144, 10000), so
/// that the default 1024 shares map to the default weight 100. The older linear
/// formula `1 + (shares - 2) * 9999 / 262142` gave 39 for 1024 and starved
/// default containers next to v2-native ones.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= SHARES_RANGE.0 {
        return 1;
    }
    if shares >= SHARES_RANGE.1 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    // Round away float noise before the ceiling: 1024 gives exponent 2 exactly in
    // real numbers, and must map to 100, not 101.
    let w = 10f64.powf(exponent);
    let w = (w * 1e6).round() / 1e6;
    (w.ceil() as u64).clamp(1, 10_000)
}

/// OCI `memory.swap` (memory+swap, v1 semantics) → v2 `memory.swap.max` (swap alone), as runc does.
pub fn swap_to_v2(swap: i64, limit: i64) -> Result<i64, ResourceError> {
    // Unlimited memory and no explicit swap means unlimited swap too.
    if limit == -1 && swap == 0 {
        return Ok(-1);
    }
    if swap == -1 || swap == 0 {
        return Ok(swap);
    }
    let bad = |reason: &str| ResourceError::OutOfRange {
        field: "memory.swap",
        value: swap.to_string(),
        reason: reason.into(),
    };
    if limit == 0 || limit == -1 {
        return Err(bad("a swap limit needs a memory limit"));
    }
    if swap < limit {
        return Err(bad(&format!(
            "memory+swap must be at least the memory limit {limit}"
        )));
    }
    Ok(swap - limit)
}

fn max_or(v: i64) -> String {
    if v == -1 {
        "max".to_string()
    } else {
        v.to_string()
    }
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

/// Checks every value of `res` against the kernel's and the OCI runtimes' rules.
pub fn validate(res: &LinuxResources) -> Result<(), ResourceError> {
    if let Some(cpu) = res.cpu() {
        if let Some(s) = cpu.shares() {
            if s != 0 && !(SHARES_RANGE.0..=SHARES_RANGE.1).contains(&s) {
                return Err(range_err(
                    "cpu.shares",
                    s,
                    "must be 2 to 262144 (0 = unset)",
                ));
            }
        }
        if let Some(q) = cpu.quota() {
            if q != -1 && q < CFS_QUOTA_MIN {
                return Err(range_err(
                    "cpu.quota",
                    q,
                    "must be -1 (no limit) or at least 1000 µs",
                ));
            }
        }
        if let Some(p) = cpu.period() {
            if !(CFS_PERIOD_RANGE.0..=CFS_PERIOD_RANGE.1).contains(&p) {
                return Err(range_err(
                    "cpu.period",
                    p,
                    "must be 1000 to 1000000 µs (the kernel's CFS bounds)",
                ));
            }
        }
        if let Some(c) = cpu.cpus() {
            CpuList::parse("cpus", c)?;
        }
        if let Some(m) = cpu.mems() {
            CpuList::parse("mems", m)?;
        }
    }
    if let Some(mem) = res.memory() {
        for (field, v) in [
            ("memory.limit", mem.limit()),
            ("memory.reservation", mem.reservation()),
            ("memory.swap", mem.swap()),
        ] {
            if let Some(v) = v {
                if v < -1 {
                    return Err(range_err(
                        field,
                        v,
                        "must be -1 (no limit), 0 (unset) or a byte count",
                    ));
                }
            }
        }
        if let (Some(limit), Some(swap)) = (mem.limit(), mem.swap()) {
            if limit > 0 && swap > 0 && swap < limit {
                return Err(range_err(
                    "memory.swap",
                    swap,
                    format!("memory+swap must be at least the memory limit {limit}"),
                ));
            }
        }
    }
    if let Some(p) = res.pids() {
        if p.limit() < -1 {
            return Err(range_err(
                "pids.limit",
                p.limit(),
                "must be -1 (no limit), 0 (unset) or positive",
            ));
        }
    }
    Ok(())
}

/// The cpuset lists `res` asks for, parsed: `(cpus, mems)`.
pub fn cpuset_of(
    res: &LinuxResources,
) -> Result<(Option<CpuList>, Option<CpuList>), ResourceError> {
    let Some(cpu) = res.cpu() else {
        return Ok((None, None));
    };
    let cpus = match cpu.cpus() {
        Some(c) if !c.trim().is_empty() => Some(CpuList::parse("cpus", c)?),
        _ => None,
    };
    let mems = match cpu.mems() {
        Some(m) if !m.trim().is_empty() => Some(CpuList::parse("mems", m)?),
        _ => None,
    };
    Ok((cpus, mems))
}

/// The cgroupfs writes, in order, that apply `res` on a host of cgroup `version`.
pub fn plan(res: &LinuxResources, version: CgroupVersion) -> Result<Vec<Write>, ResourceError> {
    validate(res)?;
    let mut w = Vec::new();
    if let Some(cpu) = res.cpu() {
        let shares = cpu.shares().unwrap_or(0);
        let quota = cpu.quota().unwrap_or(0);
        let period = cpu.period().unwrap_or(0);
        match version {
            CgroupVersion::V1 => {
                if shares != 0 {
                    w.push(Write::new("cpu", "cpu.shares", shares));
                }
                // Period first: the kernel checks a new quota against the period in force.
                if period != 0 {
                    w.push(Write::new("cpu", "cpu.cfs_period_us", period));
                }
                if quota != 0 {
                    w.push(Write::new("cpu", "cpu.cfs_quota_us", quota));
                }
            }
            CgroupVersion::V2 => {
                if shares != 0 {
                    w.push(Write::new("cpu", "cpu.weight", shares_to_weight(shares)));
                }
                if quota != 0 || period != 0 {
                    let mut v = if quota > 0 {
                        quota.to_string()
                    } else {
                        "max".to_string()
                    };
                    if period != 0 {
                        v.push_str(&format!(" {period}"));
                    }
                    w.push(Write::new("cpu", "cpu.max", v));
                }
            }
        }
    }
    let (cpus, mems) = cpuset_of(res)?;
    if let Some(c) = cpus {
        w.push(Write::new("cpuset", "cpuset.cpus", c));
    }
    if let Some(m) = mems {
        w.push(Write::new("cpuset", "cpuset.mems", m));
    }
    if let Some(mem) = res.memory() {
        let limit = mem.limit().unwrap_or(0);
        let swap = mem.swap().unwrap_or(0);
        let reservation = mem.reservation().unwrap_or(0);
        match version {
            CgroupVersion::V1 => {
                if limit != 0 {
                    w.push(Write::new("memory", "memory.limit_in_bytes", limit));
                }
                if swap != 0 {
                    w.push(Write::new("memory", "memory.memsw.limit_in_bytes", swap));
                }
                if reservation != 0 {
                    w.push(Write::new(
                        "memory",
                        "memory.soft_limit_in_bytes",
                        reservation,
                    ));
                }
            }
            CgroupVersion::V2 => {
                if limit != 0 {
                    w.push(Write::new("memory", "memory.max", max_or(limit)));
                }
                let swap2 = swap_to_v2(swap, limit)?;
                // swap == limit converts to 0, which here means "no swap", not "unset".
                if swap2 != 0 || swap > 0 {
                    w.push(Write::new("memory", "memory.swap.max", max_or(swap2)));
                }
                if reservation != 0 {
                    w.push(Write::new("memory", "memory.low", max_or(reservation)));
                }
            }
        }
    }
    if let Some(p) = res.pids() {
        if p.limit() != 0 {
            w.push(Write::new("pids", "pids.max", max_or(p.limit())));
        }
    }
    Ok(w)
}

/// Parses a `LinuxResources` JSON object, naming what is wrong.
pub fn from_json(text: &str) -> Result<LinuxResources, ResourceError> {
    serde_json::from_str(text).map_err(|e| ResourceError::OutOfRange {
        field: "resources",
        value: text.chars().take(200).collect(),
        reason: format!("not an OCI LinuxResources object: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(swap_to_v2(50, -1).is_err());
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
            "1,,2",
            "1-2-3",
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
        let got: Vec<(&str, &str)> = w.iter().map(|w| (w.file, w.value.as_str())).collect();
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
        let got: Vec<(&str, &str)> = w.iter().map(|w| (w.file, w.value.as_str())).collect();
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
                .map(|w| (w.file, w.value.as_str()))
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
            (r#"{"cpu":{"quota":-5}}"#, "cpu.quota"),
            (r#"{"cpu":{"quota":999}}"#, "999"),
            (r#"{"cpu":{"period":999}}"#, "cpu.period"),
            (r#"{"cpu":{"period":1000001}}"#, "1000001"),
            (r#"{"cpu":{"period":0}}"#, "cpu.period"),
            (r#"{"cpu":{"shares":1}}"#, "cpu.shares"),
            (r#"{"cpu":{"shares":300000}}"#, "cpu.shares"),
            (r#"{"pids":{"limit":-2}}"#, "pids.limit"),
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
}
