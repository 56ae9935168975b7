//! The export, from typed settings to a typed outcome: find the VMs (discovery, or a plan
//! file whose power states are refreshed), shard and plan them, then — unless it is a dry
//! run — run the plan with a ledger on disk and write the manifests. One entry point,
//! [`export`], so a selection can be followed from the settings to the images in one
//! module; `commands::export` only turns flags into [`ExportSettings`] and the
//! [`ExportOutcome`] into output and an exit code.
//!
//! Nothing is created in Azure before the plan is complete and every refusal (a bad plan
//! entry, an image that exists) has been made; from the ledger's creation on, the run
//! report is written whatever happens, failed and interrupted runs included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use futures::StreamExt;
use serde::Serialize;

use super::budget::RunLimits;
use super::disk::{DiskContext, EventFn, ExportEvent};
use super::disk_kind::SnapshotType;
use super::ledger::WarmReport;
use super::ledger::{
    DiskOutcome, DiskStatus, Ledger, LedgerError, RunReport, RunStatus, write_atomic,
};
use super::manifest;
use super::measure;
use super::naming::{new_run_id, now_rfc3339};
use super::plan::{self, Consistency, DiskKey, DiskSet, PlanError, PlanOptions, PlannedVm};
use super::run::{self, DiskResult};
use super::shard::{self, Shard};
use super::warm::{self, WarmDryRun, WarmError, WarmMode, WarmRun};
use crate::azure::arm::client::ResourceRef;
use crate::azure::arm::{ArmClient, ArmError, ResourceId, ResourceIdError, ResourceType};
use crate::azure::blob::ServiceVersion;
use crate::azure::inventory::{self, DiscoveryProgress, Selection, SelectionInput, VmInfo};
use crate::azure::session::{AzureSession, SignInError};
use crate::image::sink::ImageFormat;
use crate::interrupt::Interrupt;
use crate::transfer::engine::{DEFAULT_CONCURRENCY, DEFAULT_QUEUE_DEPTH};
use crate::units::human_bytes;

/// Where the VMs come from.
#[derive(Debug)]
pub enum VmSource {
    /// Discovered through ARM (GETs only).
    Discover(Selection),
    /// A plan file (`list --output json`, or `export --dry-run --plan`): its VMs are the
    /// selection; their power states are read again, since a plan may be hours old.
    PlanFile(PathBuf),
}

/// What the run does with its plan.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Plan only; the unsharded VM list goes to `write_plan`. A warm dry run reads the
    /// migration's state in `output_dir` when given. Nothing is created in Azure unless
    /// `measure` (only with `write_plan`): then each disk is sized by its data first
    /// (see `measure`), through grants and snapshots that are removed again.
    DryRun {
        write_plan: Option<PathBuf>,
        output_dir: Option<PathBuf>,
        measure: bool,
    },
    /// Export into `output_dir`.
    Export { output_dir: PathBuf },
}

/// Everything an export needs, validated by the caller.
#[derive(Debug)]
pub struct ExportSettings {
    pub vms: VmSource,
    pub mode: Mode,
    pub disks: DiskSet,
    /// None: snapshot for allocated VMs, directly from the disk for deallocated ones.
    pub consistency: Option<Consistency>,
    pub format: ImageFormat,
    pub shard: Option<Shard>,
    /// Lifetime of each read grant, in seconds.
    pub sas_duration: u32,
    /// `x-ms-version` for managed-disk export hosts (`--md-service-version`).
    pub md_service_version: ServiceVersion,
    /// Connections and memory across all disks of the run.
    pub limits: RunLimits,
    pub io_timeout: Duration,
    /// Export confidential VM disks encrypted with the VM's key (`--allow-encrypted`).
    pub allow_encrypted: bool,
    /// `--snapshot-type` (Premium SSD v2 and Ultra disks are incremental whatever it says).
    pub snapshot_type: SnapshotType,
    /// `--private-network`: AllowPrivate disks are reachable from this host.
    pub private_network: bool,
    /// Background copies the run lets run at once (see `disk_kind::background_copy_limit`).
    pub background_copies: usize,
    /// `--warm [--cutover]`: one pass of a warm migration.
    pub warm: Option<WarmMode>,
    /// The selection as given, for the run report.
    pub record: RunSelection,
}

