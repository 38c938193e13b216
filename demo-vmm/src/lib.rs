//! The minimal in-process VMM: a KVM VM (or, without KVM, plain threads)
//! whose vCPU threads are spawned the way dragonball spawns them, so the
//! [`vcpu_hooks`] placement hooks run on the real spawn path.
//!
//! - [`guest`]: the hand-assembled 64-bit ring-3 guest and its page tables/GDT;
//! - `kvm`: the KVM VM, vCPU fds and the `KVM_RUN` loop;
//! - `thread`: the no-KVM spin loop;
//! - `kick`: stopping a vCPU in `KVM_RUN` (`immediate_exit` + signal);
//! - `vcpu`: the spawn path (hook, gate, run loop, exit hook).

#![deny(missing_docs)]

pub mod guest;
mod kick;
mod kvm;
mod thread;
mod vcpu;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vcpu_hooks::{HookError, VcpuHooks};
use vmm_sys_util::errno;

pub use self::kvm::KvmUnavailable;
use self::kvm::{KvmVcpu, KvmVm};
use self::vcpu::{Joined, Outcome, Runner, VcpuThread};

/// Upper bound on vCPUs for the thread backend (KVM has its own, `KVM_CAP_MAX_VCPUS`).
pub const MAX_THREAD_VCPUS: u32 = 256;

/// What actually runs the vCPU threads' loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuBackend {
    /// KVM vCPUs running the guest busy loop.
    Kvm,
    /// Host threads spinning, for hosts without KVM.
    Thread,
}

impl fmt::Display for VcpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VcpuBackend::Kvm => "kvm",
            VcpuBackend::Thread => "thread",
        })
    }
}

/// Which backend to use; `Auto` picks KVM when `/dev/kvm` opens and can create a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// KVM if usable, else threads.
    #[default]
    Auto,
    /// KVM or an error.
    Kvm,
    /// Threads, even if KVM is available.
    Thread,
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Kvm => "kvm",
            BackendChoice::Thread => "thread",
        })
    }
}

impl FromStr for BackendChoice {
    type Err = VmmError;

    /// Parses `auto`, `kvm` or `thread` (as written in configs and on the command line).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "kvm" => Ok(BackendChoice::Kvm),
            "thread" => Ok(BackendChoice::Thread),
            other => Err(VmmError::UnknownBackend(other.to_string())),
        }
    }
}

/// How many vCPUs to start, how many hotplug may reach, and on which backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmConfig {
    /// vCPUs started by [`Vmm::start`] (at least 1).
    pub vcpus: u32,
    /// Upper bound for [`Vmm::hotplug`] (at least `vcpus`).
    pub max_vcpus: u32,
    /// Backend choice.
    pub backend: BackendChoice,
}

impl Default for VmmConfig {
    /// One vCPU, no hotplug room, automatic backend.
    fn default() -> Self {
        VmmConfig {
            vcpus: 1,
            max_vcpus: 1,
            backend: BackendChoice::Auto,
        }
    }
}

/// Counters of one vCPU run loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Guest port writes (KVM), or spin batches (thread backend): the loop's heartbeat.
    pub io_exits: u64,
    /// `KVM_RUN` returns with EINTR (kicks and stray signals).
    pub interrupts: u64,
}

/// Why a vCPU's run loop ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum VcpuRunError {
    /// `KVM_RUN` returned an exit the busy-loop guest never causes.
    #[error("vCPU {index}: unexpected KVM exit {exit} (after {} port exits)", stats.io_exits)]
    UnexpectedExit {
        /// vCPU index.
        index: u32,
        /// The exit as kvm-ioctls names it.
        exit: String,
        /// Counters up to the exit.
        stats: RunStats,
    },
    /// `KVM_RUN` failed with an errno other than EINTR/EAGAIN.
    #[error("vCPU {index}: KVM_RUN failed: {source}")]
    Run {
        /// vCPU index.
        index: u32,
        /// The ioctl error.
        source: errno::Error,
        /// Counters up to the failure.
        stats: RunStats,
    },
    /// The vCPU thread panicked.
    #[error("vCPU {index}: thread panicked")]
    Panicked {
        /// vCPU index.
        index: u32,
    },
}

