//! Integration tests of the in-process VMM through its public API.
//!
//! Tests that need KVM record a skip (tests/common/skip.rs) and return when
//! `/dev/kvm` is unusable. Tests share the process's thread list, so they take a global
//! lock and run one at a time. Time bounds are generous (seconds) so that a
//! slow or loaded machine never fails them; observed latencies are printed.

mod common {
    pub mod skip;
}

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use demo_vmm::{kvm_api_version, BackendChoice, VcpuBackend, Vmm, VmmConfig, VmmError};
use vcpu_hooks::{HookError, HookReceiver, NoHooks, PlacementError, PlacementReply, VcpuEvent};

/// Bound for anything that should take milliseconds.
const GENEROUS: Duration = Duration::from_secs(10);

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn kvm_usable(test: &str) -> bool {
    match kvm_api_version() {
        Some(_) => true,
        None => {
            common::skip::skip(
                test,
                "needs /dev/kvm (missing or unusable here; runs in `cargo test` on a KVM host)",
            );
            false
        }
    }
}

fn cfg(vcpus: u32, max_vcpus: u32, backend: BackendChoice) -> VmmConfig {
    VmmConfig {
        vcpus,
        max_vcpus,
        backend,
    }
}

/// tid -> comm of every thread of this process.
fn threads() -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let entry = entry.unwrap();
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A thread may exit between read_dir and read.
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            out.insert(tid, comm.trim_end().to_string());
        }
    }
    out
}

fn vcpu_threads() -> BTreeMap<i32, String> {
    threads()
        .into_iter()
        .filter(|(_, c)| c.starts_with("db_vcpu"))
        .collect()
}

/// Waits (bounded) until no db_vcpu thread is listed; the kernel may list a
/// joined thread for a moment after pthread_join returns.
fn assert_no_vcpu_threads() {
    let t0 = Instant::now();
    while !vcpu_threads().is_empty() {
        assert!(t0.elapsed() < GENEROUS, "left over: {:?}", vcpu_threads());
        thread::sleep(Duration::from_millis(5));
    }
}

/// (utime, stime, guest_time) in clock ticks, from /proc/<path>/stat fields 14, 15, 43.
fn cpu_times(stat_path: &str) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised comm start with field 3 (state).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?, field(15)?, field(43)?))
}

fn task_times(tid: i32) -> Option<(u64, u64, u64)> {
    cpu_times(&format!("/proc/self/task/{tid}/stat"))
}

/// A Started event as the test controller saw it.
#[derive(Debug, Clone)]
struct Seen {
    index: u32,
    tid: i32,
    /// The thread's comm at the moment its hook ran.
    comm: String,
    /// guest_time of the thread at the moment its hook ran.
    guest_ticks: Option<u64>,
}

/// A stand-in cgroup controller: answers each Started with `decide(index)`
/// and forwards what it saw.
struct Controller {
    started: Receiver<Seen>,
    exited: Receiver<(u32, i32)>,
}

impl Controller {
    fn spawn(
        rx: HookReceiver,
        decide: impl Fn(u32) -> Option<PlacementReply> + Send + 'static,
    ) -> Controller {
        let (s_tx, started) = crossbeam_channel::unbounded();
        let (e_tx, exited) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            // Ends when every reporter (held by the VMM's threads) is gone.
            for msg in rx {
                match msg.event {
                    VcpuEvent::Started { index, tid, .. } => {
                        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                            .unwrap_or_default()
                            .trim_end()
                            .to_string();
                        let guest_ticks = task_times(tid).map(|t| t.2);
                        let _ = s_tx.send(Seen {
                            index,
                            tid,
                            comm,
                            guest_ticks,
                        });
                        // None: never answer (to provoke a timeout).
                        if let Some(reply) = decide(index) {
                            msg.confirm(reply);
                        } else {
                            std::mem::forget(msg);
                        }
                    }
                    VcpuEvent::Exited { index, tid } => {
                        let _ = e_tx.send((index, tid));
                    }
                    other => panic!("an event this test does not know: {other:?}"),
                }
            }
        });
        Controller { started, exited }
    }

    fn accept_all(rx: HookReceiver) -> Controller {
        Controller::spawn(rx, |_| Some(Ok(())))
    }

    /// Exactly `n` Started events, sorted by index.
    fn started(&self, n: usize) -> Vec<Seen> {
        let mut v: Vec<Seen> = (0..n)
            .map(|_| self.started.recv_timeout(GENEROUS).expect("Started event"))
            .collect();
        v.sort_by_key(|s| s.index);
        assert_eq!(
            self.started.try_recv().ok().map(|s| s.index),
            None,
            "more Started events than expected"
        );
        v
    }

    /// Exactly `n` Exited events as (index, tid), sorted by index.
    fn exited(&self, n: usize) -> Vec<(u32, i32)> {
        let mut v: Vec<(u32, i32)> = (0..n)
            .map(|_| self.exited.recv_timeout(GENEROUS).expect("Exited event"))
            .collect();
        v.sort();
        assert!(
            matches!(
                self.exited.recv_timeout(Duration::from_millis(50)),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected)
            ),
            "more Exited events than expected"
        );
        v
    }
}

