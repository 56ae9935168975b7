//! The run report, kept on disk as the run goes: the ledger of everything the run created
//! in Azure, so nothing is ever left behind unrecorded.
//!
//! A resource is recorded as `creating` *before* the request that creates it is sent, and
//! as `exists` once Azure confirms it, so a crash at any point leaves a report that names
//! every resource that may exist; `cleanup --run-id` treats `creating` as "may exist" (a
//! 404 on delete is success). Each change rewrites `run-<id>.json` atomically (temporary
//! file, fsync, rename, directory fsync): a reader never sees half a report. The report
//! holds resource ids and outcomes only — never a SAS or a token (there is no field for
//! one).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::naming::now_rfc3339;
use crate::azure::arm::ResourceId;
use crate::azure::inventory::DiskRole;

/// What kind of thing the run made (or changed) in Azure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// A snapshot of a disk (removed by DELETE).
    Snapshot,
    /// Read access granted on a disk or snapshot (removed by endGetAccess).
    AccessGrant,
    /// A VM the run deallocated (`--consistency deallocate`); reported, never undone
    /// silently.
    Deallocation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceState {
    /// The create request is about to be or was sent; the resource may exist.
    Creating,
    Exists,
    Removed,
    /// Removal was tried and failed; `error` says why. `cleanup` tries again.
    RemoveFailed,
    /// A warm migration's snapshot, kept on purpose for the next pass (see
    /// `export::warm`): the run's sweep leaves it; `cleanup --run-id` of this run and
    /// `cleanup --migration` remove it.
    Kept,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub kind: ResourceKind,
    /// ARM id: the snapshot, the disk or snapshot access was granted on, or the VM.
    pub id: ResourceId,
    /// What it was made from (the source disk of a snapshot): the full id, which the
    /// snapshot's tag only names by hash (a tag value holds at most 256 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<ResourceId>,
    pub state: ResourceState,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Resource {
    /// True while the resource may still be in Azure.
    pub fn outstanding(&self) -> bool {
        matches!(
            self.state,
            ResourceState::Creating | ResourceState::Exists | ResourceState::RemoveFailed
        ) && self.kind != ResourceKind::Deallocation
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Done,
    Partial,
    Failed,
    Interrupted,
}

/// Where one disk of the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskStatus {
    /// Planned, not finished yet (a report read after a crash may still say so).
    Pending,
    Done,
    Failed,
    Interrupted,
    /// Selected, but nothing in Azure to export (an ephemeral OS disk): final at once;
    /// the run exits 3 as for a partly done run.
    Unsupported,
    /// Not exported because of its kind (network policy, a confidential VM's
    /// key unless `--allow-encrypted`): nothing was created for it; final at once; the run
    /// exits 3 as for a partly done run.
    Refused,
}

/// The outcome of one disk, keyed by its VM's id and its LUN (None: the OS disk), since
/// VM and disk names repeat across resource groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskOutcome {
    pub vm: String,
    pub vm_id: ResourceId,
    pub disk: String,
    /// The managed disk's id; None for an unmanaged disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_id: Option<ResourceId>,
    pub role: DiskRole,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u32>,
    /// Image path relative to the output directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub status: DiskStatus,
    pub bytes_downloaded: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `run-<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub tool_version: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub status: RunStatus,
    /// The selection as given (flags, plan file, shard).
    pub selection: serde_json::Value,
    pub disks: Vec<DiskOutcome>,
    pub resources: Vec<Resource>,
    /// A warm pass (`export --warm`): what each disk's pass did, and the cutover's
    /// downtime per VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<WarmReport>,
}

/// The warm part of a run report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmReport {
    pub cutover: bool,
    pub passes: Vec<WarmPass>,
    /// Cutover only: per VM whose every disk became current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downtime: Vec<VmDowntime>,
}

/// One disk's pass in a warm run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmPass {
    pub vm_id: ResourceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u32>,
    #[serde(flatten)]
    pub pass: crate::export::warm::state::PassRecord,
}

/// The downtime of one VM's cutover: from the deallocation request to the last byte
/// durable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmDowntime {
    pub vm: String,
    pub vm_id: ResourceId,
    pub downtime_seconds: f64,
}

impl RunReport {
    pub fn new(run_id: &str, selection: serde_json::Value) -> Self {
        Self {
            run_id: run_id.to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now_rfc3339(),
            finished_at: None,
            status: RunStatus::Running,
            selection,
            disks: Vec::new(),
            resources: Vec::new(),
            warm: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("run report {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run report {path} is not a report of this tool: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The run report file name for `run_id`.
pub fn report_file_name(run_id: &str) -> String {
    format!("run-{run_id}.json")
}

/// The live run report: every change is on disk before `update` returns.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    report: Mutex<RunReport>,
}

impl Ledger {
    /// Starts `dir/run-<id>.json` for a new run.
    pub fn create(dir: &Path, report: RunReport) -> Result<Self, LedgerError> {
        let ledger = Self {
            path: dir.join(report_file_name(&report.run_id)),
            report: Mutex::new(report),
        };
        ledger.update(|_| ())?;
        Ok(ledger)
    }

    /// Reads an existing report (for `cleanup`).
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let bytes = fs::read(path).map_err(|source| LedgerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let report: RunReport = serde_json::from_slice(&bytes).map_err(|e| LedgerError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            report: Mutex::new(report),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the report as it stands.
    pub fn report(&self) -> RunReport {
        self.report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies `change` and writes the report durably before returning.
    pub fn update(&self, change: impl FnOnce(&mut RunReport)) -> Result<(), LedgerError> {
        let mut report = self.report.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut report);
        let json = serde_json::to_vec_pretty(&*report).expect("report serialises");
        write_atomic(&self.path, &json).map_err(|source| LedgerError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Records that `kind` `id` is about to be created. Call before sending the request.
    pub fn creating(
        &self,
        kind: ResourceKind,
        id: &ResourceId,
        source: Option<&ResourceId>,
    ) -> Result<(), LedgerError> {
        self.update(|r| {
            r.resources.push(Resource {
                kind,
                id: id.clone(),
                source: source.cloned(),
                state: ResourceState::Creating,
                created_at: now_rfc3339(),
                removed_at: None,
                error: None,
            })
        })
    }

    /// Moves the latest record of `kind` `id` to `state` (with an error for RemoveFailed).
    pub fn set_state(
        &self,
        kind: ResourceKind,
        id: &ResourceId,
        state: ResourceState,
        error: Option<String>,
    ) -> Result<(), LedgerError> {
        self.update(|r| {
            if let Some(res) = r
                .resources
                .iter_mut()
                .rev()
                .find(|x| x.kind == kind && x.id == *id)
            {
                res.state = state;
                res.error = error;
                if state == ResourceState::Removed {
                    res.removed_at = Some(now_rfc3339());
                }
            }
        })
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    let temp = dir.join(name);
    let mut f = File::create(&temp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&temp, path)?;
    File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_is_on_disk_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::create(
            dir.path(),
            RunReport::new("r1", serde_json::json!({"name": ["web-*"]})),
        )
        .unwrap();
        let snap: ResourceId =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/snapshots/a2k-r1-os"
                .parse()
                .unwrap();
        let disk: ResourceId =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/os"
                .parse()
                .unwrap();
        ledger
            .creating(ResourceKind::Snapshot, &snap, Some(&disk))
            .unwrap();
        let on_disk = Ledger::open(ledger.path()).unwrap().report();
        assert_eq!(on_disk.resources[0].state, ResourceState::Creating);
        assert!(on_disk.resources[0].outstanding());

        ledger
            .set_state(
                ResourceKind::Snapshot,
                &snap.to_string().to_uppercase().parse().unwrap(),
                ResourceState::Exists,
                None,
            )
            .unwrap();
        ledger
            .set_state(ResourceKind::Snapshot, &snap, ResourceState::Removed, None)
            .unwrap();
        let on_disk = Ledger::open(ledger.path()).unwrap().report();
        assert_eq!(on_disk.resources[0].state, ResourceState::Removed);
        assert!(on_disk.resources[0].removed_at.is_some());
        assert!(!on_disk.resources[0].outstanding());
        assert_eq!(on_disk, ledger.report());
        // No temporary file left beside it.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn deallocations_are_reported_but_never_outstanding() {
        let r = Resource {
            kind: ResourceKind::Deallocation,
            id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
                .parse()
                .unwrap(),
            source: None,
            state: ResourceState::Exists,
            created_at: now_rfc3339(),
            removed_at: None,
            error: None,
        };
        assert!(!r.outstanding());
    }

    /// Statuses and roles are words of a closed set: a report read back is typed, and a
    /// report with a word this tool never writes is refused rather than guessed at.
    #[test]
    fn disk_statuses_and_roles_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run-x.json");
        let mut report = RunReport::new("x", serde_json::Value::Null);
        report.disks.push(DiskOutcome {
            vm: "web".into(),
            vm_id:
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web"
                    .parse()
                    .unwrap(),
            disk: "web-data".into(),
            disk_id: None,
            role: DiskRole::Data,
            lun: Some(2),
            image: None,
            status: DiskStatus::Interrupted,
            bytes_downloaded: 0,
            error: None,
        });
        let mut json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["disks"][0]["status"], "interrupted");
        assert_eq!(json["disks"][0]["role"], "data");
        fs::write(&p, json.to_string()).unwrap();
        assert_eq!(Ledger::open(&p).unwrap().report(), report);
        for (field, word) in [("status", "finished"), ("role", "swap")] {
            json["disks"][0][field] = serde_json::json!(word);
            fs::write(&p, json.to_string()).unwrap();
            let e = Ledger::open(&p).unwrap_err().to_string();
            assert!(e.contains(word), "{field}: {e}");
            json = serde_json::to_value(&report).unwrap();
        }
    }

    #[test]
    fn foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run-x.json");
        fs::write(&p, b"{\"hello\": 1}").unwrap();
        assert!(matches!(Ledger::open(&p), Err(LedgerError::Parse { .. })));
        // A resource that is not an ARM resource id is refused, not acted upon.
        let mut report = RunReport::new("x", serde_json::Value::Null);
        report.status = RunStatus::Failed;
        let mut json = serde_json::to_value(&report).unwrap();
        json["resources"] = serde_json::json!([{
            "kind": "snapshot", "id": "/subscriptions/s/../../x", "state": "exists",
            "created_at": "2026-11-27T10:30:00Z"
        }]);
        fs::write(&p, json.to_string()).unwrap();
        let e = Ledger::open(&p).unwrap_err().to_string();
        assert!(e.contains("not an ARM resource id"), "{e}");
        assert!(matches!(
            Ledger::open(&dir.path().join("none.json")),
            Err(LedgerError::Io { .. })
        ));
    }
}
