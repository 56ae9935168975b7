//! Command-line types (clap) only; commands turn them into validated settings.
//! Names follow the contract in DESIGN.md: other tools and users depend on them.

pub mod config;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::image::sink::ImageFormat;
use crate::output::log::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "azure2kvm",
    version,
    about = "Move Azure virtual machines to KVM",
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log line format on stderr (json for schedulers).
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "AZURE2KVM_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// No progress bar or progress log lines.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Config file (TOML; keys are long flag names). Precedence: flags > env > file.
    #[arg(long, global = true, env = "AZURE2KVM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a VHD's facts: type, sizes, creator, geometry, checksums, extents.
    Inspect(InspectArgs),
    /// Convert a local VHD (fixed or dynamic) into a sparse raw or qcow2 image.
    Convert(ConvertArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The VHD file.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Output options shared by every command that writes an image.
#[derive(Debug, Args)]
pub struct ImageOutputArgs {
    /// Output format; by default from OUTPUT's extension (.raw/.img → raw, .qcow2 → qcow2).
    #[arg(long, value_enum)]
    pub format: Option<ImageFormat>,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The VHD to read.
    pub input: PathBuf,
    /// The image to write (appears only when complete).
    pub output: PathBuf,
    #[command(flatten)]
    pub image: ImageOutputArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn quiet_and_verbose_conflict() {
        assert!(Cli::try_parse_from(["azure2kvm", "-q", "-v", "inspect", "x"]).is_err());
    }
}
