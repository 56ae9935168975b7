//! The 512-byte VHD footer (VHD spec 1.0, "Hard Disk Footer Format"), parsed field by
//! field and checked. The size that counts is always `current_size`: Azure writes footers
//! (creator "wa\0\0") whose CHS geometry describes less than the disk, and tools that size
//! disks from CHS cut them short and lose the backup GPT.

use super::error::VhdError;
use super::{be_u16, be_u32, be_u64, checksum, printable};

pub const FOOTER_SIZE: usize = 512;
pub const COOKIE: &[u8; 8] = b"conectix";
/// File format version 1.0; only the major half (high 16 bits) is checked.
const VERSION_MAJOR_1: u32 = 0x0001_0000;
/// Byte offset of the checksum field, zeroed while summing.
const CHECKSUM_AT: usize = 64;
pub const SECTOR: u64 = 512;
/// Largest dynamic (and differencing) disk: 2040 GiB, 0xff000000 sectors. The limit Hyper-V
/// and Virtual PC create to and qemu's vpc driver enforces (VHD_MAX_SECTORS); BAT entries
/// are 32-bit sector numbers, so no larger layout is addressable anyway. Fixed VHDs are
/// raw data plus a footer and have no such limit (Azure's go to 32 TiB).
pub const MAX_DYNAMIC_SIZE: u64 = 0xff00_0000 * SECTOR;

/// The three kinds of VHD (spec: "Disk Type").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    fn from_code(code: u32) -> Option<Self> {
        match code {
            2 => Some(Self::Fixed),
            3 => Some(Self::Dynamic),
            4 => Some(Self::Differencing),
            _ => None,
        }
    }
}

/// Cylinders, heads, sectors per track, as stored; informational only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    /// Bytes the CHS geometry addresses (C × H × S × 512).
    pub fn bytes(&self) -> u64 {
        u64::from(self.cylinders)
            * u64::from(self.heads)
            * u64::from(self.sectors_per_track)
            * SECTOR
    }
}

/// A parsed, validated footer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Footer {
    pub features: u32,
    pub format_version: u32,
    /// Dynamic/differencing: byte offset of the dynamic header. Fixed: all ones.
    pub data_offset: u64,
    /// Seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    pub creator_application: String,
    pub creator_version: u32,
    pub creator_host_os: String,
    pub original_size: u64,
    /// The virtual disk size in bytes.
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: DiskType,
    pub checksum: u32,
    pub unique_id: String,
    pub saved_state: bool,
}

/// Parses the footer found at file offset `at` (used in errors only).
pub fn parse_footer(raw: &[u8; FOOTER_SIZE], at: u64) -> Result<Footer, VhdError> {
    if &raw[0..8] != COOKIE {
        return Err(VhdError::BadFooterCookie {
            offset: at,
            found: printable(&raw[0..8]),
        });
    }
    let stored = be_u32(raw, CHECKSUM_AT);
    let computed = checksum(raw, CHECKSUM_AT);
    if stored != computed {
        return Err(VhdError::BadFooterChecksum {
            offset: at,
            stored,
            computed,
        });
    }
    let format_version = be_u32(raw, 12);
    if format_version & 0xffff_0000 != VERSION_MAJOR_1 {
        return Err(VhdError::BadFooterVersion {
            offset: at + 12,
            found: format_version,
        });
    }
    let code = be_u32(raw, 60);
    let disk_type = DiskType::from_code(code).ok_or(VhdError::BadDiskType {
        offset: at + 60,
        found: code,
    })?;
    let current_size = be_u64(raw, 48);
    if current_size == 0 || !current_size.is_multiple_of(SECTOR) {
        return Err(VhdError::BadCurrentSize {
            offset: at + 48,
            size: current_size,
        });
    }
    if disk_type == DiskType::Dynamic && current_size > MAX_DYNAMIC_SIZE {
        return Err(VhdError::DynamicTooLarge {
            offset: at + 48,
            size: current_size,
            limit: MAX_DYNAMIC_SIZE,
        });
    }
    let data_offset = be_u64(raw, 16);
    if disk_type == DiskType::Fixed && data_offset != u64::MAX && data_offset != u64::from(u32::MAX)
    {
        return Err(VhdError::BadFixedDataOffset {
            offset: at + 16,
            found: data_offset,
        });
    }
    Ok(Footer {
        features: be_u32(raw, 8),
        format_version,
        data_offset,
        timestamp: be_u32(raw, 24),
        creator_application: printable(&raw[28..32]),
        creator_version: be_u32(raw, 32),
        creator_host_os: printable(&raw[36..40]),
        original_size: be_u64(raw, 40),
        current_size,
        geometry: Geometry {
            cylinders: be_u16(raw, 56),
            heads: raw[58],
            sectors_per_track: raw[59],
        },
        disk_type,
        checksum: stored,
        unique_id: uuid_string(&raw[68..84]),
        saved_state: raw[84] != 0,
    })
}

