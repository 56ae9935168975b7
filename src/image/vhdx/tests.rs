//! VHDX files built here from the spec (MS-VHDX 1.0), byte by byte, so every rule can be
//! broken on purpose; qemu-img made files are the oracle in tests/vhdx.rs.

use super::bat::*;
use super::crc32c::crc32c_with_zeroed_field;
use super::header::MIB;
use super::*;
use crate::image::extent::Content;
use crate::image::source::ReadAt;

const KIB: usize = 1024;
const BAT_AT: usize = 2 * MIB as usize;
const META_AT: usize = 3 * MIB as usize;
const LOG_AT: usize = MIB as usize;

/// What to build. Blocks not listed are NOT_PRESENT.
#[derive(Clone)]
pub(super) struct Spec {
    pub virtual_size: u64,
    pub block_size: u32,
    pub logical_sector: u32,
    pub physical_sector: u32,
    pub fixed: bool,
    pub has_parent: bool,
    /// (block index, state); FULLY_PRESENT blocks get data (a pattern from the index).
    pub blocks: Vec<(u64, u8)>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            virtual_size: 8 * MIB,
            block_size: MIB as u32,
            logical_sector: 512,
            physical_sector: 4096,
            fixed: false,
            has_parent: false,
            blocks: vec![(0, PAYLOAD_BLOCK_FULLY_PRESENT), (3, PAYLOAD_BLOCK_ZERO)],
        }
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The bytes of a block's data: a pattern that differs per block and per byte.
pub(super) fn pattern(block: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 / 512 * 31 + block * 7 + 1) % 251) as u8)
        .collect()
}

pub(super) fn fix_header_crc(f: &mut [u8], i: usize) {
    let at = header::HEADER_OFFSETS[i] as usize;
    let h = &mut f[at..at + header::HEADER_SIZE];
    let crc = crc32c_with_zeroed_field(h, 4);
    put32(h, 4, crc);
}

pub(super) fn fix_region_crc(f: &mut [u8], i: usize) {
    let at = header::REGION_TABLE_OFFSETS[i] as usize;
    let t = &mut f[at..at + header::REGION_TABLE_SIZE];
    let crc = crc32c_with_zeroed_field(t, 4);
    put32(t, 4, crc);
}

/// Offset of the BAT entry of payload block `block`.
pub(super) fn entry_at(s: &Spec, block: u64) -> usize {
    let ratio = (u64::from(s.logical_sector) << 23) / u64::from(s.block_size);
    BAT_AT + ((block + block / ratio) * 8) as usize
}

pub(super) fn build(s: &Spec) -> Vec<u8> {
    let mut f = vec![0u8; 4 * MIB as usize];
    f[..8].copy_from_slice(b"vhdxfile");
    for (i, u) in "azure2kvm test".encode_utf16().enumerate() {
        put16(&mut f, 8 + 2 * i, u);
    }
    for (i, at) in header::HEADER_OFFSETS.iter().enumerate() {
        let h = &mut f[*at as usize..*at as usize + header::HEADER_SIZE];
        h[..4].copy_from_slice(b"head");
        put64(h, 8, 10 + i as u64);
        h[16] = 0xaa; // file write GUID
        put16(h, 66, 1);
        put32(h, 68, MIB as u32);
        put64(h, 72, LOG_AT as u64);
        fix_header_crc(&mut f, i);
    }
    for i in 0..2 {
        let at = header::REGION_TABLE_OFFSETS[i] as usize;
        let t = &mut f[at..at + header::REGION_TABLE_SIZE];
        t[..4].copy_from_slice(b"regi");
        put32(t, 8, 2);
        for (k, (g, off)) in [
            (header::BAT_REGION, BAT_AT),
            (header::METADATA_REGION, META_AT),
        ]
        .into_iter()
        .enumerate()
        {
            let e = 16 + k * 32;
            t[e..e + 16].copy_from_slice(g.bytes());
            put64(t, e + 16, off as u64);
            put32(t, e + 24, MIB as u32);
            put32(t, e + 28, 1);
        }
        fix_region_crc(&mut f, i);
    }
    write_metadata(&mut f, s);
    let mut next = 4 * MIB as usize;
    for &(block, state) in &s.blocks {
        let mut entry = u64::from(state);
        if state == PAYLOAD_BLOCK_FULLY_PRESENT {
            let vstart = block * u64::from(s.block_size);
            let len = u64::from(s.block_size).min(s.virtual_size - vstart) as usize;
            f.resize(next, 0);
            f.extend_from_slice(&pattern(block, len));
            entry |= next as u64;
            next += (len as u64).div_ceil(MIB) as usize * MIB as usize;
        }
        put64(&mut f, entry_at(s, block), entry);
    }
    f
}

