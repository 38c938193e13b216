//! vCPU placement in the vCPU's own start hook (issue 11): born placed without a
//! cgroup write, self-placement by writing `0`, refusal of a thread found in the
//! wrong cgroup, and pinning before the hook returns. Real cgroupfs, real threads
//! (KVM here, the thread backend in the test hosts). Its own test binary: the
//! sandbox moves this whole process; the tests take a lock and run one at a time.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use common::skip::skip;
use common::*;
use demo_vmm::{BackendChoice, Vmm, VmmConfig, VmmError};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::host::{parse_proc_cgroup, CgroupLayout, CgroupVersion};
use host_cgroups::manager::fs::migration_writes;
use host_cgroups::placement::Placement;
use host_cgroups::plan::SandboxPlan;
use host_cgroups::resources::from_json;
use host_cgroups::supervisor::{get_affinity, Supervisor, SupervisorOptions};
use host_cgroups::PlacedBy;
use vcpu_hooks::{gettid, HookError, PlacementError, VcpuHooks};

const BIN: &str = env!("CARGO_BIN_EXE_host-cgroups");

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a vCPU thread saw right after its hook returned, read on that thread.
#[derive(Debug, Clone)]
struct AfterHook {
    index: u32,
    tid: i32,
    ok: bool,
    /// `/proc/thread-self/cgroup`, controller → path (`unified` for v2).
    cgroups: BTreeMap<String, String>,
    affinity: Vec<u32>,
}

/// The hook's caller: calls the supervisor's hook, then reads where the thread is.
struct Caller {
    inner: Arc<dyn VcpuHooks>,
    seen: Mutex<Vec<AfterHook>>,
}

impl VcpuHooks for Caller {
    fn vcpu_started(&self, index: u32) -> Result<(), HookError> {
        let r = self.inner.vcpu_started(index);
        let text = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap_or_default();
        self.seen.lock().unwrap().push(AfterHook {
            index,
            tid: gettid(),
            ok: r.is_ok(),
            cgroups: parse_proc_cgroup(&text),
            affinity: get_affinity(0).unwrap_or_default(),
        });
        r
    }
    fn vcpu_exited(&self, index: u32) {
        self.inner.vcpu_exited(index)
    }
}

/// Controller → `/relative` expected in `/proc` for the cgroup at `paths`.
fn expected(
    layout: &CgroupLayout,
    paths: &BTreeMap<host_cgroups::HierarchyKey, std::path::PathBuf>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (c, dir) in paths {
        let (key, mount) = match layout.version() {
            CgroupVersion::V1 => match layout.mounts.get(c.name()) {
                Some(m) => (c.name().to_string(), m.clone()),
                None => continue,
            },
            CgroupVersion::V2 if c == "unified" => {
                ("unified".to_string(), layout.unified.clone().unwrap())
            }
            CgroupVersion::V2 => continue,
        };
        let rel = dir
            .strip_prefix(&mount)
            .unwrap()
            .to_string_lossy()
            .to_string();
        out.insert(key, format!("/{rel}"));
    }
    out
}

fn assert_in_target(seen: &AfterHook, want: &BTreeMap<String, String>) {
    for (c, path) in want {
        assert_eq!(
            seen.cgroups.get(c),
            Some(path),
            "vCPU {} (tid {}) right after its hook, controller {c:?}: {:?}",
            seen.index,
            seen.tid,
            seen.cgroups
        );
    }
}

fn config(sandbox_cgroup_only: bool) -> RuntimeConfig {
    let mut c = RuntimeConfig::embedded().unwrap();
    c.sandbox_cgroup_only = sandbox_cgroup_only;
    c
}

fn vmm(n: u32, hooks: Arc<dyn VcpuHooks>) -> Vmm {
    Vmm::new(
        VmmConfig {
            vcpus: n,
            max_vcpus: n + 2,
            backend: BackendChoice::Auto,
        },
        hooks,
    )
    .unwrap()
}

