//! The short soak: 50 sandbox lifecycles (`host-cgroups bench soak`), mixing the
//! systemd driver in where systemd is reachable, must leave no cgroup directory and
//! no unit, and the process's fds and threads must not grow. Memory is judged by the
//! heap in use (glibc `mallinfo2`), which is what a leak grows: it may settle after the
//! first window (lazily built tables), past that it may not grow by more than 256 KiB
//! over 40 cycles. RSS is only checked for gross growth (8 MiB): it jumps by 2 MiB when
//! the kernel backs a heap range with a transparent huge page (seen in the v1 test host:
//! +2020 KiB in one window, nothing before or after).

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
    let kib = |x: &serde_json::Value, k: &str| x[k].as_i64().unwrap();
    assert!(
        kib(last, "heap_kib") - kib(second, "heap_kib") < 256,
        "heap grew: {v}"
    );
    assert!(
        kib(last, "rss_kib") - kib(second, "rss_kib") < 8 * 1024,
        "RSS grew: {v}"
    );
}
