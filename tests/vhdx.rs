//! VHDX as a source, with qemu-img as the oracle: files made by `qemu-img convert -O vhdx`
//! (fixed and dynamic; 1, 32 and 256 MiB blocks; with and without ZERO-state blocks; a
//! size that is not a multiple of the block size), then the same files edited by the spec
//! (MS-VHDX) into what qemu-img cannot make: 4096-byte logical sectors, a non-empty log
//! (replayed: qemu-img's own replay is the oracle), a differencing disk (refused naming the
//! parent its locator gives), damaged checksums, overlapping regions, BAT entries past the
//! end, truncations. Every good case converts byte-identical to `qemu-img convert -O raw`
//! (qcow2: `qemu-img compare`) and `inspect` maps it block for block; every bad one exits
//! 4 and leaves nothing. Then `download` of a VHDX page blob from Azurite, through the
//! fault proxy, and of every bad file (exit 4 there too; a log is refused, not replayed).

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use azure2kvm::image::vhdx::crc32c::crc32c_with_zeroed_field;
use support::azurite::Azurite;
use support::fault_proxy::{Fault, FaultProxy};
use support::image::*;
use support::vhdx::{Edit, seed_pages, vhdx_of, with_4k_sectors, with_parent_locator};
use support::{seed, stat, stderr};

const MIB: u64 = 1 << 20;
const KIB: usize = 1024;

/// A raw disk of 37 MiB + 1.5 KiB: data scattered over it, a 10 MiB all-zero stretch
/// (whole blocks of zeros at 1 MiB blocks) and the last sector written.
fn make_source(path: &Path) -> u64 {
    let size = 37 * MIB + 3 * 512;
    let mut chunks = scattered(size, 10, MIB as usize, 3);
    chunks.retain(|&(o, l)| o + l as u64 <= 12 * MIB || o >= 22 * MIB);
    chunks.extend(scattered(size, 30, 4096 + 512, 11));
    chunks.retain(|&(o, l)| o + l as u64 <= 12 * MIB || o >= 22 * MIB);
    chunks.push((size - 512, 512));
    make_raw(path, size, &chunks, 5);
    size
}

fn qemu_raw(vhdx: &Path, out: &Path) {
    let o = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "vhdx", "-O", "raw"])
        .arg(vhdx)
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "qemu-img: {}", stderr(&o));
}

fn convert(input: &Path, output: &Path) -> std::process::Output {
    azure2kvm(&[
        "-q",
        "convert",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
    ])
}

