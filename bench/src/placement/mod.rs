//! `bench placement`: how long a vCPU thread is held, how soon it is placed and
//! pinned, and how much guest time runs unplaced or unpinned, for five ways of
//! doing it, every row in the same run, alternating (cgroupfs, cgroup v1 or v2).
//!
//! - **born** (this project, default mode `sandbox_cgroup_only = true`): the VMM
//!   process sits in the sandbox cgroup; each vCPU checks `/proc/thread-self/cgroup`
//!   in its hook, and pins itself when pinning applies; no cgroup write.
//! - **self** (this project, split mode `sandbox_cgroup_only = false`): on v1 the
//!   process sits in the overhead cgroup and each vCPU writes `0` to the sandbox's
//!   kept-open `tasks` files in its hook; on v2 (the nested layout, the split the
//!   plan chooses there) the process sits in the sandbox cgroup and each vCPU writes
//!   `0` to its threaded child `vcpus`' `cgroup.threads`; it pins itself.
//! - **ctl-writes** (this project before issue 11, split mode): the vCPU sends its
//!   tid to the supervisor thread and waits while it writes the tid to every
//!   `tasks` file (v2: the `vcpus` child's `cgroup.threads`); the supervisor pins
//!   after the fact.
//! - **upstream** (runtime-rs + dragonball, default mode): the whole process moved
//!   into the sandbox cgroup at sandbox creation, so vCPUs are born placed; no
//!   hook; for pinning, after `Vmm::start` returns the vCPU tids are looked up
//!   (scan of `/proc/self/task/*/comm`, like `get_thread_ids`), retried after
//!   50 ms, 100 ms, ... until all are seen, then each is pinned. Upstream does this
//!   after the guest has booted and the agent answered; here right after start, so
//!   its unpinned time is a lower bound.
//! - **cgroups-rs** (split mode): the vCPU waits while a supervisor thread adds
//!   its tid to the vCPUs' cgroup with `cgroups-rs` 0.5.1 `Cgroup::add_task` (v1: a
//!   fresh open and write of `tasks` per subsystem; v2: a read of `cgroup.type`,
//!   then one write to `cgroup.threads`, which it does only for a threaded target
//!   such as the nested `vcpus` child); no pinning.
//!
//! Per vCPU: held = the hook's entry to its return (the VMM waits that long
//! before the thread may run); placed = hook entry to the thread being in its
//! planned cgroup (the nested layout's `vcpus` child when the plan has one, else
//! the sandbox cgroup); pinned = hook entry to its single-CPU affinity being set.
//! Unplaced / unpinned guest time: CPU time the thread ran after its hook
//! returned and before it was placed / pinned (its per-thread CPU clock).
//! Pinning is measured where it applies (as many vCPUs as CPUs: the sandbox
//! cpuset is set to the first `n` online CPUs), i.e. `n` ≤ online CPUs.

use std::time::{Duration, Instant};

use clap::Args;

use crate::machine::{self, Machine};
use crate::report::{self, cdf_svg, Series};
use crate::stats::round3;
use crate::util::{self, BenchCgroups};
use crate::{BenchError, Common, Context};
use demo_vmm::BackendChoice;
use host_cgroups::host::{online_cpus, CgroupLayout, CgroupVersion};
use host_cgroups::plan::SandboxPlan;

mod agg;
mod idle;
mod markdown;
mod mode;
mod probe;
mod result;

use agg::Agg;
use idle::idle_first_write;
use mode::config;
pub use mode::{Mode, MODES};
use probe::one_run;
pub use result::{
    ApproachStats, IdleFirstWrite, Method, PlacementResult, PlacementTargets, SizeRow, UsFigures,
    SANDBOX_CGROUP_ONLY,
};

