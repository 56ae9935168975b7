//! What an export leaves beside each VM's images: `manifest.json` (the VM as `list
//! --output json` prints it, each disk completed with its image, format, sizes, status and
//! error) and `domain.xml` (libvirt; written when the OS disk was exported). Written for
//! failed and partial runs too, so a reader always learns what happened to each disk.
//! Neither holds a SAS or a token: there is no field for one.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::disk_kind::Refusal;
use super::domain::{DEFAULT_SECTOR_SIZE, DomainDisk, DomainSpec, GuestOs, domain_xml};
use super::guest::Guest;
use super::ledger::DiskStatus;
use super::ledger::write_atomic;
use super::plan::{Consistency, PlannedDisk, PlannedVm};
use super::run::{DiskResult, bytes_downloaded};
use crate::azure::arm::models::PowerState;
use crate::azure::inventory::{DiskInfo, DiskRole, VmInfo, VmKind};
use crate::image::sink::ImageFormat;

/// vCPUs and memory when the VM size is unknown (not in the location's size list): a
/// small machine that boots; the manifest says the values are defaults.
pub const DEFAULT_VCPUS: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u64 = 4096;

#[derive(Debug, thiserror::Error)]
#[error("VM {vm}: writing {path}: {source}")]
pub struct ManifestError {
    pub vm: String,
    pub path: String,
    pub source: std::io::Error,
}

/// The manifest's schema version: raised when a field changes meaning or goes away
/// (adding a field does not). Documented in README.md, "manifest.json".
pub const MANIFEST_VERSION: u32 = 1;

/// `DIR/<vm>/manifest.json`: the VM as `list --output json` prints it, which run and
/// consistency mode made the images, and per disk of the VM what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub manifest_version: u32,
    pub run_id: String,
    /// The consistency mode used for this VM.
    pub consistency: Consistency,
    pub id: String,
    /// Absent in manifests written before runs could span subscriptions.
    #[serde(default)]
    pub subscription_id: String,
    pub name: String,
    pub resource_group: String,
    pub location: String,
    pub power_state: PowerState,
    pub vm_size: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub os_type: Option<String>,
    pub hyperv_generation: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Architecture, Trusted Launch settings, Uniform scale set (as `list` prints them).
    #[serde(flatten, default)]
    pub kind: VmKind,
    /// What the domain is: architecture, machine, firmware, secure boot, TPM.
    pub guest: Guest,
    /// What the user must know before booting it (guest state not exported, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Every disk of the VM, selected or not.
    pub disks: Vec<ManifestDisk>,
}

/// One disk of the VM: its facts as listed, what was written for it (if it was
/// selected) and its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDisk {
    #[serde(flatten)]
    pub disk: DiskInfo,
    /// None for a disk the run did not select.
    #[serde(flatten)]
    pub image: Option<ManifestImage>,
    pub status: ManifestDiskStatus,
    /// Why a selected disk is not exported (status `unsupported` or `refused`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The image written for a selected disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestImage {
    /// Relative to the VM's folder.
    pub image: String,
    pub format: ImageFormat,
    /// The disk's size in bytes; null when the download did not get that far.
    pub virtual_size: Option<u64>,
    /// 4096 for a 4 KiB-sector disk (exported as VHDX): the geometry the guest was
    /// formatted with; null when the download did not get that far.
    pub logical_sector_size: Option<u32>,
    pub bytes_downloaded: u64,
    pub error: Option<String>,
    /// What a reader of the image must know (encrypted content and where its key is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// A shared disk exported through another VM (its folder): the same image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported_with: Option<String>,
    /// The snapshot the image was read from: `incremental` or `full`; null when the disk
    /// was read directly or refused.
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestDiskStatus {
    /// Not selected (`--disks`): no image.
    NotSelected,
    Pending,
    Done,
    Failed,
    Interrupted,
    /// Selected, but Azure gives nothing to export (an ephemeral OS disk); `reason` says so.
    Unsupported,
    /// Not exported because of its kind; `reason` and `error` say why. Nothing was created
    /// for it.
    Refused,
}

impl From<DiskStatus> for ManifestDiskStatus {
    fn from(s: DiskStatus) -> Self {
        match s {
            DiskStatus::Pending => Self::Pending,
            DiskStatus::Done => Self::Done,
            DiskStatus::Failed => Self::Failed,
            DiskStatus::Interrupted => Self::Interrupted,
            DiskStatus::Unsupported => Self::Unsupported,
            DiskStatus::Refused => Self::Refused,
        }
    }
}

