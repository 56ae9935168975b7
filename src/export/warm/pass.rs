//! One disk's warm pass: bring its image to the content of the snapshot this run took,
//! by a diff against the snapshot the last pass kept when that is sound, else by a full
//! export (the first pass, or a fallback whose reason goes to the log and the run report).
//!
//! Order matters for a crash at any point: the new snapshot is recorded as pending before
//! the image is touched; the state names it as kept only once the image is durable; the
//! old snapshot is deleted only after that. So the snapshot the image was last complete at
//! exists for as long as a rerun may need it, and a rerun finishes the pending pass with
//! the same two snapshots (the diff's journal is keyed by them).

use std::time::Instant;

use super::WarmRun;
use super::diff::{self, DiffError, DiffPass};
use super::state::{DiskState, PassKind, PassRecord, StateFile};
use crate::azure::arm::ResourceId;
use crate::azure::arm::client::{AccessTarget, GrantFormat, ResourceRef};
use crate::azure::sas::SasUrl;
use crate::export::cleanup::delete_with_revoke;
use crate::export::disk::{DiskContext, DiskError, export_disk, grant_read_access, revoke};
use crate::export::ledger::{DiskStatus, ResourceKind, ResourceState};
use crate::export::naming::now_rfc3339;
use crate::export::plan::{PlannedDisk, PlannedVm, Source};
use crate::export::run::{DiskResult, bytes_downloaded, result_of};
use crate::transfer::job::DownloadReport;

/// Runs disk `d`'s pass (see the module note).
pub async fn one_disk(
    ctx: &DiskContext,
    warm: &WarmRun,
    vm: &PlannedVm,
    d: &PlannedDisk,
) -> DiskResult {
    match run_pass(ctx, warm, vm, d).await {
        Ok((report, record)) => {
            tracing::info!(
                "{}: {} is current ({} pass{}, {} fetched)",
                vm.name,
                d.name,
                match record.kind {
                    PassKind::Full => "full",
                    PassKind::Diff => "diff",
                },
                record
                    .fallback
                    .as_deref()
                    .map(|w| format!(" because {w}"))
                    .unwrap_or_default(),
                crate::units::human_bytes(record.bytes_fetched)
            );
            warm.record_pass(&d.key, record);
            DiskResult {
                status: DiskStatus::Done,
                report: Some(report),
                error: None,
            }
        }
        Err(e) => result_of(&vm.name, d, Err(e)),
    }
}

/// What Azure says about the snapshot this pass reads.
#[derive(Debug, Clone)]
struct SnapshotFacts {
    unique_id: Option<String>,
    size_bytes: u64,
}

/// How the image is brought up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Diff {
        base: ResourceId,
    },
    /// `why`: None for a first pass, else why a diff is not sound.
    Full {
        why: Option<String>,
    },
}

async fn run_pass(
    ctx: &DiskContext,
    warm: &WarmRun,
    vm: &PlannedVm,
    d: &PlannedDisk,
) -> Result<(DownloadReport, PassRecord), DiskError> {
    let fail = |m: String| failed(vm, d, m);
    let Source::Snapshot {
        snapshot: new,
        disk_id,
        ..
    } = &d.source
    else {
        return Err(fail("a warm pass reads from a snapshot".into()));
    };
    let file = warm
        .state(&vm.id)
        .ok_or_else(|| fail("no migration state opened for this VM".into()))?;
    let prior = file.disk(&d.key);
    let facts = snapshot_facts(ctx, new)
        .await
        .map_err(|e| fail(format!("reading snapshot {new}: {e}")))?;
    let route = choose(ctx, d, prior.as_ref(), &facts).await;
    begin(ctx, &file, d, prior.as_ref(), new, disk_id, &facts).map_err(|e| fail(e.to_string()))?;
    // Named by the state now, the snapshot is the next pass's to finish from: the run's
    // sweep leaves it (the report lists it as kept).
    keep_in_ledger(ctx, new, disk_id);
    let (report, record) = match route {
        Route::Diff { base } => {
            let prior = prior.expect("a diff has a prior pass");
            match diff_pass(ctx, warm, vm, d, &base, new, &prior).await {
                Err(PassFailure::FallBack(why)) => full_pass(ctx, warm, vm, d, Some(why)).await?,
                Err(PassFailure::Disk(e)) => return Err(e),
                Ok(done) => done,
            }
        }
        Route::Full { why } => full_pass(ctx, warm, vm, d, why).await?,
    };
    commit(ctx, warm, &file, vm, d, new, &facts, &report, &record)
        .await
        .map_err(fail)?;
    Ok((report, record))
}

