//! `host-cgroups cleanup`: removes what a crashed run left behind.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{bad, cgroups_path_str, print_json, runtime, CliError};
use host_cgroups::host::CgroupLayout;
use host_cgroups::manager;
use host_cgroups::path::CgroupsPath;
use host_cgroups::state::{SandboxState, StateError, DEFAULT_STATE_DIR};

/// Arguments of `cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The sandbox id.
    #[arg(long, value_name = "ID")]
    pub sandbox_id: String,
    /// The state directory the run used (the state names every cgroup it made).
    #[arg(long, value_name = "DIR", conflicts_with = "cgroups_path")]
    pub state_dir: Option<PathBuf>,
    /// Without state: the sandbox cgroups path (its overhead cgroup is removed too).
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    pub cgroups_path: Option<std::ffi::OsString>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct CleanupReport {
    sandbox_id: String,
    source: String,
    removed: Vec<String>,
    errors: Vec<String>,
}

/// Removes the sandbox's cgroups and state.
pub fn cleanup(args: &CleanupArgs) -> Result<(), CliError> {
    host_cgroups::path::validate_sandbox_id(&args.sandbox_id).map_err(bad)?;
    let layout = CgroupLayout::detect().map_err(runtime)?;
    let mut report = CleanupReport {
        sandbox_id: args.sandbox_id.clone(),
        source: String::new(),
        removed: Vec::new(),
        errors: Vec::new(),
    };
    let mut targets = Vec::new();
    let mut state_dir = None;
    if let Some(p) = &args.cgroups_path {
        let raw = cgroups_path_str(Some(p))?;
        let parsed = CgroupsPath::parse(&raw, &args.sandbox_id).map_err(bad)?;
        let overhead = parsed.overhead(&args.sandbox_id).map_err(bad)?;
        report.source = format!("cgroups path {raw:?}");
        // Earlier versions named the cgroupfs overhead cgroup after the path.
        let legacy = parsed.legacy_overhead().filter(|l| *l != overhead);
        targets.push((parsed, Vec::new()));
        targets.push((overhead, Vec::new()));
        targets.extend(legacy.map(|l| (l, Vec::new())));
    } else {
        let dir = args
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let state = match SandboxState::load(&dir, &args.sandbox_id, &layout.mount_points()) {
            Ok(s) => s,
            Err(e @ StateError::Untrusted { .. }) => return Err(bad(e)),
            Err(e @ StateError::NotADirectory { .. }) => return Err(bad(e)),
            Err(e) => return Err(runtime(e)),
        };
        report.source = SandboxState::file(&dir, &args.sandbox_id)
            .display()
            .to_string();
        targets.push((state.sandbox.path.clone(), state.sandbox.created.clone()));
        if let Some(o) = &state.overhead {
            targets.push((o.path.clone(), o.created.clone()));
        }
        state_dir = Some(dir);
    }
    for (path, created) in targets {
        match manager::build(&path, &layout, created).and_then(|mut m| m.destroy().map(|()| m)) {
            Ok(m) => report.removed.push(m.relative().to_string()),
            Err(e) => report.errors.push(format!("{}: {e}", path.relative())),
        }
    }
    if let (Some(dir), true) = (state_dir, report.errors.is_empty()) {
        if let Err(e) = SandboxState::remove(&dir, &args.sandbox_id) {
            report.errors.push(e.to_string());
        }
    }
    if args.json {
        print_json(&report)?;
    } else {
        for r in &report.removed {
            println!("removed {r}");
        }
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(runtime(format!(
            "cleanup of {}: {}",
            args.sandbox_id,
            report.errors.join("; ")
        )))
    }
}