fn no_such_cgroup() -> PlacementError {
    PlacementError::Io {
        op: "write 1 to".into(),
        path: "/sys/fs/cgroup/cpu/missing/tasks".into(),
        errno: Some(libc::ENOENT),
    }
}

fn hooks_and_rx() -> (Arc<vcpu_hooks::ChannelReporter>, HookReceiver) {
    let (reporter, rx) = vcpu_hooks::channel(GENEROUS);
    (Arc::new(reporter), rx)
}

/// Names, tids, hook events and thread list agree, for either backend.
fn named_threads_and_hook_tids(backend: BackendChoice, expect: VcpuBackend) {
    let (hooks, rx) = hooks_and_rx();
    let ctl = Controller::accept_all(rx);
    let mut vmm = Vmm::new(cfg(3, 3, backend), hooks).unwrap();
    assert_eq!(vmm.backend(), expect);
    vmm.start().unwrap();

    let seen = ctl.started(3);
    let listed = vcpu_threads();
    let infos = vmm.vcpus();
    assert_eq!(infos.len(), 3);
    for (i, (s, info)) in seen.iter().zip(&infos).enumerate() {
        let name = format!("db_vcpu{i}");
        assert_eq!(s.index, i as u32);
        assert_eq!(info.index, i as u32);
        // The hook ran on the vCPU thread itself, already named.
        assert_eq!(s.comm, name);
        assert_eq!(s.tid, info.tid, "hook tid == reported tid");
        assert_eq!(info.name, name);
        assert!(info.running, "{info:?}");
        assert_eq!(listed.get(&info.tid), Some(&name), "{listed:?}");
    }
    assert_eq!(listed.len(), 3, "{listed:?}");

    let report = vmm.stop().unwrap();
    assert_eq!(report.backend, expect);
    assert_eq!(report.vm_closed, expect == VcpuBackend::Kvm);
    let exited = ctl.exited(3);
    let expected: Vec<(u32, i32)> = seen.iter().map(|s| (s.index, s.tid)).collect();
    assert_eq!(exited, expected, "one Exited per vCPU, from the same tid");
    // Loop progress is asserted in kvm_guest_runs_in_guest_mode; a vCPU
    // stopped this early on a loaded host may not have finished one round.
    assert!(report.vcpus.iter().all(|r| r.result.is_ok()), "{report:?}");
    assert_no_vcpu_threads();
}

#[test]
fn kvm_vcpus_are_named_threads_whose_hook_reports_their_tid() {
    let _g = serial();
    if !kvm_usable("kvm_vcpus_are_named_threads_whose_hook_reports_their_tid") {
        return;
    }
    named_threads_and_hook_tids(BackendChoice::Kvm, VcpuBackend::Kvm);
}

#[test]
fn thread_backend_has_the_same_spawn_path() {
    let _g = serial();
    named_threads_and_hook_tids(BackendChoice::Thread, VcpuBackend::Thread);
}

