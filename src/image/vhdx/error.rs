//! Everything that can be wrong with a VHDX, each naming the structure, the value, the
//! limit and the offset, so corruption, an unsupported feature and a file that needs its
//! log replayed are told apart at a glance.

use std::io;

use crate::image::extent::ExtentError;

#[derive(Debug, thiserror::Error)]
pub enum VhdxError {
    #[error(
        "file is {len} bytes, too small to be a VHDX (the header section alone is {min} bytes)"
    )]
    TooSmall { len: u64, min: u64 },
    #[error("{structure} at offset {offset}: expected signature {expected:?}, found {found:?}")]
    Signature {
        structure: &'static str,
        offset: u64,
        expected: &'static str,
        found: String,
    },
    #[error(
        "{structure} at offset {offset}: CRC-32C is {stored:#010x}, computed {computed:#010x} (corrupt)"
    )]
    Checksum {
        structure: &'static str,
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("{structure} at offset {offset}: {field} is {value:#x}; {rule}")]
    Field {
        structure: &'static str,
        offset: u64,
        field: &'static str,
        value: u64,
        rule: &'static str,
    },
    #[error("no valid header: header 1: {first}; header 2: {second}")]
    NoValidHeader { first: String, second: String },
    #[error("no valid region table: region table 1: {first}; region table 2: {second}")]
    NoValidRegionTable { first: String, second: String },
    #[error(
        "the log is not empty (log GUID {log_guid}, {length} bytes at offset {offset}): the host that wrote this VHDX stopped before the log was applied, and `download` does not replay logs. Download the blob as it is and `convert` it (which replays the log), or open the disk once in Hyper-V first"
    )]
    LogNotEmpty {
        log_guid: String,
        offset: u64,
        length: u64,
    },
    #[error(
        "log at offset {offset}: {length} bytes is more than the {limit} bytes this tool replays; open the disk once in Hyper-V (or run `qemu-img check -r all` on a copy) to replay it, then try again"
    )]
    LogTooLarge {
        offset: u64,
        length: u64,
        limit: u64,
    },
    #[error("log at offset {offset} cannot be replayed: {problem}")]
    LogCorrupt { offset: u64, problem: &'static str },
    #[error("region table has no {region} region")]
    MissingRegion { region: &'static str },
    #[error(
        "region table at offset {offset}: region {guid} is marked required but is unknown to this tool"
    )]
    UnknownRequiredRegion { offset: u64, guid: String },
    #[error("region table at offset {offset}: the {region} region appears twice")]
    DuplicateRegion { offset: u64, region: &'static str },
    #[error(
        "{region} ({length} bytes at offset {start}) extends past the end of the file of {file_len} bytes (truncated or corrupt file)"
    )]
    RegionOutsideFile {
        region: &'static str,
        start: u64,
        length: u64,
        file_len: u64,
    },
    #[error("{first} and {second} overlap at offset {offset}")]
    RegionsOverlap {
        first: &'static str,
        second: &'static str,
        offset: u64,
    },
    #[error("metadata table has no {item} item")]
    MissingMetadata { item: &'static str },
    #[error("metadata table: item {guid} is marked required but is unknown to this tool")]
    UnknownRequiredMetadata { guid: String },
    #[error("metadata table: the {item} item appears twice")]
    DuplicateMetadata { item: &'static str },
    #[error(
        "metadata item {item}: {length} bytes at offset {offset} of the metadata region do not fit inside the region's {region_length} bytes, or overlap its table"
    )]
    MetadataItemOutside {
        item: String,
        offset: u64,
        length: u64,
        region_length: u64,
    },
    #[error("metadata item {item}: {length} bytes, expected {expected}")]
    MetadataItemLength {
        item: &'static str,
        length: u64,
        expected: u64,
    },
    #[error(
        "differencing VHDX (has-parent) refused: its data depends on parent {parent} and cannot be converted alone; merge it into its parent first (e.g. with Hyper-V's Edit Disk or `qemu-img commit`)"
    )]
    Differencing { parent: String },
    #[error(
        "block allocation table: {needed} entries of 8 bytes are needed for {blocks} blocks of {block_size} bytes, but the BAT region holds {region_length} bytes"
    )]
    BatTooSmall {
        needed: u64,
        blocks: u64,
        block_size: u32,
        region_length: u64,
    },
    #[error(
        "block allocation table: {entries} entries is past the limit of {limit} entries this tool reads; blocks of {block_size} bytes are unusually small for a disk of {virtual_size} bytes"
    )]
    BatOverLimit {
        entries: u64,
        limit: u64,
        block_size: u32,
        virtual_size: u64,
    },
    #[error("block {block}: BAT entry at offset {entry_offset} has {problem} (state {state})")]
    BadBlockState {
        block: u64,
        entry_offset: u64,
        state: u8,
        problem: &'static str,
    },
    #[error(
        "block {block}: BAT entry at offset {entry_offset} points to byte {start}; the block's data ends at {end}, past the end of the file of {file_len} bytes (truncated or corrupt file)"
    )]
    BlockOutsideFile {
        block: u64,
        entry_offset: u64,
        start: u64,
        end: u64,
        file_len: u64,
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
    #[error("invalid extent layout: {0}")]
    Extent(#[from] ExtentError),
    #[error("reading {what} at offset {offset}: {source}")]
    Io {
        what: &'static str,
        offset: u64,
        source: io::Error,
    },
}

impl VhdxError {
    /// True when the image itself is at fault (exit code 4), false for I/O trouble.
    pub fn is_bad_image(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}