/// Default mode (`sandbox_cgroup_only = true`): every vCPU is born in the sandbox
/// cgroup, the supervisor confirms it without a single `tasks`/`cgroup.threads`
/// write, and each vCPU is there (per /proc) when its hook returns; hotplug too.
#[test]
fn default_mode_confirms_born_vcpus_without_a_cgroup_write() {
    let _g = serial();
    let layout = layout();
    let prefix = unique("born");
    let guard = CgroupGuard::new(&prefix);
    let plan = SandboxPlan::new(
        &config(true),
        "born1",
        &format!("{prefix}/sb"),
        &layout,
        None,
    )
    .unwrap();
    let ctl = Supervisor::start(plan, SupervisorOptions::default()).unwrap();
    let want = expected(&layout, ctl.paths());
    let caller = Arc::new(Caller {
        inner: ctl.hooks_for_boot(4),
        seen: Mutex::new(Vec::new()),
    });
    let before = migration_writes();
    let mut vm = vmm(4, caller.clone());
    vm.start().unwrap();
    vm.hotplug(2).unwrap();
    let writes = migration_writes() - before;
    assert_eq!(writes, 0, "task migration writes while 6 vCPUs started");

    let seen = caller.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 6);
    for s in &seen {
        assert!(s.ok);
        assert_in_target(s, &want);
    }
    // And per /proc/<pid>/task/<tid>/cgroup, read by this thread.
    let me = std::process::id() as i32;
    for v in vm.vcpus() {
        assert_in(&layout, me, v.tid, &format!("{prefix}/sb"));
    }
    let recs = ctl.vcpus();
    assert_eq!(recs.len(), 6);
    for r in &recs {
        assert_eq!(r.placed_by, PlacedBy::Born, "{r:?}");
        assert_eq!(r.cgroup_writes, 0, "{r:?}");
        assert!(r.placed_after_us.is_some() && r.error.is_none(), "{r:?}");
    }
    vm.stop().unwrap();
    let report = ctl.shutdown(true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}

/// Split mode: each vCPU is in its target before its hook returns, read on the
/// vCPU thread right after the hook: the sandbox cgroup with the sibling split
/// (v1 + cgroupfs), the sandbox's `vcpus` child with the nested split (the default
/// on the other host kinds).
#[test]
fn split_mode_vcpus_are_in_their_target_when_the_hook_returns() {
    let _g = serial();
    let layout = layout();
    let prefix = unique("split");
    let guard = CgroupGuard::new(&prefix);
    let _overhead =
        CgroupGuard::new(&format!("kata_overhead/{prefix}")).and_parent_if_empty("kata_overhead");
    let plan = SandboxPlan::new(
        &config(false),
        "split1",
        &format!("{prefix}/sb"),
        &layout,
        None,
    )
    .unwrap();
    let moves = plan.placement == Placement::VcpuThreads;
    let nested = plan.vcpu_layout == host_cgroups::placement::VcpuLayout::Nested;
    let ctl = Supervisor::start(plan, SupervisorOptions::default()).unwrap();
    let target = if nested {
        ctl.vcpus_paths().unwrap().clone()
    } else {
        ctl.paths().clone()
    };
    let want = expected(&layout, &target);
    let caller = Arc::new(Caller {
        inner: ctl.hooks_for_boot(3),
        seen: Mutex::new(Vec::new()),
    });
    let before = migration_writes();
    let mut vm = vmm(3, caller.clone());
    vm.start().unwrap();
    vm.hotplug(1).unwrap();
    let writes = migration_writes() - before;
    let seen = caller.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert!(s.ok);
        assert_in_target(s, &want);
    }
    let recs = ctl.vcpus();
    let dirs = {
        let mut d: Vec<_> = target.values().cloned().collect();
        d.sort();
        d.dedup();
        d.len() as u64
    };
    if nested {
        // The process stays in the sandbox cgroup; each vCPU wrote `0` once per child dir.
        assert_eq!(writes, 4 * dirs);
        assert!(
            recs.iter().all(|r| r.placed_by == PlacedBy::SelfMove),
            "{recs:?}"
        );
        let me = std::process::id() as i32;
        let main = task_cgroups(me, me);
        for (c, p) in &expected(&layout, ctl.paths()) {
            assert_eq!(
                main.get(c),
                Some(p),
                "the main thread stays in the sandbox cgroup"
            );
        }
    } else if moves {
        // The process is elsewhere (overhead), the vCPUs moved themselves: one write per hierarchy.
        assert_eq!(writes, 4 * dirs);
        assert!(
            recs.iter().all(|r| r.placed_by == PlacedBy::SelfMove),
            "{recs:?}"
        );
        let me = std::process::id() as i32;
        let overhead = ctl.overhead_paths().unwrap().clone();
        let main = task_cgroups(me, me);
        let ow = expected(&layout, &overhead);
        for (c, p) in &ow {
            assert_eq!(
                main.get(c),
                Some(p),
                "the main thread stays in the overhead cgroup"
            );
        }
    } else {
        assert_eq!(writes, 0);
        assert!(
            recs.iter().all(|r| r.placed_by == PlacedBy::Born),
            "{recs:?}"
        );
    }
    vm.stop().unwrap();
    let report = ctl.shutdown(true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}