#[test]
fn auto_picks_kvm_when_usable() {
    let _g = serial();
    let vmm = Vmm::new(VmmConfig::default(), Arc::new(NoHooks)).unwrap();
    let expect = if kvm_api_version().is_some() {
        VcpuBackend::Kvm
    } else {
        VcpuBackend::Thread
    };
    assert_eq!(vmm.backend(), expect);
    assert_eq!(vmm.backend().to_string(), expect.to_string());
}

#[test]
fn kvm_guest_runs_in_guest_mode() {
    let _g = serial();
    if !kvm_usable("kvm_guest_runs_in_guest_mode") {
        return;
    }
    let mut vmm = Vmm::new(cfg(1, 1, BackendChoice::Kvm), Arc::new(NoHooks)).unwrap();
    vmm.start().unwrap();
    let tid = vmm.vcpus()[0].tid;
    let before = task_times(tid).unwrap();
    // Ticks are 10 ms; wait until guest time has visibly grown (bounded).
    let t0 = Instant::now();
    let mut now = before;
    while now.2 < before.2 + 20 && t0.elapsed() < GENEROUS {
        thread::sleep(Duration::from_millis(50));
        now = task_times(tid).unwrap();
    }
    let (du, ds, dg) = (now.0 - before.0, now.1 - before.1, now.2 - before.2);
    eprintln!(
        "vCPU tid {tid} over {:?}: utime +{du} stime +{ds} guest_time +{dg} ticks",
        t0.elapsed()
    );
    // guest_time is the part of utime spent in guest mode: the busy loop
    // runs natively (ring 3 under kvm_pvm), not emulated as system time.
    assert!(dg > 0, "no guest time: utime +{du} stime +{ds}");
    assert!(
        dg + 5 >= ds,
        "more system than guest time: guest +{dg} stime +{ds}"
    );
    let report = vmm.stop().unwrap();
    let stats = report.vcpus[0].result.as_ref().unwrap();
    assert!(stats.io_exits > 0, "{stats:?}");
    eprintln!(
        "port exits: {} (~{:?} apart)",
        stats.io_exits,
        t0.elapsed() / stats.io_exits as u32
    );
}

#[test]
fn kvm_hotplug_and_unplug_use_the_same_spawn_path() {
    let _g = serial();
    if !kvm_usable("kvm_hotplug_and_unplug_use_the_same_spawn_path") {
        return;
    }
    hotplug_and_unplug(BackendChoice::Kvm);
}

#[test]
fn thread_backend_hotplug_and_unplug() {
    let _g = serial();
    hotplug_and_unplug(BackendChoice::Thread);
}

