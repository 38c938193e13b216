//! The `host-cgroups` command line: parses arguments, adds context to errors
//! and maps them to exit codes (2 bad input, 1 runtime failure).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

mod cleanup;
mod run;

use clap::{Args, Parser, Subcommand};
use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use host_cgroups::config::{load_bundle, RuntimeConfig};
use host_cgroups::host::{CgroupLayout, CgroupVersion, KvmInfo, SystemdInfo};
use host_cgroups::plan::{nominal_layout, SandboxPlan};
use host_cgroups::resources;

/// An error the CLI reports, with the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    /// Bad input: exit code 2; nothing was changed.
    BadInput(String),
    /// The host refused or failed: exit code 1.
    Runtime(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::BadInput(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::BadInput(m) | CliError::Runtime(m) => f.write_str(m),
        }
    }
}

fn bad(e: impl fmt::Display) -> CliError {
    CliError::BadInput(e.to_string())
}

fn runtime(e: impl fmt::Display) -> CliError {
    CliError::Runtime(e.to_string())
}

/// Host cgroup placement for in-process VMM sandboxes.
#[derive(Debug, Parser)]
#[command(name = "host-cgroups", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Detect the host: cgroup hierarchy, controllers, mounts, systemd and KVM.
    Check(CheckArgs),
    /// Show the driver, cgroups and placement a sandbox would get (no side effects).
    Resolve(ResolveArgs),
    /// Boot a sandbox with the in-process VMM, place its threads, report, clean up.
    Run(run::RunArgs),
    /// List every thread of a process with its cgroups.
    Inspect(InspectArgs),
    /// Remove what a crashed run left: its cgroups and state.
    Cleanup(cleanup::CleanupArgs),
    /// Benchmarks: placement, lifecycle, systemd, scale, hooks.
    Bench(crate::bench::BenchArgs),
}

/// Arguments of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The process.
    #[arg(long, value_name = "PID")]
    pub pid: i32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn inspect(args: &InspectArgs) -> Result<(), CliError> {
    if args.pid <= 0 {
        return Err(bad(format!("--pid {} is not a process id", args.pid)));
    }
    let threads = host_cgroups::host::threads(args.pid)
        .map_err(|e| bad(format!("process {}: {e}", args.pid)))?;
    if args.json {
        return print_json(&serde_json::json!({ "pid": args.pid, "threads": threads }));
    }
    print_threads(&threads);
    Ok(())
}

/// Prints a thread table: tid, name, role, and the cgroup per controller.
pub fn print_threads(threads: &[host_cgroups::host::ThreadInfo]) {
    println!("{:<8} {:<16} {:<10} cgroups", "tid", "name", "role");
    for t in threads {
        let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
        for (c, p) in &t.cgroups {
            match groups.iter_mut().find(|(gp, _)| gp == p) {
                Some((_, cs)) => cs.push(c),
                None => groups.push((p.clone(), vec![c])),
            }
        }
        let cg: Vec<String> = groups
            .iter()
            .map(|(p, cs)| format!("{}={p}", cs.join(",")))
            .collect();
        println!(
            "{:<8} {:<16} {:<10} {}",
            t.tid,
            t.name,
            t.role,
            cg.join(" ")
        );
    }
}

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Arguments naming a sandbox and its configuration, shared by several subcommands.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// The sandbox cgroups path: `slice:prefix:name` (systemd), a path (cgroupfs), or empty.
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    pub cgroups_path: Option<OsString>,
    /// The sandbox id.
    #[arg(long, value_name = "ID")]
    pub sandbox_id: Option<String>,
    /// The Kata runtime TOML (default: the embedded dragonball configuration).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OCI LinuxResources as JSON, or @FILE to read it from a file.
    #[arg(long, value_name = "JSON|@FILE")]
    pub resources: Option<String>,
}

/// Arguments of `resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The sandbox.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Plan for a host of this cgroup version instead of this host.
    #[arg(long, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub cgroup_version: Option<u8>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Reads `--resources`: inline JSON or `@FILE`; the warnings (unknown keys) go to `notes`.