/// The selection as the user gave it, recorded in `run-<id>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSelection {
    #[serde(flatten)]
    pub flags: SelectionInput,
    pub plan: Option<PathBuf>,
    pub shard: Option<String>,
    pub disks: DiskSet,
    pub consistency: Option<Consistency>,
    pub format: ImageFormat,
    pub snapshot_type: SnapshotType,
    pub private_network: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warm: Option<WarmMode>,
}

/// How an export ended (when it got as far as a plan).
#[derive(Debug)]
pub enum ExportOutcome {
    /// A dry run: the plan, nothing created; for a warm pass, what each disk's pass is.
    Planned {
        vms: Vec<PlannedVm>,
        warm: Option<WarmDryRun>,
    },
    /// A run: what became of every disk and of every resource it created.
    Ran(RunSummary),
}

/// The end of a run, for the caller to print and to turn into an exit code.
#[derive(Debug)]
pub struct RunSummary {
    pub run_id: String,
    pub status: RunStatus,
    /// `DIR/run-<id>.json`.
    pub report: PathBuf,
    pub output_dir: PathBuf,
    /// Every planned disk's outcome, as the report has it.
    pub disks: Vec<DiskOutcome>,
    /// Resources that may still exist in Azure (for `cleanup --run-id`).
    pub resources_left: Vec<ResourceId>,
    /// Disks exported, of `total`.
    pub done: usize,
    pub total: usize,
    /// Why disks failed, and manifests that could not be written.
    pub failures: Vec<String>,
    /// A warm pass: its passes and, for a cutover, each VM's downtime.
    pub warm: Option<WarmReport>,
}

/// Why an export stopped before its run report existed, or could not start one. The
/// larger sources are boxed: this travels through every `?` of the flow.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    SignIn(#[from] SignInError),
    #[error(transparent)]
    Discover(Box<ArmError>),
    #[error("plan {path}: {source}")]
    PlanRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plan {path} is not a list of VMs as `list --output json` prints: {source}")]
    PlanSyntax {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("plan {path}: entry [{index}]: {source}")]
    PlanEntry {
        path: PathBuf,
        index: usize,
        source: Box<PlanError>,
    },
    #[error("plan: VM {vm}: id: {source}")]
    PlanVmId { vm: String, source: ResourceIdError },
    #[error("plan: VM {vm}: {source}")]
    Refresh { vm: String, source: Box<ArmError> },
    #[error("interrupted while finding the VMs; nothing was created in Azure")]
    Interrupted,
    #[error("writing plan {path}: {source}")]
    WritePlan {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    RunId(String),
    #[error(transparent)]
    Plan(Box<PlanError>),
    #[error(
        "images exist already and are never overwritten: {} (use another --output-dir)",
        .0.join(", ")
    )]
    ImagesExist(Vec<String>),
    #[error("cannot create output directory {path}: {source}")]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Warm(#[from] WarmError),
    #[error(
        "interrupted while measuring the disks; no plan written{}",
        if *.left == 0 {
            "; nothing is left in Azure".to_string()
        } else {
            format!("; {} resources left (run `azure2kvm cleanup --run-id {}`)", .left, .run_id)
        }
    )]
    MeasureInterrupted { run_id: String, left: usize },
    #[error(
        "the plan is written, but measuring left {left} Azure resources; run `azure2kvm cleanup --run-id {run_id}`"
    )]
    MeasureLeft { run_id: String, left: usize },
}

