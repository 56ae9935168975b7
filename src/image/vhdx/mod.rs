//! Reading VHDX images (MS-VHDX 1.0: Hyper-V's disks, and Azure's exports of 4 KiB-sector
//! disks) into the same extent map a VHD gives.
//!
//! The parsers take byte slices and return validated structs, in the order a reader needs
//! them: [`parse_header_section`] (identifier, current header, region table, layout), then
//! the metadata table and items ([`metadata`]), then the BAT ([`bat`]). [`open`] drives
//! them through [`ReadAt`] for local files; `download` drives the same functions with
//! ranged reads. A VHDX whose log is not empty is read with its log replayed over it
//! ([`log`]; the input is never written) by [`open`], and refused by `download`; a
//! differencing VHDX is refused naming its parent.

pub mod bat;
pub mod crc32c;
pub mod error;
pub mod header;
pub mod log;
pub mod metadata;

use std::fmt;

use crate::image::extent::ExtentMap;
use crate::image::source::ReadAt;
pub use bat::BatSummary;
pub use error::VhdxError;
pub use header::{FILE_SIGNATURE, Header, Region, Regions};
pub use metadata::Metadata;

/// Bytes at the start of the file that hold the identifier, both headers and both region
/// tables: what [`parse_header_section`] takes.
pub const HEAD_LEN: u64 = header::REGION_TABLE_OFFSETS[1] + header::REGION_TABLE_SIZE as u64;
/// The creator field of the file type identifier: 512 bytes of UTF-16LE after the signature.
const CREATOR_AT: usize = 8;
const CREATOR_LEN: usize = 512;

/// A GUID as stored on disk (MS-VHDX 2.1: the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Guid([u8; 16]);