fn failed(vm: &PlannedVm, d: &PlannedDisk, message: String) -> DiskError {
    DiskError::Failed {
        vm: vm.name.clone(),
        disk: d.name.clone(),
        message,
    }
}

async fn snapshot_facts(ctx: &DiskContext, id: &ResourceId) -> Result<SnapshotFacts, String> {
    let s = ctx
        .arm
        .get_snapshot(&ResourceRef::from(id))
        .await
        .map_err(|e| e.to_string())?;
    let p = s.properties.unwrap_or_default();
    let size_bytes = p
        .disk_size_bytes
        .or(p.disk_size_gb.map(|g| g << 30))
        .ok_or("Azure gives no size for it")?;
    Ok(SnapshotFacts {
        unique_id: p.source_unique_id,
        size_bytes,
    })
}

/// A diff when it is sound: the last pass kept a snapshot of the same disk (same
/// `uniqueId`), of the same size, that still exists, and the image it produced is there
/// in the format asked; and the disk is granted as VHD (a VHDX grant's page ranges are in
/// VHDX file offsets, not the guest's).
async fn choose(
    ctx: &DiskContext,
    d: &PlannedDisk,
    prior: Option<&DiskState>,
    facts: &SnapshotFacts,
) -> Route {
    let full = |why: String| Route::Full { why: Some(why) };
    let Some(prior) = prior else {
        return Route::Full { why: None };
    };
    let Some(base) = &prior.kept_snapshot else {
        // An interrupted first pass: its download resumes.
        return Route::Full { why: None };
    };
    if let Some(why) = unsound(ctx, d, prior, facts) {
        return full(why);
    }
    match ctx.arm.get_snapshot(&ResourceRef::from(base)).await {
        Ok(s) => {
            let theirs = s.properties.and_then(|p| p.source_unique_id);
            match (&theirs, &facts.unique_id) {
                (Some(a), Some(b)) if a != b => full(format!(
                    "the kept snapshot {base} copies another disk (sourceUniqueId {a}, the disk now {b})"
                )),
                _ => Route::Diff { base: base.clone() },
            }
        }
        Err(e) if e.status() == Some(404) => full(format!("the kept snapshot {base} is gone")),
        Err(e) => full(format!("the kept snapshot {base} cannot be read ({e})")),
    }
}

/// Why the image and the new snapshot cannot be joined by a diff, from what is known
/// without asking Azure.
fn unsound(
    ctx: &DiskContext,
    d: &PlannedDisk,
    prior: &DiskState,
    facts: &SnapshotFacts,
) -> Option<String> {
    let image = ctx.output_dir.join(&prior.image);
    if prior.format != ctx.format || prior.image != d.image {
        return Some(format!(
            "the image is asked as {} now ({} before)",
            d.image.display(),
            prior.image.display()
        ));
    }
    if !image.exists() {
        return Some(format!("the image {} is missing", image.display()));
    }
    if d.grant_format == GrantFormat::Vhdx {
        return Some(
            "the disk has 4096-byte sectors and is served as VHDX, whose changed ranges are in VHDX file offsets"
                .into(),
        );
    }
    if let (Some(was), Some(now)) = (&prior.disk_unique_id, &facts.unique_id)
        && was != now
    {
        return Some(format!(
            "the disk was deleted and re-created (uniqueId {was}, now {now})"
        ));
    }
    if prior.disk_size_bytes != facts.size_bytes {
        return Some(format!(
            "the disk was resized from {} to {} bytes (an image's size is fixed, and Azure gives no diff across 4 TiB)",
            prior.disk_size_bytes, facts.size_bytes
        ));
    }
    None
}

