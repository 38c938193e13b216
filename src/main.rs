//! `host-cgroups`: the command-line entry point.
use clap::Parser;

mod bench;
mod cli;

fn main() {
    // A closed stdout (`| head`) ends the program quietly, as for any Unix tool.
    // SAFETY: resetting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOST_CGROUPS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    if let Err(e) = cli::run(cli) {
        eprintln!("host-cgroups: error: {e}");
        std::process::exit(e.exit_code());
    }
}
