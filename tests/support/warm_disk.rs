//! A running VM's writes, for warm-migration tests: a test changes a managed disk between
//! passes (write, overwrite, clear, recreate, resize) and the fake world keeps three things
//! in step — the disk's page blob in Azurite (Put Page / Clear Page), the test's copy of
//! the expected bytes (`Disk`), and the pages touched since the disk's last incremental
//! snapshot (`warm.rs`), from which the gate answers diffs. Fixed-VHD (512-byte sector)
//! disks only: a 4 KiB-sector disk's blob is a VHDX, whose pages are not the disk's.

use std::time::Duration;

use super::fake_arm::{ArmState, DISK_CONTAINER, blob_name};
use super::fake_azure::FakeAzure;
use super::pages::{PAGE, PageSet, page_span, parse_page_list};
use super::seed;
use super::vhd::{Disk, footer};

/// Starts tracking every managed disk seeded in Azurite: its blob's length and written
/// pages, as Azurite's (full, non-diff) page list gives them.
pub fn track_seeded(state: &mut ArmState, port: u16) {
    let disks: Vec<(String, String)> = state
        .disks
        .iter()
        .map(|d| (d.resource_group.clone(), d.name.clone()))
        .collect();
    for (rg, name) in disks {
        let path = format!("/{DISK_CONTAINER}/{}", blob_name(&rg, &name));
        let r = seed::signed(port, "GET", &path, &[("comp", "pagelist")], &[], b"");
        if r.status != 200 {
            continue;
        }
        let len = r
            .header("x-ms-blob-content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (ranges, _) = parse_page_list(&String::from_utf8_lossy(&r.body));
        let pairs: Vec<(u64, u64)> = ranges.iter().map(|r| (r.start, r.end)).collect();
        let id = disk_id(state, &rg, &name);
        state.warm.track_disk(&id, len, PageSet::of(&pairs));
    }
}

fn disk_id(s: &ArmState, rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}",
        s.subscription
    )
}