/// A vCPU born somewhere else than the supervisor expects (its spawner was moved
/// out of the sandbox cgroup by someone) is refused, never released unplaced.
#[test]
fn vcpu_in_the_wrong_cgroup_is_refused() {
    let _g = serial();
    let layout = layout();
    let prefix = unique("wrong");
    let guard = CgroupGuard::new(&prefix);
    let plan = SandboxPlan::new(
        &config(true),
        "wrong1",
        &format!("{prefix}/sb"),
        &layout,
        None,
    )
    .unwrap();
    let ctl = Supervisor::start(plan, SupervisorOptions::default()).unwrap();
    // Someone moves this whole process into another cgroup (one hierarchy is enough).
    let (key, mount) = match layout.version() {
        CgroupVersion::V1 => ("cpu".to_string(), layout.mounts["cpu"].clone()),
        CgroupVersion::V2 => ("unified".to_string(), layout.unified.clone().unwrap()),
    };
    let elsewhere = mount.join(&prefix).join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let me = std::process::id();
    std::fs::write(elsewhere.join("cgroup.procs"), me.to_string()).unwrap();

    let caller = Arc::new(Caller {
        inner: ctl.hooks(),
        seen: Mutex::new(Vec::new()),
    });
    let mut vm = vmm(1, caller.clone());
    let err = vm.start().unwrap_err();
    match &err {
        VmmError::Hook {
            index: 0,
            source:
                HookError::Refused {
                    reason:
                        PlacementError::WrongCgroup {
                            hierarchy, found, ..
                        },
                    ..
                },
        } => {
            assert_eq!(hierarchy, &key);
            assert_eq!(found, &format!("/{prefix}/elsewhere"));
        }
        other => panic!("unexpected: {other}"),
    }
    assert!(err.to_string().contains("elsewhere"), "{err}");
    assert!(vm.vcpus().is_empty());
    let recs = ctl.vcpus();
    assert_eq!(recs.len(), 1);
    assert!(
        recs[0].error.is_some() && recs[0].placed_after_us.is_none(),
        "{recs:?}"
    );

    // Back into the sandbox cgroup (where the supervisor put it), then teardown.
    let sb = &ctl.paths()[if key.is_empty() { "unified" } else { "cpu" }];
    std::fs::write(sb.join("cgroup.procs"), me.to_string()).unwrap();
    // The refused vCPU thread was joined, but a joined thread leaves the kernel a moment
    // later (its tid is cleared first): until then it keeps `elsewhere` busy (EBUSY).
    let start = std::time::Instant::now();
    while let Err(e) = std::fs::remove_dir(&elsewhere) {
        assert!(
            e.raw_os_error() == Some(libc::EBUSY)
                && start.elapsed() < std::time::Duration::from_secs(120),
            "rmdir {}: {e}",
            elsewhere.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(vm);
    let report = ctl.shutdown(true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}

/// With pinning on and as many boot vCPUs as CPUs in the cpuset, each vCPU has
/// its single-CPU affinity when its hook returns (read by the thread itself).
#[test]
fn vcpus_are_pinned_when_their_hook_returns() {
    let _g = serial();
    let online = host_cgroups::host::online_cpus().unwrap();
    if online.len() < 2 {
        return skip(
            "vcpus_are_pinned_when_their_hook_returns",
            "needs 2 online CPUs",
        );
    }
    let cpus: Vec<u32> = online.iter().take(2).collect();
    let layout = layout();
    let prefix = unique("pinhook");
    let guard = CgroupGuard::new(&prefix);
    let mut c = config(true);
    c.enable_vcpus_pinning = true;
    let plan = SandboxPlan::new(&c, "pinhook1", &format!("{prefix}/sb"), &layout, None).unwrap();
    let ctl = Supervisor::start(
        plan,
        SupervisorOptions {
            enable_vcpus_pinning: true,
            ..Default::default()
        },
    )
    .unwrap();
    let both = format!("{},{}", cpus[0], cpus[1]);
    ctl.update_container(
        "c1",
        Some(from_json(&format!(r#"{{"cpu":{{"cpus":"{both}"}}}}"#)).unwrap()),
    )
    .unwrap();
    let caller = Arc::new(Caller {
        inner: ctl.hooks_for_boot(2),
        seen: Mutex::new(Vec::new()),
    });
    let mut vm = vmm(2, caller.clone());
    vm.start().unwrap();
    let mut seen = caller.seen.lock().unwrap().clone();
    seen.sort_by_key(|s| s.index);
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(
            s.affinity,
            vec![cpus[s.index as usize]],
            "vCPU {} right after its hook",
            s.index
        );
    }
    let recs = ctl.vcpus();
    assert!(
        recs.iter()
            .all(|r| r.pinned_after_us.is_some() && r.pinned_cpu.is_some()),
        "{recs:?}"
    );
    // A third vCPU: three vCPUs on two CPUs, so every affinity is reset to the cpuset.
    vm.hotplug(1).unwrap();
    let seen = caller.seen.lock().unwrap().clone();
    let third = seen.iter().find(|s| s.index == 2).unwrap();
    assert_ne!(third.affinity.len(), 1, "not pinned: counts differ");
    vm.stop().unwrap();
    let report = ctl.shutdown(true);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}

/// `run --json` reports how each vCPU was placed: born with no write by default, on
/// a cgroupfs path and, on systemd hosts, on a systemd path (a transient scope).
#[test]
fn run_reports_born_vcpus_without_writes() {
    let _g = serial();
    let prefix = unique("runborn");
    let guard = CgroupGuard::new(&prefix);
    let mut paths = vec![(format!("{prefix}/sb"), "runborn1".to_string())];
    let systemd = std::env::var("HOSTCG_TESTHOST").is_ok_and(|h| h.starts_with("sd-"));
    let slice_tag = format!("hcg{:08x}", rand::random::<u32>());
    let _slice_guard = CgroupGuard::new(&format!("{slice_tag}.slice"));
    if systemd {
        paths.push((
            format!("{slice_tag}-pods.slice:kata:runborn2"),
            "runborn2".to_string(),
        ));
    }
    let state = std::env::temp_dir().join(&prefix);
    for (path, id) in &paths {
        let out = Command::new(BIN)
            .args([
                "run",
                "--cgroups-path",
                path,
                "--sandbox-id",
                id,
                "--vcpus",
                "3",
            ])
            .args(["--duration", "0.3", "--json", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{path}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let vcpus = v["vcpus"].as_array().unwrap();
        assert_eq!(vcpus.len(), 3, "{v}");
        for x in vcpus {
            assert_eq!(x["placed_by"], "born", "{path}: {x}");
            assert_eq!(x["cgroup_writes"], 0, "{path}: {x}");
            assert!(x["placed_after_us"].is_u64(), "{path}: {x}");
        }
    }
    if systemd {
        let _ = Command::new("systemctl")
            .args(["stop", &format!("{slice_tag}.slice")])
            .status();
    }
    let _ = std::fs::remove_dir_all(&state);
    assert!(guard.leftovers().is_empty(), "{:?}", guard.leftovers());
}
