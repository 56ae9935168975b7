//! libvirt domain definitions for exported VMs.
//!
//! A domain that boots the way the VM booted on Azure: q35 machine, UEFI firmware for
//! Hyper-V generation 2 VMs (BIOS otherwise), vCPUs and memory from the Azure VM size,
//! the OS disk first and data disks in LUN order as virtio disks, one virtio network
//! interface on libvirt's `default` network as a placeholder to edit, and a serial
//! console (Azure images log to ttyS0). Paths in the XML are absolute, as libvirt needs.
//!
//! Boot order is said once, per device (`<boot order='1'/>` on the OS disk): libvirt
//! refuses a domain that also has `<os><boot dev=.../>` ("per-device boot elements cannot
//! be used together with os/boot elements"), though the schema allows both. UEFI domains
//! name the secure-boot feature explicitly: left to auto-selection, libvirt on Debian picks
//! OVMF with Microsoft's keys enrolled, which stops an unsigned boot chain with "Security
//! Violation".
//!
//! Arm64 VMs get an `aarch64` guest on QEMU's `virt` machine with UEFI (AAVMF, picked by
//! libvirt's firmware auto-selection): Azure runs Arm64 only as generation 2, and `virt`
//! has neither the x86 APIC nor Hyper-V enlightenments, so those are left out. Trusted
//! Launch VMs get secure boot as Azure had it and, with `vTpmEnabled`, an emulated TPM 2.0
//! (swtpm): `tpm-crb` on x86_64, `tpm-tis` on aarch64 (libvirt's model that QEMU's `virt`
//! machine has). The TPM starts empty: Azure's guest state is not exported.
//!
//! The document is written with quick-xml, and every string from Azure or the file system
//! goes through [`escape_xml`]: XML 1.0 cannot carry most control characters at all, not
//! even as character references, so those become U+FFFD; tab, newline and carriage return
//! are written as character references so that a parser gives them back unchanged. The
//! domain name and title follow libvirt's stricter rules ([`libvirt_name`]), and so do
//! file paths (no newline or carriage return). Every document
//! is checked with `virt-xml-validate`, and defined in a real libvirt, in the tests.

use std::borrow::Cow;
use std::io;
use std::path::PathBuf;

use quick_xml::Writer;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesText, Event};
use quick_xml::name::QName;

use crate::image::sink::ImageFormat;

/// Firmware the VM needs: Azure generation 2 VMs boot with UEFI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl Firmware {
    /// From the VM's `hyperVGeneration` ("V1", "V2"; anything unknown boots as BIOS,
    /// which is what generation 1 and pre-generation VMs use).
    pub fn from_hyperv_generation(generation: Option<&str>) -> Self {
        match generation {
            Some(g) if g.eq_ignore_ascii_case("v2") => Self::Uefi,
            _ => Self::Bios,
        }
    }
}

/// The guest CPU architecture, as libvirt names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    #[default]
    X86_64,
    Aarch64,
}

impl Arch {
    /// libvirt's `arch` and `machine` for the architecture.
    pub fn type_attributes(self) -> (&'static str, &'static str) {
        match self {
            Self::X86_64 => ("x86_64", "q35"),
            Self::Aarch64 => ("aarch64", "virt"),
        }
    }
}

/// The guest OS family, for clock and feature choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestOs {
    Linux,
    Windows,
    Unknown,
}

/// One disk of the domain, in boot order (OS disk first, then data disks by LUN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// Absolute path of the image.
    pub path: PathBuf,
    pub format: ImageFormat,
    /// An Azure shared disk (`maxShares` > 1): `<shareable/>`, so libvirt lets the other
    /// domains that use the same image run at once, and no host cache (libvirt's advice for
    /// a disk written by several guests).
    pub shareable: bool,
    /// The sector size the guest formatted the disk with (512, or 4096 for a 4 KiB-sector
    /// Azure disk exported as VHDX): anything but 512 is passed on as `<blockio>`, or the
    /// guest would see a different geometry than its partition table and file systems.
    pub logical_sector_size: u32,
}

/// The sector size a disk has unless it says otherwise.
pub const DEFAULT_SECTOR_SIZE: u32 = 512;

