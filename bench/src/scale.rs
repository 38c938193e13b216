//! `bench scale`: 1, 10, 100, 500 sandboxes alive at once in one process, each
//! with its controller and a VMM with 2 vCPUs placed.
//!
//! Each sandbox count runs in a fresh process (this program re-run with an
//! internal flag) so that memory figures do not inherit the allocator state of
//! the previous count. Per count:
//! 1. controllers only: RSS growth per controller (sandbox cgroup created, thread running);
//! 2. full sandboxes: create N (timed), RSS growth per sandbox, then freeze each
//!    sandbox's vCPUs (untimed: N×2 spinning vCPUs would otherwise starve the
//!    host), probe placement latency with N alive, destroy N (timed; each
//!    sandbox is thawed, untimed, just before its destroy).
//!
//! The sandboxes place only their vCPU threads (v1 cgroupfs, no process-wide
//! move): several sandboxes share this process, which a per-process move
//! would mix up. In production each sandbox has its own VMM process.

use std::time::Instant;

use clap::Args;
use serde_json::{json, Value};

use super::machine::{self, Machine};
use super::report::{self, cdf_svg, num, Series, Table};
use super::stats::{ratio, round3, Summary};
use super::util::{self, BenchCgroups};
use super::{BenchError, Common, Context};
use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::host::CgroupLayout;
use host_cgroups::manager::fs::write_file;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::resources;
use host_cgroups::sandbox::{Sandbox, SandboxOptions};

/// Arguments of `bench scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Output options.
    #[command(flatten)]
    pub common: Common,
    /// Sandbox counts, comma-separated.
    #[arg(long, value_name = "N,N,...", default_value = "1,10,100,500")]
    pub sandboxes: String,
    /// Probe sandboxes created (and destroyed) while N are alive, for placement latency.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub probes: u32,
    /// vCPU backend. `thread` by default: 500 KVM VMs exceed what many hosts allow.
    #[arg(long, value_name = "auto|kvm|thread", default_value = "thread")]
    pub backend: String,
    /// Internal: measure one count in this process and print its JSON.
    #[arg(long, hide = true, value_name = "N")]
    pub internal_n: Option<u32>,
}

const VCPUS: u32 = 2;

fn plan(layout: &CgroupLayout, guard: &BenchCgroups, tag: &str) -> Result<SandboxPlan, BenchError> {
    let mut cfg = RuntimeConfig::embedded().map_err(|e| BenchError::step("config", e))?;
    cfg.sandbox_cgroup_only = false;
    let mut p = SandboxPlan::new(&cfg, tag, &format!("{}/{tag}", guard.name), layout, None)
        .map_err(|e| BenchError::step("plan", e))?;
    // Only the vCPU threads move: many sandboxes share this one process.
    p.overhead = None;
    p.sandbox_cgroup_only = false;
    // No nested vCPU child (the default split on v2 and systemd hosts): it would move
    // this whole process into each sandbox's threaded domain in turn.
    p.vcpus_child = None;
    Ok(p)
}

fn options(state_dir: &std::path::Path) -> Result<SandboxOptions, BenchError> {
    let cpu = host_cgroups::host::online_cpus()
        .map_err(|e| BenchError::step("online CPUs", e))?
        .iter()
        .next()
        .unwrap_or(0);
    let res = resources::from_json(
        &json!({"cpu": {"cpus": cpu.to_string(), "mems": "0", "quota": 50000, "period": 100000}})
            .to_string(),
    )
    .map_err(|e| BenchError::step("resources", e))?;
    Ok(SandboxOptions::default()
        .state_dir(state_dir)
        .sandbox_resources(Some(res)))
}

/// The benchmark's runtime configuration: every sandbox in this one process.
fn config() -> Result<RuntimeConfig, BenchError> {
    RuntimeConfig::embedded().map_err(|e| BenchError::step("config", e))
}

/// A library sandbox with its VMM.
struct BenchSandbox {
    sandbox: Sandbox,
    vmm: Option<Vmm>,
}

