//! The cgroup controller inside the VMM process: sets the sandbox up, places
//! each vCPU thread the hooks report, keeps per-container resources, and
//! tears everything down.
//!
//! One thread owns the cgroup managers. Before any vCPU spawns it decides where
//! vCPU threads go and prepares it ([`crate::selfplace`]): each vCPU thread then
//! confirms (born placed) or performs (self-placement by writing `0`) its own
//! placement, and pins itself, in its start hook, and reports to this thread,
//! which records it. No guest cycle runs outside the target cgroup: a thread
//! that is not there is refused. The controller thread is fed by one queue:
//! those reports, commands from the runtime (resource updates, stats,
//! shutdown), and, for [`CgroupController::hooks_controller_writes`], vCPUs
//! that wait for it to write their tid (the previous way, kept as a baseline).

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

use crate::selfplace::{self, HookReport, InThreadHooks, PinState, PlacedBy, Report, Target};
pub use crate::selfplace::{get_affinity, set_affinity};

use crate::failpoint::{self, Point};
use crate::host::CgroupLayout;
use crate::manager::{self, CgroupError, Manager, Stats, VcpuChild};
use crate::metrics::{IncMetric, METRICS};
use crate::path::Driver;
use crate::placement::Placement;
use crate::plan::SandboxPlan;
use crate::resources::{self, CpuList, ResourceError};
use crate::state::{CgroupState, ChildState, SandboxState, StateError};

/// A controller operation that failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The state could not be persisted or read.
    #[error(transparent)]
    State(#[from] StateError),
    /// Resources are invalid.
    #[error(transparent)]
    Resource(#[from] ResourceError),
    /// The controller thread is gone.
    #[error("the cgroup controller thread is not running")]
    Stopped,
    /// The controller thread could not be created (EAGAIN: a thread or pids limit);
    /// what was set up has been rolled back.
    #[error("cannot start the cgroup controller thread: {source}")]
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

impl ControllerError {
    /// Whether the error is the caller's input (bad resources), not the host failing.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ControllerError::Resource(_)
                | ControllerError::Cgroup(CgroupError::Resource(_))
                | ControllerError::Cgroup(CgroupError::NestedRefused { .. })
        )
    }
}

/// Options for starting a controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Where state is persisted; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
    /// Bound on a vCPU's wait for the controller thread, on the channel path
    /// ([`CgroupController::hooks_controller_writes`]) only: the default hooks
    /// never wait for the controller thread.
    pub placement_timeout: Duration,
    /// Resources for the sandbox cgroup as a whole.
    pub sandbox_resources: Option<LinuxResources>,
    /// Pin vCPU i to the i-th CPU when their numbers match.
    pub enable_vcpus_pinning: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            state_dir: None,
            placement_timeout: vcpu_hooks::DEFAULT_PLACEMENT_TIMEOUT,
            sandbox_resources: None,
            enable_vcpus_pinning: false,
        }
    }
}

/// What the controller knows about one vCPU thread.
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
    /// (in its hook, or later by the controller); `None` when not pinned.
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
        Sender<Result<(), ControllerError>>,
    ),
    Sandbox(LinuxResources, Sender<Result<(), ControllerError>>),
    Stats(Sender<Result<Stats, ControllerError>>),
    Vcpus(Sender<Vec<VcpuRecord>>),
    Shutdown(bool, Sender<TeardownReport>),
}

/// What the controller thread reads: the hooks' reports, the channel-path
/// hooks' messages, and runtime commands, in the order they were sent.
enum Input {
    Report(HookReport),
    Hook(HookMessage),
    /// Boxed: resources are large and rare, reports small and frequent.
    Cmd(Box<Cmd>),
}

