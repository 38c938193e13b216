//! The cgroup controller inside the VMM process: sets the sandbox up, places
//! each vCPU thread the hooks report, keeps per-container resources, and
//! tears everything down.
//!
//! One thread owns the cgroup managers. It is fed by two channels: the vCPU
//! hooks (a `Started` event is answered only once the thread is placed, so no
//! guest cycle runs outside the sandbox cgroup) and commands from the runtime
//! (resource updates, stats, shutdown).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};
use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use thiserror::Error;
use tracing::{debug, info, warn};
use vcpu_hooks::{ChannelReporter, HookMessage, VcpuEvent, VcpuHooks};

use crate::failpoint;
use crate::host::CgroupLayout;
use crate::manager::{self, CgroupError, Manager, Stats};
use crate::metrics::{IncMetric, METRICS};
use crate::placement::Placement;
use crate::plan::SandboxPlan;
use crate::resources::{self, CpuList, ResourceError};
use crate::state::{CgroupState, SandboxState, StateError};

/// A controller operation that failed.
#[derive(Debug, Error)]
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
            ControllerError::Resource(_) | ControllerError::Cgroup(CgroupError::Resource(_))
        )
    }
}

/// Options for starting a controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Where state is persisted; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
    /// Bound on a vCPU's wait for placement.
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
pub struct VcpuRecord {
    /// vCPU index.
    pub index: u32,
    /// Thread id.
    pub tid: i32,
    /// µs from the hook's timestamp to confirmed placement.
    pub placed_after_us: Option<u64>,
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
pub struct TeardownReport {
    /// Cgroup directories (or units) removed.
    pub removed: Vec<String>,
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

/// The controller handle the VMM and runtime hold.
pub struct CgroupController {
    hooks: ChannelReporter,
    cmd: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    /// The sandbox's plan.
    pub plan: SandboxPlan,
    paths: BTreeMap<String, PathBuf>,
    overhead_paths: Option<BTreeMap<String, PathBuf>>,
}

struct Worker {
    placement: Placement,
    sandbox: Box<dyn Manager>,
    overhead: Option<Box<dyn Manager>>,
    state: SandboxState,
    state_dir: Option<PathBuf>,
    records: Vec<VcpuRecord>,
    pinned: bool,
}

impl CgroupController {
    /// Creates the sandbox (and overhead) cgroups, places this process per the
    /// policy, persists state, and starts the controller thread.
    pub fn start(plan: SandboxPlan, opts: ControllerOptions) -> Result<Self, ControllerError> {
        if let Some(r) = &opts.sandbox_resources {
            resources::validate(r)?;
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
            containers: BTreeMap::new(),
            sandbox_resources: opts.sandbox_resources.clone(),
        };
        // Record what we are about to create before creating it: a crash in between
        // still leaves `cleanup` a complete list.
        if let Some(dir) = &opts.state_dir {
            state.save(dir)?;
        }
        let setup = (|| -> Result<(), ControllerError> {
            sandbox.create()?;
            failpoint_hit("create-sandbox")?;
            if let Some(o) = overhead.as_mut() {
                o.create()?;
                failpoint_hit("create-overhead")?;
            }
            if let Some(r) = &opts.sandbox_resources {
                sandbox.set(r)?;
                failpoint_hit("set-resources")?;
            }
            // Threads born later inherit the cgroup of the thread that creates them,
            // so one move of the whole process covers every non-vCPU thread.
            match (overhead.as_mut(), plan.placement, plan.sandbox_cgroup_only) {
                (Some(o), _, _) => o.add_proc(me)?,
                (None, Placement::VmmProcess, _) | (None, _, true) => sandbox.add_proc(me)?,
                (None, Placement::VcpuThreads, false) => {}
            }
            failpoint_hit("add-proc")?;
            METRICS
                .cgroups_created
                .add(sandbox.created().len() + overhead.as_ref().map_or(0, |o| o.created().len()));
            state.sandbox.created = merge(&state.sandbox.created, &sandbox.created());
            if let (Some(os), Some(o)) = (state.overhead.as_mut(), overhead.as_ref()) {
                os.created = merge(&os.created, &o.created());
            }
            if let Some(dir) = &opts.state_dir {
                state.save(dir)?;
            }
            Ok(())
        })();
        if let Err(e) = setup {
            // The error is returned (and reported by the caller): logging it here too
            // would show it twice.
            debug!(error = %e, "sandbox setup failed; rolling back");
            let mut w = Worker::new(plan.placement, sandbox, overhead, state, opts.state_dir);
            let report = w.teardown(true);
            for err in report.errors {
                warn!(error = %err, "rollback");
            }
            return Err(e);
        }
        if !plan.configured_sandbox_cgroup_only && plan.placement == Placement::VmmProcess {
            info!(
                driver = %plan.driver,
                version = %plan.version(),
                "sandbox_cgroup_only = false has no effect here: the whole VMM process is in the sandbox cgroup"
            );
        }
        Ok(Self::spawn(plan, opts, sandbox, overhead, state))
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
        let opts = ControllerOptions {
            state_dir: Some(state_dir),
            ..opts
        };
        Ok(Self::spawn(plan, opts, sandbox, overhead, state))
    }

