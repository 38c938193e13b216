//! The cgroup supervisor inside the VMM process: sets the sandbox up, places
//! each vCPU thread the hooks report, keeps per-container resources, and
//! tears everything down.
//!
//! One thread owns the cgroup managers. Before any vCPU spawns it decides where
//! vCPU threads go and prepares it (`selfplace`): each vCPU thread then
//! confirms (born placed) or performs (self-placement by writing `0`) its own
//! placement, and pins itself, in its start hook, and reports to this thread,
//! which records it. No guest cycle runs outside the target cgroup: a thread
//! that is not there is refused. The supervisor thread is fed by one queue:
//! those reports, commands from the runtime (resource updates, stats,
//! shutdown), and, for [`Supervisor::hooks_supervisor_writes`], vCPUs
//! that wait for it to write their tid (the previous way, kept as a baseline).

mod pinning;
mod setup;
mod teardown;
mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::{Mutex, PoisonError};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use thiserror::Error;
use tracing::{debug, info, warn};
use vcpu_hooks::{ChannelReporter, HookMessage, VcpuEvent, VcpuHooks};

use crate::cgroup::HierarchyKey;
use crate::selfplace::{self, HookReport, InThreadHooks, PinState, PlacedBy, Report, Target};
pub use crate::selfplace::{get_affinity, set_affinity};

use crate::failpoint::{self, Point};
use crate::host::CgroupLayout;
use crate::manager::{self, CgroupError, Manager, Stats, VcpuChild};
use crate::metrics::{IncMetric, METRICS};
use crate::path::Driver;
use crate::placement::Placement;
use crate::plan::SandboxPlan;
use crate::resources::{self, Checked, CpuList, ResourceError};
use crate::state::{CgroupState, ChildState, SandboxState, StateError};

/// A supervisor operation that failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The state could not be persisted or read.
    #[error(transparent)]
    State(#[from] StateError),
    /// Resources are invalid.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// The supervisor thread is gone.
    #[error("the cgroup supervisor thread is not running")]
    Stopped,
    /// The supervisor thread could not be created (EAGAIN: a thread or pids limit);
    /// what was set up has been rolled back.
    #[error("cannot start the cgroup supervisor thread: {source}")]
    Thread {
        /// The OS error.
        source: std::io::Error,
    },
    /// Pinning a vCPU failed.
    #[error("pinning vCPU {index} (tid {tid}) to CPU {cpu}: {source}")]
    Pin {
        /// vCPU index.
        index: u32,
        /// Thread id.
        tid: i32,
        /// The CPU.
        cpu: u32,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

impl SupervisorError {
    /// Whether the error is the caller's input (bad resources), not the host failing.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SupervisorError::Resource(_)
                | SupervisorError::Cgroup(CgroupError::Resource(_))
                | SupervisorError::Cgroup(CgroupError::NestedRefused { .. })
        )
    }
}

/// Options for starting a supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// Where state is persisted; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
    /// Bound on a vCPU's wait for the supervisor thread, on the channel path
    /// ([`Supervisor::hooks_supervisor_writes`]) only: the default hooks
    /// never wait for the supervisor thread.
    pub placement_timeout: Duration,
    /// Resources for the sandbox cgroup as a whole, validated where they entered (the
    /// plan's: [`SandboxPlan::resources`]).
    pub sandbox_resources: Option<Checked>,
    /// Pin vCPU i to the i-th CPU when their numbers match.
    pub enable_vcpus_pinning: bool,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            state_dir: None,
            placement_timeout: vcpu_hooks::DEFAULT_PLACEMENT_TIMEOUT,
            sandbox_resources: None,
            enable_vcpus_pinning: false,
        }
    }
}

/// What the supervisor knows about one vCPU thread.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct VcpuRecord {
    /// vCPU index.
    pub index: u32,
    /// Thread id.
    pub tid: i32,
    /// µs from the hook's timestamp to confirmed placement.
    pub placed_after_us: Option<u64>,
    /// How the thread got into its cgroup.
    pub placed_by: PlacedBy,
    /// Task migration writes (`tasks`, `cgroup.threads`) made to place this vCPU.
    pub cgroup_writes: u32,
    /// µs from the hook's timestamp until the thread had its single-CPU affinity
    /// (in its hook, or later by the supervisor); `None` when not pinned.
    pub pinned_after_us: Option<u64>,
    /// The thread had exited before it could be placed.
    pub exited_before_placement: bool,
    /// The thread's exit was reported.
    pub exited: bool,
    /// The CPU it is pinned to, if any.
    pub pinned_cpu: Option<u32>,
    /// Why placement failed, if it did.
    pub error: Option<String>,
}