/// The controller handle the VMM and runtime hold.
pub struct CgroupController {
    hooks: Arc<InThreadHooks>,
    channel_hooks: ChannelReporter,
    pin: Arc<Mutex<PinState>>,
    cmd: Sender<Input>,
    thread: Option<JoinHandle<()>>,
    plan: SandboxPlan,
    paths: BTreeMap<String, PathBuf>,
    overhead_paths: Option<BTreeMap<String, PathBuf>>,
    child_paths: Option<BTreeMap<String, PathBuf>>,
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

impl CgroupController {
    /// Creates the sandbox (and overhead) cgroups, places this process per the
    /// policy, persists state, and starts the controller thread.
    pub fn start(plan: SandboxPlan, opts: ControllerOptions) -> Result<Self, ControllerError> {
        if let Some(r) = &opts.sandbox_resources {
            resources::validate(r)?;
            plan.check_sandbox_resources(r)?;
        }
        let layout = plan.layout.clone();
        let mut sandbox = manager::build(&plan.sandbox.parsed, &layout, Vec::new())?;
        let mut overhead = match &plan.overhead {
            Some(o) => Some(manager::build(&o.parsed, &layout, Vec::new())?),
            None => None,
        };
        if let Some(r) = &opts.sandbox_resources {
            sandbox.check(r)?;
        }
        let mut child = plan
            .vcpus_child
            .as_ref()
            .map(|_| VcpuChild::adopt(&layout, &plan.sandbox.path, Vec::new()));
        // Before anything is created: a host that cannot hold the child fails here.
        if let Some(c) = &child {
            c.preflight()?;
        }
        let me = std::process::id() as i32;
        let mut state = SandboxState {
            sandbox_id: plan.sandbox_id.clone(),
            driver: plan.driver,
            cgroup_version: plan.version(),
            placement: plan.placement,
            sandbox_cgroup_only: plan.sandbox_cgroup_only,
            enable_vcpus_pinning: opts.enable_vcpus_pinning,
            vmm_pid: me,
            sandbox: CgroupState {
                path: plan.sandbox.parsed.clone(),
                created: sandbox.missing(),
            },
            overhead: plan.overhead.as_ref().map(|o| CgroupState {
                path: o.parsed.clone(),
                created: overhead.as_ref().map(|m| m.missing()).unwrap_or_default(),
            }),
            vcpu_layout: Some(plan.vcpu_layout),
            vcpus: child.as_ref().map(|c| ChildState {
                dirs: c.dirs().to_vec(),
                created: c.missing(),
            }),
            containers: BTreeMap::new(),
            sandbox_resources: opts.sandbox_resources.clone(),
        };
        // Record what we are about to create before creating it: a crash in between
        // still leaves `cleanup` a complete list.
        if let Some(dir) = &opts.state_dir {
            state.save(dir)?;
        }
        let mut target = None;
        let setup = (|| -> Result<(), ControllerError> {
            sandbox.create()?;
            failpoint_hit(Point::CreateSandbox)?;
            if let Some(o) = overhead.as_mut() {
                o.create()?;
                failpoint_hit(Point::CreateOverhead)?;
            }
            if let Some(r) = &opts.sandbox_resources {
                sandbox.set(r)?;
                failpoint_hit(Point::SetResources)?;
            }
            // Threads born later inherit the cgroup of the thread that creates them,
            // so one move of the whole process covers every non-vCPU thread.
            match (overhead.as_mut(), plan.placement, plan.sandbox_cgroup_only) {
                (Some(o), _, _) => o.add_proc(me)?,
                (None, Placement::VmmProcess, _) | (None, _, true) => sandbox.add_proc(me)?,
                (None, Placement::VcpuThreads, false) => {}
            }
            failpoint_hit(Point::AddProc)?;
            // Nested: the child is made once the process is in the sandbox cgroup (with
            // systemd the scope exists only from then on).
            if let Some(c) = child.as_mut() {
                c.create()?;
                failpoint_hit(Point::CreateVcpus)?;
            }
            METRICS.cgroups_created.add(
                sandbox.created().len()
                    + overhead.as_ref().map_or(0, |o| o.created().len())
                    + child.as_ref().map_or(0, |c| c.created().len()),
            );
            state.sandbox.created = merge(&state.sandbox.created, &sandbox.created());
            if let (Some(os), Some(o)) = (state.overhead.as_mut(), overhead.as_ref()) {
                os.created = merge(&os.created, &o.created());
            }
            if let (Some(cs), Some(c)) = (state.vcpus.as_mut(), child.as_ref()) {
                cs.created = merge(&cs.created, &c.created());
            }
            if let Some(dir) = &opts.state_dir {
                state.save(dir)?;
            }
            target = Some(prepare_target(
                &state,
                sandbox.as_ref(),
                child.as_ref(),
                &layout,
            )?);
            Ok(())
        })();
        let target = match (setup, target) {
            (Ok(()), Some(t)) => t,
            (Err(e), _) => {
                return Err(Self::roll_back(
                    e, &plan, sandbox, overhead, child, state, opts,
                ))
            }
            (Ok(()), None) => {
                let e = ControllerError::Cgroup(CgroupError::NoController {
                    controller: "any".into(),
                    path: PathBuf::from(&plan.sandbox.path),
                });
                return Err(Self::roll_back(
                    e, &plan, sandbox, overhead, child, state, opts,
                ));
            }
        };
        if !plan.configured_sandbox_cgroup_only
            && plan.placement == Placement::VmmProcess
            && plan.vcpus_child.is_none()
        {
            info!(
                driver = %plan.driver,
                version = %plan.version(),
                "sandbox_cgroup_only = false has no effect here: the whole VMM process is in the sandbox cgroup"
            );
        }
        Self::spawn(plan, opts, sandbox, overhead, child, state, target)
    }

