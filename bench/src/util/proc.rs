//! Readers of this process's own figures: threads, CPU clocks, cgroup, memory.

use host_cgroups::host::parse_proc_cgroup;

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
/// (`unified`: the cgroup v2 hierarchy, the `0::` line).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
