//! Reopening a finished qcow2 image of ours to update it in place (warm migration).
//!
//! Opening: the header must be what [`Qcow2Writer::finish`] writes (v3, 64 KiB clusters, no
//! backing file, encryption or snapshots, the disk's size, L1 right after the header), the
//! refcount blocks and table must sit where `finish` puts them (appended after everything
//! else, to the end of the file), and every L1/L2 entry must pass the checks a resume makes
//! ([`check_tables`]) with the refcount area counted as outside the image. Anything else is
//! refused before a byte is written. Then the image is turned back into a checkpoint: the
//! header gets the "corrupt" bit and no refcount table (fsynced), and the refcount area is
//! cut off, so new clusters are appended where it was. A crash from then on leaves a
//! checkpoint that [`Qcow2Writer::resume`] reopens.
//!
//! Writes: an allocated cluster is overwritten in place; an unallocated one is allocated
//! past the end (as when writing). Clears: a whole cluster is **unmapped** (its L2 entry set
//! to 0), not given the v3 "reads as zeros" flag — with no backing file an unallocated
//! cluster reads as zeros just the same, the image stays one our resume checks accept (they
//! refuse any flag but COPIED), and the freed cluster's space is returned to the file system
//! by punching it. The cluster is never reused (allocation only appends), so a crash before
//! the L2 table reaches the disk leaves an entry pointing to a punched cluster: zeros, which
//! is what the clear asked for. Part of a cluster is cleared by writing zeros into it when it
//! is allocated, and needs nothing when it is not. `finish` rebuilds every refcount from the
//! tables, so freed clusters get refcount 0 and `qemu-img check` stays clean.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::{
    CLUSTER_BITS, CLUSTER_SIZE, HEADER_LENGTH, INCOMPAT_CORRUPT, L2_COVERAGE, L2_ENTRIES, MAGIC,
    OFFSET_MASK, Qcow2Writer, VERSION, check_tables, div_ceil,
};
use crate::image::offset::GuestOffset;
use crate::image::sink::{ImageSink, SinkError, check_bounds};
use crate::image::update::ImageUpdate;

/// Where a finished image's refcount structures are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RefcountArea {
    table_offset: u64,
    table_clusters: u64,
}

impl Qcow2Writer {
    /// Opens the finished image in `file` for an in-place update (see the module note).
    /// With `allow_checkpoint`, an image an interrupted update left (a checkpoint) is
    /// reopened too; without it, that is refused.
    pub fn open_for_update(
        file: File,
        virtual_size: u64,
        allow_checkpoint: bool,
    ) -> Result<Self, SinkError> {
        let refuse = |why: String| SinkError::NotUpdatable { why };
        let mut header = [0u8; HEADER_LENGTH as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| refuse(format!("cannot read a qcow2 header: {e}")))?;
        let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        if be32(0) != MAGIC || be32(4) != VERSION || be32(20) != CLUSTER_BITS {
            return Err(refuse("not a qcow2 v3 image with 64 KiB clusters".into()));
        }
        let incompatible = u64::from_be_bytes(header[72..80].try_into().expect("8 bytes"));
        if incompatible & INCOMPAT_CORRUPT != 0 {
            if allow_checkpoint {
                return Self::resume(file, virtual_size);
            }
            return Err(refuse(
                "the image is marked as being written or updated (an interrupted run left it); \
                 finish that run or export the disk again"
                    .into(),
            ));
        }
        let area = check_finished_header(&header, virtual_size).map_err(refuse)?;
        let file_len = file.metadata().map_err(SinkError::io("stat", 0))?.len();
        let data_end = check_refcount_area(&file, area, file_len)?;
        let l1_len = div_ceil(virtual_size, L2_COVERAGE) as usize;
        let mut raw = vec![0u8; l1_len * 8];
        file.read_exact_at(&mut raw, CLUSTER_SIZE)
            .map_err(SinkError::io("read L1 table", CLUSTER_SIZE))?;
        let l1_raw: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let mut w = Self::with_l1(
            file,
            virtual_size,
            l1_raw.iter().map(|e| e & OFFSET_MASK).collect(),
        );
        // The refcount area counts as outside the image: no table may point into it.
        check_tables(&l1_raw, w.next_free, data_end, virtual_size, |at| {
            w.read_l2(at)
        })?;
        w.write_header(0, 0, INCOMPAT_CORRUPT)?;
        w.file.sync_all().map_err(SinkError::io("fsync", 0))?;
        w.file
            .set_len(data_end)
            .map_err(SinkError::io("truncate", data_end))?;
        w.next_free = w.next_free.max(data_end);
        Ok(w)
    }

    /// Unmaps the cluster holding `at` (whole-cluster clear) and punches its host space.
    fn unmap_cluster(&mut self, at: u64) -> Result<(), SinkError> {
        let cluster = at / CLUSTER_SIZE;
        let (l1_index, l2_index) = (
            (cluster / L2_ENTRIES) as usize,
            (cluster % L2_ENTRIES) as usize,
        );
        let Some(slot) = self.l2_slot(l1_index, false)? else {
            return Ok(());
        };
        let entry = self.cache[slot].entries[l2_index];
        if entry == 0 {
            return Ok(());
        }
        self.cache[slot].entries[l2_index] = 0;
        self.cache[slot].dirty = true;
        punch(&self.file, entry & OFFSET_MASK, CLUSTER_SIZE);
        Ok(())
    }

