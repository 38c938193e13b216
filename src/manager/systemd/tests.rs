//! The driver's logic against a scripted systemd ([`super::fake`]) and a temporary
//! directory laid out as cgroupfs ([`CgroupLayout::rooted_at`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::{BusError, StopResult};
use super::fake::{dbus_error, job, no_such_unit, reexecuting, unit_exists, Call, FakeSystemd};
use super::props::UnitProperty;
use super::{SystemdManager, EXIT_WAIT};
use crate::host::{CgroupLayout, CgroupVersion};
use crate::manager::{CgroupError, Manager};
use crate::path::SystemdUnit;
use crate::resources::{Checked, ResourceError};

/// OCI resources from JSON, checked as the library's entry points check them.
fn from_json(json: &str) -> Result<Checked, ResourceError> {
    crate::resources::from_json(json).and_then(Checked::new)
}

const UNIT: &str = "hcgtest-sb.scope";
/// Where systemd puts the unit's cgroup (below each hierarchy's root).
const REL: &str = "hcgtest.slice/hcgtest-sb.scope";
const V1: CgroupVersion = CgroupVersion::V1;
const V2: CgroupVersion = CgroupVersion::V2;

/// A temporary directory standing for `/sys/fs/cgroup`, removed when dropped.
struct Root {
    dir: PathBuf,
}

impl Root {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hcg-sdfake-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Root { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Writes `content` to the file `rel`, making its directories.
    fn put(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    fn layout(&self, version: CgroupVersion) -> CgroupLayout {
        CgroupLayout::rooted_at(version, &self.dir)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scope() -> SystemdUnit {
    SystemdUnit {
        slice: "hcgtest.slice".into(),
        prefix: "hcgtest".into(),
        name: "sb".into(),
        unit: UNIT.into(),
    }
}

fn manager(root: &Root, version: CgroupVersion, fake: &FakeSystemd) -> SystemdManager {
    SystemdManager::new(&root.layout(version), &scope()).with_client(fake.client())
}

/// The message of a `SystemdUnit` error, which must name our unit.
fn unit_message(e: CgroupError) -> String {
    match e {
        CgroupError::SystemdUnit { unit, message } => {
            assert_eq!(unit, UNIT);
            message
        }
        other => panic!("expected a SystemdUnit error, got {other:?}"),
    }
}

fn names(props: &[UnitProperty]) -> Vec<&'static str> {
    props.iter().map(|p| p.name).collect()
}

/// The properties of the `n`th `StartTransientUnit` request.
fn start_properties(fake: &FakeSystemd, n: usize) -> Vec<UnitProperty> {
    fake.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Start { properties, .. } => Some(properties),
            _ => None,
        })
        .nth(n)
        .unwrap()
}

fn set_properties(fake: &FakeSystemd) -> Vec<Vec<UnitProperty>> {
    fake.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::SetProperties {
                properties,
                runtime,
                ..
            } => {
                assert!(runtime, "SetUnitProperties is sent with runtime = true");
                Some(properties)
            }
            _ => None,
        })
        .collect()
}

/// A manager whose unit runs already: `set` finds it `active` (a restored manager).
fn running(root: &Root, version: CgroupVersion, fake: &FakeSystemd) -> SystemdManager {
    fake.on_state("ActiveState", Ok("active"));
    manager(root, version, fake)
}

// ---- start ----

#[test]
fn failed_start_job_is_an_error_naming_the_unit_and_the_job_result() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    fake.on_start(Ok(job(7, "failed")));
    let mut m = manager(&root, V2, &fake);
    let e = m.add_proc(4242).unwrap_err();
    let msg = unit_message(e);
    assert!(
        msg.starts_with("StartTransientUnit: job /org/freedesktop/systemd1/job/7 ended 'failed'")
            && msg.contains("journalctl -u hcgtest-sb.scope"),
        "{msg}"
    );
    // The failed transient unit stays loaded until reset: it is reset at once.
    assert_eq!(fake.methods(), ["StartTransientUnit", "ResetFailedUnit"]);
    match &fake.calls()[0] {
        Call::Start {
            unit,
            mode,
            properties,
        } => {
            assert_eq!((unit.as_str(), mode.as_str()), (UNIT, "replace"));
            let pids = properties.iter().find(|p| p.name == "PIDs").unwrap();
            assert_eq!(pids.value, super::props::PropValue::U32s(vec![4242]));
        }
        other => panic!("{other:?}"),
    }
    // Nothing was marked started: the next add_proc starts again.
    fake.clear_calls();
    fake.on_start(Ok(job(8, "done")));
    m.add_proc(4242).unwrap();
    assert_eq!(fake.methods(), ["StartTransientUnit"]);
}