impl ExportError {
    /// True when the settings, the plan file or the credential are at fault (exit 2),
    /// found before anything was created in Azure.
    pub fn is_usage(&self) -> bool {
        match self {
            Self::SignIn(_)
            | Self::PlanRead { .. }
            | Self::PlanSyntax { .. }
            | Self::PlanEntry { .. }
            | Self::PlanVmId { .. }
            | Self::Plan(_)
            | Self::ImagesExist(_) => true,
            Self::Warm(e) => e.is_usage(),
            Self::Discover(e) | Self::Refresh { source: e, .. } => e.is_auth(),
            Self::Interrupted
            | Self::WritePlan { .. }
            | Self::RunId(_)
            | Self::OutputDir { .. }
            | Self::Ledger(_)
            | Self::MeasureInterrupted { .. }
            | Self::MeasureLeft { .. } => false,
        }
    }
}

/// Runs an export (see the module note). `events` receives the run's progress.
pub async fn export(
    session: &AzureSession,
    settings: &ExportSettings,
    events: EventFn,
    interrupt: &Interrupt,
) -> Result<ExportOutcome, ExportError> {
    let mut vms = interrupt
        .unless_cancelled(find_vms(session, &settings.vms))
        .await
        .ok_or(ExportError::Interrupted)??;
    if let Mode::DryRun {
        write_plan: Some(path),
        measure,
        ..
    } = &settings.mode
    {
        let measured = match measure {
            true => {
                Some(measure_plan(session, settings, &mut vms, path, &events, interrupt).await?)
            }
            false => None,
        };
        write_plan(path, &vms)?;
        if let Some(m) = measured.filter(|m| !m.resources_left.is_empty()) {
            return Err(ExportError::MeasureLeft {
                run_id: m.run_id,
                left: m.resources_left.len(),
            });
        }
    }
    let (run_id, mut planned) = plan_shard(vms, settings)?;
    let warm = open_warm(settings, &mut planned, &run_id)?;
    match &settings.mode {
        Mode::DryRun { .. } => Ok(ExportOutcome::Planned {
            warm: warm.as_deref().map(|w| w.dry_run(&planned)),
            vms: planned,
        }),
        Mode::Export { output_dir } => {
            let ledger = start_run(output_dir, &run_id, &planned, settings, warm.as_deref())?;
            events(ExportEvent::RunStarted {
                disks: planned.iter().map(|v| v.disks.len()).sum(),
            });
            let ctx = disk_context(session, settings, output_dir, ledger, events, interrupt);
            let results = run::run(&planned, &ctx, &run_id, warm.clone()).await;
            (ctx.events)(ExportEvent::DownloadsEnded);
            let mut summary = finish(
                output_dir,
                &planned,
                &run_id,
                settings,
                &ctx.ledger,
                &results,
                interrupt,
            );
            if let Some(w) = &warm {
                summary.warm = Some(w.finish(&planned, &results, &ctx.ledger));
            }
            Ok(ExportOutcome::Ran(summary))
        }
    }
}

/// `--measure`: sizes the disks of `vms` by their data (see `measure`), its run report
/// beside the plan file.
async fn measure_plan(
    session: &AzureSession,
    settings: &ExportSettings,
    vms: &mut [VmInfo],
    plan: &Path,
    events: &EventFn,
    interrupt: &Interrupt,
) -> Result<measure::Measured, ExportError> {
    let dir = match plan.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let context = |ledger| disk_context(session, settings, &dir, ledger, events.clone(), interrupt);
    measure::measure(&context, settings, vms, &dir).await
}

/// A warm pass: opens the migration's state (in the output directory, or in the dry run's
/// when one is given) and checks the pass can start, then reads every disk from an
/// incremental snapshot. Nothing is created in Azure yet.
fn open_warm(
    settings: &ExportSettings,
    planned: &mut [PlannedVm],
    run_id: &str,
) -> Result<Option<Arc<WarmRun>>, ExportError> {
    let Some(mode) = settings.warm else {
        return Ok(None);
    };
    let dir = match &settings.mode {
        Mode::Export { output_dir } => Some(output_dir),
        Mode::DryRun { output_dir, .. } => output_dir.as_ref(),
    };
    let warm = match dir {
        Some(dir) => Some(Arc::new(WarmRun::open(dir, planned, mode, run_id)?)),
        // A dry run without a directory: every disk's pass would be its first.
        None => None,
    };
    let pending = warm
        .as_ref()
        .map(|w| w.pending(planned))
        .unwrap_or_default();
    warm::adjust_plan(planned, run_id, &pending);
    Ok(warm.or_else(|| Some(Arc::new(WarmRun::detached(mode, run_id)))))
}

