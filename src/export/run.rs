//! One export run over a plan, in two phases so that every VM's disks are copied at one
//! instant: (1) per VM, deallocate if asked, then snapshot all its selected disks; (2) all
//! disks of all VMs, a bounded number at a time, each granted, downloaded, revoked and its
//! snapshot deleted as soon as it is done. Whatever happens — a failed disk, Ctrl-C,
//! SIGTERM, a panic in a task — the run ends with a sweep over the ledger that revokes
//! every grant and deletes every snapshot still recorded as possibly existing. Only a
//! second Ctrl-C or a kill -9 skips it, and then the report names what is left for
//! `cleanup --run-id`.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::Serialize;

use super::cleanup::sweep;
use super::disk::{DiskContext, DiskError, export_disk};
use super::ledger::{DiskOutcome, Ledger, ResourceKind, ResourceState};
use super::plan::{PlannedDisk, PlannedVm, Source};
use crate::azure::arm::client::ResourceRef;
use crate::transfer::engine::{CHUNK_MEMORY_BUDGET, DEFAULT_QUEUE_DEPTH};
use crate::transfer::job::DownloadReport;
use crate::transfer::plan::DEFAULT_CHUNK_SIZE;

/// Tag on every snapshot a run creates: `cleanup` finds them by it.
pub const RUN_TAG: &str = "azure2kvm-run";
/// Tag naming the disk a snapshot copies.
pub const SOURCE_TAG: &str = "azure2kvm-source";
/// VMs prepared (deallocated, snapshotted) at once: ARM writes are rate-limited per
/// subscription (200 per bucket, 10/s refill), a few in flight is plenty.
pub const PREPARE_CONCURRENCY: usize = 4;
/// Connections one disk gets when the budget allows several disks in flight: beyond ~4
/// per blob the gain is small, and more disks in flight use the link better.
pub const CONNECTIONS_PER_DISK: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskStatus {
    Done,
    Failed,
    Interrupted,
}

impl DiskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
        }
    }
}

/// What became of one planned disk.
#[derive(Debug, Clone)]
pub struct DiskResult {
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

/// Chunk buffers the whole run may hold: the engine's memory budget at the default chunk
/// size (24 of 8 MiB). Each download holds `connections + queue_depth + 1` of them, so
/// disks in flight share one budget instead of each taking a full one.
pub const RUN_BUFFERS: usize = (CHUNK_MEMORY_BUDGET / DEFAULT_CHUNK_SIZE) as usize;

/// How a run's connection and memory budgets are shared among disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Disks downloading at once.
    pub slots: usize,
    /// Connections each.
    pub connections: usize,
    /// Chunks each may have waiting for its writer.
    pub queue_depth: usize,
}

/// Shares `concurrency` connections and `buffers` chunk buffers (the memory budget; the
/// run passes [`RUN_BUFFERS`]) among `disks` disks.
///
/// Of the ways to run `s` disks at once — `s` up to `disks` and to about one disk per
/// [`CONNECTIONS_PER_DISK`] connections — it takes the one with the most connections in
/// total, and of equals the one with more disks in flight (more blobs in parallel use the
/// link better). Each extra disk in flight costs buffers of its own (its writer queue and
/// the chunk being written), so a tight budget favours fewer disks with more connections
/// each. Because the choice maximises over a set of ways that only grows when
/// `concurrency`, `buffers` or `disks` grow, the total never shrinks when any of them grows:
/// more `--concurrency` never means fewer connections. A lone disk gets the whole budget.
pub fn split_budget(concurrency: usize, disks: usize, buffers: usize) -> Budget {
    let n = concurrency.max(1);
    let most_slots = (n / n.min(CONNECTIONS_PER_DISK)).clamp(1, disks.max(1));
    let mut best = Budget {
        slots: 1,
        // Never below one connection, whatever the budget: one disk must still move.
        connections: n
            .min(buffers.saturating_sub(DEFAULT_QUEUE_DEPTH + 1))
            .max(1),
        queue_depth: DEFAULT_QUEUE_DEPTH,
    };
    for slots in 2..=most_slots {
        // Several disks in flight: one queued chunk each, plus the one being written.
        let connections = (n / slots).min((buffers / slots).saturating_sub(2));
        if connections >= 1 && slots * connections >= best.slots * best.connections {
            best = Budget {
                slots,
                connections,
                queue_depth: 1,
            };
        }
    }
    best
}

