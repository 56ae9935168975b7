//! Command-line types (clap) only; commands turn them into validated settings.
//! Names follow the contract in DESIGN.md: other tools and users depend on them.

pub mod config;
pub mod values;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::azure::cloud::CloudName;
use crate::azure::credential::AuthMethod;
use crate::export::disk_kind::SnapshotType;
use crate::export::plan::{Consistency, DiskSet};
use crate::image::sink::ImageFormat;
pub use values::LogFormat;

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

impl GlobalArgs {
    /// Whether progress may be shown at all (not with --no-progress or -q).
    pub fn progress_enabled(&self) -> bool {
        !self.no_progress && !self.quiet
    }
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Show a VHD's facts: type, sizes, creator, geometry, checksums, extents.
    Inspect(InspectArgs),
    /// Convert a local VHD (fixed or dynamic) into a sparse raw or qcow2 image.
    Convert(ConvertArgs),
    /// List the VMs a selection matches: size, power state, OS, generation, disks.
    List(Box<ListArgs>),
    /// Download a blob holding a VHD (SAS URL) straight into a sparse raw or qcow2 image,
    /// fetching only the pages that were ever written; resumable.
    Download(DownloadArgs),
    /// Export the selected VMs' disks (snapshot, grant read access, stream, revoke, delete
    /// the snapshot) into images with a manifest and a libvirt domain per VM.
    Export(Box<ExportArgs>),
    /// Remove what an interrupted or killed export left in Azure (grants, snapshots).
    Cleanup(Box<CleanupArgs>),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Where images, manifests, domain.xml and the run report go (required unless
    /// --dry-run).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Which disks of each VM.
    #[arg(long, value_enum, default_value = "all")]
    pub disks: DiskSet,
    /// How each VM's disks are read consistently [default: snapshot for running or
    /// stopped VMs, directly from the disk for deallocated ones].
    #[arg(long, value_enum)]
    pub consistency: Option<Consistency>,
    /// Lifetime of each read grant (SAS), in seconds: long enough for one disk on a slow
    /// link, short to limit exposure; an expired grant is renewed and the download resumes.
    #[arg(long, value_name = "SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(1..=36_000))]
    pub sas_duration: u32,
    /// Image format.
    #[arg(long, value_enum, default_value = "qcow2")]
    pub format: ImageFormat,
    /// Snapshot kind for --consistency snapshot (Premium SSD v2 and Ultra disks are always
    /// incremental).
    #[arg(long, value_enum, default_value = "incremental")]
    pub snapshot_type: SnapshotType,
    /// This host reaches the private endpoints of the disks' disk accesses: export disks
    /// whose network access policy is AllowPrivate too (refused otherwise).
    #[arg(long)]
    pub private_network: bool,
    /// Parallel connections across all disks, 1-256 (disks in flight share them)
    /// [default: 4 per disk, at least 16, at most 256; fewer if --memory is short].
    #[arg(long, value_name = "N",
          value_parser = clap::builder::TypedValueParser::map(
              clap::value_parser!(u16).range(1..=256), usize::from))]
    pub concurrency: Option<usize>,
    /// Memory for the whole run, e.g. 512M, 2G: chunk buffers of every disk in flight plus
    /// 32 MiB for the process, so it bounds the peak RSS. Disks in flight, connections per
    /// disk and chunk size (8 or 4 MiB) follow from it. At least 44M, at most the machine's
    /// memory [default: a quarter of the machine's memory (cgroup limit if lower), at most
    /// 1G].
    #[arg(long, value_name = "SIZE", env = MEMORY_ENV, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// A plan (JSON list of VMs, as `list --output json` prints): with --dry-run it is
    /// written; otherwise, if FILE exists and no selection flag is given, it is exported.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Export only shard I of N (0-based) of the selected VMs, whole VMs balanced by the
    /// bytes to move (written bytes from a --measure plan, else disk sizes); N processes
    /// with the same plan cover every VM exactly once.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::export::shard::Shard>,
    /// Print what would be created and downloaded; nothing is created in Azure.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run --plan FILE: size each selected disk by its data (Get Page Ranges)
    /// and record its written bytes in FILE, so --shard balances by them. Unlike a plain
    /// dry run this creates short-lived read grants (and incremental snapshots of running
    /// VMs' disks), recorded in run-<ID>.json beside FILE and removed again.
    #[arg(long)]
    pub measure: bool,
    /// Also export confidential VM disks encrypted with the VM's key
    /// (DiskWithVMGuestState): the image is ciphertext, unreadable outside that VM.
    #[arg(long)]
    pub allow_encrypted: bool,
    /// One pass of a warm migration while the VMs run: the first copies each disk from an
    /// incremental snapshot and keeps it; later passes fetch only the pages changed since
    /// (state in DIR/migration.json).
    #[arg(long)]
    pub warm: bool,
    /// With --warm: the last pass. Deallocates each VM (or, with --consistency none,
    /// requires it stopped or deallocated already), applies the final changes, deletes
    /// every kept snapshot and reports the downtime.
    #[arg(long)]
    pub cutover: bool,
    #[command(flatten)]
    pub selection: SelectionArgs,
    #[command(flatten)]
    pub azure: AzureArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["run_id", "migration"])))]
