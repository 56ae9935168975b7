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
