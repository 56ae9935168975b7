//! A focused qcow2 (version 3) writer for images built once, by positional writes in any
//! order, and never modified afterwards.
//!
//! Layout (qemu's docs/interop/qcow2.txt): cluster 0 holds the header; the L1 table follows;
//! L2 tables and data clusters are appended as writes first touch them; refcount blocks and
//! the refcount table are appended last by [`Qcow2Writer::finish`]. Nothing is ever shared,
//! so refcounts are not maintained while writing: `finish` walks L1/L2 once and gives every
//! referenced cluster refcount 1 and every other cluster 0.
//!
//! Resume: [`Qcow2Writer::checkpoint`] writes the L2 tables, the L1 table and a header
//! marked with the "corrupt" incompatible bit (so no qemu opens a half-written image);
//! [`Qcow2Writer::resume`] reads them back. Between checkpoints an evicted L2 table may
//! already reference clusters the lost in-memory state allocated, so resume sets the
//! allocation frontier past every cluster any on-disk L2 table references *and* past the
//! end of the file: new clusters always land in never-written space (holes, reading as
//! zeros), and clusters orphaned by the crash become free (refcount 0) at `finish`.
//!
//! A partial file is untrusted: before anything is written into it, resume checks every
//! L1 and L2 entry against the file and a map of host clusters ([`check_tables`]): only
//! the flags this writer sets, cluster-aligned, past the header and L1 table, inside the
//! file, each cluster owned by one entry, nothing mapped past the disk's end. A partial that
//! fails is refused ([`SinkError::NotResumable`]) and the download starts over. The "inside
//! the file" rule holds after a crash (not after a power loss, which only costs the
//! resume): a table reaches the disk by eviction or checkpoint; eviction takes the least
//! recently used table, and the only entries whose data is not written yet belong to the
//! write in progress, which touches at most two tables (writes are at most 64 MiB, a table
//! maps 512 MiB) — never the least recently used of 64.
//!
//! Choices: 64 KiB clusters (qemu's default; overhead under 0.2% over sparse raw), 16-bit
//! refcounts (the v3 default), no compression, no backing file, no extended L2. A cluster
//! is allocated only when a write puts non-zero bytes in it, so holes stay unallocated and
//! read as zeros.
//!
//! Memory bound: the L1 table (8 bytes per 512 MiB of disk, so 128 KiB for 8 TiB) plus at
//! most [`L2_CACHE_TABLES`] L2 tables of 64 KiB each (4 MiB); evicted tables are written to
//! their cluster and read back when needed again.

mod update;

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::image::offset::{ByteLen, GuestOffset, HostOffset};
use crate::image::sink::{ImageFormat, ImageSink, SinkError, SinkStats, check_bounds};
use crate::image::writeback::Writeback;
use crate::image::zero::is_zero;

/// Header magic, "QFI\xfb" (qcow2.txt, byte 0).
const MAGIC: u32 = 0x5146_49fb;
const VERSION: u32 = 3;
const CLUSTER_BITS: u32 = 16;
pub const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// Entries of 8 bytes in one L2 table cluster.
const L2_ENTRIES: u64 = CLUSTER_SIZE / 8;
/// Virtual bytes mapped by one L2 table (512 MiB).
const L2_COVERAGE: u64 = L2_ENTRIES * CLUSTER_SIZE;
/// refcount_bits = 1 << REFCOUNT_ORDER = 16.
const REFCOUNT_ORDER: u32 = 4;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER_SIZE * 8 / (1 << REFCOUNT_ORDER);
/// Bit 63 of L1/L2 entries: refcount is exactly 1, the cluster may be written in place.
const OFLAG_COPIED: u64 = 1 << 63;
/// Bits 9..=55 of L1/L2 entries hold the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Fixed v3 header length with no optional fields (qcow2.txt, bytes 0-103).
const HEADER_LENGTH: u32 = 104;
/// qemu refuses L1 tables over 32 MiB (QCOW_MAX_L1_SIZE); so do we.
const MAX_L1_BYTES: u64 = 32 << 20;
/// L2 tables kept in memory (64 KiB each).
pub const L2_CACHE_TABLES: usize = 64;
/// Incompatible feature bit 1, "corrupt": set on checkpointed, unfinished images.
const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Bits an entry of ours never has: bit 0 ("reads as zeros"), the reserved bits 1-8 and
/// 56-61, bit 62 ("compressed"). Together with [`OFFSET_MASK`] and [`OFLAG_COPIED`] they
/// make up all 64.
const FOREIGN_BITS: u64 = !(OFFSET_MASK | OFLAG_COPIED);