#[test]
fn start_error_from_a_systemd_that_stays_away_names_the_bus_error() {
    // systemd re-executing answers NoReply; the client retries within its timeout and
    // then gives up with it: the driver reports it, and starts again on the next call.
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    fake.on_start(Err(reexecuting()));
    fake.on_start(Ok(job(2, "done")));
    let mut m = manager(&root, V2, &fake);
    let msg = unit_message(m.add_proc(1).unwrap_err());
    assert_eq!(
        msg,
        "StartTransientUnit: org.freedesktop.DBus.Error.NoReply: Message recipient disconnected from message bus without replying"
    );
    m.add_proc(1).unwrap();
    assert_eq!(fake.methods(), ["StartTransientUnit", "StartTransientUnit"]);
}

#[test]
fn leftover_failed_unit_is_reset_before_the_start_is_tried_again() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    fake.on_start(Err(unit_exists(UNIT)));
    fake.on_start(Ok(job(3, "done")));
    fake.on_state("ActiveState", Ok("failed"));
    let mut m = manager(&root, V2, &fake);
    m.add_proc(99).unwrap();
    assert_eq!(
        fake.methods(),
        [
            "StartTransientUnit",
            "Get ActiveState",
            "ResetFailedUnit",
            "StartTransientUnit"
        ]
    );
    // The second start carries the same properties.
    assert_eq!(start_properties(&fake, 0), start_properties(&fake, 1));
}

#[test]
fn unit_that_still_exists_after_a_reset_is_an_error() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    fake.on_start(Err(unit_exists(UNIT)));
    fake.on_state("ActiveState", Ok("failed"));
    let mut m = manager(&root, V2, &fake);
    let msg = unit_message(m.add_proc(99).unwrap_err());
    assert!(
        msg.starts_with("StartTransientUnit: org.freedesktop.systemd1.UnitExists")
            && msg.ends_with("(the unit is failed)"),
        "{msg}"
    );
    assert_eq!(
        fake.methods(),
        [
            "StartTransientUnit",
            "Get ActiveState",
            "ResetFailedUnit",
            "StartTransientUnit",
            "Get ActiveState"
        ]
    );
}

#[test]
fn running_unit_is_joined_with_pending_resources() {
    // A restarted runtime (or a start systemd carried out before it re-executed and
    // that the client sent again) meets UnitExists on an active unit: join it.
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    let mut m = manager(&root, V2, &fake);
    m.set(&from_json(r#"{"pids":{"limit":10}}"#).unwrap())
        .unwrap();
    fake.on_start(Err(unit_exists(UNIT)));
    fake.on_state("ActiveState", Ok("active"));
    m.add_proc(4242).unwrap();
    assert_eq!(
        fake.methods(),
        [
            "Get ActiveState",
            "StartTransientUnit",
            "Get ActiveState",
            "AttachProcessesToUnit",
            "SetUnitProperties"
        ]
    );
    assert!(fake.calls().contains(&Call::Attach {
        unit: UNIT.into(),
        subcgroup: "/".into(),
        pids: vec![4242],
    }));
    assert_eq!(names(&set_properties(&fake)[0]), ["TasksMax"]);
    // Started now: the next process is attached.
    fake.clear_calls();
    m.add_proc(4243).unwrap();
    assert_eq!(fake.methods(), ["AttachProcessesToUnit"]);
}

#[test]
fn joining_needs_attach_processes_to_unit() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(237));
    fake.on_start(Err(unit_exists(UNIT)));
    fake.on_state("ActiveState", Ok("active"));
    let mut m = manager(&root, V2, &fake);
    let msg = unit_message(m.add_proc(4242).unwrap_err());
    assert_eq!(
        msg,
        "joining a running unit needs AttachProcessesToUnit (systemd ≥ 238); this is systemd 237"
    );
    assert!(!fake.methods().iter().any(|m| m == "AttachProcessesToUnit"));
}

