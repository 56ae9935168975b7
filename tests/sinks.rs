//! The qcow2 sink on a large sparse disk, checked by qemu-img: writes spread over more L2
//! tables than the cache holds, in shuffled order and in two passes (so tables are evicted
//! and read back), with a checkpoint, a simulated crash and a resume in the middle.

mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;

use azure2kvm::image::qcow2::L2_CACHE_TABLES;
use azure2kvm::image::sink::{ImageFormat, create_sink, resume_sink};
use support::image::{assert_qcow2_matches, random_bytes};

const GIB: u64 = 1 << 30;
const L2_COVERAGE: u64 = 512 << 20;

#[test]
fn large_sparse_qcow2_with_eviction_and_resume_matches() {
    let dir = tempfile::tempdir().unwrap();
    let tables = L2_CACHE_TABLES as u64 + 30;
    let size = tables * L2_COVERAGE + 7 * 512; // odd tail
    assert!(size > 40 * GIB);
    // Two writes per L2 table, at different places in it, some unaligned.
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    for t in 0..tables {
        let base = t * L2_COVERAGE;
        writes.push((base + (t % 7) * 65536 + 512, random_bytes(70_000, t)));
        writes.push((base + 300 * 65536, random_bytes(4096, t + 1000)));
    }
    writes.push((size - 512, random_bytes(512, 7)));
    // Shuffle deterministically; pass 1 = first half, pass 2 = the rest.
    let mut state = 0x1234_5678u64;
    for i in (1..writes.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        writes.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let expected = dir.path().join("expected.raw");
    let raw = File::create(&expected).unwrap();
    raw.set_len(size).unwrap();
    for (at, data) in &writes {
        raw.write_all_at(data, *at).unwrap();
    }

    let path = dir.path().join("out.qcow2");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut sink = create_sink(ImageFormat::Qcow2, file.try_clone().unwrap(), size).unwrap();
    let half = writes.len() / 2;
    for (at, data) in &writes[..half] {
        sink.write_at(*at, data).unwrap();
    }
    sink.checkpoint().unwrap();
    // Lost work after the checkpoint: some of it reaches the file, the process dies.
    for (at, data) in writes[half..].iter().step_by(3) {
        sink.write_at(*at, data).unwrap();
    }
    drop(sink);

    let mut sink = resume_sink(ImageFormat::Qcow2, file, size).unwrap();
    for (at, data) in writes[half..].iter().rev() {
        sink.write_at(*at, data).unwrap();
    }
    sink.finish().unwrap();
    assert_qcow2_matches(&path, &expected);
}

/// A partial qcow2 whose L2 table points a data cluster at the L1 table (a corrupt or
/// foreign partial) is refused by resume, untouched; starting over, as a download does,
/// gives an image qemu-img checks and finds identical. Resuming into it would have written
/// guest data over the L1 table.
#[test]
fn a_doctored_partial_qcow2_is_refused_and_starting_over_passes_qemu_img_check() {
    const CLUSTER: u64 = 65536;
    let dir = tempfile::tempdir().unwrap();
    let size = 4 * CLUSTER;
    let disk: Vec<u8> = random_bytes(size as usize, 42);
    let path = dir.path().join("partial.qcow2");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut sink = create_sink(ImageFormat::Qcow2, file.try_clone().unwrap(), size).unwrap();
    sink.write_at(0, &disk[..2 * CLUSTER as usize]).unwrap();
    sink.checkpoint().unwrap();
    drop(sink);

    let mut entry = [0u8; 8];
    file.read_exact_at(&mut entry, CLUSTER).unwrap(); // L1[0]
    let table = u64::from_be_bytes(entry) & 0x00ff_ffff_ffff_fe00;
    // L2 entry 1 -> the L1 table's cluster, with the COPIED flag this writer sets.
    file.write_all_at(&(CLUSTER | 1 << 63).to_be_bytes(), table + 8)
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = resume_sink(ImageFormat::Qcow2, file.try_clone().unwrap(), size)
        .err()
        .expect("a doctored partial must not resume");
    assert!(
        err.to_string()
            .contains("L2 entry 1 of the table at 131072 (virtual offset 65536) points to 65536, inside the header and L1 table"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "refused, never written into"
    );

    let mut sink = create_sink(ImageFormat::Qcow2, file, size).unwrap();
    sink.write_at(0, &disk).unwrap();
    sink.finish().unwrap();
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, &disk).unwrap();
    assert_qcow2_matches(&path, &expected);
}