/// What teardown did.
#[derive(Debug, Clone, Serialize, Default)]
#[non_exhaustive]
pub struct TeardownReport {
    /// The cgroups removed, relative to the hierarchy roots (cgroupfs: every directory
    /// that existed before the teardown and is gone from every hierarchy after it,
    /// deepest first: the sandbox, overhead and vCPU child cgroups and each parent the
    /// teardown removed with them, whether this sandbox or a sibling made it), or the
    /// units stopped (systemd).
    pub removed: Vec<String>,
    /// Cgroups of this sandbox (its own or parents it created) still there after a
    /// teardown, each with the reason (cgroupfs; `kept` says when the cgroups were kept
    /// on purpose).
    pub standing: Vec<String>,
    /// The cgroups were kept (`--keep`).
    pub kept: bool,
    /// Errors met; teardown goes on past each.
    pub errors: Vec<String>,
}

enum Cmd {
    Container(
        String,
        Option<LinuxResources>,
        Sender<Result<(), SupervisorError>>,
    ),
    Sandbox(Checked, Sender<Result<(), SupervisorError>>),
    Stats(Sender<Result<Stats, SupervisorError>>),
    Vcpus(Sender<Vec<VcpuRecord>>),
    Shutdown(bool, Sender<TeardownReport>),
}

/// What the supervisor thread reads: the hooks' reports, the channel-path
/// hooks' messages, and runtime commands, in the order they were sent.
enum Input {
    Report(HookReport),
    Hook(HookMessage),
    /// Boxed: resources are large and rare, reports small and frequent.
    Cmd(Box<Cmd>),
}

/// The supervisor handle the VMM and runtime hold.
pub struct Supervisor {
    hooks: Arc<InThreadHooks>,
    channel_hooks: ChannelReporter,
    pin: Arc<Mutex<PinState>>,
    cmd: Sender<Input>,
    thread: Option<JoinHandle<()>>,
    plan: SandboxPlan,
    paths: BTreeMap<HierarchyKey, PathBuf>,
    overhead_paths: Option<BTreeMap<HierarchyKey, PathBuf>>,
    child_paths: Option<BTreeMap<HierarchyKey, PathBuf>>,
}

struct Worker {
    placement: Placement,
    sandbox: Box<dyn Manager>,
    overhead: Option<Box<dyn Manager>>,
    /// The nested layout's vCPU child.
    child: Option<VcpuChild>,
    state: SandboxState,
    state_dir: Option<PathBuf>,
    records: Vec<VcpuRecord>,
    /// When each vCPU thread (by tid) entered its hook.
    started_at: BTreeMap<i32, Instant>,
    pinned: bool,
    pin: Arc<Mutex<PinState>>,
}

impl Supervisor {
    /// The sandbox's plan.
    pub fn plan(&self) -> &SandboxPlan {
        &self.plan
    }

    /// The hooks to hand to the VMM's vCPU spawn path: each vCPU thread confirms
    /// or makes its own placement (and pins itself) in its hook, without waiting
    /// for the supervisor thread (see [`crate::selfplace`]).
    ///
    /// With pinning on, a vCPU can pin itself only when it knows the vCPU count:
    /// use [`Supervisor::hooks_for_boot`] when the VMM is about to boot
    /// vCPUs; with these hooks alone the last boot vCPU pins itself and the
    /// supervisor thread pins the earlier ones after their hooks returned.
    pub fn hooks(&self) -> Arc<dyn VcpuHooks> {
        self.hooks.clone()
    }

    /// [`Supervisor::hooks`], announcing that the VMM boots vCPUs
    /// `0..boot_vcpus` now: with pinning on and as many of them as CPUs in the
    /// sandbox cpuset, each vCPU sets its single-CPU affinity in its own hook,
    /// before its first guest instruction.
    pub fn hooks_for_boot(&self, boot_vcpus: u32) -> Arc<dyn VcpuHooks> {
        {
            let mut p = self.pin.lock().unwrap_or_else(PoisonError::into_inner);
            let live = p.live.clone();
            p.boot = (0..boot_vcpus).filter(|i| !live.contains(i)).collect();
        }
        self.hooks()
    }

