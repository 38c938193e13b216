//! Bad input gets exit code 2, a message naming the bad value, and changes
//! nothing: every cgroup hierarchy is walked before and after.

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::cleanup;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

/// Every directory below every cgroup mount (a cgroup's files are fixed by its controllers).
fn tree(own: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path());
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = Vec::new();
    for m in mounts(&layout()) {
        walk(&m, &mut out);
    }
    // Other test binaries do not run at the same time, but other processes on a
    // shared host may; only names that could be ours are compared.
    out.retain(|p| {
        let s = p.to_string_lossy();
        s.contains(own) || s.contains("kata_") || s.contains("kata-")
    });
    out.sort();
    out
}

fn state_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

struct Case {
    args: Vec<OsString>,
    needle: String,
}

fn case(args: &[&str], needle: &str) -> Case {
    Case {
        args: args.iter().map(OsString::from).collect(),
        needle: needle.to_string(),
    }
}

#[test]
fn bad_paths_configs_and_resources_change_nothing() {
    let prefix = unique("bad");
    let _guard = CgroupGuard::new(&prefix);
    let tmp = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&tmp).unwrap();
    let state = tmp.join("state");
    let st = state.to_string_lossy().into_owned();
    let cfg = |name: &str, body: &str| -> String {
        let p = tmp.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_string_lossy().into_owned()
    };
    let wrong_type = cfg(
        "wrong.toml",
        "[hypervisor.dragonball]\ndefault_vcpus = \"two\"\n",
    );
    let neg_max = cfg(
        "negmax.toml",
        "[hypervisor.dragonball]\ndefault_maxvcpus = -4\n",
    );
    let syntax = cfg("syntax.toml", "[hypervisor.dragonball\n");
    let a_dir = tmp.to_string_lossy().into_owned();
    let ok_path = format!("{prefix}/sb");

    let long_name = "n".repeat(5000);
    let deep: String = vec!["abcdefgh"; 600].join("/");
    let offline = format!("0-{}", 511);
    let mut cases = vec![
        case(&["--cgroups-path", ".."], ".."),
        case(&["--cgroups-path", "../x"], "../x"),
        case(&["--cgroups-path", "a/.."], "a/.."),
        case(&["--cgroups-path", "/a/../../b"], "/a/../../b"),
        case(&["--cgroups-path", "a/b/.."], "a/b/.."),
        case(&["--cgroups-path", "/"], "\"/\""),
        case(&["--cgroups-path", "a\nb"], "a\\nb"),
        case(&["--cgroups-path", &long_name], "5000"),
        case(&["--cgroups-path", &deep], "abcdefgh"),
        case(&["--cgroups-path", "a:b"], "a:b"),
        case(&["--cgroups-path", "a.slice:b"], "a.slice:b"),
        case(&["--cgroups-path", "a.slice:b:c:d"], "a.slice:b:c:d"),
        case(&["--cgroups-path", "a--b.slice:p:n"], "a--b.slice"),
        case(&["--cgroups-path", "-a.slice:p:n"], "-a.slice"),
        case(&["--cgroups-path", "a-.slice:p:n"], "a-.slice"),
        case(&["--cgroups-path", ".slice:p:n"], ".slice"),
        case(&["--cgroups-path", "x.slice:p:n m"], "n m"),
        case(&["--cgroups-path", "x.slice:p/q:n"], "p/q"),
        case(&["--cgroups-path", "cgroup.procs"], "cgroup.procs"),
        case(&["--sandbox-id", "a/b"], "a/b"),
        case(&["--sandbox-id", ".."], ".."),
        case(&["--config", &wrong_type], "default_vcpus"),
        case(&["--config", &neg_max], "default_maxvcpus"),
        case(&["--config", &syntax], "syntax.toml"),
        case(
            &["--config", "/nonexistent/configuration.toml"],
            "/nonexistent/configuration.toml",
        ),
        case(&["--config", &a_dir], &a_dir),
        case(&["--vcpus", "0"], "0"),
        case(&["--vcpus", "-2"], "-2"),
        case(&["--resources", r#"{"cpu":{"cpus":"0-"}}"#], "0-"),
        case(&["--resources", r#"{"cpu":{"cpus":"3-1"}}"#], "3-1"),
        case(
            &[
                "--resources",
                &format!(r#"{{"cpu":{{"cpus":"{offline}"}}}}"#),
            ],
            &offline,
        ),
        case(&["--resources", r#"{"cpu":{"mems":"0-63"}}"#], "0-63"),
        case(&["--resources", r#"{"cpu":{"quota":0}}"#], "cpu.quota"),
        case(
            &["--resources", r#"{"cpu":{"quota":17592186044416}}"#],
            "17592186044416",
        ),
        case(&["--resources", r#"{"cpu":{"period":999}}"#], "999"),
        case(&["--resources", r#"{"cpu":{"period":1000001}}"#], "1000001"),
        case(&["--resources", r#"{"memory":{"limit":-2}}"#], "-2"),
        case(&["--resources", r#"{"memory":{"limit":-3}}"#], "-3"),
        case(&["--resources", "not json"], "not json"),
        case(
            &["--resources", "@/nonexistent/res.json"],
            "/nonexistent/res.json",
        ),
        // A memory limit under 6 MiB where the VMM process is in the sandbox cgroup (the
        // default sandbox_cgroup_only = true) would OOM-kill the runtime itself.
        case(&["--resources", r#"{"memory":{"limit":4096}}"#], "6291456"),
        case(
            &["--resources", r#"{"memory":{"limit":1}}"#],
            "memory.limit = 1",
        ),
        case(&["--hotplug", "200"], "200"),
        case(&["--duration", "-1"], "-1"),
        case(&["--backend", "quantum"], "quantum"),
    ];
    // Non-UTF-8 bytes in the path.
    cases.push(Case {
        args: vec![
            OsString::from("--cgroups-path"),
            OsString::from_vec(b"a/\xff\xfe".to_vec()),
        ],
        needle: "UTF-8".into(),
    });

    // A parent whose cpuset grants only the first CPU refuses a sandbox asking for another.
    let online = host_cgroups::host::online_cpus().unwrap();
    let layout = layout();
    let cpuset_parent = match layout.version() {
        host_cgroups::host::CgroupVersion::V1 => {
            layout.mounts.get("cpuset").map(|m| m.join(&prefix))
        }
        host_cgroups::host::CgroupVersion::V2 => None,
    };
    if let (Some(dir), true) = (&cpuset_parent, online.len() >= 2) {
        std::fs::create_dir(dir).unwrap();
        let first = online.iter().next().unwrap().to_string();
        std::fs::write(dir.join("cpuset.mems"), "0").unwrap();
        std::fs::write(dir.join("cpuset.cpus"), &first).unwrap();
        let other = online.iter().nth(1).unwrap().to_string();
        cases.push(case(
            &["--resources", &format!(r#"{{"cpu":{{"cpus":"{other}"}}}}"#)],
            &format!("\"{other}\""),
        ));
    }

    let before = tree(&prefix);
    let state_before = state_files(&state);
    for c in &cases {
        let mut cmd = Command::new(BIN);
        cmd.arg("run");
        let mut args = c.args.clone();
        if !args.iter().any(|a| a == "--cgroups-path") {
            args.extend([OsString::from("--cgroups-path"), OsString::from(&ok_path)]);
        }
        if !args.iter().any(|a| a == "--sandbox-id") {
            args.extend([OsString::from("--sandbox-id"), OsString::from("bad1")]);
        }
        args.extend([OsString::from("--state-dir"), OsString::from(&st)]);
        args.extend([OsString::from("--duration"), OsString::from("0")]);
        let out = cmd.args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{:?}: exit {:?}: {err}",
            c.args,
            out.status
        );
        assert!(
            err.contains(&c.needle),
            "{:?}: message does not name {:?}: {err}",
            c.args,
            c.needle
        );
        assert_eq!(
            tree(&prefix),
            before,
            "{:?} changed the cgroup tree",
            c.args
        );
        assert_eq!(
            state_files(&state),
            state_before,
            "{:?} wrote state",
            c.args
        );
    }
    if let Some(dir) = cpuset_parent {
        let _ = std::fs::remove_dir(dir);
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn forged_state_is_refused_by_cleanup() {
    let prefix = unique("forged");
    let tmp = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&tmp).unwrap();
    let before = tree(&prefix);
    for (i, created) in [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/cpu/system.slice",
        "/sys/fs/cgroup/unified",
    ]
    .iter()
    .enumerate()
    {
        let id = format!("forged{i}");
        let body = serde_json::json!({
            "sandbox_id": id, "driver": "cgroupfs", "cgroup_version": "1", "placement": "vcpu-threads",
            "sandbox_cgroup_only": true, "enable_vcpus_pinning": false, "vmm_pid": 1,
            "sandbox": {"path": {"driver": "cgroupfs", "path": "kata_sandboxed_pod/x"}, "created": [created]},
            "overhead": null, "containers": {}, "sandbox_resources": null
        });
        std::fs::write(tmp.join(format!("{id}.json")), body.to_string()).unwrap();
        let out = cleanup(&id, &tmp);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{created}: {err}");
        assert!(
            err.contains("not trusted") && err.contains(created),
            "{err}"
        );
    }
    // A symlinked state directory is not followed.
    let link = tmp.with_extension("link");
    std::os::unix::fs::symlink(&tmp, &link).unwrap();
    let out = cleanup("forged0", &link);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&prefix), before);
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// `resolve` (the dry run) refuses a memory limit under 6 MiB for the cgroup the VMM
/// process goes to exactly as `run` does (above): exit 2, the value, the floor and the
/// cgroup named, nothing created.
#[test]
fn resolve_refuses_a_memory_limit_the_vmm_cannot_live_in() {
    let prefix = unique("memfloor");
    let _guard = CgroupGuard::new(&prefix);
    let tmp = std::env::temp_dir().join(&prefix);
    let before = tree(&prefix);
    let path = format!("{prefix}/sb");
    // `resolve` of the sandbox with a memory limit of `limit` bytes.
    let resolve = |limit: &str| {
        Command::new(BIN)
            .args([
                "resolve",
                "--cgroups-path",
                &path,
                "--sandbox-id",
                "memfloor1",
                "--state-dir",
                &tmp.to_string_lossy(),
                "--resources",
                &format!(r#"{{"memory":{{"limit":{limit}}}}}"#),
            ])
            .output()
            .unwrap()
    };
    for limit in ["4096", "1"] {
        let out = resolve(limit);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{limit}: {err}");
        for needle in [limit, "6291456", path.as_str()] {
            assert!(err.contains(needle), "{limit}: no {needle:?} in {err}");
        }
    }
    // At the floor it plans.
    let out = resolve("6291456");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&prefix), before);
    assert!(!tmp.exists(), "resolve wrote state");
}
