//! The header section (MS-VHDX 2.2): the file type identifier, the two headers and the two
//! region tables, all in the first MiB. Parsers take the bytes of one structure and return
//! it checked; [`current_header`] and [`check_layout`] apply the rules that span several.
//!
//! All VHDX integers are little-endian (unlike VHD's big-endian).

use super::crc32c::crc32c_with_zeroed_field;
use super::error::VhdxError;
use super::{Guid, le_u16, le_u32, le_u64};
use crate::image::vhd::printable;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
/// MS-VHDX 2.2.1: "vhdxfile" at offset 0.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";
/// The header section: identifier, two headers, two region tables, reserved; 1 MiB.
pub const HEADER_SECTION_SIZE: u64 = MIB;
pub const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
/// A header is 4 KiB, all of it under the checksum.
pub const HEADER_SIZE: usize = 4096;
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
const HEADER_SIGNATURE: &[u8; 4] = b"head";
const REGION_SIGNATURE: &[u8; 4] = b"regi";
/// MS-VHDX 2.2.3.1: at most 2047 entries, so the table fits its 64 KiB.
const MAX_REGION_ENTRIES: u32 = 2047;
const CHECKSUM_AT: usize = 4;
/// Regions and the log sit at, and are sized in, multiples of 1 MiB (2.2.3.2, 2.2.2).
pub const ALIGNMENT: u64 = MIB;

/// MS-VHDX 2.2.3.2, "Known Region Properties".
pub const BAT_REGION: Guid = Guid::new(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
pub const METADATA_REGION: Guid = Guid::new(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);

/// One header (MS-VHDX 2.2.2), checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub checksum: u32,
    pub sequence_number: u64,
    pub file_write_guid: Guid,
    pub data_write_guid: Guid,
    /// All zeros when the log is empty; anything else means it must be replayed.
    pub log_guid: Guid,
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

/// Parses the header read at file offset `at`.
pub fn parse_header(raw: &[u8; HEADER_SIZE], at: u64) -> Result<Header, VhdxError> {
    const S: &str = "header";
    if &raw[0..4] != HEADER_SIGNATURE {
        return Err(VhdxError::Signature {
            structure: S,
            offset: at,
            expected: "head",
            found: printable(&raw[0..4]),
        });
    }
    let stored = le_u32(raw, CHECKSUM_AT);
    let computed = crc32c_with_zeroed_field(raw, CHECKSUM_AT);
    if stored != computed {
        return Err(VhdxError::Checksum {
            structure: S,
            offset: at,
            stored,
            computed,
        });
    }
    let h = Header {
        checksum: stored,
        sequence_number: le_u64(raw, 8),
        file_write_guid: Guid::from_le(raw, 16),
        data_write_guid: Guid::from_le(raw, 32),
        log_guid: Guid::from_le(raw, 48),
        log_version: le_u16(raw, 64),
        version: le_u16(raw, 66),
        log_length: le_u32(raw, 68),
        log_offset: le_u64(raw, 72),
    };
    let field = |field, value: u64, rule| VhdxError::Field {
        structure: S,
        offset: at,
        field,
        value,
        rule,
    };
    if h.version != 1 {
        return Err(field("version", h.version.into(), "only version 1 exists"));
    }
    if h.log_version != 0 {
        return Err(field(
            "log version",
            h.log_version.into(),
            "only log version 0 exists",
        ));
    }
    if !u64::from(h.log_length).is_multiple_of(ALIGNMENT) {
        return Err(field(
            "log length",
            h.log_length.into(),
            "must be a multiple of 1 MiB",
        ));
    }
    if !h.log_offset.is_multiple_of(ALIGNMENT)
        || (h.log_length > 0 && h.log_offset < HEADER_SECTION_SIZE)
    {
        return Err(field(
            "log offset",
            h.log_offset,
            "must be a multiple of 1 MiB past the header section",
        ));
    }
    Ok(h)
}

/// The current header (MS-VHDX 2.2.2.1): of the valid ones, the one with the higher sequence
/// number; header 1 when they are equal. Also returns which one (1 or 2).
pub fn current_header(
    first: Result<Header, VhdxError>,
    second: Result<Header, VhdxError>,
) -> Result<(Header, u8), VhdxError> {
    match (first, second) {
        (Ok(a), Ok(b)) if b.sequence_number > a.sequence_number => Ok((b, 2)),
        (Ok(a), _) => Ok((a, 1)),
        (Err(_), Ok(b)) => Ok((b, 2)),
        (Err(a), Err(b)) => Err(VhdxError::NoValidHeader {
            first: a.to_string(),
            second: b.to_string(),
        }),
    }
}

/// A region of the file, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Region {
    pub offset: u64,
    pub length: u64,
}