    #[allow(clippy::too_many_arguments)]
    fn roll_back(
        e: ControllerError,
        plan: &SandboxPlan,
        sandbox: Box<dyn Manager>,
        overhead: Option<Box<dyn Manager>>,
        child: Option<VcpuChild>,
        state: SandboxState,
        opts: ControllerOptions,
    ) -> ControllerError {
        {
            // The error is returned (and reported by the caller): logging it here too
            // would show it twice.
            debug!(error = %e, "sandbox setup failed; rolling back");
            let mut w = Worker::new(
                plan.placement,
                sandbox,
                overhead,
                child,
                state,
                opts.state_dir,
            );
            let report = w.teardown(true);
            for err in report.errors {
                warn!(error = %err, "rollback");
            }
        }
        e
    }

    /// Restores a sandbox from its persisted state (after a restart of the process).
    pub fn restore(
        state_dir: PathBuf,
        sandbox_id: &str,
        layout: &CgroupLayout,
        plan: SandboxPlan,
        opts: ControllerOptions,
    ) -> Result<Self, ControllerError> {
        let state = SandboxState::load(&state_dir, sandbox_id, &layout.mount_points())?;
        let sandbox = manager::build(&state.sandbox.path, layout, state.sandbox.created.clone())?;
        let overhead = match &state.overhead {
            Some(o) => Some(manager::build(&o.path, layout, o.created.clone())?),
            None => None,
        };
        let child = state
            .vcpus
            .as_ref()
            .map(|c| VcpuChild::adopt(layout, &state.sandbox.path.relative(), c.created.clone()));
        let opts = ControllerOptions {
            state_dir: Some(state_dir),
            ..opts
        };
        let target = prepare_target(&state, sandbox.as_ref(), child.as_ref(), layout)?;
        Self::spawn(plan, opts, sandbox, overhead, child, state, target)
    }

    fn spawn(
        plan: SandboxPlan,
        opts: ControllerOptions,
        sandbox: Box<dyn Manager>,
        overhead: Option<Box<dyn Manager>>,
        child: Option<VcpuChild>,
        state: SandboxState,
        target: Target,
    ) -> Result<Self, ControllerError> {
        let paths = sandbox.paths();
        let overhead_paths = overhead.as_ref().map(|o| o.paths());
        let child_paths = child.as_ref().map(|c| c.paths());
        let (cmd, inputs) = unbounded();
        let mut worker = Worker::new(
            plan.placement,
            sandbox,
            overhead,
            child,
            state,
            opts.state_dir.clone(),
        );
        let pin = Arc::clone(&worker.pin);
        worker.publish_pin_cpus();
        let tx = cmd.clone();
        let hooks = Arc::new(InThreadHooks {
            target: Arc::new(target),
            pin: Arc::clone(&pin),
            sink: Arc::new(move |r| tx.send(Input::Report(r)).is_ok()),
            relative: PathBuf::from(&plan.sandbox.path),
        });
        let tx = cmd.clone();
        let channel_hooks = ChannelReporter::with_sink(
            Arc::new(move |m| match tx.send(Input::Hook(m)) {
                Ok(()) => Ok(()),
                Err(e) => match e.into_inner() {
                    Input::Hook(m) => Err(m),
                    _ => Ok(()),
                },
            }),
            opts.placement_timeout,
        );
        // The worker goes to the thread only once the thread exists: when it cannot be
        // created (a pids limit the process has already reached, for one) the worker is
        // still ours, and what was set up is rolled back instead of left behind.
        let (handoff, worker_rx) = bounded::<Worker>(1);
        let thread = match std::thread::Builder::new()
            .name("hcg-controller".into())
            .spawn(move || {
                if let Ok(w) = worker_rx.recv() {
                    w.run(inputs)
                }
            }) {
            Ok(t) => t,
            Err(source) => {
                let report = worker.teardown(true);
                for err in report.errors {
                    warn!(error = %err, "rollback");
                }
                return Err(ControllerError::Thread { source });
            }
        };
        if handoff.send(worker).is_err() {
            return Err(ControllerError::Stopped);
        }
        let thread = Some(thread);
        let controller = CgroupController {
            hooks,
            channel_hooks,
            pin,
            cmd,
            thread,
            plan,
            paths,
            overhead_paths,
            child_paths,
        };
        // The actor is up and owns the set-up; an injected error here is undone by its
        // own teardown, as a failure of the caller right after `start` would be.
        if let Err(e) = failpoint_hit(Point::ControllerStarted) {
            let _ = controller.shutdown(true);
            return Err(e);
        }
        Ok(controller)
    }

