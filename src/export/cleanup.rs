//! Removing what a run created: the sweep at the end of every export, and `cleanup
//! --run-id` for a run that was killed before its sweep.
//!
//! Two sources, because either may be incomplete: the run report (it names grants on
//! disks, which carry no tag, and resources recorded as `creating` whose create request
//! may or may not have arrived), and the tag `azure2kvm-run=<id>` on snapshots (found even
//! when the report is lost). Grants go first (Azure refuses to delete a snapshot with an
//! active SAS). A 404 counts as removed, so running cleanup twice is safe.

use std::collections::BTreeSet;

use super::ledger::{Ledger, Resource, ResourceKind, ResourceState};
use super::naming::snapshot_prefix;
use super::run::RUN_TAG;
use crate::azure::arm::client::{AccessTarget, ResourceRef};
use crate::azure::arm::models::Snapshot;
use crate::azure::arm::{ArmClient, ArmError, ResourceId, ResourceType};

/// What a cleanup did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupSummary {
    pub grants_revoked: usize,
    pub snapshots_deleted: usize,
    /// Resources that could not be removed, with why.
    pub failed: Vec<String>,
    /// Resources a report named that are not this run's: left alone, with why.
    pub refused: Vec<String>,
    /// The snapshots dealt with (deleted, or found gone).
    pub snapshots: BTreeSet<ResourceId>,
}

/// Which snapshots a sweep may touch (delete, or revoke access on). A snapshot is the
/// run's only if its name starts with the run's prefix and — when the ledger was read
/// from a file, which anyone could have edited — Azure lists it with the run's tag.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    run_id: String,
    prefix: String,
    /// The snapshots Azure lists with the run's tag; None: the ledger is this process's
    /// own, so the name check suffices.
    tagged: Option<BTreeSet<ResourceId>>,
    /// Snapshots of earlier runs this run may touch too: a warm pass grants read on the
    /// snapshot the pass before it kept.
    also: BTreeSet<ResourceId>,
}

/// The live sweep's policy: the ledger is this run's own memory.
pub fn only_this_runs_snapshots(run_id: &str) -> SnapshotPolicy {
    SnapshotPolicy {
        run_id: run_id.to_string(),
        prefix: snapshot_prefix(run_id),
        tagged: None,
        also: BTreeSet::new(),
    }
}

/// What the policy says about a snapshot id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ours,
    /// Named like ours but not listed with the run's tag: already gone (or never made).
    Gone,
    Refused(String),
}

impl SnapshotPolicy {
    /// Lets the sweep touch `ids` too (see [`SnapshotPolicy::also`]'s field).
    pub fn also(mut self, ids: impl IntoIterator<Item = ResourceId>) -> Self {
        self.also.extend(ids);
        self
    }

    fn judge(&self, id: &ResourceId) -> Verdict {
        if self.also.contains(id) {
            return Verdict::Ours;
        }
        if !id.is(&ResourceType::Snapshot) {
            return Verdict::Refused(format!("{id} is a {}, not a snapshot", id.resource_type()));
        }
        if !id.name().starts_with(&self.prefix) {
            return Verdict::Refused(format!(
                "{id}: not a snapshot of run {} (its name does not start with {})",
                self.run_id, self.prefix
            ));
        }
        match &self.tagged {
            Some(tagged) if !tagged.contains(id) => Verdict::Gone,
            _ => Verdict::Ours,
        }
    }
}

fn gone_or_ok(r: Result<(), ArmError>) -> Result<(), ArmError> {
    match r {
        Err(e) if e.status() == Some(404) => Ok(()),
        other => other,
    }
}

/// Revokes every grant and deletes every snapshot the ledger records as possibly
/// existing, where `policy` allows; records each outcome. Returns what it did.
pub async fn sweep(arm: &ArmClient, ledger: &Ledger, policy: &SnapshotPolicy) -> CleanupSummary {
    let mut summary = CleanupSummary::default();
    let outstanding: Vec<Resource> = ledger
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
        if !seen.insert(r.id.clone()) {
            continue;
        }
        let Some(target) = AccessTarget::of(&r.id) else {
            refuse(
                &mut summary,
                format!("access grant on {}: not a disk or snapshot", r.id),
            );
            continue;
        };
        if matches!(target, AccessTarget::Snapshot(_)) {
            match policy.judge(&r.id) {
                Verdict::Ours => {}
                Verdict::Gone => {
                    note(
                        ledger,
                        &mut summary,
                        ResourceKind::AccessGrant,
                        &r.id,
                        Ok(()),
                    );
                    continue;
                }
                Verdict::Refused(why) => {
                    refuse(&mut summary, format!("access grant: {why}"));
                    continue;
                }
            }
        }
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
        let result = match policy.judge(&r.id) {
            Verdict::Ours => delete_with_revoke(arm, &ResourceRef::from(&r.id)).await,
            Verdict::Gone => Ok(()),
            Verdict::Refused(why) => {
                refuse(&mut summary, why);
                continue;
            }
        };
        if result.is_ok() {
            summary.snapshots.insert(r.id.clone());
        }
        note(ledger, &mut summary, ResourceKind::Snapshot, &r.id, result);
    }
    summary
}