fn write_metadata(f: &mut [u8], s: &Spec) {
    let m = &mut f[META_AT..META_AT + MIB as usize];
    m[..8].copy_from_slice(b"metadata");
    let mut locator = vec![0u8; 20];
    let kv = [
        ("parent_linkage", "{1234}"),
        ("relative_path", "..\\base.vhdx"),
    ];
    put16(&mut locator, 18, kv.len() as u16);
    let mut strings = Vec::new();
    for (k, v) in kv {
        let k: Vec<u8> = k.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let v: Vec<u8> = v.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let base = 20 + kv.len() * 12;
        let mut e = [0u8; 12];
        put32(&mut e, 0, (base + strings.len()) as u32);
        put32(&mut e, 4, (base + strings.len() + k.len()) as u32);
        put16(&mut e, 8, k.len() as u16);
        put16(&mut e, 10, v.len() as u16);
        locator.extend_from_slice(&e);
        strings.extend(k);
        strings.extend(v);
    }
    locator.extend(strings);
    let mut fp = [0u8; 8];
    put32(&mut fp, 0, s.block_size);
    put32(
        &mut fp,
        4,
        u32::from(s.fixed) | (u32::from(s.has_parent) << 1),
    );
    let mut items: Vec<(Guid, Vec<u8>)> = vec![
        (metadata::FILE_PARAMETERS, fp.to_vec()),
        (
            metadata::VIRTUAL_DISK_SIZE,
            s.virtual_size.to_le_bytes().to_vec(),
        ),
        (metadata::PAGE_83_DATA, vec![0x5e; 16]),
        (
            metadata::LOGICAL_SECTOR_SIZE,
            s.logical_sector.to_le_bytes().to_vec(),
        ),
        (
            metadata::PHYSICAL_SECTOR_SIZE,
            s.physical_sector.to_le_bytes().to_vec(),
        ),
    ];
    if s.has_parent {
        items.push((metadata::PARENT_LOCATOR, locator));
    }
    put16(m, 10, items.len() as u16);
    let mut at = 64 * KIB;
    for (i, (g, data)) in items.iter().enumerate() {
        let e = 32 + i * 32;
        m[e..e + 16].copy_from_slice(g.bytes());
        put32(m, e + 16, at as u32);
        put32(m, e + 20, data.len() as u32);
        put32(m, e + 24, 4);
        m[at..at + data.len()].copy_from_slice(data);
        at += data.len();
    }
}

/// The virtual disk as the extent map says to read it from `f`.
fn read_disk(img: &VhdxImage, f: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; img.virtual_size() as usize];
    for e in img.extents.extents() {
        if let Content::Data { source_offset } = e.content {
            let (s, v) = (source_offset as usize, e.virtual_start as usize);
            out[v..v + e.length as usize].copy_from_slice(&f[s..s + e.length as usize]);
        }
    }
    out
}

fn expected_disk(s: &Spec) -> Vec<u8> {
    let mut out = vec![0u8; s.virtual_size as usize];
    for &(block, state) in &s.blocks {
        if state == PAYLOAD_BLOCK_FULLY_PRESENT {
            let v = (block * u64::from(s.block_size)) as usize;
            let len = (s.block_size as usize).min(out.len() - v);
            out[v..v + len].copy_from_slice(&pattern(block, len));
        }
    }
    out
}

fn open_ok(f: &[u8]) -> VhdxImage {
    open(f).unwrap_or_else(|e| panic!("open failed: {e}"))
}

fn open_err(f: &[u8]) -> VhdxError {
    match open(f) {
        Ok(_) => panic!("a bad VHDX opened"),
        Err(e) => e,
    }
}

