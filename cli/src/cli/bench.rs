//! `bench ...`: runs the harness of `host-cgroups-bench`, with its status and progress
//! lines printed as this program's own, and its errors mapped to exit codes.

use host_cgroups_bench::{BenchArgs, BenchError, Context, Progress};

use super::{CliError, VERSION};

/// The harness's lines on stderr, as [`super::status`] and [`super::progress`] print them.
struct Stderr;

impl Progress for Stderr {
    fn status(&self, msg: &str) {
        super::status(msg);
    }

    fn progress(&self, line: &str) {
        super::progress(line);
    }
}

impl From<BenchError> for CliError {
    fn from(e: BenchError) -> Self {
        match e {
            BenchError::BadInput(m) => CliError::BadInput(m),
            other => CliError::Runtime(other.to_string()),
        }
    }
}

/// Runs `bench <which>`.
pub fn bench(args: &BenchArgs) -> Result<(), CliError> {
    let ctx = Context {
        version: VERSION,
        progress: &Stderr,
    };
    host_cgroups_bench::run(args, &ctx).map_err(CliError::from)
}
