//! The typed result of `bench systemd` (`systemd.json`) and the report made from it.

use serde::Serialize;

use super::roundtrip::{Impl, Steps};
use crate::machine::{self, Machine};
use crate::report::{num, yes_no, Table};
use crate::stats::{ratio, round3, Summary};

/// `bench systemd`: measured, or why it could not be.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum SystemdResult {
    /// systemd is not reachable here: nothing measured.
    Unreachable(Unreachable),
    /// The round trips of each implementation.
    Measured(Measured),
}

/// `bench systemd` where systemd is not reachable.
#[derive(Debug, Clone, Serialize)]
pub struct Unreachable {
    /// `systemd`.
    pub bench: &'static str,
    /// `host-cgroups bench systemd`.
    pub command: &'static str,
    /// `systemd not reachable`.
    pub status: &'static str,
    /// Why: systemd is not PID 1, or its bus does not answer.
    pub reason: &'static str,
    /// The machine.
    pub machine: Machine,
    /// Empty.
    pub results: Vec<ImplRoundTrips>,
}

/// `bench systemd`, measured.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// `systemd`.
    pub bench: &'static str,
    /// `host-cgroups bench systemd`.
    pub command: &'static str,
    /// `measured`.
    pub status: &'static str,
    /// The cgroup version of the host (1 or 2).
    pub cgroup_version: u8,
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
    /// One entry per implementation: this project, `systemd-run --scope`, `cgroups-rs`.
    pub results: Vec<ImplRoundTrips>,
    /// This project's start p50 over `systemd-run --scope`'s.
    pub start_vs_systemd_run_p50: f64,
    /// This project's set p50 over `systemctl set-property --runtime`'s.
    pub set_vs_systemctl_set_property_p50: f64,
    /// This project's stop p50 over `systemctl stop`'s.
    pub stop_vs_systemctl_stop_p50: f64,
    /// This project's round trip p50 over systemd's tools'.
    pub round_trip_vs_systemd_tools_p50: f64,
}

/// The round trips of one implementation.
#[derive(Debug, Clone, Serialize)]
pub struct ImplRoundTrips {
    /// `host-cgroups`, `systemd-run --scope` or `cgroups-rs SystemdManager`.
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    /// Round trips measured.
    pub runs: usize,
    /// Scope start until the process is in the unit's cgroup.
    pub start: StepMs,
    /// A CPU quota of 50 % set.
    pub set: StepMs,
    /// The unit stopped.
    pub stop: StepMs,
    /// The three steps.
    pub round_trip: StepMs,
    /// Why the implementation stopped being measured (`null`: it did not fail).
    pub error: Option<String>,
    /// The tool is not installed (`systemd-run`), so it was not measured (not in the JSON).
    #[serde(skip)]
    pub not_installed: bool,
}

/// One step's durations, ms.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StepMs {
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Longest, ms.
    pub max_ms: f64,
}

impl StepMs {
    fn of(us: &[f64]) -> StepMs {
        let s = Summary::of(us).scaled(1e-3);
        StepMs {
            p50_ms: round3(s.p50),
            p99_ms: round3(s.p99),
            max_ms: round3(s.max),
        }
    }
}

/// What was measured for one implementation.
#[derive(Debug, Clone)]
pub struct Trips {
    /// Which.
    pub which: Impl,
    /// Its round trips.
    pub steps: Vec<Steps>,
    /// Why it stopped being measured.
    pub failed: Option<String>,
    /// Its tool is not installed.
    pub not_installed: bool,
}

impl Trips {
    /// Durations of step `f` of every round trip, µs.
    fn step(&self, f: fn(&Steps) -> f64) -> Vec<f64> {
        self.steps.iter().map(f).collect()
    }

    fn p50(&self, f: fn(&Steps) -> f64) -> f64 {
        Summary::of(&self.step(f)).p50
    }
}

const START: fn(&Steps) -> f64 = |s| s.0;
const SET: fn(&Steps) -> f64 = |s| s.1;
const STOP: fn(&Steps) -> f64 = |s| s.2;
const TOTAL: fn(&Steps) -> f64 = |s| s.0 + s.1 + s.2;