pub struct CleanupArgs {
    /// The run id an export printed (also in run-<ID>.json and the tag azure2kvm-run).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// A warm migration's output directory: removes the snapshots its migration.json keeps
    /// (revoking their grants first) and ends the migration.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["run_id", "output_dir"])]
    pub migration: Option<PathBuf>,
    /// Subscription to search for the run's tagged snapshots (default: from the report).
    #[arg(long, value_name = "ID", env = "AZURE_SUBSCRIPTION_ID")]
    pub subscription: Option<String>,
    /// The export's output directory, where run-<ID>.json is (default: current directory).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    #[command(flatten)]
    pub azure: AzureArgs,
}

/// Who we are and which cloud: shared by every command that calls Azure.
#[derive(Debug, Args)]
#[command(next_help_heading = "Azure")]
pub struct AzureArgs {
    /// Credential source. auto: service principal from env, then workload identity, then
    /// managed identity (IDENTITY_ENDPOINT, else IMDS); azure-cli only when asked.
    #[arg(long, value_enum, default_value = "auto", env = "AZURE2KVM_AUTH")]
    pub auth: AuthMethod,
    /// Client id of a user-assigned managed identity or of the app (default AZURE_CLIENT_ID).
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Entra ID tenant (default AZURE_TENANT_ID).
    #[arg(long, value_name = "ID")]
    pub tenant_id: Option<String>,
    /// Azure cloud; custom needs --arm-endpoint (Azure Stack Hub, test endpoints).
    #[arg(long, value_enum, default_value = "public", env = "AZURE2KVM_CLOUD")]
    pub cloud: CloudName,
    /// ARM endpoint of a custom cloud.
    #[arg(long, value_name = "URL", env = "AZURE2KVM_ARM_ENDPOINT")]
    pub arm_endpoint: Option<String>,
    /// Entra ID (or AD FS) authority of a custom cloud.
    #[arg(long, value_name = "URL")]
    pub authority_host: Option<String>,
    /// Token audience for ARM in a custom cloud (default: the ARM endpoint).
    #[arg(long, value_name = "URL")]
    pub arm_audience: Option<String>,
    /// Blob host suffix of a custom cloud (e.g. blob.local.azurestack.external): storage
    /// tokens for unmanaged disks go only to hosts under it.
    #[arg(long, value_name = "SUFFIX", env = "AZURE2KVM_STORAGE_SUFFIX")]
    pub storage_suffix: Option<String>,
    /// Extra trusted root certificates (PEM), added to the system roots.
    #[arg(long, value_name = "PEM", env = "AZURE2KVM_CA_BUNDLE")]
    pub ca_bundle: Option<PathBuf>,
    /// Blob service version (x-ms-version) sent to managed-disk export hosts
    /// (md-impexp-…); other blob hosts get the storage SDK's own.
    #[arg(long, value_name = "YYYY-MM-DD", env = "AZURE2KVM_MD_SERVICE_VERSION",
          default_value = crate::azure::blob::MANAGED_DISK_SERVICE_VERSION)]
    pub md_service_version: crate::azure::blob::ServiceVersion,
}

