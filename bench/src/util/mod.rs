//! Helpers shared by the benches: unique cgroup names and the guard that removes them
//! ([`cgroups`]), readers of this process's figures ([`proc`]), and re-running this
//! program, for `strace` and for a fresh process per measurement ([`exec`]).

pub mod cgroups;
pub mod exec;
pub mod proc;

pub use cgroups::{home_of, mounts, restore_home, thread_layout, v1_layout, BenchCgroups};
pub use exec::{per_iteration, run_self, strace_count, strace_path};
pub use proc::{
    heap_in_use_bytes, own_tids, rss_bytes, task_cpu_ns_now, thread_cgroup, thread_cpu_ns,
    trim_heap,
};

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
