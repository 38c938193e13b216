//! [`Sandbox`]: the one entry point a runtime calls.
//!
//! In Kata's Rust runtime (runtime-rs) with the dragonball hypervisor, the VMM
//! runs inside the runtime (shim) process. The runtime builds a `Sandbox` when it
//! creates the pod sandbox, before the VM starts, and hands [`Sandbox::hooks`] to
//! dragonball's `VcpuManager`, whose `Vcpu::start_threaded` calls them from each
//! vCPU thread before the thread may run guest code. Containers' resources are
//! added, updated and removed by container id as the runtime's resource manager
//! sees them; at sandbox stop, [`Sandbox::teardown`] takes the VMM's stop as a
//! closure so that the order rules below cannot be got wrong.
//!
//! Order rules the teardown owns:
//! 1. The VMM stops first and its VM file descriptor is closed: KVM's per-VM
//!    worker thread (`kvm-nx-lpage-recovery`) joins the first vCPU's cgroups and
//!    leaves only when the VM fd closes, so a cgroup removed before that is busy.
//! 2. The cgroups are then removed with SIGTERM ignored: with the systemd driver
//!    this very process sits in the scope it asks systemd to stop, and systemd
//!    sends SIGTERM to every process of a stopping scope (`KillMode=control-group`).
//! 3. The state file goes last, only when everything it lists is gone.
//!
//! Activation: the component acts only when the VMM runs in this process, that is
//! when the runtime TOML's `runtime.hypervisor_name` is `dragonball`. For any other
//! hypervisor the `Sandbox` is inactive: it creates nothing, its hooks confirm at
//! once, and [`Sandbox::activation`] says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};
use vcpu_hooks::VcpuHooks;

use crate::config::{load_bundle, ConfigError, RuntimeConfig};
use crate::controller::{
    CgroupController, ControllerError, ControllerOptions, TeardownReport, VcpuRecord,
};
use crate::host::{CgroupLayout, HostError};
use crate::manager::gone_and_standing;
use crate::manager::{self, CgroupError, Stats};
use crate::metrics::IncMetric;
use crate::path::{validate_sandbox_id, CgroupsPath, PathError};
use crate::plan::{PlanError, SandboxPlan};
pub use crate::resources::ContainerUpdate;
use crate::sigterm::ignore_sigterm_during;
use crate::state::{SandboxState, StateError, DEFAULT_STATE_DIR};

/// Why a sandbox could not be set up, changed or cleaned up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The runtime configuration or the OCI bundle could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cgroups path, sandbox id or resources cannot make a plan.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The sandbox id or a cgroups path is malformed.
    #[error(transparent)]
    Path(#[from] PathError),
    /// This host's cgroup layout could not be read.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The controller failed (creation, placement policy, resources).
    #[error(transparent)]
    Controller(#[from] ControllerError),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The state file could not be written, read or trusted.
    #[error(transparent)]
    State(#[from] StateError),
    /// State for this sandbox id exists already: another sandbox (or a crashed one)
    /// owns the id. Nothing was created; the existing record is left as it is.
    #[error("sandbox {sandbox_id} already has state in {}; clean it up first: host-cgroups cleanup --sandbox-id {sandbox_id} --state-dir {}", state_file.display(), state_dir.display())]
    AlreadyExists {
        /// The sandbox id.
        sandbox_id: String,
        /// The existing state file.
        state_file: PathBuf,
        /// Its directory.
        state_dir: PathBuf,
    },
    /// The sandbox cgroups path is already in use by another sandbox or by running
    /// processes: two sandboxes in one cgroup would apply each other's resources, and
    /// the first teardown would remove the cgroup under the other. Nothing was created.
    #[error("cgroups path {cgroups_path:?} of sandbox {sandbox_id} is already in use: {holder}; two sandboxes cannot share a sandbox cgroup (the first teardown would remove it under the other)")]
    PathInUse {
        /// The sandbox id that was refused.
        sandbox_id: String,
        /// The cgroups path it asked for (relative to the hierarchy roots, or the unit).
        cgroups_path: String,
        /// The other sandbox's id, when its state file names the path.
        other_sandbox: Option<String>,
        /// What holds the path: the other state file, or the cgroup and its pids.
        holder: String,
    },
    /// The sandbox still runs: its VMM process is alive and in the sandbox cgroup.
    #[error("sandbox {sandbox_id} is still running (pid {pid}); stop it before cleaning up")]
    Running {
        /// The sandbox id.
        sandbox_id: String,
        /// The VMM's pid.
        pid: i32,
    },
    /// No state file for the sandbox id in the directory searched.
    #[error("no state for sandbox {sandbox_id} in {} (searched {}); pass the directory the run used (--state-dir) or the cgroups path", state_dir.display(), state_file.display())]
    NoState {
        /// The sandbox id.
        sandbox_id: String,
        /// The directory searched.
        state_dir: PathBuf,
        /// The file looked for.
        state_file: PathBuf,
    },
}

impl SandboxError {
    /// Whether the error is the caller's input (exit code 2 in the CLI): nothing was
    /// changed on the host.
    pub fn is_bad_input(&self) -> bool {
        match self {
            SandboxError::Plan(_)
            | SandboxError::Path(_)
            | SandboxError::AlreadyExists { .. }
            | SandboxError::PathInUse { .. }
            | SandboxError::Running { .. }
            | SandboxError::NoState { .. } => true,
            SandboxError::Config(_) => true,
            SandboxError::Controller(e) => e.is_bad_input(),
            SandboxError::Cgroup(CgroupError::Resource(_)) => true,
            SandboxError::State(e) => matches!(
                e,
                StateError::Untrusted { .. } | StateError::NotADirectory { .. }
            ),
            _ => false,
        }
    }
}

/// Options of a sandbox beyond the runtime TOML.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SandboxOptions {
    /// Where the state file `<sandbox-id>.json` is written (default
    /// [`DEFAULT_STATE_DIR`]); `cleanup` and `restore` read it from there.
    pub state_dir: PathBuf,
    /// Bound on a vCPU thread's wait for its placement (default 10 s); past it the
    /// vCPU fails to start with an error naming it.
    pub placement_timeout: Duration,
    /// Resources for the sandbox cgroup as a whole (the OCI spec's
    /// `linux.resources` of the sandbox), applied before any thread is placed.
    pub sandbox_resources: Option<LinuxResources>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            placement_timeout: vcpu_hooks::DEFAULT_PLACEMENT_TIMEOUT,
            sandbox_resources: None,
        }
    }
}