#[test]
fn dynamic_disk_reads_only_fully_present_blocks() {
    let s = Spec {
        virtual_size: 8 * MIB - 4096, // not a multiple of the block size
        blocks: vec![
            (0, PAYLOAD_BLOCK_FULLY_PRESENT),
            (1, PAYLOAD_BLOCK_ZERO),
            (2, PAYLOAD_BLOCK_UNMAPPED),
            (3, PAYLOAD_BLOCK_UNDEFINED),
            (5, PAYLOAD_BLOCK_FULLY_PRESENT),
            (7, PAYLOAD_BLOCK_FULLY_PRESENT), // the short last block
        ],
        ..Spec::default()
    };
    let f = build(&s);
    let img = open_ok(&f);
    assert_eq!(img.virtual_size(), s.virtual_size);
    assert_eq!(img.disk_type(), VhdxType::Dynamic);
    assert_eq!(img.metadata.block_size, MIB as u32);
    assert_eq!(img.metadata.physical_sector_size, 4096);
    assert_eq!(
        img.section.header_index, 2,
        "the higher sequence number wins"
    );
    assert_eq!(img.section.creator, "azure2kvm test");
    let b = &img.bat;
    assert_eq!(
        (
            b.fully_present,
            b.zero,
            b.unmapped,
            b.undefined,
            b.not_present
        ),
        (3, 1, 1, 1, 2)
    );
    assert_eq!(img.extents.data_bytes(), 3 * MIB - 4096);
    assert_eq!(read_disk(&img, &f), expected_disk(&s));
}

#[test]
fn logical_4096_sectors_change_where_the_bitmap_entries_sit() {
    // 256 MiB blocks: the chunk ratio is 16 at 512-byte sectors and 128 at 4096, so block
    // 17 is BAT entry 18 in one and 17 in the other. Only a short last block is stored.
    for sector in [512u32, 4096] {
        let s = Spec {
            virtual_size: 17 * (256 * MIB) + 8192,
            block_size: 256 << 20,
            logical_sector: sector,
            physical_sector: sector,
            blocks: vec![(17, PAYLOAD_BLOCK_FULLY_PRESENT)],
            ..Spec::default()
        };
        let f = build(&s);
        let img = open_ok(&f);
        assert_eq!(img.metadata.logical_sector_size, sector);
        assert_eq!(img.bat.sector_bitmap_entries, u64::from(sector == 512));
        let data: Vec<_> = img.extents.data_extents().copied().collect();
        assert_eq!(data.len(), 1);
        assert_eq!(data[0].virtual_start, 17 * 256 * MIB);
        assert_eq!(data[0].length, 8192);
        assert_eq!(
            &f[data[0].source_offset().unwrap() as usize..][..8192],
            &pattern(17, 8192)[..]
        );
    }
}

#[test]
fn fixed_disk_is_one_data_extent() {
    let s = Spec {
        fixed: true,
        virtual_size: 4 * MIB,
        blocks: (0..4).map(|b| (b, PAYLOAD_BLOCK_FULLY_PRESENT)).collect(),
        ..Spec::default()
    };
    let f = build(&s);
    let img = open_ok(&f);
    assert_eq!(img.disk_type(), VhdxType::Fixed);
    assert_eq!(img.extents.data_extent_count(), 1);
    assert_eq!(read_disk(&img, &f), expected_disk(&s));
}

#[test]
fn a_damaged_header_or_region_table_falls_back_to_the_other_copy() {
    let good = build(&Spec::default());
    let mut f = good.clone();
    f[header::HEADER_OFFSETS[1] as usize + 100] ^= 1; // header 2 (current) corrupt
    assert_eq!(open_ok(&f).section.header_index, 1);
    f[header::HEADER_OFFSETS[0] as usize + 100] ^= 1;
    assert!(matches!(open_err(&f), VhdxError::NoValidHeader { .. }));

    let mut f = good.clone();
    f[header::REGION_TABLE_OFFSETS[0] as usize + 100] ^= 1;
    open_ok(&f);
    f[header::REGION_TABLE_OFFSETS[1] as usize + 100] ^= 1;
    let e = open_err(&f);
    assert!(matches!(e, VhdxError::NoValidRegionTable { .. }), "{e}");
    assert!(e.to_string().contains("CRC-32C"), "{e}");
}

