//! Everything measured for one approach at one vCPU count, over its runs.

use super::probe::RunOut;
use super::result::ApproachStats;
use crate::stats::{round3, Summary};

/// Everything measured for one approach at one vCPU count.
#[derive(Debug, Default)]
pub struct Agg {
    /// Every vCPU's held time (hook entry to return), µs: the plot's values.
    pub held_us: Vec<f64>,
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
    /// Adds one run's measurements.
    pub fn add(&mut self, r: RunOut) {
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

    /// Hook entry to placed, over every vCPU of every run (µs).
    pub fn placed(&self) -> Summary {
        Summary::of(&self.placed_us)
    }

    /// The figures of the approach; `pinning`: pinning applied and was measured.
    pub fn stats(&self, pinning: bool) -> ApproachStats {
        let l = Summary::of(&self.placed_us);
        let h = Summary::of(&self.held_us);
        let g = Summary::of(&self.unplaced_guest_us);
        let s = Summary::of(&self.span_us);
        let p = Summary::of(&self.pinned_us);
        let u = Summary::of(&self.unpinned_guest_us);
        let w = Summary::of(&self.writes_per_vcpu);
        let hc = Summary::of(&self.held_cpu_us);
        let sp = Summary::of(&self.spawn_span_us);
        let pinned = |x: f64| (pinning && p.n > 0).then(|| round3(x));
        let unpinned = |x: f64| (pinning && u.n > 0).then(|| round3(x));
        ApproachStats {
            runs: self.runs,
            samples: l.n,
            p50_us: round3(l.p50),
            p99_us: round3(l.p99),
            max_us: round3(l.max),
            unplaced_guest_us: round3(g.p50),
            unplaced_guest_samples: g.n,
            unplaced_guest_p99_us: round3(g.p99),
            unplaced_guest_max_us: round3(g.max),
            released_unplaced: self.released_unplaced,
            all_placed_p50_ms: round3(s.p50 / 1e3),
            all_placed_max_ms: round3(s.max / 1e3),
            lookup_retries_max: self.retries_max,
            held_p50_us: round3(h.p50),
            held_p99_us: round3(h.p99),
            held_max_us: round3(h.max),
            span_p50_ms: round3(s.p50 / 1e3),
            span_max_ms: round3(s.max / 1e3),
            pinning_measured: pinning,
            pinned_p50_us: pinned(p.p50),
            pinned_p99_us: pinned(p.p99),
            pinned_max_us: pinned(p.max),
            unpinned_guest_max_us: unpinned(u.max),
            unpinned_guest_p50_us: unpinned(u.p50),
            released_unpinned: self.released_unpinned,
            cgroup_writes_per_vcpu: round3(w.max),
            held_cpu_p50_us: round3(hc.p50),
            held_cpu_p99_us: round3(hc.p99),
            held_cpu_max_us: round3(hc.max),
            spawn_span_max_ms: round3(sp.max / 1e3),
        }
    }
}
