//! The benchmark harness of `host-cgroups bench ...`: whole-sandbox benchmarks, each
//! comparison measured side by side in one run on the same machine (issue "Benchmarks").
//!
//! - [`placement`]: vCPU placement latency, hooks vs the pull baseline (scan `/proc`);
//! - [`lifecycle`]: sandbox cgroup lifecycle, this project vs `cgroups-rs` vs the syscall floor;
//! - [`systemd`]: transient scope round trips, this project vs `systemd-run --scope` vs `cgroups-rs`;
//! - [`scale`]: many sandboxes alive at once;
//! - [`hooks`]: the cost of the hook on the vCPU spawn path;
//! - [`soak`]: many lifecycles in a row, watching for leaks.
//!
//! Every bench builds a typed result ([`hooks::HooksResult`], [`lifecycle::LifecycleResult`],
//! [`placement::PlacementResult`], [`scale::ScaleResult`], [`soak::SoakResult`],
//! [`systemd::SystemdResult`]; units in the field names), renders its Markdown report
//! from it, prints that (or, with `--json`, the result as one JSON object) and writes
//! `<out>/<bench>.json`, `<out>/<bench>.md` and `<out>/<bench>.svg` ([`report::emit`]).
//!
//! The crate does not depend on the command that runs it: status and progress lines go
//! to the [`Progress`] of the [`Context`] the caller passes, with the version the results
//! carry. Some benches re-run the running program (`/proc/self/exe`) with a `bench ...`
//! or `run ...` command line ([`util::exec`]), so that program must be `host-cgroups`
//! or offer the same commands. All cgroups are named `hcgbench-<random>` and are removed
//! by guards even when a run fails.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod error;
pub mod hooks;
pub mod lifecycle;
pub mod machine;
pub mod placement;
pub mod progress;
pub mod report;
pub mod scale;
pub mod soak;
pub mod stats;
pub mod systemd;
pub mod util;

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use error::BenchError;
pub use progress::{Context, Progress, Quiet};

/// Where bench results go by default: an absolute directory, the same whatever the
/// current directory (persistent across reboots, unlike /tmp).
pub const DEFAULT_OUT: &str = "/var/tmp/host-cgroups-bench";

/// Options every bench takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Print one JSON object on stdout instead of the Markdown table.
    #[arg(long)]
    pub json: bool,
    /// Directory for the JSON, Markdown and SVG files (created; the path written is printed).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_OUT)]
    pub out: PathBuf,
}

/// Arguments of `bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which benchmark.
    #[command(subcommand)]
    pub which: Which,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum Which {
    /// vCPU placement latency: hooks (push) vs scanning /proc (pull), cgroupfs on cgroup v1 or v2.
    Placement(placement::PlacementArgs),
    /// Sandbox cgroup lifecycle: this project vs cgroups-rs FsManager vs the bare syscalls.
    Lifecycle(lifecycle::LifecycleArgs),
    /// systemd transient scope round trips: this project vs systemd-run --scope vs cgroups-rs.
    Systemd(systemd::SystemdArgs),
    /// 1..500 sandboxes alive at once: create/destroy time, memory, placement latency.
    Scale(scale::ScaleArgs),
    /// Cost of the placement hook on the vCPU spawn path, in nanoseconds.
    Hooks(hooks::HooksArgs),
    /// N sandbox lifecycles in a row: cgroups, units, fds, threads and memory left behind.
    Soak(soak::SoakArgs),
}

impl BenchArgs {
    /// The options every bench takes.
    pub fn common(&self) -> &Common {
        match &self.which {
            Which::Placement(a) => &a.common,
            Which::Lifecycle(a) => &a.common,
            Which::Systemd(a) => &a.common,
            Which::Scale(a) => &a.common,
            Which::Hooks(a) => &a.common,
            Which::Soak(a) => &a.common,
        }
    }

    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.common().json
    }
}

/// Runs the chosen benchmark.
pub fn run(args: &BenchArgs, ctx: &Context) -> Result<(), BenchError> {
    match &args.which {
        Which::Placement(a) => placement::run(a, ctx),
        Which::Lifecycle(a) => lifecycle::run(a, ctx),
        Which::Systemd(a) => systemd::run(a, ctx),
        Which::Scale(a) => scale::run(a, ctx),
        Which::Hooks(a) => hooks::run(a, ctx),
        Which::Soak(a) => soak::run(a, ctx),
    }
}

/// Parses a comma-separated list of positive numbers (`1,8,64,240`).
pub fn parse_list(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{p:?} is not a positive number"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        assert_eq!(parse_list("1,8, 64").unwrap(), vec![1, 8, 64]);
        assert!(parse_list("1,0").is_err());
        assert!(parse_list("x").is_err());
    }
}