impl BenchSandbox {
    fn freezer(&self) -> Option<std::path::PathBuf> {
        self.sandbox
            .paths()
            .get("freezer")
            .map(|d| d.join("freezer.state"))
    }

    fn freeze(&self, frozen: bool) -> Result<(), BenchError> {
        if let Some(f) = self.freezer() {
            write_file(&f, if frozen { "FROZEN" } else { "THAWED" })
                .map_err(|e| BenchError::step("freezer", e))?;
        }
        Ok(())
    }

    fn destroy(self) -> Result<(), BenchError> {
        let vmm = self.vmm;
        let done = self.sandbox.teardown(|| vmm.map(Vmm::stop));
        let (stopped, report) = (done.vmm, done.report);
        if let Some(Err(e)) = stopped {
            return Err(BenchError::step("VMM stop", e));
        }
        if !report.errors.is_empty() {
            return Err(BenchError::step("teardown", report.errors.join("; ")));
        }
        Ok(())
    }
}

fn create(
    layout: &CgroupLayout,
    guard: &BenchCgroups,
    tag: &str,
    backend: BackendChoice,
    opts: &SandboxOptions,
) -> Result<(BenchSandbox, Vec<f64>), BenchError> {
    let sandbox = Sandbox::start(&config()?, plan(layout, guard, tag)?, opts.clone())
        .map_err(|e| BenchError::step(format!("sandbox {tag}"), e))?;
    let cfg = VmmConfig {
        vcpus: VCPUS,
        max_vcpus: VCPUS,
        backend,
    };
    let vmm = Vmm::new(cfg, sandbox.hooks()).and_then(|mut v| v.start().map(|()| v));
    let mut sb = BenchSandbox { sandbox, vmm: None };
    match vmm {
        Ok(v) => sb.vmm = Some(v),
        Err(e) => {
            let _ = sb.destroy();
            return Err(BenchError::step(format!("VMM {tag}"), e));
        }
    }
    let placed = sb
        .sandbox
        .vcpus()
        .iter()
        .filter_map(|r| r.placed_after_us)
        .map(|u| u as f64)
        .collect();
    Ok((sb, placed))
}

