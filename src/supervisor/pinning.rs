//! Pinning vCPU threads to CPUs of the sandbox's cpuset, and re-pinning when the
//! vCPU count or the cpuset changes.

use super::*;

impl Worker {
    /// The cpuset vCPUs are pinned within: the containers' union, else the sandbox resources'.
    pub(super) fn pin_cpus(&self) -> CpuList {
        match Self::cpuset_union(&self.state.containers) {
            Ok((c, _)) if !c.is_empty() => c,
            _ => self
                .state
                .sandbox_resources
                .as_ref()
                .and_then(|r| resources::cpuset_of(r).ok())
                .and_then(|(c, _)| c)
                .unwrap_or_default(),
        }
    }

    /// Tells the hooks the cpuset they pin within.
    pub(super) fn publish_pin_cpus(&mut self) {
        let cpus: Vec<u32> = self.pin_cpus().iter().collect();
        self.pin.lock().unwrap_or_else(PoisonError::into_inner).cpus = cpus;
    }

    /// Pins vCPU i to the i-th CPU of the cpuset when their numbers match; resets otherwise.
    pub(super) fn repin(&mut self) {
        if !self.state.enable_vcpus_pinning {
            return;
        }
        self.publish_pin_cpus();
        let cpus = self.pin_cpus();
        let pinned_any = self.records.iter().any(|r| r.pinned_cpu.is_some());
        let mut live: Vec<&mut VcpuRecord> = self
            .records
            .iter_mut()
            .filter(|r| !r.exited && !r.exited_before_placement && r.error.is_none())
            .collect();
        live.sort_by_key(|r| r.index);
        // Count as the hooks do: vCPUs recorded here, those whose hook passed but whose
        // report is still on its way, and announced boot vCPUs not started yet. Counting
        // only the records would reset a vCPU that pinned itself before the report of
        // another boot vCPU arrived.
        let all: std::collections::BTreeSet<u32> = {
            let p = self.pin.lock().unwrap_or_else(PoisonError::into_inner);
            live.iter()
                .map(|r| r.index)
                .chain(p.live.iter().copied())
                .chain(p.boot.iter().copied())
                .collect()
        };
        let cpu_list: Vec<u32> = cpus.iter().collect();
        if !cpu_list.is_empty() && all.len() == cpu_list.len() {
            for r in live {
                let Some(cpu) = all
                    .iter()
                    .position(|&i| i == r.index)
                    .and_then(|rank| cpu_list.get(rank).copied())
                else {
                    continue;
                };
                // Pinned by its own hook already.
                if r.pinned_cpu == Some(cpu) {
                    continue;
                }
                match set_affinity(r.tid, &[cpu]) {
                    Ok(()) => {
                        r.pinned_cpu = Some(cpu);
                        r.pinned_after_us = self
                            .started_at
                            .get(&r.tid)
                            .map(|at| at.elapsed().as_micros() as u64);
                    }
                    Err(e) => warn!(tid = r.tid, cpu, error = %e, "pinning failed"),
                }
            }
            self.pinned = true;
        } else if self.pinned || pinned_any {
            let all: Vec<u32> = if cpus.is_empty() {
                crate::host::online_cpus()
                    .map(|c| c.iter().collect())
                    .unwrap_or_default()
            } else {
                cpus.iter().collect()
            };
            for r in live {
                if let Err(e) = set_affinity(r.tid, &all) {
                    warn!(tid = r.tid, error = %e, "resetting affinity failed");
                }
                r.pinned_cpu = None;
                r.pinned_after_us = None;
            }
            self.pinned = false;
        }
    }
}
