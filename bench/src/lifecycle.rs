//! `bench lifecycle`: one sandbox cgroup's whole life on cgroupfs (create it,
//! apply a cpuset and a CPU quota, add a process, destroy it), three ways in one
//! run: this project's `FsManager`, `cgroups-rs` 0.5.1's `FsManager` used
//! directly, and the floor (the bare mkdir/write/rmdir calls, by hand).
//!
//! The process added is this one (what the controller does with the VMM
//! process); it is single-threaded here. Destroy moves it out again: this
//! project and the floor move it back to where it was, `cgroups-rs` moves it
//! to each hierarchy's root (it is moved back home afterwards, untimed).
//!
//! Syscalls per iteration: this program is run under `strace -f -c` with the
//! same iterations of one implementation, once with N iterations and once with
//! none; the difference divided by N.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Value};

use super::machine::{self, Machine};
use super::report::{self, cdf_svg, num, Series, Table};
use super::stats::{ratio, round3, Summary};
use super::util::{self, BenchCgroups};
use super::{BenchError, Common, Context};
use host_cgroups::host::CgroupLayout;
use host_cgroups::manager::{FsManager, Manager};
use host_cgroups::resources;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Project,
    CgroupsRs,
    Floor,
}

impl Impl {
    const ALL: [Impl; 3] = [Impl::Project, Impl::CgroupsRs, Impl::Floor];

    fn name(self) -> &'static str {
        match self {
            Impl::Project => "host-cgroups",
            Impl::CgroupsRs => "cgroups-rs",
            Impl::Floor => "floor",
        }
    }

    fn parse(s: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == s)
    }
}

/// What every iteration needs, computed once.
struct Setup {
    layout: CgroupLayout,
    relative: String,
    res: LinuxResources,
    cpus: String,
    mems: String,
    quota: i64,
    period: u64,
    /// The floor's directories: (cgroup dir, this process's home dir), one per hierarchy.
    floor_dirs: Vec<(PathBuf, PathBuf)>,
    floor_cpuset: PathBuf,
    floor_cpu: PathBuf,
    me: i32,
}

impl Setup {
    fn new(layout: &CgroupLayout, relative: &str) -> Result<Self, BenchError> {
        let cpus = host_cgroups::host::online_cpus()
            .map_err(|e| BenchError::step("online CPUs", e))?
            .iter()
            .next()
            .unwrap_or(0)
            .to_string();
        let mems = "0".to_string();
        let (quota, period) = (50_000_i64, 100_000_u64);
        let res = resources::from_json(
            &json!({"cpu": {"cpus": cpus, "mems": mems, "quota": quota, "period": period}})
                .to_string(),
        )
        .map_err(|e| BenchError::step("resources", e))?;
        let floor_dirs: Vec<(PathBuf, PathBuf)> = layout
            .v1_hierarchies()
            .into_iter()
            .map(|(mount, _)| (mount.join(relative), util::home_of(layout, &mount)))
            .collect();
        let dir_of = |c: &str| {
            layout
                .mounts
                .get(c)
                .map(|m| m.join(relative))
                .ok_or_else(|| BenchError::Unsupported(format!("no {c} hierarchy")))
        };
        Ok(Setup {
            layout: layout.clone(),
            relative: relative.to_string(),
            floor_cpuset: dir_of("cpuset")?,
            floor_cpu: dir_of("cpu")?,
            res,
            cpus,
            mems,
            quota,
            period,
            floor_dirs,
            me: std::process::id() as i32,
        })
    }

    fn once(&self, which: Impl) -> Result<(), BenchError> {
        match which {
            Impl::Project => {
                let mut m = FsManager::new(&self.layout, &self.relative);
                m.create()
                    .map_err(|e| BenchError::step("host-cgroups create", e))?;
                m.set(&self.res)
                    .map_err(|e| BenchError::step("host-cgroups set", e))?;
                m.add_proc(self.me)
                    .map_err(|e| BenchError::step("host-cgroups add_proc", e))?;
                m.destroy()
                    .map_err(|e| BenchError::step("host-cgroups destroy", e))?;
            }
            Impl::CgroupsRs => {
                use cgroups_rs::manager::Manager as _;
                let mut m = cgroups_rs::manager::FsManager::new(&self.relative)
                    .map_err(|e| BenchError::step("cgroups-rs new", e))?;
                // cgroups-rs creates the cgroup on the first add_proc.
                m.add_proc(cgroups_rs::CgroupPid::from(self.me as u64))
                    .map_err(|e| BenchError::step("cgroups-rs add_proc", e))?;
                m.set(&self.res)
                    .map_err(|e| BenchError::step("cgroups-rs set", e))?;
                m.destroy()
                    .map_err(|e| BenchError::step("cgroups-rs destroy", e))?;
            }
            Impl::Floor => self.floor()?,
        }
        Ok(())
    }