    /// Hooks that send each vCPU's tid to the supervisor thread and wait (at most
    /// [`SupervisorOptions::placement_timeout`]) while it writes the tid to the
    /// sandbox's `tasks` files (cgroup v1 + cgroupfs) or confirms a born-placed
    /// thread without checking it. The previous way, kept as a benchmark baseline.
    pub fn hooks_supervisor_writes(&self) -> Arc<dyn VcpuHooks> {
        Arc::new(self.channel_hooks.clone())
    }

    /// vCPU records so far, including every hook event sent before this call.
    pub fn vcpus(&self) -> Vec<VcpuRecord> {
        self.ask(Cmd::Vcpus).unwrap_or_default()
    }

    /// The sandbox cgroup's directories, controller → path.
    pub fn paths(&self) -> &BTreeMap<HierarchyKey, PathBuf> {
        &self.paths
    }

    /// The overhead cgroup's directories, when one is used.
    pub fn overhead_paths(&self) -> Option<&BTreeMap<HierarchyKey, PathBuf>> {
        self.overhead_paths.as_ref()
    }

    /// The nested layout's vCPU child directories, controller → path.
    pub fn vcpus_paths(&self) -> Option<&BTreeMap<HierarchyKey, PathBuf>> {
        self.child_paths.as_ref()
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Cmd) -> Result<T, SupervisorError> {
        let (tx, rx) = bounded(1);
        self.cmd
            .send(Input::Cmd(Box::new(make(tx))))
            .map_err(|_| SupervisorError::Stopped)?;
        rx.recv().map_err(|_| SupervisorError::Stopped)
    }

    /// Adds, updates (`Some`) or removes (`None`) a container's resources; the
    /// sandbox cgroup gets the union of all containers' cpusets. A failure rolls back.
    pub fn update_container(
        &self,
        container_id: &str,
        res: Option<LinuxResources>,
    ) -> Result<(), SupervisorError> {
        self.ask(|tx| Cmd::Container(container_id.to_string(), res, tx))?
    }

    /// Applies resources to the sandbox cgroup as a whole. The plan's rules
    /// ([`SandboxPlan::check_sandbox_resources`]: no memory limit below 6 MiB where the
    /// VMM process is in the sandbox cgroup) are checked first; nothing is written then.
    pub fn set_sandbox_resources(&self, res: LinuxResources) -> Result<(), SupervisorError> {
        let res = Checked::new(res)?;
        self.plan.check_sandbox_resources(res.resources())?;
        self.ask(|tx| Cmd::Sandbox(res, tx))?
    }

    /// The sandbox cgroup's usage counters.
    pub fn stats(&self) -> Result<Stats, SupervisorError> {
        self.ask(Cmd::Stats)?
    }

