//! The metadata region (MS-VHDX 2.2.4 and 2.6): a table of items, and the known items that
//! say how to read the disk — file parameters (block size, leave-blocks-allocated,
//! has-parent), virtual disk size, logical and physical sector size, page 83 data, and for
//! a differencing disk the parent locator.
//!
//! Reading is in two steps so a remote reader can fetch little: [`parse_table`] checks the
//! 64 KiB table and says which bytes of the region hold the known items ([`MetadataTable::span`],
//! bounded), then [`parse_items`] checks those bytes.

use super::error::VhdxError;
use super::header::{MIB, Region};
use super::{Guid, le_u16, le_u32, le_u64};
use crate::image::vhd::printable;

pub const TABLE_SIZE: usize = 64 * 1024;
const TABLE_SIGNATURE: &[u8; 8] = b"metadata";
const MAX_ENTRIES: u16 = 2047;
/// 2.2.4.2: an item is at most 1 MiB.
const MAX_ITEM_LENGTH: u32 = MIB as u32;
/// Most bytes of item data read: the known items are a few dozen bytes plus a parent
/// locator; writers put them right after the table. A table that spreads them further is
/// refused rather than read into memory.
pub const MAX_SPAN: u64 = 16 * MIB;
const IS_REQUIRED: u32 = 1 << 2;

pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
/// 2.6.2.1: at most 256 MiB.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// 2.6.2.2: at most 64 TiB.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