fn hotplug_and_unplug(backend: BackendChoice) {
    let (hooks, rx) = hooks_and_rx();
    let ctl = Controller::accept_all(rx);
    let mut vmm = Vmm::new(cfg(1, 4, backend), hooks).unwrap();
    vmm.start().unwrap();
    assert_eq!(ctl.started(1)[0].index, 0);

    assert_eq!(vmm.hotplug(3).unwrap(), vec![1, 2, 3]);
    let seen = ctl.started(3);
    assert_eq!(seen.iter().map(|s| s.index).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(vcpu_threads().len(), 4, "{:?}", vcpu_threads());
    assert_eq!(vmm.vcpus().len(), 4);
    assert!(vmm.vcpus().iter().all(|v| v.running));

    let err = vmm.hotplug(1).unwrap_err();
    assert!(
        matches!(
            err,
            VmmError::TooManyVcpus {
                requested: 1,
                online: 4,
                max_vcpus: 4
            }
        ),
        "{err}"
    );

    assert_eq!(vmm.unplug(2).unwrap(), vec![3, 2]);
    let gone = ctl.exited(2);
    let expect: Vec<(u32, i32)> = seen[1..].iter().map(|s| (s.index, s.tid)).collect();
    assert_eq!(gone, expect);
    assert_no_vcpu_threads_beyond(2);
    assert_eq!(
        vmm.vcpus()
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["db_vcpu0", "db_vcpu1"]
    );

    // Indexes continue from the online count; with KVM this reuses the
    // parked vCPU fd, since KVM keeps vCPU ids until the VM is destroyed.
    assert_eq!(vmm.hotplug(1).unwrap(), vec![2]);
    let again = ctl.started(1).remove(0);
    assert_eq!(again.index, 2);
    assert_eq!(vcpu_threads().len(), 3);
    // The re-plugged vCPU really runs again (in guest mode with KVM).
    let t0 = Instant::now();
    loop {
        let (utime, _, guest) = task_times(again.tid).unwrap();
        let ran = if vmm.backend() == VcpuBackend::Kvm {
            guest
        } else {
            utime
        };
        if ran > 0 {
            eprintln!("re-plugged vCPU 2 ran after {:?}", t0.elapsed());
            break;
        }
        assert!(t0.elapsed() < GENEROUS, "re-plugged vCPU 2 never ran");
        thread::sleep(Duration::from_millis(10));
    }

    let report = vmm.stop().unwrap();
    assert_eq!(report.vcpus.len(), 3);
    assert!(report.vcpus.iter().all(|r| r.result.is_ok()), "{report:?}");
    assert_eq!(ctl.exited(3).len(), 3);
    assert_no_vcpu_threads();
}

fn assert_no_vcpu_threads_beyond(n: usize) {
    let t0 = Instant::now();
    while vcpu_threads().len() > n {
        assert!(t0.elapsed() < GENEROUS, "{:?}", vcpu_threads());
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(vcpu_threads().len(), n);
}

#[test]
fn kvm_refused_hook_fails_start_and_no_guest_code_runs() {
    let _g = serial();
    if !kvm_usable("kvm_refused_hook_fails_start_and_no_guest_code_runs") {
        return;
    }
    let (hooks, rx) = hooks_and_rx();
    // Refuse vCPU 1 only; vCPU 0 is placed but must not run either.
    let ctl = Controller::spawn(rx, |i| {
        Some(if i == 1 {
            Err(no_such_cgroup())
        } else {
            Ok(())
        })
    });
    let mut vmm = Vmm::new(cfg(2, 2, BackendChoice::Kvm), hooks).unwrap();
    let guest_before = cpu_times("/proc/self/stat").unwrap().2;
    let err = vmm.start().unwrap_err();
    let guest_after = cpu_times("/proc/self/stat").unwrap().2;
    match &err {
        VmmError::Hook {
            index: 1,
            source: HookError::Refused {
                index: 1, reason, ..
            },
        } => assert_eq!(reason, &no_such_cgroup()),
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("vCPU 1"), "{err}");
    let seen = ctl.started(2);
    assert!(seen.iter().all(|s| s.guest_ticks == Some(0)), "{seen:?}");
    // Process-wide guest time (including exited threads) did not move:
    // neither vCPU ever entered the guest.
    assert_eq!(guest_after, guest_before, "guest code ran");
    // Only the placed-but-aborted vCPU 0 reports an exit.
    assert_eq!(ctl.exited(1), vec![(0, seen[0].tid)]);
    assert!(vmm.vcpus().is_empty());
    assert_no_vcpu_threads();
    let report = vmm.stop().unwrap();
    assert!(report.vcpus.is_empty());
    assert!(report.vm_closed);
}

#[test]
fn failed_start_can_be_retried() {
    let _g = serial();
    // Refuse the first attempt of vCPU 0, accept everything after.
    let (hooks, rx) = hooks_and_rx();
    let first = std::sync::atomic::AtomicBool::new(true);
    let ctl = Controller::spawn(rx, move |_| {
        Some(if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            Err(no_such_cgroup())
        } else {
            Ok(())
        })
    });
    let mut vmm = Vmm::new(cfg(1, 1, BackendChoice::Auto), hooks).unwrap();
    assert!(matches!(vmm.start(), Err(VmmError::Hook { index: 0, .. })));
    ctl.started(1);
    // With KVM this reuses the parked vCPU 0 fd (KVM_CREATE_VCPU would fail with EEXIST).
    vmm.start().unwrap();
    ctl.started(1);
    assert_eq!(vmm.vcpus().len(), 1);
    vmm.stop().unwrap();
    assert_no_vcpu_threads();
}

#[test]
fn refused_hotplug_leaves_running_vcpus_alone() {
    let _g = serial();
    let (hooks, rx) = hooks_and_rx();
    // vCPU 2 is refused; vCPU 1 of the same hotplug batch is placed but aborted.
    let ctl = Controller::spawn(rx, |i| {
        Some(if i == 2 {
            Err(no_such_cgroup())
        } else {
            Ok(())
        })
    });
    let mut vmm = Vmm::new(cfg(1, 3, BackendChoice::Auto), hooks).unwrap();
    vmm.start().unwrap();
    let boot = ctl.started(1).remove(0);
    let err = vmm.hotplug(2).unwrap_err();
    assert!(matches!(err, VmmError::Hook { index: 2, .. }), "{err}");
    ctl.started(2);
    assert_eq!(ctl.exited(1).first().map(|e| e.0), Some(1));
    let online = vmm.vcpus();
    assert_eq!(online.len(), 1);
    assert_eq!(online[0].tid, boot.tid);
    assert!(online[0].running);
    assert_no_vcpu_threads_beyond(1);
    vmm.stop().unwrap();
    assert_eq!(ctl.exited(1), vec![(0, boot.tid)]);
    assert_no_vcpu_threads();
}

#[test]
fn unanswered_hook_times_out_and_start_fails() {
    let _g = serial();
    let (reporter, rx) = vcpu_hooks::channel(Duration::from_millis(100));
    let ctl = Controller::spawn(rx, |_| None);
    let mut vmm = Vmm::new(cfg(1, 1, BackendChoice::Auto), Arc::new(reporter)).unwrap();
    let err = vmm.start().unwrap_err();
    assert!(
        matches!(
            err,
            VmmError::Hook {
                index: 0,
                source: HookError::Timeout { index: 0, .. }
            }
        ),
        "{err}"
    );
    ctl.started(1);
    assert!(vmm.vcpus().is_empty());
    assert_no_vcpu_threads();
}

#[test]
fn kvm_stop_is_prompt_and_closes_the_vm() {
    let _g = serial();
    if !kvm_usable("kvm_stop_is_prompt_and_closes_the_vm") {
        return;
    }
    let mut vmm = Vmm::new(cfg(2, 2, BackendChoice::Kvm), Arc::new(NoHooks)).unwrap();
    vmm.start().unwrap();
    thread::sleep(Duration::from_millis(300));
    let workers: Vec<String> = threads()
        .into_values()
        .filter(|c| c.starts_with("kvm"))
        .collect();
    eprintln!("KVM worker threads while running: {workers:?}");
    let t0 = Instant::now();
    let report = vmm.stop().unwrap();
    let took = t0.elapsed();
    eprintln!(
        "stop took {took:?} (kick to threads joined: {:?}, to VM fd closed: {:?}); {:?}",
        report.joined_after, report.elapsed, report.vcpus
    );
    assert!(took < GENEROUS);
    assert!(report.vm_closed);
    assert_no_vcpu_threads();
    // KVM's per-VM workers (kvm-nx-lpage-recovery) are gone once the VM fd is closed.
    let left: Vec<String> = threads()
        .into_values()
        .filter(|c| c.starts_with("kvm-nx-lpage"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn dropping_the_vmm_stops_its_vcpus() {
    let _g = serial();
    let (hooks, rx) = hooks_and_rx();
    let ctl = Controller::accept_all(rx);
    let mut vmm = Vmm::new(cfg(2, 2, BackendChoice::Auto), hooks).unwrap();
    vmm.start().unwrap();
    ctl.started(2);
    drop(vmm);
    assert_eq!(ctl.exited(2).len(), 2);
    assert_no_vcpu_threads();
}

#[test]
fn kvm_many_start_stop_cycles() {
    let _g = serial();
    if !kvm_usable("kvm_many_start_stop_cycles") {
        return;
    }
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let mut vmm = Vmm::new(cfg(2, 2, BackendChoice::Kvm), Arc::new(NoHooks)).unwrap();
        vmm.start().unwrap();
        thread::sleep(Duration::from_millis(10));
        let t0 = Instant::now();
        vmm.stop().unwrap();
        worst = worst.max(t0.elapsed());
    }
    eprintln!("worst stop over 10 cycles: {worst:?}");
    assert!(worst < GENEROUS);
    assert_no_vcpu_threads();
}