impl SandboxOptions {
    /// Sets the state directory.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// Sets the bound on a vCPU's wait for placement.
    pub fn placement_timeout(mut self, t: Duration) -> Self {
        self.placement_timeout = t;
        self
    }

    /// Sets resources for the sandbox cgroup as a whole.
    pub fn sandbox_resources(mut self, res: Option<LinuxResources>) -> Self {
        self.sandbox_resources = res;
        self
    }
}

/// Whether the component acts for this sandbox, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Activation {
    /// The VMM runs in this process: cgroups are created and vCPUs placed.
    Active,
    /// Another hypervisor runs the VM out of process; nothing is touched.
    Inactive {
        /// Why (names the configured hypervisor).
        reason: String,
    },
}

/// What a teardown did: the VMM's stop result and the cgroup report.
#[derive(Debug)]
#[non_exhaustive]
pub struct Teardown<R> {
    /// What the VMM's stop closure returned.
    pub vmm: R,
    /// Directories or units removed (or kept), and errors met on the way.
    pub report: TeardownReport,
}

/// What `run` would find and do on this host for a plan, learnt without changing
/// anything ([`Sandbox::preflight`]).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Preflight {
    /// The sandbox cgroup's directories as its driver will use them, controller →
    /// absolute path (the v1 systemd driver, for one, keeps no `devices` directory).
    pub paths: BTreeMap<String, PathBuf>,
    /// The overhead cgroup's directories, when the plan has one.
    pub overhead_paths: Option<BTreeMap<String, PathBuf>>,
    /// Directories of those cgroups (and their parents) that exist now.
    pub existing: Vec<PathBuf>,
    /// Directories that `run` would create (parents first), or systemd would for a unit.
    pub would_create: Vec<PathBuf>,
    /// What `run` would meet here that is not a refusal (systemd unreachable, ...).
    pub notes: Vec<String>,
}

/// What `cleanup` found and did, item by item.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanupReport {
    /// The sandbox id.
    pub sandbox_id: String,
    /// Where the list came from: the state file, or the cgroups path given.
    pub source: String,
    /// Cgroups that existed and are now gone (relative paths or units).
    pub removed: Vec<String>,
    /// Cgroups that were not there.
    pub absent: Vec<String>,
    /// Cgroups that stay, each with the reason.
    pub kept: Vec<String>,
    /// The state file removed, if one was used.
    pub state_removed: Option<PathBuf>,
    /// Errors; cleanup goes on past each.
    pub errors: Vec<String>,
}

/// One pod sandbox's host cgroups: created by [`Sandbox::new`], torn down by
/// [`Sandbox::teardown`].
///
/// # End every active sandbox with `teardown` or `keep`
///
/// Dropping an active sandbox that was neither torn down nor
/// [`kept`](Sandbox::keep) (an early `?` in the caller, a panic) removes nothing: its
/// cgroups and its state file stay on the host, and this process stays in the cgroup
/// the sandbox moved it into. The drop stops the controller thread and reports itself
/// **only through [`tracing`]** (a `WARN` event naming the state file, the cgroups and
/// the `host-cgroups cleanup` command): an embedder that installs no `tracing`
/// subscriber sees nothing at all, and the library never prints. Call
/// [`Sandbox::teardown`] (or [`Sandbox::keep`], then [`Sandbox::cleanup`]) on every
/// path, error paths included.
///
/// # Where this process goes
///
/// An active sandbox moves the calling process — every thread of it, and the threads
/// it starts later, which are born in their creator's cgroups — when it is made
/// ([`Sandbox::new`], [`Sandbox::start`]) and moves it back when it is torn down; see
/// those methods.
#[must_use = "a sandbox dropped without `teardown` leaves its cgroups and state file for `cleanup`"]
pub struct Sandbox {
    id: String,
    activation: Activation,
    plan: Option<SandboxPlan>,
    controller: Option<CgroupController>,
    state_dir: PathBuf,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("activation", &self.activation)
            .field("live", &self.controller.is_some())
            .finish()
    }
}