impl ImplRoundTrips {
    fn new(t: &Trips) -> ImplRoundTrips {
        ImplRoundTrips {
            implementation: t.which.name(),
            runs: t.steps.len(),
            start: StepMs::of(&t.step(START)),
            set: StepMs::of(&t.step(SET)),
            stop: StepMs::of(&t.step(STOP)),
            round_trip: StepMs::of(&t.step(TOTAL)),
            error: t.failed.clone(),
            not_installed: t.not_installed,
        }
    }

    /// The table's note: not installed, or the failure.
    fn note(&self) -> String {
        match (&self.error, self.not_installed) {
            (_, true) => "systemd-run not installed".to_string(),
            (Some(e), _) => format!("failed: {e}"),
            (None, _) => String::new(),
        }
    }
}

impl Measured {
    /// The result of the implementations' round trips.
    pub fn new(
        cgroup_version: u8,
        machine: Machine,
        loadavg: (f64, f64),
        elapsed_s: f64,
        trips: &[Trips],
    ) -> Measured {
        let p50 = |i: Impl, f: fn(&Steps) -> f64| {
            trips
                .iter()
                .find(|t| t.which == i)
                .map_or(0.0, |t| t.p50(f))
        };
        let vs = |f| round3(ratio(p50(Impl::Project, f), p50(Impl::SystemdRun, f)));
        Measured {
            bench: "systemd",
            command: "host-cgroups bench systemd",
            status: "measured",
            cgroup_version,
            machine,
            loadavg_start: loadavg.0,
            loadavg_end: loadavg.1,
            elapsed_s: round3(elapsed_s),
            results: trips.iter().map(ImplRoundTrips::new).collect(),
            start_vs_systemd_run_p50: vs(START),
            set_vs_systemctl_set_property_p50: vs(SET),
            stop_vs_systemctl_stop_p50: vs(STOP),
            round_trip_vs_systemd_tools_p50: vs(TOTAL),
        }
    }

    /// The Markdown report: one row per implementation, and the targets.
    pub fn markdown(&self) -> String {
        let mut t = Table::new(&[
            "implementation",
            "start p50 ms",
            "start p99 ms",
            "start max ms",
            "set p50 ms",
            "stop p50 ms",
            "round trip p50 ms",
            "note",
        ]);
        for r in &self.results {
            t.row(vec![
                format!("`{}`", r.implementation),
                num(r.start.p50_ms),
                num(r.start.p99_ms),
                num(r.start.max_ms),
                num(r.set.p50_ms),
                num(r.stop.p50_ms),
                num(r.round_trip.p50_ms),
                r.note(),
            ]);
        }
        let within = |r: f64, bound: f64| yes_no(r > 0.0 && r <= bound);
        let (vs_run, vs_set, vs_stop, vs_total) = (
            self.start_vs_systemd_run_p50,
            self.set_vs_systemctl_set_property_p50,
            self.stop_vs_systemctl_stop_p50,
            self.round_trip_vs_systemd_tools_p50,
        );
        format!(
            "## systemd round trips (cgroup v{}, systemd driver)\n\n\
             Command: `host-cgroups bench systemd` ({:.0} s)\n\n{}\n\
             Start = from the call until the process is in the unit's cgroup (read from /proc); set = a CPU \
             quota of 50 %; stop = the unit stopped.\n\n{}\n\
             Targets (p50 against systemd's own tools in this run): start no slower than \
             `systemd-run --scope`: {} ({vs_run:.2}×); set no slower than `systemctl set-property \
             --runtime`: {} ({vs_set:.2}×); stop no slower than `systemctl stop`: {} ({vs_stop:.2}×); \
             round trip at most 0.5× theirs: {} ({vs_total:.2}×).\n",
            self.cgroup_version,
            self.elapsed_s,
            machine::load_note(self.loadavg_start, self.loadavg_end),
            t.markdown(),
            within(vs_run, 1.0),
            within(vs_set, 1.0),
            within(vs_stop, 1.0),
            within(vs_total, 0.5),
        )
    }
}

