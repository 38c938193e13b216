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
