//! `host-cgroups run`: boots a sandbox (controller + in-process VMM), shows
//! per-vCPU CPU use while it runs, reports where every thread sits, and cleans up.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::{bad, layout_for, load_config, print_json, runtime, CliError, SandboxArgs};
use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::host::{task_cpu_ns, threads, ThreadInfo};
use host_cgroups::plan::{CgroupPlan, SandboxPlan};
use host_cgroups::resources::Checked;
use host_cgroups::sandbox::{Activation, Sandbox, SandboxOptions, Teardown};
use host_cgroups::state::DEFAULT_STATE_DIR;
use host_cgroups::{TeardownReport, VcpuRecord};

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The sandbox, its configuration and resources.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// OCI bundle whose config.json gives linux.cgroupsPath and linux.resources.
    #[arg(long, value_name = "DIR", conflicts_with = "cgroups_path")]
    pub bundle: Option<PathBuf>,
    /// vCPUs at boot (default: the configuration's default_vcpus after Kata's rules).
    /// Above the maximum in force (default_maxvcpus, at most the host's CPUs) it boots
    /// as asked, raises the hotplug ceiling to N, and prints a note.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=240))]
    pub vcpus: Option<u32>,
    /// Grow to M vCPUs one second after start (at least --vcpus, at most the maximum in
    /// force: default_maxvcpus, which 0 or a value above the host's CPUs makes the host's
    /// CPU count, or --vcpus when that is higher); above it: exit 2.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u32).range(1..=240))]
    pub hotplug: Option<u32>,
    /// Remove vCPUs down to K, two seconds after start (at most the boot or --hotplug count).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=240))]
    pub unplug_to: Option<u32>,
    /// How long the sandbox runs, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub duration: f64,
    /// Where sandbox state is persisted.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Bound on a vCPU's wait for its placement, in seconds; past it the vCPU fails to start.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub placement_timeout: f64,
    /// Keep the cgroups and state after the run.
    #[arg(long)]
    pub keep: bool,
    /// vCPU backend.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// One container's OCI LinuxResources (JSON or @FILE), given to the sandbox as
    /// container `c0` before the VMM starts: its CPU part goes to the vCPU child with
    /// the nested layout, its cpuset to the sandbox cgroup otherwise; what the layout does
    /// not apply is named in a note.
    #[arg(long, value_name = "JSON|@FILE")]
    pub container_resources: Option<String>,
    /// Print one JSON object at the end.
    #[arg(long)]
    pub json: bool,
}

/// The vCPU backends of the demo VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// KVM when /dev/kvm works, else threads.
    Auto,
    /// KVM, or fail.
    Kvm,
    /// Plain threads that stand in for vCPUs (testing; hosts without KVM).
    Thread,
}

impl From<Backend> for BackendChoice {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Auto => BackendChoice::Auto,
            Backend::Kvm => BackendChoice::Kvm,
            Backend::Thread => BackendChoice::Thread,
        }
    }
}

fn set_sigpipe(disposition: libc::sighandler_t) {
    // SAFETY: changing a signal disposition to SIG_IGN or SIG_DFL has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, disposition);
    }
}

/// Set by SIGINT/SIGTERM: end the run early and clean up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_stop_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_stop_signal as *const () as libc::sighandler_t);
        }
    }
}

#[derive(Serialize)]
struct VcpuOut {
    index: u32,
    tid: i32,
    cgroups: BTreeMap<String, String>,
    placed_after_us: Option<u64>,
    /// born, self-move or controller; absent without a controller.
    placed_by: Option<String>,
    /// Task migration writes made to place this vCPU.
    cgroup_writes: Option<u32>,
    exited: bool,
    exited_before_placement: bool,
    pinned_cpu: Option<u32>,
    /// µs from the vCPU's hook until it had its single-CPU affinity.
    pinned_after_us: Option<u64>,
    cpu_ns: u64,
}

#[derive(Serialize)]
struct Usage {
    cpu_ns: u64,
    nr_periods: u64,
    throttled_periods: u64,
    throttled_ns: u64,
}