/// What the domain is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    pub name: String,
    /// The Azure resource id, kept in the domain's metadata.
    pub azure_id: String,
    pub vm_size: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    /// UEFI only: the VM ran with secure boot in Azure (Trusted Launch), so it gets OVMF
    /// with secure boot on and Microsoft's keys enrolled. Off, the firmware has secure boot
    /// off, which any boot chain passes.
    pub secure_boot: bool,
    /// x86_64 (q35) or aarch64 (virt, always UEFI).
    pub arch: Arch,
    /// An emulated TPM 2.0 (the VM had a vTPM in Azure).
    pub tpm: bool,
    pub os: GuestOs,
    pub disks: Vec<DomainDisk>,
}

impl DomainSpec {
    /// The firmware the domain gets: an aarch64 guest boots only with UEFI.
    pub fn effective_firmware(&self) -> Firmware {
        match self.arch {
            Arch::Aarch64 => Firmware::Uefi,
            Arch::X86_64 => self.firmware,
        }
    }
}

/// Namespace of our metadata element (libvirt requires a URI; it is never fetched).
const METADATA_NS: &str = "https://azure2kvm.invalid/domain/1";

/// The libvirt device name of the n-th virtio disk: vda … vdz, vdaa, vdab, …
pub fn virtio_target(index: usize) -> String {
    let mut n = index;
    let mut name = Vec::new();
    loop {
        name.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    name.reverse();
    format!("vd{}", String::from_utf8(name).expect("ascii"))
}

/// True for the characters XML 1.0 allows in a document (the `Char` production, section
/// 2.2); the others cannot be written even as a character reference.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `s` as XML character data, valid in text and in quoted attribute values alike: markup
/// characters as entities; tab, newline and carriage return as character references (a
/// parser would otherwise turn them into spaces in attributes, section 3.3.3, and a
/// carriage return into a newline, section 2.11); characters XML 1.0 cannot carry as
/// U+FFFD, visibly replaced rather than dropped.
pub fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if !is_xml_char(c) => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// `name` as libvirt accepts it for a domain name (and a title): every control character
/// (C0 including tab and newline, DEL, C1), every character XML cannot carry and `/`
/// become `_`. libvirt refuses a newline (schema) and `/` (the name becomes a file name);
/// other control characters pass libvirt but break `virsh list` and shells. A name that is
/// empty or only dots would make libvirt work on `.`/`..` directories, so its dots
/// become `_` too. Everything else (spaces, quotes, non-ASCII) is kept: libvirt accepts it.
pub fn libvirt_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_control() || c == '/' || !is_xml_char(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    if out.chars().all(|c| c == '.') {
        out = "_".repeat(out.len().max(1));
    }
    out
}

/// An attribute whose value may hold anything (paths, Azure ids).
fn attr<'a>(key: &'a str, value: &str) -> Attribute<'a> {
    Attribute {
        key: QName(key.as_bytes()),
        value: Cow::Owned(escape_xml(value).into_bytes()),
    }
}

/// A file path: libvirt's schema (`absFilePath`) refuses a newline or carriage return in
/// one, so those become U+FFFD like the characters XML cannot carry. Such a domain is valid
/// and names a file that does not exist, which libvirt reports when it starts the domain.
fn path_attr<'a>(key: &'a str, path: &std::path::Path) -> Attribute<'a> {
    let path = path.to_string_lossy().replace(['\n', '\r'], "\u{FFFD}");
    attr(key, &path)
}

/// Text content that may hold anything.
fn text(s: &str) -> BytesText<'static> {
    BytesText::from_escaped(escape_xml(s))
}

type Xml = Writer<Vec<u8>>;

/// Renders the domain XML.
pub fn domain_xml(spec: &DomainSpec) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    write_domain(&mut w, spec).expect("writing XML into memory cannot fail");
    let mut xml = String::from_utf8(w.into_inner()).expect("the writer only writes UTF-8");
    xml.push('\n');
    xml
}