/// One log entry (MS-VHDX 2.3.1): header, descriptors padded to 4 KiB, one data sector per
/// data descriptor; CRC-32C over all of it.
pub(super) struct LogEntry<'a> {
    pub sequence: u64,
    pub tail: u32,
    pub guid: [u8; 16],
    pub zeros: &'a [(u64, u64)],
    pub data: &'a [(u64, Vec<u8>)],
    pub flushed: u64,
    pub last: u64,
}

pub(super) fn log_entry(l: &LogEntry) -> Vec<u8> {
    let count = l.zeros.len() + l.data.len();
    let desc_sectors = (64 + 32 * count).div_ceil(4096);
    let len = (desc_sectors + l.data.len()) * 4096;
    let mut e = vec![0u8; len];
    e[0..4].copy_from_slice(b"loge");
    put32(&mut e, 8, len as u32);
    put32(&mut e, 12, l.tail);
    put64(&mut e, 16, l.sequence);
    put32(&mut e, 24, count as u32);
    e[32..48].copy_from_slice(&l.guid);
    put64(&mut e, 48, l.flushed);
    put64(&mut e, 56, l.last);
    let mut d = 64;
    for &(offset, length) in l.zeros {
        e[d..d + 4].copy_from_slice(b"zero");
        put64(&mut e, d + 8, length);
        put64(&mut e, d + 16, offset);
        put64(&mut e, d + 24, l.sequence);
        d += 32;
    }
    for (i, (offset, sector)) in l.data.iter().enumerate() {
        e[d..d + 4].copy_from_slice(b"desc");
        e[d + 4..d + 8].copy_from_slice(&sector[4092..]);
        e[d + 8..d + 16].copy_from_slice(&sector[..8]);
        put64(&mut e, d + 16, *offset);
        put64(&mut e, d + 24, l.sequence);
        d += 32;
        let at = (desc_sectors + i) * 4096;
        e[at..at + 4].copy_from_slice(b"data");
        put32(&mut e, at + 4, (l.sequence >> 32) as u32);
        e[at + 8..at + 4092].copy_from_slice(&sector[8..4092]);
        put32(&mut e, at + 4092, l.sequence as u32);
    }
    let crc = crc32c_with_zeroed_field(&e, 4);
    put32(&mut e, 4, crc);
    e
}

const LOG_GUID: [u8; 16] = [0x42; 16];

/// The default spec with a log of two entries (sequence 10 then 11, both with tail 0)
/// and a stale entry (sequence 5, a sequence of its own) after them. Entry 10 rewrites the BAT's first sector so
/// block 5 is FULLY_PRESENT at a new MiB past the end of the file; entry 11 writes the
/// first 4 KiB of that block and zeros 8 KiB of block 0. Returns the file and the disk
/// that replay must give.
fn logged_file() -> (Vec<u8>, Vec<u8>) {
    let s = Spec::default();
    let mut f = build(&s);
    let mut disk = expected_disk(&s);
    let old_len = f.len() as u64;
    let new_block = old_len.div_ceil(MIB) * MIB;
    let mut bat_sector = f[BAT_AT..BAT_AT + 4096].to_vec();
    put64(
        &mut bat_sector,
        5 * 8,
        new_block | u64::from(PAYLOAD_BLOCK_FULLY_PRESENT),
    );
    let grown = new_block + MIB;
    let first = log_entry(&LogEntry {
        sequence: 10,
        tail: 0,
        guid: LOG_GUID,
        zeros: &[],
        data: &[(BAT_AT as u64, bat_sector)],
        flushed: old_len,
        last: grown,
    });
    let payload = pattern(99, 4096);
    let second = log_entry(&LogEntry {
        sequence: 11,
        tail: 0,
        guid: LOG_GUID,
        zeros: &[(4 * MIB + 4096, 8192)],
        data: &[(new_block, payload.clone())],
        flushed: old_len,
        last: grown,
    });
    let stale = log_entry(&LogEntry {
        sequence: 5,
        tail: 64 * KIB as u32,
        guid: LOG_GUID,
        zeros: &[(4 * MIB, MIB)],
        data: &[],
        flushed: old_len,
        last: old_len,
    });
    let mut at = LOG_AT;
    for e in [&first, &second] {
        f[at..at + e.len()].copy_from_slice(e);
        at += e.len();
    }
    f[LOG_AT + 64 * KIB..][..stale.len()].copy_from_slice(&stale);
    for i in 0..2 {
        let h = header::HEADER_OFFSETS[i] as usize;
        f[h + 48..h + 64].copy_from_slice(&LOG_GUID);
        fix_header_crc(&mut f, i);
    }
    disk[4096..4096 + 8192].fill(0);
    disk[5 * MIB as usize..][..4096].copy_from_slice(&payload);
    (f, disk)
}

