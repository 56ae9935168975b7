//! The state of a warm migration: `DIR/<vm>/migration.json`, one per VM folder.
//!
//! A warm pass fetches only what changed since the snapshot the previous pass kept, so it
//! must know, per disk, which snapshot that was, which disk (by `uniqueId`: a disk deleted
//! and re-created under its name cannot be diffed) and which image it updates. One file per
//! VM, not one per directory: the shards of a fleet (`--shard I/N`) run as separate
//! processes into one output directory and split it by VM, so no two processes ever write
//! the same state file. Every change is written atomically (temporary file, fsync, rename):
//! a crash leaves the old or the new state, never half of one.
//!
//! A pass records its new snapshot as `pending` before the image is touched, and moves it
//! to `kept` only once the image is durable: a pass interrupted in between (Ctrl-C, kill -9)
//! is finished by the next run with the same two snapshots, and the snapshot the image was
//! last complete at is never deleted before that.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::azure::arm::ResourceId;
use crate::export::ledger::write_atomic;
use crate::export::naming::now_rfc3339;
use crate::export::plan::DiskKey;
use crate::image::sink::ImageFormat;

/// The state file's name in each VM folder.
pub const STATE_FILE: &str = "migration.json";
/// The schema this build writes and reads; a newer file is refused, not misread.
pub const STATE_VERSION: u32 = 1;
/// Azure allows at most this many incremental snapshots of one disk …
pub const SNAPSHOTS_PER_WINDOW: usize = 7;
/// … in this many seconds.
pub const SNAPSHOT_WINDOW_SECS: u64 = 300;

/// One VM's migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationState {
    pub version: u32,
    pub vm: String,
    pub vm_id: ResourceId,
    pub created_at: String,
    pub updated_at: String,
    /// Set by the cutover that finished every disk: the migration is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_over_at: Option<String>,
    /// From the deallocation request (or the start of the cutover when the VM was stopped
    /// already) to the last byte durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_seconds: Option<f64>,
    pub disks: Vec<DiskState>,
}

/// How a pass brought an image up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassKind {
    /// Every written page fetched (the first pass, or a fallback).
    Full,
    /// Only the pages changed since the kept snapshot.
    Diff,
}

/// One disk's migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskState {
    /// None: the OS disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u32>,
    pub disk: String,
    pub disk_id: ResourceId,
    /// The disk's `uniqueId` when the kept snapshot was taken (its snapshot's
    /// `sourceUniqueId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_unique_id: Option<String>,
    /// The disk's size when the kept snapshot was taken.
    pub disk_size_bytes: u64,
    /// The snapshot the image equals; None once the migration is cut over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_snapshot: Option<ResourceId>,
    /// A pass under way: its new snapshot (the image may hold part of its changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_snapshot: Option<ResourceId>,
    /// Image path relative to the output directory.
    pub image: PathBuf,
    pub format: ImageFormat,
    pub virtual_size: u64,
    pub logical_sector_size: u32,
    /// Passes completed.
    pub passes: u32,
    /// Bytes fetched by every pass so far.
    pub bytes_fetched: u64,
    pub last_pass: Option<PassRecord>,
    pub first_pass_at: String,
    pub last_pass_at: String,
    /// Unix seconds of the incremental snapshots taken in the last
    /// [`SNAPSHOT_WINDOW_SECS`] (Azure's per-disk limit).
    #[serde(default)]
    pub recent_snapshots: Vec<u64>,
    /// Snapshots a pass replaced whose deletion failed: the next pass (or `cleanup
    /// --migration`) deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<ResourceId>,
}

/// What the last pass of a disk did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassRecord {
    pub kind: PassKind,
    /// Why a later pass was full (the kept snapshot gone, the disk re-created, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub run_id: String,
    pub bytes_fetched: u64,
    pub bytes_changed: u64,
    pub bytes_cleared: u64,
}

impl DiskState {
    /// True when `key` (a disk of `vm_id`) names this disk.
    pub fn is(&self, key: &DiskKey) -> bool {
        self.lun == key.lun
    }

    /// Snapshot times still inside Azure's window at `now` (unix seconds).
    pub fn snapshots_in_window(&self, now: u64) -> usize {
        self.recent_snapshots
            .iter()
            .filter(|t| now.saturating_sub(**t) < SNAPSHOT_WINDOW_SECS)
            .count()
    }

    /// Records a snapshot taken at `now`, forgetting those out of the window.
    pub fn note_snapshot(&mut self, now: u64) {
        self.recent_snapshots
            .retain(|t| now.saturating_sub(*t) < SNAPSHOT_WINDOW_SECS);
        self.recent_snapshots.push(now);
    }
}

/// When a disk with these snapshot times may be snapshotted again: None now, else the
/// unix second its oldest snapshot leaves the window.
pub fn next_snapshot_allowed(times: &[u64], now: u64) -> Option<u64> {
    let mut inside: Vec<u64> = times
        .iter()
        .copied()
        .filter(|t| now.saturating_sub(*t) < SNAPSHOT_WINDOW_SECS)
        .collect();
    if inside.len() < SNAPSHOTS_PER_WINDOW {
        return None;
    }
    inside.sort_unstable();
    Some(inside[inside.len() - SNAPSHOTS_PER_WINDOW] + SNAPSHOT_WINDOW_SECS)
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("migration state {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("migration state {path} is not a state file of this tool: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "migration state {path} has version {found}; this build reads version {STATE_VERSION} (use the azure2kvm that wrote it)"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("migration state {path} belongs to VM {found}, not {expected}")]
    OtherVm {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// Reads a state file; None when there is none.
pub fn read(path: &Path) -> Result<Option<MigrationState>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    // The version first, so a newer schema is named as such rather than as bad JSON.
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let parse = |message: String| StateError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let v: Versioned = serde_json::from_slice(&bytes).map_err(|e| parse(e.to_string()))?;
    if v.version != STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: v.version,
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| parse(e.to_string()))
}

