//! The first thread-move write after the cgroup core has been idle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vcpu_hooks::gettid;

use crate::util::{self, BenchCgroups};
use crate::BenchError;
use host_cgroups::host::{parse_proc_cgroup, CgroupLayout, CgroupVersion};

/// The first thread-move write after the cgroup core has been idle for `idle`,
/// moving a thread of ours by its tid vs by `0` ("the calling thread"), in µs
/// (v1: `tasks`; v2: `cgroup.threads`, see [`idle_first_write_v2`]).
///
/// Since Linux 5.17 a write of `0` (or any single-thread write by the thread
/// itself through `0`) skips the global threadgroup lock, whose first writer
/// after a quiet spell waits for an RCU grace period.
pub fn idle_first_write(
    layout: &CgroupLayout,
    guard: &BenchCgroups,
    samples: u32,
    idle: Duration,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    if layout.version() == CgroupVersion::V2 {
        return idle_first_write_v2(layout, guard, samples, idle);
    }
    let mount = layout
        .mounts
        .get("cpu")
        .cloned()
        .ok_or_else(|| BenchError::Unsupported("no cpu hierarchy".into()))?;
    let dir = mount.join(&guard.name).join("idle");
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::step("mkdir idle cgroup", e))?;
    let home = util::home_of(layout, &mount);
    idle_probe(dir.join("tasks"), home.join("tasks"), samples, idle)
}

/// On a probe thread: `samples` times each, after `idle` without migrations, writes
/// its tid (then `0`) to `there` (timed) and the same value to `back`.
fn idle_probe(
    there: PathBuf,
    back: PathBuf,
    samples: u32,
    idle: Duration,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let worker = std::thread::Builder::new()
        .name("hcg-idle-probe".into())
        .spawn(move || -> Result<(Vec<f64>, Vec<f64>), String> {
            use std::io::Write as _;
            let open = |p: &Path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| format!("open {}: {e}", p.display()))
            };
            let (mut there_f, mut back_f) = (open(&there)?, open(&back)?);
            let tid = gettid().to_string();
            let (mut by_tid, mut by_zero) = (Vec::new(), Vec::new());
            for k in 0..samples * 2 {
                std::thread::sleep(idle);
                let value = if k % 2 == 0 { tid.as_str() } else { "0" };
                let t = Instant::now();
                there_f
                    .write_all(value.as_bytes())
                    .map_err(|e| format!("write {value} to {}: {e}", there.display()))?;
                let us = t.elapsed().as_secs_f64() * 1e6;
                back_f
                    .write_all(value.as_bytes())
                    .map_err(|e| format!("move back through {}: {e}", back.display()))?;
                if k % 2 == 0 {
                    by_tid.push(us);
                } else {
                    by_zero.push(us);
                }
            }
            Ok((by_tid, by_zero))
        })
        .map_err(|e| BenchError::step("spawn idle probe", e))?;
    worker
        .join()
        .map_err(|_| BenchError::step("idle probe", "panicked"))?
        .map_err(|e| BenchError::step("idle probe", e))
}

/// The v2 cgroups of [`idle_first_write_v2`]: moves this process back to where it
/// was and removes `<guard>/idle/t` and `<guard>/idle` on drop, error or not.
struct IdleV2 {
    /// This process's cgroup before the move.
    home: PathBuf,
    /// `<unified>/<guard>/idle` (a domain cgroup; threaded domain once `t` is threaded).
    idle: PathBuf,
    /// `<idle>/t`, threaded.
    t: PathBuf,
    /// This process was moved into `idle`.
    moved: bool,
}

impl Drop for IdleV2 {
    fn drop(&mut self) {
        if self.moved {
            let _ = std::fs::write(
                self.home.join("cgroup.procs"),
                std::process::id().to_string(),
            );
        }
        for d in [&self.t, &self.idle] {
            let start = Instant::now();
            while std::fs::remove_dir(d).is_err()
                && d.exists()
                && start.elapsed() < Duration::from_secs(3)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// cgroup v2 [`idle_first_write`]: a single thread moves only inside its threaded
/// subtree, so this process moves into `<guard>/idle` (its own domain cgroup), whose
/// child `t` is made threaded, and the probe thread moves between
/// `t/cgroup.threads` and `idle/cgroup.threads`; then the process moves back.
/// Only this process is moved, only under the guard's name.
fn idle_first_write_v2(
    layout: &CgroupLayout,
    guard: &BenchCgroups,
    samples: u32,
    idle: Duration,
) -> Result<(Vec<f64>, Vec<f64>), BenchError> {
    let unified = layout
        .unified
        .clone()
        .ok_or_else(|| BenchError::Unsupported("no cgroup v2 mount".into()))?;
    let now = std::fs::read_to_string("/proc/self/cgroup")
        .map(|t| parse_proc_cgroup(&t))
        .map_err(|e| BenchError::step("read /proc/self/cgroup", e))?;
    let here = now
        .get("unified")
        .ok_or_else(|| BenchError::step("read /proc/self/cgroup", "no cgroup v2 (0::) line"))?;
    let idle_dir = unified.join(&guard.name).join("idle");
    let mut cg = IdleV2 {
        home: unified.join(here.trim_start_matches('/')),
        t: idle_dir.join("t"),
        idle: idle_dir,
        moved: false,
    };
    std::fs::create_dir_all(&cg.t)
        .map_err(|e| BenchError::step(format!("mkdir {}", cg.t.display()), e))?;
    let ty = cg.t.join("cgroup.type");
    std::fs::write(&ty, "threaded")
        .map_err(|e| BenchError::step(format!("write threaded to {}", ty.display()), e))?;
    let procs = cg.idle.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| BenchError::step(format!("move this process to {}", procs.display()), e))?;
    cg.moved = true;
    idle_probe(
        cg.t.join("cgroup.threads"),
        cg.idle.join("cgroup.threads"),
        samples,
        idle,
    )
}
