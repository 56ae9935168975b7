//! `azure2kvm download` against a real Azurite, through a fault-injecting proxy where a
//! test needs faults. qemu-img is the oracle for qcow2 outputs.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::azurite::Azurite;
use support::fault_proxy::{Fault, FaultProxy};
use support::image::{assert_file_holds, assert_qcow2_matches};
use support::seed;
use support::vhd::{Disk, MIB, footer};
use support::{ChildGuard, download, stat, stderr, wait_for};

const C: &str = "disks";

/// Writes `disk` as a fixed VHD into page blob `name`: its extents as scattered pages,
/// then the footer. Returns a read SAS URL for `port` (Azurite or the proxy).
fn seed_fixed(az: &Azurite, name: &str, disk: &Disk) -> String {
    seed::create_container_once(az.port, C);
    seed::create_page_blob(az.port, C, name, disk.size + 512);
    for (off, data) in &disk.extents {
        seed::put_pages(az.port, C, name, *off, data);
    }
    seed::put_pages(az.port, C, name, disk.size, &footer(2, disk.size, u64::MAX));
    seed::blob_sas(C, name, Duration::from_secs(3600), false)
}

fn url(port: u16, name: &str, sas: &str) -> String {
    seed::blob_url(port, C, name, sas)
}

fn assert_ok(o: &std::process::Output) -> String {
    let e = stderr(o);
    assert!(o.status.success(), "download failed: {e}");
    e
}

