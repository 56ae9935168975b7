//! Reading VHD images (fixed and dynamic) into an extent map.
//!
//! The parsers ([`footer`], [`dynamic`]) take byte slices and return validated structs;
//! [`open`] does the reading through [`ReadAt`], so the same code serves local files and
//! blob tails. Differencing disks are refused with the parent's name: reading one as if it
//! were dynamic (as qemu does) silently returns zeros where the parent holds data.

pub mod dynamic;
pub mod error;
pub mod footer;

use crate::image::extent::ExtentMap;
use crate::image::source::ReadAt;
pub use dynamic::{BatSummary, DynamicHeader};
pub use error::VhdError;
pub use footer::{DiskType, FOOTER_SIZE, Footer, Geometry};

/// Which footer was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FooterSource {
    /// The footer at the end of the file (the normal case).
    Tail,
    /// The tail footer was damaged; the copy at offset 0 of a dynamic disk was used.
    HeadCopy,
}

/// A VHD that passed every check, with the extent map of its data.
#[derive(Debug, Clone)]
pub struct VhdImage {
    pub file_len: u64,
    pub footer: Footer,
    pub footer_source: FooterSource,
    /// Why the tail footer was not used, when `footer_source` is `HeadCopy`.
    pub tail_footer_problem: Option<String>,
    pub dynamic: Option<(DynamicHeader, BatSummary)>,
    pub extents: ExtentMap,
}

impl VhdImage {
    pub fn virtual_size(&self) -> u64 {
        self.footer.current_size
    }
}

fn read<R: ReadAt + ?Sized>(
    src: &R,
    buf: &mut [u8],
    offset: u64,
    what: &'static str,
) -> Result<(), VhdError> {
    let file_len = src.len();
    let needed = buf.len() as u64;
    if offset.checked_add(needed).is_none_or(|end| end > file_len) {
        return Err(VhdError::Truncated {
            what,
            offset,
            needed,
            file_len,
        });
    }
    src.read_exact_at(buf, offset)
        .map_err(|source| VhdError::Io {
            what,
            offset,
            source,
        })
}

/// Reads and checks the footer, the dynamic header and the BAT, and builds the extent map.
/// Reads O(BAT) bytes; never reads block data.
pub fn open<R: ReadAt + ?Sized>(src: &R) -> Result<VhdImage, VhdError> {
    let file_len = src.len();
    let (footer, footer_source, tail_footer_problem) = read_footer(src)?;
    let (extents, dynamic) = match footer.disk_type {
        DiskType::Fixed => {
            check_fixed_len(&footer, file_len)?;
            (ExtentMap::dense(footer.current_size), None)
        }
        DiskType::Dynamic | DiskType::Differencing => {
            let (map, header, summary) = open_dynamic(src, &footer)?;
            (map, Some((header, summary)))
        }
    };
    Ok(VhdImage {
        file_len,
        footer,
        footer_source,
        tail_footer_problem,
        dynamic,
        extents,
    })
}

/// The footer at the end of the file, or, when that one is damaged, the copy the spec keeps
/// at offset 0 of a dynamic disk (with the tail's problem, for the report).
fn read_footer<R: ReadAt + ?Sized>(
    src: &R,
) -> Result<(Footer, FooterSource, Option<String>), VhdError> {
    let file_len = src.len();
    if file_len < FOOTER_SIZE as u64 {
        return Err(VhdError::TooSmall { len: file_len });
    }
    let tail_at = file_len - FOOTER_SIZE as u64;
    let mut raw = [0u8; FOOTER_SIZE];
    read(src, &mut raw, tail_at, "footer")?;
    let tail_err = match footer::parse_footer(&raw, tail_at) {
        Ok(f) => return Ok((f, FooterSource::Tail, None)),
        Err(e) => e,
    };
    let mut head = [0u8; FOOTER_SIZE];
    let copy = if tail_at >= FOOTER_SIZE as u64 {
        read(src, &mut head, 0, "footer copy")
            .ok()
            .and_then(|_| footer::parse_footer(&head, 0).ok())
    } else {
        None
    };
    match copy {
        Some(f) if f.disk_type != DiskType::Fixed => {
            Ok((f, FooterSource::HeadCopy, Some(tail_err.to_string())))
        }
        _ => Err(tail_err),
    }
}

/// A fixed disk's file is its current size followed by the footer, nothing more or less
/// (spec: "Fixed Hard Disk Image"). The one copy of this rule, for files and blobs.
pub fn check_fixed_len(footer: &Footer, file_len: u64) -> Result<(), VhdError> {
    let expected =
        footer
            .current_size
            .checked_add(FOOTER_SIZE as u64)
            .ok_or(VhdError::Overflow {
                what: "current size + footer",
                value: footer.current_size,
                offset: file_len.saturating_sub(FOOTER_SIZE as u64) + 48,
            })?;
    if file_len != expected {
        return Err(VhdError::FixedSizeMismatch {
            file_len,
            current_size: footer.current_size,
            expected,
        });
    }
    Ok(())
}

/// The dynamic header and the BAT of a dynamic (or differencing, refused with its parent's
/// name) disk, checked, and the extent map they give.
fn open_dynamic<R: ReadAt + ?Sized>(
    src: &R,
    footer: &Footer,
) -> Result<(ExtentMap, DynamicHeader, BatSummary), VhdError> {
    let file_len = src.len();
    let header_at = dynamic::header_offset(footer.data_offset, file_len)?;
    let mut hraw = [0u8; dynamic::HEADER_SIZE];
    read(src, &mut hraw, header_at, "dynamic header")?;
    let layout = dynamic::locate_bat(&hraw, header_at, footer, file_len)?;
    let mut bat = vec![
        0u8;
        usize::try_from(layout.bat_len).map_err(|_| VhdError::Overflow {
            what: "BAT length",
            value: layout.bat_len,
            offset: header_at + 28,
        })?
    ];
    read(src, &mut bat, layout.bat_at, "block allocation table")?;
    let (extents, summary) = layout.extent_map(&bat)?;
    let header = layout.header;
    Ok((extents, header, summary))
}

/// One's complement of the byte sum, with the 4-byte checksum field at `skip` taken as zero
/// (spec: "Checksum"; same rule for footer and dynamic header).
pub(crate) fn checksum(raw: &[u8], skip: usize) -> u32 {
    let sum = raw
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

pub(crate) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().expect("in bounds"))
}

pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("in bounds"))
}

pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("in bounds"))
}

/// Bytes shown in messages: ASCII as is, the rest escaped, trailing NULs dropped.
pub(crate) fn printable(b: &[u8]) -> String {
    let trimmed = match b.iter().rposition(|&c| c != 0) {
        Some(last) => &b[..=last],
        None => &[],
    };
    trimmed.escape_ascii().to_string()
}

#[cfg(test)]
mod tests;
