//! A restarted process restores its sandbox from the persisted state and keeps
//! the containers' cpuset union (its own test binary: the sandbox may move
//! this whole process into its cgroup).

mod common;

use common::*;
use host_cgroups::config::RuntimeConfig;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::resources::from_json;
use host_cgroups::state::SandboxState;
use host_cgroups::supervisor::{Supervisor, SupervisorOptions};

#[test]
fn restore_keeps_the_cpuset_union_and_teardown_removes_everything() {
    let online = host_cgroups::host::online_cpus().unwrap();
    if online.len() < 2 {
        eprintln!("skip: needs 2 online CPUs, host has {online}");
        return;
    }
    let cpus: Vec<u32> = online.iter().take(2).collect();
    let layout = layout();
    let prefix = unique("restore");
    let guard = CgroupGuard::new(&prefix);
    let dir = std::env::temp_dir().join(&prefix);
    let config = RuntimeConfig::embedded().unwrap();
    let plan = SandboxPlan::new(&config, "rs1", &format!("{prefix}/sb"), &layout, None).unwrap();
    let opts = SupervisorOptions {
        state_dir: Some(dir.clone()),
        ..Default::default()
    };
    let ctl = Supervisor::start(plan.clone(), opts.clone()).unwrap();
    let cpuset_file = ctl
        .paths()
        .get("cpuset")
        .or_else(|| ctl.paths().get("unified"))
        .unwrap()
        .join("cpuset.cpus");
    let r = |c: u32| from_json(&format!(r#"{{"cpu":{{"cpus":"{c}"}}}}"#)).unwrap();
    ctl.update_container("c1", Some(r(cpus[0]))).unwrap();
    assert_eq!(read(&cpuset_file), cpus[0].to_string());
    // The process "restarts": the supervisor stops without tearing down.
    let report = ctl.shutdown(false);
    assert!(report.kept);
    assert!(SandboxState::file(&dir, "rs1").exists());

    let ctl = Supervisor::restore(dir.clone(), "rs1", &layout, plan, opts).unwrap();
    ctl.update_container("c2", Some(r(cpus[1]))).unwrap();
    // c1's CPU is still in the union: the state carried it over the restart.
    assert_eq!(read(&cpuset_file), format!("{}-{}", cpus[0], cpus[1]));
    let report = ctl.shutdown(true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
    assert!(!SandboxState::file(&dir, "rs1").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
