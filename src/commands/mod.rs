//! One module per subcommand: glue between settings, the core modules and the printer.

pub mod convert;
pub mod download;
pub mod inspect;

use crate::cli::{Cli, Command, ImageOutputArgs};
use crate::error::Error;
use crate::image::sink::ImageFormat;
use crate::interrupt::Interrupt;
use std::path::Path;

/// Runs the parsed command line.
pub fn run(cli: Cli, interrupt: Interrupt) -> Result<(), Error> {
    match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Convert(args) => convert::run(&args, &cli.global, &interrupt),
        Command::Download(args) => download::run(&args, &cli.global, &interrupt),
    }
}

/// The output format: `--format`, else OUTPUT's extension, else a usage error.
pub fn output_format(args: &ImageOutputArgs, output: &Path) -> Result<ImageFormat, Error> {
    args.format.or_else(|| ImageFormat::from_extension(output)).ok_or_else(|| {
        Error::usage(format!(
            "cannot tell the output format from {}: use a .raw, .img or .qcow2 name, or --format raw|qcow2",
            output.display()
        ))
    })
}
