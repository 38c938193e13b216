//! `host-cgroups`: the command-line entry point.
use std::io::IsTerminal;

use clap::Parser;

mod cli;

use cli::LogFormat;

/// `HOST_CGROUPS_LOG`: the log filter (tracing's `EnvFilter` syntax), `warn` when unset.
const LOG_ENV: &str = "HOST_CGROUPS_LOG";

/// Sets up logging on stderr in `format`; an invalid `HOST_CGROUPS_LOG` is returned as an
/// error message (logging then uses the default filter, so the message can be logged).
fn init_logging(format: LogFormat) -> Result<(), String> {
    let (filter, bad) = match std::env::var(LOG_ENV) {
        Ok(v) if !v.is_empty() => match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (
                tracing_subscriber::EnvFilter::new("warn"),
                Some(format!("{LOG_ENV}={v:?} is not a log filter: {e}")),
            ),
        },
        _ => (tracing_subscriber::EnvFilter::new("warn"), None),
    };
    // The program's own status lines and its final error always pass.
    let filter = match format!("{}=info", cli::STATUS_TARGET).parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
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
    bad.map_or(Ok(()), Err)
}

/// `--log-format` as given on a command line that did not parse.
fn raw_log_format() -> LogFormat {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args
        .windows(2)
        .any(|w| w[0] == "--log-format" && w[1] == "json")
        || args.iter().any(|a| a == "--log-format=json");
    if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

fn main() {
    // A closed stdout (`| head`) ends the program quietly, as for any Unix tool.
    // SAFETY: resetting a signal disposition before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        // --help and --version are not errors.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // A malformed command line (exit 2): reported like any other error, so that
            // --json gets its error object and --log-format json its JSON line.
            let format = raw_log_format();
            cli::set_log_format(format);
            let _ = init_logging(format);
            let json = std::env::args_os().skip(1).any(|a| a == "--json");
            if format == LogFormat::Text && !json {
                e.exit()
            }
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            let msg = first.strip_prefix("error: ").unwrap_or(first).to_string();
            let err = cli::CliError::BadInput(msg);
            if format == LogFormat::Text {
                // clap's own text (with the usage) on stderr, the object on stdout.
                let _ = e.print();
                cli::print_error_object(err.kind(), e.exit_code(), &err.to_string());
            } else {
                cli::report_error(&err, json);
            }
            std::process::exit(e.exit_code());
        }
    };
    let format = cli.log_format;
    cli::set_log_format(format);
    if let Err(msg) = init_logging(format) {
        cli::report_error(&cli::CliError::BadInput(msg), cli.json_output());
        std::process::exit(2);
    }
    let json = cli.json_output();
    // Test builds only (the library's `failpoints` feature): a misnamed point is bad input,
    // and a run that never reached its armed point says so and exits 3, so that a crash
    // test cannot pass on a point its run does not pass.
    if let Err(msg) = host_cgroups::failpoint::check_armed() {
        cli::report_error(&cli::CliError::BadInput(msg), json);
        std::process::exit(2);
    }
    let result = cli::run(cli);
    if let Some(point) = host_cgroups::failpoint::unreached() {
        eprintln!("failpoint {point} was armed but never reached");
        std::process::exit(3);
    }
    if let Err(e) = result {
        cli::report_error(&e, json);
        std::process::exit(e.exit_code());
    }
}
