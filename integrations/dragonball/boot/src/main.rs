//! `hcg-boot`: host-cgroups in a real dragonball build (no `cfg(test)`: `KVM_RUN` is real).
//!
//! `hcg-boot boot VMLINUX INITRD` boots a Linux guest through dragonball's API in
//! runtime-rs' order: `Sandbox::new` (cgroups made, this process moved into them) before
//! `Vmm::new`; the hooks through `Vm::set_vcpu_hooks` (runtime-rs: in
//! `VmmInstance::run_vmm_server`); runtime-rs' process-wide seccomp allow-list handed to
//! `Vmm::new` under `ALL_THREADS`, which dragonball installs at `StartMicroVm`; then
//! `SetVmConfiguration`, `ConfigureBootSource` and `StartMicroVm`. It checks, from the
//! kernel's view, that every `db_vcpu<N>` was in the nested layout's `vcpus` child when its
//! hook returned and is when `StartMicroVm` replies; that the guest console prints the
//! kernel banner; that the `vcpus` child holds at least 95% of the sandbox's CPU time
//! while the guest runs; and that the teardown leaves nothing. Where `/dev/kvm` is a
//! hardware hypervisor the guest must also reach `/init` and print `nproc` = 2; on
//! `kvm_pvm` (a software nested hypervisor) the run says which stage was reached.
//!
//! `hcg-boot refused-boot VMLINUX INITRD` starts the same VM with hooks that refuse vCPU 1:
//! `StartMicroVm` must fail with the hook's error, and `ShutdownMicroVm` must leave no
//! vCPU thread behind (dragonball's `Vmm::stop` after a failed boot).
//!
//! Exit codes: 0 passed, 1 failed, 2 bad arguments.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::os::unix::io::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};
use dragonball::api::v1::{
    BootSourceConfig, InstanceInfo, VmmAction, VmmData, VmmRequest, VmmResponse, VmmService,
};
use dragonball::vm::{CpuTopology, VmConfigInfo};
use dragonball::{Vmm, ALL_THREADS};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::sandbox::{Sandbox, SandboxOptions};
use vcpu_hooks::{HookError, VcpuHooks};
use vmm_sys_util::eventfd::EventFd;

include!("common.rs");

/// The whole boot is bounded by this.
const BOOT_BOUND: Duration = Duration::from_secs(90);

/// dragonball's own warnings and errors (it logs through `log`), on stderr: they say why a
/// guest stopped (`KVM_EXIT_INTERNAL_ERROR`, ...).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("  dragonball {}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() {
    let _ = log::set_logger(&StderrLog).map(|()| log::set_max_level(log::LevelFilter::Warn));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["boot", kernel, initrd] => match boot(Path::new(kernel), Path::new(initrd)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("boot: FAILED: {e}");
                1
            }
        },
        ["refused-boot", kernel, initrd] => {
            match refused_boot(Path::new(kernel), Path::new(initrd)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("refused-boot: FAILED: {e}");
                    1
                }
            }
        }
        _ => {
            eprintln!("usage: hcg-boot boot|refused-boot VMLINUX INITRD");
            2
        }
    };
    std::process::exit(code);
}

/// The shipped Kata TOML (`HCG_KATA_TOML`) with `[runtime]` changed for the layout.
pub fn runtime_config(
    sandbox_cgroup_only: bool,
    layout: Option<&str>,
) -> Result<RuntimeConfig, String> {
    let path = PathBuf::from(
        std::env::var("HCG_KATA_TOML").map_err(|_| "HCG_KATA_TOML is not set".to_string())?,
    );
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let extra = layout
        .map(|l| format!("vcpu_cgroup_layout = \"{l}\"\n"))
        .unwrap_or_default();
    let text = text
        .replace(
            "\nsandbox_cgroup_only = true\n",
            &format!("\nsandbox_cgroup_only = {sandbox_cgroup_only}\n"),
        )
        .replace("\n[runtime]\n", &format!("\n[runtime]\n{extra}"));
    RuntimeConfig::parse(&text, &path).map_err(|e| e.to_string())
}

/// The sandbox's hooks as dragonball receives them; after each `vcpu_started` the vCPU
/// thread reads cgroupfs itself (before dragonball's barrier, so before `Resume`).
pub struct Probe {
    pub inner: Arc<dyn VcpuHooks>,
    pub targets: Vec<PathBuf>,
    /// (index, tid, hook outcome, targets that did not list the thread).
    pub seen: Mutex<Vec<(u32, i32, Result<(), HookError>, Vec<PathBuf>)>>,
}

