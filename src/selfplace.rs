//! Placement done by the vCPU thread itself, in its start hook, as the
//! supervisor prepared it before any vCPU spawned (see `vcpu_hooks`' crate docs).
//!
//! - **Born placed**: a thread is born in the cgroups of the thread that creates
//!   it (cgroup v1 and v2, `copy_process` → `cgroup_fork`). Where the vCPU's
//!   target is the cgroup the whole VMM process was moved to at set-up, the
//!   thread only reads `/proc/thread-self/cgroup` and compares it with the
//!   expected cgroup per hierarchy. No cgroup write happens; a thread that is
//!   somewhere else (its spawner was moved by someone) is refused.
//! - **Self-placement**: where the target differs (the split layouts), the thread
//!   writes the literal `0` into each target file the supervisor opened ahead of
//!   time (`tasks` per v1 hierarchy, or `cgroup.threads` on v2). For `0` the
//!   kernel migrates the writing thread without taking the global threadgroup
//!   rwsem for writing (`cgroup_procs_write_start`: "if we migrate a single
//!   thread ... the thread is `current` ... we can skip the global lock"), so no
//!   RCU grace period is waited for. `pwrite` at offset 0 is used so that threads
//!   sharing the descriptor do not serialise on its file position lock.
//! - **Pinning**: with `enable_vcpus_pinning` and as many vCPUs (live plus the
//!   announced boot vCPUs not started yet) as CPUs in the sandbox cpuset, vCPU
//!   `i` sets its own affinity to the i-th CPU (by index rank) before it returns.
//!
//! The thread then sends its report to the supervisor thread, without waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;
use vcpu_hooks::{gettid, HookError, PlacementError, VcpuHooks};

use crate::cgroup::HierarchyKey;
use crate::failpoint;
use crate::host::{CgroupLayout, CgroupVersion, UNIFIED_KEY};
use crate::manager::{fs::count_migration_writes, CgroupError};

/// How a vCPU thread came to be in its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacedBy {
    /// Born in the target (its spawner sits there); checked, not written.
    Born,
    /// Moved itself by writing `0` to the target's files.
    SelfMove,
    /// The supervisor thread wrote its tid (the channel path).
    Supervisor,
}

impl std::fmt::Display for PlacedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlacedBy::Born => "born",
            PlacedBy::SelfMove => "self-move",
            PlacedBy::Supervisor => "supervisor",
        })
    }
}

/// One hierarchy's expected line of `/proc/thread-self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expect {
    /// A controller of the v1 hierarchy, `unified` for v2.
    pub hierarchy: String,
    /// The cgroup as `/proc` shows it: the mount's root + the path below the mount
    /// ([`CgroupLayout::proc_path`]).
    pub path: String,
}

/// What a vCPU thread does in its hook, decided before vCPUs spawn.
#[derive(Debug)]
pub(crate) enum Target {
    /// Born in the target: check these lines.
    Born(Vec<Expect>),
    /// Move: write `0` to each of these files, kept open.
    Move(Vec<(PathBuf, File)>),
}

impl Target {
    /// Cgroup writes one vCPU makes.
    pub fn writes(&self) -> u32 {
        match self {
            Target::Born(_) => 0,
            Target::Move(f) => f.len() as u32,
        }
    }

    /// How a vCPU placed by this target got there.
    pub fn placed_by(&self) -> PlacedBy {
        match self {
            Target::Born(_) => PlacedBy::Born,
            Target::Move(_) => PlacedBy::SelfMove,
        }
    }

