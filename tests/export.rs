//! `export` and `cleanup` against the test world: the fake ARM wired to a real Azurite
//! (`support::fake_azure`), so grants are real expiring SAS URLs and snapshots real blob
//! copies. qemu-img is the oracle for qcow2 outputs; `leftovers()` says whether anything
//! the run created in "Azure" is still there.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use azure2kvm::azure::arm::client::{AccessTarget, ResourceRef};
use support::fake_arm::{FakeVm, Leftovers, SNAPSHOT_CONTAINER, SUBSCRIPTION, blob_name};
use support::fake_azure::FakeAzure;
use support::{download, seed, stderr};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn disk_id(rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}"
    )
}

fn assert_raw_equals(out: &std::path::Path, expected: &[u8]) {
    let got = std::fs::read(out).expect("output exists");
    assert_eq!(got.len(), expected.len(), "size of {}", out.display());
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{} differs from the seeded disk at byte {i}", out.display());
    }
}

/// The world itself behaves like Azure where export depends on it.
#[test]
fn fake_world_grants_real_sas_and_snapshots_copy_blobs() {
    let world = FakeAzure::start(vec![
        FakeVm::linux("web-01", "rg-web").data_disk(3, 64),
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
    ]);
    let arm = support::arm_client(&world.arm);
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        // A disk of an allocated VM cannot be exported directly.
        let web_os = ResourceRef::new(SUBSCRIPTION, "rg-web", "web-01-os");
        let e = arm
            .grant_access(&AccessTarget::Disk(web_os.clone()), 600)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        assert!(e.to_string().contains("OperationNotAllowed"), "{e}");

        // Snapshot it: a copy of its blob, tagged, listed at both scopes.
        let snap = ResourceRef::new(SUBSCRIPTION, "rg-web", "web-01-os-snap");
        let tags = BTreeMap::from([("azure2kvm-run".to_string(), "r1".to_string())]);
        arm.create_snapshot(
            &snap,
            "westeurope",
            &disk_id("rg-web", "web-01-os"),
            false,
            &tags,
        )
        .await
        .unwrap();
        for rg in [None, Some("rg-web")] {
            let listed = arm.list_snapshots(SUBSCRIPTION, rg).await.unwrap();
            assert_eq!(listed.len(), 1);
            assert_eq!(listed[0].tags.as_ref().unwrap()["azure2kvm-run"], "r1");
        }
        assert!(
            arm.list_snapshots(SUBSCRIPTION, Some("rg-db"))
                .await
                .unwrap()
                .is_empty()
        );

        let sas = arm
            .grant_access(&AccessTarget::Snapshot(snap.clone()), 600)
            .await
            .unwrap();
        let out = dir.path().join("web-01-os.raw");
        let o = download(sas.expose().as_str(), &out, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_raw_equals(&out, &world.disk("web-01-os").image());

        // A snapshot with an active grant cannot be deleted; after revoke it can.
        let e = arm.delete_snapshot(&snap).await.unwrap_err();
        assert_eq!(e.status(), Some(409), "{e}");
        arm.revoke_access(&AccessTarget::Snapshot(snap.clone()))
            .await
            .unwrap();
        arm.delete_snapshot(&snap).await.unwrap();
        arm.delete_snapshot(&snap).await.unwrap(); // gone already: fine
        let r = seed::signed(
            world.azurite.port,
            "HEAD",
            &format!(
                "/{SNAPSHOT_CONTAINER}/{}",
                blob_name("rg-web", "web-01-os-snap")
            ),
            &[],
            &[],
            b"",
        );
        assert_eq!(r.status, 404, "the snapshot's blob is deleted with it");

        // A deallocated VM's disk is granted directly; the SAS expires as asked.
        let db_os = AccessTarget::Disk(ResourceRef::new(SUBSCRIPTION, "rg-db", "db-01-os"));
        let sas = arm.grant_access(&db_os, 1).await.unwrap();
        let out = dir.path().join("db-01-os.raw");
        let o = download(sas.expose().as_str(), &out, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_raw_equals(&out, &world.disk("db-01-os").image());
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let o = download(sas.expose().as_str(), &dir.path().join("late.raw"), &[]);
        assert!(!o.status.success(), "an expired SAS must be refused");
        arm.revoke_access(&db_os).await.unwrap();
    });
    assert_eq!(world.leftovers(), Leftovers::default());
}

// ---------------------------------------------------------------- export end to end

use std::path::Path;
use std::process::Command;

use serde_json::Value;
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

/// The run report in `out` (there is exactly one per run).
fn report(out: &Path) -> Value {
    let p = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("run-") && n.ends_with(".json")
        })
        .expect("a run report");
    json_file(&p)
}

