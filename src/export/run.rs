//! One export run over a plan, in two phases so that every VM's disks are copied at one
//! instant: (1) per VM, deallocate if asked, then snapshot all its selected disks; (2) all
//! disks of all VMs, a bounded number at a time, each granted, downloaded, revoked and its
//! snapshot deleted as soon as it is done. Whatever happens — a failed disk, Ctrl-C,
//! SIGTERM, a panic in a task — the run ends with a sweep over the ledger that revokes
//! every grant and deletes every snapshot still recorded as possibly existing. Only a
//! second Ctrl-C or a kill -9 skips it, and then the report names what is left for
//! `cleanup --run-id`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;

use super::background_copy;
use super::budget;
use super::cleanup::{only_this_runs_snapshots, sweep};
use super::disk::{DiskContext, DiskError, export_disk};
use super::disk_kind::MAX_BACKGROUND_COPIES;
use super::ledger::{DiskOutcome, DiskStatus, Ledger, ResourceKind, ResourceState};
use super::naming::{TAG_HASH_HEX, id_hash};
use super::plan::{DiskKey, PlannedDisk, PlannedVm, Source};
use super::warm::WarmRun;
use crate::azure::arm::ResourceId;
use crate::azure::arm::client::ResourceRef;
use crate::azure::inventory::DiskRole;
use crate::transfer::job::DownloadReport;
use crate::units::human_bytes;

/// Tag on every snapshot a run creates: `cleanup` finds them by it.
pub const RUN_TAG: &str = "azure2kvm-run";
/// Tag naming the disk a snapshot copies, by hash (see [`snapshot_tags`]).
pub const SOURCE_TAG: &str = "azure2kvm-source";
/// Longest tag value Azure accepts.
pub const TAG_VALUE_MAX: usize = 256;

/// The tags of a snapshot of `disk_id` made by run `run_id`. The source is named by the
/// hash of its id (`sha256:` and 32 hex digits), not the id itself: a full disk id with
/// long resource group and disk names exceeds Azure's 256 characters per tag value and
/// the snapshot PUT fails with 400. The run report records the full id.
pub fn snapshot_tags(run_id: &str, disk_id: &ResourceId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUN_TAG.to_string(), run_id.to_string()),
        (
            SOURCE_TAG.to_string(),
            format!("sha256:{}", id_hash(disk_id, TAG_HASH_HEX)),
        ),
    ])
}
/// VMs prepared (deallocated, snapshotted) at once: ARM writes are rate-limited per
/// subscription (200 per bucket, 10/s refill), a few in flight is plenty.
pub const PREPARE_CONCURRENCY: usize = 4;
/// What became of one planned disk.
#[derive(Debug, Clone)]
pub struct DiskResult {
    /// Done, failed or interrupted (never pending).
    pub status: DiskStatus,
    pub report: Option<DownloadReport>,
    pub error: Option<String>,
}

/// Bytes of the image fetched from Azure over every grant of the disk: the plan's bytes
/// (a download that resumed after a renewed grant reports only its own last call in its
/// transfer stats, which would undercount).
pub fn bytes_downloaded(report: &DownloadReport) -> u64 {
    report.planned_bytes
}

/// The ledger's outcome rows for a plan, all pending.
pub fn pending_outcomes(plan: &[PlannedVm]) -> Vec<DiskOutcome> {
    plan.iter()
        .flat_map(|vm| {
            vm.disks.iter().map(|d| DiskOutcome {
                vm: vm.name.clone(),
                vm_id: d.key.vm.clone(),
                disk: d.name.clone(),
                disk_id: match &d.source {
                    Source::Snapshot { disk_id, .. } | Source::Disk { disk_id } => {
                        Some(disk_id.clone())
                    }
                    Source::Blob { .. } | Source::Unavailable => None,
                },
                role: d.role,
                lun: d.lun,
                image: Some(d.image.display().to_string()),
                status: DiskStatus::Pending,
                bytes_downloaded: 0,
                error: None,
            })
        })
        .collect()
}

