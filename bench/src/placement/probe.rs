//! One run of one approach: the hooks under test wrapped in a probe that records what
//! each vCPU saw, the VMM booted through them, and the latencies worked out.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vcpu_hooks::{gettid, HookError, PlacementError, VcpuEvent, VcpuHooks};

use super::mode::{mode_config, Mode};
use crate::util::{self, BenchCgroups};
use crate::BenchError;
use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::host::{CgroupLayout, CgroupVersion};
use host_cgroups::manager::fs::migration_writes;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::resources::from_json;
use host_cgroups::supervisor::{get_affinity, set_affinity, Supervisor, SupervisorOptions};

/// What one vCPU thread saw around its start hook.
#[derive(Debug, Clone)]
struct ProbeRec {
    index: u32,
    tid: i32,
    entry: Instant,
    exit: Instant,
    /// CPU time the thread spent in its hook, in ns: the hook's own work, without the
    /// time it waited for a CPU (preempted by spinning vCPUs on a small host).
    held_cpu_ns: u64,
    /// CPU time of the thread when its hook returned.
    cpu_ns_at_exit: u64,
    /// In its planned cgroup (sandbox cgroup, or the nested `vcpus` child) when its hook returned.
    placed_at_exit: bool,
    /// Single-CPU affinity when its hook returned.
    pinned_at_exit: bool,
    /// The fields above were read (verifying runs only: the reads cost CPU).
    verified: bool,
}

/// Wraps the hooks under test and records what each vCPU saw.
struct Probe {
    inner: Arc<dyn VcpuHooks>,
    /// Where the plan puts vCPUs (`/`-prefixed, as in `/proc/thread-self/cgroup`):
    /// the nested layout's `vcpus` child, else the sandbox cgroup.
    vcpu_cgroup: String,
    /// The `/proc/thread-self/cgroup` key to compare: `cpu` (v1) or `unified` (v2).
    cgroup_key: &'static str,
    verify: bool,
    recs: Mutex<Vec<ProbeRec>>,
}

impl VcpuHooks for Probe {
    fn vcpu_started(&self, index: u32) -> Result<(), HookError> {
        let cpu_entry = util::thread_cpu_ns();
        let entry = Instant::now();
        let r = self.inner.vcpu_started(index);
        let exit = Instant::now();
        let held_cpu_ns = util::thread_cpu_ns().saturating_sub(cpu_entry);
        let mut rec = ProbeRec {
            index,
            tid: gettid(),
            entry,
            exit,
            held_cpu_ns,
            cpu_ns_at_exit: 0,
            placed_at_exit: false,
            pinned_at_exit: false,
            verified: false,
        };
        if self.verify {
            rec.cpu_ns_at_exit = util::thread_cpu_ns();
            rec.placed_at_exit =
                util::thread_cgroup(self.cgroup_key).as_deref() == Some(self.vcpu_cgroup.as_str());
            rec.pinned_at_exit = get_affinity(0).is_ok_and(|a| a.len() == 1);
            rec.verified = true;
        }
        self.recs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(rec);
        r
    }

    fn vcpu_exited(&self, index: u32) {
        self.inner.vcpu_exited(index);
    }
}

/// The measurements of one run of one approach.
#[derive(Debug, Default)]
pub struct RunOut {
    /// Per vCPU: hook entry to return, µs.
    pub held_us: Vec<f64>,
    /// Per vCPU: CPU time spent in the hook, µs.
    pub held_cpu_us: Vec<f64>,
    /// First vCPU's hook entry to the last vCPU's hook entry: the VMM's own spawning, µs.
    pub spawn_span_us: f64,
    /// Per vCPU: hook entry to placed, µs.
    pub placed_us: Vec<f64>,
    /// Per vCPU: hook entry to pinned, µs (where pinning applies).
    pub pinned_us: Vec<f64>,
    /// Per verified vCPU placed at hook exit: 0 (guest time run unplaced), µs.
    pub unplaced_guest_us: Vec<f64>,
    /// Per verified vCPU: guest time run unpinned, µs.
    pub unpinned_guest_us: Vec<f64>,
    /// Verified vCPUs whose hook returned before they were placed.
    pub released_unplaced: usize,
    /// Verified vCPUs whose hook returned before they were pinned.
    pub released_unpinned: usize,
    /// First vCPU's hook entry to the last vCPU placed, µs.
    pub span_us: f64,
    /// Cgroup migration writes per vCPU.
    pub writes_per_vcpu: f64,
    /// Lookups of the vCPU tids retried (upstream).
    pub retries: u32,
    /// The vCPU backend the VMM used.
    pub backend: String,
}

