//! The `host-cgroups` command line: parses arguments, adds context to errors
//! and maps them to exit codes (2 bad input, 1 runtime failure).

use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;

mod bench;
mod check;
mod cleanup;
mod inspect;
mod run;

use clap::{Args, Parser, Subcommand};
use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use host_cgroups::config::{load_bundle, RuntimeConfig};
use host_cgroups::host::{CgroupLayout, CgroupVersion};
use host_cgroups::plan::{nominal_layout, SandboxPlan};
use host_cgroups::resources::{self, Checked};

/// The version of this program, in every `--json` object's `version` field.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `--version`: the package version and the git commit it was built from (build.rs).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HOST_CGROUPS_GIT_COMMIT"),
    ")"
);

/// The tracing target of the program's own status lines and final error, always shown.
pub const STATUS_TARGET: &str = "host_cgroups::cli";

/// How log lines (and the program's status lines) are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only on a terminal without NO_COLOR.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, fields.message, target).
    Json,
}

static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Records the log format for [`status`], [`progress`] and [`report_error`].
pub fn set_log_format(f: LogFormat) {
    let _ = LOG_FORMAT.set(f);
}

fn log_format() -> LogFormat {
    LOG_FORMAT.get().copied().unwrap_or_default()
}

/// A status line on stderr: `host-cgroups: MSG`, or a JSON log object with `--log-format json`.
/// A write error (a closed stderr) is ignored: a status line is not worth dying for.
pub fn status(msg: impl fmt::Display) {
    match log_format() {
        LogFormat::Text => {
            let _ = writeln!(std::io::stderr(), "host-cgroups: {msg}");
        }
        LogFormat::Json => tracing::info!(target: STATUS_TARGET, "{msg}"),
    }
}