/// The results of the disks refused by kind in the plan (`unsupported` for an ephemeral OS
/// disk): final from the start; nothing is created for them.
fn refused_results(plan: &[PlannedVm]) -> BTreeMap<DiskKey, DiskResult> {
    plan.iter()
        .flat_map(|vm| vm.disks.iter().map(move |d| (vm, d)))
        .filter_map(|(vm, d)| {
            let why = d.refused.as_ref()?;
            Some((
                d.key.clone(),
                DiskResult {
                    status: why.status(),
                    report: None,
                    error: Some(format!("VM {}, disk {}: {}", vm.name, d.name, why.reason())),
                },
            ))
        })
        .collect()
}

/// True if `row` is the outcome row of the disk `key` names.
fn is_row_of(row: &DiskOutcome, key: &DiskKey) -> bool {
    row.vm_id == key.vm && (row.role == DiskRole::Data).then_some(row.lun).flatten() == key.lun
}

fn record(ledger: &Ledger, key: &DiskKey, result: &DiskResult) {
    let r = ledger.update(|rep| {
        if let Some(o) = rep.disks.iter_mut().find(|o| is_row_of(o, key)) {
            o.status = result.status;
            o.bytes_downloaded = result.report.as_ref().map(bytes_downloaded).unwrap_or(0);
            o.error = result.error.clone();
        }
    });
    if let Err(e) = r {
        tracing::error!("{e}");
    }
}

/// Runs the plan; returns one result per planned disk, by its key.
/// `warm`: a warm pass (`export --warm`), whose snapshots are kept and whose disks are
/// brought up to date by [`super::warm::pass`].
pub async fn run(
    plan: &[PlannedVm],
    ctx: &DiskContext,
    run_id: &str,
    warm: Option<Arc<WarmRun>>,
) -> BTreeMap<DiskKey, DiskResult> {
    let mut results: BTreeMap<DiskKey, DiskResult> = refused_results(plan);
    for (key, result) in &results {
        tracing::error!("{}", result.error.as_deref().unwrap_or_default());
        record(&ctx.ledger, key, result);
    }
    let copies = tokio::sync::Semaphore::new(ctx.background_copies.clamp(1, MAX_BACKGROUND_COPIES));

    // Phase 1: prepare every VM (deallocate, snapshots) before any download starts.
    let prepared: Vec<Vec<(DiskKey, DiskResult)>> = futures::stream::iter(plan)
        .map(|vm| prepare_vm(ctx, vm, run_id, &copies, warm.as_deref()))
        .buffer_unordered(PREPARE_CONCURRENCY)
        .collect()
        .await;
    for (key, result) in prepared.into_iter().flatten() {
        record(&ctx.ledger, &key, &result);
        results.insert(key, result);
    }

    // Phase 2: every disk that is ready, a bounded number at a time, each with its share
    // of the run's connections and memory.
    let ready: Vec<(&PlannedVm, &PlannedDisk)> = plan
        .iter()
        .flat_map(|vm| vm.disks.iter().map(move |d| (vm, d)))
        .filter(|(_, d)| !results.contains_key(&d.key) && d.owner.is_none())
        .collect();
    let done = download_all(ctx, ready, warm.clone()).await;
    results.extend(done);
    share_results(plan, &ctx.ledger, &mut results);

    // Whatever is still recorded as possibly existing goes now (a warm run's kept
    // snapshots are recorded as kept, and its grants on an earlier run's kept snapshot are
    // revoked by the sweep too).
    let policy = match &warm {
        Some(w) => only_this_runs_snapshots(run_id).also(w.kept_snapshots()),
        None => only_this_runs_snapshots(run_id),
    };
    sweep(&ctx.arm, &ctx.ledger, &policy).await;
    results
}

/// Downloads `ready` disks within the run's budget ([`budget::plan`]): `slots` disks hold
/// a data slot and download; up to `live_grants` disks are in work at once, so the others
/// are granted ahead (waiting for a slot with their grant in hand) or revoking behind, and
/// the wire is not idle while Azure's control plane answers. Every grant is revoked by
/// `export_disk` on every path, and in flight disks never exceed `live_grants`, so live
/// grants never exceed it either.
async fn download_all(
    ctx: &DiskContext,
    ready: Vec<(&PlannedVm, &PlannedDisk)>,
    warm: Option<Arc<WarmRun>>,
) -> Vec<(DiskKey, DiskResult)> {
    let budget = budget::plan(ctx.limits.concurrency, ready.len(), ctx.limits.memory);
    if !ready.is_empty() {
        tracing::info!(
            "{} disks: {} at a time with {} connections each, {} chunks ({} of chunk buffers within --memory {}), at most {} read grants live",
            ready.len(),
            budget.slots,
            budget.connections,
            human_bytes(budget.chunk_size),
            human_bytes(budget.chunk_memory()),
            human_bytes(ctx.limits.memory),
            budget.live_grants
        );
    }
    let per_disk = DiskContext {
        connections: budget.connections,
        queue_depth: budget.queue_depth,
        chunk_size: Some(budget.chunk_size),
        data_slots: Arc::new(tokio::sync::Semaphore::new(budget.slots)),
        ..ctx.clone()
    };
    futures::stream::iter(ready)
        .map(|(vm, d)| in_task(&per_disk, vm, d, warm.clone()))
        .buffer_unordered(budget.live_grants)
        .collect()
        .await
}

