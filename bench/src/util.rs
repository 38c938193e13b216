//! Helpers shared by the benches: unique cgroup names and the guard that
//! removes them, /proc readers, re-running this binary (for `strace` and for a
//! fresh process per measurement), and `strace -c` parsing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use host_cgroups::host::{parse_proc_cgroup, CgroupLayout, CgroupVersion};

use super::BenchError;

/// Random bits from `/dev/urandom` (time and pid when it cannot be read).
pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return std::process::id() ^ t.subsec_nanos();
    }
    u32::from_le_bytes(b)
}

/// The host layout, for a bench that needs cgroup v1 (thread placement).
pub fn v1_layout() -> Result<CgroupLayout, BenchError> {
    let layout = CgroupLayout::detect().map_err(|e| BenchError::Unsupported(e.to_string()))?;
    if layout.version() != CgroupVersion::V1 {
        return Err(BenchError::Unsupported(
            "this bench needs cgroup v1 (legacy or hybrid): per-thread placement exists only there"
                .into(),
        ));
    }
    Ok(layout)
}

/// The host layout, for a bench that places single threads: cgroup v1 (legacy or
/// hybrid: a thread moves through `tasks`) or v2 (unified: a thread moves inside a
/// threaded subtree through `cgroup.threads`). Fails with `Unsupported` when no
/// cgroup hierarchy is mounted, or when it is v1 without a `cpu` hierarchy or v2
/// without the `cpu` controller (the split layouts place vCPUs by CPU controller).
pub fn thread_layout() -> Result<CgroupLayout, BenchError> {
    let layout = CgroupLayout::detect().map_err(|e| BenchError::Unsupported(e.to_string()))?;
    let has_cpu = match layout.version() {
        CgroupVersion::V1 => layout.mounts.contains_key("cpu"),
        CgroupVersion::V2 => layout.v2_controllers.iter().any(|c| c == "cpu"),
    };
    if !has_cpu {
        return Err(BenchError::Unsupported(format!(
            "this bench needs the cpu controller ({}), which this cgroup v{} host does not offer",
            match layout.version() {
                CgroupVersion::V1 => "a v1 cpu hierarchy",
                CgroupVersion::V2 => "in the unified root's cgroup.controllers",
            },
            layout.version()
        )));
    }
    Ok(layout)
}

/// Every cgroup mount point of the layout (v1 hierarchies and the unified one).
pub fn mounts(layout: &CgroupLayout) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = layout.mounts.values().cloned().collect();
    if let Some(u) = &layout.unified {
        v.push(u.clone());
    }
    v.sort();
    v.dedup();
    v
}

/// Owns the name `hcgbench-<random>` in every hierarchy and removes what is
/// below it (and below `kata_overhead/<name>`) on drop, children first, after
/// moving this process's own threads back to where they came from. Foreign
/// tasks are never touched: a cgroup holding one is left in place.
#[derive(Debug)]
pub struct BenchCgroups {
    /// `hcgbench-<random>`.
    pub name: String,
    layout: CgroupLayout,
    /// `kata_overhead` directories that did not exist before this guard.
    overhead_parents: Vec<PathBuf>,
}

impl BenchCgroups {
    /// A fresh name on `layout`.
    pub fn new(layout: &CgroupLayout) -> Self {
        let overhead_parents = mounts(layout)
            .into_iter()
            .map(|m| m.join(host_cgroups::path::OVERHEAD_PARENT))
            .filter(|p| !p.exists())
            .collect();
        BenchCgroups {
            name: format!("hcgbench-{:08x}", random_u32()),
            layout: layout.clone(),
            overhead_parents,
        }
    }