const fn g(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
    Guid::new(a, b, c, d)
}
/// MS-VHDX 2.6.2, "Known Metadata Items".
pub const FILE_PARAMETERS: Guid = g(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
pub const VIRTUAL_DISK_SIZE: Guid = g(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
pub const PAGE_83_DATA: Guid = g(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
pub const LOGICAL_SECTOR_SIZE: Guid = g(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
pub const PHYSICAL_SECTOR_SIZE: Guid = g(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
pub const PARENT_LOCATOR: Guid = g(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);

/// Where one item's bytes are, relative to the start of the metadata region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemRef {
    pub offset: u64,
    pub length: u64,
}

/// The checked table: where each known item is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataTable {
    pub file_parameters: Option<ItemRef>,
    pub virtual_disk_size: Option<ItemRef>,
    pub page_83_data: Option<ItemRef>,
    pub logical_sector_size: Option<ItemRef>,
    pub physical_sector_size: Option<ItemRef>,
    pub parent_locator: Option<ItemRef>,
}

impl MetadataTable {
    fn items(&self) -> impl Iterator<Item = ItemRef> + '_ {
        [
            self.file_parameters,
            self.virtual_disk_size,
            self.page_83_data,
            self.logical_sector_size,
            self.physical_sector_size,
            self.parent_locator,
        ]
        .into_iter()
        .flatten()
    }

    /// The bytes of the region (relative start, length) that hold every known item: what
    /// [`parse_items`] needs. Refused past [`MAX_SPAN`].
    pub fn span(&self, region: Region) -> Result<ItemRef, VhdxError> {
        let start = self.items().map(|i| i.offset).min().unwrap_or(0);
        let end = self.items().map(|i| i.offset + i.length).max().unwrap_or(0);
        if end - start > MAX_SPAN {
            return Err(VhdxError::Field {
                structure: "metadata table",
                offset: region.offset,
                field: "span of the known items",
                value: end - start,
                rule: "items spread over more than 16 MiB are not read",
            });
        }
        Ok(ItemRef {
            offset: start,
            length: end - start,
        })
    }
}

/// Parses the metadata table read at the start of `region`.
pub fn parse_table(raw: &[u8], region: Region) -> Result<MetadataTable, VhdxError> {
    let at = region.offset;
    if &raw[0..8] != TABLE_SIGNATURE {
        return Err(VhdxError::Signature {
            structure: "metadata table",
            offset: at,
            expected: "metadata",
            found: printable(&raw[0..8]),
        });
    }
    let count = le_u16(raw, 10);
    if count > MAX_ENTRIES {
        return Err(VhdxError::Field {
            structure: "metadata table",
            offset: at + 10,
            field: "entry count",
            value: count.into(),
            rule: "at most 2047 entries fit the table",
        });
    }
    let mut t = MetadataTable::default();
    for i in 0..usize::from(count) {
        let e = 32 + i * 32;
        let guid = Guid::from_le(raw, e);
        let item = ItemRef {
            offset: le_u32(raw, e + 16).into(),
            length: le_u32(raw, e + 20).into(),
        };
        let flags = le_u32(raw, e + 24);
        let (slot, name) = match guid {
            g if g == FILE_PARAMETERS => (&mut t.file_parameters, "file parameters"),
            g if g == VIRTUAL_DISK_SIZE => (&mut t.virtual_disk_size, "virtual disk size"),
            g if g == PAGE_83_DATA => (&mut t.page_83_data, "page 83 data"),
            g if g == LOGICAL_SECTOR_SIZE => (&mut t.logical_sector_size, "logical sector size"),
            g if g == PHYSICAL_SECTOR_SIZE => (&mut t.physical_sector_size, "physical sector size"),
            g if g == PARENT_LOCATOR => (&mut t.parent_locator, "parent locator"),
            g if flags & IS_REQUIRED != 0 => {
                return Err(VhdxError::UnknownRequiredMetadata {
                    guid: g.to_string(),
                });
            }
            _ => continue,
        };
        check_item_bounds(name, item, region.length)?;
        if slot.replace(item).is_some() {
            return Err(VhdxError::DuplicateMetadata { item: name });
        }
    }
    Ok(t)
}

/// 2.2.4.2: an item lies past the table, inside the region, and is at most 1 MiB.
fn check_item_bounds(name: &str, item: ItemRef, region_length: u64) -> Result<(), VhdxError> {
    let inside = item.length <= u64::from(MAX_ITEM_LENGTH)
        && item.offset >= TABLE_SIZE as u64
        && item.offset + item.length <= region_length;
    if item.length == 0 || !inside {
        return Err(VhdxError::MetadataItemOutside {
            item: name.to_string(),
            offset: item.offset,
            length: item.length,
            region_length,
        });
    }
    Ok(())
}

/// The disk's parameters, from the known items.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Metadata {
    /// Bytes of virtual disk per payload block: a power of two, 1 MiB to 256 MiB.
    pub block_size: u32,
    /// Set on fixed disks: every block stays allocated.
    pub leave_blocks_allocated: bool,
    pub has_parent: bool,
    pub virtual_size: u64,
    /// 512 or 4096: the sector size the guest formatted the disk with.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    pub page_83_data: Option<Guid>,
    /// For a differencing disk, the locator's key/value pairs (parent_linkage,
    /// relative_path, absolute_win32_path, ...), as stored.
    pub parent_locator: Vec<(String, String)>,
}

impl Metadata {
    /// 2.6.2.1 / 2.4.3: payload blocks per sector bitmap block,
    /// 2^23 × logical sector size / block size.
    pub fn chunk_ratio(&self) -> u64 {
        (u64::from(self.logical_sector_size) << 23) / u64::from(self.block_size)
    }

    pub fn data_blocks(&self) -> u64 {
        self.virtual_size.div_ceil(u64::from(self.block_size))
    }

    /// BAT entries of a disk without a parent (2.5): payload entries with a sector bitmap
    /// entry after every `chunk_ratio` of them, the last one only when a chunk is full.
    pub fn total_bat_entries(&self) -> u64 {
        let blocks = self.data_blocks();
        blocks + blocks.saturating_sub(1) / self.chunk_ratio()
    }

    /// The parent, as well as the locator names it, for the differencing refusal.
    pub fn parent_description(&self) -> String {
        let find = |k: &str| {
            self.parent_locator
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        match find("relative_path")
            .or_else(|| find("absolute_win32_path"))
            .or_else(|| find("volume_path"))
        {
            Some(path) => format!("{path:?}"),
            None if self.parent_locator.is_empty() => "(no parent locator)".into(),
            None => format!("{:?}", self.parent_locator),
        }
    }
}

/// Checks the known items. `span` holds the region's bytes at relative offset
/// `span_start` (see [`MetadataTable::span`]); `region` is for messages.
pub fn parse_items(
    t: &MetadataTable,
    span: &[u8],
    span_start: u64,
    region: Region,
) -> Result<Metadata, VhdxError> {
    let items = Items {
        span,
        span_start,
        region,
    };
    let (fp, fp_at) = items.get(t.file_parameters, "file parameters", 8)?;
    let block_size = le_u32(fp, 0);
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(field(
            fp_at,
            "block size",
            block_size.into(),
            "must be a power of two from 1 MiB to 256 MiB",
        ));
    }
    let flags = le_u32(fp, 4);
    let logical_sector_size = items.sector_size(t.logical_sector_size, "logical sector size")?;
    let physical_sector_size = match t.physical_sector_size {
        Some(_) => items.sector_size(t.physical_sector_size, "physical sector size")?,
        None => logical_sector_size,
    };
    let (vs, vs_at) = items.get(t.virtual_disk_size, "virtual disk size", 8)?;
    let virtual_size = le_u64(vs, 0);
    if virtual_size == 0
        || virtual_size > MAX_VIRTUAL_SIZE
        || !virtual_size.is_multiple_of(u64::from(logical_sector_size))
    {
        return Err(field(
            vs_at,
            "virtual disk size",
            virtual_size,
            "must be a positive multiple of the logical sector size, at most 64 TiB",
        ));
    }
    let page_83_data = match t.page_83_data {
        Some(_) => Some(Guid::from_le(
            items.get(t.page_83_data, "page 83 data", 16)?.0,
            0,
        )),
        None => None,
    };
    let parent_locator = match t.parent_locator {
        Some(_) => parse_parent_locator(items.get(t.parent_locator, "parent locator", 0)?.0),
        None => Vec::new(),
    };
    Ok(Metadata {
        block_size,
        leave_blocks_allocated: flags & 1 != 0,
        has_parent: flags & 2 != 0,
        virtual_size,
        logical_sector_size,
        physical_sector_size,
        page_83_data,
        parent_locator,
    })
}

/// The metadata region's bytes (from relative offset `span_start`), read item by item.
struct Items<'a> {
    span: &'a [u8],
    span_start: u64,
    region: Region,
}

