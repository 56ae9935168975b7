//! A focused qcow2 (version 3) writer for images built once, by positional writes in any
//! order, and never modified afterwards.
//!
//! Layout (qemu's docs/interop/qcow2.txt): cluster 0 holds the header; the L1 table follows;
//! L2 tables and data clusters are appended as writes first touch them; refcount blocks and
//! the refcount table are appended last by [`Qcow2Writer::finish`]. Because nothing is ever
//! freed or shared, every cluster below the end of the file has refcount 1, so refcounts
//! are computed at the end instead of being maintained.
//!
//! Choices: 64 KiB clusters (qemu's default; overhead under 0.2% over sparse raw), 16-bit
//! refcounts (the v3 default), no compression, no backing file, no extended L2. A cluster
//! is allocated only when a write puts non-zero bytes in it, so holes stay unallocated and
//! read as zeros.
//!
//! Memory bound: the L1 table (8 bytes per 512 MiB of disk, so 128 KiB for 8 TiB) plus at
//! most [`L2_CACHE_TABLES`] L2 tables of 64 KiB each (4 MiB); evicted tables are written to
//! their cluster and read back when needed again.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::image::sink::{ImageFormat, ImageSink, SinkError, SinkStats, check_bounds};
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
        let l1_clusters = div_ceil(l1_size * 8, CLUSTER_SIZE);
        file.set_len(0).map_err(SinkError::io("truncate", 0))?;
        Ok(Self {
            file,
            virtual_size,
            l1: vec![0; l1_size as usize],
            l1_offset: CLUSTER_SIZE,
            next_free: CLUSTER_SIZE * (1 + l1_clusters),
            cache: Vec::with_capacity(L2_CACHE_TABLES),
            clock: 0,
            stats: SinkStats::default(),
        })
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

    /// Host offset of the cluster holding `virtual_offset`, allocating it when `piece`
    /// (the bytes about to land in it) is not all zeros. None: leave it unallocated.
    fn host_cluster(
        &mut self,
        virtual_offset: u64,
        piece: &[u8],
    ) -> Result<Option<u64>, SinkError> {
        let cluster = virtual_offset / CLUSTER_SIZE;
        let l1_index = (cluster / L2_ENTRIES) as usize;
        let l2_index = (cluster % L2_ENTRIES) as usize;
        let zero = is_zero(piece);
        let Some(slot) = self.l2_slot(l1_index, !zero)? else {
            return Ok(None);
        };
        let entry = self.cache[slot].entries[l2_index];
        if entry != 0 {
            return Ok(Some(entry & OFFSET_MASK));
        }
        if zero {
            return Ok(None);
        }
        let host = self.allocate_cluster();
        let table = &mut self.cache[slot];
        table.entries[l2_index] = host | OFLAG_COPIED;
        table.dirty = true;
        Ok(Some(host))
    }

    fn write_refcounts_and_header(&mut self) -> Result<(), SinkError> {
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
            for c in block.chunks_exact_mut(2).take(count) {
                c.copy_from_slice(&1u16.to_be_bytes());
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

        let l1_bytes: Vec<u8> = self
            .l1
            .iter()
            .flat_map(|&e| if e == 0 { 0u64 } else { e | OFLAG_COPIED }.to_be_bytes())
            .collect();
        self.file
            .write_all_at(&l1_bytes, self.l1_offset)
            .map_err(SinkError::io("write L1 table", self.l1_offset))?;

        let header = encode_header(&HeaderFields {
            virtual_size: self.virtual_size,
            l1_size: self.l1.len() as u32,
            l1_offset: self.l1_offset,
            refcount_table_offset: table_offset,
            refcount_table_clusters: table_clusters as u32,
        });
        self.file
            .write_all_at(&header, 0)
            .map_err(SinkError::io("write header", 0))?;
        self.stats.bytes_written +=
            (blocks + table_clusters) * CLUSTER_SIZE + l1_bytes.len() as u64 + header.len() as u64;
        Ok(())
    }
}

struct HeaderFields {
    virtual_size: u64,
    l1_size: u32,
    l1_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
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
    b.extend_from_slice(&0u64.to_be_bytes()); // incompatible_features
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
        let mut pending: Option<(u64, usize, usize)> = None; // (host offset, data start, len)
        let mut pos = 0usize;
        while pos < data.len() {
            let v = virtual_offset + pos as u64;
            let in_cluster = (v % CLUSTER_SIZE) as usize;
            let len = (CLUSTER_SIZE as usize - in_cluster).min(data.len() - pos);
            let host = self
                .host_cluster(v, &data[pos..pos + len])?
                .map(|h| h + in_cluster as u64);
            match (host, pending.as_mut()) {
                (Some(h), Some((ph, pstart, plen)))
                    if *ph + *plen as u64 == h && *pstart + *plen == pos =>
                {
                    *plen += len;
                }
                (host, _) => {
                    if let Some((ph, pstart, plen)) = pending.take() {
                        self.file
                            .write_all_at(&data[pstart..pstart + plen], ph)
                            .map_err(SinkError::io("write", ph))?;
                        self.stats.bytes_written += plen as u64;
                    }
                    pending = host.map(|h| (h, pos, len));
                }
            }
            pos += len;
        }
        if let Some((ph, pstart, plen)) = pending {
            self.file
                .write_all_at(&data[pstart..pstart + plen], ph)
                .map_err(SinkError::io("write", ph))?;
            self.stats.bytes_written += plen as u64;
        }
        self.stats.bytes_received += data.len() as u64;
        Ok(())
    }

    fn finish(&mut self) -> Result<SinkStats, SinkError> {
        for slot in 0..self.cache.len() {
            self.write_back(slot)?;
        }
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
