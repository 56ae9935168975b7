//! `export --dry-run --measure`: sizes each selected disk by its data before the plan is
//! written, so that `--shard` balances a fleet by the bytes each shard will move (see
//! `shard`), not by provisioned sizes.
//!
//! Unlike a plain dry run, which only GETs, measuring needs read access: a short-lived
//! grant per managed disk — on the disk itself when its VM is deallocated, on an
//! incremental snapshot of it otherwise (Azure grants no access to a disk an allocated VM
//! holds) — through the export's own ledger, grant, revoke and snapshot code, so the
//! export's promises hold: every grant and snapshot is in `run-<id>.json` (beside the plan
//! file) before it is asked for, is revoked or deleted as soon as its disk is measured,
//! and the final sweep removes whatever is left, after a failure or Ctrl-C too. An
//! unmanaged disk is measured on its blob with the session's identity: nothing is
//! created. Disks refused by kind, and a shared disk after its first entry, are skipped.
//!
//! Bounds: at most the run budget's live grants ([`super::budget::Budget::live_grants`])
//! disks are measured at once, each holding at most one grant and one snapshot, and all
//! of them together at most `--concurrency` Get Page Ranges calls in flight.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::StreamExt;

use super::budget;
use super::cleanup::{only_this_runs_snapshots, sweep};
use super::disk::{self, DiskContext, DiskError};
use super::disk_kind::{MAX_BACKGROUND_COPIES, SnapshotType};
use super::flow::{ExportError, ExportSettings};
use super::ledger::{DiskStatus, Ledger, RunReport, RunStatus};
use super::naming::{new_run_id, now_rfc3339};
use super::plan::{self, Folders, PlanOptions, PlannedDisk, PlannedVm, Source};
use super::run;
use crate::azure::arm::ResourceId;
use crate::azure::inventory::VmInfo;
use crate::interrupt::Interrupt;
use crate::transfer::fetch::FetchError;
use crate::transfer::measure::written_bytes;
use crate::units::human_bytes;

/// What a measurement left behind.
#[derive(Debug)]
pub struct Measured {
    pub run_id: String,
    /// `run-<id>.json`; None when no disk needed measuring (nothing was created).
    pub report: Option<std::path::PathBuf>,
    /// Disks measured, of `total` to measure.
    pub measured: usize,
    pub total: usize,
    /// Grants and snapshots the sweep could not remove (for `cleanup --run-id`).
    pub resources_left: Vec<ResourceId>,
}

/// Measures the disks of `vms` the export would take and records each one's written
/// bytes in it (see the module note); the ledger goes into `dir`, and `context` makes the
/// disks' context around it. A disk that cannot be
/// measured keeps no written bytes (`--shard` then counts its size) and is logged.
/// `Err` only when the plan is refused, the ledger cannot be written, or on Ctrl-C.
pub async fn measure(
    context: &dyn Fn(Arc<Ledger>) -> DiskContext,
    settings: &ExportSettings,
    vms: &mut [VmInfo],
    dir: &Path,
) -> Result<Measured, ExportError> {
    let run_id = new_run_id(settings.shard.map(|s| s.index)).map_err(ExportError::RunId)?;
    let planned = plan_measurement(vms, settings, &run_id)?;
    let todo: Vec<(&PlannedVm, &PlannedDisk)> = planned
        .iter()
        .flat_map(|vm| vm.disks.iter().map(move |d| (vm, d)))
        .filter(|(_, d)| d.refused.is_none() && d.owner.is_none())
        .filter(|(_, d)| d.source != Source::Unavailable)
        .collect();
    let mut out = Measured {
        run_id: run_id.clone(),
        report: None,
        measured: 0,
        total: todo.len(),
        resources_left: Vec::new(),
    };
    if todo.is_empty() {
        return Ok(out);
    }
    let mut selection = serde_json::to_value(&settings.record).expect("the selection serialises");
    selection["measure"] = serde_json::Value::Bool(true);
    let ledger = Arc::new(Ledger::create(dir, RunReport::new(&run_id, selection))?);
    out.report = Some(ledger.path().to_path_buf());
    tracing::warn!(
        "measuring {} disks: short-lived read grants (and incremental snapshots of running VMs' disks) recorded in {}; if this process is killed, run `azure2kvm cleanup --run-id {run_id} --output-dir {}`",
        todo.len(),
        ledger.path().display(),
        dir.display()
    );
    let ctx = context(ledger);
    let results = measure_all(&ctx, todo, &run_id).await;
    sweep(&ctx.arm, &ctx.ledger, &only_this_runs_snapshots(&run_id)).await;
    out.resources_left = finish_report(&ctx.ledger, &ctx.interrupt, &results);
    out.measured = record(vms, &results);
    log_outcome(vms, &out, settings);
    if ctx.interrupt.is_set() {
        return Err(ExportError::MeasureInterrupted {
            run_id,
            left: out.resources_left.len(),
        });
    }
    Ok(out)
}

