//! Planning a download, without I/O: from the blob's length, its footer and its written
//! page ranges (or a dynamic VHD's BAT) to the list of ranged GETs to make.
//!
//! Guarantees: the footer is valid and, for a fixed VHD, `current size = blob length −
//! 512` before anything else is fetched (else a bad-image error, exit 4); the footer bytes
//! are never part of the disk; chunks are sorted, disjoint, inside `[0, virtual size)`,
//! at most `chunk_size` long and cut at multiples of `chunk_size` (so a re-run with the
//! same inputs gives the same chunks, which the resume journal relies on).
//!
//! Defaults and why:
//! - [`DEFAULT_CHUNK_SIZE`] 8 MiB: AzCopy's choice; large enough that a request's fixed
//!   cost (one round trip, one of the ~500 requests/s a blob serves) is small against its
//!   transfer time, small enough that 16 in flight stay well inside the memory budget.
//! - [`MD5_MAX_CHUNK_SIZE`] 4 MiB: the service computes a transactional MD5 only for
//!   ranges ≤ 4 MiB (it silently omits it for larger ones).
//! - [`PAGE_RANGE_WINDOW`] 128 MiB: Get Page Ranges over a large, fragmented blob can time
//!   out; Azure's guidance is segments of ~150 MB in the worst case. 128 MiB is the largest
//!   power of two under that, and a multiple of every chunk size, so window edges fall on
//!   chunk edges.
//! - [`COALESCE_GAP`] 128 KiB: fetching a gap of never-written pages costs bytes; skipping
//!   it costs a request. At a blob's documented 60 MiB/s and 500 requests/s one request is
//!   worth ~120 KiB of transfer, so a gap under that (rounded to 128 KiB) is no dearer to
//!   fetch than to skip (it arrives as zeros and the sink turns it back into holes). A gap
//!   is only fetched when that saves a request: never across a chunk boundary, where the
//!   run would be cut again anyway. Only maps whose gaps read as zeros (page ranges) may
//!   be coalesced: between a dynamic VHD's blocks lie bitmaps.
//!   Bytes: on the benchmark disk this fetches 1.2% more than was written. The rule
//!   optimises time, not bytes: a disk with one page written every 64 KiB is fetched
//!   whole, because one request per page would take longer than the whole region's bytes.

use std::ops::Range;

use crate::image::extent::{ExtentError, ExtentMap, ExtentMapBuilder};
use crate::image::offset::{ByteLen, GuestOffset, SourceOffset};
use crate::image::vhd::footer::parse_footer;
use crate::image::vhd::{DiskType, FOOTER_SIZE, Footer, VhdError, check_fixed_len};

pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;
pub const MD5_MAX_CHUNK_SIZE: u64 = 4 << 20;
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
pub const PAGE_RANGE_WINDOW: u64 = 128 << 20;
pub const COALESCE_GAP: u64 = 128 << 10;

/// One ranged GET and where its bytes go. Typed offsets: the guest offset (where the
/// sink writes) and the source offset (the blob range fetched) differ for dynamic VHDs and
/// VHDXs, and a swapped pair would write a disk's bytes in the wrong place silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    pub virtual_offset: GuestOffset,
    pub source_offset: SourceOffset,
    pub length: ByteLen,
}

/// A chunk's identity in the resume journal: where it lands and how long it is. Typed, so
/// the pair cannot be read back in the wrong order; stored as `[offset, length]`.
pub type ChunkKey = (GuestOffset, ByteLen);

impl Chunk {
    pub fn key(&self) -> ChunkKey {
        (self.virtual_offset, self.length)
    }

    /// The blob bytes this chunk fetches.
    pub fn source_range(&self) -> Range<u64> {
        self.source_offset.get()..self.source_offset.get() + self.length.get()
    }

    /// The guest offset just past this chunk.
    pub fn virtual_end(&self) -> u64 {
        self.virtual_offset.get() + self.length.get()
    }
}