#[derive(Debug)]
struct CachedL2 {
    l1_index: usize,
    entries: Vec<u64>,
    dirty: bool,
    last_used: u64,
}

/// Writes a qcow2 image; see the module note.
#[derive(Debug)]
pub struct Qcow2Writer {
    file: File,
    virtual_size: u64,
    /// Host offset of each L2 table, 0 when the table does not exist yet.
    l1: Vec<u64>,
    l1_offset: u64,
    /// Host offset of the next cluster to allocate: the end of the used host space.
    next_free: u64,
    cache: Vec<CachedL2>,
    clock: u64,
    stats: SinkStats,
    writeback: Writeback,
}

fn div_ceil(a: u64, b: u64) -> u64 {
    a.div_ceil(b)
}

impl Qcow2Writer {
    pub fn create(file: File, virtual_size: u64) -> Result<Self, SinkError> {
        let l1_size = div_ceil(virtual_size, L2_COVERAGE);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(SinkError::TooLarge {
                virtual_size,
                format: ImageFormat::Qcow2,
                limit: MAX_L1_BYTES / 8 * L2_COVERAGE,
            });
        }
        file.set_len(0).map_err(SinkError::io("truncate", 0))?;
        Ok(Self::with_l1(file, virtual_size, vec![0; l1_size as usize]))
    }

    fn with_l1(file: File, virtual_size: u64, l1: Vec<u64>) -> Self {
        let l1_clusters = div_ceil(l1.len() as u64 * 8, CLUSTER_SIZE);
        Self {
            file,
            virtual_size,
            l1,
            l1_offset: CLUSTER_SIZE,
            next_free: CLUSTER_SIZE * (1 + l1_clusters),
            cache: Vec::with_capacity(L2_CACHE_TABLES),
            clock: 0,
            stats: SinkStats::default(),
            writeback: Writeback::default(),
        }
    }

    /// Reopens an image this writer checkpointed, for a disk of `virtual_size` bytes,
    /// after checking that the header, L1 and L2 tables are what a checkpoint of ours
    /// leaves (see the module note); anything else is [`SinkError::NotResumable`].
    pub fn resume(file: File, virtual_size: u64) -> Result<Self, SinkError> {
        let not_ours = |why: String| SinkError::NotResumable { why };
        let mut header = [0u8; HEADER_LENGTH as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| not_ours(format!("cannot read a qcow2 header: {e}")))?;
        check_checkpoint_header(&header, virtual_size).map_err(not_ours)?;
        let expected_l1 = div_ceil(virtual_size, L2_COVERAGE);
        let file_len = file.metadata().map_err(SinkError::io("stat", 0))?.len();
        let limit = max_partial_len(virtual_size);
        if file_len > limit {
            return Err(not_ours(format!(
                "the file is {file_len} bytes, more than the {limit} a partial image of a \
                 {virtual_size}-byte disk can reach"
            )));
        }
        let mut raw = vec![0u8; expected_l1 as usize * 8];
        file.read_exact_at(&mut raw, CLUSTER_SIZE)
            .map_err(SinkError::io("read L1 table", CLUSTER_SIZE))?;
        let l1_raw: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let l1 = l1_raw.iter().map(|e| e & OFFSET_MASK).collect();
        let mut w = Self::with_l1(file, virtual_size, l1);
        check_tables(&l1_raw, w.next_free, file_len, virtual_size, |at| {
            w.read_l2(at)
        })?;
        // Every reference lies inside the file (checked): new clusters go past its end,
        // into never-written space; clusters orphaned by the crash stay unreferenced and
        // get refcount 0 at `finish`.
        w.next_free = w
            .next_free
            .max(div_ceil(file_len, CLUSTER_SIZE) * CLUSTER_SIZE);
        Ok(w)
    }

    fn read_l2(&self, at: u64) -> Result<Vec<u64>, SinkError> {
        let mut raw = vec![0u8; CLUSTER_SIZE as usize];
        self.file
            .read_exact_at(&mut raw, at)
            .map_err(SinkError::io("read L2 table", at))?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    fn allocate_cluster(&mut self) -> u64 {
        let at = self.next_free;
        self.next_free += CLUSTER_SIZE;
        at
    }

    /// Index into `cache` of the L2 table for `l1_index`, loading or creating it. Returns
    /// None when the table does not exist and `create` is false.
    fn l2_slot(&mut self, l1_index: usize, create: bool) -> Result<Option<usize>, SinkError> {
        self.clock += 1;
        if let Some(i) = self.cache.iter().position(|t| t.l1_index == l1_index) {
            self.cache[i].last_used = self.clock;
            return Ok(Some(i));
        }
        let on_disk = self.l1[l1_index];
        if on_disk == 0 && !create {
            return Ok(None);
        }
        let entries = if on_disk == 0 {
            self.l1[l1_index] = self.allocate_cluster();
            vec![0u64; L2_ENTRIES as usize]
        } else {
            let mut raw = vec![0u8; CLUSTER_SIZE as usize];
            self.file
                .read_exact_at(&mut raw, on_disk)
                .map_err(SinkError::io("read L2 table", on_disk))?;
            raw.chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
                .collect()
        };
        let table = CachedL2 {
            l1_index,
            entries,
            dirty: on_disk == 0,
            last_used: self.clock,
        };
        if self.cache.len() < L2_CACHE_TABLES {
            self.cache.push(table);
            return Ok(Some(self.cache.len() - 1));
        }
        let victim = (0..self.cache.len())
            .min_by_key(|&i| self.cache[i].last_used)
            .expect("cache is full");
        self.write_back(victim)?;
        self.cache[victim] = table;
        Ok(Some(victim))
    }

    fn write_back(&mut self, slot: usize) -> Result<(), SinkError> {
        let table = &mut self.cache[slot];
        if table.dirty {
            let at = self.l1[table.l1_index];
            let bytes: Vec<u8> = table.entries.iter().flat_map(|e| e.to_be_bytes()).collect();
            self.file
                .write_all_at(&bytes, at)
                .map_err(SinkError::io("write L2 table", at))?;
            self.stats.bytes_written += CLUSTER_SIZE;
            table.dirty = false;
        }
        Ok(())
    }

    /// Writes guest data at a host offset and counts it toward early writeback. (A batch's
    /// span may also cover L2 tables appended in between; flushing those early is harmless,
    /// checkpoints rewrite them.)
    fn write_data(&mut self, bytes: &[u8], host: HostOffset) -> Result<(), SinkError> {
        let host = host.get();
        self.file
            .write_all_at(bytes, host)
            .map_err(SinkError::io("write", host))?;
        self.stats.bytes_written += bytes.len() as u64;
        self.writeback.wrote(&self.file, host, bytes.len() as u64);
        Ok(())
    }

    /// Host offset of the cluster holding `virtual_offset`, allocating it when `piece`
    /// (the bytes about to land in it) is not all zeros. None: leave it unallocated.
    /// Guest and host offsets are distinct types here: confusing the two would write a
    /// cluster's data over another's tables.
    fn host_cluster(
        &mut self,
        virtual_offset: GuestOffset,
        piece: &[u8],
    ) -> Result<Option<HostOffset>, SinkError> {
        let cluster = virtual_offset.get() / CLUSTER_SIZE;
        let l1_index = (cluster / L2_ENTRIES) as usize;
        let l2_index = (cluster % L2_ENTRIES) as usize;
        let zero = is_zero(piece);
        let Some(slot) = self.l2_slot(l1_index, !zero)? else {
            return Ok(None);
        };
        let entry = self.cache[slot].entries[l2_index];
        if entry != 0 {
            return Ok(Some(HostOffset(entry & OFFSET_MASK)));
        }
        if zero {
            return Ok(None);
        }
        let host = self.allocate_cluster();
        let table = &mut self.cache[slot];
        table.entries[l2_index] = host | OFLAG_COPIED;
        table.dirty = true;
        Ok(Some(HostOffset(host)))
    }

    fn write_l1(&mut self) -> Result<(), SinkError> {
        let l1_bytes: Vec<u8> = self
            .l1
            .iter()
            .flat_map(|&e| if e == 0 { 0u64 } else { e | OFLAG_COPIED }.to_be_bytes())
            .collect();
        self.file
            .write_all_at(&l1_bytes, self.l1_offset)
            .map_err(SinkError::io("write L1 table", self.l1_offset))?;
        self.stats.bytes_written += l1_bytes.len() as u64;
        Ok(())
    }

    /// Which host clusters below `next_free` are referenced: header, L1, L2 tables, data.
    /// One bit per 64 KiB of image file. Call after all L2 tables are written back.
    fn referenced_clusters(&self) -> Result<Vec<bool>, SinkError> {
        let mut used = vec![false; (self.next_free / CLUSTER_SIZE) as usize];
        let l1_clusters = div_ceil(self.l1.len() as u64 * 8, CLUSTER_SIZE) as usize;
        used[..1 + l1_clusters].fill(true);
        for &table in self.l1.iter().filter(|&&t| t != 0) {
            used[(table / CLUSTER_SIZE) as usize] = true;
            for entry in self.read_l2(table)?.into_iter().filter(|&e| e != 0) {
                used[((entry & OFFSET_MASK) / CLUSTER_SIZE) as usize] = true;
            }
        }
        Ok(used)
    }

    fn write_refcounts_and_header(&mut self) -> Result<(), SinkError> {
        let referenced = self.referenced_clusters()?;
        let used = self.next_free / CLUSTER_SIZE;
        // The refcount structures count themselves: iterate to the fixed point.
        let (mut blocks, mut table_clusters) = (0u64, 0u64);
        loop {
            let total = used + blocks + table_clusters;
            let b = div_ceil(total, REFCOUNTS_PER_BLOCK);
            let t = div_ceil(b * 8, CLUSTER_SIZE).max(1);
            if (b, t) == (blocks, table_clusters) {
                break;
            }
            (blocks, table_clusters) = (b, t);
        }
        let total = used + blocks + table_clusters;
        let blocks_offset = self.next_free;
        let table_offset = blocks_offset + blocks * CLUSTER_SIZE;

        let mut block = vec![0u8; CLUSTER_SIZE as usize];
        let mut table = vec![0u8; (table_clusters * CLUSTER_SIZE) as usize];
        for b in 0..blocks {
            let first = b * REFCOUNTS_PER_BLOCK;
            let count = (total - first).min(REFCOUNTS_PER_BLOCK) as usize;
            block.fill(0);
            for (i, c) in block.chunks_exact_mut(2).take(count).enumerate() {
                // Clusters at or past `used` are the refcount structures themselves.
                let cluster = (first as usize) + i;
                if referenced.get(cluster).copied().unwrap_or(true) {
                    c.copy_from_slice(&1u16.to_be_bytes());
                }
            }
            let at = blocks_offset + b * CLUSTER_SIZE;
            self.file
                .write_all_at(&block, at)
                .map_err(SinkError::io("write refcount block", at))?;
            let e = (b * 8) as usize;
            table[e..e + 8].copy_from_slice(&at.to_be_bytes());
        }
        self.file
            .write_all_at(&table, table_offset)
            .map_err(SinkError::io("write refcount table", table_offset))?;

        self.write_l1()?;
        self.write_header(table_offset, table_clusters as u32, 0)?;
        self.stats.bytes_written += (blocks + table_clusters) * CLUSTER_SIZE;
        Ok(())
    }

    fn write_header(
        &mut self,
        refcount_table_offset: u64,
        refcount_table_clusters: u32,
        incompatible_features: u64,
    ) -> Result<(), SinkError> {
        let header = encode_header(&HeaderFields {
            virtual_size: self.virtual_size,
            l1_size: self.l1.len() as u32,
            l1_offset: self.l1_offset,
            refcount_table_offset,
            refcount_table_clusters,
            incompatible_features,
        });
        self.file
            .write_all_at(&header, 0)
            .map_err(SinkError::io("write header", 0))?;
        self.stats.bytes_written += header.len() as u64;
        Ok(())
    }

    fn write_back_all(&mut self) -> Result<(), SinkError> {
        for slot in 0..self.cache.len() {
            self.write_back(slot)?;
        }
        Ok(())
    }
}