/// The disks as the export would take them, but read without changing any VM: a
/// deallocated VM's disks directly, every other one through an incremental snapshot
/// (cheap, billed by its data, and Azure's only kind for Premium SSD v2 and Ultra).
fn plan_measurement(
    vms: &[VmInfo],
    settings: &ExportSettings,
    run_id: &str,
) -> Result<Vec<PlannedVm>, ExportError> {
    plan::plan(
        vms,
        &PlanOptions {
            run_id: run_id.to_string(),
            folders: Folders::for_fleet(vms),
            disks: settings.disks,
            consistency: None,
            format: settings.format,
            allow_encrypted: settings.allow_encrypted,
            snapshot_type: SnapshotType::Incremental,
            private_network: settings.private_network,
        },
    )
    .map_err(|e| ExportError::Plan(Box::new(e)))
}

/// The written bytes of a disk, by the id of what was read (a managed disk's id or an
/// unmanaged disk's VHD URI, lower case), or why not.
type Results = Vec<(String, Result<u64, DiskError>)>;

/// Measures `todo` within the run's live-grant bound, each disk in a task of its own (a
/// panic in one stops neither the others nor the sweep).
async fn measure_all(
    ctx: &DiskContext,
    todo: Vec<(&PlannedVm, &PlannedDisk)>,
    run_id: &str,
) -> Results {
    let budget = budget::plan(ctx.limits.concurrency, todo.len(), ctx.limits.memory);
    let per_disk = (budget.total_connections() / budget.live_grants).max(1);
    tracing::info!(
        "{} disks: {} measured at a time, {per_disk} Get Page Ranges calls each",
        todo.len(),
        budget.live_grants
    );
    let ctx = DiskContext {
        connections: per_disk,
        ..ctx.clone()
    };
    let copies = Arc::new(tokio::sync::Semaphore::new(
        ctx.background_copies.clamp(1, MAX_BACKGROUND_COPIES),
    ));
    futures::stream::iter(todo)
        .map(|(vm, d)| {
            let (ctx, vm, d, copies) = (ctx.clone(), vm.clone(), d.clone(), copies.clone());
            let run_id = run_id.to_string();
            async move {
                let key = source_key(&d.source);
                let (name, disk_name) = (vm.name.clone(), d.name.clone());
                let task =
                    tokio::spawn(async move { one_disk(&ctx, &vm, &d, &run_id, &copies).await });
                let result = task.await.unwrap_or_else(|e| {
                    Err(DiskError::Failed {
                        vm: name,
                        disk: disk_name,
                        message: format!("task failed: {e}"),
                    })
                });
                (key, result)
            }
        })
        .buffer_unordered(budget.live_grants)
        .collect()
        .await
}

/// What a measured disk is known by in the plan: its managed disk's id, or its VHD URI.
fn source_key(source: &Source) -> String {
    match source {
        Source::Snapshot { disk_id, .. } | Source::Disk { disk_id } => {
            disk_id.to_string().to_ascii_lowercase()
        }
        Source::Blob { uri } => uri.to_ascii_lowercase(),
        Source::Unavailable => String::new(),
    }
}

/// One disk: snapshot if its VM may be running, grant, Get Page Ranges, revoke, delete the
/// snapshot.
async fn one_disk(
    ctx: &DiskContext,
    vm: &PlannedVm,
    d: &PlannedDisk,
    run_id: &str,
    copies: &tokio::sync::Semaphore,
) -> Result<u64, DiskError> {
    match &d.source {
        Source::Snapshot { snapshot, .. } => {
            if let Some((_, r)) = run::snapshot_disk(ctx, vm, d, run_id, copies).await {
                let message = r.error.unwrap_or_default();
                return Err(match r.status {
                    DiskStatus::Interrupted => interrupted(vm, d),
                    _ => DiskError::Failed {
                        vm: vm.name.clone(),
                        disk: d.name.clone(),
                        message,
                    },
                });
            }
            let bytes = granted(ctx, vm, d, snapshot).await;
            run::delete_snapshot(ctx, snapshot).await;
            bytes
        }
        Source::Disk { disk_id } => granted(ctx, vm, d, disk_id).await,
        Source::Blob { uri } => {
            let url = disk::unmanaged_blob_url(ctx, uri).map_err(|m| failed(vm, d, m))?;
            let mut read = ctx.read_settings();
            read.credential = Some(ctx.credential.clone());
            written_bytes(&url, &read, ctx.interrupt.clone())
                .await
                .map_err(|e| fetch_failure(vm, d, e))
        }
        Source::Unavailable => Err(failed(vm, d, "nothing in Azure to read".into())),
    }
}

