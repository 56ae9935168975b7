//! Everything that can be wrong with a VHD, each with the value, the limit and the offset,
//! so a user can tell corruption from an unsupported feature at a glance.

use std::io;

use crate::image::extent::ExtentError;

#[derive(Debug, thiserror::Error)]
pub enum VhdError {
    #[error("file is {len} bytes, too small to be a VHD (a VHD ends with a 512-byte footer)")]
    TooSmall { len: u64 },
    #[error("no VHD footer: expected cookie \"conectix\" at offset {offset}, found {found:?}")]
    BadFooterCookie { offset: u64, found: String },
    #[error(
        "footer at offset {offset}: checksum is {stored:#010x}, computed {computed:#010x} (corrupt footer)"
    )]
    BadFooterChecksum {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error(
        "footer at offset {offset}: unsupported file format version {found:#010x} (expected major version 1, 0x00010000)"
    )]
    BadFooterVersion { offset: u64, found: u32 },
    #[error(
        "footer at offset {offset}: disk type {found} is not a VHD disk type (2 fixed, 3 dynamic, 4 differencing)"
    )]
    BadDiskType { offset: u64, found: u32 },
    #[error(
        "footer at offset {offset}: current size {size} is not a positive multiple of 512 bytes"
    )]
    BadCurrentSize { offset: u64, size: u64 },
    #[error(
        "footer at offset {offset}: current size {size} of a dynamic disk is past the VHD format's limit of {limit} bytes (2040 GiB)"
    )]
    DynamicTooLarge { offset: u64, size: u64, limit: u64 },
    #[error(
        "fixed disk: footer at offset {offset} has data offset {found:#x}, expected all ones (0xffffffff or 0xffffffffffffffff)"
    )]
    BadFixedDataOffset { offset: u64, found: u64 },
    #[error(
        "fixed disk: file is {file_len} bytes but the footer's current size {current_size} needs exactly {expected} (size + 512-byte footer)"
    )]
    FixedSizeMismatch {
        file_len: u64,
        current_size: u64,
        expected: u64,
    },
    #[error(
        "differencing disk (type 4) refused: its data depends on parent {parent} and cannot be converted alone; merge it into its parent first (e.g. with Hyper-V or `qemu-img commit`)"
    )]
    Differencing { parent: String },
    #[error(
        "dynamic header at offset {offset}: {what} {value:#x} is outside the file of {file_len} bytes"
    )]
    HeaderOutsideFile {
        offset: u64,
        what: &'static str,
        value: u64,
        file_len: u64,
    },
    #[error("dynamic header at offset {offset}: expected cookie \"cxsparse\", found {found:?}")]
    BadHeaderCookie { offset: u64, found: String },
    #[error(
        "dynamic header at offset {offset}: checksum is {stored:#010x}, computed {computed:#010x} (corrupt header)"
    )]
    BadHeaderChecksum {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error(
        "dynamic header at offset {offset}: unsupported header version {found:#010x} (expected 0x00010000)"
    )]
    BadHeaderVersion { offset: u64, found: u32 },
    #[error(
        "dynamic header at offset {offset}: block size {block_size} is not a power of two of at least 512 bytes"
    )]
    BadBlockSize { offset: u64, block_size: u32 },
    #[error(
        "dynamic header at offset {offset}: the block allocation table has {entries} entries of {block_size} bytes, which cannot cover the disk's {current_size} bytes ({needed} needed)"
    )]
    BatTooSmall {
        offset: u64,
        entries: u32,
        needed: u64,
        block_size: u32,
        current_size: u64,
    },
    #[error(
        "dynamic header at offset {offset}: max table entries {entries} is more than the {needed} blocks of {block_size} bytes that the disk's {current_size} bytes need (corrupt header)"
    )]
    BatTooLarge {
        offset: u64,
        entries: u32,
        needed: u64,
        block_size: u32,
        current_size: u64,
    },
    #[error(
        "dynamic header at offset {offset}: a block allocation table of {entries} entries is past the limit of {limit} entries (a {limit_mib} MiB table) this tool reads; blocks of {block_size} bytes are unusually small for a disk of {current_size} bytes"
    )]
    BatOverLimit {
        offset: u64,
        entries: u64,
        limit: u64,
        limit_mib: u64,
        block_size: u32,
        current_size: u64,
    },
    #[error(
        "block allocation table at offset {offset} ({length} bytes) extends past the end of the data area at {limit} (truncated or corrupt file)"
    )]
    BatOutsideFile {
        offset: u64,
        length: u64,
        limit: u64,
    },
    #[error("block allocation table overlaps the {region} at offset {offset}")]
    BatOverlapsMetadata { offset: u64, region: &'static str },
    #[error(
        "block {block}: BAT entry at offset {entry_offset} points to sector {sector} (byte {start}); the block ends at {end}, past the end of the data area at {limit} (truncated or corrupt file)"
    )]
    BlockOutsideFile {
        block: u64,
        entry_offset: u64,
        sector: u32,
        start: u64,
        end: u64,
        limit: u64,
    },
    #[error(
        "block {block} at byte {start} overlaps the {region} (BAT entry at offset {entry_offset})"
    )]
    BlockOverlapsMetadata {
        block: u64,
        entry_offset: u64,
        start: u64,
        region: &'static str,
    },
    #[error(
        "blocks {first} and {second} overlap: block {second} starts at byte {start}, before block {first} ends at {first_end}"
    )]
    BlocksOverlap {
        first: u64,
        second: u64,
        start: u64,
        first_end: u64,
    },
    #[error(
        "file truncated: {what} needs {needed} bytes at offset {offset}, the file has {file_len}"
    )]
    Truncated {
        what: &'static str,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{what}: value {value} overflows (offset {offset})")]
    Overflow {
        what: &'static str,
        value: u64,
        offset: u64,
    },
    #[error("invalid extent layout: {0}")]
    Extent(#[from] ExtentError),
    #[error("reading {what} at offset {offset}: {source}")]
    Io {
        what: &'static str,
        offset: u64,
        source: io::Error,
    },
}

impl VhdError {
    /// True when the image itself is at fault (exit code 4), false for I/O trouble.
    pub fn is_bad_image(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}
