//! `host-cgroups cleanup`: removes what a crashed (or `--keep`) run left behind,
//! through [`host_cgroups::sandbox::Sandbox::cleanup`].

use std::path::PathBuf;

use clap::Args;

use super::{bad, cgroups_path_str, print_json, runtime, CliError};
use host_cgroups::sandbox::{Sandbox, SandboxError};
use host_cgroups::state::DEFAULT_STATE_DIR;

/// Arguments of `cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The sandbox id.
    #[arg(long, value_name = "ID")]
    pub sandbox_id: String,
    /// The state directory the run used (its state file names every cgroup the run made).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The sandbox cgroups path, for a run whose state is gone: the sandbox and overhead
    /// cgroups are removed, and their parents only where this component marked them as
    /// its own (/run/host-cgroups/parents) and they are empty (a state file for the id is
    /// used instead when one exists in --state-dir).
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    pub cgroups_path: Option<std::ffi::OsString>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn classify(e: SandboxError) -> CliError {
    if e.is_bad_input() {
        bad(e)
    } else {
        runtime(e)
    }
}

/// Removes the sandbox's cgroups and state.
pub fn cleanup(args: &CleanupArgs) -> Result<(), CliError> {
    let report = match &args.cgroups_path {
        Some(p) => {
            let raw = cgroups_path_str(Some(p))?;
            Sandbox::cleanup_path(&raw, &args.sandbox_id, &args.state_dir).map_err(classify)?
        }
        None => Sandbox::cleanup(&args.state_dir, &args.sandbox_id).map_err(classify)?,
    };
    if args.json {
        print_json(&super::Versioned {
            version: super::VERSION,
            inner: &report,
        })?;
    } else {
        println!("cleanup of {} (from {})", report.sandbox_id, report.source);
        for r in &report.removed {
            println!("removed {r}");
        }
        for r in &report.absent {
            println!("absent  {r}");
        }
        for r in &report.kept {
            println!("kept    {r}");
        }
        if let Some(f) = &report.state_removed {
            println!("removed state file {}", f.display());
        }
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        let e = runtime(format!(
            "cleanup of {}: {}",
            args.sandbox_id,
            report.errors.join("; ")
        ));
        // With --json the report (its `errors`) is the result on stdout.
        Err(if args.json { e.reported() } else { e })
    }
}