    /// The sandbox's plan.
    pub fn plan(&self) -> &SandboxPlan {
        &self.plan
    }

    /// The hooks to hand to the VMM's vCPU spawn path: each vCPU thread confirms
    /// or makes its own placement (and pins itself) in its hook, without waiting
    /// for the controller thread (see [`crate::selfplace`]).
    ///
    /// With pinning on, a vCPU can pin itself only when it knows the vCPU count:
    /// use [`CgroupController::hooks_for_boot`] when the VMM is about to boot
    /// vCPUs; with these hooks alone the last boot vCPU pins itself and the
    /// controller thread pins the earlier ones after their hooks returned.
    pub fn hooks(&self) -> Arc<dyn VcpuHooks> {
        self.hooks.clone()
    }

    /// [`CgroupController::hooks`], announcing that the VMM boots vCPUs
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

    /// Hooks that send each vCPU's tid to the controller thread and wait (at most
    /// [`ControllerOptions::placement_timeout`]) while it writes the tid to the
    /// sandbox's `tasks` files (cgroup v1 + cgroupfs) or confirms a born-placed
    /// thread without checking it. The previous way, kept as a benchmark baseline.
    pub fn hooks_controller_writes(&self) -> Arc<dyn VcpuHooks> {
        Arc::new(self.channel_hooks.clone())
    }

    /// vCPU records so far, including every hook event sent before this call.
    pub fn vcpus(&self) -> Vec<VcpuRecord> {
        self.ask(Cmd::Vcpus).unwrap_or_default()
    }

    /// The sandbox cgroup's directories, controller → path.
    pub fn paths(&self) -> &BTreeMap<String, PathBuf> {
        &self.paths
    }

    /// The overhead cgroup's directories, when one is used.
    pub fn overhead_paths(&self) -> Option<&BTreeMap<String, PathBuf>> {
        self.overhead_paths.as_ref()
    }

    /// The nested layout's vCPU child directories, controller → path.
    pub fn vcpus_paths(&self) -> Option<&BTreeMap<String, PathBuf>> {
        self.child_paths.as_ref()
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Cmd) -> Result<T, ControllerError> {
        let (tx, rx) = bounded(1);
        self.cmd
            .send(Input::Cmd(Box::new(make(tx))))
            .map_err(|_| ControllerError::Stopped)?;
        rx.recv().map_err(|_| ControllerError::Stopped)
    }

    /// Adds, updates (`Some`) or removes (`None`) a container's resources; the
    /// sandbox cgroup gets the union of all containers' cpusets. A failure rolls back.
    pub fn update_container(
        &self,
        container_id: &str,
        res: Option<LinuxResources>,
    ) -> Result<(), ControllerError> {
        self.ask(|tx| Cmd::Container(container_id.to_string(), res, tx))?
    }

    /// Applies resources to the sandbox cgroup as a whole. The plan's rules
    /// ([`SandboxPlan::check_sandbox_resources`]: no memory limit below 6 MiB where the
    /// VMM process is in the sandbox cgroup) are checked first; nothing is written then.
    pub fn set_sandbox_resources(&self, res: LinuxResources) -> Result<(), ControllerError> {
        resources::validate(&res)?;
        self.plan.check_sandbox_resources(&res)?;
        self.ask(|tx| Cmd::Sandbox(res, tx))?
    }

    /// The sandbox cgroup's usage counters.
    pub fn stats(&self) -> Result<Stats, ControllerError> {
        self.ask(Cmd::Stats)?
    }

