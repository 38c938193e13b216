//! Counters a node operator wants, in dragonball's own metric types.
//!
//! With the `metrics` feature the counters are `dbs-utils`' [`SharedIncMetric`] and
//! [`SharedStoreMetric`], the types every dragonball-sandbox component shares, so a
//! VMM can serialize [`METRICS`] into dragonball's metrics output next to its own.
//! As there, serializing a `SharedIncMetric` reports the increase since the last
//! serialization (and starts a new interval); `count()` is the running total.
//!
//! Without the feature (the default build: `dbs-utils` brings `event-manager`,
//! `timerfd`, `rustix` and an older `vmm-sys-util` into the embedder's tree, see
//! docs/design.md) the same names are small atomic counters of this crate with the
//! same methods and the same serialized meaning.

use std::sync::LazyLock;

use serde::Serialize;

#[cfg(feature = "metrics")]
pub use dbs_utils::metric::{IncMetric, SharedIncMetric, SharedStoreMetric, StoreMetric};

#[cfg(not(feature = "metrics"))]
pub use self::own::{IncMetric, SharedIncMetric, SharedStoreMetric, StoreMetric};

/// All counters of this component, process-wide (one runtime process may run
/// several sandboxes over its life).
#[derive(Default, Serialize)]
#[non_exhaustive]
pub struct HostCgroupsMetrics {
    /// Sandboxes set up (active ones only).
    pub sandboxes_created: SharedIncMetric,
    /// vCPU threads confirmed in their cgroup.
    pub vcpus_placed: SharedIncMetric,
    /// vCPU starts refused because placement failed.
    pub placement_failures: SharedIncMetric,
    /// vCPU placement latency, from the hook's report to the confirmation.
    pub placement_latency: LatencyBuckets,
    /// Cgroup directories (or systemd units) created.
    pub cgroups_created: SharedIncMetric,
    /// Cgroup directories (or systemd units) removed.
    pub cgroups_removed: SharedIncMetric,
    /// systemd jobs that did not end `done`, and D-Bus calls systemd refused.
    pub systemd_job_failures: SharedIncMetric,
}

/// Placement latency histogram: each bucket counts the placements at most its bound.
#[derive(Default, Serialize)]
#[non_exhaustive]
pub struct LatencyBuckets {
    /// ≤ 50 µs.
    pub le_50us: SharedIncMetric,
    /// ≤ 1 ms.
    pub le_1ms: SharedIncMetric,
    /// ≤ 10 ms.
    pub le_10ms: SharedIncMetric,
    /// ≤ 100 ms.
    pub le_100ms: SharedIncMetric,
    /// Longer.
    pub over_100ms: SharedIncMetric,
}

impl LatencyBuckets {
    /// Counts one placement that took `us` microseconds.
    pub fn record(&self, us: u64) {
        let b = match us {
            0..=50 => &self.le_50us,
            51..=1_000 => &self.le_1ms,
            1_001..=10_000 => &self.le_10ms,
            10_001..=100_000 => &self.le_100ms,
            _ => &self.over_100ms,
        };
        b.inc();
    }
}

/// The process-wide counters.
pub static METRICS: LazyLock<HostCgroupsMetrics> = LazyLock::new(HostCgroupsMetrics::default);

#[cfg(not(feature = "metrics"))]
mod own {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use serde::{Serialize, Serializer};

    /// A counter that only grows.
    pub trait IncMetric {
        /// Adds `value`.
        fn add(&self, value: usize);
        /// Adds one.
        fn inc(&self) {
            self.add(1);
        }
        /// The running total.
        fn count(&self) -> usize;
    }

    /// A value that is set rather than counted.
    pub trait StoreMetric {
        /// The value.
        fn fetch(&self) -> usize;
        /// Sets the value.
        fn store(&self, value: usize);
    }

    /// A counter shared between threads; serializes as the increase since the last
    /// serialization.
    #[derive(Default, Debug)]
    pub struct SharedIncMetric {
        total: AtomicUsize,
        reported: AtomicUsize,
    }

    impl IncMetric for SharedIncMetric {
        fn add(&self, value: usize) {
            self.total.fetch_add(value, Ordering::Relaxed);
        }
        fn count(&self) -> usize {
            self.total.load(Ordering::Relaxed)
        }
    }

    impl Serialize for SharedIncMetric {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let now = self.total.load(Ordering::Relaxed);
            let before = self.reported.swap(now, Ordering::Relaxed);
            s.serialize_u64(now.wrapping_sub(before) as u64)
        }
    }

    /// A value shared between threads.
    #[derive(Default, Debug)]
    pub struct SharedStoreMetric(AtomicUsize);

    impl StoreMetric for SharedStoreMetric {
        fn fetch(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
        fn store(&self, value: usize) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    impl Serialize for SharedStoreMetric {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(self.0.load(Ordering::Relaxed) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_interval_serialization() {
        let m = HostCgroupsMetrics::default();
        m.placement_latency.record(10);
        m.placement_latency.record(900);
        m.placement_latency.record(2_000_000);
        m.vcpus_placed.add(3);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["vcpus_placed"], 3);
        assert_eq!(v["placement_latency"]["le_50us"], 1);
        assert_eq!(v["placement_latency"]["le_1ms"], 1);
        assert_eq!(v["placement_latency"]["over_100ms"], 1);
        // A second report covers the new interval only; the total keeps growing.
        m.vcpus_placed.inc();
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["vcpus_placed"], 1);
        assert_eq!(m.vcpus_placed.count(), 4);
    }
}
