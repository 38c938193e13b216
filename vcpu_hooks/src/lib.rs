//! Hooks a VMM calls from its vCPU spawn path, so that a cgroup controller
//! places each vCPU thread (and pins it) before the thread runs guest code.
//!
//! The vCPU thread reports itself: its first act is [`VcpuHooks::vcpu_started`],
//! called on its own thread, so the tid comes from `gettid(2)` and nobody has
//! to poll `/proc/<pid>/task`. The call returns only once the thread may enter
//! the guest: `Ok` means it sits in its cgroup (and, where the supervisor pins
//! vCPUs, has its CPU affinity); `Err` means it must not run guest code, and the
//! VMM fails that vCPU's start with the error. The last act of the thread, after
//! its run loop ends, is [`VcpuHooks::vcpu_exited`].
//!
//! # Where the calls go in dragonball
//!
//! Upstream dragonball starts each vCPU in `Vcpu::start_threaded`
//! (`src/dragonball/src/vcpu/vcpu_impl.rs`), which spawns a
//! `std::thread::Builder::new().name(format!("db_vcpu{}", cpu_id))` thread. The threads
//! meet the VMM thread at a barrier of N+1 (`VcpuManager::activate_vcpus`, which holds
//! the `VcpuManager` lock), and only after it does dragonball ask each thread for its tid
//! (`Gettid`) and send `Resume`. This project's patch series
//! (`integrations/dragonball/patches`, see `docs/dragonball.md`) makes the closure:
//!
//! ```ignore
//! // first act of the thread, before `barrier.wait()`:
//! let started = match &hooks {
//!     Some(hooks) => hooks.vcpu_started(index),
//!     None => Ok(()),
//! };
//! // Every thread reaches the barrier, refused or not: the VMM thread waits there for
//! // N+1 arrivals, so a thread that returned early (`?`) would deadlock the VMM.
//! barrier.wait();
//! match started {
//!     Ok(()) => {
//!         vcpu.run(seccomp_filter);     // upstream run loop (KVM_RUN)
//!         if let Some(hooks) = &hooks {
//!             hooks.vcpu_exited(index); // after the run loop returns
//!         }
//!     }
//!     // Answers `Gettid` with the error (the boot fails, a hotplug rolls back) and
//!     // never enters the run loop; leaves on `Exit`.
//!     Err(e) => vcpu.refused(e),
//! }
//! ```
//!
//! Calling the hook before the barrier means the placement of all vCPUs runs
//! in parallel with the spawning of the remaining ones, and no vCPU passes the
//! barrier (and so reaches `KVM_RUN`) unplaced. The hooks object is an
//! `Arc<dyn VcpuHooks>` held by the `VcpuManager` and cloned into each thread;
//! an embedder hands it in with `Vm::set_vcpu_hooks` before `StartMicroVm`.
//! Hotplugged vCPUs are spawned by the same code and take the same path. The
//! VMM names only [`VcpuHooks`] and [`HookError`]; no channel type.
//!
//! A hook must not block: while it runs, the VMM thread waits at the barrier with
//! the `VcpuManager` lock held, and dragonball's whole API waits with it.
//!
//! # What happens inside `vcpu_started`
//!
//! That is the implementation's business; the call site above does not change.
//! Two implementations exist:
//!
//! - **In the thread itself** (`host_cgroups`' controller, the default): the
//!   controller decides, before any vCPU spawns, where vCPU threads go and
//!   prepares it. The thread then, in its hook, without waiting for the
//!   controller:
//!   - *born placed*: where the target is the cgroup the spawning thread already
//!     sits in (a thread is born in its creator's cgroups), it reads
//!     `/proc/thread-self/cgroup` and compares it with what the supervisor
//!     expects; no cgroup write happens. A thread found elsewhere gets
//!     [`HookError::Refused`] with [`PlacementError::WrongCgroup`];
//!   - *self-placement*: where it must move, it writes the literal `0` into the
//!     target files the supervisor opened ahead of time (one `tasks` per cgroup v1
//!     hierarchy, or the v2 `cgroup.threads`). `0` means "the writing thread":
//!     the kernel then skips the global threadgroup lock (and the RCU grace
//!     period its first writer after an idle spell waits for). A failed write
//!     refuses the start ([`PlacementError::Io`]);
//!   - *pinning*: when the supervisor pins vCPUs and the vCPU count matches the
//!     cpuset, the thread sets its own single-CPU affinity
//!     (`sched_setaffinity(0, ..)`) before it returns;
//!   - then it reports what it did (tid, times, outcome) to the supervisor, which
//!     records it; the report does not wait for an answer.
//! - **Over a channel** ([`ChannelReporter`], from [`channel`]): the thread sends
//!   its tid and waits (bounded) for a supervisor thread to place it and answer
//!   with a [`PlacementReply`]. This is how the supervisor worked before; it stays
//!   for controllers that must write themselves and as the benchmark's baseline.

