//! What this host looks like: its cgroup layout, systemd and KVM.
//!
//! Read from `/proc/self/mountinfo` and `/proc/self/cgroup` rather than from
//! fixed paths, since distributions mount v1 controllers separately (`cpu` and
//! `cpuacct` here) or co-mounted (`cpu,cpuacct`), and hybrid hosts add an
//! empty cgroup2 beside them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

pub use crate::cgroup::CgroupVersion;
use crate::cgroup::HierarchyKey;

/// The cgroup v1 controllers a sandbox cgroup is made in, when the host mounts them.
///
/// `name=systemd` is left out: that hierarchy is systemd's own bookkeeping and
/// the cgroupfs driver has no business there.
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices", "hugetlb",
    "net_cls", "net_prio",
];

/// The cgroup v2 controllers a sandbox cgroup asks its parents to enable.
pub const V2_CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids", "io", "hugetlb"];

/// v1 controllers whose hierarchies hold the nested layout's `vcpus` child.
pub const V1_CHILD_CONTROLLERS: [&str; 3] = ["cpu", "cpuacct", "cpuset"];
/// v2 controllers enabled for the `vcpus` child (threaded controllers; `cpu` required).
pub const V2_CHILD_CONTROLLERS: [&str; 3] = ["cpu", "cpuset", "pids"];

/// Which cgroup of a sandbox a directory map is for ([`CgroupLayout::cgroup_dirs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirSet {
    /// The sandbox cgroup or the overhead cgroup: every hierarchy the driver uses.
    Sandbox,
    /// The nested layout's `vcpus` child: v1, the hierarchies of `cpu`, `cpuacct` and
    /// `cpuset` ([`V1_CHILD_CONTROLLERS`]); v2, the threaded controllers
    /// ([`V2_CHILD_CONTROLLERS`]) of the one hierarchy.
    VcpusChild,
}

/// The key of the cgroup v2 hierarchy in every map of this crate (`/proc` lines,
/// mount roots, directories): `unified`, never `""`.
pub const UNIFIED_KEY: &str = "unified";

/// Default mount point of the cgroup filesystems.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Host facts that could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HostError {
    /// A /proc or /sys file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No cgroup filesystem is mounted.
    #[error("no cgroup filesystem is mounted (checked {path})")]
    NoCgroups {
        /// The mountinfo file read.
        path: PathBuf,
    },
}

/// How the host lays out its cgroup hierarchies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hierarchy {
    /// cgroup v1 only.
    Legacy,
    /// cgroup v1 controllers plus an (empty) cgroup2 mount.
    Hybrid,
    /// cgroup v2 only.
    Unified,
}

impl Hierarchy {
    /// Hybrid counts as v1: its controllers are all on v1 hierarchies.
    pub fn version(self) -> CgroupVersion {
        match self {
            Hierarchy::Legacy | Hierarchy::Hybrid => CgroupVersion::V1,
            Hierarchy::Unified => CgroupVersion::V2,
        }
    }
}

/// One cgroup mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The cgroup at the mount's root (`/` unless in a cgroup namespace or bind mount).
    pub root: String,
    /// v1: its controllers (and `name=` hierarchies); v2: empty.
    pub controllers: Vec<String>,
    /// Whether it is cgroup2.
    pub v2: bool,
}

/// The host's cgroup layout.
#[derive(Debug, Clone, Serialize)]
pub struct CgroupLayout {
    /// Legacy, hybrid or unified.
    pub hierarchy: Hierarchy,
    /// v1 controller (or `name=` hierarchy) → mount point; v2: the unified mount.
    pub mounts: BTreeMap<String, PathBuf>,
    /// The unified mount (v2 hosts, and hybrid hosts' empty cgroup2).
    pub unified: Option<PathBuf>,
    /// v2 controllers available at the unified root (from `cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// This process's cgroup per controller (`unified` key for v2), from /proc/self/cgroup,
    /// as a path below the hierarchy's mount point (see [`CgroupLayout::roots`]).
    pub own: BTreeMap<String, String>,
    /// The cgroup at each hierarchy's mount point, keyed like [`CgroupLayout::own`]
    /// (mountinfo's `root` field): `/` on a host, and in a cgroup namespace (which
    /// shows `/proc/<pid>/cgroup` relative to its own root); a subtree such as
    /// `/docker/<id>` where only that subtree is bind-mounted (a container on a
    /// cgroup v1 host without its own cgroup namespace). `/proc/<pid>/cgroup` paths
    /// are relative to the real root, so they are `root` + the path below the mount.
    /// Missing key: `/`.
    #[serde(skip)]
    pub roots: BTreeMap<String, String>,
}