/// A progress line on stderr as it is, or a JSON log object with `--log-format json`;
/// write errors are ignored as for [`status`].
pub fn progress(line: impl fmt::Display) {
    match log_format() {
        LogFormat::Text => {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
        LogFormat::Json => tracing::info!(target: STATUS_TARGET, "{line}"),
    }
}

/// Reports the error that ends the program, once: on stderr (text, or a JSON log object
/// with `--log-format json`), and, when the command was given `--json` and has not
/// printed its own result, as an error object on stdout (schema in docs/cli.md).
pub fn report_error(e: &CliError, json: bool) {
    match log_format() {
        LogFormat::Text => {
            let _ = writeln!(std::io::stderr(), "host-cgroups: error: {e}");
        }
        LogFormat::Json => {
            tracing::error!(target: STATUS_TARGET, exit_code = e.exit_code(), "{e}")
        }
    }
    if json && !matches!(e, CliError::Reported(_)) {
        print_error_object(e.kind(), e.exit_code(), &e.to_string());
    }
}

/// Prints the `--json` error object on stdout: `{"version", "error": {"kind", "exit_code", "message"}}`.
pub fn print_error_object(kind: &str, exit_code: i32, message: &str) {
    let v = serde_json::json!({
        "version": VERSION,
        "error": {
            "kind": kind,
            "exit_code": exit_code,
            "message": message,
        }
    });
    if let Ok(s) = serde_json::to_string_pretty(&v) {
        println!("{s}");
    }
}

/// An error the CLI reports, with the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    /// Bad input: exit code 2; nothing was changed.
    BadInput(String),
    /// The host refused or failed: exit code 1.
    Runtime(String),
    /// The command already printed its `--json` result, which shows the failure; the
    /// error goes to stderr only.
    Reported(Box<CliError>),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::BadInput(_) => 2,
            CliError::Runtime(_) => 1,
            CliError::Reported(e) => e.exit_code(),
        }
    }

    /// `bad-input` or `runtime`, as in the JSON error object.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::BadInput(_) => "bad-input",
            CliError::Runtime(_) => "runtime",
            CliError::Reported(e) => e.kind(),
        }
    }

    /// Marks the error as shown in the command's own JSON result.
    pub fn reported(self) -> CliError {
        match self {
            CliError::Reported(_) => self,
            e => CliError::Reported(Box::new(e)),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::BadInput(m) | CliError::Runtime(m) => f.write_str(m),
            CliError::Reported(e) => e.fmt(f),
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
#[command(name = "host-cgroups", version = LONG_VERSION, about)]
pub struct Cli {
    /// Log lines on stderr: text, or one JSON object per line (levels: HOST_CGROUPS_LOG).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the command was asked for `--json` (its errors then also go to stdout as JSON).
    pub fn json_output(&self) -> bool {
        match &self.command {
            Command::Check(a) => a.json,
            Command::Resolve(a) => a.json,
            Command::Run(a) => a.json,
            Command::Inspect(a) => a.json,
            Command::Cleanup(a) => a.json,
            Command::Bench(a) => a.json(),
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Can this host run sandboxes? Root, cgroup hierarchy and access, controllers, systemd, KVM;
    /// exits 1 when an item fails.
    Check(check::CheckArgs),
    /// Show the driver, cgroups and placement a sandbox would get (no side effects).
    Resolve(ResolveArgs),
    /// Boot a sandbox with the in-process VMM, place its threads, report, clean up.
    Run(run::RunArgs),
    /// Where a process's threads sit (--pid), or what a sandbox has on the host (--sandbox-id).
    Inspect(inspect::InspectArgs),
    /// Remove what a crashed run left: its cgroups and state.
    Cleanup(cleanup::CleanupArgs),
    /// Benchmarks: placement, lifecycle, systemd, scale, hooks, soak.
    Bench(host_cgroups_bench::BenchArgs),
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
    /// OCI bundle whose config.json gives linux.cgroupsPath and linux.resources.
    #[arg(long, value_name = "DIR", conflicts_with = "cgroups_path")]
    pub bundle: Option<PathBuf>,
    /// Where `run` would keep the state (an id whose state file exists there is refused).
    #[arg(long, value_name = "DIR", default_value = host_cgroups::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Plan for a host of this cgroup version instead of this host.
    #[arg(long, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub cgroup_version: Option<u8>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Reads `--resources`: inline JSON or `@FILE`; the warnings (unknown keys) go to `notes`.
pub fn load_resources(arg: Option<&str>) -> Result<(Option<Checked>, Vec<String>), CliError> {
    let Some(arg) = arg else {
        return Ok((None, Vec::new()));
    };
    let text = match arg.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| bad(format!("cannot read --resources file {file}: {e}")))?,
        None => arg.to_string(),
    };
    let parsed = resources::parse_json(&text).map_err(bad)?;
    // Checked once, here, where the input enters; the library takes the checked value.
    let checked = Checked::new(parsed.resources).map_err(bad)?;
    Ok((Some(checked), parsed.warnings))
}

/// The cgroups path as UTF-8, refusing other bytes with the value shown, and refusing
/// a value that begins with `--`: that is an option taken as the path
/// (`--cgroups-path --json`), which would otherwise become a `--json` cgroup at every
/// hierarchy root. A single leading `-` stays allowed for systemd's root slice form
/// (`-.slice:prefix:name`), which the path parser checks by its own rule.
pub fn cgroups_path_str(p: Option<&OsString>) -> Result<String, CliError> {
    match p {
        None => Ok(String::new()),
        Some(os) => {
            let s = os.to_str().map(str::to_string).ok_or_else(|| {
                bad(format!(
                    "cgroups path {:?} is not valid UTF-8",
                    os.to_string_lossy()
                ))
            })?;
            if s.starts_with("--") {
                return Err(bad(format!(
                    "cgroups path {s:?} begins with \"--\": that is an option, not a path \
                     (did --cgroups-path lose its value?)"
                )));
            }
            Ok(s)
        }
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

/// A `--json` result with the `version` field first, then the object's own fields.
#[derive(Serialize)]
pub struct Versioned<'a, T: Serialize> {
    /// [`VERSION`].
    pub version: &'static str,
    /// The object.
    #[serde(flatten)]
    pub inner: &'a T,
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(v: &impl Serialize) -> Result<(), CliError> {
    let s = serde_json::to_string_pretty(v).map_err(runtime)?;
    println!("{s}");
    Ok(())
}

/// The inputs `run` and `resolve` share: the cgroups path (from `--cgroups-path` or a
/// bundle), the resources (`--resources` over the bundle's) and their warnings.
pub fn sandbox_inputs(
    sandbox: &SandboxArgs,
    bundle: Option<&std::path::Path>,
) -> Result<(String, Option<Checked>, Vec<String>), CliError> {
    let (path, bundle_res, mut warnings) = match bundle {
        Some(b) => bundle_inputs(b)?,
        None => (
            cgroups_path_str(sandbox.cgroups_path.as_ref())?,
            None,
            Vec::new(),
        ),
    };
    let (cli_res, cli_warnings) = load_resources(sandbox.resources.as_deref())?;
    if cli_res.is_some() {
        warnings = cli_warnings;
        return Ok((path, cli_res, warnings));
    }
    let bundle_res = bundle_res.map(Checked::new).transpose().map_err(bad)?;
    Ok((path, bundle_res, warnings))
}

/// `resolve --json`: the plan, and for this host what `run` would find.
#[derive(Serialize)]
struct ResolveOut<'a> {
    #[serde(flatten)]
    plan: &'a SandboxPlan,
    /// `null` when planning for the other cgroup version (`--cgroup-version`).
    host: Option<host_cgroups::sandbox::Preflight>,
}

fn resolve(args: &ResolveArgs) -> Result<(), CliError> {
    let config = load_config(args.sandbox.config.as_ref())?;
    let (path, res, warnings) = sandbox_inputs(&args.sandbox, args.bundle.as_deref())?;
    let id = args
        .sandbox
        .sandbox_id
        .clone()
        .ok_or_else(|| bad("--sandbox-id is required"))?;
    let layout = layout_for(args.cgroup_version)?;
    let mut plan =
        SandboxPlan::new_checked(&config, &id, &path, &layout, res.as_ref()).map_err(bad)?;
    plan.notes.extend(warnings);
    // For this host, `resolve` is the dry run of `run`: the same checks, no change.
    let host = match args.cgroup_version {
        Some(_) => None,
        None if !config.vmm_in_process() => None,
        None => {
            let opts = host_cgroups::sandbox::SandboxOptions::default()
                .state_dir(&args.state_dir)
                .sandbox_resources(res.clone().map(Checked::into_resources));
            let p = host_cgroups::sandbox::Sandbox::preflight(&plan, &opts).map_err(|e| {
                if e.is_bad_input() {
                    bad(e)
                } else {
                    runtime(e)
                }
            })?;
            plan.notes.extend(p.notes.iter().cloned());
            Some(p)
        }
    };
    if args.json {
        return print_json(&Versioned {
            version: VERSION,
            inner: &ResolveOut { plan: &plan, host },
        });
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
    if let Some(h) = &host {
        for d in &h.existing {
            println!("exists:        {}", d.display());
        }
        for d in &h.would_create {
            println!("would create:  {}", d.display());
        }
    }
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
        Command::Check(a) => check::check(&a),
        Command::Resolve(a) => resolve(&a),
        Command::Run(a) => run::run(&a),
        Command::Inspect(a) => inspect::inspect(&a),
        Command::Cleanup(a) => cleanup::cleanup(&a),
        Command::Bench(a) => bench::bench(&a),
    }
}

/// Reads a sandbox bundle's cgroups path and resources when `--bundle` is given.
pub fn bundle_inputs(
    bundle: &std::path::Path,
) -> Result<(String, Option<LinuxResources>, Vec<String>), CliError> {
    let b = load_bundle(bundle).map_err(bad)?;
    Ok((b.cgroups_path, b.resources, b.warnings))
}
