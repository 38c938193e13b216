//! vCPU pinning follows the containers' cpuset union (its own test binary:
//! the sandbox moves this whole test process into its cgroup).

mod common;

use common::*;
use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::resources::from_json;
use host_cgroups::supervisor::{Supervisor, SupervisorOptions};

fn allowed(tid: i32) -> String {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn vcpus_pin_when_cpuset_size_matches_and_reset_when_not() {
    let online = host_cgroups::host::online_cpus().unwrap();
    if online.len() < 2 {
        eprintln!("skip: pinning needs 2 online CPUs, host has {online}");
        return;
    }
    let cpus: Vec<u32> = online.iter().take(2).collect();
    let layout = layout();
    let prefix = unique("pin");
    let guard = CgroupGuard::new(&prefix);
    let mut config = RuntimeConfig::embedded().unwrap();
    config.enable_vcpus_pinning = true;
    let plan = SandboxPlan::new(&config, "pin1", &format!("{prefix}/sb"), &layout, None).unwrap();
    let ctl = Supervisor::start(
        plan,
        SupervisorOptions {
            enable_vcpus_pinning: true,
            ..Default::default()
        },
    )
    .unwrap();
    let both = format!("{},{}", cpus[0], cpus[1]);
    ctl.update_container(
        "c1",
        Some(from_json(&format!(r#"{{"cpu":{{"cpus":"{both}"}}}}"#)).unwrap()),
    )
    .unwrap();
    let mut vmm = Vmm::new(
        VmmConfig {
            vcpus: 2,
            max_vcpus: 2,
            backend: BackendChoice::Auto,
        },
        ctl.hooks(),
    )
    .unwrap();
    vmm.start().unwrap();
    let v = vmm.vcpus();
    assert_eq!(v.len(), 2);
    // Two vCPUs, two CPUs: vCPU i on the i-th CPU, read back from the kernel.
    wait_until("pinning", || {
        allowed(v[0].tid) == cpus[0].to_string() && allowed(v[1].tid) == cpus[1].to_string()
    });

    // Shrink the cpuset to one CPU: sizes differ, so the pins are reset to the cpuset.
    let one = cpus[0].to_string();
    ctl.update_container(
        "c1",
        Some(from_json(&format!(r#"{{"cpu":{{"cpus":"{one}"}}}}"#)).unwrap()),
    )
    .unwrap();
    wait_until("reset", || {
        allowed(v[0].tid) == one && allowed(v[1].tid) == one
    });
    assert!(ctl.vcpus().iter().all(|r| r.pinned_cpu.is_none()));

    // Grow back to two: pinned again; then the container goes away: the cpuset stays.
    ctl.update_container(
        "c1",
        Some(from_json(&format!(r#"{{"cpu":{{"cpus":"{both}"}}}}"#)).unwrap()),
    )
    .unwrap();
    wait_until("re-pin", || allowed(v[1].tid) == cpus[1].to_string());

    // An invalid update is refused and changes nothing.
    assert!(ctl
        .update_container(
            "c2",
            Some(from_json(r#"{"cpu":{"cpus":"0-4095"}}"#).unwrap())
        )
        .is_err());
    assert_eq!(allowed(v[1].tid), cpus[1].to_string());

    vmm.stop().unwrap();
    let report = ctl.shutdown(true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}
