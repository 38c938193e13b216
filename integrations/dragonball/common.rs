// Shared by the two users of dragonball in this folder: the test module inside
// dragonball (`tests/host_cgroups_tests.rs`) and the `hcg-boot` binary (`boot/`). The run
// script copies it beside each as `common.rs`; each `include!`s it, so the
// `mod upstream_seccomp;` below is runtime-rs' seccomp.rs copied beside that file.
// Edition 2018 (dragonball) and 2021 (hcg-boot) both compile it.

// runtime-rs' seccomp.rs logs through slog's `warn!(sl!(), ...)`; here through `log`.
macro_rules! sl {
    () => {
        ()
    };
}
macro_rules! warn {
    ($logger:expr, $($arg:tt)+) => {{
        let _ = $logger;
        log::warn!($($arg)+)
    }};
}
#[allow(dead_code, clippy::all)]
mod upstream_seccomp;

/// A name under `hcgtest-db-` no other run uses.
pub fn unique(tag: &str) -> String {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    format!("hcgtest-db-{}-{:08x}", tag, u32::from_ne_bytes(b))
}

/// Whether cgroupfs lists thread `tid` in the cgroup directory `dir` (v1 `tasks`, v2
/// `cgroup.threads`): the kernel's view, not the library's records.
pub fn lists(dir: &std::path::Path, tid: i32) -> bool {
    let file = if dir.join("tasks").exists() {
        dir.join("tasks")
    } else {
        dir.join("cgroup.threads")
    };
    std::fs::read_to_string(file)
        .map(|s| s.lines().any(|l| l.trim() == tid.to_string()))
        .unwrap_or(false)
}

/// The directories of `targets` that cgroupfs does not list thread `tid` in.
pub fn missing_from(targets: &[std::path::PathBuf], tid: i32) -> Vec<std::path::PathBuf> {
    targets.iter().filter(|d| !lists(d, tid)).cloned().collect()
}

/// tid → name of this process's `db_vcpu<N>` threads, from `/proc/self/task`.
pub fn vcpu_threads() -> std::collections::BTreeMap<i32, String> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            let tid: i32 = match e.file_name().to_string_lossy().parse() {
                Ok(t) => t,
                Err(_) => continue,
            };
            // A thread may exit between read_dir and read.
            if let Ok(name) = std::fs::read_to_string(e.path().join("comm")) {
                if name.starts_with("db_vcpu") {
                    out.insert(tid, name.trim_end().to_string());
                }
            }
        }
    }
    out
}
