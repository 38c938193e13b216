//! A runtime that collects `log` records (runtime-rs and dragonball route `log` into
//! slog) sees the library's logs without installing a `tracing` subscriber.

use std::sync::Mutex;

use host_cgroups::config::RuntimeConfig;
use host_cgroups::sandbox::{Activation, Sandbox, SandboxOptions};

struct Collect(Mutex<Vec<String>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {} {}", r.level(), r.target(), r.args()));
    }
    fn flush(&self) {}
}

static LOGGER: Collect = Collect(Mutex::new(Vec::new()));

#[test]
fn library_logs_reach_a_log_logger() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    // A hypervisor other than dragonball: the sandbox is inactive and says so in a log
    // record; nothing on the host is touched.
    let text =
        "[hypervisor.qemu]\npath = \"/usr/bin/qemu\"\n[runtime]\nhypervisor_name = \"qemu\"\n";
    let cfg = RuntimeConfig::parse(text, std::path::Path::new("qemu.toml")).unwrap();
    let sb = Sandbox::new(&cfg, "logtest", "", SandboxOptions::default()).unwrap();
    assert!(matches!(sb.activation(), Activation::Inactive { .. }));
    let got = LOGGER.0.lock().unwrap().clone();
    assert!(
        got.iter()
            .any(|l| l.contains("host_cgroups::sandbox") && l.contains("inactive")),
        "{got:?}"
    );
}