impl Unreachable {
    /// The result where systemd is not reachable, for `reason`.
    pub fn new(reason: &'static str, machine: Machine) -> Unreachable {
        Unreachable {
            bench: "systemd",
            command: "host-cgroups bench systemd",
            status: "systemd not reachable",
            reason,
            machine,
            results: Vec::new(),
        }
    }

    /// The Markdown report: why nothing was measured, and where to measure.
    pub fn markdown(&self) -> String {
        format!(
            "## systemd round trips\n\nsystemd not reachable ({}): nothing measured. \
             Run inside the systemd test hosts, e.g. \
             `tests/hosts/run-in-host sd-v2 -- host-cgroups bench systemd`.\n",
            self.reason
        )
    }
}

impl SystemdResult {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        match self {
            SystemdResult::Unreachable(u) => u.markdown(),
            SystemdResult::Measured(m) => m.markdown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Machine {
        Machine {
            kernel: "k".into(),
            cpus: 2,
            cpu_model: "m".into(),
            loadavg: 0.5,
        }
    }

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        v.as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    #[test]
    fn measured_json_has_the_fields_it_always_had() {
        let trips = [
            Trips {
                which: Impl::Project,
                steps: vec![(1000.0, 500.0, 2000.0), (3000.0, 700.0, 4000.0)],
                failed: None,
                not_installed: false,
            },
            Trips {
                which: Impl::SystemdRun,
                steps: vec![(4000.0, 1000.0, 8000.0)],
                failed: None,
                not_installed: false,
            },
            Trips {
                which: Impl::CgroupsRs,
                steps: Vec::new(),
                failed: Some("no bus".into()),
                not_installed: false,
            },
        ];
        let m = Measured::new(2, machine(), (0.25, 0.5), 1.23456, &trips);
        let v = serde_json::to_value(SystemdResult::Measured(m.clone())).unwrap();
        assert_eq!(
            keys(&v),
            [
                "bench",
                "cgroup_version",
                "command",
                "elapsed_s",
                "loadavg_end",
                "machine",
                "results",
                "round_trip_vs_systemd_tools_p50",
                "set_vs_systemctl_set_property_p50",
                "start_vs_systemd_run_p50",
                "status",
                "stop_vs_systemctl_stop_p50",
            ]
        );
        let r = &v["results"][0];
        assert_eq!(
            keys(r),
            [
                "error",
                "impl",
                "round_trip",
                "runs",
                "set",
                "start",
                "stop"
            ]
        );
        assert_eq!(keys(&r["start"]), ["max_ms", "p50_ms", "p99_ms"]);
        assert_eq!(r["impl"], "host-cgroups");
        assert_eq!(r["start"]["p50_ms"], 1.0);
        assert_eq!(r["error"], serde_json::Value::Null);
        assert_eq!(v["results"][2]["error"], "no bus");
        assert_eq!(v["start_vs_systemd_run_p50"], 0.25);
        assert_eq!(v["elapsed_s"], 1.235);
        let md = m.markdown();
        assert!(
            md.contains("| `host-cgroups` | 1.00 | 3.00 | 3.00 | 0.50 | 2.00 | 3.50 |  |"),
            "{md}"
        );
        assert!(
            md.contains("| `cgroups-rs SystemdManager` | 0.00 |"),
            "{md}"
        );
        assert!(md.contains("failed: no bus"), "{md}");
        assert!(
            md.contains("start no slower than `systemd-run --scope`: yes (0.25×)"),
            "{md}"
        );
    }

    #[test]
    fn unreachable_json_has_the_fields_it_always_had() {
        let u =
            SystemdResult::Unreachable(Unreachable::new("systemd is not PID 1 here", machine()));
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(
            keys(&v),
            ["bench", "command", "machine", "reason", "results", "status"]
        );
        assert_eq!(v["results"], serde_json::json!([]));
        assert!(u.markdown().contains("nothing measured"));
    }
}
