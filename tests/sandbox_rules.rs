//! `Sandbox` rules an embedder and `run` rely on, on this host's real cgroupfs:
//! - an out-of-process hypervisor leaves `Sandbox::start` inactive and `run` refuses it;
//! - two sandboxes cannot share one sandbox cgroup (library and CLI);
//! - the teardown report lists every directory it removed, created parents included.
//!
//! The library tests move this whole process into their sandbox cgroup, and a child
//! starts in its parent's cgroups: every test holds one lock so that none overlap.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::cli::run_args;
use common::*;
use host_cgroups::config::RuntimeConfig;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::resources::from_json;
use host_cgroups::sandbox::{Sandbox, SandboxError, SandboxOptions};
use host_cgroups::state::SandboxState;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");
/// Generous: a loaded machine is slow, and slowness must not fail a test.
const WAIT: Duration = Duration::from_secs(120);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A state directory removed on drop.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn qemu_config(dir: &Path) -> (PathBuf, RuntimeConfig) {
    let p = dir.join("qemu.toml");
    let text = "[hypervisor.qemu]\ndefault_vcpus = 1\n[runtime]\nhypervisor_name = \"qemu\"\n";
    std::fs::write(&p, text).unwrap();
    let c = RuntimeConfig::parse(text, &p).unwrap();
    (p, c)
}

fn dragonball_config(dir: &Path) -> PathBuf {
    let p = dir.join("dragonball.toml");
    std::fs::write(
        &p,
        "[hypervisor.dragonball]\ndefault_vcpus = 1\ndefault_maxvcpus = 2\n\
         [runtime]\nhypervisor_name = \"dragonball\"\nsandbox_cgroup_only = true\n",
    )
    .unwrap();
    p
}

fn own_cgroups() -> String {
    std::fs::read_to_string("/proc/self/cgroup").unwrap()
}

/// Every directory named `prefix` in any hierarchy, or below it.
fn anything_under(layout: &host_cgroups::host::CgroupLayout, prefix: &str) -> Vec<PathBuf> {
    layout
        .mount_points()
        .into_iter()
        .map(|m| m.join(prefix))
        .filter(|d| d.exists())
        .collect()
}

#[test]
fn start_with_an_out_of_process_hypervisor_touches_nothing() {
    let _s = serial();
    let layout = layout();
    let prefix = unique("oop");
    let guard = CgroupGuard::new(&prefix);
    let dir = TmpDir::new("oop-state");
    let (_, config) = qemu_config(&dir.0);
    let plan = SandboxPlan::new(&config, &prefix, &format!("{prefix}/sb"), &layout, None).unwrap();
    let before = own_cgroups();
    let sb = Sandbox::start(&config, plan, SandboxOptions::default().state_dir(&dir.0)).unwrap();
    assert!(!sb.is_active(), "{:?}", sb.activation());
    assert!(sb.plan().is_none());
    assert!(sb.paths().is_empty());
    assert!(sb.state_file().is_none());
    assert!(anything_under(&layout, &prefix).is_empty());
    assert!(!SandboxState::file(&dir.0, &prefix).exists());
    assert_eq!(own_cgroups(), before, "start moved this process");
    // Its hooks confirm at once and its teardown removes nothing.
    sb.hooks().vcpu_started(0).unwrap();
    let t = sb.teardown(|| ());
    assert!(t.report.removed.is_empty(), "{:?}", t.report.removed);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}