#[derive(Serialize)]
struct RunReport {
    version: &'static str,
    sandbox_id: String,
    driver: String,
    cgroup_version: u8,
    placement: String,
    controller_active: bool,
    vcpu_backend: String,
    vmm_pid: i32,
    sandbox: CgroupPlan,
    overhead: Option<CgroupPlan>,
    /// sandbox-only, sibling or nested.
    vcpu_layout: String,
    /// Why that layout.
    vcpu_layout_reason: String,
    /// The nested layout's vCPU child: controller → directory.
    vcpus_cgroup: Option<BTreeMap<host_cgroups::HierarchyKey, PathBuf>>,
    /// The nested layout's vCPU child, relative to the hierarchy roots.
    vcpus_path: Option<String>,
    sandbox_cgroup_only: bool,
    state_dir: PathBuf,
    wall_seconds: f64,
    vcpus: Vec<VcpuOut>,
    threads: Vec<ThreadInfo>,
    usage: Option<Usage>,
    cleanup: CleanupOut,
    notes: Vec<String>,
    errors: Vec<String>,
}

/// What the run's own teardown did, in the shape of `cleanup`'s report: cgroups
/// removed, absent, kept (with the reason), errors.
#[derive(Serialize)]
struct CleanupOut {
    removed: Vec<String>,
    absent: Vec<String>,
    kept: Vec<String>,
    errors: Vec<String>,
}

impl CleanupOut {
    /// The run's teardown in `cleanup`'s terms, as the library reports it: cgroups
    /// removed (created parents included), those still standing with the reason, errors.
    fn from_teardown(r: TeardownReport, plan: &SandboxPlan, state_dir: &std::path::Path) -> Self {
        if r.kept {
            return CleanupOut {
                removed: Vec::new(),
                absent: Vec::new(),
                kept: vec![format!(
                    "{}: --keep; remove with `host-cgroups cleanup --sandbox-id {} --state-dir {}`",
                    plan.sandbox.path,
                    plan.sandbox_id,
                    state_dir.display()
                )],
                errors: r.errors,
            };
        }
        CleanupOut {
            removed: r.removed,
            absent: Vec::new(),
            kept: r.standing,
            errors: r.errors,
        }
    }
}