fn refuse(summary: &mut CleanupSummary, why: String) {
    tracing::error!("left alone: {why}");
    summary.refused.push(why);
}
/// Deletes a snapshot; on 409 (an active grant someone else's sweep missed), revokes
/// access and tries once more.
pub async fn delete_with_revoke(arm: &ArmClient, r: &ResourceRef) -> Result<(), ArmError> {
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
    id: &ResourceId,
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

/// `cleanup --run-id`: every snapshot tagged with the run id and named with its prefix,
/// in `subscription` and in every subscription the report's snapshots name, and the
/// report's outstanding grants (if there is a report). The report is an input file, not a
/// trusted one: a snapshot it names is deleted only if Azure lists it with the run's tag
/// and its name has the run's prefix.
pub async fn cleanup_run(
    arm: &ArmClient,
    run_id: &str,
    subscription: &str,
    ledger: Option<&Ledger>,
) -> Result<CleanupSummary, ArmError> {
    let mut subscriptions = BTreeSet::from([subscription.to_ascii_lowercase()]);
    if let Some(l) = ledger {
        subscriptions.extend(
            l.report()
                .resources
                .iter()
                .filter(|r| r.id.is(&ResourceType::Snapshot))
                .map(|r| r.id.subscription().to_ascii_lowercase()),
        );
    }
    let mut policy = only_this_runs_snapshots(run_id);
    let mut tagged = BTreeSet::new();
    for sub in &subscriptions {
        let found = arm.list_snapshots(sub, None).await?;
        tagged.extend(runs_snapshots(&policy, found));
    }
    policy.tagged = Some(tagged.clone());
    // Grants on snapshots the report does not name cannot be found (they carry no tag);
    // deleting such a snapshot revokes on the 409 Azure answers.
    let mut summary = match ledger {
        Some(l) => sweep(arm, l, &policy).await,
        None => CleanupSummary::default(),
    };
    for id in tagged.difference(&summary.snapshots.clone()) {
        let result = delete_with_revoke(arm, &ResourceRef::from(id)).await;
        match ledger {
            Some(l) => note(l, &mut summary, ResourceKind::Snapshot, id, result),
            None => match result {
                Ok(()) => summary.snapshots_deleted += 1,
                Err(e) => summary.failed.push(format!("{id}: {e}")),
            },
        }
    }
    Ok(summary)
}

/// The listed snapshots that carry the run's tag and the run's name prefix; any with the
/// tag but another name are reported and left alone.
fn runs_snapshots(policy: &SnapshotPolicy, listed: Vec<Snapshot>) -> Vec<ResourceId> {
    listed
        .into_iter()
        .filter(|s| {
            s.tags
                .as_ref()
                .and_then(|t| t.get(RUN_TAG))
                .is_some_and(|v| *v == policy.run_id)
        })
        .filter_map(|s| match s.id.parse::<ResourceId>() {
            Ok(id) if policy.judge(&id) == Verdict::Ours => Some(id),
            Ok(id) => {
                tracing::warn!(
                    "{id} carries the tag {RUN_TAG}={} but not the run's name: left alone",
                    policy.run_id
                );
                None
            }
            Err(e) => {
                tracing::warn!("snapshot list: {e}");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(rg: &str, name: &str) -> ResourceId {
        format!("/subscriptions/s/resourceGroups/{rg}/providers/Microsoft.Compute/snapshots/{name}")
            .parse()
            .unwrap()
    }

    #[test]
    fn only_the_runs_named_and_tagged_snapshots_are_ours() {
        let run = "20261127t103000z-9f3a0c1d2e4b5a69";
        let mine = snap("snapshots", &format!("a2k-{run}-web-01-os-1a2b3c4d"));
        let other = snap(
            "rg",
            "a2k-20261127t103000z-0000000000000000-web-01-os-1a2b3c4d",
        );
        let policy = only_this_runs_snapshots(run);
        assert_eq!(policy.judge(&mine), Verdict::Ours);
        assert!(matches!(policy.judge(&other), Verdict::Refused(_)));
        // A disk, even in a group named "snapshots", is never deleted as a snapshot.
        let disk: ResourceId = format!(
            "/subscriptions/s/resourceGroups/snapshots/providers/Microsoft.Compute/disks/a2k-{run}-x"
        )
        .parse()
        .unwrap();
        assert!(matches!(policy.judge(&disk), Verdict::Refused(_)));
        // Read from a file: the name is not enough, Azure must list it with the tag.
        let from_file = SnapshotPolicy {
            tagged: Some(BTreeSet::from([mine.clone()])),
            ..policy.clone()
        };
        assert_eq!(from_file.judge(&mine), Verdict::Ours);
        let untagged = snap("rg", &format!("a2k-{run}-db-01-os-1a2b3c4d"));
        assert_eq!(from_file.judge(&untagged), Verdict::Gone);
    }
}
