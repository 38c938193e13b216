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
//!   tid to the controller thread and waits while it writes the tid to every
//!   `tasks` file (v2: the `vcpus` child's `cgroup.threads`); the controller pins
//!   after the fact.
//! - **upstream** (runtime-rs + dragonball, default mode): the whole process moved
//!   into the sandbox cgroup at sandbox creation, so vCPUs are born placed; no
//!   hook; for pinning, after `Vmm::start` returns the vCPU tids are looked up
//!   (scan of `/proc/self/task/*/comm`, like `get_thread_ids`), retried after
//!   50 ms, 100 ms, ... until all are seen, then each is pinned. Upstream does this
//!   after the guest has booted and the agent answered; here right after start, so
//!   its unpinned time is a lower bound.
//! - **cgroups-rs** (split mode): the vCPU waits while a controller thread adds
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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use vcpu_hooks::{gettid, HookError, PlacementError, VcpuEvent, VcpuHooks};

use super::machine::{self, Machine};
use super::report::{self, cdf_svg, num, Series, Table};
use super::stats::{ratio, round3, Summary};
use super::util::{self, BenchCgroups};
use super::{BenchError, Common, Context};
use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::controller::{get_affinity, set_affinity, CgroupController, ControllerOptions};
use host_cgroups::host::{online_cpus, parse_proc_cgroup, CgroupLayout, CgroupVersion};
use host_cgroups::manager::fs::migration_writes;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::resources::from_json;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Born,
    SelfPlace,
    /// cgroup v1 only: the nested split (`vcpu_cgroup_layout = "nested"`), where a vCPU
    /// moves in the cpu, cpuacct and cpuset hierarchies only (on v2 `SelfPlace` is it).
    SelfNested,
    CtlWrites,
    Upstream,
    CgroupsRs,
}

const MODES: [Mode; 6] = [
    Mode::Born,
    Mode::SelfPlace,
    Mode::SelfNested,
    Mode::CtlWrites,
    Mode::Upstream,
    Mode::CgroupsRs,
];

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Mode::Born => "born",
            Mode::SelfPlace => "self_place",
            Mode::SelfNested => "self_place_nested",
            Mode::CtlWrites => "controller_writes",
            Mode::Upstream => "upstream",
            Mode::CgroupsRs => "cgroups_rs",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Mode::Born => "born (default mode)",
            Mode::SelfPlace => "self-placement (split)",
            Mode::SelfNested => "self-placement (nested split)",
            Mode::CtlWrites => "controller writes tids (split, before)",
            Mode::Upstream => "upstream (default mode, pinning pulled)",
            Mode::CgroupsRs => "cgroups-rs add_task (split)",
        }
    }
    fn split(self) -> bool {
        matches!(
            self,
            Mode::SelfPlace | Mode::SelfNested | Mode::CtlWrites | Mode::CgroupsRs
        )
    }
    fn pins(self) -> bool {
        !matches!(self, Mode::CgroupsRs)
    }
}

/// What one vCPU thread saw around its start hook.
#[derive(Debug, Clone)]
struct ProbeRec {
    index: u32,
    tid: i32,
    entry: Instant,
    exit: Instant,
    /// CPU time the thread spent in its hook, in ns: the hook's own work, without the
    /// time it waited for a CPU (preempted by spinning vCPUs on a small host).
    held_cpu_ns: u64,
    /// CPU time of the thread when its hook returned.
    cpu_ns_at_exit: u64,
    /// In its planned cgroup (sandbox cgroup, or the nested `vcpus` child) when its hook returned.
    placed_at_exit: bool,
    /// Single-CPU affinity when its hook returned.
    pinned_at_exit: bool,
    /// The fields above were read (verifying runs only: the reads cost CPU).
    verified: bool,
}

/// Wraps the hooks under test and records what each vCPU saw.
struct Probe {
    inner: Arc<dyn VcpuHooks>,
    /// Where the plan puts vCPUs (`/`-prefixed, as in `/proc/thread-self/cgroup`):
    /// the nested layout's `vcpus` child, else the sandbox cgroup.
    vcpu_cgroup: String,
    /// The `/proc/thread-self/cgroup` key to compare: `cpu` (v1) or `""` (v2).
    cgroup_key: &'static str,
    verify: bool,
    recs: Mutex<Vec<ProbeRec>>,
}

impl VcpuHooks for Probe {
    fn vcpu_started(&self, index: u32) -> Result<(), HookError> {
        let cpu_entry = util::thread_cpu_ns();
        let entry = Instant::now();
        let r = self.inner.vcpu_started(index);
        let exit = Instant::now();
        let held_cpu_ns = util::thread_cpu_ns().saturating_sub(cpu_entry);
        let mut rec = ProbeRec {
            index,
            tid: gettid(),
            entry,
            exit,
            held_cpu_ns,
            cpu_ns_at_exit: 0,
            placed_at_exit: false,
            pinned_at_exit: false,
            verified: false,
        };
        if self.verify {
            rec.cpu_ns_at_exit = util::thread_cpu_ns();
            rec.placed_at_exit =
                util::thread_cgroup(self.cgroup_key).as_deref() == Some(self.vcpu_cgroup.as_str());
            rec.pinned_at_exit = get_affinity(0).is_ok_and(|a| a.len() == 1);
            rec.verified = true;
        }
        self.recs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(rec);
        r
    }

