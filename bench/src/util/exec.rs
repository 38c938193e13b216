//! Re-running this program (a fresh process per measurement, or under `strace`) and
//! parsing `strace -c`.
//!
//! The program re-run is `/proc/self/exe` with the same command line a person would
//! type (`bench lifecycle --only ...`, `bench scale --internal-n ...`, `run ...`): the
//! program that runs the harness must offer those commands, as `host-cgroups` does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use super::random_u32;
use crate::BenchError;

/// This program, to run a part of a bench in a fresh process.
pub fn self_exe() -> Result<PathBuf, BenchError> {
    std::fs::read_link("/proc/self/exe").map_err(|e| BenchError::step("find /proc/self/exe", e))
}

/// Runs this program with `args` and returns its stdout; fails on a non-zero exit.
pub fn run_self(args: &[String]) -> Result<String, BenchError> {
    let exe = self_exe()?;
    let out = Command::new(&exe)
        .args(args)
        .output()
        .map_err(|e| BenchError::step(format!("run {}", exe.display()), e))?;
    if !out.status.success() {
        return Err(BenchError::step(
            format!("{} {}", exe.display(), args.join(" ")),
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where strace lives, if it is installed.
pub fn strace_path() -> Option<PathBuf> {
    ["/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs this program with `args` under `strace -f -c` and returns calls per syscall.
pub fn strace_count(args: &[String]) -> Result<BTreeMap<String, u64>, BenchError> {
    let strace =
        strace_path().ok_or_else(|| BenchError::Unsupported("strace is not installed".into()))?;
    let exe = self_exe()?;
    let out_file = std::env::temp_dir().join(format!("hcgbench-strace-{:08x}", random_u32()));
    let status = Command::new(&strace)
        .arg("-f")
        .arg("-c")
        .arg("-o")
        .arg(&out_file)
        .arg(&exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| BenchError::step("run strace", e))?;
    let text = std::fs::read_to_string(&out_file);
    let _ = std::fs::remove_file(&out_file);
    if !status.success() {
        return Err(BenchError::step(
            format!("strace {}", args.join(" ")),
            status,
        ));
    }
    let text = text.map_err(|e| BenchError::step("read strace output", e))?;
    Ok(parse_strace_c(&text))
}

/// Parses `strace -c` output into calls per syscall (and `total`).
pub fn parse_strace_c(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if t.len() < 5 || t[0].parse::<f64>().is_err() {
            continue;
        }
        let Some(name) = t.last() else { continue };
        if let Ok(calls) = t[3].parse::<u64>() {
            out.insert(name.to_string(), calls);
        }
    }
    out
}

/// Per-iteration syscall counts: (run with `n` iterations − run with 0) / n.
pub fn per_iteration(
    with_n: &BTreeMap<String, u64>,
    with_0: &BTreeMap<String, u64>,
    n: u64,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in with_n {
        let base = with_0.get(k).copied().unwrap_or(0);
        let d = v.saturating_sub(base) as f64 / n.max(1) as f64;
        if d > 0.0 {
            out.insert(k.clone(), d);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary_parses() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
                    ------ ----------- ----------- --------- --------- ----------------\n\
                    \x2050.00    0.000100           1       100        10 openat\n\
                    \x2050.00    0.000100           2        50           mkdir\n\
                    ------ ----------- ----------- --------- --------- ----------------\n\
                    100.00    0.000200           1       150        10 total\n";
        let m = parse_strace_c(text);
        assert_eq!(m["openat"], 100);
        assert_eq!(m["mkdir"], 50);
        assert_eq!(m["total"], 150);
        let base: BTreeMap<String, u64> = [("openat".to_string(), 40), ("total".to_string(), 40)]
            .into_iter()
            .collect();
        let per = per_iteration(&m, &base, 10);
        assert_eq!(per["openat"], 6.0);
        assert_eq!(per["mkdir"], 5.0);
        assert_eq!(per["total"], 11.0);
    }
}