impl VcpuHooks for Probe {
    fn vcpu_started(&self, index: u32) -> Result<(), HookError> {
        let r = self.inner.vcpu_started(index);
        let tid = vcpu_hooks::gettid();
        let missing = missing_from(&self.targets, tid);
        self.seen
            .lock()
            .unwrap()
            .push((index, tid, r.clone(), missing));
        r
    }
    fn vcpu_exited(&self, index: u32) {
        self.inner.vcpu_exited(index);
    }
}

/// dragonball's API as runtime-rs' `VmmInstance` drives it: a request on the channel, the
/// eventfd kicked, the answer awaited.
pub struct Api {
    to_vmm: Sender<VmmRequest>,
    from_vmm: Receiver<VmmResponse>,
    kick: EventFd,
    pub thread: Option<thread::JoinHandle<i32>>,
}

impl Api {
    /// `Vmm::new` with runtime-rs' seccomp map, `set_vcpu_hooks` on its VM, and the event
    /// loop on a `vmm_master` thread.
    pub fn start(hooks: Option<Arc<dyn VcpuHooks>>, seccomp: bool) -> Result<Api, String> {
        let shared = Arc::new(RwLock::new(InstanceInfo::new(
            "hcg".into(),
            "hcg".into(),
            None,
        )));
        let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
        let (to_vmm, from_runtime) = unbounded();
        let (to_runtime, from_vmm) = unbounded();
        let mut filters = HashMap::new();
        if seccomp {
            filters.insert(
                ALL_THREADS.to_string(),
                upstream_seccomp::get_seccomp_filter(ALL_THREADS),
            );
        }
        let kvm = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map_err(|e| format!("/dev/kvm: {e}"))?;
        let mut vmm = Vmm::new(
            shared,
            kick.try_clone().map_err(|e| e.to_string())?,
            filters,
            Some(kvm.into_raw_fd()),
        )
        .map_err(|e| format!("Vmm::new: {e:?}"))?;
        if let Some(h) = hooks {
            vmm.get_vm_mut().ok_or("no VM")?.set_vcpu_hooks(h);
        }
        let service = VmmService::new(from_runtime, to_runtime);
        let thread = thread::Builder::new()
            .name("vmm_master".into())
            .spawn(move || Vmm::run_vmm_event_loop(Arc::new(Mutex::new(vmm)), service))
            .map_err(|e| e.to_string())?;
        Ok(Api {
            to_vmm,
            from_vmm,
            kick,
            thread: Some(thread),
        })
    }

    pub fn request(&self, action: VmmAction) -> Result<VmmData, String> {
        let what = format!("{action:?}");
        let what = what.split('(').next().unwrap_or("").to_string();
        self.to_vmm
            .send(Box::new(action))
            .map_err(|e| format!("{what}: {e}"))?;
        self.kick.write(1).map_err(|e| format!("{what}: {e}"))?;
        match self.from_vmm.recv_timeout(BOOT_BOUND) {
            Ok(r) => (*r).map_err(|e| format!("{what}: {e:?}")),
            Err(e) => Err(format!("{what}: no answer: {e}")),
        }
    }

    /// `ShutdownMicroVm` (unless the VMM loop already ended) and the join of `vmm_master`,
    /// which returns once every vCPU thread was joined.
    pub fn stop(&mut self) -> Result<i32, String> {
        let t = self.thread.take().ok_or("already stopped")?;
        if !t.is_finished() {
            let _ = self.request(VmmAction::ShutdownMicroVm);
        }
        t.join().map_err(|_| "vmm_master panicked".to_string())
    }
}

pub fn vm_config(vcpus: u8, mem_mib: usize, serial: Option<String>) -> VmConfigInfo {
    VmConfigInfo {
        vcpu_count: vcpus,
        max_vcpu_count: vcpus,
        cpu_pm: "off".into(),
        mem_type: "shmem".into(),
        mem_file_path: "".into(),
        mem_size_mib: mem_mib,
        serial_path: serial,
        cpu_topology: CpuTopology {
            threads_per_core: 1,
            cores_per_die: vcpus,
            dies_per_socket: 1,
            sockets: 1,
        },
        vpmu_feature: 0,
        pci_hotplug_enabled: false,
    }
}

/// cpuacct.usage (ns) of a cgroup v1 directory of the cpu,cpuacct hierarchy, or the
/// `usage_usec` of cgroup v2's cpu.stat (in ns).
fn cpu_usage_ns(dir: &Path) -> Option<u64> {
    if let Ok(s) = fs::read_to_string(dir.join("cpuacct.usage")) {
        return s.trim().parse().ok();
    }
    let s = fs::read_to_string(dir.join("cpu.stat")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us * 1000)
}

