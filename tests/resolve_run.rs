//! `resolve` is the dry run of `run`: for a table of inputs both accept or both refuse
//! (exit 2), and what `run` leaves in the cgroup files is what `resolve` planned.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

fn hc(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run host-cgroups")
}

/// What the kernel shows for a value written as `want` (it renders "no limit" its own way).
fn same(want: &str, got: &str) -> bool {
    let (want, got) = (want.trim(), got.trim());
    if want == got {
        return true;
    }
    let unlimited =
        |s: &str| s == "max" || s == "-1" || s.parse::<u64>().is_ok_and(|n| n >= 1 << 62);
    if unlimited(want) && unlimited(got) {
        return true;
    }
    // cpu.max "max 100000" is written as "max 100000"; lists may be re-rendered ("0,1" → "0-1").
    let list = |s: &str| host_cgroups::cpulist::CpuList::parse("cpus", s).ok();
    list(want).is_some() && list(want) == list(got)
}

#[test]
fn resolve_and_run_agree_on_acceptance_and_writes() {
    let cases = [
        r#"{"cpu":{"shares":512}}"#,
        r#"{"cpu":{"quota":50000,"period":100000}}"#,
        r#"{"cpu":{"quota":-500,"period":100000}}"#,
        r#"{"cpu":{"cpus":",0,"}}"#,
        r#"{"cpu":{"cpus":"0-4095"}}"#,
        r#"{"cpu":{"quota":20971520000000,"period":100000}}"#,
        r#"{"pids":{"limit":-3}}"#,
        r#"{"memory":{"limit":268435456}}"#,
        r#"{"memory":{"limit":-1}}"#,
        r#"{"memory":{"limit":-5}}"#,
    ];
    let prefix = unique("resrun");
    let _guard = CgroupGuard::new(&prefix);
    let state: PathBuf = std::env::temp_dir().join(&prefix);
    let state_s = state.to_string_lossy().into_owned();
    let mut accepted = 0;
    for (i, res) in cases.iter().enumerate() {
        let id = format!("{prefix}-{i}");
        let path = format!("{prefix}/{id}");
        let base = [
            "--sandbox-id",
            &id,
            "--cgroups-path",
            &path,
            "--resources",
            res,
            "--state-dir",
            &state_s,
        ];
        let resolve = hc(&[&["resolve", "--json"][..], &base[..]].concat());
        let run = hc(&[
            &["run", "--json", "--keep", "--duration", "0", "--vcpus", "1"][..],
            &["--backend", "thread"][..],
            &base[..],
        ]
        .concat());
        assert_eq!(
            resolve.status.code(),
            run.status.code(),
            "{res}: resolve and run disagree: resolve {}; run {}",
            String::from_utf8_lossy(&resolve.stderr),
            String::from_utf8_lossy(&run.stderr)
        );
        if !run.status.success() {
            assert_eq!(
                run.status.code(),
                Some(2),
                "{res}: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            continue;
        }
        accepted += 1;
        let plan: Value = serde_json::from_slice(&resolve.stdout).expect("resolve JSON");
        let paths = &plan["sandbox"]["paths"];
        for w in plan["writes"].as_array().expect("writes") {
            let (c, f, v) = (
                w["controller"].as_str().unwrap(),
                w["file"].as_str().unwrap(),
                w["value"].as_str().unwrap(),
            );
            let dir = paths[c]
                .as_str()
                .or_else(|| {
                    paths
                        .as_object()
                        .and_then(|m| m.values().next())
                        .and_then(|d| d.as_str())
                })
                .unwrap_or_else(|| panic!("{res}: no directory for {c} in {paths}"));
            let got = std::fs::read_to_string(PathBuf::from(dir).join(f))
                .unwrap_or_else(|e| panic!("{res}: read {dir}/{f}: {e}"));
            assert!(
                same(v, &got),
                "{res}: {dir}/{f} is {got:?}, resolve planned {v:?}"
            );
        }
        let c = hc(&["cleanup", "--sandbox-id", &id, "--state-dir", &state_s]);
        assert!(
            c.status.success(),
            "{res}: cleanup: {}",
            String::from_utf8_lossy(&c.stderr)
        );
    }
    assert!(
        accepted >= 5,
        "too few inputs were accepted to compare writes"
    );
    let _ = std::fs::remove_dir_all(&state);
}

/// The directories `resolve` plans (what `Sandbox::plan()` holds) are the directories
/// the driver uses in a run, for the sandbox, the overhead cgroup and the nested
/// layout's `vcpus` child, and each exists while the run holds it. One directory map
/// computes them all (docs/design.md, "Directory map"); before it, `resolve` patched
/// its plan with the driver's paths and `Sandbox::plan()` differed (v2: no controller
/// keys; v1 + systemd: a `devices` directory the driver never makes).
fn plan_paths_are_run_paths(path: &str, id: &str, toml: &str) {
    let state = std::env::temp_dir().join(unique("planrun"));
    std::fs::create_dir_all(&state).unwrap();
    let cfg = state.join("c.toml");
    std::fs::write(&cfg, toml).unwrap();
    let (state_s, cfg_s) = (
        state.to_string_lossy().into_owned(),
        cfg.to_string_lossy().into_owned(),
    );
    let base = [
        "--sandbox-id",
        id,
        "--cgroups-path",
        path,
        "--state-dir",
        &state_s,
        "--config",
        &cfg_s,
    ];
    let resolve = hc(&[&["resolve", "--json"][..], &base[..]].concat());
    assert!(
        resolve.status.success(),
        "{}",
        String::from_utf8_lossy(&resolve.stderr)
    );
    let plan: Value = serde_json::from_slice(&resolve.stdout).unwrap();
    let run = hc(&[
        &["run", "--json", "--duration", "0", "--vcpus", "2"][..],
        &["--backend", "thread"][..],
        &base[..],
    ]
    .concat());
    let _ = std::fs::remove_dir_all(&state);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let run: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(plan["sandbox"]["paths"], run["sandbox"]["paths"], "{toml}");
    assert_eq!(
        plan["overhead"]["paths"], run["overhead"]["paths"],
        "{toml}"
    );
    assert_eq!(plan["vcpus_child"]["paths"], run["vcpus_cgroup"], "{toml}");
    assert!(
        plan["sandbox"]["paths"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "{plan}"
    );
    // And what resolve says of the host is the same map.
    assert_eq!(plan["sandbox"]["paths"], plan["host"]["paths"], "{toml}");
    // The library's plan itself (what `Sandbox::plan()` returns), not only the command's.
    let config = host_cgroups::config::RuntimeConfig::parse(toml, &cfg).unwrap();
    let lib = host_cgroups::plan::SandboxPlan::new(&config, id, path, &layout(), None).unwrap();
    assert_eq!(json(&lib.sandbox.paths), run["sandbox"]["paths"], "{toml}");
    assert_eq!(
        json(&lib.overhead.as_ref().map(|o| o.paths.clone())),
        run["overhead"]["paths"],
        "{toml}"
    );
    assert_eq!(
        json(&lib.vcpus_child.as_ref().map(|c| c.paths.clone())),
        run["vcpus_cgroup"],
        "{toml}"
    );
}

/// A serializable value as JSON, for comparing the library's maps with the command's.
fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

const LAYOUTS: [&str; 3] = [
    "[runtime]\nsandbox_cgroup_only = true\n",
    "[runtime]\nsandbox_cgroup_only = false\nvcpu_cgroup_layout = \"nested\"\n",
    "[runtime]\nsandbox_cgroup_only = false\n",
];

#[test]
fn planned_directories_are_the_run_directories_cgroupfs() {
    let prefix = unique("planrun");
    let _guard = CgroupGuard::new(&prefix);
    for (i, toml) in LAYOUTS.iter().enumerate() {
        let id = format!("{prefix}-{i}");
        let cfg = format!("[hypervisor.dragonball]\ndefault_maxvcpus = 2\n{toml}");
        plan_paths_are_run_paths(&format!("{prefix}/{id}"), &id, &cfg);
    }
}

#[test]
fn planned_directories_are_the_run_directories_systemd() {
    if !common::systemd::needs_systemd("planned_directories_are_the_run_directories_systemd") {
        return;
    }
    let g = common::systemd::SliceGuard::new();
    for (i, toml) in LAYOUTS.iter().enumerate() {
        let id = unique(&format!("planrun{i}"));
        let cfg = format!("[hypervisor.dragonball]\ndefault_maxvcpus = 2\n{toml}");
        plan_paths_are_run_paths(&g.path(&id), &id, &cfg);
    }
}
