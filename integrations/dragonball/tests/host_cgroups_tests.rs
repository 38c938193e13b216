// host-cgroups inside dragonball's own vCPU code (docs/dragonball.md).
//
// `integrations/dragonball/run` copies this file to
// `src/dragonball/src/vcpu/vcpu_manager/host_cgroups_tests/mod.rs` of the patched snapshot, where the
// series declares it as a test module of `vcpu_manager` (it reaches the manager's private
// rollback and hotplug paths as dragonball's own tests do). Next to it the script puts
// runtime-rs' `seccomp.rs` from the same snapshot, as `upstream_seccomp.rs`, unchanged but
// for `dragonball::` → `crate::`.
//
// What is real here: dragonball's `Vm`, `VcpuManager` and `Vcpu` code, real KVM vCPU fds,
// real `db_vcpu<N>` threads, real cgroupfs, and host-cgroups' `Sandbox` built from the
// shipped Kata TOML. What is not: under `cfg(test)` dragonball mocks `KVM_RUN` (the
// threads spin in their run loop) and the upcall to the guest (hotplug is driven by the
// same vCPU-state event the guest's answer would raise). A real guest is
// `integrations/dragonball/run --boot`.
//
// Every placement is read from the kernel (cgroupfs `tasks`/`cgroup.threads`, `/proc`),
// never from the library's records alone. Cgroups are made under `hcgtest-db-<random>`
// and removed even when a test fails (the `Fixture` guard).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::result::Result;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dbs_utils::epoll_manager::EpollManager;
use dbs_utils::time::TimestampUs;
use host_cgroups::config::RuntimeConfig;
use host_cgroups::resources::from_json;
use host_cgroups::sandbox::{Sandbox, SandboxOptions};
use seccompiler::BpfProgram;
use serial_test::serial;
use vcpu_hooks::{HookError, PlacementError, VcpuHooks};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::api::v1::InstanceInfo;
use crate::vcpu::vcpu_impl::tests::{EmulationCase, EMULATE_RES};
use crate::vm::{CpuTopology, Vm, VmConfigInfo};

include!("common.rs");

/// Bound on anything that takes milliseconds; a loaded machine is slower, never this slow.
const GENEROUS: Duration = Duration::from_secs(30);

/// The vCPU layouts of host-cgroups this host (cgroup v1, cgroupfs) supports.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// `sandbox_cgroup_only = true` (the shipped default): everything in the sandbox cgroup.
    SandboxOnly,
    /// `sandbox_cgroup_only = false`, `vcpu_cgroup_layout = "nested"`.
    Nested,
    /// `sandbox_cgroup_only = false`, `vcpu_cgroup_layout = "sibling"`.
    Sibling,
}

/// The shipped Kata TOML (`HCG_KATA_TOML`, set by the run script), with `[runtime]`
/// changed for `layout` and pinning.
fn runtime_config(layout: Layout, pinning: bool) -> RuntimeConfig {
    let path = PathBuf::from(std::env::var("HCG_KATA_TOML").expect(
        "HCG_KATA_TOML names configuration-dragonball.toml (integrations/dragonball/run sets it)",
    ));
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("\nsandbox_cgroup_only = true\n").count(), 1);
    let (only, extra) = match layout {
        Layout::SandboxOnly => ("true", ""),
        Layout::Nested => ("false", "vcpu_cgroup_layout = \"nested\"\n"),
        Layout::Sibling => ("false", "vcpu_cgroup_layout = \"sibling\"\n"),
    };
    let text = text
        .replace(
            "\nsandbox_cgroup_only = true\n",
            &format!("\nsandbox_cgroup_only = {}\n", only),
        )
        .replace(
            "\n[runtime]\n",
            &format!("\n[runtime]\n{}enable_vcpus_pinning = {}\n", extra, pinning),
        );
    RuntimeConfig::parse(&text, &path).unwrap()
}