fn boot(kernel: &Path, initrd: &Path) -> Result<(), String> {
    for f in [kernel, initrd] {
        if !f.is_file() {
            return Err(format!("{} is not a file", f.display()));
        }
    }
    let id = unique("boot");
    let state_dir = std::env::temp_dir().join(format!("{id}-state"));
    let config = runtime_config(false, Some("nested"))?;
    let sandbox = Sandbox::new(
        &config,
        &id,
        &id,
        SandboxOptions::default().state_dir(&state_dir),
    )
    .map_err(|e| format!("Sandbox::new: {e}"))?;
    let result = boot_in(&sandbox, kernel, initrd, &id);
    // The teardown runs whatever happened; `boot_in` stopped the VMM (or it never ran).
    let mut dirs: Vec<PathBuf> = sandbox.paths().into_values().collect();
    dirs.extend(sandbox.vcpus_paths().into_values());
    let state = sandbox.state_file();
    let done = sandbox.teardown(|| ());
    let _ = fs::remove_dir_all(&state_dir);
    let (stage, mut api) = result?;
    let _ = api.take();
    if !done.report.errors.is_empty() {
        return Err(format!("teardown: {:?}", done.report.errors));
    }
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    if !left.is_empty() || state.is_some_and(|s| s.exists()) {
        return Err(format!("left after teardown: {left:?}"));
    }
    if !vcpu_threads().is_empty() {
        return Err(format!("vCPU threads left: {:?}", vcpu_threads()));
    }
    println!("boot: teardown left nothing (cgroups, state, vCPU threads)");
    println!("boot: passed; stage reached: {stage}");
    Ok(())
}