    fn spawn(
        plan: SandboxPlan,
        opts: ControllerOptions,
        sandbox: Box<dyn Manager>,
        overhead: Option<Box<dyn Manager>>,
        state: SandboxState,
    ) -> Self {
        let paths = sandbox.paths();
        let overhead_paths = overhead.as_ref().map(|o| o.paths());
        let (hooks, events) = vcpu_hooks::channel(opts.placement_timeout);
        let (cmd, cmds) = unbounded();
        let worker = Worker::new(
            plan.placement,
            sandbox,
            overhead,
            state,
            opts.state_dir.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("hcg-controller".into())
            .spawn(move || worker.run(events, cmds))
            .ok();
        CgroupController {
            hooks,
            cmd,
            thread,
            plan,
            paths,
            overhead_paths,
        }
    }

    /// The hooks to hand to the VMM's vCPU spawn path.
    pub fn hooks(&self) -> Arc<dyn VcpuHooks> {
        Arc::new(self.hooks.clone())
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

    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Cmd) -> Result<T, ControllerError> {
        let (tx, rx) = bounded(1);
        self.cmd
            .send(make(tx))
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

    /// Applies resources to the sandbox cgroup as a whole.
    pub fn set_sandbox_resources(&self, res: LinuxResources) -> Result<(), ControllerError> {
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
        state: SandboxState,
        state_dir: Option<PathBuf>,
    ) -> Self {
        Worker {
            placement,
            sandbox,
            overhead,
            state,
            state_dir,
            records: Vec::new(),
            pinned: false,
        }
    }

    fn run(mut self, events: Receiver<HookMessage>, cmds: Receiver<Cmd>) {
        loop {
            select! {
                recv(events) -> msg => match msg {
                    Ok(m) => self.on_event(m),
                    Err(_) => return,
                },
                recv(cmds) -> cmd => {
                    // A command sees every hook event sent before it: drain those first.
                    while let Ok(m) = events.try_recv() {
                        self.on_event(m);
                    }
                    match cmd {
                    Ok(Cmd::Shutdown(destroy, reply)) => {
                        let _ = reply.send(self.teardown(destroy));
                        return;
                    }
                    Ok(c) => self.on_command(c),
                    Err(_) => return,
                    }
                }
            }
        }
    }

    fn on_event(&mut self, msg: HookMessage) {
        match msg.event {
            VcpuEvent::Started { index, tid, at } => {
                let outcome = self.place(tid);
                let mut rec = VcpuRecord {
                    index,
                    tid,
                    placed_after_us: None,
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
                        Err(e.to_string())
                    }
                };
                debug!(index, tid, placed_after_us = ?rec.placed_after_us, "vCPU placed");
                self.records.push(rec);
                msg.confirm(reply);
                self.repin();
            }
            VcpuEvent::Exited { index, tid } => {
                for r in self.records.iter_mut() {
                    if r.index == index && r.tid == tid {
                        r.exited = true;
                    }
                }
                msg.confirm(Ok(()));
                self.repin();
            }
        }
    }

    fn place(&mut self, tid: i32) -> Result<(), CgroupError> {
        if let Err(e) = failpoint::hit("vcpu-placed") {
            return Err(CgroupError::Io {
                op: "place".into(),
                path: PathBuf::from(self.sandbox.relative()),
                source: e,
            });
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

    /// Pins vCPU i to the i-th CPU of the cpuset when their numbers match; resets otherwise.
    fn repin(&mut self) {
        if !self.state.enable_vcpus_pinning {
            return;
        }
        let cpus = match Self::cpuset_union(&self.state.containers) {
            Ok((c, _)) if !c.is_empty() => c,
            _ => self
                .state
                .sandbox_resources
                .as_ref()
                .and_then(|r| resources::cpuset_of(r).ok())
                .and_then(|(c, _)| c)
                .unwrap_or_default(),
        };
        let mut live: Vec<&mut VcpuRecord> = self
            .records
            .iter_mut()
            .filter(|r| !r.exited && !r.exited_before_placement && r.error.is_none())
            .collect();
        live.sort_by_key(|r| r.index);
        if !cpus.is_empty() && live.len() == cpus.len() {
            for (r, cpu) in live.into_iter().zip(cpus.iter()) {
                match set_affinity(r.tid, &[cpu]) {
                    Ok(()) => r.pinned_cpu = Some(cpu),
                    Err(e) => warn!(tid = r.tid, cpu, error = %e, "pinning failed"),
                }
            }
            self.pinned = true;
        } else if self.pinned {
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
            }
            self.pinned = false;
        }
    }

    fn teardown(&mut self, destroy: bool) -> TeardownReport {
        let mut report = TeardownReport {
            kept: !destroy,
            ..Default::default()
        };
        if !destroy {
            return report;
        }
        let started = Instant::now();
        for (name, m) in std::iter::once(("sandbox", &mut self.sandbox))
            .chain(self.overhead.as_mut().map(|o| ("overhead", o)))
        {
            match m.destroy() {
                Ok(()) => report.removed.push(m.relative().to_string()),
                Err(e) => report.errors.push(format!("{name} cgroup: {e}")),
            }
        }
        if report.errors.is_empty() {
            if let Err(e) = failpoint::hit("state-remove") {
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

/// Sets a thread's CPU affinity (`sched_setaffinity`).
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

/// A failpoint on the set-up path (no-op without the `failpoints` feature).
fn failpoint_hit(name: &'static str) -> Result<(), ControllerError> {
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
            containers: BTreeMap::new(),
            sandbox_resources: None,
        };
        let fake = Box::new(Fake {
            gone,
            placed: vec![],
        });
        Worker::new(Placement::VcpuThreads, fake, None, state, None)
    }

    fn started(w: &mut Worker, index: u32, tid: i32) -> Result<(), String> {
        let (tx, rx) = bounded(1);
        w.on_event(HookMessage {
            event: VcpuEvent::Started {
                index,
                tid,
                at: Instant::now(),
            },
            reply: Some(tx),
        });
        rx.recv().unwrap()
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
        w.on_event(HookMessage {
            event: VcpuEvent::Exited { index: 2, tid: 77 },
            reply: None,
        });
        assert!(w.records[1].exited);
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
                Some(resources::from_json(r#"{"cpu":{"quota":-9}}"#).unwrap())
            )
            .is_err());
        assert_eq!(w.state.containers.len(), 2);
        w.update_container("a".into(), None).unwrap();
        let (cpus, _) = Worker::cpuset_union(&w.state.containers).unwrap();
        assert_eq!(cpus.to_string(), "3");
    }
}
