//! The shared vocabulary at the bottom of the library: cgroup versions, drivers
//! and controllers. Every other module may use these; this module uses none.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which cgroup version the drivers act on.
///
/// In JSON (state files, every command's `--json`) it is the number `1` or `2`; the
/// strings `"1"` and `"2"` of older state files are read as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// cgroup v1 (legacy or hybrid hosts).
    V1,
    /// cgroup v2 (unified hosts).
    V2,
}

impl Serialize for CgroupVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

impl<'de> Deserialize<'de> for CgroupVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let n = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        match n.as_str() {
            "1" => Ok(CgroupVersion::V1),
            "2" => Ok(CgroupVersion::V2),
            other => Err(serde::de::Error::custom(format!(
                "cgroup version {other:?} is neither 1 nor 2"
            ))),
        }
    }
}

impl CgroupVersion {
    /// 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            CgroupVersion::V1 => 1,
            CgroupVersion::V2 => 2,
        }
    }
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// Which cgroup driver manages a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Direct writes to cgroupfs.
    Cgroupfs,
    /// Requests to systemd over D-Bus.
    Systemd,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        })
    }
}

/// A cgroup controller (the kernel's name for it in `/proc/cgroups`,
/// `cgroup.controllers` and v1 mount options).
///
/// cgroup v1 mounts each controller as a hierarchy of its own or co-mounted with
/// others (`cpu,cpuacct`, `net_cls,net_prio`); cgroup v2 has one hierarchy where
/// `io` replaces v1's `blkio`, `cpu` takes over `cpuacct`, and `devices`,
/// `freezer`, `net_cls`, `net_prio` and `perf_event` are not controllers
/// (Documentation/admin-guide/cgroup-v2.rst, "Deprecated v1 Core Features").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Controller {
    /// CPU bandwidth and weight (`cpu`).
    Cpu,
    /// CPU accounting (`cpuacct`, v1 only).
    Cpuacct,
    /// CPU and memory-node sets (`cpuset`).
    Cpuset,
    /// Memory (`memory`).
    Memory,
    /// Task count (`pids`).
    Pids,
    /// Block I/O, v1 (`blkio`).
    Blkio,
    /// Block I/O, v2 (`io`).
    Io,
    /// Device access (`devices`, v1; v2 uses BPF programs).
    Devices,
    /// Freezer (`freezer`, v1; v2 has `cgroup.freeze` in every cgroup).
    Freezer,
    /// Huge page limits (`hugetlb`).
    Hugetlb,
    /// Network class id (`net_cls`, v1).
    NetCls,
    /// Network priority map (`net_prio`, v1).
    NetPrio,
    /// perf events (`perf_event`).
    PerfEvent,
    /// RDMA resources (`rdma`).
    Rdma,
    /// Miscellaneous scalar resources (`misc`).
    Misc,
}

impl Controller {
    /// Every controller, in the kernel's order of `/proc/cgroups` where it has one.
    pub const ALL: [Controller; 15] = [
        Controller::Cpuset,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Blkio,
        Controller::Io,
        Controller::Memory,
        Controller::Devices,
        Controller::Freezer,
        Controller::NetCls,
        Controller::PerfEvent,
        Controller::NetPrio,
        Controller::Hugetlb,
        Controller::Pids,
        Controller::Rdma,
        Controller::Misc,
    ];

    /// The kernel's name.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Blkio => "blkio",
            Controller::Io => "io",
            Controller::Devices => "devices",
            Controller::Freezer => "freezer",
            Controller::Hugetlb => "hugetlb",
            Controller::NetCls => "net_cls",
            Controller::NetPrio => "net_prio",
            Controller::PerfEvent => "perf_event",
            Controller::Rdma => "rdma",
            Controller::Misc => "misc",
        }
    }

    /// Whether cgroup v2 has this controller.
    pub fn on_v2(self) -> bool {
        matches!(
            self,
            Controller::Cpu
                | Controller::Cpuset
                | Controller::Memory
                | Controller::Pids
                | Controller::Io
                | Controller::Hugetlb
                | Controller::PerfEvent
                | Controller::Rdma
                | Controller::Misc
        )
    }

    /// Whether the controller can be enabled for a v2 `threaded` cgroup, where single
    /// threads of one process may sit in different cgroups (cgroup-v2.rst, "Threads":
    /// cpu, cpuset, perf_event and pids are threaded controllers).
    pub fn threaded(self) -> bool {
        matches!(
            self,
            Controller::Cpu | Controller::Cpuset | Controller::PerfEvent | Controller::Pids
        )
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A controller name the kernel does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cgroup controller {0:?}")]
pub struct UnknownController(pub String);

impl FromStr for Controller {
    type Err = UnknownController;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Controller::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownController(s.to_string()))
    }
}