/// The manifest of one VM.
pub fn manifest(
    vm: &PlannedVm,
    run_id: &str,
    format: ImageFormat,
    result: &dyn Fn(&PlannedDisk) -> Option<DiskResult>,
) -> Manifest {
    // Spelled out field by field: a field added to VmInfo fails to compile here until the
    // manifest decides whether to carry it.
    let VmInfo {
        id,
        subscription_id,
        name,
        resource_group,
        location,
        power_state,
        vm_size,
        vcpus,
        memory_mib,
        os_type,
        hyperv_generation,
        tags,
        disks,
        kind,
    } = vm.vm.clone();
    Manifest {
        manifest_version: MANIFEST_VERSION,
        run_id: run_id.to_string(),
        consistency: vm.consistency,
        id,
        subscription_id,
        name,
        resource_group,
        location,
        power_state,
        vm_size,
        vcpus,
        memory_mib,
        os_type,
        hyperv_generation,
        tags,
        kind,
        guest: vm.guest.clone(),
        warnings: vm.warnings.clone(),
        disks: disks
            .into_iter()
            .map(|d| manifest_disk(vm, d, format, result))
            .collect(),
    }
}

fn manifest_disk(
    vm: &PlannedVm,
    disk: DiskInfo,
    format: ImageFormat,
    result: &dyn Fn(&PlannedDisk) -> Option<DiskResult>,
) -> ManifestDisk {
    // By place in the VM (OS disk, LUN), which is unique where a name may not be.
    let Some(planned) = vm
        .disks
        .iter()
        .find(|p| p.role == disk.role && p.lun == disk.lun)
    else {
        return ManifestDisk {
            disk,
            image: None,
            status: ManifestDiskStatus::NotSelected,
            reason: None,
        };
    };
    let r = result(planned);
    let report = r.as_ref().and_then(|r| r.report.as_ref());
    ManifestDisk {
        disk,
        image: Some(ManifestImage {
            image: planned.image_in_vm_dir(),
            format,
            virtual_size: report.map(|r| r.virtual_size),
            logical_sector_size: report.map(|r| r.logical_sector_size),
            bytes_downloaded: report.map(bytes_downloaded).unwrap_or(0),
            error: r.as_ref().and_then(|r| r.error.clone()),
            notes: planned.notes.clone(),
            exported_with: planned.exported_with.clone(),
            snapshot: snapshot_kind(planned).map(str::to_string),
        }),
        status: r.map_or(ManifestDiskStatus::Pending, |r| r.status.into()),
        // Refused by kind (ephemeral, confidential, network policy): why.
        reason: planned.refused.as_ref().map(Refusal::reason),
    }
}

/// The snapshot a disk was read from: `incremental`, `full`, or None when it was read
/// directly or refused (nothing created for it).
fn snapshot_kind(p: &PlannedDisk) -> Option<&'static str> {
    match p.source {
        _ if p.refused.is_some() => None,
        super::plan::Source::Snapshot { incremental, .. } => {
            Some(if incremental { "incremental" } else { "full" })
        }
        _ => None,
    }
}

/// The domain of one VM from its exported disks, OS disk first then LUN order; None when
/// the OS disk was not exported (nothing to boot).
pub fn domain(
    vm: &PlannedVm,
    vm_dir: &Path,
    format: ImageFormat,
    exported: &dyn Fn(&PlannedDisk) -> Option<u32>,
) -> Option<String> {
    let os = vm.disks.iter().find(|d| d.role == DiskRole::Os)?;
    exported(os)?;
    // The plan already orders OS first, then LUNs.
    let disks = vm
        .disks
        .iter()
        .filter_map(|d| {
            Some(DomainDisk {
                // A shared disk's image is beside the VM folders: name it without `..`.
                path: match (d.shared, vm_dir.parent()) {
                    (true, Some(out)) => out.join(&d.image),
                    _ => vm_dir.join(d.image_in_vm_dir()),
                },
                format,
                shareable: d.shared,
                logical_sector_size: exported(d)?,
            })
        })
        .collect();
    let os_type = vm.vm.os_type.as_deref().unwrap_or("").to_ascii_lowercase();
    let spec = DomainSpec {
        // The folder: unique in the fleet, so namesakes can be defined on one host.
        name: vm.folder.clone(),
        azure_id: vm.vm.id.clone(),
        vm_size: vm.vm.vm_size.clone().unwrap_or_default(),
        vcpus: vm.vm.vcpus.unwrap_or(DEFAULT_VCPUS),
        memory_mib: vm.vm.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB),
        // From the plan's guest, so the domain is what --dry-run and the manifest said.
        firmware: vm.guest.domain_firmware(),
        secure_boot: vm.guest.secure_boot,
        arch: vm.guest.domain_arch(),
        tpm: vm.guest.tpm,
        os: match os_type.as_str() {
            "linux" => GuestOs::Linux,
            "windows" => GuestOs::Windows,
            _ => GuestOs::Unknown,
        },
        disks,
    };
    Some(domain_xml(&spec))
}