/// The header fields a checkpoint of ours has, for a disk of `virtual_size` bytes.
fn check_checkpoint_header(header: &[u8], virtual_size: u64) -> Result<(), String> {
    let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let be64 = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let expected_l1 = div_ceil(virtual_size, L2_COVERAGE);
    if be32(0) != MAGIC || be32(4) != VERSION || be32(20) != CLUSTER_BITS {
        return Err("not a qcow2 v3 image with 64 KiB clusters".into());
    }
    if be64(72) & INCOMPAT_CORRUPT == 0 {
        return Err("not a checkpoint of an unfinished image".into());
    }
    if be64(24) != virtual_size || u64::from(be32(36)) != expected_l1 || be64(40) != CLUSTER_SIZE {
        return Err(format!(
            "made for virtual size {} (L1 {} entries at {}), expected {virtual_size}",
            be64(24),
            be32(36),
            be64(40)
        ));
    }
    // A checkpoint has no backing file, encryption, snapshots or refcount table yet.
    let extras = [
        ("backing file offset", be64(8)),
        ("encryption method", u64::from(be32(32))),
        ("refcount table offset", be64(48)),
        ("snapshot count", u64::from(be32(60))),
    ];
    match extras.iter().find(|(_, v)| *v != 0) {
        Some((what, v)) => Err(format!("header has {what} {v}; a checkpoint of ours has 0")),
        None => Ok(()),
    }
}

