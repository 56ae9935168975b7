//! The block allocation table (MS-VHDX 2.5): where each payload block is and what state
//! it is in, turned into the extent map every sink consumes.
//!
//! Payload entries are interleaved with sector bitmap entries: after every `chunk_ratio`
//! payload entries comes one bitmap entry (2.5.1). Only FULLY_PRESENT blocks carry data
//! here; NOT_PRESENT, UNDEFINED, ZERO and UNMAPPED read as zeros (a disk without a parent
//! has nothing else to show through), and PARTIALLY_PRESENT may only occur in a
//! differencing disk, which is refused before the BAT is read. Every entry is untrusted:
//! a present block must lie inside the file, overlap no fixed structure (header section,
//! log, BAT, metadata) and no other block.

use super::error::VhdxError;
use super::header::{MIB, Region};
use super::le_u64;
use super::metadata::Metadata;
use crate::image::extent::{ExtentMap, ExtentMapBuilder};
use crate::image::offset::{ByteLen, GuestOffset, SourceOffset};
use crate::image::overlap::{BlockSpan, first_overlap};

/// Bytes per BAT entry.
pub const ENTRY_SIZE: u64 = 8;
/// Most BAT entries read (a 128 MiB table, held in memory while checked): 16 TiB at 1 MiB
/// blocks, the format's whole 64 TiB at 4 MiB blocks or more (Hyper-V's default is 32 MiB).
/// Past it a crafted file could make a reader allocate gigabytes.
pub const MAX_BAT_ENTRIES: u64 = 1 << 24;

/// Payload block states, 2.5.1.1.
pub const PAYLOAD_BLOCK_NOT_PRESENT: u8 = 0;
pub const PAYLOAD_BLOCK_UNDEFINED: u8 = 1;
pub const PAYLOAD_BLOCK_ZERO: u8 = 2;
pub const PAYLOAD_BLOCK_UNMAPPED: u8 = 3;
pub const PAYLOAD_BLOCK_FULLY_PRESENT: u8 = 6;
pub const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u8 = 7;
/// Sector bitmap block states, 2.5.1.2.
pub const SB_BLOCK_NOT_PRESENT: u8 = 0;
pub const SB_BLOCK_PRESENT: u8 = 6;

/// State in bits 0–2, file offset in MiB in bits 20–63.
fn split(entry: u64) -> (u8, Option<u64>) {
    ((entry & 7) as u8, (entry >> 20).checked_mul(MIB))
}

/// Where the BAT is and how many bytes of it to read: exactly the entries the disk needs,
/// checked against the region's length and [`MAX_BAT_ENTRIES`] before anything is
/// allocated for it. `convert`, `inspect` and `download` all size their buffer from this.
pub fn bat_location(m: &Metadata, region: Region) -> Result<(u64, u64), VhdxError> {
    let needed = m.total_bat_entries();
    if needed > MAX_BAT_ENTRIES {
        return Err(VhdxError::BatOverLimit {
            entries: needed,
            limit: MAX_BAT_ENTRIES,
            block_size: m.block_size,
            virtual_size: m.virtual_size,
        });
    }
    let length = needed * ENTRY_SIZE;
    if length > region.length {
        return Err(VhdxError::BatTooSmall {
            needed,
            blocks: m.data_blocks(),
            block_size: m.block_size,
            region_length: region.length,
        });
    }
    Ok((region.offset, length))
}

/// How many entries are in each state, for `inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatSummary {
    pub entries: u64,
    pub payload_blocks: u64,
    pub not_present: u64,
    pub undefined: u64,
    pub zero: u64,
    pub unmapped: u64,
    pub fully_present: u64,
    pub partially_present: u64,
    pub sector_bitmap_entries: u64,
    pub sector_bitmaps_present: u64,
}