impl CgroupLayout {
    /// The directory map, the one place cgroup directories are computed: key → the
    /// directory of the cgroup at `relative` (below each hierarchy root) as `driver`
    /// uses it, for the sandbox or overhead cgroup or the `vcpus` child (`set`).
    ///
    /// Keys are controller names, and `unified` on cgroup v2 (one spelling; see
    /// [`crate::cgroup::HierarchyKey`]):
    /// - v1: each mounted controller of [`V1_CONTROLLERS`] → `<its mount>/<relative>`
    ///   (co-mounted controllers share a directory). The systemd driver leaves
    ///   `devices` out: systemd realises a unit's devices cgroup only for units with a
    ///   device policy, so a sandbox scope stays in an ancestor's (runc's systemd
    ///   driver and ours alike).
    /// - v2: each available controller of [`V2_CONTROLLERS`] and `unified` → the one
    ///   directory `<unified mount>/<relative>`.
    ///
    /// `SandboxPlan` (what `resolve` prints and `Sandbox::plan` returns), both drivers'
    /// `paths` and the `vcpus` child all take their directories from here, so a plan
    /// names the directories a run uses.
    pub fn cgroup_dirs(
        &self,
        relative: &str,
        driver: crate::cgroup::Driver,
        set: DirSet,
    ) -> BTreeMap<HierarchyKey, PathBuf> {
        let relative = relative.trim_matches('/');
        let mut out = BTreeMap::new();
        match self.version() {
            CgroupVersion::V1 => {
                let keep: Vec<&PathBuf> = match set {
                    DirSet::Sandbox => self.mounts.values().collect(),
                    DirSet::VcpusChild => V1_CHILD_CONTROLLERS
                        .iter()
                        .filter_map(|c| self.mounts.get(*c))
                        .collect(),
                };
                for (mount, controllers) in self.v1_hierarchies() {
                    if !keep.contains(&&mount) {
                        continue;
                    }
                    for c in controllers {
                        if driver == crate::cgroup::Driver::Systemd && c == "devices" {
                            continue;
                        }
                        if let Ok(key) = c.parse::<HierarchyKey>() {
                            out.insert(key, mount.join(relative));
                        }
                    }
                }
            }
            CgroupVersion::V2 => {
                if let Some(u) = &self.unified {
                    let dir = u.join(relative);
                    for c in &self.v2_controllers {
                        if set == DirSet::VcpusChild && !V2_CHILD_CONTROLLERS.contains(&c.as_str())
                        {
                            continue;
                        }
                        // A controller newer than this crate's list keeps no key of
                        // its own; its files are in the `unified` directory.
                        if let Ok(key) = c.parse::<HierarchyKey>() {
                            out.insert(key, dir.clone());
                        }
                    }
                    out.insert(HierarchyKey::Unified, dir);
                }
            }
        }
        out
    }

    /// Reads the layout of the calling process's mount namespace.
    pub fn detect() -> Result<Self, HostError> {
        let mi = Path::new("/proc/self/mountinfo");
        let mountinfo = read(mi)?;
        let own = read(Path::new("/proc/self/cgroup"))?;
        let mut layout =
            Self::from_text(&mountinfo, &own).ok_or(HostError::NoCgroups { path: mi.into() })?;
        if let Some(u) = &layout.unified {
            if layout.hierarchy == Hierarchy::Unified {
                let f = u.join("cgroup.controllers");
                layout.v2_controllers = read(&f)?.split_whitespace().map(str::to_string).collect();
            }
        }
        Ok(layout)
    }