/// One disk's export (or warm pass) in a task of its own: a panic in one disk's work
/// stops neither the others nor the sweep. Its result is recorded in the ledger.
async fn in_task(
    ctx: &DiskContext,
    vm: &PlannedVm,
    d: &PlannedDisk,
    warm: Option<Arc<WarmRun>>,
) -> (DiskKey, DiskResult) {
    let vm_name = vm.name.clone();
    let (task_ctx, vm, disk) = (ctx.clone(), vm.clone(), d.clone());
    let task = tokio::spawn(async move {
        match warm {
            Some(w) => super::warm::pass::one_disk(&task_ctx, &w, &vm, &disk).await,
            None => one_disk(&task_ctx, &vm.name, &disk).await,
        }
    });
    let result = task.await.unwrap_or_else(|e| DiskResult {
        status: DiskStatus::Failed,
        report: None,
        error: Some(format!("VM {vm_name}, disk {}: task failed: {e}", d.name)),
    });
    record(&ctx.ledger, &d.key, &result);
    (d.key.clone(), result)
}

/// A shared disk exported through another VM's entry has that entry's outcome (the same
/// image); recorded for this VM's row too.
fn share_results(plan: &[PlannedVm], ledger: &Ledger, results: &mut BTreeMap<DiskKey, DiskResult>) {
    for d in plan.iter().flat_map(|vm| vm.disks.iter()) {
        let Some(owner) = &d.owner else { continue };
        let result = results.get(owner).cloned().unwrap_or_else(|| DiskResult {
            status: DiskStatus::Failed,
            report: None,
            error: Some(format!("shared disk {}: its export did not run", d.name)),
        });
        record(ledger, &d.key, &result);
        results.insert(d.key.clone(), result);
    }
}

/// Exports one disk, then deletes its snapshot (grants are revoked by `export_disk`).
async fn one_disk(ctx: &DiskContext, vm: &str, d: &PlannedDisk) -> DiskResult {
    let outcome = export_disk(ctx, vm, d).await;
    if let Source::Snapshot { snapshot, .. } = &d.source {
        delete_snapshot(ctx, snapshot).await;
    }
    result_of(vm, d, outcome)
}

/// A disk's result from how its export ended; failures are logged here.
pub fn result_of(
    vm: &str,
    d: &PlannedDisk,
    outcome: Result<DownloadReport, DiskError>,
) -> DiskResult {
    match outcome {
        Ok(report) => {
            tracing::info!(
                "{vm}: {} exported to {} ({} fetched)",
                d.name,
                d.image.display(),
                crate::units::human_bytes(report.stats.bytes_fetched)
            );
            DiskResult {
                status: DiskStatus::Done,
                report: Some(report),
                error: None,
            }
        }
        Err(e @ DiskError::Interrupted { .. }) => DiskResult {
            status: DiskStatus::Interrupted,
            report: None,
            error: Some(e.to_string()),
        },
        Err(e @ DiskError::Refused { .. }) => {
            tracing::error!("{e}");
            DiskResult {
                status: DiskStatus::Refused,
                report: None,
                error: Some(e.to_string()),
            }
        }
        Err(e) => {
            tracing::error!("{e}");
            DiskResult {
                status: DiskStatus::Failed,
                report: None,
                error: Some(e.to_string()),
            }
        }
    }
}