fn assert_image_equals(world: &FakeAzure, image: &Path, disk: &str) {
    let expected = world.disk(disk).image();
    if image.extension().is_some_and(|e| e == "raw") {
        return assert_raw_equals(image, &expected);
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("expected.raw");
    std::fs::write(&raw, &expected).unwrap();
    let cmp = support::qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        raw.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(
        cmp.status.success(),
        "{} differs from disk {disk}: {}",
        image.display(),
        String::from_utf8_lossy(&cmp.stdout)
    );
}

fn validate_domain(path: &Path) {
    support::tools::ensure_debian_tool("xmllint", "libxml2-utils");
    support::tools::ensure_debian_tool("virt-xml-validate", "libvirt-clients");
    let out = Command::new("virt-xml-validate")
        .arg(path)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} fails virt-xml-validate: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No SAS signature in anything the run wrote or printed.
fn assert_no_secrets(out: &Path, r: &Run) {
    for text in [&r.stdout, &r.stderr] {
        assert!(!text.contains("sig="), "a SAS signature leaked: {text}");
    }
    for entry in walk(out) {
        if entry.extension().is_some_and(|e| e == "json" || e == "xml") {
            let text = std::fs::read_to_string(&entry).unwrap();
            assert!(!text.contains("sig="), "{} holds a SAS", entry.display());
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn fleet() -> Vec<FakeVm> {
    vec![
        FakeVm::linux("web-01", "rg-web")
            .data_disk(0, 64)
            .data_disk(3, 32),
        FakeVm::linux("db-01", "rg-db").power(Some("deallocated")),
        FakeVm::windows_gen2("win-01", "rg-web").power(Some("stopped")),
    ]
}

#[test]
fn export_of_a_mixed_fleet_gives_identical_images_manifests_and_domains() {
    let mut vms = fleet();
    // An unmanaged disk that cannot be read: it fails alone, the rest is exported.
    let mut old = FakeVm::linux("old-01", "rg-old").power(Some("deallocated"));
    old.disks[0].vhd_uri = Some("http://127.0.0.1:9/vhds/old-01-os.vhd".into());
    vms.push(old);
    let world = FakeAzure::start(vms);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &[]);
    assert_eq!(r.code, 3, "one disk fails: exit 3\n{}", r.stderr);
    assert!(r.stderr.contains("old-01"), "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
    assert_no_secrets(&out, &r);

    // Running and stopped VMs were snapshotted; the deallocated one read directly.
    let counts = world.arm.counts();
    assert_eq!(counts.get("snapshot_create"), Some(&4), "{counts:?}");

    for (vm, disks) in [
        (
            "web-01",
            vec![
                ("web-01-os", "web-01-os.qcow2"),
                ("web-01-data0", "web-01-data-lun0.qcow2"),
                ("web-01-data3", "web-01-data-lun3.qcow2"),
            ],
        ),
        ("db-01", vec![("db-01-os", "db-01-os.qcow2")]),
        ("win-01", vec![("win-01-os", "win-01-os.qcow2")]),
    ] {
        let vm_dir = out.join(vm);
        for (disk, file) in &disks {
            assert_image_equals(&world, &vm_dir.join(file), disk);
        }
        let m = json_file(&vm_dir.join("manifest.json"));
        assert_eq!(m["name"], vm);
        assert!(m["power_state"].is_string() && m["vm_size"].is_string());
        let md = m["disks"].as_array().unwrap();
        assert_eq!(md.len(), disks.len());
        for (d, (_, file)) in md.iter().zip(&disks) {
            assert_eq!(d["status"], "done", "{d}");
            assert_eq!(d["image"], *file);
            assert_eq!(d["format"], "qcow2");
            assert_eq!(d["virtual_size"], 4 << 20);
            assert!(d["bytes_downloaded"].as_u64().unwrap() > 0);
            assert!(d["error"].is_null());
        }
        let xml_path = vm_dir.join("domain.xml");
        validate_domain(&xml_path);
        let xml = std::fs::read_to_string(&xml_path).unwrap();
        // OS disk first, then LUN order.
        let positions: Vec<usize> = disks
            .iter()
            .map(|(_, f)| xml.find(f).unwrap_or_else(|| panic!("{f} not in domain")))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
        assert_eq!(vm == "win-01", xml.contains("firmware='efi'"), "{xml}");
    }
    // The failed VM has a manifest that says why, and no domain.
    let m = json_file(&out.join("old-01/manifest.json"));
    assert_eq!(m["disks"][0]["status"], "failed");
    assert!(
        m["disks"][0]["error"]
            .as_str()
            .unwrap()
            .contains("unmanaged")
    );
    assert!(!out.join("old-01/domain.xml").exists());

    let rep = report(&out);
    assert_eq!(rep["status"], "partial");
    assert_eq!(rep["disks"].as_array().unwrap().len(), 6);
    let resources = rep["resources"].as_array().unwrap();
    // 4 snapshots, 5 grants (4 on snapshots, 1 on db-01's disk), all removed.
    assert_eq!(resources.len(), 9, "{resources:?}");
    assert!(
        resources.iter().all(|r| r["state"] == "removed"),
        "{resources:?}"
    );
}
