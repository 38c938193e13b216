//! `bench systemd`: round trips to systemd for one sandbox, three ways in one
//! run: this project's systemd driver (through the `Manager` trait),
//! `systemd-run --scope` + `systemctl set-property --runtime` + `systemctl stop`,
//! and `cgroups-rs`'s `SystemdManager`.
//!
//! One round trip: start a transient scope holding a process (a `sleep` this
//! bench started) and return only once that process is really in the unit's
//! cgroup (read from `/proc/<pid>/cgroup`), set a CPU quota, stop the unit.
//! Each step is timed on its own.
//!
//! Where systemd is not PID 1 or the system bus does not answer (the
//! development machine), the bench says "systemd not reachable" and writes
//! that as its result; the figures are taken inside the systemd test hosts.

use std::path::Path;
use std::time::Instant;

use clap::Args;

use crate::machine::{self, Machine};
use crate::report::{self, cdf_svg, Series};
use crate::util;
use crate::{BenchError, Common, Context};
use host_cgroups::host::CgroupLayout;
use host_cgroups::resources;

mod result;
mod roundtrip;

pub use result::{ImplRoundTrips, Measured, StepMs, SystemdResult, Trips, Unreachable};
pub use roundtrip::{Impl, Steps};

/// Arguments of `bench systemd`.
#[derive(Debug, Args)]
pub struct SystemdArgs {
    /// Output options.
    #[command(flatten)]
    pub common: Common,
    /// Round trips per implementation.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub runs: u32,
    /// The slice the scopes go in.
    #[arg(long, value_name = "SLICE", default_value = "system.slice")]
    pub slice: String,
}

/// Runs `bench systemd`.
pub fn run(args: &SystemdArgs, ctx: &Context) -> Result<(), BenchError> {
    let info = host_cgroups::manager::systemd_info();
    let load_start = machine::loadavg();
    let machine = Machine::now();
    if !info.reachable {
        let reason = if info.pid1 {
            "systemd is PID 1 but the system bus does not answer"
        } else {
            "systemd is not PID 1 here"
        };
        ctx.progress.status(&format!(
            "bench systemd: systemd not reachable ({reason}); nothing measured"
        ));
        let result = SystemdResult::Unreachable(Unreachable::new(reason, machine));
        return report::emit(
            ctx,
            &args.common,
            report::Output {
                name: "systemd",
                result: &result,
                markdown: result.markdown(),
                svg: None,
            },
        );
    }
    let layout = CgroupLayout::detect().map_err(|e| BenchError::Unsupported(e.to_string()))?;
    let res = resources::from_json(r#"{"cpu":{"quota":50000,"period":100000}}"#)
        .map_err(|e| BenchError::step("resources", e))?;
    let systemd_run =
        Path::new("/usr/bin/systemd-run").exists() || Path::new("/bin/systemd-run").exists();
    let t0 = Instant::now();
    let mut trips: Vec<Trips> = Impl::ALL
        .iter()
        .map(|&which| Trips {
            which,
            steps: Vec::new(),
            failed: None,
            not_installed: which == Impl::SystemdRun && !systemd_run,
        })
        .collect();
    let tag = format!("{:08x}", util::random_u32());
    for r in 0..args.runs.max(1) {
        for k in 0..3 {
            let idx = (r as usize + k) % 3;
            let t = &mut trips[idx];
            if t.failed.is_some() || t.not_installed {
                continue;
            }
            let id = format!("{tag}-{}{r}", idx);
            match roundtrip::once(t.which, &layout, &args.slice, &id, &res) {
                Ok(s) => t.steps.push(s),
                // One implementation failing (e.g. this build has no systemd driver yet)
                // does not stop the others.
                Err(e) => t.failed = Some(e.to_string()),
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let load_end = machine::loadavg();
    let series: Vec<Series> = trips
        .iter()
        .map(|t| Series {
            label: format!("{} start", t.which.name()),
            values: t.steps.iter().map(|s| s.0 / 1e3).collect(),
        })
        .collect();
    let measured = Measured::new(
        layout.version().number(),
        machine,
        (load_start, load_end),
        elapsed,
        &trips,
    );
    let svg = cdf_svg(
        "systemd: transient scope start until the process is in the cgroup",
        "ms, log scale",
        &series,
    );
    let result = SystemdResult::Measured(measured);
    report::emit(
        ctx,
        &args.common,
        report::Output {
            name: "systemd",
            result: &result,
            markdown: result.markdown(),
            svg: Some(svg),
        },
    )
}
