//! Warm migration (`export --warm [--cutover]`): copy each disk while its VM runs, then in
//! later passes only the pages that changed, and finish with a short cutover.
//!
//! Every pass is an ordinary run (plan, ledger, sweep) whose disks are read from
//! *incremental* snapshots that the run keeps instead of deleting: the next pass asks Azure
//! for the pages that differ between the kept snapshot and a new one and applies only those
//! to the image. Which snapshot each image equals is in the VM's state file
//! ([`state`]); the run report lists kept snapshots with state `kept`, tagged with the run
//! that made them, so `cleanup --run-id` of that run (or `cleanup --migration DIR`) removes
//! them and no other run's sweep touches them.
//!
//! This module decides, before anything is created in Azure, what a pass will do: it turns
//! the plan's sources into incremental snapshots, refuses a cutover of disks that have no
//! pass yet, and enforces Azure's snapshot rate per disk. [`pass`] runs one disk's pass.

pub mod cleanup;
pub mod diff;
pub mod pass;
pub mod report;
pub mod state;

pub use report::WarmDryRun;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use self::state::{PassRecord, StateError, StateFile, next_snapshot_allowed};
use super::disk_kind;
use super::naming::snapshot_name;
use super::plan::{DiskKey, PlannedDisk, PlannedVm, Source};
use crate::azure::arm::{ResourceId, ResourceType};

/// What kind of warm pass the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WarmMode {
    /// The last pass: the VMs are stopped, the kept snapshots deleted.
    pub cutover: bool,
}

/// Why a warm run cannot start; found before anything is created in Azure.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error(transparent)]
    State(#[from] StateError),
    /// A usage error: `--cutover` of disks that no pass has copied.
    #[error(
        "--cutover finishes a warm migration, but these disks have no warm pass in {dir} yet: {}; run `export --warm` first",
        .disks.join(", ")
    )]
    NoState { dir: PathBuf, disks: Vec<String> },
    #[error(
        "these disks' migration is over (cut over or cleaned up already): {}; remove their migration.json (or use another --output-dir) to start a new migration",
        .0.join(", ")
    )]
    CutOver(Vec<String>),
    #[error(
        "a warm migration needs managed disks (incremental snapshots); unmanaged: {}",
        .0.join(", ")
    )]
    Unmanaged(Vec<String>),
    /// Azure's limit on incremental snapshots per disk; exit 1, try later.
    #[error(
        "{disk}: {taken} incremental snapshots in the last 5 minutes, Azure's limit is 7 per disk; run the pass again in {wait_secs} s"
    )]
    RateLimited {
        disk: String,
        taken: usize,
        wait_secs: u64,
    },
}

impl WarmError {
    /// True for what the command line got wrong (exit 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::NoState { .. } | Self::CutOver(_) | Self::Unmanaged(_) | Self::State(_)
        )
    }
}

/// A warm run under way: each VM's state file, and the clocks of the cutover's downtime.
#[derive(Debug)]
pub struct WarmRun {
    pub mode: WarmMode,
    pub run_id: String,
    pub output_dir: PathBuf,
    states: BTreeMap<ResourceId, Arc<StateFile>>,
    /// Per VM: when the cutover asked for its deallocation (or started, when the VM was
    /// deallocated already).
    stopped_at: Mutex<BTreeMap<ResourceId, Instant>>,
    /// Per VM: when its last disk became durable.
    durable_at: Mutex<BTreeMap<ResourceId, Instant>>,
    /// What each disk's pass did, for the run report.
    passes: Mutex<BTreeMap<DiskKey, PassRecord>>,
}

/// The disks a warm run copies: every planned disk that is not refused and not exported
/// through another VM's entry.
pub fn copied(vm: &PlannedVm) -> impl Iterator<Item = &PlannedDisk> {
    vm.disks
        .iter()
        .filter(|d| d.refused.is_none() && d.owner.is_none())
}

/// Every copied disk is read from an incremental snapshot, whatever the VM's power state:
/// only incremental snapshots of one disk can be diffed, and the next pass needs one.
/// A snapshot a previous run left pending (its pass was interrupted) is reused, not taken
/// again, so that run's journal finishes it.
pub fn adjust_plan(
    planned: &mut [PlannedVm],
    run_id: &str,
    pending: &BTreeMap<DiskKey, ResourceId>,
) {
    for vm in planned.iter_mut() {
        let skus: BTreeMap<String, Option<String>> = vm
            .vm
            .disks
            .iter()
            .filter_map(|d| Some((d.id.clone()?.to_ascii_lowercase(), d.storage.sku.clone())))
            .collect();
        for d in vm.disks.iter_mut() {
            let disk_id = match &d.source {
                Source::Snapshot { disk_id, .. } | Source::Disk { disk_id } => disk_id.clone(),
                Source::Blob { .. } | Source::Unavailable => continue,
            };
            let sku = skus.get(disk_id.folded()).cloned().flatten();
            let snapshot = pending.get(&d.key).cloned().unwrap_or_else(|| {
                ResourceId::new(
                    disk_id.subscription(),
                    disk_id.resource_group(),
                    ResourceType::Snapshot,
                    &snapshot_name(run_id, &d.name, &disk_id),
                )
            });
            d.source = Source::Snapshot {
                snapshot,
                disk_id,
                incremental: true,
                background_copy: disk_kind::has_background_copy(sku.as_deref()),
            };
        }
    }
}

