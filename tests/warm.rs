//! `export --warm [--cutover]` and `cleanup --migration` against the test world (the fake
//! ARM wired to a real Azurite): the first pass keeps an incremental snapshot and writes the
//! state file; later passes apply only the changes; the cutover stops the VM, applies the
//! last changes and leaves nothing in "Azure". qemu-img is the oracle for the images.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::fake_arm::{FakeDiskKind, FakeVm, Leftovers};
use support::fake_azure::FakeAzure;
use support::image::assert_image_equals;
use support::{Run, azure_cmd, bin, run};

fn export(world: &FakeAzure, out: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--output-dir", out.to_str().unwrap()];
    all.extend_from_slice(args);
    run(azure_cmd(world, "export", &all))
}

fn json_file(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// The run report of run `id` in `out`.
fn report(out: &Path, stdout: &str) -> Value {
    let summary: Value = serde_json::from_str(stdout).expect("the summary is JSON");
    json_file(&PathBuf::from(summary["report"].as_str().unwrap()))
        .as_object()
        .map(|o| Value::Object(o.clone()))
        .unwrap_or_else(|| panic!("report in {}", out.display()))
}

fn run_id(stdout: &str) -> String {
    let summary: Value = serde_json::from_str(stdout).expect("the summary is JSON");
    summary["run_id"].as_str().unwrap().to_string()
}

/// The usage rules of `--warm`/`--cutover`: each refusal is exit 2, says why, and comes
/// before any request (no world at all is needed to refuse).
#[test]
fn warm_flag_misuse_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    for (args, says) in [
        (vec!["--cutover"], "give it with --warm"),
        (
            vec!["--warm", "--consistency", "deallocate"],
            "for --cutover only",
        ),
        (
            vec!["--warm", "--consistency", "none"],
            "for --cutover only",
        ),
        (
            vec!["--warm", "--cutover", "--consistency", "snapshot"],
            "not snapshot",
        ),
        (
            vec!["--warm", "--snapshot-type", "full"],
            "incremental snapshots",
        ),
    ] {
        let mut c = bin();
        c.args([
            "--no-progress",
            "export",
            "--output-dir",
            out,
            "--subscription",
            "s",
        ])
        .args(&args);
        let r = run(c);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    // `cleanup` needs one of --run-id and --migration, not both.
    for args in [vec![], vec!["--run-id", "r1", "--migration", out]] {
        let mut c = bin();
        c.args(["cleanup"]).args(&args);
        assert_eq!(run(c).code, 2, "{args:?}");
    }
}

/// A cutover of disks that no warm pass copied is refused, naming them, before anything
/// is created; so is `--consistency none` for a VM that is not deallocated.
#[test]
fn cutover_needs_state_and_a_stopped_vm() {
    let world = FakeAzure::start(vec![FakeVm::linux("web-01", "rg-web")]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &["--warm", "--cutover"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("no warm pass") && r.stderr.contains("web-01/web-01-os"),
        "{}",
        r.stderr
    );
    let r = export(
        &world,
        &out,
        &["--warm", "--cutover", "--consistency", "none"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not deallocated"), "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
    assert_eq!(world.arm.counts().get("snapshot_create"), None);
}

/// The first pass: an incremental snapshot, exported as today and kept — listed as kept in
/// the run report, named in the state file — until `cleanup --migration` removes it.
#[test]
fn first_pass_keeps_its_snapshot_until_cleanup_migration() {
    let world = FakeAzure::start(vec![FakeVm::linux("web-01", "rg-web").data_disk(1, 8)]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &["--warm", "--format", "raw"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &out.join("web-01/web-01-os.raw"), "web-01-os");
    assert_image_equals(
        &world,
        &out.join("web-01/web-01-data-lun1.raw"),
        "web-01-data1",
    );
    let left = world.leftovers();
    assert_eq!(left.snapshots.len(), 2, "{left:?}");
    assert!(left.grants.is_empty(), "{left:?}");

    let rep = report(&out, &r.stdout);
    let kept: Vec<&Value> = rep["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["kind"] == "snapshot")
        .collect();
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|x| x["state"] == "kept"), "{kept:?}");
    assert_eq!(rep["warm"]["cutover"], false);
    let passes = rep["warm"]["passes"].as_array().unwrap();
    assert!(
        passes
            .iter()
            .all(|p| p["kind"] == "full" && p["fallback"].is_null())
    );

    let state = json_file(&out.join("web-01/migration.json"));
    assert_eq!(state["version"], 1);
    let disks = state["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    for d in disks {
        assert_eq!(d["passes"], 1);
        assert!(d["pending_snapshot"].is_null());
        let kept = d["kept_snapshot"].as_str().unwrap();
        assert!(
            left.snapshots.iter().any(|s| kept.ends_with(s.as_str())),
            "{kept} vs {left:?}"
        );
        assert_eq!(d["format"], "raw");
        assert!(d["bytes_fetched"].as_u64().unwrap() > 0);
    }

    // A second first pass into the same directory is not asked for: the images are the
    // migration's, and a pass of an unknown disk never overwrites an image.
    let r = run(azure_cmd(
        &world,
        "cleanup",
        &["--migration", out.to_str().unwrap()],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
    let state = json_file(&out.join("web-01/migration.json"));
    assert!(state["disks"][0]["kept_snapshot"].is_null());
    // The migration is over: a later pass of its disks is refused, naming why.
    let r = export(&world, &out, &["--warm", "--format", "raw"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cut over or cleaned up"), "{}", r.stderr);
    // Twice is safe.
    let r = run(azure_cmd(
        &world,
        "cleanup",
        &["--migration", out.to_str().unwrap()],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A directory with no migration in it is refused as such.
    let r = run(azure_cmd(
        &world,
        "cleanup",
        &["--migration", dir.path().to_str().unwrap()],
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no migration.json"), "{}", r.stderr);
}

/// Kept snapshots carry their run's tag: `cleanup --run-id` of another run leaves them,
/// that of their run removes them.
#[test]
fn cleanup_run_id_covers_kept_snapshots_of_its_run_only() {
    let world = FakeAzure::start(vec![
        FakeVm::linux("web-01", "rg-web"),
        FakeVm::linux("db-01", "rg-db"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let warm_out = dir.path().join("warm");
    let r = export(&world, &warm_out, &["--warm", "--name", "web-01"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let warm_run = run_id(&r.stdout);
    let cold_out = dir.path().join("cold");
    let r = export(&world, &cold_out, &["--name", "db-01"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let cold_run = run_id(&r.stdout);
    assert_eq!(
        world.leftovers().snapshots.len(),
        1,
        "the cold run keeps nothing"
    );

    let cleanup = |id: &str, out: &Path| {
        run(azure_cmd(
            &world,
            "cleanup",
            &["--run-id", id, "--output-dir", out.to_str().unwrap()],
        ))
    };
    let r = cleanup(&cold_run, &cold_out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        world.leftovers().snapshots.len(),
        1,
        "another run's kept snapshot"
    );
    let r = cleanup(&warm_run, &warm_out);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
}

/// `--dry-run --warm` says what each disk's pass would be and creates nothing.
#[test]
fn dry_run_shows_each_disks_pass() {
    let world = FakeAzure::start(vec![FakeVm::linux("web-01", "rg-web")]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dry = |extra: &[&str]| {
        let mut args = vec!["--dry-run", "--warm"];
        args.extend_from_slice(extra);
        export(&world, &out, &args)
    };
    let r = dry(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(plan["warm"]["disks"][0]["pass"], "first", "{plan}");
    assert_eq!(plan["vms"][0]["disks"][0]["source"]["incremental"], true);
    assert_eq!(world.arm.counts().get("snapshot_create"), None);

    let r = export(&world, &out, &["--warm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = dry(&[]);
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(plan["warm"]["disks"][0]["pass"], "diff", "{plan}");
    assert!(plan["warm"]["disks"][0]["kept_snapshot"].is_string());
    let r = dry(&["--cutover"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(plan["warm"]["cutover"], true);
    assert_eq!(plan["vms"][0]["deallocate"], true, "{plan}");
    assert_eq!(world.arm.counts().get("snapshot_create"), Some(&1));
}

/// Azure allows 7 incremental snapshots of a disk per 5 minutes: a pass that would take an
/// eighth is refused before anything is created (exit 1), saying how long to wait.
#[test]
fn a_pass_over_azures_snapshot_rate_is_refused() {
    let world = FakeAzure::start(vec![FakeVm::linux("web-01", "rg-web")]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &["--warm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let path = out.join("web-01/migration.json");
    let mut state = json_file(&path);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    state["disks"][0]["recent_snapshots"] = (0..7).map(|i| now - 60 + i).collect();
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let creates = world.arm.counts().get("snapshot_create").copied();
    let r = export(&world, &out, &["--warm"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("Azure's limit is 7 per disk") && r.stderr.contains("again in"),
        "{}",
        r.stderr
    );
    assert_eq!(world.arm.counts().get("snapshot_create").copied(), creates);
}

/// A 4096-byte-sector Premium SSD v2 disk is served as VHDX, whose changed ranges are VHDX
/// file offsets: its later passes are full ones, saying why, and its images stay exact.
#[test]
fn a_vhdx_served_disk_falls_back_to_full_passes() {
    let world = FakeAzure::start(vec![
        FakeVm::linux("web-01", "rg-web")
            .data_disk(0, 8)
            .disk_kind(Some(0), FakeDiskKind::sku("PremiumV2_LRS", 4096)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for pass in 1..=2 {
        let r = export(&world, &out, &["--warm", "--disks", "data"]);
        assert_eq!(r.code, 0, "pass {pass}: {}", r.stderr);
        assert_image_equals(
            &world,
            &out.join("web-01/web-01-data-lun0.qcow2"),
            "web-01-data0",
        );
        let rep = report(&out, &r.stdout);
        let p = &rep["warm"]["passes"][0];
        assert_eq!(p["kind"], "full", "{p}");
        if pass == 2 {
            assert!(p["fallback"].as_str().unwrap().contains("VHDX"), "{p}");
            assert!(
                r.stderr.contains("a full pass instead of a diff"),
                "{}",
                r.stderr
            );
        }
    }
    assert_eq!(
        world.leftovers().snapshots.len(),
        1,
        "only the newest is kept"
    );
}

// ---------------------------------------------------------------- passes over a changing disk

use support::vhd::{Disk, fill};

const MIB: u64 = 1 << 20;
/// The test disk: 64 MiB, so 1% is about 650 KiB.
const SIZE: u64 = 64 * MIB;
const CHUNK: u64 = 8 * MIB;

/// About 20% of the disk written, in extents of which some cross 8 MiB chunk boundaries
/// and some are unaligned to 4 KiB.
fn twenty_percent(seed: u64) -> Disk {
    let layout = [
        (0, 2 * MIB),
        (CHUNK - 3 * MIB / 2, 3 * MIB + 512),
        (20 * MIB + 4096, 4 * MIB),
        (40 * MIB + 1536, 3 * MIB + 3584),
        (SIZE - MIB, MIB),
    ];
    Disk {
        size: SIZE,
        extents: layout
            .iter()
            .enumerate()
            .map(|(i, &(off, len))| (off, fill(seed + i as u64, len as usize)))
            .collect(),
    }
}

fn warm_world(vm: FakeVm) -> FakeAzure {
    FakeAzure::start_with(support::fake_arm::ArmState::new(), vec![vm], |d| {
        twenty_percent(d.name.len() as u64)
    })
}

/// Bytes of the 512-byte pages `[offset, offset + len)` touches.
fn pages(offset: u64, len: u64) -> u64 {
    (offset + len).div_ceil(512) * 512 - offset / 512 * 512
}

/// Changes about 1% of disk `name` as a running VM would: new writes, overwrites and a
/// cleared range, some crossing 8 MiB chunk boundaries, unaligned. Returns the bytes of
/// the pages written (what a diff must fetch; cleared pages are not fetched).
fn churn(world: &mut FakeAzure, name: &str, round: u64) -> u64 {
    let seed = 1000 * round;
    let writes = [
        // New data across the 16 MiB chunk boundary, unaligned at both ends.
        (2 * CHUNK - 200_003 + round * 4096, 400_000),
        // Overwrites inside data, one crossing the 8 MiB boundary.
        (CHUNK - 4096 - round * 512, 65_536),
        (20 * MIB + 1234 + round * 8192, 150_000),
        // At the disk's end.
        (SIZE - 70_000, 70_000),
    ];
    let mut written = 0;
    for (i, &(off, len)) in writes.iter().enumerate() {
        world.write_disk(name, off, &fill(seed + i as u64, len as usize));
        written += pages(off, len);
    }
    // Cleared (Clear Pages): reads as zeros afterwards, and leaves the page list.
    world.clear_disk(name, 40 * MIB + 8192 + round * 4096, 128 * 1024);
    written
}

/// The pass a run report says disk `lun` had (None: the OS disk).
fn pass_of(rep: &Value) -> Value {
    rep["warm"]["passes"][0].clone()
}

/// Pass 1 (full), a diff pass after ~1% changed, another change, then the cutover: after
/// each, the image equals the disk's content at that snapshot; each later pass fetches
/// within 1.1× of the bytes written since the pass before (counted at the proxy, not by
/// the tool); the cutover deallocates the VM, reports its downtime and leaves nothing.
fn passes_then_cutover(format: &str) {
    let mut world = warm_world(FakeVm::linux("web-01", "rg-web"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let image = out.join(format!("web-01/web-01-os.{format}"));
    let args = ["--warm", "--format", format];
    let r = export(&world, &out, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &image, "web-01-os");
    assert_eq!(pass_of(&report(&out, &r.stdout))["kind"], "full");

    for round in 1..=2 {
        let written = churn(&mut world, "web-01-os", round);
        let before = world.proxy.body_bytes();
        let cutover = round == 2;
        let mut a = args.to_vec();
        if cutover {
            a.push("--cutover");
        }
        let r = export(&world, &out, &a);
        assert_eq!(r.code, 0, "round {round}: {}", r.stderr);
        assert_image_equals(&world, &image, "web-01-os");
        let fetched = world.proxy.body_bytes() - before;
        assert!(
            fetched as f64 <= 1.1 * written as f64,
            "round {round}: {fetched} bytes fetched for {written} written"
        );
        let rep = report(&out, &r.stdout);
        let pass = pass_of(&rep);
        assert_eq!(pass["kind"], "diff", "{pass}");
        assert!(
            pass["bytes_cleared"].as_u64().unwrap() >= 128 * 1024 - 1024,
            "{pass}"
        );
        assert!(pass["bytes_fetched"].as_u64().unwrap() <= fetched, "{pass}");
        if cutover {
            let summary: Value = serde_json::from_str(&r.stdout).unwrap();
            let downtime = summary["downtime_seconds"]["web-01"].as_f64().unwrap();
            assert!(downtime > 0.0 && downtime < 120.0, "{summary}");
            assert_eq!(rep["warm"]["downtime"][0]["downtime_seconds"], downtime);
        }
    }
    if format == "qcow2" {
        support::image::assert_qcow2_matches(&image, &{
            let raw = dir.path().join("expected.raw");
            std::fs::write(&raw, world.disk("web-01-os").image()).unwrap();
            raw
        });
    }
    assert_eq!(world.leftovers(), Leftovers::default());
    let state = json_file(&out.join("web-01/migration.json"));
    assert!(state["cut_over_at"].is_string(), "{state}");
    assert!(state["downtime_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(state["disks"][0]["passes"], 3);
    assert!(state["disks"][0]["kept_snapshot"].is_null());
    let power = world.with_state(|s| s.vms[0].power_state.clone());
    assert_eq!(power.as_deref(), Some("deallocated"));
    assert!(out.join("web-01/domain.xml").exists());
    let m = json_file(&out.join("web-01/manifest.json"));
    assert_eq!(m["disks"][0]["status"], "done", "{m}");
    // The migration is over: another pass is refused.
    let r = export(&world, &out, &args);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("cut over or cleaned up"), "{}", r.stderr);
}

#[test]
fn raw_image_follows_the_disk_through_passes_and_cutover() {
    passes_then_cutover("raw");
}

#[test]
fn qcow2_image_follows_the_disk_through_passes_and_cutover() {
    passes_then_cutover("qcow2");
}

/// A diff is refused — and a full pass done, saying why — when the disk was re-created
/// (another uniqueId) or the kept snapshot is gone; the image is exact either way.
#[test]
fn recreated_disk_or_lost_snapshot_falls_back_to_a_full_pass() {
    let mut world = warm_world(FakeVm::linux("web-01", "rg-web"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let image = out.join("web-01/web-01-os.qcow2");
    let r = export(&world, &out, &["--warm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    churn(&mut world, "web-01-os", 1);
    world.recreate_disk("web-01-os");
    let r = export(&world, &out, &["--warm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &image, "web-01-os");
    let pass = pass_of(&report(&out, &r.stdout));
    assert_eq!(pass["kind"], "full", "{pass}");
    assert!(
        pass["fallback"].as_str().unwrap().contains("re-created"),
        "{pass}"
    );

    churn(&mut world, "web-01-os", 2);
    let kept = json_file(&out.join("web-01/migration.json"))["disks"][0]["kept_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let arm = support::arm_client(&world.arm);
    let id: azure2kvm::azure::arm::ResourceId = kept.parse().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(arm.delete_snapshot(&(&id).into()))
        .unwrap();
    let r = export(&world, &out, &["--warm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &image, "web-01-os");
    let pass = pass_of(&report(&out, &r.stdout));
    assert_eq!(pass["kind"], "full", "{pass}");
    assert!(
        pass["fallback"].as_str().unwrap().contains("is gone"),
        "{pass}"
    );
    assert!(
        r.stderr.contains("a full pass instead of a diff"),
        "{}",
        r.stderr
    );

    // Next time it is a diff again.
    churn(&mut world, "web-01-os", 3);
    let r = export(&world, &out, &["--warm"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &image, "web-01-os");
    assert_eq!(pass_of(&report(&out, &r.stdout))["kind"], "diff");
    assert_eq!(world.leftovers().snapshots.len(), 1);
}

// ---------------------------------------------------------------- interrupted diff passes

use std::time::Duration;
use support::{ChildGuard, signal, wait_exit, wait_for};

/// The pass `round` of a disk with a slow link, killed by `sig` once its diff has fetched
/// something; then the state names the pass as pending, the kept snapshot still exists
/// and the image has its journal; a rerun finishes that same pass exactly.
fn interrupted_diff_pass_is_finished_by_the_next(sig: &str) {
    let mut world = warm_world(FakeVm::linux("web-01", "rg-web"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let image = out.join("web-01/web-01-os.raw");
    let args = ["--warm", "--format", "raw", "--concurrency", "1"];
    let r = export(&world, &out, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let state_path = out.join("web-01/migration.json");
    let kept = json_file(&state_path)["disks"][0]["kept_snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    churn(&mut world, "web-01-os", 1);
    world.proxy.set_delay(Duration::from_millis(1500));
    let before = world.proxy.body_bytes();
    let mut all = vec!["--output-dir", out.to_str().unwrap()];
    all.extend_from_slice(&args);
    let mut child = ChildGuard::spawn(azure_cmd(&world, "export", &all));
    // More than the new snapshot's footer (512 bytes, read first): a chunk of the diff.
    wait_for(
        "the diff to fetch its first chunk",
        Duration::from_secs(60),
        || world.proxy.body_bytes() > before + 4096,
    );
    if sig == "-9" {
        child.kill9();
    } else {
        signal(&child, sig);
        assert_eq!(wait_exit(&mut child, Duration::from_secs(60)), 130);
        assert!(
            world.leftovers().grants.is_empty(),
            "Ctrl-C revokes both grants"
        );
    }
    let state = json_file(&state_path);
    let pending = state["disks"][0]["pending_snapshot"]
        .as_str()
        .expect("the pass is recorded as pending")
        .to_string();
    assert_eq!(state["disks"][0]["kept_snapshot"], kept.as_str());
    let left = world.leftovers().snapshots;
    assert!(
        left.iter().any(|s| kept.ends_with(s.as_str())),
        "the kept snapshot is not deleted before the new one is applied: {left:?}"
    );
    let files: Vec<String> = std::fs::read_dir(out.join("web-01"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f == ".web-01-os.raw.azure2kvm-diff.journal"),
        "the half-applied image has its journal: {files:?}"
    );

    world.proxy.set_delay(Duration::ZERO);
    let r = export(&world, &out, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &image, "web-01-os");
    let state = json_file(&state_path);
    assert_eq!(
        state["disks"][0]["kept_snapshot"],
        pending.as_str(),
        "the same pass"
    );
    assert!(state["disks"][0]["pending_snapshot"].is_null());
    assert_eq!(pass_of(&report(&out, &r.stdout))["kind"], "diff");
    let left = world.leftovers();
    assert!(left.grants.is_empty(), "{left:?}");
    assert_eq!(left.snapshots.len(), 1, "{left:?}");
    assert!(pending.ends_with(left.snapshots[0].as_str()));

    // And the migration ends cleanly from there.
    let r = run(azure_cmd(
        &world,
        "cleanup",
        &["--migration", out.to_str().unwrap()],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn kill_9_during_a_diff_pass_then_rerun_finishes_it() {
    interrupted_diff_pass_is_finished_by_the_next("-9");
}

#[test]
fn ctrl_c_during_a_diff_pass_then_rerun_finishes_it() {
    interrupted_diff_pass_is_finished_by_the_next("-INT");
}

/// Shards of a fleet pass over their own VMs into one output directory: each VM has its
/// own state file, so two processes never write the same one; a cutover of one shard
/// leaves the other's migration alone.
#[test]
fn shards_keep_their_own_state() {
    let world = FakeAzure::start(vec![
        FakeVm::linux("web-01", "rg-web"),
        FakeVm::linux("db-01", "rg-db"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    for shard in ["0/2", "1/2"] {
        let r = export(&world, &out, &["--warm", "--shard", shard]);
        assert_eq!(r.code, 0, "{shard}: {}", r.stderr);
    }
    for vm in ["web-01", "db-01"] {
        let state = json_file(&out.join(vm).join("migration.json"));
        assert_eq!(state["vm"], vm);
        assert_eq!(state["disks"][0]["passes"], 1);
    }
    assert_eq!(world.leftovers().snapshots.len(), 2);
    let r = export(&world, &out, &["--warm", "--cutover", "--shard", "0/2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        world.leftovers().snapshots.len(),
        1,
        "the other shard's snapshot stays"
    );
    let summary: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        summary["downtime_seconds"].as_object().unwrap().len(),
        1,
        "{summary}"
    );
}

/// Unmanaged disks have no incremental snapshots: a warm pass of a VM with one is refused
/// (exit 2, naming the disk) before anything is created.
#[test]
fn a_warm_pass_of_an_unmanaged_disk_is_refused() {
    let world = FakeAzure::start(vec![
        FakeVm::linux("old-01", "rg-old")
            .power(Some("deallocated"))
            .unmanaged(),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let r = export(&world, &dir.path().join("out"), &["--warm"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("needs managed disks") && r.stderr.contains("old-01/"),
        "{}",
        r.stderr
    );
    assert_eq!(world.arm.counts().get("snapshot_create"), None);
}