impl Sandbox {
    /// Sets up the sandbox `sandbox_id` from the runtime TOML and the OCI spec's
    /// `linux.cgroupsPath` (`slice:prefix:name` → systemd; other → cgroupfs; empty
    /// → `kata_sandboxed_pod/<sandbox-id>`).
    ///
    /// When active, this creates the sandbox (and overhead) cgroups, applies
    /// `opts.sandbox_resources`, moves this process per the placement policy, writes
    /// the state file before the first directory is made, and starts the controller
    /// thread. When inactive it only records why.
    ///
    /// The move is of the whole calling process, every thread (one write of its pid to
    /// `cgroup.procs` per hierarchy), and threads it starts later are born there:
    /// - with the sibling layout (`sandbox_cgroup_only = false` on cgroup v1 with
    ///   cgroupfs), into the overhead cgroup `kata_overhead/<sandbox-id>`; each vCPU
    ///   thread then moves itself into the sandbox cgroup in its hook;
    /// - otherwise into the sandbox cgroup: with `sandbox_cgroup_only = true` (vCPU
    ///   threads included), or with the nested layout, whose vCPU threads then move
    ///   themselves into its `vcpus` child.
    ///
    /// [`SandboxPlan::placement`] and [`SandboxPlan::vcpu_layout`] (see
    /// [`Sandbox::plan`]) say which. [`Sandbox::teardown`] moves the process back.
    ///
    /// # Errors
    /// Bad input ([`SandboxError::is_bad_input`]: malformed path or id, resources the
    /// host refuses, an id that already has state, a cgroups path another sandbox uses —
    /// [`SandboxError::PathInUse`]; the rule is in docs/design.md, "One sandbox per
    /// cgroup") changes nothing. A host failure
    /// rolls back what this call made.
    pub fn new(
        config: &RuntimeConfig,
        sandbox_id: &str,
        cgroups_path: &str,
        opts: SandboxOptions,
    ) -> Result<Sandbox, SandboxError> {
        validate_sandbox_id(sandbox_id)?;
        if !config.vmm_in_process() {
            return Ok(Self::inactive(config, sandbox_id, opts.state_dir));
        }
        let layout = CgroupLayout::detect()?;
        let plan = SandboxPlan::new(
            config,
            sandbox_id,
            cgroups_path,
            &layout,
            opts.sandbox_resources.as_ref(),
        )?;
        Self::start(config, plan, opts)
    }

    /// Like [`Sandbox::new`], with the cgroups path and sandbox resources read from an
    /// OCI bundle's `config.json` (`linux.cgroupsPath`, `linux.resources`); resources
    /// in `opts` take precedence over the bundle's.
    ///
    /// # Errors
    /// As [`Sandbox::new`]; a missing or malformed bundle is [`SandboxError::Config`].
    pub fn from_bundle(
        config: &RuntimeConfig,
        sandbox_id: &str,
        bundle: &Path,
        mut opts: SandboxOptions,
    ) -> Result<Sandbox, SandboxError> {
        let b = load_bundle(bundle)?;
        if opts.sandbox_resources.is_none() {
            opts.sandbox_resources = b.resources;
        }
        Self::new(config, sandbox_id, &b.cgroups_path, opts)
    }

    /// Sets up the sandbox from a plan already computed (`resolve` prints the same
    /// plan): the path the CLI's `run` takes, so that what `resolve` shows is what
    /// `run` does.
    ///
    /// It moves this process as [`Sandbox::new`] does.
    ///
    /// Activation is decided as in [`Sandbox::new`]: when `config`'s
    /// `runtime.hypervisor_name` is not `dragonball` the sandbox is inactive, whatever
    /// the plan says, and nothing is created, moved or written.
    ///
    /// # Errors
    /// As [`Sandbox::new`].
    pub fn start(
        config: &RuntimeConfig,
        plan: SandboxPlan,
        opts: SandboxOptions,
    ) -> Result<Sandbox, SandboxError> {
        // The same activation rule as `new`: a plan can be made for any hypervisor
        // (`resolve` shows it), but only an in-process VMM makes it act.
        if !config.vmm_in_process() {
            return Ok(Self::inactive(config, &plan.sandbox_id, opts.state_dir));
        }
        refuse_taken(&plan, &opts.state_dir)?;
        let copts = ControllerOptions {
            state_dir: Some(opts.state_dir.clone()),
            placement_timeout: opts.placement_timeout,
            sandbox_resources: opts.sandbox_resources,
            enable_vcpus_pinning: config.enable_vcpus_pinning,
        };
        let id = plan.sandbox_id.clone();
        let controller = CgroupController::start(plan.clone(), copts)?;
        crate::metrics::METRICS.sandboxes_created.inc();
        Ok(Sandbox {
            id,
            activation: Activation::Active,
            plan: Some(plan),
            controller: Some(controller),
            state_dir: opts.state_dir,
        })
    }

