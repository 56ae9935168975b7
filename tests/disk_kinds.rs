//! Disk kinds that real fleets hold and the fakes did not (issue 12, kinds 1, 2 and 6),
//! end to end against the fake ARM + Azurite: Premium SSD v2 / Ultra disks (incremental
//! snapshots only, a background copy to wait for, 4096-byte sectors granted and read as
//! VHDX),
//! incremental snapshots by default, and network-restricted disks refused before any
//! grant. The fake answers as Azure does (see `support::fake_arm`: `snapshot_refusal`,
//! `grant_refusal`), so a tool that sent a full snapshot of a Premium SSD v2 disk, asked
//! for a grant before the copy finished, or asked for a 4096-byte-sector disk without
//! `fileFormat: VHDX`, would fail these tests.

mod support;

use std::path::Path;

use serde_json::Value;
use support::fake_arm::{FakeDiskKind, FakeVm, Leftovers};
use support::fake_azure::FakeAzure;
use support::image::assert_image_equals;
use support::{Run, azure_cmd, run};

fn export(world: &FakeAzure, out: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--output-dir", out.to_str().unwrap()];
    all.extend_from_slice(args);
    run(azure_cmd(world, "export", &all))
}

fn json_file(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

const DISK_ACCESS: &str = "/subscriptions/00000000-0000-0000-0000-0000000000aa/resourceGroups/rg-net/providers/Microsoft.Compute/diskAccesses/da-1";

/// A running VM: a Premium SSD OS disk and a Premium SSD v2 data disk (512-byte sectors).
fn premium_v2_vm() -> FakeVm {
    FakeVm::linux("pv2-01", "rg-pv2")
        .data_disk(0, 64)
        .disk_kind(Some(0), FakeDiskKind::sku("PremiumV2_LRS", 512))
}

#[test]
fn premium_v2_snapshots_are_incremental_and_granted_only_after_their_background_copy() {
    let world = FakeAzure::start(vec![premium_v2_vm()]);
    let dir = tempfile::tempdir().unwrap();
    // Full snapshots asked: the ordinary disk gets one, the Premium SSD v2 disk cannot.
    let out = dir.path().join("full");
    let r = export(&world, &out, &["--snapshot-type", "full"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let kinds = world.with_state(|s| s.snapshot_kinds.clone());
    assert_eq!(kinds.iter().filter(|k| **k).count(), 1, "{kinds:?}");
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    // The copy was waited for: no grant was asked while it ran, and it was seen rising.
    assert_eq!(world.with_state(|s| s.early_grants), 0);
    assert!(
        r.stderr.contains("background copy 68%") && r.stderr.contains("copy complete"),
        "{}",
        r.stderr
    );
    assert_image_equals(
        &world,
        &out.join("pv2-01/pv2-01-data-lun0.qcow2"),
        "pv2-01-data0",
    );
    assert_image_equals(&world, &out.join("pv2-01/pv2-01-os.qcow2"), "pv2-01-os");
    assert_eq!(world.leftovers(), Leftovers::default());

    // The manifest records the kind and what happened.
    let m = json_file(&out.join("pv2-01/manifest.json"));
    let data = &m["disks"][1];
    assert_eq!(data["sku"], "PremiumV2_LRS", "{m}");
    assert_eq!(data["sector_size"], 512);
    assert_eq!(data["logical_sector_size"], 512, "from the image");
    assert_eq!(data["network_access_policy"], "AllowAll");
    assert_eq!(data["status"], "done");
    assert_eq!(data["snapshot"], "incremental");
    assert_eq!(m["disks"][0]["sku"], "Premium_LRS");
    assert_eq!(m["disks"][0]["snapshot"], "full");

    // The default: incremental for every disk.
    world.with_state(|s| s.snapshot_kinds.clear());
    let r = export(&world, &dir.path().join("default"), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.with_state(|s| s.snapshot_kinds.clone()), [true, true]);
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn dry_run_and_list_say_what_happens_to_each_kind() {
    let vm = premium_v2_vm()
        .data_disk(1, 32)
        .disk_kind(Some(1), FakeDiskKind::sku("UltraSSD_LRS", 4096))
        .data_disk(2, 16)
        .disk_kind(
            Some(2),
            FakeDiskKind::network("AllowPrivate", Some(DISK_ACCESS)),
        );
    let world = FakeAzure::start(vec![vm]);
    let r = run(azure_cmd(&world, "export", &["--dry-run"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    let disks = plan["vms"][0]["disks"].as_array().unwrap();
    assert_eq!(disks[0]["source"]["incremental"], true);
    assert_eq!(disks[0]["source"]["background_copy"], false);
    assert!(disks[0].get("refused").is_none());
    assert_eq!(disks[1]["source"]["background_copy"], true, "{}", disks[1]);
    assert!(disks[1].get("grant_format").is_none(), "{}", disks[1]);
    // 4096-byte sectors: exported, its grants ask for VHDX.
    assert!(disks[2].get("refused").is_none(), "{}", disks[2]);
    assert_eq!(disks[2]["grant_format"], "VHDX", "{}", disks[2]);
    assert_eq!(disks[3]["refused"]["reason"], "allow_private");
    assert_eq!(disks[3]["refused"]["disk_access_id"], DISK_ACCESS);
    assert_eq!(world.with_state(|s| s.count("snapshot_create")), 0);

    let r = run(azure_cmd(&world, "list", &["--output", "json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let vms: Value = serde_json::from_str(&r.stdout).unwrap();
    let d = &vms[0]["disks"];
    assert_eq!(d[2]["sku"], "UltraSSD_LRS");
    assert_eq!(d[2]["sector_size"], 4096);
    assert_eq!(d[3]["network_access_policy"], "AllowPrivate");
    assert_eq!(d[3]["disk_access_id"], DISK_ACCESS);
    let r = run(azure_cmd(&world, "list", &[]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for note in [
        "note: pv2-01 disk pv2-01-data0: PremiumV2_LRS, 512-byte sectors: incremental snapshot",
        "note: pv2-01 disk pv2-01-data1: UltraSSD_LRS, 4096-byte sectors: incremental snapshot, waits for its background copy, exported as VHDX",
        "note: pv2-01 disk pv2-01-data2: network access AllowPrivate: refused unless --private-network",
    ] {
        assert!(r.stdout.contains(note), "{note}\n{}", r.stdout);
    }
}

#[test]
fn refused_disks_exit_3_named_with_their_reason_and_nothing_is_created_for_them() {
    let vm = FakeVm::linux("net-01", "rg-net")
        .data_disk(0, 16)
        .disk_kind(Some(0), FakeDiskKind::network("DenyAll", None))
        .data_disk(1, 16)
        .disk_kind(
            Some(1),
            FakeDiskKind::network("AllowPrivate", Some(DISK_ACCESS)),
        );
    let world = FakeAzure::start(vec![vm]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    for said in ["DenyAll", "AllowPrivate", DISK_ACCESS, "--private-network"] {
        assert!(r.stderr.contains(said), "{said}: {}", r.stderr);
    }
    // Only the OS disk was snapshotted and granted.
    let counts = world.arm.counts();
    assert_eq!(counts.get("snapshot_create"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("grant_access"), Some(&1), "{counts:?}");
    assert_eq!(world.leftovers(), Leftovers::default());
    let m = json_file(&out.join("net-01/manifest.json"));
    let statuses: Vec<&str> = m["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["done", "refused", "refused"]);
    assert!(m["disks"][1]["error"].as_str().unwrap().contains("DenyAll"));
    assert!(m["disks"][1]["snapshot"].is_null());
    assert_eq!(m["disks"][0]["snapshot"], "incremental");
    assert!(out.join("net-01/domain.xml").exists(), "the OS disk boots");

    // A lone refused disk is still "partly done", not a failed run.
    let r = export(
        &world,
        &dir.path().join("lone"),
        &["--disks", "data", "--name", "net-01"],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
}

#[test]
fn disks_with_4096_byte_sectors_are_granted_as_vhdx_and_keep_their_sector_size() {
    // Ultra (4096-byte sectors) and Premium SSD v2 (512) on a running VM: both snapshotted
    // and copied; the fake serves the Ultra disk's snapshot as a VHDX with 4096-byte
    // sectors and refuses (400) a grant on it that does not ask for fileFormat VHDX.
    let vm = FakeVm::linux("ultra-4k", "rg-4k")
        .data_disk(0, 16)
        .disk_kind(Some(0), FakeDiskKind::sku("UltraSSD_LRS", 4096))
        .data_disk(1, 16)
        .disk_kind(Some(1), FakeDiskKind::sku("PremiumV2_LRS", 512));
    let world = FakeAzure::start(vec![vm]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // One grant per disk: VHDX for the 4 KiB-sector disk only, today's body otherwise.
    let mut formats = world.with_state(|s| s.grant_formats.clone());
    formats.sort();
    assert_eq!(formats, [None, None, Some("VHDX".to_string())]);
    assert!(r.stderr.contains("as VHDX"), "{}", r.stderr);
    assert_image_equals(
        &world,
        &out.join("ultra-4k/ultra-4k-data-lun0.qcow2"),
        "ultra-4k-data0",
    );
    assert_image_equals(
        &world,
        &out.join("ultra-4k/ultra-4k-data-lun1.qcow2"),
        "ultra-4k-data1",
    );
    assert_eq!(world.leftovers(), Leftovers::default());

    let m = json_file(&out.join("ultra-4k/manifest.json"));
    let ultra = &m["disks"][1];
    assert_eq!(ultra["sku"], "UltraSSD_LRS", "{m}");
    assert_eq!(ultra["sector_size"], 4096);
    assert_eq!(ultra["logical_sector_size"], 4096, "from the VHDX");
    assert_eq!(ultra["status"], "done");
    assert_eq!(ultra["snapshot"], "incremental");
    assert!(ultra["reason"].is_null(), "{m}");
    assert_eq!(m["disks"][2]["logical_sector_size"], 512);
    // The guest sees the geometry it was formatted with; the 512-byte disk is unchanged.
    let domain = std::fs::read_to_string(out.join("ultra-4k/domain.xml")).unwrap();
    let blockio = r#"<blockio logical_block_size="4096" physical_block_size="4096"/>"#;
    assert_eq!(domain.matches(blockio).count(), 1, "{domain}");
    let at = |s: &str| domain.find(s).unwrap_or_else(|| panic!("{s}: {domain}"));
    assert!(
        at("ultra-4k-data-lun0.qcow2") < at(blockio)
            && at(blockio) < at("ultra-4k-data-lun1.qcow2"),
        "{domain}"
    );
}

#[test]
fn a_policy_set_after_the_plan_is_refused_before_the_grant() {
    let world = FakeAzure::start(vec![FakeVm::linux("late-01", "rg-late")]);
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let r = run(azure_cmd(
        &world,
        "export",
        &["--dry-run", "--plan", plan.to_str().unwrap()],
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    world.with_state(|s| {
        s.disks[0].kind = FakeDiskKind::network("DenyAll", None);
    });
    let r = export(
        &world,
        &dir.path().join("out"),
        &["--plan", plan.to_str().unwrap()],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("DenyAll"), "{}", r.stderr);
    assert_eq!(world.with_state(|s| s.count("grant_access")), 0);
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn a_private_endpoint_this_host_does_not_reach_leaves_no_grant_behind() {
    // --private-network says this host is inside; it is not: Azure grants anyway and the
    // URL refuses every read. The grant is revoked and the reason named, without a retry.
    let vm = FakeVm::linux("priv-01", "rg-priv")
        .power(Some("deallocated"))
        .disk_kind(
            None,
            FakeDiskKind::network("AllowPrivate", Some(DISK_ACCESS)),
        );
    let world = FakeAzure::start(vec![vm]);
    let dir = tempfile::tempdir().unwrap();
    let r = export(&world, &dir.path().join("out"), &["--private-network"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("does not reach that disk access's private endpoint"),
        "{}",
        r.stderr
    );
    assert_eq!(world.with_state(|s| s.count("grant_access")), 1);
    assert_eq!(world.with_state(|s| s.count("revoke_access")), 1);
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn sigint_while_a_background_copy_runs_stops_within_2_s_and_leaves_nothing() {
    let world = FakeAzure::start(vec![premium_v2_vm()]);
    // The copy never finishes.
    world.with_state(|s| s.config.copy_step = 0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut all = vec!["--output-dir", out.to_str().unwrap()];
    all.extend_from_slice(&["--disks", "data"]);
    let mut child = support::ChildGuard::spawn(azure_cmd(&world, "export", &all));
    // Created (its LRO ends with a GET), then polled 6 times: the wait after that poll is
    // 8 s, so only a wait that listens for Ctrl-C ends within 2 s.
    support::wait_for(
        "the background copy to be polled",
        std::time::Duration::from_secs(30),
        || world.with_state(|s| s.count("snapshot_get")) >= 7,
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let t = std::time::Instant::now();
    let pid = child.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let proc = child.0.as_mut().unwrap();
    let code = loop {
        if let Some(s) = proc.try_wait().unwrap() {
            break s.code().unwrap_or(-1);
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "no exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let elapsed = t.elapsed();
    let mut e = String::new();
    let _ = std::io::Read::read_to_string(child.0.take().unwrap().stderr.as_mut().unwrap(), &mut e);
    assert_eq!(code, 130, "{e}");
    assert!(
        elapsed < std::time::Duration::from_secs(2),
        "{elapsed:?}\n{e}"
    );
    assert_eq!(world.with_state(|s| s.count("grant_access")), 0);
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn background_copies_queue_within_the_subscriptions_limit() {
    let vm = FakeVm::linux("many-01", "rg-many")
        .data_disk(0, 8)
        .data_disk(1, 8)
        .data_disk(2, 8)
        .disk_kind(Some(0), FakeDiskKind::sku("PremiumV2_LRS", 512))
        .disk_kind(Some(1), FakeDiskKind::sku("UltraSSD_LRS", 512))
        .disk_kind(Some(2), FakeDiskKind::sku("PremiumV2_LRS", 512));
    let world = FakeAzure::start(vec![vm]);
    // A subscription where one copy may run at a time (other runs hold the rest).
    world.with_state(|s| s.config.max_background_copies = 1);
    let dir = tempfile::tempdir().unwrap();
    let data = ["--disks", "data"];

    // A limit Azure's: the run would start three copies at once; Azure refuses two.
    let r = export(&world, &dir.path().join("unbounded"), &data);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("limit of 1 active background copies"),
        "{}",
        r.stderr
    );
    assert_eq!(world.leftovers(), Leftovers::default());

    // The run's limit lowered to the subscription's share: the copies queue, all done.
    let mut c = azure_cmd(&world, "export", &data);
    c.args(["--output-dir", dir.path().join("queued").to_str().unwrap()])
        .env("AZURE2KVM_MAX_BACKGROUND_COPIES", "1");
    let r = run(c);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());

    // A limit outside 1..=50 is a configuration error before any request.
    world.arm.reset_counts();
    for bad in ["0", "51", "x"] {
        let mut c = azure_cmd(&world, "export", &["--dry-run"]);
        c.env("AZURE2KVM_MAX_BACKGROUND_COPIES", bad);
        let r = run(c);
        assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
        assert!(
            r.stderr.contains("AZURE2KVM_MAX_BACKGROUND_COPIES"),
            "{}",
            r.stderr
        );
    }
    assert_eq!(world.with_state(|s| s.arm_total()), 0);
}
