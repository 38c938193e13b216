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
/// Largest CFS quota (and burst) the kernel accepts, in µs: `max_cfs_runtime`,
/// 2^44 − 1 µs (`MAX_BW` of kernel/sched/core.c); above it `cpu.cfs_quota_us`
/// and `cpu.max` answer EINVAL.
pub const CFS_QUOTA_MAX: i64 = (1 << 44) - 1;
/// Bounds of v1 `cpu.shares` as the OCI runtimes and systemd (`CPUShares=`) accept them.
pub const SHARES_RANGE: (u64, u64) = (2, 262_144);
/// Bounds of the OCI block-I/O weights (`blkio.bfq.weight`, systemd `BlockIOWeight=`).
pub const BLKIO_WEIGHT_RANGE: (u16, u16) = (10, 1_000);
/// Largest device major and minor numbers (Linux `dev_t`: 12 and 20 bits).
const MAX_MAJOR: i64 = (1 << 12) - 1;
const MAX_MINOR: i64 = (1 << 20) - 1;

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

/// One cgroupfs write: `value` into `file` of `controller`'s cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Write {
    /// The controller whose hierarchy holds the file (v1) or the controller name (v2;
    /// `unified` for the keys of OCI `unified`, which all live in the one v2 directory).
    pub controller: &'static str,
    /// The file name, such as `cpu.max`.
    pub file: String,
    /// The exact bytes written.
    pub value: String,
}

impl Write {
    fn new(controller: &'static str, file: impl Into<String>, value: impl ToString) -> Self {
        Write {
            controller,
            file: file.into(),
            value: value.to_string(),
        }
    }
}

/// What the host's kernel offers for the optional resource files, probed once from
/// the hierarchy roots. A layout whose mounts are not real (`resolve --cgroup-version`
/// for the other version) is not probed: everything is assumed present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSupport {
    /// Whether this was probed on a real host (else everything is assumed).
    pub probed: bool,
    /// v1 `memory.memsw.*` (swap accounting on).
    pub memsw: bool,
    /// v1 `cpu.rt_*` (CONFIG_RT_GROUP_SCHED).
    pub rt: bool,
    /// `cpu.cfs_burst_us` / `cpu.max.burst`.
    pub burst: bool,
    /// `cpu.idle`.
    pub idle: bool,
    /// v1 `blkio.bfq.weight` (the BFQ scheduler; CFQ's `blkio.weight` is gone since Linux 5.0).
    pub bfq: bool,
    /// v1 `blkio.throttle.*` / v2 `io.max`.
    pub throttle: bool,
    /// v2 `io.weight` (blk-iocost).
    pub io_weight: bool,
    /// v1 `memory.kmem.tcp.limit_in_bytes`.
    pub kmem_tcp: bool,
    /// The hugetlb controller (v1 mounted, v2 available at the root).
    pub hugetlb: bool,
    /// Huge page sizes of the host, in the cgroup files' spelling (`2MB`, `1GB`).
    pub hugepage_sizes: Vec<String>,
    /// v1 net_cls mounted.
    pub net_cls: bool,
    /// v1 net_prio mounted.
    pub net_prio: bool,
    /// v2 controllers at the root (`cgroup.controllers`); empty when not probed.
    pub v2_controllers: Vec<String>,
}

impl HostSupport {
    /// Everything assumed present (for a plan on a nominal layout).
    pub fn assumed() -> Self {
        HostSupport {
            probed: false,
            memsw: true,
            rt: true,
            burst: true,
            idle: true,
            bfq: true,
            throttle: true,
            io_weight: true,
            kmem_tcp: true,
            hugetlb: true,
            hugepage_sizes: Vec::new(),
            net_cls: true,
            net_prio: true,
            v2_controllers: Vec::new(),
        }
    }