/// Runs the sandbox.
pub fn run(args: &RunArgs) -> Result<(), CliError> {
    let config = load_config(args.sandbox.config.as_ref())?;
    // `run` boots an in-process VMM: with a hypervisor that runs the VM out of process
    // the component is inactive, and a demo VM under it would show nothing true.
    if !config.vmm_in_process() {
        return Err(bad(format!(
            "hypervisor_name = {:?} in {}: host-cgroups is inactive for a hypervisor that runs \
             the VM out of process, and run boots an in-process VMM; use hypervisor_name = \
             \"dragonball\" (resolve shows the plan for any hypervisor)",
            config.hypervisor_name,
            config.source.display()
        )));
    }
    let (path, resources, mut warnings) =
        super::sandbox_inputs(&args.sandbox, args.bundle.as_deref())?;
    let (container_res, container_warnings) =
        super::load_resources(args.container_resources.as_deref())?;
    warnings.extend(container_warnings);
    let sandbox_id = args
        .sandbox
        .sandbox_id
        .clone()
        .unwrap_or_else(|| format!("hcg{:016x}", random_u64()));
    let backend = BackendChoice::from(args.backend);
    if !(args.duration.is_finite() && args.duration >= 0.0) {
        return Err(bad(format!(
            "--duration {} must be 0 or more seconds",
            args.duration
        )));
    }
    let host_cpus = host_cgroups::host::online_cpus()
        .map(|c| c.len() as u32)
        .unwrap_or(1);
    let counts = config.vcpus(host_cpus);
    // --vcpus overrides default_vcpus; above the maximum in force it boots as asked,
    // raises the hotplug ceiling to itself, and says so in a note (docs/cli.md).
    let (run_counts, vcpus_note) = match args.vcpus {
        Some(n) => counts.with_boot(n, &config.source),
        None => (counts, None),
    };
    let vcpus = run_counts.boot;
    let mut max_vcpus = run_counts.max;
    if let Some(m) = args.hotplug {
        if m > max_vcpus {
            return Err(bad(format!(
                "--hotplug {m} exceeds the vCPU maximum in force, {max_vcpus} (default_maxvcpus = {} in {}; Kata brings it to at most the host's {} CPUs{})",
                counts.configured_default_maxvcpus,
                config.source.display(),
                counts.host_cpus,
                if max_vcpus > counts.max {
                    format!("; --vcpus {vcpus} raised it from {}", counts.max)
                } else {
                    String::new()
                }
            )));
        }
        if m < vcpus {
            return Err(bad(format!(
                "--hotplug {m} is below the boot vCPUs {vcpus}"
            )));
        }
    }
    if let Some(k) = args.unplug_to {
        let top = args.hotplug.unwrap_or(vcpus).max(vcpus);
        if k > top {
            return Err(bad(format!(
                "--unplug-to {k} is above the vCPUs the sandbox will have ({top}); it can only remove vCPUs"
            )));
        }
    }
    max_vcpus = max_vcpus.max(vcpus);
    let layout = layout_for(None)?;
    let plan = SandboxPlan::new_checked(&config, &sandbox_id, &path, &layout, resources.as_ref())
        .map_err(bad)?;
    let mut notes = plan.notes.clone();
    notes.extend(warnings);
    notes.extend(vcpus_note);

    install_stop_handlers();
    // While the sandbox exists, a closed stderr or stdout (`2>&1 | head`) must not kill
    // this process half-way and leave its cgroups: SIGPIPE is ignored (the status
    // writes ignore EPIPE) until the teardown is done.
    set_sigpipe(libc::SIG_IGN);
    let opts = SandboxOptions::default()
        .state_dir(args.state_dir.clone())
        .placement_timeout(Duration::from_secs_f64(args.placement_timeout))
        .sandbox_resources(resources.clone().map(Checked::into_resources));
    let sandbox = Sandbox::start(&config, plan.clone(), opts).map_err(|e| {
        if e.is_bad_input() {
            bad(e)
        } else {
            runtime(e)
        }
    })?;
    let active = sandbox.is_active();
    if let Activation::Inactive { reason } = sandbox.activation() {
        notes.push(format!("host-cgroups inactive: {reason}"));
    }
    if let Some(r) = &container_res {
        match sandbox.update_container("c0", r.resources()) {
            // What the layout does not apply of a container's resources is said, not dropped.
            Ok(update) => notes.extend(update.note("c0 (--container-resources)")),
            Err(e) => {
                let bad_input = e.is_bad_input();
                let r = sandbox.teardown(|| ()).report;
                let msg = format!(
                    "--container-resources: {e}{}",
                    if r.errors.is_empty() {
                        String::new()
                    } else {
                        format!(" (cleanup: {})", r.errors.join("; "))
                    }
                );
                return Err(if bad_input { bad(msg) } else { runtime(msg) });
            }
        }
    }
    let vmm_cfg = VmmConfig {
        vcpus,
        max_vcpus,
        backend,
    };
    let mut vmm = match Vmm::new(vmm_cfg, sandbox.hooks_for_boot(vcpus))
        .and_then(|mut v| v.start().map(|()| v))
    {
        Ok(v) => v,
        Err(e) => {
            let r = sandbox.teardown(|| ()).report;
            let extra = if r.errors.is_empty() {
                String::new()
            } else {
                format!(" (cleanup: {})", r.errors.join("; "))
            };
            return Err(runtime(format!("VMM start failed: {e}{extra}")));
        }
    };
    if let Err(e) = host_cgroups::failpoint::hit(host_cgroups::failpoint::Point::VmmStarted) {
        let _ = sandbox.teardown(|| vmm.stop());
        return Err(runtime(format!("VMM start: {e}")));
    }
    let backend_name = vmm.backend().to_string();
    let me = std::process::id() as i32;
    // Tests and users wait for this line: every boot vCPU is placed and running.
    super::status(format!(
        "sandbox {sandbox_id} running: {} placed, pid {me}",
        plural(vmm.vcpus().len(), "vCPU")
    ));
    let start = Instant::now();
    let total = Duration::from_secs_f64(args.duration);
    let live = !args.json || std::io::stderr().is_terminal();
    let mut last: BTreeMap<i32, u64> = BTreeMap::new();
    let mut last_at = Instant::now();
    let mut hotplugged = args.hotplug.is_none();
    let mut unplugged = args.unplug_to.is_none();
    let mut failure = None;
    while start.elapsed() < total && !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100).min(total.saturating_sub(start.elapsed())));
        if !hotplugged && start.elapsed() >= Duration::from_secs(1) {
            hotplugged = true;
            let want = args.hotplug.unwrap_or(vcpus);
            let have = vmm.vcpus().len() as u32;
            if want > have {
                if let Err(e) = vmm.hotplug(want - have) {
                    failure = Some(format!("hotplug to {want} vCPUs failed: {e}"));
                    break;
                }
                super::status(format!("hotplugged to {want} vCPUs"));
            }
        }
        if !unplugged && start.elapsed() >= Duration::from_secs(2) {
            unplugged = true;
            let want = args.unplug_to.unwrap_or(1);
            let have = vmm.vcpus().len() as u32;
            if want < have {
                if let Err(e) = vmm.unplug(have - want) {
                    failure = Some(format!("unplug to {want} vCPUs failed: {e}"));
                    break;
                }
                super::status(format!("unplugged to {want} vCPUs"));
            }
        }
        if live && last_at.elapsed() >= Duration::from_secs(1) {
            let dt = last_at.elapsed().as_secs_f64();
            last_at = Instant::now();
            let mut line = format!("[{:5.1}s]", start.elapsed().as_secs_f64());
            for v in vmm.vcpus() {
                let now = task_cpu_ns(me, v.tid).unwrap_or(0);
                let prev = last.insert(v.tid, now).unwrap_or(0);
                let pct = (now - prev.min(now)) as f64 / 1e9 / dt * 100.0;
                line.push_str(&format!(" vcpu{}:{pct:4.0}%", v.index));
            }
            super::progress(line);
        }
    }
    if STOP.load(Ordering::SeqCst) {
        notes.push("stopped early by a signal".into());
    }
    // Snapshot where every thread sits while the sandbox still runs.
    let snapshot = threads(me).map_err(runtime)?;
    let records: Vec<VcpuRecord> = sandbox.vcpus();
    // The directories the driver really uses (the plan's when the sandbox is inactive).
    let real_paths = sandbox.paths();
    let stats = sandbox.stats().transpose();
    let wall = start.elapsed().as_secs_f64();
    // The sandbox owns the order: the VMM stops (VM fd closed) before the cgroups go,
    // and SIGTERM from a stopping systemd scope cannot end the teardown.
    let Teardown {
        vmm: stopped,
        report: cleanup,
        ..
    } = if args.keep {
        sandbox.keep(|| vmm.stop())
    } else {
        sandbox.teardown(|| vmm.stop())
    };
    let vcpus_out: Vec<VcpuOut> = vmm_vcpu_rows(&snapshot, &records);
    let usage = match stats {
        Some(Ok(s)) => Some(Usage {
            cpu_ns: s.cpu_usage_ns,
            nr_periods: s.nr_periods,
            throttled_periods: s.nr_throttled,
            throttled_ns: s.throttled_ns,
        }),
        Some(Err(e)) => {
            notes.push(format!("usage not available: {e}"));
            None
        }
        None => None,
    };
    let mut errors = Vec::new();
    if let Err(e) = &stopped {
        errors.push(format!("VMM stop failed: {e}"));
    }
    errors.extend(failure);
    if !cleanup.errors.is_empty() {
        errors.push(format!("cleanup failed: {}", cleanup.errors.join("; ")));
    }
    let report = RunReport {
        version: super::VERSION,
        sandbox_id: plan.sandbox_id.clone(),
        driver: plan.driver.to_string(),
        cgroup_version: plan.cgroup_version,
        placement: plan.placement.to_string(),
        controller_active: active,
        vcpu_backend: backend_name,
        vmm_pid: me,
        sandbox: CgroupPlan {
            paths: if real_paths.is_empty() {
                plan.sandbox.paths.clone()
            } else {
                real_paths
            },
            ..plan.sandbox.clone()
        },
        overhead: plan.overhead.clone(),
        vcpu_layout: plan.vcpu_layout.to_string(),
        vcpu_layout_reason: plan.vcpu_layout_reason.clone(),
        vcpus_cgroup: plan.vcpus_child.as_ref().map(|c| c.paths.clone()),
        vcpus_path: plan.vcpus_child.as_ref().map(|c| c.path.clone()),
        sandbox_cgroup_only: plan.sandbox_cgroup_only,
        state_dir: args.state_dir.clone(),
        wall_seconds: wall,
        vcpus: vcpus_out,
        threads: snapshot,
        usage,
        cleanup: CleanupOut::from_teardown(cleanup, &plan, &args.state_dir),
        notes,
        errors,
    };
    // Torn down (or kept, with its state): a closed stdout may end us quietly again.
    set_sigpipe(libc::SIG_DFL);
    if args.json {
        print_json(&report)?;
    } else {
        print_table(&report, args.keep);
    }
    if report.errors.is_empty() {
        return Ok(());
    }
    let e = runtime(report.errors.join("; "));
    // With --json the report (its `errors`) is the result on stdout.
    Err(if args.json { e.reported() } else { e })
}

