//! What the host's kernel offers for the optional resource files, probed from the
//! hierarchy roots.

use super::hugetlb::hugepage_size_name;
use crate::cgroup::CgroupVersion;

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