    /// Probes `layout`'s hierarchy roots; an unmounted (nominal) layout gives [`Self::assumed`].
    pub fn probe(layout: &crate::host::CgroupLayout) -> Self {
        use std::path::Path;
        let root_of = |c: &str| -> Option<&std::path::PathBuf> {
            layout
                .mounts
                .get(c)
                .filter(|m| m.join("cgroup.procs").exists())
        };
        let has = |c: &str, f: &str| root_of(c).is_some_and(|m| m.join(f).exists());
        let sizes: Vec<String> = std::fs::read_dir("/sys/kernel/mm/hugepages")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        let kb: u64 = n
                            .strip_prefix("hugepages-")?
                            .strip_suffix("kB")?
                            .parse()
                            .ok()?;
                        Some(hugepage_size_name(kb))
                    })
                    .collect()
            })
            .unwrap_or_default();
        match layout.version() {
            CgroupVersion::V1 => {
                if root_of("cpu").is_none() && root_of("memory").is_none() {
                    return Self::assumed();
                }
                HostSupport {
                    probed: true,
                    memsw: has("memory", "memory.memsw.limit_in_bytes"),
                    rt: has("cpu", "cpu.rt_runtime_us"),
                    burst: has("cpu", "cpu.cfs_burst_us"),
                    idle: has("cpu", "cpu.idle"),
                    bfq: has("blkio", "blkio.bfq.io_service_bytes"),
                    throttle: has("blkio", "blkio.throttle.read_bps_device"),
                    io_weight: false,
                    kmem_tcp: has("memory", "memory.kmem.tcp.limit_in_bytes"),
                    hugetlb: root_of("hugetlb").is_some(),
                    hugepage_sizes: sizes,
                    net_cls: has("net_cls", "net_cls.classid"),
                    net_prio: has("net_prio", "net_prio.ifpriomap"),
                    v2_controllers: Vec::new(),
                }
            }
            CgroupVersion::V2 => {
                let Some(u) = layout
                    .unified
                    .as_ref()
                    .filter(|u| u.join("cgroup.procs").exists())
                else {
                    return Self::assumed();
                };
                let ctl: Vec<String> = std::fs::read_to_string(u.join("cgroup.controllers"))
                    .map(|s| s.split_whitespace().map(str::to_string).collect())
                    .unwrap_or_default();
                let c = |n: &str| ctl.iter().any(|x| x == n);
                let root_has = |f: &str| Path::new(u).join(f).exists();
                HostSupport {
                    probed: true,
                    memsw: false,
                    rt: false,
                    // Not on the root; present on every kernel with the controller (5.14+ for burst).
                    burst: c("cpu"),
                    idle: c("cpu"),
                    bfq: false,
                    throttle: c("io"),
                    io_weight: c("io") && root_has("io.cost.qos"),
                    kmem_tcp: false,
                    hugetlb: c("hugetlb"),
                    hugepage_sizes: sizes,
                    net_cls: false,
                    net_prio: false,
                    v2_controllers: ctl,
                }
            }
        }
    }
}

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

/// OCI block-I/O weight (10..1000) → v2 `io.weight` / systemd `IOWeight=` (1..10000),
/// runc's linear mapping `1 + (w − 10) · 9999 / 990`.
pub fn blkio_weight_to_io(weight: u16) -> u64 {
    let w = u64::from(weight.clamp(BLKIO_WEIGHT_RANGE.0, BLKIO_WEIGHT_RANGE.1));
    1 + (w - 10) * 9_999 / 990
}

/// OCI `memory.swap` (memory+swap, v1 semantics) → v2 `memory.swap.max` (swap alone).
///
/// The rule of opencontainers/cgroups (runc) today: −1 stays unlimited; 0 is unset,
/// except that unlimited memory with no swap given means unlimited swap too; with
/// unlimited memory (−1) a positive memory+swap figure is the swap limit itself;
/// otherwise swap − limit, which must not be negative. A swap value with the memory
/// limit unset (0) is refused: there is nothing to subtract it from.
pub fn swap_to_v2(swap: i64, limit: i64) -> Result<i64, ResourceError> {
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
    if limit == -1 {
        return Ok(swap);
    }
    if limit == 0 {
        return Err(bad(
            "a swap limit needs a memory limit (memory.limit is unset)",
        ));
    }
    if swap < limit {
        return Err(bad(&format!(
            "memory+swap must be at least the memory limit {limit}"
        )));
    }
    swap.checked_sub(limit)
        .ok_or_else(|| bad("memory+swap minus the memory limit overflows"))
}

/// The kernel's ordering rule for v1 `memory.limit_in_bytes` and
/// `memory.memsw.limit_in_bytes`: the memory limit may never exceed memory+swap,
/// so each write is refused (EINVAL) when it would break that. Given the new
/// memory+swap value (`-1` = unlimited) and the memory limit in force, it answers
/// whether memory+swap must be written first: yes when it does not go below the
/// limit in force (raising, or lifting both to −1), else the memory limit first
/// (lowering). Both the cgroupfs driver and the systemd driver's v1 writes use it.
pub fn memsw_first(new_memsw: i64, current_limit: u64) -> bool {
    if new_memsw < 0 {
        return true;
    }
    // `new_memsw` is positive here, so the cast is exact.
    new_memsw as u64 >= current_limit
}

