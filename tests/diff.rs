//! A diff pass against the fake world (issue 13, engine side): Azurite holds the disks and
//! snapshots, the fake ARM takes incremental snapshots and grants them, and the blob gate
//! in front of Azurite answers `x-ms-previous-snapshot-url` diffs honestly (Azurite alone
//! would answer the full page list and prove nothing). The library's own ARM client and
//! `transfer::diff::apply_diff` are driven in-process; qemu-img is the image oracle.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use azure2kvm::azure::arm::ArmClient;
use azure2kvm::azure::arm::client::{AccessTarget, GrantFormat, ResourceRef};
use azure2kvm::azure::sas::SasUrl;
use azure2kvm::image::sink::ImageFormat;
use azure2kvm::interrupt::Interrupt;
use azure2kvm::transfer::diff::{
    DiffError, DiffOutcome, DiffRequest, DiffSource, apply_diff, journal_path_for, pending_pass,
};
use azure2kvm::transfer::engine::{EngineConfig, ProgressFn};
use azure2kvm::transfer::job::{DownloadRequest, download};
use support::fake_arm::{FakeVm, SUBSCRIPTION};
use support::fake_azure::FakeAzure;
use support::image::assert_image_equals;
use support::vhd::{MIB, fill};
use support::{ChildGuard, wait_for};

const RG: &str = "rg-diff";
const DISK: &str = "app-os";
/// Small chunks, so a 4 MiB disk has 64 of them and changes cross their edges.
const CHUNK: u64 = 64 << 10;

/// The fake world, the library's ARM client on it, and a runtime for both.
struct Warm {
    world: FakeAzure,
    arm: ArmClient,
    rt: tokio::runtime::Runtime,
}

/// A snapshot taken and granted: its id and read SAS.
#[derive(Clone)]
struct Snap {
    id: String,
    sas: SasUrl,
}

impl Warm {
    fn start() -> Self {
        let world = FakeAzure::start(vec![FakeVm::linux("app", RG)]);
        world.with_state(|s| s.config.lro_polls = 0);
        let arm = support::arm_client(&world.arm);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Self { world, arm, rt }
    }

    /// An incremental snapshot of the disk as it is now, granted for an hour.
    fn snapshot(&self, name: &str) -> Snap {
        let r = ResourceRef::new(SUBSCRIPTION, RG, name);
        let disk_id = self.world.disk_id(DISK);
        let snap = self
            .rt
            .block_on(self.arm.create_snapshot(
                &r,
                "westeurope",
                &disk_id,
                true,
                &Default::default(),
            ))
            .unwrap();
        let sas = self
            .rt
            .block_on(
                self.arm
                    .grant_access(&AccessTarget::Snapshot(r), 3600, GrantFormat::Vhd),
            )
            .unwrap();
        Snap {
            id: snap.id.to_ascii_lowercase(),
            sas,
        }
    }

    /// A first, full pass: the snapshot downloaded into `image`.
    fn full_pass(&self, snap: &Snap, image: &Path, format: ImageFormat) {
        let req = DownloadRequest::new(snap.sas.clone(), image.to_path_buf(), format);
        self.rt
            .block_on(download(req, quiet(), Interrupt::never()))
            .unwrap();
    }

    fn diff(
        &self,
        previous: &Snap,
        snap: &Snap,
        image: &Path,
        format: ImageFormat,
    ) -> Result<DiffOutcome, DiffError> {
        self.rt.block_on(apply_diff(
            request(previous, snap, image, format),
            quiet(),
            Interrupt::never(),
        ))
    }

    /// Bytes of the pages the fake recorded as changed by snapshot `snap`.
    fn dirty_bytes(&self, snap: &Snap) -> u64 {
        self.world
            .with_state(|s| s.warm.snapshot(&snap.id).unwrap().dirty.bytes())
    }
}

fn quiet() -> ProgressFn {
    Arc::new(|_| {})
}

fn request(previous: &Snap, snap: &Snap, image: &Path, format: ImageFormat) -> DiffRequest {
    let source = DiffSource {
        snapshot: snap.sas.clone(),
        previous: previous.sas.clone(),
        snapshot_key: snap.id.clone(),
        previous_key: previous.id.clone(),
    };
    let mut req = DiffRequest::new(source, image.to_path_buf(), format);
    req.read.chunk_size = Some(CHUNK);
    req
}