/// Deletes a snapshot (404 counts as deleted); a failure is left for the sweep.
pub async fn delete_snapshot(ctx: &DiskContext, id: &ResourceId) {
    let state = match ctx.arm.delete_snapshot(&ResourceRef::from(id)).await {
        Ok(()) => (ResourceState::Removed, None),
        Err(e) => {
            tracing::warn!("deleting snapshot {id}: {e}");
            (ResourceState::RemoveFailed, Some(e.to_string()))
        }
    };
    let _ = ctx
        .ledger
        .set_state(ResourceKind::Snapshot, id, state.0, state.1);
}

/// Deallocates (if planned) and snapshots every disk of `vm` that needs one. Returns the
/// disks that cannot go on.
async fn prepare_vm(
    ctx: &DiskContext,
    vm: &PlannedVm,
    run_id: &str,
    copies: &tokio::sync::Semaphore,
    warm: Option<&WarmRun>,
) -> Vec<(DiskKey, DiskResult)> {
    if ctx.interrupt.is_set() {
        return fail_all(
            vm,
            DiskStatus::Interrupted,
            "interrupted before it started".into(),
        );
    }
    // A cutover's downtime starts here: at the deallocation request, or now when the VM
    // is deallocated already.
    if let Some(w) = warm.filter(|w| w.mode.cutover) {
        w.stopping(&vm.id);
    }
    if vm.deallocate
        && let Err((status, message)) = deallocate(ctx, vm).await
    {
        return fail_all(vm, status, message);
    }
    // A disk refused by kind gets nothing; a shared disk is snapshotted by the entry that
    // exports it only; a warm pass left pending by an earlier run has its snapshot.
    let snapshots = vm
        .disks
        .iter()
        .filter(|d| d.refused.is_none() && d.owner.is_none())
        .filter(|d| !warm.is_some_and(|w| w.reuses_snapshot(&d.key)));
    let created =
        futures::future::join_all(snapshots.map(|d| snapshot_disk(ctx, vm, d, run_id, copies)))
            .await;
    created.into_iter().flatten().collect()
}

/// The same result for every disk of `vm` not refused already: none of them can go on.
fn fail_all(vm: &PlannedVm, status: DiskStatus, message: String) -> Vec<(DiskKey, DiskResult)> {
    vm.disks
        .iter()
        .filter(|d| d.refused.is_none())
        .map(|d| {
            (
                d.key.clone(),
                DiskResult {
                    status,
                    report: None,
                    error: Some(message.clone()),
                },
            )
        })
        .collect()
}

/// Deallocates `vm`, recorded in the ledger before it is asked for. `Err`: how its disks
/// end and why.
async fn deallocate(ctx: &DiskContext, vm: &PlannedVm) -> Result<(), (DiskStatus, String)> {
    let r = ResourceRef::from(&vm.id);
    ctx.ledger
        .creating(ResourceKind::Deallocation, &vm.id, None)
        .map_err(|e| (DiskStatus::Failed, e.to_string()))?;
    tracing::warn!(
        "{}: deallocating the VM (--consistency deallocate); it stays deallocated after the export",
        vm.name
    );
    // Deallocation can take minutes: Ctrl-C stops waiting for it (it goes on in Azure
    // either way, and the report says it was asked for).
    let outcome = tokio::select! {
        r = ctx.arm.deallocate(&r) => r,
        () = ctx.interrupt.cancelled() => {
            return Err((
                DiskStatus::Interrupted,
                format!("VM {}: interrupted while it was being deallocated (that goes on in Azure)", vm.name),
            ));
        }
    };
    let (state, error) = match &outcome {
        Ok(()) => (ResourceState::Exists, None),
        Err(e) => (ResourceState::RemoveFailed, Some(e.to_string())),
    };
    let _ = ctx
        .ledger
        .set_state(ResourceKind::Deallocation, &vm.id, state, error);
    outcome.map_err(|e| {
        (
            DiskStatus::Failed,
            format!("VM {}: deallocate: {e}", vm.name),
        )
    })
}

fn outcome(key: &DiskKey, status: DiskStatus, error: String) -> Option<(DiskKey, DiskResult)> {
    Some((
        key.clone(),
        DiskResult {
            status,
            report: None,
            error: Some(error),
        },
    ))
}

