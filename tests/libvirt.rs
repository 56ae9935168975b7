//! Every kind of domain definition we write passes libvirt's own schema check.

mod support;

use std::process::Command;

use azure2kvm::export::domain::{DomainDisk, DomainSpec, Firmware, GuestOs, domain_xml};
use azure2kvm::image::sink::ImageFormat;

fn ensure_validator() {
    support::tools::ensure_debian_tool("xmllint", "libxml2-utils");
    support::tools::ensure_debian_tool("virt-xml-validate", "libvirt-clients");
}

fn validate(xml: &str, name: &str) {
    ensure_validator();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.xml"));
    std::fs::write(&path, xml).unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} fails virt-xml-validate: {}{}\n{xml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn domains_pass_virt_xml_validate() {
    let cases = [
        (
            "linux-gen1-one-disk",
            Firmware::Bios,
            GuestOs::Linux,
            1,
            ImageFormat::Qcow2,
        ),
        (
            "windows-gen2-three-disks",
            Firmware::Uefi,
            GuestOs::Windows,
            3,
            ImageFormat::Raw,
        ),
        (
            "unknown-os-30-disks",
            Firmware::Uefi,
            GuestOs::Unknown,
            30,
            ImageFormat::Qcow2,
        ),
    ];
    for (name, firmware, os, disks, format) in cases {
        let spec = DomainSpec {
            name: format!("vm-{name}_v1.2"),
            azure_id: format!(
                "/subscriptions/0000/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/{name}"
            ),
            vm_size: "Standard_E4s_v5".into(),
            vcpus: 4,
            memory_mib: 32768,
            firmware,
            os,
            disks: (0..disks)
                .map(|i| DomainDisk {
                    path: format!("/var/lib/azure2kvm/{name}/disk {i}&x.img").into(),
                    format,
                })
                .collect(),
        };
        validate(&domain_xml(&spec), name);
    }
}

#[test]
fn validator_rejects_a_broken_domain() {
    // The oracle must say yes to a minimal valid domain and no to a broken one, or the
    // test above proves nothing (a missing xmllint also makes it fail everything).
    ensure_validator();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.xml");
    std::fs::write(
        &good,
        "<domain type='kvm'><name>x</name><memory>1024</memory><os><type>hvm</type></os></domain>",
    )
    .unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(&good)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.path().join("bad.xml");
    std::fs::write(
        &path,
        "<domain type='kvm'><name>x</name><vcpu>two</vcpu></domain>",
    )
    .unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