pub fn load_resources(
    arg: Option<&str>,
) -> Result<(Option<LinuxResources>, Vec<String>), CliError> {
    let Some(arg) = arg else {
        return Ok((None, Vec::new()));
    };
    let text = match arg.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| bad(format!("cannot read --resources file {file}: {e}")))?,
        None => arg.to_string(),
    };
    let parsed = resources::parse_json(&text).map_err(bad)?;
    resources::validate(&parsed.resources).map_err(bad)?;
    Ok((Some(parsed.resources), parsed.warnings))
}

/// The cgroups path as UTF-8, refusing other bytes with the value shown.
pub fn cgroups_path_str(p: Option<&OsString>) -> Result<String, CliError> {
    match p {
        None => Ok(String::new()),
        Some(os) => os.to_str().map(str::to_string).ok_or_else(|| {
            bad(format!(
                "cgroups path {:?} is not valid UTF-8",
                os.to_string_lossy()
            ))
        }),
    }
}

/// Loads the configuration named by `--config`.
pub fn load_config(p: Option<&PathBuf>) -> Result<RuntimeConfig, CliError> {
    RuntimeConfig::load(p.map(PathBuf::as_path)).map_err(bad)
}

/// The host's layout, or a nominal one for `--cgroup-version`.
pub fn layout_for(version: Option<u8>) -> Result<CgroupLayout, CliError> {
    let host = CgroupLayout::detect();
    match (version, host) {
        (None, Ok(l)) => Ok(l),
        (None, Err(e)) => Err(runtime(e)),
        (Some(v), host) => {
            let want = if v == 1 {
                CgroupVersion::V1
            } else {
                CgroupVersion::V2
            };
            match host {
                Ok(l) if l.version() == want => Ok(l),
                _ => Ok(nominal_layout(want)),
            }
        }
    }
}

#[derive(Serialize)]
struct CheckReport {
    hierarchy: host_cgroups::host::Hierarchy,
    cgroup_version: u8,
    controllers: Vec<String>,
    mounts: std::collections::BTreeMap<String, PathBuf>,
    unified: Option<PathBuf>,
    own_cgroups: std::collections::BTreeMap<String, String>,
    systemd: SystemdInfo,
    kvm: KvmInfo,
    vcpu_backend: &'static str,
}

fn check(args: &CheckArgs) -> Result<(), CliError> {
    let layout = CgroupLayout::detect().map_err(runtime)?;
    let kvm = KvmInfo::detect();
    let report = CheckReport {
        hierarchy: layout.hierarchy,
        cgroup_version: layout.version().number(),
        controllers: layout.controllers(),
        mounts: layout.mounts.clone(),
        unified: layout.unified.clone(),
        own_cgroups: layout.own.clone(),
        systemd: host_cgroups::manager::systemd_info(),
        vcpu_backend: if kvm.available { "kvm" } else { "thread" },
        kvm,
    };
    if args.json {
        print_json(&report)?;
        return Ok(());
    }
    println!(
        "cgroup hierarchy: {} (drivers act on cgroup v{})",
        serde_json::to_value(report.hierarchy)
            .map_err(runtime)?
            .as_str()
            .unwrap_or("?"),
        report.cgroup_version
    );
    println!("controllers:      {}", report.controllers.join(" "));
    for (c, m) in &report.mounts {
        println!("  {c:<14} {}", m.display());
    }
    if let Some(u) = &report.unified {
        println!("  {:<14} {}", "(cgroup2)", u.display());
    }
    println!(
        "systemd:          {}",
        if report.systemd.reachable {
            "PID 1, reachable over D-Bus"
        } else if report.systemd.pid1 {
            "PID 1, but the system bus does not answer"
        } else {
            "not PID 1 (the systemd driver is unavailable)"
        }
    );
    match (&report.kvm.api_version, &report.kvm.reason) {
        (Some(v), _) => {
            println!("kvm:              available (API version {v}); vCPU backend: kvm")
        }
        (None, r) => println!(
            "kvm:              unavailable ({}); vCPU backend: thread",
            r.as_deref().unwrap_or("unknown")
        ),
    }
    Ok(())
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(v: &impl Serialize) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(runtime)?;
    println!("{s}");
    Ok(())
}

