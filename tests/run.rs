//! `host-cgroups run` end to end: real vCPU threads (KVM here, the thread
//! backend in the test hosts) placed by the supervisor, checked from /proc.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cli::{cleanup, run_args, WAIT};
use common::*;
use host_cgroups::host::{CgroupLayout, CgroupVersion};
use serde_json::Value;

/// Threads of `pid`, (tid, name): the `db_vcpu*` ones (`vcpu`) or all others.
fn threads(pid: i32, vcpu: bool) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
    {
        let tid: i32 = e.file_name().to_string_lossy().parse().unwrap();
        let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if name.starts_with("db_vcpu") == vcpu {
            out.push((tid, name.trim().to_string()));
        }
    }
    out
}

/// `db_vcpu*` threads of `pid`, in tid order.
fn vcpu_threads(pid: i32) -> Vec<(i32, String)> {
    let mut out = threads(pid, true);
    out.sort();
    out
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(tag));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(dir: &Path, sandbox_cgroup_only: bool, maxvcpus: u32, pinning: bool) -> String {
    let p = dir.join("configuration.toml");
    std::fs::write(
        &p,
        format!(
            "[hypervisor.dragonball]\ndefault_vcpus = 1\ndefault_maxvcpus = {maxvcpus}\n\
             [runtime]\nhypervisor_name = \"dragonball\"\nsandbox_cgroup_only = {sandbox_cgroup_only}\n\
             enable_vcpus_pinning = {pinning}\n"
        ),
    )
    .unwrap();
    p.to_string_lossy().into_owned()
}

/// One test's cgroup prefix (and its overhead twin), state directory and config; removed on drop.
struct Fixture {
    prefix: String,
    guard: CgroupGuard,
    _overhead: CgroupGuard,
    dir: PathBuf,
    cfg: String,
    rel: String,
    state: String,
}

