//! VM kinds beyond plain x86 VMs, end to end against the fake ARM (and Azurite for
//! exports): Arm64 VMs, Trusted Launch VMs, and instances of Uniform scale sets. Each is
//! shown by `list`, described by `export --dry-run`, exported with its images, and recorded
//! in the manifest and the domain (checked by virt-xml-validate).

mod support;

use std::path::Path;

use serde_json::Value;
use support::fake_arm::{ArmState, FakeArm, FakeScaleSet, FakeVm, Leftovers, SUBSCRIPTION};
use support::fake_azure::FakeAzure;
use support::image::assert_image_equals;
use support::tools::validate_domain;
use support::{Run, azure_cmd, list_cmd, run};

const SCALE_SET: &str = "web-ss";

/// One of each kind, plus an ordinary VM and a Flexible scale set (whose members are
/// ordinary VMs: its instance list must never be asked for).
fn kinds() -> Vec<FakeVm> {
    vec![
        FakeVm::linux("plain-01", "rg-k"),
        FakeVm::linux("arm-01", "rg-k").arm64(),
        FakeVm::windows_gen2("tl-01", "rg-k")
            .trusted_launch(true, true)
            .power(Some("deallocated")),
        FakeVm::linux("tl-02", "rg-k").trusted_launch(false, false),
        FakeVm::linux("x", "rg-k")
            .data_disk(1, 8)
            .in_uniform_scale_set(SCALE_SET, "3"),
    ]
}

fn flexible(s: &mut ArmState) {
    s.scale_sets.push(FakeScaleSet {
        name: "flex-ss".into(),
        resource_group: "rg-k".into(),
        location: "westeurope".into(),
        uniform: false,
    });
}

fn by_name<'a>(vms: &'a [Value], name: &str) -> &'a Value {
    vms.iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {vms:?}"))
}