/// Which VMs: every flag narrows; repeated values of one flag widen (tags: all must match).
#[derive(Debug, Args)]
#[command(next_help_heading = "Selection")]
pub struct SelectionArgs {
    /// Subscription id(s).
    #[arg(long, value_name = "ID", num_args = 1.., env = "AZURE_SUBSCRIPTION_ID")]
    pub subscription: Vec<String>,
    /// Every subscription the identity can see (disabled ones are skipped, with a line
    /// on stderr). Not with --subscription or AZURE_SUBSCRIPTION_ID.
    #[arg(long)]
    pub all_subscriptions: bool,
    /// Where VMs are found: resource-graph (one query for many subscriptions), compute
    /// (the Compute lists, per subscription), auto (Resource Graph for more than one
    /// subscription).
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|compute|resource-graph"
    )]
    pub discovery: crate::azure::inventory::Discovery,
    /// Resource group(s), any case.
    #[arg(long, value_name = "RG", num_args = 1..)]
    pub resource_group: Vec<String>,
    /// VM name glob(s), any case (web-*, db-0[1-3]).
    #[arg(long, value_name = "GLOB", num_args = 1..)]
    pub name: Vec<String>,
    /// KEY=VALUE, or KEY alone for "has the tag"; all must match.
    #[arg(long, value_name = "KEY[=VALUE]", num_args = 1..)]
    pub tag: Vec<String>,
    /// running, stopped, deallocated, starting, stopping, deallocating, unknown.
    #[arg(long, value_name = "STATE", num_args = 1..)]
    pub power_state: Vec<String>,
    /// Region(s), like westeurope.
    #[arg(long, value_name = "LOC", num_args = 1..)]
    pub location: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListOutput {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// table for people, json (one array) for scripts.
    #[arg(long, value_enum, default_value = "table")]
    pub output: ListOutput,
    #[command(flatten)]
    pub selection: SelectionArgs,
    #[command(flatten)]
    pub azure: AzureArgs,
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

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The blob: a SAS URL (https; http only for 127.0.0.1/localhost). Never logged.
    #[arg(value_name = "URL")]
    pub url: String,
    /// The image to write (appears only when complete).
    pub output: PathBuf,
    #[command(flatten)]
    pub image: ImageOutputArgs,
    /// Parallel ranged GETs (1-64; lowered if needed to keep the memory budget).
    #[arg(long, default_value_t = crate::transfer::engine::DEFAULT_CONCURRENCY,
          value_parser = clap::builder::TypedValueParser::map(
              clap::value_parser!(u16).range(1..=64), usize::from))]
    pub concurrency: usize,
    /// Bytes per ranged GET, e.g. 8M, 4MiB, 1048576 [default: 8M; 4M with --verify md5].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Check each range against the service's transactional MD5.
    #[arg(long, value_enum, default_value = "none")]
    pub verify: crate::transfer::job::Verify,
    /// Seconds to wait for response headers or the next body bytes before retrying.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 60,
        hide = true,
        env = IO_TIMEOUT_ENV,
        value_parser = parse_io_timeout
    )]
    pub io_timeout: u64,
    /// For blob URLs without a SAS: sign in with Entra ID (storage scope); also the
    /// cloud and --ca-bundle every download uses.
    #[command(flatten)]
    pub azure: AzureArgs,
}

/// `export --memory` from the environment.
pub const MEMORY_ENV: &str = "AZURE2KVM_MEMORY";

/// The I/O timeout's environment variable, read by every command that downloads.
pub const IO_TIMEOUT_ENV: &str = "AZURE2KVM_IO_TIMEOUT";
/// Longest I/O timeout accepted. A stalled connection is retried only after the timeout:
/// past an hour a typo (ms for s) would hang a run for days.
pub const MAX_IO_TIMEOUT_SECS: u64 = 3600;