#[test]
fn a_non_empty_log_is_replayed_in_memory_before_reading() {
    let (f, disk) = logged_file();
    let img = open_ok(&f);
    let l = img.log.as_ref().expect("replayed");
    assert_eq!(
        (
            l.summary.entries,
            l.summary.first_sequence,
            l.summary.last_sequence
        ),
        (2, 10, 11)
    );
    assert_eq!((l.summary.data_writes, l.summary.zero_writes), (2, 1));
    assert_eq!(img.bat.fully_present, 2);
    // Data is read through the overlay, as `convert` does.
    let replayed = log::Replayed {
        inner: &f[..],
        overlay: &l.overlay,
    };
    let mut out = vec![0u8; img.virtual_size() as usize];
    for e in img.extents.data_extents() {
        let v = e.virtual_start as usize;
        replayed
            .read_exact_at(
                &mut out[v..v + e.length as usize],
                e.source_offset().unwrap(),
            )
            .unwrap();
    }
    assert_eq!(out, disk);
}

#[test]
fn only_whole_sequences_of_valid_entries_are_replayed() {
    // Entry 11 torn (bad CRC): entry 10 alone is the active sequence; block 5 is present
    // but holds zeros (the file grew, its data never arrived) and block 0 is untouched.
    let (mut f, _) = logged_file();
    let second = LOG_AT + 8192;
    f[second + 100] ^= 1;
    let img = open_ok(&f);
    assert_eq!(img.log.as_ref().unwrap().summary.last_sequence, 10);
    assert_eq!(img.bat.fully_present, 2);
    // Entry 10 torn too: 11's tail leads nowhere, 5 is whole on its own and is replayed.
    f[LOG_AT + 100] ^= 1;
    let img = open_ok(&f);
    assert_eq!(img.log.as_ref().unwrap().summary.last_sequence, 5);
    assert_eq!(img.bat.fully_present, 1);
}

#[test]
fn a_log_that_cannot_be_replayed_is_refused() {
    // A log GUID and nothing in the log.
    let mut f = build(&Spec::default());
    for i in 0..2 {
        let h = header::HEADER_OFFSETS[i] as usize;
        f[h + 48..h + 64].copy_from_slice(&LOG_GUID);
        fix_header_crc(&mut f, i);
    }
    let e = open_err(&f);
    assert!(matches!(e, VhdxError::LogCorrupt { .. }), "{e}");
    assert!(e.is_bad_image());
    // Entries of another log GUID.
    let (mut f, _) = logged_file();
    for i in 0..2 {
        let h = header::HEADER_OFFSETS[i] as usize;
        f[h + 48] = 0x43;
        fix_header_crc(&mut f, i);
    }
    assert!(matches!(open_err(&f), VhdxError::LogCorrupt { .. }));
    // The file is shorter than the head entry's flushed file offset.
    let (f, _) = logged_file();
    let e = open_err(&f[..f.len() - 4096]);
    assert!(e.to_string().contains("flushed file offset"), "{e}");
    // The log GUID only in the older header: nothing to replay.
    let (mut f, _) = logged_file();
    let h2 = header::HEADER_OFFSETS[1] as usize;
    f[h2 + 48..h2 + 64].fill(0);
    fix_header_crc(&mut f, 1);
    assert!(open_ok(&f).log.is_none());
}

#[test]
fn overlay_later_writes_win_and_pieces_are_cut_right() {
    let (f, _) = logged_file();
    let img = open_ok(&f);
    let o = &img.log.as_ref().unwrap().overlay;
    let r = log::Replayed {
        inner: &f[..],
        overlay: o,
    };
    // Across the zeroed range's edges, byte by byte against a plain copy with the writes.
    let mut want = f[4 * MIB as usize..4 * MIB as usize + 16384].to_vec();
    want[4096..12288].fill(0);
    let mut got = vec![0u8; 16384];
    r.read_exact_at(&mut got, 4 * MIB).unwrap();
    assert_eq!(got, want);
    let mut tail = vec![0u8; 10];
    r.read_exact_at(&mut tail, 4 * MIB + 4090).unwrap();
    assert_eq!(&tail[..6], &want[4090..4096]);
    assert_eq!(&tail[6..], &[0; 4]);
    assert!(r.read_exact_at(&mut tail, r.len() - 5).is_err());
}

