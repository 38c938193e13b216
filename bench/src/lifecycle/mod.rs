//! `bench lifecycle`: one sandbox cgroup's whole life on cgroupfs (create it,
//! apply a cpuset and a CPU quota, add a process, destroy it), three ways in one
//! run: this project's `FsManager`, `cgroups-rs` 0.5.1's `FsManager` used
//! directly, and the floor (the bare mkdir/write/rmdir calls, by hand).
//!
//! The process added is this one (what the supervisor does with the VMM
//! process); it is single-threaded here. Destroy moves it out again: this
//! project and the floor move it back to where it was, `cgroups-rs` moves it
//! to each hierarchy's root (it is moved back home afterwards, untimed).
//!
//! Syscalls per iteration: this program is run under `strace -f -c` with the
//! same iterations of one implementation, once with N iterations and once with
//! none; the difference divided by N.

use std::time::Instant;

use clap::Args;

use crate::machine::{self, Machine};
use crate::report::{self, cdf_svg, Series};
use crate::util::{self, BenchCgroups};
use crate::{BenchError, Common, Context};

mod result;
mod setup;

pub use result::{ImplFigures, LifecycleResult, LifecycleTargets, Measured, Method, SyscallMethod};
pub use setup::Impl;
use setup::Setup;

/// Arguments of `bench lifecycle`.
#[derive(Debug, Args)]
pub struct LifecycleArgs {
    /// Output options.
    #[command(flatten)]
    pub common: Common,
    /// Timed iterations per implementation.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub iterations: u32,
    /// Iterations per implementation under strace (syscall counts).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub strace_iterations: u32,
    /// Skip the syscall counts.
    #[arg(long)]
    pub no_strace: bool,
    /// Internal: run only this implementation, `--count` times, and print nothing.
    #[arg(long, hide = true, value_name = "IMPL")]
    pub only: Option<String>,
    /// Internal: iterations for `--only`.
    #[arg(long, hide = true, value_name = "N", default_value_t = 0)]
    pub count: u32,
}

fn check_single_threaded() -> Result<(), BenchError> {
    let n = util::own_tids().len();
    if n != 1 {
        return Err(BenchError::Unsupported(format!(
            "the lifecycle bench moves this process and needs it single-threaded ({n} threads)"
        )));
    }
    Ok(())
}

/// Internal mode: `count` iterations of one implementation, for strace.
fn run_only(which: &str, count: u32) -> Result<(), BenchError> {
    let which = Impl::parse(which)
        .ok_or_else(|| BenchError::BadInput(format!("--only {which}: unknown")))?;
    let layout = util::v1_layout()?;
    check_single_threaded()?;
    let guard = BenchCgroups::new(&layout);
    let setup = Setup::new(&layout, &guard.name)?;
    for _ in 0..count {
        setup.once(which)?;
    }
    util::restore_home(&layout)?;
    Ok(())
}

/// Runs `bench lifecycle`.
pub fn run(args: &LifecycleArgs, ctx: &Context) -> Result<(), BenchError> {
    if let Some(which) = &args.only {
        return run_only(which, args.count);
    }
    let layout = util::v1_layout()?;
    check_single_threaded()?;
    let guard = BenchCgroups::new(&layout);
    let setup = Setup::new(&layout, &guard.name)?;
    let load_start = machine::loadavg();
    let machine = Machine::now();
    let t0 = Instant::now();
    // Per implementation, in `Impl::ALL` order.
    let mut measured: [Measured; 3] = Default::default();
    let warmup = 10;
    let n = args.iterations.max(1);
    let result = (|| -> Result<(), BenchError> {
        for i in 0..(warmup + n) {
            // Rotate the order so that each implementation follows each other one.
            for k in 0..3 {
                let idx = (i as usize + k) % 3;
                let which = Impl::ALL[idx];
                let start = Instant::now();
                setup.once(which)?;
                let us = start.elapsed().as_secs_f64() * 1e6;
                if which == Impl::CgroupsRs {
                    util::restore_home(&layout)?;
                }
                if i >= warmup {
                    measured[idx].times_us.push(us);
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = util::restore_home(&layout);
    }
    result?;
    let timed_s = t0.elapsed().as_secs_f64();
    ctx.progress.progress(&format!(
        "lifecycle: {n} timed iterations each in {timed_s:.1} s"
    ));

    let syscalls = if args.no_strace {
        SyscallMethod::Skipped
    } else if util::strace_path().is_none() {
        SyscallMethod::NoStrace
    } else {
        let k = args.strace_iterations.max(1);
        for (which, m) in Impl::ALL.iter().zip(measured.iter_mut()) {
            let argv = |count: u32| {
                vec![
                    "bench".to_string(),
                    "lifecycle".into(),
                    "--only".into(),
                    which.name().into(),
                    "--count".into(),
                    count.to_string(),
                ]
            };
            let with_0 = util::strace_count(&argv(0))?;
            let with_k = util::strace_count(&argv(k))?;
            m.syscalls = Some(util::per_iteration(&with_k, &with_0, k as u64));
        }
        SyscallMethod::Counted { iterations: k }
    };
    for (which, m) in Impl::ALL.iter().zip(measured.iter_mut()) {
        m.cgroup_dirs = setup.dirs(*which);
    }
    let load_end = machine::loadavg();
    let elapsed = t0.elapsed().as_secs_f64();
    drop(guard);

    let method = Method {
        loadavg_start: load_start,
        cpus: setup.cpus.clone(),
        quota_us: setup.quota_us,
        period_us: setup.period_us,
        iterations: n,
        warmup,
        syscalls,
    };
    let result = LifecycleResult::new(machine, load_end, elapsed, &measured, method);
    let series: Vec<Series> = Impl::ALL
        .iter()
        .zip(&measured)
        .map(|(w, m)| Series {
            label: w.name().to_string(),
            values: m.times_us.clone(),
        })
        .collect();
    let svg = cdf_svg(
        "Sandbox cgroup lifecycle on cgroupfs (cgroup v1)",
        "create + cpuset + quota + add process + destroy (µs, log scale)",
        &series,
    );
    report::emit(
        ctx,
        &args.common,
        report::Output {
            name: "lifecycle",
            result: &result,
            markdown: result.markdown(),
            svg: Some(svg),
        },
    )
}
