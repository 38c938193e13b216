//! A runtime whose cgroup mounts show only a subtree of each hierarchy: a container on a
//! cgroup v1 host without a cgroup namespace of its own (Docker's default there). mountinfo
//! gives each mount's root (`/<subtree>`), and `/proc/<pid>/cgroup` names cgroups from the
//! real root, so a sandbox made at `<mount>/x` shows as `/<subtree>/x`. The born check of the
//! vCPU threads and the "is the VMM still there" checks must map one to the other.
//!
//! Made real in the v1 test host only: the child process gets a private mount namespace, moves
//! itself into `<mount>/<subtree>` in every hierarchy and bind-mounts that subtree over each
//! mount point (as a container runtime does), then runs a sandbox. The host's own mounts are
//! never changed (the binds live in the child's namespace, which ends with it).

mod common;

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::skip::skip;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

#[test]
fn a_sandbox_runs_where_only_a_subtree_is_mounted() {
    const NAME: &str = "a_sandbox_runs_where_only_a_subtree_is_mounted";
    if std::env::var("HOSTCG_TESTHOST").as_deref() != Ok("v1") {
        skip(
            NAME,
            "makes bind mounts (in a private mount namespace): the v1 test host only",
        );
        return;
    }
    let layout = layout();
    let sub = unique("subtree");
    let guard = CgroupGuard::new(&sub);
    // Every hierarchy the library uses (systemd's own `name=systemd` is not one).
    let mounts: Vec<_> = layout
        .mounts
        .iter()
        .filter(|(c, _)| !c.starts_with("name="))
        .map(|(_, m)| m.clone())
        .chain(layout.unified.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for m in &mounts {
        let d = m.join(&sub);
        std::fs::create_dir_all(&d).unwrap();
        // v1 cpuset: a new cgroup has no CPUs or memory nodes until given its parent's.
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(m.join(f)) {
                std::fs::write(d.join(f), v.trim()).unwrap();
            }
        }
    }
    let c = |p: &std::path::Path| CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let procs: Vec<CString> = mounts
        .iter()
        .map(|m| c(&m.join(&sub).join("cgroup.procs")))
        .collect();
    let binds: Vec<(CString, CString)> = mounts.iter().map(|m| (c(&m.join(&sub)), c(m))).collect();
    let tmp = std::env::temp_dir().join(&sub);
    let state = tmp.join("state");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--cgroups-path", "rt/sb", "--sandbox-id", &sub])
        .args(["--vcpus", "2", "--duration", "0.3", "--backend", "thread"])
        .args(["--json", "--state-dir"])
        .arg(&state);
    // SAFETY: between fork and exec only raw system calls on memory prepared above
    // (no allocation): unshare, mount, open, write, close.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            let root = c"/";
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            // Into the subtree first (through the host's mounts), as a container's
            // processes are, then the subtree over each mount point.
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return fail();
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return fail();
                }
            }
            for (src, dst) in &binds {
                let null = std::ptr::null();
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    null,
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return fail();
                }
            }
            Ok(())
        });
    }
    let out = output_or_dump(
        &mut cmd,
        std::time::Duration::from_secs(300),
        "run in a subtree",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The vCPU threads were born where the plan put them, as /proc names it from the real root.
    let want = format!("/{sub}/rt/sb");
    let vcpus = v["vcpus"].as_array().unwrap();
    assert_eq!(vcpus.len(), 2, "{v}");
    for t in vcpus {
        assert_eq!(t["cgroups"]["cpu"], want.as_str(), "{t}");
        assert_eq!(t["cgroups"]["memory"], want.as_str(), "{t}");
    }
    // The sandbox cgroup was made inside the subtree and is gone again; the subtree stays
    // for the guard (the run's process, its only member, has exited).
    for m in &mounts {
        assert!(!m.join(&sub).join("rt").exists(), "{} left", m.display());
    }
    drop(guard);
    let _ = std::fs::remove_dir_all(&tmp);
}