/// Checks every entry of `bat` (read at `bat_offset`, sized by [`bat_location`]) and
/// builds the extent map. `fixed` are the structures blocks must not overlap.
pub fn extent_map(
    m: &Metadata,
    bat: &[u8],
    bat_offset: u64,
    fixed: &[(&'static str, Region)],
    file_len: u64,
) -> Result<(ExtentMap, BatSummary), VhdxError> {
    let ratio = m.chunk_ratio();
    let block_size = u64::from(m.block_size);
    let mut summary = BatSummary {
        entries: bat.len() as u64 / ENTRY_SIZE,
        payload_blocks: m.data_blocks(),
        ..BatSummary::default()
    };
    let mut builder = ExtentMapBuilder::new(m.virtual_size);
    let mut blocks: Vec<BlockSpan> = Vec::new();
    for (j, raw) in bat.chunks_exact(ENTRY_SIZE as usize).enumerate() {
        let j = j as u64;
        let entry_offset = bat_offset + j * ENTRY_SIZE;
        let (state, offset) = split(le_u64(raw, 0));
        if (j + 1).is_multiple_of(ratio + 1) {
            count_bitmap(&mut summary, state, j, entry_offset)?;
            continue;
        }
        let block = j - j / (ratio + 1);
        let bad = |problem| VhdxError::BadBlockState {
            block,
            entry_offset,
            state,
            problem,
        };
        match state {
            PAYLOAD_BLOCK_NOT_PRESENT => summary.not_present += 1,
            PAYLOAD_BLOCK_UNDEFINED => summary.undefined += 1,
            PAYLOAD_BLOCK_ZERO => summary.zero += 1,
            PAYLOAD_BLOCK_UNMAPPED => summary.unmapped += 1,
            PAYLOAD_BLOCK_FULLY_PRESENT => {
                summary.fully_present += 1;
                let virtual_start = block * block_size;
                let length = block_size.min(m.virtual_size - virtual_start);
                let start = present_block(block, entry_offset, offset, length, fixed, file_len)?;
                blocks.push(BlockSpan {
                    start,
                    end: start + length,
                    index: block,
                });
                builder.push_data(
                    GuestOffset(virtual_start),
                    ByteLen(length),
                    SourceOffset(start),
                )?;
            }
            PAYLOAD_BLOCK_PARTIALLY_PRESENT => {
                return Err(bad(
                    "PARTIALLY_PRESENT, which only a differencing disk may have",
                ));
            }
            _ => return Err(bad("an undefined payload block state")),
        }
    }
    if let Some(o) = first_overlap(&mut blocks) {
        return Err(VhdxError::BlocksOverlap {
            first: o.first,
            second: o.second,
            start: o.second_start,
            first_end: o.first_end,
        });
    }
    Ok((builder.finish(), summary))
}

fn count_bitmap(
    summary: &mut BatSummary,
    state: u8,
    j: u64,
    entry_offset: u64,
) -> Result<(), VhdxError> {
    summary.sector_bitmap_entries += 1;
    match state {
        SB_BLOCK_NOT_PRESENT => Ok(()),
        SB_BLOCK_PRESENT => {
            summary.sector_bitmaps_present += 1;
            Ok(())
        }
        _ => Err(VhdxError::BadBlockState {
            block: j,
            entry_offset,
            state,
            problem: "an undefined sector bitmap block state",
        }),
    }
}

/// A FULLY_PRESENT block's file offset, checked: inside the file, clear of every fixed
/// structure. Only the block's first `length` bytes are checked and read (the last block
/// of a disk whose size is not a multiple of the block size is short).
fn present_block(
    block: u64,
    entry_offset: u64,
    offset: Option<u64>,
    length: u64,
    fixed: &[(&'static str, Region)],
    file_len: u64,
) -> Result<u64, VhdxError> {
    let start = offset.unwrap_or(u64::MAX);
    match start.checked_add(length) {
        Some(end) if end <= file_len => {
            for &(region, r) in fixed {
                if start < r.end() && r.offset < end {
                    return Err(VhdxError::BlockOverlapsMetadata {
                        block,
                        entry_offset,
                        start,
                        region,
                    });
                }
            }
            Ok(start)
        }
        end => Err(VhdxError::BlockOutsideFile {
            block,
            entry_offset,
            start,
            end: end.unwrap_or(u64::MAX),
            file_len,
        }),
    }
}