#[test]
fn differencing_disk_is_refused_naming_its_parent() {
    let f = build(&Spec {
        has_parent: true,
        ..Spec::default()
    });
    let e = open_err(&f);
    assert!(matches!(e, VhdxError::Differencing { .. }), "{e}");
    assert!(e.to_string().contains("..\\\\base.vhdx"), "{e}");
}

fn with_region(f: &mut [u8], entry: usize, offset: u64, length: u32) {
    for i in 0..2 {
        let at = header::REGION_TABLE_OFFSETS[i] as usize + 16 + entry * 32;
        put64(f, at + 16, offset);
        put32(f, at + 24, length);
        fix_region_crc(f, i);
    }
}

#[test]
fn regions_must_be_aligned_inside_the_file_and_apart() {
    let good = build(&Spec::default());
    let cases: [(usize, u64, u32, &str); 6] = [
        (1, 2 * MIB, MIB as u32, "overlap"), // metadata on the BAT
        (0, MIB, MIB as u32, "overlap"),     // BAT on the log
        (0, 0, MIB as u32, "past the header section"), // BAT in the header section
        (0, 2 * MIB + 4096, MIB as u32, "multiple of 1 MiB"),
        (1, 3 * MIB, 4096, "multiple of 1 MiB"),
        (1, 1 << 40, MIB as u32, "past the end of the file"),
    ];
    for (entry, offset, length, needle) in cases {
        let mut f = good.clone();
        with_region(&mut f, entry, offset, length);
        let e = open_err(&f).to_string();
        assert!(e.contains(needle), "{entry} {offset} {length}: {e}");
    }
}

#[test]
fn unknown_required_regions_and_items_are_refused_optional_ones_ignored() {
    let good = build(&Spec::default());
    let mut f = good.clone();
    for i in 0..2 {
        let at = header::REGION_TABLE_OFFSETS[i] as usize;
        put32(&mut f, at + 8, 3);
        let e = at + 16 + 2 * 32;
        f[e..e + 16].copy_from_slice(&[7; 16]);
        put64(&mut f, e + 16, 8 * MIB);
        put32(&mut f, e + 24, MIB as u32);
        fix_region_crc(&mut f, i);
    }
    open_ok(&f);
    for i in 0..2 {
        let at = header::REGION_TABLE_OFFSETS[i] as usize;
        put32(&mut f, at + 16 + 2 * 32 + 28, 1);
        fix_region_crc(&mut f, i);
    }
    let e = open_err(&f);
    assert!(matches!(e, VhdxError::UnknownRequiredRegion { .. }), "{e}");

    let mut f = good.clone();
    let e = META_AT + 32 + 5 * 32;
    put16(&mut f, META_AT + 10, 6);
    f[e..e + 16].copy_from_slice(&[9; 16]);
    put32(&mut f, e + 16, 128 * KIB as u32);
    put32(&mut f, e + 20, 8);
    open_ok(&f);
    put32(&mut f, e + 24, 4);
    assert!(matches!(
        open_err(&f),
        VhdxError::UnknownRequiredMetadata { .. }
    ));
}

/// Offset of the `n`th metadata item's value in a built file.
fn item_at(n: usize) -> usize {
    META_AT + 64 * KIB + [0, 8, 16, 32, 36][n]
}

