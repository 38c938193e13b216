//! The host cgroup component of a Kata sandbox whose VMM (dragonball) runs inside
//! the runtime process (Kata's Rust runtime, runtime-rs).
//!
//! On the host, the runtime process and its threads must sit in the pod's cgroups,
//! or the pod's limits do not hold and the node's accounting lies. This crate
//! decides where the sandbox's threads live, creates those cgroups (directly on
//! cgroupfs, or as a systemd transient scope over D-Bus), applies resources to
//! them, places each vCPU thread before it runs guest code, and removes everything
//! again, on cgroup v1 (and hybrid) and v2.
//!
//! # The flow a runtime follows
//!
//! [`sandbox::Sandbox`] is the entry point. It reads the runtime TOML
//! ([`config::RuntimeConfig`]) and decides by itself whether to act: only when
//! `hypervisor_name` is `dragonball`, whose VMM runs in this process.
//!
//! ```no_run
//! use host_cgroups::config::RuntimeConfig;
//! use host_cgroups::resources::from_json;
//! use host_cgroups::sandbox::{Sandbox, SandboxOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The runtime TOML users have (configuration-dragonball.toml).
//! let config = RuntimeConfig::load(Some(std::path::Path::new(
//!     "/opt/kata/share/defaults/kata-containers/runtime-rs/configuration-dragonball.toml",
//! )))?;
//! // At sandbox creation, before the VM starts: the OCI spec's linux.cgroupsPath.
//! let sandbox = Sandbox::new(
//!     &config,
//!     "sandbox-1",
//!     "kubepods/burstable/pod1/sandbox-1",
//!     SandboxOptions::default(),
//! )?;
//! // dragonball's VcpuManager gets the hooks; each `db_vcpu<N>` thread calls
//! // `vcpu_started(N)` first thing in `Vcpu::start_threaded`, `vcpu_exited(N)` last.
//! let hooks: std::sync::Arc<dyn host_cgroups::vcpu_hooks::VcpuHooks> = sandbox.hooks();
//! # let _ = hooks;
//! // runtime-rs' resource manager, as containers come and go. Which fields apply
//! // depends on the vCPU layout (only the cpuset with `sandbox-only`/`sibling`); the
//! // rest is returned, named, rather than dropped silently.
//! let update = sandbox.update_container("ctr-1", &from_json(r#"{"cpu":{"cpus":"0-1"}}"#)?)?;
//! for field in &update.not_applied {
//!     eprintln!("not applied on the host: {field} ({})", update.reason);
//! }
//! sandbox.remove_container("ctr-1")?;
//! // At sandbox stop: the VMM's stop runs inside the teardown, which then removes
//! // the cgroups with SIGTERM ignored, and the state file last.
//! let done = sandbox.teardown(|| {
//!     // vmm.stop(): join every vCPU thread, close the VM fd.
//! });
//! assert!(done.report.errors.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! The hook types come from the crate `vcpu-hooks`, which dragonball's `VcpuManager`
//! also depends on; it is re-exported as [`vcpu_hooks`] (`host_cgroups::vcpu_hooks::VcpuHooks`,
//! `HookError`, `PlacementError`), so one dependency on this crate is enough.
//!
//! After a crash, [`sandbox::Sandbox::cleanup`] removes exactly what the run made,
//! from its state file. `examples/embed.rs` runs this flow end to end with plain
//! threads in place of KVM vCPUs.
//!
//! # The public surface
//! At the crate root, what a runtime uses:
//! - the entry point and its values: [`Sandbox`], [`SandboxOptions`], [`SandboxError`],
//!   [`Activation`], [`Teardown`] (with [`TeardownReport`]), [`Preflight`],
//!   [`CleanupReport`], [`ContainerUpdate`], [`VcpuRecord`] (with [`PlacedBy`]),
//!   [`Stats`], and the errors it wraps ([`CgroupError`], [`SupervisorError`],
//!   [`ResourceError`], [`ConfigError`]);
//! - configuration: [`RuntimeConfig`] (the Kata runtime TOML) and [`SandboxPlan`] (what
//!   [`Sandbox::plan`] returns and `host-cgroups resolve` prints);
//! - OCI resources: [`from_json`], [`parse_json`] (with [`Parsed`]'s warnings),
//!   [`Checked`] (resources validated once, what the drivers take) and
//!   [`LinuxResources`] itself;
//! - the vocabulary: [`CgroupVersion`], [`Driver`], [`Controller`], [`HierarchyKey`],
//!   [`CpuList`];
//! - the hook types: [`vcpu_hooks`] (re-exported).
//!
//! The modules behind them are public for what an operator's tool or a test needs
//! beyond that: [`cgroup`], [`config`], [`cpulist`], [`host`] (the host's cgroup layout,
//! `/proc` readers, systemd and KVM probes), [`metrics`], [`path`] (cgroups paths and
//! systemd unit names), [`placement`], [`plan`], [`resources`], [`sandbox`] and
//! [`state`] (the persisted record of a run, read by `inspect` and `cleanup`).
//!
//! The drivers (`manager`: `FsManager`, `SystemdManager`, the `vcpus` child) and the
//! supervisor thread (`supervisor`) are internal: a runtime reaches them only through
//! [`Sandbox`]. This repository's tests and benchmark harness see them with the feature
//! `internals`, which is no API and has no stability promise.
//!
//! # Modules, by layer (lower layers never use higher ones)
//! - floor: [`cgroup`] (versions, drivers, controllers), [`cpulist`], [`metrics`],
//!   `sigterm`;
//! - inputs and host facts: [`path`] (cgroups paths → driver, systemd names),
//!   [`config`] (runtime TOML, OCI bundle), [`host`] (mounts, `/proc`, systemd and
//!   KVM probes, the directory map), [`placement`] (which threads go where);
//! - [`resources`]: OCI resources validated and turned into cgroupfs writes and
//!   systemd unit properties, one file per controller;
//! - [`plan`] (everything `host-cgroups resolve` prints, no side effects) and
//!   [`state`] (the persisted record for restore and crash cleanup);
//! - `manager`: the `Manager` trait, `FsManager` (cgroupfs) and, with the
//!   default feature `systemd`, `SystemdManager`;
//! - `selfplace` (what a vCPU thread does in its own hook) and `supervisor` (the
//!   thread inside the VMM that places vCPU threads and keeps the cgroups);
//! - [`sandbox`]: the entry point.
//!
//! # Features
//! - `systemd` (default): the systemd driver over D-Bus (`zbus`). Without it a
//!   `slice:prefix:name` path is refused with an error naming the feature.
//! - `metrics`: the counters of [`metrics`] in `dbs-utils`' metric types.
//! - `failpoints`: crash and error points for the test suite only.
//! - `internals`: the `manager` and `supervisor` modules made public, for this
//!   repository's tests and benchmarks only.
//!
//! # Logs
//! Through `tracing`, with its `log` compatibility on: a runtime that collects `log`
//! records (runtime-rs and dragonball route them into slog) sees them without a
//! `tracing` subscriber.
#![warn(missing_docs)]
pub mod cgroup;
pub mod config;
pub mod cpulist;
#[doc(hidden)]
pub mod failpoint;
pub mod host;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod manager;
// Without `internals`, what only the tests and the benchmark harness call is unused.
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unused_imports)]
mod manager;
pub mod metrics;
pub mod path;
pub mod placement;
pub mod plan;
pub mod resources;
pub mod sandbox;
mod selfplace;
mod sigterm;
pub mod state;
mod suggest;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod supervisor;
// Without `internals`, what only the tests and the benchmark harness call is unused.
#[cfg(not(feature = "internals"))]
#[allow(dead_code, unused_imports)]
mod supervisor;

