//! Waiting for a Premium SSD v2 or Ultra snapshot's background copy: Azure refuses a grant
//! on it until `completionPercent` is 100 (Microsoft Learn, "Create an incremental snapshot
//! for managed disks", Check snapshot status). The snapshot is polled with a GET whose
//! interval doubles from [`FIRST_POLL`] to [`MAX_POLL`] (a copy of a large disk takes
//! hours; ARM reads are budgeted per subscription), progress is logged as it changes, and
//! Ctrl-C ends the wait at once. Copies are bounded by a semaphore of
//! [`super::disk_kind::MAX_BACKGROUND_COPIES`] permits held from the snapshot's creation
//! until its copy is done, so a larger fleet queues instead of failing.

use std::time::Duration;

use crate::azure::arm::ResourceId;
use crate::azure::arm::client::ResourceRef;
use crate::azure::arm::models::Snapshot;
use crate::export::disk::DiskContext;

pub const FIRST_POLL: Duration = Duration::from_millis(250);
pub const MAX_POLL: Duration = Duration::from_secs(30);

/// The wait before poll `n` (0-based): doubling from [`FIRST_POLL`], at most [`MAX_POLL`].
pub fn poll_delay(n: u32) -> Duration {
    FIRST_POLL
        .checked_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX))
        .unwrap_or(MAX_POLL)
        .min(MAX_POLL)
}

/// Where a snapshot's copy stands, from its GET.
#[derive(Debug, Clone, PartialEq)]
pub enum CopyState {
    /// Percent done, below 100.
    Copying(f64),
    Done,
    Failed(String),
}

/// A snapshot that reports no `completionPercent` has no background copy (Azure: "other
/// disk types always report 100%"). A failed provisioning state ends the wait.
pub fn copy_state(s: &Snapshot) -> CopyState {
    let props = s.properties.clone().unwrap_or_default();
    if props
        .provisioning_state
        .as_deref()
        .is_some_and(|p| p.eq_ignore_ascii_case("Failed"))
    {
        return CopyState::Failed("its provisioning state is Failed".into());
    }
    match props.completion_percent {
        Some(p) if p.is_finite() && p < 100.0 => CopyState::Copying(p.max(0.0)),
        _ => CopyState::Done,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyWaitError {
    #[error("interrupted while its snapshot's background copy ran")]
    Interrupted,
    #[error("background copy of snapshot {snapshot}: {message}")]
    Failed { snapshot: String, message: String },
}

/// Polls `snapshot` until its background copy is done. `vm`/`disk` name it in the logs.
pub async fn wait(
    ctx: &DiskContext,
    snapshot: &ResourceId,
    vm: &str,
    disk: &str,
) -> Result<(), CopyWaitError> {
    let reference = ResourceRef::from(snapshot);
    let fail = |message: String| CopyWaitError::Failed {
        snapshot: reference.to_string(),
        message,
    };
    let mut last: Option<u64> = None;
    for n in 0.. {
        let got = ctx
            .interrupt
            .unless_cancelled(ctx.arm.get_snapshot(&reference))
            .await
            .ok_or(CopyWaitError::Interrupted)?
            .map_err(|e| fail(e.to_string()))?;
        match copy_state(&got) {
            CopyState::Done => {
                tracing::info!("{vm}: {disk}: snapshot background copy complete");
                return Ok(());
            }
            CopyState::Failed(why) => return Err(fail(why)),
            CopyState::Copying(p) => {
                let whole = p.floor() as u64;
                if last != Some(whole) {
                    tracing::info!("{vm}: {disk}: snapshot background copy {whole}%");
                    last = Some(whole);
                }
            }
        }
        ctx.interrupt
            .unless_cancelled(tokio::time::sleep(poll_delay(n)))
            .await
            .ok_or(CopyWaitError::Interrupted)?;
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(state: Option<&str>, pct: Option<f64>) -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/snapshots/x",
            "name": "x",
            "properties": {"provisioningState": state, "completionPercent": pct}
        }))
        .unwrap()
    }

    #[test]
    fn the_poll_interval_doubles_to_a_cap() {
        assert_eq!(poll_delay(0), FIRST_POLL);
        assert_eq!(poll_delay(1), FIRST_POLL * 2);
        assert_eq!(poll_delay(3), FIRST_POLL * 8);
        assert_eq!(poll_delay(7), MAX_POLL);
        assert_eq!(poll_delay(u32::MAX), MAX_POLL);
    }

    #[test]
    fn copy_state_reads_percent_and_failure() {
        assert_eq!(
            copy_state(&snap(Some("Succeeded"), Some(33.0))),
            CopyState::Copying(33.0)
        );
        assert_eq!(
            copy_state(&snap(Some("Succeeded"), Some(100.0))),
            CopyState::Done
        );
        assert_eq!(copy_state(&snap(Some("Succeeded"), None)), CopyState::Done);
        assert_eq!(copy_state(&snap(None, Some(-3.0))), CopyState::Copying(0.0));
        assert!(matches!(
            copy_state(&snap(Some("Failed"), Some(40.0))),
            CopyState::Failed(_)
        ));
    }
}