fn write_domain(w: &mut Xml, spec: &DomainSpec) -> io::Result<()> {
    w.create_element("domain")
        .with_attribute(("type", "kvm"))
        .write_inner_content(|w| {
            let name = libvirt_name(&spec.name);
            w.create_element("name").write_text_content(text(&name))?;
            w.create_element("title")
                .write_text_content(text(&format!("{name} (exported from Azure by azure2kvm)")))?;
            w.create_element("metadata").write_inner_content(|w| {
                w.create_element("azure2kvm:source")
                    .with_attribute(("xmlns:azure2kvm", METADATA_NS))
                    .with_attribute(attr("id", &spec.azure_id))
                    .with_attribute(attr("size", &spec.vm_size))
                    .write_empty()
                    .map(drop)
            })?;
            w.create_element("memory")
                .with_attribute(("unit", "MiB"))
                .write_text_content(BytesText::new(&spec.memory_mib.to_string()))?;
            w.create_element("vcpu")
                .with_attribute(("placement", "static"))
                .write_text_content(BytesText::new(&spec.vcpus.to_string()))?;
            write_os(w, spec)?;
            write_features(w, spec.os, spec.arch)?;
            w.create_element("cpu")
                .with_attribute(("mode", "host-passthrough"))
                .write_empty()?;
            // Windows keeps its clock in local time; Linux (and Azure's images) in UTC.
            let offset = if spec.os == GuestOs::Windows {
                "localtime"
            } else {
                "utc"
            };
            w.create_element("clock")
                .with_attribute(("offset", offset))
                .write_empty()?;
            for (event, action) in [
                ("on_poweroff", "destroy"),
                ("on_reboot", "restart"),
                ("on_crash", "destroy"),
            ] {
                w.create_element(event)
                    .write_text_content(BytesText::new(action))?;
            }
            write_devices(w, spec)
        })
        .map(drop)
}

/// `<os>`: machine type and firmware. No `<boot dev=.../>`: the OS disk carries the boot
/// order (libvirt refuses both together).
fn write_os(w: &mut Xml, spec: &DomainSpec) -> io::Result<()> {
    let uefi = spec.effective_firmware() == Firmware::Uefi;
    let mut os = w.create_element("os");
    if uefi {
        os = os.with_attribute(("firmware", "efi"));
    }
    let (arch, machine) = spec.arch.type_attributes();
    os.write_inner_content(|w| {
        w.create_element("type")
            .with_attribute(("arch", arch))
            .with_attribute(("machine", machine))
            .write_text_content(BytesText::new("hvm"))?;
        if uefi {
            write_firmware_features(w, spec.secure_boot)?;
        }
        Ok(())
    })
    .map(drop)
}

/// The firmware features libvirt's auto-selection must match: secure boot exactly as it
/// was on Azure, Microsoft's keys enrolled only with it (Trusted Launch).
fn write_firmware_features(w: &mut Xml, secure_boot: bool) -> io::Result<()> {
    let on = if secure_boot { "yes" } else { "no" };
    w.create_element("firmware")
        .write_inner_content(|w| {
            w.create_element("feature")
                .with_attribute(("enabled", on))
                .with_attribute(("name", "secure-boot"))
                .write_empty()?;
            if secure_boot {
                w.create_element("feature")
                    .with_attribute(("enabled", "yes"))
                    .with_attribute(("name", "enrolled-keys"))
                    .write_empty()?;
            }
            Ok(())
        })
        .map(drop)
}

fn write_features(w: &mut Xml, os: GuestOs, arch: Arch) -> io::Result<()> {
    w.create_element("features")
        .write_inner_content(|w| {
            w.create_element("acpi").write_empty()?;
            // The APIC and Hyper-V enlightenments are x86 things.
            if arch == Arch::Aarch64 {
                return Ok(());
            }
            w.create_element("apic").write_empty()?;
            if os == GuestOs::Windows {
                // Windows expects Hyper-V enlightenments for good performance on any hypervisor.
                w.create_element("hyperv")
                    .with_attribute(("mode", "custom"))
                    .write_inner_content(|w| {
                        for name in ["relaxed", "vapic"] {
                            w.create_element(name)
                                .with_attribute(("state", "on"))
                                .write_empty()?;
                        }
                        w.create_element("spinlocks")
                            .with_attribute(("state", "on"))
                            .with_attribute(("retries", "8191"))
                            .write_empty()
                            .map(drop)
                    })?;
            }
            Ok(())
        })
        .map(drop)
}