    /// Builds the layout from mountinfo and /proc/self/cgroup text (no v2 controller list).
    pub fn from_text(mountinfo: &str, proc_cgroup: &str) -> Option<Self> {
        let mounts = parse_mountinfo(mountinfo);
        let v1: Vec<&CgroupMount> = mounts.iter().filter(|m| !m.v2).collect();
        // Several cgroup2 mounts can exist; the canonical one is at /sys/fs/cgroup
        // (unified) or /sys/fs/cgroup/unified (hybrid); else take the first.
        let v2s: Vec<&CgroupMount> = mounts.iter().filter(|m| m.v2).collect();
        let unified = v2s
            .iter()
            .find(|m| m.mount_point == Path::new(CGROUP_ROOT))
            .or_else(|| {
                v2s.iter()
                    .find(|m| m.mount_point == Path::new(CGROUP_ROOT).join("unified"))
            })
            .or(v2s.first())
            .map(|m| m.mount_point.clone());
        let hierarchy = match (v1.is_empty(), unified.is_some()) {
            (true, true) => Hierarchy::Unified,
            (false, true) => Hierarchy::Hybrid,
            (false, false) => Hierarchy::Legacy,
            (true, false) => return None,
        };
        let mut map = BTreeMap::new();
        let mut roots = BTreeMap::new();
        // The last cgroup2 mount at the chosen point: the one on top.
        if let Some(m) = v2s
            .iter()
            .rev()
            .find(|m| Some(&m.mount_point) == unified.as_ref())
        {
            roots.insert(UNIFIED_KEY.to_string(), m.root.clone());
        }
        if hierarchy == Hierarchy::Unified {
            if let Some(u) = &unified {
                map.insert("unified".to_string(), u.clone());
            }
        } else {
            for m in &v1 {
                for c in &m.controllers {
                    // The first mount of a hierarchy wins; later ones elsewhere are bind
                    // mounts. A later mount at the same point is on top of the first and
                    // hides it (mountinfo lists mounts in the order they were made).
                    if map.get(c).is_none_or(|p| *p == m.mount_point) {
                        map.insert(c.clone(), m.mount_point.clone());
                        roots.insert(c.clone(), m.root.clone());
                    }
                }
            }
        }
        let mut layout = CgroupLayout {
            hierarchy,
            mounts: map,
            unified,
            v2_controllers: Vec::new(),
            own: BTreeMap::new(),
            roots,
        };
        layout.own = parse_proc_cgroup(proc_cgroup)
            .into_iter()
            .map(|(k, p)| {
                let below = layout.below_mount(&k, &p).unwrap_or(&p).to_string();
                (k, below)
            })
            .collect();
        Some(layout)
    }

    /// The mount root of hierarchy `key` (a v1 controller, `unified` for v2): `/` unless
    /// only a subtree is mounted (see [`CgroupLayout::roots`]).
    pub fn root_of(&self, key: &str) -> &str {
        self.roots.get(key).map_or("/", String::as_str)
    }

    /// How `/proc/<pid>/cgroup` names the cgroup at `below` (a path below the mount
    /// point of hierarchy `key`): the mount root joined with it, `/`-prefixed.
    pub fn proc_path(&self, key: &str, below: &str) -> String {
        let root = self.root_of(key).trim_matches('/');
        let below = below.trim_matches('/');
        match (root.is_empty(), below.is_empty()) {
            (true, _) => format!("/{below}"),
            (false, true) => format!("/{root}"),
            (false, false) => format!("/{root}/{below}"),
        }
    }

