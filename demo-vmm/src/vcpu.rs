//! The vCPU spawn path, shaped like dragonball's `Vcpu::start_threaded`:
//! one `db_vcpu<N>` thread per vCPU whose first act is the placement hook,
//! then a start gate (dragonball's barrier), the run loop, and the exit hook.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;
use vcpu_hooks::{gettid, HookError, VcpuHooks};
use vmm_sys_util::errno;

use super::kick::{self, ImmediateExit};
use super::kvm::KvmVcpu;
use super::{thread, RunStats, VcpuRunError, VmmError};

/// What a vCPU thread runs once placed.
#[derive(Debug)]
pub enum Runner {
    /// A KVM vCPU fd, entered with `KVM_RUN`.
    Kvm(KvmVcpu),
    /// The no-KVM spin loop.
    Spin,
}

impl Runner {
    fn run(&mut self, stop: &AtomicBool) -> Result<RunStats, VcpuRunError> {
        match self {
            Runner::Kvm(vcpu) => vcpu.run(stop),
            Runner::Spin => Ok(thread::run(stop)),
        }
    }

    fn kicker(&self) -> Option<Arc<ImmediateExit>> {
        match self {
            Runner::Kvm(vcpu) => Some(vcpu.kicker()),
            Runner::Spin => None,
        }
    }
}

/// State shared between a vCPU thread and the VMM.
#[derive(Debug, Default)]
struct Shared {
    /// gettid() of the thread, 0 until it has started.
    tid: AtomicI32,
    /// Placed and its run loop has not ended yet.
    running: AtomicBool,
    /// Set by the VMM to end the run loop.
    stop: AtomicBool,
}

/// How a vCPU thread ended.
#[derive(Debug)]
pub enum Outcome {
    /// Its placement hook failed; it never ran guest code.
    NotPlaced,
    /// Placed, but its batch was aborted at the gate; it never ran guest code.
    Aborted,
    /// It ran its loop, with this result.
    Ran(Result<RunStats, VcpuRunError>),
}

/// What a vCPU thread hands back when joined: its runner (so KVM vCPU fds
/// outlive the thread and are closed by the VMM in the right order) and outcome.
#[derive(Debug)]
struct ThreadEnd {
    runner: Runner,
    outcome: Outcome,
}

/// A joined vCPU thread.
#[derive(Debug)]
pub struct Joined {
    /// vCPU index.
    pub index: u32,
    /// Its thread id.
    pub tid: i32,
    /// Runner and outcome, or `None` if the thread panicked (runner lost).
    pub end: Option<(Runner, Outcome)>,
}

/// A live vCPU thread as the VMM sees it.
#[derive(Debug)]
pub struct VcpuThread {
    index: u32,
    name: String,
    shared: Arc<Shared>,
    kicker: Option<Arc<ImmediateExit>>,
    join: JoinHandle<ThreadEnd>,
}

impl VcpuThread {
    /// vCPU index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Thread name (`db_vcpu<N>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Thread id reported by the thread itself.
    pub fn tid(&self) -> i32 {
        self.shared.tid.load(Ordering::Acquire)
    }

    /// Whether the thread is placed and still in (or about to enter) its run loop.
    pub fn running(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Asks the thread to leave its run loop: stop flag, then `immediate_exit`, then the signal.
    pub fn kick(&self) -> Result<(), errno::Error> {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(k) = &self.kicker {
            k.set();
            // Only KVM vCPUs block in an ioctl; the spin loop sees the flag.
            kick::signal_thread(self.join.as_pthread_t())?;
        }
        Ok(())
    }

    /// Waits for the thread to end (call [`VcpuThread::kick`] first).
    pub fn join(self) -> Joined {
        let index = self.index;
        let tid = self.tid();
        let end = self.join.join().ok().map(|e| (e.runner, e.outcome));
        Joined { index, tid, end }
    }
}

/// The gate all vCPUs of one batch wait at after placement; the spawner
/// opens it (to run, or to abort) once every vCPU of the batch has reported.
/// Like dragonball's `Barrier::new(vcpu_count + 1)`, with an abort path.
#[derive(Debug, Default)]
struct StartGate {
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    fn open(&self, run: bool) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *s = Some(run);
        self.opened.notify_all();
    }