fn inspect_json(input: &Path) -> serde_json::Value {
    let o = azure2kvm(&["inspect", "--json", input.to_str().unwrap()]);
    assert!(o.status.success(), "inspect: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Converts to raw (and qcow2 when asked) and checks both against qemu-img's raw.
fn check_against_qemu(dir: &Path, vhdx: &Path, qcow2_too: bool) {
    let name = vhdx.file_stem().unwrap().to_str().unwrap();
    let expected = dir.join(format!("{name}.qemu.raw"));
    qemu_raw(vhdx, &expected);
    let raw = dir.join(format!("{name}.raw"));
    let o = convert(vhdx, &raw);
    assert!(o.status.success(), "convert {name}: {}", stderr(&o));
    assert_same_bytes(&raw, &expected);
    if qcow2_too {
        let q = dir.join(format!("{name}.qcow2"));
        let o = convert(vhdx, &q);
        assert!(
            o.status.success(),
            "convert {name} to qcow2: {}",
            stderr(&o)
        );
        assert_qcow2_matches(&q, &expected);
    }
    assert!(leftovers(dir).is_empty());
}

/// `inspect`'s block size, extent map and allocated bytes against the source disk: the map
/// covers the disk in order, its data extents are whole blocks (the last may be short)
/// that add up to `allocated_bytes` and match the BAT's FULLY_PRESENT count, and they hold
/// every block of the source with a non-zero byte — exactly those in a dynamic file, where
/// qemu-img allocates a block only for data.
fn check_inspect_map(j: &serde_json::Value, src: &[u8], block_size: u64, dynamic: bool) {
    assert_eq!(j["metadata"]["block_size"], block_size);
    let size = src.len() as u64;
    let (mut at, mut data_bytes, mut data_extents) = (0, 0, 0);
    let mut data_blocks = std::collections::BTreeSet::new();
    for e in j["extents"].as_array().unwrap() {
        let start = e["virtual_start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        assert_eq!(start, at, "{e}");
        at += len;
        if e["kind"] == "data" {
            assert!(start % block_size == 0, "{e}");
            assert!(len % block_size == 0 || start + len == size, "{e}");
            data_blocks.extend(start / block_size..(start + len).div_ceil(block_size));
            data_bytes += len;
            data_extents += 1;
        }
    }
    assert_eq!(at, size);
    assert_eq!(j["allocated_bytes"], data_bytes);
    assert_eq!(j["data_extents"], data_extents);
    assert_eq!(j["bat"]["fully_present"], data_blocks.len());
    let non_zero: std::collections::BTreeSet<u64> = src
        .chunks(block_size as usize)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, _)| i as u64)
        .collect();
    if dynamic {
        assert_eq!(data_blocks, non_zero);
    } else {
        assert!(data_blocks.is_superset(&non_zero));
    }
}

#[test]
fn qemu_made_vhdx_files_convert_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    let size = make_source(&src);
    let source = fs::read(&src).unwrap();
    let cases = [
        ("dynamic", "1M", "on"),
        ("dynamic", "1M", "off"),
        ("dynamic", "32M", "on"),
        ("dynamic", "256M", "off"),
        ("fixed", "1M", "on"),
        ("fixed", "32M", "off"),
    ];
    for (i, (sub, bs, zero)) in cases.into_iter().enumerate() {
        let vhdx = d.join(format!("c{i}-{sub}-{bs}-{zero}.vhdx"));
        vhdx_of(
            &src,
            &vhdx,
            &format!("subformat={sub},block_size={bs},block_state_zero={zero}"),
        );
        check_against_qemu(d, &vhdx, i % 3 == 0);
        assert_same_bytes(&vhdx.with_extension("raw"), &src);
        let j = inspect_json(&vhdx);
        assert_eq!(j["format"], "vhdx");
        assert_eq!(j["virtual_size"], size);
        assert_eq!(j["logical_sector_size"], 512);
        assert_eq!(j["type"], if sub == "fixed" { "fixed" } else { "dynamic" });
        assert_eq!(j["log_state"], "empty");
        let block_size = bs.trim_end_matches('M').parse::<u64>().unwrap() * MIB;
        check_inspect_map(&j, &source, block_size, sub == "dynamic");
        let bat = &j["bat"];
        if (sub, bs) == ("dynamic", "1M") {
            // The 10 all-zero MiB are never written: ZERO blocks with block_state_zero=on,
            // NOT_PRESENT without.
            let (zero_blocks, not_present) = (bat["zero"].as_u64(), bat["not_present"].as_u64());
            if zero == "on" {
                assert!(zero_blocks.unwrap() >= 10, "{bat}");
            } else {
                assert!(
                    not_present.unwrap() >= 10 && zero_blocks == Some(0),
                    "{bat}"
                );
            }
        }
    }
}

