//! The typed result of `bench hooks` (`hooks.json`) and the report made from it.

use serde::Serialize;

use crate::machine::{self, Machine};
use crate::report::{num, Table};
use crate::stats::{round3, Summary};

/// `bench hooks`: what the placement hook adds to the vCPU spawn path.
#[derive(Debug, Clone, Serialize)]
pub struct HooksResult {
    /// `hooks`.
    pub bench: &'static str,
    /// `host-cgroups bench hooks`.
    pub command: &'static str,
    /// The machine, at the start.
    pub machine: Machine,
    /// The 1-minute load average at the end.
    pub loadavg_end: f64,
    /// The 1-minute load average at the start (not in the JSON: `machine.loadavg` is
    /// the same figure).
    #[serde(skip)]
    pub loadavg_start: f64,
    /// Wall time of the whole bench, in seconds.
    pub elapsed_s: f64,
    /// The timer's own cost (an `Instant::now` pair), to read the call figures against.
    pub timer_overhead: NsFigures,
    /// The hook call alone, timed on the calling thread.
    pub hook_call: HookCost,
    /// `Vmm::start` of one vCPU (thread backend): the real spawn path.
    pub spawn: HookCost,
}

/// One view of the hook's cost: without hooks, with a `ChannelReporter` answered at once.
#[derive(Debug, Clone, Serialize)]
pub struct HookCost {
    /// `NoHooks`.
    pub no_hooks: NsFigures,
    /// A `ChannelReporter` whose messages a responder thread confirms at once.
    pub channel_reporter: NsFigures,
    /// The difference of the medians, in ns: what the hook adds.
    pub cost_ns: f64,
}

impl HookCost {
    /// The cost from the samples (ns) without and with the hook.
    pub fn new(no_hooks: &Summary, channel_reporter: &Summary) -> HookCost {
        HookCost {
            no_hooks: NsFigures::of(no_hooks),
            channel_reporter: NsFigures::of(channel_reporter),
            cost_ns: round3(channel_reporter.p50 - no_hooks.p50),
        }
    }
}

/// A distribution of durations in nanoseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NsFigures {
    /// Median, ns.
    pub p50_ns: f64,
    /// 99th percentile, ns.
    pub p99_ns: f64,
    /// Largest, ns.
    pub max_ns: f64,
    /// Number of samples.
    pub samples: usize,
}

impl NsFigures {
    /// The figures of a summary of ns samples, rounded to 3 decimals.
    pub fn of(s: &Summary) -> NsFigures {
        NsFigures {
            p50_ns: round3(s.p50),
            p99_ns: round3(s.p99),
            max_ns: round3(s.max),
            samples: s.n,
        }
    }
}

impl HooksResult {
    /// The Markdown report: one row per view, the cost as the difference of medians.
    pub fn markdown(&self) -> String {
        let mut t = Table::new(&[
            "what",
            "NoHooks p50 ns",
            "p99",
            "max",
            "ChannelReporter p50 ns",
            "p99",
            "max",
            "hook cost (p50 difference) ns",
        ]);
        for (what, c) in [
            ("hook call on the vCPU thread", &self.hook_call),
            ("`Vmm::start`, 1 vCPU (spawn path)", &self.spawn),
        ] {
            t.row(vec![
                what.into(),
                num(c.no_hooks.p50_ns),
                num(c.no_hooks.p99_ns),
                num(c.no_hooks.max_ns),
                num(c.channel_reporter.p50_ns),
                num(c.channel_reporter.p99_ns),
                num(c.channel_reporter.max_ns),
                num(c.cost_ns),
            ]);
        }
        format!(
            "## Hook cost on the vCPU spawn path\n\n\
             Command: `host-cgroups bench hooks` ({:.0} s)\n\n{}\n{}\n\
             ChannelReporter confirmed at once by a responder thread (no cgroup work): the cost is one \
             channel send plus two thread wake-ups. Timer overhead (`Instant::now` pair): p50 {} ns. \
             {} hook calls and {} `Vmm::start` runs per variant (thread backend), interleaved.\n",
            self.elapsed_s,
            machine::load_note(self.loadavg_start, self.loadavg_end),
            t.markdown(),
            num(self.timer_overhead.p50_ns),
            self.hook_call.no_hooks.samples,
            self.spawn.no_hooks.samples,
        )
    }
}
