//! The typed result of `bench lifecycle` (`lifecycle.json`) and the report made from it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::setup::Impl;
use crate::machine::{self, Machine};
use crate::report::{num, yes_no, Table};
use crate::stats::{ratio, round3, Summary};

/// `bench lifecycle`: one sandbox cgroup's whole life, three implementations.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleResult {
    /// `lifecycle`.
    pub bench: &'static str,
    /// `host-cgroups bench lifecycle`.
    pub command: &'static str,
    /// `cgroupfs`.
    pub driver: &'static str,
    /// 1: the bench runs on cgroup v1 only.
    pub cgroup_version: u8,
    /// The machine, at the start.
    pub machine: Machine,
    /// The 1-minute load average at the end.
    pub loadavg_end: f64,
    /// Wall time of the whole bench (timed iterations and strace runs), in seconds.
    pub elapsed_s: f64,
    /// One entry per implementation: this project, `cgroups-rs`, the floor.
    pub results: Vec<ImplFigures>,
    /// The project's targets against `cgroups-rs` and the floor.
    pub targets: LifecycleTargets,
    /// How the figures were taken (in the Markdown, not in the JSON).
    #[serde(skip)]
    pub method: Method,
}

/// The figures of one implementation.
#[derive(Debug, Clone, Serialize)]
pub struct ImplFigures {
    /// `host-cgroups`, `cgroups-rs` or `floor`.
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    /// Timed lifecycles.
    pub iterations: usize,
    /// Median lifecycle, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Slowest, µs.
    pub max_us: f64,
    /// Median over the floor's median.
    pub vs_floor_p50: f64,
    /// System calls per lifecycle (`null` when not counted).
    pub syscalls: Option<f64>,
    /// System calls over the floor's (`null` when not counted).
    pub syscalls_vs_floor: Option<f64>,
    /// System calls per lifecycle by name (`total` excluded; empty when not counted).
    pub syscalls_by_name: BTreeMap<String, f64>,
    /// Cgroup directories the implementation creates (one per hierarchy it uses).
    pub cgroup_dirs: usize,
}

/// The targets: no slower than `cgroups-rs`, within 1.5× the floor.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleTargets {
    /// This project's median is at most `cgroups-rs`'s.
    pub no_slower_than_cgroups_rs: bool,
    /// This project's median over `cgroups-rs`'s.
    pub p50_vs_cgroups_rs: f64,
    /// This project's median is at most 1.5× the floor's.
    pub within_1_5x_floor_time: bool,
    /// This project's median over the floor's.
    pub p50_vs_floor: f64,
    /// This project's system calls are at most 1.5× the floor's (`null`: not counted).
    pub within_1_5x_floor_syscalls: Option<bool>,
    /// This project's system calls over the floor's (`null`: not counted).
    pub syscalls_vs_floor: Option<f64>,
}

/// How the figures were taken: what the Markdown says beside the table.
#[derive(Debug, Clone, Default)]
pub struct Method {
    /// The 1-minute load average at the start.
    pub loadavg_start: f64,
    /// The cpuset each lifecycle sets.
    pub cpus: String,
    /// The CPU quota each lifecycle sets, µs per period.
    pub quota_us: i64,
    /// The CFS period, µs.
    pub period_us: u64,
    /// Timed iterations per implementation (`--iterations`).
    pub iterations: u32,
    /// Untimed iterations first.
    pub warmup: u32,
    /// How the system calls were counted.
    pub syscalls: SyscallMethod,
}

/// How the system calls were counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyscallMethod {
    /// `--no-strace`.
    #[default]
    Skipped,
    /// strace is not installed.
    NoStrace,
    /// `strace -f -c` of this program doing this many iterations of one
    /// implementation, minus a run doing none, divided by that number.
    Counted {
        /// Iterations under strace.
        iterations: u32,
    },
}

/// What was measured for one implementation.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Lifecycle times, µs.
    pub times_us: Vec<f64>,
    /// System calls per lifecycle by name, `total` included (`None`: not counted).
    pub syscalls: Option<BTreeMap<String, f64>>,
    /// Cgroup directories it creates.
    pub cgroup_dirs: usize,
}

impl Measured {
    fn total_syscalls(&self) -> Option<f64> {
        self.syscalls.as_ref()?.get("total").copied()
    }
}

impl ImplFigures {
    fn new(which: Impl, m: &Measured, floor: &Measured) -> ImplFigures {
        let s = Summary::of(&m.times_us);
        let f = Summary::of(&floor.times_us);
        let c = m.total_syscalls();
        ImplFigures {
            implementation: which.name(),
            iterations: s.n,
            p50_us: round3(s.p50),
            p99_us: round3(s.p99),
            max_us: round3(s.max),
            vs_floor_p50: round3(ratio(s.p50, f.p50)),
            syscalls: c.map(round3),
            syscalls_vs_floor: c
                .zip(floor.total_syscalls())
                .map(|(a, b)| round3(ratio(a, b))),
            syscalls_by_name: m
                .syscalls
                .iter()
                .flatten()
                .filter(|(k, _)| k.as_str() != "total")
                .map(|(k, v)| (k.clone(), round3(*v)))
                .collect(),
            cgroup_dirs: m.cgroup_dirs,
        }
    }
}

