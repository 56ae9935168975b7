//! libvirt domain definitions for exported VMs.
//!
//! A domain that boots the way the VM booted on Azure: q35 machine, UEFI firmware for
//! Hyper-V generation 2 VMs (BIOS otherwise), vCPUs and memory from the Azure VM size,
//! the OS disk first and data disks in LUN order as virtio disks, one virtio network
//! interface on libvirt's `default` network as a placeholder to edit, and a serial
//! console (Azure images log to ttyS0). Paths in the XML are absolute, as libvirt needs.
//! Every document is checked with `virt-xml-validate` in the tests.

use std::fmt::Write as _;
use std::path::PathBuf;

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
}

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
    pub os: GuestOs,
    pub disks: Vec<DomainDisk>,
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

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders the domain XML.
pub fn domain_xml(spec: &DomainSpec) -> String {
    let mut x = String::new();
    let _ = writeln!(x, "<domain type='kvm'>");
    let _ = writeln!(x, "  <name>{}</name>", escape(&spec.name));
    let _ = writeln!(
        x,
        "  <title>{} (exported from Azure by azure2kvm)</title>",
        escape(&spec.name)
    );
    let _ = writeln!(x, "  <metadata>");
    let _ = writeln!(
        x,
        "    <azure2kvm:source xmlns:azure2kvm='{METADATA_NS}' id='{}' size='{}'/>",
        escape(&spec.azure_id),
        escape(&spec.vm_size)
    );
    let _ = writeln!(x, "  </metadata>");
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", spec.memory_mib);
    let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", spec.vcpus);
    match spec.firmware {
        Firmware::Uefi => {
            let _ = writeln!(x, "  <os firmware='efi'>");
        }
        Firmware::Bios => {
            let _ = writeln!(x, "  <os>");
        }
    }
    let _ = writeln!(x, "    <type arch='x86_64' machine='q35'>hvm</type>");
    let _ = writeln!(x, "    <boot dev='hd'/>");
    let _ = writeln!(x, "  </os>");
    let _ = writeln!(x, "  <features>");
    let _ = writeln!(x, "    <acpi/>");
    let _ = writeln!(x, "    <apic/>");
    if spec.os == GuestOs::Windows {
        // Windows expects Hyper-V enlightenments for good performance on any hypervisor.
        let _ = writeln!(x, "    <hyperv mode='custom'>");
        let _ = writeln!(x, "      <relaxed state='on'/>");
        let _ = writeln!(x, "      <vapic state='on'/>");
        let _ = writeln!(x, "      <spinlocks state='on' retries='8191'/>");
        let _ = writeln!(x, "    </hyperv>");
    }
    let _ = writeln!(x, "  </features>");
    let _ = writeln!(x, "  <cpu mode='host-passthrough'/>");
    // Windows keeps its clock in local time; Linux (and Azure's images) in UTC.
    let offset = if spec.os == GuestOs::Windows {
        "localtime"
    } else {
        "utc"
    };
    let _ = writeln!(x, "  <clock offset='{offset}'/>");
    let _ = writeln!(x, "  <on_poweroff>destroy</on_poweroff>");
    let _ = writeln!(x, "  <on_reboot>restart</on_reboot>");
    let _ = writeln!(x, "  <on_crash>destroy</on_crash>");
    let _ = writeln!(x, "  <devices>");
    for (i, disk) in spec.disks.iter().enumerate() {
        let format = match disk.format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        };
        let _ = writeln!(x, "    <disk type='file' device='disk'>");
        let _ = writeln!(
            x,
            "      <driver name='qemu' type='{format}' discard='unmap'/>"
        );
        let _ = writeln!(
            x,
            "      <source file='{}'/>",
            escape(&disk.path.to_string_lossy())
        );
        let _ = writeln!(x, "      <target dev='{}' bus='virtio'/>", virtio_target(i));
        if i == 0 {
            let _ = writeln!(x, "      <boot order='1'/>");
        }
        let _ = writeln!(x, "    </disk>");
    }
    let _ = writeln!(
        x,
        "    <!-- placeholder: attach to your own network or bridge -->"
    );
    let _ = writeln!(x, "    <interface type='network'>");
    let _ = writeln!(x, "      <source network='default'/>");
    let _ = writeln!(x, "      <model type='virtio'/>");
    let _ = writeln!(x, "    </interface>");
    let _ = writeln!(x, "    <serial type='pty'>");
    let _ = writeln!(x, "      <target port='0'/>");
    let _ = writeln!(x, "    </serial>");
    let _ = writeln!(x, "    <console type='pty'>");
    let _ = writeln!(x, "      <target type='serial' port='0'/>");
    let _ = writeln!(x, "    </console>");
    let _ = writeln!(x, "  </devices>");
    let _ = writeln!(x, "</domain>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn spec(firmware: Firmware, os: GuestOs, disks: usize) -> DomainSpec {
        DomainSpec {
            name: "web-01".into(),
            azure_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01".into(),
            vm_size: "Standard_D2s_v5".into(),
            vcpus: 2,
            memory_mib: 8192,
            firmware,
            os,
            disks: (0..disks)
                .map(|i| DomainDisk { path: format!("/srv/vms/web-01/d{i}.qcow2").into(), format: ImageFormat::Qcow2 })
                .collect(),
        }
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
        assert!(xml.contains("<os firmware='efi'>"));
        assert!(!domain_xml(&spec(Firmware::Bios, GuestOs::Linux, 1)).contains("efi"));
    }

    #[test]
    fn disks_in_order_first_boots() {
        let xml = domain_xml(&spec(Firmware::Bios, GuestOs::Linux, 3));
        let a = xml.find("d0.qcow2").unwrap();
        let b = xml.find("d1.qcow2").unwrap();
        let c = xml.find("d2.qcow2").unwrap();
        assert!(a < b && b < c);
        assert_eq!(xml.matches("<boot order='1'/>").count(), 1);
        assert!(xml.contains("<target dev='vdc' bus='virtio'/>"));
    }

    #[test]
    fn windows_gets_local_clock_and_enlightenments() {
        let xml = domain_xml(&spec(Firmware::Uefi, GuestOs::Windows, 1));
        assert!(xml.contains("<clock offset='localtime'/>"));
        assert!(xml.contains("<hyperv mode='custom'>"));
    }

    #[test]
    fn text_is_escaped() {
        let mut s = spec(Firmware::Bios, GuestOs::Linux, 1);
        s.name = "a<b>&'\"".into();
        let xml = domain_xml(&s);
        assert!(xml.contains("<name>a&lt;b&gt;&amp;&apos;&quot;</name>"));
    }
}