/// Serves the channel hooks with cgroups-rs: adds each tid to the vCPU cgroup
/// (`relative`: the sandbox cgroup on v1, the threaded `vcpus` child on v2).
fn cgroups_rs_server(
    rx: vcpu_hooks::HookReceiver,
    relative: String,
    controllers: Vec<String>,
) -> std::thread::JoinHandle<Vec<(u32, Instant)>> {
    std::thread::spawn(move || {
        let cg = cgroups_rs::fs::Cgroup::load_with_specified_controllers(
            cgroups_rs::fs::hierarchies::auto(),
            &relative,
            controllers,
        );
        let mut placed = Vec::new();
        for msg in rx {
            match msg.event {
                VcpuEvent::Started { index, tid, .. } => {
                    let r = cg
                        .add_task(cgroups_rs::CgroupPid::from(tid as u64))
                        .map_err(|e| PlacementError::Supervisor {
                            what: format!("cgroups-rs add_task {tid}: {e}"),
                        });
                    placed.push((index, Instant::now()));
                    msg.confirm(r);
                }
                _ => msg.confirm(Ok(())),
            }
        }
        placed
    })
}

/// One run of `mode` with `n` vCPUs: a controller, a VMM booted through the probe
/// hooks, and what each vCPU saw (`verify`: also check where it was at hook exit).
#[allow(clippy::too_many_arguments)]
pub fn one_run(
    layout: &CgroupLayout,
    guard: &BenchCgroups,
    tag: &str,
    n: u32,
    backend: BackendChoice,
    mode: Mode,
    verify: bool,
    pin_cpus: Option<&str>,
) -> Result<RunOut, BenchError> {
    let pin = pin_cpus.is_some() && mode.pins();
    let plan = SandboxPlan::new(
        &mode_config(mode, pin)?,
        tag,
        &format!("{}/{tag}", guard.name),
        layout,
        None,
    )
    .map_err(|e| BenchError::step("plan", e))?;
    // Where this mode's vCPUs belong: the nested layout's child when the plan has
    // one (v2 split), else the sandbox cgroup.
    let relative = plan
        .vcpus_child
        .as_ref()
        .map_or_else(|| plan.sandbox.path.clone(), |c| c.path.clone());
    let vcpu_cgroup = format!("/{relative}");
    let ctl = Supervisor::start(
        plan,
        SupervisorOptions {
            enable_vcpus_pinning: pin && mode != Mode::Upstream,
            ..Default::default()
        },
    )
    .map_err(|e| BenchError::step("controller start", e))?;
    let result = (|| -> Result<RunOut, BenchError> {
        if let (Some(cpus), true) = (pin_cpus, mode.pins()) {
            let r = from_json(&format!(r#"{{"cpu":{{"cpus":"{cpus}"}}}}"#))
                .map_err(|e| BenchError::step("cpuset", e))?;
            ctl.update_container("bench", Some(r))
                .map_err(|e| BenchError::step("cpuset", e))?;
        }
        let mut server = None;
        let inner: Arc<dyn VcpuHooks> = match mode {
            Mode::Born | Mode::SelfPlace | Mode::SelfNested => ctl.hooks_for_boot(n),
            Mode::CtlWrites => ctl.hooks_supervisor_writes(),
            Mode::Upstream => Arc::new(vcpu_hooks::NoHooks),
            Mode::CgroupsRs => {
                let (h, rx) = vcpu_hooks::channel(vcpu_hooks::DEFAULT_PLACEMENT_TIMEOUT);
                server = Some(cgroups_rs_server(
                    rx,
                    relative.clone(),
                    layout.controllers(),
                ));
                Arc::new(h)
            }
        };
        let probe = Arc::new(Probe {
            inner,
            vcpu_cgroup: vcpu_cgroup.clone(),
            cgroup_key: match layout.version() {
                CgroupVersion::V1 => "cpu",
                CgroupVersion::V2 => "unified",
            },
            verify,
            recs: Mutex::new(Vec::new()),
        });
        let cfg = VmmConfig {
            vcpus: n,
            max_vcpus: n,
            backend,
        };
        let writes_before = migration_writes();
        let hooks: Arc<dyn VcpuHooks> = probe.clone();
        let mut vmm = Vmm::new(cfg, hooks).map_err(|e| BenchError::step("VMM new", e))?;
        vmm.start()
            .map_err(|e| BenchError::step(format!("VMM start ({n} vCPUs)"), e))?;
        let mut out = RunOut {
            backend: vmm.backend().to_string(),
            ..Default::default()
        };
        let mut vmm = Some(vmm);
        out.writes_per_vcpu = (migration_writes() - writes_before) as f64 / n as f64;
        // Pinned from outside after start (upstream; and the supervisor's late pins).
        let mut pinned_late: Vec<(i32, Instant, u64)> = Vec::new();
        if mode == Mode::Upstream && pin {
            let cpus: Vec<u32> =
                host_cgroups::resources::CpuList::parse("cpus", pin_cpus.unwrap_or(""))
                    .map_err(|e| BenchError::step("cpuset", e))?
                    .iter()
                    .collect();
            let mut delay = Duration::from_millis(50);
            let found = loop {
                let f = demo_vmm::scan_vcpu_tids();
                if f.len() >= n as usize || out.retries >= 10 {
                    break f;
                }
                std::thread::sleep(delay);
                delay *= 2;
                out.retries += 1;
            };
            for (index, tid) in found {
                let Some(&cpu) = cpus.get(index as usize) else {
                    continue;
                };
                let cpu_ns = util::task_cpu_ns_now(tid).unwrap_or(0);
                set_affinity(tid, &[cpu]).map_err(|e| BenchError::step("upstream pin", e))?;
                pinned_late.push((tid, Instant::now(), cpu_ns));
            }
        }
        let probes = probe
            .recs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let recs = ctl.vcpus();
        let cgroups_rs_placed = match server.take() {
            Some(s) => {
                drop(probe);
                // The server ends once every hook clone (held by the VMM) is gone.
                if let Some(v) = vmm.take() {
                    v.stop().map_err(|e| BenchError::step("VMM stop", e))?;
                }
                s.join()
                    .map_err(|_| BenchError::step("cgroups-rs server", "panicked"))?
            }
            None => Vec::new(),
        };
        let first = probes.iter().map(|p| p.entry).min();
        let mut last_placed: Option<Instant> = None;
        for p in &probes {
            out.held_us
                .push(p.exit.duration_since(p.entry).as_secs_f64() * 1e6);
            out.held_cpu_us.push(p.held_cpu_ns as f64 / 1e3);
            let placed = match mode {
                Mode::Upstream => Some(p.entry),
                Mode::CgroupsRs => cgroups_rs_placed
                    .iter()
                    .find(|(i, _)| *i == p.index)
                    .map(|(_, t)| *t),
                _ => recs
                    .iter()
                    .find(|r| r.tid == p.tid)
                    .and_then(|r| r.placed_after_us)
                    .map(|us| p.entry + Duration::from_micros(us)),
            };
            let Some(placed) = placed else {
                return Err(BenchError::step(
                    format!("vCPU {} (tid {})", p.index, p.tid),
                    "not placed",
                ));
            };
            out.placed_us
                .push(placed.saturating_duration_since(p.entry).as_secs_f64() * 1e6);
            last_placed = Some(last_placed.map_or(placed, |l| l.max(placed)));
            if p.verified {
                if p.placed_at_exit {
                    out.unplaced_guest_us.push(0.0);
                } else {
                    out.released_unplaced += 1;
                }
            }
            if !pin {
                continue;
            }
            // Time to pinned.
            let pinned_at = match mode {
                Mode::Upstream => pinned_late
                    .iter()
                    .find(|(t, _, _)| *t == p.tid)
                    .map(|(_, at, _)| *at),
                _ => recs
                    .iter()
                    .find(|r| r.tid == p.tid)
                    .and_then(|r| r.pinned_after_us)
                    .map(|us| p.entry + Duration::from_micros(us)),
            };
            if let Some(at) = pinned_at {
                out.pinned_us
                    .push(at.saturating_duration_since(p.entry).as_secs_f64() * 1e6);
            }
            if p.verified {
                if p.pinned_at_exit {
                    out.unpinned_guest_us.push(0.0);
                } else {
                    out.released_unpinned += 1;
                    // Ran unpinned from its hook's return until pinned from outside.
                    let cpu_then = match mode {
                        Mode::Upstream => pinned_late
                            .iter()
                            .find(|(t, _, _)| *t == p.tid)
                            .map(|(_, _, c)| *c),
                        _ => util::task_cpu_ns_now(p.tid),
                    };
                    if let Some(c) = cpu_then {
                        out.unpinned_guest_us
                            .push(c.saturating_sub(p.cpu_ns_at_exit) as f64 / 1e3);
                    }
                }
            }
        }
        if let (Some(f), Some(l)) = (first, last_placed) {
            out.span_us = l.saturating_duration_since(f).as_secs_f64() * 1e6;
        }
        if let (Some(f), Some(l)) = (first, probes.iter().map(|p| p.entry).max()) {
            out.spawn_span_us = l.saturating_duration_since(f).as_secs_f64() * 1e6;
        }
        if let Some(v) = vmm.take() {
            v.stop().map_err(|e| BenchError::step("VMM stop", e))?;
        }
        if mode == Mode::CgroupsRs {
            // cgroups-rs writes from outside: count its writes per tid (v1: one `tasks`
            // write per subsystem; v2: one `cgroup.threads` write, to its first subsystem).
            out.writes_per_vcpu = match layout.version() {
                CgroupVersion::V1 => cgroups_rs::fs::Cgroup::load_with_specified_controllers(
                    cgroups_rs::fs::hierarchies::auto(),
                    &relative,
                    layout.controllers(),
                )
                .subsystems()
                .len() as f64,
                CgroupVersion::V2 => 1.0,
            };
        }
        Ok(out)
    })();
    let teardown = ctl.shutdown(true);
    let out = result?;
    if !teardown.errors.is_empty() {
        return Err(BenchError::step("teardown", teardown.errors.join("; ")));
    }
    Ok(out)
}