#[test]
fn a_4096_byte_sector_vhdx_converts_and_reports_its_sector_size() {
    // qemu-img writes 512-byte sectors only; the spec says the sector size is two metadata
    // items, and while the disk has fewer blocks than the chunk ratio (4096 at 512-byte
    // sectors and 1 MiB blocks) the BAT layout does not change with it.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    let size = 24 * MIB;
    make_raw(&src, size, &scattered(size, 9, 300 * 1024, 2), 9);
    let base = d.join("base.vhdx");
    vhdx_of(&src, &base, "subformat=dynamic,block_size=1M");
    let mut e = Edit::load(&base);
    with_4k_sectors(&mut e);
    let fourk = d.join("fourk.vhdx");
    e.save(&fourk);
    // qemu-img 10 refuses 4096-byte logical sectors ("Operation not supported"), so the
    // oracle is the raw disk the file was made from: the blocks did not move.
    for ext in ["raw", "qcow2"] {
        let out = d.join(format!("fourk.{ext}"));
        let o = convert(&fourk, &out);
        assert!(o.status.success(), "{}", stderr(&o));
        if ext == "raw" {
            assert_same_bytes(&out, &src);
        } else {
            assert_qcow2_matches(&out, &src);
        }
    }
    let j = inspect_json(&fourk);
    assert_eq!(j["logical_sector_size"], 4096);
    assert_eq!(j["physical_sector_size"], 4096);
    let o = azure2kvm(&["inspect", fourk.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("sector size:     4096 logical, 4096 physical")
    );
}

#[test]
fn format_is_told_by_content_not_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    make_raw(&src, 8 * MIB, &[(MIB, 4096)], 1);
    let vhdx_named_vhd = d.join("disk.vhd");
    vhdx_of(&src, &vhdx_named_vhd, "subformat=dynamic");
    assert_eq!(inspect_json(&vhdx_named_vhd)["format"], "vhdx");
    let vhd_named_vhdx = d.join("other.vhdx");
    make_vhd(&src, &vhd_named_vhdx, "dynamic");
    assert_eq!(inspect_json(&vhd_named_vhdx)["format"], "vhd");
    for input in [&vhdx_named_vhd, &vhd_named_vhdx] {
        let out = input.with_extension("raw");
        let o = convert(input, &out);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_same_bytes(&out, &src);
    }
}

/// Each edit of a good VHDX that must be refused, and a word the message must contain.
fn bad_cases(good: &Edit) -> Vec<(&'static str, Edit, &'static str)> {
    let mut cases = Vec::new();
    let mut add = |name, needle, f: &dyn Fn(&mut Edit)| {
        let mut e = Edit(good.0.clone());
        f(&mut e);
        cases.push((name, e, needle));
    };
    add("log-without-entries", "cannot be replayed", &|e| {
        for i in 0..2 {
            e.header(i, |h| h[48..64].copy_from_slice(&[0x42; 16]));
        }
    });
    add("differencing-without-locator", "differencing", &|e| {
        let at = e.item(0x37); // file parameters (CAA16737)
        e.0[at + 4] |= 2;
    });
    // The refusal names the parent, as Hyper-V's locator gives it.
    add(
        "differencing",
        r#"parent "..\\parents\\base-os.vhdx""#,
        &|e| {
            with_parent_locator(
                e,
                &[
                    ("parent_linkage", "{4e9a7e9c-1b9f-4d7b-a1a0-6a3b8f2d9c11}"),
                    ("relative_path", r"..\parents\base-os.vhdx"),
                ],
            )
        },
    );
    add("header-crcs", "no valid header", &|e| {
        e.0[64 * KIB + 200] ^= 1;
        e.0[128 * KIB + 200] ^= 1;
    });
    add("region-crcs", "no valid region table", &|e| {
        e.0[192 * KIB + 200] ^= 1;
        e.0[256 * KIB + 200] ^= 1;
    });
    add("regions-overlap", "overlap", &|e| {
        let (bat, _) = e.region(0x66);
        let (_, entry) = e.region(0x06);
        for i in 0..2 {
            e.region_table(i, |t| {
                t[entry + 16..entry + 24].copy_from_slice(&(bat as u64).to_le_bytes())
            });
        }
    });
    add("bat-past-end", "past the end of the file", &|e| {
        let at = e.bat_at();
        e.0[at..at + 8].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
    });
    add("bat-on-metadata", "overlaps the metadata region", &|e| {
        let (at, m) = (e.bat_at(), e.metadata_at() as u64);
        e.0[at..at + 8].copy_from_slice(&(m | 6).to_le_bytes());
    });
    add("bad-block-size", "block size", &|e| {
        let at = e.item(0x37);
        e.0[at..at + 4].copy_from_slice(&(3u32 << 20).to_le_bytes());
    });
    add("truncated-in-header-section", "too small", &|e| {
        e.0.truncate(300 * KIB)
    });
    add(
        "truncated-before-metadata",
        "past the end of the file",
        &|e| {
            let m = e.metadata_at();
            e.0.truncate(m + 4096);
        },
    );
    add("truncated-in-a-block", "past the end of the file", &|e| {
        let len = e.0.len();
        e.0.truncate(len - 4096);
    });
    cases
}