    /// The expected `/proc` lines of the cgroup whose directories are `paths`
    /// (controller → directory, as `Manager::paths` gives them).
    pub fn expect(
        paths: &BTreeMap<HierarchyKey, PathBuf>,
        layout: &CgroupLayout,
    ) -> Result<Vec<Expect>, CgroupError> {
        let mut out: Vec<Expect> = Vec::new();
        let mut mounts_seen: Vec<PathBuf> = Vec::new();
        for (c, dir) in paths {
            let (hierarchy, mount) = match layout.version() {
                CgroupVersion::V1 => match layout.mounts.get(c.name()) {
                    Some(m) => (c.name().to_string(), m.clone()),
                    None => continue,
                },
                CgroupVersion::V2 => match &layout.unified {
                    Some(u) if c == UNIFIED_KEY => (UNIFIED_KEY.to_string(), u.clone()),
                    _ => continue,
                },
            };
            if mounts_seen.contains(&mount) {
                continue;
            }
            let rel = dir
                .strip_prefix(&mount)
                .map_err(|_| CgroupError::NoController {
                    controller: hierarchy.clone(),
                    path: dir.clone(),
                })?;
            mounts_seen.push(mount);
            out.push(Expect {
                path: layout.proc_path(&hierarchy, &rel.to_string_lossy()),
                hierarchy,
            });
        }
        if out.is_empty() {
            return Err(CgroupError::NoController {
                controller: "any".into(),
                path: paths.values().next().cloned().unwrap_or_default(),
            });
        }
        Ok(out)
    }

    /// Opens the files a thread writes `0` to, to move itself into the cgroup at
    /// `dirs` (one directory per hierarchy): `tasks` on v1, `cgroup.threads` on v2.
    pub fn open_move(dirs: &[PathBuf], version: CgroupVersion) -> Result<Self, CgroupError> {
        let name = match version {
            CgroupVersion::V1 => "tasks",
            CgroupVersion::V2 => "cgroup.threads",
        };
        let mut files = Vec::new();
        for d in dirs {
            let path = d.join(name);
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| CgroupError::Io {
                    op: "open for writing".into(),
                    path: path.clone(),
                    source,
                })?;
            files.push((path, f));
        }
        Ok(Target::Move(files))
    }

    /// Done by the vCPU thread on itself.
    fn apply(&self) -> Result<(), PlacementError> {
        match self {
            Target::Born(expect) => check_own_cgroups(expect),
            Target::Move(files) => {
                failpoint::hit(crate::failpoint::Point::VcpuSelfMove).map_err(|e| {
                    PlacementError::Io {
                        op: "failpoint before writing \"0\" to".into(),
                        path: files.first().map(|(p, _)| p.clone()).unwrap_or_default(),
                        errno: e.raw_os_error(),
                    }
                })?;
                for (path, f) in files {
                    count_migration_writes(1);
                    f.write_at(b"0", 0).map_err(|e| PlacementError::Io {
                        op: "write \"0\" (the calling thread) to".into(),
                        path: path.clone(),
                        errno: e.raw_os_error(),
                    })?;
                }
                Ok(())
            }
        }
    }
}

const THREAD_SELF_CGROUP: &str = "/proc/thread-self/cgroup";

/// Compares the calling thread's `/proc/thread-self/cgroup` with `expect`.
pub(crate) fn check_own_cgroups(expect: &[Expect]) -> Result<(), PlacementError> {
    let text = std::fs::read_to_string(THREAD_SELF_CGROUP).map_err(|e| PlacementError::Io {
        op: "read".into(),
        path: PathBuf::from(THREAD_SELF_CGROUP),
        errno: e.raw_os_error(),
    })?;
    check_lines(&text, expect)
}

/// The check on the text of a `/proc/<pid>/cgroup` file.
pub(crate) fn check_lines(text: &str, expect: &[Expect]) -> Result<(), PlacementError> {
    for e in expect {
        let found = text.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if e.hierarchy == UNIFIED_KEY {
                id == "0" && ctrls.is_empty()
            } else {
                ctrls.split(',').any(|c| c == e.hierarchy)
            };
            hit.then_some(path)
        });
        if found != Some(e.path.as_str()) {
            return Err(PlacementError::WrongCgroup {
                hierarchy: e.hierarchy.clone(),
                expected: e.path.clone(),
                found: found.unwrap_or("").to_string(),
            });
        }
    }
    Ok(())
}