/// Puts the v1 memory limit and memory+swap writes of `writes` in the order
/// [`memsw_first`] asks for, given the memory limit in force.
pub fn order_v1_memory(writes: &mut [Write], current_limit: u64) {
    let lim = writes
        .iter()
        .position(|w| w.file == "memory.limit_in_bytes");
    let sw = writes
        .iter()
        .position(|w| w.file == "memory.memsw.limit_in_bytes");
    if let (Some(l), Some(s)) = (lim, sw) {
        let memsw: i64 = writes[s].value.parse().unwrap_or(-1);
        let want_sw_first = memsw_first(memsw, current_limit);
        if want_sw_first != (s < l) {
            writes.swap(l, s);
        }
    }
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

/// The quota as the kernel will take it: any negative quota is "no limit" (−1), as
/// runc, crun, youki and the kernel's v1 `cpu.cfs_quota_us` treat it.
pub fn effective_quota(quota: i64) -> i64 {
    if quota < 0 {
        -1
    } else {
        quota
    }
}

/// The pids limit as written: positive as given, 0 → 1 (runc 1.4: the runtime spec
/// makes 0 a real limit, and systemd refuses `TasksMax=0`), negative → unlimited.
pub fn effective_pids(limit: i64) -> i64 {
    match limit {
        0 => 1,
        l if l < 0 => -1,
        l => l,
    }
}

/// Checks every value of `res` against the kernel's and the OCI runtimes' rules that
/// do not depend on the cgroup version (those are in [`plan`]).
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
            ("memory.kernelTCP", mem.kernel_tcp()),
        ] {
            if let Some(v) = v {
                if v < -1 {
                    return Err(range_err(
                        field,
                        v,
                        "must be -1 (no limit), 0 (unset) or a byte count; the kernel refuses other negative values",
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
        if let Some(s) = mem.swappiness() {
            if s > 100 {
                return Err(range_err("memory.swappiness", s, "must be 0 to 100"));
            }
        }
        if mem.kernel().is_some_and(|k| k != 0) {
            return Err(unsupported(
                "memory.kernel",
                "kernel memory limits do not exist on cgroup v2 and Linux 6.1+ refuses memory.kmem.limit_in_bytes (runc ignores the field; it is refused here instead of dropped)",
            ));
        }
        if mem.use_hierarchy() == Some(false) {
            return Err(unsupported(
                "memory.useHierarchy",
                "memory accounting is always hierarchical (cgroup v2, and v1 since Linux 5.16); false cannot be honoured",
            ));
        }
    }
    if let Some(b) = res.block_io() {
        let weight = |field: &'static str, w: u16| {
            if (BLKIO_WEIGHT_RANGE.0..=BLKIO_WEIGHT_RANGE.1).contains(&w) {
                Ok(())
            } else {
                Err(range_err(field, w, "must be 10 to 1000"))
            }
        };
        if let Some(w) = b.weight() {
            weight("blockIO.weight", w)?;
        }
        if b.leaf_weight().is_some() {
            return Err(unsupported(
                "blockIO.leafWeight",
                "leaf weights were a CFQ feature; no kernel since 5.0 has them",
            ));
        }
        for d in b.weight_device().iter().flatten() {
            check_device("blockIO.weightDevice", d.major(), d.minor())?;
            if let Some(w) = d.weight() {
                weight("blockIO.weightDevice.weight", w)?;
            }
            if d.leaf_weight().is_some() {
                return Err(unsupported(
                    "blockIO.weightDevice.leafWeight",
                    "leaf weights were a CFQ feature; no kernel since 5.0 has them",
                ));
            }
        }
        for (field, list) in throttle_lists(b) {
            for d in list {
                check_device(field, d.major(), d.minor())?;
            }
        }
    }
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
    if let Some(n) = res.network() {
        for p in n.priorities().iter().flatten() {
            let name = p.name();
            if name.is_empty()
                || name.len() > 15
                || name.contains('/')
                || name.chars().any(|c| c.is_whitespace())
            {
                return Err(range_err(
                    "network.priorities.name",
                    format!("{name:?}"),
                    "must be an interface name (1 to 15 bytes, no '/' or blanks)",
                ));
            }
        }
    }
    if let Some(u) = res.unified() {
        for key in u.keys() {
            unified_key(key)?;
        }
    }
    if res.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        return Err(unsupported(
            "rdma",
            "this component does not apply RDMA limits to the host sandbox cgroup",
        ));
    }
    Ok(())
}

/// The smallest memory limit, in bytes, for a cgroup that holds the VMM process: 6 MiB.
///
/// Not a kernel bound (the kernel takes any byte count): with the whole VMM process in
/// the cgroup (layouts `sandbox-only` and `nested`), the runtime and VMM themselves are
/// charged to it, and a limit below what they already use at set-up gets them
/// OOM-killed before the first vCPU runs (seen: `memory.limit = 4096`, exit 137, the
/// cgroups and state left behind). Docker's daemon refuses container memory limits
/// under the same figure for the same reason (`linuxMinMemory = 6291456` in moby's
/// daemon_unix.go, "Minimum memory limit allowed is 6MB": startup overhead). With the
/// `sibling` layout only vCPU threads move and memory stays charged to the overhead
/// cgroup, so the floor does not apply there.
pub const VMM_MEMORY_MIN: i64 = 6 * 1024 * 1024;

/// Refuses memory limits below [`VMM_MEMORY_MIN`] for `cgroup` (relative path, named in
/// the error), a cgroup the VMM process is placed in, on cgroup `version`. The one home
/// of the rule: the plan (`resolve`, `run`, `Sandbox::new`/`start`, both drivers: the
/// systemd driver's `MemoryMax`/`MemoryLimit` come from the same field) and the
/// supervisor's start and `set_sandbox_resources` call it.
///
/// Checked: `memory.limit`; on v1 `memory.swap` (memory+swap, which bounds memory
/// too); on v2 `unified["memory.max"]`. v2 `memory.swap.max` bounds swap alone and
/// `memory.reservation` / `memory.high` do not kill, so they are not checked. −1 (no
/// limit) and 0 (unset) pass.
///
/// # Errors
/// [`ResourceError::OutOfRange`] naming the field, the value, the floor and the cgroup.
pub fn check_vmm_memory_floor(
    res: &LinuxResources,
    version: CgroupVersion,
    cgroup: &str,
) -> Result<(), ResourceError> {
    let low = |field: &'static str, v: i64| -> Result<(), ResourceError> {
        if v > 0 && v < VMM_MEMORY_MIN {
            return Err(range_err(
                field,
                v,
                format!(
                    "below {VMM_MEMORY_MIN} bytes (6 MiB), the smallest memory limit for cgroup {cgroup}, which holds the VMM process: the runtime and VMM are charged to it and would be OOM-killed (Docker refuses container memory limits under 6 MB for the same reason)"
                ),
            ));
        }
        Ok(())
    };
    if let Some(m) = res.memory() {
        low("memory.limit", m.limit().unwrap_or(0))?;
        if version == CgroupVersion::V1 {
            low("memory.swap", m.swap().unwrap_or(0))?;
        }
    }
    if version == CgroupVersion::V2 {
        if let Some(v) = res.unified().as_ref().and_then(|u| u.get("memory.max")) {
            // "max" and values the kernel parses otherwise are left to the kernel.
            if let Ok(n) = v.trim().parse::<i64>() {
                low("unified[\"memory.max\"]", n)?;
            }
        }
    }
    Ok(())
}

