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

mod admission;
mod claim;
mod cleanup;

use claim::Claim;
pub use claim::CLAIMS_DIR;

use admission::{refuse_running, refuse_shared_path, refuse_taken};
pub use cleanup::CleanupReport;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use thiserror::Error;
use tracing::{info, warn};
use vcpu_hooks::VcpuHooks;

use crate::cgroup::HierarchyKey;
use crate::config::{load_bundle, ConfigError, RuntimeConfig};
use crate::host::{CgroupLayout, HostError};
use crate::manager;
use crate::manager::gone_and_standing;
pub use crate::manager::{CgroupError, Stats};
use crate::metrics::IncMetric;
use crate::path::{validate_sandbox_id, CgroupsPath, PathError};
use crate::plan::{PlanError, SandboxPlan};
use crate::resources::Checked;
pub use crate::resources::ContainerUpdate;
pub use crate::selfplace::PlacedBy;
use crate::sigterm::ignore_sigterm_during;
pub use crate::state::DEFAULT_STATE_DIR;
use crate::state::{SandboxState, StateError};
use crate::supervisor::{Supervisor, SupervisorOptions};
pub use crate::supervisor::{SupervisorError, TeardownReport, VcpuRecord};

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
    /// The supervisor failed (creation, placement policy, resources).
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
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
            SandboxError::Supervisor(e) => e.is_bad_input(),
            SandboxError::Cgroup(CgroupError::Resource(_)) => true,
            SandboxError::State(e) => matches!(
                e,
                StateError::Untrusted { .. }
                    | StateError::NotADirectory { .. }
                    | StateError::NewerFormat { .. }
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
    pub paths: BTreeMap<HierarchyKey, PathBuf>,
    /// The overhead cgroup's directories, when the plan has one.
    pub overhead_paths: Option<BTreeMap<HierarchyKey, PathBuf>>,
    /// Directories of those cgroups (and their parents) that exist now.
    pub existing: Vec<PathBuf>,
    /// Directories that `run` would create (parents first), or systemd would for a unit.
    pub would_create: Vec<PathBuf>,
    /// What `run` would meet here that is not a refusal (systemd unreachable, ...).
    pub notes: Vec<String>,
}