/// The VMs: from the plan file, or discovered. Nothing exists in Azure yet, so an
/// interrupt here simply stops.
async fn find_vms(session: &AzureSession, source: &VmSource) -> Result<Vec<VmInfo>, ExportError> {
    session.check_credential().await?;
    match source {
        VmSource::Discover(sel) => {
            let (mut vms, source) =
                inventory::discover_with_source(&session.arm, sel, &DiscoveryProgress::default())
                    .await
                    .map_err(|e| ExportError::Discover(Box::new(e)))?;
            // Resource Graph lags up to a minute: act on what Compute says now.
            if source == inventory::DiscoverySource::ResourceGraph {
                refresh_power_states(&session.arm, &mut vms).await?;
            }
            Ok(vms)
        }
        VmSource::PlanFile(path) => {
            let mut vms = read_plan(path)?;
            refresh_power_states(&session.arm, &mut vms).await?;
            Ok(vms)
        }
    }
}

/// Reads a plan file: untrusted input, so every VM record is checked (names that become
/// paths, ids) before anything is built from it; the error names the entry and field.
pub fn read_plan(path: &Path) -> Result<Vec<VmInfo>, ExportError> {
    let bytes = std::fs::read(path).map_err(|source| ExportError::PlanRead {
        path: path.to_path_buf(),
        source,
    })?;
    let mut vms: Vec<VmInfo> =
        serde_json::from_slice(&bytes).map_err(|source| ExportError::PlanSyntax {
            path: path.to_path_buf(),
            source,
        })?;
    // Plans written before runs spanned subscriptions: the id says which.
    for vm in vms.iter_mut().filter(|v| v.subscription_id.is_empty()) {
        vm.subscription_id = inventory::subscription_of(&vm.id)
            .unwrap_or_default()
            .to_string();
    }
    for (index, vm) in vms.iter().enumerate() {
        plan::check_vm_record(vm).map_err(|source| ExportError::PlanEntry {
            path: path.to_path_buf(),
            index,
            source: Box::new(source),
        })?;
    }
    Ok(vms)
}

/// A plan may be hours old: a VM deallocated then may run now, and its disk can no longer
/// be read directly. One GET per VM (instance view) makes the plan's choices current.
async fn refresh_power_states(arm: &ArmClient, vms: &mut [VmInfo]) -> Result<(), ExportError> {
    let states: Vec<Result<_, ExportError>> = futures::stream::iter(vms.iter())
        .map(|vm| async move {
            let id: ResourceId = vm.id.parse().map_err(|source| ExportError::PlanVmId {
                vm: vm.name.clone(),
                source,
            })?;
            // A Uniform scale-set instance is read under its scale set.
            let current = if id.is(&ResourceType::ScaleSetVm) {
                arm.get_scale_set_vm(&id).await
            } else {
                arm.get_vm(&ResourceRef::from(&id), true).await
            }
            .map_err(|source| ExportError::Refresh {
                vm: vm.name.clone(),
                source: Box::new(source),
            })?;
            Ok(current.power_state())
        })
        .buffered(inventory::CONCURRENCY)
        .collect()
        .await;
    for (vm, state) in vms.iter_mut().zip(states) {
        let state = state?;
        if state != vm.power_state {
            tracing::info!(
                "{}: power state is {state} now ({} in the plan)",
                vm.name,
                vm.power_state
            );
            vm.power_state = state;
        }
    }
    Ok(())
}