/// Whole seconds from 1 to [`MAX_IO_TIMEOUT_SECS`]. The message names the variable: clap
/// does not say that a bad value came from the environment.
pub fn parse_io_timeout(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=MAX_IO_TIMEOUT_SECS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{IO_TIMEOUT_ENV} is {s:?}: it must be whole seconds from 1 to {MAX_IO_TIMEOUT_SECS}"
        )),
    }
}

/// The I/O timeout from [`IO_TIMEOUT_ENV`] for commands without the flag (export): None
/// when unset or empty, an error naming the variable and its value when not valid.
pub fn io_timeout_from_env() -> Result<Option<std::time::Duration>, String> {
    match std::env::var_os(IO_TIMEOUT_ENV) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => {
            let text = v.to_string_lossy();
            parse_io_timeout(&text).map(|n| Some(std::time::Duration::from_secs(n)))
        }
    }
}

/// `8M`, `8MiB`, `64K`, `1G` (binary units) or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 8M or 4194304"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn io_timeout_is_whole_seconds_from_1_to_an_hour() {
        assert_eq!(parse_io_timeout("1"), Ok(1));
        assert_eq!(parse_io_timeout("3600"), Ok(3600));
        for bad in ["abc", "0", "-5", "3601", "99999999999", "1.5", ""] {
            let e = parse_io_timeout(bad).unwrap_err();
            assert!(
                e.contains(IO_TIMEOUT_ENV) && e.contains(&format!("{bad:?}")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn list_takes_selection_and_azure_flags() {
        let cli = Cli::try_parse_from([
            "azure2kvm",
            "list",
            "--output",
            "json",
            "--subscription",
            "s",
            "--name",
            "a",
            "b*",
            "--tag",
            "env=prod",
            "--tag",
            "owner",
            "--auth",
            "managed-identity",
            "--cloud",
            "custom",
            "--arm-endpoint",
            "https://127.0.0.1:1",
            "--ca-bundle",
            "/tmp/ca.pem",
        ])
        .unwrap();
        let Command::List(args) = cli.command else {
            panic!("not list")
        };
        assert_eq!(args.output, ListOutput::Json);
        assert_eq!(args.selection.name, vec!["a", "b*"]);
        assert_eq!(args.selection.tag, vec!["env=prod", "owner"]);
        assert_eq!(args.azure.auth, AuthMethod::ManagedIdentity);
        assert_eq!(args.azure.cloud, CloudName::Custom);
    }

    #[test]
    fn list_rejects_unknown_auth_and_output() {
        assert!(Cli::try_parse_from(["azure2kvm", "list", "--auth", "password"]).is_err());
        assert!(Cli::try_parse_from(["azure2kvm", "list", "--output", "yaml"]).is_err());
        assert!(Cli::try_parse_from(["azure2kvm", "list", "--cloud", "mars"]).is_err());
    }

    #[test]
    fn snapshot_type_defaults_to_incremental_and_takes_only_known_kinds() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["azure2kvm", "export", "--dry-run"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).map(|c| match c.command {
                Command::Export(a) => (a.snapshot_type, a.private_network),
                _ => panic!("not export"),
            })
        };
        assert_eq!(parse(&[]).unwrap(), (SnapshotType::Incremental, false));
        assert_eq!(
            parse(&["--snapshot-type", "full", "--private-network"]).unwrap(),
            (SnapshotType::Full, true)
        );
        assert!(parse(&["--snapshot-type", "differential"]).is_err());
    }

    #[test]
    fn quiet_and_verbose_conflict() {
        assert!(Cli::try_parse_from(["azure2kvm", "-q", "-v", "inspect", "x"]).is_err());
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("8X").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn download_concurrency_is_bounded() {
        let ok = Cli::try_parse_from([
            "azure2kvm",
            "download",
            "https://a/c/b",
            "o.raw",
            "--concurrency",
            "4",
        ]);
        assert!(ok.is_ok());
        for bad in ["0", "65"] {
            assert!(
                Cli::try_parse_from([
                    "azure2kvm",
                    "download",
                    "https://a/c/b",
                    "o.raw",
                    "--concurrency",
                    bad
                ])
                .is_err()
            );
        }
    }
}
