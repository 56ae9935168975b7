//! Every kind of domain definition we write passes libvirt's own schema check.

mod support;

use std::process::Command;

use azure2kvm::export::domain::{
    Arch, DomainDisk, DomainSpec, Firmware, GuestOs, domain_xml, libvirt_name,
};
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
            secure_boot: false,
            arch: Arch::X86_64,
            tpm: false,
            os,
            disks: (0..disks)
                .map(|i| DomainDisk {
                    path: format!("/var/lib/azure2kvm/{name}/disk {i}&x.img").into(),
                    format,
                    // The second disk an Azure shared disk: the schema must take it.
                    shareable: i == 1,
                    // The second disk has 4 KiB sectors: its <blockio> must validate too.
                    logical_sector_size: if i == 1 { 4096 } else { 512 },
                })
                .collect(),
        };
        validate(&domain_xml(&spec), name);
    }
}

/// Arm64 (aarch64 on `virt`) and Trusted Launch (secure boot, emulated TPM 2.0) domains,
/// for Linux and Windows: the elements they add or leave out keep the schema satisfied.
#[test]
fn arm64_and_trusted_launch_domains_pass_virt_xml_validate() {
    for (name, arch, secure_boot, tpm, os) in [
        ("arm64-linux", Arch::Aarch64, false, false, GuestOs::Linux),
        (
            "arm64-windows-tpm",
            Arch::Aarch64,
            true,
            true,
            GuestOs::Windows,
        ),
        ("tl-linux", Arch::X86_64, true, true, GuestOs::Linux),
        (
            "tl-windows-no-tpm",
            Arch::X86_64,
            true,
            false,
            GuestOs::Windows,
        ),
    ] {
        let spec = DomainSpec {
            arch,
            secure_boot,
            tpm,
            os,
            ..odd_spec(name)
        };
        let xml = domain_xml(&spec);
        assert_eq!(xml.contains("<tpm "), tpm, "{name}: {xml}");
        validate(&xml, name);
    }
}

/// Names with one of every class of odd character: C0 controls (NUL, BEL, ESC), the three
/// whitespace controls, DEL and C1, markup characters, non-ASCII (two- to four-byte
/// UTF-8), slashes, Unicode non-characters XML cannot carry, spaces, dot names.
const ODD_NAMES: &[&str] = &[
    "nul\0here",
    "bell\u{7}esc\u{1b}del\u{7f}",
    "tab\tnewline\ncr\r",
    "c1\u{85}\u{9f}",
    "markup<b>&amp;'\"",
    "non-ascii-ünïcødé-名前-🖥",
    "slash/and\\backslash",
    "nonchar\u{fffe}\u{ffff}",
    " spaces  inside ",
    "",
    ".",
    "..",
];

fn odd_spec(odd: &str) -> DomainSpec {
    DomainSpec {
        name: odd.to_string(),
        azure_id: format!(
            "/subscriptions/0000/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/{odd}"
        ),
        vm_size: format!("size-{odd}"),
        vcpus: 1,
        memory_mib: 512,
        firmware: Firmware::Uefi,
        secure_boot: false,
        arch: Arch::X86_64,
        tpm: false,
        os: GuestOs::Linux,
        disks: vec![DomainDisk {
            path: format!("/var/lib/azure2kvm/{odd}/os.qcow2").into(),
            format: ImageFormat::Qcow2,
            shareable: false,
            logical_sector_size: 4096,
        }],
    }
}

/// What libxml2 reads at `xpath` in `file`.
fn xpath(file: &std::path::Path, xpath: &str) -> String {
    let out = Command::new("xmllint")
        .args(["--xpath", xpath])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xmllint {xpath}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut s = String::from_utf8(out.stdout).unwrap();
    // xmllint ends what it prints with one newline of its own.
    assert_eq!(s.pop(), Some('\n'));
    s
}