#[test]
fn slice_unit_is_started_by_create_without_processes() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    let slice = SystemdUnit {
        slice: "hcgtest.slice".into(),
        prefix: String::new(),
        name: "hcgtest-pod.slice".into(),
        unit: "hcgtest-pod.slice".into(),
    };
    let mut m = SystemdManager::new(&root.layout(V2), &slice).with_client(fake.client());
    m.create().unwrap();
    let props = names(&start_properties(&fake, 0));
    assert!(
        props.contains(&"Wants") && !props.contains(&"PIDs"),
        "{props:?}"
    );
    // Started once: a second create sends nothing.
    m.create().unwrap();
    assert_eq!(fake.methods(), ["StartTransientUnit"]);
    assert!(matches!(
        m.add_proc(1),
        Err(CgroupError::Unsupported { .. })
    ));
}

// ---- properties and systemd's version ----

#[test]
fn start_leaves_out_properties_newer_than_systemd() {
    // systemd 243 knows CPUQuotaPeriodUSec (242) but not AllowedCPUs (244).
    let root = Root::new();
    let fake = FakeSystemd::new(Some(243));
    let mut m = manager(&root, V2, &fake);
    let res = r#"{"cpu":{"cpus":"0","quota":50000,"period":100000},"pids":{"limit":10}}"#;
    m.set(&from_json(res).unwrap()).unwrap();
    // Not started yet: the resources wait for the start.
    assert_eq!(fake.methods(), ["Get ActiveState"]);
    m.add_proc(4242).unwrap();
    let sent = names(&start_properties(&fake, 0));
    assert!(
        sent.contains(&"CPUQuotaPeriodUSec")
            && sent.contains(&"CPUQuotaPerSecUSec")
            && sent.contains(&"TasksMax")
            && sent.contains(&"PIDs"),
        "{sent:?}"
    );
    assert!(!sent.contains(&"AllowedCPUs"), "{sent:?}");
    // No SetUnitProperties: everything went with the start.
    assert_eq!(fake.methods(), ["Get ActiveState", "StartTransientUnit"]);
}

#[test]
fn set_leaves_out_properties_newer_than_systemd() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(241));
    let mut m = running(&root, V2, &fake);
    let res = r#"{"cpu":{"cpus":"0","quota":50000,"period":100000}}"#;
    m.set(&from_json(res).unwrap()).unwrap();
    let sent = set_properties(&fake);
    assert_eq!(names(&sent[0]), ["CPUQuotaPerSecUSec"]);
    // Only properties this systemd is too old for: nothing is sent, and it is no error
    // (the driver warns, as runc does).
    fake.clear_calls();
    m.set(&from_json(r#"{"cpu":{"cpus":"0"}}"#).unwrap())
        .unwrap();
    assert_eq!(fake.methods(), Vec::<String>::new());
    // A version that does not parse is taken as recent: everything is sent.
    let fake = FakeSystemd::new(None);
    let mut m = running(&root, V2, &fake);
    m.set(&from_json(res).unwrap()).unwrap();
    assert_eq!(
        names(&set_properties(&fake)[0]),
        ["CPUQuotaPeriodUSec", "CPUQuotaPerSecUSec", "AllowedCPUs"]
    );
}

#[test]
fn failed_set_unit_properties_rolls_back_the_cgroupfs_writes() {
    // v1: the cpuset and memory+swap are files, the memory limit a property. Raising
    // the limit writes memory+swap first (the kernel's rule), then SetUnitProperties,
    // which fails here: both files get their previous values back.
    let root = Root::new();
    root.put("cpu/cgroup.procs", "");
    root.put("memory/cgroup.procs", "");
    root.put("memory/memory.memsw.limit_in_bytes", "9223372036854771712");
    root.put("cpuset/hcgtest.slice/cpuset.cpus", "0-1");
    let leaf = |c: &str, f: &str| format!("{c}/{REL}/{f}");
    root.put(&leaf("cpuset", "cpuset.cpus"), "1");
    root.put(&leaf("memory", "memory.limit_in_bytes"), "536870912");
    root.put(
        &leaf("memory", "memory.memsw.limit_in_bytes"),
        "9223372036854771712",
    );
    let fake = FakeSystemd::new(Some(252));
    fake.on(
        "SetUnitProperties",
        Err(dbus_error(
            "org.freedesktop.DBus.Error.InvalidArgs",
            "Invalid argument",
        )),
    );
    // What cgroupfs held when systemd was asked.
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let (s, cpus, memsw) = (
        seen.clone(),
        root.path(&leaf("cpuset", "cpuset.cpus")),
        root.path(&leaf("memory", "memory.memsw.limit_in_bytes")),
    );
    fake.hook(move |c| {
        if let Call::SetProperties { .. } = c {
            let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap();
            s.lock().unwrap().push((read(&cpus), read(&memsw)));
        }
    });
    let mut m = running(&root, V1, &fake);
    let res = r#"{"cpu":{"cpus":"0"},"memory":{"limit":1073741824,"swap":2147483648}}"#;
    let msg = unit_message(m.set(&from_json(res).unwrap()).unwrap_err());
    assert_eq!(
        msg,
        r#"SetUnitProperties ["MemoryLimit"]: org.freedesktop.DBus.Error.InvalidArgs: Invalid argument"#
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].0, "0",
        "the cpuset is written before the properties"
    );
    assert!(
        seen[0].1.starts_with("2147483648"),
        "memory+swap is raised before the limit: {}",
        seen[0].1
    );
    assert_eq!(root.read(&leaf("cpuset", "cpuset.cpus")), "1");
    assert_eq!(
        root.read(&leaf("memory", "memory.memsw.limit_in_bytes")),
        "9223372036854771712"
    );
}

