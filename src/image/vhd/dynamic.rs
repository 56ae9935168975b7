//! Dynamic VHDs: the dynamic header ("cxsparse"), the block allocation table (BAT) and the
//! check that turns them into an extent map (VHD spec 1.0, "Dynamic Disk Header Format" and
//! "Block Allocation Table and Data Blocks").
//!
//! Every BAT entry is untrusted. A block must lie wholly inside the data area (before the
//! trailing footer), must not overlap the metadata (footer copy, header, BAT) or another
//! block; the table must cover the disk's current size. The per-block sector bitmap is
//! skipped, not read: for dynamic (not differencing) disks qemu ignores it too, and
//! unallocated blocks read as zeros.

use super::error::VhdError;
use super::footer::{DiskType, FOOTER_SIZE, Footer, SECTOR};
use super::{be_u32, be_u64, checksum, printable};
use crate::image::extent::{ExtentMap, ExtentMapBuilder};
use crate::image::offset::{ByteLen, GuestOffset, SourceOffset};
use crate::image::overlap::{BlockSpan, first_overlap};

pub const HEADER_SIZE: usize = 1024;
pub const COOKIE: &[u8; 8] = b"cxsparse";
const HEADER_VERSION: u32 = 0x0001_0000;
const CHECKSUM_AT: usize = 36;
/// BAT value of a block that was never written.
pub const UNALLOCATED: u32 = 0xffff_ffff;
/// Most BAT entries read (a 64 MiB table, held in memory while checked). The format's
/// 2040 GiB at the usual 2 MiB blocks needs about a million; this covers it down to
/// 128 KiB blocks. Past it a crafted header could make a reader allocate up to 16 GiB.
pub const MAX_BAT_ENTRIES: u64 = 1 << 24;

/// A parsed, validated dynamic header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DynamicHeader {
    /// Absolute byte offset of the BAT.
    pub table_offset: u64,
    pub header_version: u32,
    pub max_table_entries: u32,
    /// Bytes of disk data per block; a power of two ≥ 512 (2 MiB by default).
    pub block_size: u32,
    pub checksum: u32,
    /// Differencing disks only: the parent's name as stored (UTF-16BE).
    pub parent_name: String,
    pub parent_unique_id: String,
}

impl DynamicHeader {
    /// Bytes of the sector bitmap in front of each block: one bit per sector, padded to a
    /// whole sector.
    pub fn bitmap_size(&self) -> u64 {
        let sectors = u64::from(self.block_size) / SECTOR;
        sectors.div_ceil(8).div_ceil(SECTOR) * SECTOR
    }

    /// BAT entries needed to cover `current_size`.
    pub fn blocks_for(&self, current_size: u64) -> u64 {
        current_size.div_ceil(u64::from(self.block_size))
    }
}

/// Parses the header read at file offset `at`. The parent fields are kept for the
/// differencing-disk refusal; the block size is checked by [`check_block_size`] so a
/// differencing disk with odd fields is still named as such.
pub fn parse_header(raw: &[u8; HEADER_SIZE], at: u64) -> Result<DynamicHeader, VhdError> {
    if &raw[0..8] != COOKIE {
        return Err(VhdError::BadHeaderCookie {
            offset: at,
            found: printable(&raw[0..8]),
        });
    }
    let stored = be_u32(raw, CHECKSUM_AT);
    let computed = checksum(raw, CHECKSUM_AT);
    if stored != computed {
        return Err(VhdError::BadHeaderChecksum {
            offset: at,
            stored,
            computed,
        });
    }
    let header_version = be_u32(raw, 24);
    if header_version != HEADER_VERSION {
        return Err(VhdError::BadHeaderVersion {
            offset: at + 24,
            found: header_version,
        });
    }
    let name_units: Vec<u16> = raw[64..576]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Ok(DynamicHeader {
        table_offset: be_u64(raw, 16),
        header_version,
        max_table_entries: be_u32(raw, 28),
        block_size: be_u32(raw, 32),
        checksum: stored,
        parent_name: String::from_utf16_lossy(&name_units),
        parent_unique_id: crate::units::hex(&raw[40..56]),
    })
}