    /// Directories that exist below the guarded names, deepest first.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for m in mounts(&self.layout) {
            for top in [
                m.join(&self.name),
                m.join(host_cgroups::path::OVERHEAD_PARENT).join(&self.name),
            ] {
                if top.is_dir() {
                    walk(&top, &mut out);
                }
            }
        }
        out.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        out
    }

    /// Removes everything below the guarded names now.
    ///
    /// On a cgroup v2 hierarchy (no `tasks` file) a thread cannot leave its threaded
    /// subtree alone, so when any of this process's threads is in a guarded cgroup
    /// (`cgroup.threads`, readable in threaded cgroups too, unlike `cgroup.procs`)
    /// the whole process is moved back to its original cgroup first.
    pub fn clean(&self) {
        let own = own_tids();
        let me = std::process::id().to_string();
        for mount in mounts(&self.layout) {
            if mount.join("tasks").exists() {
                continue;
            }
            let ours_inside = self.leftovers().iter().any(|d| {
                d.starts_with(&mount)
                    && std::fs::read_to_string(d.join("cgroup.threads")).is_ok_and(|t| {
                        t.lines()
                            .filter_map(|l| l.trim().parse::<i32>().ok())
                            .any(|id| own.contains(&id))
                    })
            });
            if ours_inside {
                let home = home_of(&self.layout, &mount);
                let _ = std::fs::write(home.join("cgroup.procs"), &me);
            }
        }
        for d in self.leftovers() {
            let Some(mount) = mounts(&self.layout)
                .into_iter()
                .filter(|m| d.starts_with(m))
                .max_by_key(|m| m.components().count())
            else {
                continue;
            };
            let file = if mount.join("tasks").exists() {
                "tasks"
            } else {
                "cgroup.procs"
            };
            let home = home_of(&self.layout, &mount);
            if let Ok(t) = std::fs::read_to_string(d.join(file)) {
                for id in t.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    if own.contains(&id) {
                        let _ = std::fs::write(home.join(file), id.to_string());
                    }
                }
            }
            let start = Instant::now();
            while std::fs::remove_dir(&d).is_err()
                && d.exists()
                && start.elapsed() < Duration::from_secs(3)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for p in &self.overhead_parents {
            // Only when empty: another sandbox may have started using it meanwhile.
            let _ = std::fs::remove_dir(p);
        }
    }
}

impl Drop for BenchCgroups {
    fn drop(&mut self) {
        self.clean();
    }
}

fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), out);
            }
        }
    }
}

/// This process's original cgroup directory in the hierarchy mounted at `mount`.
pub fn home_of(layout: &CgroupLayout, mount: &Path) -> PathBuf {
    layout
        .mounts
        .iter()
        .find(|(_, m)| m.as_path() == mount)
        .and_then(|(c, _)| layout.own.get(c))
        .or_else(|| {
            (layout.unified.as_deref() == Some(mount))
                .then(|| layout.own.get(""))
                .flatten()
        })
        .map(|p| mount.join(p.trim_start_matches('/')))
        .unwrap_or_else(|| mount.to_path_buf())
}

/// Moves this whole process back to its original cgroup in every v1
/// hierarchy where it is elsewhere now (after `cgroups-rs` moved it to the root).
pub fn restore_home(layout: &CgroupLayout) -> Result<(), BenchError> {
    let now = std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| parse_proc_cgroup(&t))
        .map_err(|e| BenchError::step("read /proc/self/cgroup", e))?;
    let me = std::process::id().to_string();
    for (c, m) in &layout.mounts {
        let Some(own) = layout.own.get(c) else {
            continue;
        };
        if now.get(c) == Some(own) || !m.join("cgroup.procs").exists() {
            continue;
        }
        let file = m.join(own.trim_start_matches('/')).join("cgroup.procs");
        std::fs::write(&file, &me)
            .map_err(|e| BenchError::step(format!("move back to {}", file.display()), e))?;
    }
    Ok(())
}

/// Thread ids of this process.
pub fn own_tids() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// CPU time the calling thread has run, in ns (guest time included).
///
/// From the scheduler clock brought up to date at the call, unlike
/// `/proc/.../schedstat`, which lags a running thread by up to a tick.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0)
}

/// CPU time thread `tid` of this process has run, in ns, up to date at the
/// call (its per-thread CPU clock: `(~tid << 3) | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED`).
pub fn task_cpu_ns_now(tid: i32) -> Option<u64> {
    clock_ns(((!tid) << 3) | 4 | 2)
}

/// The calling thread's cgroup for `controller`, relative to the hierarchy root
/// (`""`: the cgroup v2 hierarchy, the `0::` line).
pub fn thread_cgroup(controller: &str) -> Option<String> {
    let t = std::fs::read_to_string("/proc/thread-self/cgroup").ok()?;
    parse_proc_cgroup(&t).get(controller).cloned()
}

/// Resident memory of this process, in bytes (`/proc/self/statm`).
pub fn rss_bytes() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|p| p * page)
        .unwrap_or(0)
}

/// Bytes the allocator has handed out and not had back (glibc `mallinfo2`: `uordblks`
/// in the arenas plus `hblkhd` in direct mmaps, summed over all arenas): what a leak
/// grows. Unlike RSS it does not jump when the kernel backs a heap range with a 2 MiB
/// transparent huge page, or when the allocator keeps freed pages. `None` off glibc.
pub fn heap_in_use_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics (glibc ≥ 2.33).
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Returns freed heap memory to the kernel, so that RSS deltas mean something.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

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

    #[test]
    fn proc_readers_work_on_this_thread() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(2) {}
        assert!(thread_cpu_ns() > 0);
        assert!(task_cpu_ns_now(vcpu_hooks::gettid()).is_some_and(|n| n > 0));
        assert!(own_tids().contains(&vcpu_hooks::gettid()));
        assert!(rss_bytes() > 0);
    }
}
