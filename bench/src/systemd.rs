//! `bench systemd`: round trips to systemd for one sandbox, three ways in one
//! run: this project's systemd driver (through the `Manager` trait),
//! `systemd-run --scope` + `systemctl set-property --runtime` + `systemctl stop`,
//! and `cgroups-rs`'s `SystemdManager`.
//!
//! One round trip: start a transient scope holding a process (a `sleep` this
//! bench started) and return only once that process is really in the unit's
//! cgroup (read from `/proc/<pid>/cgroup`), set a CPU quota, stop the unit.
//! Each step is timed on its own.
//!
//! Where systemd is not PID 1 or the system bus does not answer (the
//! development machine), the bench says "systemd not reachable" and writes
//! that as its result; the figures are taken inside the systemd test hosts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::machine::{self, Machine};
use super::report::{self, cdf_svg, num, Series, Table};
use super::stats::{ratio, round3, Summary};
use super::util;
use super::{BenchError, Common, Context};
use host_cgroups::host::{parse_proc_cgroup, CgroupLayout, CgroupVersion};
use host_cgroups::manager;
use host_cgroups::path::CgroupsPath;
use host_cgroups::resources;

/// Arguments of `bench systemd`.
#[derive(Debug, Args)]
pub struct SystemdArgs {
    /// Output options.
    #[command(flatten)]
    pub common: Common,
    /// Round trips per implementation.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub runs: u32,
    /// The slice the scopes go in.
    #[arg(long, value_name = "SLICE", default_value = "system.slice")]
    pub slice: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Project,
    SystemdRun,
    CgroupsRs,
}

impl Impl {
    const ALL: [Impl; 3] = [Impl::Project, Impl::SystemdRun, Impl::CgroupsRs];

    fn name(self) -> &'static str {
        match self {
            Impl::Project => "host-cgroups",
            Impl::SystemdRun => "systemd-run --scope",
            Impl::CgroupsRs => "cgroups-rs SystemdManager",
        }
    }
}

