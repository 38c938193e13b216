//! `host-cgroups`: the command-line entry point.
use std::io::IsTerminal;

use clap::Parser;

mod bench;
mod cli;

use cli::LogFormat;

/// `HOST_CGROUPS_LOG`: the log filter (tracing's `EnvFilter` syntax), `warn` when unset.
const LOG_ENV: &str = "HOST_CGROUPS_LOG";

fn main() {
    // A closed stdout (`| head`) ends the program quietly, as for any Unix tool.
    // SAFETY: resetting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // A malformed command line (exit 2): under --json, the error object on
            // stdout too; --help and --version are not errors.
            if e.use_stderr() && std::env::args_os().skip(1).any(|a| a == "--json") {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or_default();
                let msg = first.strip_prefix("error: ").unwrap_or(first);
                cli::print_error_object("bad-input", e.exit_code(), msg);
            }
            e.exit()
        }
    };
    let format = cli.log_format;
    cli::set_log_format(format);
    let filter = match std::env::var(LOG_ENV) {
        Ok(v) if !v.is_empty() => match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("host-cgroups: error: {LOG_ENV}={v:?} is not a log filter: {e}");
                std::process::exit(2);
            }
        },
        _ => tracing_subscriber::EnvFilter::new("warn"),
    };
    // The program's own status lines and its final error always pass.
    let filter = filter.add_directive(
        format!("{}=info", cli::STATUS_TARGET)
            .parse()
            .expect("a constant directive"),
    );
    // Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org).
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    let json = cli.json_output();
    if let Err(e) = cli::run(cli) {
        cli::report_error(&e, json);
        std::process::exit(e.exit_code());
    }
}
