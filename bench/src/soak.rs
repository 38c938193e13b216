//! `bench soak`: N full sandbox lifecycles, one after another, watching for growth.
//!
//! A cycle: a [`Sandbox`] is started (cgroups, resources, this process placed), the
//! demo VMM boots 1 vCPU (placed through the hooks), a container's cpuset is added and
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

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};

use super::machine::{self, Machine};
use super::report::{self, num, Table};
use super::stats::Summary;
use super::util::{self, BenchCgroups};
use super::{BenchError, Common, Context};
use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::host::CgroupLayout;
use host_cgroups::resources;
use host_cgroups::sandbox::{Sandbox, SandboxOptions};

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

/// One measurement after a window of cycles.
struct Window {
    cycle: u32,
    dirs_left: usize,
    units_left: Option<usize>,
    fds: usize,
    threads: usize,
    rss_kib: u64,
    heap_kib: Option<u64>,
    fs_cycle_ms: Summary,
    systemd_cycle_ms: Summary,
}

/// This process's threads, once threads that are still exiting have gone: a joined
/// thread leaves `/proc/self/task` a moment after `pthread_join` returns (its tid futex
/// is cleared first), so the smallest count over half a second is taken; a leaked
/// thread stays in every sample.
fn settled_threads() -> usize {
    let mut least = count_dir("/proc/self/task");
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        least = least.min(count_dir("/proc/self/task"));
    }
    least
}

fn count_dir(d: &str) -> usize {
    std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0)
}

/// systemd scopes whose name starts with `prefix`, loaded in any state (the soak's
/// slice itself stays loaded while the soak runs and is not counted).
fn units_left(prefix: &str) -> Option<usize> {
    let out = Command::new("systemctl")
        .args([
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            &format!("{prefix}*"),
        ])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|u| u.ends_with(".scope"))
            })
            .count()
    })
}

/// Directories below `<mount>/<name>` (and below the systemd slice's directory).
fn dirs_left(layout: &CgroupLayout, guard: &BenchCgroups, slice_dir: Option<&str>) -> usize {
    let mut n = guard.leftovers().len();
    if let Some(s) = slice_dir {
        for m in util::mounts(layout) {
            let d = m.join(s);
            if d.is_dir() {
                // Below the slice: the slice's own directory stays while the soak runs.
                n += walk_count(&d) - 1;
            }
        }
    }
    n
}

