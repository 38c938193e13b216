//! One sandbox count of `bench scale`, measured in this process (the child the bench
//! runs per count): controllers alone, then full sandboxes with their VMMs.

use std::time::Instant;

use serde_json::json;

use super::result::{ChildOutput, Quantiles, SampledQuantiles, ScaleCount};
use crate::stats::{round3, Summary};
use crate::util::{self, BenchCgroups};
use crate::BenchError;
use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::host::CgroupLayout;
use host_cgroups::manager::fs::write_file;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::resources;
use host_cgroups::sandbox::{Sandbox, SandboxOptions};

const VCPUS: u32 = 2;

fn plan(layout: &CgroupLayout, guard: &BenchCgroups, tag: &str) -> Result<SandboxPlan, BenchError> {
    let mut cfg = RuntimeConfig::embedded().map_err(|e| BenchError::step("config", e))?;
    cfg.sandbox_cgroup_only = false;
    let mut p = SandboxPlan::new(&cfg, tag, &format!("{}/{tag}", guard.name), layout, None)
        .map_err(|e| BenchError::step("plan", e))?;
    // Only the vCPU threads move: many sandboxes share this one process.
    p.overhead = None;
    p.sandbox_cgroup_only = false;
    // No nested vCPU child (the default split on v2 and systemd hosts): it would move
    // this whole process into each sandbox's threaded domain in turn.
    p.vcpus_child = None;
    Ok(p)
}

fn options(state_dir: &std::path::Path) -> Result<SandboxOptions, BenchError> {
    let cpu = host_cgroups::host::online_cpus()
        .map_err(|e| BenchError::step("online CPUs", e))?
        .iter()
        .next()
        .unwrap_or(0);
    let res = resources::from_json(
        &json!({"cpu": {"cpus": cpu.to_string(), "mems": "0", "quota": 50000, "period": 100000}})
            .to_string(),
    )
    .map_err(|e| BenchError::step("resources", e))?;
    Ok(SandboxOptions::default()
        .state_dir(state_dir)
        .sandbox_resources(Some(res)))
}

/// The benchmark's runtime configuration: every sandbox in this one process.
fn config() -> Result<RuntimeConfig, BenchError> {
    RuntimeConfig::embedded().map_err(|e| BenchError::step("config", e))
}

/// A library sandbox with its VMM.
struct BenchSandbox {
    sandbox: Sandbox,
    vmm: Option<Vmm>,
}

impl BenchSandbox {
    fn freezer(&self) -> Option<std::path::PathBuf> {
        self.sandbox
            .paths()
            .get("freezer")
            .map(|d| d.join("freezer.state"))
    }

    fn freeze(&self, frozen: bool) -> Result<(), BenchError> {
        if let Some(f) = self.freezer() {
            write_file(&f, if frozen { "FROZEN" } else { "THAWED" })
                .map_err(|e| BenchError::step("freezer", e))?;
        }
        Ok(())
    }

    fn destroy(self) -> Result<(), BenchError> {
        let vmm = self.vmm;
        let done = self.sandbox.teardown(|| vmm.map(Vmm::stop));
        let (stopped, report) = (done.vmm, done.report);
        if let Some(Err(e)) = stopped {
            return Err(BenchError::step("VMM stop", e));
        }
        if !report.errors.is_empty() {
            return Err(BenchError::step("teardown", report.errors.join("; ")));
        }
        Ok(())
    }
}

fn create(
    layout: &CgroupLayout,
    guard: &BenchCgroups,
    tag: &str,
    backend: BackendChoice,
    opts: &SandboxOptions,
) -> Result<(BenchSandbox, Vec<f64>), BenchError> {
    let sandbox = Sandbox::start(&config()?, plan(layout, guard, tag)?, opts.clone())
        .map_err(|e| BenchError::step(format!("sandbox {tag}"), e))?;
    let cfg = VmmConfig {
        vcpus: VCPUS,
        max_vcpus: VCPUS,
        backend,
    };
    let vmm = Vmm::new(cfg, sandbox.hooks()).and_then(|mut v| v.start().map(|()| v));
    let mut sb = BenchSandbox { sandbox, vmm: None };
    match vmm {
        Ok(v) => sb.vmm = Some(v),
        Err(e) => {
            let _ = sb.destroy();
            return Err(BenchError::step(format!("VMM {tag}"), e));
        }
    }
    let placed = sb
        .sandbox
        .vcpus()
        .iter()
        .filter_map(|r| r.placed_after_us)
        .map(|u| u as f64)
        .collect();
    Ok((sb, placed))
}

