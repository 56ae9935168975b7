//! What an export leaves beside each VM's images: `manifest.json` (the VM as `list
//! --output json` prints it, each disk completed with its image, format, sizes, status and
//! error) and `domain.xml` (libvirt; written when the OS disk was exported). Written for
//! failed and partial runs too, so a reader always learns what happened to each disk.
//! Neither holds a SAS or a token: there is no field for one.

use std::path::Path;

use serde_json::{Value, json};

use super::domain::{DomainDisk, DomainSpec, Firmware, GuestOs, domain_xml};
use super::ledger::write_atomic;
use super::plan::{PlannedDisk, PlannedVm};
use super::run::{DiskResult, DiskStatus, bytes_downloaded};
use crate::azure::inventory::DiskRole;
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

/// The manifest of one VM.
pub fn manifest(
    vm: &PlannedVm,
    run_id: &str,
    format: ImageFormat,
    result: &dyn Fn(&PlannedDisk) -> Option<DiskResult>,
) -> Value {
    let mut v = serde_json::to_value(&vm.vm).expect("VmInfo serialises");
    v["run_id"] = json!(run_id);
    v["consistency"] = json!(vm.consistency);
    let disks = vm
        .vm
        .disks
        .iter()
        .map(|d| {
            let mut dv = serde_json::to_value(d).expect("DiskInfo serialises");
            // By place in the VM (OS disk, LUN), which is unique where a name may not be.
            let refused = vm
                .refused
                .iter()
                .find(|r| r.role == d.role && r.lun == d.lun);
            match vm.disks.iter().find(|p| p.role == d.role && p.lun == d.lun) {
                None if refused.is_some() => {
                    let r = refused.expect("checked");
                    dv["status"] = json!(r.status);
                    dv["error"] = json!(r.reason);
                }
                None => {
                    dv["status"] = json!("not_selected");
                }
                Some(p) => {
                    let r = result(p);
                    dv["image"] = json!(p.image_in_vm_dir());
                    if !p.notes.is_empty() {
                        dv["notes"] = json!(p.notes);
                    }
                    if let Some(with) = &p.exported_with {
                        dv["exported_with"] = json!(with);
                    }
                    dv["format"] = json!(format);
                    dv["virtual_size"] = json!(
                        r.as_ref()
                            .and_then(|r| r.report.as_ref())
                            .map(|r| r.virtual_size)
                    );
                    dv["bytes_downloaded"] = json!(
                        r.as_ref()
                            .and_then(|r| r.report.as_ref())
                            .map(bytes_downloaded)
                            .unwrap_or(0)
                    );
                    dv["status"] =
                        json!(r.as_ref().map(|r| r.status.as_str()).unwrap_or("pending"));
                    dv["error"] = json!(r.and_then(|r| r.error));
                }
            }
            dv
        })
        .collect::<Vec<_>>();
    v["disks"] = json!(disks);
    v
}

/// The domain of one VM from its exported disks, OS disk first then LUN order; None when
/// the OS disk was not exported (nothing to boot).
pub fn domain(
    vm: &PlannedVm,
    vm_dir: &Path,
    format: ImageFormat,
    done: &dyn Fn(&PlannedDisk) -> bool,
) -> Option<String> {
    let os = vm.disks.iter().find(|d| d.role == DiskRole::Os)?;
    if !done(os) {
        return None;
    }
    // The plan already orders OS first, then LUNs.
    let disks = vm
        .disks
        .iter()
        .filter(|d| done(d))
        .map(|d| DomainDisk {
            // A shared disk's image is beside the VM folders: name it without `..`.
            path: match (d.shared, vm_dir.parent()) {
                (true, Some(out)) => out.join(&d.image),
                _ => vm_dir.join(d.image_in_vm_dir()),
            },
            format,
            shareable: d.shared,
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
        firmware: Firmware::from_hyperv_generation(vm.vm.hyperv_generation.as_deref()),
        // Trusted Launch (secure boot on in Azure) is not read from the VM yet.
        secure_boot: false,
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
    let mut bytes = serde_json::to_vec_pretty(&m).expect("JSON values serialise");
    bytes.push(b'\n');
    write_atomic(&path, &bytes).map_err(|e| err(&path, e))?;
    let done = |d: &PlannedDisk| result(d).is_some_and(|r| r.status == DiskStatus::Done);
    if let Some(xml) = domain(vm, &vm_dir, format, &done) {
        let path = vm_dir.join("domain.xml");
        write_atomic(&path, xml.as_bytes()).map_err(|e| err(&path, e))?;
    }
    Ok(())
}
