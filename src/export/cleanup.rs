//! Removing what a run created: the sweep at the end of every export, and `cleanup
//! --run-id` for a run that was killed before its sweep.
//!
//! Two sources, because either may be incomplete: the run report (it names grants on
//! disks, which carry no tag, and resources recorded as `creating` whose create request
//! may or may not have arrived), and the tag `azure2kvm-run=<id>` on snapshots (found even
//! when the report is lost). Grants go first (Azure refuses to delete a snapshot with an
//! active SAS). A 404 counts as removed, so running cleanup twice is safe.

use std::collections::BTreeSet;

use super::disk::grant_target;
use super::ledger::{Ledger, ResourceKind, ResourceState};
use super::run::RUN_TAG;
use crate::azure::arm::client::{AccessTarget, ResourceRef};
use crate::azure::arm::{ArmClient, ArmError};

/// What a cleanup did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupSummary {
    pub grants_revoked: usize,
    pub snapshots_deleted: usize,
    /// Resources that could not be removed, with why.
    pub failed: Vec<String>,
}

fn gone_or_ok(r: Result<(), ArmError>) -> Result<(), ArmError> {
    match r {
        Err(e) if e.status() == Some(404) => Ok(()),
        other => other,
    }
}

/// Revokes every grant and deletes every snapshot the ledger records as possibly
/// existing; records each outcome. Returns what it did.
pub async fn sweep(arm: &ArmClient, ledger: &Ledger) -> CleanupSummary {
    let mut summary = CleanupSummary::default();
    let outstanding: Vec<_> = ledger
        .report()
        .resources
        .into_iter()
        .filter(|r| r.outstanding())
        .collect();
    // Grants first: a snapshot with an active SAS cannot be deleted.
    let mut seen = BTreeSet::new();
    for r in outstanding
        .iter()
        .filter(|r| r.kind == ResourceKind::AccessGrant)
    {
        if !seen.insert(r.id.to_ascii_lowercase()) {
            continue;
        }
        let Some(target) = grant_target(&r.id) else {
            continue;
        };
        let result = gone_or_ok(arm.revoke_access(&target).await);
        note(
            ledger,
            &mut summary,
            ResourceKind::AccessGrant,
            &r.id,
            result,
        );
    }
    for r in outstanding
        .iter()
        .filter(|r| r.kind == ResourceKind::Snapshot)
    {
        let Some(reference) = ResourceRef::from_id(&r.id) else {
            continue;
        };
        let result = delete_with_revoke(arm, &reference).await;
        note(ledger, &mut summary, ResourceKind::Snapshot, &r.id, result);
    }
    summary
}

/// Deletes a snapshot; on 409 (an active grant someone else's sweep missed), revokes
/// access and tries once more.
async fn delete_with_revoke(arm: &ArmClient, r: &ResourceRef) -> Result<(), ArmError> {
    match arm.delete_snapshot(r).await {
        Err(e) if e.status() == Some(409) => {
            gone_or_ok(arm.revoke_access(&AccessTarget::Snapshot(r.clone())).await)?;
            arm.delete_snapshot(r).await
        }
        other => other,
    }
}

fn note(
    ledger: &Ledger,
    summary: &mut CleanupSummary,
    kind: ResourceKind,
    id: &str,
    result: Result<(), ArmError>,
) {
    match result {
        Ok(()) => {
            match kind {
                ResourceKind::AccessGrant => summary.grants_revoked += 1,
                _ => summary.snapshots_deleted += 1,
            }
            let _ = ledger.set_state(kind, id, ResourceState::Removed, None);
        }
        Err(e) => {
            tracing::error!("cannot remove {id}: {e}");
            summary.failed.push(format!("{id}: {e}"));
            let _ = ledger.set_state(kind, id, ResourceState::RemoveFailed, Some(e.to_string()));
        }
    }
}

/// `cleanup --run-id`: the report's outstanding resources (if there is a report), then
/// every snapshot in `subscription` tagged with the run id.
pub async fn cleanup_run(
    arm: &ArmClient,
    run_id: &str,
    subscription: &str,
    ledger: Option<&Ledger>,
) -> Result<CleanupSummary, ArmError> {
    let mut summary = match ledger {
        Some(l) => sweep(arm, l).await,
        None => CleanupSummary::default(),
    };
    let tagged: Vec<_> = arm
        .list_snapshots(subscription, None)
        .await?
        .into_iter()
        .filter(|s| {
            s.tags
                .as_ref()
                .and_then(|t| t.get(RUN_TAG))
                .is_some_and(|v| v == run_id)
        })
        .collect();
    for snap in tagged {
        let Some(r) = ResourceRef::from_id(&snap.id) else {
            continue;
        };
        let result = delete_with_revoke(arm, &r).await;
        match ledger {
            Some(l) => note(l, &mut summary, ResourceKind::Snapshot, &snap.id, result),
            None => match result {
                Ok(()) => summary.snapshots_deleted += 1,
                Err(e) => summary.failed.push(format!("{}: {e}", snap.id)),
            },
        }
    }
    Ok(summary)
}