impl LifecycleTargets {
    fn new(project: &Measured, cgroups_rs: &Measured, floor: &Measured) -> LifecycleTargets {
        let p50 = |m: &Measured| Summary::of(&m.times_us).p50;
        let vs_cgroups_rs = ratio(p50(project), p50(cgroups_rs));
        let vs_floor_time = ratio(p50(project), p50(floor));
        let vs_floor_calls = project
            .total_syscalls()
            .zip(floor.total_syscalls())
            .map(|(a, b)| ratio(a, b));
        LifecycleTargets {
            no_slower_than_cgroups_rs: vs_cgroups_rs <= 1.0,
            p50_vs_cgroups_rs: round3(vs_cgroups_rs),
            within_1_5x_floor_time: vs_floor_time <= 1.5,
            p50_vs_floor: round3(vs_floor_time),
            within_1_5x_floor_syscalls: vs_floor_calls.map(|r| r <= 1.5),
            syscalls_vs_floor: vs_floor_calls.map(round3),
        }
    }
}

impl LifecycleResult {
    /// The result of the implementations' measurements (`measured` in [`Impl::ALL`] order).
    pub fn new(
        machine: Machine,
        loadavg_end: f64,
        elapsed_s: f64,
        measured: &[Measured; 3],
        method: Method,
    ) -> LifecycleResult {
        let [project, cgroups_rs, floor] = measured;
        LifecycleResult {
            bench: "lifecycle",
            command: "host-cgroups bench lifecycle",
            driver: "cgroupfs",
            cgroup_version: 1,
            machine,
            loadavg_end,
            elapsed_s: round3(elapsed_s),
            results: Impl::ALL
                .iter()
                .zip(measured)
                .map(|(w, m)| ImplFigures::new(*w, m, floor))
                .collect(),
            targets: LifecycleTargets::new(project, cgroups_rs, floor),
            method,
        }
    }

    /// The Markdown report: the table, the busiest system calls of each implementation
    /// and the targets.
    pub fn markdown(&self) -> String {
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
        for r in &self.results {
            t.row(vec![
                format!("`{}`", r.implementation),
                num(r.p50_us),
                num(r.p99_us),
                num(r.max_us),
                format!("{:.2}×", r.vs_floor_p50),
                r.syscalls.map(num).unwrap_or_else(|| "-".into()),
                r.syscalls_vs_floor
                    .map(|x| format!("{x:.2}×"))
                    .unwrap_or_else(|| "-".into()),
                r.cgroup_dirs.to_string(),
            ]);
        }
        let m = &self.method;
        let strace_note = match m.syscalls {
            SyscallMethod::Skipped => String::new(),
            SyscallMethod::NoStrace => "strace is not installed: no syscall counts.".into(),
            SyscallMethod::Counted { iterations: k } => format!(
                "Syscalls: `strace -f -c` of this program doing {k} iterations of one implementation, \
                 minus a run doing none, divided by {k}."
            ),
        };
        let breakdown: String = match m.syscalls {
            SyscallMethod::Counted { .. } => self
                .results
                .iter()
                .map(|r| format!("- `{}`: {}\n", r.implementation, top_syscalls(r)))
                .collect(),
            _ => String::new(),
        };
        let g = &self.targets;
        format!(
            "## Sandbox cgroup lifecycle (cgroup v1, cgroupfs)\n\n\
             Command: `host-cgroups bench lifecycle` ({:.0} s)\n\n{}\n\
             One lifecycle: create the cgroup in every hierarchy, set cpuset `{}` + mems `0` and a quota of \
             {} µs per {} µs, add this (single-threaded) process, destroy. {} timed iterations each, \
             interleaved, after {} warm-up iterations.\n\n{}\n{strace_note}\n\n{breakdown}\n\
             Targets: no slower than cgroups-rs: {} ({:.2}× its p50); within 1.5× the floor: time {} ({:.2}×), \
             syscalls {}.\n",
            self.elapsed_s,
            machine::load_note(m.loadavg_start, self.loadavg_end),
            m.cpus,
            m.quota_us,
            m.period_us,
            m.iterations,
            m.warmup,
            t.markdown(),
            yes_no(g.no_slower_than_cgroups_rs),
            g.p50_vs_cgroups_rs,
            yes_no(g.within_1_5x_floor_time),
            g.p50_vs_floor,
            match (g.within_1_5x_floor_syscalls, g.syscalls_vs_floor) {
                (Some(ok), Some(r)) => format!("{} ({r:.2}×)", yes_no(ok)),
                _ => "not counted".into(),
            },
        )
    }
}

/// The 8 most frequent system calls of one implementation: `name count, ...`.
fn top_syscalls(r: &ImplFigures) -> String {
    let mut v: Vec<(&String, f64)> = r.syscalls_by_name.iter().map(|(k, v)| (k, *v)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v.iter()
        .take(8)
        .map(|(k, v)| format!("{k} {}", num(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}
