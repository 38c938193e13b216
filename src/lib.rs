//! Host cgroup placement for sandboxes whose VMM runs inside the shim process.
//!
//! Modules, one concern each:
//! - [`config`]: the Kata runtime TOML and OCI bundle input;
//! - [`path`]: cgroups path parsing, driver choice, systemd slice/unit naming;
//! - [`host`]: what this host's cgroup layout, systemd and KVM look like;
//! - [`manager`]: the `Manager` trait with the cgroupfs (and systemd) drivers;
//! - [`vmm`]: the minimal in-process VMM whose vCPU spawn path calls the hooks.
pub mod vmm;