fn check_device(field: &'static str, major: i64, minor: i64) -> Result<(), ResourceError> {
    if !(0..=MAX_MAJOR).contains(&major) || !(0..=MAX_MINOR).contains(&minor) {
        return Err(range_err(
            field,
            format!("{major}:{minor}"),
            "major must be 0 to 4095 and minor 0 to 1048575",
        ));
    }
    Ok(())
}

/// The throttle lists of a `LinuxBlockIo`, each with its OCI field name.
pub type Throttles<'a> = [(&'static str, &'a [oci_spec::runtime::LinuxThrottleDevice]); 4];

/// The four OCI throttle lists of `b`, each with its field name, in v1 file order.
pub fn throttle_lists(b: &oci_spec::runtime::LinuxBlockIo) -> Throttles<'_> {
    fn l(
        v: &Option<Vec<oci_spec::runtime::LinuxThrottleDevice>>,
    ) -> &[oci_spec::runtime::LinuxThrottleDevice] {
        v.as_deref().unwrap_or(&[])
    }
    [
        (
            "blockIO.throttleReadBpsDevice",
            l(b.throttle_read_bps_device()),
        ),
        (
            "blockIO.throttleWriteBpsDevice",
            l(b.throttle_write_bps_device()),
        ),
        (
            "blockIO.throttleReadIOPSDevice",
            l(b.throttle_read_iops_device()),
        ),
        (
            "blockIO.throttleWriteIOPSDevice",
            l(b.throttle_write_iops_device()),
        ),
    ]
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