#[test]
fn metadata_values_are_checked() {
    let good = build(&Spec::default());
    let cases: [(usize, u64, &str); 7] = [
        (0, 3 << 20, "block size"),   // not a power of two
        (0, 512 << 20, "block size"), // over 256 MiB
        (0, 512 << 10, "block size"), // under 1 MiB
        (1, 0, "virtual disk size"),
        (1, 1000, "virtual disk size"), // not a multiple of the sector size
        (1, (64 << 40) + 512, "virtual disk size"),
        (3, 1024, "logical sector size"),
    ];
    for (item, value, needle) in cases {
        let mut f = good.clone();
        if item == 1 {
            put64(&mut f, item_at(item), value);
        } else {
            put32(&mut f, item_at(item), value as u32);
        }
        let e = open_err(&f).to_string();
        assert!(e.contains(needle), "{item}={value}: {e}");
    }
    let mut f = good.clone();
    put32(&mut f, META_AT + 32 + 32 + 16, (MIB as u32) - 4); // size item past the region
    assert!(matches!(
        open_err(&f),
        VhdxError::MetadataItemOutside { .. }
    ));
    let mut f = good.clone();
    put16(&mut f, META_AT + 10, 2); // only file parameters and size
    assert!(matches!(
        open_err(&f),
        VhdxError::MissingMetadata {
            item: "logical sector size"
        }
    ));
    let mut f = good;
    f[META_AT] = b'M';
    assert!(matches!(open_err(&f), VhdxError::Signature { .. }));
}

fn with_entry(f: &mut [u8], block: u64, entry: u64) {
    put64(f, entry_at(&Spec::default(), block), entry);
}

#[test]
fn bat_entries_are_checked() {
    let good = build(&Spec::default());
    let present = u64::from(PAYLOAD_BLOCK_FULLY_PRESENT);
    let cases: [(u64, u64, &str); 7] = [
        (2, (1 << 40) | present, "past the end of the file"),
        (2, !7 | present, "past the end of the file"),
        (2, (3 << 20) | present, "overlaps the metadata region"),
        (2, present, "overlaps the header section"),
        (2, (4 << 20) | present, "overlap"), // block 0's data
        (
            2,
            u64::from(PAYLOAD_BLOCK_PARTIALLY_PRESENT),
            "differencing",
        ),
        (2, 4, "undefined payload block state"),
    ];
    for (block, entry, needle) in cases {
        let mut f = good.clone();
        with_entry(&mut f, block, entry);
        let e = open_err(&f).to_string();
        assert!(e.contains(needle), "{entry:#x}: {e}");
    }
    // ZERO and UNMAPPED entries keep whatever offset they had: never read, never checked.
    let mut f = good;
    with_entry(&mut f, 2, (1 << 40) | u64::from(PAYLOAD_BLOCK_ZERO));
    open_ok(&f);
}

#[test]
fn bat_size_is_checked_before_it_is_read() {
    // 200 000 blocks need 1.5 MiB of entries; the region holds 1 MiB.
    let f = build(&Spec {
        virtual_size: 200_000 * MIB,
        blocks: vec![],
        ..Spec::default()
    });
    assert!(matches!(open_err(&f), VhdxError::BatTooSmall { .. }));
    let f = build(&Spec {
        virtual_size: 64 << 40,
        blocks: vec![],
        ..Spec::default()
    });
    assert!(matches!(open_err(&f), VhdxError::BatOverLimit { .. }));
}

#[test]
fn a_bad_sector_bitmap_state_is_refused() {
    let s = Spec {
        virtual_size: 17 * (256 * MIB),
        block_size: 256 << 20,
        blocks: vec![],
        ..Spec::default()
    };
    let mut f = build(&s);
    open_ok(&f);
    put64(&mut f, BAT_AT + 16 * 8, 3); // the first bitmap entry
    let e = open_err(&f).to_string();
    assert!(e.contains("sector bitmap"), "{e}");
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let f = build(&Spec::default());
    for len in [
        0,
        7,
        8,
        4096,
        64 * KIB + 10,
        300 * KIB,
        MIB as usize,
        3 * MIB as usize + 100,
        f.len() - 1,
    ] {
        let e = open_err(&f[..len]);
        assert!(e.is_bad_image(), "{len}: {e}");
    }
    let e = open_err(b"conectix and more");
    assert!(e.to_string().contains("vhdxfile"), "{e}");
}

#[test]
fn guid_displays_in_canonical_form() {
    assert_eq!(
        header::BAT_REGION.to_string(),
        "2dc27766-f623-4200-9d64-115e9bfd4a08"
    );
}

