//! `cleanup --migration DIR`: ends a warm migration that will not be cut over (or whose
//! cutover failed half-way) by removing every snapshot its state files name — kept,
//! pending and retired — revoking their grants first (Azure refuses to delete a snapshot
//! with an active SAS). The state files are input anyone could have edited, so a snapshot
//! is deleted only if Azure has it with this tool's name prefix and run tag; a 404 counts
//! as removed, so running it twice is safe. The states are rewritten without the
//! snapshots: a later `--warm` pass refuses those disks instead of diffing against nothing.

use std::path::{Path, PathBuf};

use super::state::{STATE_FILE, StateError, read};
use crate::azure::arm::client::{AccessTarget, ResourceRef};
use crate::azure::arm::{ArmClient, ArmError, ResourceId, ResourceType};
use crate::export::ledger::write_atomic;
use crate::export::naming::{SNAPSHOT_PREFIX, now_rfc3339};
use crate::export::run::RUN_TAG;

/// What `cleanup --migration` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationCleanup {
    pub state_files: Vec<PathBuf>,
    pub snapshots_deleted: usize,
    /// Named by a state file but not this tool's: left alone, with why.
    pub refused: Vec<String>,
    pub failed: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationCleanupError {
    #[error("--migration {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--migration {0}: no migration.json in its VM folders: not a warm migration's output directory"
    )]
    NoState(PathBuf),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The state files of the migration in `dir`: `dir/<vm>/migration.json`.
pub fn state_files(dir: &Path) -> Result<Vec<PathBuf>, MigrationCleanupError> {
    let err = |source| MigrationCleanupError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .filter_map(Result::ok)
        .map(|e| e.path().join(STATE_FILE))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    Ok(found)
}

/// Removes every snapshot the migration in `dir` names (see the module note).
pub async fn cleanup_migration(
    arm: &ArmClient,
    dir: &Path,
) -> Result<MigrationCleanup, MigrationCleanupError> {
    let files = state_files(dir)?;
    if files.is_empty() {
        return Err(MigrationCleanupError::NoState(dir.to_path_buf()));
    }
    let mut out = MigrationCleanup::default();
    for path in files {
        let Some(mut state) = read(&path)? else {
            continue;
        };
        for disk in &mut state.disks {
            let named: Vec<ResourceId> = disk
                .kept_snapshot
                .iter()
                .chain(&disk.pending_snapshot)
                .chain(&disk.retired)
                .cloned()
                .collect();
            let mut left = Vec::new();
            for id in named {
                match remove(arm, &id).await {
                    Ok(true) => out.snapshots_deleted += 1,
                    Ok(false) => {}
                    Err(Removal::Refused(why)) => out.refused.push(why),
                    Err(Removal::Failed(e)) => {
                        out.failed.push(format!("{id}: {e}"));
                        left.push(id);
                    }
                }
            }
            disk.kept_snapshot = None;
            disk.pending_snapshot = None;
            disk.retired = left;
        }
        state.updated_at = now_rfc3339();
        let mut json = serde_json::to_vec_pretty(&state).expect("the state serialises");
        json.push(b'\n');
        write_atomic(&path, &json).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        out.state_files.push(path);
    }
    Ok(out)
}

enum Removal {
    Refused(String),
    Failed(ArmError),
}

/// Revokes access on and deletes snapshot `id` if it is this tool's. Ok(false): it was
/// gone already.
async fn remove(arm: &ArmClient, id: &ResourceId) -> Result<bool, Removal> {
    if !id.is(&ResourceType::Snapshot) || !id.name().starts_with(SNAPSHOT_PREFIX) {
        return Err(Removal::Refused(format!(
            "{id}: not a snapshot this tool names ({SNAPSHOT_PREFIX}…)"
        )));
    }
    let r = ResourceRef::from(id);
    let snapshot = match arm.get_snapshot(&r).await {
        Ok(s) => s,
        Err(e) if e.status() == Some(404) => return Ok(false),
        Err(e) => return Err(Removal::Failed(e)),
    };
    if !snapshot
        .tags
        .as_ref()
        .is_some_and(|t| t.contains_key(RUN_TAG))
    {
        return Err(Removal::Refused(format!(
            "{id}: has no {RUN_TAG} tag, so this tool did not make it"
        )));
    }
    match arm.revoke_access(&AccessTarget::Snapshot(r.clone())).await {
        Err(e) if e.status() != Some(404) => return Err(Removal::Failed(e)),
        _ => {}
    }
    arm.delete_snapshot(&r).await.map_err(Removal::Failed)?;
    tracing::info!("snapshot {id} deleted");
    Ok(true)
}
