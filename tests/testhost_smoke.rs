//! Smoke test of the test hosts (tests/hosts/): checks that the host kind named by
//! HOSTCG_TESTHOST looks as promised, and exercises the skip convention. Uses only std.

mod common {
    pub mod skip;
}
use common::skip::skip;

use std::path::Path;

fn host() -> Option<String> {
    std::env::var("HOSTCG_TESTHOST").ok()
}

/// (fstype, mount point) of every cgroup/cgroup2 mount.
fn cgroup_mounts() -> Vec<(String, String)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2"))
                .then(|| (f[2].to_string(), f[1].to_string()))
        })
        .collect()
}

fn mounted(fstype: &str, at: &str) -> bool {
    cgroup_mounts().iter().any(|(t, m)| t == fstype && m == at)
}

fn pid1() -> String {
    std::fs::read_to_string("/proc/1/comm")
        .expect("read /proc/1/comm")
        .trim()
        .to_string()
}

/// The v1 controllers every v1-style host here must have, each at /sys/fs/cgroup/<name>
/// (a symlink for co-mounted ones, e.g. cpu -> cpu,cpuacct).
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids"];

fn assert_v1_controllers() {
    for c in V1_CONTROLLERS {
        let p = Path::new("/sys/fs/cgroup").join(c);
        let real = std::fs::canonicalize(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            mounted("cgroup", real.to_str().unwrap()),
            "v1 controller {c} not mounted at {}: {:?}",
            real.display(),
            cgroup_mounts()
        );
    }
    assert!(
        !Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        "cgroup2 at /sys/fs/cgroup"
    );
}

fn assert_v2_only() {
    assert!(Path::new("/sys/fs/cgroup/cgroup.controllers").exists());
    assert!(
        mounted("cgroup2", "/sys/fs/cgroup"),
        "{:?}",
        cgroup_mounts()
    );
    let v1: Vec<_> = cgroup_mounts()
        .into_iter()
        .filter(|(t, _)| t == "cgroup")
        .collect();
    assert!(v1.is_empty(), "v1 hierarchies mounted on a v2 host: {v1:?}");
}

#[test]
fn cgroup_layout_matches_host_kind() {
    let Some(h) = host() else {
        // the developer's machine: only require that some cgroup hierarchy is visible
        assert!(!cgroup_mounts().is_empty(), "no cgroup mounts at all");
        return;
    };
    match h.as_str() {
        "v2" => assert_v2_only(),
        "v1" => {
            assert_v1_controllers();
            assert!(
                mounted("cgroup2", "/sys/fs/cgroup/unified"),
                "{:?}",
                cgroup_mounts()
            );
        }
        "sd-v2" => assert_v2_only(),
        "sd-v1" => {
            assert_v1_controllers();
            assert!(
                mounted("cgroup2", "/sys/fs/cgroup/unified"),
                "{:?}",
                cgroup_mounts()
            );
            assert!(
                mounted("cgroup", "/sys/fs/cgroup/systemd"),
                "{:?}",
                cgroup_mounts()
            );
        }
        "sd-legacy" => {
            assert_v1_controllers();
            assert!(
                mounted("cgroup", "/sys/fs/cgroup/systemd"),
                "{:?}",
                cgroup_mounts()
            );
            assert!(
                !cgroup_mounts().iter().any(|(t, _)| t == "cgroup2"),
                "{:?}",
                cgroup_mounts()
            );
        }
        other => panic!("unknown HOSTCG_TESTHOST={other}"),
    }
}

#[test]
fn no_systemd_hosts_start_in_root_cgroup() {
    match host().as_deref() {
        Some(h @ ("v1" | "v2")) => {
            assert_ne!(pid1(), "systemd");
            let me = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            for l in me.lines() {
                assert!(l.ends_with(":/"), "{h}: not in a root cgroup: {l}\n{me}");
            }
        }
        _ => skip(
            "no_systemd_hosts_start_in_root_cgroup",
            "not a busybox (v1/v2) test host",
        ),
    }
}

#[test]
fn systemd_is_pid1_with_system_bus() {
    match host().as_deref() {
        Some(h) if h.starts_with("sd-") => {
            assert_eq!(pid1(), "systemd");
            let sock = "/run/dbus/system_bus_socket";
            std::os::unix::net::UnixStream::connect(sock)
                .unwrap_or_else(|e| panic!("system bus {sock}: {e}"));
            let out = std::process::Command::new("busctl")
                .args([
                    "--system",
                    "--no-pager",
                    "status",
                    "org.freedesktop.systemd1",
                ])
                .output()
                .expect("run busctl");
            assert!(
                out.status.success(),
                "busctl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        _ => skip(
            "systemd_is_pid1_with_system_bus",
            "no systemd as PID 1 on this host",
        ),
    }
}

#[test]
fn cli_binary_is_at_its_build_path() {
    // Integration tests find the CLI through this compile-time absolute path.
    let exe = env!("CARGO_BIN_EXE_host-cgroups");
    let st = std::process::Command::new(exe)
        .arg("--version")
        .status()
        .unwrap_or_else(|e| panic!("run {exe}: {e}"));
    assert!(st.success(), "{exe}: {st}");
}

/// Exercises the matrix's "skipped on every host" check: `tests/hosts/matrix --env
/// HOSTCG_SMOKE_SKIP_ALL=1` must fail and name this test.
#[test]
fn skip_plumbing_selftest() {
    if std::env::var_os("HOSTCG_SMOKE_SKIP_ALL").is_some() {
        skip("skip_plumbing_selftest", "HOSTCG_SMOKE_SKIP_ALL is set");
    }
}
