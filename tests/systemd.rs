//! The systemd driver against a real systemd (PID 1) over the real system bus:
//! the test hosts `sd-v1` and `sd-v2` (see tests/hosts/). Elsewhere the tests
//! that need systemd skip with a reason, and the "not reachable" behaviour is
//! checked instead.
//!
//! Every test uses its own slice `hcg<random>-pods.slice` (so the nested
//! `hcg<random>.slice` above it) and stops that slice on drop, even on failure.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::{cleanup, run_args, success_json, BIN};
use common::skip::skip;
use common::systemd::{
    bus_answers, listed, needs_systemd, systemd_host, unit_of, BusRestorer, SliceGuard,
};
use common::*;
use host_cgroups::host::{CgroupLayout, CgroupVersion};
use host_cgroups::manager::{Manager, SystemdManager};
use host_cgroups::resources::from_json;
use serde_json::Value;

/// Generous: the test hosts are emulated (TCG) and slow.
const WAIT: Duration = Duration::from_secs(60);

fn systemctl_show(unit: &str, props: &[&str]) -> std::collections::BTreeMap<String, String> {
    let out = Command::new("systemctl")
        .args(["show", unit, "-p", &props.join(",")])
        .output()
        .expect("systemctl show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A child with several threads: this test binary re-run as `helper_threads`.
fn threaded_child() -> ChildGuard {
    let me = std::env::current_exe().expect("current_exe");
    let child: Child = Command::new(me)
        .args([
            "--exact",
            "helper_threads",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HCG_SD_HELPER", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn helper");
    let g = ChildGuard(child);
    let pid = g.pid();
    wait_until("the helper runs 4 threads", || {
        std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() >= 4)
    });
    g
}

/// Not a test on its own: the multi-threaded child of [`threaded_child`].
#[test]
fn helper_threads() {
    if std::env::var_os("HCG_SD_HELPER").is_none() {
        return;
    }
    for _ in 0..3 {
        std::thread::spawn(|| std::thread::sleep(Duration::from_secs(600)));
    }
    std::thread::sleep(Duration::from_secs(600));
}

fn tids(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Asserts that `tid` of `pid` is in the unit's cgroup in every hierarchy but v1 `devices`:
/// systemd realises that one only for units with a device policy, so a scope stays in
/// the nearest ancestor that has it (here the top slice).
fn assert_in_unit(layout: &CgroupLayout, pid: i32, tid: i32, relative: &str) {
    let cg = task_cgroups(pid, tid);
    let want = format!("/{relative}");
    let keys: Vec<String> = match layout.version() {
        CgroupVersion::V1 => layout
            .controllers()
            .into_iter()
            .filter(|c| c != "devices")
            .chain(["name=systemd".to_string()])
            .collect(),
        CgroupVersion::V2 => vec!["unified".to_string()],
    };
    for k in keys {
        assert_eq!(
            cg.get(&k),
            Some(&want),
            "task {pid}/{tid} controller {k:?}: {cg:?}"
        );
    }
}

/// Every directory of the unit's cgroup, in all hierarchies.
fn unit_dirs(layout: &CgroupLayout, relative: &str) -> Vec<std::path::PathBuf> {
    mounts(layout).iter().map(|m| m.join(relative)).collect()
}

#[test]
fn scope_in_nested_slice_with_properties() {
    if !needs_systemd("scope_in_nested_slice_with_properties") {
        return;
    }
    let layout = layout();
    let v = layout.version();
    let g = SliceGuard::new();
    let id = unique("sd");
    let unit = unit_of(&g.path(&id), &id);
    let rel = unit.cgroup_path();
    assert_eq!(rel, format!("{}/{}/kata-{id}.scope", g.top, g.slice));
    let child = threaded_child();
    let pid = child.pid();

    let mut m = SystemdManager::new(&layout, &unit);
    m.create().expect("create");
    assert!(!listed(&unit.unit), "create must not start a scope");
    let res = checked(
        r#"{"cpu":{"shares":2048,"quota":12345,"period":100000,"cpus":"0","mems":"0"},
            "memory":{"limit":268435456},"pids":{"limit":100}}"#,
    );
    m.set(&res).expect("set before start");
    m.add_proc(pid).expect("add_proc");

    // The process and all its threads are in the unit, in every hierarchy.
    for tid in tids(pid) {
        assert_in_unit(&layout, pid, tid, &rel);
    }
    assert!(m.procs().unwrap().contains(&pid));
    assert!(m.threads().unwrap().len() >= 4);

    let show = systemctl_show(
        &unit.unit,
        &[
            "Slice",
            "Delegate",
            "ActiveState",
            "CPUQuotaPerSecUSec",
            "CPUQuotaPeriodUSec",
            "CPUShares",
            "CPUWeight",
            "MemoryLimit",
            "MemoryMax",
            "TasksMax",
            "AllowedCPUs",
            "TimeoutStopUSec",
        ],
    );
    eprintln!("systemctl show: {show:?}");
    assert_eq!(show["Slice"], g.slice);
    assert_eq!(show["Delegate"], "yes");
    assert_eq!(show["ActiveState"], "active");
    // 12345 µs per 100 ms = 123450 µs/s, rounded up to whole 10 ms: 130 ms.
    assert_eq!(show["CPUQuotaPerSecUSec"], "130ms");
    assert_eq!(show["CPUQuotaPeriodUSec"], "100ms");
    assert_eq!(show["TasksMax"], "100");
    assert_eq!(show["TimeoutStopUSec"], "5min");
    let paths = m.paths();
    let dir = |c: &str| paths[c].clone();
    match v {
        CgroupVersion::V1 => {
            assert_eq!(show["CPUShares"], "2048");
            assert_eq!(show["MemoryLimit"], "268435456");
            assert_eq!(read(dir("cpu").join("cpu.shares")), "2048");
            assert_eq!(read(dir("cpu").join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(dir("cpu").join("cpu.cfs_quota_us")), "13000");
            assert_eq!(
                read(dir("memory").join("memory.limit_in_bytes")),
                "268435456"
            );
            assert_eq!(read(dir("pids").join("pids.max")), "100");
            // cpuset is ours on v1: written under the unit's path in the cpuset hierarchy.
            assert_eq!(read(dir("cpuset").join("cpuset.cpus")), "0");
        }
        CgroupVersion::V2 => {
            assert_eq!(show["CPUWeight"], "174");
            assert_eq!(show["MemoryMax"], "268435456");
            assert_eq!(show["AllowedCPUs"], "0");
            let d = dir("unified");
            assert_eq!(read(d.join("cpu.max")), "13000 100000");
            assert_eq!(read(d.join("cpu.weight")), "174");
            assert_eq!(read(d.join("memory.max")), "268435456");
            assert_eq!(read(d.join("pids.max")), "100");
            assert_eq!(read(d.join("cpuset.cpus")), "0");
        }
    }

    // Updates go through SetUnitProperties.
    let res2 = checked(
        r#"{"cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"1"},
            "memory":{"limit":536870912},"pids":{"limit":-1}}"#,
    );
    m.set(&res2).expect("set on the running unit");
    let show = systemctl_show(
        &unit.unit,
        &["CPUQuotaPerSecUSec", "TasksMax", "MemoryMax", "MemoryLimit"],
    );
    assert_eq!(show["CPUQuotaPerSecUSec"], "500ms");
    assert_eq!(show["TasksMax"], "infinity");
    match v {
        CgroupVersion::V1 => {
            assert_eq!(show["MemoryLimit"], "536870912");
            assert_eq!(read(dir("cpu").join("cpu.cfs_quota_us")), "50000");
            assert_eq!(read(dir("cpu").join("cpu.shares")), "1024");
            assert_eq!(read(dir("pids").join("pids.max")), "max");
            assert_eq!(read(dir("cpuset").join("cpuset.cpus")), "1");
        }
        CgroupVersion::V2 => {
            assert_eq!(show["MemoryMax"], "536870912");
            let d = dir("unified");
            assert_eq!(read(d.join("cpu.max")), "50000 100000");
            assert_eq!(read(d.join("cpu.weight")), "100");
            assert_eq!(read(d.join("pids.max")), "max");
            assert_eq!(read(d.join("cpuset.cpus")), "1");
        }
    }
    // A bad cpuset is refused before systemd is asked.
    let bad = checked(r#"{"cpu":{"cpus":"0-4000"}}"#);
    let e = m.set(&bad).unwrap_err().to_string();
    assert!(e.contains("4000"), "{e}");

    // Freeze and thaw.
    m.freeze().expect("freeze");
    match v {
        // systemd freezes only on v2 (FreezeUnit); v1 uses the freezer hierarchy, which is ours.
        CgroupVersion::V1 => assert_eq!(read(dir("freezer").join("freezer.state")), "FROZEN"),
        CgroupVersion::V2 => {
            assert!(read(dir("unified").join("cgroup.events")).contains("frozen 1"));
            assert_eq!(
                systemctl_show(&unit.unit, &["FreezerState"])["FreezerState"],
                "frozen"
            );
        }
    }
    m.thaw().expect("thaw");
    match v {
        CgroupVersion::V1 => assert_eq!(read(dir("freezer").join("freezer.state")), "THAWED"),
        CgroupVersion::V2 => {
            assert!(read(dir("unified").join("cgroup.events")).contains("frozen 0"))
        }
    }
    let s = m.stats().expect("stats");
    assert!(s.pids_current.unwrap_or(0) >= 4, "{s:?}");

    // Destroy: the unit is stopped (the helper gets SIGTERM), nothing is left.
    m.destroy().expect("destroy");
    assert!(!listed(&unit.unit), "{} still listed", unit.unit);
    for d in unit_dirs(&layout, &rel) {
        assert!(!d.exists(), "{} still exists", d.display());
    }
    // Destroying a unit that no longer exists is not an error.
    m.destroy().expect("second destroy");
    drop(child);
}

#[test]
fn second_manager_adopts_running_unit() {
    if !needs_systemd("second_manager_adopts_running_unit") {
        return;
    }
    let layout = layout();
    let g = SliceGuard::new();
    let id = unique("adopt");
    let unit = unit_of(&g.path(&id), &id);
    let rel = unit.cgroup_path();
    let a = ChildGuard::sleep();
    let b = ChildGuard::sleep();
    let mut m1 = SystemdManager::new(&layout, &unit);
    m1.create().unwrap();
    m1.add_proc(a.pid()).unwrap();
    let inv = systemctl_show(&unit.unit, &["InvocationID"])["InvocationID"].clone();
    assert!(!inv.is_empty());

    // A restarted runtime: a new manager for the same unit joins it (AttachProcessesToUnit).
    let mut m2 = SystemdManager::new(&layout, &unit);
    m2.create().unwrap();
    m2.add_proc(b.pid()).expect("join the running unit");
    assert_eq!(
        systemctl_show(&unit.unit, &["InvocationID"])["InvocationID"],
        inv,
        "the unit was recreated instead of joined"
    );
    assert_in_unit(&layout, b.pid(), b.pid(), &rel);
    assert_in_unit(&layout, a.pid(), a.pid(), &rel);
    let procs = m2.procs().unwrap();
    assert!(
        procs.contains(&a.pid()) && procs.contains(&b.pid()),
        "{procs:?}"
    );
    // The adopted unit takes properties directly.
    m2.set(&checked(r#"{"pids":{"limit":50}}"#))
        .expect("set on adopted unit");
    assert_eq!(systemctl_show(&unit.unit, &["TasksMax"])["TasksMax"], "50");

    m2.destroy().expect("destroy");
    assert!(!listed(&unit.unit));
    for d in unit_dirs(&layout, &rel) {
        assert!(!d.exists(), "{} still exists", d.display());
    }
}

#[test]
fn failed_leftover_unit_is_reset_and_started_again() {
    if !needs_systemd("failed_leftover_unit_is_reset_and_started_again") {
        return;
    }
    let layout = layout();
    let g = SliceGuard::new();
    let id = unique("failed");
    let unit = unit_of(&g.path(&id), &id);
    // A scope of the same name whose stop timed out (its process ignores SIGTERM): failed.
    let name = unit.unit.trim_end_matches(".scope").to_string();
    let leftover = ChildGuard(
        Command::new("systemd-run")
            .args(["--scope", "--quiet", "--unit", &name, "--slice", &g.slice])
            .args(["-p", "TimeoutStopSec=1", "--", "sh", "-c"])
            .arg("trap '' TERM; exec sleep 600")
            .stdout(Stdio::null())
            .spawn()
            .expect("systemd-run"),
    );
    wait_until("the leftover scope runs", || {
        systemctl_show(&unit.unit, &["ActiveState"])["ActiveState"] == "active"
    });
    let st = Command::new("systemctl")
        .args(["stop", &unit.unit])
        .status()
        .unwrap();
    eprintln!("systemctl stop: {st}");
    assert_eq!(
        systemctl_show(&unit.unit, &["ActiveState"])["ActiveState"],
        "failed"
    );
    drop(leftover);

    let child = ChildGuard::sleep();
    let mut m = SystemdManager::new(&layout, &unit);
    m.create().unwrap();
    m.add_proc(child.pid())
        .expect("start over the failed leftover");
    assert_eq!(
        systemctl_show(&unit.unit, &["ActiveState"])["ActiveState"],
        "active"
    );
    assert_in_unit(&layout, child.pid(), child.pid(), &unit.cgroup_path());
    m.destroy().expect("destroy");
    assert!(!listed(&unit.unit));
}

#[test]
fn run_survives_stopping_its_own_scope() {
    if !needs_systemd("run_survives_stopping_its_own_scope") {
        return;
    }
    let layout = layout();
    let g = SliceGuard::new();
    let id = unique("run");
    let path = g.path(&id);
    let unit = unit_of(&path, &id);
    let rel = unit.cgroup_path();
    let state = std::env::temp_dir().join(unique("state"));
    let out = run_args(&path, &id, &state)
        .duration("1")
        .vcpus(2)
        .backend("thread")
        .json()
        .resources(r#"{"cpu":{"quota":50000,"period":100000}}"#)
        .command()
        .env("HOST_CGROUPS_LOG", "info")
        .output()
        .expect("run host-cgroups run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "run failed: {:?}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["driver"], "systemd");
    assert_eq!(report["cleanup"]["errors"], serde_json::json!([]));
    assert_eq!(report["sandbox"]["path"], rel);
    // Every thread, vCPUs included, sat in the unit while it ran.
    let want = format!("/{rel}");
    let threads = report["threads"].as_array().expect("threads");
    assert!(!threads.is_empty());
    for t in threads {
        let cgroups = t["cgroups"].as_object().expect("cgroups");
        // ThreadInfo names v2's line `unified`; on v1 check systemd's hierarchies and ours.
        let keys: &[&str] = match layout.version() {
            CgroupVersion::V1 => &["cpu", "memory", "pids", "cpuset", "freezer"],
            CgroupVersion::V2 => &["unified"],
        };
        for key in keys {
            assert_eq!(
                cgroups.get(*key),
                Some(&Value::from(want.as_str())),
                "{key}: thread {t}"
            );
        }
    }
    // The stop completes once the process has exited; then nothing is left.
    wait_until("the unit is gone", || !listed(&unit.unit));
    wait_until("the unit's cgroups are gone", || {
        unit_dirs(&layout, &rel).iter().all(|d| !d.exists())
    });
    assert!(
        std::fs::read_dir(&state)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "state left in {}",
        state.display()
    );
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn check_reports_systemd_version() {
    if !needs_systemd("check_reports_systemd_version") {
        return;
    }
    let out = Command::new(BIN)
        .args(["check", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    assert_eq!(v["systemd"]["reachable"], true, "{v}");
    let version = v["systemd"]["version"].as_u64().expect("version");
    assert!(version >= 219, "{version}");
}

#[test]
fn unreachable_systemd_is_a_plain_error_and_leaves_nothing() {
    if systemd_host() {
        return skip(
            "unreachable_systemd_is_a_plain_error_and_leaves_nothing",
            "systemd is PID 1 here, so it is reachable",
        );
    }
    let layout = layout();
    let tag = format!("hcg{:08x}", rand::random::<u32>());
    let _cg = CgroupGuard::new(&format!("{tag}.slice"));
    let id = unique("unreach");
    let state = std::env::temp_dir().join(unique("state"));
    let out = run_args(&format!("{tag}.slice:kata:{id}"), &id, &state)
        .duration("0")
        .backend("thread")
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("systemd is not reachable on the system bus"),
        "{stderr}"
    );
    // No silent fallback to cgroupfs: nothing below the slice in any hierarchy, no state.
    for m in mounts(&layout) {
        assert!(!m.join(format!("{tag}.slice")).exists(), "{}", m.display());
    }
    assert!(
        std::fs::read_dir(&state)
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "state left behind"
    );
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn resolve_prints_unit_properties() {
    for (version, want) in [
        (
            "1",
            vec![
                ("CPUShares", serde_json::json!(1024)),
                ("CPUQuotaPerSecUSec", serde_json::json!(130_000)),
                ("MemoryLimit", serde_json::json!(268_435_456u64)),
                ("BlockIOAccounting", serde_json::json!(true)),
                ("TasksMax", serde_json::json!(u64::MAX)),
            ],
        ),
        (
            "2",
            vec![
                ("CPUWeight", serde_json::json!(100)),
                ("CPUQuotaPeriodUSec", serde_json::json!(100_000)),
                ("CPUQuotaPerSecUSec", serde_json::json!(130_000)),
                ("AllowedCPUs", serde_json::json!([15, 0, 0, 0, 3])),
                ("MemoryMax", serde_json::json!(268_435_456u64)),
                ("IOAccounting", serde_json::json!(true)),
                ("TasksMax", serde_json::json!(u64::MAX)),
            ],
        ),
    ] {
        let out = Command::new(BIN)
            .args([
                "resolve",
                "--sandbox-id",
                "sb1",
                "--cgroups-path",
                "kata-pods.slice:kata:sb1",
                "--cgroup-version",
                version,
                "--json",
                "--resources",
                r#"{"cpu":{"shares":1024,"quota":12345,"period":100000,"cpus":"0-3,32-33"},
                    "memory":{"limit":268435456},"pids":{"limit":-1}}"#,
            ])
            .output()
            .unwrap();
        let v = success_json(&out);
        let props = v["properties"].as_array().expect("properties");
        for (name, value) in want {
            let got = props.iter().find(|p| p["name"] == name);
            assert_eq!(
                got.map(|p| &p["value"]),
                Some(&value),
                "v{version} {name}: {props:?}"
            );
        }
        let writes = v["writes"].as_array().unwrap();
        if version == "1" {
            assert_eq!(writes.len(), 1, "{writes:?}");
            assert_eq!(writes[0]["file"], "cpuset.cpus");
        } else {
            assert!(writes.is_empty(), "{writes:?}");
        }
    }
}

#[test]
fn bus_going_away_mid_run_is_reported_and_cleanup_finishes_later() {
    if !needs_systemd("bus_going_away_mid_run_is_reported_and_cleanup_finishes_later") {
        return;
    }
    let layout = layout();
    let g = SliceGuard::new();
    let id = unique("busgone");
    let path = g.path(&id);
    let unit = unit_of(&path, &id);
    let state = std::env::temp_dir().join(unique("state"));
    let mut child = run_args(&path, &id, &state)
        .duration("600")
        .vcpus(1)
        .backend("thread")
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    let pid = child.id() as i32;
    let mut err = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let start = Instant::now();
    while !seen.contains("running") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut err, &mut line).unwrap_or(0);
        assert!(
            n > 0 && start.elapsed() < WAIT * 2,
            "run ended early: {seen}"
        );
        seen.push_str(&line);
    }
    assert!(listed(&unit.unit));

    // The system bus goes away while the sandbox runs; then the runtime tears down.
    let _restore = BusRestorer;
    let st = Command::new("systemctl")
        .args(["stop", "dbus.socket", "dbus.service"])
        .status()
        .expect("systemctl stop dbus");
    assert!(st.success());
    wait_until("the bus is gone", || !bus_answers());
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    let status = child.wait().expect("wait run");
    // A clear runtime failure (exit 1), not a crash; the state is kept for cleanup.
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        rest.contains("not reachable") || rest.contains("D-Bus") || rest.contains("bus"),
        "{rest}"
    );
    assert!(
        state.join(format!("{id}.json")).exists(),
        "state was dropped: {rest}"
    );

    // The bus comes back: `cleanup` finishes the job from the state.
    drop(_restore);
    let out = cleanup(&id, &state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the unit is gone", || !listed(&unit.unit));
    let rel = unit.cgroup_path();
    wait_until("the unit's cgroups are gone", || {
        unit_dirs(&layout, &rel).iter().all(|d| !d.exists())
    });
    assert!(!state.join(format!("{id}.json")).exists());
    let _ = std::fs::remove_dir_all(&state);
}

/// Issue 13's values reach systemd as `resolve` plans them: pids 0 is `TasksMax=1`
/// (systemd refuses 0; runc 1.4 sends 1), unlimited memory with a swap figure is
/// `MemorySwapMax=<swap>` on v2, and a quota above the kernel's ceiling never gets here.
#[test]
fn issue13_values_reach_systemd_as_planned() {
    if !needs_systemd("issue13_values_reach_systemd_as_planned") {
        return;
    }
    let layout = layout();
    let g = SliceGuard::new();
    let id = unique("i13");
    let unit = unit_of(&g.path(&id), &id);
    let a = ChildGuard::sleep();
    let mut m = SystemdManager::new(&layout, &unit);
    m.create().unwrap();
    m.add_proc(a.pid()).unwrap();
    m.set(&checked(r#"{"pids":{"limit":0}}"#)).expect("pids 0");
    assert_eq!(systemctl_show(&unit.unit, &["TasksMax"])["TasksMax"], "1");
    if layout.version() == CgroupVersion::V2 {
        m.set(&checked(r#"{"memory":{"limit":-1,"swap":300}}"#))
            .expect("unlimited memory with swap");
        let show = systemctl_show(&unit.unit, &["MemoryMax", "MemorySwapMax"]);
        assert_eq!(show["MemoryMax"], "infinity");
        assert_eq!(show["MemorySwapMax"], "300");
    }
    // Refused where resources enter (the drivers take only checked resources).
    let too_big = from_json(r#"{"cpu":{"quota":20971520000000,"period":100000}}"#).unwrap();
    assert!(
        host_cgroups::resources::Checked::new(too_big).is_err(),
        "a quota past 2^44-1 µs was accepted"
    );
    assert_eq!(systemctl_show(&unit.unit, &["TasksMax"])["TasksMax"], "1");
    m.destroy().expect("destroy");
    assert!(!listed(&unit.unit));
}
