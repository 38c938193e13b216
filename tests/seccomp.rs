//! The library's work after `StartMicroVm` under runtime-rs' process-wide seccomp
//! allow-list, as dragonball installs it there (every thread, TSYNC, action Trap): vCPU
//! placement at boot and hotplug, unplug, container updates, stats and teardown, with the
//! demo VMM (the filter is data; the real dragonball runs the same flows in
//! `integrations/dragonball`). cgroupfs on every host; the systemd driver, whose D-Bus
//! calls are the ones most likely to need a syscall the list lacks, in the sd test hosts.
//!
//! The list is read at build time from runtime-rs' `seccomp.rs` in the Kata source
//! tarball (build.rs). A filter cannot be removed, so each flow runs in a child: this test
//! binary again, with one test and `HCG_SECCOMP_CHILD` set. A syscall outside the list
//! makes the child print its number (SIGSYS handler) and exit 97.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::resources::from_json;
use host_cgroups::sandbox::{Sandbox, SandboxOptions};
use seccompiler::{SeccompAction, SeccompFilter};

include!(concat!(env!("OUT_DIR"), "/runtime_rs_seccomp.rs"));

const CHILD: &str = "HCG_SECCOMP_CHILD";
const DONE: &str = "host-cgroups seccomp flow done";

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS; its _sigsys member starts at
    // offset 16 with `void *call_addr`, then `int syscall`.
    let nr = unsafe { *((info as *const u8).add(24) as *const libc::c_int) };
    let msg = format!("SIGSYS: syscall {nr} is not in runtime-rs' allow-list\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe and on the list.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(97);
    }
}

/// Installs the list on every thread of this process, as dragonball does at
/// `StartMicroVm` with runtime-rs' `ALL_THREADS` filter.
fn install_runtime_rs_filter() {
    assert!(
        !RUNTIME_RS_ALLOW.is_empty(),
        "runtime-rs' allow-list is empty: the Kata tarball was not found at build time \
         (../shared/reference/kata/kata-containers-*.tar.xz, or HCG_KATA_TARBALL)"
    );
    // SAFETY: a handler that only writes and exits.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        assert_eq!(libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()), 0);
    }
    let rules = RUNTIME_RS_ALLOW
        .iter()
        .map(|(_, nr)| (*nr, vec![]))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap();
    let prog: seccompiler::BpfProgram = filter.try_into().unwrap();
    seccompiler::apply_filter_all_threads(&prog).unwrap();
}

fn shipped_config() -> RuntimeConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/data/configuration-dragonball.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            "\nsandbox_cgroup_only = true\n",
            "\nsandbox_cgroup_only = false\n",
        )
        .replace(
            "\n[runtime]\n",
            "\n[runtime]\nvcpu_cgroup_layout = \"nested\"\nenable_vcpus_pinning = true\n",
        );
    RuntimeConfig::parse(&text, &path).unwrap()
}

/// In the child: the nested flow under the filter, then `_exit(0)` after the marker.
fn child_flow(cgroups_path: &str, id: &str, state_dir: &Path) {
    let sandbox = Sandbox::new(
        &shipped_config(),
        id,
        cgroups_path,
        SandboxOptions::default().state_dir(state_dir),
    )
    .unwrap();
    let mut vmm = Vmm::new(
        VmmConfig {
            vcpus: 2,
            max_vcpus: 3,
            backend: BackendChoice::Auto,
        },
        sandbox.hooks_for_boot(2),
    )
    .unwrap();
    install_runtime_rs_filter();
    vmm.start().unwrap();
    vmm.hotplug(1).unwrap();
    let placed = sandbox.vcpus();
    assert_eq!(placed.len(), 3, "{placed:?}");
    assert!(placed.iter().all(|v| v.error.is_none()), "{placed:?}");
    sandbox
        .update_container(
            "c0",
            &from_json(r#"{"cpu":{"cpus":"0","quota":50000,"period":100000}}"#).unwrap(),
        )
        .unwrap();
    sandbox.remove_container("c0").unwrap();
    vmm.unplug(1).unwrap();
    let stats = sandbox.stats().unwrap().unwrap();
    assert!(stats.cpu_usage_ns > 0, "{stats:?}");
    let done = sandbox.teardown(|| vmm.stop());
    assert!(done.vmm.is_ok(), "{:?}", done.vmm);
    assert!(done.report.errors.is_empty(), "{:?}", done.report);
    println!("{DONE}");
    let _ = std::io::stdout().flush();
    // SAFETY: ends the child here; the harness's own exit path is not the subject.
    unsafe { libc::_exit(0) };
}

/// In the parent: runs `test` again as a child with `cgroups_path`, checks its outcome
/// from its exit status and output, and removes what a child killed half-way left.
fn run_child(test: &str, cgroups_path: &str) {
    let id = common::unique("seccomp");
    let state_dir = std::env::temp_dir().join(format!("{id}-state"));
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(
            CHILD,
            format!("{cgroups_path}\n{id}\n{}", state_dir.display()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let state = state_dir.join(format!("{id}.json"));
    if state.exists() {
        eprintln!(
            "cleanup after the child: {:?}",
            Sandbox::cleanup(&state_dir, &id).map(|r| r.removed)
        );
    }
    let _ = std::fs::remove_dir_all(&state_dir);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "the flow under runtime-rs' allow-list ({RUNTIME_RS_SECCOMP_SOURCE}) failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// In the child (`HCG_SECCOMP_CHILD` set): runs the flow it names and returns true.
fn in_child() -> bool {
    let Ok(args) = std::env::var(CHILD) else {
        return false;
    };
    let mut it = args.lines();
    let (path, id, dir) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    child_flow(path, id, &PathBuf::from(dir));
    true
}

#[test]
fn cgroupfs_flow_under_runtime_rs_seccomp() {
    if in_child() {
        return;
    }
    let guard = common::CgroupGuard::new(&common::unique("seccomp-fs"));
    run_child(
        "cgroupfs_flow_under_runtime_rs_seccomp",
        &format!("{}/sb", guard.prefix),
    );
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}

#[test]
fn systemd_flow_under_runtime_rs_seccomp() {
    if in_child() || !common::systemd::needs_systemd("systemd_flow_under_runtime_rs_seccomp") {
        return;
    }
    let slice = common::systemd::SliceGuard::new();
    run_child("systemd_flow_under_runtime_rs_seccomp", &slice.path("sb"));
}

#[test]
fn the_list_is_runtime_rs_own() {
    // The list came from the tarball (not a copy kept here) and has what the library is
    // known to need beside what it must avoid.
    assert!(
        !RUNTIME_RS_SECCOMP_SOURCE.is_empty(),
        "the Kata tarball was not found at build time"
    );
    let has = |n: &str| RUNTIME_RS_ALLOW.iter().any(|(name, _)| *name == n);
    for needed in [
        "openat",
        "write",
        "renameat",
        "sched_setaffinity",
        "flock",
        "mkdir",
    ] {
        assert!(has(needed), "{needed} is not on the list");
    }
    // std::fs::rename uses rename(2): the state save must not (state.rs, rename_at).
    assert!(!has("rename"));
}