    /// The inactive sandbox for a hypervisor that runs the VMM out of process: it
    /// holds no plan and no controller, and touches nothing on the host.
    fn inactive(config: &RuntimeConfig, sandbox_id: &str, state_dir: PathBuf) -> Sandbox {
        let reason = format!(
            "hypervisor {:?} runs the VMM out of process; host-cgroups acts only for dragonball",
            config.hypervisor_name
        );
        info!(sandbox = sandbox_id, %reason, "inactive");
        Sandbox {
            id: sandbox_id.to_string(),
            activation: Activation::Inactive { reason },
            plan: None,
            controller: None,
            state_dir,
        }
    }

    /// Runs, without changing the host, every check [`Sandbox::start`] runs before it
    /// creates anything for `plan` (the driver's resource checks: CPUs and memory nodes
    /// against the host and the nearest existing parent cgroup, values the host's files
    /// refuse), and lists the directories the drivers will use, which exist and which
    /// would be made. `host-cgroups resolve` shows it, so that `resolve` is the dry run
    /// of `run`.
    ///
    /// # Errors
    /// What `start` would refuse as bad input: state that exists for the id, a cgroups
    /// path another sandbox uses ([`SandboxError::PathInUse`]), resources the host refuses.
    pub fn preflight(plan: &SandboxPlan, opts: &SandboxOptions) -> Result<Preflight, SandboxError> {
        refuse_taken(plan, &opts.state_dir)?;
        let sandbox = manager::build(&plan.sandbox.parsed, &plan.layout, Vec::new())?;
        if let Some(r) = &opts.sandbox_resources {
            crate::resources::validate(r).map_err(CgroupError::from)?;
            sandbox.check(r)?;
        }
        let overhead = match &plan.overhead {
            Some(o) => Some(manager::build(&o.parsed, &plan.layout, Vec::new())?),
            None => None,
        };
        let mut out = Preflight {
            paths: sandbox.paths(),
            overhead_paths: overhead.as_ref().map(|o| o.paths()),
            ..Default::default()
        };
        for m in std::iter::once(&sandbox).chain(overhead.as_ref()) {
            let mut dirs: Vec<PathBuf> = m.paths().into_values().collect();
            dirs.extend(m.missing());
            dirs.sort();
            dirs.dedup();
            for d in dirs {
                if d.is_dir() {
                    out.existing.push(d);
                } else {
                    out.would_create.push(d);
                }
            }
        }
        if plan.driver == crate::cgroup::Driver::Systemd {
            let sd = crate::host::SystemdInfo::detect();
            if !sd.reachable {
                out.notes.push(format!(
                    "systemd is not reachable here (PID 1 systemd: {}, system bus: {}): run would fail",
                    sd.pid1,
                    std::path::Path::new(crate::host::SYSTEM_BUS_SOCKET).exists()
                ));
            }
        }
        Ok(out)
    }