/// The largest file a partial image of a `virtual_size`-byte disk can be: header, L1, every
/// L2 table and every data cluster, twice over for what crashed runs left orphaned.
fn max_partial_len(virtual_size: u64) -> u64 {
    let l1 = div_ceil(virtual_size, L2_COVERAGE);
    let clusters = 1 + div_ceil(l1 * 8, CLUSTER_SIZE) + l1 + div_ceil(virtual_size, CLUSTER_SIZE);
    clusters.saturating_mul(2 * CLUSTER_SIZE)
}

/// One bit per host cluster of a partial file: which entry owns which cluster.
struct ClusterMap {
    bits: Vec<u64>,
}

impl ClusterMap {
    fn new(file_len: u64) -> Self {
        let clusters = div_ceil(file_len, CLUSTER_SIZE);
        Self {
            bits: vec![0; div_ceil(clusters, 64) as usize],
        }
    }

    /// Marks `cluster` used; false if it already was.
    fn claim(&mut self, cluster: u64) -> bool {
        let (word, bit) = ((cluster / 64) as usize, 1u64 << (cluster % 64));
        let free = self.bits[word] & bit == 0;
        self.bits[word] |= bit;
        free
    }
}

/// Where an L1 or L2 entry of a partial file points, if it is what this writer writes:
/// no flag but COPIED, cluster-aligned, past the header and L1 table (`metadata_end`), and
/// `extent` bytes from it inside the file (a whole table; a data cluster's first byte,
/// since a crash may cut its data short).
fn entry_target(
    what: &dyn Fn() -> String,
    raw: u64,
    metadata_end: u64,
    extent: u64,
    file_len: u64,
) -> Result<u64, String> {
    let at = raw & OFFSET_MASK;
    if raw & FOREIGN_BITS != 0 || raw & OFLAG_COPIED == 0 {
        return Err(format!(
            "{} is {raw:#018x}: flags this writer never sets",
            what()
        ));
    }
    if !at.is_multiple_of(CLUSTER_SIZE) {
        return Err(format!("{} points to {at}, not a cluster boundary", what()));
    }
    if at < metadata_end {
        return Err(format!(
            "{} points to {at}, inside the header and L1 table (which end at {metadata_end})",
            what()
        ));
    }
    if at.checked_add(extent).is_none_or(|end| end > file_len) {
        return Err(format!(
            "{} points to {at}, past the end of the {file_len}-byte file",
            what()
        ));
    }
    Ok(at)
}