fn key(vm: &str, disk: &str) -> (String, String) {
    (vm.to_ascii_lowercase(), disk.to_ascii_lowercase())
}

/// The ledger's outcome rows for a plan, all pending.
pub fn pending_outcomes(plan: &[PlannedVm]) -> Vec<DiskOutcome> {
    plan.iter()
        .flat_map(|vm| {
            vm.disks.iter().map(|d| DiskOutcome {
                vm: vm.name.clone(),
                disk: d.name.clone(),
                role: match d.role {
                    crate::azure::inventory::DiskRole::Os => "os".into(),
                    crate::azure::inventory::DiskRole::Data => "data".into(),
                },
                lun: d.lun,
                image: Some(d.image.display().to_string()),
                status: "pending".into(),
                bytes_downloaded: 0,
                error: None,
            })
        })
        .collect()
}

fn record(ledger: &Ledger, vm: &str, disk: &PlannedDisk, result: &DiskResult) {
    let r = ledger.update(|rep| {
        if let Some(o) = rep
            .disks
            .iter_mut()
            .find(|o| key(&o.vm, &o.disk) == key(vm, &disk.name))
        {
            o.status = result.status.as_str().into();
            o.bytes_downloaded = result.report.as_ref().map(bytes_downloaded).unwrap_or(0);
            o.error = result.error.clone();
        }
    });
    if let Err(e) = r {
        tracing::error!("{e}");
    }
}

/// Runs the plan; returns one result per planned disk, by (vm, disk) in lower case.
pub async fn run(
    plan: &[PlannedVm],
    ctx: &DiskContext,
    run_id: &str,
) -> BTreeMap<(String, String), DiskResult> {
    let mut results: BTreeMap<(String, String), DiskResult> = BTreeMap::new();

    // Phase 1: prepare every VM (deallocate, snapshots) before any download starts.
    let prepared: Vec<Vec<(String, DiskResult)>> = futures::stream::iter(plan)
        .map(|vm| prepare_vm(ctx, vm, run_id))
        .buffer_unordered(PREPARE_CONCURRENCY)
        .collect()
        .await;
    for failures in prepared {
        for (vm_disk, result) in failures {
            let (vm, disk) = vm_disk.split_once('\u{0}').unwrap_or_default();
            if let Some(d) = plan
                .iter()
                .find(|v| v.name.eq_ignore_ascii_case(vm))
                .and_then(|v| v.disks.iter().find(|d| d.name.eq_ignore_ascii_case(disk)))
            {
                record(&ctx.ledger, vm, d, &result);
            }
            results.insert(key(vm, disk), result);
        }
    }

    // Phase 2: every disk that is ready, a bounded number at a time, each with its share
    // of the connection budget.
    let ready: Vec<(&PlannedVm, &PlannedDisk)> = plan
        .iter()
        .flat_map(|vm| vm.disks.iter().map(move |d| (vm, d)))
        .filter(|(vm, d)| !results.contains_key(&key(&vm.name, &d.name)))
        .collect();
    let budget = split_budget(ctx.connections, ready.len(), RUN_BUFFERS);
    let per_disk = DiskContext {
        connections: budget.connections,
        queue_depth: budget.queue_depth,
        ..ctx.clone()
    };
    let done: Vec<((String, String), DiskResult)> = futures::stream::iter(ready)
        .map(|(vm, d)| {
            let (ctx, vm_name, disk) = (per_disk.clone(), vm.name.clone(), d.clone());
            async move {
                // A task of its own: a panic in one disk's work stops neither the others
                // nor the sweep.
                let task = tokio::spawn({
                    let ctx = ctx.clone();
                    let (vm_name, disk) = (vm_name.clone(), disk.clone());
                    async move { one_disk(&ctx, &vm_name, &disk).await }
                });
                let result = task.await.unwrap_or_else(|e| DiskResult {
                    status: DiskStatus::Failed,
                    report: None,
                    error: Some(format!(
                        "VM {vm_name}, disk {}: task failed: {e}",
                        disk.name
                    )),
                });
                record(&ctx.ledger, &vm_name, &disk, &result);
                (key(&vm_name, &disk.name), result)
            }
        })
        .buffer_unordered(budget.slots)
        .collect()
        .await;
    results.extend(done);

    // Whatever is still recorded as possibly existing goes now.
    sweep(&ctx.arm, &ctx.ledger).await;
    results
}