    /// The path below the mount point of hierarchy `key` of a `/proc/<pid>/cgroup`
    /// path, `/`-prefixed; `None` when the cgroup is outside the mounted subtree.
    pub fn below_mount<'a>(&self, key: &str, proc_path: &'a str) -> Option<&'a str> {
        let root = self.root_of(key).trim_end_matches('/');
        if root.is_empty() {
            return Some(proc_path);
        }
        match proc_path.strip_prefix(root) {
            Some("") => Some("/"),
            Some(rest) if rest.starts_with('/') => Some(rest),
            _ => None,
        }
    }

    /// Whether process `pid` sits in the cgroup `relative` (below the mount points) or
    /// below it, in any hierarchy; `None` when `/proc/<pid>/cgroup` cannot be read (it
    /// is gone).
    pub fn pid_in(&self, pid: i32, relative: &str) -> Option<bool> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let rel = relative.trim_matches('/');
        Some(parse_proc_cgroup(&text).iter().any(|(k, p)| {
            self.below_mount(k, p).is_some_and(|b| {
                let b = b.trim_start_matches('/');
                b == rel || b.strip_prefix(rel).is_some_and(|r| r.starts_with('/'))
            })
        }))
    }

    /// Every cgroup mount point of the layout (v1 hierarchies and the unified mount).
    pub fn mount_points(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.mounts.values().cloned().collect();
        v.extend(self.unified.iter().cloned());
        v.sort();
        v.dedup();
        v
    }

    /// The version the drivers act on.
    pub fn version(&self) -> CgroupVersion {
        self.hierarchy.version()
    }

    /// The controllers a sandbox cgroup is made in: mounted v1 controllers, or v2's available ones.
    pub fn controllers(&self) -> Vec<String> {
        match self.version() {
            CgroupVersion::V1 => V1_CONTROLLERS
                .iter()
                .filter(|c| self.mounts.contains_key(**c))
                .map(|c| c.to_string())
                .collect(),
            CgroupVersion::V2 => self.v2_controllers.clone(),
        }
    }

    /// The v1 hierarchies a sandbox cgroup spans: distinct mount points with their controllers.
    ///
    /// `cpu` and `cpuacct` are one hierarchy when co-mounted and two when not; a
    /// cgroup is one directory per hierarchy, not per controller.
    pub fn v1_hierarchies(&self) -> Vec<(PathBuf, Vec<String>)> {
        let mut out: Vec<(PathBuf, Vec<String>)> = Vec::new();
        for c in self.controllers() {
            let Some(mp) = self.mounts.get(&c) else {
                continue;
            };
            match out.iter_mut().find(|(p, _)| p == mp) {
                Some((_, cs)) => cs.push(c),
                None => out.push((mp.clone(), vec![c])),
            }
        }
        out
    }
}

#[cfg(test)]
impl CgroupLayout {
    /// For unit tests: a layout whose hierarchies are plain directories below `root`,
    /// laid out as a host mounts cgroupfs below `/sys/fs/cgroup` (v1: one directory per
    /// controller of [`V1_CONTROLLERS`], no unified mount; v2: `root` itself, with
    /// [`V2_CONTROLLERS`] available). Nothing is created: the test writes the files it
    /// needs, and a plain file takes a write without truncating it (cgroupfs takes each
    /// `write(2)` whole).
    pub(crate) fn rooted_at(version: CgroupVersion, root: &Path) -> Self {
        match version {
            CgroupVersion::V1 => CgroupLayout {
                hierarchy: Hierarchy::Legacy,
                mounts: V1_CONTROLLERS
                    .iter()
                    .map(|c| (c.to_string(), root.join(c)))
                    .collect(),
                unified: None,
                v2_controllers: Vec::new(),
                own: BTreeMap::new(),
                roots: BTreeMap::new(),
            },
            CgroupVersion::V2 => CgroupLayout {
                hierarchy: Hierarchy::Unified,
                mounts: [("unified".to_string(), root.to_path_buf())].into(),
                unified: Some(root.to_path_buf()),
                v2_controllers: V2_CONTROLLERS.iter().map(|c| c.to_string()).collect(),
                own: BTreeMap::new(),
                roots: BTreeMap::new(),
            },
        }
    }
}