/// Checks the last 512 bytes of a blob of `blob_len` bytes: a valid footer, not a
/// differencing disk, and for a fixed disk a blob of exactly current size + 512.
pub fn check_footer(tail: &[u8; FOOTER_SIZE], blob_len: u64) -> Result<Footer, VhdError> {
    if blob_len < FOOTER_SIZE as u64 {
        return Err(VhdError::TooSmall { len: blob_len });
    }
    let tail_at = blob_len - FOOTER_SIZE as u64;
    let footer = parse_footer(tail, tail_at)?;
    match footer.disk_type {
        DiskType::Fixed => check_fixed_len(&footer, blob_len)?,
        DiskType::Dynamic => {}
        DiskType::Differencing => {
            return Err(VhdError::Differencing {
                parent: "(named in the dynamic header; not read)".into(),
            });
        }
    }
    Ok(footer)
}

/// Windows `[start, end)` covering `[0, data_end)` for Get Page Ranges.
pub fn page_range_windows(data_end: u64, window: u64) -> Vec<Range<u64>> {
    let window = window.max(512);
    (0..data_end.div_ceil(window))
        .map(|i| i * window..((i + 1) * window).min(data_end))
        .collect()
}

/// The extent map of a fixed VHD stored in a page blob, from its written ranges (any
/// order, possibly overlapping or adjacent, as windows may repeat a range at their edges).
/// Ranges are clipped to the virtual size so the footer never becomes disk data.
pub fn map_from_page_ranges(
    mut ranges: Vec<Range<u64>>,
    virtual_size: u64,
) -> Result<ExtentMap, ExtentError> {
    ranges.sort_unstable_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        let r = r.start.min(virtual_size)..r.end.min(virtual_size);
        if r.is_empty() {
            continue;
        }
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut b = ExtentMapBuilder::new(virtual_size);
    for r in merged {
        // Fixed VHD: the disk's bytes sit at the same offsets in the blob.
        b.push_data(
            GuestOffset(r.start),
            ByteLen(r.end - r.start),
            SourceOffset(r.start),
        )?;
    }
    Ok(b.finish())
}