/// Clear Page of `[start, end)` (whole pages) in page blob `container/blob`.
pub fn clear_pages(port: u16, container: &str, blob: &str, start: u64, end: u64) {
    assert!(start.is_multiple_of(PAGE) && end.is_multiple_of(PAGE) && start < end);
    let r = seed::signed(
        port,
        "PUT",
        &format!("/{container}/{blob}"),
        &[("comp", "page")],
        &[
            ("x-ms-page-write", "clear".into()),
            ("x-ms-range", format!("bytes={start}-{}", end - 1)),
        ],
        b"",
    );
    assert!(
        (200..300).contains(&r.status),
        "clear page {blob} {start}..{end}: HTTP {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
}

/// Which disk a test means, and where its bytes live.
struct Target {
    rg: String,
    name: String,
    id: String,
    blob: String,
}

impl FakeAzure {
    fn target(&self, name: &str) -> Target {
        self.with_state(|s| {
            let found: Vec<_> = s
                .disks
                .iter()
                .filter(|d| d.name.eq_ignore_ascii_case(name))
                .collect();
            let [d] = found.as_slice() else {
                panic!("{} disks named {name}", found.len());
            };
            assert!(
                !d.kind.vhdx(),
                "disk {name}: mutation supports fixed-VHD disks only"
            );
            Target {
                rg: d.resource_group.to_ascii_lowercase(),
                name: d.name.to_ascii_lowercase(),
                id: disk_id(s, &d.resource_group, &d.name),
                blob: blob_name(&d.resource_group, &d.name),
            }
        })
    }

    /// Both copies of the test's expected bytes of the disk.
    fn expected_mut(&mut self, t: &Target, f: impl Fn(&mut Disk)) {
        for d in [
            self.disks.get_mut(&t.name),
            self.disks_by_group.get_mut(&(t.rg.clone(), t.name.clone())),
        ]
        .into_iter()
        .flatten()
        {
            f(d);
        }
    }

    /// The lower-case-insensitive ARM id of disk `name` (for snapshot requests).
    pub fn disk_id(&self, name: &str) -> String {
        self.target(name).id
    }

    /// Writes `data` at `offset` of disk `name`, any alignment: Azure stores whole pages,
    /// so the pages it touches are written (with the bytes around it unchanged).
    pub fn write_disk(&mut self, name: &str, offset: u64, data: &[u8]) {
        let t = self.target(name);
        let size = self.disk(name).size;
        let end = offset + data.len() as u64;
        assert!(end <= size, "write past the end of {name} ({end} > {size})");
        if data.is_empty() {
            return;
        }
        let (a, b) = page_span(offset, end);
        let mut pages = self.disk(name).read(a, (b - a) as usize);
        pages[(offset - a) as usize..(end - a) as usize].copy_from_slice(data);
        seed::put_pages(self.azurite.port, DISK_CONTAINER, &t.blob, a, &pages);
        self.expected_mut(&t, |d| d.write(offset, data));
        self.with_state(|s| s.warm.wrote(&t.id, a, b));
    }

    /// Zeros `[offset, offset + len)` of disk `name`: the whole pages inside it are cleared
    /// (Clear Page: they read as zeros and leave the page list); a partial page at either
    /// end is written with zeros instead, as only whole pages can be cleared.
    pub fn clear_disk(&mut self, name: &str, offset: u64, len: u64) {
        let t = self.target(name);
        let end = offset + len;
        assert!(end <= self.disk(name).size, "clear past the end of {name}");
        let (inner_a, inner_b) = (offset.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
        if inner_a >= inner_b {
            return self.write_disk(name, offset, &vec![0; len as usize]);
        }
        if offset < inner_a {
            self.write_disk(name, offset, &vec![0; (inner_a - offset) as usize]);
        }
        if inner_b < end {
            self.write_disk(name, inner_b, &vec![0; (end - inner_b) as usize]);
        }
        clear_pages(self.azurite.port, DISK_CONTAINER, &t.blob, inner_a, inner_b);
        self.expected_mut(&t, |d| d.clear(inner_a, inner_b - inner_a));
        self.with_state(|s| s.warm.cleared(&t.id, inner_a, inner_b));
    }

    /// As if disk `name` were deleted and created again with the same contents: a new
    /// `uniqueId`, every page changed; older snapshots no longer diff against it.
    pub fn recreate_disk(&mut self, name: &str) {
        let t = self.target(name);
        self.with_state(|s| s.warm.recreated(&t.id));
    }

    /// Resizes disk `name` to `size` bytes (a multiple of 512) and its ARM `diskSizeGB` to
    /// `size_gb` (set apart, so a test can claim a size across 4 TiB with a small blob).
    /// The blob's VHD footer moves to the new end; on growth the old footer's page is
    /// cleared.
    pub fn resize_disk(&mut self, name: &str, size: u64, size_gb: u64) {
        let t = self.target(name);
        assert!(size.is_multiple_of(PAGE) && size > 0);
        let old = self.disk(name).size;
        let port = self.azurite.port;
        let r = seed::signed(
            port,
            "PUT",
            &format!("/{DISK_CONTAINER}/{}", t.blob),
            &[("comp", "properties")],
            &[("x-ms-blob-content-length", (size + PAGE).to_string())],
            b"",
        );
        assert!(r.status == 200, "resize {name}: HTTP {}", r.status);
        self.with_state(|s| s.warm.resized(&t.id, size + PAGE));
        if size > old {
            clear_pages(port, DISK_CONTAINER, &t.blob, old, old + PAGE);
            self.with_state(|s| s.warm.cleared(&t.id, old, old + PAGE));
        }
        seed::put_pages(
            port,
            DISK_CONTAINER,
            &t.blob,
            size,
            &footer(2, size, u64::MAX),
        );
        self.with_state(|s| {
            s.warm.wrote(&t.id, size, size + PAGE);
            if let Some(d) = s.disks.iter_mut().find(|d| {
                d.resource_group.eq_ignore_ascii_case(&t.rg) && d.name.eq_ignore_ascii_case(&t.name)
            }) {
                d.size_gb = size_gb;
            }
        });
        self.expected_mut(&t, |d| {
            d.clear(size.min(old), old.max(size) - size.min(old));
            d.size = size;
        });
    }

    /// Moves the fake's clock on (the incremental-snapshot rate window).
    pub fn advance_clock(&self, by: Duration) {
        self.with_state(|s| s.warm.clock_skew += by);
    }
}