    /// The bare system calls: mkdir per hierarchy, four writes, a move in and out, rmdir.
    fn floor(&self) -> Result<(), BenchError> {
        let write = |p: PathBuf, v: &str| -> Result<(), BenchError> {
            OpenOptions::new()
                .write(true)
                .open(&p)
                .and_then(|mut f| f.write_all(v.as_bytes()))
                .map_err(|e| BenchError::step(format!("floor: write {v} to {}", p.display()), e))
        };
        for (d, _) in &self.floor_dirs {
            std::fs::create_dir(d)
                .map_err(|e| BenchError::step(format!("floor: mkdir {}", d.display()), e))?;
        }
        write(self.floor_cpuset.join("cpuset.cpus"), &self.cpus)?;
        write(self.floor_cpuset.join("cpuset.mems"), &self.mems)?;
        write(
            self.floor_cpu.join("cpu.cfs_period_us"),
            &self.period.to_string(),
        )?;
        write(
            self.floor_cpu.join("cpu.cfs_quota_us"),
            &self.quota.to_string(),
        )?;
        let me = self.me.to_string();
        for (d, _) in &self.floor_dirs {
            write(d.join("cgroup.procs"), &me)?;
        }
        for (_, home) in &self.floor_dirs {
            write(home.join("cgroup.procs"), &me)?;
        }
        for (d, _) in &self.floor_dirs {
            std::fs::remove_dir(d)
                .map_err(|e| BenchError::step(format!("floor: rmdir {}", d.display()), e))?;
        }
        Ok(())
    }

