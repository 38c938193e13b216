//! `FsManager` against this host's real cgroupfs (v1 here; v2 in the test hosts).

mod common;

use std::sync::mpsc;

use common::*;
use host_cgroups::host::CgroupVersion;
use host_cgroups::manager::{CgroupError, FsManager, Manager};

#[test]
fn create_place_apply_stats_freeze_destroy() {
    let prefix = unique("fs");
    let guard = CgroupGuard::new(&prefix);
    let layout = layout();
    let rel = format!("{prefix}/sb");
    let mut m = FsManager::new(&layout, &rel);
    m.create().unwrap();
    for (c, p) in m.paths() {
        assert!(p.is_dir(), "{c}: {} missing", p.display());
    }

    // A child process, placed whole.
    let child = ChildGuard::sleep();
    m.add_proc(child.pid()).unwrap();
    assert_in(&layout, child.pid(), child.pid(), &rel);
    assert!(m.procs().unwrap().contains(&child.pid()));

    // One single thread of this test process (v1 only).
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        tx.send(vcpu_hooks::gettid()).unwrap();
        let _ = done_rx.recv();
    });
    let tid = rx.recv().unwrap();
    let me = std::process::id() as i32;
    match layout.version() {
        CgroupVersion::V1 => {
            m.add_thread(tid).unwrap();
            assert_in(&layout, me, tid, &rel);
            // Only that thread moved: the main thread stays where it was.
            let main = task_cgroups(me, me);
            assert_ne!(main.get("cpu"), Some(&format!("/{rel}")));
            assert!(m.threads().unwrap().contains(&tid));
        }
        CgroupVersion::V2 => {
            let err = m.add_thread(tid).unwrap_err();
            assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
        }
    }

    // Resources, read back from the controller files.
    let res = checked(
        r#"{"cpu":{"shares":512,"quota":50000,"period":100000,"cpus":"0","mems":"0"},
            "memory":{"limit":268435456},"pids":{"limit":100}}"#,
    );
    m.set(&res).unwrap();
    let p = m.paths();
    match layout.version() {
        CgroupVersion::V1 => {
            assert_eq!(read(p["cpu"].join("cpu.shares")), "512");
            assert_eq!(read(p["cpu"].join("cpu.cfs_quota_us")), "50000");
            assert_eq!(read(p["cpu"].join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(p["cpuset"].join("cpuset.cpus")), "0");
            assert_eq!(read(p["memory"].join("memory.limit_in_bytes")), "268435456");
            assert_eq!(read(p["pids"].join("pids.max")), "100");
        }
        CgroupVersion::V2 => {
            let d = &p["unified"];
            assert_eq!(read(d.join("cpu.weight")), "59");
            assert_eq!(read(d.join("cpu.max")), "50000 100000");
            assert_eq!(read(d.join("cpuset.cpus")), "0");
            assert_eq!(read(d.join("memory.max")), "268435456");
            assert_eq!(read(d.join("pids.max")), "100");
        }
    }
    let stats = m.stats().unwrap();
    assert!(stats.pids_current.unwrap_or(0) >= 1, "{stats:?}");

    // Freeze and thaw the child.
    m.freeze().unwrap();
    let state = std::fs::read_to_string(format!("/proc/{}/stat", child.pid())).unwrap();
    assert!(!state.is_empty());
    m.thaw().unwrap();

    // A stranger inside: destroy refuses, names it, and kills nothing.
    let err = m.destroy().unwrap_err();
    match &err {
        CgroupError::Busy { pids, .. } => assert_eq!(pids, &vec![child.pid()]),
        other => panic!("expected Busy, got {other}"),
    }
    assert!(err.to_string().contains(&child.pid().to_string()));
    assert!(std::path::Path::new(&format!("/proc/{}", child.pid())).exists());
    drop(child);

    // Our own thread is still inside (v1): destroy moves it out itself.
    m.destroy().unwrap();
    let _ = done_tx.send(());
    t.join().unwrap();
    assert!(
        guard.leftovers().is_empty(),
        "left: {:?}",
        guard.leftovers()
    );
}

