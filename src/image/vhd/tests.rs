//! Synthetic VHDs for the validation rules: each test breaks one rule and expects the
//! error that names it. (qemu-made images are covered by tests/convert.rs.)

use super::dynamic::{COOKIE as HEADER_COOKIE, HEADER_SIZE, UNALLOCATED};
use super::footer::tests::{footer_bytes, reseal};
use super::*;

const BLOCK: u32 = 4096;
const BITMAP: u64 = 512;

/// A dynamic VHD in memory: footer copy, header at 512, BAT at 1536, blocks, footer.
struct Dyn {
    size: u64,
    block: u32,
    entries: u32,
    bat: Vec<u32>,
    blocks: Vec<(u32, u8)>, // (sector, fill byte) written after the BAT
    parent: Option<&'static str>,
    disk_type: u32,
}

impl Dyn {
    fn new(size: u64, block: u32) -> Self {
        let n = size.div_ceil(u64::from(block)) as u32;
        Self {
            size,
            block,
            entries: n,
            bat: vec![UNALLOCATED; n as usize],
            blocks: vec![],
            parent: None,
            disk_type: 3,
        }
    }

    fn bat_sectors(&self) -> u64 {
        (u64::from(self.entries) * 4).div_ceil(512)
    }

    /// Allocates block `index` at the next free sector, filled with `fill`.
    fn alloc(&mut self, index: usize, fill: u8) -> &mut Self {
        let first_free = 3 + self.bat_sectors();
        let per_block = (BITMAP + u64::from(self.block)) / 512;
        let sector = first_free + self.blocks.len() as u64 * per_block;
        self.bat[index] = sector as u32;
        self.blocks.push((sector as u32, fill));
        self
    }

    fn header(&self) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[0..8].copy_from_slice(HEADER_COOKIE);
        h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        h[16..24].copy_from_slice(&1536u64.to_be_bytes());
        h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        h[28..32].copy_from_slice(&self.entries.to_be_bytes());
        h[32..36].copy_from_slice(&self.block.to_be_bytes());
        if let Some(p) = self.parent {
            for (i, u) in p.encode_utf16().enumerate() {
                h[64 + 2 * i..66 + 2 * i].copy_from_slice(&u.to_be_bytes());
            }
        }
        let c = checksum(&h, 36);
        h[36..40].copy_from_slice(&c.to_be_bytes());
        h
    }

    fn build_with(&self, header: [u8; HEADER_SIZE]) -> Vec<u8> {
        let footer = footer_bytes(self.disk_type, self.size, 512);
        let mut f = footer.to_vec();
        f.extend_from_slice(&header);
        let mut bat: Vec<u8> = self.bat.iter().flat_map(|e| e.to_be_bytes()).collect();
        bat.resize((self.bat_sectors() * 512) as usize, 0xff);
        f.extend_from_slice(&bat);
        for &(sector, fill) in &self.blocks {
            let at = u64::from(sector) as usize * 512;
            let end = at + (BITMAP + u64::from(self.block)) as usize;
            if f.len() < end {
                f.resize(end, 0);
            }
            f[at..at + BITMAP as usize].fill(0xff);
            f[at + BITMAP as usize..end].fill(fill);
        }
        f.extend_from_slice(&footer);
        f
    }

    fn build(&self) -> Vec<u8> {
        self.build_with(self.header())
    }
}

fn fixed(size: u64) -> Vec<u8> {
    let mut f = vec![0x5a; size as usize];
    f.extend_from_slice(&footer_bytes(2, size, u64::MAX));
    f
}

#[test]
fn fixed_disk_is_one_data_extent() {
    let img = open(fixed(1 << 20).as_slice()).unwrap();
    assert_eq!(img.footer.disk_type, DiskType::Fixed);
    assert_eq!(img.extents, ExtentMap::dense(1 << 20));
}

