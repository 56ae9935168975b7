//! What the fake ARM knows about incremental snapshots, so that a warm migration can be
//! tested honestly: per managed disk, its `uniqueId` and the pages written or cleared since
//! its last incremental snapshot; per snapshot, the pages it changed relative to the
//! previous incremental snapshot of the same disk. The fake controls every write it seeds
//! (see `warm_disk.rs`), so these sets are exact, never derived by comparing contents.
//! Azurite cannot answer a diff (it ignores `x-ms-previous-snapshot-url`); the gate in
//! `warm_gate.rs` answers from here. Also the incremental-snapshot limits Azure enforces.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant, SystemTime};

use super::pages::PageSet;

/// Azure: at most 7 incremental snapshots of a disk per 5 minutes.
pub const SNAPSHOTS_PER_WINDOW: usize = 7;
pub const SNAPSHOT_WINDOW: Duration = Duration::from_secs(300);
/// Azure: SAS on at most 5 snapshots of one disk (snapshot family) at a time.
pub const SAS_PER_FAMILY: usize = 5;

/// A managed disk's tracked pages (by lower-case disk id in [`WarmState::disks`]).
#[derive(Debug, Clone)]
pub struct DiskTrack {
    /// Bumped when a test "recreates" the disk: a new `uniqueId`.
    pub generation: u32,
    pub unique_id: String,
    /// The page blob's length (virtual size + VHD footer, or the VHDX's length).
    pub blob_len: u64,
    /// Pages that hold data now (written and not cleared since).
    pub allocated: PageSet,
    /// Pages written or cleared since the disk's last incremental snapshot.
    pub dirty: PageSet,
    /// When each incremental snapshot of it was created (the 7-per-window limit).
    pub incremental_created: Vec<Instant>,
}

/// One snapshot as the diff sees it. Deleted snapshots stay (as `deleted`): a diff across
/// them still needs the pages they changed.
#[derive(Debug, Clone)]
pub struct SnapTrack {
    /// Lower-case snapshot id.
    pub id: String,
    /// Lower-case id of the source disk.
    pub disk_id: String,
    /// The disk's `uniqueId` when the snapshot was taken (`sourceUniqueId`).
    pub source_unique_id: String,
    /// Creation order across the fake (a later snapshot has a larger one).
    pub seq: u64,
    pub incremental: bool,
    pub deleted: bool,
    pub time_created: SystemTime,
    /// Pages changed since the previous incremental snapshot of the same disk (all pages
    /// ever written, for the first one).
    pub dirty: PageSet,
    /// Pages holding data in the snapshot.
    pub allocated: PageSet,
    pub blob_len: u64,
}

/// Kept in `ArmState::warm`.
#[derive(Debug, Clone)]
pub struct WarmState {
    pub disks: BTreeMap<String, DiskTrack>,
    /// In creation order, deleted ones included.
    pub snapshots: Vec<SnapTrack>,
    /// Added to the real clock, so a test can step past the snapshot window.
    pub clock_skew: Duration,
    pub window: Duration,
    pub per_window: usize,
    pub sas_per_family: usize,
    /// Diff requests the gate answered itself (200 or refusal).
    pub diff_answers: u64,
    next_seq: u64,
}

impl Default for WarmState {
    fn default() -> Self {
        Self {
            disks: BTreeMap::new(),
            snapshots: Vec::new(),
            clock_skew: Duration::ZERO,
            window: SNAPSHOT_WINDOW,
            per_window: SNAPSHOTS_PER_WINDOW,
            sas_per_family: SAS_PER_FAMILY,
            diff_answers: 0,
            next_seq: 1,
        }
    }
}