/// Errors of the VMM API; each names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The vCPU counts are inconsistent.
    #[error("invalid VMM config: vcpus={vcpus}, max_vcpus={max_vcpus}: {reason}")]
    Config {
        /// Requested vCPUs.
        vcpus: u32,
        /// Requested maximum.
        max_vcpus: u32,
        /// What is wrong.
        reason: String,
    },
    /// A backend name that is not `auto`, `kvm` or `thread`.
    #[error("unknown vCPU backend {0:?} (expected auto, kvm or thread)")]
    UnknownBackend(String),
    /// `BackendChoice::Kvm` on a host without usable KVM.
    #[error("KVM backend requested but /dev/kvm is missing or unusable: {0}")]
    KvmUnavailable(#[source] KvmUnavailable),
    /// A VM-level KVM setup step failed.
    #[error("KVM setup failed at {step}: {source}")]
    KvmSetup {
        /// The ioctl or step.
        step: &'static str,
        /// The error.
        source: errno::Error,
    },
    /// The guest image did not fit.
    #[error("writing the guest image failed: {0}")]
    GuestImage(#[source] guest::ImageTooSmall),
    /// `KVM_CREATE_VCPU` failed.
    #[error("creating KVM vCPU {index} failed: {source}")]
    CreateVcpu {
        /// vCPU index.
        index: u32,
        /// The error.
        source: errno::Error,
    },
    /// A per-vCPU setup step failed.
    #[error("setting up vCPU {index} failed at {step}: {source}")]
    VcpuSetup {
        /// vCPU index.
        index: u32,
        /// The ioctl or step.
        step: &'static str,
        /// The error.
        source: errno::Error,
    },
    /// Installing the kick signal handler failed.
    #[error("installing the vCPU kick handler for signal {signal} failed: {source}")]
    KickHandler {
        /// The signal number.
        signal: i32,
        /// The error.
        source: errno::Error,
    },
    /// Sending the kick signal to a vCPU thread failed.
    #[error("kicking vCPU {index} failed: {source}")]
    Kick {
        /// vCPU index.
        index: u32,
        /// The error.
        source: errno::Error,
    },
    /// The vCPU's placement hook failed; the batch it belonged to was stopped.
    #[error("vCPU {index} did not start: {source}")]
    Hook {
        /// vCPU index.
        index: u32,
        /// The hook's error.
        source: HookError,
    },
    /// The OS refused to create the vCPU thread.
    #[error("spawning thread db_vcpu{index} failed: {source}")]
    Spawn {
        /// vCPU index.
        index: u32,
        /// The error.
        source: std::io::Error,
    },
    /// A vCPU thread ended before reporting its placement (it panicked).
    #[error("vCPU thread db_vcpu{index} ended before reporting its placement")]
    VanishedThread {
        /// vCPU index.
        index: u32,
    },
    /// A vCPU thread panicked.
    #[error("vCPU thread db_vcpu{index} panicked")]
    Panicked {
        /// vCPU index.
        index: u32,
    },
    /// `start` called twice.
    #[error("VMM already started with {online} vCPUs")]
    AlreadyStarted {
        /// vCPUs online.
        online: u32,
    },
    /// `hotplug`/`unplug` before `start`.
    #[error("VMM not started")]
    NotStarted,
    /// Hotplug beyond `max_vcpus`.
    #[error("hotplug of {requested} vCPUs exceeds max_vcpus={max_vcpus} ({online} online)")]
    TooManyVcpus {
        /// vCPUs asked for.
        requested: u32,
        /// vCPUs online.
        online: u32,
        /// The configured maximum.
        max_vcpus: u32,
    },
    /// Unplug that would leave no vCPU (vCPU 0, the boot vCPU, stays).
    #[error("unplug of {requested} vCPUs would leave none ({online} online; vCPU 0 stays)")]
    UnplugTooMany {
        /// vCPUs asked to remove.
        requested: u32,
        /// vCPUs online.
        online: u32,
    },
}

/// One online vCPU as listed by [`Vmm::vcpus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuInfo {
    /// vCPU index.
    pub index: u32,
    /// Kernel thread id of its thread.
    pub tid: i32,
    /// Thread name, `db_vcpu<index>`.
    pub name: String,
    /// Placed and its run loop has not ended.
    pub running: bool,
}

