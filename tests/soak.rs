//! The short soak: 50 sandbox lifecycles (`host-cgroups bench soak`), mixing the
//! systemd driver in where systemd is reachable, must leave no cgroup directory and
//! no unit, and the process's fds and threads must not grow. Resident memory may
//! settle after the first window (allocator arenas, lazily built tables); past that
//! it may not grow by more than 1 MiB over 40 cycles.

mod common;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

#[test]
fn fifty_lifecycles_leave_nothing_and_do_not_grow() {
    let out_dir = std::env::temp_dir().join(common::unique("soak"));
    let out = Command::new(BIN)
        .args(["bench", "soak", "--cycles", "50", "--window", "10"])
        .args(["--backend", "thread", "--json", "--out"])
        .arg(&out_dir)
        .output()
        .expect("run soak");
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        out.status.success(),
        "soak failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("soak JSON");
    let w = v["windows"].as_array().expect("windows");
    assert_eq!(w.len(), 5, "{v}");
    for x in w {
        assert_eq!(x["dirs_left"], 0, "cgroup directories left: {x}");
        assert!(
            x["units_left"].is_null() || x["units_left"] == 0,
            "systemd units left: {x}"
        );
    }
    let (second, last) = (&w[1], &w[4]);
    assert_eq!(second["fds"], last["fds"], "fds grew: {v}");
    assert_eq!(second["threads"], last["threads"], "threads grew: {v}");
    let rss = |x: &serde_json::Value| x["rss_kib"].as_i64().unwrap();
    assert!(rss(last) - rss(second) < 1024, "RSS grew: {v}");
}