/// Arguments of `bench placement`.
#[derive(Debug, Args)]
pub struct PlacementArgs {
    /// Output options.
    #[command(flatten)]
    pub common: Common,
    /// vCPU counts to measure, comma-separated.
    #[arg(long, value_name = "N,N,...", default_value = "1,2,8,64,240")]
    pub vcpus: String,
    /// Runs per vCPU count and approach (default: 40, 16, 16, 5, 3 for 1, 2, 8, 64, 240 vCPUs).
    #[arg(long, value_name = "N")]
    pub runs: Option<u32>,
    /// vCPU backend: auto (KVM when usable), kvm or thread.
    #[arg(long, value_name = "auto|kvm|thread", default_value = "auto")]
    pub backend: String,
    /// Skip the self-placement row (split mode, each vCPU writes `0` to the sandbox's `tasks`).
    #[arg(long)]
    pub no_self_place: bool,
    /// Samples of the first `tasks` write after 100 ms idle, by tid and by `0` (0 to skip).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub idle_samples: u32,
}

/// Runs by default for `n` vCPUs: enough samples for a p99 while keeping the bench short.
fn default_runs(n: u32) -> u32 {
    match n {
        0..=1 => 40,
        2..=8 => 16,
        9..=64 => 5,
        _ => 3,
    }
}

/// The split layout the library plans on this host and the notes saying what the
/// split-mode rows measure there (a side-effect free plan of a dummy sandbox).
fn split_notes(
    layout: &CgroupLayout,
    guard: &BenchCgroups,
) -> Result<(String, Vec<String>), BenchError> {
    let split_plan = SandboxPlan::new(
        &config(true, false)?,
        "split",
        &format!("{}/split", guard.name),
        layout,
        None,
    )
    .map_err(|e| BenchError::step("plan", e))?;
    let split_layout = split_plan.vcpu_layout;
    let split_target = match &split_plan.vcpus_child {
        Some(c) => format!(
            "the process in the sandbox cgroup, each vCPU moves into its child `{}`{}",
            c.path.rsplit('/').next().unwrap_or(&c.path),
            if c.cgroup_type.is_some() {
                " (threaded)"
            } else {
                ""
            }
        ),
        None => "the process in the overhead cgroup, each vCPU moves into the sandbox cgroup"
            .to_string(),
    };
    let mut notes: Vec<String> = vec![format!(
        "split mode (self-placement, controller writes, cgroups-rs): {split_layout} layout, {split_target}"
    )];
    if layout.version() == CgroupVersion::V2 {
        notes.push(
            "cgroups-rs on cgroup v2: Cgroup::add_task writes the tid to cgroup.threads only when the target \
             is threaded or domain threaded (else it fails; FsManager::add_thread then moves the whole \
             process); here its target is the threaded vcpus child, so it places one thread, with a \
             cgroup.type read before each write"
                .to_string(),
        );
    }
    Ok((split_layout.to_string(), notes))
}

/// The first write after 100 ms idle, by tid and by `0`, or why it was not measured
/// (a v2 host may refuse the threaded subtree it needs: that goes to `notes` too).
fn idle_figures(
    args: &PlacementArgs,
    layout: &CgroupLayout,
    guard: &BenchCgroups,
    notes: &mut Vec<String>,
) -> Result<IdleFirstWrite, BenchError> {
    let version = layout.version();
    let mut skipped: Option<String> = None;
    let (by_tid, by_zero) = if args.idle_samples > 0 {
        match idle_first_write(layout, guard, args.idle_samples, IDLE) {
            Ok(v) => v,
            Err(e) if version == CgroupVersion::V2 => {
                let why = format!("not measured on this cgroup v2 host: {e}");
                notes.push(format!("idle first write: {why}"));
                skipped = Some(why);
                (Vec::new(), Vec::new())
            }
            Err(e) => return Err(e),
        }
    } else {
        skipped = Some("--idle-samples 0".into());
        (Vec::new(), Vec::new())
    };
    Ok(IdleFirstWrite {
        idle_ms: IDLE.as_millis() as u64,
        file: match version {
            CgroupVersion::V1 => "tasks",
            CgroupVersion::V2 => "cgroup.threads",
        },
        skipped,
        by_tid: UsFigures::of(&by_tid),
        by_zero: UsFigures::of(&by_zero),
    })
}

/// The idle time before each first write.
const IDLE: Duration = Duration::from_millis(100);