/// Checks every L1 and L2 entry of a partial file before anything is written into it:
/// [`entry_target`]'s rules, each host cluster owned by one entry only, and no data mapped
/// past the disk's `virtual_size`. `read_l2` reads one table (64 KiB at a time in memory).
fn check_tables(
    l1_raw: &[u64],
    metadata_end: u64,
    file_len: u64,
    virtual_size: u64,
    mut read_l2: impl FnMut(u64) -> Result<Vec<u64>, SinkError>,
) -> Result<(), SinkError> {
    let bad = |why: String| SinkError::NotResumable { why };
    let mut owned = ClusterMap::new(file_len);
    for (i, &raw) in l1_raw.iter().enumerate().filter(|(_, e)| **e != 0) {
        let what = || format!("L1 entry {i}");
        let table = entry_target(&what, raw, metadata_end, CLUSTER_SIZE, file_len).map_err(bad)?;
        if !owned.claim(table / CLUSTER_SIZE) {
            return Err(bad(format!(
                "{} points to {table}, a cluster another entry already uses",
                what()
            )));
        }
        for (j, raw) in read_l2(table)?
            .into_iter()
            .enumerate()
            .filter(|(_, e)| *e != 0)
        {
            let virtual_offset = (i as u64 * L2_ENTRIES + j as u64) * CLUSTER_SIZE;
            let what = || {
                format!("L2 entry {j} of the table at {table} (virtual offset {virtual_offset})")
            };
            if virtual_offset >= virtual_size {
                return Err(bad(format!(
                    "{} maps data past the disk's end at {virtual_size}",
                    what()
                )));
            }
            let data = entry_target(&what, raw, metadata_end, 1, file_len).map_err(bad)?;
            if !owned.claim(data / CLUSTER_SIZE) {
                return Err(bad(format!(
                    "{} points to {data}, a cluster another entry already uses",
                    what()
                )));
            }
        }
    }
    Ok(())
}

