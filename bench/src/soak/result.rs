//! The typed result of `bench soak` (`soak.json`) and the report made from it.

use serde::Serialize;

use crate::machine::{self, Machine};
use crate::report::{num, Table};
use crate::stats::Summary;

/// `bench soak`: sandbox lifecycles in a row, and what each window of them left behind.
#[derive(Debug, Clone, Serialize)]
pub struct SoakResult {
    /// `soak`.
    pub bench: &'static str,
    /// The command with the options that shape the run.
    pub command: String,
    /// The machine, at the end.
    pub machine: Machine,
    /// Lifecycles run.
    pub cycles: u32,
    /// Lifecycles between two measurements.
    pub window: u32,
    /// The drivers the lifecycles used: `cgroupfs`, `systemd`, or both (alternating).
    pub drivers: Vec<&'static str>,
    /// The vCPU backend asked for (`--backend`).
    pub backend: String,
    /// Wall time of the whole bench, in seconds.
    pub elapsed_s: f64,
    /// The 1-minute load average at the start.
    pub load_start: f64,
    /// The 1-minute load average at the end.
    pub load_end: f64,
    /// One measurement after each window.
    pub windows: Vec<WindowFigures>,
    /// Last window's figures minus the first's.
    pub growth_first_to_last_window: Growth,
}

/// What was left, and this process's size, after a window of lifecycles.
#[derive(Debug, Clone, Serialize)]
pub struct WindowFigures {
    /// The lifecycle the window ended with (1-based).
    pub cycle: u32,
    /// Cgroup directories left below the soak's names.
    pub dirs_left: usize,
    /// systemd scopes left (`null` where systemd is not used).
    pub units_left: Option<usize>,
    /// This process's open file descriptors.
    pub fds: usize,
    /// This process's threads, once exiting ones have gone.
    pub threads: usize,
    /// This process's resident memory, KiB.
    pub rss_kib: u64,
    /// Heap in use (glibc `mallinfo2`), KiB; `null` off glibc.
    pub heap_kib: Option<u64>,
    /// Duration of the window's cgroupfs lifecycles, ms.
    pub cgroupfs_cycle_ms: CycleMs,
    /// Duration of the window's systemd lifecycles, ms.
    pub systemd_cycle_ms: CycleMs,
}

/// Median and max of a window's lifecycle durations, ms (not rounded).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CycleMs {
    /// Median, ms (0 without lifecycles).
    pub p50: f64,
    /// Longest, ms (0 without lifecycles).
    pub max: f64,
    /// Lifecycles.
    pub n: usize,
}

impl CycleMs {
    /// The figures of a summary of ms samples.
    pub fn of(s: &Summary) -> CycleMs {
        CycleMs {
            p50: s.p50,
            max: s.max,
            n: s.n,
        }
    }

    /// `p50 / max` for a table, `-` without lifecycles.
    fn cell(&self) -> String {
        if self.n == 0 {
            "-".into()
        } else {
            format!("{} / {}", num(self.p50), num(self.max))
        }
    }
}

/// Growth from the first window to the last (negative: shrank).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Growth {
    /// Open file descriptors.
    pub fds: i64,
    /// Threads.
    pub threads: i64,
    /// Resident memory, KiB.
    pub rss_kib: i64,
    /// Heap in use, KiB (0 off glibc).
    pub heap_kib: i64,
}

impl Growth {
    /// The growth over `windows` (0 with fewer than one window).
    pub fn of(windows: &[WindowFigures]) -> Growth {
        let (Some(a), Some(b)) = (windows.first(), windows.last()) else {
            return Growth::default();
        };
        let d = |f: fn(&WindowFigures) -> i64| f(b) - f(a);
        Growth {
            fds: d(|w| w.fds as i64),
            threads: d(|w| w.threads as i64),
            rss_kib: d(|w| w.rss_kib as i64),
            heap_kib: d(|w| w.heap_kib.unwrap_or(0) as i64),
        }
    }
}

impl SoakResult {
    /// Whether some lifecycles used the systemd driver.
    pub fn uses_systemd(&self) -> bool {
        self.drivers.contains(&"systemd")
    }

    /// The Markdown report: one row per window.
    pub fn markdown(&self) -> String {
        let mut t = Table::new(&[
            "after cycle",
            "dirs left",
            "units left",
            "fds",
            "threads",
            "RSS KiB",
            "heap in use KiB",
            "cgroupfs cycle p50/max ms",
            "systemd cycle p50/max ms",
        ]);
        for w in &self.windows {
            t.row(vec![
                w.cycle.to_string(),
                w.dirs_left.to_string(),
                w.units_left.map_or("-".into(), |u| u.to_string()),
                w.fds.to_string(),
                w.threads.to_string(),
                w.rss_kib.to_string(),
                w.heap_kib.map_or("-".into(), |h| h.to_string()),
                w.cgroupfs_cycle_ms.cell(),
                w.systemd_cycle_ms.cell(),
            ]);
        }
        format!(
            "## Soak: {} sandbox lifecycles ({})\n\nCommand: `{}` ({:.0} s)\n\n{}\n\n{}",
            self.cycles,
            if self.uses_systemd() {
                "cgroupfs and systemd, alternating"
            } else {
                "cgroupfs"
            },
            self.command,
            self.elapsed_s,
            machine::load_note(self.load_start, self.load_end),
            t.markdown()
        )
    }
}