/// The key of a cgroup directory in a driver's map of directories, and of the files
/// a write goes to: a controller, whose hierarchy holds its files (v1) or whose files
/// sit in the one v2 directory; or, for cgroup v2, the unified hierarchy itself
/// ([`HierarchyKey::Unified`]: the core `cgroup.*` files and OCI `unified` keys).
///
/// One spelling for v2: `unified`, in JSON and in text alike (never `""`).
///
/// Keys order and hash by name, and borrow as their name, so that a map keyed by
/// `HierarchyKey` is looked up with the name (`paths["cpu"]`) and serializes as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HierarchyKey {
    /// The hierarchy (v1) or the files (v2) of one controller.
    Controller(Controller),
    /// The cgroup v2 hierarchy as a whole.
    Unified,
}

impl HierarchyKey {
    /// The key's name: the controller's name, or `unified`.
    pub fn name(self) -> &'static str {
        match self {
            HierarchyKey::Controller(c) => c.name(),
            HierarchyKey::Unified => "unified",
        }
    }

    /// The controller, when the key names one.
    pub fn controller(self) -> Option<Controller> {
        match self {
            HierarchyKey::Controller(c) => Some(c),
            HierarchyKey::Unified => None,
        }
    }
}

impl PartialOrd for HierarchyKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HierarchyKey {
    /// By name, as `str` orders, which `Borrow<str>` requires.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl std::hash::Hash for HierarchyKey {
    /// By name, as `str` hashes, which `Borrow<str>` requires.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.name().hash(h)
    }
}

impl PartialEq<str> for HierarchyKey {
    fn eq(&self, other: &str) -> bool {
        self.name() == other
    }
}

impl PartialEq<&str> for HierarchyKey {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

impl std::borrow::Borrow<str> for HierarchyKey {
    fn borrow(&self) -> &str {
        self.name()
    }
}

impl From<Controller> for HierarchyKey {
    fn from(c: Controller) -> Self {
        HierarchyKey::Controller(c)
    }
}

impl fmt::Display for HierarchyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HierarchyKey {
    type Err = UnknownController;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "unified" {
            return Ok(HierarchyKey::Unified);
        }
        s.parse().map(HierarchyKey::Controller)
    }
}

impl Serialize for HierarchyKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for HierarchyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_names_round_trip() {
        for c in Controller::ALL {
            assert_eq!(c.name().parse::<Controller>(), Ok(c));
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.name())
            );
        }
        assert!("cpu,cpuacct".parse::<Controller>().is_err());
        assert!(Controller::Cpu.threaded() && !Controller::Memory.threaded());
        assert!(!Controller::Blkio.on_v2() && Controller::Io.on_v2());
    }

    #[test]
    fn hierarchy_keys_have_one_spelling() {
        for c in Controller::ALL {
            let h = HierarchyKey::from(c);
            assert_eq!(h.name().parse::<HierarchyKey>(), Ok(h));
            assert_eq!(h.controller(), Some(c));
        }
        assert_eq!("unified".parse::<HierarchyKey>(), Ok(HierarchyKey::Unified));
        assert_eq!(
            serde_json::to_string(&HierarchyKey::Unified).unwrap(),
            "\"unified\""
        );
        assert!("".parse::<HierarchyKey>().is_err());
        // Keys order as their names, so a map is looked up and printed by name.
        let m: std::collections::BTreeMap<HierarchyKey, u8> = Controller::ALL
            .iter()
            .map(|c| (HierarchyKey::from(*c), 1))
            .chain([(HierarchyKey::Unified, 2)])
            .collect();
        assert_eq!(m["unified"], 2);
        assert_eq!(m["net_cls"], 1);
        let names: Vec<&str> = m.keys().map(|k| k.name()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(
            serde_json::to_string(&m).unwrap().find("\"blkio\""),
            Some(1),
            "the first key in JSON is the first name"
        );
    }
}