    /// Directories the implementation creates (one per hierarchy it uses).
    fn dirs(&self, which: Impl) -> usize {
        match which {
            Impl::Project | Impl::Floor => self.floor_dirs.len(),
            Impl::CgroupsRs => self
                .layout
                .mounts
                .values()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
        }
    }
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
    let mut times: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let warmup = 10;
    let n = args.iterations.max(1);
    let result = (|| -> Result<(), BenchError> {
        for i in 0..(warmup + n) {
            // Rotate the order so that each implementation follows each other one.
            for k in 0..3 {
                let which = Impl::ALL[(i as usize + k) % 3];
                let start = Instant::now();
                setup.once(which)?;
                let us = start.elapsed().as_secs_f64() * 1e6;
                if which == Impl::CgroupsRs {
                    util::restore_home(&layout)?;
                }
                if i >= warmup {
                    times.entry(which.name()).or_default().push(us);
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

    let mut syscalls: BTreeMap<&'static str, BTreeMap<String, f64>> = BTreeMap::new();
    let mut strace_note = String::new();
    if !args.no_strace {
        match util::strace_path() {
            None => strace_note = "strace is not installed: no syscall counts.".into(),
            Some(_) => {
                let k = args.strace_iterations.max(1);
                for which in Impl::ALL {
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
                    syscalls.insert(
                        which.name(),
                        util::per_iteration(&with_k, &with_0, k as u64),
                    );
                }
                strace_note = format!(
                    "Syscalls: `strace -f -c` of this program doing {k} iterations of one implementation, \
                     minus a run doing none, divided by {k}."
                );
            }
        }
    }
    let load_end = machine::loadavg();
    let elapsed = t0.elapsed().as_secs_f64();
    drop(guard);

    let sum = |w: Impl| Summary::of(times.get(w.name()).map(Vec::as_slice).unwrap_or(&[]));
    let calls = |w: Impl| syscalls.get(w.name()).and_then(|m| m.get("total")).copied();
    let floor = sum(Impl::Floor);
    let floor_calls = calls(Impl::Floor);
    let mut results = Vec::new();
    let mut t = Table::new(&[
        "implementation",
        "p50 µs",
        "p99 µs",
        "max µs",
        "time p50 vs floor",
        "syscalls / lifecycle",
        "syscalls vs floor",
        "cgroup dirs",
    ]);
    for w in Impl::ALL {
        let s = sum(w);
        let c = calls(w);
        let by_name: BTreeMap<String, f64> = syscalls
            .get(w.name())
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.as_str() != "total")
                    .map(|(k, v)| (k.clone(), round3(*v)))
                    .collect()
            })
            .unwrap_or_default();
        results.push(json!({
            "impl": w.name(),
            "iterations": s.n,
            "p50_us": round3(s.p50),
            "p99_us": round3(s.p99),
            "max_us": round3(s.max),
            "vs_floor_p50": round3(ratio(s.p50, floor.p50)),
            "syscalls": c.map(round3),
            "syscalls_vs_floor": c.zip(floor_calls).map(|(a, b)| round3(ratio(a, b))),
            "syscalls_by_name": by_name,
            "cgroup_dirs": setup.dirs(w),
        }));
        t.row(vec![
            format!("`{}`", w.name()),
            num(s.p50),
            num(s.p99),
            num(s.max),
            format!("{:.2}×", ratio(s.p50, floor.p50)),
            c.map(num).unwrap_or_else(|| "-".into()),
            c.zip(floor_calls)
                .map(|(a, b)| format!("{:.2}×", ratio(a, b)))
                .unwrap_or_else(|| "-".into()),
            setup.dirs(w).to_string(),
        ]);
    }
    let ours = sum(Impl::Project);
    let theirs = sum(Impl::CgroupsRs);
    let vs_cgroups_rs = ratio(ours.p50, theirs.p50);
    let vs_floor_calls = calls(Impl::Project)
        .zip(floor_calls)
        .map(|(a, b)| ratio(a, b));
    let vs_floor_time = ratio(ours.p50, floor.p50);
    let targets = json!({
        "no_slower_than_cgroups_rs": vs_cgroups_rs <= 1.0,
        "p50_vs_cgroups_rs": round3(vs_cgroups_rs),
        "within_1_5x_floor_time": vs_floor_time <= 1.5,
        "p50_vs_floor": round3(vs_floor_time),
        "within_1_5x_floor_syscalls": vs_floor_calls.map(|r| r <= 1.5),
        "syscalls_vs_floor": vs_floor_calls.map(round3),
    });
    let top = |w: Impl| -> String {
        let mut v: Vec<(String, f64)> = syscalls
            .get(w.name())
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.as_str() != "total")
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.iter()
            .take(8)
            .map(|(k, v)| format!("{k} {}", num(*v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let breakdown: String = if syscalls.is_empty() {
        String::new()
    } else {
        Impl::ALL
            .iter()
            .map(|w| format!("- `{}`: {}\n", w.name(), top(*w)))
            .collect()
    };
    let markdown = format!(
        "## Sandbox cgroup lifecycle (cgroup v1, cgroupfs)\n\n\
         Command: `host-cgroups bench lifecycle` ({elapsed:.0} s)\n\n{}\n\
         One lifecycle: create the cgroup in every hierarchy, set cpuset `{}` + mems `0` and a quota of \
         {} µs per {} µs, add this (single-threaded) process, destroy. {n} timed iterations each, \
         interleaved, after {warmup} warm-up iterations.\n\n{}\n{strace_note}\n\n{breakdown}\n\
         Targets: no slower than cgroups-rs: {} ({:.2}× its p50); within 1.5× the floor: time {} ({:.2}×), \
         syscalls {}.\n",
        machine::load_note(load_start, load_end),
        setup.cpus,
        setup.quota,
        setup.period,
        t.markdown(),
        report::yes_no(vs_cgroups_rs <= 1.0),
        vs_cgroups_rs,
        report::yes_no(vs_floor_time <= 1.5),
        vs_floor_time,
        match vs_floor_calls {
            Some(r) => format!("{} ({r:.2}×)", report::yes_no(r <= 1.5)),
            None => "not counted".into(),
        },
    );
    let json: Value = json!({
        "bench": "lifecycle",
        "command": "host-cgroups bench lifecycle",
        "driver": "cgroupfs",
        "cgroup_version": 1,
        "machine": machine,
        "loadavg_end": load_end,
        "elapsed_s": round3(elapsed),
        "results": results,
        "targets": targets,
    });
    let series: Vec<Series> = Impl::ALL
        .iter()
        .map(|w| Series {
            label: w.name().to_string(),
            values: times.get(w.name()).cloned().unwrap_or_default(),
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
            result: &json,
            markdown,
            svg: Some(svg),
        },
    )
}