/// Parses cgroup mounts from /proc/self/mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        // Fields: id parent maj:min root mountpoint options [optional...] - fstype source superopts
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let (root, mount_point) = (unescape(pre[3]), unescape(pre[4]));
        match post[0] {
            "cgroup2" => out.push(CgroupMount {
                mount_point: mount_point.into(),
                root,
                controllers: Vec::new(),
                v2: true,
            }),
            "cgroup" => {
                let known = |o: &&str| {
                    o.starts_with("name=")
                        || V1_CONTROLLERS.contains(o)
                        || matches!(
                            *o,
                            "net_cls" | "net_prio" | "perf_event" | "hugetlb" | "rdma" | "misc"
                        )
                };
                let controllers = post[2]
                    .split(',')
                    .filter(known)
                    .map(str::to_string)
                    .collect();
                out.push(CgroupMount {
                    mount_point: mount_point.into(),
                    root,
                    controllers,
                    v2: false,
                });
            }
            _ => {}
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `/proc/<pid>/cgroup` (or a task's) into controller → path; v2's line
/// (`0::/path`, no controllers) has the key `unified`, the one spelling of the v2
/// hierarchy everywhere in this crate ([`crate::cgroup::HierarchyKey::Unified`]).
pub fn parse_proc_cgroup(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if ctrls.is_empty() {
            out.insert(UNIFIED_KEY.to_string(), path.to_string());
        } else {
            for c in ctrls.split(',') {
                out.insert(c.to_string(), path.to_string());
            }
        }
    }
    out
}

/// Reads a task's cgroups: controller → path relative to the hierarchy root.
pub fn task_cgroups(pid: i32, tid: i32) -> Result<BTreeMap<String, String>, HostError> {
    let p = PathBuf::from(format!("/proc/{pid}/task/{tid}/cgroup"));
    Ok(parse_proc_cgroup(&read(&p)?))
}

/// One thread of a process, with its name and cgroups.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadInfo {
    /// Thread id.
    pub tid: i32,
    /// `comm` (`db_vcpu0`, `kvm-nx-lpage-re`, ...).
    pub name: String,
    /// What the thread is: `vcpu`, `controller`, `kvm` or `vmm`.
    pub role: &'static str,
    /// Controller → cgroup path relative to the hierarchy root (v2: key `unified`).
    pub cgroups: BTreeMap<String, String>,
    /// CPU time the thread has run, in nanoseconds (guest time included).
    pub cpu_ns: u64,
}

/// The role of a thread, from its name.
pub fn thread_role(name: &str) -> &'static str {
    if name.starts_with("db_vcpu") {
        "vcpu"
    } else if name.starts_with("hcg-supervisor") {
        "supervisor"
    } else if name.starts_with("kvm") {
        "kvm"
    } else {
        "vmm"
    }
}

/// CPU time a task has run, in ns, from `/proc/<pid>/task/<tid>/schedstat`.
///
/// The scheduler's own clock, exact to the nanosecond; `stat`'s utime/stime are
/// tick samples that miss much of a vCPU's time in guest mode.
pub fn task_cpu_ns(pid: i32, tid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Every thread of `pid` with its cgroups, read from /proc.
pub fn threads(pid: i32) -> Result<Vec<ThreadInfo>, HostError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let rd = std::fs::read_dir(&dir).map_err(|source| HostError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // A thread may exit while we read; skip it rather than fail.
        let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) else {
            continue;
        };
        let Ok(cgroups) = task_cgroups(pid, tid) else {
            continue;
        };
        let name = name.trim().to_string();
        out.push(ThreadInfo {
            tid,
            role: thread_role(&name),
            name,
            cgroups,
            cpu_ns: task_cpu_ns(pid, tid).unwrap_or(0),
        });
    }
    out.sort_by_key(|t| t.tid);
    Ok(out)
}

/// Whether systemd runs as PID 1 and answers on the system bus.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SystemdInfo {
    /// PID 1 is systemd (its `/run/systemd/system` marker exists).
    pub pid1: bool,
    /// The system bus socket accepts connections and systemd is PID 1.
    pub reachable: bool,
    /// systemd's version number, when known.
    pub version: Option<u32>,
}

/// The D-Bus system bus socket.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