/// The steps between reading the dynamic header (the `HEADER_SIZE` bytes at `header_at`)
/// and reading the BAT, shared by `open` (files) and `download` (ranged reads): parse the
/// header, refuse a differencing disk by its parent's name, check the block size, and
/// locate the BAT.
pub fn locate_bat(
    raw: &[u8; HEADER_SIZE],
    header_at: u64,
    footer: &Footer,
    file_len: u64,
) -> Result<BatLayout, VhdError> {
    let differencing = footer.disk_type == DiskType::Differencing;
    let header = match parse_header(raw, header_at) {
        Ok(h) => h,
        Err(_) if differencing => {
            return Err(VhdError::Differencing {
                parent: "(unreadable header)".into(),
            });
        }
        Err(e) => return Err(e),
    };
    if differencing {
        return Err(VhdError::Differencing {
            parent: format!(
                "\"{}\" (unique id {})",
                header.parent_name, header.parent_unique_id
            ),
        });
    }
    check_block_size(&header, header_at)?;
    let (bat_at, bat_len) = bat_location(&header, header_at, footer.current_size, file_len)?;
    Ok(BatLayout {
        header,
        header_at,
        bat_at,
        bat_len,
        current_size: footer.current_size,
        file_len,
    })
}

/// A checked dynamic header and where its BAT lies, as [`locate_bat`] found them.
#[derive(Debug, Clone)]
pub struct BatLayout {
    pub header: DynamicHeader,
    pub header_at: u64,
    pub bat_at: u64,
    pub bat_len: u64,
    current_size: u64,
    file_len: u64,
}

impl BatLayout {
    /// The extent map from the BAT's bytes (`bat_len` of them, read at `bat_at`).
    pub fn extent_map(&self, bat: &[u8]) -> Result<(ExtentMap, BatSummary), VhdError> {
        extent_map(
            &self.header,
            self.header_at,
            bat,
            self.bat_at,
            self.current_size,
            self.file_len,
        )
    }
}

/// Where the dynamic header sits: the footer's data offset, checked to leave room for the
/// whole header before the trailing footer. Shared by local files and blob reads.
pub fn header_offset(data_offset: u64, file_len: u64) -> Result<u64, VhdError> {
    let tail_at = data_area_end(file_len);
    if data_offset
        .checked_add(HEADER_SIZE as u64)
        .is_none_or(|end| end > tail_at)
    {
        return Err(VhdError::HeaderOutsideFile {
            offset: tail_at + 16,
            what: "data offset",
            value: data_offset,
            file_len,
        });
    }
    Ok(data_offset)
}

pub fn check_block_size(h: &DynamicHeader, at: u64) -> Result<(), VhdError> {
    if !h.block_size.is_power_of_two() || u64::from(h.block_size) < SECTOR {
        return Err(VhdError::BadBlockSize {
            offset: at + 32,
            block_size: h.block_size,
        });
    }
    Ok(())
}

/// Where the BAT sits and how many bytes of it to read for a disk of `current_size`.
/// Checks, before anything is allocated for it: the table covers the disk, claims no
/// more entries than the disk needs (its size rounded up to a block), stays within
/// [`MAX_BAT_ENTRIES`], and lies inside the data area (before the footer). `convert`,
/// `inspect` and `download` all size their BAT buffer from this.
pub fn bat_location(
    h: &DynamicHeader,
    header_at: u64,
    current_size: u64,
    file_len: u64,
) -> Result<(u64, u64), VhdError> {
    let needed = h.blocks_for(current_size);
    if u64::from(h.max_table_entries) < needed {
        return Err(VhdError::BatTooSmall {
            offset: header_at + 28,
            entries: h.max_table_entries,
            needed,
            block_size: h.block_size,
            current_size,
        });
    }
    if u64::from(h.max_table_entries) > needed {
        return Err(VhdError::BatTooLarge {
            offset: header_at + 28,
            entries: h.max_table_entries,
            needed,
            block_size: h.block_size,
            current_size,
        });
    }
    if needed > MAX_BAT_ENTRIES {
        return Err(VhdError::BatOverLimit {
            offset: header_at + 28,
            entries: needed,
            limit: MAX_BAT_ENTRIES,
            limit_mib: (MAX_BAT_ENTRIES * 4) >> 20,
            block_size: h.block_size,
            current_size,
        });
    }
    let length = needed * 4;
    let limit = data_area_end(file_len);
    match h.table_offset.checked_add(length) {
        Some(end) if end <= limit => Ok((h.table_offset, length)),
        _ => Err(VhdError::BatOutsideFile {
            offset: h.table_offset,
            length,
            limit,
        }),
    }
}