    /// Writes zeros over `len` bytes at `at` inside one cluster, if it is allocated.
    fn zero_in_cluster(&mut self, at: u64, len: u64) -> Result<(), SinkError> {
        let zeros = vec![0u8; len as usize];
        if let Some(host) = self.host_cluster(GuestOffset(at), &zeros)? {
            let host = host.get() + at % CLUSTER_SIZE;
            self.file
                .write_all_at(&zeros, host)
                .map_err(SinkError::io("write", host))?;
            self.stats.bytes_written += len;
        }
        Ok(())
    }
}

impl ImageUpdate for Qcow2Writer {
    fn zero_range(&mut self, range: Range<u64>) -> Result<(), SinkError> {
        let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
        check_bounds(range.start, len, self.virtual_size())?;
        let mut at = range.start;
        while at < range.end {
            let cluster_start = at - at % CLUSTER_SIZE;
            // The last cluster of a disk whose size is not a multiple of the cluster ends
            // at the disk's end.
            let cluster_end = (cluster_start + CLUSTER_SIZE).min(self.virtual_size());
            let end = cluster_end.min(range.end);
            if at == cluster_start && end == cluster_end {
                self.unmap_cluster(at)?;
            } else {
                self.zero_in_cluster(at, end - at)?;
            }
            at = end;
        }
        Ok(())
    }
}

/// Best effort: gives a freed cluster's space back to the file system. The cluster is
/// unreferenced either way; a file system that cannot punch just keeps the bytes.
fn punch(file: &File, at: u64, len: u64) {
    use rustix::fs::{FallocateFlags, fallocate};
    let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    if let Err(e) = fallocate(file, flags, at, len) {
        tracing::debug!("could not punch the freed cluster at {at}: {e}");
    }
}

/// The header fields a finished image of ours has, for a disk of `virtual_size` bytes, and
/// where its refcount table is.
fn check_finished_header(header: &[u8], virtual_size: u64) -> Result<RefcountArea, String> {
    let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let be64 = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if be32(0) != MAGIC || be32(4) != VERSION || be32(20) != CLUSTER_BITS {
        return Err("not a qcow2 v3 image with 64 KiB clusters".into());
    }
    if be64(24) != virtual_size {
        return Err(format!(
            "made for virtual size {}, the disk is {virtual_size}",
            be64(24)
        ));
    }
    let expected_l1 = div_ceil(virtual_size, L2_COVERAGE);
    if u64::from(be32(36)) != expected_l1 || be64(40) != CLUSTER_SIZE {
        return Err(format!(
            "L1 table of {} entries at {}; ours has {expected_l1} at {CLUSTER_SIZE}",
            be32(36),
            be64(40)
        ));
    }
    let extras = [
        ("backing file offset", be64(8)),
        ("encryption method", u64::from(be32(32))),
        ("snapshot count", u64::from(be32(60))),
        ("incompatible features", be64(72)),
        ("compatible features", be64(80)),
        ("autoclear features", be64(88)),
    ];
    if let Some((what, v)) = extras.iter().find(|(_, v)| *v != 0) {
        return Err(format!("header has {what} {v}; an image of ours has 0"));
    }
    if be32(96) != super::REFCOUNT_ORDER || be32(100) != HEADER_LENGTH {
        return Err(format!(
            "refcount order {} and header length {}; ours are {} and {HEADER_LENGTH}",
            be32(96),
            be32(100),
            super::REFCOUNT_ORDER
        ));
    }
    let table_offset = be64(48);
    let table_clusters = u64::from(be32(56));
    if table_offset == 0 || table_clusters == 0 || !table_offset.is_multiple_of(CLUSTER_SIZE) {
        return Err(format!(
            "refcount table at {table_offset} ({table_clusters} clusters): not a finished image"
        ));
    }
    Ok(RefcountArea {
        table_offset,
        table_clusters,
    })
}

/// Checks that the refcount blocks and table are the file's tail, laid out as `finish`
/// writes them (blocks back to back, then the table, then nothing), and returns where the
/// blocks start: the end of the image's data and tables.
fn check_refcount_area(file: &File, area: RefcountArea, file_len: u64) -> Result<u64, SinkError> {
    let refuse = |why: String| SinkError::NotUpdatable { why };
    let table_end = area
        .table_clusters
        .checked_mul(CLUSTER_SIZE)
        .and_then(|n| n.checked_add(area.table_offset));
    if table_end != Some(file_len) {
        return Err(refuse(format!(
            "the refcount table at {} ({} clusters) does not end the {file_len}-byte file",
            area.table_offset, area.table_clusters
        )));
    }
    let mut raw = vec![0u8; (area.table_clusters * CLUSTER_SIZE) as usize];
    file.read_exact_at(&mut raw, area.table_offset)
        .map_err(SinkError::io("read refcount table", area.table_offset))?;
    let blocks: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .take_while(|&e| e != 0)
        .collect();
    let first = blocks.first().copied().unwrap_or(area.table_offset);
    let laid_out = blocks.iter().enumerate().all(|(i, &b)| {
        Some(b)
            == (i as u64)
                .checked_mul(CLUSTER_SIZE)
                .and_then(|o| o.checked_add(first))
    }) && first.checked_add(blocks.len() as u64 * CLUSTER_SIZE)
        == Some(area.table_offset);
    if !laid_out || first < 2 * CLUSTER_SIZE {
        return Err(refuse(format!(
            "the refcount blocks are not laid out as this tool writes them (first at {first}, \
             {} blocks, table at {})",
            blocks.len(),
            area.table_offset
        )));
    }
    Ok(first)
}