fn json(r: &Run) -> Value {
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

#[test]
fn list_shows_architecture_trusted_launch_and_uniform_instances() {
    let mut state = ArmState::new();
    flexible(&mut state);
    for vm in kinds() {
        state.add_vm(vm);
    }
    let fake = FakeArm::start(state);
    let v = json(&run(list_cmd(
        &fake,
        &["--output", "json", "--no-progress"],
    )));
    let vms = v.as_array().unwrap();
    assert_eq!(vms.len(), 5, "{v}");

    let arm = by_name(vms, "arm-01");
    assert_eq!(arm["architecture"], "arm64");
    assert_eq!(arm["vm_size"], "Standard_D4ps_v5");
    assert_eq!(
        (arm["vcpus"].as_u64(), arm["memory_mib"].as_u64()),
        (Some(4), Some(16384))
    );
    let plain = by_name(vms, "plain-01");
    assert_eq!(plain["architecture"], "x64");
    assert!(plain["security_type"].is_null() && plain["scale_set"].is_null());

    let tl = by_name(vms, "tl-01");
    assert_eq!(tl["security_type"], "TrustedLaunch");
    assert_eq!(
        (tl["secure_boot"].as_bool(), tl["vtpm"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(tl["power_state"], "deallocated");
    let tl2 = by_name(vms, "tl-02");
    assert_eq!(
        (tl2["secure_boot"].as_bool(), tl2["vtpm"].as_bool()),
        (Some(false), Some(false))
    );

    // The Uniform instance: listed with its scale set, power state from its instance view,
    // size from its sku, disks from its storage profile.
    let inst = by_name(vms, "web-ss_3");
    assert_eq!(
        inst["id"],
        format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-k/providers/Microsoft.Compute/virtualMachineScaleSets/{SCALE_SET}/virtualMachines/3"
        )
    );
    assert_eq!(
        inst["scale_set"],
        format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-k/providers/Microsoft.Compute/virtualMachineScaleSets/{SCALE_SET}"
        )
    );
    assert_eq!(inst["power_state"], "running");
    assert_eq!(inst["vm_size"], "Standard_D2s_v5");
    assert_eq!(inst["hyperv_generation"], "V1");
    assert_eq!(inst["disks"].as_array().unwrap().len(), 2);
    assert_eq!(inst["disks"][1]["size_gb"], 8);
    let counts = fake.counts();
    assert_eq!(counts.get("list_scale_sets"), Some(&1), "{counts:?}");
    // Only the Uniform scale set's instances are listed.
    assert_eq!(counts.get("list_scale_set_vms"), Some(&1), "{counts:?}");

    // The table says it in the KIND column.
    let r = run(list_cmd(&fake, &["--no-progress"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = |n: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_else(|| panic!("{n} in {}", r.stdout))
            .to_string()
    };
    assert!(r.stdout.lines().next().unwrap().contains("KIND"));
    assert!(line("arm-01").contains(" arm64 "), "{}", line("arm-01"));
    assert!(line("tl-01").contains("x64 TrustedLaunch(sb,vtpm)"));
    assert!(line("tl-02").contains("x64 TrustedLaunch "));
    assert!(line("web-ss_3").contains("x64 vmss:web-ss"));
    assert!(line("plain-01").contains(" x64 "));

    // Named exactly with its group, an instance is found under its scale set.
    let v = json(&run(list_cmd(
        &fake,
        &[
            "--output",
            "json",
            "--no-progress",
            "--name",
            "web-ss_3",
            "--resource-group",
            "rg-k",
        ],
    )));
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["scale_set"], inst["scale_set"]);
    assert_eq!(fake.counts().get("get_scale_set_vm"), Some(&1));
    // A name shaped like an instance but matching none stays not found.
    let v = json(&run(list_cmd(
        &fake,
        &[
            "--output",
            "json",
            "--no-progress",
            "--name",
            "web-ss_9",
            "--resource-group",
            "rg-k",
        ],
    )));
    assert_eq!(v, serde_json::json!([]));
}

#[test]
fn scale_sets_the_role_may_not_read_leave_the_vms_listed_with_a_warning() {
    let mut state = ArmState::new();
    for vm in kinds() {
        state.add_vm(vm);
    }
    state.config.scale_sets_forbidden = true;
    let fake = FakeArm::start(state);
    let r = run(list_cmd(&fake, &["--output", "json", "--no-progress"]));
    let v = json(&r);
    assert_eq!(v.as_array().unwrap().len(), 4, "{v}");
    assert!(
        r.stderr.contains("virtualMachineScaleSets/read")
            && r.stderr
                .contains("instances of Uniform scale sets are not listed"),
        "{}",
        r.stderr
    );
    // Allowed again: the instance is back.
    fake.with_state(|s| s.config.scale_sets_forbidden = false);
    let ok = run(list_cmd(&fake, &["--output", "json", "--no-progress"]));
    assert_eq!(json(&ok).as_array().unwrap().len(), 5);
}

fn export(world: &FakeAzure, out: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--output-dir", out.to_str().unwrap()];
    all.extend_from_slice(args);
    run(azure_cmd(world, "export", &all))
}

fn json_file(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn dry_run_says_what_each_kind_becomes_and_refuses_deallocating_an_instance() {
    let world = FakeAzure::start(kinds());
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let r = run(azure_cmd(
        &world,
        "export",
        &["--dry-run", "--plan", plan.to_str().unwrap()],
    ));
    let v = json(&r);
    let vms = v["vms"].as_array().unwrap();
    let guest = |n: &str| by_name(vms, n)["guest"].clone();
    let warnings = |n: &str| by_name(vms, n)["warnings"].to_string();
    assert_eq!(
        guest("arm-01"),
        serde_json::json!({"arch": "aarch64", "machine": "virt", "firmware": "uefi", "secure_boot": false, "tpm": false})
    );
    assert!(warnings("arm-01").contains("aarch64"));
    assert_eq!(
        guest("tl-01"),
        serde_json::json!({"arch": "x86_64", "machine": "q35", "firmware": "uefi", "secure_boot": true, "tpm": true})
    );
    assert!(
        warnings("tl-01").contains("recovery key"),
        "{}",
        warnings("tl-01")
    );
    assert_eq!(guest("tl-02")["secure_boot"], false);
    assert!(warnings("tl-02").contains("guest state"));
    assert_eq!(guest("plain-01")["firmware"], "bios");
    assert_eq!(by_name(vms, "plain-01")["warnings"], serde_json::json!([]));
    let inst = by_name(vms, "web-ss_3");
    assert_eq!(inst["consistency"], "snapshot");
    assert_eq!(inst["disks"][0]["source"]["kind"], "snapshot");
    assert!(warnings("web-ss_3").contains("Uniform scale set"));
    // The plan file keeps the kinds (read back by a later export).
    let p = json_file(&plan);
    let planned = p.as_array().unwrap();
    assert_eq!(by_name(planned, "arm-01")["architecture"], "arm64");
    assert_eq!(
        by_name(planned, "web-ss_3")["scale_set"],
        by_name(planned, "web-ss_3")["scale_set"]
    );
    assert!(by_name(planned, "web-ss_3")["scale_set"].is_string());

    // Deallocating one instance of a Uniform scale set is refused, by name, before any write.
    let r = run(azure_cmd(
        &world,
        "export",
        &[
            "--dry-run",
            "--consistency",
            "deallocate",
            "--name",
            "web-ss_*",
        ],
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("web-ss_3") && r.stderr.contains("Uniform scale set"),
        "{}",
        r.stderr
    );
    let counts = world.arm.counts();
    for w in ["snapshot_create", "grant_access", "deallocate", "power_off"] {
        assert_eq!(counts.get(w), None, "{w}: {counts:?}");
    }
}

#[test]
fn export_of_each_kind_gives_images_manifests_and_domains_that_say_what_it_is() {
    let world = FakeAzure::start(kinds());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = export(
        &world,
        &out,
        &["--name", "arm-01", "--name", "tl-*", "--name", "web-ss_3"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(world.leftovers(), Leftovers::default());

    for (vm, disks) in [
        ("arm-01", vec![("arm-01-os", "arm-01-os.qcow2")]),
        ("tl-01", vec![("tl-01-os", "tl-01-os.qcow2")]),
        ("tl-02", vec![("tl-02-os", "tl-02-os.qcow2")]),
        (
            "web-ss_3",
            vec![
                ("web-ss_3-os", "web-ss_3-os.qcow2"),
                ("web-ss_3-data1", "web-ss_3-data-lun1.qcow2"),
            ],
        ),
    ] {
        let vm_dir = out.join(vm);
        for (disk, file) in &disks {
            assert_image_equals(&world, &vm_dir.join(file), disk);
        }
        let m = json_file(&vm_dir.join("manifest.json"));
        assert!(
            m["disks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["status"] == "done"),
            "{m}"
        );
        validate_domain(&vm_dir.join("domain.xml"));
    }
    let manifest = |vm: &str| json_file(&out.join(vm).join("manifest.json"));
    let domain = |vm: &str| std::fs::read_to_string(out.join(vm).join("domain.xml")).unwrap();

    let m = manifest("arm-01");
    assert_eq!(m["architecture"], "arm64");
    assert_eq!(m["guest"]["arch"], "aarch64");
    let xml = domain("arm-01");
    assert!(
        xml.contains(r#"<type arch="aarch64" machine="virt">hvm</type>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<os firmware="efi">"#) && !xml.contains("q35"),
        "{xml}"
    );
    assert!(
        xml.contains(">4</vcpu>") && xml.contains(">16384</memory>"),
        "{xml}"
    );

    let m = manifest("tl-01");
    assert_eq!(m["security_type"], "TrustedLaunch");
    assert_eq!(m["guest"]["tpm"], true);
    assert!(
        m["warnings"].to_string().contains("BitLocker or LUKS"),
        "{m}"
    );
    let xml = domain("tl-01");
    assert!(
        xml.contains(r#"<feature enabled="yes" name="secure-boot"/>"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<feature enabled="yes" name="enrolled-keys"/>"#),
        "{xml}"
    );
    assert!(xml.contains(r#"<tpm model="tpm-crb">"#), "{xml}");
    assert!(
        xml.contains(r#"<backend type="emulator" version="2.0"/>"#),
        "{xml}"
    );

    // Trusted Launch with secure boot and vTPM off: neither in the domain.
    let xml = domain("tl-02");
    assert!(
        xml.contains(r#"<feature enabled="no" name="secure-boot"/>"#),
        "{xml}"
    );
    assert!(!xml.contains("<tpm"), "{xml}");
    assert!(
        manifest("tl-02")["warnings"]
            .to_string()
            .contains("guest state")
    );

    // The scale-set instance: read from snapshots of its disks, recorded with its scale set.
    let m = manifest("web-ss_3");
    assert!(
        m["scale_set"]
            .as_str()
            .unwrap()
            .ends_with("/virtualMachineScaleSets/web-ss")
    );
    assert_eq!(m["consistency"], "snapshot");
    let xml = domain("web-ss_3");
    assert!(
        xml.contains("virtualMachineScaleSets/web-ss/virtualMachines/3"),
        "{xml}"
    );
    let counts = world.arm.counts();
    // tl-01 is deallocated (read directly); the other 4 disks were snapshotted.
    assert_eq!(counts.get("snapshot_create"), Some(&4), "{counts:?}");
}
