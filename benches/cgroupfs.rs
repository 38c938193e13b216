//! Micro figures for placing one thread on cgroup v1 (criterion): moving this
//! thread between two `hcgbench-*` cgroups of the cpu hierarchy by writing to
//! `tasks`, with the file kept open (what the supervisor does) or opened for
//! each write, and writing the thread's own tid vs `0` (the kernel's "current
//! thread" form, which since Linux 5.17 skips the global threadgroup lock and
//! with it the RCU grace period an idle cgroup core otherwise waits).
//!
//! Run: `cargo bench --bench cgroupfs` (root, cgroup v1 cpu hierarchy).
//! Skips itself elsewhere. The cgroups are removed on exit.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

struct Pair {
    a: PathBuf,
    b: PathBuf,
    home: PathBuf,
}

impl Pair {
    fn new() -> Option<Self> {
        let cpu = Path::new("/sys/fs/cgroup/cpu");
        if !cpu.join("tasks").exists() {
            return None;
        }
        let cg = std::fs::read_to_string("/proc/thread-self/cgroup").ok()?;
        let own = cg
            .lines()
            .find_map(|l| {
                let mut p = l.splitn(3, ':');
                let (_, c, path) = (p.next()?, p.next()?, p.next()?);
                c.split(',').any(|x| x == "cpu").then(|| path.to_string())
            })
            .unwrap_or_else(|| "/".into());
        let name = format!("hcgbench-micro-{}", std::process::id());
        let a = cpu.join(&name).join("a");
        let b = cpu.join(&name).join("b");
        std::fs::create_dir_all(&a).ok()?;
        std::fs::create_dir_all(&b).ok()?;
        Some(Pair {
            a,
            b,
            home: cpu.join(own.trim_start_matches('/')),
        })
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let tid = vcpu_hooks::gettid().to_string();
        let _ = std::fs::write(self.home.join("tasks"), tid);
        for d in [&self.a, &self.b] {
            let _ = std::fs::remove_dir(d);
        }
        if let Some(p) = self.a.parent() {
            let _ = std::fs::remove_dir(p);
        }
    }
}

fn open(p: &Path) -> File {
    OpenOptions::new()
        .write(true)
        .open(p.join("tasks"))
        .expect("open tasks")
}

fn tasks_write(c: &mut Criterion) {
    let Some(pair) = Pair::new() else {
        eprintln!("cgroupfs bench skipped: needs root and a cgroup v1 cpu hierarchy");
        return;
    };
    let tid = vcpu_hooks::gettid().to_string();
    let mut g = c.benchmark_group("tasks_write_move_own_thread");
    let (mut fa, mut fb) = (open(&pair.a), open(&pair.b));
    g.bench_function("kept_open_tid", |b| {
        b.iter(|| {
            fa.write_all(tid.as_bytes()).expect("write");
            fb.write_all(tid.as_bytes()).expect("write");
        })
    });
    g.bench_function("kept_open_zero", |b| {
        b.iter(|| {
            fa.write_all(b"0").expect("write");
            fb.write_all(b"0").expect("write");
        })
    });
    g.bench_function("open_each_time_tid", |b| {
        b.iter(|| {
            open(&pair.a).write_all(tid.as_bytes()).expect("write");
            open(&pair.b).write_all(tid.as_bytes()).expect("write");
        })
    });
    g.finish();
    black_box(&pair);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = tasks_write
}
criterion_main!(benches);