/// Records the new snapshot as pending before the image is touched (and, if it was taken
/// by this run, counts it against Azure's per-disk rate).
fn begin(
    ctx: &DiskContext,
    file: &StateFile,
    d: &PlannedDisk,
    prior: Option<&DiskState>,
    new: &ResourceId,
    disk_id: &ResourceId,
    facts: &SnapshotFacts,
) -> Result<(), super::state::StateError> {
    let now = super::unix_now();
    let taken_now = prior.and_then(|p| p.pending_snapshot.as_ref()) != Some(new);
    file.update(|s| match s.disks.iter_mut().find(|x| x.is(&d.key)) {
        Some(x) => {
            x.pending_snapshot = Some(new.clone());
            if taken_now {
                x.note_snapshot(now);
            }
        }
        None => s.disks.push(DiskState {
            lun: d.key.lun,
            disk: d.name.clone(),
            disk_id: disk_id.clone(),
            disk_unique_id: facts.unique_id.clone(),
            disk_size_bytes: facts.size_bytes,
            kept_snapshot: None,
            pending_snapshot: Some(new.clone()),
            image: d.image.clone(),
            format: ctx.format,
            virtual_size: facts.size_bytes,
            logical_sector_size: 512,
            passes: 0,
            bytes_fetched: 0,
            last_pass: None,
            first_pass_at: now_rfc3339(),
            last_pass_at: now_rfc3339(),
            recent_snapshots: vec![now],
            retired: Vec::new(),
        }),
    })
}

fn keep_in_ledger(ctx: &DiskContext, snapshot: &ResourceId, disk_id: &ResourceId) {
    let known = ctx
        .ledger
        .report()
        .resources
        .iter()
        .any(|r| r.kind == ResourceKind::Snapshot && r.id == *snapshot);
    if !known {
        let _ = ctx
            .ledger
            .creating(ResourceKind::Snapshot, snapshot, Some(disk_id));
    }
    let _ = ctx
        .ledger
        .set_state(ResourceKind::Snapshot, snapshot, ResourceState::Kept, None);
}

/// A full export of the new snapshot into the image (replacing an image a diff could not
/// update).
async fn full_pass(
    ctx: &DiskContext,
    warm: &WarmRun,
    vm: &PlannedVm,
    d: &PlannedDisk,
    why: Option<String>,
) -> Result<(DownloadReport, PassRecord), DiskError> {
    let image = ctx.output_dir.join(&d.image);
    if let Some(why) = &why {
        tracing::warn!(
            "{}: {}: a full pass instead of a diff, because {why}",
            vm.name,
            d.name
        );
        diff::discard(&image);
        if image.exists() {
            std::fs::remove_file(&image)
                .map_err(|e| failed(vm, d, format!("cannot replace {}: {e}", image.display())))?;
        }
    }
    let report = export_disk(ctx, &vm.name, d).await?;
    let record = PassRecord {
        kind: PassKind::Full,
        fallback: why,
        run_id: warm.run_id.clone(),
        bytes_fetched: bytes_downloaded(&report),
        bytes_changed: report.data_bytes,
        bytes_cleared: 0,
    };
    Ok((report, record))
}

/// Why a diff pass did not bring the image up to date.
enum PassFailure {
    /// The diff cannot be used: do a full pass instead, for this reason.
    FallBack(String),
    Disk(DiskError),
}