    /// Stops the supervisor; with `destroy`, removes the cgroups and the state.
    /// Call it after the VMM has stopped and closed its VM file descriptor.
    pub fn shutdown(mut self, destroy: bool) -> TeardownReport {
        let report = self
            .ask(|tx| Cmd::Shutdown(destroy, tx))
            .unwrap_or_else(|e| TeardownReport {
                errors: vec![e.to_string()],
                ..Default::default()
            });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CgroupVersion;
    use crate::path::{CgroupsPath, Driver};

    /// A manager whose thread placement answers as the kernel would for a given tid.
    struct Fake {
        gone: i32,
        placed: Vec<i32>,
    }

    impl Manager for Fake {
        fn driver(&self) -> Driver {
            Driver::Cgroupfs
        }
        fn version(&self) -> CgroupVersion {
            CgroupVersion::V1
        }
        fn relative(&self) -> &str {
            "fake"
        }
        fn paths(&self) -> BTreeMap<HierarchyKey, PathBuf> {
            BTreeMap::new()
        }
        fn create(&mut self) -> Result<(), CgroupError> {
            Ok(())
        }
        fn add_proc(&mut self, _pid: i32) -> Result<(), CgroupError> {
            Ok(())
        }
        fn add_thread(&mut self, tid: i32) -> Result<(), CgroupError> {
            if tid == self.gone {
                return Err(CgroupError::NoSuchTask {
                    pid: tid,
                    path: "fake/tasks".into(),
                });
            }
            if tid < 0 {
                return Err(CgroupError::Io {
                    op: "write".into(),
                    path: "fake/tasks".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
            self.placed.push(tid);
            Ok(())
        }
        fn procs(&self) -> Result<Vec<i32>, CgroupError> {
            Ok(vec![])
        }
        fn threads(&self) -> Result<Vec<i32>, CgroupError> {
            Ok(self.placed.clone())
        }
        fn set(&mut self, _res: &Checked) -> Result<(), CgroupError> {
            Ok(())
        }
        fn freeze(&mut self) -> Result<(), CgroupError> {
            Ok(())
        }
        fn thaw(&mut self) -> Result<(), CgroupError> {
            Ok(())
        }
        fn stats(&self) -> Result<Stats, CgroupError> {
            Ok(Stats::default())
        }
        fn destroy(&mut self) -> Result<(), CgroupError> {
            Ok(())
        }
    }

    fn worker(gone: i32) -> Worker {
        let path = CgroupsPath::parse("fake", "sb").unwrap();
        let state = SandboxState {
            format: crate::state::STATE_FORMAT,
            sandbox_id: "sb".into(),
            driver: Driver::Cgroupfs,
            cgroup_version: CgroupVersion::V1,
            placement: Placement::VcpuThreads,
            sandbox_cgroup_only: true,
            enable_vcpus_pinning: false,
            vmm_pid: 1,
            sandbox: CgroupState {
                path,
                created: vec![],
            },
            overhead: None,
            vcpu_layout: None,
            vcpus: None,
            containers: BTreeMap::new(),
            sandbox_resources: None,
        };
        let fake = Box::new(Fake {
            gone,
            placed: vec![],
        });
        Worker::new(Placement::VcpuThreads, fake, None, None, state, None)
    }

    /// A Started event through the channel path, as a vCPU thread would send it.
    fn started(w: &mut Worker, index: u32, tid: i32) -> Result<(), String> {
        let (hooks, rx) = vcpu_hooks::channel(Duration::from_secs(10));
        let t = std::thread::spawn(move || hooks.vcpu_started(index));
        let mut msg = rx.recv().unwrap();
        if let VcpuEvent::Started { index: i, at, .. } = msg.event {
            msg.event = VcpuEvent::Started { index: i, tid, at };
        }
        w.on_event(msg);
        t.join().unwrap().map_err(|e| match e {
            vcpu_hooks::HookError::Refused { reason, .. } => reason.to_string(),
            other => other.to_string(),
        })
    }

    #[test]
    fn exited_before_placement_is_not_an_error() {
        let mut w = worker(4242);
        assert_eq!(started(&mut w, 0, 4242), Ok(()));
        let recs = w.records.clone();
        assert!(recs[0].exited_before_placement);
        assert!(recs[0].placed_after_us.is_none());
    }

    #[test]
    fn placement_failure_refuses_the_vcpu() {
        let mut w = worker(0);
        let err = started(&mut w, 1, -7).unwrap_err();
        assert!(err.contains("ENOSPC") || err.contains("space"), "{err}");
        assert_eq!(started(&mut w, 2, 77), Ok(()));
        let recs = w.records.clone();
        assert!(recs[0].error.is_some());
        assert!(recs[1].placed_after_us.is_some());
        w.on_event(HookMessage::new(VcpuEvent::Exited { index: 2, tid: 77 }));
        assert!(w.records[1].exited);
    }

    #[test]
    fn a_vcpu_started_twice_is_listed_once() {
        let mut w = worker(0);
        assert_eq!(started(&mut w, 0, 77), Ok(()));
        assert_eq!(started(&mut w, 0, 77), Ok(()));
        assert_eq!(started(&mut w, 1, 78), Ok(()));
        let keys: Vec<_> = w.records.iter().map(|r| (r.index, r.tid)).collect();
        assert_eq!(keys, vec![(0, 77), (1, 78)]);
    }

    #[test]
    fn container_cpusets_union_and_roll_back() {
        let mut w = worker(0);
        let r = |c: &str| {
            resources::from_json(&format!(r#"{{"cpu":{{"cpus":"{c}","mems":"0"}}}}"#)).unwrap()
        };
        w.update_container("a".into(), Some(r("0-1"))).unwrap();
        w.update_container("b".into(), Some(r("3"))).unwrap();
        let (cpus, mems) = Worker::cpuset_union(&w.state.containers).unwrap();
        assert_eq!(cpus.to_string(), "0-1,3");
        assert_eq!(mems.to_string(), "0");
        assert!(w
            .update_container(
                "c".into(),
                Some(resources::from_json(r#"{"cpu":{"quota":9}}"#).unwrap())
            )
            .is_err());
        assert_eq!(w.state.containers.len(), 2);
        w.update_container("a".into(), None).unwrap();
        let (cpus, _) = Worker::cpuset_union(&w.state.containers).unwrap();
        assert_eq!(cpus.to_string(), "3");
    }
}
