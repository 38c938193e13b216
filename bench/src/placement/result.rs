//! The typed result of `bench placement` (`placement.json`).

use serde::Serialize;

use super::agg::Agg;
use super::mode::{Mode, MODES};
use crate::machine::Machine;
use crate::stats::{ratio, round3, Summary};

/// `bench placement`: vCPU placement latency of every approach at every size.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementResult {
    /// `placement`.
    pub bench: &'static str,
    /// `host-cgroups bench placement`.
    pub command: &'static str,
    /// `cgroupfs`.
    pub driver: &'static str,
    /// The cgroup version measured (1 or 2).
    pub cgroup_version: u8,
    /// The split layout the library plans on this host: `sibling` or `nested`.
    pub split_layout: String,
    /// What the reader needs to know about this host's runs.
    pub notes: Vec<String>,
    /// Which approaches run in which mode.
    pub sandbox_cgroup_only: &'static str,
    /// The vCPU backend used.
    pub backend: String,
    /// The machine, at the start.
    pub machine: Machine,
    /// The 1-minute load average at the end.
    pub loadavg_end: f64,
    /// Wall time of the whole bench, in seconds.
    pub elapsed_s: f64,
    /// One entry per vCPU count, in the order given.
    pub results: Vec<SizeRow>,
    /// The first thread-move write after 100 ms without migrations.
    pub idle_first_write: IdleFirstWrite,
    /// The targets of issue 11.
    pub targets: PlacementTargets,
    /// How the figures were taken (in the Markdown, not in the JSON).
    #[serde(skip)]
    pub method: Method,
}

/// `sandbox_cgroup_only` of each approach.
pub const SANDBOX_CGROUP_ONLY: &str =
    "born and upstream: true; self_place, self_place_nested, controller_writes, cgroups_rs: false";

/// How the figures were taken: what the Markdown says beside the table.
#[derive(Debug, Clone, Default)]
pub struct Method {
    /// The 1-minute load average at the start.
    pub loadavg_start: f64,
    /// The command line as given.
    pub command_line: String,
}

/// The figures of one vCPU count: one field per approach measured (absent when it was
/// not), and the fields of the bench's first version.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRow {
    /// vCPUs of each sandbox.
    pub vcpus: u32,
    /// Runs of each approach.
    pub runs: u32,
    /// The sandbox cpuset when pinning applies (`null`: more vCPUs than CPUs).
    pub pinning_cpus: Option<String>,
    /// [`Mode::Born`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub born: Option<ApproachStats>,
    /// [`Mode::SelfPlace`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_place: Option<ApproachStats>,
    /// [`Mode::SelfNested`] (cgroup v1 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_place_nested: Option<ApproachStats>,
    /// [`Mode::CtlWrites`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_writes: Option<ApproachStats>,
    /// [`Mode::Upstream`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<ApproachStats>,
    /// [`Mode::CgroupsRs`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroups_rs: Option<ApproachStats>,
    /// First version's name of `controller_writes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hooks: Option<ApproachStats>,
    /// First version's name of `upstream`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<ApproachStats>,
    /// First version's name of `self_place` (`null` without it).
    pub self_place_prototype: Option<ApproachStats>,
    /// Placed p50 of `controller_writes` over `self_place`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup: Option<f64>,
    /// Placed p99 of `controller_writes` over `self_place`'s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup_p99: Option<f64>,
}