/// Grants read on the new and the kept snapshot, applies the diff between them to the
/// image, and revokes both whatever happened (Azure allows SAS on 5 snapshots of a disk at
/// once; a diff holds 2).
async fn diff_pass(
    ctx: &DiskContext,
    warm: &WarmRun,
    vm: &PlannedVm,
    d: &PlannedDisk,
    base: &ResourceId,
    new: &ResourceId,
    prior: &DiskState,
) -> Result<(DownloadReport, PassRecord), PassFailure> {
    let started = Instant::now();
    let targets = [new, base].map(|id| (id, AccessTarget::Snapshot(ResourceRef::from(id))));
    let mut sas: Vec<SasUrl> = Vec::new();
    let mut refused = None;
    for (id, target) in &targets {
        match grant_read_access(ctx, target, id, GrantFormat::Vhd).await {
            Ok(s) => sas.push(s),
            Err(why) => {
                refused = Some(why);
                break;
            }
        }
    }
    let outcome = match (refused, sas.as_slice()) {
        (None, [new_sas, base_sas]) => {
            let pass = DiffPass {
                snapshot: new_sas.clone(),
                previous: base_sas.clone(),
                new_id: new.clone(),
                base_id: base.clone(),
                image: ctx.output_dir.join(&d.image),
                format: ctx.format,
                virtual_size: prior.virtual_size,
            };
            let applied = diff::apply(ctx, d, pass).await;
            if applied.is_ok() {
                // The last byte is durable now (the engine synced the image): the
                // cutover's clock stops here, not after the revokes.
                warm.durable(&vm.id);
            }
            Some(applied)
        }
        (Some(Some(why)), _) => Some(Err(DiffError::Failed(why))),
        _ => None,
    };
    for (id, target) in &targets {
        revoke(ctx, target, id).await;
    }
    let numbers = match outcome {
        None => return Err(PassFailure::Disk(interrupted(vm, d))),
        Some(Ok(n)) => n,
        Some(Err(DiffError::Interrupted)) => return Err(PassFailure::Disk(interrupted(vm, d))),
        Some(Err(DiffError::Unusable(why))) => return Err(PassFailure::FallBack(why)),
        Some(Err(DiffError::Failed(m))) => return Err(PassFailure::Disk(failed(vm, d, m))),
    };
    let report = diff::report(prior, ctx.output_dir.join(&d.image), &numbers, started);
    let record = PassRecord {
        kind: PassKind::Diff,
        fallback: None,
        run_id: warm.run_id.clone(),
        bytes_fetched: numbers.bytes_fetched,
        bytes_changed: numbers.bytes_changed,
        bytes_cleared: numbers.bytes_cleared,
    };
    Ok((report, record))
}

fn interrupted(vm: &PlannedVm, d: &PlannedDisk) -> DiskError {
    DiskError::Interrupted {
        vm: vm.name.clone(),
        disk: d.name.clone(),
    }
}

/// The image is durable at the new snapshot: the state names it as kept, then the
/// snapshot it replaces is deleted (and at the cutover the new one too).
#[allow(clippy::too_many_arguments)]
async fn commit(
    ctx: &DiskContext,
    warm: &WarmRun,
    file: &StateFile,
    vm: &PlannedVm,
    d: &PlannedDisk,
    new: &ResourceId,
    facts: &SnapshotFacts,
    report: &DownloadReport,
    record: &PassRecord,
) -> Result<(), String> {
    let old = file.disk(&d.key).and_then(|s| s.kept_snapshot);
    file.update_disk(&d.key, |x| {
        x.kept_snapshot = Some(new.clone());
        x.pending_snapshot = None;
        x.disk_unique_id = facts.unique_id.clone();
        x.disk_size_bytes = facts.size_bytes;
        x.virtual_size = report.virtual_size;
        x.logical_sector_size = report.logical_sector_size;
        x.passes += 1;
        x.bytes_fetched += record.bytes_fetched;
        x.last_pass = Some(record.clone());
        x.last_pass_at = now_rfc3339();
        if let Some(old) = old.as_ref().filter(|o| *o != new) {
            x.retired.push(old.clone());
        }
    })
    .map_err(|e| e.to_string())?;
    if record.kind == PassKind::Full {
        warm.durable(&vm.id);
    }
    if warm.mode.cutover {
        file.update_disk(&d.key, |x| {
            x.retired.push(new.clone());
            x.kept_snapshot = None;
        })
        .map_err(|e| e.to_string())?;
    }
    retire(ctx, file, d).await;
    Ok(())
}

/// Deletes the snapshots disk `d`'s passes replaced; those that cannot be deleted stay
/// listed for the next pass and `cleanup --migration`.
pub async fn retire(ctx: &DiskContext, file: &StateFile, d: &PlannedDisk) {
    let Some(state) = file.disk(&d.key) else {
        return;
    };
    let mut left = Vec::new();
    for id in state.retired {
        match delete_with_revoke(&ctx.arm, &ResourceRef::from(&id)).await {
            Ok(()) => {
                tracing::info!("{}: snapshot {id} deleted", d.name);
                let _ =
                    ctx.ledger
                        .set_state(ResourceKind::Snapshot, &id, ResourceState::Removed, None);
            }
            Err(e) => {
                tracing::warn!("deleting snapshot {id}: {e} (the next pass tries again)");
                left.push(id);
            }
        }
    }
    let _ = file.update_disk(&d.key, |x| x.retired = left);
}
