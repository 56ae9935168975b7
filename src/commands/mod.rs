//! One module per subcommand: glue between settings, the core modules and the printer.

pub mod cleanup;
pub mod convert;
pub mod download;
pub mod export;
pub mod inspect;
pub mod list;
pub mod machine;

use crate::azure::cloud::Cloud;
use crate::azure::credential::CredentialSettings;
use crate::azure::session::AzureSession;
use crate::cli::{AzureArgs, Cli, Command, ImageOutputArgs};
use crate::error::Error;
use crate::image::sink::ImageFormat;
use crate::image::source::FileSource;
use crate::interrupt::Interrupt;
use std::path::Path;

/// Runs the parsed command line.
pub fn run(cli: Cli, interrupt: Interrupt) -> Result<(), Error> {
    match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Convert(args) => convert::run(&args, &cli.global, &interrupt),
        Command::List(args) => list::run(&args, &cli.global, &interrupt),
        Command::Download(args) => download::run(&args, &cli.global, &interrupt),
        Command::Export(args) => export::run(&args, &cli.global, &interrupt),
        Command::Cleanup(args) => cleanup::run(&args, &cli.global, &interrupt),
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

/// Cloud, transport and credential chain from the Azure flags and the environment; every
/// problem found here is a usage error (exit 2). Builds no connection.
pub fn azure_session(args: &AzureArgs) -> Result<AzureSession, Error> {
    let cloud = Cloud::resolve(
        args.cloud,
        args.arm_endpoint.as_deref(),
        args.authority_host.as_deref(),
        args.arm_audience.as_deref(),
    )
    .and_then(|c| c.with_storage_suffix(args.storage_suffix.as_deref()))
    .map_err(Error::usage)?;
    let settings =
        CredentialSettings::from_env(args.client_id.as_deref(), args.tenant_id.as_deref());
    AzureSession::new(cloud, args.auth, &settings, args.ca_bundle.as_deref()).map_err(Error::usage)
}

/// The async runtime for a command that talks to Azure. Built per command (inspect and
/// convert need none); worker threads default to the core count.
pub fn async_runtime(thread_name: &str) -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()
        .map_err(|e| Error::failed(format!("cannot start the async runtime: {e}")))
}

/// Opens a local VHD or VHDX for reading: a regular file, or a usage error (exit 2) naming it.
pub fn open_vhd_file(path: &Path) -> Result<FileSource, Error> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::usage(format!("cannot open {}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::usage(format!("cannot stat {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::usage(format!(
            "{} is not a regular file (a VHD or VHDX file is expected)",
            path.display()
        )));
    }
    FileSource::new(file).map_err(|e| Error::failed(format!("{}: {e}", path.display())))
}