/// Pinning state shared by the hooks and the supervisor thread.
#[derive(Debug, Default)]
pub(crate) struct PinState {
    /// Pinning is on.
    pub enabled: bool,
    /// The cpuset vCPUs are pinned within (the supervisor keeps it current).
    pub cpus: Vec<u32>,
    /// vCPUs whose hook passed and that have not exited.
    pub live: BTreeSet<u32>,
    /// Boot vCPUs announced ([`crate::supervisor::Supervisor::hooks_for_boot`]) not started yet.
    pub boot: BTreeSet<u32>,
}

impl PinState {
    /// The CPU vCPU `index` is pinned to, counting it as live.
    fn cpu_for(&self, index: u32) -> Option<u32> {
        if !self.enabled || self.cpus.is_empty() {
            return None;
        }
        let all: BTreeSet<u32> = self.live.union(&self.boot).copied().collect();
        if all.len() != self.cpus.len() {
            return None;
        }
        let rank = all.iter().position(|&i| i == index)?;
        self.cpus.get(rank).copied()
    }
}

/// What a vCPU thread did in its hook, sent to the supervisor thread.
#[derive(Debug)]
pub(crate) struct Report {
    pub index: u32,
    pub tid: i32,
    /// When the hook was entered.
    pub at: Instant,
    /// When the thread was in its target (confirmed or moved).
    pub placed_at: Option<Instant>,
    pub placed_by: PlacedBy,
    pub writes: u32,
    pub outcome: Result<(), PlacementError>,
    /// The CPU it pinned itself to, and when.
    pub pinned: Option<(u32, Instant)>,
}

/// Messages from the in-thread hooks to the supervisor thread.
#[derive(Debug)]
pub(crate) enum HookReport {
    Started(Report),
    Exited { index: u32, tid: i32 },
}

/// Where the hooks send their reports; `false` when the supervisor is gone.
pub(crate) type ReportSink = Arc<dyn Fn(HookReport) -> bool + Send + Sync>;

/// The supervisor's hooks: the thread places (and pins) itself, then reports.
pub(crate) struct InThreadHooks {
    pub target: Arc<Target>,
    pub pin: Arc<Mutex<PinState>>,
    pub sink: ReportSink,
    /// The sandbox cgroup, for error messages.
    pub relative: PathBuf,
}

impl VcpuHooks for InThreadHooks {
    fn vcpu_started(&self, index: u32) -> Result<(), HookError> {
        let at = Instant::now();
        let tid = gettid();
        let placed = failpoint::hit(crate::failpoint::Point::VcpuPlaced)
            .map_err(|e| PlacementError::Io {
                op: "failpoint vcpu-placed at".into(),
                path: self.relative.clone(),
                errno: e.raw_os_error(),
            })
            .and_then(|()| self.target.apply());
        let placed_at = placed.is_ok().then(Instant::now);
        let mut pinned = None;
        let outcome = placed.and_then(|()| {
            let cpu = {
                let mut p = self.pin.lock().unwrap_or_else(PoisonError::into_inner);
                p.boot.remove(&index);
                p.live.insert(index);
                p.cpu_for(index)
            };
            if let Some(cpu) = cpu {
                set_affinity(0, &[cpu]).map_err(|e| PlacementError::Affinity {
                    cpu,
                    errno: e.raw_os_error().unwrap_or(0),
                })?;
                pinned = Some((cpu, Instant::now()));
            }
            Ok(())
        });
        if outcome.is_err() {
            let mut p = self.pin.lock().unwrap_or_else(PoisonError::into_inner);
            p.live.remove(&index);
        }
        let delivered = (self.sink)(HookReport::Started(Report {
            index,
            tid,
            at,
            placed_at,
            placed_by: self.target.placed_by(),
            writes: self.target.writes(),
            outcome: outcome.clone(),
            pinned,
        }));
        match outcome {
            Err(reason) => Err(HookError::Refused { index, tid, reason }),
            // Nobody records it and the cgroups may be going away: do not run.
            Ok(()) if !delivered => Err(HookError::Disconnected { index, tid }),
            Ok(()) => Ok(()),
        }
    }

