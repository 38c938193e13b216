//! Host cgroup placement for sandboxes whose VMM runs inside the shim process.
pub mod config;
pub mod controller;
#[doc(hidden)]
pub mod failpoint;
pub mod host;
pub mod manager;
pub mod path;
pub mod placement;
pub mod plan;
pub mod resources;
pub mod selfplace;
pub mod sigterm;
pub mod state;
