//! The machine a figure was taken on, and how busy it was.

use serde::{Deserialize, Serialize};

/// The machine a figure was taken on (the `machine` object of every result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// The first `model name` of `/proc/cpuinfo` (empty when there is none).
    pub cpu_model: String,
    /// The 1-minute load average when the figure was taken.
    pub loadavg: f64,
}

impl Machine {
    /// This machine, now.
    pub fn now() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_default();
        Machine {
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpus: host_cgroups::host::online_cpus()
                .map(|c| c.len())
                .unwrap_or(0),
            cpu_model,
            loadavg: loadavg(),
        }
    }
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// One line saying how loaded the machine was, to print next to every figure.
pub fn load_note(load_start: f64, load_end: f64) -> String {
    let cpus = host_cgroups::host::online_cpus()
        .map(|c| c.len())
        .unwrap_or(0);
    format!(
        "Machine: {cpus} CPUs, 1-min load average {load_start:.2} at start and {load_end:.2} at end. \
         Figures taken while other work shares the CPUs are noisy (higher tails, lower ratios); \
         re-run on a quiet machine for reference figures.\n"
    )
}
