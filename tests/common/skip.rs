//! Skip convention for integration tests that run in the test hosts (see tests/hosts/).
//!
//! libtest has no "skipped" outcome. A test that cannot run on the current host kind calls
//! [`skip`] and returns (libtest counts it as passed). `skip` prints the reason to stderr and,
//! when `HOSTCG_SKIP_LOG` is set (tests/hosts/matrix sets it inside each host), appends one line
//! `<test crate>::<test>: <reason>` to that file; the matrix reports those tests as skipped and
//! fails when a test was skipped on every host. `HOSTCG_TESTHOST` names the host kind
//! (v1, v2, sd-v1, sd-v2, sd-legacy); it is absent on a developer's machine.
//!
//! Use from an integration test file (no mod.rs needed):
//! ```ignore
//! mod common { pub mod skip; }
//! use common::skip::skip;
//! ```
//! Dependency-free on purpose.

use std::io::Write;

/// Record that `test` (the test function's name) is skipped on this host, because of `reason`.
/// Panics when `HOSTCG_SKIP_LOG` is set but cannot be appended to, so a skip is never lost.
#[allow(dead_code)]
pub fn skip(test: &str, reason: &str) {
    // CARGO_CRATE_NAME is expanded in the test crate that includes this file: the test target's
    // name with '-' turned into '_'.
    let line = format!(
        "{}::{}: {}",
        env!("CARGO_CRATE_NAME"),
        test,
        reason.replace(['\n', '\r'], " ")
    );
    eprintln!("SKIPPED {line}");
    if let Some(path) = std::env::var_os("HOSTCG_SKIP_LOG") {
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = res {
            panic!("cannot append to HOSTCG_SKIP_LOG={path:?}: {e}");
        }
    }
}