#[test]
fn v1_oom_control_is_restored_by_writing_its_flag() {
    // `memory.oom_control` reads as key/value lines but takes only the flag: a failed
    // write after it restores it with `1`, not with the text read (which the kernel
    // refuses).
    let root = Root::new();
    root.put("memory/cgroup.procs", "");
    root.put("net_cls/cgroup.procs", "");
    root.put("net_cls/net_cls.classid", "0");
    let oom = format!("memory/{REL}/memory.oom_control");
    root.put(&oom, "oom_kill_disable 1\nunder_oom 0\n");
    // The unit's net_cls directory is missing: the write after oom_control fails.
    let fake = FakeSystemd::new(Some(252));
    let mut m = running(&root, V1, &fake);
    let res = r#"{"memory":{"disableOOMKiller":false},"network":{"classID":7}}"#;
    let e = m.set(&from_json(res).unwrap()).unwrap_err();
    match &e {
        CgroupError::Io { path, .. } => assert!(path.ends_with("net_cls.classid"), "{e}"),
        other => panic!("{other:?}"),
    }
    // A plain file keeps the bytes past a short write: `0` was written over the first
    // byte, then `1` restored it. The read form written back would have left the file as
    // it was.
    assert_eq!(root.read(&oom), "1om_kill_disable 1\nunder_oom 0\n");
    assert_eq!(fake.methods(), ["Get ActiveState"], "no property to send");
}