pub use cgroup::{CgroupVersion, Controller, Driver, HierarchyKey};
pub use config::{ConfigError, RuntimeConfig};
pub use cpulist::CpuList;
pub use manager::systemd_info;
pub use oci_spec::runtime::LinuxResources;
pub use plan::SandboxPlan;
pub use resources::{from_json, parse_json, Checked, Parsed, ResourceError};
pub use sandbox::{
    Activation, CgroupError, CleanupReport, ContainerUpdate, PlacedBy, Preflight, Sandbox,
    SandboxError, SandboxOptions, Stats, SupervisorError, Teardown, TeardownReport, VcpuRecord,
};

/// The hooks crate `vcpu-hooks`, re-exported: [`sandbox::Sandbox::hooks`] returns an
/// `Arc<dyn vcpu_hooks::VcpuHooks>`, and a refused vCPU is a `vcpu_hooks::HookError`
/// (with `vcpu_hooks::PlacementError`), so an embedder names them through
/// `host_cgroups::vcpu_hooks` without a second dependency (and cannot get a second,
/// mismatched copy of the trait).
pub use vcpu_hooks;

// A runtime shares these across threads (runtime-rs' resource manager, dragonball's VMM
// and vCPU threads): they fail to compile if that stops holding.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Sandbox>();
    shared::<SandboxError>();
    shared::<RuntimeConfig>();
    shared::<SandboxPlan>();
    shared::<Stats>();
    shared::<std::sync::Arc<dyn vcpu_hooks::VcpuHooks>>();
};