/// Grants read access on `resource_id` (the disk, or its snapshot), measures, revokes.
async fn granted(
    ctx: &DiskContext,
    vm: &PlannedVm,
    d: &PlannedDisk,
    resource_id: &ResourceId,
) -> Result<u64, DiskError> {
    let (target, format) = disk::what_to_grant(ctx, &vm.name, d, resource_id).await?;
    let sas = disk::grant_read_access(ctx, &target, resource_id, format)
        .await
        .map_err(|e| match e {
            None => interrupted(vm, d),
            Some(m) => failed(vm, d, m),
        })?;
    let mut read = ctx.read_settings();
    if d.entra_id_reads {
        read.credential = Some(ctx.credential.clone());
    }
    let bytes = written_bytes(&sas, &read, ctx.interrupt.clone()).await;
    disk::revoke(ctx, &target, resource_id).await;
    bytes.map_err(|e| fetch_failure(vm, d, e))
}

fn failed(vm: &PlannedVm, d: &PlannedDisk, message: String) -> DiskError {
    DiskError::Failed {
        vm: vm.name.clone(),
        disk: d.name.clone(),
        message,
    }
}

fn interrupted(vm: &PlannedVm, d: &PlannedDisk) -> DiskError {
    DiskError::Interrupted {
        vm: vm.name.clone(),
        disk: d.name.clone(),
    }
}

fn fetch_failure(vm: &PlannedVm, d: &PlannedDisk, e: FetchError) -> DiskError {
    match e {
        FetchError::Interrupted { .. } => interrupted(vm, d),
        e => failed(vm, d, format!("measuring: {e}")),
    }
}

/// Closes the run report: its status and end; returns what is still outstanding.
fn finish_report(ledger: &Ledger, interrupt: &Interrupt, results: &Results) -> Vec<ResourceId> {
    let failed = results.iter().any(|(_, r)| r.is_err());
    let status = match (interrupt.is_set(), failed) {
        (true, _) => RunStatus::Interrupted,
        (false, true) => RunStatus::Partial,
        (false, false) => RunStatus::Done,
    };
    let _ = ledger.update(|r| {
        r.status = status;
        r.finished_at = Some(now_rfc3339());
    });
    ledger
        .report()
        .resources
        .iter()
        .filter(|r| r.outstanding())
        .map(|r| r.id.clone())
        .collect()
}

/// Writes each measured disk's bytes into every VM entry that has the disk (a shared
/// disk is measured once for all its entries); logs each disk that could not be measured.
/// Returns the number of disks measured.
fn record(vms: &mut [VmInfo], results: &Results) -> usize {
    let mut bytes: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, r) in results {
        match r {
            Ok(b) => {
                bytes.insert(key.as_str(), *b);
            }
            Err(DiskError::Interrupted { .. }) => {}
            Err(e @ DiskError::Refused { .. }) => tracing::warn!("not measured: {e}"),
            Err(e) => tracing::error!("not measured, balanced by its size: {e}"),
        }
    }
    for d in vms.iter_mut().flat_map(|v| v.disks.iter_mut()) {
        let key =
            d.id.as_deref()
                .or(d.vhd_uri.as_deref())
                .map(str::to_ascii_lowercase);
        if let Some(b) = key.and_then(|k| bytes.get(k.as_str())) {
            d.written_bytes = Some(*b);
        }
    }
    bytes.len()
}

fn log_outcome(vms: &[VmInfo], out: &Measured, settings: &ExportSettings) {
    let taken = || {
        vms.iter()
            .flat_map(|v| v.disks.iter())
            .filter(|d| settings.disks.takes(d.role) && d.written_bytes.is_some())
    };
    let written: u64 = taken().filter_map(|d| d.written_bytes).sum();
    let provisioned: u64 = taken().filter_map(|d| d.size_gb).map(|g| g << 30).sum();
    tracing::info!(
        "measured {} of {} disks: {} written of {} provisioned",
        out.measured,
        out.total,
        human_bytes(written),
        human_bytes(provisioned)
    );
    if !out.resources_left.is_empty() {
        let names: Vec<String> = out.resources_left.iter().map(ToString::to_string).collect();
        tracing::error!(
            "{} Azure resources could not be removed ({}); run `azure2kvm cleanup --run-id {}`",
            names.len(),
            names.join(", "),
            out.run_id
        );
    }
}