/// One VM's state file, live: every change is on disk before [`StateFile::update`]
/// returns. Disks of the VM run in parallel, hence the lock.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    state: Mutex<MigrationState>,
}

impl StateFile {
    /// The state in `vm_dir` for VM `vm_id`, or a new, empty one (written on first update).
    pub fn open(vm_dir: &Path, vm: &str, vm_id: &ResourceId) -> Result<Self, StateError> {
        let path = vm_dir.join(STATE_FILE);
        let state = match read(&path)? {
            Some(s) if s.vm_id != *vm_id => {
                return Err(StateError::OtherVm {
                    path,
                    found: s.vm_id.to_string(),
                    expected: vm_id.to_string(),
                });
            }
            Some(s) => s,
            None => MigrationState {
                version: STATE_VERSION,
                vm: vm.to_string(),
                vm_id: vm_id.clone(),
                created_at: now_rfc3339(),
                updated_at: now_rfc3339(),
                cut_over_at: None,
                downtime_seconds: None,
                disks: Vec::new(),
            },
        };
        Ok(Self {
            path,
            state: Mutex::new(state),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the state as it stands.
    pub fn get(&self) -> MigrationState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The state of disk `key`, if the migration has one.
    pub fn disk(&self, key: &DiskKey) -> Option<DiskState> {
        self.get().disks.into_iter().find(|d| d.is(key))
    }

    /// Applies `change` and writes the state durably before returning.
    pub fn update(&self, change: impl FnOnce(&mut MigrationState)) -> Result<(), StateError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut state);
        state.updated_at = now_rfc3339();
        let mut json = serde_json::to_vec_pretty(&*state).expect("the state serialises");
        json.push(b'\n');
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        write_atomic(&self.path, &json).map_err(|source| StateError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Changes disk `key`'s state (which must exist).
    pub fn update_disk(
        &self,
        key: &DiskKey,
        change: impl FnOnce(&mut DiskState),
    ) -> Result<(), StateError> {
        self.update(|s| {
            if let Some(d) = s.disks.iter_mut().find(|d| d.is(key)) {
                change(d);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_id() -> ResourceId {
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01"
            .parse()
            .unwrap()
    }

    fn disk_state() -> DiskState {
        DiskState {
            lun: None,
            disk: "web-01-os".into(),
            disk_id:
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/web-01-os"
                    .parse()
                    .unwrap(),
            disk_unique_id: Some("u1".into()),
            disk_size_bytes: 1 << 30,
            kept_snapshot: None,
            pending_snapshot: None,
            image: "web-01/web-01-os.qcow2".into(),
            format: ImageFormat::Qcow2,
            virtual_size: 1 << 30,
            logical_sector_size: 512,
            passes: 1,
            bytes_fetched: 5,
            last_pass: None,
            first_pass_at: now_rfc3339(),
            last_pass_at: now_rfc3339(),
            recent_snapshots: vec![],
            retired: vec![],
        }
    }

    #[test]
    fn changes_are_on_disk_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(dir.path(), "web-01", &vm_id()).unwrap();
        assert!(
            !f.path().exists(),
            "nothing written before the first change"
        );
        f.update(|s| s.disks.push(disk_state())).unwrap();
        let key = DiskKey {
            vm: vm_id(),
            lun: None,
        };
        f.update_disk(&key, |d| d.passes = 2).unwrap();
        let again = StateFile::open(dir.path(), "web-01", &vm_id()).unwrap();
        assert_eq!(again.disk(&key).unwrap().passes, 2);
        assert_eq!(again.get(), f.get());
        assert!(
            again
                .disk(&DiskKey {
                    vm: vm_id(),
                    lun: Some(0)
                })
                .is_none()
        );
    }

    #[test]
    fn a_state_of_another_vm_or_version_or_no_json_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(dir.path(), "web-01", &vm_id()).unwrap();
        f.update(|_| ()).unwrap();
        let other: ResourceId =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/db-01"
                .parse()
                .unwrap();
        let e = StateFile::open(dir.path(), "db-01", &other).unwrap_err();
        assert!(matches!(e, StateError::OtherVm { .. }), "{e}");

        let path = dir.path().join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        std::fs::write(&path, text).unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");

        std::fs::write(&path, b"[1, 2]").unwrap();
        assert!(matches!(read(&path), Err(StateError::Parse { .. })));
        assert!(read(&dir.path().join("none.json")).unwrap().is_none());
    }

    #[test]
    fn seven_snapshots_per_five_minutes() {
        let mut d = disk_state();
        for t in 0..7 {
            assert_eq!(next_snapshot_allowed(&d.recent_snapshots, 100 + t), None);
            d.note_snapshot(100 + t);
        }
        assert_eq!(d.snapshots_in_window(106), 7);
        // The eighth waits until the first leaves the window.
        assert_eq!(next_snapshot_allowed(&d.recent_snapshots, 106), Some(400));
        assert_eq!(next_snapshot_allowed(&d.recent_snapshots, 400), None);
        d.note_snapshot(400);
        assert_eq!(d.recent_snapshots.len(), 7, "the oldest is forgotten");
    }
}