#[test]
fn failed_creation_removes_only_what_it_made() {
    let prefix = unique("rollback");
    let guard = CgroupGuard::new(&prefix);
    let layout = layout();
    // The prefix exists beforehand in one hierarchy: it must survive the rollback.
    let keep = layout
        .unified
        .clone()
        .filter(|_| layout.version() == CgroupVersion::V2)
        .unwrap_or_else(|| layout.mounts["pids"].clone())
        .join(&prefix);
    std::fs::create_dir(&keep).unwrap();
    // A leaf named like a control file of the last hierarchy fails there, after
    // every other hierarchy has made its directories.
    let leaf = match layout.version() {
        CgroupVersion::V1 => "pids.max",
        CgroupVersion::V2 => "cgroup.procs",
    };
    let mut m = FsManager::new(&layout, &format!("{prefix}/mid/{leaf}"));
    let err = m.create().unwrap_err();
    assert!(err.to_string().contains("in the way"), "{err}");
    let left = guard.leftovers();
    assert_eq!(left, vec![keep.clone()], "rollback left {left:?}");
    assert!(m.created().is_empty());
}

#[test]
fn concurrent_sandboxes_share_a_parent() {
    let prefix = unique("race");
    let guard = CgroupGuard::new(&prefix);
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let prefix = prefix.clone();
            std::thread::spawn(move || {
                let layout = layout();
                for i in 0..15 {
                    let rel = format!("{prefix}/kata_sandboxed_pod/sb{w}-{i}");
                    let mut m = FsManager::new(&layout, &rel);
                    m.create().unwrap_or_else(|e| panic!("{rel}: {e}"));
                    for p in m.paths().values() {
                        assert!(p.is_dir(), "{}", p.display());
                    }
                    m.destroy().unwrap_or_else(|e| panic!("{rel}: {e}"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let left: Vec<_> = guard
        .leftovers()
        .into_iter()
        .filter(|d| d.to_string_lossy().contains("/sb"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn cpuset_outside_the_host_is_refused_before_writing() {
    let prefix = unique("cpuset");
    let _guard = CgroupGuard::new(&prefix);
    let layout = layout();
    let mut m = FsManager::new(&layout, &format!("{prefix}/sb"));
    m.create().unwrap();
    let before = read(m.paths()["cpuset"].join("cpuset.cpus"));
    let err = m.set(&checked(r#"{"cpu":{"cpus":"0-4095"}}"#)).unwrap_err();
    assert!(err.to_string().contains("0-4095"), "{err}");
    assert_eq!(read(m.paths()["cpuset"].join("cpuset.cpus")), before);
    if layout.version() == CgroupVersion::V1 {
        // A failed write part-way restores the earlier ones. v1 refuses a child
        // quota above its parent's, so cap the parent (ours) first.
        let cpu = m.paths()["cpu"].clone();
        let parent = cpu.parent().unwrap();
        std::fs::write(parent.join("cpu.cfs_quota_us"), "10000").unwrap();
        let shares_file = cpu.join("cpu.shares");
        let old = read(&shares_file);
        let err = m
            .set(&checked(
                r#"{"cpu":{"shares":2048,"quota":50000,"period":100000}}"#,
            ))
            .unwrap_err();
        assert!(err.to_string().contains("cpu.cfs_quota_us"), "{err}");
        assert_eq!(read(&shares_file), old);
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "-1");
    }
    m.destroy().unwrap();
}

#[test]
fn a_tree_lock_held_elsewhere_delays_but_does_not_hang() {
    use std::os::fd::AsRawFd;
    // Another holder of the node-wide tree lock that never lets go (a stopped process):
    // creation and removal go on without it after the bounded wait.
    let path = std::path::Path::new(host_cgroups::manager::fs::TREE_LOCK);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let layout = layout();
    let prefix = unique("treelock");
    let guard = CgroupGuard::new(&prefix);
    let mut m = FsManager::new(&layout, &format!("{prefix}/sb"));
    m.create().expect("create without the lock");
    assert!(!guard.leftovers().is_empty());
    m.destroy().expect("destroy without the lock");
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
    drop(held);
}

#[test]
fn rollback_on_a_cgroup_just_made_restores_the_values_it_was_made_with() {
    // `set` right after `create` does not read the files first: rollback restores what
    // the kernel (and the cpuset fill) gave the new cgroup. Checked against the files
    // themselves, read here before `set`.
    let layout = layout();
    if layout.version() != CgroupVersion::V1 {
        eprintln!("skipped: the values a new cgroup is made with are kept on cgroup v1 only");
        return;
    }
    let prefix = unique("fresh");
    let guard = CgroupGuard::new(&prefix);
    let mut m = FsManager::new(&layout, &format!("{prefix}/sb"));
    m.create().unwrap();
    let p = m.paths();
    let files = [
        p["cpu"].join("cpu.shares"),
        p["cpu"].join("cpu.cfs_period_us"),
        p["cpu"].join("cpu.cfs_quota_us"),
        p["cpuset"].join("cpuset.cpus"),
        p["cpuset"].join("cpuset.mems"),
    ];
    let made: Vec<String> = files.iter().map(read).collect();
    // The cpu and cpuset writes come before block I/O; a throttle on a device that does
    // not exist fails in the kernel (ENODEV) after them.
    let res = checked(
        r#"{"cpu":{"shares":512,"period":50000,"quota":20000,"cpus":"0","mems":"0"},
            "blockIO":{"throttleReadBpsDevice":[{"major":250,"minor":4095,"rate":1000}]}}"#,
    );
    let err = m.set(&res).unwrap_err();
    assert!(err.to_string().contains("blkio.throttle"), "{err}");
    let after: Vec<String> = files.iter().map(read).collect();
    assert_eq!(after, made, "files: {files:?}");

    // Once written, a file is read before the next write: the rollback of a second
    // failed set restores the first set's values, not the creation's.
    let first = checked(r#"{"cpu":{"shares":256,"period":40000,"quota":30000}}"#);
    m.set(&first).unwrap();
    let set_once: Vec<String> = files.iter().map(read).collect();
    assert_eq!(set_once[0], "256");
    assert!(m.set(&res).is_err());
    let after: Vec<String> = files.iter().map(read).collect();
    assert_eq!(after, set_once, "files: {files:?}");
    m.destroy().unwrap();
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}

#[test]
fn a_tasks_file_longer_than_a_page_is_read_whole() {
    // cgroup files are seq_files handing out at most a page per read: `threads` must
    // keep reading past it. 1000 tids of up to 6 bytes each fill more than 4 KiB.
    let layout = layout();
    if layout.version() != CgroupVersion::V1 {
        eprintln!("skipped: single threads are placed on cgroup v1 only");
        return;
    }
    let prefix = unique("long");
    let guard = CgroupGuard::new(&prefix);
    let mut m = FsManager::new(&layout, &format!("{prefix}/sb"));
    m.create().unwrap();
    let (tid_tx, tid_rx) = mpsc::channel();
    let (placed_tx, placed_rx) = mpsc::channel::<()>();
    // One thread placed in the cgroup; the threads it spawns are born there.
    let parent = std::thread::spawn(move || {
        tid_tx.send(vcpu_hooks::gettid()).unwrap();
        placed_rx.recv().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let done_rx = std::sync::Arc::new(std::sync::Mutex::new(done_rx));
        let mut kids = Vec::new();
        let mut tids = Vec::new();
        for _ in 0..1000 {
            let (t_tx, t_rx) = mpsc::channel();
            let done = done_rx.clone();
            kids.push(std::thread::spawn(move || {
                t_tx.send(vcpu_hooks::gettid()).unwrap();
                let _ = done.lock().map(|d| d.recv());
            }));
            tids.push(t_rx.recv().unwrap());
        }
        (tids, done_tx, kids)
    });
    let tid = tid_rx.recv().unwrap();
    m.add_thread(tid).unwrap();
    placed_tx.send(()).unwrap();
    // The placing thread has ended; the 1000 it spawned stay in the cgroup.
    let (tids, done_tx, kids) = parent.join().unwrap();
    let listed = m.threads().unwrap();
    let bytes: usize = listed.iter().map(|t| t.to_string().len() + 1).sum();
    assert!(bytes > 4096, "only {bytes} bytes listed");
    let missing: Vec<_> = tids.iter().filter(|t| !listed.contains(t)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} tids not listed: {missing:?}",
        missing.len(),
        tids.len()
    );
    drop(done_tx);
    for k in kids {
        k.join().unwrap();
    }
    m.destroy().unwrap();
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}