#[test]
fn odd_names_give_valid_domains_that_libxml2_reads_back() {
    ensure_validator();
    let dir = tempfile::tempdir().unwrap();
    for (i, odd) in ODD_NAMES.iter().enumerate() {
        let xml = domain_xml(&odd_spec(odd));
        validate(&xml, &format!("odd-{i}"));
        let file = dir.path().join(format!("odd-{i}.xml"));
        std::fs::write(&file, &xml).unwrap();
        assert_eq!(
            xpath(&file, "string(/domain/name)"),
            libvirt_name(odd),
            "{odd:?}"
        );
        // Ids keep tabs and newlines exactly (character references survive normalisation).
        assert_eq!(
            xpath(&file, "string(/domain/metadata/*/@size)"),
            format!("size-{odd}").replace(
                |c: char| c < ' ' && !"\t\n\r".contains(c) || c == '\u{fffe}' || c == '\u{ffff}',
                "\u{fffd}"
            ),
            "{odd:?}"
        );
        // Paths keep every character XML 1.0 and libvirt's path pattern can carry.
        let kept: String = odd
            .chars()
            .map(|c| match c {
                '\0'..='\u{8}' | '\n'..='\r' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}' => {
                    '\u{fffd}'
                }
                c => c,
            })
            .collect();
        assert_eq!(
            xpath(&file, "string(/domain/devices/disk/source/@file)"),
            format!("/var/lib/azure2kvm/{kept}/os.qcow2"),
            "{odd:?}"
        );
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

fn qemu_argv(name: &str) -> String {
    let out = support::libvirt::virsh(&["domxml-to-native", "qemu-argv", "--domain", name]);
    assert!(
        out.status.success(),
        "domxml-to-native {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// libvirt's own checks go beyond the schema: a domain with both `<os><boot dev>` and a
/// per-device boot order validates and is refused by `virsh define`. Every kind of
/// domain we write is defined in a real libvirt, and UEFI ones get the firmware asked for.
#[test]
fn libvirt_defines_our_domains_with_the_firmware_asked_for() {
    let _daemon = support::libvirt::Libvirtd::start();
    let dir = tempfile::tempdir().unwrap();
    // (name suffix, firmware, secure boot, the OVMF code file libvirt must pick)
    let cases = [
        ("gen1", Firmware::Bios, false, None),
        (
            "gen2",
            Firmware::Uefi,
            false,
            Some("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        ),
        (
            "gen2-tl",
            Firmware::Uefi,
            true,
            Some("/usr/share/OVMF/OVMF_CODE_4M.ms.fd"),
        ),
    ];
    for (suffix, firmware, secure_boot, ovmf) in cases {
        let name = format!("azure2kvm-test-{suffix}-{}", std::process::id());
        let spec = DomainSpec {
            name: name.clone(),
            firmware,
            secure_boot,
            ..odd_spec("x")
        };
        let file = dir.path().join(format!("{suffix}.xml"));
        std::fs::write(&file, domain_xml(&spec)).unwrap();
        let _defined = support::libvirt::Defined::define(&file, &name)
            .unwrap_or_else(|e| panic!("libvirt refuses {suffix}: {e}"));
        let argv = qemu_argv(&name);
        assert!(argv.contains("\"bootindex\":1"), "{argv}");
        match ovmf {
            Some(code) => assert!(
                argv.contains(&format!("\"filename\":\"{code}\"")),
                "{suffix}: {argv}"
            ),
            None => assert!(!argv.contains("OVMF"), "{argv}"),
        }
    }
    // Trusted Launch with a vTPM: libvirt takes the emulated TPM 2.0 (swtpm is needed only
    // to start the domain) and keeps it as written.
    let name = format!("azure2kvm-test-gen2-tl-tpm-{}", std::process::id());
    let spec = DomainSpec {
        name: name.clone(),
        firmware: Firmware::Uefi,
        secure_boot: true,
        tpm: true,
        ..odd_spec("x")
    };
    let file = dir.path().join("gen2-tl-tpm.xml");
    std::fs::write(&file, domain_xml(&spec)).unwrap();
    let _defined = support::libvirt::Defined::define(&file, &name)
        .unwrap_or_else(|e| panic!("libvirt refuses a vTPM domain: {e}"));
    let out = support::libvirt::virsh(&["dumpxml", &name]);
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && xml.contains("<tpm model='tpm-crb'>"),
        "{xml}"
    );
    assert!(
        xml.contains("<backend type='emulator' version='2.0'"),
        "{xml}"
    );
    // Odd names: libvirt takes each as we write it and gives it back unchanged.
    for (i, odd) in ODD_NAMES.iter().enumerate() {
        let name = format!("{}-{i}-{}", libvirt_name(odd), std::process::id());
        let spec = DomainSpec {
            name: name.clone(),
            ..odd_spec(odd)
        };
        let file = dir.path().join(format!("odd-{i}.xml"));
        std::fs::write(&file, domain_xml(&spec)).unwrap();
        let _defined = support::libvirt::Defined::define(&file, &name)
            .unwrap_or_else(|e| panic!("libvirt refuses {odd:?}: {e}"));
        let out = support::libvirt::virsh(&["dumpxml", &name]);
        let xml = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && xml.contains("<name>"),
            "{odd:?}: {xml}"
        );
    }
}
