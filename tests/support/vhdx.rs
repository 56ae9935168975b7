//! Test VHDXs: made by `qemu-img convert -O vhdx`, then edited by the spec (MS-VHDX) into
//! what qemu-img cannot make (4096-byte sectors, logs, damage), and seeded as page blobs.
//! Used by tests/vhdx.rs and by the fake Azure, which serves a disk with 4096-byte sectors
//! as Azure does: a VHDX (see [`vhdx_of_image`]). Needs qemu-img (Debian: qemu-utils).

#![allow(dead_code)]

use std::fs;
use std::path::Path;

use azure2kvm::image::vhdx::crc32c::crc32c_with_zeroed_field;

use super::seed;

const KIB: usize = 1024;

pub fn vhdx_of(raw: &Path, out: &Path, opts: &str) {
    let o = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vhdx", "-o", opts])
        .arg(raw)
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "qemu-img: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The same VHDX with 4096-byte logical and physical sectors (see the 4096 test).
pub fn with_4k_sectors(e: &mut Edit) {
    for first in [0x1d, 0xc7] {
        // logical (8141BF1D) and physical (CDA348C7) sector size
        let at = e.item(first);
        e.0[at..at + 4].copy_from_slice(&4096u32.to_le_bytes());
    }
}

/// A VHDX file held in memory, edited by the spec and re-checksummed.
pub struct Edit(pub Vec<u8>);

pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

impl Edit {
    pub fn load(p: &Path) -> Self {
        Self(fs::read(p).unwrap())
    }
    pub fn save(&self, p: &Path) {
        fs::write(p, &self.0).unwrap();
    }
    pub fn header(&mut self, i: usize, f: impl Fn(&mut [u8])) {
        let at = [64, 128][i] * KIB;
        f(&mut self.0[at..at + 4 * KIB]);
        let crc = crc32c_with_zeroed_field(&self.0[at..at + 4 * KIB], 4);
        self.0[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    }
    pub fn region_table(&mut self, i: usize, f: impl Fn(&mut [u8])) {
        let at = [192, 256][i] * KIB;
        f(&mut self.0[at..at + 64 * KIB]);
        let crc = crc32c_with_zeroed_field(&self.0[at..at + 64 * KIB], 4);
        self.0[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    }
    /// (file offset, table entry offset) of the region whose GUID starts with `first`.
    pub fn region(&self, first: u8) -> (usize, usize) {
        let t = 192 * KIB;
        (0..le32(&self.0, t + 8) as usize)
            .map(|i| t + 16 + i * 32)
            .find(|&e| self.0[e] == first)
            .map(|e| {
                let off = u64::from_le_bytes(self.0[e + 16..e + 24].try_into().unwrap());
                (off as usize, e - t)
            })
            .unwrap()
    }
    pub fn metadata_at(&self) -> usize {
        self.region(0x06).0 // 8B7CA206-...: first byte 0x06 on disk
    }
    pub fn bat_at(&self) -> usize {
        self.region(0x66).0 // 2DC27766-...
    }
    /// File offset of the metadata item whose GUID starts with `first`.
    pub fn item(&self, first: u8) -> usize {
        let m = self.metadata_at();
        let count = u16::from_le_bytes([self.0[m + 10], self.0[m + 11]]) as usize;
        (0..count)
            .map(|i| m + 32 + i * 32)
            .find(|&e| self.0[e] == first)
            .map(|e| m + le32(&self.0, e + 16) as usize)
            .unwrap()
    }
}

/// Makes the VHDX differencing (MS-VHDX 2.6.2.1 has-parent) with a parent locator item
/// (2.6.2.6, the VHDX locator type) holding `pairs`, placed in the metadata region after
/// the items qemu-img wrote, as Hyper-V's differencing disks carry one.
pub fn with_parent_locator(e: &mut Edit, pairs: &[(&str, &str)]) {
    use azure2kvm::image::vhdx::{Guid, metadata::PARENT_LOCATOR};
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let vhdx_locator = Guid::new(
        0xB04A_EFB7,
        0xD19E,
        0x4A81,
        [0xB7, 0x89, 0x25, 0xB8, 0xE9, 0x44, 0x59, 0x13],
    );
    let mut item = vhdx_locator.bytes().to_vec();
    item.extend_from_slice(&0u16.to_le_bytes());
    item.extend_from_slice(&(pairs.len() as u16).to_le_bytes());
    let mut text = Vec::new();
    let strings_at = 20 + 12 * pairs.len();
    for (k, v) in pairs {
        let (k, v) = (utf16(k), utf16(v));
        let key_at = (strings_at + text.len()) as u32;
        text.extend_from_slice(&k);
        let value_at = (strings_at + text.len()) as u32;
        text.extend_from_slice(&v);
        item.extend_from_slice(&key_at.to_le_bytes());
        item.extend_from_slice(&value_at.to_le_bytes());
        item.extend_from_slice(&(k.len() as u16).to_le_bytes());
        item.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    item.extend_from_slice(&text);

    let m = e.metadata_at();
    let count = u16::from_le_bytes([e.0[m + 10], e.0[m + 11]]) as usize;
    let end = (0..count)
        .map(|i| m + 32 + i * 32)
        .map(|t| le32(&e.0, t + 16) as usize + le32(&e.0, t + 20) as usize)
        .max()
        .unwrap();
    let at = end.next_multiple_of(4 * KIB);
    e.0[m + at..m + at + item.len()].copy_from_slice(&item);
    let t = m + 32 + count * 32;
    e.0[t..t + 16].copy_from_slice(PARENT_LOCATOR.bytes());
    e.0[t + 16..t + 20].copy_from_slice(&(at as u32).to_le_bytes());
    e.0[t + 20..t + 24].copy_from_slice(&(item.len() as u32).to_le_bytes());
    e.0[t + 24..t + 28].copy_from_slice(&4u32.to_le_bytes()); // IsRequired
    e.0[m + 10..m + 12].copy_from_slice(&(count as u16 + 1).to_le_bytes());
    let params = e.item(0x37); // file parameters (CAA16737)
    e.0[params + 4] |= 2; // HasParent
}

pub fn seed_pages(port: u16, container: &str, name: &str, file: &[u8]) {
    seed::create_container_once(port, container);
    seed::create_page_blob(port, container, name, file.len() as u64);
    let page = 4 * KIB;
    let mut at = 0;
    while at < file.len() {
        if file[at..at + page].iter().all(|&b| b == 0) {
            at += page;
            continue;
        }
        let start = at;
        while at < file.len() && at - start < 4 << 20 && file[at..at + page].iter().any(|&b| b != 0)
        {
            at += page;
        }
        seed::put_pages(port, container, name, start as u64, &file[start..at]);
    }
}

/// A dynamic VHDX (1 MiB blocks) of the virtual disk `image` with `sector_size`-byte
/// logical and physical sectors (512 or 4096): Azure's export of a disk formatted so.
/// The edit keeps the BAT layout only while the disk has fewer 1 MiB blocks than the
/// chunk ratio at 512-byte sectors (4096 blocks: 4 GiB), which every test disk does.
pub fn vhdx_of_image(image: &[u8], sector_size: u32) -> Vec<u8> {
    assert!(
        (image.len() as u64) < 4 << 30 && image.len().is_multiple_of(sector_size as usize),
        "a test VHDX of {} bytes with {sector_size}-byte sectors",
        image.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let vhdx = dir.path().join("disk.vhdx");
    fs::write(&raw, image).unwrap();
    vhdx_of(&raw, &vhdx, "subformat=dynamic,block_size=1M");
    let mut e = Edit::load(&vhdx);
    if sector_size == 4096 {
        with_4k_sectors(&mut e);
    }
    e.0
}