#![deny(missing_docs)]

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

/// What happened to a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VcpuEvent {
    /// The vCPU thread `tid` of vCPU `index` has started; `at` is when the hook ran.
    Started {
        /// vCPU index (dragonball's `cpu_id`).
        index: u32,
        /// Kernel thread id from `gettid(2)`.
        tid: i32,
        /// Monotonic time at which the thread called the hook.
        at: Instant,
    },
    /// The vCPU thread `tid` of vCPU `index` has left its run loop and is about to exit.
    Exited {
        /// vCPU index.
        index: u32,
        /// Kernel thread id.
        tid: i32,
    },
}

/// Why a vCPU thread could not be placed (or pinned): the offending file, value or cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlacementError {
    /// The thread is not where the supervisor expects it: in the cgroup v1 hierarchy
    /// of `hierarchy` (`unified` for cgroup v2) `/proc/thread-self/cgroup` lists `found`
    /// (empty when the hierarchy is not listed at all), not `expected`.
    WrongCgroup {
        /// A controller of the hierarchy (`cpu`, `memory`, ...), or `unified` on cgroup v2.
        hierarchy: String,
        /// The cgroup the supervisor expects, as `/proc` shows it (`/a/b`).
        expected: String,
        /// The cgroup the thread is in.
        found: String,
    },
    /// A cgroup file (or `/proc` file) operation failed.
    Io {
        /// What was attempted (`write "0" to`, `write 1234 to`, `read`, ...).
        op: String,
        /// The file.
        path: PathBuf,
        /// The kernel's errno, when the failure came from the kernel.
        errno: Option<i32>,
    },
    /// The thread could not set its own CPU affinity to `cpu`.
    Affinity {
        /// The CPU.
        cpu: u32,
        /// The kernel's errno.
        errno: i32,
    },
    /// A controller the placement needs is not available for the cgroup.
    NoController {
        /// The controller.
        controller: String,
        /// The cgroup.
        path: PathBuf,
    },
    /// The placing side (host-cgroups' supervisor thread) failed in a way none of the
    /// variants above describes; `what` is its own error, rendered.
    Supervisor {
        /// The supervisor's error.
        what: String,
    },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::WrongCgroup {
                hierarchy,
                expected,
                found,
            } => {
                let h = if hierarchy == "unified" {
                    "the cgroup v2 hierarchy".to_string()
                } else {
                    format!("the {hierarchy} hierarchy")
                };
                if found.is_empty() {
                    write!(
                        f,
                        "/proc/thread-self/cgroup does not list {h}; expected {expected}"
                    )
                } else {
                    write!(f, "in {h} the thread is in {found}, not in {expected}")
                }
            }
            PlacementError::Io { op, path, errno } => match errno {
                Some(e) => write!(
                    f,
                    "{op} {}: {}",
                    path.display(),
                    std::io::Error::from_raw_os_error(*e)
                ),
                None => write!(f, "{op} {}: failed", path.display()),
            },
            PlacementError::Affinity { cpu, errno } => write!(
                f,
                "setting its own CPU affinity to CPU {cpu}: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            PlacementError::NoController { controller, path } => write!(
                f,
                "controller {controller} is not available for cgroup {}",
                path.display()
            ),
            PlacementError::Supervisor { what } => f.write_str(what),
        }
    }
}

impl std::error::Error for PlacementError {}

/// The supervisor's answer to a `Started` event sent over a [`ChannelReporter`]:
/// `Ok` once the thread is placed.
pub type PlacementReply = Result<(), PlacementError>;