#[test]
fn fixed_disk_with_wrong_length_is_refused() {
    let mut f = fixed(1 << 20);
    f.insert(0, 0); // one byte too long
    assert!(
        matches!(open(f.as_slice()), Err(VhdError::FixedSizeMismatch { expected, .. }) if expected == (1 << 20) + 512)
    );
    let f = fixed(1 << 20);
    let short = [&f[..1000], &f[f.len() - 512..]].concat();
    assert!(matches!(
        open(short.as_slice()),
        Err(VhdError::FixedSizeMismatch { .. })
    ));
}

#[test]
fn tiny_file_is_refused() {
    assert!(matches!(
        open([0u8; 100].as_slice()),
        Err(VhdError::TooSmall { len: 100 })
    ));
    assert!(matches!(
        open([0u8; 0].as_slice()),
        Err(VhdError::TooSmall { len: 0 })
    ));
}

#[test]
fn dynamic_map_has_allocated_blocks_only() {
    let mut d = Dyn::new(10 * u64::from(BLOCK) - 1024, BLOCK);
    d.alloc(1, 1).alloc(9, 2).alloc(4, 3);
    let img = open(d.build().as_slice()).unwrap();
    let (h, summary) = img.dynamic.as_ref().unwrap();
    assert_eq!(h.block_size, BLOCK);
    assert_eq!(summary.allocated_blocks, 3);
    let data: Vec<(u64, u64)> = img
        .extents
        .data_extents()
        .map(|e| (e.virtual_start, e.length))
        .collect();
    // The last block is clipped to the disk's size.
    assert_eq!(
        data,
        vec![(4096, 4096), (4 * 4096, 4096), (9 * 4096, 4096 - 1024)]
    );
    // Data offsets skip the bitmap.
    let first = img
        .extents
        .data_extents()
        .next()
        .unwrap()
        .source_offset()
        .unwrap();
    assert_eq!(first, u64::from(d.bat[1]) * 512 + BITMAP);
}

#[test]
fn dynamic_with_large_block_size_has_larger_bitmap() {
    let d = Dyn::new(16 << 20, 8 << 20);
    let img = open(d.build().as_slice()).unwrap();
    assert_eq!(img.dynamic.unwrap().0.bitmap_size(), 2048); // 16384 sectors → 2048 bytes
}

#[test]
fn damaged_tail_footer_falls_back_to_head_copy() {
    let mut d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    d.alloc(0, 7);
    let mut f = d.build();
    let n = f.len();
    f[n - 1] ^= 0xff;
    let img = open(f.as_slice()).unwrap();
    assert_eq!(img.footer_source, FooterSource::HeadCopy);
    assert!(img.tail_footer_problem.unwrap().contains("checksum"));
}

#[test]
fn differencing_disk_is_refused_naming_parent() {
    let mut d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    d.disk_type = 4;
    d.parent = Some("base-disk.vhd");
    let err = open(d.build().as_slice()).unwrap_err();
    assert!(
        matches!(&err, VhdError::Differencing { parent } if parent.contains("base-disk.vhd")),
        "{err}"
    );
}

#[test]
fn header_cookie_checksum_and_version_are_checked() {
    let d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    let mut h = d.header();
    h[0] = b'X';
    assert!(matches!(
        open(d.build_with(h).as_slice()),
        Err(VhdError::BadHeaderCookie { offset: 512, .. })
    ));
    let mut h = d.header();
    h[600] ^= 1;
    assert!(matches!(
        open(d.build_with(h).as_slice()),
        Err(VhdError::BadHeaderChecksum { .. })
    ));
    let mut h = d.header();
    h[24..28].copy_from_slice(&0x0002_0000u32.to_be_bytes());
    let c = checksum(&h, 36);
    h[36..40].copy_from_slice(&c.to_be_bytes());
    assert!(matches!(
        open(d.build_with(h).as_slice()),
        Err(VhdError::BadHeaderVersion { .. })
    ));
}

