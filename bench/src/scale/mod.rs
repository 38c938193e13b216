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

use crate::machine::{self, Machine};
use crate::report::{self, cdf_svg, Series};
use crate::util;
use crate::{BenchError, Common, Context};
use demo_vmm::BackendChoice;

mod measure;
mod result;

pub use measure::measure;
pub use result::{
    json_number, ChildOutput, Method, Quantiles, SampledQuantiles, ScaleCount, ScaleResult,
    ScaleTargets,
};

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

/// Runs `bench scale`.
pub fn run(args: &ScaleArgs, ctx: &Context) -> Result<(), BenchError> {
    let backend: BackendChoice = args
        .backend
        .parse()
        .map_err(|e| BenchError::BadInput(format!("--backend: {e}")))?;
    if let Some(n) = args.internal_n {
        let out = measure(n, args.probes, backend)?;
        let text = serde_json::to_string(&out)
            .map_err(|e| BenchError::step("serialising the results", e))?;
        println!("{text}");
        return Ok(());
    }
    let counts = crate::parse_list(&args.sandboxes).map_err(BenchError::BadInput)?;
    util::v1_layout()?;
    let load_start = machine::loadavg();
    let machine = Machine::now();
    let t0 = Instant::now();
    let mut results: Vec<ScaleCount> = Vec::new();
    let mut series = Vec::new();
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
        let child: ChildOutput = serde_json::from_str(out.trim())
            .map_err(|e| BenchError::step(format!("scale {n}: parse child output"), e))?;
        let c = &child.count;
        ctx.progress.progress(&format!(
            "scale: {n} sandboxes: create {} ms, destroy {} ms, {} KiB/sandbox",
            json_number(c.create_total_ms),
            json_number(c.destroy_total_ms),
            json_number(c.rss_per_sandbox_kib)
        ));
        series.push(Series {
            label: format!("{} alive", c.sandboxes),
            values: child.probe_values_us,
        });
        results.push(child.count);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let load_end = machine::loadavg();
    let method = Method {
        loadavg_start: load_start,
        probes: args.probes,
    };
    let result = ScaleResult::new(machine, load_end, elapsed, results, method);
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
            result: &result,
            markdown: result.markdown(),
            svg: Some(svg),
        },
    )
}