/// Snapshots disk `d` of `vm` if its plan says so and, for a Premium SSD v2 or Ultra disk,
/// waits until the snapshot's background copy is done. None when the disk is ready for
/// its grant; otherwise its result.
pub(super) async fn snapshot_disk(
    ctx: &DiskContext,
    vm: &PlannedVm,
    d: &PlannedDisk,
    run_id: &str,
    copies: &tokio::sync::Semaphore,
) -> Option<(DiskKey, DiskResult)> {
    let Source::Snapshot {
        snapshot,
        disk_id,
        incremental,
        background_copy,
    } = &d.source
    else {
        return None;
    };
    let named = |m: &dyn std::fmt::Display| format!("VM {}, disk {}: {m}", vm.name, d.name);
    if ctx.interrupt.is_set() {
        let why = "interrupted before its snapshot".to_string();
        return outcome(&d.key, DiskStatus::Interrupted, why);
    }
    // Held from the snapshot's creation until its background copy is done: Azure allows
    // 50 active copies per subscription; more wait here (Ctrl-C ends the wait).
    let _permit = if *background_copy {
        match ctx.interrupt.unless_cancelled(copies.acquire()).await {
            Some(Ok(p)) => Some(p),
            _ => {
                let why = named(&"interrupted while waiting for a background copy slot");
                return outcome(&d.key, DiskStatus::Interrupted, why);
            }
        }
    } else {
        None
    };
    if let Err(e) = ctx
        .ledger
        .creating(ResourceKind::Snapshot, snapshot, Some(disk_id))
    {
        return outcome(&d.key, DiskStatus::Failed, named(&e));
    }
    let reference = ResourceRef::from(snapshot);
    let tags = snapshot_tags(run_id, disk_id);
    let source = disk_id.to_string();
    let created = ctx
        .arm
        .create_snapshot(&reference, &vm.vm.location, &source, *incremental, &tags)
        .await;
    if let Err(e) = created {
        // Left as "creating": the sweep deletes it if it exists after all.
        return outcome(&d.key, DiskStatus::Failed, named(&format!("snapshot: {e}")));
    }
    let _ = ctx.ledger.set_state(
        ResourceKind::Snapshot,
        snapshot,
        ResourceState::Exists,
        None,
    );
    let kind = if *incremental { "incremental" } else { "full" };
    tracing::info!("{}: {kind} snapshot {reference} created", vm.name);
    if !*background_copy {
        return None;
    }
    match background_copy::wait(ctx, snapshot, &vm.name, &d.name).await {
        Ok(()) => None,
        Err(e @ background_copy::CopyWaitError::Interrupted) => {
            outcome(&d.key, DiskStatus::Interrupted, named(&e))
        }
        Err(e) => outcome(&d.key, DiskStatus::Failed, named(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_values_stay_within_azures_limit() {
        let long: ResourceId = format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/{}/providers/Microsoft.Compute/disks/{}",
            "g".repeat(90),
            "d".repeat(80)
        )
        .parse()
        .unwrap();
        assert!(long.to_string().len() > TAG_VALUE_MAX);
        let tags = snapshot_tags("20261127t103000z-s9999-ffffffffffffffff", &long);
        assert!(tags.values().all(|v| v.len() <= TAG_VALUE_MAX), "{tags:?}");
        assert_eq!(tags[SOURCE_TAG].len(), "sha256:".len() + TAG_HASH_HEX);
    }

    #[test]
    fn outcome_rows_are_matched_by_vm_id_and_lun_not_by_name() {
        let vm = |rg: &str| -> ResourceId {
            format!("/subscriptions/s/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/web-01")
                .parse()
                .unwrap()
        };
        let row = |rg: &str, role: DiskRole, lun: Option<u32>| DiskOutcome {
            vm: "web-01".into(),
            vm_id: vm(rg),
            disk: "web-01-osdisk".into(),
            disk_id: None,
            role,
            lun,
            image: None,
            status: DiskStatus::Pending,
            bytes_downloaded: 0,
            error: None,
        };
        let key = DiskKey {
            vm: vm("RG-TEST"),
            lun: None,
        };
        assert!(is_row_of(&row("rg-test", DiskRole::Os, None), &key));
        assert!(!is_row_of(&row("rg-prod", DiskRole::Os, None), &key));
        assert!(!is_row_of(&row("rg-test", DiskRole::Data, Some(0)), &key));
        let data0 = DiskKey {
            vm: vm("rg-test"),
            lun: Some(0),
        };
        assert!(is_row_of(&row("rg-test", DiskRole::Data, Some(0)), &data0));
    }
}