/// v2 files OCI `unified` may not write: they move processes or shape the tree this
/// component manages.
const UNIFIED_FORBIDDEN: &[&str] = &[
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "cgroup.type",
    "cgroup.kill",
    "cgroup.freeze",
];

fn unified_key(key: &str) -> Result<(), ResourceError> {
    let field = || format!("unified[{key:?}]");
    let ok_shape = key.split_once('.').is_some_and(|(c, rest)| {
        !c.is_empty() && !rest.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    }) && key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    if !ok_shape {
        return Err(unsupported(
            field(),
            "a unified key is a cgroup v2 file name, <controller>.<name>",
        ));
    }
    if UNIFIED_FORBIDDEN.contains(&key) {
        return Err(unsupported(
            field(),
            "it moves processes or changes the cgroup tree this component manages",
        ));
    }
    Ok(())
}

/// The cpuset lists `res` asks for, parsed: `(cpus, mems)`; an empty list is unset.
pub fn cpuset_of(
    res: &LinuxResources,
) -> Result<(Option<CpuList>, Option<CpuList>), ResourceError> {
    let Some(cpu) = res.cpu() else {
        return Ok((None, None));
    };
    let parse = |field, v: &Option<String>| -> Result<Option<CpuList>, ResourceError> {
        match v {
            Some(s) => {
                let l = CpuList::parse(field, s)?;
                Ok((!l.is_empty()).then_some(l))
            }
            None => Ok(None),
        }
    };
    Ok((parse("cpus", cpu.cpus())?, parse("mems", cpu.mems())?))
}

/// The cgroupfs writes, in order, that apply `res` on a host of cgroup `version`,
/// with every optional file assumed present (see [`plan_for`]).
pub fn plan(res: &LinuxResources, version: CgroupVersion) -> Result<Vec<Write>, ResourceError> {
    plan_for(res, version, &HostSupport::assumed())
}

