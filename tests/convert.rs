//! `convert` and `inspect` against qemu-img, the oracle: VHDs made by qemu-img (fixed and
//! dynamic, odd sizes), an Azure-style footer, hand-made dynamic disks with non-default
//! block sizes; each output compared byte for byte with `qemu-img convert -f vpc`, and each
//! qcow2 passed through `qemu-img check` and `qemu-img compare`. Then every refusal: exit
//! code, message, and nothing left behind.

mod support;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use support::image::*;

const MIB: u64 = 1 << 20;

/// Converts `vhd` to raw and qcow2 with the tool and checks both against qemu-img's raw.
fn check_against_qemu(dir: &Path, vhd: &Path, data_bytes: u64) {
    let name = vhd.file_stem().unwrap().to_str().unwrap();
    let expected = dir.join(format!("{name}.qemu.raw"));
    qemu_raw_of_vhd(vhd, &expected);

    let raw = dir.join(format!("{name}.raw"));
    let out = azure2kvm(&[
        "-q",
        "convert",
        vhd.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "convert {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_bytes(&raw, &expected);
    // Sparse: allocated bytes track data, with a little slack for 4 KiB rounding.
    let allocated = allocated_bytes(&raw);
    assert!(
        allocated <= data_bytes + 64 * 4096,
        "{name}: {allocated} bytes allocated for {data_bytes} of data"
    );

    let qcow2 = dir.join(format!("{name}.qcow2"));
    let out = azure2kvm(&[
        "-q",
        "convert",
        vhd.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "convert {name} to qcow2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_qcow2_matches(&qcow2, &expected);
    assert!(leftovers(dir).is_empty());
}

#[test]
fn qemu_made_fixed_and_dynamic_vhds_convert_identically() {
    let dir = tempfile::tempdir().unwrap();
    // A whole-MiB size (as Azure requires) and an odd one (not a multiple of a block,
    // a cluster or a MiB).
    for (i, size) in [64 * MIB, 37 * MIB + 3 * 512].into_iter().enumerate() {
        let mut chunks = scattered(size, 12, MIB as usize, i as u64);
        chunks.extend(scattered(size, 40, 4096 + 512, 99 + i as u64));
        chunks.push((size - 512, 512)); // the last sector: the backup GPT lives there
        let src = dir.path().join(format!("src{i}.raw"));
        make_raw(&src, size, &chunks, i as u64);
        let data: u64 = chunks.iter().map(|c| c.1 as u64).sum();
        for sub in ["fixed", "dynamic"] {
            let vhd = dir.path().join(format!("{sub}{i}.vhd"));
            make_vhd(&src, &vhd, sub);
            check_against_qemu(dir.path(), &vhd, data);
            assert_same_bytes(&dir.path().join(format!("{sub}{i}.raw")), &src);
        }
    }
}

#[test]
fn azure_footer_size_comes_from_current_size_not_chs() {
    let dir = tempfile::tempdir().unwrap();
    let size = 40 * MIB;
    let src = dir.path().join("src.raw");
    make_raw(&src, size, &[(0, 4096), (size - 4096, 4096)], 5);
    let vhd = dir.path().join("azure.vhd");
    make_vhd(&src, &vhd, "fixed");
    // What Azure writes: creator "wa\0\0" and a CHS product short of the real size.
    edit_footer(&vhd, size, |f| {
        f[28..32].copy_from_slice(b"wa\0\0");
        // One cylinder fewer than the size needs, at 16 heads × 63 sectors.
        let cylinders = ((size / 512) / (16 * 63)) as u16 - 1;
        f[56..58].copy_from_slice(&cylinders.to_be_bytes());
        f[58] = 16;
        f[59] = 63;
    });
    let inspect = azure2kvm(&["inspect", "--json", vhd.to_str().unwrap()]);
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(j["virtual_size"], size);
    assert!(
        j["geometry_bytes"].as_u64().unwrap() < size,
        "test footer must have a short CHS"
    );
    assert_eq!(j["footer"]["creator_application"], "wa");
    check_against_qemu(dir.path(), &vhd, 8192);
    assert_same_bytes(&dir.path().join("azure.raw"), &src);
}

#[test]
fn dynamic_vhds_with_non_default_block_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 24 * MIB + 512 * 5;
    let mut raw = vec![0u8; size as usize];
    for (off, len) in scattered(size, 30, 70_000, 3) {
        raw[off as usize..off as usize + len].copy_from_slice(&random_bytes(len, off));
    }
    let src = dir.path().join("src.raw");
    fs::write(&src, &raw).unwrap();
    for block in [512 * 1024u32, 4 * MIB as u32, 64 * 1024] {
        let vhd = dir.path().join(format!("dyn{block}.vhd"));
        make_dynamic_vhd(&raw, block, &vhd);
        let inspect = azure2kvm(&["inspect", "--json", vhd.to_str().unwrap()]);
        let j: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(j["dynamic"]["header"]["block_size"], block);
        check_against_qemu(dir.path(), &vhd, 30 * 70_000 + 2 * u64::from(block) * 30);
        assert_same_bytes(&dir.path().join(format!("dyn{block}.raw")), &src);
    }
}

#[test]
fn inspect_reports_the_facts() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.raw");
    make_raw(&src, 16 * MIB, &[(3 * MIB, 4096)], 1);
    let vhd = dir.path().join("d.vhd");
    make_vhd(&src, &vhd, "dynamic");
    let out = azure2kvm(&["inspect", vhd.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "type:            Dynamic",
        "16.0 MiB",
        "qem2",
        "block size:      2.0 MiB",
        "1 blocks allocated",
    ] {
        assert!(
            text.contains(needle),
            "inspect output lacks {needle:?}:\n{text}"
        );
    }
    let out = azure2kvm(&["inspect", "--json", vhd.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["footer"]["disk_type"], "dynamic");
    assert_eq!(j["allocated_bytes"], 2 * MIB);
    assert_eq!(j["data_extents"], 1);
    assert_eq!(j["extents"][1]["kind"], "data");
}

// ---- refusals: exit code, message, nothing left behind --------------------------------

/// Runs convert on `vhd` expecting failure with `code` and `needle` in stderr, and no
/// output or temporary file afterwards.
fn refuse(vhd: &Path, code: i32, needle: &str) {
    let dir = vhd.parent().unwrap();
    let out_path = dir.join("out.qcow2");
    let out = azure2kvm(&["convert", vhd.to_str().unwrap(), out_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{}: {stderr}", vhd.display());
    assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    assert!(
        stderr.contains(&vhd.display().to_string()),
        "error must name the file: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !out_path.exists() && leftovers(dir).is_empty(),
        "{} left output behind",
        vhd.display()
    );
    let inspect = azure2kvm(&["inspect", vhd.to_str().unwrap()]);
    assert_eq!(inspect.status.code(), Some(code), "inspect must refuse too");
}

fn fixed_vhd(dir: &Path, name: &str) -> std::path::PathBuf {
    let src = dir.join(format!("{name}.src"));
    make_raw(&src, 4 * MIB, &[(0, 4096)], 1);
    let vhd = dir.join(format!("{name}.vhd"));
    make_vhd(&src, &vhd, "fixed");
    vhd
}

fn dynamic_vhd(dir: &Path, name: &str) -> std::path::PathBuf {
    let mut raw = vec![0u8; 8 * MIB as usize];
    raw[..4096].copy_from_slice(&random_bytes(4096, 9));
    raw[5 * MIB as usize..5 * MIB as usize + 4096].copy_from_slice(&random_bytes(4096, 10));
    let vhd = dir.join(format!("{name}.vhd"));
    make_dynamic_vhd(&raw, 2 * MIB as u32, &vhd);
    vhd
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

fn reseal_header(path: &Path) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut h = [0u8; 1024];
    f.read_exact_at(&mut h, 512).unwrap();
    let sum = support::vhd::checksum(&h, 36);
    f.write_all_at(&sum.to_be_bytes(), 512 + 36).unwrap();
}

#[test]
fn not_a_vhd_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("random.vhd");
    fs::write(&p, random_bytes(8192, 1)).unwrap();
    refuse(&p, 4, "conectix");
    let tiny = dir.path().join("tiny.vhd");
    fs::write(&tiny, b"conectix").unwrap();
    refuse(&tiny, 4, "too small");
}

#[test]
fn corrupt_footer_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = fixed_vhd(dir.path(), "sum");
    patch(&vhd, 4 * MIB + 100, &[0x42]);
    refuse(&vhd, 4, "checksum");
}

#[test]
fn truncated_or_padded_fixed_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = fixed_vhd(dir.path(), "cut");
    let bytes = fs::read(&vhd).unwrap();
    let cut = [&bytes[..MIB as usize], &bytes[bytes.len() - 512..]].concat();
    fs::write(&vhd, &cut).unwrap();
    refuse(&vhd, 4, "current size");
}

#[test]
fn unknown_disk_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = fixed_vhd(dir.path(), "type");
    edit_footer(&vhd, 4 * MIB, |f| {
        f[60..64].copy_from_slice(&9u32.to_be_bytes())
    });
    refuse(&vhd, 4, "disk type 9");
}

#[test]
fn differencing_disk_is_refused_naming_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dynamic_vhd(dir.path(), "child");
    let len = fs::metadata(&vhd).unwrap().len();
    for at in [0, len - 512] {
        edit_footer(&vhd, at, |f| f[60..64].copy_from_slice(&4u32.to_be_bytes()));
    }
    let name: Vec<u8> = "parent-os.vhd"
        .encode_utf16()
        .flat_map(|u| u.to_be_bytes())
        .collect();
    patch(&vhd, 512 + 64, &name);
    reseal_header(&vhd);
    refuse(&vhd, 4, "parent-os.vhd");
}

#[test]
fn bad_block_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dynamic_vhd(dir.path(), "bs");
    patch(&vhd, 512 + 32, &(3 * 1024 * 1024u32).to_be_bytes());
    reseal_header(&vhd);
    refuse(&vhd, 4, "power of two");
}