fn walk_count(d: &Path) -> usize {
    1 + std::fs::read_dir(d)
        .map(|r| {
            r.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| walk_count(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// One in-process cgroupfs lifecycle.
fn fs_cycle(
    config: &RuntimeConfig,
    path: &str,
    id: &str,
    state_dir: &Path,
    backend: BackendChoice,
) -> Result<(), BenchError> {
    let step = |what: &str, e: &dyn std::fmt::Display| BenchError::step(format!("{id}: {what}"), e);
    let res =
        resources::from_json(r#"{"cpu":{"shares":512}}"#).map_err(|e| step("resources", &e))?;
    let opts = SandboxOptions::default()
        .state_dir(state_dir)
        .sandbox_resources(Some(res));
    let sandbox = Sandbox::new(config, id, path, opts).map_err(|e| step("start", &e))?;
    let cfg = VmmConfig {
        vcpus: 1,
        max_vcpus: 2,
        backend,
    };
    let mut vmm = match Vmm::new(cfg, sandbox.hooks()).and_then(|mut v| v.start().map(|()| v)) {
        Ok(v) => v,
        Err(e) => {
            let _ = sandbox.teardown(|| ());
            return Err(step("VMM start", &e));
        }
    };
    let container =
        resources::from_json(r#"{"cpu":{"cpus":"0"}}"#).map_err(|e| step("resources", &e))?;
    let r = sandbox
        .update_container("c1", &container)
        .and_then(|_| sandbox.remove_container("c1"))
        .map_err(|e| step("container update", &e))
        .and_then(|()| vmm.hotplug(1).map(|_| ()).map_err(|e| step("hotplug", &e)));
    let done = sandbox.teardown(|| vmm.stop());
    r?;
    done.vmm.map_err(|e| step("VMM stop", &e))?;
    if !done.report.errors.is_empty() {
        return Err(step("teardown", &done.report.errors.join("; ")));
    }
    Ok(())
}

/// One systemd lifecycle in a child `host-cgroups run`.
fn systemd_cycle(path: &str, id: &str, state_dir: &Path, backend: &str) -> Result<(), BenchError> {
    util::run_self(&[
        "run".into(),
        "--cgroups-path".into(),
        path.into(),
        "--sandbox-id".into(),
        id.into(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--vcpus".into(),
        "1".into(),
        "--duration".into(),
        "0".into(),
        "--backend".into(),
        backend.into(),
        "--json".into(),
    ])
    .map(|_| ())
}

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
    let mut windows: Vec<Window> = Vec::new();
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
            let w = Window {
                cycle: i,
                dirs_left: dirs,
                units_left: units,
                fds: count_dir("/proc/self/fd"),
                threads: settled_threads(),
                rss_kib: util::rss_bytes() / 1024,
                heap_kib: util::heap_in_use_bytes().map(|b| b / 1024),
                fs_cycle_ms: Summary::of(&fs_ms),
                systemd_cycle_ms: Summary::of(&sd_ms),
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
    let first = windows.first();
    let last = windows.last();
    let growth = |f: fn(&Window) -> i64| -> i64 {
        match (first, last) {
            (Some(a), Some(b)) => f(b) - f(a),
            _ => 0,
        }
    };
    let rows: Vec<Value> = windows
        .iter()
        .map(|w| {
            json!({
                "cycle": w.cycle,
                "dirs_left": w.dirs_left,
                "units_left": w.units_left,
                "fds": w.fds,
                "threads": w.threads,
                "rss_kib": w.rss_kib,
                "heap_kib": w.heap_kib,
                "cgroupfs_cycle_ms": {"p50": w.fs_cycle_ms.p50, "max": w.fs_cycle_ms.max, "n": w.fs_cycle_ms.n},
                "systemd_cycle_ms": {"p50": w.systemd_cycle_ms.p50, "max": w.systemd_cycle_ms.max, "n": w.systemd_cycle_ms.n},
            })
        })
        .collect();
    let v = json!({
        "bench": "soak",
        "command": format!("host-cgroups bench soak --cycles {} --window {} --backend {}", args.cycles, args.window, args.backend),
        "machine": Machine::now(),
        "cycles": args.cycles,
        "window": args.window,
        "drivers": if systemd_only { vec!["systemd"] } else if systemd { vec!["cgroupfs", "systemd"] } else { vec!["cgroupfs"] },
        "backend": args.backend,
        "elapsed_s": elapsed,
        "load_start": load_start,
        "load_end": load_end,
        "windows": rows,
        "growth_first_to_last_window": {
            "fds": growth(|w| w.fds as i64),
            "threads": growth(|w| w.threads as i64),
            "rss_kib": growth(|w| w.rss_kib as i64),
            "heap_kib": growth(|w| w.heap_kib.unwrap_or(0) as i64),
        },
    });
    let mut t = Table::new(&[
        "after cycle",
        "dirs left",
        "units left",
        "fds",
        "threads",
        "RSS KiB",
        "heap in use KiB",
        "cgroupfs cycle p50/max ms",
        "systemd cycle p50/max ms",
    ]);
    for w in &windows {
        t.row(vec![
            w.cycle.to_string(),
            w.dirs_left.to_string(),
            w.units_left.map_or("-".into(), |u| u.to_string()),
            w.fds.to_string(),
            w.threads.to_string(),
            w.rss_kib.to_string(),
            w.heap_kib.map_or("-".into(), |h| h.to_string()),
            p50_max(&w.fs_cycle_ms),
            p50_max(&w.systemd_cycle_ms),
        ]);
    }
    let md = format!(
        "## Soak: {} sandbox lifecycles ({})\n\nCommand: `{}` ({:.0} s)\n\n{}\n\n{}",
        args.cycles,
        if systemd {
            "cgroupfs and systemd, alternating"
        } else {
            "cgroupfs"
        },
        v["command"].as_str().unwrap_or_default(),
        elapsed,
        machine::load_note(load_start, load_end),
        t.markdown()
    );
    report::emit(
        ctx,
        &args.common,
        report::Output {
            name: "soak",
            result: &v,
            markdown: md,
            svg: None,
        },
    )
}

fn p50_max(s: &Summary) -> String {
    if s.n == 0 {
        "-".into()
    } else {
        format!("{} / {}", num(s.p50), num(s.max))
    }
}