fn data_area_end(file_len: u64) -> u64 {
    file_len.saturating_sub(FOOTER_SIZE as u64)
}

/// Summary of a checked BAT, for `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatSummary {
    pub entries_used: u64,
    pub allocated_blocks: u64,
}

/// Checks every BAT entry and builds the extent map of a dynamic disk.
///
/// `bat` holds the big-endian table bytes read at `bat_offset`; `header_at` is the dynamic
/// header's offset; the data area is `[0, file_len - 512)`.
pub fn extent_map(
    h: &DynamicHeader,
    header_at: u64,
    bat: &[u8],
    bat_offset: u64,
    current_size: u64,
    file_len: u64,
) -> Result<(ExtentMap, BatSummary), VhdError> {
    let block_size = u64::from(h.block_size);
    let bitmap = h.bitmap_size();
    let layout = Layout {
        metadata: metadata_regions(header_at, bat_offset, bat.len() as u64)?,
        bat_offset,
        block_bytes: bitmap + block_size,
        limit: data_area_end(file_len),
    };
    let mut blocks: Vec<BlockSpan> = Vec::new();
    let mut builder = ExtentMapBuilder::new(current_size);
    for (index, entry) in bat.chunks_exact(4).enumerate() {
        let index = index as u64;
        let sector = u32::from_be_bytes(entry.try_into().expect("4-byte entry"));
        if sector == UNALLOCATED {
            continue;
        }
        let block = layout.block(index, sector)?;
        let virtual_start = index * block_size;
        let length = block_size.min(current_size - virtual_start);
        builder.push_data(
            GuestOffset(virtual_start),
            ByteLen(length),
            SourceOffset(block.start + bitmap),
        )?;
        blocks.push(block);
    }

    // No two blocks (bitmap and data) share a byte of the file.
    if let Some(o) = first_overlap(&mut blocks) {
        return Err(VhdError::BlocksOverlap {
            first: o.first,
            second: o.second,
            start: o.second_start,
            first_end: o.first_end,
        });
    }
    let summary = BatSummary {
        entries_used: bat.len() as u64 / 4,
        allocated_blocks: blocks.len() as u64,
    };
    Ok((builder.finish(), summary))
}

/// A file region blocks must not touch: (name, start, end).
type MetadataRegion = (&'static str, u64, u64);

/// The footer copy, the dynamic header and the BAT (padded to whole sectors); refused when
/// the BAT overlaps either of the other two.
fn metadata_regions(
    header_at: u64,
    bat_offset: u64,
    bat_len: u64,
) -> Result<[MetadataRegion; 3], VhdError> {
    let bat_end = bat_offset + bat_len.div_ceil(SECTOR) * SECTOR;
    let metadata = [
        ("footer copy at offset 0", 0, FOOTER_SIZE as u64),
        ("dynamic header", header_at, header_at + HEADER_SIZE as u64),
        ("block allocation table", bat_offset, bat_end),
    ];
    if bat_offset < bat_end {
        for &(region, start, end) in &metadata[..2] {
            if bat_offset < end && start < bat_end {
                return Err(VhdError::BatOverlapsMetadata {
                    offset: bat_offset,
                    region,
                });
            }
        }
    }
    Ok(metadata)
}

/// Where blocks may lie in the file.
struct Layout {
    metadata: [MetadataRegion; 3],
    bat_offset: u64,
    /// A block's bitmap and data.
    block_bytes: u64,
    /// The end of the data area.
    limit: u64,
}

impl Layout {
    /// The file bytes of block `index` whose BAT entry is `sector`, refused outside the
    /// data area or on metadata.
    fn block(&self, index: u64, sector: u32) -> Result<BlockSpan, VhdError> {
        let entry_offset = self.bat_offset + index * 4;
        let start = u64::from(sector) * SECTOR;
        let end = start + self.block_bytes; // < 2^41 + 2^32 + 2^32: no overflow
        if end > self.limit {
            return Err(VhdError::BlockOutsideFile {
                block: index,
                entry_offset,
                sector,
                start,
                end,
                limit: self.limit,
            });
        }
        for &(region, m_start, m_end) in &self.metadata {
            if start < m_end && m_start < end {
                return Err(VhdError::BlockOverlapsMetadata {
                    block: index,
                    entry_offset,
                    start,
                    region,
                });
            }
        }
        Ok(BlockSpan { start, end, index })
    }
}
