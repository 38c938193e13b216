//! Plays Kata runtime-rs with dragonball in-process, as an embedder of `host-cgroups`:
//!
//! 1. loads the shipped runtime TOML (`configuration-dragonball.toml`);
//! 2. creates a [`Sandbox`] under a unique cgroups path (what the OCI spec's
//!    `linux.cgroupsPath` would give);
//! 3. spawns N threads named `db_vcpu<N>` that call the hooks exactly where
//!    dragonball's `Vcpu::start_threaded` would (threads only: no KVM needed);
//! 4. prints each thread's cgroups read from `/proc`;
//! 5. updates one container's cpuset, then another's cpuset, quota and memory limit
//!    (printing what the layout does not apply), and checks that a sandbox memory limit
//!    under 6 MiB is refused;
//! 6. tears down, with the VMM's stop as a closure;
//!
//! and exits non-zero if any vCPU thread sat outside the sandbox cgroup, or anything
//! is left on the host. Needs root and a cgroup filesystem.
//!
//! ```sh
//! cargo run -p host-cgroups --example embed -- [VCPUS] [CONFIG.toml]
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;

use host_cgroups::config::RuntimeConfig;
use host_cgroups::host::task_cgroups;
use host_cgroups::resources::from_json;
use host_cgroups::sandbox::{Sandbox, SandboxOptions};
// The hooks crate through host-cgroups' re-export: no second dependency.
use host_cgroups::vcpu_hooks::VcpuHooks;

/// The shipped configuration, as Kata installs it under
/// `/opt/kata/share/defaults/kata-containers/runtime-rs/`.
const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/configuration-dragonball.toml"
);