impl SystemdInfo {
    /// Looks for systemd as PID 1 and a connectable system bus; `version` stays `None`
    /// (`crate::manager::systemd_info` reads it over D-Bus).
    pub fn detect() -> Self {
        // sd_booted(): systemd creates this directory early at boot, and only it does.
        let pid1 = Path::new("/run/systemd/system").is_dir();
        let bus = std::os::unix::net::UnixStream::connect(SYSTEM_BUS_SOCKET).is_ok();
        let reachable = pid1 && bus;
        SystemdInfo {
            pid1,
            reachable,
            // Read over D-Bus by the systemd driver: `manager::systemd_info`.
            version: None,
        }
    }
}

/// Whether `/dev/kvm` opens and answers.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct KvmInfo {
    /// KVM can create VMs here.
    pub available: bool,
    /// `KVM_GET_API_VERSION`, when it opens.
    pub api_version: Option<i32>,
    /// Why it is not available.
    pub reason: Option<String>,
}

impl KvmInfo {
    /// Opens `/dev/kvm`, reads `KVM_GET_API_VERSION` and creates (then closes) a VM, the
    /// checks a VMM makes first; `reason` carries the OS error of the step that failed
    /// (for example `open /dev/kvm: Permission denied (os error 13)`).
    ///
    /// The two ioctls are issued directly (numbers from `linux/kvm.h`: `_IO(0xAE, 0x00)` and
    /// `_IO(0xAE, 0x01)`) so that the library does not depend on a VMM crate.
    pub fn detect() -> Self {
        match kvm_probe() {
            Ok(v) => KvmInfo {
                available: true,
                api_version: Some(v),
                reason: None,
            },
            Err((api, reason)) => KvmInfo {
                available: false,
                api_version: api,
                reason: Some(reason),
            },
        }
    }
}