#[test]
fn bat_larger_than_the_disk_needs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dynamic_vhd(dir.path(), "entries");
    // 8 MiB of 2 MiB blocks needs 4 entries; the header claims 2^32 - 1 (a 16 GiB table).
    patch(&vhd, 512 + 28, &u32::MAX.to_be_bytes());
    reseal_header(&vhd);
    refuse(
        &vhd,
        4,
        "offset 540: max table entries 4294967295 is more than the 4 blocks",
    );
}

#[test]
fn dynamic_disk_past_the_format_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dynamic_vhd(dir.path(), "huge");
    let len = fs::metadata(&vhd).unwrap().len();
    // Both footers (the copy at 0 would be used if only the tail were refused).
    for at in [0, len - 512] {
        edit_footer(&vhd, at, |f| {
            f[48..56].copy_from_slice(&(4u64 << 40).to_be_bytes())
        });
    }
    refuse(
        &vhd,
        4,
        "current size 4398046511104 of a dynamic disk is past the VHD format's limit of 2190433320960 bytes",
    );
}

#[test]
fn bat_entry_past_end_of_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dynamic_vhd(dir.path(), "bat");
    patch(&vhd, 1536 + 4 * 3, &0x0010_0000u32.to_be_bytes());
    refuse(&vhd, 4, "block 3");
}

