//! Building test disks and asking qemu-img — the oracle — about them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs qemu-img, panicking with its stderr if it fails.
pub fn qemu_img(args: &[&str]) -> Output {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img must be installed");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A sparse raw disk of `size` bytes with random data at each `(offset, len)`.
pub fn make_raw(path: &Path, size: u64, chunks: &[(u64, usize)], seed: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(offset, len)) in chunks.iter().enumerate() {
        f.write_all_at(&random_bytes(len, seed + i as u64), offset)
            .unwrap();
    }
}

/// Scattered chunks: `count` pieces of `len` bytes spread over `size`, some unaligned.
pub fn scattered(size: u64, count: u64, len: usize, seed: u64) -> Vec<(u64, usize)> {
    let stride = size / count;
    (0..count)
        .map(|i| {
            let jitter = (seed.wrapping_mul(i + 7) % 8) * 512;
            let off = (i * stride + jitter).min(size - len as u64);
            (off, len)
        })
        .collect()
}

/// qemu-img makes a VHD from a raw file.
pub fn make_vhd(raw: &Path, vhd: &Path, subformat: &str) {
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vpc",
        "-o",
        &format!("subformat={subformat},force_size=on"),
        raw.to_str().unwrap(),
        vhd.to_str().unwrap(),
    ]);
}

/// What qemu-img says the VHD contains, as a raw file.
pub fn qemu_raw_of_vhd(vhd: &Path, out: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        "vpc",
        "-O",
        "raw",
        vhd.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
}

/// Bytes the filesystem allocated for a file.
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn assert_same_bytes(a: &Path, b: &Path) {
    assert_file_holds(a, &std::fs::read(b).unwrap());
}

/// The file at `path` holds exactly `expected`; else the first differing byte is named.
pub fn assert_file_holds(path: &Path, expected: &[u8]) {
    let got =
        std::fs::read(path).unwrap_or_else(|e| panic!("{} cannot be read: {e}", path.display()));
    assert_eq!(got.len(), expected.len(), "size of {}", path.display());
    if let Some(i) = got.iter().zip(expected).position(|(p, q)| p != q) {
        panic!(
            "{} differs from what was expected at byte {i}",
            path.display()
        );
    }
}

/// `qemu-img check` passes and `qemu-img compare` finds the qcow2 identical to `raw`.
pub fn assert_qcow2_matches(qcow2: &Path, raw: &Path) {
    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(qcow2)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "qemu-img check {}: {}{}",
        qcow2.display(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        !stdout.contains("leaked") && !stdout.contains("ERROR"),
        "qemu-img check: {stdout}"
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(raw)
        .arg(qcow2)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "qemu-img compare: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
}

/// Runs the built binary.
pub fn azure2kvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_azure2kvm"))
        .args(args)
        .output()
        .unwrap()
}

/// Files in `dir` whose name contains "azure2kvm-partial": leftovers of a failed run.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("azure2kvm-partial"))
        .collect()
}

/// Overwrites the 512-byte footer at `at` after `edit`, recomputing its checksum.
pub fn edit_footer(path: &Path, at: u64, edit: impl FnOnce(&mut [u8; 512])) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut footer = [0u8; 512];
    f.read_exact_at(&mut footer, at).unwrap();
    edit(&mut footer);
    footer[64..68].fill(0);
    let sum = footer
        .iter()
        .fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f.write_all_at(&footer, at).unwrap();
}

/// Writes a dynamic VHD of `raw` with `block_size` blocks to `out` (blocks in reverse file
/// order, so file order differs from virtual order).
pub fn make_dynamic_vhd(raw: &[u8], block_size: u32, out: &Path) {
    std::fs::write(
        out,
        super::vhd::dynamic_vhd(raw, block_size, super::vhd::BlockOrder::Reversed),
    )
    .unwrap();
}

/// Asserts that `image` (raw, or qcow2 by its extension) holds exactly what the fake
/// disk `disk` holds.
pub fn assert_image_equals(
    world: &super::fake_azure::FakeAzure,
    image: &std::path::Path,
    disk: &str,
) {
    let expected = world.disk(disk).image();
    if image.extension().is_some_and(|e| e == "raw") {
        return assert_file_holds(image, &expected);
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    assert_qcow2_matches(image, &raw);
}