/// The good file [`bad_cases`] edits, and the raw disk it holds. Its last block is a whole
/// MiB of data, so cutting the file's last 4 KiB truncates data (the unused tail of a short
/// last block may be missing: qemu-img 10 reads such a file too).
fn bad_cases_base(d: &Path) -> (std::path::PathBuf, Edit) {
    let src = d.join("src.raw");
    make_raw(&src, 8 * MIB, &[(0, 4096), (7 * MIB, MIB as usize)], 4);
    let base = d.join("base.vhdx");
    vhdx_of(&src, &base, "subformat=dynamic,block_size=1M");
    (src, Edit::load(&base))
}

#[test]
fn bad_vhdx_files_exit_4_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, good) = bad_cases_base(d);
    // One damaged header: the other one is used, as the spec says and qemu-img does.
    let mut one = Edit(good.0.clone());
    one.0[64 * KIB + 200] ^= 1;
    let one_path = d.join("header-1-damaged.vhdx");
    one.save(&one_path);
    check_against_qemu(d, &one_path, false);
    // One damaged region table: the spec keeps a second copy for this; qemu-img reads only
    // the first and refuses, so the oracle is the undamaged file's content.
    one.0[192 * KIB + 200] ^= 1;
    let both = d.join("header-1-and-region-table-1-damaged.vhdx");
    one.save(&both);
    let out = d.join("tables.raw");
    let o = convert(&both, &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_bytes(&out, &src);

    for (name, edit, needle) in bad_cases(&good) {
        let input = d.join(format!("{name}.vhdx"));
        edit.save(&input);
        for format in ["raw", "qcow2"] {
            let out = d.join(format!("{name}.{format}"));
            let o = convert(&input, &out);
            let e = stderr(&o);
            assert_eq!(o.status.code(), Some(4), "{name}: {e}");
            assert!(e.contains(needle), "{name}: {e}");
            assert!(!out.exists(), "{name}: output left");
        }
        let o = azure2kvm(&["inspect", input.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(4), "inspect {name}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
    assert!(leftovers(d).is_empty());
}

#[test]
fn a_short_last_blocks_missing_unused_tail_is_no_truncation() {
    // The disk ends 4 KiB into its last 1 MiB block, which qemu-img allocates whole at the
    // end of the file: without the block's last 4 KiB every byte of the disk is still
    // there, and qemu-img reads the file as we do. Cutting into the 4 KiB that hold the
    // disk is a truncation.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    let size = 8 * MIB + 4096;
    make_raw(&src, size, &[(MIB, 4096), (8 * MIB, 4096)], 12);
    let base = d.join("base.vhdx");
    vhdx_of(&src, &base, "subformat=dynamic,block_size=1M");
    let mut e = Edit::load(&base);
    let len = e.0.len();
    let bat = e.bat_at() + 8 * 8; // block 8's entry (the chunk ratio is 4096)
    let entry = u64::from_le_bytes(e.0[bat..bat + 8].try_into().unwrap());
    assert_eq!(
        ((entry >> 20) << 20) + MIB,
        len as u64,
        "the last block ends the file"
    );
    e.0.truncate(len - 4096);
    let short = d.join("short-tail.vhdx");
    e.save(&short);
    check_against_qemu(d, &short, true);
    assert_same_bytes(&short.with_extension("raw"), &src);
    e.0.truncate(len - MIB as usize + 2048);
    let cut = d.join("cut.vhdx");
    e.save(&cut);
    let o = convert(&cut, &d.join("cut.raw"));
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("past the end of the file"),
        "{}",
        stderr(&o)
    );
}

const C: &str = "vhdx";

/// Writes `file` into a new page blob, only its 4 KiB pages that hold a non-zero byte, so
/// present blocks keep never-written pages for Get Page Ranges to find.
fn seed_page_blob(az: &Azurite, name: &str, file: &[u8]) -> String {
    seed_pages(az.port, C, name, file);
    seed::blob_sas(C, name, Duration::from_secs(3600), false)
}

#[test]
fn download_of_a_vhdx_page_blob_through_faults_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    let size = 24 * MIB + 4096;
    // Data in a few 1 MiB blocks, each only partly written: the rest of each block is
    // never-written pages that must not be fetched.
    make_raw(
        &src,
        size,
        &[
            (0, 64 * KIB),
            (5 * MIB + 4096, 8192),
            (9 * MIB, 700 * KIB),
            (size - 512, 512),
        ],
        7,
    );
    let vhdx = d.join("disk.vhdx");
    vhdx_of(&src, &vhdx, "subformat=dynamic,block_size=1M");
    let bytes = fs::read(&vhdx).unwrap();
    let az = Azurite::start();
    let sas = seed_page_blob(&az, "disk.vhdx", &bytes);
    let proxy = FaultProxy::start(az.port);
    let u = seed::blob_url(proxy.port, C, "disk.vhdx", &sas);

    let faults = [
        Fault::Status {
            code: 503,
            retry_after_secs: 0,
        },
        Fault::ResetMidBody,
        Fault::TruncateBody,
    ];
    for format in ["raw", "qcow2"] {
        for f in &faults {
            proxy.push(f.clone());
        }
        // Properties, tail, header section, metadata table and items, BAT, page ranges:
        // the faults hit data chunks.
        proxy.faults_after(7);
        let out = d.join(format!("dl.{format}"));
        let o = support::bin()
            .env("AZURE2KVM_IO_TIMEOUT", "2")
            .args(["--no-progress", "download", &u])
            .arg(&out)
            .args(["--chunk-size", "64K", "--concurrency", "2"])
            .output()
            .unwrap();
        let e = stderr(&o);
        assert!(o.status.success(), "download: {e}");
        assert!(e.contains("dynamic VHDX"), "{e}");
        if format == "raw" {
            assert_same_bytes(&out, &src);
            // Only written pages of present blocks are data: far less than the 4 present
            // MiB, and metadata reads stay small.
            let data = stat(&e, "data_bytes").unwrap();
            assert!(data <= 800 * 1024, "{e}");
            let fetched = stat(&e, "bytes_fetched").unwrap();
            assert!(
                fetched <= data + 512 + 320 * 1024 + 64 * 1024 + 4096 + 64 * 1024,
                "{e}"
            );
        } else {
            assert_qcow2_matches(&out, &src);
        }
    }
    assert_eq!(proxy.pending_faults(), 0);

    // Every file `convert` refuses, `download` refuses too: exit 4, nothing written. A
    // non-empty log is refused here, not replayed (`convert` replays it).
    let bad_dir = tempfile::tempdir().unwrap();
    let (_, good) = bad_cases_base(bad_dir.path());
    for (name, bad, needle) in bad_cases(&good) {
        let blob = format!("{name}.vhdx");
        seed::put_block_blob(az.port, C, &blob, &bad.0);
        let sas = seed::blob_sas(C, &blob, Duration::from_secs(600), false);
        let out = d.join(format!("{name}.raw"));
        let o = support::download(&seed::blob_url(az.port, C, &blob, &sas), &out, &[]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(4), "{name}: {e}");
        let needle = match name {
            "log-without-entries" => "log is not empty",
            _ => needle,
        };
        assert!(e.contains(needle), "{name}: {e}");
        assert!(!out.exists(), "{name}: output left");
    }
    assert!(leftovers(d).is_empty());

    // The same good VHDX as a block blob: the BAT alone decides what is fetched.
    seed::put_block_blob(az.port, C, "block.vhdx", &bytes);
    let sas = seed::blob_sas(C, "block.vhdx", Duration::from_secs(600), false);
    let out = d.join("block.raw");
    let o = support::download(&seed::blob_url(az.port, C, "block.vhdx", &sas), &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_bytes(&out, &src);
}

#[test]
fn export_of_a_4k_sector_disk_served_as_vhdx_records_its_sector_size() {
    use support::fake_arm::{DISK_CONTAINER, FakeVm, blob_name};
    let world = support::fake_azure::FakeAzure::start(vec![FakeVm::linux("fourk-01", "rg-4k")]);
    // Azure serves a 4 KiB-sector disk's snapshot as VHDX: replace the seeded VHD.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = world.disk("fourk-01-os").image();
    let src = d.join("src.raw");
    fs::write(&src, &image).unwrap();
    let vhdx = d.join("os.vhdx");
    vhdx_of(&src, &vhdx, "subformat=dynamic,block_size=1M");
    let mut e = Edit::load(&vhdx);
    with_4k_sectors(&mut e);
    seed_pages(
        world.azurite.port,
        DISK_CONTAINER,
        &blob_name("rg-4k", "fourk-01-os"),
        &e.0,
    );
    let out = d.join("out");
    let all = ["--output-dir", out.to_str().unwrap(), "--format", "raw"];
    let r = support::run(support::azure_cmd(&world, "export", &all));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_bytes(&out.join("fourk-01/fourk-01-os.raw"), &src);
    let m: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("fourk-01/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["disks"][0]["logical_sector_size"], 4096, "{m}");
    // The guest sees the geometry it was formatted with.
    let domain = fs::read_to_string(out.join("fourk-01/domain.xml")).unwrap();
    assert!(
        domain.contains(r#"<blockio logical_block_size="4096" physical_block_size="4096"/>"#),
        "{domain}"
    );
}

/// One log entry as MS-VHDX 2.3.1 lays it out: a 64-byte header, 32-byte zero ("zero")
/// and data ("desc") descriptors padded to 4 KiB, then one 4 KiB data sector ("data") per
/// data descriptor; CRC-32C over the whole entry.
fn log_entry(
    sequence: u64,
    guid: [u8; 16],
    zeros: &[(u64, u64)],
    data: &[(u64, Vec<u8>)],
    flushed: u64,
    last: u64,
) -> Vec<u8> {
    let count = zeros.len() + data.len();
    let desc_sectors = (64 + 32 * count).div_ceil(4096);
    let len = (desc_sectors + data.len()) * 4096;
    let mut e = vec![0u8; len];
    let put = |e: &mut Vec<u8>, at: usize, v: &[u8]| e[at..at + v.len()].copy_from_slice(v);
    put(&mut e, 0, b"loge");
    put(&mut e, 8, &(len as u32).to_le_bytes());
    put(&mut e, 16, &sequence.to_le_bytes()); // tail 0: the entry itself
    put(&mut e, 24, &(count as u32).to_le_bytes());
    put(&mut e, 32, &guid);
    put(&mut e, 48, &flushed.to_le_bytes());
    put(&mut e, 56, &last.to_le_bytes());
    let mut d = 64;
    for &(offset, length) in zeros {
        put(&mut e, d, b"zero");
        put(&mut e, d + 8, &length.to_le_bytes());
        put(&mut e, d + 16, &offset.to_le_bytes());
        put(&mut e, d + 24, &sequence.to_le_bytes());
        d += 32;
    }
    for (i, (offset, sector)) in data.iter().enumerate() {
        put(&mut e, d, b"desc");
        put(&mut e, d + 4, &sector[4092..]);
        put(&mut e, d + 8, &sector[..8]);
        put(&mut e, d + 16, &offset.to_le_bytes());
        put(&mut e, d + 24, &sequence.to_le_bytes());
        d += 32;
        let at = (desc_sectors + i) * 4096;
        put(&mut e, at, b"data");
        put(&mut e, at + 4, &((sequence >> 32) as u32).to_le_bytes());
        put(&mut e, at + 8, &sector[8..4092]);
        put(&mut e, at + 4092, &(sequence as u32).to_le_bytes());
    }
    let crc = crc32c_with_zeroed_field(&e, 4);
    put(&mut e, 4, &crc.to_le_bytes());
    e
}

#[test]
fn a_vhdx_with_a_non_empty_log_converts_like_qemu_img_after_its_replay() {
    // qemu-img cannot write a log; it can replay one (`check -r all`). The log here is
    // built from the spec over a qemu-made file that the host had already grown by 1 MiB
    // of zeros: it marks block 3 FULLY_PRESENT in that new MiB, writes the block's first
    // 4 KiB, and zeros 8 KiB of block 0 — a metadata update and data a crashed host had
    // not applied. (Growing the file to LastFileOffset during replay is covered by the
    // unit tests: qemu-img grows it only as far as the last logged write.)
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src.raw");
    make_raw(&src, 8 * MIB, &[(0, 64 * KIB), (7 * MIB, MIB as usize)], 8);
    let base = d.join("base.vhdx");
    vhdx_of(&src, &base, "subformat=dynamic,block_size=1M");
    let mut e = Edit::load(&base);
    let new_block = (e.0.len() as u64).div_ceil(MIB) * MIB;
    e.0.resize((new_block + MIB) as usize, 0);
    let grown = e.0.len() as u64;
    let bat = e.bat_at();
    let block0 = (u64::from_le_bytes(e.0[bat..bat + 8].try_into().unwrap()) >> 20) << 20;
    let mut bat_sector = e.0[bat..bat + 4096].to_vec();
    bat_sector[24..32].copy_from_slice(&(new_block | 6).to_le_bytes());
    let payload = random_bytes(4096, 77);
    let guid = [0x42; 16];
    let entry = log_entry(
        1,
        guid,
        &[(block0 + 8192, 8192)],
        &[(bat as u64, bat_sector), (new_block, payload)],
        grown,
        grown,
    );
    let log_at = u64::from_le_bytes(e.0[64 * KIB + 72..64 * KIB + 80].try_into().unwrap());
    e.0[log_at as usize..][..entry.len()].copy_from_slice(&entry);
    for i in 0..2 {
        e.header(i, |h| h[48..64].copy_from_slice(&guid));
    }
    let logged = d.join("logged.vhdx");
    e.save(&logged);

    let replayed_by_qemu = d.join("qemu-replayed.vhdx");
    fs::copy(&logged, &replayed_by_qemu).unwrap();
    qemu_img(&[
        "check",
        "-r",
        "all",
        "-f",
        "vhdx",
        replayed_by_qemu.to_str().unwrap(),
    ]);
    let expected = d.join("expected.raw");
    qemu_raw(&replayed_by_qemu, &expected);
    let before = fs::read(&src).unwrap();
    assert_ne!(
        fs::read(&expected).unwrap(),
        before,
        "the log changes the disk"
    );

    let original = fs::read(&logged).unwrap();
    for ext in ["raw", "qcow2"] {
        let out = d.join(format!("logged.{ext}"));
        let o = convert(&logged, &out);
        assert!(o.status.success(), "{}", stderr(&o));
        if ext == "raw" {
            assert_same_bytes(&out, &expected);
        } else {
            assert_qcow2_matches(&out, &expected);
        }
    }
    assert_eq!(
        fs::read(&logged).unwrap(),
        original,
        "the input is never written"
    );
    let j = inspect_json(&logged);
    assert_eq!(j["log_state"], "replayed");
    assert_eq!(j["log_replay"]["data_writes"], 2);
}
