//! The `cpu` controller: OCI `cpu.shares`, `quota`, `period`, `burst`, `idle` and the
//! real-time fields (`cpu.cpus`/`cpu.mems` belong to [`super::cpuset`]).
//!
//! v1 writes `cpu.shares`, `cpu.cfs_period_us` then `cpu.cfs_quota_us` (the kernel
//! checks a new quota against the period in force), `cpu.cfs_burst_us`, `cpu.idle`,
//! `cpu.rt_period_us` then `cpu.rt_runtime_us`; v2 writes `cpu.weight` (shares mapped
//! as runc does), `cpu.max`, `cpu.max.burst`, `cpu.idle`. systemd: `CPUShares` /
//! `CPUWeight`, `CPUQuotaPeriodUSec`, `CPUQuotaPerSecUSec`.

use oci_spec::runtime::LinuxResources;

use super::systemd::{
    cpu_quota_per_sec, quota_from_per_sec, PropValue, UnitProperty, DEFAULT_CFS_PERIOD_US,
    INFINITY, SYSTEMD_CPU_QUOTA_PERIOD,
};
use super::{missing, only_v1, range_err, HostSupport, ResourceError, Rules, Write};
use crate::cgroup::{CgroupVersion, Controller, HierarchyKey};

/// Kernel bounds of a CFS period in µs (`cpu.cfs_period_us`, `cpu.max`): 1 ms to 1 s.
pub const CFS_PERIOD_RANGE: (u64, u64) = (1_000, 1_000_000);
/// Smallest CFS quota the kernel accepts, in µs.
pub const CFS_QUOTA_MIN: i64 = 1_000;
/// Largest CFS quota (and burst) the kernel accepts, in µs: `max_cfs_runtime`,
/// 2^44 − 1 µs (`MAX_BW` of kernel/sched/core.c); above it `cpu.cfs_quota_us`
/// and `cpu.max` answer EINVAL.
pub const CFS_QUOTA_MAX: i64 = (1 << 44) - 1;
/// Bounds of v1 `cpu.shares` as the OCI runtimes and systemd (`CPUShares=`) accept them.
pub const SHARES_RANGE: (u64, u64) = (2, 262_144);

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

/// The quota as the kernel will take it: any negative quota is "no limit" (−1), as
/// runc, crun, youki and the kernel's v1 `cpu.cfs_quota_us` treat it.
pub fn effective_quota(quota: i64) -> i64 {
    if quota < 0 {
        -1
    } else {
        quota
    }
}

/// The `cpu` controller's rules.
pub(super) struct Cpu;

impl Rules for Cpu {
    fn controller(&self) -> HierarchyKey {
        HierarchyKey::Controller(Controller::Cpu)
    }