/// The figures of one approach at one vCPU count, over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct ApproachStats {
    /// Runs.
    pub runs: u32,
    /// vCPUs placed, over all runs.
    pub samples: usize,
    /// Hook entry to placed: median, µs.
    pub p50_us: f64,
    /// Hook entry to placed: 99th percentile, µs.
    pub p99_us: f64,
    /// Hook entry to placed: max, µs.
    pub max_us: f64,
    /// Guest time run unplaced: median, µs.
    pub unplaced_guest_us: f64,
    /// vCPUs checked at hook exit and placed then.
    pub unplaced_guest_samples: usize,
    /// Guest time run unplaced: 99th percentile, µs.
    pub unplaced_guest_p99_us: f64,
    /// Guest time run unplaced: max, µs.
    pub unplaced_guest_max_us: f64,
    /// vCPUs checked at hook exit and not placed then.
    pub released_unplaced: usize,
    /// First hook entry to the last vCPU placed: median over runs, ms.
    pub all_placed_p50_ms: f64,
    /// First hook entry to the last vCPU placed: max over runs, ms.
    pub all_placed_max_ms: f64,
    /// Most retries of the tid lookup in one run (upstream).
    pub lookup_retries_max: u32,
    /// Hook entry to return: median, µs.
    pub held_p50_us: f64,
    /// Hook entry to return: 99th percentile, µs.
    pub held_p99_us: f64,
    /// Hook entry to return: max, µs.
    pub held_max_us: f64,
    /// Same as `all_placed_p50_ms`, ms.
    pub span_p50_ms: f64,
    /// Same as `all_placed_max_ms`, ms.
    pub span_max_ms: f64,
    /// Pinning applied and was measured.
    pub pinning_measured: bool,
    /// Hook entry to pinned: median, µs (`null`: not measured).
    pub pinned_p50_us: Option<f64>,
    /// Hook entry to pinned: 99th percentile, µs (`null`: not measured).
    pub pinned_p99_us: Option<f64>,
    /// Hook entry to pinned: max, µs (`null`: not measured).
    pub pinned_max_us: Option<f64>,
    /// Guest time run unpinned: max, µs (`null`: not measured).
    pub unpinned_guest_max_us: Option<f64>,
    /// Guest time run unpinned: median, µs (`null`: not measured).
    pub unpinned_guest_p50_us: Option<f64>,
    /// vCPUs checked at hook exit and not pinned then.
    pub released_unpinned: usize,
    /// Cgroup migration writes per vCPU: max over runs.
    pub cgroup_writes_per_vcpu: f64,
    /// CPU time in the hook: median, µs.
    pub held_cpu_p50_us: f64,
    /// CPU time in the hook: 99th percentile, µs.
    pub held_cpu_p99_us: f64,
    /// CPU time in the hook: max, µs.
    pub held_cpu_max_us: f64,
    /// First to last hook entry (the VMM's own spawning): max over runs, ms.
    pub spawn_span_max_ms: f64,
}

/// The first write moving a thread after the cgroup core was idle.
#[derive(Debug, Clone, Serialize)]
pub struct IdleFirstWrite {
    /// The idle time before each write, ms.
    pub idle_ms: u64,
    /// The file written: `tasks` (v1) or `cgroup.threads` (v2).
    pub file: &'static str,
    /// Why it was not measured (`null`: it was).
    pub skipped: Option<String>,
    /// Writing the thread's tid.
    pub by_tid: UsFigures,
    /// Writing `0` from the thread itself.
    pub by_zero: UsFigures,
}

/// A distribution of durations in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsFigures {
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Largest, µs.
    pub max_us: f64,
    /// Number of samples.
    pub samples: usize,
}

impl UsFigures {
    /// The figures of µs samples, rounded to 3 decimals.
    pub fn of(values: &[f64]) -> UsFigures {
        let s = Summary::of(values);
        UsFigures {
            p50_us: round3(s.p50),
            p99_us: round3(s.p99),
            max_us: round3(s.max),
            samples: s.n,
        }
    }
}

impl SizeRow {
    /// The row of `vcpus` from each approach's aggregate (`pinning`: pinning applied).
    pub fn new(
        vcpus: u32,
        runs: u32,
        pinning_cpus: Option<String>,
        aggs: &[(Mode, Agg)],
    ) -> SizeRow {
        let pinning = pinning_cpus.is_some();
        let agg = |m: Mode| aggs.iter().find(|(x, _)| *x == m).map(|(_, a)| a);
        let stats = |m: Mode| agg(m).map(|a| a.stats(pinning && m.pins()));
        let speedup = |q: fn(&Summary) -> f64| {
            let (c, s) = (agg(Mode::CtlWrites)?, agg(Mode::SelfPlace)?);
            let (cs, ss) = (c.placed(), s.placed());
            Some(round3(ratio(q(&cs), q(&ss))))
        };
        SizeRow {
            vcpus,
            runs,
            born: stats(Mode::Born),
            self_place: stats(Mode::SelfPlace),
            self_place_nested: stats(Mode::SelfNested),
            controller_writes: stats(Mode::CtlWrites),
            upstream: stats(Mode::Upstream),
            cgroups_rs: stats(Mode::CgroupsRs),
            hooks: stats(Mode::CtlWrites),
            pull: stats(Mode::Upstream),
            self_place_prototype: stats(Mode::SelfPlace),
            speedup: speedup(|s| s.p50),
            speedup_p99: speedup(|s| s.p99),
            pinning_cpus,
        }
    }

    /// The figures of `mode`, if it was measured.
    pub fn get(&self, mode: Mode) -> Option<&ApproachStats> {
        match mode {
            Mode::Born => self.born.as_ref(),
            Mode::SelfPlace => self.self_place.as_ref(),
            Mode::SelfNested => self.self_place_nested.as_ref(),
            Mode::CtlWrites => self.controller_writes.as_ref(),
            Mode::Upstream => self.upstream.as_ref(),
            Mode::CgroupsRs => self.cgroups_rs.as_ref(),
        }
    }