#[test]
fn check_refuses_more_real_time_than_the_parent_slice_grants() {
    let root = Root::new();
    root.put("cpu/cgroup.procs", "");
    root.put("cpu/cpu.rt_runtime_us", "950000");
    let fake = FakeSystemd::new(Some(252));
    let m = manager(&root, V1, &fake);
    let rt = |runtime: i64| {
        from_json(&format!(
            r#"{{"cpu":{{"realtimeRuntime":{runtime},"realtimePeriod":1000000}}}}"#
        ))
        .unwrap()
    };
    // The slice does not exist yet: it would grant nothing.
    let e = m.check(&rt(10_000)).unwrap_err().to_string();
    assert!(e.contains("does not exist yet"), "{e}");
    root.put("cpu/hcgtest.slice/cpu.rt_runtime_us", "100000");
    root.put("cpu/hcgtest.slice/cpu.rt_period_us", "1000000");
    m.check(&rt(100_000)).unwrap();
    match m.check(&rt(200_000)).unwrap_err() {
        CgroupError::Resource(ResourceError::Unsupported { field, reason }) => {
            assert_eq!(field, "cpu.realtimeRuntime");
            assert!(
                reason.starts_with("200000 µs per 1000000 µs is more than the parent")
                    && reason.contains("hcgtest.slice")
                    && reason.ends_with("(cpu.rt_runtime_us = 100000 per 1000000 µs)"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // `set` refuses it before asking systemd anything.
    let mut m = m;
    assert!(m.set(&rt(200_000)).is_err());
    assert_eq!(fake.methods(), Vec::<String>::new());
}

// ---- stop ----

#[test]
fn stop_waits_for_the_job_and_resets_a_unit_that_ended_failed() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    let mut m = manager(&root, V2, &fake);
    m.add_proc(4242).unwrap();
    fake.clear_calls();
    fake.on_stop(Ok(StopResult {
        job: job(9, "failed"),
        gone: false,
    }));
    fake.on_state("ActiveState", Ok("failed"));
    m.destroy().unwrap();
    assert_eq!(
        fake.methods(),
        ["StopUnit+wait", "Get ActiveState", "ResetFailedUnit"]
    );
    assert!(fake
        .calls()
        .contains(&Call::ResetFailed { unit: UNIT.into() }));
}

#[test]
fn stop_of_a_unit_systemd_unloaded_needs_no_reset() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    let mut m = manager(&root, V2, &fake);
    m.add_proc(4242).unwrap();
    fake.clear_calls();
    // Unscripted: the job ends done and the unit is unloaded.
    m.destroy().unwrap();
    assert_eq!(fake.methods(), ["StopUnit+wait"]);
    // Done but still loaded (inactive): asked, and not reset.
    fake.clear_calls();
    fake.on_stop(Ok(StopResult {
        job: job(10, "done"),
        gone: false,
    }));
    fake.on_state("ActiveState", Ok("inactive"));
    m.destroy().unwrap();
    assert_eq!(fake.methods(), ["StopUnit+wait", "Get ActiveState"]);
}

#[test]
fn unit_already_gone_on_stop_is_success() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    fake.on_stop(Err(no_such_unit(UNIT)));
    let mut m = manager(&root, V2, &fake);
    m.add_proc(4242).unwrap();
    fake.clear_calls();
    m.destroy().unwrap();
    assert_eq!(fake.methods(), ["StopUnit+wait"]);
}

#[test]
fn stop_job_that_never_finishes_is_an_error() {
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    fake.on_stop(Err(BusError {
        name: None,
        message: "StopUnit: job /org/freedesktop/systemd1/job/11 did not finish within 30 s".into(),
    }));
    let mut m = manager(&root, V2, &fake);
    m.add_proc(4242).unwrap();
    let msg = unit_message(m.destroy().unwrap_err());
    assert_eq!(
        msg,
        "StopUnit: StopUnit: job /org/freedesktop/systemd1/job/11 did not finish within 30 s"
    );
    // Still started: destroying again stops again.
    fake.clear_calls();
    assert!(m.destroy().is_err());
    assert_eq!(fake.methods(), ["StopUnit+wait"]);
}

#[test]
fn stop_is_done_once_systemd_has_pruned_the_cgroup() {
    // systemd removes the unit's cgroup when the unit goes inactive; processes its
    // SIGTERM has not ended yet may keep it a moment.
    let root = Root::new();
    let leaf = root.path(REL);
    std::fs::create_dir_all(&leaf).unwrap();
    let fake = FakeSystemd::new(Some(252));
    let mut m = manager(&root, V2, &fake);
    m.add_proc(4242).unwrap();
    let pruner = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        std::fs::remove_dir(&leaf).unwrap();
    });
    let t0 = Instant::now();
    m.destroy().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert!(t0.elapsed() < EXIT_WAIT);
    pruner.join().unwrap();
}

#[test]
fn cgroup_left_after_the_stop_is_named() {
    let root = Root::new();
    std::fs::create_dir_all(root.path(REL)).unwrap();
    let fake = FakeSystemd::new(Some(252));
    let mut m = manager(&root, V2, &fake);
    m.add_proc(4242).unwrap();
    let t0 = Instant::now();
    let msg = unit_message(m.destroy().unwrap_err());
    assert!(t0.elapsed() >= EXIT_WAIT);
    assert_eq!(
        msg,
        format!(
            "StopUnit: the unit stopped but its cgroup {} is still there after 3 s",
            root.path(REL).display()
        )
    );
}