/// Writes `DIR/<vm>/manifest.json` and, when the OS disk is there, `domain.xml`.
pub fn write_vm_outputs(
    output_dir: &Path,
    vm: &PlannedVm,
    run_id: &str,
    format: ImageFormat,
    result: &dyn Fn(&PlannedDisk) -> Option<DiskResult>,
) -> Result<(), ManifestError> {
    let vm_dir = output_dir.join(&vm.folder);
    let err = |path: &Path, source| ManifestError {
        vm: vm.name.clone(),
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&vm_dir).map_err(|e| err(&vm_dir, e))?;
    let vm_dir = vm_dir.canonicalize().map_err(|e| err(&vm_dir, e))?;
    let m = manifest(vm, run_id, format, result);
    let path = vm_dir.join("manifest.json");
    let mut bytes = serde_json::to_vec_pretty(&m).expect("the manifest serialises");
    bytes.push(b'\n');
    write_atomic(&path, &bytes).map_err(|e| err(&path, e))?;
    // An exported disk's sector size (from its image), or None when it was not exported.
    let exported = |d: &PlannedDisk| {
        let r = result(d).filter(|r| r.status == DiskStatus::Done)?;
        Some(
            r.report
                .map_or(DEFAULT_SECTOR_SIZE, |report| report.logical_sector_size),
        )
    };
    if let Some(xml) = domain(vm, &vm_dir, format, &exported) {
        let path = vm_dir.join("domain.xml");
        write_atomic(&path, xml.as_bytes()).map_err(|e| err(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::plan::{DiskSet, Folders, PlanOptions, plan};

    fn vm() -> VmInfo {
        let disk = |name: &str, role, lun| DiskInfo {
            id: Some(format!(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/{name}"
            )),
            name: name.into(),
            role,
            lun,
            size_gb: Some(1),
            managed: true,
            vhd_uri: None,
            ephemeral: false,
            max_shares: None,
            data_access_auth_mode: None,
            encryption: None,
            storage: Default::default(),
            written_bytes: None,
        };
        VmInfo {
            subscription_id: "s".into(),
            id:
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web"
                    .into(),
            name: "web".into(),
            resource_group: "rg".into(),
            location: "westeurope".into(),
            power_state: PowerState::Deallocated,
            vm_size: Some("Standard_D2s_v5".into()),
            vcpus: Some(2),
            memory_mib: Some(8192),
            os_type: Some("linux".into()),
            hyperv_generation: Some("V2".into()),
            tags: BTreeMap::from([("env".into(), "prod".into())]),
            disks: vec![
                disk("os", DiskRole::Os, None),
                disk("d0", DiskRole::Data, Some(0)),
            ],
            kind: Default::default(),
        }
    }

    /// The schema README.md documents: versioned, the VM's fields at the top level, a
    /// selected disk with its image fields (null where unknown), an unselected one without.
    #[test]
    fn the_manifest_is_versioned_and_keeps_its_documented_shape() {
        let planned = plan(
            &[vm()],
            &PlanOptions {
                run_id: "r1".into(),
                folders: Folders::default(),
                disks: DiskSet::Os,
                consistency: None,
                format: ImageFormat::Raw,
                allow_encrypted: false,
                snapshot_type: Default::default(),
                private_network: false,
            },
        )
        .unwrap();
        let failed = |_: &PlannedDisk| {
            Some(DiskResult {
                status: DiskStatus::Failed,
                report: None,
                error: Some("VM web, disk os: grant refused".into()),
            })
        };
        let m = manifest(&planned[0], "r1", ImageFormat::Raw, &failed);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["manifest_version"], 1);
        assert_eq!(v["run_id"], "r1");
        assert_eq!(v["consistency"], "none");
        assert_eq!(v["power_state"], "deallocated");
        assert_eq!(v["tags"]["env"], "prod");
        // The VM's kind, flat as `list` prints it, and the guest the domain is.
        assert_eq!(v["architecture"], "x64");
        assert_eq!(v["secure_boot"], false);
        assert!(v["scale_set"].is_null());
        assert_eq!(
            v["guest"],
            serde_json::json!({"arch": "x86_64", "machine": "q35", "firmware": "uefi",
                               "secure_boot": false, "tpm": false})
        );
        assert_eq!(v["warnings"], serde_json::json!([]));
        assert_eq!(
            v["disks"][0],
            serde_json::json!({
                "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/os",
                "name": "os", "role": "os", "lun": null, "size_gb": 1, "managed": true,
                "ephemeral": false, "max_shares": null, "data_access_auth_mode": null,
                "encryption": null,
                "sku": null, "sector_size": null, "network_access_policy": null,
                "disk_access_id": null,
                "image": "web-os.raw", "format": "raw", "virtual_size": null,
                "logical_sector_size": null,
                "bytes_downloaded": 0, "error": "VM web, disk os: grant refused",
                "snapshot": null, "status": "failed",
            })
        );
        assert_eq!(
            v["disks"][1],
            serde_json::json!({
                "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d0",
                "name": "d0", "role": "data", "lun": 0, "size_gb": 1, "managed": true,
                "ephemeral": false, "max_shares": null, "data_access_auth_mode": null,
                "encryption": null,
                "sku": null, "sector_size": null, "network_access_policy": null,
                "disk_access_id": null,
                "status": "not_selected",
            })
        );
        // A reader gets the same manifest back, typed.
        let back: Manifest = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.disks[1].image, None);
        // A disk with no result yet is pending.
        let none = |_: &PlannedDisk| None;
        let m = manifest(&planned[0], "r1", ImageFormat::Raw, &none);
        assert_eq!(m.disks[0].status, ManifestDiskStatus::Pending);
    }
}