    /// The approaches measured, in the order of the table.
    pub fn approaches(&self) -> impl Iterator<Item = (Mode, &ApproachStats)> {
        MODES
            .iter()
            .filter_map(move |&m| self.get(m).map(|a| (m, a)))
    }
}

/// The targets of issue 11, over every size measured.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementTargets {
    /// Default mode makes no cgroup write per vCPU.
    pub default_zero_writes: bool,
    /// Default mode holds a vCPU at most 50 µs (p99) at every size.
    pub default_held_p99_le_50us: bool,
    /// Default mode's worst held p99 over the sizes, µs.
    pub default_held_worst_p99_us: f64,
    /// Split mode holds a vCPU at most 1 ms (p99) up to 8 vCPUs.
    pub split_held_p99_le_1ms_up_to_8: bool,
    /// Split mode's worst held p99 up to 8 vCPUs, µs.
    pub split_held_worst_p99_up_to_8_us: f64,
    /// 64 vCPUs placed within 2 ms in split mode (`null`: 64 not measured).
    pub split_64_within_2ms: Option<bool>,
    /// Split mode's all-placed span at 64 vCPUs, max over runs, ms.
    pub split_64_span_max_ms: Option<f64>,
    /// 240 vCPUs placed within 5 ms in split mode (`null`: 240 not measured).
    pub split_240_within_5ms: Option<bool>,
    /// Split mode's all-placed span at 240 vCPUs, max over runs, ms.
    pub split_240_span_max_ms: Option<f64>,
    /// The nested split's worst held p99 up to 8 vCPUs, µs (v1 only).
    pub split_nested_held_worst_p99_up_to_8_us: Option<f64>,
    /// Default mode's worst p99 of CPU time in the hook, µs.
    pub default_held_cpu_worst_p99_us: f64,
    /// The VMM's own spawn span at 64 vCPUs without placement (upstream), ms.
    pub spawn_span_64_max_ms: Option<f64>,
    /// The VMM's own spawn span at 240 vCPUs without placement (upstream), ms.
    pub spawn_span_240_max_ms: Option<f64>,
    /// The nested split's all-placed span at 64 vCPUs, ms (v1 only).
    pub split_nested_64_span_max_ms: Option<f64>,
    /// The nested split's all-placed span at 240 vCPUs, ms (v1 only).
    pub split_nested_240_span_max_ms: Option<f64>,
    /// No vCPU of this project's approaches ran guest code unplaced.
    pub unplaced_guest_zero: bool,
    /// No vCPU of this project's approaches ran guest code unpinned.
    pub unpinned_guest_zero: bool,
}

