//! A running VM's workload in miniature, for warm-migration end-to-end tests and the
//! benchmark: a disk with a given share written, and a deterministic mix of changes
//! between passes (new writes, overwrites, cleared ranges, writes across 4 MiB chunk
//! boundaries, unaligned ones) until a given share of the disk has changed. Reports the
//! pages it touched, which is what a later pass must fetch (within 1.1×, says issue 13).

use super::fake_azure::FakeAzure;
use super::pages::{PAGE, PageSet, page_span};
use super::vhd::{Disk, MIB, fill};

/// What one [`FakeAzure::churn`] changed.
#[derive(Debug, Clone)]
pub struct Churn {
    /// Pages written or cleared (whole pages, as the diff reports them).
    pub pages: PageSet,
    /// Of those, the pages cleared last (they read as zeros and leave the page list).
    pub cleared: PageSet,
}

impl Churn {
    pub fn changed_bytes(&self) -> u64 {
        self.pages.bytes()
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A disk of `size` bytes with about `percent` of it written, in 1 MiB extents spread
/// evenly, contents from `seed`.
pub fn written_disk(size: u64, percent: f64, seed: u64) -> Disk {
    let extent = MIB;
    let count = ((size as f64 * percent / 100.0) / extent as f64).round() as u64;
    // Page-aligned starts (Put Page takes whole pages), some not aligned to 4 KiB.
    let stride = (size / count.max(1)).max(extent) / PAGE * PAGE;
    let extents = (0..count)
        .map(|i| i * stride + if i % 7 == 3 { 1536 } else { 0 })
        .filter(|off| off + extent <= size)
        .map(|off| (off, fill(seed.wrapping_add(off), extent as usize)))
        .collect();
    Disk { size, extents }
}

impl FakeAzure {
    /// Changes disk `name` until at least `percent` of its size has changed, with a mix of
    /// operations drawn from `seed`; returns the pages touched.
    pub fn churn(&mut self, name: &str, percent: f64, seed: u64) -> Churn {
        let size = self.disk(name).size;
        let goal = ((size as f64 * percent / 100.0) as u64).max(PAGE);
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut pages = PageSet::new();
        let mut cleared = PageSet::new();
        let mut op = 0u64;
        while pages.bytes() < goal {
            let len = 512 + rng.below(128 * 1024);
            let (at, len) = self.churn_target(name, op, len, &mut rng);
            let len = len.min(size - at);
            if len == 0 {
                op += 1;
                continue;
            }
            if op % 4 == 2 {
                // Whole pages, as a guest's TRIM would free them.
                let (a, b) = page_span(at, at + len);
                let b = b.min(size);
                self.clear_disk(name, a, b - a);
                cleared.insert(a, b);
            } else {
                let data = fill(seed ^ op, len as usize);
                self.write_disk(name, at, &data);
                cleared.remove(at, at + len);
            }
            pages.insert(at, at + len);
            op += 1;
        }
        Churn { pages, cleared }
    }

    /// Where operation `op` lands: 0 anywhere (often unaligned), 1 inside written data (an
    /// overwrite), 2 a clear inside written data, 3 across a 4 MiB chunk boundary.
    fn churn_target(&self, name: &str, op: u64, len: u64, rng: &mut Rng) -> (u64, u64) {
        let disk = self.disk(name);
        let size = disk.size;
        let inside = |rng: &mut Rng| {
            let (off, data) = &disk.extents[rng.below(disk.extents.len() as u64) as usize];
            off + rng.below(data.len() as u64)
        };
        match op % 4 {
            1 | 2 if !disk.extents.is_empty() => (inside(rng), len),
            3 if size > 4 * MIB => {
                let boundary = (1 + rng.below(size / (4 * MIB) - 1)) * 4 * MIB;
                (boundary.saturating_sub(len / 2), len)
            }
            _ => (rng.below(size), len),
        }
    }
}
