//! What kind of guest an exported VM becomes, decided from its [`VmKind`] alone (pure), so
//! that `export --dry-run`, the manifest and `domain.xml` cannot disagree: the
//! architecture and machine, the firmware, secure boot, the TPM, and the warnings a user
//! must read before booting it.
//!
//! What is not exported, and why it is a warning rather than a refusal: a Trusted Launch
//! VM's guest state (its UEFI variable store and vTPM contents) lives in Azure's VM guest
//! state blob, which no public API hands out. The disks boot without it; only what was
//! sealed to the TPM (BitLocker, LUKS with a TPM2 token) cannot be unsealed and asks for
//! its recovery key. A Uniform scale-set instance is exported like a VM from snapshots of
//! its managed disks; the scale set's model (extensions, autoscale) does not move.

use serde::{Deserialize, Serialize};

use super::domain::{Arch, Firmware};
use crate::azure::inventory::{Architecture, VmInfo};

/// The guest a VM becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// libvirt's `arch`: `x86_64` or `aarch64`.
    pub arch: String,
    /// libvirt's `machine`: `q35` or `virt`.
    pub machine: String,
    /// `bios` or `uefi`.
    pub firmware: String,
    /// UEFI with secure boot on and Microsoft's keys enrolled (as Azure had it).
    pub secure_boot: bool,
    /// An emulated TPM 2.0, empty: Azure's vTPM contents are not exported.
    pub tpm: bool,
}

impl Guest {
    /// The architecture, typed for the domain writer.
    pub fn domain_arch(&self) -> Arch {
        if self.arch == Arch::Aarch64.type_attributes().0 {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The firmware, typed for the domain writer.
    pub fn domain_firmware(&self) -> Firmware {
        if self.firmware == "uefi" {
            Firmware::Uefi
        } else {
            Firmware::Bios
        }
    }
}

/// The guest of `vm`.
pub fn guest_of(vm: &VmInfo) -> Guest {
    let domain_arch = match vm.kind.architecture {
        Architecture::X64 => Arch::X86_64,
        Architecture::Arm64 => Arch::Aarch64,
    };
    // Azure runs Arm64 VMs as generation 2 only: UEFI (AAVMF).
    let domain_firmware = match domain_arch {
        Arch::Aarch64 => Firmware::Uefi,
        Arch::X86_64 => Firmware::from_hyperv_generation(vm.hyperv_generation.as_deref()),
    };
    let uefi = domain_firmware == Firmware::Uefi;
    let (arch, machine) = domain_arch.type_attributes();
    Guest {
        arch: arch.into(),
        machine: machine.into(),
        firmware: if uefi { "uefi" } else { "bios" }.into(),
        // Secure boot and a vTPM exist only with UEFI (Azure: generation 2 only).
        secure_boot: uefi && vm.kind.secure_boot,
        tpm: uefi && vm.kind.vtpm,
    }
}

/// What the user must know about the exported guest, in a stable order.
pub fn warnings(vm: &VmInfo) -> Vec<String> {
    let mut out = Vec::new();
    let guest = guest_of(vm);
    if let Some(t) = &vm.kind.security_type {
        out.push(format!(
            "security type {t}: the VM guest state (UEFI variables, vTPM contents) is not exported; \
             BitLocker or LUKS keys sealed to the TPM will ask for their recovery key{}",
            if guest.tpm {
                "; the domain gets a new, empty emulated TPM 2.0 (needs swtpm on the host)"
            } else {
                ""
            }
        ));
    }
    if guest.secure_boot {
        out.push(
            "secure boot on, as in Azure: the domain's UEFI has Microsoft's keys enrolled; \
             keys or MOK entries added inside the guest are not exported"
                .to_string(),
        );
    }
    if vm.kind.architecture == Architecture::Arm64 {
        out.push(
            "Arm64 VM: the domain is aarch64 (machine virt, UEFI/AAVMF) and needs an aarch64 \
             KVM host, or qemu-system-aarch64 and edk2 AAVMF firmware for emulation"
                .to_string(),
        );
    }
    if let Some(ss) = &vm.kind.scale_set {
        out.push(format!(
            "instance of the Uniform scale set {ss}: exported from snapshots of its managed \
             disks; the scale set's model (extensions, autoscale, load balancer) is not exported"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::arm::models::PowerState;
    use crate::azure::inventory::VmKind;

    fn vm(generation: &str, kind: VmKind) -> VmInfo {
        VmInfo {
            subscription_id: "s".into(),
            id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/v"
                .into(),
            name: "v".into(),
            resource_group: "rg".into(),
            location: "westeurope".into(),
            power_state: PowerState::Running,
            vm_size: None,
            vcpus: None,
            memory_mib: None,
            os_type: Some("linux".into()),
            hyperv_generation: Some(generation.into()),
            tags: Default::default(),
            disks: vec![],
            kind,
        }
    }

    #[test]
    fn ordinary_vms_have_no_warnings() {
        let g = guest_of(&vm("V1", VmKind::default()));
        assert_eq!(
            (&*g.arch, &*g.machine, &*g.firmware),
            ("x86_64", "q35", "bios")
        );
        assert!(!g.secure_boot && !g.tpm);
        assert!(warnings(&vm("V2", VmKind::default())).is_empty());
    }

    #[test]
    fn trusted_launch_keeps_secure_boot_and_tpm_and_warns_about_guest_state() {
        let tl = VmKind {
            security_type: Some("TrustedLaunch".into()),
            secure_boot: true,
            vtpm: true,
            ..Default::default()
        };
        let g = guest_of(&vm("V2", tl.clone()));
        assert_eq!(g.firmware, "uefi");
        assert!(g.secure_boot && g.tpm);
        let w = warnings(&vm("V2", tl.clone())).join("\n");
        assert!(
            w.contains("guest state") && w.contains("recovery key"),
            "{w}"
        );
        assert!(w.contains("empty emulated TPM 2.0"), "{w}");
        assert!(w.contains("secure boot on"), "{w}");
        // Secure boot off, vTPM off: neither, but guest state still not exported.
        let plain = VmKind {
            secure_boot: false,
            vtpm: false,
            ..tl.clone()
        };
        let g = guest_of(&vm("V2", plain.clone()));
        assert!(!g.secure_boot && !g.tpm);
        let w = warnings(&vm("V2", plain)).join("\n");
        assert!(
            w.contains("guest state") && !w.contains("TPM 2.0") && !w.contains("secure boot on")
        );
        // A generation 1 record cannot have them (BIOS has neither).
        let g = guest_of(&vm("V1", tl));
        assert!(!g.secure_boot && !g.tpm);
    }

    #[test]
    fn arm64_is_aarch64_virt_uefi_whatever_the_generation_says() {
        let arm = VmKind {
            architecture: Architecture::Arm64,
            ..Default::default()
        };
        for generation in ["V1", "V2", ""] {
            let g = guest_of(&vm(generation, arm.clone()));
            assert_eq!(
                (&*g.arch, &*g.machine, &*g.firmware),
                ("aarch64", "virt", "uefi")
            );
            assert_eq!(
                (g.domain_arch(), g.domain_firmware()),
                (Arch::Aarch64, Firmware::Uefi)
            );
        }
        assert!(warnings(&vm("V2", arm)).join("").contains("aarch64"));
    }

    #[test]
    fn scale_set_instances_say_what_is_not_exported() {
        let k = VmKind {
            scale_set: Some("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss".into()),
            ..Default::default()
        };
        let w = warnings(&vm("V1", k)).join("");
        assert!(
            w.contains("Uniform scale set") && w.contains("virtualMachineScaleSets/ss"),
            "{w}"
        );
    }
}