/// The data extents of `map` cut down to the parts whose source bytes lie in `written`
/// (a page blob's written ranges, in source offsets, any order, possibly overlapping):
/// pages never written read as zeros, so they need not be fetched. Used for a VHDX in a
/// page blob, where a present block may still hold pages never written.
pub fn restrict_to_written(
    map: &ExtentMap,
    mut written: Vec<Range<u64>>,
) -> Result<ExtentMap, ExtentError> {
    written.sort_unstable_by_key(|r| (r.start, r.end));
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(written.len());
    for r in written.into_iter().filter(|r| !r.is_empty()) {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut b = ExtentMapBuilder::new(map.virtual_size());
    for e in map.data_extents() {
        let src = e.source_offset().expect("data extent");
        let src_end = src + e.length;
        // The first written range that ends after this extent starts.
        let first = merged.partition_point(|r| r.end <= src);
        for r in merged[first..].iter().take_while(|r| r.start < src_end) {
            let (a, z) = (r.start.max(src), r.end.min(src_end));
            b.push_data(
                GuestOffset(e.virtual_start + (a - src)),
                ByteLen(z - a),
                SourceOffset(a),
            )?;
        }
    }
    Ok(b.finish())
}

/// Cuts the data extents of `map` into chunks of at most `chunk_size` bytes, cut at
/// multiples of `chunk_size`. Before cutting, extents separated by fewer than `max_gap`
/// zero bytes are joined when the gap is the same in the source and joining saves a
/// request. Pass `max_gap` 0 when the source's gaps may hold anything but zeros.
/// Deterministic: the same map gives the same chunks (the journal relies on it).
pub fn chunks(map: &ExtentMap, chunk_size: u64, max_gap: u64) -> Vec<Chunk> {
    assert!(chunk_size > 0, "chunk size is validated by the caller");
    let extents: Vec<Chunk> = map
        .data_extents()
        .map(|e| Chunk {
            virtual_offset: GuestOffset(e.virtual_start),
            source_offset: SourceOffset(e.source_offset().expect("data extent")),
            length: ByteLen(e.length),
        })
        .collect();
    let mut runs: Vec<Chunk> = Vec::with_capacity(extents.len());
    for (i, e) in extents.iter().enumerate() {
        match runs.last_mut() {
            Some(last) if i > 0 && joins(&extents[i - 1], e, chunk_size, max_gap) => {
                last.length = ByteLen(e.virtual_end() - last.virtual_offset.get());
            }
            _ => runs.push(*e),
        }
    }
    let mut out = Vec::new();
    for run in runs {
        let (start, end) = (run.virtual_offset.get(), run.virtual_end());
        let mut at = start;
        while at < end {
            let cut = ((at / chunk_size) + 1).saturating_mul(chunk_size).min(end);
            out.push(Chunk {
                virtual_offset: GuestOffset(at),
                source_offset: SourceOffset(run.source_offset.get() + (at - start)),
                length: ByteLen(cut - at),
            });
            at = cut;
        }
    }
    out
}

/// Whether to fetch the gap between consecutive extents `a` and `b` (see [`chunks`]).
fn joins(a: &Chunk, b: &Chunk, chunk_size: u64, max_gap: u64) -> bool {
    let a_end = a.virtual_end();
    let gap = b.virtual_offset.get() - a_end;
    let a_source_end = a.source_range().end;
    let same_in_source = b.source_offset.get().checked_sub(a_source_end) == Some(gap);
    // Both ends in one chunk cell: the joined run has one piece fewer.
    let saves_a_request = (a_end - 1) / chunk_size == b.virtual_offset.get() / chunk_size;
    same_in_source && (gap == 0 || (gap < max_gap && saves_a_request))
}

/// Why a chunk size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkSizeError {
    #[error("chunk size {size} is not between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes")]
    OutOfRange { size: u64 },
    #[error("chunk size {size} is not a multiple of 512 (pages are 512 bytes)")]
    Unaligned { size: u64 },
    #[error(
        "chunk size {size} is over 4 MiB: with --verify md5 the service hashes only ranges up to {MD5_MAX_CHUNK_SIZE} bytes"
    )]
    TooLargeForMd5 { size: u64 },
}