fn no_leftovers(dir: &Path) {
    let left = support::image::leftovers(dir);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A 40 MiB + 12 KiB disk (not a multiple of any chunk size) with scattered extents of
/// 4 MiB, 1 MiB, 64 KiB and single pages, one ending right before the footer.
/// A download in the background, 1 MiB chunks over `concurrency` connections (slow
/// behind a delaying proxy, so a test can act while it runs).
fn spawn_download(u: &str, out: &Path, concurrency: &str) -> ChildGuard {
    let mut cmd = support::bin();
    cmd.args(["--no-progress", "download", u]).arg(out).args([
        "--chunk-size",
        "1M",
        "--concurrency",
        concurrency,
    ]);
    ChildGuard::spawn(cmd)
}

fn journal_lines(journal: &Path) -> usize {
    fs::read_to_string(journal)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn scattered_disk() -> Disk {
    let size = 40 * MIB + 12 * 1024;
    Disk::new(
        size,
        &[
            (0, 4 * MIB),
            (5 * MIB + 4096, 64 * 1024),
            (7 * MIB, 512),
            (9 * MIB - 512, MIB),
            (16 * MIB, 4 * MIB),
            (27 * MIB + 65536, 64 * 1024),
            (33 * MIB, 1536),
            (size - 8192, 8192),
        ],
    )
}

#[test]
fn raw_and_qcow2_equal_the_disk_and_fetch_only_written_pages() {
    let az = Azurite::start();
    let disk = scattered_disk();
    let sas = seed_fixed(&az, "scattered.vhd", &disk);
    let u = url(az.port, "scattered.vhd", &sas);
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.raw");
    fs::write(&expected, disk.image()).unwrap();

    let raw = dir.path().join("disk.raw");
    let e = assert_ok(&download(&u, &raw, &[]));
    assert_file_holds(&raw, &disk.image());
    let fetched = stat(&e, "bytes_fetched").expect("stats line");
    // Written data + the footer, plus coalesced gaps below 64 KiB.
    assert!(
        fetched as f64 <= disk.written_bytes() as f64 * 1.1 + 512.0,
        "fetched {fetched} for {} written",
        disk.written_bytes()
    );
    assert_eq!(stat(&e, "data_bytes"), Some(disk.written_bytes()));
    assert!(!e.contains("sig="), "{e}");
    // Sparse: the file's allocated blocks are about the data, not the disk.
    let allocated = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&raw).unwrap()) * 512;
    assert!(
        allocated < disk.size / 2,
        "raw output is not sparse: {allocated}"
    );

    let q = dir.path().join("disk.qcow2");
    assert_ok(&download(&u, &q, &["--concurrency", "3"]));
    assert_qcow2_matches(&q, &expected);

    // Transactional MD5 over small chunks, and an output that exists needs --force.
    let again = download(&u, &raw, &["--verify", "md5", "--chunk-size", "1M"]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    let e = assert_ok(&download(
        &u,
        &raw,
        &["--verify", "md5", "--chunk-size", "1M", "--force"],
    ));
    assert_file_holds(&raw, &disk.image());
    assert!(stat(&e, "chunks").unwrap() >= 12);

    // An md5 chunk over 4 MiB is refused before any work.
    let big = download(
        &u,
        &dir.path().join("x.raw"),
        &["--verify", "md5", "--chunk-size", "8M"],
    );
    assert_eq!(big.status.code(), Some(2), "{}", stderr(&big));
    // An output directory that does not exist is refused before any request: on an
    // unreachable host this would otherwise wait out the retries first.
    let nowhere = dir.path().join("no-such-dir").join("x.raw");
    let unreachable = "https://no-such-account.invalid/c/disk.vhd?sv=1&sig=c2VjcmV0";
    for u in [u.as_str(), unreachable] {
        let started = std::time::Instant::now();
        let o = download(u, &nowhere, &[]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(
            e.contains("no-such-dir") && e.contains("does not exist"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{e}");
    }
    no_leftovers(dir.path());
}

#[test]
fn every_fault_case_gives_identical_output() {
    let az = Azurite::start();
    let disk = scattered_disk();
    let sas = seed_fixed(&az, "faults.vhd", &disk);
    let proxy = FaultProxy::start(az.port);
    let u = url(proxy.port, "faults.vhd", &sas);
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.raw");
    fs::write(&expected, disk.image()).unwrap();

    let faults = [
        Fault::Status {
            code: 503,
            retry_after_secs: 1,
        },
        Fault::Status {
            code: 429,
            retry_after_secs: 0,
        },
        Fault::ResetMidBody,
        Fault::TruncateBody,
        Fault::Stall(Duration::from_secs(30)),
    ];
    for (i, (format, verify)) in [("raw", "none"), ("qcow2", "none"), ("raw", "md5")]
        .into_iter()
        .enumerate()
    {
        for f in &faults {
            proxy.push(f.clone());
        }
        // The footer read passes; the faults hit data chunks.
        proxy.faults_after(1);
        let applied_before = proxy.faults_applied();
        let out = dir.path().join(format!("f{i}.{format}"));
        let t = Instant::now();
        let o = support::bin()
            .env("AZURE2KVM_IO_TIMEOUT", "2")
            .args(["--no-progress", "download", &u])
            .arg(&out)
            .args([
                "--chunk-size",
                "1M",
                "--concurrency",
                "2",
                "--verify",
                verify,
            ])
            .output()
            .unwrap();
        let e = assert_ok(&o);
        assert_eq!(proxy.faults_applied() - applied_before, faults.len() as u64);
        assert!(stat(&e, "retries").unwrap() >= faults.len() as u64, "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "took {:?}",
            t.elapsed()
        );
        if format == "raw" {
            assert_file_holds(&out, &disk.image());
        } else {
            assert_qcow2_matches(&out, &expected);
        }
        if verify == "none" {
            // Broken bodies were resumed from the missing byte: every byte arrived once
            // (the plan's chunks plus the 512-byte footer).
            let fetched = stat(&e, "bytes_fetched").unwrap();
            assert_eq!(fetched, stat(&e, "planned_bytes").unwrap() + 512, "{e}");
        }
    }
    no_leftovers(dir.path());
}

#[test]
fn a_blob_changed_mid_download_stops_with_no_output() {
    let az = Azurite::start();
    let disk = Disk::new(24 * MIB, &[(0, 12 * MIB)]);
    let sas = seed_fixed(&az, "changing.vhd", &disk);
    let proxy = FaultProxy::start(az.port);
    proxy.set_delay(Duration::from_millis(250));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.raw");
    let mut child = spawn_download(&url(proxy.port, "changing.vhd", &sas), &out, "1");
    wait_for("the download to start", Duration::from_secs(30), || {
        proxy.data_gets() >= 3
    });
    // Someone writes to the disk while we read it.
    seed::put_pages(az.port, C, "changing.vhd", 20 * MIB, &[7u8; 512]);
    let c = child.0.take().unwrap();
    let o = c.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("changed"), "{e}");
    assert!(!out.exists());
    no_leftovers(dir.path());
}

#[test]
fn kill_9_then_rerun_resumes_and_refetches_little() {
    let az = Azurite::start();
    let disk = Disk::new(32 * MIB, &[(0, 12 * MIB), (16 * MIB, 12 * MIB)]);
    let sas = seed_fixed(&az, "resume.vhd", &disk);
    let proxy = FaultProxy::start(az.port);
    let dir = tempfile::tempdir().unwrap();
    let expected = dir.path().join("expected.raw");
    fs::write(&expected, disk.image()).unwrap();
    for format in ["raw", "qcow2"] {
        let out = dir.path().join(format!("disk.{format}"));
        let journal = dir
            .path()
            .join(format!(".disk.{format}.azure2kvm-partial.journal"));
        proxy.set_delay(Duration::from_millis(400));
        let mut child = spawn_download(&url(proxy.port, "resume.vhd", &sas), &out, "2");
        // Wait for a checkpoint to reach the journal, then kill without warning.
        wait_for("a journaled checkpoint", Duration::from_secs(30), || {
            journal_lines(&journal) >= 2
        });
        child.kill9();
        assert!(!out.exists());
        assert!(journal.exists());

        proxy.set_delay(Duration::ZERO);
        let e = assert_ok(&download(
            &url(proxy.port, "resume.vhd", &sas),
            &out,
            &["--chunk-size", "1M", "--concurrency", "2"],
        ));
        assert!(e.contains("resuming"), "{e}");
        let resumed = stat(&e, "resumed_chunks").unwrap();
        assert!(resumed >= 1, "{e}");
        let fetched = stat(&e, "bytes_fetched").unwrap();
        assert!(
            fetched <= disk.written_bytes() - resumed * MIB + 512,
            "refetched too much: {fetched}\n{e}"
        );
        if format == "raw" {
            assert_file_holds(&out, &disk.image());
        } else {
            assert_qcow2_matches(&out, &expected);
        }
        assert!(!journal.exists());
    }
    no_leftovers(dir.path());
}

#[test]
fn refused_sas_bad_urls_and_bad_images_fail_clearly() {
    let az = Azurite::start();
    let disk = Disk::new(4 * MIB, &[(0, MIB)]);
    let good = seed_fixed(&az, "auth.vhd", &disk);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.raw");
    let sig_of = |sas: &str| {
        sas.split('&')
            .find_map(|p| p.strip_prefix("sig="))
            .unwrap()
            .to_string()
    };
    // Neither the encoded nor the decoded signature may appear.
    let leaks = |text: &str, sas: &str| {
        let enc = sig_of(sas);
        let dec = percent_decode(&enc);
        text.contains(&enc) || text.contains(&dec) || text.contains(&dec[..dec.len().min(16)])
    };

    let expired = seed::blob_sas(C, "auth.vhd", Duration::ZERO, true);
    let mut tampered = good.clone();
    let at = tampered.find("sig=").unwrap() + 4;
    let c = if &tampered[at..at + 1] == "A" {
        "B"
    } else {
        "A"
    };
    tampered.replace_range(at..at + 1, c);
    for sas in [&expired, &tampered] {
        let o = download(&url(az.port, "auth.vhd", sas), &out, &[]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert!(e.contains("SAS") && e.contains("expired"), "{e}");
        assert!(!leaks(&e, sas), "signature leaked: {e}");
        assert!(!e.contains("sig=") || e.contains("sig=REDACTED"), "{e}");
        assert!(!out.exists());
    }

    // Even the most verbose logs (every dependency at trace level) never show the SAS.
    let o = download(&url(az.port, "auth.vhd", &good), &out, &["-vv"]);
    let e = assert_ok(&o);
    assert!(e.len() > 1000, "expected trace output");
    assert!(!leaks(&e, &good), "signature leaked at trace level");
    fs::remove_file(&out).unwrap();

    // Plain http to a non-loopback host: refused before any connection (exit 2).
    let o = download(
        &format!("http://example.com/{}/c/b.vhd?{good}", seed::ACCOUNT),
        &out,
        &[],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(!leaks(&e, &good), "{e}");

    // A blob URL without any SAS: a usage error, not a 403 later.
    let o = download(&url(az.port, "auth.vhd", "sv=2020-12-06"), &out, &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("no SAS"), "{e}");

    // An https blob URL without SAS is read with an Entra ID token; with no usable
    // credential that is one clear usage error naming what was tried, before any fetch.
    let o = download(
        &format!("https://127.0.0.1:9/{}/c/b.vhd", seed::ACCOUNT),
        &out,
        &["--auth", "client-secret"],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("cannot authenticate to Azure Storage") && e.contains("AZURE_CLIENT_SECRET"),
        "{e}"
    );
    assert!(!out.exists());

    // A page blob whose tail is no footer: exit 4 before any data is fetched.
    seed::create_page_blob(az.port, C, "nofooter.vhd", 4 * MIB + 512);
    seed::put_pages(az.port, C, "nofooter.vhd", 0, &[1u8; 4096]);
    let sas = seed::blob_sas(C, "nofooter.vhd", Duration::from_secs(600), false);
    let o = download(&url(az.port, "nofooter.vhd", &sas), &out, &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    // A fixed footer whose size does not match the blob: exit 4.
    seed::create_page_blob(az.port, C, "short.vhd", 4 * MIB + 512);
    seed::put_pages(
        az.port,
        C,
        "short.vhd",
        4 * MIB,
        &footer(2, 8 * MIB, u64::MAX),
    );
    let sas = seed::blob_sas(C, "short.vhd", Duration::from_secs(600), false);
    let o = download(&url(az.port, "short.vhd", &sas), &out, &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(!out.exists());
    no_leftovers(dir.path());
}

#[test]
fn thousands_of_small_ranges_and_an_empty_disk() {
    let az = Azurite::start();
    // 2000 separate 512-byte pages, 8 KiB apart.
    let layout: Vec<(u64, u64)> = (0..2000u64).map(|i| (i * 8192 + 1024, 512)).collect();
    let disk = Disk::new(20 * MIB, &layout);
    let sas = seed_fixed(&az, "many.vhd", &disk);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("many.raw");
    let e = assert_ok(&download(&url(az.port, "many.vhd", &sas), &out, &[]));
    assert_file_holds(&out, &disk.image());
    // Coalesced: a handful of chunks, not 2000 requests.
    assert!(stat(&e, "chunks").unwrap() <= 4, "{e}");

    let empty = Disk::new(16 * MIB, &[]);
    let sas = seed_fixed(&az, "empty.vhd", &empty);
    let out = dir.path().join("empty.qcow2");
    let e = assert_ok(&download(&url(az.port, "empty.vhd", &sas), &out, &[]));
    assert_eq!(stat(&e, "bytes_fetched"), Some(512), "only the footer: {e}");
    assert_eq!(stat(&e, "chunks"), Some(0));
    let expected = dir.path().join("zeros.raw");
    fs::write(&expected, empty.image()).unwrap();
    assert_qcow2_matches(&out, &expected);
}

#[test]
fn block_blobs_with_fixed_and_dynamic_vhds() {
    let az = Azurite::start();
    seed::create_container_once(az.port, C);
    let disk = Disk::new(
        16 * MIB,
        &[(MIB, 512), (6 * MIB, 3 * MIB), (15 * MIB, 4096)],
    );
    let dir = tempfile::tempdir().unwrap();

    let dynamic = disk.dynamic_vhd();
    seed::put_block_blob(az.port, C, "dynamic.vhd", &dynamic);
    let sas = seed::blob_sas(C, "dynamic.vhd", Duration::from_secs(600), false);
    let out = dir.path().join("dyn.raw");
    let e = assert_ok(&download(&url(az.port, "dynamic.vhd", &sas), &out, &[]));
    assert_file_holds(&out, &disk.image());
    // Only allocated blocks (4 of 8 × 2 MiB) plus footer, header and BAT.
    let fetched = stat(&e, "bytes_fetched").unwrap();
    assert!(fetched <= 4 * 2 * MIB + 4096, "{e}");

    // A local copy of the same VHD converts to the same image (qemu agrees too).
    let local = dir.path().join("local.vhd");
    fs::write(&local, &dynamic).unwrap();
    let conv = dir.path().join("conv.raw");
    let q = Command::new("qemu-img")
        .args(["convert", "-f", "vpc", "-O", "raw"])
        .arg(&local)
        .arg(&conv)
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", stderr(&q));
    assert_file_holds(&conv, &disk.image());

    // The same VHD with a header claiming 2^32 - 1 BAT entries (a 16 GiB table): exit 4
    // naming the value, the limit and the offset, before the table is read.
    let mut bad = dynamic.clone();
    bad[512 + 28..512 + 32].copy_from_slice(&u32::MAX.to_be_bytes());
    bad[512 + 36..512 + 40].fill(0);
    let sum = support::vhd::checksum(&bad[512..1536], 36);
    bad[512 + 36..512 + 40].copy_from_slice(&sum.to_be_bytes());
    seed::put_block_blob(az.port, C, "bat.vhd", &bad);
    let sas = seed::blob_sas(C, "bat.vhd", Duration::from_secs(600), false);
    let out = dir.path().join("bat.raw");
    let o = download(&url(az.port, "bat.vhd", &sas), &out, &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{e}");
    assert!(
        e.contains("offset 540: max table entries 4294967295 is more than the 8 blocks"),
        "{e}"
    );
    assert!(!out.exists());

    let mut fixed = disk.image();
    fixed.extend_from_slice(&footer(2, disk.size, u64::MAX));
    seed::put_block_blob(az.port, C, "fixed.vhd", &fixed);
    let sas = seed::blob_sas(C, "fixed.vhd", Duration::from_secs(600), false);
    let out = dir.path().join("fixed.qcow2");
    assert_ok(&download(&url(az.port, "fixed.vhd", &sas), &out, &[]));
    let expected = dir.path().join("expected.raw");
    fs::write(&expected, disk.image()).unwrap();
    assert_qcow2_matches(&out, &expected);
}

#[test]
fn ctrl_c_exits_130_and_keeps_the_partial_output_for_a_resume() {
    let az = Azurite::start();
    let disk = Disk::new(16 * MIB, &[(0, 12 * MIB)]);
    let sas = seed_fixed(&az, "sigint.vhd", &disk);
    let proxy = FaultProxy::start(az.port);
    proxy.set_delay(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.qcow2");
    let journal = dir.path().join(".disk.qcow2.azure2kvm-partial.journal");
    let u = url(proxy.port, "sigint.vhd", &sas);
    let mut child = spawn_download(&u, &out, "2");
    wait_for("the download to start", Duration::from_secs(30), || {
        proxy.data_gets() >= 5
    });
    let kill = Command::new("kill")
        .args(["-INT", &child.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.0.take().unwrap().wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{e}");
    assert!(e.contains("interrupted") && e.contains("resume"), "{e}");
    assert!(!out.exists());
    // What arrived before Ctrl-C was checkpointed and journaled on the way out.
    assert!(fs::read_to_string(&journal).unwrap().lines().count() >= 2);

    proxy.set_delay(Duration::ZERO);
    let e = assert_ok(&download(&u, &out, &["--chunk-size", "1M"]));
    assert!(e.contains("resuming"), "{e}");
    assert!(stat(&e, "resumed_chunks").unwrap() >= 2, "{e}");
    let expected = dir.path().join("expected.raw");
    fs::write(&expected, disk.image()).unwrap();
    assert_qcow2_matches(&out, &expected);
    no_leftovers(dir.path());
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn a_partial_download_of_a_blob_that_changed_since_is_started_over() {
    let az = Azurite::start();
    // Long enough (24 chunks, 400 ms each, 2 at a time) to outlast the 2 s checkpoint.
    let mut disk = Disk::new(32 * MIB, &[(0, 24 * MIB)]);
    let sas = seed_fixed(&az, "moved.vhd", &disk);
    let proxy = FaultProxy::start(az.port);
    proxy.set_delay(Duration::from_millis(400));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.raw");
    let journal = dir.path().join(".disk.raw.azure2kvm-partial.journal");
    let u = url(proxy.port, "moved.vhd", &sas);
    let mut child = spawn_download(&u, &out, "2");
    wait_for("a journaled checkpoint", Duration::from_secs(30), || {
        journal_lines(&journal) >= 2
    });
    child.kill9();

    // The disk is written to between the runs: its ETag changes.
    let page = vec![9u8; 4096];
    seed::put_pages(az.port, C, "moved.vhd", 0, &page);
    disk.extents.push((0, page));
    proxy.set_delay(Duration::ZERO);
    let e = assert_ok(&download(&u, &out, &["--chunk-size", "1M"]));
    assert!(e.contains("starting over") && e.contains("ETag"), "{e}");
    assert_eq!(stat(&e, "resumed_chunks"), Some(0), "{e}");
    assert_file_holds(&out, &disk.image());
    no_leftovers(dir.path());
}

#[test]
fn a_sas_refused_mid_download_keeps_the_partial_output_for_a_new_sas() {
    let az = Azurite::start();
    let disk = Disk::new(16 * MIB, &[(0, 10 * MIB)]);
    let sas = seed_fixed(&az, "expiring.vhd", &disk);
    let proxy = FaultProxy::start(az.port);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.raw");
    let journal = dir.path().join(".disk.raw.azure2kvm-partial.journal");
    // The footer and five chunks pass, then the service refuses the SAS (as when it expires).
    proxy.faults_after(6);
    proxy.push(Fault::Status {
        code: 403,
        retry_after_secs: 0,
    });
    let o = download(
        &url(proxy.port, "expiring.vhd", &sas),
        &out,
        &["--chunk-size", "1M", "--concurrency", "1"],
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("SAS") && e.contains("resume"), "{e}");
    assert!(!out.exists() && journal.exists(), "{e}");

    // A new SAS for the same blob continues where the old one stopped.
    let fresh = seed::blob_sas(C, "expiring.vhd", Duration::from_secs(600), false);
    let e = assert_ok(&download(
        &url(proxy.port, "expiring.vhd", &fresh),
        &out,
        &["--chunk-size", "1M"],
    ));
    assert!(e.contains("resuming"), "{e}");
    assert_eq!(stat(&e, "resumed_chunks"), Some(5), "{e}");
    assert_file_holds(&out, &disk.image());
    no_leftovers(dir.path());
}

// ------------------------------------------------------------ interrupts and durability

/// A SAS that looks real (a long signature), so scrubbing it changes nothing else.
const FAKE_SAS: &str = "sv=2020-12-06&sr=b&sp=r&sig=c2VjcmV0LXNpZ25hdHVyZS0xMjM0NTY3ODkw";

#[test]
fn an_unresolvable_host_fails_within_10_s_naming_dns() {
    let dir = tempfile::tempdir().unwrap();
    // RFC 6761: names under .invalid never resolve; the resolver says so without a network.
    let u = format!("https://nosuchacct12345.invalid/c/d.vhd?{FAKE_SAS}");
    let started = Instant::now();
    let o = download(&u, &dir.path().join("out.raw"), &[]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10), "{e}");
    assert!(
        e.contains("no such host nosuchacct12345.invalid") && e.contains("DNS"),
        "{e}"
    );
    assert!(!e.contains("c2VjcmV0"), "{e}");
    no_leftovers(dir.path());
}

/// SIGINT one second into `download URL` exits 130 within 2 s.
fn interrupt_after_1_s(u: &str, dir: &Path) {
    let mut child = spawn_download(u, &dir.join("disk.raw"), "2");
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    support::signal(&child, "-INT");
    let code = support::wait_exit(&mut child, Duration::from_secs(30));
    let e = {
        let mut s = String::new();
        use std::io::Read;
        let _ = child
            .0
            .take()
            .unwrap()
            .stderr
            .unwrap()
            .read_to_string(&mut s);
        s
    };
    assert_eq!(code, 130, "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "{:?}: {e}",
        t.elapsed()
    );
    assert!(e.contains("interrupted"), "{e}");
}

#[test]
fn sigint_ends_a_retry_backoff_and_a_request_that_gets_no_answer_within_2_s() {
    let az = Azurite::start();
    let disk = Disk::new(4 * MIB, &[(0, MIB)]);
    let sas = seed_fixed(&az, "busy.vhd", &disk);
    let dir = tempfile::tempdir().unwrap();

    // A service that answers 503 "retry after 10 s" to every read: in a backoff at 1 s.
    let proxy = FaultProxy::start(az.port);
    for _ in 0..20 {
        proxy.push(Fault::Status {
            code: 503,
            retry_after_secs: 10,
        });
    }
    interrupt_after_1_s(&url(proxy.port, "busy.vhd", &sas), dir.path());
    assert!(proxy.faults_applied() >= 1);

    // A host that accepts the connection and never answers: waiting on the request.
    let hole = support::BlackHole::start();
    interrupt_after_1_s(&url(hole.port, "busy.vhd", &sas), dir.path());
    assert!(hole.accepted() >= 1);
}

#[test]
fn a_stall_makes_what_arrived_durable_so_kill_9_loses_none_of_it() {
    let az = Azurite::start();
    let disk = Disk::new(20 * MIB, &[(0, 16 * MIB)]);
    let sas = seed_fixed(&az, "stall.vhd", &disk);
    let proxy = FaultProxy::start(az.port);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.qcow2");
    let u = url(proxy.port, "stall.vhd", &sas);
    // The footer and the first half of the data (8 of 16 chunks) arrive, then every body
    // stalls halfway (both connections).
    proxy.faults_after(1 + 8);
    proxy.push(Fault::Stall(Duration::from_secs(60)));
    proxy.push(Fault::Stall(Duration::from_secs(60)));
    let mut cmd = support::bin();
    cmd.env("AZURE2KVM_IO_TIMEOUT", "30")
        .args(["--no-progress", "download", &u])
        .arg(&out)
        .args(["--chunk-size", "1M", "--concurrency", "2"]);
    let mut child = ChildGuard::spawn(cmd);
    wait_for("the stall", Duration::from_secs(30), || {
        proxy.faults_applied() == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    child.kill9();

    let e = assert_ok(&download(&u, &out, &["--chunk-size", "1M"]));
    assert!(e.contains("resuming"), "{e}");
    assert_eq!(stat(&e, "resumed_chunks"), Some(8), "{e}");
    assert_eq!(
        stat(&e, "bytes_fetched"),
        Some(8 * MIB + 512),
        "only the other half (and the footer) again: {e}"
    );
    let expected = dir.path().join("expected.raw");
    fs::write(&expected, disk.image()).unwrap();
    assert_qcow2_matches(&out, &expected);
    no_leftovers(dir.path());
}

#[test]
fn kill_9_refetches_at_most_what_arrived_in_the_last_2_s() {
    let az = Azurite::start();
    let disk = Disk::new(40 * MIB, &[(0, 36 * MIB)]);
    let sas = seed_fixed(&az, "flow.vhd", &disk);
    let proxy = FaultProxy::start(az.port);
    // A steady trickle: one 1 MiB chunk about every 250 ms.
    proxy.set_delay(Duration::from_millis(250));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk.raw");
    let u = url(proxy.port, "flow.vhd", &sas);
    let mut child = spawn_download(&u, &out, "1");
    wait_for("data to flow", Duration::from_secs(30), || {
        proxy.body_bytes() > 512
    });
    // Bytes delivered over time, to know what had arrived 2 s before the kill.
    let mut seen: Vec<(Instant, u64)> = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(4500) {
        seen.push((Instant::now(), proxy.body_bytes()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_at = Instant::now();
    child.kill9();
    let arrived_2s_before = seen
        .iter()
        .rev()
        .find(|(at, _)| killed_at.duration_since(*at) >= Duration::from_secs(2))
        .map(|(_, b)| *b)
        .unwrap();
    let chunks_then = (arrived_2s_before - 512) / MIB;
    assert!(
        chunks_then >= 4,
        "too little arrived to test: {chunks_then}"
    );

    proxy.set_delay(Duration::ZERO);
    let e = assert_ok(&download(&u, &out, &["--chunk-size", "1M"]));
    let resumed = stat(&e, "resumed_chunks").unwrap();
    assert!(
        resumed >= chunks_then,
        "{chunks_then} chunks had arrived 2 s before kill -9, only {resumed} were durable\n{e}"
    );
    assert_file_holds(&out, &disk.image());
    no_leftovers(dir.path());
}
