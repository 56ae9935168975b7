//! Property tests shared by both sinks: whatever order the writes arrive in, with or
//! without a crash and resume in the middle, the image reads back as the same disk.
//! qcow2 images are read back with a minimal reader here; tests/convert.rs checks them
//! with qemu-img, the real oracle.

use std::fs::File;
use std::os::unix::fs::FileExt;

use proptest::prelude::*;

use super::qcow2::CLUSTER_SIZE;
use super::sink::{ImageFormat, create_sink, resume_sink};

/// Reads virtual bytes out of a finished or checkpointed qcow2 image of ours.
fn read_qcow2(file: &File, size: u64) -> Vec<u8> {
    let mut header = [0u8; 48];
    file.read_exact_at(&mut header, 0).unwrap();
    let l1_size = u32::from_be_bytes(header[36..40].try_into().unwrap()) as usize;
    let l1_offset = u64::from_be_bytes(header[40..48].try_into().unwrap());
    let mut l1 = vec![0u8; l1_size * 8];
    file.read_exact_at(&mut l1, l1_offset).unwrap();
    let mask = 0x00ff_ffff_ffff_fe00u64;
    let mut out = vec![0u8; size as usize];
    for (i, e) in l1.chunks_exact(8).enumerate() {
        let l2 = u64::from_be_bytes(e.try_into().unwrap()) & mask;
        if l2 == 0 {
            continue;
        }
        let mut table = vec![0u8; CLUSTER_SIZE as usize];
        file.read_exact_at(&mut table, l2).unwrap();
        for (j, e) in table.chunks_exact(8).enumerate() {
            let host = u64::from_be_bytes(e.try_into().unwrap()) & mask;
            let v = (i as u64 * 8192 + j as u64) * CLUSTER_SIZE;
            if host == 0 || v >= size {
                continue;
            }
            let n = CLUSTER_SIZE.min(size - v) as usize;
            let mut buf = vec![0u8; n];
            // Short reads past EOF are holes: zeros.
            let got = file.read_at(&mut buf, host).unwrap();
            buf[got..].fill(0);
            out[v as usize..v as usize + n].copy_from_slice(&buf);
        }
    }
    out
}

fn read_image(format: ImageFormat, file: &File, size: u64) -> Vec<u8> {
    match format {
        ImageFormat::Raw => {
            let mut buf = vec![0u8; size as usize];
            file.read_exact_at(&mut buf, 0).unwrap();
            buf
        }
        ImageFormat::Qcow2 => read_qcow2(file, size),
    }
}

/// A disk of `size` bytes cut into `pieces` consecutive writes, some all-zero, some
/// starting mid-cluster, so both zero-skipping and partial clusters are exercised.
fn disk_and_pieces(size: u64, cuts: &[u64], seed: u8) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut disk = vec![0u8; size as usize];
    let mut points: Vec<u64> = cuts.iter().map(|c| c % size).chain([0, size]).collect();
    points.sort_unstable();
    points.dedup();
    let pieces: Vec<(u64, u64)> = points.windows(2).map(|w| (w[0], w[1])).collect();
    for (i, &(a, b)) in pieces.iter().enumerate() {
        if i % 3 != 1 {
            for (k, byte) in disk[a as usize..b as usize].iter_mut().enumerate() {
                *byte = (k as u8)
                    .wrapping_mul(31)
                    .wrapping_add(seed)
                    .wrapping_add(i as u8)
                    | 1;
            }
        }
    }
    (disk, pieces)
}

fn formats() -> impl Strategy<Value = ImageFormat> {
    prop_oneof![Just(ImageFormat::Raw), Just(ImageFormat::Qcow2)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random write orders give identical images.
    #[test]
    fn any_write_order_gives_the_same_disk(
        format in formats(),
        size_clusters in 1u64..40,
        tail in 0u64..CLUSTER_SIZE,
        cuts in proptest::collection::vec(any::<u64>(), 0..30),
        order in any::<u64>(),
        seed in any::<u8>(),
    ) {
        let size = (size_clusters * CLUSTER_SIZE + tail) / 512 * 512 + 512;
        let (disk, mut pieces) = disk_and_pieces(size, &cuts, seed);
        // Deterministic shuffle from `order`.
        let mut state = order | 1;
        for i in (1..pieces.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            pieces.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let file = tempfile::tempfile().unwrap();
        let mut sink = create_sink(format, file.try_clone().unwrap(), size).unwrap();
        for &(a, b) in &pieces {
            sink.write_at(a, &disk[a as usize..b as usize]).unwrap();
        }
        sink.finish().unwrap();
        prop_assert!(read_image(format, &file, size) == disk);
    }

    /// A crash after a checkpoint (the sink dropped without finish, some writes after the
    /// checkpoint lost or not), then resume and rewrite of everything not checkpointed,
    /// gives the same disk.
    #[test]
    fn resume_after_checkpoint_gives_the_same_disk(
        format in formats(),
        size_clusters in 1u64..20,
        cuts in proptest::collection::vec(any::<u64>(), 1..20),
        split in any::<prop::sample::Index>(),
        seed in any::<u8>(),
    ) {
        let size = size_clusters * CLUSTER_SIZE + 4096;
        let (disk, pieces) = disk_and_pieces(size, &cuts, seed);
        let at = split.index(pieces.len());
        let file = tempfile::tempfile().unwrap();
        let mut sink = create_sink(format, file.try_clone().unwrap(), size).unwrap();
        for &(a, b) in &pieces[..at] {
            sink.write_at(a, &disk[a as usize..b as usize]).unwrap();
        }
        sink.checkpoint().unwrap();
        // Writes after the checkpoint that the crash interrupts: half of them land.
        for &(a, b) in pieces[at..].iter().step_by(2) {
            sink.write_at(a, &disk[a as usize..b as usize]).unwrap();
        }
        drop(sink);
        let mut sink = resume_sink(format, file.try_clone().unwrap(), size).unwrap();
        for &(a, b) in pieces[at..].iter().rev() {
            sink.write_at(a, &disk[a as usize..b as usize]).unwrap();
        }
        sink.finish().unwrap();
        prop_assert!(read_image(format, &file, size) == disk);
    }
}

#[test]
fn resume_refuses_a_foreign_or_finished_file() {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(b"not an image at all, definitely", 0)
        .unwrap();
    assert!(resume_sink(ImageFormat::Qcow2, file.try_clone().unwrap(), 1 << 20).is_err());
    assert!(resume_sink(ImageFormat::Raw, file, 1 << 20).is_err());

    let file = tempfile::tempfile().unwrap();
    let mut sink = create_sink(ImageFormat::Qcow2, file.try_clone().unwrap(), 1 << 20).unwrap();
    sink.write_at(0, &[1; 512]).unwrap();
    sink.finish().unwrap();
    let err = resume_sink(ImageFormat::Qcow2, file.try_clone().unwrap(), 1 << 20)
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a checkpoint"), "{err}");

    let file = tempfile::tempfile().unwrap();
    let mut sink = create_sink(ImageFormat::Qcow2, file.try_clone().unwrap(), 1 << 20).unwrap();
    sink.checkpoint().unwrap();
    let err = resume_sink(ImageFormat::Qcow2, file, 2 << 20)
        .err()
        .unwrap();
    assert!(err.to_string().contains("expected 2097152"), "{err}");
}
