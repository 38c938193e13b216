//! The typed result of `bench scale` (`scale.json`), what each count's child process
//! reports, and the report made from them.

use serde::{Deserialize, Serialize};

use crate::machine::{self, Machine};
use crate::report::{num, yes_no, Table};
use crate::stats::{ratio, round3, Summary};

/// `bench scale`: many sandboxes alive at once, one count per child process.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleResult {
    /// `scale`.
    pub bench: &'static str,
    /// `host-cgroups bench scale`.
    pub command: &'static str,
    /// `cgroupfs`.
    pub driver: &'static str,
    /// 1: the bench runs on cgroup v1 only.
    pub cgroup_version: u8,
    /// The vCPU backend the sandboxes used (`?` when nothing was measured).
    pub backend: String,
    /// The machine, at the start.
    pub machine: Machine,
    /// The 1-minute load average at the end.
    pub loadavg_end: f64,
    /// Wall time of the whole bench, in seconds.
    pub elapsed_s: f64,
    /// One entry per sandbox count, in the order given.
    pub results: Vec<ScaleCount>,
    /// Memory and placement targets over the counts.
    pub targets: ScaleTargets,
    /// How the figures were taken (in the Markdown, not in the JSON).
    #[serde(skip)]
    pub method: Method,
}

/// The figures of one sandbox count, measured in a fresh process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleCount {
    /// Sandboxes alive at once.
    pub sandboxes: u32,
    /// vCPUs of each sandbox.
    pub vcpus_per_sandbox: u32,
    /// The vCPU backend used.
    pub backend: String,
    /// Sum of the sandboxes' create times, ms.
    pub create_total_ms: f64,
    /// Wall time of creating them all, ms (freezing each included).
    pub create_wall_ms: f64,
    /// Create time of one sandbox, ms.
    pub create_per_sandbox_ms: Quantiles,
    /// Sum of the sandboxes' destroy times, ms.
    pub destroy_total_ms: f64,
    /// Resident memory growth per sandbox (sandbox cgroup and supervisor thread, no
    /// VMM), KiB.
    pub rss_per_controller_kib: f64,
    /// Resident memory growth per full sandbox, KiB.
    pub rss_per_sandbox_kib: f64,
    /// vCPU placement latency while the N sandboxes were created, µs.
    pub placement_during_create_us: SampledQuantiles,
    /// vCPU placement latency of probe sandboxes created while N are alive, µs.
    pub placement_with_n_alive_us: SampledQuantiles,
}

/// Median, 99th percentile and max, in the unit of the field that holds them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// [`Quantiles`] with the number of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampledQuantiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Number of samples.
    pub samples: usize,
}

impl Quantiles {
    /// The quantiles of a summary, rounded to 3 decimals.
    pub fn of(s: &Summary) -> Quantiles {
        Quantiles {
            p50: round3(s.p50),
            p99: round3(s.p99),
            max: round3(s.max),
        }
    }
}

impl SampledQuantiles {
    /// The quantiles of a summary, rounded to 3 decimals, with its sample count.
    pub fn of(s: &Summary) -> SampledQuantiles {
        SampledQuantiles {
            p50: round3(s.p50),
            p99: round3(s.p99),
            max: round3(s.max),
            samples: s.n,
        }
    }
}

/// What a count's child process prints: its figures and the probe latencies (µs) the
/// parent plots (not in `scale.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildOutput {
    /// The figures.
    #[serde(flatten)]
    pub count: ScaleCount,
    /// Every probe vCPU's placement latency, µs.
    pub probe_values_us: Vec<f64>,
}

/// The targets: controller memory, and placement latency as sandboxes pile up.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleTargets {
    /// Every count's memory per controller is under 1 MiB.
    pub controller_under_1_mib_per_sandbox: bool,
    /// The largest memory per controller over the counts, KiB.
    pub max_rss_per_controller_kib: f64,
    /// Placement p50 with the last count alive over that with the first.
    pub placement_p50_growth_first_to_last: f64,
}

impl ScaleTargets {
    fn new(counts: &[ScaleCount]) -> ScaleTargets {
        let max_ctl_kib = counts
            .iter()
            .map(|c| c.rss_per_controller_kib)
            .fold(0.0, f64::max);
        let p50 = |c: Option<&ScaleCount>| c.map_or(0.0, |c| c.placement_with_n_alive_us.p50);
        ScaleTargets {
            controller_under_1_mib_per_sandbox: max_ctl_kib < 1024.0,
            max_rss_per_controller_kib: round3(max_ctl_kib),
            placement_p50_growth_first_to_last: round3(ratio(
                p50(counts.last()),
                p50(counts.first()),
            )),
        }
    }
}