mod mutants {
    //! Spec-built files (dynamic, 4 KiB sectors with a bitmap entry, a replayable log)
    //! with fields overwritten, the header and region table CRCs then recomputed so the
    //! mutations reach the checks behind them: the parser must answer every one with a
    //! value, never a panic, and a map it accepts must lie inside the file.

    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn bases() -> &'static [Vec<u8>; 3] {
        static BASES: OnceLock<[Vec<u8>; 3]> = OnceLock::new();
        BASES.get_or_init(|| {
            let fourk = build(&Spec {
                virtual_size: 17 * (256 * MIB) + 8192,
                block_size: 256 << 20,
                logical_sector: 4096,
                blocks: vec![(17, PAYLOAD_BLOCK_FULLY_PRESENT), (3, PAYLOAD_BLOCK_ZERO)],
                ..Spec::default()
            });
            [build(&Spec::default()), fourk, logged_file().0]
        })
    }

    /// Where fields live: headers, region tables, metadata table and items, BAT, log.
    const AREAS: [(usize, usize); 8] = [
        (64 * KIB, 80),
        (128 * KIB, 80),
        (192 * KIB, 80),
        (256 * KIB, 80),
        (META_AT, 32 + 5 * 32),
        (META_AT + 64 * KIB, 48),
        (BAT_AT, 160),
        (LOG_AT, 16 * KIB),
    ];

    #[derive(Debug, Clone)]
    struct Mutant {
        base: usize,
        edits: Vec<(usize, usize, u64, u8)>, // (area, offset in it, value, width)
        fix_crcs: bool,
    }

    fn mutant() -> impl Strategy<Value = Mutant> {
        let edit = (
            0..AREAS.len(),
            any::<usize>(),
            any::<u64>(),
            prop_oneof![Just(1u8), Just(2), Just(4), Just(8)],
        );
        (
            0..3usize,
            proptest::collection::vec(edit, 1..4),
            prop_oneof![4 => Just(true), 1 => Just(false)],
        )
            .prop_map(|(base, edits, fix_crcs)| Mutant {
                base,
                edits: edits
                    .into_iter()
                    .map(|(a, o, v, w)| (a, o % AREAS[a].1, v, w))
                    .collect(),
                fix_crcs,
            })
    }

    /// Small values hit limits more often than random 64-bit ones.
    fn shaped(v: u64) -> u64 {
        match v % 4 {
            0 => v >> 40,
            1 => (v >> 8) % 64 * MIB,
            2 => v % 8,
            _ => v,
        }
    }

    fn mutate(m: &Mutant) -> Vec<u8> {
        let mut f = bases()[m.base].clone();
        for &(area, off, value, width) in &m.edits {
            let at = AREAS[area].0 + off;
            let bytes = shaped(value).to_le_bytes();
            let end = (at + usize::from(width)).min(f.len());
            let n = end - at;
            f[at..end].copy_from_slice(&bytes[..n]);
        }
        if m.fix_crcs {
            for i in 0..2 {
                fix_header_crc(&mut f, i);
                fix_region_crc(&mut f, i);
            }
        }
        f
    }

    /// "ok", or the error's variant name.
    fn outcome(f: &[u8]) -> String {
        match open(f) {
            Ok(img) => {
                let mut at = 0;
                for e in img.extents.extents() {
                    assert_eq!(e.virtual_start, at);
                    at = e.virtual_end();
                    if let Some(src) = e.source_offset() {
                        assert!(src >= MIB && src + e.length <= img.file_len);
                    }
                }
                assert_eq!(at, img.virtual_size());
                "ok".into()
            }
            Err(e) => format!("{e:?}")
                .split([' ', '(', '{'])
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn open_never_panics(m in mutant()) {
            outcome(&mutate(&m));
        }
    }

    /// The generator is only useful if it gets past the checksums: over a fixed sequence
    /// of inputs, files must be accepted and refused for many different reasons.
    #[test]
    fn the_generator_reaches_the_checks_behind_the_checksums() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = mutant();
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..400 {
            let m = strategy.new_tree(&mut runner).unwrap().current();
            *seen.entry(outcome(&mutate(&m))).or_default() += 1;
        }
        for kind in [
            "ok",
            "Field",
            "NoValidHeader",
            "BadBlockState",
            "BlockOutsideFile",
        ] {
            assert!(seen.contains_key(kind), "{kind} never seen: {seen:?}");
        }
        assert!(seen.len() >= 8, "{seen:?}");
    }
}
