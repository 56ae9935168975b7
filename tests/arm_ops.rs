//! The ARM operations the export work will call, against the fake: snapshot create/get/
//! delete, grant/revoke access on disks and snapshots, power off and deallocate — the
//! long-running-operation poller with both polling styles, failures and ARM error bodies.

mod support;

use std::collections::BTreeMap;

use azure2kvm::azure::arm::ArmError;
use azure2kvm::azure::arm::ResourceId;
use azure2kvm::azure::arm::client::{AccessTarget, GrantFormat, ResourceRef};
use support::fake_arm::{ArmState, FakeArm, FakeVm, LroHeaders, SAS_SIGNATURE, SUBSCRIPTION};

fn estate() -> ArmState {
    let mut s = ArmState::new();
    s.add_vm(FakeVm::linux("web-01", "rg-web").data_disk(0, 64));
    s.add_vm(FakeVm::linux("db-01", "rg-db").power(Some("deallocated")));
    s
}

fn disk_id(rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}"
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn snapshot_grant_revoke_delete_leaves_nothing() {
    for headers in [
        LroHeaders::Both,
        LroHeaders::AsyncOperation,
        LroHeaders::Location,
    ] {
        let mut s = estate();
        s.config.lro_headers = headers;
        s.config.lro_polls = 2;
        let fake = FakeArm::start(s);
        let arm = support::arm_client(&fake);
        rt().block_on(async {
            let snap = ResourceRef::new(SUBSCRIPTION, "rg-web", "web-01-os-a2k-run1");
            let mut tags = BTreeMap::new();
            tags.insert("azure2kvm-run".to_string(), "run1".to_string());
            let created = arm
                .create_snapshot(
                    &snap,
                    "westeurope",
                    &disk_id("rg-web", "web-01-os"),
                    false,
                    &tags,
                )
                .await
                .unwrap();
            assert_eq!(created.name, "web-01-os-a2k-run1");
            assert_eq!(
                created.properties.unwrap().provisioning_state.as_deref(),
                Some("Succeeded")
            );
            assert_eq!(
                arm.get_snapshot(&snap).await.unwrap().tags.unwrap()["azure2kvm-run"],
                "run1"
            );

            let target = AccessTarget::Snapshot(snap.clone());
            let sas = arm
                .grant_access(&target, 3600, GrantFormat::Vhd)
                .await
                .unwrap();
            assert!(sas.expose().as_str().contains(SAS_SIGNATURE));
            assert!(!format!("{sas} {sas:?}").contains(SAS_SIGNATURE));
            assert_eq!(fake.with_state(|s| s.leftovers().grants.len()), 1);

            // Azure refuses to delete a snapshot with an active SAS.
            let err = arm.delete_snapshot(&snap).await.unwrap_err();
            assert_eq!(err.status(), Some(409), "{err}");
            assert!(err.to_string().contains("OperationNotAllowed"), "{err}");

            arm.revoke_access(&target).await.unwrap();
            arm.delete_snapshot(&snap).await.unwrap();
            // Twice is fine: cleanup may run again after an interruption.
            arm.delete_snapshot(&snap).await.unwrap();
        });
        assert_eq!(
            fake.with_state(|s| s.leftovers()),
            Default::default(),
            "{headers:?}"
        );
        let c = fake.counts();
        assert!(c["operation_poll"] >= 8, "{headers:?} {c:?}");
    }
}