/// Exports one disk, then deletes its snapshot (grants are revoked by `export_disk`).
async fn one_disk(ctx: &DiskContext, vm: &str, d: &PlannedDisk) -> DiskResult {
    let outcome = export_disk(ctx, vm, d).await;
    if let Source::Snapshot { snapshot, .. } = &d.source {
        delete_snapshot(ctx, &snapshot.id, &snapshot.reference).await;
    }
    match outcome {
        Ok(report) => {
            tracing::info!(
                "{vm}: {} exported to {} ({} fetched)",
                d.name,
                d.image.display(),
                crate::output::units::human_bytes(report.stats.bytes_fetched)
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
pub async fn delete_snapshot(ctx: &DiskContext, id: &str, r: &ResourceRef) {
    let state = match ctx.arm.delete_snapshot(r).await {
        Ok(()) => (ResourceState::Removed, None),
        Err(e) => {
            tracing::warn!("deleting snapshot {r}: {e}");
            (ResourceState::RemoveFailed, Some(e.to_string()))
        }
    };
    let _ = ctx
        .ledger
        .set_state(ResourceKind::Snapshot, id, state.0, state.1);
}

/// Deallocates (if planned) and snapshots every disk of `vm` that needs one. Returns the
/// disks that cannot go on, keyed `vm\0disk`.
async fn prepare_vm(ctx: &DiskContext, vm: &PlannedVm, run_id: &str) -> Vec<(String, DiskResult)> {
    let fail_all = |status: DiskStatus, message: String| {
        vm.disks
            .iter()
            .map(|d| {
                (
                    format!("{}\u{0}{}", vm.name, d.name),
                    DiskResult {
                        status,
                        report: None,
                        error: Some(message.clone()),
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    if ctx.interrupt.is_set() {
        return fail_all(
            DiskStatus::Interrupted,
            "interrupted before it started".into(),
        );
    }
    if vm.deallocate {
        let Some(r) = ResourceRef::from_id(&vm.vm.id) else {
            return fail_all(DiskStatus::Failed, format!("VM {}: bad id", vm.name));
        };
        if let Err(e) = ctx
            .ledger
            .creating(ResourceKind::Deallocation, &vm.vm.id, None)
        {
            return fail_all(DiskStatus::Failed, e.to_string());
        }
        tracing::warn!(
            "{}: deallocating the VM (--consistency deallocate); it stays deallocated after the export",
            vm.name
        );
        // Deallocation can take minutes: Ctrl-C stops waiting for it (it goes on in Azure
        // either way, and the report says it was asked for).
        let outcome = tokio::select! {
            r = ctx.arm.deallocate(&r) => r,
            () = ctx.interrupt.cancelled() => {
                return fail_all(
                    DiskStatus::Interrupted,
                    format!("VM {}: interrupted while it was being deallocated (that goes on in Azure)", vm.name),
                );
            }
        };
        if let Err(e) = outcome {
            let _ = ctx.ledger.set_state(
                ResourceKind::Deallocation,
                &vm.vm.id,
                ResourceState::RemoveFailed,
                Some(e.to_string()),
            );
            return fail_all(
                DiskStatus::Failed,
                format!("VM {}: deallocate: {e}", vm.name),
            );
        }
        let _ = ctx.ledger.set_state(
            ResourceKind::Deallocation,
            &vm.vm.id,
            ResourceState::Exists,
            None,
        );
    }
    let snapshots = vm.disks.iter().filter_map(|d| match &d.source {
        Source::Snapshot { snapshot, disk_id } => Some((d, snapshot, disk_id)),
        _ => None,
    });
    let created = futures::future::join_all(snapshots.map(|(d, snapshot, disk_id)| async move {
        let fail = |message: String| {
            Some((
                format!("{}\u{0}{}", vm.name, d.name),
                DiskResult {
                    status: DiskStatus::Failed,
                    report: None,
                    error: Some(format!("VM {}, disk {}: {message}", vm.name, d.name)),
                },
            ))
        };
        if ctx.interrupt.is_set() {
            return Some((
                format!("{}\u{0}{}", vm.name, d.name),
                DiskResult {
                    status: DiskStatus::Interrupted,
                    report: None,
                    error: Some("interrupted before its snapshot".into()),
                },
            ));
        }
        if let Err(e) =
            ctx.ledger
                .creating(ResourceKind::Snapshot, &snapshot.id, Some(disk_id.as_str()))
        {
            return fail(e.to_string());
        }
        let tags = BTreeMap::from([
            (RUN_TAG.to_string(), run_id.to_string()),
            (SOURCE_TAG.to_string(), disk_id.clone()),
        ]);
        match ctx
            .arm
            .create_snapshot(&snapshot.reference, &vm.vm.location, disk_id, false, &tags)
            .await
        {
            Ok(_) => {
                let _ = ctx.ledger.set_state(
                    ResourceKind::Snapshot,
                    &snapshot.id,
                    ResourceState::Exists,
                    None,
                );
                tracing::info!("{}: snapshot {} created", vm.name, snapshot.reference);
                None
            }
            // Left as "creating": the sweep deletes it if it exists after all.
            Err(e) => fail(format!("snapshot: {e}")),
        }
    }))
    .await;
    created.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_connections_and_memory() {
        for n in 1..=256 {
            for disks in 0..40 {
                let b = split_budget(n, disks, RUN_BUFFERS);
                assert!(b.slots * b.connections <= n, "{n}/{disks}: {b:?}");
                assert!(b.slots >= 1 && b.connections >= 1 && b.slots <= disks.max(1));
                if b.slots > 1 {
                    let buffers = b.slots * (b.connections + b.queue_depth + 1);
                    assert!(buffers <= RUN_BUFFERS, "{n}/{disks}: {b:?}");
                }
            }
        }
        let b = |n, d| {
            let x = split_budget(n, d, RUN_BUFFERS);
            (x.slots, x.connections)
        };
        assert_eq!(b(16, 10), (4, 4));
        assert_eq!(b(16, 2), (2, 8));
        assert_eq!(b(16, 1), (1, 16));
        assert_eq!(b(2, 5), (1, 2));
        // Was (8, 1): 8 connections in total for 64 asked, half of what 16 gave.
        assert_eq!(b(64, 10), (2, 10));
    }

    fn total(n: usize, disks: usize, buffers: usize) -> usize {
        let b = split_budget(n, disks, buffers);
        b.slots * b.connections
    }

    proptest::proptest! {
        /// More connections asked, more memory or more disks never give fewer connections
        /// in total, for every disk count; the memory budget always holds.
        #[test]
        fn the_total_is_monotonic_in_concurrency_memory_and_disks(
            n in 1usize..=256,
            disks in 0usize..=64,
            buffers in 1usize..=128,
        ) {
            let t = total(n, disks, buffers);
            proptest::prop_assert!(total(n + 1, disks, buffers) >= t, "--concurrency {}", n + 1);
            proptest::prop_assert!(total(n, disks, buffers + 1) >= t, "buffers {}", buffers + 1);
            proptest::prop_assert!(total(n, disks + 1, buffers) >= t, "disks {}", disks + 1);
            let b = split_budget(n, disks, buffers);
            proptest::prop_assert!(b.slots * b.connections <= n);
            if b.slots > 1 {
                proptest::prop_assert!(b.slots * (b.connections + b.queue_depth + 1) <= buffers);
            }
        }
    }

    #[test]
    fn the_total_is_monotonic_for_every_disk_count_at_the_run_budget() {
        for disks in 0..=64 {
            let mut last = 0;
            for n in 1..=256 {
                let t = total(n, disks, RUN_BUFFERS);
                assert!(
                    t >= last,
                    "{disks} disks: --concurrency {n} gives {t}, {} gave {last}",
                    n - 1
                );
                last = t;
            }
        }
    }
}