impl Region {
    pub fn end(&self) -> u64 {
        // Cannot overflow: both are checked below 2^44 MiB-aligned values by the parser.
        self.offset + self.length
    }
}

/// The two regions this tool knows (BAT and metadata), from a checked region table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Regions {
    pub bat: Region,
    pub metadata: Region,
}

/// Parses the region table read at `at` (MS-VHDX 2.2.3).
pub fn parse_region_table(raw: &[u8], at: u64) -> Result<Regions, VhdxError> {
    const S: &str = "region table";
    if &raw[0..4] != REGION_SIGNATURE {
        return Err(VhdxError::Signature {
            structure: S,
            offset: at,
            expected: "regi",
            found: printable(&raw[0..4]),
        });
    }
    let stored = le_u32(raw, CHECKSUM_AT);
    let computed = crc32c_with_zeroed_field(raw, CHECKSUM_AT);
    if stored != computed {
        return Err(VhdxError::Checksum {
            structure: S,
            offset: at,
            stored,
            computed,
        });
    }
    let count = le_u32(raw, 8);
    if count > MAX_REGION_ENTRIES {
        return Err(VhdxError::Field {
            structure: S,
            offset: at + 8,
            field: "entry count",
            value: count.into(),
            rule: "at most 2047 entries fit the table",
        });
    }
    let (mut bat, mut metadata) = (None, None);
    for i in 0..count as usize {
        let e = 16 + i * 32;
        let entry_at = at + e as u64;
        let guid = Guid::from_le(raw, e);
        let region = Region {
            offset: le_u64(raw, e + 16),
            length: le_u32(raw, e + 24).into(),
        };
        let required = le_u32(raw, e + 28) & 1 != 0;
        let (slot, name) = if guid == BAT_REGION {
            (&mut bat, "BAT")
        } else if guid == METADATA_REGION {
            (&mut metadata, "metadata")
        } else if required {
            return Err(VhdxError::UnknownRequiredRegion {
                offset: entry_at,
                guid: guid.to_string(),
            });
        } else {
            continue; // optional and unknown: safe to ignore (2.2.3.2)
        };
        check_region_entry(region, entry_at)?;
        if slot.replace(region).is_some() {
            return Err(VhdxError::DuplicateRegion {
                offset: entry_at,
                region: name,
            });
        }
    }
    Ok(Regions {
        bat: bat.ok_or(VhdxError::MissingRegion { region: "BAT" })?,
        metadata: metadata.ok_or(VhdxError::MissingRegion { region: "metadata" })?,
    })
}

fn check_region_entry(r: Region, entry_at: u64) -> Result<(), VhdxError> {
    let field = |field, value, rule| VhdxError::Field {
        structure: "region table entry",
        offset: entry_at,
        field,
        value,
        rule,
    };
    // The 2^52 cap keeps every sum of offsets and lengths far from overflow; no real file
    // comes near it (the format's own maximum is 64 TiB of data).
    if !r.offset.is_multiple_of(ALIGNMENT) || r.offset < HEADER_SECTION_SIZE || r.offset >= 1 << 52
    {
        return Err(field(
            "file offset",
            r.offset,
            "must be a multiple of 1 MiB past the header section",
        ));
    }
    if r.length == 0 || !r.length.is_multiple_of(ALIGNMENT) {
        return Err(field(
            "length",
            r.length,
            "must be a positive multiple of 1 MiB",
        ));
    }
    Ok(())
}

/// The fixed structures of the file: the header section, the log, the BAT and metadata
/// regions. Each lies inside the file and none overlaps another. Returns them named, for
/// the block-overlap check.
pub fn check_layout(
    header: &Header,
    regions: &Regions,
    file_len: u64,
) -> Result<Vec<(&'static str, Region)>, VhdxError> {
    let mut all = vec![(
        "header section",
        Region {
            offset: 0,
            length: HEADER_SECTION_SIZE,
        },
    )];
    if header.log_length > 0 {
        all.push((
            "log",
            Region {
                offset: header.log_offset,
                length: header.log_length.into(),
            },
        ));
    }
    all.push(("BAT region", regions.bat));
    all.push(("metadata region", regions.metadata));
    for &(name, r) in &all {
        if r.offset
            .checked_add(r.length)
            .is_none_or(|end| end > file_len)
        {
            return Err(VhdxError::RegionOutsideFile {
                region: name,
                start: r.offset,
                length: r.length,
                file_len,
            });
        }
    }
    for (i, &(a, ra)) in all.iter().enumerate() {
        for &(b, rb) in &all[i + 1..] {
            if ra.offset < rb.end() && rb.offset < ra.end() {
                return Err(VhdxError::RegionsOverlap {
                    first: a,
                    second: b,
                    offset: ra.offset.max(rb.offset),
                });
            }
        }
    }
    Ok(all)
}