/// Runs `bench placement`.
pub fn run(args: &PlacementArgs, ctx: &Context) -> Result<(), BenchError> {
    let counts = crate::parse_list(&args.vcpus).map_err(BenchError::BadInput)?;
    if let Some(&big) = counts
        .iter()
        .find(|&&n| n > host_cgroups::config::MAX_VCPUS)
    {
        return Err(BenchError::BadInput(format!(
            "--vcpus {big}: at most {} vCPUs",
            host_cgroups::config::MAX_VCPUS
        )));
    }
    let backend: BackendChoice = args
        .backend
        .parse()
        .map_err(|e| BenchError::BadInput(format!("--backend: {e}")))?;
    let layout = util::thread_layout()?;
    let version = layout.version();
    let online: Vec<u32> = online_cpus()
        .map_err(|e| BenchError::step("online CPUs", e))?
        .iter()
        .collect();
    let guard = BenchCgroups::new(&layout);
    let (split_layout, mut notes) = split_notes(&layout, &guard)?;
    let load_start = machine::loadavg();
    let machine = Machine::now();
    let t0 = Instant::now();
    let mut results = Vec::new();
    let mut series = Vec::new();
    let mut backend_used = String::new();
    let modes: Vec<Mode> = MODES
        .iter()
        .copied()
        .filter(|m| !(args.no_self_place && matches!(m, Mode::SelfPlace | Mode::SelfNested)))
        // On v2 the split is nested already: the extra row would measure the same thing.
        .filter(|m| !(*m == Mode::SelfNested && version == CgroupVersion::V2))
        .collect();
    for &n in &counts {
        let runs = args.runs.unwrap_or_else(|| default_runs(n)).max(1);
        let pin_cpus: Option<String> = (n as usize <= online.len()).then(|| {
            online[..n as usize]
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        });
        let mut aggs: Vec<(Mode, Agg)> = modes.iter().map(|&m| (m, Agg::default())).collect();
        for r in 0..runs {
            // Rotate the order so that drift in machine load hits all alike.
            for k in 0..modes.len() {
                let i = (r as usize + k) % modes.len();
                let mode = modes[i];
                let tag = format!("{}{n}-{r}", &mode.key()[..2]);
                let out = one_run(
                    &layout,
                    &guard,
                    &tag,
                    n,
                    backend,
                    mode,
                    r == 0,
                    pin_cpus.as_deref(),
                )?;
                backend_used = out.backend.clone();
                aggs[i].1.add(out);
            }
        }
        for (mode, agg) in &aggs {
            series.push(Series {
                label: format!("{}, {n} vCPUs", mode.label()),
                values: agg.held_us.clone(),
            });
        }
        ctx.progress.progress(&format!(
            "placement: {n} vCPUs, {runs} runs of each approach done"
        ));
        results.push(SizeRow::new(n, runs, pin_cpus, &aggs));
    }
    let idle_first_write = idle_figures(args, &layout, &guard, &mut notes)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let load_end = machine::loadavg();
    drop(guard);

    let command_line: Vec<String> = std::iter::once("host-cgroups".to_string())
        .chain(std::env::args().skip(1))
        .collect();
    let result = PlacementResult {
        bench: "placement",
        command: "host-cgroups bench placement",
        driver: "cgroupfs",
        cgroup_version: version.number(),
        split_layout,
        notes,
        sandbox_cgroup_only: SANDBOX_CGROUP_ONLY,
        backend: backend_used,
        machine,
        loadavg_end: load_end,
        elapsed_s: round3(elapsed),
        targets: PlacementTargets::of(&results),
        results,
        idle_first_write,
        method: Method {
            loadavg_start: load_start,
            command_line: command_line.join(" "),
        },
    };
    let svg = cdf_svg(
        &format!(
            "vCPU held time in the start hook ({} vCPUs, cgroup v{version})",
            result.backend
        ),
        "hook entry → return (µs, log scale)",
        &series,
    );
    report::emit(
        ctx,
        &args.common,
        report::Output {
            name: "placement",
            result: &result,
            markdown: result.markdown(),
            svg: Some(svg),
        },
    )
}