struct HeaderFields {
    virtual_size: u64,
    l1_size: u32,
    l1_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
    incompatible_features: u64,
}

/// The v3 header (qcow2.txt "Header"), followed by the end-of-extensions marker.
fn encode_header(h: &HeaderFields) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LENGTH as usize + 8);
    b.extend_from_slice(&MAGIC.to_be_bytes());
    b.extend_from_slice(&VERSION.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes()); // backing_file_offset
    b.extend_from_slice(&0u32.to_be_bytes()); // backing_file_size
    b.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    b.extend_from_slice(&h.virtual_size.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
    b.extend_from_slice(&h.l1_size.to_be_bytes());
    b.extend_from_slice(&h.l1_offset.to_be_bytes());
    b.extend_from_slice(&h.refcount_table_offset.to_be_bytes());
    b.extend_from_slice(&h.refcount_table_clusters.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    b.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    b.extend_from_slice(&h.incompatible_features.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes()); // compatible_features
    b.extend_from_slice(&0u64.to_be_bytes()); // autoclear_features
    b.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    b.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
    debug_assert_eq!(b.len(), HEADER_LENGTH as usize);
    b.extend_from_slice(&[0u8; 8]); // header extension type 0: end of extensions
    b
}

impl ImageSink for Qcow2Writer {
    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn write_at(&mut self, virtual_offset: u64, data: &[u8]) -> Result<(), SinkError> {
        check_bounds(virtual_offset, data.len(), self.virtual_size)?;
        // Consecutive clusters usually land in consecutive host clusters: gather them
        // into one write.
        // (host offset, data start, len)
        let mut pending: Option<(HostOffset, usize, usize)> = None;
        let mut pos = 0usize;
        while pos < data.len() {
            let v = virtual_offset + pos as u64;
            let in_cluster = (v % CLUSTER_SIZE) as usize;
            let len = (CLUSTER_SIZE as usize - in_cluster).min(data.len() - pos);
            let host = self
                .host_cluster(GuestOffset(v), &data[pos..pos + len])?
                .map(|h| HostOffset(h.get() + in_cluster as u64));
            match (host, pending.as_mut()) {
                (Some(h), Some((ph, pstart, plen)))
                    if ph.checked_add(ByteLen(*plen as u64)) == Some(h)
                        && *pstart + *plen == pos =>
                {
                    *plen += len;
                }
                (host, _) => {
                    if let Some((ph, pstart, plen)) = pending.take() {
                        self.write_data(&data[pstart..pstart + plen], ph)?;
                    }
                    pending = host.map(|h| (h, pos, len));
                }
            }
            pos += len;
        }
        if let Some((ph, pstart, plen)) = pending {
            self.write_data(&data[pstart..pstart + plen], ph)?;
        }
        self.stats.bytes_received += data.len() as u64;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), SinkError> {
        self.write_back_all()?;
        self.write_l1()?;
        self.write_header(0, 0, INCOMPAT_CORRUPT)?;
        self.file.sync_all().map_err(SinkError::io("fsync", 0))
    }

    fn finish(&mut self) -> Result<SinkStats, SinkError> {
        self.write_back_all()?;
        self.write_refcounts_and_header()?;
        self.file.sync_all().map_err(SinkError::io("fsync", 0))?;
        Ok(self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_has_documented_layout() {
        let h = encode_header(&HeaderFields {
            virtual_size: 1 << 30,
            l1_size: 2,
            l1_offset: CLUSTER_SIZE,
            refcount_table_offset: 5 * CLUSTER_SIZE,
            refcount_table_clusters: 1,
            incompatible_features: 0,
        });
        assert_eq!(&h[0..4], b"QFI\xfb");
        assert_eq!(u32::from_be_bytes(h[4..8].try_into().unwrap()), 3);
        assert_eq!(u32::from_be_bytes(h[20..24].try_into().unwrap()), 16);
        assert_eq!(u64::from_be_bytes(h[24..32].try_into().unwrap()), 1 << 30);
        assert_eq!(u32::from_be_bytes(h[36..40].try_into().unwrap()), 2);
        assert_eq!(u32::from_be_bytes(h[96..100].try_into().unwrap()), 4);
        assert_eq!(u32::from_be_bytes(h[100..104].try_into().unwrap()), 104);
        assert_eq!(h.len(), 112);
    }

    #[test]
    fn refuses_sizes_beyond_l1_limit() {
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(
            Qcow2Writer::create(f, u64::MAX),
            Err(SinkError::TooLarge { .. })
        ));
    }

    /// A checkpointed partial image of a 1 GiB + 64 KiB disk (3 L2 tables): data in
    /// table 0 (two clusters) and table 1, nothing in table 2. Returns the file and the
    /// host offsets (table 0, table 1, first data cluster, second data cluster).
    fn checkpointed() -> (File, [u64; 4]) {
        let file = tempfile::tempfile().unwrap();
        let mut w = Qcow2Writer::create(file.try_clone().unwrap(), PARTIAL_SIZE).unwrap();
        w.write_at(0, &[1; 4096]).unwrap();
        w.write_at(CLUSTER_SIZE, &[2; 4096]).unwrap();
        w.write_at(L2_COVERAGE + 512, &[3; 512]).unwrap();
        w.checkpoint().unwrap();
        let tables = [w.l1[0], w.l1[1]];
        let t0 = w.read_l2(tables[0]).unwrap();
        let data = [t0[0] & OFFSET_MASK, t0[1] & OFFSET_MASK];
        (file, [tables[0], tables[1], data[0], data[1]])
    }

    const PARTIAL_SIZE: u64 = 2 * L2_COVERAGE + CLUSTER_SIZE;

    /// The doctored entry to write, from the offsets [`checkpointed`] returns.
    type Doctor<'a> = &'a dyn Fn(&[u64; 4]) -> u64;

    fn put(file: &File, at: u64, value: u64) {
        file.write_all_at(&value.to_be_bytes(), at).unwrap();
    }

    /// The file's length and its first 16 MiB (all of it but for the oversized case).
    fn contents(file: &File) -> (u64, Vec<u8>) {
        let len = file.metadata().unwrap().len();
        let mut buf = vec![0u8; len.min(16 << 20) as usize];
        file.read_exact_at(&mut buf, 0).unwrap();
        (len, buf)
    }

    /// Resume must refuse the doctored file naming the problem, and leave it untouched.
    fn refused(file: &File, needle: &str) {
        let before = contents(file);
        let err = Qcow2Writer::resume(file.try_clone().unwrap(), PARTIAL_SIZE).unwrap_err();
        assert!(
            matches!(&err, SinkError::NotResumable { why } if why.contains(needle)),
            "expected {needle:?}: {err}"
        );
        assert!(
            contents(file) == before,
            "a refused partial must not be written into"
        );
    }

    #[test]
    fn an_intact_checkpoint_resumes() {
        let (file, _) = checkpointed();
        Qcow2Writer::resume(file, PARTIAL_SIZE).unwrap();
    }

    #[test]
    fn resume_refuses_doctored_l1_entries() {
        let l1 = CLUSTER_SIZE;
        let cases: [(Doctor, &str); 5] = [
            (
                &|_| CLUSTER_SIZE | OFLAG_COPIED,
                "inside the header and L1 table",
            ),
            (&|o| (o[0] + 512) | OFLAG_COPIED, "not a cluster boundary"),
            (&|_| (1 << 40) | OFLAG_COPIED, "past the end of the"),
            (
                &|o| o[0] | OFLAG_COPIED | 1 << 62,
                "flags this writer never sets",
            ),
            (&|o| o[2] | OFLAG_COPIED, "another entry already uses"),
        ];
        for (entry, needle) in cases {
            let (file, o) = checkpointed();
            // Table 2 is empty: point it somewhere it must not.
            put(&file, l1 + 16, entry(&o));
            refused(&file, needle);
        }
        // Two L1 entries sharing one L2 table.
        let (file, o) = checkpointed();
        put(&file, l1 + 8, o[0] | OFLAG_COPIED);
        refused(&file, "L1 entry 1 points to");
    }

    #[test]
    fn resume_refuses_doctored_l2_entries() {
        let cases: [(Doctor, &str); 7] = [
            (&|_| OFLAG_COPIED, "inside the header and L1 table"),
            (&|o| (o[3] + 4096) | OFLAG_COPIED, "not a cluster boundary"),
            (&|_| (1 << 40) | OFLAG_COPIED, "past the end of the"),
            (
                &|o| o[3] | OFLAG_COPIED | 1 << 62,
                "flags this writer never sets",
            ),
            (&|o| o[3] | OFLAG_COPIED | 1, "flags this writer never sets"),
            (&|o| o[2] | OFLAG_COPIED, "another entry already uses"),
            (&|o| o[1] | OFLAG_COPIED, "another entry already uses"),
        ];
        for (entry, needle) in cases {
            let (file, o) = checkpointed();
            // Entry 1 of table 0 (data cluster o[3]) rewritten.
            put(&file, o[0] + 8, entry(&o));
            refused(&file, needle);
        }
        // Table 2 maps only its first cluster (the disk is 1 GiB + 64 KiB): an entry for
        // its second, pointing to a cluster of its own inside the file, maps data past the
        // disk's end.
        let (file, o) = checkpointed();
        let mut w = Qcow2Writer::resume(file.try_clone().unwrap(), PARTIAL_SIZE).unwrap();
        w.write_at(2 * L2_COVERAGE, &[4; 512]).unwrap();
        w.checkpoint().unwrap();
        let spare = file.metadata().unwrap().len().div_ceil(CLUSTER_SIZE) * CLUSTER_SIZE;
        file.set_len(spare + CLUSTER_SIZE).unwrap();
        put(&file, w.l1[2] + 8, spare | OFLAG_COPIED);
        assert!(w.l1[2] > o[3]);
        refused(&file, "past the disk's end");
    }

    #[test]
    fn resume_refuses_a_foreign_header_or_an_oversized_file() {
        let (file, _) = checkpointed();
        put(&file, 48, 5 * CLUSTER_SIZE); // a refcount table: a finished or foreign image
        refused(&file, "refcount table offset");
        let (file, _) = checkpointed();
        put(&file, 8, 4096); // a backing file
        refused(&file, "backing file offset");
        let (file, _) = checkpointed();
        file.set_len(max_partial_len(PARTIAL_SIZE) + 1).unwrap();
        refused(&file, "a partial image of a");
    }

    #[test]
    fn zero_writes_allocate_nothing() {
        let f = tempfile::tempfile().unwrap();
        let mut w = Qcow2Writer::create(f, 4 << 20).unwrap();
        let before = w.next_free;
        w.write_at(0, &vec![0u8; 2 << 20]).unwrap();
        assert_eq!(w.next_free, before);
        w.write_at(CLUSTER_SIZE + 7, &[1]).unwrap();
        // One L2 table and one data cluster.
        assert_eq!(w.next_free, before + 2 * CLUSTER_SIZE);
    }
}