    fn vcpu_exited(&self, index: u32) {
        self.pin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .live
            .remove(&index);
        // A supervisor that is already gone has nothing left to record.
        let _ = (self.sink)(HookReport::Exited {
            index,
            tid: gettid(),
        });
    }
}

/// The placement error a vCPU gets for a supervisor's cgroup error.
pub(crate) fn placement_error(e: &CgroupError) -> PlacementError {
    match e {
        CgroupError::Io { op, path, source } => PlacementError::Io {
            op: op.clone(),
            path: path.clone(),
            errno: source.raw_os_error(),
        },
        CgroupError::NoController { controller, path } => PlacementError::NoController {
            controller: controller.clone(),
            path: path.clone(),
        },
        other => PlacementError::Supervisor {
            what: other.to_string(),
        },
    }
}

/// The directories of `paths`, one per hierarchy (co-mounted controllers share one).
pub(crate) fn distinct_dirs(paths: &BTreeMap<HierarchyKey, PathBuf>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = paths.values().cloned().collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Sets a thread's CPU affinity (`sched_setaffinity`); tid 0 is the calling thread.
pub fn set_affinity(tid: i32, cpus: &[u32]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: CPU_SET only writes inside `set` for indexes below CPU_SETSIZE.
        if (c as usize) < libc::CPU_SETSIZE as usize {
            unsafe { libc::CPU_SET(c as usize, &mut set) };
        }
    }
    // SAFETY: passes a valid pointer and the size of the set it points to.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads a thread's CPU affinity (`sched_getaffinity`).
pub fn get_affinity(tid: i32) -> std::io::Result<Vec<u32>> {
    // SAFETY: as above; the kernel fills the set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as u32)
        // SAFETY: CPU_ISSET reads inside `set`.
        .filter(|&c| unsafe { libc::CPU_ISSET(c as usize, &set) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(h: &str, p: &str) -> Expect {
        Expect {
            hierarchy: h.into(),
            path: p.into(),
        }
    }

    #[test]
    fn lines_match_per_hierarchy() {
        let v1 = "12:pids:/a/sb\n4:cpu,cpuacct:/a/sb\n1:name=systemd:/x\n0::/x\n";
        assert_eq!(
            check_lines(v1, &[e("cpu", "/a/sb"), e("pids", "/a/sb")]),
            Ok(())
        );
        let err = check_lines(v1, &[e("cpuacct", "/a/other")]).unwrap_err();
        assert!(matches!(&err, PlacementError::WrongCgroup { found, .. } if found == "/a/sb"));
        assert!(err.to_string().contains("/a/other"), "{err}");
        let err = check_lines(v1, &[e("memory", "/a/sb")]).unwrap_err();
        assert!(err.to_string().contains("does not list"), "{err}");
        assert_eq!(check_lines("0::/p/sb\n", &[e("unified", "/p/sb")]), Ok(()));
        assert!(check_lines("0::/p/sb/vcpus\n", &[e("unified", "/p/sb")]).is_err());
    }

    #[test]
    fn pin_rank_counts_announced_boot_vcpus() {
        let mut p = PinState {
            enabled: true,
            cpus: vec![4, 6],
            ..Default::default()
        };
        p.boot = [0, 1].into();
        p.boot.remove(&1);
        p.live.insert(1);
        assert_eq!(p.cpu_for(1), Some(6));
        p.boot.clear();
        assert_eq!(p.cpu_for(1), None, "one of two");
        p.live.insert(0);
        assert_eq!(p.cpu_for(0), Some(4));
        p.enabled = false;
        assert_eq!(p.cpu_for(0), None);
    }
}