/// The cgroup of `tid` in the v1 hierarchy that has `controller`, from `/proc`.
fn proc_cgroup(tid: i32, controller: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/self/task/{}/cgroup", tid)).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < GENEROUS, "timed out waiting until {}", what);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// What a vCPU thread found, on its own thread, right after its hook returned.
#[derive(Debug, Clone)]
struct Seen {
    index: u32,
    tid: i32,
    hook: Result<(), HookError>,
    /// Target directories that did not list the thread when its hook returned.
    missing: Vec<PathBuf>,
    /// `Cpus_allowed_list` of the thread when its hook returned.
    cpus_allowed: String,
}

/// Wraps the sandbox's hooks as dragonball receives them; after each `vcpu_started`
/// it reads cgroupfs and `/proc` on the vCPU thread, before the thread reaches
/// dragonball's barrier (and so before `Resume`).
struct Probe {
    inner: Arc<dyn VcpuHooks>,
    targets: Vec<PathBuf>,
    seen: Mutex<Vec<Seen>>,
    exited: Mutex<Vec<u32>>,
}

impl VcpuHooks for Probe {
    fn vcpu_started(&self, index: u32) -> Result<(), HookError> {
        let hook = self.inner.vcpu_started(index);
        let tid = gettid();
        let missing = missing_from(&self.targets, tid);
        let status = fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        let cpus_allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        self.seen.lock().unwrap().push(Seen {
            index,
            tid,
            hook: hook.clone(),
            missing,
            cpus_allowed,
        });
        hook
    }

    fn vcpu_exited(&self, index: u32) {
        self.inner.vcpu_exited(index);
        self.exited.lock().unwrap().push(index);
    }
}

/// A dragonball VM set up as `StartMicroVm` sets it up before it starts the boot vCPUs
/// (guest memory, the vCPU manager with `hooks`, the interrupt controller), with `boot`
/// vCPUs and room for `max`.
fn new_vm(boot: u8, max: u8, hooks: Option<Arc<dyn VcpuHooks>>) -> Vm {
    let instance_info = Arc::new(RwLock::new(InstanceInfo::default()));
    let mut vm = Vm::new(None, instance_info, EpollManager::default()).unwrap();
    vm.set_vm_config(VmConfigInfo {
        vcpu_count: boot,
        max_vcpu_count: max,
        cpu_pm: "off".to_string(),
        mem_type: "shmem".to_string(),
        mem_file_path: "".to_string(),
        mem_size_mib: 64,
        serial_path: None,
        cpu_topology: CpuTopology {
            threads_per_core: 1,
            cores_per_die: max,
            dies_per_socket: 1,
            sockets: 1,
        },
        vpmu_feature: 0,
        pci_hotplug_enabled: false,
    });
    vm.init_guest_memory().unwrap();
    // runtime-rs: VmmInstance::run_vmm_server, on the Vmm's Vm, before StartMicroVm.
    if let Some(hooks) = hooks {
        vm.set_vcpu_hooks(hooks);
    }
    vm.init_vcpu_manager(vm.vm_as().unwrap().clone(), BpfProgram::default())
        .unwrap();
    vm.vcpu_manager()
        .unwrap()
        .set_reset_event_fd(EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .unwrap();
    vm.setup_interrupt_controller().unwrap();
    vm
}

/// An upcall channel for `vm`'s vCPU manager, on an in-process vsock backend (what the
/// guest's upcall server would answer is driven by the tests); the backend must outlive it.
#[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
fn connect_upcall(vm: &Vm) -> dbs_virtio_devices::vsock::backend::VsockInnerBackend {
    use dbs_upcall::{DevMgrService, UpcallClient};
    let backend = dbs_virtio_devices::vsock::backend::VsockInnerBackend::new().unwrap();
    let mut client = UpcallClient::new(
        backend.get_connector(),
        EpollManager::default(),
        DevMgrService {},
    )
    .unwrap();
    client.connect().unwrap();
    vm.vcpu_manager()
        .unwrap()
        .set_upcall_channel(Some(Arc::new(client)));
    backend
}

/// One sandbox and one dragonball VM, in runtime-rs' order: `Sandbox::new` (cgroups made,
/// this process moved), then the VM, with the hooks set through `Vm::set_vcpu_hooks`
/// before the vCPU manager exists. Dropping it stops the vCPUs and removes everything,
/// also when a test fails.
struct Fixture {
    layout: Layout,
    id: String,
    state_dir: PathBuf,
    sandbox: Option<Sandbox>,
    vm: Vm,
    probe: Arc<Probe>,
    home: String,
    foreign: Option<Foreign>,
    #[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
    _vsock: Option<dbs_virtio_devices::vsock::backend::VsockInnerBackend>,
}

impl Fixture {
    fn new(layout: Layout, pinning: bool, boot: u8, max: u8, sandbox_res: Option<&str>) -> Self {
        assert!(
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok(),
            "these tests need /dev/kvm (they run real KVM vCPU fds)"
        );
        *(EMULATE_RES.lock().unwrap()) = EmulationCase::Error(libc::EINTR);
        let id = unique(match layout {
            Layout::SandboxOnly => "only",
            Layout::Nested => "nested",
            Layout::Sibling => "sibling",
        });
        let state_dir = std::env::temp_dir().join(format!("{}-state", id));
        let home = fs::read_to_string("/proc/self/cgroup").unwrap();
        let config = runtime_config(layout, pinning);
        let opts = SandboxOptions::default()
            .state_dir(&state_dir)
            .sandbox_resources(sandbox_res.map(|r| from_json(r).unwrap()));
        let sandbox = Sandbox::new(&config, &id, &id, opts).unwrap();
        if std::env::var_os(SECCOMP_CHILD).is_some() {
            // The parent cleans up after a child that died (SIGSYS) before its teardown.
            println!("{} {} {}", SECCOMP_SANDBOX, id, state_dir.display());
            let _ = std::io::stdout().flush();
        }
        let targets: Vec<PathBuf> = if layout == Layout::Nested {
            sandbox.vcpus_paths().into_values().collect()
        } else {
            sandbox.paths().into_values().collect()
        };
        assert!(!targets.is_empty());
        for t in &targets {
            let rel = if layout == Layout::Nested {
                format!("{}/vcpus", id)
            } else {
                id.clone()
            };
            assert!(
                t.ends_with(&rel),
                "{} is not the cgroup {}",
                t.display(),
                rel
            );
        }
        let probe = Arc::new(Probe {
            inner: sandbox.hooks_for_boot(u32::from(boot)),
            targets,
            seen: Mutex::new(Vec::new()),
            exited: Mutex::new(Vec::new()),
        });

        let vm = new_vm(boot, max, Some(probe.clone()));
        Fixture {
            layout,
            id,
            state_dir,
            sandbox: Some(sandbox),
            vm,
            probe,
            home,
            foreign: None,
            #[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
            _vsock: None,
        }
    }

    fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().unwrap()
    }

    /// dragonball's boot-vCPU start (what `StartMicroVm` runs after the VM is set up).
    fn start_boot_vcpus(&self) -> Result<(), VcpuManagerError> {
        let mut mgr = self.vm.vcpu_manager().unwrap();
        mgr.create_boot_vcpus(TimestampUs::default(), GuestAddress(0))
            .unwrap();
        mgr.start_boot_vcpus(BpfProgram::default())
    }

    fn tids(&self) -> Vec<(u8, u32)> {
        self.vm.shared_info().read().unwrap().tids.clone()
    }

    fn seen(&self, index: u32) -> Vec<Seen> {
        self.probe
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.index == index)
            .cloned()
            .collect()
    }

    /// Every vCPU in `indexes` was in its planned cgroups when its hook returned (and so
    /// before dragonball resumed it), and still is; the VMM's other threads are where
    /// the layout puts the process.
    fn assert_placed(&self, indexes: &[u32]) {
        let tids = self.tids();
        for &i in indexes {
            let seen = self.seen(i);
            let last = seen
                .last()
                .unwrap_or_else(|| panic!("vCPU {} never called its hook", i));
            assert!(last.hook.is_ok(), "vCPU {}: {:?}", i, last.hook);
            assert!(
                last.missing.is_empty(),
                "vCPU {} (tid {}) was not in {:?} when its hook returned",
                i,
                last.tid,
                last.missing
            );
            // dragonball published the same thread, and it is still there.
            assert!(
                tids.contains(&(i as u8, last.tid as u32)),
                "vCPU {} tid {} not in dragonball's tids {:?}",
                i,
                last.tid,
                tids
            );
            for t in &self.probe.targets {
                assert!(lists(t, last.tid), "vCPU {} left {}", i, t.display());
            }
        }
        let me = gettid();
        let want = match self.layout {
            Layout::Sibling => format!("/kata_overhead/{}", self.id),
            _ => format!("/{}", self.id),
        };
        for ctrl in ["cpu", "memory", "pids"] {
            assert_eq!(
                proc_cgroup(me, ctrl).as_deref(),
                Some(want.as_str()),
                "the VMM thread's {} cgroup",
                ctrl
            );
        }
    }

    /// Moves the thread that spawns vCPUs (this one) into a cgroup of the test's own in the
    /// cpu hierarchy: vCPU threads are then born outside the sandbox, and host-cgroups
    /// refuses them.
    fn spawn_elsewhere(&mut self) {
        let cpu_root = Path::new("/sys/fs/cgroup/cpu");
        assert!(
            cpu_root.join("tasks").exists(),
            "this test needs a cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu"
        );
        let dir = cpu_root.join(format!("{}-elsewhere", self.id));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("tasks"), "0").unwrap();
        self.foreign = Some(Foreign { dir });
    }

    /// Moves this thread back into the sandbox (where the process is) and removes the
    /// test's own cgroup.
    fn spawn_home(&mut self) {
        if let Some(f) = self.foreign.take() {
            let back = self.sandbox().paths()["cpu"].clone();
            let back = if self.layout == Layout::Sibling {
                Path::new("/sys/fs/cgroup/cpu")
                    .join("kata_overhead")
                    .join(&self.id)
            } else {
                back
            };
            fs::write(back.join("tasks"), "0").unwrap();
            drop(f);
        }
    }

    #[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
    fn connect_upcall(&mut self) {
        self._vsock = Some(connect_upcall(&self.vm));
    }

    /// dragonball's `resize_vcpu`, completed as the guest's answer completes it: the
    /// vCPU-state event, handled by the manager's own epoll handler.
    #[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
    fn resize(&self, count: u8) -> Result<(), VcpuResizeError> {
        {
            let mut mgr = self.vm.vcpu_manager().unwrap();
            mgr.resize_vcpu(count, None)?;
            if mgr.get_vcpus_action() == VcpuAction::None {
                return Ok(());
            }
            mgr.vcpu_state_sender
                .send(VcpuStateEvent::Hotplug((VcpuResizeResult::Success, 0)))
                .unwrap();
            mgr.vcpu_state_event.write(1).unwrap();
        }
        wait_until("the resize is complete", || {
            let _ = self.vm.epoll_manager().handle_events(10);
            self.vm.vcpu_manager().unwrap().get_vcpus_action() == VcpuAction::None
        });
        Ok(())
    }

    /// Teardown as runtime-rs stops a sandbox: dragonball's vCPUs stopped inside
    /// `Sandbox::teardown`, then the cgroups removed; checked on cgroupfs.
    fn teardown(&mut self) {
        self.spawn_home();
        let sandbox = self.sandbox.take().unwrap();
        let mut dirs: Vec<PathBuf> = sandbox.paths().into_values().collect();
        dirs.extend(sandbox.vcpus_paths().into_values());
        let state = sandbox.state_file();
        let vm = &self.vm;
        let done = sandbox.teardown(|| vm.vcpu_manager().unwrap().exit_all_vcpus());
        assert!(done.vmm.is_ok(), "{:?}", done.vmm);
        assert!(done.report.errors.is_empty(), "{:?}", done.report);
        assert!(vcpu_threads().is_empty(), "{:?}", vcpu_threads());
        for d in dirs {
            assert!(!d.exists(), "{} is left", d.display());
        }
        if let Some(s) = state {
            assert!(!s.exists(), "{} is left", s.display());
        }
        assert_eq!(
            fs::read_to_string("/proc/self/cgroup").unwrap(),
            self.home,
            "this process is not back where it was"
        );
    }
}