/// One count, in this process: prints one JSON object.
fn measure(n: u32, probes: u32, backend: BackendChoice) -> Result<Value, BenchError> {
    let layout = util::v1_layout()?;
    let guard = BenchCgroups::new(&layout);
    let state_dir = std::env::temp_dir().join(format!("hcg-bench-scale-{}", std::process::id()));
    let opts = options(&state_dir)?;
    let cfg = config()?;

    // 1. Controllers only.
    util::trim_heap();
    let rss0 = util::rss_bytes();
    let mut ctls = Vec::new();
    for i in 0..n {
        let c = Sandbox::start(&cfg, plan(&layout, &guard, &format!("c{i}"))?, opts.clone())
            .map_err(|e| BenchError::step("sandbox", e))?;
        ctls.push(c);
    }
    util::trim_heap();
    let rss_ctl = util::rss_bytes();
    for c in ctls {
        let r = c.teardown(|| ()).report;
        if !r.errors.is_empty() {
            return Err(BenchError::step("teardown", r.errors.join("; ")));
        }
    }

    // 2. Full sandboxes.
    util::trim_heap();
    let rss1 = util::rss_bytes();
    let mut alive: Vec<BenchSandbox> = Vec::with_capacity(n as usize);
    let mut create_ms = Vec::new();
    let mut placed_create = Vec::new();
    let mut backend_used = String::new();
    let result = (|| -> Result<Value, BenchError> {
        let t_create = Instant::now();
        let mut timed = 0.0;
        for i in 0..n {
            let t = Instant::now();
            let (sb, placed) = create(&layout, &guard, &format!("s{i}"), backend, &opts)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            timed += ms;
            create_ms.push(ms);
            placed_create.extend(placed);
            if let Some(v) = &sb.vmm {
                backend_used = v.backend().to_string();
            }
            sb.freeze(true)?;
            alive.push(sb);
        }
        let create_wall_ms = t_create.elapsed().as_secs_f64() * 1e3;
        util::trim_heap();
        let rss2 = util::rss_bytes();
        let mut probe_placed = Vec::new();
        for p in 0..probes {
            let (sb, placed) = create(&layout, &guard, &format!("p{p}"), backend, &opts)?;
            probe_placed.extend(placed);
            sb.destroy()?;
        }
        // Thaw each sandbox just before its destroy (untimed): thawed all at
        // once, 2×N spinning vCPUs would starve the thread doing the destroys.
        let mut destroy_ms = 0.0;
        for sb in alive.drain(..) {
            sb.freeze(false)?;
            let t = Instant::now();
            sb.destroy()?;
            destroy_ms += t.elapsed().as_secs_f64() * 1e3;
        }
        // Every sandbox's state file went with its teardown; the directory is ours.
        let _ = std::fs::remove_dir(&state_dir);
        let c = Summary::of(&create_ms);
        let pc = Summary::of(&placed_create);
        let pp = Summary::of(&probe_placed);
        Ok(json!({
            "sandboxes": n,
            "vcpus_per_sandbox": VCPUS,
            "backend": backend_used,
            "create_total_ms": round3(timed),
            "create_wall_ms": round3(create_wall_ms),
            "create_per_sandbox_ms": {"p50": round3(c.p50), "p99": round3(c.p99), "max": round3(c.max)},
            "destroy_total_ms": round3(destroy_ms),
            "rss_per_controller_kib": round3((rss_ctl.saturating_sub(rss0)) as f64 / 1024.0 / n as f64),
            "rss_per_sandbox_kib": round3((rss2.saturating_sub(rss1)) as f64 / 1024.0 / n as f64),
            "placement_during_create_us": {"p50": round3(pc.p50), "p99": round3(pc.p99), "max": round3(pc.max), "samples": pc.n},
            "placement_with_n_alive_us": {"p50": round3(pp.p50), "p99": round3(pp.p99), "max": round3(pp.max), "samples": pp.n},
            "probe_values_us": probe_placed,
        }))
    })();
    // On error: thaw and tear down what is still alive (the guard removes the rest).
    for sb in alive {
        let _ = sb.freeze(false);
        let _ = sb.destroy();
    }
    let v = result?;
    drop(guard);
    Ok(v)
}