    /// Takes over a sandbox from its state file after this process restarted: the
    /// cgroups, the per-container resources and the pinning setting come from the
    /// state; nothing is created.
    ///
    /// # Errors
    /// [`SandboxError::State`] when the state is missing, corrupt or names cgroups
    /// outside the sandbox's own subtree.
    pub fn restore(
        config: &RuntimeConfig,
        sandbox_id: &str,
        opts: SandboxOptions,
    ) -> Result<Sandbox, SandboxError> {
        validate_sandbox_id(sandbox_id)?;
        let layout = CgroupLayout::detect()?;
        let state = SandboxState::load(&opts.state_dir, sandbox_id, &layout.mount_points())?;
        let plan = SandboxPlan::new(
            config,
            sandbox_id,
            &state.sandbox.path.raw(),
            &layout,
            state.sandbox_resources.as_ref(),
        )?;
        let copts = ControllerOptions {
            state_dir: Some(opts.state_dir.clone()),
            placement_timeout: opts.placement_timeout,
            sandbox_resources: state.sandbox_resources.clone(),
            enable_vcpus_pinning: state.enable_vcpus_pinning,
        };
        let controller = CgroupController::restore(
            opts.state_dir.clone(),
            sandbox_id,
            &layout,
            plan.clone(),
            copts,
        )?;
        Ok(Sandbox {
            id: sandbox_id.to_string(),
            activation: Activation::Active,
            plan: Some(plan),
            controller: Some(controller),
            state_dir: opts.state_dir,
        })
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the component acts for this sandbox.
    pub fn activation(&self) -> &Activation {
        &self.activation
    }

    /// Whether cgroups were created and vCPUs are placed.
    pub fn is_active(&self) -> bool {
        self.activation == Activation::Active
    }

    /// The plan in force (driver, cgroups, placement, writes), when active.
    pub fn plan(&self) -> Option<&SandboxPlan> {
        self.plan.as_ref()
    }

    /// The state file of this sandbox, when active.
    pub fn state_file(&self) -> Option<PathBuf> {
        self.is_active()
            .then(|| SandboxState::file(&self.state_dir, &self.id))
    }

    /// The hooks for dragonball's `VcpuManager`: each vCPU thread calls
    /// `vcpu_started` first thing in `Vcpu::start_threaded` and `vcpu_exited` last.
    /// In the hook the thread confirms (or makes) its own placement, and is refused
    /// when it is not where the sandbox wants it. When inactive, hooks that confirm
    /// at once. Prefer [`Sandbox::hooks_for_boot`] when the boot vCPU count is known.
    pub fn hooks(&self) -> Arc<dyn VcpuHooks> {
        match &self.controller {
            Some(c) => c.hooks(),
            None => Arc::new(vcpu_hooks::NoHooks),
        }
    }

    /// [`Sandbox::hooks`] for a VMM about to boot `vcpus` vCPUs: knowing the count, each
    /// vCPU can pin itself in its hook (with `enable_vcpus_pinning` and as many vCPUs as
    /// CPUs in the cpuset) before its first guest instruction. dragonball knows the
    /// count when `VcpuManager::create_boot_vcpus` runs.
    pub fn hooks_for_boot(&self, vcpus: u32) -> Arc<dyn VcpuHooks> {
        match &self.controller {
            Some(c) => c.hooks_for_boot(vcpus),
            None => Arc::new(vcpu_hooks::NoHooks),
        }
    }

    /// The sandbox cgroup's directories, controller → absolute path (empty when inactive).
    pub fn paths(&self) -> BTreeMap<String, PathBuf> {
        self.controller
            .as_ref()
            .map(|c| c.paths().clone())
            .unwrap_or_default()
    }

    /// The nested layout's vCPU child directories, controller → absolute path (empty
    /// when inactive or without the nested layout).
    pub fn vcpus_paths(&self) -> BTreeMap<String, PathBuf> {
        self.controller
            .as_ref()
            .and_then(|c| c.vcpus_paths().cloned())
            .unwrap_or_default()
    }

    /// vCPU records so far: index, tid, placement latency, pinning.
    pub fn vcpus(&self) -> Vec<VcpuRecord> {
        self.controller
            .as_ref()
            .map(|c| c.vcpus())
            .unwrap_or_default()
    }

    /// Adds or updates a container's resources (runtime-rs' resource manager calls
    /// this as containers are created and updated) and returns what it did not apply.
    ///
    /// Which fields apply depends on the plan's vCPU layout
    /// ([`crate::resources::container_applied_fields`]):
    /// - `sandbox-only` and `sibling`: only `cpu.cpus` and `cpu.mems`; the sandbox
    ///   cgroup takes the union of all containers' cpusets, as Kata's runtime-rs does.
    /// - `nested`: `cpu.cpus`, `cpu.mems`, `cpu.quota`, `cpu.period` and `cpu.shares`,
    ///   combined over the containers into the vCPU child
    ///   ([`crate::resources::vcpu_child_resources`]).
    ///
    /// Every other field given (memory, pids, block I/O, other CPU fields, …) is left to
    /// the guest: it is listed in the returned [`ContainerUpdate::not_applied`] with the
    /// reason, and logged with `tracing::warn!`. Sandbox-wide limits are
    /// [`Sandbox::set_sandbox_resources`]. Pinning is re-evaluated. An inactive sandbox
    /// changes nothing on the host and reports every field given as not applied.
    ///
    /// # Errors
    /// Resources the host refuses; nothing is changed then (files and the container
    /// map are rolled back). An inactive sandbox changes nothing: no host cgroup is its
    /// to change (the out-of-process hypervisor's own runtime applies container resources).
    pub fn update_container(
        &self,
        container_id: &str,
        res: &LinuxResources,
    ) -> Result<ContainerUpdate, SandboxError> {
        let update = match (&self.controller, &self.plan, &self.activation) {
            (Some(c), Some(plan), _) => {
                c.update_container(container_id, Some(res.clone()))?;
                crate::resources::container_update(res, plan.vcpu_layout)
            }
            (_, _, activation) => {
                let reason = match activation {
                    Activation::Inactive { reason } => reason.clone(),
                    Activation::Active => "no live controller".to_string(),
                };
                ContainerUpdate {
                    not_applied: crate::resources::given_fields(res),
                    reason: format!("host-cgroups is inactive: {reason}"),
                }
            }
        };
        if !update.is_complete() {
            warn!(
                sandbox = %self.id,
                container = container_id,
                fields = %update.not_applied.join(", "),
                reason = %update.reason,
                "container resources not applied to the host"
            );
        }
        Ok(update)
    }

    /// Removes a container's resources from the union.
    ///
    /// # Errors
    /// As [`Sandbox::update_container`].
    pub fn remove_container(&self, container_id: &str) -> Result<(), SandboxError> {
        match &self.controller {
            Some(c) => Ok(c.update_container(container_id, None)?),
            None => Ok(()),
        }
    }

    /// Applies resources to the sandbox cgroup as a whole.
    ///
    /// # Errors
    /// Resources the host refuses; the previous values are restored.
    pub fn set_sandbox_resources(&self, res: &LinuxResources) -> Result<(), SandboxError> {
        match &self.controller {
            Some(c) => Ok(c.set_sandbox_resources(res.clone())?),
            None => Ok(()),
        }
    }

    /// The sandbox cgroup's usage counters; `None` when inactive.
    ///
    /// # Errors
    /// The counters could not be read.
    pub fn stats(&self) -> Result<Option<Stats>, SandboxError> {
        match &self.controller {
            Some(c) => Ok(Some(c.stats()?)),
            None => Ok(None),
        }
    }

    /// Stops the VMM with `stop_vmm`, then removes the cgroups and the state, in the
    /// order the module docs give. `stop_vmm` must return only when every vCPU thread
    /// has been joined and the VM file descriptor is closed.
    ///
    /// Where this process goes: with the cgroupfs driver, before each cgroup is removed
    /// this process's threads in it are moved back to the cgroups the process was in
    /// when the sandbox was made (read from `/proc/self/cgroup` with the host layout), or
    /// to the hierarchy root when that cgroup lies inside the one being removed. With the
    /// systemd driver a process inside the sandbox scope stays there: systemd ends the
    /// scope when the process exits (the order rules above). Nothing moves when the
    /// sandbox is inactive.
    ///
    /// The report lists every cgroup removed, parents included (see
    /// [`TeardownReport::removed`]); removal failures are in its `errors`, the teardown
    /// goes on past each, and the state file stays while any remains.
    pub fn teardown<R>(mut self, stop_vmm: impl FnOnce() -> R) -> Teardown<R> {
        let vmm = stop_vmm();
        let _ = crate::failpoint::hit(crate::failpoint::Point::VmmStopped);
        let report = match self.controller.take() {
            Some(c) => ignore_sigterm_during(|| c.shutdown(true)),
            None => TeardownReport::default(),
        };
        crate::metrics::METRICS
            .cgroups_removed
            .add(report.removed.len());
        Teardown { vmm, report }
    }

    /// Stops the VMM with `stop_vmm` and leaves the cgroups and the state file in
    /// place (for inspection; `cleanup` removes them later).
    ///
    /// This process is not moved: it stays in the cgroup [`Sandbox::new`] moved it into
    /// until [`Sandbox::cleanup`] (from this process, see there) or [`Sandbox::restore`]
    /// and a teardown move it out.
    pub fn keep<R>(mut self, stop_vmm: impl FnOnce() -> R) -> Teardown<R> {
        let vmm = stop_vmm();
        let report = match self.controller.take() {
            Some(c) => c.shutdown(false),
            None => TeardownReport::default(),
        };
        Teardown { vmm, report }
    }

    /// Removes what a crashed run of `sandbox_id` left, from its state file in
    /// `state_dir`: exactly the directories (and units) that run created, deepest
    /// first, then the state file.
    ///
    /// Called from the very process the state names (after [`Sandbox::keep`], say), it
    /// is not refused: it acts as a teardown without the VMM's stop. Before each
    /// cgroupfs directory is removed this process's threads in it are moved out, to the
    /// hierarchy roots when this process was inside the sandbox cgroup when `cleanup`
    /// read its own cgroups (its cgroups from before the sandbox are not recorded).
    /// It must not be used on a sandbox this process still runs (a live [`Sandbox`] of
    /// the same id): its VMM's threads would be moved out from under it, and a KVM VM's
    /// worker thread makes the removal fail as busy; use [`Sandbox::teardown`] there.
    /// Another process's live VMM in the sandbox cgroup is refused
    /// ([`SandboxError::Running`]).
    ///
    /// # Errors
    /// [`SandboxError::NoState`] when there is no state file;
    /// [`SandboxError::Running`] when the run's VMM process is still alive in the
    /// sandbox cgroup; [`SandboxError::State`] for a state that cannot be trusted.
    /// Failures to remove single cgroups are listed in the report, not returned.
    pub fn cleanup(state_dir: &Path, sandbox_id: &str) -> Result<CleanupReport, SandboxError> {
        validate_sandbox_id(sandbox_id)?;
        let layout = CgroupLayout::detect()?;
        let file = SandboxState::file(state_dir, sandbox_id);
        if !file.exists() {
            return Err(SandboxError::NoState {
                sandbox_id: sandbox_id.to_string(),
                state_dir: state_dir.to_path_buf(),
                state_file: file,
            });
        }
        let state = SandboxState::load(state_dir, sandbox_id, &layout.mount_points())?;
        refuse_running(&state, &layout)?;
        let mut report = CleanupReport {
            sandbox_id: sandbox_id.to_string(),
            source: file.display().to_string(),
            ..Default::default()
        };
        // The nested layout's vCPU child first: its parent cannot go while it exists.
        if state.vcpus.is_some() {
            destroy_child(&layout, &state.sandbox.path, &mut report);
        }
        let mut targets = vec![(state.sandbox.path.clone(), state.sandbox.created.clone())];
        if let Some(o) = &state.overhead {
            targets.push((o.path.clone(), o.created.clone()));
        }
        destroy_all(&layout, targets, &mut report);
        if report.errors.is_empty() {
            match SandboxState::remove(state_dir, sandbox_id) {
                Ok(()) => report.state_removed = Some(file),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        Ok(report)
    }

    /// Removes a sandbox cgroup (and its overhead cgroup) by path, without state.
    /// Only the leaf cgroups are removed: without a state file nothing says which
    /// parents the run created, so they are reported as `kept`.
    ///
    /// When a state file for `sandbox_id` exists in `state_dir`, it is used instead
    /// (parents included), provided it names the same cgroups path.
    ///
    /// # Errors
    /// A malformed path or id; a state file for the id that names another path;
    /// [`SandboxError::Running`] as for [`Sandbox::cleanup`].
    pub fn cleanup_path(
        cgroups_path: &str,
        sandbox_id: &str,
        state_dir: &Path,
    ) -> Result<CleanupReport, SandboxError> {
        validate_sandbox_id(sandbox_id)?;
        let parsed = CgroupsPath::parse(cgroups_path, sandbox_id)?;
        let file = SandboxState::file(state_dir, sandbox_id);
        if file.exists() {
            let layout = CgroupLayout::detect()?;
            let state = SandboxState::load(state_dir, sandbox_id, &layout.mount_points())?;
            if state.sandbox.path != parsed {
                return Err(SandboxError::State(StateError::Untrusted {
                    path: file,
                    reason: format!(
                        "it records cgroups path {:?}, not {:?}; clean up with --state-dir instead",
                        state.sandbox.path.raw(),
                        cgroups_path
                    ),
                }));
            }
            return Self::cleanup(state_dir, sandbox_id);
        }
        let layout = CgroupLayout::detect()?;
        let mut report = CleanupReport {
            sandbox_id: sandbox_id.to_string(),
            source: format!("cgroups path {cgroups_path:?}"),
            ..Default::default()
        };
        // A nested layout's vCPU child, if there is one (only an empty one is removed).
        destroy_child(&layout, &parsed, &mut report);
        let mut targets = vec![(parsed.clone(), Vec::new())];
        for p in parsed.overhead_candidates(sandbox_id)? {
            targets.push((p, Vec::new()));
        }
        destroy_all(&layout, targets, &mut report);
        // Parents that exist stay: without a state file nothing says this run made them.
        let mut up = parsed.relative();
        while let Some((parent, _)) = up.rsplit_once('/') {
            up = parent.to_string();
            let exists = layout.mount_points().iter().any(|m| m.join(&up).is_dir());
            if exists {
                report.kept.push(format!(
                    "{up}: parents are kept when no state file says this run created them"
                ));
            }
        }
        Ok(report)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(c) = self.controller.take() {
            let file = SandboxState::file(&self.state_dir, &self.id);
            warn!(
                sandbox = %self.id,
                state_file = %file.display(),
                cgroups = ?c.paths().values().collect::<Vec<_>>(),
                "sandbox dropped without teardown: its cgroups and state file remain; \
                 remove them with `host-cgroups cleanup --sandbox-id {} --state-dir {}`",
                self.id,
                self.state_dir.display()
            );
            // Stop the controller thread; keep everything on the host for `cleanup`.
            let _ = c.shutdown(false);
        }
    }
}

/// Refuses to clean up a sandbox whose VMM process is alive and still in the
/// sandbox cgroup (a reused pid elsewhere does not count).
fn refuse_running(state: &SandboxState, layout: &CgroupLayout) -> Result<(), SandboxError> {
    let pid = state.vmm_pid;
    if pid <= 0 || pid == std::process::id() as i32 {
        return Ok(());
    }
    if layout.pid_in(pid, &state.sandbox.path.relative()) == Some(true) {
        return Err(SandboxError::Running {
            sandbox_id: state.sandbox_id.clone(),
            pid,
        });
    }
    Ok(())
}

/// What makes `plan` a sandbox that may not start (both `start` and `preflight` check
/// it, before anything is made): state that exists for its id, or a cgroups path another
/// sandbox uses.
fn refuse_taken(plan: &SandboxPlan, state_dir: &Path) -> Result<(), SandboxError> {
    let file = SandboxState::file(state_dir, &plan.sandbox_id);
    if file.exists() {
        return Err(SandboxError::AlreadyExists {
            sandbox_id: plan.sandbox_id.clone(),
            state_file: file,
            state_dir: state_dir.to_path_buf(),
        });
    }
    refuse_shared_path(plan, state_dir)
}

/// Refuses a sandbox cgroups path that another sandbox uses (the rule of
/// docs/design.md, "One sandbox per cgroup"):
/// (a) another state file in `state_dir` records the same sandbox cgroup (any driver);
/// (b) with the cgroupfs driver, the sandbox cgroup exists and it or a cgroup below it
///     holds a process (`cgroup.procs` non-empty in any hierarchy; this very process
///     counts, which is how a second in-process sandbox shows).
///
/// An existing cgroup without processes (a leftover) stays adoptable. With the systemd
/// driver only (a) applies: a unit cannot tell which sandbox its processes belong to.
fn refuse_shared_path(plan: &SandboxPlan, state_dir: &Path) -> Result<(), SandboxError> {
    let want = &plan.sandbox.parsed;
    let in_use = |other: Option<String>, holder: String| SandboxError::PathInUse {
        sandbox_id: plan.sandbox_id.clone(),
        cgroups_path: want.relative(),
        other_sandbox: other,
        holder,
    };
    let mounts = plan.layout.mount_points();
    // What a state file that records this cgroup must contain, as JSON writes it: the
    // cgroupfs path, or the systemd unit (its cgroup path is derived, not stored).
    let needle = serde_json::to_string(&match want.unit() {
        Some(u) => u.unit.clone(),
        None => want.relative(),
    })
    .unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir(state_dir) {
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let Some(id) = f
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.') && *n != plan.sandbox_id)
            else {
                continue;
            };
            // Cheap first: a state file that does not name the path (as JSON writes it)
            // cannot record it; the state directory holds every sandbox of the host.
            match std::fs::read_to_string(&f) {
                Ok(text) if text.contains(needle.as_str()) => {}
                _ => continue,
            }
            // A file that is not a sandbox's state (or one this host cannot trust) says
            // nothing about the path; `cleanup` reports it when asked for that id.
            let state = match SandboxState::load(state_dir, id, &mounts) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(file = %f.display(), error = %e, "state file skipped in the shared-path check");
                    continue;
                }
            };
            if state.sandbox.path.driver() == want.driver()
                && state.sandbox.path.relative() == want.relative()
            {
                return Err(in_use(
                    Some(state.sandbox_id.clone()),
                    format!(
                        "sandbox {} records it in {} (if that sandbox is gone: host-cgroups cleanup --sandbox-id {} --state-dir {})",
                        state.sandbox_id,
                        f.display(),
                        state.sandbox_id,
                        state_dir.display()
                    ),
                ));
            }
        }
    }
    if plan.driver != crate::cgroup::Driver::Cgroupfs {
        return Ok(());
    }
    let me = std::process::id() as i32;
    for dir in plan.sandbox.paths.values() {
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            let procs = d.join("cgroup.procs");
            let pids: Vec<i32> = std::fs::read_to_string(&procs)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if !pids.is_empty() {
                let ours = if pids.contains(&me) {
                    " (this process among them: a sandbox of this process is there)"
                } else {
                    ""
                };
                return Err(in_use(
                    None,
                    format!("{} holds pids {pids:?}{ours}", procs.display()),
                ));
            }
        }
    }
    Ok(())
}

