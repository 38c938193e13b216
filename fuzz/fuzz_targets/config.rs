//! The runtime-config loader never panics, and the vCPU counts it derives follow
//! Kata's rules for every host size: at least one vCPU, boot within the maximum,
//! both within the host's CPUs and Kata's ceiling.
#![no_main]

use host_cgroups::config::{RuntimeConfig, MAX_VCPUS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(c) = RuntimeConfig::parse(text, std::path::Path::new("fuzz.toml")) else { return };
    for host in [1u32, 2, 64, 512] {
        let boot = c.boot_vcpus(host);
        let max = c.max_vcpus(host);
        assert!(boot >= 1 && boot <= max, "boot {boot} max {max} host {host}");
        assert!(max <= host.min(MAX_VCPUS).max(1), "max {max} host {host}");
    }
});
