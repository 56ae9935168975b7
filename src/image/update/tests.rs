//! In-place updates checked against qemu-img: an image written by our sinks, updated with
//! writes (zeros included) and clears, must equal a raw disk built by hand from the same
//! operations (`qemu-img compare`), and a qcow2 must pass `qemu-img check`.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use super::{UpdateStart, open_for_update};
use crate::image::qcow2::CLUSTER_SIZE;
use crate::image::sink::{ImageFormat, create_sink};

const C: u64 = CLUSTER_SIZE;
/// Not a multiple of the cluster size: the last cluster is partial.
const SIZE: u64 = 40 * C + 1536;

/// One operation of an update.
#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    Clear(u64, u64),
}

/// Bytes that are never zero and differ by offset and seed.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// The first pass: data in most clusters, some left as holes.
fn base_ops() -> Vec<Op> {
    vec![
        Op::Write(0, pattern((10 * C) as usize, 1)),
        Op::Write(12 * C + 512, pattern((3 * C) as usize, 2)),
        Op::Write(20 * C, pattern((18 * C) as usize, 3)),
        Op::Write(SIZE - 4096, pattern(4096, 4)),
    ]
}

/// A later pass: overwrites, zeros over data, new data in holes, clears of whole and
/// partial clusters, all crossing cluster edges, unaligned to 4 KiB, at the disk's end.
fn diff_ops() -> Vec<Op> {
    vec![
        Op::Write(C - 700, pattern(1400, 9)),
        Op::Write(3 * C, vec![0; C as usize]),
        Op::Write(5 * C + 1000, vec![0; 5000]),
        Op::Write(10 * C + 512, pattern((2 * C) as usize, 10)),
        Op::Write(16 * C + 100, pattern(512, 11)),
        Op::Clear(6 * C + 512, 2 * C),
        Op::Clear(21 * C, 3 * C),
        Op::Clear(25 * C + 4096, 1000),
        Op::Clear(30 * C - 512, C + 1024),
        Op::Clear(14 * C, 2 * C),
        Op::Clear(39 * C + 1024, SIZE - (39 * C + 1024)),
        Op::Write(SIZE - 1024, pattern(1024, 12)),
    ]
}