#[test]
fn block_size_must_be_power_of_two() {
    for bad in [3 * 4096, 256, 0] {
        let mut d = Dyn::new(8 * 4096, BLOCK);
        d.block = bad;
        let err = open(d.build().as_slice()).unwrap_err();
        assert!(
            matches!(err, VhdError::BadBlockSize { block_size, .. } if block_size == bad),
            "{bad}: {err}"
        );
    }
}

#[test]
fn bat_must_cover_disk() {
    let mut d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    d.entries = 7;
    d.bat.truncate(7);
    assert!(matches!(
        open(d.build().as_slice()),
        Err(VhdError::BatTooSmall {
            entries: 7,
            needed: 8,
            ..
        })
    ));
}

#[test]
fn bat_larger_than_the_disk_needs_is_refused() {
    // 8 blocks cover the disk; a header claiming one more entry (or 2^32 - 1) is corrupt.
    for entries in [9, u32::MAX] {
        let d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
        let mut h = d.header();
        h[28..32].copy_from_slice(&entries.to_be_bytes());
        let c = checksum(&h, 36);
        h[36..40].copy_from_slice(&c.to_be_bytes());
        let err = open(d.build_with(h).as_slice()).unwrap_err();
        assert!(
            matches!(
                err,
                VhdError::BatTooLarge { offset: 540, entries: e, needed: 8, .. } if e == entries
            ),
            "{entries}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&entries.to_string())
                && msg.contains("8 blocks")
                && msg.contains("offset 540"),
            "{msg}"
        );
    }
    // A disk that ends inside its last block still needs that block: no false refusal.
    let d = Dyn::new(8 * u64::from(BLOCK) - 512, BLOCK);
    assert_eq!(d.entries, 8);
    open(d.build().as_slice()).unwrap();
}

/// A source that claims to be `len` bytes long, holds `head` at offset 0 and `tail` at the
/// end, zeros elsewhere, and remembers the largest single read it served.
struct Sparse {
    len: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    largest_read: std::cell::Cell<usize>,
}

impl ReadAt for Sparse {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.largest_read
            .set(self.largest_read.get().max(buf.len()));
        let tail_at = self.len - self.tail.len() as u64;
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = if at < self.head.len() as u64 {
                self.head[at as usize]
            } else if at >= tail_at {
                self.tail[(at - tail_at) as usize]
            } else {
                0
            };
        }
        Ok(())
    }
}

#[test]
fn bat_over_the_memory_limit_is_refused_before_it_is_read() {
    // 8 GiB + 512 bytes of 512-byte blocks: 2^24 + 1 entries, a 64 MiB table, in a file
    // large enough to hold it.
    let size = (dynamic::MAX_BAT_ENTRIES << 9) + 512;
    let mut d = Dyn::new(size, 512);
    d.bat.clear();
    let mut head = footer_bytes(3, size, 512).to_vec();
    head.extend_from_slice(&d.header());
    let src = Sparse {
        len: 1 << 40,
        head,
        tail: footer_bytes(3, size, 512).to_vec(),
        largest_read: 0.into(),
    };
    let err = open(&src).unwrap_err();
    assert!(
        matches!(err, VhdError::BatOverLimit { offset: 540, entries, limit, .. }
            if entries == dynamic::MAX_BAT_ENTRIES + 1 && limit == dynamic::MAX_BAT_ENTRIES),
        "{err}"
    );
    assert!(err.to_string().contains("16777217"), "{err}");
    assert!(
        src.largest_read.get() <= 1024,
        "read {} bytes",
        src.largest_read.get()
    );
}

#[test]
fn dynamic_disk_past_2040_gib_is_refused() {
    // 4 TiB of 2 GiB blocks: a tiny BAT, so only the size rule can refuse it.
    let size = 4u64 << 40;
    let d = Dyn::new(size, 1 << 31);
    let err = open(d.build().as_slice()).unwrap_err();
    assert!(
        matches!(err, VhdError::DynamicTooLarge { size: s, limit, .. }
            if s == size && limit == footer::MAX_DYNAMIC_SIZE),
        "{err}"
    );
}

