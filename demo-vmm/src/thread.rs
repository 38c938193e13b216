//! No-KVM backend: the "vCPU" run loop spins on the host CPU, for hosts
//! without `/dev/kvm` (e.g. TCG test VMs). Same threads, same hooks, no guest.

use std::sync::atomic::{AtomicBool, Ordering};

use super::RunStats;

/// Spin iterations between two looks at the stop flag: short enough that a
/// stop is seen within microseconds, long enough that the flag's cache line
/// is not hammered.
pub const SPIN_BATCH: u32 = 10_000;

/// Burns host CPU like a busy guest until `stop` is set; each batch counts as one "exit".
pub fn run(stop: &AtomicBool) -> RunStats {
    let mut stats = RunStats::default();
    while !stop.load(Ordering::Acquire) {
        for _ in 0..SPIN_BATCH {
            std::hint::spin_loop();
        }
        stats.io_exits += 1;
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn spins_until_stopped() {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = Arc::clone(&stop);
        let t = std::thread::spawn(move || run(&s2));
        std::thread::sleep(Duration::from_millis(20));
        stop.store(true, Ordering::Release);
        let stats = t.join().unwrap();
        assert!(stats.io_exits > 0);
    }

    #[test]
    fn returns_at_once_when_already_stopped() {
        let stop = AtomicBool::new(true);
        assert_eq!(run(&stop).io_exits, 0);
    }
}