/// One pod sandbox's host cgroups: created by [`Sandbox::new`], torn down by
/// [`Sandbox::teardown`].
///
/// # End every active sandbox with `teardown` or `keep`
///
/// Dropping an active sandbox that was neither torn down nor
/// [`kept`](Sandbox::keep) (an early `?` in the caller, a panic) removes nothing: its
/// cgroups and its state file stay on the host, and this process stays in the cgroup
/// the sandbox moved it into. The drop stops the supervisor thread and reports itself
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
    supervisor: Option<Supervisor>,
    state_dir: PathBuf,
    /// The claim on the sandbox's cgroups path, held while the sandbox lives here.
    claim: Option<Claim>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("activation", &self.activation)
            .field("live", &self.supervisor.is_some())
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
    /// the state file before the first directory is made, and starts the supervisor
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
        // One path, one sandbox: claimed in one atomic step before anything is made.
        let claim = Claim::take(&opts.state_dir, &plan.sandbox_id, &plan.sandbox.parsed)?;
        let give_up = |claim: Claim, state_dir: &Path, id: &str| {
            // Nothing of ours to keep the path for unless a state file records it.
            if !SandboxState::file(state_dir, id).exists() {
                claim.release();
            }
        };
        if let Err(e) = refuse_shared_path(&plan) {
            give_up(claim, &opts.state_dir, &plan.sandbox_id);
            return Err(e);
        }
        // The plan's resources, validated when it was made; others (a plan made without
        // them, or with other ones) once here.
        let sandbox_resources = match opts
            .sandbox_resources
            .map(|r| Checked::reuse_or_new(plan.resources.as_ref(), r))
            .transpose()
        {
            Ok(r) => r,
            Err(e) => {
                give_up(claim, &opts.state_dir, &plan.sandbox_id);
                return Err(CgroupError::from(e).into());
            }
        };
        let copts = SupervisorOptions {
            state_dir: Some(opts.state_dir.clone()),
            placement_timeout: opts.placement_timeout,
            sandbox_resources,
            enable_vcpus_pinning: config.enable_vcpus_pinning,
        };
        let id = plan.sandbox_id.clone();
        let supervisor = match Supervisor::start(plan.clone(), copts) {
            Ok(s) => s,
            Err(e) => {
                give_up(claim, &opts.state_dir, &id);
                return Err(e.into());
            }
        };
        crate::metrics::METRICS.sandboxes_created.inc();
        Ok(Sandbox {
            id,
            activation: Activation::Active,
            plan: Some(plan),
            supervisor: Some(supervisor),
            state_dir: opts.state_dir,
            claim: Some(claim),
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
            supervisor: None,
            state_dir,
            claim: None,
        }
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
        // The claim its crashed runtime held, taken back (it names this sandbox).
        let claim = Claim::take(&opts.state_dir, sandbox_id, &state.sandbox.path)?;
        let plan = SandboxPlan::new(
            config,
            sandbox_id,
            &state.sandbox.path.raw(),
            &layout,
            state.sandbox_resources.as_ref(),
        )?;
        let copts = SupervisorOptions {
            state_dir: Some(opts.state_dir.clone()),
            placement_timeout: opts.placement_timeout,
            // Checked once, by the plan made from the state file.
            sandbox_resources: plan.resources.clone(),
            enable_vcpus_pinning: state.enable_vcpus_pinning,
        };
        let supervisor = Supervisor::restore(
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
            supervisor: Some(supervisor),
            state_dir: opts.state_dir,
            claim: Some(claim),
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
        match &self.supervisor {
            Some(c) => c.hooks(),
            None => Arc::new(vcpu_hooks::NoHooks),
        }
    }

    /// [`Sandbox::hooks`] for a VMM about to boot `vcpus` vCPUs: knowing the count, each
    /// vCPU can pin itself in its hook (with `enable_vcpus_pinning` and as many vCPUs as
    /// CPUs in the cpuset) before its first guest instruction. dragonball knows the
    /// count when `VcpuManager::create_boot_vcpus` runs.
    pub fn hooks_for_boot(&self, vcpus: u32) -> Arc<dyn VcpuHooks> {
        match &self.supervisor {
            Some(c) => c.hooks_for_boot(vcpus),
            None => Arc::new(vcpu_hooks::NoHooks),
        }
    }

    /// The sandbox cgroup's directories, controller → absolute path (empty when inactive).
    pub fn paths(&self) -> BTreeMap<HierarchyKey, PathBuf> {
        self.supervisor
            .as_ref()
            .map(|c| c.paths().clone())
            .unwrap_or_default()
    }

    /// The nested layout's vCPU child directories, controller → absolute path (empty
    /// when inactive or without the nested layout).
    pub fn vcpus_paths(&self) -> BTreeMap<HierarchyKey, PathBuf> {
        self.supervisor
            .as_ref()
            .and_then(|c| c.vcpus_paths().cloned())
            .unwrap_or_default()
    }

    /// vCPU records so far: index, tid, placement latency, pinning.
    pub fn vcpus(&self) -> Vec<VcpuRecord> {
        self.supervisor
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
        let update = match (&self.supervisor, &self.plan, &self.activation) {
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
        match &self.supervisor {
            Some(c) => Ok(c.update_container(container_id, None)?),
            None => Ok(()),
        }
    }

    /// Applies resources to the sandbox cgroup as a whole.
    ///
    /// # Errors
    /// Resources the host refuses; the previous values are restored.
    pub fn set_sandbox_resources(&self, res: &LinuxResources) -> Result<(), SandboxError> {
        match &self.supervisor {
            Some(c) => Ok(c.set_sandbox_resources(res.clone())?),
            None => Ok(()),
        }
    }

    /// The sandbox cgroup's usage counters; `None` when inactive.
    ///
    /// # Errors
    /// The counters could not be read.
    pub fn stats(&self) -> Result<Option<Stats>, SandboxError> {
        match &self.supervisor {
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
        let report = match self.supervisor.take() {
            Some(c) => ignore_sigterm_during(|| c.shutdown(true)),
            None => TeardownReport::default(),
        };
        // The claim goes with the state file: while the state stays (a removal
        // failed), the path stays claimed for `cleanup`.
        if let Some(claim) = self.claim.take() {
            if !SandboxState::file(&self.state_dir, &self.id).exists() {
                claim.release();
            }
        }
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
        let report = match self.supervisor.take() {
            Some(c) => c.shutdown(false),
            None => TeardownReport::default(),
        };
        Teardown { vmm, report }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(c) = self.supervisor.take() {
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
            // Stop the supervisor thread; keep everything on the host for `cleanup`.
            let _ = c.shutdown(false);
        }
    }
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