fn write_devices(w: &mut Xml, spec: &DomainSpec) -> io::Result<()> {
    w.create_element("devices")
        .write_inner_content(|w| {
            for (i, disk) in spec.disks.iter().enumerate() {
                write_disk(w, i, disk)?;
            }
            if spec.tpm {
                write_tpm(w, spec.arch)?;
            }
            w.write_event(Event::Comment(BytesText::from_escaped(
                " placeholder: attach to your own network or bridge ",
            )))?;
            w.create_element("interface")
                .with_attribute(("type", "network"))
                .write_inner_content(|w| {
                    w.create_element("source")
                        .with_attribute(("network", "default"))
                        .write_empty()?;
                    w.create_element("model")
                        .with_attribute(("type", "virtio"))
                        .write_empty()
                        .map(drop)
                })?;
            for (element, target_type) in [("serial", None), ("console", Some("serial"))] {
                w.create_element(element)
                    .with_attribute(("type", "pty"))
                    .write_inner_content(|w| {
                        let mut target = w.create_element("target");
                        if let Some(t) = target_type {
                            target = target.with_attribute(("type", t));
                        }
                        target.with_attribute(("port", "0")).write_empty().map(drop)
                    })?;
            }
            Ok(())
        })
        .map(drop)
}

/// An emulated TPM 2.0 (swtpm), in the model the machine type has.
fn write_tpm(w: &mut Xml, arch: Arch) -> io::Result<()> {
    let model = match arch {
        Arch::X86_64 => "tpm-crb",
        Arch::Aarch64 => "tpm-tis",
    };
    w.create_element("tpm")
        .with_attribute(("model", model))
        .write_inner_content(|w| {
            w.create_element("backend")
                .with_attribute(("type", "emulator"))
                .with_attribute(("version", "2.0"))
                .write_empty()
                .map(drop)
        })
        .map(drop)
}

