//! Test disks: a virtual disk's bytes, and the VHD (fixed or dynamic) that holds them.

pub const MIB: u64 = 1 << 20;

/// Deterministic non-zero filler for written extents.
pub fn fill(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// One's complement of the byte sum, the 4 bytes at `skip` taken as zero (VHD spec).
pub fn checksum(b: &[u8], skip: usize) -> u32 {
    let sum = b
        .iter()
        .enumerate()
        .filter(|(i, _)| !(skip..skip + 4).contains(i))
        .fold(0u32, |a, (_, &x)| a.wrapping_add(u32::from(x)));
    !sum
}

/// A VHD footer (Azure-style creator) for `disk_type` 2 fixed / 3 dynamic.
pub fn footer(disk_type: u32, size: u64, data_offset: u64) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&data_offset.to_be_bytes());
    f[28..32].copy_from_slice(b"wa\0\0");
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    f[56..60].copy_from_slice(&[0x0a, 0x00, 0x10, 0x3f]);
    f[60..64].copy_from_slice(&disk_type.to_be_bytes());
    f[68..84].copy_from_slice(&[0x5a; 16]);
    let c = checksum(&f, 64);
    f[64..68].copy_from_slice(&c.to_be_bytes());
    f
}

/// A disk described by written extents `(offset, len)`; unwritten bytes are zeros.
#[derive(Debug, Clone)]
pub struct Disk {
    pub size: u64,
    pub extents: Vec<(u64, Vec<u8>)>,
}

impl Disk {
    pub fn new(size: u64, layout: &[(u64, u64)]) -> Self {
        let extents = layout
            .iter()
            .enumerate()
            .map(|(i, &(off, len))| (off, fill(i as u64 + 7, len as usize)))
            .collect();
        Self { size, extents }
    }

    /// The whole virtual disk in memory (tens of MiB in tests).
    pub fn image(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.size as usize];
        for (off, data) in &self.extents {
            v[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        v
    }

    /// The bytes `[offset, offset + len)`: zeros where nothing is written.
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let end = offset + len as u64;
        for (off, data) in &self.extents {
            let (a, b) = ((*off).max(offset), (off + data.len() as u64).min(end));
            if a < b {
                out[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&data[(a - off) as usize..(b - off) as usize]);
            }
        }
        out
    }

    /// Overwrites `[offset, offset + data.len())`, as a running VM writes.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        self.clear(offset, data.len() as u64);
        self.extents.push((offset, data.to_vec()));
        self.extents.sort_by_key(|(off, _)| *off);
    }

    /// Zeros `[offset, offset + len)`: what the extents held there is gone.
    pub fn clear(&mut self, offset: u64, len: u64) {
        let end = offset + len;
        let mut kept = Vec::with_capacity(self.extents.len() + 1);
        for (off, data) in self.extents.drain(..) {
            let e = off + data.len() as u64;
            if e <= offset || off >= end {
                kept.push((off, data));
                continue;
            }
            if off < offset {
                kept.push((off, data[..(offset - off) as usize].to_vec()));
            }
            if e > end {
                kept.push((end, data[(end - off) as usize..].to_vec()));
            }
        }
        self.extents = kept;
    }

    pub fn written_bytes(&self) -> u64 {
        self.extents.iter().map(|(_, d)| d.len() as u64).sum()
    }

    /// A dynamic VHD file (2 MiB blocks) holding the blocks the extents touch.
    pub fn dynamic_vhd(&self) -> Vec<u8> {
        dynamic_vhd(&self.image(), 2 * MIB as u32, BlockOrder::Virtual)
    }
}

/// Order of the allocated blocks in a built dynamic VHD's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockOrder {
    Virtual,
    /// Last block first: file order differs from virtual order, as in real images.
    Reversed,
}

/// A dynamic VHD holding `disk`: footer copy, header at 512, BAT at 1536, then each block
/// that holds data (all-zero blocks stay unallocated), then the footer. Any power-of-two
/// `block_size` (qemu-img cannot make other than 2 MiB).
pub fn dynamic_vhd(disk: &[u8], block_size: u32, order: BlockOrder) -> Vec<u8> {
    let size = disk.len() as u64;
    let block = u64::from(block_size);
    let blocks = size.div_ceil(block);
    let bitmap = (block / 512).div_ceil(8).div_ceil(512) * 512;
    let bat_at = 1536u64;
    let bat_len = (blocks * 4).div_ceil(512) * 512;
    let mut out = vec![0u8; (bat_at + bat_len) as usize];
    let mut bat = vec![0xffu8; bat_len as usize];
    let mut indexes: Vec<u64> = (0..blocks).collect();
    if order == BlockOrder::Reversed {
        indexes.reverse();
    }
    for b in indexes {
        let data = &disk[(b * block) as usize..((b + 1) * block).min(size) as usize];
        if data.iter().all(|&x| x == 0) {
            continue;
        }
        let sector = (out.len() / 512) as u32;
        bat[(b * 4) as usize..(b * 4 + 4) as usize].copy_from_slice(&sector.to_be_bytes());
        out.resize(out.len() + bitmap as usize, 0xff); // sector bitmap: all present
        out.extend_from_slice(data);
        out.resize(out.len() + (block as usize - data.len()), 0);
    }
    let f = footer(3, size, 512);
    out[0..512].copy_from_slice(&f);
    let mut h = [0u8; 1024];
    h[0..8].copy_from_slice(b"cxsparse");
    h[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    h[16..24].copy_from_slice(&bat_at.to_be_bytes());
    h[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    h[28..32].copy_from_slice(&(blocks as u32).to_be_bytes());
    h[32..36].copy_from_slice(&block_size.to_be_bytes());
    let c = checksum(&h, 36);
    h[36..40].copy_from_slice(&c.to_be_bytes());
    out[512..1536].copy_from_slice(&h);
    out[bat_at as usize..(bat_at + bat_len) as usize].copy_from_slice(&bat);
    out.extend_from_slice(&f);
    out
}