/// How one vCPU thread ended, as reported by [`Vmm::stop`].
#[derive(Debug)]
pub struct VcpuReport {
    /// vCPU index.
    pub index: u32,
    /// Kernel thread id it had.
    pub tid: i32,
    /// Its run loop's counters, or why it failed.
    pub result: Result<RunStats, VcpuRunError>,
}

/// What [`Vmm::stop`] did; when it is returned, all vCPU threads are joined
/// and (KVM) the vCPU fds and the VM fd are closed.
#[derive(Debug)]
pub struct StopReport {
    /// The backend that ran.
    pub backend: VcpuBackend,
    /// One entry per vCPU that was online, ascending index.
    pub vcpus: Vec<VcpuReport>,
    /// `true` if a KVM VM fd existed and is now closed.
    pub vm_closed: bool,
    /// From the first kick until every vCPU thread was joined.
    pub joined_after: Duration,
    /// From the first kick to the VM fd being closed.
    pub elapsed: Duration,
}

/// `/dev/kvm`'s API version if KVM is usable here (opens and creates a VM), else `None`.
pub fn kvm_api_version() -> Option<i32> {
    KvmVm::open().ok().map(|(kvm, _vm)| kvm.get_api_version())
}

/// The VMM: the VM (KVM backend), the online vCPU threads, and parked vCPU fds.
pub struct Vmm {
    cfg: VmmConfig,
    hooks: Arc<dyn VcpuHooks>,
    backend: VcpuBackend,
    /// Online vCPU threads, index 0..n ascending.
    threads: Vec<VcpuThread>,
    /// KVM vCPU fds whose thread ended (unplug or a failed batch). KVM keeps a
    /// vCPU id until the VM is destroyed, so a later hotplug reuses the fd.
    parked: BTreeMap<u32, KvmVcpu>,
    /// The VM; closed last, after all vCPU fds.
    vm: Option<KvmVm>,
    started: bool,
}

impl fmt::Debug for Vmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vmm")
            .field("cfg", &self.cfg)
            .field("backend", &self.backend)
            .field("online", &self.threads.len())
            .field("parked", &self.parked.len())
            .field("started", &self.started)
            .finish()
    }
}

impl Vmm {
    /// Creates the VM (KVM backend) or nothing (thread backend); no threads yet.
    pub fn new(cfg: VmmConfig, hooks: Arc<dyn VcpuHooks>) -> Result<Vmm, VmmError> {
        let bad = |reason: String| VmmError::Config {
            vcpus: cfg.vcpus,
            max_vcpus: cfg.max_vcpus,
            reason,
        };
        if cfg.vcpus == 0 {
            return Err(bad("at least one vCPU is needed".into()));
        }
        if cfg.max_vcpus < cfg.vcpus {
            return Err(bad("max_vcpus is below vcpus".into()));
        }
        let vm = match cfg.backend {
            BackendChoice::Thread => None,
            BackendChoice::Kvm => {
                let (kvm, vm) = KvmVm::open().map_err(VmmError::KvmUnavailable)?;
                Some(KvmVm::new(&kvm, vm)?)
            }
            BackendChoice::Auto => match KvmVm::open() {
                Ok((kvm, vm)) => Some(KvmVm::new(&kvm, vm)?),
                Err(e) => {
                    tracing::info!(reason = %e, "no usable KVM, vCPUs run as host threads");
                    None
                }
            },
        };
        let limit = vm.as_ref().map_or(MAX_THREAD_VCPUS, KvmVm::max_vcpus);
        if cfg.max_vcpus > limit {
            return Err(bad(format!("max_vcpus is above the backend limit {limit}")));
        }
        if vm.is_some() {
            kick::install_handler().map_err(|source| VmmError::KickHandler {
                signal: kick::kick_signal(),
                source,
            })?;
        }
        let backend = if vm.is_some() {
            VcpuBackend::Kvm
        } else {
            VcpuBackend::Thread
        };
        Ok(Vmm {
            cfg,
            hooks,
            backend,
            threads: Vec::new(),
            parked: BTreeMap::new(),
            vm,
            started: false,
        })
    }