/// A cgroup of the test's own in the cpu hierarchy, removed on drop (after this thread
/// has left it).
struct Foreign {
    dir: PathBuf,
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(f) = self.foreign.take() {
            let _ = fs::write("/sys/fs/cgroup/cpu/tasks", "0");
            drop(f);
        }
        if let Some(sb) = self.sandbox.take() {
            let vm = &self.vm;
            let _ = sb.teardown(|| vm.vcpu_manager().map(|mut m| m.exit_all_vcpus()));
        }
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

/// Boot vCPUs placed before resume, then (hotplug features) one vCPU hotplugged and
/// unplugged through `resize_vcpu`, a container update, stats, and the teardown.
fn boot_hotplug_teardown(layout: Layout) {
    // host-cgroups' `metrics` feature counts in dragonball's own metric type: with the
    // workspace's `[patch.crates-io] dbs-utils` both are this dbs_utils (a second copy
    // would be a different type and this would not compile).
    let created: &dbs_utils::metric::SharedIncMetric =
        &host_cgroups::metrics::METRICS.sandboxes_created;
    let before = dbs_utils::metric::IncMetric::count(created);
    let mut fx = Fixture::new(layout, false, 2, 3, None);
    assert_eq!(dbs_utils::metric::IncMetric::count(created), before + 1);
    fx.start_boot_vcpus().unwrap();
    fx.assert_placed(&[0, 1]);
    assert_eq!(vcpu_threads().len(), 2);

    #[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
    {
        fx.connect_upcall();
        fx.resize(3).unwrap();
        fx.assert_placed(&[0, 1, 2]);
        let hot_tid = fx.seen(2).last().unwrap().tid;
        fx.resize(2).unwrap();
        wait_until("the unplugged vCPU's thread is gone", || {
            !vcpu_threads().contains_key(&hot_tid)
        });
        assert!(fx.tids().iter().all(|(i, _)| *i != 2), "{:?}", fx.tids());
        assert!(fx.probe.exited.lock().unwrap().contains(&2));
        fx.assert_placed(&[0, 1]);
    }

    let update = fx
        .sandbox()
        .update_container("c0", &from_json(r#"{"cpu":{"shares":512}}"#).unwrap())
        .unwrap();
    if layout == Layout::Nested {
        assert!(update.not_applied.is_empty(), "{:?}", update);
        let cpu = &fx.sandbox().vcpus_paths()["cpu"];
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.shares")).unwrap().trim(),
            "512"
        );
    }
    let stats = fx.sandbox().stats().unwrap().unwrap();
    assert!(stats.cpu_usage_ns > 0, "{:?}", stats);
    fx.teardown();
}

#[test]
#[serial(emulate_res)]
fn host_cgroups_sandbox_only_boot_hotplug_teardown() {
    boot_hotplug_teardown(Layout::SandboxOnly);
}

#[test]
#[serial(emulate_res)]
fn host_cgroups_nested_boot_hotplug_teardown() {
    boot_hotplug_teardown(Layout::Nested);
}

#[test]
#[serial(emulate_res)]
fn host_cgroups_sibling_boot_hotplug_teardown() {
    boot_hotplug_teardown(Layout::Sibling);
}

/// With `enable_vcpus_pinning` and as many vCPUs as CPUs in the sandbox's cpuset, each
/// vCPU has a single, distinct CPU when its hook returns (read from `/proc`).
#[test]
#[serial(emulate_res)]
fn host_cgroups_pinning_one_cpu_per_vcpu() {
    let cpus = fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.effective_cpus")
        .or_else(|_| fs::read_to_string("/sys/fs/cgroup/cpuset/cpuset.cpus"))
        .unwrap();
    let cpus = cpus.trim().to_string();
    let n = host_cgroups::cpulist::CpuList::parse("cpus", Box::leak(cpus.clone().into_boxed_str()))
        .unwrap()
        .len() as u8;
    let res = format!(r#"{{"cpu":{{"cpus":"{}"}}}}"#, cpus);
    let mut fx = Fixture::new(Layout::Nested, true, n, n, Some(&res));
    fx.start_boot_vcpus().unwrap();
    fx.assert_placed(&(0..u32::from(n)).collect::<Vec<_>>());
    let mut pinned = Vec::new();
    for i in 0..u32::from(n) {
        let s = fx.seen(i).pop().unwrap();
        assert!(
            !s.cpus_allowed.contains(',') && !s.cpus_allowed.contains('-'),
            "vCPU {} may run on {} when its hook returned",
            i,
            s.cpus_allowed
        );
        let now = fs::read_to_string(format!("/proc/self/task/{}/status", s.tid)).unwrap();
        assert!(now.contains(&format!("Cpus_allowed_list:\t{}\n", s.cpus_allowed)));
        pinned.push(s.cpus_allowed);
    }
    pinned.sort();
    pinned.dedup();
    assert_eq!(pinned.len(), n as usize, "two vCPUs share a CPU");
    fx.teardown();
}

/// Boot vCPUs born outside the sandbox are refused by host-cgroups: dragonball's start
/// fails with the hook's reason, with no hang at the barrier, and nothing runs.
#[test]
#[serial(emulate_res)]
fn host_cgroups_refused_boot_fails_without_hang() {
    let mut fx = Fixture::new(Layout::SandboxOnly, false, 2, 2, None);
    fx.spawn_elsewhere();
    let t0 = Instant::now();
    let err = fx.start_boot_vcpus().unwrap_err();
    assert!(t0.elapsed() < GENEROUS);
    match &err {
        VcpuManagerError::Vcpu(VcpuError::Hook(HookError::Refused { reason, .. })) => {
            assert!(
                matches!(reason, PlacementError::WrongCgroup { .. }),
                "{:?}",
                reason
            )
        }
        other => panic!("not the hook's refusal: {:?}", other),
    }
    assert!(fx.tids().is_empty(), "{:?}", fx.tids());
    fx.vm.vcpu_manager().unwrap().exit_all_vcpus().unwrap();
    wait_until("no vCPU thread is left", || vcpu_threads().is_empty());
    assert!(fx.probe.exited.lock().unwrap().is_empty());
    fx.teardown();
}

/// A hotplugged vCPU that host-cgroups refuses is rolled back by dragonball; the running
/// vCPUs keep their tids (and stay placed).
#[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
#[test]
#[serial(emulate_res)]
fn host_cgroups_refused_hotplug_rolls_back_keeping_tids() {
    // Sandbox-only: a vCPU must be born where it belongs (the nested and sibling layouts
    // move each vCPU themselves, wherever it was born).
    let mut fx = Fixture::new(Layout::SandboxOnly, false, 2, 3, None);
    fx.start_boot_vcpus().unwrap();
    fx.connect_upcall();
    let before = fx.tids();
    let running = vcpu_threads();
    fx.spawn_elsewhere();
    let err = fx.resize(3).unwrap_err();
    assert!(
        matches!(
            err,
            VcpuResizeError::Vcpu(VcpuManagerError::Vcpu(VcpuError::Hook(_)))
        ),
        "{:?}",
        err
    );
    fx.spawn_home();
    assert_eq!(fx.tids(), before);
    assert_eq!(fx.vm.vcpu_manager().unwrap().present_vcpus(), vec![0, 1]);
    wait_until("only the running vCPUs are left", || {
        vcpu_threads() == running
    });
    fx.assert_placed(&[0, 1]);
    fx.teardown();
}

// --- runtime-rs' process-wide seccomp allow-list -----------------------------------------
//
// The list is installed on every thread (TSYNC) with action Trap, as dragonball does with
// runtime-rs' `ALL_THREADS` filter at `StartMicroVm`; it cannot be removed, so each flow
// runs in a child: this test binary again, running only the named test with
// `HCG_DB_SECCOMP_CHILD` set. The child prints a marker after the flow and `_exit`s.

const SECCOMP_CHILD: &str = "HCG_DB_SECCOMP_CHILD";
const SECCOMP_DONE: &str = "host-cgroups seccomp flow done";
const SECCOMP_SANDBOX: &str = "host-cgroups seccomp child sandbox:";

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS; si_syscall sits right after
    // si_call_addr in its _sigsys member (offset 8 of the fields, after three ints).
    let nr = unsafe {
        let base = (info as *const u8).add(16);
        *(base.add(8) as *const libc::c_int)
    };
    let msg = format!("SIGSYS: syscall {} is not in runtime-rs' allow-list\n", nr);
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by the filter.
    unsafe {
        libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::_exit(97);
    }
}

fn install_runtime_rs_filter() {
    // SAFETY: a handler that only writes and exits.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()), 0);
    }
    let filter = upstream_seccomp::get_seccomp_filter(crate::ALL_THREADS);
    assert!(!filter.is_empty());
    seccompiler::apply_filter_all_threads(&filter).unwrap();
}

/// In the child: the flow of `layout` (nested or sibling: the ones with cgroup writes in
/// the hooks) under the filter.
fn seccomp_child_flow(layout: Layout) {
    let mut fx = Fixture::new(layout, true, 2, 3, Some(r#"{"cpu":{"cpus":"0-1"}}"#));
    install_runtime_rs_filter();
    fx.start_boot_vcpus().unwrap();
    fx.assert_placed(&[0, 1]);
    #[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
    {
        fx.connect_upcall();
        fx.resize(3).unwrap();
        fx.assert_placed(&[0, 1, 2]);
        fx.resize(2).unwrap();
    }
    fx.sandbox()
        .update_container(
            "c0",
            &from_json(r#"{"cpu":{"quota":50000,"period":100000}}"#).unwrap(),
        )
        .unwrap();
    fx.sandbox().remove_container("c0").unwrap();
    let stats = fx.sandbox().stats().unwrap().unwrap();
    assert!(stats.cpu_usage_ns > 0);
    fx.teardown();
    drop(fx);
    println!("{}", SECCOMP_DONE);
    let _ = std::io::stdout().flush();
    // SAFETY: ends the child here; the test harness's own exit path is not the subject.
    unsafe { libc::_exit(0) };
}

fn seccomp_parent(test: &str, layout: Layout) {
    if std::env::var_os(SECCOMP_CHILD).is_some() {
        seccomp_child_flow(layout);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(SECCOMP_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What a child that died before its teardown left, removed from its state file.
    for l in stdout.lines() {
        if let Some(rest) = l.strip_prefix(SECCOMP_SANDBOX) {
            let mut it = rest.split_whitespace();
            if let (Some(id), Some(dir)) = (it.next(), it.next()) {
                let dir = Path::new(dir);
                if dir.join(format!("{}.json", id)).exists() {
                    let r = Sandbox::cleanup(dir, id);
                    eprintln!("cleanup after the child: {:?}", r.map(|r| r.removed));
                }
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
    assert!(
        out.status.success() && stdout.contains(SECCOMP_DONE),
        "the flow under runtime-rs' allow-list failed ({:?}):\n{}\n{}",
        out.status,
        stdout,
        stderr
    );
}

#[test]
#[serial(emulate_res)]
fn host_cgroups_nested_under_runtime_rs_seccomp() {
    seccomp_parent(
        "vcpu::vcpu_manager::host_cgroups_tests::host_cgroups_nested_under_runtime_rs_seccomp",
        Layout::Nested,
    );
}

#[test]
#[serial(emulate_res)]
fn host_cgroups_sibling_under_runtime_rs_seccomp() {
    seccomp_parent(
        "vcpu::vcpu_manager::host_cgroups_tests::host_cgroups_sibling_under_runtime_rs_seccomp",
        Layout::Sibling,
    );
}

// --- The cost of the hooks inside dragonball: a benchmark, not a test --------------------
//
// `integrations/dragonball/run --bench` runs it in a release build. For each vCPU count it
// times dragonball's `start_boot_vcpus` (the part of `StartMicroVm` the hooks run in) and
// one `resize_vcpu` adding a vCPU, without hooks and with each layout, the modes
// interleaved round by round. The mocked `KVM_RUN` answers `Hlt`, so resumed vCPUs leave
// their run loop and wait quietly for `Exit`: nothing spins beside the measurement.

#[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
fn bench_once(n: u8, mode: Option<Layout>) -> (Duration, Duration) {
    let id = unique("bench");
    let state_dir = std::env::temp_dir().join(format!("{}-state", id));
    let sandbox = mode.map(|l| {
        let opts = SandboxOptions::default().state_dir(&state_dir);
        Sandbox::new(&runtime_config(l, false), &id, &id, opts).unwrap()
    });
    let hooks = sandbox.as_ref().map(|s| s.hooks_for_boot(u32::from(n)));
    let vm = new_vm(n, n + 1, hooks);
    let backend = connect_upcall(&vm);
    let (start, resize) = {
        let mut mgr = vm.vcpu_manager().unwrap();
        mgr.create_boot_vcpus(TimestampUs::default(), GuestAddress(0))
            .unwrap();
        let t = Instant::now();
        mgr.start_boot_vcpus(BpfProgram::default()).unwrap();
        let start = t.elapsed();
        let t = Instant::now();
        mgr.resize_vcpu(n + 1, None).unwrap();
        (start, t.elapsed())
    };
    match sandbox {
        Some(sb) => {
            let done = sb.teardown(|| vm.vcpu_manager().unwrap().exit_all_vcpus());
            assert!(done.report.errors.is_empty(), "{:?}", done.report);
        }
        None => vm.vcpu_manager().unwrap().exit_all_vcpus().unwrap(),
    }
    let _ = fs::remove_dir_all(&state_dir);
    drop(backend);
    (start, resize)
}

#[cfg(all(feature = "hotplug", feature = "dbs-upcall"))]
#[test]
#[ignore = "a benchmark: integrations/dragonball/run --bench"]
#[serial(emulate_res)]
fn host_cgroups_bench_start_and_resize() {
    let sizes: Vec<u8> = std::env::var("HCG_BENCH_VCPUS")
        .unwrap_or_else(|_| "1,2,8,32".into())
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let rounds: usize = std::env::var("HCG_BENCH_ROUNDS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(15);
    *(EMULATE_RES.lock().unwrap()) = EmulationCase::Hlt;
    let modes = [
        ("no hooks", None),
        ("sandbox-only", Some(Layout::SandboxOnly)),
        ("nested", Some(Layout::Nested)),
        ("sibling", Some(Layout::Sibling)),
    ];
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e6
    };
    println!(
        "{:>5} {:>13} {:>14} {:>7} {:>15} {:>7}   ({} rounds, median)",
        "vCPUs", "mode", "start µs", "ratio", "resize µs", "ratio", rounds
    );
    for &n in &sizes {
        // One warm-up of each mode (first cgroup writes after idle, page faults).
        for (_, m) in &modes {
            bench_once(n, *m);
        }
        let mut starts = vec![Vec::new(); modes.len()];
        let mut resizes = vec![Vec::new(); modes.len()];
        for r in 0..rounds {
            for k in 0..modes.len() {
                let k = (k + r) % modes.len();
                let (s, z) = bench_once(n, modes[k].1);
                starts[k].push(s);
                resizes[k].push(z);
            }
        }
        let base_s = median(&mut starts[0].clone());
        let base_z = median(&mut resizes[0].clone());
        for (k, (name, _)) in modes.iter().enumerate() {
            let s = median(&mut starts[k]);
            let z = median(&mut resizes[k]);
            println!(
                "{:>5} {:>13} {:>14.0} {:>6.3}x {:>15.0} {:>6.3}x",
                n,
                name,
                s,
                s / base_s,
                z,
                z / base_z
            );
        }
    }
}
