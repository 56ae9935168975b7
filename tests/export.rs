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