    fn vcpu_exited(&self, index: u32) {
        self.inner.vcpu_exited(index);
    }
}

/// The measurements of one run of one approach.
#[derive(Debug, Default)]
struct RunOut {
    held_us: Vec<f64>,
    held_cpu_us: Vec<f64>,
    /// First vCPU's hook entry to the last vCPU's hook entry: the VMM's own spawning.
    spawn_span_us: f64,
    placed_us: Vec<f64>,
    pinned_us: Vec<f64>,
    unplaced_guest_us: Vec<f64>,
    unpinned_guest_us: Vec<f64>,
    released_unplaced: usize,
    released_unpinned: usize,
    span_us: f64,
    writes_per_vcpu: f64,
    retries: u32,
    backend: String,
}

fn config(split: bool, pin: bool) -> Result<RuntimeConfig, BenchError> {
    let mut c = RuntimeConfig::embedded().map_err(|e| BenchError::step("embedded config", e))?;
    c.sandbox_cgroup_only = !split;
    c.enable_vcpus_pinning = pin;
    Ok(c)
}

/// The configuration of `mode`'s runs.
fn mode_config(mode: Mode, pin: bool) -> Result<RuntimeConfig, BenchError> {
    let mut c = config(mode.split(), pin)?;
    if mode == Mode::SelfNested {
        c.vcpu_cgroup_layout = Some(host_cgroups::placement::SplitChoice::Nested);
    }
    Ok(c)
}

