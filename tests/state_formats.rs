//! Upgrades keep every record (issue 20): a state file of each format this project has
//! written (`tests/data/state/`, `src/state.rs` `STATE_FORMAT`) is restored, updated and
//! torn down, or cleaned up, by this version with nothing left on the host; a newer
//! format than this version reads is refused and nothing changes. cgroupfs here and in
//! every test host.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::*;
use host_cgroups::host::CgroupLayout;
use host_cgroups::manager::{FsManager, Manager, VcpuChild};
use host_cgroups::sandbox::{Sandbox, SandboxError, SandboxOptions};
use host_cgroups::state::{SandboxState, StateError, STATE_FORMAT};
use host_cgroups::{CgroupVersion, RuntimeConfig};

/// Restores move this process's threads back home at teardown: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn golden(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("tests/data/state");
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn json_list(dirs: &[PathBuf]) -> String {
    serde_json::to_string(dirs).unwrap()
}

/// The directories a run of `rel` made (outermost first), made now as its leftovers by
/// the driver a run uses (so, on v2, with the controllers enabled at every level as a
/// run leaves them), and the `vcpus` child's when `nested`.
fn leftovers(layout: &CgroupLayout, rel: &str, nested: bool) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut m = FsManager::new(layout, rel);
    m.create().unwrap();
    let created = m.created();
    let mut child = Vec::new();
    if nested {
        let mut c = VcpuChild::adopt(layout, rel, Vec::new());
        c.create().unwrap();
        child = c.dirs().to_vec();
    }
    (created, child)
}

/// `name` filled for this host, written as sandbox `id`'s state file in `state`.
fn write_golden(name: &str, layout: &CgroupLayout, prefix: &str, id: &str, state: &Path) {
    let rel = format!("{prefix}/sb");
    let nested = name.contains("nested");
    let (created, child) = leftovers(layout, &rel, nested);
    let v2 = layout.version() == CgroupVersion::V2;
    let text = golden(name)
        .replace("@ID@", id)
        .replace("@REL@", &rel)
        .replace("@VERSION@", if v2 { "2" } else { "1" })
        .replace(
            "@PLACEMENT@",
            if v2 { "vmm-process" } else { "vcpu-threads" },
        )
        .replace("@CREATED@", &json_list(&created))
        .replace("@CHILD_DIRS@", &json_list(&child));
    std::fs::create_dir_all(state).unwrap();
    let file = SandboxState::file(state, id);
    std::fs::write(&file, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A past run's record on this host: its leftover cgroups (removed by the guard) and a
/// state directory holding golden file `name` (removed on drop, even when a test fails).
struct Past {
    guard: CgroupGuard,
    state: PathBuf,
    id: String,
}

impl Past {
    fn new(tag: &str, name: &str, layout: &CgroupLayout) -> Self {
        let prefix = unique(tag);
        let guard = CgroupGuard::new(&prefix);
        let state = std::env::temp_dir().join(&prefix);
        let id = format!("{prefix}-sb");
        write_golden(name, layout, &prefix, &id, &state);
        Past { guard, state, id }
    }
}

impl Drop for Past {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn config(nested: bool) -> RuntimeConfig {
    let mut c = RuntimeConfig::embedded().unwrap();
    if nested {
        c.sandbox_cgroup_only = false;
        c.vcpu_cgroup_layout = Some(host_cgroups::placement::SplitChoice::Nested);
    }
    c
}

const PAST: [&str; 3] = [
    "format1-first.json",
    "format1-numeric.json",
    "format1-nested.json",
];

#[test]
fn every_past_format_is_cleaned_up_with_nothing_left() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let layout = layout();
    for name in PAST {
        let Past {
            guard, state, id, ..
        } = &Past::new("fmtclean", name, &layout);
        let r = Sandbox::cleanup(state, id).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(r.errors.is_empty(), "{name}: {:?}", r.errors);
        assert!(r.state_removed.is_some(), "{name}: {r:?}");
        assert!(
            guard.leftovers().is_empty(),
            "{name}: {:?}",
            guard.leftovers()
        );
    }
}

#[test]
fn every_past_format_is_restored_updated_and_torn_down() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let layout = layout();
    for name in PAST {
        let Past {
            guard, state, id, ..
        } = &Past::new("fmtrestore", name, &layout);
        let opts = SandboxOptions::default().state_dir(state);
        let sandbox = Sandbox::restore(&config(name.contains("nested")), id, opts)
            .unwrap_or_else(|e| panic!("{name}: restore: {e}"));
        let res = host_cgroups::from_json(r#"{"cpu":{"cpus":"0","shares":512}}"#).unwrap();
        sandbox
            .update_container("ctr-2", &res)
            .unwrap_or_else(|e| panic!("{name}: update: {e}"));
        // The update is recorded in this version's format.
        let text = std::fs::read_to_string(SandboxState::file(state, id)).unwrap();
        assert!(text.contains("ctr-2"), "{name}: {text}");
        let done = sandbox.teardown(|| ());
        assert!(
            done.report.errors.is_empty(),
            "{name}: {:?}",
            done.report.errors
        );
        assert!(!SandboxState::file(state, id).exists(), "{name}");
        assert!(
            guard.leftovers().is_empty(),
            "{name}: {:?}",
            guard.leftovers()
        );
    }
}

#[test]
fn this_version_writes_its_format_and_cleans_it_up() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = unique("fmtnow");
    let guard = CgroupGuard::new(&prefix);
    let state = std::env::temp_dir().join(&prefix);
    let id = format!("{prefix}-sb");
    let opts = SandboxOptions::default().state_dir(&state);
    let sandbox = Sandbox::new(&config(false), &id, &format!("{prefix}/sb"), opts).unwrap();
    let text = std::fs::read_to_string(SandboxState::file(&state, &id)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["format"], STATE_FORMAT, "{text}");
    let _ = sandbox.keep(|| ());
    let r = Sandbox::cleanup(&state, &id).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_newer_format_is_refused_and_nothing_changes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let layout = layout();
    let past = Past::new("fmtnew", "format99-future.json", &layout);
    let (guard, state, id) = (&past.guard, &past.state, &past.id);
    let file = SandboxState::file(state, id);
    let before = std::fs::read(&file).unwrap();
    let dirs = guard.leftovers();
    assert!(!dirs.is_empty());
    for attempt in ["cleanup", "restore"] {
        let e = match attempt {
            "cleanup" => Sandbox::cleanup(state, id).unwrap_err(),
            _ => Sandbox::restore(
                &config(false),
                id,
                SandboxOptions::default().state_dir(state),
            )
            .unwrap_err(),
        };
        assert!(
            matches!(
                e,
                SandboxError::State(StateError::NewerFormat { found: 99, .. })
            ),
            "{attempt}: {e}"
        );
        assert!(e.is_bad_input(), "{attempt}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("format 99") && msg.contains(id.as_str()),
            "{msg}"
        );
        assert_eq!(
            std::fs::read(&file).unwrap(),
            before,
            "{attempt} changed the file"
        );
        assert_eq!(guard.leftovers(), dirs, "{attempt} changed the cgroups");
    }
    // The command says the same, exit 2.
    let out = std::process::Command::new(cli::BIN)
        .args(["cleanup", "--sandbox-id", id, "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);
}