/// Changes of every kind between two snapshots: new data in a hole, an overwrite, zeros
/// written over data, clears (aligned, unaligned, across chunk edges), the disk's end.
fn change(world: &mut FakeAzure, seed: u64) {
    world.write_disk(DISK, 3 * CHUNK - 1000, &fill(seed, 3000));
    world.write_disk(DISK, MIB + 4096 + 700, &fill(seed + 1, 5000));
    world.write_disk(DISK, 20_480, &[0u8; 8192]);
    world.clear_disk(DISK, 3 * MIB + CHUNK - 4096, CHUNK + 8192);
    world.clear_disk(DISK, 40_000, 10_000);
    let size = world.disk(DISK).size;
    world.write_disk(DISK, size - 1024, &fill(seed + 2, 1024));
}

fn image_path(dir: &Path, format: ImageFormat) -> PathBuf {
    dir.join(format!("app-os.{}", format.extension()))
}

/// Two diff passes after a full one, raw and qcow2: after each the image equals the
/// disk's content at the new snapshot (qemu-img compare, and check for qcow2); the pass
/// fetches what changed and not much more (≤ 1.1× the changed bytes, the footer read
/// aside); the journal is gone.
#[test]
fn diff_passes_bring_the_image_to_each_new_snapshot() {
    for format in [ImageFormat::Raw, ImageFormat::Qcow2] {
        let mut warm = Warm::start();
        let dir = tempfile::tempdir().unwrap();
        let image = image_path(dir.path(), format);
        let mut previous = warm.snapshot("s1");
        warm.full_pass(&previous, &image, format);
        assert_image_equals(&warm.world, &image, DISK);
        for (pass, name) in ["s2", "s3"].into_iter().enumerate() {
            change(&mut warm.world, 100 * pass as u64);
            let snap = warm.snapshot(name);
            let out = warm.diff(&previous, &snap, &image, format).unwrap();
            assert_image_equals(&warm.world, &image, DISK);
            assert_eq!(
                out.bytes_changed + out.bytes_cleared,
                warm.dirty_bytes(&snap),
                "{format:?} pass {name}: the diff is every page the fake changed"
            );
            assert!(out.bytes_changed > 0 && out.bytes_cleared > 0, "{out:?}");
            let data = out.bytes_fetched - 512;
            assert!(
                data >= out.bytes_changed && data * 10 <= out.bytes_changed * 11,
                "{format:?} pass {name}: fetched {data} for {} changed",
                out.bytes_changed
            );
            assert!(!journal_path_for(&image).exists());
            previous = snap;
        }
    }
}

/// A journal left by another pass is refused and left alone; [`pending_pass`] names the
/// pass so the caller can finish it. An image of another size is refused before anything
/// is written, and its journal removed.
#[test]
fn another_pass_or_another_image_is_refused() {
    let mut warm = Warm::start();
    let dir = tempfile::tempdir().unwrap();
    let image = image_path(dir.path(), ImageFormat::Raw);
    let s1 = warm.snapshot("s1");
    warm.full_pass(&s1, &image, ImageFormat::Raw);
    change(&mut warm.world, 7);
    let s2 = warm.snapshot("s2");
    // A journal naming a pass s0 -> s2 into this image.
    let journal = journal_path_for(&image);
    std::fs::write(&journal, "{\"version\":1,\"blob\":\"diff s0 -> s2 into elsewhere\",\"etag\":\"\",\"blob_length\":1,\"virtual_size\":1,\"chunk_size\":1,\"format\":\"raw\",\"chunks\":0,\"plan_digest\":\"\"}\n").unwrap();
    let before = std::fs::read(&image).unwrap();
    match warm.diff(&s1, &s2, &image, ImageFormat::Raw) {
        Err(DiffError::OtherPass { why, .. }) => assert!(why.contains("diff s0 -> s2"), "{why}"),
        other => panic!("expected OtherPass, got {other:?}"),
    }
    assert!(journal.exists() && std::fs::read(&image).unwrap() == before);
    let pending = pending_pass(&journal).unwrap().unwrap();
    assert_eq!(
        (pending.previous_key.as_str(), pending.snapshot_key.as_str()),
        ("s0", "s2")
    );
    std::fs::remove_file(&journal).unwrap();

    // A raw image one sector short.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(4 * MIB - 512)
        .unwrap();
    match warm.diff(&s1, &s2, &image, ImageFormat::Raw) {
        Err(e @ DiffError::ImageRefused { .. }) => {
            assert!(e.to_string().contains("full pass"), "{e}")
        }
        other => panic!("expected ImageRefused, got {other:?}"),
    }
    assert!(!journal.exists(), "a refused fresh pass leaves no journal");
}

