//! Planning a diff pass, without I/O: a page-range diff (`PageRange`/`ClearRange` of two
//! incremental snapshots) becomes the same chunk plan a download uses for the changed
//! ranges, plus a list of ranges to zero.
//!
//! Offsets: a managed-disk grant serves a fixed VHD, so blob offsets are guest offsets and
//! the 512-byte footer lies past the disk; anything at or past the virtual size is cut off.
//! (A VHDX grant is refused before this point: its offsets are file offsets.)
//!
//! No gap coalescing (`max_gap` 0): between two changed ranges lies unchanged data that the
//! image already holds, so fetching a gap would cost bytes for nothing — and the pass must
//! fetch close to the changed bytes (issue 13: within 1.1×). Chunks are cut at multiples of
//! the chunk size, so the same diff gives the same plan (the journal relies on it).

use std::ops::Range;

use super::plan::{self, Chunk};
use crate::azure::blob::PageChange;

/// What a diff pass does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffPlan {
    pub virtual_size: u64,
    /// Ranged GETs of changed data, sorted, disjoint, inside the disk.
    pub chunks: Vec<Chunk>,
    /// Ranges to zero, sorted, disjoint, never overlapping a chunk.
    pub clears: Vec<Range<u64>>,
    /// Bytes in changed ranges (what `chunks` fetch).
    pub changed_bytes: u64,
    /// Bytes in cleared ranges.
    pub cleared_bytes: u64,
}

/// A diff answer that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffPlanError {
    #[error(
        "the diff says bytes {start}-{end} were both written and cleared: the answer is inconsistent"
    )]
    Overlap { start: u64, end: u64 },
}

/// The plan for `changes` (any order, windows may repeat a range) on a disk of
/// `virtual_size` bytes, in chunks of at most `chunk_size`.
pub fn plan_diff(
    changes: Vec<PageChange>,
    virtual_size: u64,
    chunk_size: u64,
) -> Result<DiffPlan, DiffPlanError> {
    let (mut written, mut cleared) = (Vec::new(), Vec::new());
    for c in changes {
        match c {
            PageChange::Written(r) => written.push(r),
            PageChange::Cleared(r) => cleared.push(r),
        }
    }
    let written = merge(written, virtual_size);
    let clears = merge(cleared, virtual_size);
    if let Some(r) = first_overlap(&written, &clears) {
        return Err(DiffPlanError::Overlap {
            start: r.start,
            end: r.end - 1,
        });
    }
    let changed_bytes = written.iter().map(|r| r.end - r.start).sum();
    let cleared_bytes = clears.iter().map(|r| r.end - r.start).sum();
    let map = plan::map_from_page_ranges(written, virtual_size)
        .expect("merged ranges are sorted, disjoint and inside the disk");
    Ok(DiffPlan {
        virtual_size,
        chunks: plan::chunks(&map, chunk_size, 0),
        clears,
        changed_bytes,
        cleared_bytes,
    })
}

/// Sorted, merged (adjacent or overlapping joined), clipped to `[0, limit)`, empty dropped.
fn merge(mut ranges: Vec<Range<u64>>, limit: u64) -> Vec<Range<u64>> {
    ranges.sort_unstable_by_key(|r| (r.start, r.end));
    let mut out: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        let r = r.start.min(limit)..r.end.min(limit);
        if r.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The first stretch two sorted, disjoint lists share, if any.
fn first_overlap(a: &[Range<u64>], b: &[Range<u64>]) -> Option<Range<u64>> {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (&a[i], &b[j]);
        let both = x.start.max(y.start)..x.end.min(y.end);
        if !both.is_empty() {
            return Some(both);
        }
        if x.end <= y.end {
            i += 1;
        } else {
            j += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn written_ranges_become_chunks_cut_at_chunk_edges_and_clears_stay_ranges() {
        let changes = vec![
            PageChange::Cleared(10 * MIB..10 * MIB + 4096),
            PageChange::Written(MIB - 512..MIB + 512),
            PageChange::Written(5 * MIB..5 * MIB + 512),
            PageChange::Cleared(0..512),
        ];
        let p = plan_diff(changes, 16 * MIB, MIB).unwrap();
        let got: Vec<(u64, u64)> = p
            .chunks
            .iter()
            .map(|c| (c.virtual_offset.get(), c.length.get()))
            .collect();
        assert_eq!(got, vec![(MIB - 512, 512), (MIB, 512), (5 * MIB, 512)]);
        assert!(
            p.chunks
                .iter()
                .all(|c| c.source_offset.get() == c.virtual_offset.get())
        );
        assert_eq!(p.clears, vec![0..512, 10 * MIB..10 * MIB + 4096]);
        assert_eq!((p.changed_bytes, p.cleared_bytes), (1536, 4608));
    }

    /// Gaps between changed ranges are never fetched: unchanged data is already there.
    #[test]
    fn nearby_changes_are_not_coalesced() {
        let changes = vec![PageChange::Written(0..512), PageChange::Written(1024..1536)];
        let p = plan_diff(changes, MIB, MIB).unwrap();
        assert_eq!(p.chunks.len(), 2);
        assert_eq!(p.chunks.iter().map(|c| c.length.get()).sum::<u64>(), 1024);
    }

    /// The footer page past the disk (blob length − 512) never becomes disk data, and ranges
    /// repeated by adjacent windows are joined.
    #[test]
    fn ranges_are_clipped_to_the_disk_and_merged() {
        let changes = vec![
            PageChange::Written(MIB - 512..MIB + 512),
            PageChange::Cleared(MIB..MIB + 512),
            PageChange::Written(0..512),
            PageChange::Written(256..1024),
        ];
        let p = plan_diff(changes, MIB, MIB).unwrap();
        assert_eq!(p.clears, Vec::<Range<u64>>::new());
        let got: Vec<(u64, u64)> = p
            .chunks
            .iter()
            .map(|c| (c.virtual_offset.get(), c.length.get()))
            .collect();
        assert_eq!(got, vec![(0, 1024), (MIB - 512, 512)]);
    }

    #[test]
    fn a_range_both_written_and_cleared_is_refused() {
        let changes = vec![
            PageChange::Written(0..4096),
            PageChange::Cleared(2048..8192),
        ];
        let e = plan_diff(changes, MIB, MIB).unwrap_err();
        assert_eq!(
            e,
            DiffPlanError::Overlap {
                start: 2048,
                end: 4095
            }
        );
    }

    #[test]
    fn the_same_diff_gives_the_same_plan() {
        let changes = || {
            vec![
                PageChange::Written(3 * MIB..7 * MIB + 512),
                PageChange::Cleared(0..MIB),
            ]
        };
        assert_eq!(
            plan_diff(changes(), 8 * MIB, 2 * MIB).unwrap(),
            plan_diff(changes().into_iter().rev().collect(), 8 * MIB, 2 * MIB).unwrap()
        );
    }
}