/// The whole selection, unsharded: every shard of a fleet reads the same plan.
fn write_plan(path: &Path, vms: &[VmInfo]) -> Result<(), ExportError> {
    let mut bytes = serde_json::to_vec_pretty(vms).expect("VMs serialise");
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| ExportError::WritePlan {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::info!("plan with {} VMs written to {}", vms.len(), path.display());
    Ok(())
}

/// Keeps this shard's VMs and plans them under a new run id. Folder names are decided
/// over the whole selection, before sharding, so every shard names a VM the same way.
fn plan_shard(
    vms: Vec<VmInfo>,
    settings: &ExportSettings,
) -> Result<(String, Vec<PlannedVm>), ExportError> {
    let folders = plan::Folders::for_fleet(&vms);
    let vms = match settings.shard {
        None => vms,
        Some(s) => {
            let weights = shard::vm_weights(&vms, |role| settings.disks.takes(role));
            let items: Vec<(u64, &str)> = weights
                .bytes
                .iter()
                .zip(&vms)
                .map(|(&w, v)| (w, v.id.as_str()))
                .collect();
            let keep = shard::select(&items, s);
            let mine: u64 = keep.iter().map(|&i| weights.bytes[i]).sum();
            tracing::info!(
                "shard {s}: {} of {} VMs, {} of {} to move; balanced by written bytes for {} of {} disks (provisioned size for the others{})",
                keep.len(),
                vms.len(),
                human_bytes(mine),
                human_bytes(weights.bytes.iter().sum()),
                weights.measured,
                weights.disks,
                if weights.measured == 0 {
                    "; measure them with `export --dry-run --measure --plan FILE`"
                } else {
                    ""
                }
            );
            keep.into_iter().map(|i| vms[i].clone()).collect()
        }
    };
    let run_id = new_run_id(settings.shard.map(|s| s.index)).map_err(ExportError::RunId)?;
    let planned = plan::plan(
        &vms,
        &PlanOptions {
            run_id: run_id.clone(),
            folders,
            disks: settings.disks,
            consistency: settings.consistency,
            format: settings.format,
            allow_encrypted: settings.allow_encrypted,
            snapshot_type: settings.snapshot_type,
            private_network: settings.private_network,
        },
    )
    .map_err(|e| ExportError::Plan(Box::new(e)))?;
    log_kinds(&planned);
    if planned.is_empty() {
        tracing::warn!(
            "no VM matched the selection{}: nothing to export",
            match settings.shard {
                Some(s) => format!(" in shard {s}"),
                None => String::new(),
            }
        );
    }
    Ok((run_id, planned))
}

/// What the user must know before the run: encrypted content and where its key is,
/// shared disks read once (disks refused by kind are logged when the run starts).
fn log_kinds(planned: &[PlannedVm]) {
    for vm in planned {
        for d in &vm.disks {
            for note in &d.notes {
                tracing::warn!("{}: disk {}: {note}", vm.name, d.name);
            }
            if let Some(with) = &d.exported_with {
                tracing::info!(
                    "{}: shared disk {} is exported once, with {with}: {}",
                    vm.name,
                    d.name,
                    d.image.display()
                );
            }
        }
    }
}

/// Refuses to overwrite an image (before anything is created in Azure), then starts the
/// ledger with every planned disk pending.
fn start_run(
    output_dir: &Path,
    run_id: &str,
    planned: &[PlannedVm],
    settings: &ExportSettings,
    warm: Option<&WarmRun>,
) -> Result<Arc<Ledger>, ExportError> {
    // A warm pass updates the images of its earlier passes, and only those.
    let existing: Vec<String> = match warm {
        Some(w) => w.images_in_the_way(planned),
        None => planned
            .iter()
            .flat_map(|vm| vm.disks.iter())
            .map(|d| output_dir.join(&d.image))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect(),
    };
    if !existing.is_empty() {
        return Err(ExportError::ImagesExist(existing));
    }
    std::fs::create_dir_all(output_dir).map_err(|source| ExportError::OutputDir {
        path: output_dir.to_path_buf(),
        source,
    })?;
    let selection = serde_json::to_value(&settings.record).expect("the selection serialises");
    let mut report = RunReport::new(run_id, selection);
    report.disks = run::pending_outcomes(planned);
    let ledger = Arc::new(Ledger::create(output_dir, report)?);
    tracing::info!(
        "run {run_id}: {} VMs, {} disks; report {} (if this process is killed, run `azure2kvm cleanup --run-id {run_id} --output-dir {}`)",
        planned.len(),
        planned.iter().map(|v| v.disks.len()).sum::<usize>(),
        ledger.path().display(),
        output_dir.display()
    );
    Ok(ledger)
}

fn disk_context(
    session: &AzureSession,
    settings: &ExportSettings,
    output_dir: &Path,
    ledger: Arc<Ledger>,
    events: EventFn,
    interrupt: &Interrupt,
) -> DiskContext {
    DiskContext {
        arm: session.arm.clone(),
        credential: session.credential.clone() as Arc<dyn TokenCredential>,
        client_options: session.client_options(),
        cloud: session.cloud.clone(),
        ledger,
        output_dir: output_dir.to_path_buf(),
        format: settings.format,
        sas_duration: settings.sas_duration,
        private_network: settings.private_network,
        background_copies: settings.background_copies,
        md_service_version: settings.md_service_version,
        limits: settings.limits,
        // `run::run` shares the limits out once it knows the disks.
        connections: settings.limits.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
        queue_depth: DEFAULT_QUEUE_DEPTH,
        chunk_size: None,
        data_slots: Arc::new(tokio::sync::Semaphore::new(1)),
        io_timeout: settings.io_timeout,
        interrupt: interrupt.clone(),
        events,
    }
}

/// Writes the manifests, sets the report's final status and sums the run up.
fn finish(
    output_dir: &Path,
    planned: &[PlannedVm],
    run_id: &str,
    settings: &ExportSettings,
    ledger: &Ledger,
    results: &BTreeMap<DiskKey, DiskResult>,
    interrupt: &Interrupt,
) -> RunSummary {
    let manifest_errors = write_manifests(output_dir, planned, run_id, settings.format, results);
    let total = results.len();
    let done = results
        .values()
        .filter(|r| r.status == DiskStatus::Done)
        .count();
    let interrupted = interrupt.is_set()
        || results
            .values()
            .any(|r| r.status == DiskStatus::Interrupted);
    let count = |s: DiskStatus| results.values().filter(|r| r.status == s).count();
    let refused = count(DiskStatus::Refused) + count(DiskStatus::Unsupported);
    let status = match run_status(interrupted, done, total, manifest_errors.is_empty()) {
        // A disk refused by kind (or unsupported, as an ephemeral OS disk) is one this run
        // could not do, not a failure of the run: partly done (exit 3), also when it was
        // the only disk.
        RunStatus::Failed if refused > 0 && count(DiskStatus::Failed) == 0 => RunStatus::Partial,
        s => s,
    };
    let _ = ledger.update(|r| {
        r.status = status;
        r.finished_at = Some(now_rfc3339());
    });
    let report = ledger.report();
    let resources_left: Vec<ResourceId> = report
        .resources
        .iter()
        .filter(|r| r.outstanding())
        .map(|r| r.id.clone())
        .collect();
    log_end(run_id, output_dir, ledger, &resources_left, done, total);
    let failures = results
        .values()
        .filter(|r| {
            matches!(
                r.status,
                DiskStatus::Failed | DiskStatus::Refused | DiskStatus::Unsupported
            )
        })
        .filter_map(|r| r.error.clone())
        .chain(manifest_errors)
        .collect();
    RunSummary {
        run_id: run_id.to_string(),
        status,
        report: ledger.path().to_path_buf(),
        output_dir: output_dir.to_path_buf(),
        disks: report.disks,
        resources_left,
        done,
        total,
        failures,
        warm: None,
    }
}

/// `manifest.json` (and `domain.xml`) per VM; returns what could not be written.
fn write_manifests(
    output_dir: &Path,
    planned: &[PlannedVm],
    run_id: &str,
    format: ImageFormat,
    results: &BTreeMap<DiskKey, DiskResult>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for vm in planned {
        let lookup = |disk: &plan::PlannedDisk| results.get(&disk.key).cloned();
        if let Err(e) = manifest::write_vm_outputs(output_dir, vm, run_id, format, &lookup) {
            tracing::error!("{e}");
            errors.push(e.to_string());
        }
    }
    errors
}

/// The run's status from its disks: an interrupt wins, then all, some or none done. A
/// disk refused by kind counts among `total` and is never done, so a run with one is at
/// most partly done (`finish` makes a run with only refused disks partly done too).
pub fn run_status(interrupted: bool, done: usize, total: usize, manifests_ok: bool) -> RunStatus {
    if interrupted {
        RunStatus::Interrupted
    } else if done == total && manifests_ok {
        RunStatus::Done
    } else if done > 0 {
        RunStatus::Partial
    } else {
        RunStatus::Failed
    }
}

fn log_end(
    run_id: &str,
    output_dir: &Path,
    ledger: &Ledger,
    left: &[ResourceId],
    done: usize,
    total: usize,
) {
    if !left.is_empty() {
        let names: Vec<String> = left.iter().map(ToString::to_string).collect();
        tracing::error!(
            "{} Azure resources could not be removed ({}); run `azure2kvm cleanup --run-id {run_id} --output-dir {}`",
            left.len(),
            names.join(", "),
            output_dir.display()
        );
    }
    tracing::info!(
        "run {run_id}: {done} of {total} disks exported; report {}",
        ledger.path().display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupt_wins_then_all_some_or_none_done() {
        assert_eq!(run_status(true, 2, 2, true), RunStatus::Interrupted);
        assert_eq!(run_status(false, 2, 2, true), RunStatus::Done);
        // Every disk done but a manifest missing is not done.
        assert_eq!(run_status(false, 2, 2, false), RunStatus::Partial);
        assert_eq!(run_status(false, 1, 2, true), RunStatus::Partial);
        assert_eq!(run_status(false, 0, 2, true), RunStatus::Failed);
        // No disk planned at all is a run that did all it had to.
        assert_eq!(run_status(false, 0, 0, true), RunStatus::Done);
    }

    #[test]
    fn the_run_report_records_the_selection_as_given() {
        let record = RunSelection {
            flags: SelectionInput {
                subscriptions: vec!["s".into(), "t".into()],
                names: vec!["web-*".into()],
                ..Default::default()
            },
            plan: None,
            shard: Some("0/2".into()),
            disks: DiskSet::All,
            consistency: Some(Consistency::Snapshot),
            format: ImageFormat::Qcow2,
            snapshot_type: SnapshotType::Incremental,
            private_network: false,
            warm: None,
        };
        let v = serde_json::to_value(&record).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "subscriptions": ["s", "t"], "all_subscriptions": false,
                "resource_groups": [], "names": ["web-*"], "tags": [],
                "power_states": [], "locations": [], "plan": null, "shard": "0/2",
                "disks": "all", "consistency": "snapshot", "format": "qcow2",
                "snapshot_type": "incremental", "private_network": false,
            })
        );
    }

    #[test]
    fn a_bad_plan_file_is_a_usage_error_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.json");
        std::fs::write(&path, b"{\"not\": \"a list\"}").unwrap();
        let e = read_plan(&path).unwrap_err();
        assert!(
            e.is_usage() && e.to_string().contains("is not a list of VMs"),
            "{e}"
        );
        let e = read_plan(&dir.path().join("none.json")).unwrap_err();
        assert!(
            matches!(e, ExportError::PlanRead { .. }) && e.is_usage(),
            "{e}"
        );
        assert!(!ExportError::Interrupted.is_usage());
    }
}
