//! SIGKILL at many points of start-up and teardown, then `cleanup`: nothing the
//! run created is left, and nothing it did not create is touched. Also: an
//! error while persisting state rolls the cgroups back.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

/// Every cgroup directory on the host except test-owned ones (`hcg*`): what a run must not touch.
fn foreign_tree() -> Vec<PathBuf> {
    // Every top-level cgroup, and everything below the shared `kata_*` parents: the only
    // places this component creates in besides its own `hcg*` names. Below a foreign
    // top-level cgroup only its owner creates and removes (the host's own services do,
    // while this test runs), so it is not walked.
    fn walk(d: &Path, top: bool, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("hcg") {
                        continue;
                    }
                    out.push(p.clone());
                    if !top || name.starts_with("kata_") {
                        walk(&p, false, out);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for m in mounts(&layout()) {
        walk(&m, true, &mut out);
    }
    // The shared parents themselves come and go with the sandboxes (and the guards of
    // tests running beside this one); what matters is what is below them.
    out.retain(|p| {
        let s = p.to_string_lossy();
        !s.contains("/kata_overhead/hcg") && !s.ends_with("/kata_overhead")
    });
    out.sort();
    out
}

fn run_with(
    failpoint: &str,
    prefix: &str,
    id: &str,
    cfg: &str,
    state: &str,
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "--config",
        cfg,
        "--cgroups-path",
        &format!("{prefix}/sb"),
        "--sandbox-id",
        id,
        "--vcpus",
        "3",
        "--duration",
        "0.2",
        "--state-dir",
        state,
        "--resources",
        r#"{"cpu":{"quota":50000,"period":100000}}"#,
    ])
    .env("HOST_CGROUPS_FAILPOINT", failpoint);
    output_or_dump(&mut cmd, HANG, &format!("run with {failpoint}"))
}

/// A run here takes under a second (the VMM runs 0.2 s); one still going after this hangs.
const HANG: std::time::Duration = std::time::Duration::from_secs(300);

#[test]
fn sigkill_at_every_step_then_cleanup_leaves_nothing() {
    let layout = layout();
    let hiers = layout.controllers().len();
    let tmp = std::env::temp_dir().join(unique("crash"));
    std::fs::create_dir_all(&tmp).unwrap();
    let cfg = tmp.join("c.toml");
    // sandbox_cgroup_only = false: an overhead cgroup too, where the layout allows one.
    std::fs::write(
        &cfg,
        "[hypervisor.dragonball]\ndefault_maxvcpus = 8\n[runtime]\nsandbox_cgroup_only = false\n",
    )
    .unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let state = tmp.join("state").to_string_lossy().into_owned();

    let mut points: Vec<String> = vec![
        "state-save:1",
        "create-sandbox",
        "set-resources",
        "add-proc",
        "state-save:2",
        "supervisor-started",
        "vcpu-placed:1",
        "vcpu-placed:2",
        "vcpu-placed:3",
        "vmm-started",
        "vmm-stopped",
        "state-remove",
        "fs-write:1",
        "fs-write:2",
        "fs-write:3",
        "fs-write:4",
        "fs-write:5",
        "fs-write:6",
        "fs-write:7",
        "fs-write:9",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // The overhead cgroup exists only in the sibling layout: cgroup v1 with cgroupfs.
    if layout.version() == host_cgroups::host::CgroupVersion::V1 {
        points.push("create-overhead".into());
    }
    // Directory creation and removal, one hit at a time through the hierarchies.
    let dirs = if layout.version() == host_cgroups::host::CgroupVersion::V1 {
        hiers
    } else {
        1
    };
    for n in [1, 2, dirs, dirs + 1, 2 * dirs, 2 * dirs + 1, 4 * dirs] {
        points.push(format!("fs-mkdir:{n}"));
    }
    for n in [1, 2, dirs, dirs + 1] {
        points.push(format!("fs-rmdir:{n}"));
    }
    points.sort();
    points.dedup();

    let before = foreign_tree();
    let mut killed = 0;
    for (i, point) in points.iter().enumerate() {
        eprintln!("crash: {point}");
        let prefix = unique("crash");
        let guard = CgroupGuard::new(&prefix);
        let _overhead = CgroupGuard::new(&format!("kata_overhead/{prefix}"))
            .and_parent_if_empty("kata_overhead");
        // Unique: the overhead cgroup is named after the sandbox id.
        let id = format!("{prefix}-{i}");
        let out = run_with(&format!("{point}=kill"), &prefix, &id, &cfg, &state);
        let was_killed = out.status.signal() == Some(libc::SIGKILL);
        if !was_killed {
            common::assert_allowed_unreached(point, &out);
            assert!(
                guard.leftovers().is_empty(),
                "{point}: normal run left {:?}",
                guard.leftovers()
            );
            continue;
        }
        killed += 1;
        let c = output_or_dump(
            Command::new(BIN).args(["cleanup", "--state-dir", &state, "--sandbox-id", &id]),
            HANG,
            &format!("cleanup after {point}"),
        );
        let err = String::from_utf8_lossy(&c.stderr);
        // Killed after the state file was removed: the cgroups are already gone too.
        let no_state = err.contains("No such file");
        assert!(
            c.status.success() || no_state,
            "{point}: cleanup failed: {err}"
        );
        assert!(
            guard.leftovers().is_empty(),
            "{point}: left {:?}",
            guard.leftovers()
        );
        let overhead_left: Vec<_> = mounts(&layout)
            .into_iter()
            .map(|m| m.join("kata_overhead").join(&prefix))
            .filter(|p| p.exists())
            .collect();
        assert!(overhead_left.is_empty(), "{point}: left {overhead_left:?}");
        assert!(
            !Path::new(&state).join(format!("{id}.json")).exists(),
            "{point}: state left"
        );
        let after = foreign_tree();
        let added: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
        let removed: Vec<_> = before.iter().filter(|p| !after.contains(p)).collect();
        assert!(
            added.is_empty() && removed.is_empty(),
            "{point}: touched cgroups it did not create: added {added:?}, removed {removed:?}"
        );
    }
    assert!(
        killed >= 20,
        "only {killed} of {} points were reached",
        points.len()
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn state_write_failure_rolls_the_cgroups_back() {
    let prefix = unique("stfail");
    let guard = CgroupGuard::new(&prefix);
    let tmp = std::env::temp_dir().join(&prefix);
    let state = tmp.join("state").to_string_lossy().into_owned();
    let cfg = tmp.join("c.toml");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(&cfg, "[hypervisor.dragonball]\n").unwrap();
    // Unique: the overhead cgroup is named after the sandbox id.
    let id = format!("{prefix}-sb");
    // The second save (after the cgroups exist) fails as a full disk would.
    let out = run_with(
        "state-save:2=error",
        &prefix,
        &id,
        &cfg.to_string_lossy(),
        &state,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{id}.json")), "{err}");
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
    assert!(!tmp.join(format!("state/{id}.json")).exists());
    // A state directory that cannot be created: a clear error, nothing made.
    let out = Command::new(BIN)
        .args([
            "run",
            "--cgroups-path",
            &format!("{prefix}/sb"),
            "--sandbox-id",
            "ro",
            "--state-dir",
            "/proc/hcg-state",
            "--duration",
            "0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/proc/hcg-state"), "{err}");
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
    std::fs::remove_dir_all(&tmp).unwrap();
}