/// The cgroupfs writes, in order, that apply `res` on cgroup `version` of a host
/// offering `host`. Every field is either written or refused naming the field:
/// nothing is dropped (OCI `devices` excepted, see [`not_applied`]).
pub fn plan_for(
    res: &LinuxResources,
    version: CgroupVersion,
    host: &HostSupport,
) -> Result<Vec<Write>, ResourceError> {
    validate(res)?;
    let v1 = version == CgroupVersion::V1;
    let only_v1 = |field: &str, why: &str| {
        unsupported(field, format!("cgroup v2 has no such setting ({why})"))
    };
    let missing =
        |field: &str, what: &str| unsupported(field, format!("this host's kernel has no {what}"));
    let mut w = Vec::new();
    if let Some(cpu) = res.cpu() {
        let shares = cpu.shares().unwrap_or(0);
        let quota = cpu.quota().map(effective_quota).unwrap_or(0);
        let period = cpu.period().unwrap_or(0);
        if v1 {
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
        } else {
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
            w.push(Write::new("cpu", file, b));
        }
        if let Some(i) = cpu.idle() {
            if !host.idle {
                return Err(missing("cpu.idle", "cpu.idle"));
            }
            w.push(Write::new("cpu", "cpu.idle", i));
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
                w.push(Write::new("cpu", "cpu.rt_period_us", p));
            }
            if let Some(r) = rt_runtime {
                w.push(Write::new("cpu", "cpu.rt_runtime_us", r.max(-1)));
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
        if v1 {
            // runc and youki: unlimited memory with no swap given lifts memory+swap too.
            let memsw = if limit == -1 && swap == 0 { -1 } else { swap };
            if limit == -1 && swap > 0 {
                return Err(range_err(
                    "memory.swap",
                    swap,
                    "cgroup v1 needs memory <= memory+swap, and memory.limit is -1 (unlimited)",
                ));
            }
            if swap != 0 && !host.memsw {
                return Err(missing(
                    "memory.swap",
                    "swap accounting (memory.memsw.*; swapaccount=1)",
                ));
            }
            if limit != 0 {
                w.push(Write::new("memory", "memory.limit_in_bytes", limit));
            }
            if memsw != 0 && host.memsw {
                w.push(Write::new("memory", "memory.memsw.limit_in_bytes", memsw));
            }
            if reservation != 0 {
                w.push(Write::new(
                    "memory",
                    "memory.soft_limit_in_bytes",
                    reservation,
                ));
            }
            if let Some(t) = mem.kernel_tcp().filter(|t| *t != 0) {
                if !host.kmem_tcp {
                    return Err(missing(
                        "memory.kernelTCP",
                        "memory.kmem.tcp.limit_in_bytes",
                    ));
                }
                w.push(Write::new("memory", "memory.kmem.tcp.limit_in_bytes", t));
            }
            if let Some(s) = mem.swappiness() {
                w.push(Write::new("memory", "memory.swappiness", s));
            }
            if let Some(d) = mem.disable_oom_killer() {
                w.push(Write::new("memory", "memory.oom_control", u8::from(d)));
            }
        } else {
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
            if mem.kernel_tcp().is_some_and(|t| t != 0) {
                return Err(only_v1(
                    "memory.kernelTCP",
                    "TCP buffer memory is always charged to memory.max",
                ));
            }
            if mem.swappiness().is_some() {
                return Err(only_v1("memory.swappiness", "no per-cgroup swappiness"));
            }
            if mem.disable_oom_killer() == Some(true) {
                return Err(only_v1(
                    "memory.disableOOMKiller",
                    "the OOM killer cannot be turned off per cgroup",
                ));
            }
        }
    }
    if let Some(p) = res.pids() {
        w.push(Write::new(
            "pids",
            "pids.max",
            max_or(effective_pids(p.limit())),
        ));
    }
    if let Some(b) = res.block_io() {
        let dev = |major: i64, minor: i64| format!("{major}:{minor}");
        let mut weights: Vec<(Option<String>, u16)> = Vec::new();
        if let Some(wt) = b.weight() {
            weights.push((None, wt));
        }
        for d in b.weight_device().iter().flatten() {
            if let Some(wt) = d.weight() {
                weights.push((Some(dev(d.major(), d.minor())), wt));
            }
        }
        if !weights.is_empty() {
            let field = "blockIO.weight";
            if v1 && !host.bfq {
                return Err(missing(
                    field,
                    "proportional block I/O weights (blkio.bfq.weight; the BFQ scheduler)",
                ));
            }
            if !v1 && !host.io_weight {
                return Err(missing(field, "io.weight (blk-iocost)"));
            }
            for (d, wt) in weights {
                let target = d.unwrap_or_else(|| "default".to_string());
                w.push(if v1 {
                    let v = if target == "default" {
                        wt.to_string()
                    } else {
                        format!("{target} {wt}")
                    };
                    Write::new("blkio", "blkio.bfq.weight", v)
                } else {
                    Write::new(
                        "io",
                        "io.weight",
                        format!("{target} {}", blkio_weight_to_io(wt)),
                    )
                });
            }
        }
        for ((field, list), (v1file, v2key)) in throttle_lists(b).into_iter().zip([
            ("blkio.throttle.read_bps_device", "rbps"),
            ("blkio.throttle.write_bps_device", "wbps"),
            ("blkio.throttle.read_iops_device", "riops"),
            ("blkio.throttle.write_iops_device", "wiops"),
        ]) {
            if !list.is_empty() && !host.throttle {
                return Err(missing(
                    field,
                    "block I/O throttling (blkio.throttle.* / io.max)",
                ));
            }
            for d in list {
                let target = dev(d.major(), d.minor());
                w.push(if v1 {
                    Write::new("blkio", v1file, format!("{target} {}", d.rate()))
                } else {
                    // 0 is "no limit" in v1's throttle files; v2 spells it max.
                    let rate = if d.rate() == 0 {
                        "max".to_string()
                    } else {
                        d.rate().to_string()
                    };
                    Write::new("io", "io.max", format!("{target} {v2key}={rate}"))
                });
            }
        }
    }
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
                "hugetlb",
                format!("hugetlb.{size}.limit_in_bytes"),
                h.limit(),
            )
        } else {
            Write::new("hugetlb", format!("hugetlb.{size}.max"), max_or(h.limit()))
        });
    }
    if let Some(n) = res.network() {
        if let Some(c) = n.class_id() {
            if !v1 {
                return Err(only_v1(
                    "network.classID",
                    "net_cls is v1 only; v2 classifies with eBPF",
                ));
            }
            if !host.net_cls {
                return Err(unsupported(
                    "network.classID",
                    "the net_cls controller is not mounted on this host",
                ));
            }
            w.push(Write::new("net_cls", "net_cls.classid", c));
        }
        for p in n.priorities().iter().flatten() {
            if !v1 {
                return Err(only_v1("network.priorities", "net_prio is v1 only"));
            }
            if !host.net_prio {
                return Err(unsupported(
                    "network.priorities",
                    "the net_prio controller is not mounted on this host",
                ));
            }
            w.push(Write::new(
                "net_prio",
                "net_prio.ifpriomap",
                format!("{} {}", p.name(), p.priority()),
            ));
        }
    }
    if let Some(u) = res.unified() {
        let mut keys: Vec<(&String, &String)> = u.iter().collect();
        keys.sort();
        for (k, v) in keys {
            if v1 {
                return Err(unsupported(
                    format!("unified[{k:?}]"),
                    "unified keys are cgroup v2 files; this is cgroup v1",
                ));
            }
            let ctl = k.split('.').next().unwrap_or("");
            if host.probed && ctl != "cgroup" && !host.v2_controllers.iter().any(|c| c == ctl) {
                return Err(unsupported(
                    format!("unified[{k:?}]"),
                    format!("controller {ctl} is not available at this host's cgroup root"),
                ));
            }
            // Written as given, after everything else (the runtime spec's rule).
            w.push(Write::new("unified", k.clone(), v));
        }
    }
    Ok(w)
}

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

