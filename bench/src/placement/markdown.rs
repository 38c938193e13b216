//! The Markdown report of `bench placement`, made from its typed result.

use super::result::{ApproachStats, PlacementResult};
use crate::machine;
use crate::report::{num, yes_no, Table};

/// `x ms` when measured, `not measured` otherwise.
fn ms_or_not(x: Option<f64>) -> String {
    x.map_or("not measured".into(), |ms| format!("{ms:.2} ms"))
}

/// `yes (x ms)` / `NO (x ms)` against `bound`, or `not measured`.
fn within(x: Option<f64>, bound: f64) -> String {
    x.map_or("not measured".into(), |ms| {
        format!("{} ({ms:.2} ms)", yes_no(ms <= bound))
    })
}

/// One table row of an approach.
fn cells(vcpus: u32, label: &str, a: &ApproachStats) -> Vec<String> {
    let pins = a.pinning_measured;
    vec![
        vcpus.to_string(),
        label.to_string(),
        format!(
            "{} / {} / {}",
            num(a.held_p50_us),
            num(a.held_p99_us),
            num(a.held_max_us)
        ),
        format!("{} / {}", num(a.held_cpu_p50_us), num(a.held_cpu_p99_us)),
        format!("{} / {}", num(a.p50_us), num(a.p99_us)),
        format!("{} / {}", num(a.span_max_ms), num(a.spawn_span_max_ms)),
        format!("{} / {}", num(a.unplaced_guest_max_us), a.released_unplaced),
        match (a.pinned_p50_us, a.pinned_max_us) {
            (Some(p50), Some(max)) if pins => format!("{} / {}", num(p50), num(max)),
            _ => "—".into(),
        },
        if pins {
            format!(
                "{} / {}",
                num(a.unpinned_guest_max_us.unwrap_or(0.0)),
                a.released_unpinned
            )
        } else {
            "—".into()
        },
        num(a.cgroup_writes_per_vcpu),
    ]
}

impl PlacementResult {
    /// The Markdown report: one row per size and approach, the targets, the idle write.
    pub fn markdown(&self) -> String {
        let mut t = Table::new(&[
            "vCPUs",
            "approach",
            "held p50 / p99 / max µs",
            "held CPU p50 / p99 µs",
            "placed p50 / p99 µs",
            "all placed (span) / spawn span max ms",
            "unplaced guest µs max / released unplaced",
            "pinned p50 / max µs",
            "unpinned guest µs max / released unpinned",
            "cgroup writes per vCPU",
        ]);
        for row in &self.results {
            for (mode, a) in row.approaches() {
                t.row(cells(row.vcpus, mode.label(), a));
            }
        }
        let idle = &self.idle_first_write;
        let idle_line = match &idle.skipped {
            Some(why) => format!(
                "First `{}` write after 100 ms without cgroup migrations: not measured ({why}).",
                idle.file
            ),
            None => format!(
                "First `{}` write after 100 ms without cgroup migrations ({} samples each): by tid \
                 p50 {} µs, max {} µs; by `0` from the thread itself p50 {} µs, max {} µs.",
                idle.file,
                idle.by_tid.samples,
                num(idle.by_tid.p50_us),
                num(idle.by_tid.max_us),
                num(idle.by_zero.p50_us),
                num(idle.by_zero.max_us),
            ),
        };
        let notes_md: String = self
            .notes
            .iter()
            .map(|n| format!("Note: {n}.\n\n"))
            .collect();
        let g = &self.targets;
        format!(
            "## vCPU placement (cgroup v{}, cgroupfs, `{}` vCPUs)\n\n\
             Command: `{}` ({:.0} s; every row of a size in the same run, \
             approaches alternating)\n\n{}\n{}\n{notes_md}\
             held: hook entry to return; placed: hook entry to the thread being in its planned cgroup \
             (the sandbox cgroup, or in the nested layout the `vcpus` child); \
             held CPU: CPU time the thread spent in its hook (its own work; held minus held CPU is time \
             it waited for a CPU); \
             span: first vCPU's hook entry to the last vCPU placed, next to the spawn span (first to \
             last hook entry: the VMM's own spawning, the floor under span); unplaced / unpinned guest µs: CPU time \
             run after the hook returned before being placed / pinned (checked in the first run of each \
             size); pinned: hook entry to single-CPU affinity (only where vCPUs = CPUs: the cpuset is the \
             first n online CPUs).\n\n\
             Targets: default mode zero writes per vCPU: {}; held p99 ≤ 50 µs at every size: {} (worst \
             {:.1} µs; CPU time in the hook, worst p99 {:.1} µs); split held p99 ≤ 1 ms up to 8 vCPUs: {} (worst {:.1} µs); 64 placed within 2 ms: \
             {}; 240 within 5 ms: {} (the VMM's own spawn span without placement, upstream row: {} at 64, \
             {} at 240); unplaced guest time 0: {}; unpinned guest time 0: {}.{}\n\n\
             {idle_line}\n",
            self.cgroup_version,
            self.backend,
            self.method.command_line,
            self.elapsed_s,
            machine::load_note(self.method.loadavg_start, self.loadavg_end),
            t.markdown(),
            yes_no(g.default_zero_writes),
            yes_no(g.default_held_p99_le_50us),
            g.default_held_worst_p99_us,
            g.default_held_cpu_worst_p99_us,
            yes_no(g.split_held_p99_le_1ms_up_to_8),
            g.split_held_worst_p99_up_to_8_us,
            within(g.split_64_span_max_ms, 2.0),
            within(g.split_240_span_max_ms, 5.0),
            ms_or_not(g.spawn_span_64_max_ms),
            ms_or_not(g.spawn_span_240_max_ms),
            yes_no(g.unplaced_guest_zero),
            yes_no(g.unpinned_guest_zero),
            match g.split_nested_held_worst_p99_up_to_8_us {
                Some(p99) => format!(
                    " Nested split (v1): held p99 up to 8 vCPUs {:.1} µs; 64 placed within {}; 240 within {}.",
                    p99,
                    ms_or_not(g.split_nested_64_span_max_ms),
                    ms_or_not(g.split_nested_240_span_max_ms),
                ),
                None => String::new(),
            },
        )
    }
}