#[test]
fn overlapping_blocks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dynamic_vhd(dir.path(), "overlap");
    let f = fs::File::open(&vhd).unwrap();
    let mut first = [0u8; 4];
    f.read_exact_at(&mut first, 1536).unwrap();
    patch(&vhd, 1536 + 4, &first); // block 1 points at block 0's sectors
    refuse(&vhd, 4, "overlap");
}

#[test]
fn truncated_dynamic_disk_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dynamic_vhd(dir.path(), "trunc");
    let bytes = fs::read(&vhd).unwrap();
    // Drop the middle of the last block, keep the footer at the end.
    let cut = [
        &bytes[..bytes.len() - 512 - MIB as usize],
        &bytes[bytes.len() - 512..],
    ]
    .concat();
    fs::write(&vhd, &cut).unwrap();
    refuse(&vhd, 4, "past the end of the data area");
}

#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = fixed_vhd(dir.path(), "f");
    let out = dir.path().join("out.raw");
    fs::write(&out, b"precious").unwrap();
    let run = azure2kvm(&["convert", vhd.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("--force"));
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    let run = azure2kvm(&[
        "-q",
        "convert",
        "--force",
        vhd.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    assert_eq!(fs::metadata(&out).unwrap().len(), 4 * MIB);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = fixed_vhd(dir.path(), "u");
    let v = vhd.to_str().unwrap();
    let d = dir.path().to_str().unwrap();
    let missing_dir = dir.path().join("missing").join("out.raw");
    let cases: [(&[&str], &str); 9] = [
        (&["convert", v, "out.vmdk"], "--format"),
        (&["convert", "/nonexistent/x.vhd", "out.raw"], "cannot open"),
        (&["convert", d, "out.raw"], "not a regular file"),
        (&["inspect", d], "not a regular file"),
        (
            &["convert", v, missing_dir.to_str().unwrap()],
            "does not exist",
        ),
        (
            &["convert", v, d, "--format", "raw", "--force"],
            "is a directory",
        ),
        (
            &["convert", v, v, "--format", "raw", "--force"],
            "both input and output",
        ),
        (
            &["convert", v, "out.raw", "--format", "vmdk"],
            "invalid value",
        ),
        (&["inspect"], "FILE"),
    ];
    for (args, needle) in cases {
        let out = azure2kvm(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: stderr lacks {needle:?}: {stderr}"
        );
    }
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn explicit_format_overrides_extension() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = fixed_vhd(dir.path(), "fmt");
    let out = dir.path().join("disk.img");
    let run = azure2kvm(&[
        "-q",
        "convert",
        "--format",
        "qcow2",
        vhd.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(run.status.success());
    let info = qemu_img(&["info", "--output=json", out.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(j["format"], "qcow2");
}

/// A fixed VHD of `size` bytes of non-zero data: slow enough to convert that a signal
/// lands mid-copy (nothing in it can be skipped as a hole).
fn dense_fixed_vhd(path: &Path, size: u64) {
    let f = fs::File::create(path).unwrap();
    let pattern = random_bytes(MIB as usize, 3);
    for at in (0..size).step_by(MIB as usize) {
        f.write_all_at(&pattern, at).unwrap();
    }
    f.write_all_at(&support::vhd::footer(2, size, u64::MAX), size)
        .unwrap();
}

/// Sends SIGINT once the temporary output exists, and returns the finished process.
fn interrupt_convert(vhd: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let temp = out.with_file_name(format!(
        ".{}.azure2kvm-partial",
        out.file_name().unwrap().to_str().unwrap()
    ));
    let mut cmd = support::bin();
    cmd.args(["--no-progress", "convert"])
        .args(extra)
        .arg(vhd)
        .arg(out);
    let mut child = support::ChildGuard::spawn(cmd);
    support::wait_for(
        "the conversion to start",
        std::time::Duration::from_secs(30),
        || temp.exists(),
    );
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    child.0.take().unwrap().wait_with_output().unwrap()
}

#[test]
fn ctrl_c_exits_130_and_leaves_no_output_and_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let vhd = dir.path().join("dense.vhd");
    dense_fixed_vhd(&vhd, 512 * MIB);
    for format in ["raw", "qcow2"] {
        let out = dir.path().join(format!("out.{format}"));
        let o = interrupt_convert(&vhd, &out, &[]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "{format}: {e}");
        assert!(e.contains("interrupted"), "{e}");
        assert!(!out.exists(), "{format}: no output under the final name");
        assert_eq!(
            leftovers(dir.path()),
            Vec::<std::path::PathBuf>::new(),
            "{format}: no partial file"
        );
    }
    // --force over an existing image: interrupted, the old image is still there, whole.
    let out = dir.path().join("keep.raw");
    fs::write(&out, b"the previous image").unwrap();
    let o = interrupt_convert(&vhd, &out, &["--force"]);
    assert_eq!(o.status.code(), Some(130));
    assert_eq!(fs::read(&out).unwrap(), b"the previous image");
}