/// What the embedding found; `Ok` only when everything was placed and removed.
pub fn run(vcpus: u32, config: &Path) -> Result<(), String> {
    let config = RuntimeConfig::load(Some(config)).map_err(|e| e.to_string())?;
    let suffix = format!("{:08x}", std::process::id() ^ nanos());
    let sandbox_id = format!("embed{suffix}");
    let cgroups_path = format!("hcgtest-embed-{suffix}/{sandbox_id}");
    let state_dir = std::env::temp_dir().join(format!("hcg-embed-state-{suffix}"));
    let opts = SandboxOptions::default().state_dir(&state_dir);
    let sandbox =
        Sandbox::new(&config, &sandbox_id, &cgroups_path, opts).map_err(|e| e.to_string())?;
    println!(
        "sandbox {sandbox_id}: {:?}, cgroups path {cgroups_path}",
        sandbox.activation()
    );
    let sandbox_dirs = sandbox.paths();
    let mut failures = Vec::new();

    // dragonball's VcpuManager holds the hooks and clones them into each vCPU thread.
    let hooks = sandbox.hooks_for_boot(vcpus);
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(vcpus as usize + 1));
    let threads: Vec<JoinHandle<Result<(), String>>> = (0..vcpus)
        .map(|cpu_id| spawn_vcpu(cpu_id, hooks.clone(), barrier.clone(), stop.clone()))
        .collect::<Result<_, _>>()?;
    // Upstream releases the barrier once every vCPU thread exists.
    barrier.wait();

    let pid = std::process::id() as i32;
    let expected = sandbox
        .plan()
        .map(|p| p.sandbox.path.clone())
        .unwrap_or_default();
    for rec in sandbox.vcpus() {
        let cgroups = task_cgroups(pid, rec.tid).map_err(|e| e.to_string())?;
        println!("db_vcpu{} tid {}:", rec.index, rec.tid);
        for (controller, path) in &cgroups {
            let name = if controller.is_empty() {
                "(cgroup v2)"
            } else {
                controller
            };
            println!("  {name:<24} {path}");
        }
        // In every hierarchy the sandbox uses, the thread must show the sandbox path.
        let misplaced: Vec<&host_cgroups::HierarchyKey> = sandbox_dirs
            .keys()
            .filter(|c| {
                // v1 names the hierarchy by its controllers; v2 has one hierarchy, which
                // `/proc` lists with an empty controller field and the library names
                // `unified`.
                let found = cgroups.get(c.name()).or_else(|| cgroups.get("unified"));
                found.map(|p| p.trim_start_matches('/')) != Some(expected.as_str())
            })
            .collect();
        if sandbox_dirs.is_empty() || !misplaced.is_empty() {
            failures.push(format!(
                "db_vcpu{} (tid {}) is outside {expected} in {misplaced:?}",
                rec.index, rec.tid
            ));
        }
    }

    // runtime-rs' resource manager: a container with a cpuset joins the sandbox.
    let res = from_json(r#"{"cpu":{"cpus":"0"}}"#).map_err(|e| e.to_string())?;
    let update = sandbox
        .update_container("container-1", &res)
        .map_err(|e| e.to_string())?;
    if !update.is_complete() {
        failures.push(format!("a cpuset alone was not applied: {update:?}"));
    }
    println!("container-1: cpuset 0 applied");
    // A quota and a memory limit: which apply depends on the vCPU layout, and what does
    // not is returned rather than dropped.
    let res = from_json(
        r#"{"cpu":{"cpus":"0","quota":50000,"period":100000},"memory":{"limit":536870912}}"#,
    )
    .map_err(|e| e.to_string())?;
    let update = sandbox
        .update_container("container-2", &res)
        .map_err(|e| e.to_string())?;
    let layout = sandbox.plan().map(|p| p.vcpu_layout.to_string());
    println!(
        "container-2 ({layout:?} layout): not applied {:?}: {}",
        update.not_applied, update.reason
    );
    if !update.not_applied.iter().any(|f| f == "memory.limit") {
        failures.push(format!(
            "memory.limit of a container not reported: {update:?}"
        ));
    }
    // A sandbox memory limit under 6 MiB where the VMM process lives is refused as bad
    // input, before anything is written.
    if sandbox.plan().is_some_and(|p| p.vmm_in_sandbox_cgroup()) {
        let tiny = from_json(r#"{"memory":{"limit":4096}}"#).map_err(|e| e.to_string())?;
        match sandbox.set_sandbox_resources(&tiny) {
            Err(e) if e.is_bad_input() && e.to_string().contains("6291456") => {
                println!("sandbox memory.limit 4096 refused: {e}")
            }
            other => failures.push(format!("memory.limit 4096 not refused: {other:?}")),
        }
    }

    // Teardown: the VMM's stop (threads joined, VM fd closed) runs first, inside.
    let stopped = sandbox.teardown(|| {
        stop.store(true, Ordering::SeqCst);
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("vCPU thread panicked".into()))
            })
            .collect::<Result<Vec<()>, String>>()
    });
    stopped.vmm?;
    failures.extend(stopped.report.errors.iter().cloned());
    println!("removed {:?}", stopped.report.removed);

    for dir in sandbox_dirs.values() {
        let top = top_of(dir, &cgroups_path);
        if top.exists() {
            failures.push(format!("{} is left", top.display()));
        }
    }
    if state_dir.join(format!("{sandbox_id}.json")).exists() {
        failures.push("the state file is left".into());
    }
    let _ = std::fs::remove_dir(&state_dir);
    if failures.is_empty() {
        println!("ok: every vCPU thread was in the sandbox cgroup; nothing is left");
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// What dragonball's `Vcpu::start_threaded` does, minus KVM: a `db_vcpu<N>` thread
/// whose first act is the start hook and whose last is the exit hook.
fn spawn_vcpu(
    cpu_id: u32,
    hooks: Arc<dyn VcpuHooks>,
    barrier: Arc<Barrier>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<Result<(), String>>, String> {
    std::thread::Builder::new()
        .name(format!("db_vcpu{cpu_id}"))
        .spawn(move || {
            // First statement of the thread closure, before the barrier.
            let placed = hooks.vcpu_started(cpu_id);
            barrier.wait();
            placed.map_err(|e| format!("vCPU {cpu_id}: {e}"))?;
            while !stop.load(Ordering::Relaxed) {
                // The guest would run here (KVM_RUN).
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            hooks.vcpu_exited(cpu_id);
            Ok(())
        })
        .map_err(|e| format!("spawning db_vcpu{cpu_id}: {e}"))
}

/// `<mount>/hcgtest-embed-…` for a sandbox directory `<mount>/hcgtest-embed-…/<id>`.
fn top_of(dir: &Path, cgroups_path: &str) -> PathBuf {
    let depth = cgroups_path.split('/').count();
    let mut p = dir.to_path_buf();
    for _ in 1..depth {
        p.pop();
    }
    p
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[allow(dead_code)]
fn main() {
    let mut args = std::env::args().skip(1);
    let vcpus = args.next().and_then(|v| v.parse().ok()).unwrap_or(2);
    let config = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| SHIPPED.into());
    if let Err(e) = run(vcpus, &config) {
        eprintln!("embed: {e}");
        std::process::exit(1);
    }
}