#[test]
fn disk_grant_needs_a_deallocated_vm() {
    let fake = FakeArm::start(estate());
    let arm = support::arm_client(&fake);
    rt().block_on(async {
        let running = AccessTarget::Disk(ResourceRef::new(SUBSCRIPTION, "rg-web", "web-01-os"));
        let err = arm.grant_access(&running, 600, GrantFormat::Vhd).await.unwrap_err();
        assert!(matches!(&err, ArmError::Service { error, .. } if error.code.as_deref() == Some("OperationNotAllowed")), "{err}");
        assert!(err.to_string().contains("grant access rg-web/web-01-os"), "{err}");

        let vm = ResourceRef::new(SUBSCRIPTION, "rg-web", "web-01");
        arm.power_off(&vm).await.unwrap();
        let v = arm.get_vm(&vm, true).await.unwrap();
        assert_eq!(v.power_state().as_str(), "stopped");
        // Stopped is still allocated.
        assert!(arm.grant_access(&running, 600, GrantFormat::Vhd).await.is_err());
        arm.deallocate(&vm).await.unwrap();
        assert_eq!(arm.get_vm(&vm, true).await.unwrap().power_state().as_str(), "deallocated");
        let sas = arm.grant_access(&running, 600, GrantFormat::Vhd).await.unwrap();
        assert!(sas.has_sas());
        arm.revoke_access(&running).await.unwrap();
    });
    assert_eq!(fake.with_state(|s| s.leftovers()), Default::default());
}

#[test]
fn failed_operation_reports_the_arm_error() {
    let mut s = estate();
    s.config.lro_fail = Some((
        "InternalDiskManagementError".into(),
        "An internal disk management error occurred.".into(),
    ));
    let fake = FakeArm::start(s);
    let arm = support::arm_client(&fake);
    let err = rt().block_on(async {
        let snap = ResourceRef::new(SUBSCRIPTION, "rg-db", "db-snap");
        arm.create_snapshot(
            &snap,
            "westeurope",
            &disk_id("rg-db", "db-01-os"),
            true,
            &BTreeMap::new(),
        )
        .await
        .unwrap_err()
    });
    assert_eq!(
        err.to_string(),
        "create snapshot rg-db/db-snap: operation Failed: InternalDiskManagementError: An internal disk management error occurred."
    );
}

#[test]
fn request_errors_map_with_context() {
    let fake = FakeArm::start(estate());
    let arm = support::arm_client(&fake);
    rt().block_on(async {
        let err = arm
            .get_disk(&ResourceRef::new(SUBSCRIPTION, "rg-web", "nope"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("get disk rg-web/nope: HTTP 404 ResourceNotFound"),
            "{text}"
        );
        assert!(text.contains("x-ms-request-id fake-req-"), "{text}");
        let bad = ResourceRef::new(SUBSCRIPTION, "rg-web", "-bad-");
        let err = arm
            .create_snapshot(
                &bad,
                "westeurope",
                &disk_id("rg-web", "web-01-os"),
                false,
                &BTreeMap::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400), "{err}");
        let disk = arm
            .get_disk(&ResourceRef::from(
                &(disk_id("RG-WEB", "WEB-01-DATA0"))
                    .parse::<ResourceId>()
                    .unwrap(),
            ))
            .await
            .unwrap();
        assert_eq!(disk.properties.unwrap().disk_size_gb, Some(64));
    });
    let stats = arm.stats();
    assert_eq!(
        stats
            .by_operation()
            .iter()
            .find(|(o, _)| *o == "get disk")
            .map(|x| x.1),
        Some(2)
    );
}

#[test]
fn tag_values_over_256_characters_are_refused_as_azure_does() {
    let fake = FakeArm::start(estate());
    let arm = support::arm_client(&fake);
    let snap = ResourceRef::new(SUBSCRIPTION, "rg-web", "tagged");
    let create = |value: String| {
        let tags = BTreeMap::from([("azure2kvm-source".to_string(), value)]);
        let arm = arm.clone();
        let snap = snap.clone();
        async move {
            arm.create_snapshot(
                &snap,
                "westeurope",
                &disk_id("rg-web", "web-01-os"),
                false,
                &tags,
            )
            .await
        }
    };
    rt().block_on(async {
        let err = create("v".repeat(257)).await.unwrap_err();
        assert_eq!(err.status(), Some(400), "{err}");
        assert!(err.to_string().contains("InvalidTagValueLength"), "{err}");
        assert!(create("v".repeat(256)).await.is_ok());
    });
    assert_eq!(fake.with_state(|s| s.snapshots.len()), 1);
}
