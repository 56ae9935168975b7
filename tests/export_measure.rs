//! `export --dry-run --measure --plan FILE` against the fake ARM and Azurite (real page
//! blobs, real Get Page Ranges): the plan records what each disk really holds, nothing is
//! left in Azure afterwards (or after Ctrl-C), and shards run from a measured plan are
//! balanced by written bytes, not by provisioned size.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::fake_arm::{ArmState, FakeDiskKind, FakeVm, Leftovers};
use support::fake_azure::FakeAzure;
use support::image::assert_image_equals;
use support::vhd::{Disk, MIB};
use support::{ChildGuard, azure_cmd, run, signal, wait_exit, wait_for};

fn json_file(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn run_reports(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
        .collect();
    v.sort();
    v
}

/// What Get Page Ranges must sum to for `disk` seeded as a fixed VHD: every 512-byte page
/// an extent touches, once, and the footer's page.
fn pages_written(disk: &Disk) -> u64 {
    let mut pages = BTreeSet::new();
    for (off, data) in &disk.extents {
        pages.extend(off / 512..(off + data.len() as u64).div_ceil(512));
    }
    (pages.len() as u64 + 1) * 512
}

/// Each disk's `written_bytes` in a plan file, by disk name (null: absent).
fn written_in_plan(plan: &Value) -> BTreeMap<String, Value> {
    plan.as_array()
        .unwrap()
        .iter()
        .flat_map(|vm| vm["disks"].as_array().unwrap())
        .map(|d| {
            let bytes = d.get("written_bytes").cloned().unwrap_or(Value::Null);
            (d["name"].as_str().unwrap().to_string(), bytes)
        })
        .collect()
}

fn measure_cmd(world: &FakeAzure, plan: &Path, extra: &[&str]) -> std::process::Command {
    let mut args = vec!["--dry-run", "--measure", "--plan", plan.to_str().unwrap()];
    args.extend_from_slice(extra);
    azure_cmd(world, "export", &args)
}

/// A running VM's disks through incremental snapshots, a deallocated VM's on the disk
/// itself; a disk refused by its network policy is not touched. The sums are what the
/// blobs hold, and the fake shows no grant and no snapshot afterwards.
#[test]
fn measure_records_what_each_disk_holds_and_leaves_nothing() {
    let world = FakeAzure::start(vec![
        FakeVm::linux("web-01", "rg-web").data_disk(0, 64),
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
        FakeVm::linux("priv-01", "rg-web")
            .data_disk(1, 8)
            .disk_kind(Some(1), FakeDiskKind::network("DenyAll", None)),
    ]);
    // Each grant takes a second: without the bound, all four would be live together.
    world.with_state(|s| s.config.grant_lro = Some((1, 1)));
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let r = run(measure_cmd(&world, &plan, &["--concurrency", "4"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // 4 connections: one disk in flight and one granted ahead (the run budget's bound).
    assert!(
        r.stderr.contains("4 disks: 2 measured at a time"),
        "{}",
        r.stderr
    );
    let written = written_in_plan(&json_file(&plan));
    for name in ["web-01-os", "web-01-data0", "db-01-os", "priv-01-os"] {
        let want = pages_written(world.disk(name));
        assert_eq!(written[name], want, "{name}: {}", r.stderr);
        assert!(want < 4 * MIB, "{name}: a sparse disk");
    }
    // Refused by kind: nothing asked for it, nothing recorded.
    assert_eq!(written["priv-01-data1"], Value::Null);
    assert!(r.stderr.contains("measured 4 of 4 disks"), "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
    world.with_state(|s| {
        // Three running VMs' disks snapshotted (incremental), one deallocated disk not;
        // one grant per measured disk, each revoked.
        assert_eq!(s.snapshot_kinds, [true, true, true]);
        assert_eq!(s.count("grant_access"), 4);
        assert_eq!(s.count("revoke_access"), 4);
        assert_eq!(s.count("snapshot_delete"), 3);
        assert!(
            (1..=2).contains(&s.max_live_grants),
            "{}",
            s.max_live_grants
        );
    });
    // The ledger beside the plan: every resource recorded, and removed.
    let reports = run_reports(dir.path());
    assert_eq!(reports.len(), 1, "{reports:?}");
    let rep = json_file(&reports[0]);
    assert_eq!(rep["status"], "done");
    assert_eq!(rep["selection"]["measure"], true);
    let resources = rep["resources"].as_array().unwrap();
    assert_eq!(resources.len(), 7, "{resources:?}");
    assert!(
        resources.iter().all(|r| r["state"] == "removed"),
        "{resources:?}"
    );
    // A plain dry run creates nothing and records no written bytes.
    let plain = dir.path().join("plain.json");
    let before = world.with_state(|s| s.count("grant_access"));
    let r = run(azure_cmd(
        &world,
        "export",
        &["--dry-run", "--plan", plain.to_str().unwrap()],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        written_in_plan(&json_file(&plain))
            .values()
            .all(Value::is_null)
    );
    assert_eq!(world.with_state(|s| s.count("grant_access")), before);
}

/// `--measure` sizes disks for a plan file: refused (exit 2) before any request without
/// `--dry-run` or without `--plan`.
#[test]
fn measure_outside_a_dry_run_with_a_plan_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let out = dir.path().join("out");
    let cases: [(Vec<&str>, &str); 2] = [
        (
            vec!["--measure", "--output-dir", out.to_str().unwrap()],
            "give it with --dry-run --plan FILE",
        ),
        (vec!["--measure", "--dry-run"], "give --plan FILE"),
    ];
    for (args, why) in cases {
        let mut c = support::bin();
        c.arg("export").args(&args).args(["--subscription", "s"]);
        let r = run(c);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(why), "{args:?}: {}", r.stderr);
        assert!(!plan.exists() && !out.exists());
    }
    let mut c = support::bin();
    c.args(["export", "--help"]);
    assert!(run(c).stdout.contains("--measure"));
}

/// Ctrl-C while a grant is pending: the snapshot already made is deleted, the grant
/// revoked, no plan is written, and the report says interrupted (exit 130).
#[test]
fn ctrl_c_while_measuring_exits_130_and_leaves_nothing() {
    let world = FakeAzure::start(vec![FakeVm::linux("web-01", "rg-web")]);
    world.with_state(|s| s.config.grant_lro = Some((100_000, 1)));
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let mut child = ChildGuard::spawn(measure_cmd(&world, &plan, &[]));
    wait_for("the grant request", Duration::from_secs(30), || {
        world.with_state(|s| s.count("grant_access") == 1)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(world.with_state(|s| s.snapshots.len()), 1);
    signal(&child, "-INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(60)), 130);
    assert_eq!(world.leftovers(), Leftovers::default());
    assert!(!plan.exists());
    let rep = json_file(&run_reports(dir.path())[0]);
    assert_eq!(rep["status"], "interrupted");
    let resources = rep["resources"].as_array().unwrap();
    assert!(
        resources.iter().all(|r| r["state"] == "removed"),
        "{resources:?}"
    );
}

/// Provisioned size and data disagree: one 1 TiB VM holding 1 MiB, three 32 GiB VMs full.
/// By size the big VM would be a shard of its own; measured, it is the lightest, and two
/// shards run from the plan each take two VMs — every disk exported exactly once.
#[test]
fn shards_of_a_measured_plan_follow_written_bytes() {
    let mut big = FakeVm::linux("big", "rg-app");
    big.disks[0].size_gb = 1024;
    let vms = vec![
        big,
        FakeVm::linux("small-a", "rg-app").power(Some("deallocated")),
        FakeVm::linux("small-b", "rg-app"),
        FakeVm::linux("small-c", "rg-app"),
    ];
    let world = FakeAzure::start_with(ArmState::new(), vms, |d| {
        if d.name == "big-os" {
            Disk::new(16 * MIB, &[(0, MIB)])
        } else {
            Disk::new(8 * MIB, &[(0, 8 * MIB)])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let r = run(measure_cmd(&world, &plan, &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let written = written_in_plan(&json_file(&plan));
    assert_eq!(written["big-os"], MIB + 512);
    assert_eq!(written["small-a-os"], 8 * MIB + 512);

    let out = dir.path().join("out");
    let mut shards: Vec<ChildGuard> = (0..2)
        .map(|i| {
            let mut c = support::bin();
            c.args(["--no-progress", "export"])
                .args(world.cli_args())
                .args([
                    "--plan",
                    plan.to_str().unwrap(),
                    "--shard",
                    &format!("{i}/2"),
                ])
                .args(["--output-dir", out.to_str().unwrap(), "--format", "raw"])
                .envs(world.env());
            ChildGuard::spawn(c)
        })
        .collect();
    for c in &mut shards {
        assert_eq!(wait_exit(c, Duration::from_secs(180)), 0);
        let mut log = String::new();
        let stderr = c.0.as_mut().unwrap().stderr.as_mut().unwrap();
        std::io::Read::read_to_string(stderr, &mut log).unwrap();
        assert!(
            log.contains("balanced by written bytes for 4 of 4 disks"),
            "{log}"
        );
    }
    let mut by_shard: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for p in run_reports(&out) {
        let rep = json_file(&p);
        let shard = rep["selection"]["shard"].as_str().unwrap().to_string();
        for d in rep["disks"].as_array().unwrap() {
            assert_eq!(d["status"], "done", "{d}");
            by_shard
                .entry(shard.clone())
                .or_default()
                .insert(d["vm"].as_str().unwrap().to_string());
            *seen
                .entry(d["disk"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    // Heaviest first, ties by id: small-a → 0, small-b → 1, small-c → 0, big → 1.
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(by_shard["0/2"], set(&["small-a", "small-c"]));
    assert_eq!(by_shard["1/2"], set(&["big", "small-b"]));
    let all: Vec<String> = world.disks.keys().cloned().collect();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), all);
    assert!(seen.values().all(|&c| c == 1), "{seen:?}");
    for vm in ["big", "small-a", "small-b", "small-c"] {
        let disk = format!("{vm}-os");
        assert_image_equals(&world, &out.join(vm).join(format!("{disk}.raw")), &disk);
    }
    assert_eq!(world.leftovers(), Leftovers::default());
}

/// An unmanaged disk is measured on its blob with the identity's storage token (Get Page
/// Ranges on the storage account): no grant, no snapshot, nothing created in Azure.
#[test]
fn an_unmanaged_disk_is_measured_on_its_blob_with_nothing_created() {
    use support::azurite::Azurite;
    use support::fake_arm::SUBSCRIPTION;
    use support::fake_azure::{seed_vhd_into, small_disk};
    use support::tls::TestCerts;
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCerts::make(dir.path());
    let account = Azurite::start_https_oauth(&certs.cert_pem, &certs.key_pem, &certs.client);
    let content = small_disk("old-01-os");
    seed_vhd_into(account.port, "vhds", "old-01-os.vhd", &content);
    let mut old = FakeVm::linux("old-01", "rg-old");
    old.disks[0].vhd_uri = Some(format!(
        "https://127.0.0.1:{}/{}/vhds/old-01-os.vhd",
        account.port,
        support::seed::ACCOUNT
    ));
    let world = FakeAzure::start(vec![old]);
    world.with_state(|s| s.config.storage_token = Some(support::storage_jwt()));
    let bundle = dir.path().join("bundle.pem");
    let mut pem = std::fs::read_to_string(&world.arm.ca_pem).unwrap();
    pem.push_str(&std::fs::read_to_string(&certs.ca_pem).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let plan = dir.path().join("plan.json");
    let mut c = support::bin();
    c.args([
        "--no-progress",
        "export",
        "--cloud",
        "custom",
        "--arm-endpoint",
    ])
    .arg(&world.arm.arm_url)
    .arg("--ca-bundle")
    .arg(&bundle)
    .args([
        "--storage-suffix",
        "127.0.0.1",
        "--subscription",
        SUBSCRIPTION,
    ])
    .args(["--dry-run", "--measure", "--plan"])
    .arg(&plan)
    .envs(world.env());
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let written = written_in_plan(&json_file(&plan));
    assert_eq!(
        written["old-01-os"],
        pages_written(&content),
        "{}",
        r.stderr
    );
    world.with_state(|s| {
        assert_eq!(s.count("grant_access") + s.count("snapshot_create"), 0);
    });
    let rep = json_file(&run_reports(dir.path())[0]);
    assert_eq!(rep["resources"], serde_json::json!([]));
}
