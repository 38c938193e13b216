//! Helpers shared by the integration tests: unique cgroup names, guards that
//! remove what a test made even when it fails, and /proc readers.
#![allow(dead_code)]

pub mod cli;
pub mod skip;
pub mod systemd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use host_cgroups::host::{parse_proc_cgroup, CgroupLayout, CgroupVersion};

/// A crash test's run armed with `point=kill` that was not killed. Allowed only for a
/// numbered hit past the first (`fs-write:9`: the run made fewer writes than that), and
/// only when the run said it never reached it (exit 3, the `failpoints` build's rule);
/// anything else fails naming the point, so that no crash test passes on a point its run
/// does not pass.
pub fn assert_allowed_unreached(point: &str, out: &std::process::Output) {
    let nth = point
        .split_once(':')
        .map(|(_, n)| n.parse::<u32>().unwrap())
        .unwrap_or(1);
    assert!(
        out.status.code() == Some(3) && nth > 1,
        "{point}: the run was not killed there ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A name no other test or run uses: `hcgtest-<tag>-<random>`.
pub fn unique(tag: &str) -> String {
    format!("hcgtest-{tag}-{:08x}", rand::random::<u32>())
}

/// The host layout (panics in tests only).
pub fn layout() -> CgroupLayout {
    CgroupLayout::detect().expect("cgroup layout")
}

/// Every mount point a test cgroup may appear under.
pub fn mounts(layout: &CgroupLayout) -> Vec<PathBuf> {
    layout.mount_points()
}

/// Removes `<mount>/<prefix>` in every hierarchy on drop, children first.
pub struct CgroupGuard {
    pub prefix: String,
    layout: CgroupLayout,
    parents: Vec<String>,
}

impl CgroupGuard {
    pub fn new(prefix: &str) -> Self {
        CgroupGuard {
            prefix: prefix.to_string(),
            layout: layout(),
            parents: Vec::new(),
        }
    }

    /// Also removes `<mount>/<parent>` on drop, but only when empty (shared names
    /// such as `kata_overhead` that other tests may be using right now).
    pub fn and_parent_if_empty(mut self, parent: &str) -> Self {
        self.parents.push(parent.to_string());
        self
    }

    /// Directories that exist below the prefix, in all hierarchies.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for m in mounts(&self.layout) {
            let d = m.join(&self.prefix);
            if d.exists() {
                walk(&d, &mut out);
            }
        }
        out
    }
}