    fn oci_keys(&self) -> &'static [(&'static str, &'static [&'static str])] {
        &[(
            "cpu",
            &[
                "shares",
                "quota",
                "burst",
                "period",
                "realtimeRuntime",
                "realtimePeriod",
                "idle",
            ],
        )]
    }

    fn validate(&self, res: &LinuxResources) -> Result<(), ResourceError> {
        let Some(cpu) = res.cpu() else { return Ok(()) };
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
            if q == 0 || (0..CFS_QUOTA_MIN).contains(&q) || q > CFS_QUOTA_MAX {
                return Err(range_err(
                    "cpu.quota",
                    q,
                    format!("must be negative (no limit) or {CFS_QUOTA_MIN} to {CFS_QUOTA_MAX} µs (the kernel's CFS bounds)"),
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
        if let Some(b) = cpu.burst() {
            let quota = cpu.quota().map(effective_quota).unwrap_or(-1);
            if b > CFS_QUOTA_MAX as u64 || (quota > 0 && b > quota as u64) {
                return Err(range_err(
                    "cpu.burst",
                    b,
                    format!("must be at most cpu.quota and at most {CFS_QUOTA_MAX} µs"),
                ));
            }
        }
        if let Some(i) = cpu.idle() {
            if !(0..=1).contains(&i) {
                return Err(range_err("cpu.idle", i, "must be 0 or 1"));
            }
        }
        let rt_period = cpu.realtime_period();
        if let Some(p) = rt_period {
            if p == 0 || p > CFS_QUOTA_MAX as u64 {
                return Err(range_err(
                    "cpu.realtimePeriod",
                    p,
                    format!("must be 1 to {CFS_QUOTA_MAX} µs"),
                ));
            }
        }
        if let Some(r) = cpu.realtime_runtime() {
            if r > CFS_QUOTA_MAX {
                return Err(range_err(
                    "cpu.realtimeRuntime",
                    r,
                    format!("must be at most {CFS_QUOTA_MAX} µs (negative: no limit)"),
                ));
            }
            if let Some(p) = rt_period {
                if r > 0 && r as u64 > p {
                    return Err(range_err(
                        "cpu.realtimeRuntime",
                        r,
                        format!("must not exceed cpu.realtimePeriod {p}"),
                    ));
                }
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
        let Some(cpu) = res.cpu() else { return Ok(()) };
        let v1 = version == CgroupVersion::V1;
        let c = Controller::Cpu;
        let shares = cpu.shares().unwrap_or(0);
        let quota = cpu.quota().map(effective_quota).unwrap_or(0);
        let period = cpu.period().unwrap_or(0);
        if v1 {
            if shares != 0 {
                w.push(Write::new(c, "cpu.shares", shares));
            }
            // Period first: the kernel checks a new quota against the period in force.
            if period != 0 {
                w.push(Write::new(c, "cpu.cfs_period_us", period));
            }
            if quota != 0 {
                w.push(Write::new(c, "cpu.cfs_quota_us", quota));
            }
        } else {
            if shares != 0 {
                w.push(Write::new(c, "cpu.weight", shares_to_weight(shares)));
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
                w.push(Write::new(c, "cpu.max", v));
            }
        }
        if let Some(b) = cpu.burst() {
            if !host.burst {
                return Err(missing(
                    "cpu.burst",
                    "CFS burst (cpu.cfs_burst_us / cpu.max.burst)",
                ));
            }
            let file = if v1 {
                "cpu.cfs_burst_us"
            } else {
                "cpu.max.burst"
            };
            w.push(Write::new(c, file, b));
        }
        if let Some(i) = cpu.idle() {
            if !host.idle {
                return Err(missing("cpu.idle", "cpu.idle"));
            }
            w.push(Write::new(c, "cpu.idle", i));
        }
        let (rt_runtime, rt_period) = (cpu.realtime_runtime(), cpu.realtime_period());
        if rt_runtime.is_some() || rt_period.is_some() {
            let field = if rt_runtime.is_some() {
                "cpu.realtimeRuntime"
            } else {
                "cpu.realtimePeriod"
            };
            if !v1 {
                return Err(only_v1(
                    field,
                    "real-time group scheduling exists only in the v1 cpu controller",
                ));
            }
            if !host.rt {
                return Err(missing(
                    field,
                    "real-time group scheduling (cpu.rt_runtime_us; CONFIG_RT_GROUP_SCHED)",
                ));
            }
            // runc's order: the period, then the runtime checked against it.
            if let Some(p) = rt_period {
                w.push(Write::new(c, "cpu.rt_period_us", p));
            }
            if let Some(r) = rt_runtime {
                w.push(Write::new(c, "cpu.rt_runtime_us", r.max(-1)));
            }
        }
        Ok(())
    }

    fn properties(
        &self,
        res: &LinuxResources,
        version: CgroupVersion,
        p: &mut Vec<UnitProperty>,
    ) -> Result<(), ResourceError> {
        let Some(cpu) = res.cpu() else { return Ok(()) };
        let shares = cpu.shares().unwrap_or(0);
        let quota = cpu.quota().map(effective_quota).unwrap_or(0);
        let period = cpu.period().unwrap_or(0);
        if shares != 0 {
            p.push(match version {
                CgroupVersion::V1 => UnitProperty::new("CPUShares", PropValue::U64(shares)),
                CgroupVersion::V2 => {
                    UnitProperty::new("CPUWeight", PropValue::U64(shares_to_weight(shares)))
                }
            });
        }
        if period != 0 {
            p.push(
                UnitProperty::new("CPUQuotaPeriodUSec", PropValue::U64(period))
                    .since(SYSTEMD_CPU_QUOTA_PERIOD),
            );
        }
        if quota != 0 || period != 0 {
            let bad = |reason: String| ResourceError::OutOfRange {
                field: "cpu.quota",
                value: quota.to_string(),
                reason,
            };
            let per_sec = cpu_quota_per_sec(quota, period)
                .ok_or_else(|| bad("CPUQuotaPerSecUSec does not fit 64 bits".into()))?;
            if per_sec != INFINITY {
                let eff_period = if period == 0 {
                    DEFAULT_CFS_PERIOD_US
                } else {
                    period
                };
                let derived = quota_from_per_sec(per_sec, eff_period);
                if derived > CFS_QUOTA_MAX as u128 {
                    return Err(bad(format!(
                        "systemd rounds it up to CPUQuotaPerSecUSec = {per_sec}, a quota of {derived} µs per {eff_period} µs, above the kernel's {CFS_QUOTA_MAX} µs"
                    )));
                }
            }
            p.push(UnitProperty::new(
                "CPUQuotaPerSecUSec",
                PropValue::U64(per_sec),
            ));
        }
        Ok(())
    }

    fn covered(&self, version: CgroupVersion) -> &'static [&'static str] {
        match version {
            CgroupVersion::V1 => &["cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us"],
            CgroupVersion::V2 => &["cpu.weight", "cpu.max"],
        }
    }
}