impl WarmRun {
    /// Opens each planned VM's state and checks the run can start: a cutover needs a pass
    /// of every disk; no disk may be cut over already, unmanaged, or at Azure's snapshot
    /// rate limit.
    pub fn open(
        output_dir: &Path,
        planned: &[PlannedVm],
        mode: WarmMode,
        run_id: &str,
    ) -> Result<Self, WarmError> {
        let mut states = BTreeMap::new();
        for vm in planned {
            let file = StateFile::open(&output_dir.join(&vm.folder), &vm.name, &vm.id)?;
            states.insert(vm.id.clone(), Arc::new(file));
        }
        let run = Self {
            mode,
            run_id: run_id.to_string(),
            output_dir: output_dir.to_path_buf(),
            states,
            stopped_at: Mutex::default(),
            durable_at: Mutex::default(),
            passes: Mutex::default(),
        };
        run.check(planned)?;
        Ok(run)
    }

    fn check(&self, planned: &[PlannedVm]) -> Result<(), WarmError> {
        let (mut missing, mut cut, mut unmanaged) = (Vec::new(), Vec::new(), Vec::new());
        let now = unix_now();
        for vm in planned {
            let file = &self.states[&vm.id];
            for d in copied(vm) {
                let name = format!("{}/{}", vm.name, d.name);
                if matches!(d.source, Source::Blob { .. }) {
                    unmanaged.push(name);
                    continue;
                }
                let Some(st) = file.disk(&d.key) else {
                    missing.push(name);
                    continue;
                };
                if st.kept_snapshot.is_none() && st.pending_snapshot.is_none() {
                    cut.push(name);
                    continue;
                }
                if let Some(at) = next_snapshot_allowed(&st.recent_snapshots, now)
                    && st.pending_snapshot.is_none()
                {
                    return Err(WarmError::RateLimited {
                        disk: name,
                        taken: st.snapshots_in_window(now),
                        wait_secs: at.saturating_sub(now),
                    });
                }
            }
        }
        if !unmanaged.is_empty() {
            return Err(WarmError::Unmanaged(unmanaged));
        }
        if !cut.is_empty() {
            return Err(WarmError::CutOver(cut));
        }
        if self.mode.cutover && !missing.is_empty() {
            return Err(WarmError::NoState {
                dir: self.output_dir.clone(),
                disks: missing,
            });
        }
        Ok(())
    }

    /// Snapshots earlier runs left pending, by disk: this run finishes their passes.
    pub fn pending(&self, planned: &[PlannedVm]) -> BTreeMap<DiskKey, ResourceId> {
        planned
            .iter()
            .flat_map(|vm| copied(vm).map(move |d| (vm, d)))
            .filter_map(|(vm, d)| {
                let st = self.states[&vm.id].disk(&d.key)?;
                Some((d.key.clone(), st.pending_snapshot?))
            })
            .collect()
    }

    /// True when disk `key`'s snapshot exists already (a pending pass): not taken again.
    pub fn reuses_snapshot(&self, key: &DiskKey) -> bool {
        self.states
            .get(&key.vm)
            .and_then(|f| f.disk(key))
            .is_some_and(|d| d.pending_snapshot.is_some())
    }

    /// Images that exist although no pass of theirs is recorded: never overwritten.
    pub fn images_in_the_way(&self, planned: &[PlannedVm]) -> Vec<String> {
        planned
            .iter()
            .flat_map(|vm| copied(vm).map(move |d| (vm, d)))
            .filter(|(vm, d)| self.states[&vm.id].disk(&d.key).is_none())
            .map(|(_, d)| self.output_dir.join(&d.image))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect()
    }

    /// The snapshots earlier passes kept (this run grants read on them).
    pub fn kept_snapshots(&self) -> Vec<ResourceId> {
        self.states
            .values()
            .flat_map(|f| f.get().disks)
            .flat_map(|d| {
                d.kept_snapshot
                    .into_iter()
                    .chain(d.pending_snapshot)
                    .chain(d.retired)
            })
            .collect()
    }

    pub fn state(&self, vm: &ResourceId) -> Option<Arc<StateFile>> {
        self.states.get(vm).cloned()
    }

    /// The cutover's clock for `vm` starts (at the deallocation request, or at the start
    /// of the cutover when the VM is deallocated already). The first start counts.
    pub fn stopping(&self, vm: &ResourceId) {
        lock(&self.stopped_at)
            .entry(vm.clone())
            .or_insert_with(Instant::now);
    }

    /// A disk of `vm` is durable now.
    pub fn durable(&self, vm: &ResourceId) {
        lock(&self.durable_at).insert(vm.clone(), Instant::now());
    }

    pub fn record_pass(&self, key: &DiskKey, record: PassRecord) {
        lock(&self.passes).insert(key.clone(), record);
    }

    pub fn passes(&self) -> BTreeMap<DiskKey, PassRecord> {
        lock(&self.passes).clone()
    }

    /// Seconds from the deallocation request to the last byte durable, per VM whose
    /// cutover got that far.
    pub fn downtimes(&self) -> BTreeMap<ResourceId, f64> {
        let stopped = lock(&self.stopped_at);
        let durable = lock(&self.durable_at);
        stopped
            .iter()
            .filter_map(|(vm, start)| {
                let end = durable.get(vm)?;
                Some((vm.clone(), end.duration_since(*start).as_secs_f64()))
            })
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds since 1970, for the snapshot-rate record.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