#[test]
fn bat_beyond_file_is_refused() {
    let d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    let mut h = d.header();
    h[16..24].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let c = checksum(&h, 36);
    h[36..40].copy_from_slice(&c.to_be_bytes());
    assert!(matches!(
        open(d.build_with(h).as_slice()),
        Err(VhdError::BatOutsideFile { .. })
    ));
}

#[test]
fn bat_overlapping_header_is_refused() {
    let d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    let mut h = d.header();
    h[16..24].copy_from_slice(&1024u64.to_be_bytes());
    let c = checksum(&h, 36);
    h[36..40].copy_from_slice(&c.to_be_bytes());
    let err = open(d.build_with(h).as_slice()).unwrap_err();
    assert!(
        matches!(
            err,
            VhdError::BatOverlapsMetadata {
                region: "dynamic header",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn header_offset_beyond_file_is_refused() {
    let d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    let mut f = d.build();
    let n = f.len();
    let mut footer: [u8; 512] = f[n - 512..].try_into().unwrap();
    footer[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    reseal(&mut footer);
    f[n - 512..].copy_from_slice(&footer);
    assert!(matches!(
        open(f.as_slice()),
        Err(VhdError::HeaderOutsideFile { .. })
    ));
}

#[test]
fn block_beyond_file_is_refused() {
    let mut d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    d.alloc(0, 1);
    d.bat[2] = 1_000_000;
    let err = open(d.build().as_slice()).unwrap_err();
    assert!(
        matches!(
            err,
            VhdError::BlockOutsideFile {
                block: 2,
                sector: 1_000_000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn truncated_dynamic_file_is_refused() {
    let mut d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    d.alloc(0, 1).alloc(1, 2);
    let f = d.build();
    // Cut the last block in half, keep a valid footer at the end.
    let cut = [&f[..f.len() - 512 - 2048], &f[f.len() - 512..]].concat();
    assert!(matches!(
        open(cut.as_slice()),
        Err(VhdError::BlockOutsideFile { block: 1, .. })
    ));
}

#[test]
fn overlapping_blocks_are_refused() {
    let mut d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    d.alloc(0, 1).alloc(1, 2);
    d.bat[5] = d.bat[1] + 1; // starts inside block 1
    d.blocks.push((d.bat[5], 3));
    let err = open(d.build().as_slice()).unwrap_err();
    assert!(
        matches!(
            err,
            VhdError::BlocksOverlap {
                first: 1,
                second: 5,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn block_overlapping_metadata_is_refused() {
    let mut d = Dyn::new(8 * u64::from(BLOCK), BLOCK);
    d.alloc(0, 1);
    d.bat[3] = 1; // sector 1 = the dynamic header
    let err = open(d.build().as_slice()).unwrap_err();
    assert!(
        matches!(err, VhdError::BlockOverlapsMetadata { block: 3, .. }),
        "{err}"
    );
}

#[test]
fn printable_escapes_and_trims() {
    assert_eq!(printable(b"wa\0\0"), "wa");
    assert_eq!(printable(b"a\x01b\0"), "a\\x01b");
}

// ---- property tests: structurally valid VHDs with mutated fields ----------------------

use proptest::prelude::*;

/// How the generated header's max table entries relate to what the disk needs.
#[derive(Debug, Clone)]
enum Entries {
    Exact,
    Delta(i64),
    Value(u32),
}

/// A VHD described by its fields: checksums are computed when it is built, so the
/// parser gets past them and on to the layout rules (sizes, offsets, BAT entries).
#[derive(Debug, Clone)]
struct Mutant {
    disk_type: u32,
    /// None: exactly the file's body (what a fixed disk needs).
    current_size: Option<u64>,
    /// None: what the disk type wants (512 for a dynamic header, all ones for fixed).
    data_offset: Option<u64>,
    table_offset: u64,
    entries: Entries,
    block_size: u32,
    header_version: u32,
    bat: Vec<u32>,
    /// Copy one BAT entry over another (two blocks in one place): the overlap rule.
    dup: Option<(prop::sample::Index, prop::sample::Index)>,
    block_sectors: u64,
    /// One byte flipped after sealing (position modulo the length): checksum paths.
    damage: Option<(usize, u8)>,
}

impl Mutant {
    fn build(&self) -> Vec<u8> {
        let bat_bytes = (self.bat.len() as u64 * 4).div_ceil(512) * 512;
        let body = 1536 + bat_bytes + self.block_sectors * 512;
        let size = self.current_size.unwrap_or(body);
        let natural = if self.disk_type == 2 { u64::MAX } else { 512 };
        let footer = footer_bytes(self.disk_type, size, self.data_offset.unwrap_or(natural));
        let mut f = footer.to_vec();
        let mut h = [0u8; HEADER_SIZE];
        h[0..8].copy_from_slice(HEADER_COOKIE);
        h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        h[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        h[24..28].copy_from_slice(&self.header_version.to_be_bytes());
        let needed = if self.block_size == 0 {
            0
        } else {
            size.div_ceil(u64::from(self.block_size))
        };
        let entries = match self.entries {
            Entries::Exact => needed,
            Entries::Delta(d) => needed.saturating_add_signed(d),
            Entries::Value(v) => u64::from(v),
        };
        h[28..32].copy_from_slice(&(entries.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        h[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        let c = checksum(&h, 36);
        h[36..40].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        let mut entries = self.bat.clone();
        if let (Some((from, to)), false) = (&self.dup, entries.is_empty()) {
            let (from, to) = (from.index(entries.len()), to.index(entries.len()));
            entries[to] = entries[from];
        }
        let mut bat: Vec<u8> = entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        bat.resize(bat_bytes as usize, 0xff);
        f.extend_from_slice(&bat);
        // Block area: not zeros, so a map pointing into it is visibly data.
        f.resize(f.len() + (self.block_sectors * 512) as usize, 0x5a);
        f.extend_from_slice(&footer);
        if let Some((at, x)) = self.damage {
            let n = f.len();
            f[at % n] ^= x.max(1);
        }
        f
    }
}

fn mutant() -> impl Strategy<Value = Mutant> {
    let disk_type =
        prop_oneof![6 => Just(3u32), 2 => Just(2u32), 1 => Just(4u32), 1 => any::<u32>()];
    let size = prop_oneof![
        4 => Just(None),
        6 => (1u64..=64).prop_map(|s| Some(s * 512)),
        4 => (1u64..=16).prop_map(|b| Some(b * 4096)),
        1 => Just(Some(0)),
        1 => (1u64..100_000).prop_map(Some),
        1 => Just(Some(footer::MAX_DYNAMIC_SIZE)),
        1 => Just(Some(footer::MAX_DYNAMIC_SIZE + 512)),
        1 => any::<u64>().prop_map(|s| Some(s & !511)),
    ];
    let data_offset = prop_oneof![
        12 => Just(None),
        1 => Just(Some(u64::MAX)),
        1 => (0u64..80_000).prop_map(Some),
        1 => any::<u64>().prop_map(Some),
    ];
    let table_offset = prop_oneof![
        8 => Just(1536u64),
        1 => Just(1024u64),
        1 => 0u64..1536,
        2 => 0u64..80_000,
        1 => any::<u64>(),
    ];
    let entries = prop_oneof![
        5 => Just(Entries::Exact),
        2 => (-2i64..=2).prop_map(Entries::Delta),
        1 => Just(Entries::Value(u32::MAX)),
        1 => any::<u32>().prop_map(Entries::Value),
    ];
    let block_size = prop_oneof![
        4 => Just(4096u32),
        2 => Just(512u32),
        1 => Just(2u32 << 20),
        1 => Just(1u32 << 31),
        2 => (0u32..32).prop_map(|b| 1 << b),
        1 => any::<u32>(),
    ];
    let header_version = prop_oneof![9 => Just(0x0001_0000u32), 1 => any::<u32>()];
    // Sectors 3.. hold the BAT and blocks of a small file: mostly plausible entries.
    let entry = prop_oneof![
        4 => Just(UNALLOCATED),
        4 => 3u32..160,
        1 => 0u32..8,
        1 => any::<u32>(),
    ];
    let bat = proptest::collection::vec(entry, 0..48);
    let damage = prop_oneof![8 => Just(None), 1 => any::<(usize, u8)>().prop_map(Some)];
    let dup = prop_oneof![3 => Just(None), 1 => any::<(prop::sample::Index, prop::sample::Index)>().prop_map(Some)];
    (
        (disk_type, size, data_offset, table_offset),
        (
            entries,
            block_size,
            header_version,
            bat,
            dup,
            0u64..160,
            damage,
        ),
    )
        .prop_map(
            |((t, sz, d, to), (e, bs, hv, bat, dup, sectors, dmg))| Mutant {
                disk_type: t,
                current_size: sz,
                data_offset: d,
                table_offset: to,
                entries: e,
                block_size: bs,
                header_version: hv,
                bat,
                dup,
                block_sectors: sectors,
                damage: dmg,
            },
        )
}

/// What `open` made of an input: "ok-fixed", "ok-dynamic" or the error's variant name.
fn outcome(bytes: &[u8]) -> String {
    match open(bytes) {
        Ok(img) => {
            check_accepted(&img, bytes);
            format!("ok-{:?}", img.footer.disk_type).to_lowercase()
        }
        Err(e) => {
            let debug = format!("{e:?}");
            debug[..debug.find([' ', '(', '{']).unwrap_or(debug.len())].to_string()
        }
    }
}

/// An accepted image: its map covers exactly the virtual disk, every data extent lies
/// inside the data area, and a dynamic disk's table is what the disk needs.
fn check_accepted(img: &VhdImage, bytes: &[u8]) {
    let mut at = 0;
    for e in img.extents.extents() {
        assert_eq!(e.virtual_start, at);
        at = e.virtual_end();
        if let Some(src) = e.source_offset() {
            assert!(src + e.length <= bytes.len() as u64 - 512, "{e:?}");
        }
    }
    assert_eq!(at, img.virtual_size());
    if let Some((h, _)) = &img.dynamic {
        assert_eq!(
            u64::from(h.max_table_entries),
            h.blocks_for(img.virtual_size())
        );
        assert!(img.virtual_size() <= footer::MAX_DYNAMIC_SIZE);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The parser never panics on a structurally valid VHD with mutated fields: every
    /// failure is an error value, every success a map inside the file.
    #[test]
    fn open_never_panics(m in mutant()) {
        outcome(&m.build());
    }

    /// Nor on arbitrary bytes, with or without a valid footer at the end.
    #[test]
    fn open_never_panics_on_noise(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        seed_footer in any::<bool>(),
        t in 2u32..5,
    ) {
        if seed_footer && bytes.len() >= 512 {
            let n = bytes.len();
            bytes[n - 512..].copy_from_slice(&footer_bytes(t, 8192, 512));
        }
        let _ = open(bytes.as_slice());
    }
}

/// The generator is only useful if it gets past the checksums to the BAT rules: over a
/// fixed sequence of inputs, each of them must fire, and some inputs must be accepted.
#[test]
fn the_generator_reaches_every_bat_check() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = mutant();
    let mut seen = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..1500 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        *seen.entry(outcome(&m.build())).or_default() += 1;
    }
    for kind in [
        "ok-dynamic",
        "ok-fixed",
        "BatTooSmall",
        "BatTooLarge",
        "BatOverLimit",
        "DynamicTooLarge",
        "BatOutsideFile",
        "BatOverlapsMetadata",
        "BlockOutsideFile",
        "BlockOverlapsMetadata",
        "BlocksOverlap",
        "BadBlockSize",
        "BadHeaderChecksum",
    ] {
        assert!(seen.contains_key(kind), "never reached {kind}: {seen:?}");
    }
}