fn resolve(args: &ResolveArgs) -> Result<(), CliError> {
    let config = load_config(args.sandbox.config.as_ref())?;
    let path = cgroups_path_str(args.sandbox.cgroups_path.as_ref())?;
    let id = args
        .sandbox
        .sandbox_id
        .clone()
        .ok_or_else(|| bad("--sandbox-id is required"))?;
    let (res, warnings) = load_resources(args.sandbox.resources.as_deref())?;
    let layout = layout_for(args.cgroup_version)?;
    let mut plan = SandboxPlan::new(&config, &path, &id, &layout, res.as_ref()).map_err(bad)?;
    plan.notes.extend(warnings);
    if args.json {
        return print_json(&plan);
    }
    println!("driver:        {}", plan.driver);
    println!("cgroup:        v{}", plan.cgroup_version);
    println!("placement:     {}", plan.placement);
    println!("sandbox:       {}", plan.sandbox.path);
    if let (Some(s), Some(u)) = (&plan.sandbox.slice, &plan.sandbox.unit) {
        println!("  slice/unit:  {s} / {u}");
    }
    for (c, p) in &plan.sandbox.paths {
        println!("  {c:<11}  {}", p.display());
    }
    match &plan.overhead {
        Some(o) => println!("overhead:      {}", o.path),
        None => println!("overhead:      none"),
    }
    println!("vcpu layout:   {}", plan.vcpu_layout);
    println!("  why:         {}", plan.vcpu_layout_reason);
    if let Some(c) = &plan.vcpus_child {
        println!("vcpus child:   {}", c.path);
        for (ctl, p) in &c.paths {
            println!("  {ctl:<11}  {}", p.display());
        }
        if let Some(t) = &c.cgroup_type {
            println!("  cgroup.type  {t}");
        }
        println!(
            "  {:<11}  {}",
            if plan.cgroup_version == 2 {
                "controllers"
            } else {
                "hierarchies"
            },
            c.controllers.join(" ")
        );
        for r in &c.routing {
            println!("  route:       {r}");
        }
        for w in &c.writes {
            println!(
                "  write:       {} = {} (as one container's resources)",
                w.file, w.value
            );
        }
    }
    println!(
        "sandbox_cgroup_only: {} (configured {})",
        plan.sandbox_cgroup_only, plan.configured_sandbox_cgroup_only
    );
    let v = &plan.vcpus;
    println!(
        "vcpus:         boot {} (default_vcpus {} configured {}), max {} (default_maxvcpus configured {}), host CPUs {}",
        v.boot, v.default_vcpus, v.configured_default_vcpus, v.max, v.configured_default_maxvcpus, v.host_cpus
    );
    for w in &plan.writes {
        println!("write:         {} = {}", w.file, w.value);
    }
    for p in &plan.properties {
        println!("property:      {} = {}", p.name, p.value);
    }
    for n in &plan.notes {
        println!("note:          {n}");
    }
    Ok(())
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Check(a) => check(&a),
        Command::Resolve(a) => resolve(&a),
        Command::Run(a) => run::run(&a),
        Command::Inspect(a) => inspect(&a),
        Command::Cleanup(a) => cleanup::cleanup(&a),
        Command::Bench(a) => crate::bench::run(&a).map_err(CliError::from),
    }
}

/// Reads a sandbox bundle's cgroups path and resources when `--bundle` is given.
pub fn bundle_inputs(
    bundle: &std::path::Path,
) -> Result<(String, Option<LinuxResources>, Vec<String>), CliError> {
    let b = load_bundle(bundle).map_err(bad)?;
    Ok((b.cgroups_path, b.resources, b.warnings))
}