#[test]
fn run_refuses_an_out_of_process_hypervisor_and_changes_nothing() {
    let _s = serial();
    let layout = layout();
    let prefix = unique("oop-run");
    let guard = CgroupGuard::new(&prefix);
    let dir = TmpDir::new("oop-run-state");
    let (cfg, _) = qemu_config(&dir.0);
    let out = Command::new(BIN)
        .args(["run", "--json", "--duration", "0", "--config"])
        .arg(&cfg)
        .args(["--cgroups-path", &format!("{prefix}/sb")])
        .args(["--sandbox-id", &prefix, "--state-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout {stdout}\nstderr {stderr}"
    );
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains(r#"hypervisor_name = \"qemu\""#)
            || all.contains(r#"hypervisor_name = "qemu""#),
        "{all}"
    );
    assert!(all.contains("inactive"), "{all}");
    assert!(anything_under(&layout, &prefix).is_empty());
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
    assert!(!SandboxState::file(&dir.0, &prefix).exists());
}

#[test]
fn a_second_sandbox_on_the_same_path_is_refused_and_teardown_reports_parents() {
    let _s = serial();
    let prefix = unique("share");
    let guard = CgroupGuard::new(&prefix);
    let dir = TmpDir::new("share-state");
    let other_dir = TmpDir::new("share-other");
    let config = RuntimeConfig::embedded().unwrap();
    let path = format!("{prefix}/sb");
    let a_id = format!("{prefix}-a");
    let b_id = format!("{prefix}-b");
    let opts = |d: &Path| SandboxOptions::default().state_dir(d);
    let a = Sandbox::new(&config, &a_id, &path, opts(&dir.0)).unwrap();
    assert!(a.is_active());
    let dirs_before = guard.leftovers();

    // (a) Same state directory: A's state file names the path.
    match Sandbox::new(&config, &b_id, &path, opts(&dir.0)) {
        Err(e @ SandboxError::PathInUse { .. }) => {
            assert!(e.is_bad_input());
            let msg = e.to_string();
            assert!(msg.contains(&path) && msg.contains(&a_id), "{msg}");
            let SandboxError::PathInUse { other_sandbox, .. } = e else {
                unreachable!()
            };
            assert_eq!(other_sandbox.as_deref(), Some(a_id.as_str()));
        }
        other => panic!("second sandbox not refused: {other:?}"),
    }
    // (b) Another state directory: the cgroup holds processes (this one).
    match Sandbox::new(&config, &b_id, &path, opts(&other_dir.0)) {
        Err(e @ SandboxError::PathInUse { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path) && msg.contains("cgroup.procs"), "{msg}");
            assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        }
        other => panic!("second sandbox not refused: {other:?}"),
    }
    // Nothing was created or written for B, and A still works.
    assert_eq!(guard.leftovers(), dirs_before);
    assert!(!SandboxState::file(&dir.0, &b_id).exists());
    assert!(!SandboxState::file(&other_dir.0, &b_id).exists());
    let cpu = host_cgroups::host::online_cpus()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let r = from_json(&format!(r#"{{"cpu":{{"cpus":"{cpu}"}}}}"#)).unwrap();
    a.update_container("c1", &r).unwrap();

    // A's teardown lists its sandbox cgroup and the parent it created.
    let t = a.teardown(|| ());
    assert!(t.report.errors.is_empty(), "{:?}", t.report.errors);
    assert_eq!(t.report.removed, vec![path.clone(), prefix.clone()]);
    assert!(t.report.standing.is_empty(), "{:?}", t.report.standing);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
    assert!(!SandboxState::file(&dir.0, &a_id).exists());
}

#[test]
fn an_empty_leftover_is_adopted_and_restore_of_the_same_id_works() {
    let _s = serial();
    let layout = layout();
    let prefix = unique("adopt");
    let guard = CgroupGuard::new(&prefix);
    let dir = TmpDir::new("adopt-state");
    let config = RuntimeConfig::embedded().unwrap();
    let path = format!("{prefix}/sb");
    // A leftover with no process in it (a crashed run whose state is gone).
    for m in layout.mount_points() {
        std::fs::create_dir_all(m.join(&path)).unwrap();
    }
    let id = format!("{prefix}-a");
    let opts = || SandboxOptions::default().state_dir(&dir.0);
    let a = Sandbox::new(&config, &id, &path, opts()).unwrap();
    // Kept (the process "restarts"), then restored under the same id: not a second sandbox.
    let kept = a.keep(|| ());
    assert!(kept.report.kept);
    let a = Sandbox::restore(&config, &id, opts()).unwrap();
    let t = a.teardown(|| ());
    assert!(t.report.errors.is_empty(), "{:?}", t.report.errors);
    assert!(t.report.removed.contains(&path), "{:?}", t.report.removed);
    drop(guard);
    assert!(anything_under(&layout, &prefix).is_empty());
}

/// A `host-cgroups run` child, killed by its pid on drop.
struct RunChild(Option<std::process::Child>);

impl RunChild {
    fn wait_running(&mut self) {
        use std::io::BufRead;
        let err = self.0.as_mut().unwrap().stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(err).lines();
        let start = Instant::now();
        while start.elapsed() < WAIT {
            match lines.next() {
                Some(Ok(l)) if l.contains("running:") => {
                    // Keep draining stderr so the child never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines.by_ref() {});
                    return;
                }
                Some(_) => {}
                None => break,
            }
        }
        panic!("run never reported running");
    }
}

impl Drop for RunChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_second_run_on_the_same_path_exits_2_and_the_first_reports_every_removed_dir() {
    let _s = serial();
    let prefix = unique("share-run");
    let guard = CgroupGuard::new(&prefix);
    let dir = TmpDir::new("share-run-state");
    let other_dir = TmpDir::new("share-run-other");
    let cfg = dragonball_config(&dir.0);
    let path = format!("{prefix}/sb");
    let a_id = format!("{prefix}-a");
    let spawn = |id: &str, state: &Path, duration: &str| {
        Command::new(BIN)
            .args([
                "run",
                "--json",
                "--backend",
                "thread",
                "--duration",
                duration,
            ])
            .arg("--config")
            .arg(&cfg)
            .args(["--cgroups-path", &path, "--sandbox-id", id, "--state-dir"])
            .arg(state)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut a = RunChild(Some(spawn(&a_id, &dir.0, "600")));
    a.wait_running();
    let dirs_before = guard.leftovers();
    for (state, needle) in [(&dir.0, a_id.as_str()), (&other_dir.0, "cgroup.procs")] {
        let b_id = format!("{prefix}-b");
        let out = spawn(&b_id, state, "0").wait_with_output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{all}");
        assert!(all.contains(&path) && all.contains(needle), "{all}");
        assert!(!SandboxState::file(state, &b_id).exists());
        assert_eq!(guard.leftovers(), dirs_before);
    }
    // A ends on SIGTERM (sent to the child we started, by its pid) and cleans up.
    let mut child = a.0.take().unwrap();
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let removed: Vec<&str> = v["cleanup"]["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(removed, vec![path.as_str(), prefix.as_str()], "{out}");
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
    assert!(!SandboxState::file(&dir.0, &a_id).exists());
}

#[test]
fn the_process_moves_in_and_back_and_a_dropped_sandbox_is_cleaned_up_from_itself() {
    let _s = serial();
    let layout = layout();
    let prefix = unique("where");
    let guard = CgroupGuard::new(&prefix);
    let dir = TmpDir::new("where-state");
    let config = RuntimeConfig::embedded().unwrap();
    let path = format!("{prefix}/sb");
    let me = std::process::id() as i32;
    // A second thread of this process, started before the sandbox.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let _ = stop_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    let task = |t: i32| std::fs::read_to_string(format!("/proc/self/task/{t}/cgroup")).unwrap();
    let before = (task(me), task(tid));

    // new: the whole process, every thread, in the sandbox cgroup (sandbox-only layout).
    let id = format!("{prefix}-a");
    let opts = || SandboxOptions::default().state_dir(&dir.0);
    let sb = Sandbox::new(&config, &id, &path, opts()).unwrap();
    assert_in(&layout, me, me, &path);
    assert_in(&layout, me, tid, &path);
    // teardown: back where the process was.
    let t = sb.teardown(|| ());
    assert!(t.report.errors.is_empty(), "{:?}", t.report.errors);
    assert_eq!((task(me), task(tid)), before);

    // A dropped sandbox leaves its cgroups, its state and this process where they are.
    let sb = Sandbox::new(&config, &id, &path, opts()).unwrap();
    drop(sb);
    assert!(SandboxState::file(&dir.0, &id).exists());
    assert!(!guard.leftovers().is_empty());
    assert_in(&layout, me, tid, &path);
    // cleanup from this very process: not refused, removes everything (the parent it
    // made included) and moves this process's threads out to the hierarchy roots.
    let r = Sandbox::cleanup(&dir.0, &id).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.removed, vec![path.clone(), prefix.clone()]);
    assert!(r.state_removed.is_some());
    assert_in(&layout, me, me, "");
    assert_in(&layout, me, tid, "");
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
    stop_tx.send(()).unwrap();
    helper.join().unwrap();
}

/// Rule (a) for a systemd path: the state file records the unit, not its cgroup path.
/// Only the state directory is read (`preflight` changes nothing and asks no systemd).
#[test]
fn a_state_file_naming_the_same_systemd_unit_refuses_the_path() {
    let layout = layout();
    let dir = TmpDir::new("sd-state");
    let config = RuntimeConfig::embedded().unwrap();
    let tag = unique("sd");
    let path = format!("system.slice:{tag}:pod");
    let plan = |id: &str| SandboxPlan::new(&config, id, &path, &layout, None).unwrap();
    let a = plan("sda");
    let state = SandboxState {
        format: host_cgroups::state::STATE_FORMAT,
        sandbox_id: "sda".into(),
        driver: a.driver,
        cgroup_version: a.version(),
        placement: a.placement,
        sandbox_cgroup_only: a.sandbox_cgroup_only,
        enable_vcpus_pinning: false,
        vmm_pid: 0,
        sandbox: host_cgroups::state::CgroupState {
            path: a.sandbox.parsed.clone(),
            created: Vec::new(),
        },
        overhead: None,
        vcpu_layout: Some(a.vcpu_layout),
        vcpus: None,
        containers: Default::default(),
        sandbox_resources: None,
    };
    state.save(&dir.0).unwrap();
    let opts = SandboxOptions::default().state_dir(&dir.0);
    match Sandbox::preflight(&plan("sdb"), &opts) {
        Err(SandboxError::PathInUse { other_sandbox, .. }) => {
            assert_eq!(other_sandbox.as_deref(), Some("sda"))
        }
        other => panic!("not refused: {other:?}"),
    }
    // Another unit in the same slice is not the same cgroup.
    let other = SandboxPlan::new(
        &config,
        "sdb",
        &format!("system.slice:{tag}:pod2"),
        &layout,
        None,
    )
    .unwrap();
    assert!(Sandbox::preflight(&other, &opts).is_ok());
}

/// One path, one sandbox, atomically (issue 20): two `run`s on one cgroups path started
/// at the same instant, twenty times. Each time exactly one wins and runs; the other is
/// refused with exit 2, naming the winner, and changes nothing of it (the winner runs
/// on, then stops cleanly leaving no cgroup, state file or claim).
#[test]
fn two_starts_on_one_path_at_once_one_wins_the_other_is_refused() {
    let _g = serial();
    let prefix = unique("race");
    let guard = CgroupGuard::new(&prefix);
    let dir = TmpDir::new("race");
    let path = format!("{prefix}/sb");
    for i in 0..20 {
        let ids = [format!("{prefix}-a{i}"), format!("{prefix}-b{i}")];
        let start = |id: &str| {
            run_args(&path, id, &dir.0)
                .duration("600")
                .vcpus(1)
                .backend("thread")
                .spawn()
        };
        let mut runs = [Some(start(&ids[0])), Some(start(&ids[1]))];
        // The loser exits at once; the winner runs until it is stopped.
        let t0 = Instant::now();
        let loser = loop {
            if let Some(k) =
                (0..2).find(|k| runs[*k].as_mut().is_some_and(|r| r.try_status().is_some()))
            {
                break k;
            }
            assert!(t0.elapsed() < WAIT, "round {i}: neither start was refused");
            std::thread::sleep(Duration::from_millis(10));
        };
        let winner = 1 - loser;
        let (status, _, lines) = runs[loser].take().unwrap().finish();
        assert_eq!(status.code(), Some(2), "round {i}: {lines:#?}");
        assert!(
            lines.iter().any(|l| l.contains(&ids[winner])),
            "round {i}: the refusal does not name {}: {lines:#?}",
            ids[winner]
        );
        let mut w = runs[winner].take().unwrap();
        w.wait_for("running:");
        assert!(w.try_status().is_none(), "round {i}: the winner stopped");
        assert!(w.stop().success(), "round {i}: the winner's run failed");
        assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
        let left: Vec<PathBuf> = walk_files(&dir.0);
        assert!(
            left.is_empty(),
            "round {i}: left in the state dir: {left:?}"
        );
    }
}

/// Every file below `dir` (directories themselves are not listed).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
