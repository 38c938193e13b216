//! The runtime-config loader never panics, and what it accepts is in range.
#![no_main]

use host_cgroups::config::{RuntimeConfig, MAX_VCPUS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(c) = RuntimeConfig::parse(text, std::path::Path::new("fuzz.toml")) else { return };
    assert!(c.default_vcpus > 0.0 && c.default_vcpus <= f64::from(MAX_VCPUS));
    let boot = c.boot_vcpus();
    assert!((1..=MAX_VCPUS).contains(&boot));
    let max = c.max_vcpus(2);
    assert!(max >= boot && max <= MAX_VCPUS);
});