fn uuid_string(b: &[u8]) -> String {
    let hex = crate::units::hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid footer, as a test base: Azure-style creator with a CHS product short of the size.
    pub fn footer_bytes(disk_type: u32, current_size: u64, data_offset: u64) -> [u8; FOOTER_SIZE] {
        let mut f = [0u8; FOOTER_SIZE];
        f[0..8].copy_from_slice(COOKIE);
        f[8..12].copy_from_slice(&2u32.to_be_bytes());
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        f[16..24].copy_from_slice(&data_offset.to_be_bytes());
        f[28..32].copy_from_slice(b"wa\0\0");
        f[36..40].copy_from_slice(b"Wi2k");
        f[40..48].copy_from_slice(&current_size.to_be_bytes());
        f[48..56].copy_from_slice(&current_size.to_be_bytes());
        f[56..60].copy_from_slice(&[0x0a, 0x00, 0x10, 0x3f]); // 2560 × 16 × 63 sectors
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        f[68..84].copy_from_slice(&[0xab; 16]);
        reseal(&mut f);
        f
    }

    pub fn reseal(f: &mut [u8; FOOTER_SIZE]) {
        let c = checksum(f, CHECKSUM_AT);
        f[64..68].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn parses_azure_style_footer_and_trusts_current_size() {
        let size = 5 << 30;
        let f = parse_footer(&footer_bytes(2, size, u64::MAX), 0).unwrap();
        assert_eq!(f.disk_type, DiskType::Fixed);
        assert_eq!(f.current_size, size);
        assert_eq!(f.creator_application, "wa");
        assert!(
            f.geometry.bytes() < size,
            "the test footer must reproduce Azure's short CHS"
        );
        assert_eq!(f.unique_id, "abababab-abab-abab-abab-abababababab");
    }

    #[test]
    fn accepts_32_bit_all_ones_data_offset_for_fixed() {
        assert!(parse_footer(&footer_bytes(2, 1 << 20, 0xffff_ffff), 0).is_ok());
    }

    #[test]
    fn rejects_bad_cookie() {
        let mut f = footer_bytes(2, 1 << 20, u64::MAX);
        f[0] = b'x';
        assert!(matches!(
            parse_footer(&f, 7),
            Err(VhdError::BadFooterCookie { offset: 7, .. })
        ));
    }

    #[test]
    fn rejects_bad_checksum() {
        let mut f = footer_bytes(2, 1 << 20, u64::MAX);
        f[100] ^= 1;
        assert!(matches!(
            parse_footer(&f, 0),
            Err(VhdError::BadFooterChecksum { .. })
        ));
    }

    #[test]
    fn rejects_unknown_version() {
        let mut f = footer_bytes(2, 1 << 20, u64::MAX);
        f[12..16].copy_from_slice(&0x0002_0000u32.to_be_bytes());
        reseal(&mut f);
        assert!(matches!(
            parse_footer(&f, 0),
            Err(VhdError::BadFooterVersion {
                found: 0x0002_0000,
                ..
            })
        ));
    }

    #[test]
    fn rejects_unknown_disk_type() {
        for t in [0, 1, 5, 6] {
            let f = footer_bytes(t, 1 << 20, u64::MAX);
            assert!(
                matches!(parse_footer(&f, 0), Err(VhdError::BadDiskType { .. })),
                "type {t}"
            );
        }
    }

    #[test]
    fn rejects_zero_and_unaligned_sizes() {
        for s in [0, 1000] {
            let f = footer_bytes(2, s, u64::MAX);
            assert!(
                matches!(parse_footer(&f, 0), Err(VhdError::BadCurrentSize { .. })),
                "size {s}"
            );
        }
    }

    #[test]
    fn dynamic_size_is_limited_to_2040_gib_fixed_is_not() {
        assert!(parse_footer(&footer_bytes(3, MAX_DYNAMIC_SIZE, 512), 0).is_ok());
        let too_big = MAX_DYNAMIC_SIZE + SECTOR;
        let e = parse_footer(&footer_bytes(3, too_big, 512), 1000).unwrap_err();
        assert!(
            matches!(e, VhdError::DynamicTooLarge { offset: 1048, size, limit }
                if size == too_big && limit == MAX_DYNAMIC_SIZE),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&too_big.to_string()) && msg.contains("2190433320960"),
            "{msg}"
        );
        assert!(parse_footer(&footer_bytes(2, 32 << 40, u64::MAX), 0).is_ok());
    }

    #[test]
    fn rejects_fixed_disk_with_data_offset() {
        let f = footer_bytes(2, 1 << 20, 512);
        assert!(matches!(
            parse_footer(&f, 0),
            Err(VhdError::BadFixedDataOffset { found: 512, .. })
        ));
    }
}