fn apply_to_model(model: &mut [u8], ops: &[Op]) {
    for op in ops {
        match op {
            Op::Write(at, d) => model[*at as usize..*at as usize + d.len()].copy_from_slice(d),
            Op::Clear(at, len) => model[*at as usize..(*at + *len) as usize].fill(0),
        }
    }
}

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn open_rw(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Writes the base image of `format` at `path` through our sink.
fn base_image(format: ImageFormat, path: &Path) {
    let file = open_rw(&{
        File::create(path).unwrap();
        path.to_path_buf()
    });
    let mut sink = create_sink(format, file, SIZE).unwrap();
    for op in base_ops() {
        if let Op::Write(at, d) = op {
            sink.write_at(at, &d).unwrap();
        }
    }
    sink.finish().unwrap();
}

fn update(format: ImageFormat, path: &Path, ops: &[Op], start: UpdateStart) {
    let mut u = open_for_update(format, open_rw(path), SIZE, start).unwrap();
    for op in ops {
        match op {
            Op::Write(at, d) => u.write_at(*at, d).unwrap(),
            Op::Clear(at, len) => u.zero_range(*at..*at + *len).unwrap(),
        }
    }
    u.finish().unwrap();
}

/// The image equals the model (qemu-img compare), and a qcow2 checks clean.
fn assert_matches(format: ImageFormat, image: &Path, model: &[u8]) {
    let dir = image.parent().unwrap();
    let expected = dir.join("expected.raw");
    std::fs::write(&expected, model).unwrap();
    let fmt = format.extension();
    let (same, text) = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        fmt,
        expected.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(same, "qemu-img compare: {text}");
    if format == ImageFormat::Qcow2 {
        let (clean, text) = qemu_img(&["check", image.to_str().unwrap()]);
        assert!(
            clean && text.contains("No errors"),
            "qemu-img check: {text}"
        );
        assert!(!text.contains("leaked"), "qemu-img check: {text}");
    }
}

fn both_formats(test: impl Fn(ImageFormat, &Path)) {
    for format in [ImageFormat::Raw, ImageFormat::Qcow2] {
        let dir = tempfile::tempdir().unwrap();
        test(
            format,
            &dir.path().join(format!("disk.{}", format.extension())),
        );
    }
}

#[test]
fn an_update_gives_the_new_disk() {
    both_formats(|format, path| {
        base_image(format, path);
        let mut model = vec![0u8; SIZE as usize];
        apply_to_model(&mut model, &base_ops());
        assert_matches(format, path, &model);
        let ops = diff_ops();
        update(format, path, &ops, UpdateStart::Fresh);
        apply_to_model(&mut model, &ops);
        assert_matches(format, path, &model);
        // A second pass over the updated image.
        let again = vec![
            Op::Clear(0, 4 * C),
            Op::Write(2 * C + 7 * 512, pattern(9000, 20)),
        ];
        update(format, path, &again, UpdateStart::Fresh);
        apply_to_model(&mut model, &again);
        assert_matches(format, path, &model);
    });
}

/// Cleared clusters give their space back: the image's allocated bytes shrink.
#[test]
fn clears_free_space() {
    both_formats(|format, path| {
        base_image(format, path);
        let before = std::fs::metadata(path).unwrap().blocks();
        update(
            format,
            path,
            &[Op::Clear(20 * C, 18 * C)],
            UpdateStart::Fresh,
        );
        let after = std::fs::metadata(path).unwrap().blocks() * 512;
        assert!(
            after + 17 * C <= before * 512,
            "{format:?}: {} bytes allocated before, {after} after",
            before * 512
        );
        if format == ImageFormat::Qcow2 {
            assert_eq!(
                mapped_bytes(path, 20 * C..38 * C),
                0,
                "cleared clusters are unmapped"
            );
        }
    });
}

/// Bytes of `range` that `qemu-img map` reports as allocated data.
fn mapped_bytes(path: &Path, range: std::ops::Range<u64>) -> u64 {
    let (ok, text) = qemu_img(&["map", "--output=json", path.to_str().unwrap()]);
    assert!(ok, "{text}");
    let map: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    map.iter()
        .filter(|e| e["data"] == true)
        .map(|e| {
            let start = e["start"].as_u64().unwrap();
            let end = start + e["length"].as_u64().unwrap();
            end.min(range.end).saturating_sub(start.max(range.start))
        })
        .sum()
}

/// An update cut short after a checkpoint (a kill -9 between checkpoints looks the same):
/// a new pass refuses the image, the same pass resumes it and redoing every operation
/// gives the new disk.
#[test]
fn an_interrupted_update_is_refused_fresh_and_finished_on_resume() {
    both_formats(|format, path| {
        base_image(format, path);
        let ops = diff_ops();
        {
            let mut u = open_for_update(format, open_rw(path), SIZE, UpdateStart::Fresh).unwrap();
            for op in &ops[..6] {
                match op {
                    Op::Write(at, d) => u.write_at(*at, d).unwrap(),
                    Op::Clear(at, len) => u.zero_range(*at..*at + *len).unwrap(),
                }
            }
            u.checkpoint().unwrap();
        }
        if format == ImageFormat::Qcow2 {
            let e = open_for_update(format, open_rw(path), SIZE, UpdateStart::Fresh)
                .err()
                .expect("a half-updated qcow2 is refused for a new pass");
            assert!(e.to_string().contains("interrupted run"), "{e}");
            let (opens, _) = qemu_img(&["info", path.to_str().unwrap()]);
            let (clean, text) = qemu_img(&["check", path.to_str().unwrap()]);
            assert!(
                !(opens && clean),
                "qemu must not take a half-updated image: {text}"
            );
        }
        update(format, path, &ops, UpdateStart::Resume);
        let mut model = vec![0u8; SIZE as usize];
        apply_to_model(&mut model, &base_ops());
        apply_to_model(&mut model, &ops);
        assert_matches(format, path, &model);
    });
}

/// The file's bytes, to show a refusal wrote nothing.
fn snapshot(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn refused(format: ImageFormat, path: &Path, size: u64, needle: &str) {
    let before = snapshot(path);
    let e = open_for_update(format, open_rw(path), size, UpdateStart::Fresh)
        .err()
        .unwrap_or_else(|| panic!("{format:?} {} must be refused", path.display()));
    assert!(e.to_string().contains(needle), "expected {needle:?}: {e}");
    assert!(
        snapshot(path) == before,
        "a refused image must not be written"
    );
}

#[test]
fn images_of_another_size_or_format_are_refused() {
    both_formats(|format, path| {
        base_image(format, path);
        refused(format, path, SIZE + 512, "");
    });
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("d.qcow2");
    base_image(ImageFormat::Qcow2, &q);
    refused(
        ImageFormat::Raw,
        &q,
        std::fs::metadata(&q).unwrap().len(),
        "qcow2 image, not raw",
    );
    let r = dir.path().join("d.raw");
    base_image(ImageFormat::Raw, &r);
    refused(ImageFormat::Qcow2, &r, SIZE, "not a qcow2 v3");
}

/// A qcow2 from qemu-img (not ours: other header length, refcount layout) is refused.
#[test]
fn a_qcow2_we_did_not_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut model = vec![0u8; SIZE as usize];
    apply_to_model(&mut model, &base_ops());
    std::fs::write(&raw, &model).unwrap();
    let q = dir.path().join("theirs.qcow2");
    let (ok, text) = qemu_img(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    refused(ImageFormat::Qcow2, &q, SIZE, "L1 table of 1 entries at");
}

/// Doctored finished images: tables pointing into the refcount area, a refcount table
/// that does not end the file, a backing file.
#[test]
fn doctored_finished_qcow2_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.qcow2");
    let put = |at: u64, v: u64| {
        let f = open_rw(&path);
        f.write_all_at(&v.to_be_bytes(), at).unwrap();
    };
    let header_u64 = |at: u64| {
        let mut b = [0u8; 8];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut b, at)
            .unwrap();
        u64::from_be_bytes(b)
    };
    base_image(ImageFormat::Qcow2, &path);
    put(8, 4096);
    refused(ImageFormat::Qcow2, &path, SIZE, "backing file offset");

    base_image(ImageFormat::Qcow2, &path);
    let len = std::fs::metadata(&path).unwrap().len();
    open_rw(&path).set_len(len + C).unwrap();
    refused(ImageFormat::Qcow2, &path, SIZE, "does not end the");

    base_image(ImageFormat::Qcow2, &path);
    // The first L1 entry's table: point its first entry at the refcount table.
    let l2 = header_u64(C) & 0x00ff_ffff_ffff_fe00;
    let table = header_u64(48);
    put(l2, table | 1 << 63);
    refused(ImageFormat::Qcow2, &path, SIZE, "past the end of the");
}