/// The child half of [`kill_9_mid_pass_then_a_rerun_finishes_it`]: runs one pass from the
/// environment the parent sets, slowly, until it is killed.
#[test]
#[ignore = "run as a child process by kill_9_mid_pass_then_a_rerun_finishes_it"]
fn diff_child() {
    let var = |k: &str| std::env::var(k).unwrap();
    let snap = |p: &str| Snap {
        id: var(&format!("{p}_ID")),
        sas: SasUrl::parse(&var(&format!("{p}_SAS"))).unwrap(),
    };
    let format = match var("DIFF_FORMAT").as_str() {
        "raw" => ImageFormat::Raw,
        _ => ImageFormat::Qcow2,
    };
    let mut req = request(
        &snap("DIFF_PREV"),
        &snap("DIFF_SNAP"),
        Path::new(&var("DIFF_IMAGE")),
        format,
    );
    req.read.engine = EngineConfig {
        concurrency: 1,
        ..EngineConfig::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(apply_diff(req, quiet(), Interrupt::never()))
        .unwrap();
}

/// Lines in the journal: the header, then one per checkpoint.
fn journal_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// kill -9 during a diff pass (the link slowed so it takes seconds): the image and the
/// journal stay; the same pass run again resumes (some chunks already done) and the image
/// equals the new snapshot; a qcow2 checks clean.
#[test]
fn kill_9_mid_pass_then_a_rerun_finishes_it() {
    for format in [ImageFormat::Raw, ImageFormat::Qcow2] {
        let mut warm = Warm::start();
        let dir = tempfile::tempdir().unwrap();
        let image = image_path(dir.path(), format);
        let s1 = warm.snapshot("s1");
        warm.full_pass(&s1, &image, format);
        // 1.5 MiB of new data over 24+ chunks, plus the usual mix.
        warm.world
            .write_disk(DISK, 1536 * 1024 + 100, &fill(9, 1536 * 1024));
        change(&mut warm.world, 3);
        let s2 = warm.snapshot("s2");
        warm.world.proxy.set_delay(Duration::from_millis(150));
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["diff_child", "--exact", "--ignored", "--nocapture"])
            .env("DIFF_PREV_ID", &s1.id)
            .env("DIFF_PREV_SAS", s1.sas.expose().as_str())
            .env("DIFF_SNAP_ID", &s2.id)
            .env("DIFF_SNAP_SAS", s2.sas.expose().as_str())
            .env("DIFF_IMAGE", &image)
            .env("DIFF_FORMAT", format.extension());
        let mut child = ChildGuard::spawn(cmd);
        let journal = journal_path_for(&image);
        wait_for(
            "a checkpoint in the journal",
            Duration::from_secs(60),
            || journal_lines(&journal) >= 3,
        );
        child.kill9();
        assert!(journal.exists(), "the journal survives a kill -9");
        warm.world.proxy.set_delay(Duration::ZERO);
        let out = warm.diff(&s1, &s2, &image, format).unwrap();
        assert!(
            out.resumed_chunks > 0 && out.resumed_chunks < out.chunks,
            "{format:?}: {out:?}"
        );
        assert_image_equals(&warm.world, &image, DISK);
        assert!(!journal.exists());
    }
}

/// A grant served as VHDX (a 4 KiB-sector disk): its page diffs would be in VHDX file
/// offsets, so the pass is refused as not applicable — naming VHDX, with the image
/// untouched and no journal left — and the caller does a full pass.
#[test]
fn a_vhdx_grant_is_refused_before_anything_is_written() {
    let warm = Warm::start();
    let port = warm.world.azurite.port;
    let vhdx = support::vhdx::vhdx_of_image(&vec![7u8; (2 * MIB) as usize], 4096);
    support::vhdx::seed_pages(port, "vhdx", "disk.vhdx", &vhdx);
    let sas = support::seed::blob_sas("vhdx", "disk.vhdx", Duration::from_secs(3600), false);
    let url = SasUrl::parse(&support::seed::blob_url(port, "vhdx", "disk.vhdx", &sas)).unwrap();
    let snap = |id: &str| Snap {
        id: id.into(),
        sas: url.clone(),
    };
    let dir = tempfile::tempdir().unwrap();
    let image = image_path(dir.path(), ImageFormat::Raw);
    std::fs::write(&image, vec![1u8; (2 * MIB) as usize]).unwrap();
    match warm.diff(&snap("old"), &snap("new"), &image, ImageFormat::Raw) {
        Err(e @ DiffError::NotApplicable { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("VHDX") && text.contains("full pass"),
                "{text}"
            );
            assert!(!text.contains("sig="), "{text}");
        }
        other => panic!("expected NotApplicable, got {other:?}"),
    }
    assert!(std::fs::read(&image).unwrap() == vec![1u8; (2 * MIB) as usize]);
    assert!(!journal_path_for(&image).exists());
}