impl PlacementTargets {
    /// The targets over `rows`.
    pub fn of(rows: &[SizeRow]) -> PlacementTargets {
        let at = |n: u32, m: Mode, f: fn(&ApproachStats) -> f64| -> Option<f64> {
            rows.iter()
                .find(|r| r.vcpus == n)
                .and_then(|r| r.get(m))
                .map(f)
        };
        let over = |m: Mode, up_to: u32, f: fn(&ApproachStats) -> f64| {
            rows.iter()
                .filter(move |r| r.vcpus <= up_to)
                .filter_map(move |r| r.get(m).map(f))
        };
        let held_p99: fn(&ApproachStats) -> f64 = |a| a.held_p99_us;
        let span: fn(&ApproachStats) -> f64 = |a| a.span_max_ms;
        let born_worst_p99 = over(Mode::Born, u32::MAX, held_p99).fold(0.0, f64::max);
        let born_writes =
            over(Mode::Born, u32::MAX, |a| a.cgroup_writes_per_vcpu).fold(0.0, f64::max);
        let split_p99_8 = over(Mode::SelfPlace, 8, held_p99).fold(0.0, f64::max);
        let span64 = at(64, Mode::SelfPlace, span);
        let span240 = at(240, Mode::SelfPlace, span);
        // The hook's own work in born mode, preemption excluded.
        let born_cpu_worst_p99 =
            over(Mode::Born, u32::MAX, |a| a.held_cpu_p99_us).fold(0.0, f64::max);
        // Ours ran no guest code unplaced / unpinned.
        let ours = [Mode::Born, Mode::SelfPlace, Mode::SelfNested];
        let any = |f: fn(&ApproachStats) -> usize| {
            rows.iter()
                .any(|r| ours.iter().any(|&m| r.get(m).is_some_and(|a| f(a) > 0)))
        };
        PlacementTargets {
            default_zero_writes: born_writes == 0.0,
            default_held_p99_le_50us: born_worst_p99 <= 50.0,
            default_held_worst_p99_us: round3(born_worst_p99),
            split_held_p99_le_1ms_up_to_8: split_p99_8 <= 1000.0,
            split_held_worst_p99_up_to_8_us: round3(split_p99_8),
            split_64_within_2ms: span64.map(|ms| ms <= 2.0),
            split_64_span_max_ms: span64,
            split_240_within_5ms: span240.map(|ms| ms <= 5.0),
            split_240_span_max_ms: span240,
            split_nested_held_worst_p99_up_to_8_us: over(Mode::SelfNested, 8, held_p99)
                .reduce(f64::max)
                .map(round3),
            default_held_cpu_worst_p99_us: round3(born_cpu_worst_p99),
            // The VMM's own spawn span with no placement at all (upstream: no hook),
            // under which no "all placed" figure can fall.
            spawn_span_64_max_ms: at(64, Mode::Upstream, |a| a.spawn_span_max_ms),
            spawn_span_240_max_ms: at(240, Mode::Upstream, |a| a.spawn_span_max_ms),
            split_nested_64_span_max_ms: at(64, Mode::SelfNested, span),
            split_nested_240_span_max_ms: at(240, Mode::SelfNested, span),
            unplaced_guest_zero: !any(|a| a.released_unplaced),
            unpinned_guest_zero: !any(|a| a.released_unpinned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::probe::RunOut;

    fn agg(placed_us: f64, writes: f64) -> Agg {
        let mut a = Agg::default();
        a.add(RunOut {
            held_us: vec![10.0, 20.0],
            held_cpu_us: vec![1.0, 2.0],
            placed_us: vec![placed_us, placed_us],
            unplaced_guest_us: vec![0.0, 0.0],
            writes_per_vcpu: writes,
            span_us: 1500.0,
            ..Default::default()
        });
        a
    }

    #[test]
    fn a_row_has_every_approach_measured_and_the_first_versions_fields() {
        let aggs: Vec<(Mode, Agg)> = MODES.iter().map(|&m| (m, agg(100.0, 8.0))).collect();
        let v = serde_json::to_value(SizeRow::new(2, 1, Some("0,1".into()), &aggs)).unwrap();
        for k in [
            "born",
            "self_place",
            "self_place_nested",
            "controller_writes",
            "upstream",
            "cgroups_rs",
            "hooks",
            "pull",
            "self_place_prototype",
        ] {
            assert_eq!(v[k]["runs"], 1, "{k}: {v}");
            assert_eq!(v[k]["samples"], 2, "{k}: {v}");
        }
        assert_eq!(v["speedup"], 1.0);
        assert_eq!(v["pinning_cpus"], "0,1");
        // cgroups-rs does not pin: no pinning figures even where pinning applies.
        assert_eq!(v["cgroups_rs"]["pinning_measured"], false);
        assert_eq!(v["born"]["pinning_measured"], true);
        assert!(v["born"]["pinned_p50_us"].is_null(), "no pinned sample");
        assert_eq!(v["born"]["span_max_ms"], 1.5);
    }

    #[test]
    fn an_approach_not_measured_is_absent_and_the_targets_skip_it() {
        let aggs: Vec<(Mode, Agg)> = [Mode::Born, Mode::CtlWrites, Mode::Upstream]
            .iter()
            .map(|&m| (m, agg(50.0, if m == Mode::Born { 0.0 } else { 8.0 })))
            .collect();
        let row = SizeRow::new(1, 1, None, &aggs);
        let v = serde_json::to_value(&row).unwrap();
        let o = v.as_object().unwrap();
        for k in [
            "self_place",
            "self_place_nested",
            "cgroups_rs",
            "speedup",
            "speedup_p99",
        ] {
            assert!(!o.contains_key(k), "{k}: {v}");
        }
        assert!(o["self_place_prototype"].is_null());
        assert!(o["pinning_cpus"].is_null());
        let modes: Vec<Mode> = row.approaches().map(|(m, _)| m).collect();
        assert_eq!(modes, [Mode::Born, Mode::CtlWrites, Mode::Upstream]);
        let t = PlacementTargets::of(&[row]);
        assert!(t.default_zero_writes);
        assert!(t.default_held_p99_le_50us);
        assert_eq!(t.default_held_worst_p99_us, 20.0);
        assert_eq!(t.split_held_worst_p99_up_to_8_us, 0.0);
        assert_eq!(t.split_64_within_2ms, None);
        assert_eq!(t.split_nested_held_worst_p99_up_to_8_us, None);
        assert!(t.unplaced_guest_zero && t.unpinned_guest_zero);
    }
}