    /// The backend in use.
    pub fn backend(&self) -> VcpuBackend {
        self.backend
    }

    /// The configuration this VMM was created with.
    pub fn config(&self) -> VmmConfig {
        self.cfg
    }

    /// Spawns `cfg.vcpus` vCPU threads; returns once each is placed (then all
    /// run) or one failed its hook (then all of them are stopped and joined).
    /// Blocks as long as the slowest hook; `ChannelReporter` bounds that.
    pub fn start(&mut self) -> Result<(), VmmError> {
        if self.started {
            return Err(VmmError::AlreadyStarted {
                online: self.online(),
            });
        }
        self.spawn(0..self.cfg.vcpus)?;
        self.started = true;
        Ok(())
    }

    /// Adds `count` vCPUs (indexes continue from the online count) up to
    /// `max_vcpus`, through the same spawn path; returns the new indexes.
    pub fn hotplug(&mut self, count: u32) -> Result<Vec<u32>, VmmError> {
        if !self.started {
            return Err(VmmError::NotStarted);
        }
        let online = self.online();
        if online.saturating_add(count) > self.cfg.max_vcpus {
            return Err(VmmError::TooManyVcpus {
                requested: count,
                online,
                max_vcpus: self.cfg.max_vcpus,
            });
        }
        let new = online..online + count;
        self.spawn(new.clone())?;
        Ok(new.collect())
    }

    /// Stops and joins the `count` highest-index vCPUs (their exit hooks
    /// fire); returns their indexes, highest first. vCPU 0 always stays.
    pub fn unplug(&mut self, count: u32) -> Result<Vec<u32>, VmmError> {
        if !self.started {
            return Err(VmmError::NotStarted);
        }
        let online = self.online();
        if count >= online {
            return Err(VmmError::UnplugTooMany {
                requested: count,
                online,
            });
        }
        let keep = (online - count) as usize;
        let leaving: Vec<VcpuThread> = self.threads.drain(keep..).rev().collect();
        let (reports, first_error) = self.kick_and_join(leaving);
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(reports.iter().map(|r| r.index).collect())
    }

    /// The online vCPUs: index, tid, thread name, running.
    pub fn vcpus(&self) -> Vec<VcpuInfo> {
        self.threads
            .iter()
            .map(|t| VcpuInfo {
                index: t.index(),
                tid: t.tid(),
                name: t.name().to_string(),
                running: t.running(),
            })
            .collect()
    }