impl Guid {
    pub const fn new(a: u32, b: u16, c: u16, d: [u8; 8]) -> Self {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Self([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    pub fn from_le(b: &[u8], at: usize) -> Self {
        Self(b[at..at + 16].try_into().expect("in bounds"))
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{}-{}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            crate::units::hex(&b[8..10]),
            crate::units::hex(&b[10..])
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Fixed (every block allocated when created) or dynamic, from leave-blocks-allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VhdxType {
    Fixed,
    Dynamic,
}

/// The checked header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSection {
    pub creator: String,
    pub header: Header,
    /// 1 or 2: which header is current.
    pub header_index: u8,
    pub regions: Regions,
    /// Header section, log, BAT and metadata regions: what no payload block may overlap.
    pub fixed: Vec<(&'static str, Region)>,
}

/// Checks the first [`HEAD_LEN`] bytes of a file of `file_len` bytes: the identifier, the
/// current header, the first valid region table and the layout. Whether the log must be
/// replayed is the caller's business ([`HeaderSection::log_needs_replay`]).
pub fn parse_header_section(head: &[u8], file_len: u64) -> Result<HeaderSection, VhdxError> {
    if head.len() < FILE_SIGNATURE.len() || &head[..FILE_SIGNATURE.len()] != FILE_SIGNATURE {
        return Err(VhdxError::Signature {
            structure: "file type identifier",
            offset: 0,
            expected: "vhdxfile",
            found: crate::image::vhd::printable(&head[..head.len().min(8)]),
        });
    }
    if (head.len() as u64) < HEAD_LEN || file_len < header::HEADER_SECTION_SIZE {
        return Err(VhdxError::TooSmall {
            len: file_len,
            min: header::HEADER_SECTION_SIZE,
        });
    }
    let creator_units: Vec<u16> = head[CREATOR_AT..CREATOR_AT + CREATOR_LEN]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let header_at = |i: usize| {
        let at = header::HEADER_OFFSETS[i];
        let raw: &[u8; header::HEADER_SIZE] = head[at as usize..at as usize + header::HEADER_SIZE]
            .try_into()
            .expect("in HEAD_LEN");
        header::parse_header(raw, at)
    };
    let (header, header_index) = header::current_header(header_at(0), header_at(1))?;
    let table_at = |i: usize| {
        let at = header::REGION_TABLE_OFFSETS[i];
        header::parse_region_table(
            &head[at as usize..at as usize + header::REGION_TABLE_SIZE],
            at,
        )
    };
    // 2.2.3: the two copies are identical; a damaged first one (bad signature or CRC) is
    // replaced by the second. One that is intact but says something refused is refused.
    let regions = match table_at(0) {
        Ok(r) => r,
        Err(e) if !matches!(e, VhdxError::Signature { .. } | VhdxError::Checksum { .. }) => {
            return Err(e);
        }
        Err(first) => table_at(1).map_err(|second| VhdxError::NoValidRegionTable {
            first: first.to_string(),
            second: second.to_string(),
        })?,
    };
    let fixed = header::check_layout(&header, &regions, file_len)?;
    Ok(HeaderSection {
        creator: String::from_utf16_lossy(&creator_units),
        header,
        header_index,
        regions,
        fixed,
    })
}

impl HeaderSection {
    /// 2.3: a non-zero log GUID means the log holds updates not yet applied.
    pub fn log_needs_replay(&self) -> bool {
        !self.header.log_guid.is_zero()
    }

    /// The refusal for readers that do not replay logs.
    pub fn log_not_empty(&self) -> VhdxError {
        VhdxError::LogNotEmpty {
            log_guid: self.header.log_guid.to_string(),
            offset: self.header.log_offset,
            length: self.header.log_length.into(),
        }
    }
}

/// A replayed log: what it did, and the writes every read of the file must go through.
#[derive(Debug, Clone)]
pub struct LogReplay {
    pub summary: log::ReplaySummary,
    pub overlay: log::Overlay,
}

/// A VHDX that passed every check, with the extent map of its data.
#[derive(Debug, Clone)]
pub struct VhdxImage {
    /// With a replayed log: the file's length after replay.
    pub file_len: u64,
    pub section: HeaderSection,
    pub metadata: Metadata,
    pub bat: BatSummary,
    pub extents: ExtentMap,
    /// Set when the log was replayed: data must then be read through
    /// [`log::Replayed`] (see `DiskImage::reader`).
    pub log: Option<LogReplay>,
}

impl VhdxImage {
    pub fn virtual_size(&self) -> u64 {
        self.metadata.virtual_size
    }

    pub fn disk_type(&self) -> VhdxType {
        if self.metadata.leave_blocks_allocated {
            VhdxType::Fixed
        } else {
            VhdxType::Dynamic
        }
    }
}

/// Checks the metadata items (given the table and the span of item bytes it names) and
/// refuses a differencing disk. Shared by [`open`] and `download`.
pub fn check_metadata(
    table: &metadata::MetadataTable,
    span: &[u8],
    span_start: u64,
    region: Region,
) -> Result<Metadata, VhdxError> {
    let m = metadata::parse_items(table, span, span_start, region)?;
    if m.has_parent {
        return Err(VhdxError::Differencing {
            parent: m.parent_description(),
        });
    }
    Ok(m)
}

fn read<R: ReadAt + ?Sized>(
    src: &R,
    offset: u64,
    len: u64,
    what: &'static str,
) -> Result<Vec<u8>, VhdxError> {
    let file_len = src.len();
    if offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(VhdxError::Truncated {
            what,
            offset,
            needed: len,
            file_len,
        });
    }
    // Every caller bounds `len` first (header section, 64 KiB table, span ≤ 16 MiB, BAT
    // ≤ 128 MiB), so this allocation is bounded too.
    let mut buf = vec![0u8; len as usize];
    src.read_exact_at(&mut buf, offset)
        .map_err(|source| VhdxError::Io {
            what,
            offset,
            source,
        })?;
    Ok(buf)
}

/// Reads and checks the header section, replays a non-empty log over the file (in
/// memory), then checks metadata and BAT and builds the extent map. Reads O(BAT + log)
/// bytes; never reads block data.
pub fn open<R: ReadAt + ?Sized>(src: &R) -> Result<VhdxImage, VhdxError> {
    let file_len = src.len();
    let head = read(src, 0, HEAD_LEN.min(file_len), "header section")?;
    let section = parse_header_section(&head, file_len)?;
    if !section.log_needs_replay() {
        return open_rest(src, section);
    }
    let h = &section.header;
    let length = u64::from(h.log_length);
    if length > log::MAX_LOG_LENGTH {
        return Err(VhdxError::LogTooLarge {
            offset: h.log_offset,
            length,
            limit: log::MAX_LOG_LENGTH,
        });
    }
    if length == 0 {
        return Err(VhdxError::LogCorrupt {
            offset: h.log_offset,
            problem: "the header names a log GUID but a log of 0 bytes",
        });
    }
    // `check_layout` put the log inside the file.
    let raw_log = read(src, h.log_offset, length, "log")?;
    let (overlay, summary) = log::replay(&raw_log, h.log_offset, h.log_guid, file_len)?;
    let replayed = log::Replayed {
        inner: src,
        overlay: &overlay,
    };
    let head = read(&replayed, 0, HEAD_LEN, "header section")?;
    let section = parse_header_section(&head, replayed.len())?;
    let mut img = open_rest(&replayed, section)?;
    img.log = Some(LogReplay { summary, overlay });
    Ok(img)
}

/// Everything after the header section: metadata, then the BAT.
fn open_rest<R: ReadAt + ?Sized>(src: &R, section: HeaderSection) -> Result<VhdxImage, VhdxError> {
    let file_len = src.len();
    let region = section.regions.metadata;
    let raw = read(
        src,
        region.offset,
        metadata::TABLE_SIZE as u64,
        "metadata table",
    )?;
    let table = metadata::parse_table(&raw, region)?;
    let span = table.span(region)?;
    let bytes = read(
        src,
        region.offset + span.offset,
        span.length,
        "metadata items",
    )?;
    let metadata = check_metadata(&table, &bytes, span.offset, region)?;
    let (bat_at, bat_len) = bat::bat_location(&metadata, section.regions.bat)?;
    let raw_bat = read(src, bat_at, bat_len, "block allocation table")?;
    let (extents, bat) = bat::extent_map(&metadata, &raw_bat, bat_at, &section.fixed, file_len)?;
    Ok(VhdxImage {
        file_len,
        section,
        metadata,
        bat,
        extents,
        log: None,
    })
}

pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("in bounds"))
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("in bounds"))
}

pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("in bounds"))
}

#[cfg(test)]
mod tests;
