//! Host cgroup placement for sandboxes whose VMM runs inside the shim process.
pub mod cgroup;
pub mod config;
pub mod controller;
pub mod cpulist;
#[doc(hidden)]
pub mod failpoint;
pub mod host;
pub mod manager;
pub mod metrics;
pub mod path;
pub mod placement;
pub mod plan;
pub mod resources;
pub mod sandbox;
pub mod sigterm;
pub mod state;