    /// Stops the controller; with `destroy`, removes the cgroups and the state.
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

/// What a vCPU thread does in its hook: born placed (checked) wherever the whole
/// process was moved into the sandbox cgroup; otherwise it moves itself there (the
/// sibling layout) or into the vCPU child (the nested layout).
fn prepare_target(
    state: &SandboxState,
    sandbox: &dyn Manager,
    child: Option<&VcpuChild>,
    layout: &CgroupLayout,
) -> Result<Target, ControllerError> {
    if let Some(c) = child {
        return Ok(Target::open_move(c.dirs(), state.cgroup_version)?);
    }
    let paths = sandbox.paths();
    let moves = state.placement == Placement::VcpuThreads && !state.sandbox_cgroup_only;
    Ok(if moves {
        Target::open_move(&selfplace::distinct_dirs(&paths), state.cgroup_version)?
    } else {
        Target::Born(Target::expect(&paths, layout)?)
    })
}

fn merge(a: &[PathBuf], b: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = a.to_vec();
    for p in b {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out
}

impl Worker {
    fn new(
        placement: Placement,
        sandbox: Box<dyn Manager>,
        overhead: Option<Box<dyn Manager>>,
        child: Option<VcpuChild>,
        state: SandboxState,
        state_dir: Option<PathBuf>,
    ) -> Self {
        let state_pinning = state.enable_vcpus_pinning;
        Worker {
            placement,
            sandbox,
            overhead,
            child,
            state,
            state_dir,
            records: Vec::new(),
            started_at: BTreeMap::new(),
            pinned: false,
            pin: Arc::new(Mutex::new(PinState {
                enabled: state_pinning,
                ..Default::default()
            })),
        }
    }

    /// One queue: a command sees every hook report sent before it.
    fn run(mut self, inputs: Receiver<Input>) {
        for input in inputs {
            match input {
                Input::Report(r) => self.on_report(r),
                Input::Hook(m) => self.on_event(m),
                Input::Cmd(c) => match *c {
                    Cmd::Shutdown(destroy, reply) => {
                        let _ = reply.send(self.teardown(destroy));
                        return;
                    }
                    c => self.on_command(c),
                },
            }
        }
    }

    /// Records what a vCPU thread did in its hook.
    fn on_report(&mut self, r: HookReport) {
        match r {
            HookReport::Started(Report {
                index,
                tid,
                at,
                placed_at,
                placed_by,
                writes,
                outcome,
                pinned,
            }) => {
                let us = |t: Instant| t.saturating_duration_since(at).as_micros() as u64;
                let rec = VcpuRecord {
                    index,
                    tid,
                    placed_after_us: placed_at.filter(|_| outcome.is_ok()).map(us),
                    placed_by,
                    cgroup_writes: writes,
                    pinned_after_us: pinned.map(|(_, t)| us(t)),
                    exited_before_placement: false,
                    exited: false,
                    pinned_cpu: pinned.map(|(c, _)| c),
                    error: outcome.as_ref().err().map(|e| e.to_string()),
                };
                debug!(index, tid, placed_after_us = ?rec.placed_after_us, %placed_by, "vCPU placed");
                if rec.error.is_some() {
                    warn!(index, tid, error = ?rec.error, "vCPU refused");
                    METRICS.placement_failures.inc();
                } else if let Some(us) = rec.placed_after_us {
                    METRICS.vcpus_placed.inc();
                    METRICS.placement_latency.record(us);
                }
                self.keep_record(rec);
                self.started_at.insert(tid, at);
                self.repin();
            }
            HookReport::Exited { index, tid } => self.mark_exited(index, tid),
        }
    }

    /// Keeps the record of one vCPU start: a second start of the same vCPU on the same
    /// thread (a hook called twice) replaces the first, so `vcpus()` lists each thread once.
    fn keep_record(&mut self, rec: VcpuRecord) {
        match self
            .records
            .iter_mut()
            .find(|r| r.index == rec.index && r.tid == rec.tid)
        {
            Some(r) => *r = rec,
            None => self.records.push(rec),
        }
    }

    fn mark_exited(&mut self, index: u32, tid: i32) {
        self.started_at.remove(&tid);
        for r in self.records.iter_mut() {
            if r.index == index && r.tid == tid {
                r.exited = true;
            }
        }
        self.repin();
    }

    fn on_event(&mut self, msg: HookMessage) {
        match msg.event {
            VcpuEvent::Started { index, tid, at } => {
                let before = crate::manager::fs::migration_writes();
                let outcome = self.place(tid);
                let writes = crate::manager::fs::migration_writes().saturating_sub(before);
                let mut rec = VcpuRecord {
                    index,
                    tid,
                    placed_after_us: None,
                    placed_by: match (self.placement, self.child.is_some()) {
                        (_, true) | (Placement::VcpuThreads, _) => PlacedBy::Controller,
                        (Placement::VmmProcess, false) => PlacedBy::Born,
                    },
                    cgroup_writes: writes as u32,
                    pinned_after_us: None,
                    exited_before_placement: false,
                    exited: false,
                    pinned_cpu: None,
                    error: None,
                };
                let reply = match outcome {
                    Ok(()) => {
                        let us = at.elapsed().as_micros() as u64;
                        rec.placed_after_us = Some(us);
                        METRICS.vcpus_placed.inc();
                        METRICS.placement_latency.record(us);
                        Ok(())
                    }
                    // Gone before we got to it: nothing ran outside, nothing to place.
                    Err(CgroupError::NoSuchTask { .. }) => {
                        rec.exited_before_placement = true;
                        Ok(())
                    }
                    Err(e) => {
                        rec.error = Some(e.to_string());
                        METRICS.placement_failures.inc();
                        Err(selfplace::placement_error(&e))
                    }
                };
                debug!(index, tid, placed_after_us = ?rec.placed_after_us, "vCPU placed");
                self.keep_record(rec);
                self.started_at.insert(tid, at);
                msg.confirm(reply);
                self.repin();
            }
            VcpuEvent::Exited { index, tid } => {
                msg.confirm(Ok(()));
                self.mark_exited(index, tid);
            }
            // An event a newer vcpu-hooks added: nothing to record, never leave a
            // vCPU waiting for an answer.
            _ => msg.confirm(Ok(())),
        }
    }

    fn place(&mut self, tid: i32) -> Result<(), CgroupError> {
        if let Err(e) = failpoint::hit(Point::VcpuPlaced) {
            return Err(CgroupError::Io {
                op: "place".into(),
                path: PathBuf::from(self.sandbox.relative()),
                source: e,
            });
        }
        if let Some(c) = self.child.as_mut() {
            return c.add_thread(tid);
        }
        match self.placement {
            Placement::VcpuThreads => self.sandbox.add_thread(tid),
            // The whole process moved at setup, and threads are born where their creator is.
            Placement::VmmProcess => Ok(()),
        }
    }

    fn on_command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Container(id, res, reply) => {
                let _ = reply.send(self.update_container(id, res));
            }
            Cmd::Sandbox(res, reply) => {
                let r = self.sandbox.set(&res).map_err(ControllerError::from);
                if r.is_ok() {
                    self.state.sandbox_resources = Some(res);
                    self.persist();
                }
                let _ = reply.send(r);
                self.repin();
            }
            Cmd::Stats(reply) => {
                let _ = reply.send(self.sandbox.stats().map_err(ControllerError::from));
            }
            Cmd::Vcpus(reply) => {
                let _ = reply.send(self.records.clone());
            }
            Cmd::Shutdown(..) => {}
        }
    }