/// A `sleep` this bench started; killed (by its pid) and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn spawn(cmd: &mut Command) -> Result<Self, BenchError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Sleeper)
            .map_err(|e| BenchError::step("spawn sleep", e))
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `pid` is in the cgroup `relative` of the systemd-managed hierarchy.
fn wait_in_cgroup(pid: i32, relative: &str, version: CgroupVersion) -> Result<(), BenchError> {
    let key = match version {
        CgroupVersion::V1 => "name=systemd",
        CgroupVersion::V2 => "",
    };
    let want = format!("/{}", relative.trim_start_matches('/'));
    let start = Instant::now();
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|t| parse_proc_cgroup(&t))
            .map_err(|e| BenchError::step(format!("read /proc/{pid}/cgroup"), e))?;
        if now.get(key).is_some_and(|p| p == &want) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(BenchError::step(
                format!("process {pid} in {want}"),
                format!("still in {:?} after 10 s", now.get(key)),
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn sleep_cmd() -> Command {
    let mut c = Command::new("sleep");
    c.arg("300");
    c
}

fn systemctl(args: &[&str]) -> Result<(), BenchError> {
    let st = Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| BenchError::step("run systemctl", e))?;
    if !st.success() {
        return Err(BenchError::step(
            format!("systemctl {}", args.join(" ")),
            st,
        ));
    }
    Ok(())
}

/// (start, set, stop) in µs.
type Steps = (f64, f64, f64);

fn once(
    which: Impl,
    layout: &CgroupLayout,
    slice: &str,
    id: &str,
    res: &oci_spec::runtime::LinuxResources,
) -> Result<Steps, BenchError> {
    let raw = format!("{slice}:hcgbench:{id}");
    let parsed = CgroupsPath::parse(&raw, id).map_err(|e| BenchError::step("cgroups path", e))?;
    let unit = parsed
        .unit()
        .map(|u| u.unit.clone())
        .ok_or_else(|| BenchError::step("cgroups path", "not a systemd path"))?;
    let rel = parsed.relative();
    let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
    let version = layout.version();
    match which {
        Impl::Project => {
            let child = Sleeper::spawn(&mut sleep_cmd())?;
            let t = Instant::now();
            let mut m = manager::build(&parsed, layout, Vec::new())
                .map_err(|e| BenchError::step("host-cgroups systemd driver", e))?;
            m.create()
                .map_err(|e| BenchError::step("host-cgroups create", e))?;
            m.add_proc(child.pid())
                .map_err(|e| BenchError::step("host-cgroups add_proc", e))?;
            wait_in_cgroup(child.pid(), &rel, version)?;
            let start = us(t);
            let t = Instant::now();
            m.set(res)
                .map_err(|e| BenchError::step("host-cgroups set", e))?;
            let set = us(t);
            let t = Instant::now();
            let d = m.destroy();
            let stop = us(t);
            drop(child);
            d.map_err(|e| BenchError::step("host-cgroups destroy", e))?;
            Ok((start, set, stop))
        }
        Impl::SystemdRun => {
            let t = Instant::now();
            let mut cmd = Command::new("systemd-run");
            cmd.args(["--scope", "--quiet", "--collect"])
                .arg(format!("--unit={unit}"))
                .arg(format!("--slice={slice}"))
                .args(["sleep", "300"]);
            // systemd-run --scope puts itself in the scope, then execs the command.
            let child = Sleeper::spawn(&mut cmd)?;
            wait_in_cgroup(child.pid(), &rel, version)?;
            let start = us(t);
            let t = Instant::now();
            systemctl(&["set-property", "--runtime", &unit, "CPUQuota=50%"])?;
            let set = us(t);
            let t = Instant::now();
            let r = systemctl(&["stop", &unit]);
            let stop = us(t);
            drop(child);
            r?;
            Ok((start, set, stop))
        }
        Impl::CgroupsRs => {
            use cgroups_rs::manager::Manager as _;
            let child = Sleeper::spawn(&mut sleep_cmd())?;
            let t = Instant::now();
            let mut m = cgroups_rs::manager::SystemdManager::new(&raw)
                .map_err(|e| BenchError::step("cgroups-rs SystemdManager", e))?;
            m.add_proc(cgroups_rs::CgroupPid::from(child.pid() as u64))
                .map_err(|e| BenchError::step("cgroups-rs add_proc", e))?;
            wait_in_cgroup(child.pid(), &rel, version)?;
            let start = us(t);
            let t = Instant::now();
            m.set(res)
                .map_err(|e| BenchError::step("cgroups-rs set", e))?;
            let set = us(t);
            let t = Instant::now();
            let d = m.destroy();
            let stop = us(t);
            drop(child);
            d.map_err(|e| BenchError::step("cgroups-rs destroy", e))?;
            Ok((start, set, stop))
        }
    }
}

/// Runs `bench systemd`.
pub fn run(args: &SystemdArgs, ctx: &Context) -> Result<(), BenchError> {
    let info = host_cgroups::manager::systemd_info();
    let load_start = machine::loadavg();
    let machine = Machine::now();
    if !info.reachable {
        let reason = if info.pid1 {
            "systemd is PID 1 but the system bus does not answer"
        } else {
            "systemd is not PID 1 here"
        };
        ctx.progress.status(&format!(
            "bench systemd: systemd not reachable ({reason}); nothing measured"
        ));
        let markdown = format!(
            "## systemd round trips\n\nsystemd not reachable ({reason}): nothing measured. \
             Run inside the systemd test hosts, e.g. \
             `tests/hosts/run-in-host sd-v2 -- host-cgroups bench systemd`.\n"
        );
        return report::emit(
            ctx,
            &args.common,
            report::Output {
                name: "systemd",
                result: &json!({
                    "bench": "systemd",
                    "command": "host-cgroups bench systemd",
                    "status": "systemd not reachable",
                    "reason": reason,
                    "machine": machine,
                    "results": [],
                }),
                markdown,
                svg: None,
            },
        );
    }
    let layout = CgroupLayout::detect().map_err(|e| BenchError::Unsupported(e.to_string()))?;
    let res = resources::from_json(r#"{"cpu":{"quota":50000,"period":100000}}"#)
        .map_err(|e| BenchError::step("resources", e))?;
    let systemd_run =
        Path::new("/usr/bin/systemd-run").exists() || Path::new("/bin/systemd-run").exists();
    let t0 = Instant::now();
    let mut steps: Vec<(Impl, Vec<Steps>, Option<String>)> =
        Impl::ALL.iter().map(|i| (*i, Vec::new(), None)).collect();
    let tag = format!("{:08x}", util::random_u32());
    for r in 0..args.runs.max(1) {
        for k in 0..3 {
            let idx = (r as usize + k) % 3;
            let (which, got, failed) = &mut steps[idx];
            if failed.is_some() || (*which == Impl::SystemdRun && !systemd_run) {
                continue;
            }
            let id = format!("{tag}-{}{r}", idx);
            match once(*which, &layout, &args.slice, &id, &res) {
                Ok(s) => got.push(s),
                // One implementation failing (e.g. this build has no systemd driver yet)
                // does not stop the others.
                Err(e) => *failed = Some(e.to_string()),
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let load_end = machine::loadavg();
    let mut t = Table::new(&[
        "implementation",
        "start p50 ms",
        "start p99 ms",
        "start max ms",
        "set p50 ms",
        "stop p50 ms",
        "round trip p50 ms",
        "note",
    ]);
    let mut results = Vec::new();
    let mut series = Vec::new();
    // p50 of one step (0 start, 1 set, 2 stop, 3 the whole round trip) of `i`.
    let p50 = |i: Impl, step: usize| {
        steps
            .iter()
            .find(|(w, _, _)| *w == i)
            .map(|(_, s, _)| {
                let v: Vec<f64> = s
                    .iter()
                    .map(|x| match step {
                        0 => x.0,
                        1 => x.1,
                        2 => x.2,
                        _ => x.0 + x.1 + x.2,
                    })
                    .collect();
                Summary::of(&v).p50
            })
            .unwrap_or(0.0)
    };
    for (which, got, failed) in &steps {
        let start = Summary::of(&got.iter().map(|s| s.0).collect::<Vec<_>>()).scaled(1e-3);
        let set = Summary::of(&got.iter().map(|s| s.1).collect::<Vec<_>>()).scaled(1e-3);
        let stop = Summary::of(&got.iter().map(|s| s.2).collect::<Vec<_>>()).scaled(1e-3);
        let total =
            Summary::of(&got.iter().map(|s| s.0 + s.1 + s.2).collect::<Vec<_>>()).scaled(1e-3);
        let note = match (failed, *which == Impl::SystemdRun && !systemd_run) {
            (_, true) => "systemd-run not installed".to_string(),
            (Some(e), _) => format!("failed: {e}"),
            (None, _) => String::new(),
        };
        t.row(vec![
            format!("`{}`", which.name()),
            num(start.p50),
            num(start.p99),
            num(start.max),
            num(set.p50),
            num(stop.p50),
            num(total.p50),
            note.clone(),
        ]);
        series.push(Series {
            label: format!("{} start", which.name()),
            values: got.iter().map(|s| s.0 / 1e3).collect(),
        });
        results.push(json!({
            "impl": which.name(),
            "runs": got.len(),
            "start": {"p50_ms": round3(start.p50), "p99_ms": round3(start.p99), "max_ms": round3(start.max)},
            "set": {"p50_ms": round3(set.p50), "p99_ms": round3(set.p99), "max_ms": round3(set.max)},
            "stop": {"p50_ms": round3(stop.p50), "p99_ms": round3(stop.p99), "max_ms": round3(stop.max)},
            "round_trip": {"p50_ms": round3(total.p50), "p99_ms": round3(total.p99), "max_ms": round3(total.max)},
            "error": failed,
        }));
    }
    let vs = |step: usize| ratio(p50(Impl::Project, step), p50(Impl::SystemdRun, step));
    let (vs_run, vs_set, vs_stop, vs_total) = (vs(0), vs(1), vs(2), vs(3));
    let within = |r: f64, bound: f64| report::yes_no(r > 0.0 && r <= bound);
    let markdown = format!(
        "## systemd round trips (cgroup v{}, systemd driver)\n\n\
         Command: `host-cgroups bench systemd` ({elapsed:.0} s)\n\n{}\n\
         Start = from the call until the process is in the unit's cgroup (read from /proc); set = a CPU \
         quota of 50 %; stop = the unit stopped.\n\n{}\n\
         Targets (p50 against systemd's own tools in this run): start no slower than \
         `systemd-run --scope`: {} ({vs_run:.2}×); set no slower than `systemctl set-property \
         --runtime`: {} ({vs_set:.2}×); stop no slower than `systemctl stop`: {} ({vs_stop:.2}×); \
         round trip at most 0.5× theirs: {} ({vs_total:.2}×).\n",
        layout.version().number(),
        machine::load_note(load_start, load_end),
        t.markdown(),
        within(vs_run, 1.0),
        within(vs_set, 1.0),
        within(vs_stop, 1.0),
        within(vs_total, 0.5),
    );
    let json: Value = json!({
        "bench": "systemd",
        "command": "host-cgroups bench systemd",
        "status": "measured",
        "cgroup_version": layout.version().number(),
        "machine": machine,
        "loadavg_end": load_end,
        "elapsed_s": round3(elapsed),
        "results": results,
        "start_vs_systemd_run_p50": round3(vs_run),
        "set_vs_systemctl_set_property_p50": round3(vs_set),
        "stop_vs_systemctl_stop_p50": round3(vs_stop),
        "round_trip_vs_systemd_tools_p50": round3(vs_total),
    });
    let svg = cdf_svg(
        "systemd: transient scope start until the process is in the cgroup",
        "ms, log scale",
        &series,
    );
    report::emit(
        ctx,
        &args.common,
        report::Output {
            name: "systemd",
            result: &json,
            markdown,
            svg: Some(svg),
        },
    )
}