/// Serves the channel hooks with cgroups-rs: adds each tid to the vCPU cgroup
/// (`relative`: the sandbox cgroup on v1, the threaded `vcpus` child on v2).
fn cgroups_rs_server(
    rx: vcpu_hooks::HookReceiver,
    relative: String,
    controllers: Vec<String>,
) -> std::thread::JoinHandle<Vec<(u32, Instant)>> {
    std::thread::spawn(move || {
        let cg = cgroups_rs::fs::Cgroup::load_with_specified_controllers(
            cgroups_rs::fs::hierarchies::auto(),
            &relative,
            controllers,
        );
        let mut placed = Vec::new();
        for msg in rx {
            match msg.event {
                VcpuEvent::Started { index, tid, .. } => {
                    let r = cg
                        .add_task(cgroups_rs::CgroupPid::from(tid as u64))
                        .map_err(|e| PlacementError::Controller {
                            what: format!("cgroups-rs add_task {tid}: {e}"),
                        });
                    placed.push((index, Instant::now()));
                    msg.confirm(r);
                }
                _ => msg.confirm(Ok(())),
            }
        }
        placed
    })
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    layout: &CgroupLayout,
    guard: &BenchCgroups,
    tag: &str,
    n: u32,
    backend: BackendChoice,
    mode: Mode,
    verify: bool,
    pin_cpus: Option<&str>,
) -> Result<RunOut, BenchError> {
    let pin = pin_cpus.is_some() && mode.pins();
    let plan = SandboxPlan::new(
        &mode_config(mode, pin)?,
        tag,
        &format!("{}/{tag}", guard.name),
        layout,
        None,
    )
    .map_err(|e| BenchError::step("plan", e))?;
    // Where this mode's vCPUs belong: the nested layout's child when the plan has
    // one (v2 split), else the sandbox cgroup.
    let relative = plan
        .vcpus_child
        .as_ref()
        .map_or_else(|| plan.sandbox.path.clone(), |c| c.path.clone());
    let vcpu_cgroup = format!("/{relative}");
    let ctl = CgroupController::start(
        plan,
        ControllerOptions {
            enable_vcpus_pinning: pin && mode != Mode::Upstream,
            ..Default::default()
        },
    )
    .map_err(|e| BenchError::step("controller start", e))?;
    let result = (|| -> Result<RunOut, BenchError> {
        if let (Some(cpus), true) = (pin_cpus, mode.pins()) {
            let r = from_json(&format!(r#"{{"cpu":{{"cpus":"{cpus}"}}}}"#))
                .map_err(|e| BenchError::step("cpuset", e))?;
            ctl.update_container("bench", Some(r))
                .map_err(|e| BenchError::step("cpuset", e))?;
        }
        let mut server = None;
        let inner: Arc<dyn VcpuHooks> = match mode {
            Mode::Born | Mode::SelfPlace | Mode::SelfNested => ctl.hooks_for_boot(n),
            Mode::CtlWrites => ctl.hooks_controller_writes(),
            Mode::Upstream => Arc::new(vcpu_hooks::NoHooks),
            Mode::CgroupsRs => {
                let (h, rx) = vcpu_hooks::channel(vcpu_hooks::DEFAULT_PLACEMENT_TIMEOUT);
                server = Some(cgroups_rs_server(
                    rx,
                    relative.clone(),
                    layout.controllers(),
                ));
                Arc::new(h)
            }
        };
        let probe = Arc::new(Probe {
            inner,
            vcpu_cgroup: vcpu_cgroup.clone(),
            cgroup_key: match layout.version() {
                CgroupVersion::V1 => "cpu",
                CgroupVersion::V2 => "",
            },
            verify,
            recs: Mutex::new(Vec::new()),
        });
        let cfg = VmmConfig {
            vcpus: n,
            max_vcpus: n,
            backend,
        };
        let writes_before = migration_writes();
        let hooks: Arc<dyn VcpuHooks> = probe.clone();
        let mut vmm = Vmm::new(cfg, hooks).map_err(|e| BenchError::step("VMM new", e))?;
        vmm.start()
            .map_err(|e| BenchError::step(format!("VMM start ({n} vCPUs)"), e))?;
        let mut out = RunOut {
            backend: vmm.backend().to_string(),
            ..Default::default()
        };
        let mut vmm = Some(vmm);
        out.writes_per_vcpu = (migration_writes() - writes_before) as f64 / n as f64;
        // Pinned from outside after start (upstream; and the controller's late pins).
        let mut pinned_late: Vec<(i32, Instant, u64)> = Vec::new();
        if mode == Mode::Upstream && pin {
            let cpus: Vec<u32> =
                host_cgroups::resources::CpuList::parse("cpus", pin_cpus.unwrap_or(""))
                    .map_err(|e| BenchError::step("cpuset", e))?
                    .iter()
                    .collect();
            let mut delay = Duration::from_millis(50);
            let found = loop {
                let f = demo_vmm::scan_vcpu_tids();
                if f.len() >= n as usize || out.retries >= 10 {
                    break f;
                }
                std::thread::sleep(delay);
                delay *= 2;
                out.retries += 1;
            };
            for (index, tid) in found {
                let Some(&cpu) = cpus.get(index as usize) else {
                    continue;
                };
                let cpu_ns = util::task_cpu_ns_now(tid).unwrap_or(0);
                set_affinity(tid, &[cpu]).map_err(|e| BenchError::step("upstream pin", e))?;
                pinned_late.push((tid, Instant::now(), cpu_ns));
            }
        }
        let probes = probe
            .recs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let recs = ctl.vcpus();
        let cgroups_rs_placed = match server.take() {
            Some(s) => {
                drop(probe);
                // The server ends once every hook clone (held by the VMM) is gone.
                if let Some(v) = vmm.take() {
                    v.stop().map_err(|e| BenchError::step("VMM stop", e))?;
                }
                s.join()
                    .map_err(|_| BenchError::step("cgroups-rs server", "panicked"))?
            }
            None => Vec::new(),
        };
        let first = probes.iter().map(|p| p.entry).min();
        let mut last_placed: Option<Instant> = None;
        for p in &probes {
            out.held_us
                .push(p.exit.duration_since(p.entry).as_secs_f64() * 1e6);
            out.held_cpu_us.push(p.held_cpu_ns as f64 / 1e3);
            let placed = match mode {
                Mode::Upstream => Some(p.entry),
                Mode::CgroupsRs => cgroups_rs_placed
                    .iter()
                    .find(|(i, _)| *i == p.index)
                    .map(|(_, t)| *t),
                _ => recs
                    .iter()
                    .find(|r| r.tid == p.tid)
                    .and_then(|r| r.placed_after_us)
                    .map(|us| p.entry + Duration::from_micros(us)),
            };
            let Some(placed) = placed else {
                return Err(BenchError::step(
                    format!("vCPU {} (tid {})", p.index, p.tid),
                    "not placed",
                ));
            };
            out.placed_us
                .push(placed.saturating_duration_since(p.entry).as_secs_f64() * 1e6);
            last_placed = Some(last_placed.map_or(placed, |l| l.max(placed)));
            if p.verified {
                if p.placed_at_exit {
                    out.unplaced_guest_us.push(0.0);
                } else {
                    out.released_unplaced += 1;
                }
            }
            if !pin {
                continue;
            }
            // Time to pinned.
            let pinned_at = match mode {
                Mode::Upstream => pinned_late
                    .iter()
                    .find(|(t, _, _)| *t == p.tid)
                    .map(|(_, at, _)| *at),
                _ => recs
                    .iter()
                    .find(|r| r.tid == p.tid)
                    .and_then(|r| r.pinned_after_us)
                    .map(|us| p.entry + Duration::from_micros(us)),
            };
            if let Some(at) = pinned_at {
                out.pinned_us
                    .push(at.saturating_duration_since(p.entry).as_secs_f64() * 1e6);
            }
            if p.verified {
                if p.pinned_at_exit {
                    out.unpinned_guest_us.push(0.0);
                } else {
                    out.released_unpinned += 1;
                    // Ran unpinned from its hook's return until pinned from outside.
                    let cpu_then = match mode {
                        Mode::Upstream => pinned_late
                            .iter()
                            .find(|(t, _, _)| *t == p.tid)
                            .map(|(_, _, c)| *c),
                        _ => util::task_cpu_ns_now(p.tid),
                    };
                    if let Some(c) = cpu_then {
                        out.unpinned_guest_us
                            .push(c.saturating_sub(p.cpu_ns_at_exit) as f64 / 1e3);
                    }
                }
            }
        }
        if let (Some(f), Some(l)) = (first, last_placed) {
            out.span_us = l.saturating_duration_since(f).as_secs_f64() * 1e6;
        }
        if let (Some(f), Some(l)) = (first, probes.iter().map(|p| p.entry).max()) {
            out.spawn_span_us = l.saturating_duration_since(f).as_secs_f64() * 1e6;
        }
        if let Some(v) = vmm.take() {
            v.stop().map_err(|e| BenchError::step("VMM stop", e))?;
        }
        if mode == Mode::CgroupsRs {
            // cgroups-rs writes from outside: count its writes per tid (v1: one `tasks`
            // write per subsystem; v2: one `cgroup.threads` write, to its first subsystem).
            out.writes_per_vcpu = match layout.version() {
                CgroupVersion::V1 => cgroups_rs::fs::Cgroup::load_with_specified_controllers(
                    cgroups_rs::fs::hierarchies::auto(),
                    &relative,
                    layout.controllers(),
                )
                .subsystems()
                .len() as f64,
                CgroupVersion::V2 => 1.0,
            };
        }
        Ok(out)
    })();
    let teardown = ctl.shutdown(true);
    let out = result?;
    if !teardown.errors.is_empty() {
        return Err(BenchError::step("teardown", teardown.errors.join("; ")));
    }
    Ok(out)
}

/// Everything measured for one approach at one vCPU count.
#[derive(Debug, Default)]
struct Agg {
    held_us: Vec<f64>,
    held_cpu_us: Vec<f64>,
    spawn_span_us: Vec<f64>,
    placed_us: Vec<f64>,
    pinned_us: Vec<f64>,
    unplaced_guest_us: Vec<f64>,
    unpinned_guest_us: Vec<f64>,
    released_unplaced: usize,
    released_unpinned: usize,
    span_us: Vec<f64>,
    writes_per_vcpu: Vec<f64>,
    retries_max: u32,
    runs: u32,
}

impl Agg {
    fn add(&mut self, r: RunOut) {
        self.held_us.extend(r.held_us);
        self.held_cpu_us.extend(r.held_cpu_us);
        self.spawn_span_us.push(r.spawn_span_us);
        self.placed_us.extend(r.placed_us);
        self.pinned_us.extend(r.pinned_us);
        self.unplaced_guest_us.extend(r.unplaced_guest_us);
        self.unpinned_guest_us.extend(r.unpinned_guest_us);
        self.released_unplaced += r.released_unplaced;
        self.released_unpinned += r.released_unpinned;
        self.span_us.push(r.span_us);
        self.writes_per_vcpu.push(r.writes_per_vcpu);
        self.retries_max = self.retries_max.max(r.retries);
        self.runs += 1;
    }

    fn json(&self, pinning: bool) -> Value {
        let l = Summary::of(&self.placed_us);
        let h = Summary::of(&self.held_us);
        let g = Summary::of(&self.unplaced_guest_us);
        let s = Summary::of(&self.span_us);
        let p = Summary::of(&self.pinned_us);
        let u = Summary::of(&self.unpinned_guest_us);
        let w = Summary::of(&self.writes_per_vcpu);
        let hc = Summary::of(&self.held_cpu_us);
        let sp = Summary::of(&self.spawn_span_us);
        json!({
            "runs": self.runs,
            "samples": l.n,
            // Existing fields: latency = hook entry to placed.
            "p50_us": round3(l.p50),
            "p99_us": round3(l.p99),
            "max_us": round3(l.max),
            "unplaced_guest_us": round3(g.p50),
            "unplaced_guest_samples": g.n,
            "unplaced_guest_p99_us": round3(g.p99),
            "unplaced_guest_max_us": round3(g.max),
            "released_unplaced": self.released_unplaced,
            "all_placed_p50_ms": round3(s.p50 / 1e3),
            "all_placed_max_ms": round3(s.max / 1e3),
            "lookup_retries_max": self.retries_max,
            // Issue 11 fields.
            "held_p50_us": round3(h.p50),
            "held_p99_us": round3(h.p99),
            "held_max_us": round3(h.max),
            "span_p50_ms": round3(s.p50 / 1e3),
            "span_max_ms": round3(s.max / 1e3),
            "pinning_measured": pinning,
            "pinned_p50_us": if pinning && p.n > 0 { json!(round3(p.p50)) } else { Value::Null },
            "pinned_p99_us": if pinning && p.n > 0 { json!(round3(p.p99)) } else { Value::Null },
            "pinned_max_us": if pinning && p.n > 0 { json!(round3(p.max)) } else { Value::Null },
            "unpinned_guest_max_us": if pinning && u.n > 0 { json!(round3(u.max)) } else { Value::Null },
            "unpinned_guest_p50_us": if pinning && u.n > 0 { json!(round3(u.p50)) } else { Value::Null },
            "released_unpinned": self.released_unpinned,
            "cgroup_writes_per_vcpu": round3(w.max),
            // CPU time in the hook (its own work, preemption excluded) and the VMM's own
            // spawn span (first to last hook entry), the floor under "all placed".
            "held_cpu_p50_us": round3(hc.p50),
            "held_cpu_p99_us": round3(hc.p99),
            "held_cpu_max_us": round3(hc.max),
            "spawn_span_max_ms": round3(sp.max / 1e3),
        })
    }
}

/// The first thread-move write after the cgroup core has been idle for `idle`,
/// moving a thread of ours by its tid vs by `0` ("the calling thread"), in µs
/// (v1: `tasks`; v2: `cgroup.threads`, see [`idle_first_write_v2`]).
///
/// Since Linux 5.17 a write of `0` (or any single-thread write by the thread
/// itself through `0`) skips the global threadgroup lock, whose first writer
/// after a quiet spell waits for an RCU grace period.
fn idle_first_write(
    layout: &CgroupLayout,
    guard: &BenchCgroups,
    samples: u32,
    idle: Duration,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    if layout.version() == CgroupVersion::V2 {
        return idle_first_write_v2(layout, guard, samples, idle);
    }
    let mount = layout
        .mounts
        .get("cpu")
        .cloned()
        .ok_or_else(|| BenchError::Unsupported("no cpu hierarchy".into()))?;
    let dir = mount.join(&guard.name).join("idle");
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::step("mkdir idle cgroup", e))?;
    let home = util::home_of(layout, &mount);
    idle_probe(dir.join("tasks"), home.join("tasks"), samples, idle)
}

/// On a probe thread: `samples` times each, after `idle` without migrations, writes
/// its tid (then `0`) to `there` (timed) and the same value to `back`.
fn idle_probe(
    there: PathBuf,
    back: PathBuf,
    samples: u32,
    idle: Duration,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let worker = std::thread::Builder::new()
        .name("hcg-idle-probe".into())
        .spawn(move || -> Result<(Vec<f64>, Vec<f64>), String> {
            use std::io::Write as _;
            let open = |p: &Path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| format!("open {}: {e}", p.display()))
            };
            let (mut there_f, mut back_f) = (open(&there)?, open(&back)?);
            let tid = gettid().to_string();
            let (mut by_tid, mut by_zero) = (Vec::new(), Vec::new());
            for k in 0..samples * 2 {
                std::thread::sleep(idle);
                let value = if k % 2 == 0 { tid.as_str() } else { "0" };
                let t = Instant::now();
                there_f
                    .write_all(value.as_bytes())
                    .map_err(|e| format!("write {value} to {}: {e}", there.display()))?;
                let us = t.elapsed().as_secs_f64() * 1e6;
                back_f
                    .write_all(value.as_bytes())
                    .map_err(|e| format!("move back through {}: {e}", back.display()))?;
                if k % 2 == 0 {
                    by_tid.push(us);
                } else {
                    by_zero.push(us);
                }
            }
            Ok((by_tid, by_zero))
        })
        .map_err(|e| BenchError::step("spawn idle probe", e))?;
    worker
        .join()
        .map_err(|_| BenchError::step("idle probe", "panicked"))?
        .map_err(|e| BenchError::step("idle probe", e))
}