    /// The union of the containers' cpusets: (cpus, mems).
    fn cpuset_union(
        containers: &BTreeMap<String, LinuxResources>,
    ) -> Result<(CpuList, CpuList), ResourceError> {
        let (mut cpus, mut mems) = (CpuList::default(), CpuList::default());
        for r in containers.values() {
            let (c, m) = resources::cpuset_of(r)?;
            if let Some(c) = c {
                cpus = cpus.union(&c);
            }
            if let Some(m) = m {
                mems = mems.union(&m);
            }
        }
        Ok((cpus, mems))
    }

    fn cpuset_resources(cpus: &CpuList, mems: &CpuList) -> Result<LinuxResources, ResourceError> {
        let mut cpu = serde_json::Map::new();
        if !cpus.is_empty() {
            cpu.insert("cpus".into(), cpus.to_string().into());
        }
        if !mems.is_empty() {
            cpu.insert("mems".into(), mems.to_string().into());
        }
        resources::from_json(&serde_json::json!({ "cpu": cpu }).to_string())
    }

    fn update_container(
        &mut self,
        id: String,
        res: Option<LinuxResources>,
    ) -> Result<(), ControllerError> {
        if let Some(r) = &res {
            resources::validate(r)?;
        }
        let previous = self.state.containers.clone();
        match res {
            Some(r) => {
                self.state.containers.insert(id, r);
            }
            None => {
                self.state.containers.remove(&id);
            }
        }
        let apply = (|| -> Result<(), ControllerError> {
            // Nested: the containers' CPU part goes to the vCPU child (see
            // `resources::vcpu_child_resources`); the sandbox cgroup keeps its own limits.
            if let Some(c) = self.child.as_mut() {
                let r = resources::vcpu_child_resources(self.state.containers.values())?;
                c.set(&r)?;
                return Ok(());
            }
            let (cpus, mems) = Self::cpuset_union(&self.state.containers)?;
            if cpus.is_empty() && mems.is_empty() {
                return Ok(());
            }
            self.sandbox.set(&Self::cpuset_resources(&cpus, &mems)?)?;
            Ok(())
        })();
        if let Err(e) = apply {
            // The manager restored the files it had written; restore our bookkeeping too.
            self.state.containers = previous;
            return Err(e);
        }
        self.persist();
        self.repin();
        Ok(())
    }