/// One message on the hooks channel: an event and, for `Started`, where to confirm it.
#[derive(Debug)]
pub struct HookMessage {
    /// The event.
    pub event: VcpuEvent,
    reply: Option<Sender<PlacementReply>>,
}

impl HookMessage {
    /// A message nobody waits on (what `Exited` sends).
    pub fn new(event: VcpuEvent) -> Self {
        HookMessage { event, reply: None }
    }

    /// Whether a vCPU thread waits for [`HookMessage::confirm`] on this message.
    pub fn awaits_reply(&self) -> bool {
        self.reply.is_some()
    }

    /// Confirms (or refuses) the event to the waiting vCPU thread, if it still waits.
    pub fn confirm(self, outcome: PlacementReply) {
        if let Some(reply) = self.reply {
            // The vCPU may have given up waiting (timeout); that is its error, not ours.
            let _ = reply.send(outcome);
        }
    }
}

/// Why a vCPU may not enter the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookError {
    /// The thread could not be placed (or pinned) where the supervisor decided.
    Refused {
        /// vCPU index.
        index: u32,
        /// Thread id.
        tid: i32,
        /// What went wrong.
        reason: PlacementError,
    },
    /// No confirmation arrived within the bound ([`ChannelReporter`] only).
    Timeout {
        /// vCPU index.
        index: u32,
        /// Thread id.
        tid: i32,
        /// The bound that passed.
        waited: Duration,
    },
    /// The supervisor is gone.
    Disconnected {
        /// vCPU index.
        index: u32,
        /// Thread id.
        tid: i32,
    },
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookError::Refused { index, tid, reason } => {
                write!(f, "vCPU {index} (tid {tid}) was not placed: {reason}")
            }
            HookError::Timeout { index, tid, waited } => write!(
                f,
                "vCPU {index} (tid {tid}) was not placed within {} ms",
                waited.as_millis()
            ),
            HookError::Disconnected { index, tid } => write!(
                f,
                "vCPU {index} (tid {tid}): the cgroup controller is not running"
            ),
        }
    }
}

impl std::error::Error for HookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HookError::Refused { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// What a VMM calls from each vCPU thread.
pub trait VcpuHooks: Send + Sync {
    /// First act of vCPU thread `index`, on that thread: returns once the thread may run guest code.
    fn vcpu_started(&self, index: u32) -> Result<(), HookError>;
    /// Last act of vCPU thread `index`, on that thread, after its run loop.
    fn vcpu_exited(&self, index: u32);
}

/// Hooks that do nothing, for a VMM without a cgroup controller (and to measure hook cost).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl VcpuHooks for NoHooks {
    fn vcpu_started(&self, _index: u32) -> Result<(), HookError> {
        Ok(())
    }
    fn vcpu_exited(&self, _index: u32) {}
}

/// Where a [`ChannelReporter`] delivers its messages: returns the message back when the
/// receiving side is gone.
pub type Sink = Arc<dyn Fn(HookMessage) -> Result<(), HookMessage> + Send + Sync>;

/// Hooks that report over a channel and wait a bounded time for placement.
#[derive(Clone)]
pub struct ChannelReporter {
    sink: Sink,
    timeout: Duration,
}

impl fmt::Debug for ChannelReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReporter")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Default bound on waiting for placement: generous, since an idle cgroup core
/// may first wait one RCU grace period, and a loaded host is slower still.
pub const DEFAULT_PLACEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The supervisor's end of [`channel`]: the messages of every reporter cloned from it.
#[derive(Debug)]
pub struct HookReceiver {
    rx: Receiver<HookMessage>,
}

impl HookReceiver {
    /// The next message; `None` once every reporter is gone and the queue is empty.
    pub fn recv(&self) -> Option<HookMessage> {
        self.rx.recv().ok()
    }

    /// The next message, waiting at most `timeout`; `None` when none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<HookMessage> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// A queued message, without waiting.
    pub fn try_recv(&self) -> Option<HookMessage> {
        self.rx.try_recv().ok()
    }
}

/// The messages of a [`HookReceiver`], until every reporter is gone.
#[derive(Debug)]
pub struct HookMessages(HookReceiver);

