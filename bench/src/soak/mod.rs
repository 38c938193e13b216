//! `bench soak`: N full sandbox lifecycles, one after another, watching for growth.
//!
//! A cycle: a [`Sandbox`](host_cgroups::sandbox::Sandbox) is started (cgroups, resources,
//! this process placed), the demo VMM boots 1 vCPU (placed through the hooks), a container's cpuset is added and
//! removed, a second vCPU is hotplugged, and the sandbox is torn down with the VMM's
//! stop as its closure. cgroupfs cycles run in this process, so its open file
//! descriptors, threads and resident memory show any leak of the component. Where
//! systemd is reachable every other cycle uses the systemd driver; those cycles run
//! as a child `host-cgroups run` (a process cannot leave the scope systemd is stopping,
//! so one process per systemd sandbox, as in a runtime).
//!
//! After every `--window` cycles it records: cgroup directories left below the soak's
//! names, systemd units left, this process's open fds, threads and RSS, and the cycle
//! times of the window. Zero growth is the target; `tests/soak.rs` runs a short form.

use std::process::Command;
use std::time::Instant;

use clap::Args;

use crate::machine::{self, Machine};
use crate::report;
use crate::stats::Summary;
use crate::util::{self, BenchCgroups};
use crate::{BenchError, Common, Context};
use demo_vmm::BackendChoice;
use host_cgroups::config::RuntimeConfig;
use host_cgroups::host::CgroupLayout;

mod cycle;
mod leftovers;
mod result;

use cycle::{fs_cycle, systemd_cycle};
use leftovers::{count_dir, dirs_left, settled_threads, units_left};
pub use result::{CycleMs, Growth, SoakResult, WindowFigures};

/// Arguments of `bench soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Options every bench takes.
    #[command(flatten)]
    pub common: Common,
    /// Sandbox lifecycles to run.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub cycles: u32,
    /// Cycles between two measurements.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub window: u32,
    /// vCPU backend: auto (KVM when /dev/kvm works), kvm, or thread.
    #[arg(long, value_name = "auto|kvm|thread", default_value = "auto")]
    pub backend: String,
    /// Only the cgroupfs driver, even where systemd is reachable.
    #[arg(long)]
    pub cgroupfs_only: bool,
}

/// How long a window's measurement waits for systemd to finish removing the last
/// systemd sandbox's scope (asynchronous after its run exits).
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `bench soak`.
pub fn run(args: &SoakArgs, ctx: &Context) -> Result<(), BenchError> {
    let backend: BackendChoice = args
        .backend
        .parse()
        .map_err(|e| BenchError::BadInput(format!("--backend: {e}")))?;
    let layout = CgroupLayout::detect().map_err(|e| BenchError::Unsupported(e.to_string()))?;
    let guard = BenchCgroups::new(&layout);
    let systemd = !args.cgroupfs_only && host_cgroups::host::SystemdInfo::detect().reachable;
    // On cgroup v1, systemd re-realizing the cgroups next to a starting or stopping
    // `Delegate=yes` scope migrates the processes of the units beside it back into their
    // unit's cgroup in each hierarchy, this process included, even while it sits in a
    // cgroupfs sandbox (seen in sd-v1: a vCPU found itself in `/` of blkio and was
    // refused). A runtime on such a host uses the systemd driver; so does the soak there.
    let systemd_only = systemd && layout.version() == host_cgroups::host::CgroupVersion::V1;
    if systemd_only {
        ctx.progress.progress(
            "soak: cgroup v1 with systemd: systemd cycles only (cgroupfs sandboxes of this process would be undone by systemd's re-realization)"
        );
    }
    // `hcgsoak<random>.slice` holds the systemd sandboxes. No dash in the name: a dash
    // nests a slice in systemd (`a-b.slice` lives in `a.slice`), and this one must be a
    // top-level slice, so that its directory is its own name under the root and stopping
    // it at the end leaves no parent slice loaded.
    let slice = format!("{}.slice", guard.name.replace("hcgbench-", "hcgsoak"));
    let config = RuntimeConfig::embedded().map_err(|e| BenchError::step("config", e))?;
    let state_dir = std::env::temp_dir().join(format!("{}-state", guard.name));
    let load_start = machine::loadavg();
    let t0 = Instant::now();
    let mut windows: Vec<WindowFigures> = Vec::new();
    let mut fs_ms = Vec::new();
    let mut sd_ms = Vec::new();
    for i in 1..=args.cycles {
        let id = format!("soak{i}");
        let use_systemd = systemd && (systemd_only || i % 2 == 0);
        let t = Instant::now();
        if use_systemd {
            systemd_cycle(
                &format!("{slice}:hcgsoak:{id}"),
                &id,
                &state_dir,
                &args.backend,
            )?;
            sd_ms.push(t.elapsed().as_secs_f64() * 1e3);
        } else {
            fs_cycle(
                &config,
                &format!("{}/{id}", guard.name),
                &id,
                &state_dir,
                backend,
            )?;
            fs_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        if i % args.window == 0 || i == args.cycles {
            util::trim_heap();
            let slice_dir = systemd.then_some(slice.as_str());
            let mut dirs = dirs_left(&layout, &guard, slice_dir);
            let mut units = systemd.then(|| units_left("hcgsoak")).flatten();
            // A systemd sandbox's run exits once its stop is requested; systemd removes the
            // scope (unit and directory) right after. Let that finish: what is still there
            // after SETTLE is left behind.
            let settle = Instant::now();
            while systemd && (dirs > 0 || units.is_some_and(|u| u > 0)) && settle.elapsed() < SETTLE
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
                dirs = dirs_left(&layout, &guard, slice_dir);
                units = units_left("hcgsoak");
            }
            let w = WindowFigures {
                cycle: i,
                dirs_left: dirs,
                units_left: units,
                fds: count_dir("/proc/self/fd"),
                threads: settled_threads(),
                rss_kib: util::rss_bytes() / 1024,
                heap_kib: util::heap_in_use_bytes().map(|b| b / 1024),
                cgroupfs_cycle_ms: CycleMs::of(&Summary::of(&fs_ms)),
                systemd_cycle_ms: CycleMs::of(&Summary::of(&sd_ms)),
            };
            ctx.progress.progress(&format!(
                "soak: {i} cycles: {} dirs left, {} fds, {} threads, {} KiB RSS",
                w.dirs_left, w.fds, w.threads, w.rss_kib
            ));
            windows.push(w);
            fs_ms.clear();
            sd_ms.clear();
        }
    }
    let _ = std::fs::remove_dir(&state_dir);
    if systemd {
        // The slice itself was started by systemd for the first scope in it.
        let _ = Command::new("systemctl").args(["stop", &slice]).status();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let load_end = machine::loadavg();
    let result = SoakResult {
        bench: "soak",
        command: format!(
            "host-cgroups bench soak --cycles {} --window {} --backend {}",
            args.cycles, args.window, args.backend
        ),
        machine: Machine::now(),
        cycles: args.cycles,
        window: args.window,
        drivers: if systemd_only {
            vec!["systemd"]
        } else if systemd {
            vec!["cgroupfs", "systemd"]
        } else {
            vec!["cgroupfs"]
        },
        backend: args.backend.clone(),
        elapsed_s: elapsed,
        load_start,
        load_end,
        growth_first_to_last_window: Growth::of(&windows),
        windows,
    };
    report::emit(
        ctx,
        &args.common,
        report::Output {
            name: "soak",
            result: &result,
            markdown: result.markdown(),
            svg: None,
        },
    )
}