impl Fixture {
    fn new(tag: &str, sandbox_cgroup_only: bool) -> Self {
        let prefix = unique(tag);
        let guard = CgroupGuard::new(&prefix);
        let overhead = CgroupGuard::new(&format!("kata_overhead/{prefix}"))
            .and_parent_if_empty("kata_overhead");
        let dir = tmp("state");
        let cfg = config(&dir, sandbox_cgroup_only, 8, false);
        Fixture {
            rel: format!("{prefix}/sb"),
            state: dir.to_string_lossy().into_owned(),
            prefix,
            guard,
            _overhead: overhead,
            dir,
            cfg,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn place_and_check(vcpus: u32, sandbox_cgroup_only: bool) {
    let layout = layout();
    let fx = Fixture::new("run", sandbox_cgroup_only);
    let (cfg, rel, state) = (fx.cfg.clone(), fx.rel.clone(), fx.state.clone());
    let mut run = run_args(&rel, &fx.prefix, &state)
        .config(&cfg)
        .vcpus(vcpus)
        .duration("600")
        .json()
        .spawn();
    run.wait_for("running");
    let pid = run.pid();
    let vcpu = vcpu_threads(pid);
    assert_eq!(vcpu.len(), vcpus as usize, "{vcpu:?}");
    let placement_v1_fs = layout.version() == CgroupVersion::V1;
    // Split on cgroup v2: the nested layout (vcpu_cgroup_layout defaults to nested
    // there): vCPUs in the sandbox's `vcpus` child, the rest in the sandbox cgroup.
    // On v1 + cgroupfs the default stays upstream's sibling split (overhead cgroup).
    let vcpus_at = if !sandbox_cgroup_only && !placement_v1_fs {
        format!("{rel}/vcpus")
    } else {
        rel.clone()
    };
    for (tid, name) in &vcpu {
        assert!(name.starts_with("db_vcpu"));
        assert_in(&layout, pid, *tid, &vcpus_at);
    }
    // The overhead cgroup is named after the sandbox id (here the unique prefix).
    let overhead = format!("kata_overhead/{}", fx.prefix);
    for (tid, name) in threads(pid, false) {
        let want = if !sandbox_cgroup_only && placement_v1_fs {
            &overhead
        } else {
            &rel
        };
        // KVM's worker joins the first vCPU's cgroups (kernel rule), wherever its process is.
        if name.starts_with("kvm") {
            continue;
        }
        assert_in(&layout, pid, tid, want);
    }
    // Stop it early (SIGTERM ends the run and cleans up).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (status, v, err) = run.finish();
    assert!(status.success(), "{status:?} {err:#?}");
    assert_eq!(v["vcpus"].as_array().unwrap().len(), vcpus as usize, "{v}");
    for c in v["vcpus"].as_array().unwrap() {
        assert!(c["placed_after_us"].is_u64(), "{c}");
    }
    assert!(v["cleanup"]["errors"].as_array().unwrap().is_empty(), "{v}");
    assert!(
        fx.guard.leftovers().is_empty(),
        "{:?}",
        fx.guard.leftovers()
    );
    assert!(!layout.mounts.values().any(|m| m.join(&overhead).exists()));
}

#[test]
fn one_vcpu_placed() {
    place_and_check(1, true);
}

#[test]
fn two_vcpus_placed() {
    place_and_check(2, true);
}

#[test]
fn eight_vcpus_placed() {
    place_and_check(8, true);
}

#[test]
fn overhead_cgroup_holds_the_rest_when_not_sandbox_only() {
    place_and_check(2, false);
}

#[test]
fn hotplug_places_new_threads_and_unplug_records_exits() {
    let layout = layout();
    let fx = Fixture::new("hotplug", true);
    let (cfg, rel, state) = (fx.cfg.clone(), fx.rel.clone(), fx.state.clone());
    // Kata brings the vCPU maximum down to the host's CPUs: hotplug within them.
    let host = host_cgroups::host::online_cpus().unwrap().len();
    if host < 2 {
        eprintln!("skip: hotplug needs 2 host CPUs");
        return;
    }
    let (top, low) = (host.min(4), host.min(4) / 2);
    let mut run = run_args(&rel, "hp", &state)
        .config(&cfg)
        .vcpus(1)
        .hotplug(top)
        .unplug_to(low)
        .duration("600")
        .json()
        .spawn();
    run.wait_for(&format!("hotplugged to {top}"));
    let pid = run.pid();
    let vcpu = vcpu_threads(pid);
    assert_eq!(vcpu.len(), top, "{vcpu:?}");
    for (tid, _) in &vcpu {
        assert_in(&layout, pid, *tid, &rel);
    }
    run.wait_for(&format!("unplugged to {low}"));
    // pthread_join returns when the thread's tid futex is cleared, a moment before
    // the kernel drops the task from /proc: wait for that, without a tight bound.
    let start = Instant::now();
    while vcpu_threads(pid).len() != low {
        assert!(start.elapsed() < WAIT, "{:?}", vcpu_threads(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (status, v, err) = run.finish();
    assert!(status.success(), "{status:?} {err:#?}");
    let recs = v["vcpus"].as_array().unwrap();
    assert_eq!(recs.len(), top, "{v}");
    let exited: Vec<u64> = recs
        .iter()
        .filter(|r| r["exited"] == true)
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(exited, (low as u64..top as u64).collect::<Vec<_>>(), "{v}");
    assert!(fx.guard.leftovers().is_empty());
}

fn usage_run(prefix: &str, resources: Option<&str>) -> Value {
    let dir = tmp("state");
    let rel = format!("{prefix}/sb");
    let state = dir.to_string_lossy().into_owned();
    let mut args = run_args(&rel, "q", &state).vcpus(2).duration("3").json();
    if let Some(r) = resources {
        args = args.resources(r);
    }
    let (status, v, err) = args.spawn().finish();
    assert!(status.success(), "{status:?} {err:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
    v
}

#[test]
fn quota_holds_two_spinning_vcpus_to_half_a_cpu() {
    let prefix = unique("quota");
    let guard = CgroupGuard::new(&prefix);
    let v = usage_run(&prefix, Some(r#"{"cpu":{"quota":50000,"period":100000}}"#));
    let cpu = v["usage"]["cpu_ns"].as_u64().unwrap() as f64 / 1e9;
    let wall = v["wall_seconds"].as_f64().unwrap();
    let throttled = v["usage"]["throttled_periods"].as_u64().unwrap();
    eprintln!("with quota: {cpu:.3} CPU-s in {wall:.2} s, throttled {throttled} periods");
    // The kernel enforces the quota per period: at most 0.5 CPU-s/s, with slack
    // for the partial first period and set-up work before the limit applied.
    assert!(cpu <= 0.6 * wall + 0.1, "{cpu} CPU-s in {wall} s");
    // Throttling shows once the vCPUs could have used more than the quota; on a
    // machine so loaded that they got less, there is nothing to throttle.
    assert!(throttled > 0 || cpu < 0.45 * wall, "{v}");

    let v = usage_run(&prefix, None);
    let cpu2 = v["usage"]["cpu_ns"].as_u64().unwrap() as f64 / 1e9;
    let wall2 = v["wall_seconds"].as_f64().unwrap();
    eprintln!("without quota: {cpu2:.3} CPU-s in {wall2:.2} s (well above 1 CPU-s/s on an idle 2-core host)");
    assert_eq!(v["usage"]["throttled_periods"].as_u64(), Some(0), "{v}");
    assert!(guard.leftovers().is_empty());
}

#[test]
fn killed_run_is_cleaned_up_by_cleanup() {
    let layout: CgroupLayout = layout();
    let fx = Fixture::new("crash", false);
    let (prefix, cfg, rel, state) = (
        fx.prefix.clone(),
        fx.cfg.clone(),
        fx.rel.clone(),
        fx.state.clone(),
    );
    let dir = fx.dir.clone();
    let mut run = run_args(&rel, "crash1", &state)
        .config(&cfg)
        .vcpus(2)
        .duration("600")
        .spawn();
    run.wait_for("running");
    let pid = run.pid();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (status, _, _) = run.finish();
    assert!(!status.success());
    assert!(
        !fx.guard.leftovers().is_empty(),
        "the killed run should have left its cgroups"
    );
    let out = cleanup("crash1", &state);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fx.guard.leftovers().is_empty(),
        "{:?}",
        fx.guard.leftovers()
    );
    let overhead = format!("kata_overhead/{prefix}");
    assert!(!common::mounts(&layout)
        .iter()
        .any(|m| m.join(&overhead).exists()));
    assert!(!dir.join("crash1.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A container's fields the layout does not apply (all but the cpuset with
/// `sandbox-only`/`sibling`) are named in `notes`, the cpuset is applied, and the run
/// succeeds; a cpuset alone gives no such note.
#[test]
fn container_fields_not_applied_are_noted() {
    for (only, tag) in [(true, "ctrnote"), (false, "ctrnotesib")] {
        let fx = Fixture::new(tag, only);
        let run = |res: &str| {
            let (status, v, err) = run_args(&fx.rel, &fx.prefix, &fx.state)
                .config(&fx.cfg)
                .vcpus(1)
                .duration("0")
                .container_resources(res)
                .json()
                .spawn()
                .finish();
            assert!(status.success(), "{status:?} {err:#?}");
            v
        };
        let v = run(
            r#"{"cpu":{"cpus":"0","quota":50000,"period":100000},"memory":{"limit":536870912}}"#,
        );
        let notes: Vec<&str> = v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|n| n.as_str())
            .filter(|n| n.contains("not applied to the host"))
            .collect();
        assert_eq!(notes.len(), 1, "{v}");
        for field in ["c0", "cpu.quota", "cpu.period", "memory.limit"] {
            assert!(notes[0].contains(field), "no {field}: {}", notes[0]);
        }
        // The cpuset was applied: not in the list (the reason names it as what applies).
        let list = notes[0].split(" (with").next().unwrap();
        assert!(!list.contains("cpu.cpus"), "{}", notes[0]);
        assert!(notes[0].contains(v["vcpu_layout"].as_str().unwrap()), "{v}");
        let v = run(r#"{"cpu":{"cpus":"0"}}"#);
        assert!(
            !v["notes"].to_string().contains("not applied to the host"),
            "{v}"
        );
        assert!(fx.guard.leftovers().is_empty());
    }
}

/// `--vcpus` above the maximum in force (Kata's: at most the host's CPUs) boots as
/// asked with a note naming both, and raises the hotplug ceiling to itself; `--hotplug`
/// above that ceiling is refused (exit 2) naming the raise.
#[test]
fn vcpus_above_the_maximum_boot_with_a_note() {
    let fx = Fixture::new("vcpumax", true);
    let host = host_cgroups::host::online_cpus().unwrap().len();
    let n = (host + 1).to_string();
    let base = run_args(&fx.rel, &fx.prefix, &fx.state)
        .config(&fx.cfg)
        .duration("0")
        .json()
        .vcpus(&n);
    let (status, v, err) = base.spawn().finish();
    assert!(status.success(), "{status:?} {err:#?}");
    assert_eq!(v["vcpus"].as_array().unwrap().len(), host + 1, "{v}");
    let note = v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .find(|s| {
            s.contains(&format!(
                "--vcpus {n} is above the vCPU maximum in force, {host}"
            ))
        })
        .unwrap_or_else(|| panic!("no --vcpus note: {v}"))
        .to_string();
    assert!(note.contains(&format!("raised to {n}")), "{note}");

    let more = (host + 2).to_string();
    let (status, _, err) = base.hotplug(&more).spawn().finish();
    assert_eq!(status.code(), Some(2), "{err:#?}");
    let err = err.join("\n");
    assert!(
        err.contains(&format!(
            "--hotplug {more} exceeds the vCPU maximum in force, {n}"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("--vcpus {n} raised it from {host}")),
        "{err}"
    );
    assert!(fx.guard.leftovers().is_empty());
}