fn vmm_vcpu_rows(snapshot: &[ThreadInfo], records: &[VcpuRecord]) -> Vec<VcpuOut> {
    let mut out: Vec<VcpuOut> = records
        .iter()
        .map(|r| {
            let t = snapshot.iter().find(|t| t.tid == r.tid);
            VcpuOut {
                index: r.index,
                tid: r.tid,
                cgroups: t.map(|t| t.cgroups.clone()).unwrap_or_default(),
                placed_after_us: r.placed_after_us,
                placed_by: Some(r.placed_by.to_string()),
                cgroup_writes: Some(r.cgroup_writes),
                exited: r.exited,
                exited_before_placement: r.exited_before_placement,
                pinned_cpu: r.pinned_cpu,
                pinned_after_us: r.pinned_after_us,
                cpu_ns: t.map(|t| t.cpu_ns).unwrap_or(0),
            }
        })
        .collect();
    if records.is_empty() {
        // Controller inactive: list the vCPU threads as they are.
        out = snapshot
            .iter()
            .filter(|t| t.role == "vcpu")
            .map(|t| VcpuOut {
                index: t.name.trim_start_matches("db_vcpu").parse().unwrap_or(0),
                tid: t.tid,
                cgroups: t.cgroups.clone(),
                placed_after_us: None,
                placed_by: None,
                cgroup_writes: None,
                exited: false,
                exited_before_placement: false,
                pinned_cpu: None,
                pinned_after_us: None,
                cpu_ns: t.cpu_ns,
            })
            .collect();
    }
    out
}