fn walk(d: &Path, out: &mut Vec<PathBuf>) {
    out.push(d.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&e.path(), out);
            }
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let mut dirs = self.leftovers();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        let own: Vec<String> = std::fs::read_dir("/proc/self/task")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for d in dirs {
            // Our own threads go back to the hierarchy root; foreign tasks are never touched.
            let root = mounts(&self.layout).into_iter().find(|m| d.starts_with(m));
            if let Some(root) = root {
                let file = if root.join("tasks").exists() {
                    "tasks"
                } else {
                    "cgroup.procs"
                };
                let home = self
                    .layout
                    .mounts
                    .iter()
                    .find(|(_, m)| **m == root)
                    .and_then(|(c, _)| self.layout.own.get(c))
                    .or_else(|| self.layout.own.get("unified"))
                    .map(|p| root.join(p.trim_start_matches('/')))
                    .unwrap_or_else(|| root.clone());
                if let Ok(t) = std::fs::read_to_string(d.join(file)) {
                    for id in t.lines().filter(|l| own.iter().any(|o| o == l)) {
                        let _ = std::fs::write(home.join(file), id);
                    }
                }
            }
            let start = Instant::now();
            while std::fs::remove_dir(&d).is_err()
                && d.exists()
                && start.elapsed() < Duration::from_secs(3)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Shared parents (`kata_overhead`) go when empty. While only other tests'
        // `hcg*` cgroups hold one, wait a little for them to leave: the last guard
        // out removes it. A foreign cgroup in it keeps it, untouched.
        for parent in &self.parents {
            for m in mounts(&self.layout) {
                let d = m.join(parent);
                let start = Instant::now();
                while d.is_dir() && std::fs::remove_dir(&d).is_err() {
                    let only_tests = std::fs::read_dir(&d).is_ok_and(|rd| {
                        rd.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .all(|e| e.file_name().to_string_lossy().starts_with("hcg"))
                    });
                    if !only_tests || start.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// A child process killed (by its pid) and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// A `sleep 1000` that has exec'd: spawn returns once the child is forked, when it
    /// still bears this thread's name; tests that read its name or place it wait for exec.
    pub fn sleep() -> Self {
        let g = ChildGuard(
            Command::new("sleep")
                .arg("1000")
                .spawn()
                .expect("spawn sleep"),
        );
        let comm = format!("/proc/{}/comm", g.pid());
        let start = Instant::now();
        while std::fs::read_to_string(&comm).map_or(true, |c| c.trim() != "sleep") {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "sleep child {} never exec'd",
                g.pid()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        g
    }
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A task's cgroups, read from /proc: controller → path.
pub fn task_cgroups(pid: i32, tid: i32) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/cgroup"))
        .expect("read task cgroup");
    parse_proc_cgroup(&text)
}

/// Asserts that `tid` of `pid` is in `/<relative>` for every controller of the layout.
pub fn assert_in(layout: &CgroupLayout, pid: i32, tid: i32, relative: &str) {
    let cg = task_cgroups(pid, tid);
    let want = format!("/{relative}");
    match layout.version() {
        CgroupVersion::V1 => {
            for c in layout.controllers() {
                assert_eq!(
                    cg.get(&c),
                    Some(&want),
                    "task {pid}/{tid} controller {c}: {cg:?}"
                );
            }
        }
        CgroupVersion::V2 => assert_eq!(cg.get("unified"), Some(&want), "task {pid}/{tid}: {cg:?}"),
    }
}

/// Reads a cgroup file, trimmed.
pub fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref())
        .unwrap_or_else(|e| panic!("read {}: {e}", p.as_ref().display()))
        .trim()
        .to_string()
}

/// Runs `cmd` to completion like [`Command::output`], but a run still going after
/// `limit` is a hang, not slowness (the limit is minutes for runs of under a second):
/// every thread's state, kernel wait channel, kernel stack and cgroups are collected,
/// the child (started here, killed by its pid) is killed, and the test panics with
/// `what` and that dump, so a CI log says where it hung.
pub fn output_or_dump(cmd: &mut Command, limit: Duration, what: &str) -> std::process::Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
    let pump = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out_t = pump(Box::new(child.stdout.take().expect("stdout")));
    let err_t = pump(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if start.elapsed() > limit {
            let dump = dump_tasks(child.id() as i32);
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!(
                "{what}: still running after {limit:?} (a hang); its threads:\n{dump}\nits stderr:\n{stderr}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// Each thread of `pid`: name, state, wait channel, kernel stack and cgroups (what /proc shows).
pub fn dump_tasks(pid: i32) -> String {
    let mut out = String::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("/proc/{pid}/task unreadable\n");
    };
    for e in rd.flatten() {
        let t = e.path();
        let r = |f: &str| std::fs::read_to_string(t.join(f)).unwrap_or_else(|e| format!("({e})"));
        let status = r("status");
        let state = status
            .lines()
            .filter(|l| l.starts_with("Name:") || l.starts_with("State:"))
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "-- tid {} {state} wchan={}\n{}{}",
            e.file_name().to_string_lossy(),
            r("wchan"),
            r("stack"),
            r("cgroup")
        ));
    }
    out
}

/// Waits (up to 60 s: the test hosts are emulated and slow) until `f` is true; panics
/// naming `what` when it does not come.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// OCI resources from JSON, checked as the library's entry points check them (the
/// drivers take only checked resources).
pub fn checked(json: &str) -> host_cgroups::resources::Checked {
    host_cgroups::resources::Checked::new(host_cgroups::resources::from_json(json).unwrap())
        .unwrap()
}