/// The `index`-th disk: virtio, `vda` onwards; the first (the OS disk) boots.
fn write_disk(w: &mut Xml, index: usize, disk: &DomainDisk) -> io::Result<()> {
    let format = match disk.format {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
    };
    w.create_element("disk")
        .with_attribute(("type", "file"))
        .with_attribute(("device", "disk"))
        .write_inner_content(|w| {
            let driver = w
                .create_element("driver")
                .with_attribute(("name", "qemu"))
                .with_attribute(("type", format));
            let driver = if disk.shareable {
                driver.with_attribute(("cache", "none"))
            } else {
                driver
            };
            driver.with_attribute(("discard", "unmap")).write_empty()?;
            w.create_element("source")
                .with_attribute(path_attr("file", &disk.path))
                .write_empty()?;
            w.create_element("target")
                .with_attribute(("dev", virtio_target(index).as_str()))
                .with_attribute(("bus", "virtio"))
                .write_empty()?;
            if disk.shareable {
                w.create_element("shareable").write_empty()?;
            }
            if disk.logical_sector_size != DEFAULT_SECTOR_SIZE {
                let size = disk.logical_sector_size.to_string();
                w.create_element("blockio")
                    .with_attribute(("logical_block_size", size.as_str()))
                    .with_attribute(("physical_block_size", size.as_str()))
                    .write_empty()?;
            }
            if index == 0 {
                w.create_element("boot")
                    .with_attribute(("order", "1"))
                    .write_empty()?;
            }
            Ok(())
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event as ReadEvent;
    use quick_xml::{Reader, XmlVersion};

    pub fn spec(firmware: Firmware, os: GuestOs, disks: usize) -> DomainSpec {
        DomainSpec {
            name: "web-01".into(),
            azure_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01".into(),
            vm_size: "Standard_D2s_v5".into(),
            vcpus: 2,
            memory_mib: 8192,
            firmware,
            secure_boot: false,
            arch: Arch::X86_64,
            tpm: false,
            os,
            disks: (0..disks)
                .map(|i| DomainDisk { path: format!("/srv/vms/web-01/d{i}.qcow2").into(), format: ImageFormat::Qcow2, shareable: false, logical_sector_size: DEFAULT_SECTOR_SIZE })
                .collect(),
        }
    }

    /// Names with one of every class of odd character.
    pub const ODD_NAMES: &[&str] = &[
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

    /// Reads the document back with a parser: (the `<name>` text, every `source file`).
    fn read_back(xml: &str) -> (String, Vec<String>) {
        let mut reader = Reader::from_str(xml);
        let (mut name, mut files, mut in_name) = (String::new(), Vec::new(), false);
        loop {
            match reader.read_event().expect("well-formed") {
                ReadEvent::Start(e) => in_name = e.name().as_ref() == b"name",
                ReadEvent::Text(t) if in_name => name.push_str(&t.decode().unwrap()),
                ReadEvent::GeneralRef(r) if in_name => name.push(match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    _ => match &*r {
                        b"lt" => '<',
                        b"gt" => '>',
                        b"amp" => '&',
                        b"apos" => '\'',
                        b"quot" => '"',
                        other => panic!("unexpected entity {other:?}"),
                    },
                }),
                ReadEvent::Empty(e) if e.name().as_ref() == b"source" => {
                    if let Some(a) = e.try_get_attribute("file").unwrap() {
                        files.push(
                            a.normalized_value(XmlVersion::Implicit1_0)
                                .unwrap()
                                .into_owned(),
                        );
                    }
                }
                ReadEvent::End(_) => in_name = false,
                ReadEvent::Eof => break,
                _ => {}
            }
        }
        (name, files)
    }

    #[test]
    fn target_names_follow_libvirt() {
        assert_eq!(virtio_target(0), "vda");
        assert_eq!(virtio_target(25), "vdz");
        assert_eq!(virtio_target(26), "vdaa");
        assert_eq!(virtio_target(27), "vdab");
        assert_eq!(virtio_target(26 + 26 * 26), "vdaaa");
    }

    #[test]
    fn generation_2_boots_uefi() {
        assert_eq!(Firmware::from_hyperv_generation(Some("V2")), Firmware::Uefi);
        assert_eq!(Firmware::from_hyperv_generation(Some("V1")), Firmware::Bios);
        assert_eq!(Firmware::from_hyperv_generation(None), Firmware::Bios);
        let xml = domain_xml(&spec(Firmware::Uefi, GuestOs::Linux, 1));
        assert!(xml.contains(r#"<os firmware="efi">"#), "{xml}");
        assert!(!domain_xml(&spec(Firmware::Bios, GuestOs::Linux, 1)).contains("efi"));
    }

    #[test]
    fn disks_in_order_first_boots() {
        let xml = domain_xml(&spec(Firmware::Bios, GuestOs::Linux, 3));
        let a = xml.find("d0.qcow2").unwrap();
        let b = xml.find("d1.qcow2").unwrap();
        let c = xml.find("d2.qcow2").unwrap();
        assert!(a < b && b < c);
        assert_eq!(xml.matches(r#"<boot order="1"/>"#).count(), 1, "{xml}");
        assert!(xml.contains(r#"<target dev="vdc" bus="virtio"/>"#), "{xml}");
    }

    #[test]
    fn boot_order_is_per_device_only() {
        for fw in [Firmware::Bios, Firmware::Uefi] {
            let xml = domain_xml(&spec(fw, GuestOs::Linux, 2));
            assert!(!xml.contains("<boot dev"), "{xml}");
            assert_eq!(xml.matches("<boot ").count(), 1, "{xml}");
        }
    }

    #[test]
    fn uefi_says_whether_secure_boot_is_on() {
        let mut s = spec(Firmware::Uefi, GuestOs::Linux, 1);
        let off = domain_xml(&s);
        assert!(
            off.contains(r#"<feature enabled="no" name="secure-boot"/>"#),
            "{off}"
        );
        assert!(!off.contains("enrolled-keys"), "{off}");
        s.secure_boot = true;
        let on = domain_xml(&s);
        assert!(
            on.contains(r#"<feature enabled="yes" name="secure-boot"/>"#),
            "{on}"
        );
        assert!(
            on.contains(r#"<feature enabled="yes" name="enrolled-keys"/>"#),
            "{on}"
        );
        let bios = domain_xml(&spec(Firmware::Bios, GuestOs::Linux, 1));
        assert!(!bios.contains("<firmware>"), "{bios}");
    }

    #[test]
    fn arm64_is_aarch64_virt_with_uefi_and_no_x86_features() {
        let mut s = spec(Firmware::Bios, GuestOs::Windows, 1);
        s.arch = Arch::Aarch64;
        let xml = domain_xml(&s);
        assert!(
            xml.contains(r#"<type arch="aarch64" machine="virt">hvm</type>"#),
            "{xml}"
        );
        // Even a VM whose generation was not reported boots UEFI (AAVMF) on aarch64.
        assert!(xml.contains(r#"<os firmware="efi">"#), "{xml}");
        assert!(
            xml.contains(r#"<feature enabled="no" name="secure-boot"/>"#),
            "{xml}"
        );
        for x86 in ["q35", "x86_64", "<apic", "<hyperv"] {
            assert!(!xml.contains(x86), "{x86}: {xml}");
        }
        let x86 = domain_xml(&spec(Firmware::Bios, GuestOs::Linux, 1));
        assert!(
            x86.contains(r#"<type arch="x86_64" machine="q35">hvm</type>"#),
            "{x86}"
        );
    }

    #[test]
    fn vtpm_adds_an_emulated_tpm_2_in_the_machine_s_model() {
        let mut s = spec(Firmware::Uefi, GuestOs::Linux, 1);
        assert!(!domain_xml(&s).contains("<tpm"));
        s.tpm = true;
        let xml = domain_xml(&s);
        assert!(
            xml.contains(r#"<tpm model="tpm-crb">"#)
                && xml.contains(r#"<backend type="emulator" version="2.0"/>"#),
            "{xml}"
        );
        s.arch = Arch::Aarch64;
        let xml = domain_xml(&s);
        assert!(xml.contains(r#"<tpm model="tpm-tis">"#), "{xml}");
    }

    #[test]
    fn windows_gets_local_clock_and_enlightenments() {
        let xml = domain_xml(&spec(Firmware::Uefi, GuestOs::Windows, 1));
        assert!(xml.contains(r#"<clock offset="localtime"/>"#), "{xml}");
        assert!(xml.contains(r#"<hyperv mode="custom">"#), "{xml}");
    }

    #[test]
    fn text_is_escaped() {
        let mut s = spec(Firmware::Bios, GuestOs::Linux, 1);
        s.name = "a<b>&'\"".into();
        let xml = domain_xml(&s);
        assert!(
            xml.contains("<name>a&lt;b&gt;&amp;&apos;&quot;</name>"),
            "{xml}"
        );
    }

    #[test]
    fn escaping_keeps_what_xml_can_carry_and_marks_what_it_cannot() {
        assert_eq!(escape_xml("a\tb\nc\rd"), "a&#9;b&#10;c&#13;d");
        assert_eq!(
            escape_xml("\0\u{1}\u{b}\u{c}\u{1f}\u{fffe}\u{ffff}"),
            "\u{fffd}".repeat(7)
        );
        // DEL, C1 controls and everything above U+FFFF are legal XML 1.0 characters.
        assert_eq!(
            escape_xml("\u{7f}\u{85}\u{10000}ü"),
            "\u{7f}\u{85}\u{10000}ü"
        );
    }

    #[test]
    fn libvirt_names_lose_controls_slashes_and_dot_names() {
        assert_eq!(libvirt_name("web-01.rg-prod"), "web-01.rg-prod");
        assert_eq!(
            libvirt_name("a\0b\tc\nd\u{7f}e\u{85}f/g\u{ffff}"),
            "a_b_c_d_e_f_g_"
        );
        assert_eq!(libvirt_name("ünï 名 'q' <&>"), "ünï 名 'q' <&>");
        assert_eq!(libvirt_name(""), "_");
        assert_eq!(libvirt_name("."), "_");
        assert_eq!(libvirt_name(".."), "__");
        assert_eq!(libvirt_name("..."), "___");
        assert_eq!(libvirt_name(".a."), ".a.");
    }

    #[test]
    fn odd_names_and_paths_stay_well_formed_and_read_back() {
        for odd in ODD_NAMES {
            let mut s = spec(Firmware::Uefi, GuestOs::Linux, 1);
            s.name = odd.to_string();
            s.azure_id = format!("/subscriptions/s/x/{odd}");
            s.disks[0].path = format!("/srv/{odd}/os.qcow2").into();
            let xml = domain_xml(&s);
            let (name, files) = read_back(&xml);
            assert_eq!(name, libvirt_name(odd), "{odd:?}\n{xml}");
            let expected: String = odd
                .chars()
                .map(|c| {
                    if is_xml_char(c) && c != '\n' && c != '\r' {
                        c
                    } else {
                        '\u{fffd}'
                    }
                })
                .collect();
            assert_eq!(
                files,
                [format!("/srv/{expected}/os.qcow2")],
                "{odd:?}\n{xml}"
            );
            assert!(!xml.chars().any(|c| !is_xml_char(c)), "{odd:?}\n{xml}");
        }
    }
}