/// Removes the nested layout's vCPU child of the sandbox at `path` when it exists.
fn destroy_child(layout: &CgroupLayout, path: &CgroupsPath, report: &mut CleanupReport) {
    let mut c = manager::VcpuChild::adopt(layout, &path.relative(), Vec::new());
    if !c.exists() {
        return;
    }
    let name = c.relative().to_string();
    match c.destroy() {
        Ok(()) => report.removed.push(name),
        Err(e) => report.errors.push(format!("{name}: {e}")),
    }
}

/// Destroys each target, sorting it into removed / absent / kept / errors.
///
/// Every directory the target names (its own, in each hierarchy, and the parents the
/// run created) is looked at before and after: `removed` lists the cgroups (relative
/// to the hierarchy roots) that existed and are gone, `absent` a target none of whose
/// directories existed, `kept` a created parent that is still there.
fn destroy_all(
    layout: &CgroupLayout,
    targets: Vec<(CgroupsPath, Vec<PathBuf>)>,
    report: &mut CleanupReport,
) {
    let mounts = layout.mount_points();
    for (path, created) in targets {
        let name = path.relative();
        let mut dirs: Vec<PathBuf> = created.clone();
        let mut m = match manager::build(&path, layout, created) {
            Ok(m) => m,
            Err(e) => {
                report.errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        let state_less = dirs.is_empty();
        dirs.extend(m.paths().into_values());
        if state_less && m.exists() {
            // Without a record of the parents the run made, every existing parent below
            // the hierarchy roots is watched: the driver removes the ones sandboxes made
            // (marked when made), and the report then says so; the rest are `kept`.
            let own: Vec<PathBuf> = dirs.clone();
            for d in own {
                let root = mounts
                    .iter()
                    .filter(|r| d.starts_with(r))
                    .max_by_key(|r| r.components().count());
                let Some(root) = root else { continue };
                let mut up = d.parent();
                while let Some(p) = up.filter(|p| p.starts_with(root) && *p != root.as_path()) {
                    dirs.push(p.to_path_buf());
                    up = p.parent();
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        let before: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
        let existed = m.exists();
        let result = m.destroy();
        let (gone, stay) = gone_and_standing(&before, &mounts);
        match result {
            Ok(()) if existed || !gone.is_empty() => report.removed.extend(gone),
            Ok(()) => report.absent.push(name),
            Err(e) => {
                report.removed.extend(gone);
                report.errors.push(format!("{name}: {e}"));
                continue;
            }
        }
        for r in stay {
            if !report.kept.iter().any(|k| k.starts_with(&format!("{r}:"))) {
                report
                    .kept
                    .push(format!("{r}: still holds other cgroups or tasks"));
            }
        }
    }
    crate::metrics::METRICS
        .cgroups_removed
        .add(report.removed.len());
}

// A runtime shares the sandbox and its hooks across threads (runtime-rs' resource manager
// and dragonball's VMM and vCPU threads): these fail to compile if that stops holding.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Sandbox>();
    shared::<SandboxError>();
    shared::<Arc<dyn VcpuHooks>>();
    shared::<crate::config::RuntimeConfig>();
};
