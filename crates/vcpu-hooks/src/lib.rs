//! Hooks a VMM calls from its vCPU spawn path, so that a cgroup controller
//! learns each vCPU thread id the moment the thread exists.
//!
//! The vCPU thread reports itself: its first act is [`VcpuHooks::vcpu_started`],
//! called on its own thread, so the tid comes from `gettid(2)` and nobody has
//! to poll `/proc/<pid>/task`. The call sends one message over a
//! `crossbeam-channel` and then waits for the controller's confirmation, so
//! the thread never enters the guest before it sits in its cgroup. The last
//! act of the thread, after its run loop ends, is [`VcpuHooks::vcpu_exited`].
//!
//! # Where the calls go in dragonball
//!
//! Upstream dragonball starts each vCPU in `Vcpu::start_threaded`
//! (`src/dragonball/src/vcpu/vcpu_impl.rs`), which spawns a
//! `std::thread::Builder::new().name(format!("db_vcpu{}", cpu_id))` thread.
//! Inside that closure, before anything else:
//!
//! ```ignore
//! // first statement of the thread closure, before `barrier.wait()`:
//! hooks.vcpu_started(cpu_id as u32).map_err(VcpuError::Hook)?;
//! barrier.wait();                 // upstream: released once all vCPUs exist
//! vcpu.run(...);                  // upstream run loop (KVM_RUN)
//! hooks.vcpu_exited(cpu_id as u32); // after the run loop returns
//! ```
//!
//! Calling the hook before the barrier means the placement of all vCPUs runs
//! in parallel with the spawning of the remaining ones, and no vCPU passes the
//! barrier (and so reaches `KVM_RUN`) unplaced. The hooks object is an
//! `Arc<dyn VcpuHooks>` held by the `VcpuManager` and cloned into each thread.

#![deny(missing_docs)]

use std::fmt;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, SendError, Sender};

/// What happened to a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The controller's answer to a `Started` event: `Ok` once the thread is placed.
pub type PlacementReply = Result<(), String>;

/// One message on the hooks channel: an event and, for `Started`, where to confirm it.
#[derive(Debug)]
pub struct HookMessage {
    /// The event.
    pub event: VcpuEvent,
    /// Send the placement outcome here; `None` for events nobody waits on.
    pub reply: Option<Sender<PlacementReply>>,
}

impl HookMessage {
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
pub enum HookError {
    /// The controller refused or failed to place the thread.
    Refused {
        /// vCPU index.
        index: u32,
        /// Thread id.
        tid: i32,
        /// The controller's reason.
        reason: String,
    },
    /// No confirmation arrived within the bound.
    Timeout {
        /// vCPU index.
        index: u32,
        /// Thread id.
        tid: i32,
        /// The bound that passed.
        waited: Duration,
    },
    /// The controller is gone (its receiver was dropped).
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

impl std::error::Error for HookError {}

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

/// Hooks that report over a channel and wait a bounded time for placement.
#[derive(Debug, Clone)]
pub struct ChannelReporter {
    tx: Sender<HookMessage>,
    timeout: Duration,
}

/// Default bound on waiting for placement: generous, since an idle cgroup core
/// may first wait one RCU grace period, and a loaded host is slower still.
pub const DEFAULT_PLACEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A reporter and the receiving end the controller reads.
pub fn channel(timeout: Duration) -> (ChannelReporter, Receiver<HookMessage>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    (ChannelReporter { tx, timeout }, rx)
}

impl ChannelReporter {
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
        if let Err(SendError(_)) = self.tx.send(msg) {
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
        let msg = HookMessage {
            event: VcpuEvent::Exited {
                index,
                tid: gettid(),
            },
            reply: None,
        };
        // A controller that is already gone has nothing left to record.
        let _ = self.tx.send(msg);
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
        rx.recv().unwrap().confirm(Err("no cgroup".into()));
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
        assert!(msg.reply.is_none());
        NoHooks.vcpu_exited(0);
        assert_eq!(NoHooks.vcpu_started(0), Ok(()));
    }
}