#[test]
fn v1_unmanaged_cgroups_wait_for_the_units_other_processes() {
    // v1: the cpuset directory is the driver's to remove. A process systemd's SIGTERM
    // has not ended yet is waited for, then named; it is never moved.
    let root = Root::new();
    root.put(&format!("cpuset/{REL}/cgroup.procs"), "999999\n");
    let fake = FakeSystemd::new(Some(252));
    let mut m = manager(&root, V1, &fake);
    let t0 = Instant::now();
    match m.destroy().unwrap_err() {
        CgroupError::Busy { path, pids } => {
            assert_eq!(pids, [999_999]);
            assert_eq!(path, root.path(&format!("cpuset/{REL}")));
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() >= EXIT_WAIT, "{:?}", t0.elapsed());
    assert_eq!(fake.methods(), ["StopUnit+wait"]);
    assert_eq!(root.read(&format!("cpuset/{REL}/cgroup.procs")), "999999\n");
}

// ---- stopping the unit this process sits in ----

/// A started v2 manager whose cgroup lists this process.
fn inside(root: &Root, fake: &FakeSystemd) -> SystemdManager {
    root.put(
        &format!("{REL}/cgroup.procs"),
        &format!("{}\n", std::process::id()),
    );
    let mut m = manager(root, V2, fake);
    m.add_proc(std::process::id() as i32).unwrap();
    fake.clear_calls();
    m
}

#[test]
fn self_stop_returns_once_systemd_sends_its_sigterm() {
    // Stopping the unit this process sits in ignores SIGTERM meanwhile (process-wide).
    let _serial = crate::sigterm::TEST_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    let mut m = inside(&root, &fake);
    for s in ["running", "running", "stop-sigterm"] {
        fake.on_state("SubState", Ok(s));
    }
    m.destroy().unwrap();
    // The stop job ends only when this process exits: it is not waited for.
    assert_eq!(
        fake.methods(),
        ["StopUnit", "Get SubState", "Get SubState", "Get SubState"]
    );
    assert!(
        fake.calls().contains(&Call::StopNoWait {
            unit: UNIT.into(),
            sigterm_ignored: true
        }),
        "SIGTERM is ignored while the stop is requested"
    );
}

#[test]
fn self_stop_that_never_starts_is_an_error_within_the_timeout() {
    // Stopping the unit this process sits in ignores SIGTERM meanwhile (process-wide).
    let _serial = crate::sigterm::TEST_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    fake.on_state("SubState", Ok("running"));
    let mut m = inside(&root, &fake).with_timeout(Duration::from_millis(50));
    let t0 = Instant::now();
    let msg = unit_message(m.destroy().unwrap_err());
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert_eq!(
        msg,
        "StopUnit: the unit did not start stopping within 0.05 s (state running)"
    );
}

#[test]
fn self_stop_of_a_unit_already_gone_is_success() {
    // Stopping the unit this process sits in ignores SIGTERM meanwhile (process-wide).
    let _serial = crate::sigterm::TEST_SERIAL
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let root = Root::new();
    let fake = FakeSystemd::new(Some(252));
    let mut m = inside(&root, &fake);
    fake.on("StopUnit", Err(no_such_unit(UNIT)));
    m.destroy().unwrap();
    assert_eq!(fake.methods(), ["StopUnit"]);
    // Unloaded between the request and the first look: also done.
    let fake = FakeSystemd::new(Some(252));
    let mut m = inside(&root, &fake);
    fake.on_state("SubState", Err(no_such_unit(UNIT)));
    m.destroy().unwrap();
    assert_eq!(fake.methods(), ["StopUnit", "Get SubState"]);
}

// ---- freezing ----

#[test]
fn freeze_is_freeze_unit_from_systemd_246_and_cgroupfs_before() {
    let root = Root::new();
    root.put(&format!("{REL}/cgroup.freeze"), "0");
    root.put(&format!("{REL}/cgroup.events"), "populated 1\nfrozen 1\n");
    let fake = FakeSystemd::new(Some(246));
    let mut m = manager(&root, V2, &fake);
    m.freeze().unwrap();
    m.thaw().unwrap();
    assert_eq!(fake.methods(), ["FreezeUnit", "ThawUnit"]);
    assert_eq!(root.read(&format!("{REL}/cgroup.freeze")), "0");
    let fake = FakeSystemd::new(Some(245));
    let mut m = manager(&root, V2, &fake);
    m.freeze().unwrap();
    assert_eq!(fake.methods(), Vec::<String>::new());
    assert_eq!(root.read(&format!("{REL}/cgroup.freeze")), "1");
}
