//! `host-cgroups bench placement` on this host kind (cgroup v1 here; v1, v2 and their
//! systemd variants in the test hosts): it runs, says which cgroup version and split
//! layout it measured, and every vCPU of every approach was in its planned cgroup
//! (the sandbox cgroup, or on v2 the nested `vcpus` child) when its hook returned.
//! Behaviour only: no figure is checked.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use host_cgroups::host::CgroupVersion;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

const MODES: [&str; 6] = [
    "born",
    "self_place",
    "self_place_nested",
    "controller_writes",
    "upstream",
    "cgroups_rs",
];

/// `hcgbench-*` directories directly below each mount point.
fn bench_dirs(mounts: &[PathBuf]) -> BTreeSet<PathBuf> {
    mounts
        .iter()
        .filter_map(|m| std::fs::read_dir(m).ok())
        .flat_map(|rd| rd.flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hcgbench-"))
        })
        .collect()
}

#[test]
fn placement_bench_places_every_vcpu_where_the_plan_says() {
    let layout = common::layout();
    let mounts = common::mounts(&layout);
    let before = bench_dirs(&mounts);
    let out_dir = std::env::temp_dir().join(common::unique("benchplace"));
    let out = Command::new(BIN)
        .args(["bench", "placement", "--vcpus", "1,2", "--runs", "1"])
        .args([
            "--idle-samples",
            "1",
            "--backend",
            "thread",
            "--json",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .expect("run bench placement");
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        out.status.success(),
        "bench placement failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench JSON");
    let (version, split) = match layout.version() {
        CgroupVersion::V1 => (1, "sibling"),
        CgroupVersion::V2 => (2, "nested"),
    };
    assert_eq!(v["cgroup_version"], version, "{v}");
    assert_eq!(v["driver"], "cgroupfs", "{v}");
    assert_eq!(v["split_layout"], split, "{v}");
    assert_eq!(v["backend"], "thread", "{v}");
    let rows = v["results"].as_array().expect("results");
    assert_eq!(rows.len(), 2, "{v}");
    for (row, n) in rows.iter().zip([1u64, 2]) {
        assert_eq!(row["vcpus"], n, "{row}");
        for m in MODES {
            // v2's split is the nested one: no separate nested row there.
            if m == "self_place_nested" && version == 2 {
                assert!(row[m].is_null(), "{row}");
                continue;
            }
            let r = &row[m];
            assert_eq!(r["runs"], 1, "{m}: {row}");
            assert_eq!(r["samples"], n, "{m}: every vCPU placed: {row}");
            // The first run checks /proc/thread-self/cgroup at hook exit against the plan.
            assert_eq!(
                r["released_unplaced"], 0,
                "{m}: a vCPU left its hook outside its planned cgroup: {row}"
            );
            assert_eq!(r["unplaced_guest_samples"], n, "{m}: {row}");
        }
        assert_eq!(row["born"]["cgroup_writes_per_vcpu"], 0.0, "{row}");
        if version == 1 {
            // The nested split moves a vCPU in cpu, cpuacct and cpuset only.
            let w = |m: &str| row[m]["cgroup_writes_per_vcpu"].as_f64().unwrap();
            assert!(w("self_place_nested") < w("self_place"), "{row}");
            assert!(w("self_place_nested") <= 3.0, "{row}");
        }
    }
    let idle = &v["idle_first_write"];
    let file = match layout.version() {
        CgroupVersion::V1 => "tasks",
        CgroupVersion::V2 => "cgroup.threads",
    };
    assert_eq!(idle["file"], file, "{idle}");
    if idle["skipped"].is_null() {
        assert_eq!(idle["by_tid"]["samples"], 1, "{idle}");
        assert_eq!(idle["by_zero"]["samples"], 1, "{idle}");
    } else {
        // Only a v2 host may refuse the threaded subtree, and the reason is given.
        assert_eq!(version, 2, "{idle}");
        assert!(idle["skipped"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // In a test host nothing else makes bench cgroups: none may be left behind.
    if std::env::var_os("HOSTCG_TESTHOST").is_some() {
        let left: Vec<_> = bench_dirs(&mounts).difference(&before).cloned().collect();
        assert!(left.is_empty(), "bench cgroups left behind: {left:?}");
    }
}