/// How the figures were taken: what the Markdown says beside the table.
#[derive(Debug, Clone, Default)]
pub struct Method {
    /// The 1-minute load average at the start.
    pub loadavg_start: f64,
    /// Probe sandboxes per count (`--probes`).
    pub probes: u32,
}

impl ScaleResult {
    /// The result of the counts measured.
    pub fn new(
        machine: Machine,
        loadavg_end: f64,
        elapsed_s: f64,
        results: Vec<ScaleCount>,
        method: Method,
    ) -> ScaleResult {
        ScaleResult {
            bench: "scale",
            command: "host-cgroups bench scale",
            driver: "cgroupfs",
            cgroup_version: 1,
            backend: results
                .first()
                .map_or_else(|| "?".to_string(), |c| c.backend.clone()),
            machine,
            loadavg_end,
            elapsed_s: round3(elapsed_s),
            targets: ScaleTargets::new(&results),
            results,
            method,
        }
    }

    /// The Markdown report: one row per count, and the targets.
    pub fn markdown(&self) -> String {
        let mut t = Table::new(&[
            "sandboxes",
            "create total ms",
            "create/sandbox p50 ms",
            "destroy total ms",
            "RSS/sandbox KiB",
            "RSS/controller KiB",
            "placement during create p50/p99/max µs",
            "placement with N alive p50/p99/max µs",
        ]);
        let three =
            |q: &SampledQuantiles| format!("{} / {} / {}", num(q.p50), num(q.p99), num(q.max));
        for c in &self.results {
            t.row(vec![
                c.sandboxes.to_string(),
                num(c.create_total_ms),
                num(c.create_per_sandbox_ms.p50),
                num(c.destroy_total_ms),
                num(c.rss_per_sandbox_kib),
                num(c.rss_per_controller_kib),
                three(&c.placement_during_create_us),
                three(&c.placement_with_n_alive_us),
            ]);
        }
        let g = &self.targets;
        format!(
            "## Scale: sandboxes alive at once (cgroup v1, cgroupfs, `{}` vCPUs, 2 each)\n\n\
             Command: `host-cgroups bench scale` ({:.0} s)\n\n{}\n\
             Each count runs in a fresh process. Create = controller start (cgroups, cpuset, quota) + VMM \
             start with both vCPUs placed; the alive sandboxes' vCPUs are frozen (untimed) so that they do \
             not starve the host. Placement with N alive: {} probe sandboxes created while N exist. \
             RSS figures are growth of this process's resident memory divided by N (controllers only: \
             sandbox cgroup + supervisor thread, no VMM).\n\n{}\n\
             Targets: controller memory under 1 MiB per sandbox: {} (max {:.0} KiB); placement p50 with \
             the most sandboxes alive vs the fewest: {:.2}×.\n",
            self.backend,
            self.elapsed_s,
            machine::load_note(self.method.loadavg_start, self.loadavg_end),
            self.method.probes,
            t.markdown(),
            yes_no(g.controller_under_1_mib_per_sandbox),
            g.max_rss_per_controller_kib,
            g.placement_p50_growth_first_to_last,
        )
    }
}

/// `x` as a JSON number: how the progress lines have always shown figures (`248.0`).
pub fn json_number(x: f64) -> String {
    serde_json::to_string(&x).unwrap_or_else(|_| x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_output_round_trips() {
        let q = SampledQuantiles {
            p50: 1.0,
            p99: 2.0,
            max: 3.0,
            samples: 4,
        };
        let out = ChildOutput {
            count: ScaleCount {
                sandboxes: 2,
                vcpus_per_sandbox: 2,
                backend: "thread".into(),
                create_total_ms: 1.5,
                create_wall_ms: 2.5,
                create_per_sandbox_ms: Quantiles {
                    p50: 0.5,
                    p99: 1.0,
                    max: 1.0,
                },
                destroy_total_ms: 0.25,
                rss_per_controller_kib: 10.0,
                rss_per_sandbox_kib: 20.0,
                placement_during_create_us: q,
                placement_with_n_alive_us: q,
            },
            probe_values_us: vec![1.0, 2.0],
        };
        let text = serde_json::to_string(&out).unwrap();
        assert!(text.contains("\"probe_values_us\":[1.0,2.0]"), "{text}");
        assert_eq!(serde_json::from_str::<ChildOutput>(&text).unwrap(), out);
        let v = serde_json::to_value(&out.count).unwrap();
        assert!(v.get("probe_values_us").is_none());
        assert_eq!(json_number(248.0), "248.0");
        assert_eq!(json_number(25.478), "25.478");
    }
}
