//! One soak lifecycle: a cgroupfs sandbox in this process, or a systemd sandbox in a
//! child `host-cgroups run`.

use std::path::Path;

use crate::util;
use crate::BenchError;
use demo_vmm::{BackendChoice, Vmm, VmmConfig};
use host_cgroups::config::RuntimeConfig;
use host_cgroups::resources;
use host_cgroups::sandbox::{Sandbox, SandboxOptions};

/// One in-process cgroupfs lifecycle.
pub fn fs_cycle(
    config: &RuntimeConfig,
    path: &str,
    id: &str,
    state_dir: &Path,
    backend: BackendChoice,
) -> Result<(), BenchError> {
    let step = |what: &str, e: &dyn std::fmt::Display| BenchError::step(format!("{id}: {what}"), e);
    let res =
        resources::from_json(r#"{"cpu":{"shares":512}}"#).map_err(|e| step("resources", &e))?;
    let opts = SandboxOptions::default()
        .state_dir(state_dir)
        .sandbox_resources(Some(res));
    let sandbox = Sandbox::new(config, id, path, opts).map_err(|e| step("start", &e))?;
    let cfg = VmmConfig {
        vcpus: 1,
        max_vcpus: 2,
        backend,
    };
    let mut vmm = match Vmm::new(cfg, sandbox.hooks()).and_then(|mut v| v.start().map(|()| v)) {
        Ok(v) => v,
        Err(e) => {
            let _ = sandbox.teardown(|| ());
            return Err(step("VMM start", &e));
        }
    };
    let container =
        resources::from_json(r#"{"cpu":{"cpus":"0"}}"#).map_err(|e| step("resources", &e))?;
    let r = sandbox
        .update_container("c1", &container)
        .and_then(|_| sandbox.remove_container("c1"))
        .map_err(|e| step("container update", &e))
        .and_then(|()| vmm.hotplug(1).map(|_| ()).map_err(|e| step("hotplug", &e)));
    let done = sandbox.teardown(|| vmm.stop());
    r?;
    done.vmm.map_err(|e| step("VMM stop", &e))?;
    if !done.report.errors.is_empty() {
        return Err(step("teardown", &done.report.errors.join("; ")));
    }
    Ok(())
}

/// One systemd lifecycle in a child `host-cgroups run`.
pub fn systemd_cycle(
    path: &str,
    id: &str,
    state_dir: &Path,
    backend: &str,
) -> Result<(), BenchError> {
    util::run_self(&[
        "run".into(),
        "--cgroups-path".into(),
        path.into(),
        "--sandbox-id".into(),
        id.into(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--vcpus".into(),
        "1".into(),
        "--duration".into(),
        "0".into(),
        "--backend".into(),
        backend.into(),
        "--json".into(),
    ])
    .map(|_| ())
}
