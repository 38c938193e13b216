//! `Sandbox` rules an embedder and `run` rely on, on this host's real cgroupfs:
//! - an out-of-process hypervisor leaves `Sandbox::start` inactive and `run` refuses it;
//!
//! The library tests move this whole process into their sandbox cgroup, and a child
//! starts in its parent's cgroups: every test holds one lock so that none overlap.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::*;
use host_cgroups::config::RuntimeConfig;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::sandbox::{Sandbox, SandboxOptions};
use host_cgroups::state::SandboxState;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

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
    let plan = SandboxPlan::new(&config, &format!("{prefix}/sb"), &prefix, &layout, None).unwrap();
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
