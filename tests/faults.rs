//! The sandbox cgroup removed from outside while the sandbox runs: the
//! controller reports it, nothing crashes, and teardown still succeeds.
//! (Its own test binary: the sandbox may hold this whole process.)

mod common;

use std::path::Path;

use common::*;
use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::host::CgroupVersion;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::supervisor::{Supervisor, SupervisorOptions};

/// Moves every thread of this process out of `dir` to `home` (where it came from), as an outsider would.
fn evict_own_threads(dir: &Path, home: &Path, v2: bool) {
    let file = if v2 { "cgroup.procs" } else { "tasks" };
    let ids = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    for id in ids.lines() {
        let _ = std::fs::write(home.join(file), id);
    }
}

#[test]
fn sandbox_cgroup_removed_from_outside_is_reported_and_teardown_succeeds() {
    let layout = layout();
    let prefix = unique("removed");
    let guard = CgroupGuard::new(&prefix);
    let mut config = RuntimeConfig::embedded().unwrap();
    config.sandbox_cgroup_only = true;
    let plan = SandboxPlan::new(&config, "rm1", &format!("{prefix}/sb"), &layout, None).unwrap();
    let ctl = Supervisor::start(plan, SupervisorOptions::default()).unwrap();
    let mut vmm = Vmm::new(
        VmmConfig {
            vcpus: 1,
            max_vcpus: 2,
            backend: BackendChoice::Auto,
        },
        ctl.hooks(),
    )
    .unwrap();
    vmm.start().unwrap();
    assert!(ctl.stats().is_ok());

    // An outsider empties the sandbox cgroup and removes it, in every hierarchy.
    let v2 = layout.version() == CgroupVersion::V2;
    for (c, dir) in ctl.paths() {
        let mount = layout
            .mounts
            .get(c.name())
            .cloned()
            .or(layout.unified.clone())
            .unwrap();
        let own = layout
            .own
            .get(c.name())
            .or(layout.own.get("unified"))
            .cloned()
            .unwrap_or_default();
        evict_own_threads(dir, &mount.join(own.trim_start_matches('/')), v2);
    }
    for dir in ctl.paths().values() {
        let start = std::time::Instant::now();
        while dir.exists() && std::fs::remove_dir(dir).is_err() {
            assert!(
                start.elapsed().as_secs() < 10,
                "cannot remove {}",
                dir.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    // The supervisor reports it: usage cannot be read, and on v1 a new vCPU
    // cannot be placed, so it never starts (no guest code outside the sandbox).
    let err = ctl.stats().unwrap_err().to_string();
    assert!(err.contains(&prefix), "{err}");
    if !v2 {
        let err = vmm.hotplug(1).unwrap_err().to_string();
        assert!(err.contains("vCPU 1"), "{err}");
    }
    vmm.stop().unwrap();
    let report = ctl.shutdown(true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}
