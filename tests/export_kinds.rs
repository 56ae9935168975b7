//! Issue 12, disk kinds 3, 4, 5 and 7 end to end against the fake ARM + Azurite: ephemeral
//! OS disks (no managed disk: unsupported by name), shared disks (exported once, every VM
//! refers to one image), disks that require Entra ID for export (the SAS plus a
//! disk.azure.com token; the missing role is named) and encrypted content (ADE noted with
//! its Key Vault, confidential VM disks refused unless --allow-encrypted, server-side
//! encryption silent). The fake answers each as Azure's REST reference shows it.

mod support;

use std::path::Path;

use serde_json::Value;
use support::fake_arm::{ArmState, FakeDiskKind, FakeVm, Leftovers};
use support::fake_azure::{FakeAzure, small_disk};
use support::image::assert_image_equals;
use support::tools::validate_domain;
use support::{Run, azure_cmd, run};

const DISK_TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.fake-disk-audience-token.sig";
const VAULT: &str = "https://kv-ade.vault.azure.net/";

fn export(world: &FakeAzure, out: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--output-dir", out.to_str().unwrap()];
    all.extend_from_slice(args);
    run(azure_cmd(world, "export", &all))
}

fn json_file(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn list_json(world: &FakeAzure) -> Vec<Value> {
    let r = run(azure_cmd(world, "list", &["--output", "json"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

fn vm_disks<'a>(vms: &'a [Value], name: &str) -> &'a Vec<Value> {
    vms.iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VM {name}"))["disks"]
        .as_array()
        .unwrap()
}

fn ephemeral() -> FakeDiskKind {
    FakeDiskKind {
        ephemeral: true,
        ..Default::default()
    }
}

#[test]
fn an_ephemeral_os_disk_is_unsupported_by_name_and_data_disks_still_export() {
    let vm = FakeVm::linux("eph-01", "rg-eph")
        .data_disk(0, 64)
        .disk_kind(None, ephemeral());
    let world = FakeAzure::start(vec![vm]);
    let vms = list_json(&world);
    let disks = vm_disks(&vms, "eph-01");
    assert_eq!(disks[0]["ephemeral"], true, "{disks:?}");
    assert_eq!(disks[1]["ephemeral"], false);
    let table = run(azure_cmd(&world, "list", &[]));
    assert!(table.stdout.contains("os:ephemeral"), "{}", table.stdout);

    let dry = run(azure_cmd(&world, "export", &["--dry-run"]));
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let plan: Value = serde_json::from_str(&dry.stdout).unwrap();
    let vm = &plan["vms"][0];
    // The refused disk stays in the plan, marked (as every disk refused by kind is).
    assert_eq!(vm["disks"].as_array().unwrap().len(), 2, "{vm}");
    assert_eq!(vm["disks"][0]["role"], "os");
    assert_eq!(vm["disks"][0]["refused"]["reason"], "ephemeral", "{vm}");
    assert!(vm["disks"][1].get("refused").is_none());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &[]);
    assert_eq!(
        r.code, 3,
        "the OS disk is not exported: exit 3\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("unsupported: ephemeral OS disk"),
        "{}",
        r.stderr
    );
    assert_image_equals(
        &world,
        &out.join("eph-01/eph-01-data-lun0.qcow2"),
        "eph-01-data0",
    );
    let m = json_file(&out.join("eph-01/manifest.json"));
    assert_eq!(m["disks"][0]["status"], "unsupported");
    assert_eq!(m["disks"][0]["reason"], "unsupported: ephemeral OS disk");
    assert_eq!(m["disks"][1]["status"], "done");
    assert!(!out.join("eph-01/domain.xml").exists(), "nothing to boot");
    let report = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
        .unwrap();
    let rows = json_file(&report)["disks"].as_array().unwrap().clone();
    let os_row = rows.iter().find(|r| r["role"] == "os").unwrap();
    assert_eq!(os_row["status"], "unsupported", "{rows:?}");
    assert_eq!(json_file(&report)["status"], "partial");
    assert_eq!(world.leftovers(), Leftovers::default());

    // Only data disks asked for: the ephemeral OS disk is not mentioned at all.
    let out = dir.path().join("data-only");
    let r = export(&world, &out, &["--disks", "data"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("ephemeral"), "{}", r.stderr);
    let m = json_file(&out.join("eph-01/manifest.json"));
    assert_eq!(m["disks"][0]["status"], "not_selected");
}

#[test]
fn a_shared_disk_is_exported_once_and_both_domains_share_its_image() {
    let a = FakeVm::linux("node-a", "rg-clu")
        .data_disk(1, 64)
        .disk_kind(
            Some(1),
            FakeDiskKind {
                max_shares: Some(2),
                ..Default::default()
            },
        );
    let shared = a.disks[1].clone();
    let b = FakeVm::linux("node-b", "rg-clu").attach(2, &shared);
    let world = FakeAzure::start(vec![a, b]);
    let vms = list_json(&world);
    assert_eq!(vm_disks(&vms, "node-a")[1]["max_shares"], 2);
    assert_eq!(vm_disks(&vms, "node-b")[1]["max_shares"], 2);
    assert!(vm_disks(&vms, "node-a")[0]["max_shares"].is_null());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &["--format", "raw"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());
    // Two OS disks and the shared disk once: three snapshots, three grants.
    let counts = world.arm.counts();
    assert_eq!(counts.get("snapshot_create"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("grant_access"), Some(&3), "{counts:?}");

    let image = out.join("shared-disks/node-a-data1.rg-clu.raw");
    assert_image_equals(&world, &image, "node-a-data1");
    let image = image.canonicalize().unwrap();
    for (vm, lun) in [("node-a", 1), ("node-b", 2)] {
        let m = json_file(&out.join(vm).join("manifest.json"));
        let d = m["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["lun"] == lun)
            .unwrap();
        assert_eq!(d["image"], "../shared-disks/node-a-data1.rg-clu.raw", "{d}");
        assert_eq!(d["status"], "done", "{d}");
        assert_eq!(d["max_shares"], 2);
        assert!(out.join(vm).join(d["image"].as_str().unwrap()).exists());
        let xml_path = out.join(vm).join("domain.xml");
        validate_domain(&xml_path);
        let xml = std::fs::read_to_string(&xml_path).unwrap();
        assert!(xml.contains(&image.display().to_string()), "{xml}");
        assert_eq!(xml.matches("<shareable/>").count(), 1, "{xml}");
    }
    let m = json_file(&out.join("node-b/manifest.json"));
    assert_eq!(m["disks"][1]["exported_with"], "node-a");
    assert!(!out.join("node-b/node-b-data-lun2.raw").exists());
}

fn entra_world(data_operator: bool) -> FakeAzure {
    let mut state = ArmState::new();
    state.config.disk_token = Some(DISK_TOKEN.into());
    state.config.disk_data_operator = data_operator;
    let kind = FakeDiskKind {
        entra_export: true,
        ..Default::default()
    };
    FakeAzure::start_with(
        state,
        vec![
            FakeVm::linux("aad-01", "rg-aad").disk_kind(None, kind.clone()),
            FakeVm::linux("aad-02", "rg-aad")
                .power(Some("deallocated"))
                .disk_kind(None, kind),
        ],
        |d| small_disk(&d.name),
    )
}

#[test]
fn a_disk_that_requires_entra_id_is_read_with_the_sas_and_a_disk_token() {
    let world = entra_world(true);
    let vms = list_json(&world);
    assert_eq!(
        vm_disks(&vms, "aad-01")[0]["data_access_auth_mode"],
        "AzureActiveDirectory"
    );

    // As Azure: the SAS alone is refused, with a challenge naming the disk audience.
    let arm = support::arm_client(&world.arm);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target = azure2kvm::azure::arm::client::AccessTarget::Disk(
        azure2kvm::azure::arm::client::ResourceRef::new(
            support::fake_arm::SUBSCRIPTION,
            "rg-aad",
            "aad-02-os",
        ),
    );
    let sas = rt
        .block_on(arm.grant_access(
            &target,
            600,
            azure2kvm::azure::arm::client::GrantFormat::Vhd,
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let o = support::download(sas.expose().as_str(), &dir.path().join("x.raw"), &[]);
    assert!(!o.status.success(), "a SAS alone must be refused");
    assert!(
        support::stderr(&o).contains("401"),
        "{}",
        support::stderr(&o)
    );
    rt.block_on(arm.revoke_access(&target)).unwrap();

    // Snapshot (aad-01, running) and direct (aad-02, deallocated): both read with a token.
    let out = dir.path().join("out");
    let r = export(&world, &out, &["-vv"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &out.join("aad-01/aad-01-os.qcow2"), "aad-01-os");
    assert_image_equals(&world, &out.join("aad-02/aad-02-os.qcow2"), "aad-02-os");
    assert_eq!(world.leftovers(), Leftovers::default());
    let mut texts = vec![r.stdout.clone(), r.stderr.clone()];
    for vm in ["aad-01", "aad-02"] {
        texts.push(std::fs::read_to_string(out.join(vm).join("manifest.json")).unwrap());
    }
    for t in &texts {
        assert!(!t.contains(DISK_TOKEN), "the disk token leaked");
        assert!(!t.contains("fake-disk-audience"), "the disk token leaked");
    }
}

#[test]
fn without_the_data_operator_role_the_error_names_it() {
    let world = entra_world(false);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &["--name", "aad-02"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("Data Operator for Managed Disks"),
        "{}",
        r.stderr
    );
    let m = json_file(&out.join("aad-02/manifest.json"));
    let e = m["disks"][0]["error"].as_str().unwrap();
    assert!(e.contains("Data Operator for Managed Disks"), "{e}");
    assert!(
        e.contains("AuthorizationPermissionMismatch") || e.contains("403"),
        "{e}"
    );
    assert_eq!(world.leftovers(), Leftovers::default());
}

#[test]
fn encrypted_content_is_noted_with_its_vault_or_refused_unless_allowed() {
    let mut ade = FakeVm::linux("ade-01", "rg-enc")
        .data_disk(0, 64)
        .disk_kind(
            Some(0),
            FakeDiskKind {
                ade_vault: Some(VAULT.into()),
                ..Default::default()
            },
        );
    ade.ade_extension = true;
    let cvm = FakeVm::linux("cvm-01", "rg-enc").disk_kind(
        None,
        FakeDiskKind {
            confidential: true,
            ..Default::default()
        },
    );
    // Server-side encryption only (every fake disk has it): nothing to say.
    let plain = FakeVm::linux("sse-01", "rg-enc");
    let world = FakeAzure::start(vec![ade, cvm, plain]);

    let vms = list_json(&world);
    let ade_disks = vm_disks(&vms, "ade-01");
    assert_eq!(ade_disks[0]["encryption"]["kind"], "azure_disk_encryption");
    assert!(ade_disks[0]["encryption"]["key_vault_url"].is_null());
    assert_eq!(ade_disks[1]["encryption"]["key_vault_url"], VAULT);
    assert_eq!(
        vm_disks(&vms, "cvm-01")[0]["encryption"]["kind"],
        "confidential_vm"
    );
    assert!(vm_disks(&vms, "sse-01")[0]["encryption"].is_null());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(&world, &out, &[]);
    assert_eq!(r.code, 3, "the confidential disk is refused\n{}", r.stderr);
    assert!(r.stderr.contains("DiskWithVMGuestState"), "{}", r.stderr);
    assert!(r.stderr.contains("--allow-encrypted"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("Key Vault {VAULT}")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("sse-01: disk"), "{}", r.stderr);
    let m = json_file(&out.join("ade-01/manifest.json"));
    assert_eq!(m["disks"][0]["status"], "done");
    assert!(
        m["disks"][0]["notes"][0]
            .as_str()
            .unwrap()
            .contains("Key Vault")
    );
    assert!(m["disks"][1]["notes"][0].as_str().unwrap().contains(VAULT));
    assert_image_equals(
        &world,
        &out.join("ade-01/ade-01-data-lun0.qcow2"),
        "ade-01-data0",
    );
    let m = json_file(&out.join("cvm-01/manifest.json"));
    assert_eq!(m["disks"][0]["status"], "refused");
    assert!(
        m["disks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("DiskWithVMGuestState")
    );
    assert!(!out.join("cvm-01/cvm-01-os.qcow2").exists());
    let m = json_file(&out.join("sse-01/manifest.json"));
    assert!(m["disks"][0]["notes"].is_null() && m["disks"][0]["encryption"].is_null());
    assert_eq!(world.leftovers(), Leftovers::default());

    let out = dir.path().join("allowed");
    let r = export(&world, &out, &["--name", "cvm-01", "--allow-encrypted"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_image_equals(&world, &out.join("cvm-01/cvm-01-os.qcow2"), "cvm-01-os");
    let m = json_file(&out.join("cvm-01/manifest.json"));
    assert!(
        m["disks"][0]["notes"][0]
            .as_str()
            .unwrap()
            .contains("--allow-encrypted")
    );
}