/// Every field set in `res`, dotted as in the runtime spec, in its order (sections
/// without sub-fields of their own, such as `blockIO`, by section name). Empty cpuset
/// strings count as unset.
pub fn given_fields(res: &LinuxResources) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |set: bool, name: &str| {
        if set {
            out.push(name.to_string());
        }
    };
    if let Some(c) = res.cpu() {
        push(c.shares().is_some(), "cpu.shares");
        push(c.quota().is_some(), "cpu.quota");
        push(c.burst().is_some(), "cpu.burst");
        push(c.period().is_some(), "cpu.period");
        push(c.realtime_runtime().is_some(), "cpu.realtimeRuntime");
        push(c.realtime_period().is_some(), "cpu.realtimePeriod");
        push(
            c.cpus().as_ref().is_some_and(|s| !s.trim().is_empty()),
            "cpu.cpus",
        );
        push(
            c.mems().as_ref().is_some_and(|s| !s.trim().is_empty()),
            "cpu.mems",
        );
        push(c.idle().is_some(), "cpu.idle");
    }
    if let Some(m) = res.memory() {
        push(m.limit().is_some(), "memory.limit");
        push(m.reservation().is_some(), "memory.reservation");
        push(m.swap().is_some(), "memory.swap");
        push(m.kernel().is_some(), "memory.kernel");
        push(m.kernel_tcp().is_some(), "memory.kernelTCP");
        push(m.swappiness().is_some(), "memory.swappiness");
        push(m.disable_oom_killer().is_some(), "memory.disableOOMKiller");
        push(m.use_hierarchy().is_some(), "memory.useHierarchy");
        push(
            m.check_before_update().is_some(),
            "memory.checkBeforeUpdate",
        );
    }
    push(res.pids().is_some(), "pids.limit");
    push(res.block_io().is_some(), "blockIO");
    push(
        res.hugepage_limits()
            .as_ref()
            .is_some_and(|h| !h.is_empty()),
        "hugepageLimits",
    );
    push(res.network().is_some(), "network");
    push(res.rdma().as_ref().is_some_and(|r| !r.is_empty()), "rdma");
    push(
        res.unified().as_ref().is_some_and(|u| !u.is_empty()),
        "unified",
    );
    push(
        res.devices().as_ref().is_some_and(|d| !d.is_empty()),
        "devices",
    );
    out
}