    /// Blocks until the gate opens; `true` means run.
    fn wait(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(run) = *s {
                return run;
            }
            s = self.opened.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The body of thread `db_vcpu<index>`.
fn vcpu_main(
    index: u32,
    hooks: Arc<dyn VcpuHooks>,
    shared: Arc<Shared>,
    gate: Arc<StartGate>,
    report: crossbeam_channel::Sender<(u32, Result<(), HookError>)>,
    mut runner: Runner,
) -> ThreadEnd {
    shared.tid.store(gettid(), Ordering::Release);
    // First act: the placement hook. Until it returns Ok the thread must not
    // reach KVM_RUN, so that the guest never runs outside its cgroup.
    let placed = hooks.vcpu_started(index);
    let ok = placed.is_ok();
    shared.running.store(ok, Ordering::Release);
    // The spawner may be gone only if it panicked; nothing to tell then.
    let _ = report.send((index, placed));
    drop(report);
    if !ok {
        return ThreadEnd {
            runner,
            outcome: Outcome::NotPlaced,
        };
    }
    let outcome = if gate.wait() {
        Outcome::Ran(runner.run(&shared.stop))
    } else {
        Outcome::Aborted
    };
    shared.running.store(false, Ordering::Release);
    if let Outcome::Ran(Err(e)) = &outcome {
        tracing::error!(vcpu = index, error = %e, "vCPU run loop failed");
    }
    // Last act: the exit hook, so the supervisor can forget the thread.
    hooks.vcpu_exited(index);
    ThreadEnd { runner, outcome }
}

/// A batch that could not start; its threads are already joined.
#[derive(Debug)]
pub struct BatchFailed {
    /// Why the batch failed.
    pub error: VmmError,
    /// The joined threads of the batch, to recover their runners.
    pub joined: Vec<Joined>,
}

/// Spawns one thread per `(index, runner)`, waits until each has passed or
/// failed its placement hook, then lets all run together, or, if any failed,
/// aborts the whole batch and joins it.
pub fn spawn_batch(
    batch: Vec<(u32, Runner)>,
    hooks: &Arc<dyn VcpuHooks>,
) -> Result<Vec<VcpuThread>, BatchFailed> {
    let gate = Arc::new(StartGate::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut threads = Vec::with_capacity(batch.len());
    let mut error = None;
    for (index, runner) in batch {
        let name = format!("db_vcpu{index}");
        let shared = Arc::new(Shared::default());
        let kicker = runner.kicker();
        let (h, s, g, r) = (
            Arc::clone(hooks),
            Arc::clone(&shared),
            Arc::clone(&gate),
            tx.clone(),
        );
        match std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || vcpu_main(index, h, s, g, r, runner))
        {
            Ok(join) => threads.push(VcpuThread {
                index,
                name,
                shared,
                kicker,
                join,
            }),
            Err(source) => {
                // The runner went down with the closure; a KVM vCPU id of
                // this index can then not be created again in this VM.
                error = Some(VmmError::Spawn { index, source });
                break;
            }
        }
    }
    drop(tx);
    let failure = collect_placements(&rx, &threads);
    let error = error.or(failure);
    match error {
        None => {
            gate.open(true);
            Ok(threads)
        }
        Some(error) => {
            gate.open(false);
            let joined = threads
                .into_iter()
                .map(|t| {
                    // Placed threads wait at the gate, which is open now; the
                    // kick is for symmetry (they never reach KVM_RUN).
                    if let Err(e) = t.kick() {
                        tracing::warn!(vcpu = t.index, error = %e, "kick failed");
                    }
                    t.join()
                })
                .collect();
            Err(BatchFailed { error, joined })
        }
    }
}

/// Receives one placement report per spawned thread; returns the error of
/// the lowest-index vCPU that failed, if any.
fn collect_placements(
    rx: &Receiver<(u32, Result<(), HookError>)>,
    threads: &[VcpuThread],
) -> Option<VmmError> {
    let mut failed: Option<(u32, HookError)> = None;
    let mut reported = Vec::with_capacity(threads.len());
    for _ in threads {
        // Each thread reports exactly once; a disconnect means one died first.
        let Ok((index, result)) = rx.recv() else {
            break;
        };
        reported.push(index);
        if let Err(e) = result {
            if failed.as_ref().is_none_or(|(i, _)| index < *i) {
                failed = Some((index, e));
            }
        }
    }
    if let Some((index, source)) = failed {
        return Some(VmmError::Hook { index, source });
    }
    threads
        .iter()
        .find(|t| !reported.contains(&t.index))
        .map(|t| VmmError::VanishedThread { index: t.index })
}