fn print_table(r: &RunReport, keep: bool) {
    println!(
        "sandbox {}  driver {}  cgroup v{}  placement {}  vCPU backend {}  pid {}",
        r.sandbox_id, r.driver, r.cgroup_version, r.placement, r.vcpu_backend, r.vmm_pid
    );
    println!("sandbox cgroup: {}", r.sandbox.path);
    println!("vcpu layout: {} ({})", r.vcpu_layout, r.vcpu_layout_reason);
    if let Some(p) = &r.vcpus_path {
        println!("vcpus cgroup: {p}");
    }
    super::print_threads(&r.threads);
    for v in &r.vcpus {
        println!(
            "vcpu{:<3} tid {:<8} placed after {:>8} µs{}{}",
            v.index,
            v.tid,
            v.placed_after_us
                .map(|u| u.to_string())
                .unwrap_or_else(|| "-".into()),
            if v.exited { "  (exited)" } else { "" },
            v.pinned_cpu
                .map(|c| format!("  pinned to CPU {c}"))
                .unwrap_or_default()
        );
    }
    if let Some(u) = &r.usage {
        println!(
            "usage: {:.3} CPU-s in {:.1} s; throttled {} of {} periods ({:.3} s)",
            u.cpu_ns as f64 / 1e9,
            r.wall_seconds,
            u.throttled_periods,
            u.nr_periods,
            u.throttled_ns as f64 / 1e9
        );
    }
    if keep {
        println!(
            "cleanup: kept (--keep); remove with `host-cgroups cleanup --sandbox-id {} --state-dir {}`",
            r.sandbox_id,
            r.state_dir.display()
        );
    } else {
        println!("cleanup: removed {}", r.cleanup.removed.join(", "));
        for k in &r.cleanup.kept {
            println!("cleanup: kept {k}");
        }
    }
    for e in &r.cleanup.errors {
        println!("cleanup error: {e}");
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return u64::from(std::process::id()) ^ now.as_nanos() as u64;
    }
    u64::from_le_bytes(b)
}

/// `1 vCPU`, `2 vCPUs`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("{n} {what}")
    } else {
        format!("{n} {what}s")
    }
}