    fn persist(&self) {
        if let Some(dir) = &self.state_dir {
            if let Err(e) = self.state.save(dir) {
                warn!(error = %e, "could not persist sandbox state");
            }
        }
    }

    /// The cpuset vCPUs are pinned within: the containers' union, else the sandbox resources'.
    fn pin_cpus(&self) -> CpuList {
        match Self::cpuset_union(&self.state.containers) {
            Ok((c, _)) if !c.is_empty() => c,
            _ => self
                .state
                .sandbox_resources
                .as_ref()
                .and_then(|r| resources::cpuset_of(r).ok())
                .and_then(|(c, _)| c)
                .unwrap_or_default(),
        }
    }

    /// Tells the hooks the cpuset they pin within.
    fn publish_pin_cpus(&mut self) {
        let cpus: Vec<u32> = self.pin_cpus().iter().collect();
        self.pin.lock().unwrap_or_else(PoisonError::into_inner).cpus = cpus;
    }

    /// Pins vCPU i to the i-th CPU of the cpuset when their numbers match; resets otherwise.
    fn repin(&mut self) {
        if !self.state.enable_vcpus_pinning {
            return;
        }
        self.publish_pin_cpus();
        let cpus = self.pin_cpus();
        let pinned_any = self.records.iter().any(|r| r.pinned_cpu.is_some());
        let mut live: Vec<&mut VcpuRecord> = self
            .records
            .iter_mut()
            .filter(|r| !r.exited && !r.exited_before_placement && r.error.is_none())
            .collect();
        live.sort_by_key(|r| r.index);
        // Count as the hooks do: vCPUs recorded here, those whose hook passed but whose
        // report is still on its way, and announced boot vCPUs not started yet. Counting
        // only the records would reset a vCPU that pinned itself before the report of
        // another boot vCPU arrived.
        let all: std::collections::BTreeSet<u32> = {
            let p = self.pin.lock().unwrap_or_else(PoisonError::into_inner);
            live.iter()
                .map(|r| r.index)
                .chain(p.live.iter().copied())
                .chain(p.boot.iter().copied())
                .collect()
        };
        let cpu_list: Vec<u32> = cpus.iter().collect();
        if !cpu_list.is_empty() && all.len() == cpu_list.len() {
            for r in live {
                let Some(cpu) = all
                    .iter()
                    .position(|&i| i == r.index)
                    .and_then(|rank| cpu_list.get(rank).copied())
                else {
                    continue;
                };
                // Pinned by its own hook already.
                if r.pinned_cpu == Some(cpu) {
                    continue;
                }
                match set_affinity(r.tid, &[cpu]) {
                    Ok(()) => {
                        r.pinned_cpu = Some(cpu);
                        r.pinned_after_us = self
                            .started_at
                            .get(&r.tid)
                            .map(|at| at.elapsed().as_micros() as u64);
                    }
                    Err(e) => warn!(tid = r.tid, cpu, error = %e, "pinning failed"),
                }
            }
            self.pinned = true;
        } else if self.pinned || pinned_any {
            let all: Vec<u32> = if cpus.is_empty() {
                crate::host::online_cpus()
                    .map(|c| c.iter().collect())
                    .unwrap_or_default()
            } else {
                cpus.iter().collect()
            };
            for r in live {
                if let Err(e) = set_affinity(r.tid, &all) {
                    warn!(tid = r.tid, error = %e, "resetting affinity failed");
                }
                r.pinned_cpu = None;
                r.pinned_after_us = None;
            }
            self.pinned = false;
        }
    }