impl Iterator for HookMessages {
    type Item = HookMessage;
    fn next(&mut self) -> Option<HookMessage> {
        self.0.recv()
    }
}

impl IntoIterator for HookReceiver {
    type Item = HookMessage;
    type IntoIter = HookMessages;
    fn into_iter(self) -> HookMessages {
        HookMessages(self)
    }
}

/// A reporter and the receiving end the supervisor reads.
pub fn channel(timeout: Duration) -> (ChannelReporter, HookReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let sink: Sink = Arc::new(move |m| tx.send(m).map_err(|e| e.into_inner()));
    (ChannelReporter { sink, timeout }, HookReceiver { rx })
}

impl ChannelReporter {
    /// A reporter that hands its messages to `sink` (e.g. a supervisor's own command queue).
    pub fn with_sink(sink: Sink, timeout: Duration) -> Self {
        ChannelReporter { sink, timeout }
    }

    /// The bound on waiting for a placement confirmation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl VcpuHooks for ChannelReporter {
    fn vcpu_started(&self, index: u32) -> Result<(), HookError> {
        let tid = gettid();
        let at = Instant::now();
        let (reply_tx, reply_rx) = bounded(1);
        let msg = HookMessage {
            event: VcpuEvent::Started { index, tid, at },
            reply: Some(reply_tx),
        };
        if (self.sink)(msg).is_err() {
            return Err(HookError::Disconnected { index, tid });
        }
        match reply_rx.recv_timeout(self.timeout) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(HookError::Refused { index, tid, reason }),
            Err(RecvTimeoutError::Timeout) => Err(HookError::Timeout {
                index,
                tid,
                waited: self.timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(HookError::Disconnected { index, tid }),
        }
    }

    fn vcpu_exited(&self, index: u32) {
        let msg = HookMessage::new(VcpuEvent::Exited {
            index,
            tid: gettid(),
        });
        // A controller that is already gone has nothing left to record.
        let _ = (self.sink)(msg);
    }
}

/// The calling thread's kernel thread id.
pub fn gettid() -> i32 {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn started_waits_for_confirmation_and_carries_own_tid() {
        let (hooks, rx) = channel(Duration::from_secs(5));
        let t = thread::spawn(move || {
            let r = hooks.vcpu_started(3);
            (r, gettid())
        });
        let msg = rx.recv().unwrap();
        let tid = match msg.event {
            VcpuEvent::Started { index, tid, .. } => {
                assert_eq!(index, 3);
                tid
            }
            other => panic!("unexpected {other:?}"),
        };
        msg.confirm(Ok(()));
        let (r, thread_tid) = t.join().unwrap();
        assert_eq!(r, Ok(()));
        assert_eq!(tid, thread_tid);
        assert_ne!(tid, gettid());
    }

    #[test]
    fn refusal_and_disconnect_are_errors() {
        let (hooks, rx) = channel(Duration::from_secs(5));
        let h2 = hooks.clone();
        let t = thread::spawn(move || h2.vcpu_started(0));
        rx.recv()
            .unwrap()
            .confirm(Err(PlacementError::NoController {
                controller: "cpu".into(),
                path: "sb".into(),
            }));
        assert!(matches!(t.join().unwrap(), Err(HookError::Refused { .. })));
        drop(rx);
        assert!(matches!(
            hooks.vcpu_started(1),
            Err(HookError::Disconnected { .. })
        ));
    }

    #[test]
    fn timeout_is_bounded() {
        let (hooks, _rx) = channel(Duration::from_millis(20));
        assert!(matches!(
            hooks.vcpu_started(0),
            Err(HookError::Timeout { .. })
        ));
    }

    #[test]
    fn exited_is_fire_and_forget() {
        let (hooks, rx) = channel(Duration::from_secs(1));
        hooks.vcpu_exited(2);
        let msg = rx.recv().unwrap();
        assert!(matches!(msg.event, VcpuEvent::Exited { index: 2, .. }));
        assert!(!msg.awaits_reply());
        NoHooks.vcpu_exited(0);
        assert_eq!(NoHooks.vcpu_started(0), Ok(()));
    }
}