/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)` in `linux/kvm.h`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// `KVM_CREATE_VM`, `_IO(KVMIO, 0x01)` in `linux/kvm.h`.
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;

fn kvm_probe() -> Result<i32, (Option<i32>, String)> {
    use std::os::fd::AsRawFd;
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| (None, format!("open /dev/kvm: {e}")))?;
    // SAFETY: ioctls without arguments on a file descriptor this function owns.
    let api = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if api < 0 {
        let e = std::io::Error::last_os_error();
        return Err((None, format!("KVM_GET_API_VERSION on /dev/kvm: {e}")));
    }
    // SAFETY: as above; a returned descriptor is closed at once.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        let e = std::io::Error::last_os_error();
        return Err((Some(api), format!("KVM_CREATE_VM on /dev/kvm: {e}")));
    }
    // SAFETY: `vm` is a descriptor the kernel just returned to us.
    unsafe { libc::close(vm) };
    Ok(api)
}

/// The CPUs the kernel has online (`/sys/devices/system/cpu/online`).
pub fn online_cpus() -> Result<crate::cpulist::CpuList, HostError> {
    let p = Path::new("/sys/devices/system/cpu/online");
    let text = read(p)?;
    crate::cpulist::CpuList::parse("cpus", text.trim()).map_err(|e| HostError::Read {
        path: p.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })
}

fn read(p: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(p).map_err(|source| HostError::Read {
        path: p.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV_MACHINE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const DISTRO_V1: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpuset
32 25 0:29 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
";

    const UNIFIED: &str = "\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_with_separate_cpu_and_cpuacct() {
        let l = CgroupLayout::from_text(DEV_MACHINE, "4:memory:/x\n0::/\n").unwrap();
        assert_eq!(l.hierarchy, Hierarchy::Hybrid);
        assert_eq!(l.version(), CgroupVersion::V1);
        assert_eq!(l.mounts["cpu"], Path::new("/sys/fs/cgroup/cpu"));
        assert_eq!(l.mounts["cpuacct"], Path::new("/sys/fs/cgroup/cpuacct"));
        assert_eq!(
            l.mounts["name=systemd"],
            Path::new("/sys/fs/cgroup/systemd")
        );
        assert_eq!(
            l.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(l.controllers().len(), 8);
        assert_eq!(l.v1_hierarchies().len(), 8);
        assert_eq!(l.own["memory"], "/x");
    }

    #[test]
    fn legacy_with_comounted_cpu_cpuacct() {
        let l = CgroupLayout::from_text(DISTRO_V1, "").unwrap();
        assert_eq!(l.hierarchy, Hierarchy::Legacy);
        assert_eq!(l.mounts["cpu"], l.mounts["cpuacct"]);
        let h = l.v1_hierarchies();
        let cpu = h.iter().find(|(p, _)| p.ends_with("cpu,cpuacct")).unwrap();
        assert_eq!(cpu.1, vec!["cpu".to_string(), "cpuacct".to_string()]);
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn unified_host() {
        let l = CgroupLayout::from_text(UNIFIED, "0::/user.slice\n").unwrap();
        assert_eq!(l.hierarchy, Hierarchy::Unified);
        assert_eq!(l.version(), CgroupVersion::V2);
        assert_eq!(l.own["unified"], "/user.slice");
        assert!(CgroupLayout::from_text("", "").is_none());
    }

    /// A container on a cgroup v1 host without its own cgroup namespace: only its
    /// subtree is bind-mounted, and /proc shows paths from the real root.
    #[test]
    fn subtree_mounts_map_proc_paths_through_their_root() {
        let mi = "\
30 25 0:26 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 /docker/abc /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 25 0:28 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
";
        let own = "5:cpu,cpuacct:/docker/abc/rt\n4:memory:/docker/abc\n3:pids:/rt\n";
        let l = CgroupLayout::from_text(mi, own).unwrap();
        assert_eq!(l.root_of("cpu"), "/docker/abc");
        // The same subtree bound on top of the host's mount (a private mount namespace):
        // the mount on top is the one paths resolve through.
        let over =
            format!("{mi}40 30 0:28 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n");
        let o = CgroupLayout::from_text(&over, "3:pids:/docker/abc/rt\n").unwrap();
        assert_eq!(o.root_of("pids"), "/docker/abc");
        assert_eq!(o.own["pids"], "/rt");
        assert_eq!(l.root_of("pids"), "/");
        // `own` is below the mount point: the directories the drivers use.
        assert_eq!(l.own["cpu"], "/rt");
        assert_eq!(l.own["memory"], "/");
        assert_eq!(l.own["pids"], "/rt");
        assert_eq!(l.proc_path("cpu", "hcg/sb"), "/docker/abc/hcg/sb");
        assert_eq!(l.proc_path("cpu", ""), "/docker/abc");
        assert_eq!(l.proc_path("pids", "/hcg/sb/"), "/hcg/sb");
        assert_eq!(l.below_mount("cpu", "/docker/abc/hcg"), Some("/hcg"));
        assert_eq!(l.below_mount("cpu", "/docker/abc"), Some("/"));
        assert_eq!(l.below_mount("cpu", "/docker/abcd"), None);
        assert_eq!(l.below_mount("cpu", "/other"), None);
        assert_eq!(l.below_mount("pids", "/other"), Some("/other"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\\\b"), "/a\\\\b");
        assert_eq!(unescape("\\04"), "\\04");
    }

    #[test]
    fn proc_cgroup_parsing() {
        let m = parse_proc_cgroup("9:name=systemd:/\n2:cpu,cpuacct:/a/b\n0::/c:d\n");
        assert_eq!(m["cpu"], "/a/b");
        assert_eq!(m["cpuacct"], "/a/b");
        assert_eq!(m["unified"], "/c:d");
        assert_eq!(m["name=systemd"], "/");
    }

    #[test]
    fn cgroup_version_is_a_number_in_json_and_old_strings_still_read() {
        assert_eq!(serde_json::to_string(&CgroupVersion::V1).unwrap(), "1");
        assert_eq!(serde_json::to_string(&CgroupVersion::V2).unwrap(), "2");
        for (text, want) in [("1", CgroupVersion::V1), ("\"2\"", CgroupVersion::V2)] {
            let v: CgroupVersion = serde_json::from_str(text).unwrap();
            assert_eq!(v, want);
        }
        assert!(serde_json::from_str::<CgroupVersion>("3").is_err());
        assert!(serde_json::from_str::<CgroupVersion>("\"v1\"").is_err());
    }
}