    /// Kicks and joins all vCPU threads, then closes the vCPU fds and the VM
    /// fd (which also ends KVM's per-VM worker threads), and only then returns.
    /// Teardown always completes; `Err` names a vCPU that panicked or could
    /// not be kicked.
    pub fn stop(mut self) -> Result<StopReport, VmmError> {
        let (report, first_error) = self.shutdown();
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn online(&self) -> u32 {
        // At most max_vcpus (a u32) threads are ever online.
        u32::try_from(self.threads.len()).unwrap_or(u32::MAX)
    }

    /// Runners for `indexes`: parked or new KVM vCPU fds, or spin loops.
    fn runners(&mut self, indexes: std::ops::Range<u32>) -> Result<Vec<(u32, Runner)>, VmmError> {
        let mut runners = Vec::new();
        for index in indexes {
            let runner = match &self.vm {
                None => Runner::Spin,
                Some(vm) => match self.parked.remove(&index) {
                    Some(vcpu) => {
                        if let Err(e) = vm.reset_vcpu(&vcpu) {
                            self.parked.insert(index, vcpu);
                            self.park_all(runners);
                            return Err(e);
                        }
                        Runner::Kvm(vcpu)
                    }
                    None => match vm.create_vcpu(index) {
                        Ok(vcpu) => Runner::Kvm(vcpu),
                        Err(e) => {
                            self.park_all(runners);
                            return Err(e);
                        }
                    },
                },
            };
            runners.push((index, runner));
        }
        Ok(runners)
    }

    fn park_all(&mut self, runners: Vec<(u32, Runner)>) {
        for (index, runner) in runners {
            self.park(index, runner);
        }
    }

    fn park(&mut self, index: u32, runner: Runner) {
        if let Runner::Kvm(vcpu) = runner {
            self.parked.insert(index, vcpu);
        }
    }

    /// The shared spawn path of `start` and `hotplug`.
    fn spawn(&mut self, indexes: std::ops::Range<u32>) -> Result<(), VmmError> {
        let runners = self.runners(indexes)?;
        match vcpu::spawn_batch(runners, &self.hooks) {
            Ok(threads) => {
                self.threads.extend(threads);
                Ok(())
            }
            Err(failed) => {
                for j in failed.joined {
                    if let Some((runner, _)) = j.end {
                        self.park(j.index, runner);
                    }
                }
                Err(failed.error)
            }
        }
    }

    /// Kicks all `threads` first (so they stop in parallel), then joins them
    /// and parks their vCPU fds.
    fn kick_and_join(&mut self, threads: Vec<VcpuThread>) -> (Vec<VcpuReport>, Option<VmmError>) {
        let mut first_error = None;
        for t in &threads {
            if let Err(source) = t.kick() {
                // The stop flag is set, so the thread still leaves at its next port exit.
                tracing::warn!(vcpu = t.index(), error = %source, "kick signal failed");
                first_error.get_or_insert(VmmError::Kick {
                    index: t.index(),
                    source,
                });
            }
        }
        let mut reports = Vec::with_capacity(threads.len());
        for t in threads {
            let Joined { index, tid, end } = t.join();
            let result = match end {
                None => {
                    first_error.get_or_insert(VmmError::Panicked { index });
                    Err(VcpuRunError::Panicked { index })
                }
                Some((runner, outcome)) => {
                    self.park(index, runner);
                    match outcome {
                        Outcome::Ran(r) => r,
                        Outcome::NotPlaced | Outcome::Aborted => Ok(RunStats::default()),
                    }
                }
            };
            reports.push(VcpuReport { index, tid, result });
        }
        (reports, first_error)
    }

    /// Joins every thread, then closes vCPU fds, then the VM fd. Idempotent.
    fn shutdown(&mut self) -> (StopReport, Option<VmmError>) {
        let t0 = Instant::now();
        let threads = std::mem::take(&mut self.threads);
        let (mut vcpus, first_error) = self.kick_and_join(threads);
        let joined_after = t0.elapsed();
        vcpus.sort_by_key(|r| r.index);
        // vCPU fds (and their kvm_run mappings) hold references on the VM;
        // they go first so that closing the VM fd destroys the VM right away.
        self.parked.clear();
        let vm_closed = self.vm.take().is_some();
        self.started = false;
        let report = StopReport {
            backend: self.backend,
            vcpus,
            vm_closed,
            joined_after,
            elapsed: t0.elapsed(),
        };
        (report, first_error)
    }
}

impl Drop for Vmm {
    /// A VMM dropped without [`Vmm::stop`] still stops and joins its vCPUs.
    fn drop(&mut self) {
        if !self.threads.is_empty() || self.vm.is_some() {
            let (_, err) = self.shutdown();
            if let Some(e) = err {
                tracing::warn!(error = %e, "VMM teardown on drop");
            }
        }
    }
}

/// The pull approach's lookup: `/proc/self/task/*/comm` named `db_vcpu<N>`, as (N, tid).
pub fn scan_vcpu_tids() -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
            continue;
        };
        if let Some(i) = comm.trim().strip_prefix("db_vcpu") {
            if let Ok(index) = i.parse() {
                out.push((index, tid));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vcpu_hooks::NoHooks;

    #[test]
    fn names_round_trip() {
        for c in [
            BackendChoice::Auto,
            BackendChoice::Kvm,
            BackendChoice::Thread,
        ] {
            assert_eq!(c.to_string().parse::<BackendChoice>().unwrap(), c);
        }
        assert_eq!(VcpuBackend::Kvm.to_string(), "kvm");
        assert_eq!(VcpuBackend::Thread.to_string(), "thread");
        let e = "qemu".parse::<BackendChoice>().unwrap_err();
        assert!(e.to_string().contains("\"qemu\""), "{e}");
    }

    #[test]
    fn vmm_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<Vmm>();
    }

    #[test]
    fn missing_kvm_error_says_so() {
        let e = VmmError::KvmUnavailable(KvmUnavailable::Open(errno::Error::new(libc::ENOENT)));
        let msg = e.to_string();
        assert!(msg.contains("/dev/kvm is missing or unusable"), "{msg}");
        assert!(msg.contains("cannot open /dev/kvm"), "{msg}");
    }

    #[test]
    fn config_is_checked() {
        let mk = |vcpus, max_vcpus| {
            Vmm::new(
                VmmConfig {
                    vcpus,
                    max_vcpus,
                    backend: BackendChoice::Thread,
                },
                Arc::new(NoHooks),
            )
        };
        let e = mk(0, 1).unwrap_err();
        assert!(e.to_string().contains("vcpus=0"), "{e}");
        let e = mk(2, 1).unwrap_err();
        assert!(e.to_string().contains("max_vcpus=1"), "{e}");
        let e = mk(1, MAX_THREAD_VCPUS + 1).unwrap_err();
        assert!(e.to_string().contains("backend limit"), "{e}");
        assert_eq!(mk(1, 1).unwrap().backend(), VcpuBackend::Thread);
    }

    #[test]
    fn hotplug_and_unplug_need_start_and_bounds() {
        let mut vmm = Vmm::new(
            VmmConfig {
                vcpus: 1,
                max_vcpus: 2,
                backend: BackendChoice::Thread,
            },
            Arc::new(NoHooks),
        )
        .unwrap();
        assert!(matches!(vmm.hotplug(1), Err(VmmError::NotStarted)));
        assert!(matches!(vmm.unplug(1), Err(VmmError::NotStarted)));
        vmm.start().unwrap();
        assert!(matches!(
            vmm.start(),
            Err(VmmError::AlreadyStarted { online: 1 })
        ));
        assert!(matches!(
            vmm.hotplug(2),
            Err(VmmError::TooManyVcpus {
                requested: 2,
                online: 1,
                max_vcpus: 2
            })
        ));
        assert_eq!(vmm.hotplug(1).unwrap(), vec![1]);
        assert!(matches!(
            vmm.unplug(2),
            Err(VmmError::UnplugTooMany {
                requested: 2,
                online: 2
            })
        ));
        assert_eq!(vmm.unplug(1).unwrap(), vec![1]);
        let report = vmm.stop().unwrap();
        assert_eq!(report.vcpus.len(), 1);
        assert!(!report.vm_closed);
    }
}