/// A GUID-shaped id that depends on the disk and its generation (stable across runs).
pub fn unique_id_for(disk_id: &str, generation: u32) -> String {
    let mut h = DefaultHasher::new();
    (disk_id.to_ascii_lowercase(), generation).hash(&mut h);
    let a = h.finish();
    generation.hash(&mut h);
    let b = h.finish();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

impl WarmState {
    /// The fake's now (real time plus the test's skew).
    pub fn now(&self) -> Instant {
        Instant::now() + self.clock_skew
    }

    pub fn system_now(&self) -> SystemTime {
        SystemTime::now() + self.clock_skew
    }

    /// Starts tracking a disk whose blob has `allocated` pages: all of them count as
    /// written since the disk was created.
    pub fn track_disk(&mut self, disk_id: &str, blob_len: u64, allocated: PageSet) {
        let id = disk_id.to_ascii_lowercase();
        self.disks.insert(
            id.clone(),
            DiskTrack {
                generation: 0,
                unique_id: unique_id_for(&id, 0),
                blob_len,
                dirty: allocated.clone(),
                allocated,
                incremental_created: Vec::new(),
            },
        );
    }

    fn disk_mut(&mut self, disk_id: &str) -> &mut DiskTrack {
        self.disks
            .get_mut(&disk_id.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("disk {disk_id} is not tracked (no storage?)"))
    }

    /// The disk's `uniqueId` (derived from its id when it is not tracked).
    pub fn unique_id(&self, disk_id: &str) -> String {
        self.disks
            .get(&disk_id.to_ascii_lowercase())
            .map(|d| d.unique_id.clone())
            .unwrap_or_else(|| unique_id_for(disk_id, 0))
    }

    /// Pages `[start, end)` were written (Put Page).
    pub fn wrote(&mut self, disk_id: &str, start: u64, end: u64) {
        let d = self.disk_mut(disk_id);
        d.allocated.insert(start, end);
        d.dirty.insert(start, end);
    }

    /// Pages `[start, end)` were cleared (Clear Page): zeros, no longer in the page list.
    pub fn cleared(&mut self, disk_id: &str, start: u64, end: u64) {
        let d = self.disk_mut(disk_id);
        d.allocated.remove(start, end);
        d.dirty.insert(start, end);
    }

    /// The disk was deleted and created again under its name: a new `uniqueId`, and every
    /// page counts as changed.
    pub fn recreated(&mut self, disk_id: &str) {
        let id = disk_id.to_ascii_lowercase();
        let d = self.disk_mut(&id);
        d.generation += 1;
        d.unique_id = unique_id_for(&id, d.generation);
        d.dirty = PageSet::of(&[(0, d.blob_len)]);
        d.incremental_created.clear();
    }

    /// The blob is now `blob_len` long (pages past it are gone).
    pub fn resized(&mut self, disk_id: &str, blob_len: u64) {
        let d = self.disk_mut(disk_id);
        d.allocated.remove(blob_len, u64::MAX / 2);
        d.dirty.remove(blob_len, u64::MAX / 2);
        d.blob_len = blob_len;
    }

    /// Why an incremental snapshot of the disk is refused now: the 8th within the window.
    pub fn rate_refusal(&mut self, disk_id: &str) -> Option<String> {
        let (now, window, limit) = (self.now(), self.window, self.per_window);
        let d = self.disks.get_mut(&disk_id.to_ascii_lowercase())?;
        d.incremental_created
            .retain(|t| now.saturating_duration_since(*t) < window);
        (d.incremental_created.len() >= limit).then(|| {
            format!(
                "At most {limit} incremental snapshots of a disk can be created within {} seconds; retry later.",
                window.as_secs()
            )
        })
    }

    /// Records a new snapshot of the disk. An incremental one takes the pages changed since
    /// the previous incremental one and starts the next count.
    pub fn snapshot_taken(&mut self, disk_id: &str, snap_id: &str, incremental: bool) {
        let (now, seq) = (self.now(), self.next_seq);
        self.next_seq += 1;
        let time_created = self.system_now();
        let disk_id = disk_id.to_ascii_lowercase();
        let (source_unique_id, dirty, allocated, blob_len) = match self.disks.get_mut(&disk_id) {
            Some(d) if incremental => {
                d.incremental_created.push(now);
                let dirty = std::mem::take(&mut d.dirty);
                (d.unique_id.clone(), dirty, d.allocated.clone(), d.blob_len)
            }
            Some(d) => (
                d.unique_id.clone(),
                PageSet::new(),
                d.allocated.clone(),
                d.blob_len,
            ),
            None => (
                unique_id_for(&disk_id, 0),
                PageSet::new(),
                PageSet::new(),
                0,
            ),
        };
        self.snapshots.push(SnapTrack {
            id: snap_id.to_ascii_lowercase(),
            disk_id,
            source_unique_id,
            seq,
            incremental,
            deleted: false,
            time_created,
            dirty,
            allocated,
            blob_len,
        });
    }

    pub fn snapshot_deleted(&mut self, snap_id: &str) {
        let id = snap_id.to_ascii_lowercase();
        for s in self.snapshots.iter_mut().filter(|s| s.id == id) {
            s.deleted = true;
        }
    }

    /// The live snapshot with this id.
    pub fn snapshot(&self, snap_id: &str) -> Option<&SnapTrack> {
        let id = snap_id.to_ascii_lowercase();
        self.snapshots
            .iter()
            .rev()
            .find(|s| s.id == id && !s.deleted)
    }

    /// Pages changed between incremental snapshots `prev` and `target` of the same disk
    /// generation: the union of what each snapshot after `prev` up to `target` changed.
    pub fn changed_between(&self, prev: &SnapTrack, target: &SnapTrack) -> PageSet {
        let mut out = PageSet::new();
        for s in self.snapshots.iter().filter(|s| {
            s.incremental
                && s.disk_id == target.disk_id
                && s.source_unique_id == target.source_unique_id
                && s.seq > prev.seq
                && s.seq <= target.seq
        }) {
            out.union_with(&s.dirty);
        }
        out
    }
}

/// What Snapshots - Get shows of the tracking: `sourceUniqueId` (the disk's `uniqueId`
/// when taken) and `timeCreated` (sub-second, as Azure's, so snapshots order by it).
pub fn snapshot_properties(
    props: &mut serde_json::Value,
    warm: &WarmState,
    snap_id: &str,
    source_id: &str,
) {
    let (unique, time) = match warm.snapshot(snap_id) {
        Some(t) => (t.source_unique_id.clone(), t.time_created),
        None => (warm.unique_id(source_id), SystemTime::UNIX_EPOCH),
    };
    props["sourceUniqueId"] = serde_json::json!(unique);
    props["timeCreated"] = serde_json::json!(iso_precise(time));
}

/// `2026-01-02T03:04:05.1234567+00:00`, as ARM writes times.
pub fn iso_precise(t: SystemTime) -> String {
    let whole = super::seed::iso(t);
    let nanos = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}.{:07}+00:00", whole.trim_end_matches('Z'), nanos / 100)
}
