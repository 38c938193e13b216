//! Host cgroup placement for sandboxes whose VMM runs inside the shim process.
//!
//! Modules, one concern each:
//! - [`config`]: the Kata runtime TOML and OCI bundle input;
//! - [`path`]: cgroups path parsing, driver choice, systemd slice/unit naming;
//! - [`host`]: what this host's cgroup layout, systemd and KVM look like;
//! - [`resources`]: OCI resources validated and turned into cgroupfs writes;
//! - [`manager`]: the `Manager` trait with the cgroupfs (and systemd) drivers;
//! - [`placement`]: which threads go where, per driver and cgroup version;
//! - [`controller`]: the thread inside the VMM that places vCPU threads as they start;
//! - [`failpoint`]: named crash and error points for the hardening tests;
//! - [`state`]: the persisted sandbox state, for restore and crash cleanup;
//! - [`plan`]: everything `resolve` reports, computed without side effects;
//! - [`vmm`]: the minimal in-process VMM whose vCPU spawn path calls the hooks;
//! - [`cli`]: the `host-cgroups` command line;
//! - [`bench`]: the benchmark harness behind `host-cgroups bench`.
pub mod bench;
pub mod cli;
pub mod config;
pub mod controller;
pub mod failpoint;
pub mod host;
pub mod manager;
pub mod path;
pub mod placement;
pub mod plan;
pub mod resources;
pub mod state;
pub mod vmm;