    /// Tears down (with `destroy`) and reports, for cgroupfs, every directory that
    /// existed before and is gone after, parents included.
    fn teardown(&mut self, destroy: bool) -> TeardownReport {
        let watch = (destroy && self.sandbox.driver() == Driver::Cgroupfs).then(|| self.watched());
        let mut report = self.teardown_cgroups(destroy);
        // Nothing on disk to look at (no directory existed): the driver's own list.
        if let Some((own, all, mounts)) = watch.filter(|(_, all, _)| !all.is_empty()) {
            let (gone, _) = manager::gone_and_standing(&all, &mounts);
            let (_, stay) = manager::gone_and_standing(&own, &mounts);
            report.removed = gone;
            report.standing = stay
                .into_iter()
                .map(|r| format!("{r}: still holds other cgroups or tasks"))
                .collect();
        }
        report
    }

    /// The directories a cgroupfs teardown may remove, as they exist now: this sandbox's
    /// own (its cgroups and the parents it created) and, with them, every existing
    /// ancestor below a hierarchy root (a parent a sibling sandbox made goes with the
    /// last one out); and the hierarchy roots.
    fn watched(&self) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
        let mut own: Vec<PathBuf> = Vec::new();
        let mut mounts: Vec<PathBuf> = Vec::new();
        for m in std::iter::once(&self.sandbox).chain(self.overhead.as_ref()) {
            let depth = m.relative().split('/').filter(|c| !c.is_empty()).count();
            for p in m.paths().into_values() {
                if let Some(root) = p.ancestors().nth(depth) {
                    mounts.push(root.to_path_buf());
                }
                own.push(p);
            }
            own.extend(m.created());
        }
        if let Some(c) = &self.child {
            own.extend(c.dirs().iter().cloned());
            own.extend(c.created());
        }
        mounts.sort();
        mounts.dedup();
        let mut all = own.clone();
        for d in &own {
            let Some(root) = mounts.iter().find(|r| d.starts_with(r)) else {
                continue;
            };
            all.extend(
                d.ancestors()
                    .skip(1)
                    .take_while(|a| *a != root.as_path() && a.starts_with(root))
                    .map(Path::to_path_buf),
            );
        }
        for v in [&mut own, &mut all] {
            v.sort();
            v.dedup();
            v.retain(|d| d.is_dir());
        }
        (own, all, mounts)
    }

    fn teardown_cgroups(&mut self, destroy: bool) -> TeardownReport {
        let mut report = TeardownReport {
            kept: !destroy,
            ..Default::default()
        };
        if !destroy {
            return report;
        }
        let started = Instant::now();
        // The vCPU child first: its parent cannot go while it exists. A failure does not
        // stop the sandbox's removal (with systemd, stopping the scope removes the
        // delegated subtree, the child included); what is left is retried after it.
        if let Some(c) = self.child.as_mut() {
            match c.destroy() {
                Ok(()) => {
                    report.removed.push(c.relative().to_string());
                    if let Err(e) = failpoint::hit(Point::VcpusRemoved) {
                        report.errors.push(e.to_string());
                        return report;
                    }
                }
                Err(e) => warn!(error = %e, "vCPU child cgroup: retried after the sandbox cgroup"),
            }
        }
        for (name, m) in std::iter::once(("sandbox", &mut self.sandbox))
            .chain(self.overhead.as_mut().map(|o| ("overhead", o)))
        {
            match m.destroy() {
                Ok(()) => report.removed.push(m.relative().to_string()),
                Err(e) => report.errors.push(format!("{name} cgroup: {e}")),
            }
        }
        if let Some(c) = self.child.as_mut() {
            if c.exists() {
                match c.destroy() {
                    Ok(()) => report.removed.push(c.relative().to_string()),
                    Err(e) => report.errors.push(format!("vCPU child cgroup: {e}")),
                }
            }
        }
        if report.errors.is_empty() {
            if let Err(e) = failpoint::hit(Point::StateRemove) {
                report.errors.push(e.to_string());
                return report;
            }
            if let Some(dir) = &self.state_dir {
                if let Err(e) = SandboxState::remove(dir, &self.state.sandbox_id) {
                    report.errors.push(e.to_string());
                }
            }
        }
        debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            "teardown"
        );
        report
    }
}

/// A failpoint on the set-up path (no-op without the `failpoints` feature).
fn failpoint_hit(name: Point) -> Result<(), ControllerError> {
    failpoint::hit(name).map_err(|source| {
        ControllerError::Cgroup(CgroupError::Io {
            op: format!("set-up step {name}"),
            path: PathBuf::new(),
            source,
        })
    })
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
        fn paths(&self) -> BTreeMap<String, PathBuf> {
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
        fn set(&mut self, _res: &LinuxResources) -> Result<(), CgroupError> {
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
