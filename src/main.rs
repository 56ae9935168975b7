//! Thin entry point: parse arguments, set up logs and signals, run, map the outcome to the
//! documented exit code.

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use azure2kvm::cli::{Cli, LogFormat, config};
use azure2kvm::error::{Error, ErrorKind};
use azure2kvm::interrupt::Interrupt;
use azure2kvm::output::log;

fn main() -> ExitCode {
    let args = match config::apply(std::env::args_os().collect(), &Cli::command()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("azure2kvm: error: {e}");
            return ExitCode::from(ErrorKind::Usage.exit_code());
        }
    };
    // clap exits with 2 on usage errors, as the contract says.
    let cli = Cli::parse_from(args);
    let format = cli.global.log_format;
    log::init(
        format == LogFormat::Json,
        cli.global.verbose,
        cli.global.quiet,
    );
    let result = Interrupt::install()
        .map_err(|e| Error::failed(format!("cannot install signal handlers: {e}")))
        .and_then(|interrupt| azure2kvm::commands::run(cli, interrupt));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match format {
                LogFormat::Json => tracing::error!(exit_code = e.kind().exit_code(), "{e}"),
                LogFormat::Text => eprintln!("azure2kvm: error: {e}"),
            }
            ExitCode::from(e.kind().exit_code())
        }
    }
}
