//! Issue 13's inputs: each gives the right value (or exit 2 naming the field) in
//! `resolve` for both cgroup versions and both drivers, and the cgroupfs driver
//! applies exactly what the plan prints, read back from this host's kernel.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use host_cgroups::config::RuntimeConfig;
use host_cgroups::host::CgroupVersion;
use host_cgroups::manager;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::resources;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

/// `resolve --json` for one input: (exit code, the plan or the error text).
fn resolve(version: u8, path: &str, res: &str) -> (i32, Value, String) {
    let out = Command::new(BIN)
        .args(["resolve", "--sandbox-id", "sb13", "--cgroups-path", path])
        .args([
            "--cgroup-version",
            &version.to_string(),
            "--json",
            "--resources",
            res,
        ])
        .output()
        .expect("run resolve");
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (code, v, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn writes(plan: &Value) -> Vec<(String, String)> {
    plan["writes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            (
                w["file"].as_str().unwrap_or("").to_string(),
                w["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn prop(plan: &Value, name: &str) -> Option<Value> {
    plan["properties"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p["value"].clone())
}

fn has_write(plan: &Value, file: &str, value: &str) -> bool {
    writes(plan).iter().any(|(f, v)| f == file && v == value)
}

const FS: &str = "/hcg13/a";
const SD: &str = "kata.slice:p:sb13";

#[test]
fn quota_past_the_kernel_ceiling_is_exit_2_on_both_drivers() {
    let r = r#"{"cpu":{"quota":20971520000000,"period":100000}}"#;
    for v in [1, 2] {
        for p in [FS, SD] {
            let (code, _, err) = resolve(v, p, r);
            assert_eq!(code, 2, "v{v} {p}: {err}");
            assert!(
                err.contains("cpu.quota") && err.contains("17592186044415"),
                "{err}"
            );
        }
    }
    // The largest quota the kernel takes is planned as given.
    let (code, plan, err) = resolve(
        1,
        FS,
        r#"{"cpu":{"quota":17592186044415,"period":1000000}}"#,
    );
    assert_eq!(code, 0, "{err}");
    assert!(has_write(&plan, "cpu.cfs_quota_us", "17592186044415"));
    let (_, plan, _) = resolve(2, SD, r#"{"cpu":{"quota":200000000,"period":100000}}"#);
    assert_eq!(
        prop(&plan, "CPUQuotaPerSecUSec"),
        Some(Value::from(2_000_000_000u64))
    );
}

#[test]
fn unlimited_memory_with_swap() {
    let r = r#"{"memory":{"limit":-1,"swap":300}}"#;
    let (code, plan, err) = resolve(2, FS, r);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        writes(&plan),
        [
            ("memory.max".into(), "max".into()),
            ("memory.swap.max".into(), "300".into())
        ]
    );
    let (code, plan, err) = resolve(2, SD, r);
    assert_eq!(code, 0, "{err}");
    assert_eq!(prop(&plan, "MemorySwapMax"), Some(Value::from(300)));
    assert_eq!(prop(&plan, "MemoryMax"), Some(Value::from(u64::MAX)));
    // v1 cannot have memory above memory+swap.
    for p in [FS, SD] {
        let (code, _, err) = resolve(1, p, r);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("memory.swap"), "{err}");
    }
}

#[test]
fn unlimited_memory_on_v1_lifts_memsw_too() {
    let r = r#"{"memory":{"limit":-1}}"#;
    let (_, plan, _) = resolve(1, FS, r);
    let w = writes(&plan);
    assert!(
        w.contains(&("memory.limit_in_bytes".into(), "-1".into())),
        "{w:?}"
    );
    // memsw only where the host has swap accounting (resolve says so otherwise).
    let here_v1 = layout().version() == CgroupVersion::V1;
    let memsw_here = layout()
        .mounts
        .get("memory")
        .is_some_and(|m| m.join("memory.memsw.limit_in_bytes").exists());
    if !here_v1 || memsw_here {
        assert!(
            w.contains(&("memory.memsw.limit_in_bytes".into(), "-1".into())),
            "{w:?}"
        );
        let (_, plan, _) = resolve(1, SD, r);
        assert!(has_write(&plan, "memory.memsw.limit_in_bytes", "-1"));
        assert_eq!(prop(&plan, "MemoryLimit"), Some(Value::from(u64::MAX)));
    }
}

#[test]
fn pids_zero_is_one_and_absent_changes_nothing() {
    for v in [1, 2] {
        let (_, plan, _) = resolve(v, FS, r#"{"pids":{"limit":0}}"#);
        assert_eq!(writes(&plan), [("pids.max".into(), "1".into())]);
        let (_, plan, _) = resolve(v, SD, r#"{"pids":{"limit":0}}"#);
        assert_eq!(prop(&plan, "TasksMax"), Some(Value::from(1)));
        let (_, plan, _) = resolve(v, FS, r#"{"pids":{}}"#);
        assert!(writes(&plan).is_empty());
        let (_, plan, _) = resolve(v, SD, r#"{"pids":{}}"#);
        assert_eq!(prop(&plan, "TasksMax"), None);
    }
}

#[test]
fn negative_quota_is_no_limit() {
    let r = r#"{"cpu":{"quota":-500,"period":100000}}"#;
    let (_, plan, _) = resolve(1, FS, r);
    assert!(has_write(&plan, "cpu.cfs_quota_us", "-1"));
    let (_, plan, _) = resolve(2, FS, r);
    assert!(has_write(&plan, "cpu.max", "max 100000"));
    let (_, plan, _) = resolve(2, SD, r);
    assert_eq!(
        prop(&plan, "CPUQuotaPerSecUSec"),
        Some(Value::from(u64::MAX))
    );
}

#[test]
fn cpu_lists_as_the_kernel_parses_them() {
    let (code, plan, err) = resolve(2, SD, r#"{"cpu":{"cpus":",0,1,"}}"#);
    assert_eq!(code, 0, "{err}");
    assert_eq!(prop(&plan, "AllowedCPUs"), Some(serde_json::json!([3])));
    let (_, plan, _) = resolve(1, FS, r#"{"cpu":{"cpus":" 0 , 1 "}}"#);
    assert!(has_write(&plan, "cpuset.cpus", "0-1"));
    for bad in ["0-", "1 - 2", "3-1", "1:1/2"] {
        let (code, _, err) = resolve(1, FS, &format!(r#"{{"cpu":{{"cpus":"{bad}"}}}}"#));
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
}

#[test]
fn nothing_silently_dropped() {
    let rt = r#"{"cpu":{"realtimeRuntime":950000,"realtimePeriod":1000000}}"#;
    let (code, plan, err) = resolve(1, FS, rt);
    if code == 0 {
        assert_eq!(
            writes(&plan),
            [
                ("cpu.rt_period_us".into(), "1000000".into()),
                ("cpu.rt_runtime_us".into(), "950000".into())
            ]
        );
    } else {
        assert!(err.contains("cpu.realtimeRuntime"), "{err}");
    }
    for p in [FS, SD] {
        let (code, _, err) = resolve(2, p, rt);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("cpu.realtimeRuntime"), "{err}");
        let (code, _, err) = resolve(1, p, r#"{"unified":{"memory.high":"104857600"}}"#);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("memory.high"), "{err}");
        let (code, _, err) = resolve(2, p, r#"{"network":{"classID":1}}"#);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("network.classID"), "{err}");
    }
    let (code, plan, err) = resolve(2, FS, r#"{"unified":{"memory.high":"104857600"}}"#);
    if code == 0 {
        assert!(has_write(&plan, "memory.high", "104857600"));
    } else {
        assert!(err.contains("memory.high"), "{err}");
    }
    let (code, _, err) = resolve(
        2,
        SD,
        r#"{"hugepageLimits":[{"pageSize":"2MB","limit":2097152}]}"#,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("hugepageLimits"), "{err}");
    let bio = r#"{"blockIO":{"weight":500,"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}]}}"#;
    let (code, plan, err) = resolve(2, SD, bio);
    assert_eq!(code, 0, "{err}");
    assert_eq!(prop(&plan, "IOWeight"), Some(Value::from(4950)));
    assert_eq!(
        prop(&plan, "IOReadBandwidthMax"),
        Some(serde_json::json!([["/dev/block/8:0", 1048576]]))
    );
    // On a v1 host without BFQ the weight is refused, naming the field.
    let (code, plan, err) = resolve(1, SD, bio);
    if code == 0 {
        assert_eq!(prop(&plan, "BlockIOWeight"), Some(Value::from(500)));
    } else {
        assert_eq!(code, 2);
        assert!(err.contains("blockIO.weight"), "{err}");
    }
    // devices: not applied, and said so.
    for v in [1, 2] {
        for p in [FS, SD] {
            let (code, plan, err) =
                resolve(v, p, r#"{"devices":[{"allow":false,"access":"rwm"}]}"#);
            assert_eq!(code, 0, "{err}");
            let notes = plan["notes"].to_string();
            assert!(notes.contains("devices is not applied"), "{notes}");
        }
    }
    // A typo is a warning naming the key.
    let (code, plan, _) = resolve(1, FS, r#"{"cpu":{"peroid":100000}}"#);
    assert_eq!(code, 0);
    assert!(plan["notes"].to_string().contains("resources.cpu.peroid"));
}

#[test]
fn overhead_named_after_the_sandbox_and_root_slice_refused() {
    let dir = std::env::temp_dir().join(unique("cfg13"));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[hypervisor.dragonball]\n[runtime]\nsandbox_cgroup_only = false\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "resolve",
            "--sandbox-id",
            "abc",
            "--cgroup-version",
            "1",
            "--json",
        ])
        .args(["--cgroups-path", "/kubepods/burstable/pod1/abc", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["overhead"]["path"], "kata_overhead/abc");
    let out = Command::new(BIN)
        .args([
            "resolve",
            "--sandbox-id",
            "abc",
            "--cgroups-path",
            "kata.slice:p:-.slice",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("root"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn kata_vcpu_rules_and_config_warnings() {
    let dir = std::env::temp_dir().join(unique("cfg13v"));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let host = host_cgroups::host::online_cpus().unwrap().len() as u64;
    for (body, boot, max) in [
        ("default_vcpus = -1\ndefault_maxvcpus = 0", host, host),
        ("default_vcpus = 0\ndefault_maxvcpus = 0", 1, host),
        ("default_vcpus = 1\ndefault_maxvcpus = 1", 1, 1),
        ("default_vcpus = 240\ndefault_maxvcpus = 240", host, host),
    ] {
        let cfg = write("v.toml", &format!("[hypervisor.dragonball]\n{body}\n"));
        let out = Command::new(BIN)
            .args([
                "resolve",
                "--sandbox-id",
                "abc",
                "--json",
                "--cgroup-version",
                "1",
                "--config",
            ])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{body}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["vcpus"]["boot"], boot, "{body}");
        assert_eq!(plan["vcpus"]["max"], max, "{body}");
    }
    let cfg = write(
        "t.toml",
        "[hypervisor.dragonball]\n[runtime]\nsandbox_cgroups_only = false\n",
    );
    let out = Command::new(BIN)
        .args(["resolve", "--sandbox-id", "abc", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("did you mean sandbox_cgroup_only"), "{text}");
    let cfg = write("s.toml", "[runtime]\nsandbox_cgroup_only = tru\n");
    let out = Command::new(BIN)
        .args(["resolve", "--sandbox-id", "abc", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("line 2") && err.contains("sandbox_cgroup_only = tru"),
        "{err}"
    );
    let out = Command::new(BIN)
        .args(["run", "--bundle", "/nonexistent-hcg13", "--duration", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file or directory"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A read-back value equal in meaning to what was written.
fn same(file: &str, written: &str, read: &str) -> bool {
    let read = read.trim();
    if written == read {
        return true;
    }
    if file == "memory.oom_control" {
        return read
            .lines()
            .any(|l| l.trim() == format!("oom_kill_disable {written}"));
    }
    // Unlimited memory reads back as the page-rounded maximum.
    if written == "-1" && file.starts_with("memory.") {
        return read.parse::<u64>().is_ok_and(|v| v >= 1 << 62);
    }
    // Multi-entry files list every entry; ours must be among them.
    read.lines().any(|l| l.trim() == written)
}

/// Applies `json` through the cgroupfs driver on this host, then checks that every
/// file the plan printed reads back as planned.
fn apply_and_read_back(prefix: &str, json: &str) {
    let layout = layout();
    let res = resources::from_json(json).unwrap();
    let cfg = RuntimeConfig::embedded().unwrap();
    let path = format!("{prefix}/sb");
    let plan = SandboxPlan::new(&cfg, "sb13", &path, &layout, Some(&res)).unwrap();
    let mut m = manager::build(&plan.sandbox.parsed, &layout, Vec::new()).unwrap();
    let res = plan
        .resources
        .clone()
        .expect("the plan's checked resources");
    m.check(&res).unwrap();
    m.create().unwrap();
    let r = m.set(&res);
    let paths = m.paths();
    let mut checked = Vec::new();
    if r.is_ok() {
        for w in &plan.writes {
            let dir: PathBuf = match layout.version() {
                CgroupVersion::V1 => paths[w.controller.name()].clone(),
                CgroupVersion::V2 => paths["unified"].clone(),
            };
            let got = std::fs::read_to_string(dir.join(&w.file)).unwrap();
            assert!(
                same(&w.file, &w.value, &got),
                "{json}: {} wrote {:?}, reads {got:?}",
                w.file,
                w.value
            );
            checked.push(w.file.clone());
        }
    }
    m.destroy().unwrap();
    r.unwrap();
    eprintln!("{json}: read back {checked:?}");
}

#[test]
fn run_applies_what_resolve_prints_on_this_host() {
    let prefix = unique("res13");
    let _guard = CgroupGuard::new(&prefix);
    let l = layout();
    let v1 = l.version() == CgroupVersion::V1;
    let mut cases: Vec<&str> = vec![
        r#"{"pids":{"limit":0}}"#,
        r#"{"cpu":{"quota":-500,"period":100000}}"#,
        r#"{"cpu":{"cpus":",0,"}}"#,
        r#"{"cpu":{"quota":17592186044415,"period":1000000}}"#,
        r#"{"memory":{"limit":-1}}"#,
    ];
    if v1 {
        cases.push(r#"{"memory":{"limit":104857600,"swap":209715200}}"#);
        cases.push(r#"{"memory":{"swappiness":10,"disableOOMKiller":true}}"#);
    } else {
        cases.push(r#"{"unified":{"memory.high":"104857600"}}"#);
        if l.unified.as_ref().is_some_and(|u| {
            u.join("memory.swap.current").exists() || std::fs::read_to_string("/proc/swaps").is_ok()
        }) {
            cases.push(r#"{"memory":{"limit":-1,"swap":3145728}}"#);
        }
    }
    for c in cases {
        apply_and_read_back(&prefix, c);
    }
}

#[test]
fn v1_memory_limits_raise_and_lower_in_the_kernels_order() {
    let l = layout();
    let Some(mem) = l.mounts.get("memory") else {
        return;
    };
    if l.version() != CgroupVersion::V1 || !mem.join("memory.memsw.limit_in_bytes").exists() {
        eprintln!("skip: no cgroup v1 memory+swap here");
        return;
    }
    let prefix = unique("mem13");
    let _guard = CgroupGuard::new(&prefix);
    let path = format!("{prefix}/sb");
    let parsed = host_cgroups::path::CgroupsPath::parse(&path, "sb13").unwrap();
    let mut m = manager::build(&parsed, &l, Vec::new()).unwrap();
    m.create().unwrap();
    let dir = m.paths()["memory"].clone();
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let steps = [
        (
            r#"{"memory":{"limit":104857600,"swap":209715200}}"#,
            "104857600",
            "209715200",
        ),
        // Lifting: memory+swap first, or the kernel refuses.
        (r#"{"memory":{"limit":-1}}"#, "", ""),
        (
            r#"{"memory":{"limit":52428800,"swap":62914560}}"#,
            "52428800",
            "62914560",
        ),
        (
            r#"{"memory":{"limit":209715200,"swap":419430400}}"#,
            "209715200",
            "419430400",
        ),
        // Lowering: the memory limit first.
        (
            r#"{"memory":{"limit":20971520,"swap":31457280}}"#,
            "20971520",
            "31457280",
        ),
    ];
    let mut result = Ok(());
    for (json, lim, sw) in steps {
        if let Err(e) = m.set(&checked(json)) {
            result = Err(format!("{json}: {e}"));
            break;
        }
        if lim.is_empty() {
            assert!(read("memory.limit_in_bytes").parse::<u64>().unwrap() >= 1 << 62);
            assert!(read("memory.memsw.limit_in_bytes").parse::<u64>().unwrap() >= 1 << 62);
        } else {
            assert_eq!(read("memory.limit_in_bytes"), lim, "{json}");
            assert_eq!(read("memory.memsw.limit_in_bytes"), sw, "{json}");
        }
    }
    m.destroy().unwrap();
    result.unwrap();
}

#[test]
fn realtime_needs_the_parents_grant_and_is_refused_before_creation() {
    let l = layout();
    if l.version() != CgroupVersion::V1 {
        return;
    }
    let prefix = unique("rt13");
    let _guard = CgroupGuard::new(&prefix);
    let res = checked(r#"{"cpu":{"realtimeRuntime":10000,"realtimePeriod":1000000}}"#);
    let parsed = host_cgroups::path::CgroupsPath::parse(&format!("{prefix}/sb"), "sb13").unwrap();
    let m = manager::build(&parsed, &l, Vec::new()).unwrap();
    let rt_here = l
        .mounts
        .get("cpu")
        .is_some_and(|c| c.join("cpu.rt_runtime_us").exists());
    match m.check(&res) {
        Err(e) => assert!(e.to_string().contains("cpu.realtimeRuntime"), "{e}"),
        Ok(()) => {
            panic!("a parent created with no real-time grant must be refused (rt here: {rt_here})")
        }
    }
    assert!(m.paths().values().all(|d| !d.exists()));
}