/// The v2 cgroups of [`idle_first_write_v2`]: moves this process back to where it
/// was and removes `<guard>/idle/t` and `<guard>/idle` on drop, error or not.
struct IdleV2 {
    /// This process's cgroup before the move.
    home: PathBuf,
    /// `<unified>/<guard>/idle` (a domain cgroup; threaded domain once `t` is threaded).
    idle: PathBuf,
    /// `<idle>/t`, threaded.
    t: PathBuf,
    /// This process was moved into `idle`.
    moved: bool,
}

impl Drop for IdleV2 {
    fn drop(&mut self) {
        if self.moved {
            let _ = std::fs::write(
                self.home.join("cgroup.procs"),
                std::process::id().to_string(),
            );
        }
        for d in [&self.t, &self.idle] {
            let start = Instant::now();
            while std::fs::remove_dir(d).is_err()
                && d.exists()
                && start.elapsed() < Duration::from_secs(3)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// cgroup v2 [`idle_first_write`]: a single thread moves only inside its threaded
/// subtree, so this process moves into `<guard>/idle` (its own domain cgroup), whose
/// child `t` is made threaded, and the probe thread moves between
/// `t/cgroup.threads` and `idle/cgroup.threads`; then the process moves back.
/// Only this process is moved, only under the guard's name.
fn idle_first_write_v2(
    layout: &CgroupLayout,
    guard: &BenchCgroups,
    samples: u32,
    idle: Duration,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let unified = layout
        .unified
        .clone()
        .ok_or_else(|| BenchError::Unsupported("no cgroup v2 mount".into()))?;
    let now = std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| parse_proc_cgroup(&t))
        .map_err(|e| BenchError::step("read /proc/self/cgroup", e))?;
    let here = now
        .get("")
        .ok_or_else(|| BenchError::step("read /proc/self/cgroup", "no cgroup v2 (0::) line"))?;
    let idle_dir = unified.join(&guard.name).join("idle");
    let mut cg = IdleV2 {
        home: unified.join(here.trim_start_matches('/')),
        t: idle_dir.join("t"),
        idle: idle_dir,
        moved: false,
    };
    std::fs::create_dir_all(&cg.t)
        .map_err(|e| BenchError::step(format!("mkdir {}", cg.t.display()), e))?;
    let ty = cg.t.join("cgroup.type");
    std::fs::write(&ty, "threaded")
        .map_err(|e| BenchError::step(format!("write threaded to {}", ty.display()), e))?;
    let procs = cg.idle.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| BenchError::step(format!("move this process to {}", procs.display()), e))?;
    cg.moved = true;
    idle_probe(
        cg.t.join("cgroup.threads"),
        cg.idle.join("cgroup.threads"),
        samples,
        idle,
    )
}

/// Runs `bench placement`.
pub fn run(args: &PlacementArgs, ctx: &Context) -> Result<(), BenchError> {
    let counts = super::parse_list(&args.vcpus).map_err(BenchError::BadInput)?;
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
    // What split mode is on this host (side-effect free plan of a dummy sandbox).
    let split_plan = SandboxPlan::new(
        &config(true, false)?,
        "split",
        &format!("{}/split", guard.name),
        &layout,
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
    if version == CgroupVersion::V2 {
        notes.push(
            "cgroups-rs on cgroup v2: Cgroup::add_task writes the tid to cgroup.threads only when the target \
             is threaded or domain threaded (else it fails; FsManager::add_thread then moves the whole \
             process); here its target is the threaded vcpus child, so it places one thread, with a \
             cgroup.type read before each write"
                .to_string(),
        );
    }
    let load_start = machine::loadavg();
    let machine = Machine::now();
    let t0 = Instant::now();
    let mut results = Vec::new();
    let mut t = Table::new(&[
        "vCPUs",
        "approach",
        "held p50 / p99 / max µs",
        "held CPU p50 / p99 µs",
        "placed p50 / p99 µs",
        "all placed (span) / spawn span max ms",
        "unplaced guest µs max / released unplaced",
        "pinned p50 / max µs",
        "unpinned guest µs max / released unpinned",
        "cgroup writes per vCPU",
    ]);
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
        let mut aggs: Vec<Agg> = modes.iter().map(|_| Agg::default()).collect();
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
                aggs[i].add(out);
            }
        }
        let mut row = json!({ "vcpus": n, "runs": runs, "pinning_cpus": pin_cpus });
        let pinning = pin_cpus.is_some();
        for (mode, agg) in modes.iter().zip(&aggs) {
            let pins = pinning && mode.pins();
            row[mode.key()] = agg.json(pins);
            let h = Summary::of(&agg.held_us);
            let l = Summary::of(&agg.placed_us);
            let p = Summary::of(&agg.pinned_us);
            t.row(vec![
                n.to_string(),
                mode.label().to_string(),
                format!("{} / {} / {}", num(h.p50), num(h.p99), num(h.max)),
                {
                    let c = Summary::of(&agg.held_cpu_us);
                    format!("{} / {}", num(c.p50), num(c.p99))
                },
                format!("{} / {}", num(l.p50), num(l.p99)),
                format!(
                    "{} / {}",
                    num(Summary::of(&agg.span_us).max / 1e3),
                    num(Summary::of(&agg.spawn_span_us).max / 1e3)
                ),
                format!(
                    "{} / {}",
                    num(Summary::of(&agg.unplaced_guest_us).max),
                    agg.released_unplaced
                ),
                if pins && p.n > 0 {
                    format!("{} / {}", num(p.p50), num(p.max))
                } else {
                    "—".into()
                },
                if pins {
                    format!(
                        "{} / {}",
                        num(Summary::of(&agg.unpinned_guest_us).max),
                        agg.released_unpinned
                    )
                } else {
                    "—".into()
                },
                num(Summary::of(&agg.writes_per_vcpu).max),
            ]);
            series.push(Series {
                label: format!("{}, {n} vCPUs", mode.label()),
                values: agg.held_us.clone(),
            });
        }
        // Fields kept from the previous version of this benchmark.
        let get = |m: Mode| modes.iter().position(|x| *x == m).map(|i| &aggs[i]);
        if let Some(c) = get(Mode::CtlWrites) {
            row["hooks"] = c.json(pinning);
        }
        if let Some(u) = get(Mode::Upstream) {
            row["pull"] = u.json(pinning);
        }
        row["self_place_prototype"] = get(Mode::SelfPlace)
            .map(|a| a.json(pinning))
            .unwrap_or(Value::Null);
        if let (Some(c), Some(s)) = (get(Mode::CtlWrites), get(Mode::SelfPlace)) {
            let (cs, ss) = (Summary::of(&c.placed_us), Summary::of(&s.placed_us));
            row["speedup"] = json!(round3(ratio(cs.p50, ss.p50)));
            row["speedup_p99"] = json!(round3(ratio(cs.p99, ss.p99)));
        }
        ctx.progress.progress(&format!(
            "placement: {n} vCPUs, {runs} runs of each approach done"
        ));
        results.push(row);
    }
    let idle_file = match version {
        CgroupVersion::V1 => "tasks",
        CgroupVersion::V2 => "cgroup.threads",
    };
    let mut idle_skipped: Option<String> = None;
    let (idle_tid, idle_zero) = if args.idle_samples > 0 {
        match idle_first_write(
            &layout,
            &guard,
            args.idle_samples,
            Duration::from_millis(100),
        ) {
            Ok(v) => v,
            // v2 needs a threaded subtree of our own, which a host may refuse: say so.
            Err(e) if version == CgroupVersion::V2 => {
                let why = format!("not measured on this cgroup v2 host: {e}");
                notes.push(format!("idle first write: {why}"));
                idle_skipped = Some(why);
                (Vec::new(), Vec::new())
            }
            Err(e) => return Err(e),
        }
    } else {
        idle_skipped = Some("--idle-samples 0".into());
        (Vec::new(), Vec::new())
    };
    let (it, iz) = (Summary::of(&idle_tid), Summary::of(&idle_zero));
    let elapsed = t0.elapsed().as_secs_f64();
    let load_end = machine::loadavg();
    drop(guard);

    // Targets (issue 11).
    let at = |n: u32, m: &str, f: &str| -> Option<f64> {
        results
            .iter()
            .find(|r| r["vcpus"] == n)
            .and_then(|r| r[m][f].as_f64())
    };
    let born_worst_p99 = counts
        .iter()
        .filter_map(|&n| at(n, "born", "held_p99_us"))
        .fold(0.0, f64::max);
    let born_writes = counts
        .iter()
        .filter_map(|&n| at(n, "born", "cgroup_writes_per_vcpu"))
        .fold(0.0, f64::max);
    let split_p99_8 = counts
        .iter()
        .filter(|&&n| n <= 8)
        .filter_map(|&n| at(n, "self_place", "held_p99_us"))
        .fold(0.0, f64::max);
    let span64 = at(64, "self_place", "span_max_ms");
    let span240 = at(240, "self_place", "span_max_ms");
    // The hook's own work in born mode, preemption excluded.
    let born_cpu_worst_p99 = counts
        .iter()
        .filter_map(|&n| at(n, "born", "held_cpu_p99_us"))
        .fold(0.0, f64::max);
    // The VMM's own spawn span with no placement at all (upstream: no hook), under
    // which no "all placed" figure can fall.
    let spawn64 = at(64, "upstream", "spawn_span_max_ms");
    let spawn240 = at(240, "upstream", "spawn_span_max_ms");
    // v1 only: the same targets for the nested split (3 hierarchies per vCPU, not 8).
    let nested_p99_8 = counts
        .iter()
        .filter(|&&n| n <= 8)
        .filter_map(|&n| at(n, "self_place_nested", "held_p99_us"))
        .reduce(f64::max);
    let nested64 = at(64, "self_place_nested", "span_max_ms");
    let nested240 = at(240, "self_place_nested", "span_max_ms");
    let unplaced_any = results.iter().any(|r| {
        ["born", "self_place", "self_place_nested"]
            .iter()
            .any(|m| r[m]["released_unplaced"].as_u64().unwrap_or(0) > 0)
    });
    let unpinned_any = results.iter().any(|r| {
        ["born", "self_place", "self_place_nested"]
            .iter()
            .any(|m| r[m]["released_unpinned"].as_u64().unwrap_or(0) > 0)
    });
    let targets = json!({
        "default_zero_writes": born_writes == 0.0,
        "default_held_p99_le_50us": born_worst_p99 <= 50.0,
        "default_held_worst_p99_us": round3(born_worst_p99),
        "split_held_p99_le_1ms_up_to_8": split_p99_8 <= 1000.0,
        "split_held_worst_p99_up_to_8_us": round3(split_p99_8),
        "split_64_within_2ms": span64.map(|ms| ms <= 2.0),
        "split_64_span_max_ms": span64,
        "split_240_within_5ms": span240.map(|ms| ms <= 5.0),
        "split_240_span_max_ms": span240,
        "split_nested_held_worst_p99_up_to_8_us": nested_p99_8.map(round3),
        "default_held_cpu_worst_p99_us": round3(born_cpu_worst_p99),
        "spawn_span_64_max_ms": spawn64,
        "spawn_span_240_max_ms": spawn240,
        "split_nested_64_span_max_ms": nested64,
        "split_nested_240_span_max_ms": nested240,
        "unplaced_guest_zero": !unplaced_any,
        "unpinned_guest_zero": !unpinned_any,
    });
    let command: Vec<String> = std::iter::once("host-cgroups".to_string())
        .chain(std::env::args().skip(1))
        .collect();
    let idle_line = match &idle_skipped {
        Some(why) => format!(
            "First `{idle_file}` write after 100 ms without cgroup migrations: not measured ({why})."
        ),
        None => format!(
            "First `{idle_file}` write after 100 ms without cgroup migrations ({} samples each): by tid \
             p50 {} µs, max {} µs; by `0` from the thread itself p50 {} µs, max {} µs.",
            it.n,
            num(it.p50),
            num(it.max),
            num(iz.p50),
            num(iz.max),
        ),
    };
    let notes_md: String = notes.iter().map(|n| format!("Note: {n}.\n\n")).collect();
    let markdown = format!(
        "## vCPU placement (cgroup v{version}, cgroupfs, `{backend_used}` vCPUs)\n\n\
         Command: `{}` ({elapsed:.0} s; every row of a size in the same run, \
         approaches alternating)\n\n{}\n{}\n{notes_md}\
         held: hook entry to return; placed: hook entry to the thread being in its planned cgroup \
         (the sandbox cgroup, or in the nested layout the `vcpus` child); \
         held CPU: CPU time the thread spent in its hook (its own work; held minus held CPU is time \
         it waited for a CPU); \
         span: first vCPU's hook entry to the last vCPU placed, next to the spawn span (first to \
         last hook entry: the VMM's own spawning, the floor under span); unplaced / unpinned guest µs: CPU time \
         run after the hook returned before being placed / pinned (checked in the first run of each \
         size); pinned: hook entry to single-CPU affinity (only where vCPUs = CPUs: the cpuset is the \
         first n online CPUs).\n\n\
         Targets: default mode zero writes per vCPU: {}; held p99 ≤ 50 µs at every size: {} (worst \
         {:.1} µs; CPU time in the hook, worst p99 {:.1} µs); split held p99 ≤ 1 ms up to 8 vCPUs: {} (worst {:.1} µs); 64 placed within 2 ms: \
         {}; 240 within 5 ms: {} (the VMM's own spawn span without placement, upstream row: {} at 64, \
         {} at 240); unplaced guest time 0: {}; unpinned guest time 0: {}.{}\n\n\
         {idle_line}\n",
        command.join(" "),
        machine::load_note(load_start, load_end),
        t.markdown(),
        yes_no(born_writes == 0.0),
        yes_no(born_worst_p99 <= 50.0),
        born_worst_p99,
        born_cpu_worst_p99,
        yes_no(split_p99_8 <= 1000.0),
        split_p99_8,
        span64.map_or("not measured".into(), |ms| format!("{} ({ms:.2} ms)", yes_no(ms <= 2.0))),
        span240.map_or("not measured".into(), |ms| format!("{} ({ms:.2} ms)", yes_no(ms <= 5.0))),
        spawn64.map_or("not measured".into(), |ms| format!("{ms:.2} ms")),
        spawn240.map_or("not measured".into(), |ms| format!("{ms:.2} ms")),
        yes_no(!unplaced_any),
        yes_no(!unpinned_any),
        match nested_p99_8 {
            Some(p99) => format!(
                " Nested split (v1): held p99 up to 8 vCPUs {:.1} µs; 64 placed within {}; 240 within {}.",
                p99,
                nested64.map_or("not measured".into(), |ms| format!("{ms:.2} ms")),
                nested240.map_or("not measured".into(), |ms| format!("{ms:.2} ms")),
            ),
            None => String::new(),
        },
    );
    let json = json!({
        "bench": "placement",
        "command": "host-cgroups bench placement",
        "driver": "cgroupfs",
        "cgroup_version": match version {
            CgroupVersion::V1 => 1,
            CgroupVersion::V2 => 2,
        },
        "split_layout": split_layout.to_string(),
        "notes": notes,
        "sandbox_cgroup_only": "born and upstream: true; self_place, self_place_nested, controller_writes, cgroups_rs: false",
        "backend": backend_used,
        "machine": machine,
        "loadavg_end": load_end,
        "elapsed_s": round3(elapsed),
        "results": results,
        "idle_first_write": {
            "idle_ms": 100,
            "file": idle_file,
            "skipped": idle_skipped,
            "by_tid": {"p50_us": round3(it.p50), "p99_us": round3(it.p99), "max_us": round3(it.max), "samples": it.n},
            "by_zero": {"p50_us": round3(iz.p50), "p99_us": round3(iz.p99), "max_us": round3(iz.max), "samples": iz.n},
        },
        "targets": targets,
    });
    let svg = cdf_svg(
        &format!("vCPU held time in the start hook ({backend_used} vCPUs, cgroup v{version})"),
        "hook entry → return (µs, log scale)",
        &series,
    );
    report::emit(
        ctx,
        &args.common,
        report::Output {
            name: "placement",
            result: &json,
            markdown,
            svg: Some(svg),
        },
    )
}

/// "yes" / "NO" for a target.
pub fn yes_no(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}