impl<'a> Items<'a> {
    /// An item's bytes and its absolute file offset; refused when it is missing or its
    /// length is not `expected` (0: any length).
    fn get(
        &self,
        item: Option<ItemRef>,
        name: &'static str,
        expected: u64,
    ) -> Result<(&'a [u8], u64), VhdxError> {
        let item = item.ok_or(VhdxError::MissingMetadata { item: name })?;
        if expected != 0 && item.length != expected {
            return Err(VhdxError::MetadataItemLength {
                item: name,
                length: item.length,
                expected,
            });
        }
        let start = (item.offset - self.span_start) as usize;
        Ok((
            &self.span[start..start + item.length as usize],
            self.region.offset + item.offset,
        ))
    }

    fn sector_size(&self, item: Option<ItemRef>, name: &'static str) -> Result<u32, VhdxError> {
        let (b, at) = self.get(item, name, 4)?;
        match le_u32(b, 0) {
            s @ (512 | 4096) => Ok(s),
            s => Err(field(at, name, s.into(), "must be 512 or 4096")),
        }
    }
}

fn field(offset: u64, field: &'static str, value: u64, rule: &'static str) -> VhdxError {
    VhdxError::Field {
        structure: "metadata",
        offset,
        field,
        value,
        rule,
    }
}

/// 2.6.2.6: a header (locator type GUID, reserved, key/value count) and entries of key
/// offset, value offset (from the item's start), key length, value length; UTF-16LE
/// strings. Used only to name the parent in a refusal, so entries that do not fit are
/// skipped rather than reported.
pub fn parse_parent_locator(item: &[u8]) -> Vec<(String, String)> {
    if item.len() < 20 {
        return Vec::new();
    }
    let count = usize::from(le_u16(item, 18));
    let text = |offset: u32, length: u16| -> Option<String> {
        let start = offset as usize;
        let bytes = item.get(start..start.checked_add(usize::from(length))?)?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Some(String::from_utf16_lossy(&units))
    };
    (0..count)
        .map_while(|i| item.get(20 + i * 12..32 + i * 12))
        .filter_map(|e| {
            let key = text(le_u32(e, 0), le_u16(e, 8))?;
            let value = text(le_u32(e, 4), le_u16(e, 10))?;
            Some((key, value))
        })
        .collect()
}