/// One count, in this process (`--internal-n`): `n` sandboxes alive at once, `probes`
/// probe sandboxes created meanwhile.
pub fn measure(n: u32, probes: u32, backend: BackendChoice) -> Result<ChildOutput, BenchError> {
    let layout = util::v1_layout()?;
    let guard = BenchCgroups::new(&layout);
    let state_dir = std::env::temp_dir().join(format!("hcg-bench-scale-{}", std::process::id()));
    let opts = options(&state_dir)?;
    let cfg = config()?;

    // 1. Controllers only.
    util::trim_heap();
    let rss0 = util::rss_bytes();
    let mut ctls = Vec::new();
    for i in 0..n {
        let c = Sandbox::start(&cfg, plan(&layout, &guard, &format!("c{i}"))?, opts.clone())
            .map_err(|e| BenchError::step("sandbox", e))?;
        ctls.push(c);
    }
    util::trim_heap();
    let rss_ctl = util::rss_bytes();
    for c in ctls {
        let r = c.teardown(|| ()).report;
        if !r.errors.is_empty() {
            return Err(BenchError::step("teardown", r.errors.join("; ")));
        }
    }

    // 2. Full sandboxes.
    util::trim_heap();
    let rss1 = util::rss_bytes();
    let mut alive: Vec<BenchSandbox> = Vec::with_capacity(n as usize);
    let mut create_ms = Vec::new();
    let mut placed_create = Vec::new();
    let mut backend_used = String::new();
    let result = (|| -> Result<ChildOutput, BenchError> {
        let t_create = Instant::now();
        let mut timed = 0.0;
        for i in 0..n {
            let t = Instant::now();
            let (sb, placed) = create(&layout, &guard, &format!("s{i}"), backend, &opts)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            timed += ms;
            create_ms.push(ms);
            placed_create.extend(placed);
            if let Some(v) = &sb.vmm {
                backend_used = v.backend().to_string();
            }
            sb.freeze(true)?;
            alive.push(sb);
        }
        let create_wall_ms = t_create.elapsed().as_secs_f64() * 1e3;
        util::trim_heap();
        let rss2 = util::rss_bytes();
        let mut probe_placed = Vec::new();
        for p in 0..probes {
            let (sb, placed) = create(&layout, &guard, &format!("p{p}"), backend, &opts)?;
            probe_placed.extend(placed);
            sb.destroy()?;
        }
        // Thaw each sandbox just before its destroy (untimed): thawed all at
        // once, 2×N spinning vCPUs would starve the thread doing the destroys.
        let mut destroy_ms = 0.0;
        for sb in alive.drain(..) {
            sb.freeze(false)?;
            let t = Instant::now();
            sb.destroy()?;
            destroy_ms += t.elapsed().as_secs_f64() * 1e3;
        }
        // Every sandbox's state file went with its teardown; the directory is ours.
        let _ = std::fs::remove_dir(&state_dir);
        let c = Summary::of(&create_ms);
        let per_n = |bytes: u64| round3(bytes as f64 / 1024.0 / n as f64);
        Ok(ChildOutput {
            count: ScaleCount {
                sandboxes: n,
                vcpus_per_sandbox: VCPUS,
                backend: backend_used.clone(),
                create_total_ms: round3(timed),
                create_wall_ms: round3(create_wall_ms),
                create_per_sandbox_ms: Quantiles::of(&c),
                destroy_total_ms: round3(destroy_ms),
                rss_per_controller_kib: per_n(rss_ctl.saturating_sub(rss0)),
                rss_per_sandbox_kib: per_n(rss2.saturating_sub(rss1)),
                placement_during_create_us: SampledQuantiles::of(&Summary::of(&placed_create)),
                placement_with_n_alive_us: SampledQuantiles::of(&Summary::of(&probe_placed)),
            },
            probe_values_us: probe_placed,
        })
    })();
    // On error: thaw and tear down what is still alive (the guard removes the rest).
    for sb in alive {
        let _ = sb.freeze(false);
        let _ = sb.destroy();
    }
    let v = result?;
    drop(guard);
    Ok(v)
}