/// Runs `bench scale`.
pub fn run(args: &ScaleArgs, ctx: &Context) -> Result<(), BenchError> {
    let backend: BackendChoice = args
        .backend
        .parse()
        .map_err(|e| BenchError::BadInput(format!("--backend: {e}")))?;
    if let Some(n) = args.internal_n {
        let v = measure(n, args.probes, backend)?;
        println!("{v}");
        return Ok(());
    }
    let counts = super::parse_list(&args.sandboxes).map_err(BenchError::BadInput)?;
    util::v1_layout()?;
    let load_start = machine::loadavg();
    let machine = Machine::now();
    let t0 = Instant::now();
    let mut results: Vec<Value> = Vec::new();
    for &n in &counts {
        let out = util::run_self(&[
            "bench".into(),
            "scale".into(),
            "--internal-n".into(),
            n.to_string(),
            "--probes".into(),
            args.probes.to_string(),
            "--backend".into(),
            args.backend.clone(),
        ])?;
        let v: Value = serde_json::from_str(out.trim())
            .map_err(|e| BenchError::step(format!("scale {n}: parse child output"), e))?;
        ctx.progress.progress(&format!(
            "scale: {n} sandboxes: create {} ms, destroy {} ms, {} KiB/sandbox",
            v["create_total_ms"], v["destroy_total_ms"], v["rss_per_sandbox_kib"]
        ));
        results.push(v);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let load_end = machine::loadavg();
    let f = |v: &Value, path: &[&str]| -> f64 {
        let mut x = v;
        for p in path {
            x = &x[*p];
        }
        x.as_f64().unwrap_or(0.0)
    };
    let mut t = Table::new(&[
        "sandboxes",
        "create total ms",
        "create/sandbox p50 ms",
        "destroy total ms",
        "RSS/sandbox KiB",
        "RSS/controller KiB",
        "placement during create p50/p99/max µs",
        "placement with N alive p50/p99/max µs",
    ]);
    let mut series = Vec::new();
    for v in &results {
        t.row(vec![
            v["sandboxes"].to_string(),
            num(f(v, &["create_total_ms"])),
            num(f(v, &["create_per_sandbox_ms", "p50"])),
            num(f(v, &["destroy_total_ms"])),
            num(f(v, &["rss_per_sandbox_kib"])),
            num(f(v, &["rss_per_controller_kib"])),
            format!(
                "{} / {} / {}",
                num(f(v, &["placement_during_create_us", "p50"])),
                num(f(v, &["placement_during_create_us", "p99"])),
                num(f(v, &["placement_during_create_us", "max"]))
            ),
            format!(
                "{} / {} / {}",
                num(f(v, &["placement_with_n_alive_us", "p50"])),
                num(f(v, &["placement_with_n_alive_us", "p99"])),
                num(f(v, &["placement_with_n_alive_us", "max"]))
            ),
        ]);
        series.push(Series {
            label: format!("{} alive", v["sandboxes"]),
            values: v["probe_values_us"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default(),
        });
    }
    let backend_used = results
        .first()
        .and_then(|v| v["backend"].as_str())
        .unwrap_or("?")
        .to_string();
    let max_ctl_kib = results
        .iter()
        .map(|v| f(v, &["rss_per_controller_kib"]))
        .fold(0.0, f64::max);
    let first_p50 = results
        .first()
        .map(|v| f(v, &["placement_with_n_alive_us", "p50"]))
        .unwrap_or(0.0);
    let last_p50 = results
        .last()
        .map(|v| f(v, &["placement_with_n_alive_us", "p50"]))
        .unwrap_or(0.0);
    let growth = ratio(last_p50, first_p50);
    let targets = json!({
        "controller_under_1_mib_per_sandbox": max_ctl_kib < 1024.0,
        "max_rss_per_controller_kib": round3(max_ctl_kib),
        "placement_p50_growth_first_to_last": round3(growth),
    });
    let markdown = format!(
        "## Scale: sandboxes alive at once (cgroup v1, cgroupfs, `{backend_used}` vCPUs, 2 each)\n\n\
         Command: `host-cgroups bench scale` ({elapsed:.0} s)\n\n{}\n\
         Each count runs in a fresh process. Create = controller start (cgroups, cpuset, quota) + VMM \
         start with both vCPUs placed; the alive sandboxes' vCPUs are frozen (untimed) so that they do \
         not starve the host. Placement with N alive: {} probe sandboxes created while N exist. \
         RSS figures are growth of this process's resident memory divided by N (controllers only: \
         sandbox cgroup + controller thread, no VMM).\n\n{}\n\
         Targets: controller memory under 1 MiB per sandbox: {} (max {:.0} KiB); placement p50 with \
         the most sandboxes alive vs the fewest: {:.2}×.\n",
        machine::load_note(load_start, load_end),
        args.probes,
        t.markdown(),
        report::yes_no(max_ctl_kib < 1024.0),
        max_ctl_kib,
        growth,
    );
    let mut results_out = results.clone();
    for v in &mut results_out {
        if let Some(o) = v.as_object_mut() {
            o.remove("probe_values_us");
        }
    }
    let json = json!({
        "bench": "scale",
        "command": "host-cgroups bench scale",
        "driver": "cgroupfs",
        "cgroup_version": 1,
        "backend": backend_used,
        "machine": machine,
        "loadavg_end": load_end,
        "elapsed_s": round3(elapsed),
        "results": results_out,
        "targets": targets,
    });
    let svg = cdf_svg(
        "vCPU placement latency with N sandboxes alive",
        "hook timestamp → placed (µs, log scale)",
        &series,
    );
    report::emit(
        ctx,
        &args.common,
        report::Output {
            name: "scale",
            result: &json,
            markdown,
            svg: Some(svg),
        },
    )
}