/// The boot itself; returns the stage reached. The VMM is stopped before it returns.
fn boot_in(
    sandbox: &Sandbox,
    kernel: &Path,
    initrd: &Path,
    id: &str,
) -> Result<(String, Option<Api>), String> {
    let targets: Vec<PathBuf> = sandbox.vcpus_paths().into_values().collect();
    if targets.is_empty() {
        return Err("the nested layout has no vcpus child".into());
    }
    let probe = Arc::new(Probe {
        inner: sandbox.hooks_for_boot(2),
        targets: targets.clone(),
        seen: Mutex::new(Vec::new()),
    });
    let mut api = Api::start(Some(probe.clone()), true)?;
    let sock = std::env::temp_dir().join(format!("{id}.console"));
    let run = (|| -> Result<String, String> {
        api.request(VmmAction::SetVmConfiguration(vm_config(
            2,
            256,
            Some(sock.display().to_string()),
        )))?;
        api.request(VmmAction::ConfigureBootSource(BootSourceConfig {
            kernel_path: kernel.display().to_string(),
            initrd_path: Some(initrd.display().to_string()),
            boot_args: Some(
                "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 nomodules rdinit=/init \
                 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
                    .into(),
            ),
            firmware_path: None,
        }))?;
        let t0 = Instant::now();
        api.request(VmmAction::StartMicroVm)?;
        let started = t0.elapsed();
        // When StartMicroVm replies, dragonball has resumed every boot vCPU.
        let threads = vcpu_threads();
        let seen = probe.seen.lock().unwrap().clone();
        if seen.len() != 2 || threads.len() != 2 {
            return Err(format!("hooks seen {seen:?}, threads {threads:?}"));
        }
        for (index, tid, r, missing) in &seen {
            if r.is_err() || !missing.is_empty() {
                return Err(format!(
                    "vCPU {index} (tid {tid}): hook {r:?}, not in {missing:?} when it returned"
                ));
            }
            if !threads.contains_key(tid) {
                return Err(format!("vCPU {index} tid {tid} is not a db_vcpu thread"));
            }
        }
        for tid in threads.keys() {
            for t in &targets {
                if !lists(t, *tid) {
                    return Err(format!("db_vcpu tid {tid} is not in {}", t.display()));
                }
            }
        }
        println!(
            "boot: StartMicroVm replied after {} ms; db_vcpu0 and db_vcpu1 were in {} when their hooks returned, and are",
            started.as_millis(),
            targets[0].display()
        );

        // The console, from dragonball's socket.
        let console = Arc::new(Mutex::new(String::new()));
        {
            let console = console.clone();
            let mut stream = UnixStream::connect(&sock).map_err(|e| format!("console: {e}"))?;
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    console
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let cpu_dir = |m: &BTreeMap<host_cgroups::HierarchyKey, PathBuf>| {
            m.get("cpuacct").or(m.get("cpu")).or(m.get("unified")).cloned()
        };
        let sb_dir = cpu_dir(&sandbox.paths()).ok_or("no cpu cgroup for the sandbox")?;
        let vc_dir = cpu_dir(&sandbox.vcpus_paths()).ok_or("no cpu cgroup for the vcpus child")?;
        let (sb0, vc0) = (cpu_usage_ns(&sb_dir), cpu_usage_ns(&vc_dir));
        let pvm = Path::new("/sys/module/kvm_pvm").exists();
        let mut stage = "started".to_string();
        let mut shown = 0;
        while t0.elapsed() < BOOT_BOUND {
            let text = console.lock().unwrap().clone();
            for line in text[shown..].lines() {
                println!("  guest| {line}");
            }
            shown = text.len();
            if text.contains("Linux version") && stage == "started" {
                stage = "kernel banner".into();
            }
            if let Some(l) = text.lines().find(|l| l.starts_with("HCG-INIT nproc=")) {
                stage = format!("/init ({l})");
                break;
            }
            if api.thread.as_ref().is_some_and(|t| t.is_finished()) {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        let (sb1, vc1) = (cpu_usage_ns(&sb_dir), cpu_usage_ns(&vc_dir));
        let vmm_ended = api.thread.as_ref().is_some_and(|t| t.is_finished());
        let code = api.stop()?;
        println!(
            "boot: the VMM {} (exit code {code}) after {} s",
            if vmm_ended {
                "ended by itself"
            } else {
                "was stopped"
            },
            t0.elapsed().as_secs()
        );
        if let (Some(s0), Some(s1), Some(v0), Some(v1)) = (sb0, sb1, vc0, vc1) {
            let share = (v1 - v0) as f64 / (s1 - s0).max(1) as f64;
            println!(
                "boot: CPU while the guest ran: sandbox {} ms, vcpus child {} ms ({:.1}%)",
                (s1 - s0) / 1_000_000,
                (v1 - v0) / 1_000_000,
                share * 100.0
            );
            if share < 0.95 {
                return Err(format!(
                    "the vcpus child held {:.1}% of the sandbox's CPU time, not >= 95%",
                    share * 100.0
                ));
            }
        } else {
            return Err("CPU usage of the sandbox or vcpus cgroup could not be read".into());
        }
        if stage == "started" {
            return Err("the guest printed no kernel banner".into());
        }
        if !pvm && !stage.contains("nproc=2") {
            return Err(format!(
                "a hardware hypervisor: the guest must reach /init with nproc=2, reached {stage}"
            ));
        }
        if pvm && !stage.starts_with("/init") {
            println!(
                "boot: /dev/kvm is kvm_pvm (software nested): the guest stops before /init here"
            );
        }
        Ok(stage)
    })();
    if api.thread.is_some() {
        let _ = api.stop();
    }
    let _ = fs::remove_file(&sock);
    run.map(|s| (s, None))
}

/// Hooks that refuse one vCPU index and let the others start.
struct RefuseOne(u32);

impl VcpuHooks for RefuseOne {
    fn vcpu_started(&self, index: u32) -> Result<(), HookError> {
        if index == self.0 {
            return Err(HookError::Disconnected {
                index,
                tid: vcpu_hooks::gettid(),
            });
        }
        Ok(())
    }
    fn vcpu_exited(&self, _index: u32) {}
}

fn refused_boot(kernel: &Path, initrd: &Path) -> Result<(), String> {
    let mut api = Api::start(Some(Arc::new(RefuseOne(1))), true)?;
    let run = (|| -> Result<(), String> {
        api.request(VmmAction::SetVmConfiguration(vm_config(2, 256, None)))?;
        api.request(VmmAction::ConfigureBootSource(BootSourceConfig {
            kernel_path: kernel.display().to_string(),
            initrd_path: Some(initrd.display().to_string()),
            boot_args: Some("console=ttyS0 panic=-1".into()),
            firmware_path: None,
        }))?;
        match api.request(VmmAction::StartMicroVm) {
            Ok(_) => return Err("StartMicroVm succeeded with vCPU 1 refused".into()),
            Err(e) if e.contains("Hook") => println!("refused-boot: StartMicroVm failed: {e}"),
            Err(e) => {
                return Err(format!(
                    "StartMicroVm failed, but not with the hook's error: {e}"
                ))
            }
        }
        let before = vcpu_threads();
        println!("refused-boot: vCPU threads after the failed start: {before:?}");
        let t0 = Instant::now();
        let code = api.stop()?;
        while !vcpu_threads().is_empty() && t0.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(10));
        }
        if !vcpu_threads().is_empty() {
            return Err(format!(
                "ShutdownMicroVm (exit code {code}) left vCPU threads: {:?}",
                vcpu_threads()
            ));
        }
        println!("refused-boot: ShutdownMicroVm (exit code {code}) joined every vCPU thread");
        Ok(())
    })();
    if api.thread.is_some() {
        let _ = api.stop();
    }
    run
}