/// The chunk size to use: the one asked for, or the default for the verify mode.
pub fn choose_chunk_size(asked: Option<u64>, md5: bool) -> Result<u64, ChunkSizeError> {
    let size = match asked {
        None if md5 => return Ok(MD5_MAX_CHUNK_SIZE),
        None => return Ok(DEFAULT_CHUNK_SIZE),
        Some(s) => s,
    };
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
        return Err(ChunkSizeError::OutOfRange { size });
    }
    if size % 512 != 0 {
        return Err(ChunkSizeError::Unaligned { size });
    }
    if md5 && size > MD5_MAX_CHUNK_SIZE {
        return Err(ChunkSizeError::TooLargeForMd5 { size });
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::vhd::footer::tests::footer_bytes;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn fixed_footer_must_match_blob_length() {
        let f = footer_bytes(2, 4 * MIB, u64::MAX);
        assert_eq!(
            check_footer(&f, 4 * MIB + 512).unwrap().current_size,
            4 * MIB
        );
        assert!(matches!(
            check_footer(&f, 8 * MIB + 512),
            Err(VhdError::FixedSizeMismatch { .. })
        ));
        assert!(check_footer(&f, 100).is_err());
    }

    #[test]
    fn garbage_tail_and_differencing_are_bad_images() {
        let e = check_footer(&[0u8; 512], 4 * MIB + 512).unwrap_err();
        assert!(e.is_bad_image());
        let d = footer_bytes(4, 4 * MIB, 512);
        assert!(matches!(
            check_footer(&d, 8 * MIB),
            Err(VhdError::Differencing { .. })
        ));
    }

    #[test]
    fn windows_cover_the_data_area_once() {
        let w = page_range_windows(300 * MIB, PAGE_RANGE_WINDOW);
        assert_eq!(
            w,
            vec![0..128 * MIB, 128 * MIB..256 * MIB, 256 * MIB..300 * MIB]
        );
        assert!(page_range_windows(0, PAGE_RANGE_WINDOW).is_empty());
    }

    #[test]
    fn a_vhdx_block_map_keeps_only_written_pages_at_their_virtual_places() {
        // Two present 1 MiB blocks: virtual block 0 at file 8 MiB, virtual block 3 at file
        // 4 MiB (files place blocks in any order).
        let mut b = ExtentMapBuilder::new(4 * MIB);
        b.push_data(GuestOffset(0), ByteLen(MIB), SourceOffset(8 * MIB))
            .unwrap();
        b.push_data(GuestOffset(3 * MIB), ByteLen(MIB), SourceOffset(4 * MIB))
            .unwrap();
        let map = b.finish();
        let written = vec![
            4 * MIB + 4096..4 * MIB + 8192,  // inside block 3
            8 * MIB - 512..8 * MIB + 512,    // straddles block 0's start
            0..MIB,                          // header section: not disk data
            9 * MIB - 4096..10 * MIB,        // block 0's last page and beyond
            4 * MIB + 6144..4 * MIB + 12288, // overlaps the first range
        ];
        let got: Vec<(u64, u64, Option<u64>)> = restrict_to_written(&map, written)
            .unwrap()
            .extents()
            .iter()
            .map(|e| (e.virtual_start, e.length, e.source_offset()))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 512, Some(8 * MIB)),
                (512, MIB - 4096 - 512, None),
                (MIB - 4096, 4096, Some(9 * MIB - 4096)),
                (MIB, 2 * MIB + 4096, None),
                (3 * MIB + 4096, 8192, Some(4 * MIB + 4096)),
                (3 * MIB + 12288, MIB - 12288, None),
            ]
        );
    }

    #[test]
    fn page_ranges_merge_and_never_include_the_footer() {
        let size = 10 * MIB;
        let m = map_from_page_ranges(
            vec![
                4096..8192,
                0..512,
                8192..9000,             // adjacent: merged
                512..1024,              // adjacent to 0..512
                size - 512..size + 512, // crosses into the footer
            ],
            size,
        )
        .unwrap();
        let data: Vec<_> = m
            .data_extents()
            .map(|e| (e.virtual_start, e.length, e.source_offset()))
            .collect();
        assert_eq!(
            data,
            vec![
                (0, 1024, Some(0)),
                (4096, 9000 - 4096, Some(4096)),
                (size - 512, 512, Some(size - 512))
            ]
        );
    }

    #[test]
    fn small_gaps_coalesce_large_ones_do_not() {
        let m = map_from_page_ranges(
            vec![0..MIB, MIB + 4096..2 * MIB, 3 * MIB..3 * MIB + 512],
            4 * MIB,
        )
        .unwrap();
        let c = chunks(&m, 8 * MIB, COALESCE_GAP);
        assert_eq!(
            c,
            vec![
                Chunk {
                    virtual_offset: GuestOffset(0),
                    source_offset: SourceOffset(0),
                    length: ByteLen(2 * MIB)
                },
                Chunk {
                    virtual_offset: GuestOffset(3 * MIB),
                    source_offset: SourceOffset(3 * MIB),
                    length: ByteLen(512)
                },
            ]
        );
        assert_eq!(chunks(&m, 8 * MIB, 0).len(), 3);
        // A gap of exactly the limit is skipped, one page under it is fetched.
        for (gap, pieces) in [(COALESCE_GAP, 2), (COALESCE_GAP - 512, 1)] {
            let m = map_from_page_ranges(vec![0..MIB, MIB + gap..2 * MIB], 4 * MIB).unwrap();
            assert_eq!(chunks(&m, 8 * MIB, COALESCE_GAP).len(), pieces, "gap {gap}");
        }
    }

    #[test]
    fn gaps_across_a_chunk_boundary_are_not_fetched() {
        // The gap holds the 4 MiB boundary: joined, the run would be cut there again.
        let m = map_from_page_ranges(vec![0..4 * MIB - 4096, 4 * MIB + 4096..8 * MIB], 8 * MIB)
            .unwrap();
        let c = chunks(&m, 4 * MIB, COALESCE_GAP);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.iter().map(|c| c.length.get()).sum::<u64>(),
            m.data_bytes()
        );
    }

    #[test]
    fn chunks_are_cut_at_chunk_multiples() {
        let ranges: Vec<Range<u64>> = std::iter::once(MIB..10 * MIB + 512).collect();
        let m = map_from_page_ranges(ranges, 12 * MIB).unwrap();
        let c = chunks(&m, 4 * MIB, 0);
        let spans: Vec<_> = c
            .iter()
            .map(|c| (c.virtual_offset.get(), c.length.get()))
            .collect();
        assert_eq!(
            spans,
            vec![(MIB, 3 * MIB), (4 * MIB, 4 * MIB), (8 * MIB, 2 * MIB + 512)]
        );
    }

    #[test]
    fn dynamic_maps_keep_source_offsets_and_do_not_coalesce_across_bitmaps() {
        let mut b = ExtentMapBuilder::new(8 * MIB);
        b.push_data(GuestOffset(0), ByteLen(2 * MIB), SourceOffset(3072))
            .unwrap();
        b.push_data(
            GuestOffset(2 * MIB),
            ByteLen(2 * MIB),
            SourceOffset(3072 + 2 * MIB + 512),
        )
        .unwrap();
        let m = b.finish();
        let c = chunks(&m, 8 * MIB, COALESCE_GAP);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].source_offset, SourceOffset(3072 + 2 * MIB + 512));
    }

    #[test]
    fn chunk_size_rules() {
        assert_eq!(choose_chunk_size(None, false), Ok(8 * MIB));
        assert_eq!(choose_chunk_size(None, true), Ok(4 * MIB));
        assert_eq!(choose_chunk_size(Some(MIB), true), Ok(MIB));
        assert!(choose_chunk_size(Some(8 * MIB), true).is_err());
        assert!(choose_chunk_size(Some(1000 * 512 + 1), false).is_err());
        assert!(choose_chunk_size(Some(512), false).is_err());
    }

    proptest! {
        /// Chunks cover exactly the data bytes (plus coalesced gaps), in order, disjoint,
        /// none longer than the chunk size, with the fixed-VHD offset identity.
        #[test]
        fn chunks_cover_the_written_pages(
            pages in proptest::collection::vec((0u64..4096, 1u64..64), 0..200),
            chunk_pages in 128u64..4096,
            gap_pages in 0u64..256,
        ) {
            let size = 4096 * 512;
            let ranges: Vec<_> = pages.iter().map(|&(p, n)| p * 512..((p + n) * 512).min(size)).collect();
            let m = map_from_page_ranges(ranges.clone(), size).unwrap();
            let cs = chunks(&m, chunk_pages * 512, gap_pages * 512);
            let mut prev_end = 0;
            for c in &cs {
                prop_assert!(c.length.get() > 0 && c.length.get() <= chunk_pages * 512);
                prop_assert!(c.virtual_offset.get() >= prev_end);
                prop_assert_eq!(c.virtual_offset.get(), c.source_offset.get());
                prev_end = c.virtual_end();
                prop_assert!(prev_end <= size);
            }
            for r in ranges {
                for page in (r.start..r.end).step_by(512) {
                    prop_assert!(cs.iter().any(|c| c.virtual_offset.get() <= page && page < c.virtual_end()));
                }
            }
            let fetched: u64 = cs.iter().map(|c| c.length.get()).sum();
            prop_assert!(fetched >= m.data_bytes());
            if gap_pages == 0 { prop_assert_eq!(fetched, m.data_bytes()); }
        }
    }
}