/// Fields of `res` this component deliberately does not apply, with why, for `notes`.
pub fn not_applied(res: &LinuxResources) -> Vec<String> {
    let mut out = Vec::new();
    if res.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        out.push("resources.devices is not applied to the host sandbox cgroup: the VMM needs its own devices (/dev/kvm, tap, vhost), and the guest enforces the containers' device rules".to_string());
    }
    if let Some(m) = res.memory() {
        if m.use_hierarchy() == Some(true) {
            out.push("memory.useHierarchy = true needs no write: memory accounting is always hierarchical".into());
        }
        if m.check_before_update() == Some(true) {
            out.push("memory.checkBeforeUpdate: not checked by this component; the kernel refuses (v1) or reclaims (v2) when a new limit is below usage".into());
        }
        if m.disable_oom_killer() == Some(false) {
            out.push("memory.disableOOMKiller = false is the kernel's default".into());
        }
    }
    out
}

/// `LinuxResources` parsed from JSON, with warnings for keys the runtime spec does not know.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The resources.
    pub resources: LinuxResources,
    /// One line per unknown key (`resources.cpu.peroid`), also logged with `tracing`.
    pub warnings: Vec<String>,
}

/// Keys of each `LinuxResources` object in the runtime spec (config-linux.md).
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "devices",
            "memory",
            "cpu",
            "pids",
            "blockIO",
            "hugepageLimits",
            "network",
            "rdma",
            "unified",
        ],
    ),
    (
        "memory",
        &[
            "limit",
            "reservation",
            "swap",
            "kernel",
            "kernelTCP",
            "swappiness",
            "disableOOMKiller",
            "useHierarchy",
            "checkBeforeUpdate",
        ],
    ),
    (
        "cpu",
        &[
            "shares",
            "quota",
            "burst",
            "period",
            "realtimeRuntime",
            "realtimePeriod",
            "cpus",
            "mems",
            "idle",
        ],
    ),
    ("pids", &["limit"]),
    (
        "blockIO",
        &[
            "weight",
            "leafWeight",
            "weightDevice",
            "throttleReadBpsDevice",
            "throttleWriteBpsDevice",
            "throttleReadIOPSDevice",
            "throttleWriteIOPSDevice",
        ],
    ),
    ("network", &["classID", "priorities"]),
];

/// Parses a `LinuxResources` JSON object, naming what is wrong; unknown keys are
/// warnings (see [`Parsed`]).
///
/// `pids` is read from the JSON key itself: the runtime spec makes `limit` optional
/// and 0 a real limit, which the `oci-spec` type cannot tell apart (absent reads as
/// 0). A `pids` object without `limit` is dropped here, so it changes nothing.
pub fn parse_value(mut v: serde_json::Value) -> Result<Parsed, ResourceError> {
    let shown: String = v.to_string().chars().take(200).collect();
    let Some(obj) = v.as_object_mut() else {
        return Err(ResourceError::OutOfRange {
            field: "resources",
            value: shown,
            reason: "not an OCI LinuxResources object: not a JSON object".into(),
        });
    };
    let mut warnings = Vec::new();
    for (section, known) in KNOWN_KEYS {
        let map = if section.is_empty() {
            Some(&*obj)
        } else {
            obj.get(*section).and_then(|s| s.as_object())
        };
        for k in map.into_iter().flat_map(|m| m.keys()) {
            if !known.contains(&k.as_str()) {
                let path = if section.is_empty() {
                    format!("resources.{k}")
                } else {
                    format!("resources.{section}.{k}")
                };
                let hint = crate::suggest::nearest(k, known)
                    .map(|n| format!(" (did you mean {n:?}?)"))
                    .unwrap_or_default();
                warnings.push(format!("unknown key {path}{hint}: ignored"));
            }
        }
    }
    if obj
        .get("pids")
        .is_some_and(|p| p.is_null() || p.as_object().is_some_and(|p| !p.contains_key("limit")))
    {
        obj.remove("pids");
    }
    let text = v.to_string();
    let resources: LinuxResources =
        serde_json::from_value(v).map_err(|e| ResourceError::OutOfRange {
            field: "resources",
            value: text.chars().take(200).collect(),
            reason: format!("not an OCI LinuxResources object: {e}"),
        })?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(Parsed {
        resources,
        warnings,
    })
}

/// [`parse_value`] on JSON text.
pub fn parse_json(text: &str) -> Result<Parsed, ResourceError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ResourceError::OutOfRange {
            field: "resources",
            value: text.chars().take(200).collect(),
            reason: format!("not valid JSON: {e}"),
        })?;
    parse_value(v)
}

/// Parses a `LinuxResources` JSON object ([`parse_json`]; warnings are only logged).
pub fn from_json(text: &str) -> Result<LinuxResources, ResourceError> {
    parse_json(text).map(|p| p.resources)
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
