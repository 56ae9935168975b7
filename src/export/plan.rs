//! What an export will do, decided before anything is created in Azure: per VM, whether
//! it is deallocated first, and per disk how it is read (from a snapshot, directly from
//! the managed disk, or from an unmanaged page blob) and where its image goes. Pure and
//! deterministic: `--dry-run` prints exactly this, and a refusal (e.g. `--consistency
//! none` on a running VM) is found here, before the first request that changes anything.
//!
//! Output folders: `DIR/<vm>/`, or `DIR/<vm>.<resource group>/` for VMs whose name another
//! VM of the fleet shares (VM names are unique only within a resource group). Decided over
//! the whole fleet before sharding ([`Folders::for_fleet`]), so every shard of a fleet
//! names the same VM the same way even when the two namesakes land in different shards.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::disk_kind::{self, Refusal, SnapshotType};
use super::guest::{Guest, guest_of, warnings};
use super::naming::{PathNameError, snapshot_name, validate_path_component};
use crate::azure::arm::client::GrantFormat;
use crate::azure::arm::models::PowerState;
use crate::azure::arm::{ResourceId, ResourceIdError, ResourceType};
use crate::azure::inventory::{DiskInfo, DiskRole, EncryptionKind, VmInfo};
use crate::image::sink::ImageFormat;

/// Which disks of each VM an export takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskSet {
    Os,
    Data,
    All,
}

/// How an export gets a consistent, readable copy of a VM's disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Snapshot every selected disk of the VM before any download (crash-consistent
    /// across the VM's disks); the VM keeps running.
    Snapshot,
    /// Deallocate the VM first (stops it; never restarted by this tool), then export
    /// the disks directly.
    Deallocate,
    /// Export disks directly, no snapshot: only for VMs that are already deallocated.
    None,
}

/// How one disk's bytes are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Source {
    /// Snapshot the managed disk, grant read access on the snapshot.
    Snapshot {
        snapshot: ResourceId,
        disk_id: ResourceId,
        /// Incremental (billed by written data) or full (see [`super::disk_kind`]).
        incremental: bool,
        /// Premium SSD v2 / Ultra: wait for the snapshot's background copy before the grant.
        background_copy: bool,
    },
    /// Grant read access on the managed disk itself (its VM is deallocated).
    Disk { disk_id: ResourceId },
    /// An unmanaged disk: its page blob, read with an Entra ID token for storage.
    Blob { uri: String },
    /// Nothing in Azure to read (an ephemeral OS disk): the disk is refused.
    Unavailable,
}

/// A planned disk's identity: its VM's resource id and its place in that VM (the OS disk,
/// or a data disk's LUN) — unique in a fleet even when VM and disk names are not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskKey {
    pub vm: ResourceId,
    /// None for the OS disk.
    pub lun: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedDisk {
    #[serde(skip)]
    pub key: DiskKey,
    pub name: String,
    pub role: DiskRole,
    pub lun: Option<u32>,
    pub source: Source,
    /// Image path relative to the output directory: `<vm>/<vm>-os.<ext>`, or for a
    /// shared disk `shared-disks/<disk>.<resource group>.<ext>` (see [`shared_image`]).
    pub image: PathBuf,
    /// A shared disk already exported by another VM of this run (its key): this VM's
    /// manifest and domain refer to that image, nothing is read twice.
    #[serde(skip)]
    pub owner: Option<DiskKey>,
    /// The VM (folder) whose entry exports the shared disk, for the dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exported_with: Option<String>,
    /// A shared disk: the domain marks it `<shareable/>`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Reads carry an Entra ID token for managed disks besides the SAS
    /// (`dataAccessAuthMode: AzureActiveDirectory`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub entra_id_reads: bool,
    /// What a reader of the image must know (encrypted content and where its key is).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The format its grants ask Azure for: `VHDX` for a disk with 4096-byte sectors
    /// (given only then). The run asks by the disk as it reads it before the grant, and by
    /// this when that read fails.
    #[serde(skip_serializing_if = "GrantFormat::is_vhd")]
    pub grant_format: GrantFormat,
    /// Set when the disk is not exported because of its kind: nothing is created for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

impl PlannedDisk {
    /// The image path relative to the VM's folder (as the manifest gives it): the file
    /// name, or `../shared-disks/…` for a shared disk.
    pub fn image_in_vm_dir(&self) -> String {
        if self.shared {
            return Path::new("..").join(&self.image).display().to_string();
        }
        self.image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Folder of shared disks' images, beside the VM folders: a shared disk belongs to no
/// one VM, so it lives outside all of them and each VM's manifest and domain refer to it
/// by a relative path (`../shared-disks/…`); moving or removing one VM's folder leaves the
/// others whole.
pub const SHARED_DIR: &str = "shared-disks";

/// The image of shared disk `d`: `shared-disks/<disk>.<resource group>.<ext>` (disk names
/// are unique per resource group only).
pub fn shared_image(disk_id: &ResourceId, format: ImageFormat) -> String {
    format!(
        "{}.{}.{}",
        disk_id.name(),
        disk_id.resource_group().to_ascii_lowercase(),
        format.extension()
    )
}

/// Why disk `d` is not exported, if it is not: an ephemeral OS disk has no managed disk
/// to snapshot or grant; a confidential VM's disk encrypted with that VM's key is
/// ciphertext anywhere else, so it is exported only when asked (`--allow-encrypted`); a
/// managed disk's network policy may refuse it (see [`disk_kind::refusal`]).
pub fn refusal(d: &DiskInfo, opts: &PlanOptions) -> Option<Refusal> {
    if d.ephemeral {
        return Some(Refusal::Ephemeral);
    }
    if !opts.allow_encrypted
        && d.encryption.as_ref().map(|e| e.kind) == Some(EncryptionKind::ConfidentialVm)
    {
        return Some(Refusal::ConfidentialVm);
    }
    d.managed
        .then(|| disk_kind::refusal(&d.storage, opts.private_network))
        .flatten()
}

/// What the reader of disk `d`'s image must be told (manifest, log, dry run).
pub fn disk_notes(d: &DiskInfo) -> Vec<String> {
    match &d.encryption {
        Some(e) if e.kind == EncryptionKind::AzureDiskEncryption => vec![match &e.key_vault_url {
            Some(url) => format!(
                "encrypted by Azure Disk Encryption (BitLocker/dm-crypt): the guest needs its volume key from Key Vault {url}"
            ),
            None => "encrypted by Azure Disk Encryption (BitLocker/dm-crypt): the guest needs its volume key from Key Vault".to_string(),
        }],
        Some(_) => vec![
            "confidential VM disk encrypted with the VM's key (exported with --allow-encrypted): unreadable without that VM's key".to_string(),
        ],
        None => Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedVm {
    #[serde(skip)]
    pub vm: VmInfo,
    pub id: ResourceId,
    pub name: String,
    /// Folder under the output directory, and the libvirt domain's name.
    pub folder: String,
    pub resource_group: String,
    pub power_state: PowerState,
    /// The consistency mode actually used for this VM.
    pub consistency: Consistency,
    /// Deallocate before exporting (`--consistency deallocate` on an allocated VM).
    pub deallocate: bool,
    /// Every selected disk; one refused by kind carries its `refused` reason.
    pub disks: Vec<PlannedDisk>,
    /// What the libvirt domain will be (architecture, firmware, secure boot, TPM).
    pub guest: Guest,
    /// What the user must know before booting it (see [`super::guest`]).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub run_id: String,
    pub folders: Folders,
    pub disks: DiskSet,
    pub consistency: Option<Consistency>,
    pub format: ImageFormat,
    /// Export confidential VM disks encrypted with the VM's key (`--allow-encrypted`).
    pub allow_encrypted: bool,
    pub snapshot_type: SnapshotType,
    /// `--private-network`: AllowPrivate disks are reachable from here.
    pub private_network: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "--consistency none exports a disk while it may change: only for deallocated VMs; {vms} not deallocated (use snapshot or deallocate)"
    )]
    NotDeallocated { vms: String },
    #[error(
        "two selected VMs would share the output folder {folder} ({a}, {b}); select one with --resource-group or --name"
    )]
    DuplicateFolder {
        folder: String,
        a: String,
        b: String,
    },
    #[error("VM {vm}: disk {disk} has neither a managed disk id nor a VHD URI")]
    NoSource { vm: String, disk: String },
    #[error("VM {vm:?}: {field} {source}")]
    BadName {
        vm: String,
        field: String,
        source: PathNameError,
    },
    #[error("VM {vm}: {field}: {source}")]
    BadId {
        vm: String,
        field: String,
        source: ResourceIdError,
    },
    #[error(
        "VM {vm} is an instance of the Uniform scale set {scale_set}: --consistency deallocate is refused for it (the scale set's autoscale and automatic repairs act on its instances); use --consistency snapshot"
    )]
    ScaleSetDeallocate { vm: String, scale_set: String },
    #[error("VM {vm}: {field}: {detail}")]
    WrongType {
        vm: String,
        field: String,
        detail: String,
    },
}

fn path_component(vm: &str, field: &str, name: &str) -> Result<(), PlanError> {
    validate_path_component(name).map_err(|source| PlanError::BadName {
        vm: vm.to_string(),
        field: field.to_string(),
        source,
    })
}

/// Checks what a VM record gives before anything is built from it: the names that become
/// folder and file names (`name`, `resource_group`) are single ordinary path components,
/// and the ids are resource ids of the right type. A plan file is checked with this at
/// load; discovered VMs pass through it when planned.
pub fn check_vm_record(vm: &VmInfo) -> Result<(), PlanError> {
    path_component(&vm.name, "name", &vm.name)?;
    path_component(&vm.name, "resource_group", &vm.resource_group)?;
    vm_id(vm)?;
    for (i, d) in vm.disks.iter().enumerate() {
        if let Some(id) = &d.id {
            typed_id(&vm.name, &format!("disks[{i}].id"), id, ResourceType::Disk)?;
        }
    }
    Ok(())
}

/// Parses `id` (the `field` of VM `vm`) as a resource of type `expected`.
fn typed_id(
    vm: &str,
    field: &str,
    id: &str,
    expected: ResourceType,
) -> Result<ResourceId, PlanError> {
    let parsed: ResourceId = id.parse().map_err(|source| PlanError::BadId {
        vm: vm.to_string(),
        field: field.to_string(),
        source,
    })?;
    if !parsed.is(&expected) {
        return Err(PlanError::WrongType {
            vm: vm.to_string(),
            field: field.to_string(),
            detail: format!("{id} is a {}, not a {expected}", parsed.resource_type()),
        });
    }
    Ok(parsed)
}

/// A VM's id: a VM, or an instance of a Uniform scale set (exported the same way, from
/// its managed disks).
fn vm_id(vm: &VmInfo) -> Result<ResourceId, PlanError> {
    let parsed: ResourceId = vm.id.parse().map_err(|source| PlanError::BadId {
        vm: vm.name.clone(),
        field: "id".into(),
        source,
    })?;
    if parsed.is(&ResourceType::VirtualMachine) || parsed.is(&ResourceType::ScaleSetVm) {
        return Ok(parsed);
    }
    Err(PlanError::WrongType {
        vm: vm.name.clone(),
        field: "id".into(),
        detail: format!(
            "{} is a {}, not a {} (nor a scale-set instance)",
            vm.id,
            parsed.resource_type(),
            ResourceType::VirtualMachine
        ),
    })
}

fn wanted(set: DiskSet, role: DiskRole) -> bool {
    set.takes(role)
}

impl DiskSet {
    /// True if an export with this `--disks` takes disks of `role`.
    pub fn takes(self, role: DiskRole) -> bool {
        matches!(
            (self, role),
            (DiskSet::All, _) | (DiskSet::Os, DiskRole::Os) | (DiskSet::Data, DiskRole::Data)
        )
    }
}

/// The image file name of a disk: `<vm>-os.<ext>` or `<vm>-data-lun<N>.<ext>`.
pub fn image_name(vm: &str, disk: &DiskInfo, format: ImageFormat) -> String {
    match disk.lun {
        Some(lun) if disk.role == DiskRole::Data => {
            format!("{vm}-data-lun{lun}.{}", format.extension())
        }
        _ => format!("{vm}-os.{}", format.extension()),
    }
}

/// The output folder of every VM of a fleet, by VM id (see the module note).
#[derive(Debug, Clone, Default)]
pub struct Folders(HashMap<ResourceId, String>);

impl Folders {
    pub fn for_fleet(vms: &[VmInfo]) -> Self {
        let mut namesakes: HashMap<String, usize> = HashMap::new();
        for vm in vms {
            *namesakes.entry(vm.name.to_ascii_lowercase()).or_default() += 1;
        }
        Self(
            vms.iter()
                .filter_map(|vm| {
                    let folder = if namesakes[&vm.name.to_ascii_lowercase()] > 1 {
                        format!("{}.{}", vm.name, vm.resource_group.to_ascii_lowercase())
                    } else {
                        vm.name.clone()
                    };
                    // An id that does not parse is refused when the VM is planned.
                    Some((vm.id.parse().ok()?, folder))
                })
                .collect(),
        )
    }

    /// The VM's folder; its name for a VM the fleet did not contain.
    pub fn of(&self, vm: &VmInfo) -> String {
        vm.id
            .parse::<ResourceId>()
            .ok()
            .and_then(|id| self.0.get(&id).cloned())
            .unwrap_or_else(|| vm.name.clone())
    }
}

/// Plans every VM; refuses the whole run when a VM cannot be exported as asked.
pub fn plan(vms: &[VmInfo], opts: &PlanOptions) -> Result<Vec<PlannedVm>, PlanError> {
    // Case-insensitively: the output may be on a case-insensitive filesystem. Only a VM
    // whose own name looks like `<name>.<group>` of a namesake can get here.
    let mut by_folder: BTreeMap<String, &VmInfo> = BTreeMap::new();
    for vm in vms {
        let folder = opts.folders.of(vm);
        if let Some(other) = by_folder.insert(folder.to_ascii_lowercase(), vm) {
            return Err(PlanError::DuplicateFolder {
                folder,
                a: other.id.clone(),
                b: vm.id.clone(),
            });
        }
    }
    if opts.consistency == Some(Consistency::None) {
        let allocated: Vec<&str> = vms
            .iter()
            .filter(|v| v.power_state != PowerState::Deallocated)
            .map(|v| v.name.as_str())
            .collect();
        if !allocated.is_empty() {
            return Err(PlanError::NotDeallocated {
                vms: allocated.join(", "),
            });
        }
    }
    let mut planned = vms
        .iter()
        .map(|vm| plan_vm(vm, opts))
        .collect::<Result<Vec<_>, _>>()?;
    share_once(&mut planned);
    Ok(planned)
}

/// A shared disk is read once per run: its first entry (plan order) exports it, every
/// later one refers to that entry and its image.
fn share_once(planned: &mut [PlannedVm]) {
    let mut owners: HashMap<ResourceId, (DiskKey, String)> = HashMap::new();
    for vm in planned.iter_mut() {
        // A refused entry is refused on its own: it neither exports nor waits for another.
        for d in vm
            .disks
            .iter_mut()
            .filter(|d| d.shared && d.refused.is_none())
        {
            let disk_id = match &d.source {
                Source::Snapshot { disk_id, .. } | Source::Disk { disk_id } => disk_id.clone(),
                Source::Blob { .. } | Source::Unavailable => continue,
            };
            match owners.get(&disk_id) {
                Some((key, folder)) => {
                    d.owner = Some(key.clone());
                    d.exported_with = Some(folder.clone());
                }
                None => {
                    owners.insert(disk_id, (d.key.clone(), vm.folder.clone()));
                }
            }
        }
    }
}

fn plan_vm(vm: &VmInfo, opts: &PlanOptions) -> Result<PlannedVm, PlanError> {
    let deallocated = vm.power_state == PowerState::Deallocated;
    // Default: a snapshot for anything that may be running (any state but deallocated:
    // a VM that is starting or stopping is as much a moving target as a running one).
    let consistency = opts.consistency.unwrap_or(if deallocated {
        Consistency::None
    } else {
        Consistency::Snapshot
    });
    let deallocate = consistency == Consistency::Deallocate && !deallocated;
    check_vm_record(vm)?;
    let id = vm_id(vm)?;
    if let (true, Some(scale_set)) = (deallocate, &vm.kind.scale_set) {
        return Err(PlanError::ScaleSetDeallocate {
            vm: vm.name.clone(),
            scale_set: scale_set.clone(),
        });
    }
    let mut disks: Vec<&DiskInfo> = vm
        .disks
        .iter()
        .filter(|d| wanted(opts.disks, d.role))
        .collect();
    // OS disk first, then data disks in LUN order (the domain's boot order).
    disks.sort_by_key(|d| (d.role == DiskRole::Data, d.lun));
    let folder = opts.folders.of(vm);
    path_component(&vm.name, "output folder", &folder)?;
    let planned = disks
        .into_iter()
        .map(|d| {
            let refused = refusal(d, opts);
            // An ephemeral OS disk has nothing in Azure to read.
            let source = if d.ephemeral {
                Source::Unavailable
            } else {
                disk_source(vm, d, consistency, opts)?
            };
            let shared_id = match &source {
                Source::Snapshot { disk_id, .. } | Source::Disk { disk_id } if d.shared() => {
                    Some(disk_id)
                }
                _ => None,
            };
            let (dir, image) = match shared_id {
                Some(id) => (SHARED_DIR, shared_image(id, opts.format)),
                None => (folder.as_str(), image_name(&vm.name, d, opts.format)),
            };
            path_component(&vm.name, "image file", &image)?;
            Ok(PlannedDisk {
                key: DiskKey {
                    vm: id.clone(),
                    lun: d.lun.filter(|_| d.role == DiskRole::Data),
                },
                name: d.name.clone(),
                role: d.role,
                lun: d.lun,
                image: PathBuf::from(dir).join(image),
                owner: None,
                exported_with: None,
                shared: shared_id.is_some(),
                entra_id_reads: d.needs_entra_for_export(),
                notes: disk_notes(d),
                grant_format: if d.managed {
                    disk_kind::grant_format(&d.storage)
                } else {
                    GrantFormat::Vhd
                },
                source,
                refused,
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    Ok(PlannedVm {
        vm: vm.clone(),
        id,
        name: vm.name.clone(),
        folder,
        resource_group: vm.resource_group.clone(),
        power_state: vm.power_state,
        consistency,
        deallocate,
        disks: planned,
        guest: guest_of(vm),
        warnings: warnings(vm),
    })
}

/// How disk `d` of `vm` is read; its snapshot lives in the disk's own resource group.
fn disk_source(
    vm: &VmInfo,
    d: &DiskInfo,
    consistency: Consistency,
    opts: &PlanOptions,
) -> Result<Source, PlanError> {
    let field = || format!("disk {} id", d.name);
    Ok(match (&d.id, &d.vhd_uri) {
        (Some(id), _) => {
            let disk_id = typed_id(&vm.name, &field(), id, ResourceType::Disk)?;
            if consistency == Consistency::Snapshot {
                let name = snapshot_name(&opts.run_id, &d.name, &disk_id);
                let snapshot = ResourceId::new(
                    disk_id.subscription(),
                    disk_id.resource_group(),
                    ResourceType::Snapshot,
                    &name,
                );
                Source::Snapshot {
                    snapshot,
                    disk_id,
                    incremental: disk_kind::incremental(opts.snapshot_type, &d.storage),
                    background_copy: disk_kind::has_background_copy(d.storage.sku.as_deref()),
                }
            } else {
                Source::Disk { disk_id }
            }
        }
        (None, Some(uri)) => Source::Blob { uri: uri.clone() },
        (None, None) => {
            return Err(PlanError::NoSource {
                vm: vm.name.clone(),
                disk: d.name.clone(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, role: DiskRole, lun: Option<u32>) -> DiskInfo {
        DiskInfo {
            id: Some(format!(
                "/subscriptions/s/resourceGroups/RG/providers/Microsoft.Compute/disks/{name}"
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
        }
    }

    fn vm(name: &str, state: PowerState) -> VmInfo {
        VmInfo {
            subscription_id: "s".into(),
            id: format!(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}"
            ),
            name: name.into(),
            resource_group: "rg".into(),
            location: "westeurope".into(),
            power_state: state,
            vm_size: None,
            vcpus: None,
            memory_mib: None,
            os_type: None,
            hyperv_generation: None,
            tags: Default::default(),
            disks: vec![
                disk("d3", DiskRole::Data, Some(3)),
                disk("os", DiskRole::Os, None),
                disk("d0", DiskRole::Data, Some(0)),
            ],
            kind: Default::default(),
        }
    }

    /// `vm(name, state)` in resource group `group` instead of `rg`.
    fn vm_in(name: &str, group: &str, state: PowerState) -> VmInfo {
        let mut v = vm(name, state);
        v.id =
            v.id.replace("/resourceGroups/rg/", &format!("/resourceGroups/{group}/"));
        v.resource_group = group.into();
        v
    }

    fn opts(c: Option<Consistency>, d: DiskSet) -> PlanOptions {
        PlanOptions {
            run_id: "r1".into(),
            folders: Folders::default(),
            disks: d,
            consistency: c,
            format: ImageFormat::Qcow2,
            allow_encrypted: false,
            snapshot_type: SnapshotType::Incremental,
            private_network: false,
        }
    }

    /// `vm(name, state)` as instance 4 of the Uniform scale set `ss`.
    fn instance(name: &str, state: PowerState) -> VmInfo {
        let mut v = vm(name, state);
        let ss = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss";
        v.id = format!("{ss}/virtualMachines/4");
        v.kind.scale_set = Some(ss.into());
        v
    }

    #[test]
    fn scale_set_instances_are_planned_from_snapshots_and_never_deallocated() {
        let inst = instance("ss_4", PowerState::Running);
        let p = plan(std::slice::from_ref(&inst), &opts(None, DiskSet::All)).unwrap();
        assert_eq!(p[0].id.parent(), Some("ss"));
        assert!(matches!(p[0].disks[0].source, Source::Snapshot { .. }));
        assert!(
            p[0].warnings
                .iter()
                .any(|w| w.contains("Uniform scale set"))
        );
        let e = plan(&[inst], &opts(Some(Consistency::Deallocate), DiskSet::All))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ss_4")
                && e.contains("virtualMachineScaleSets/ss")
                && e.contains("deallocate"),
            "{e}"
        );
        // Deallocated already: nothing to deallocate, so its disks are read directly.
        let p = plan(
            &[instance("ss_4", PowerState::Deallocated)],
            &opts(Some(Consistency::Deallocate), DiskSet::All),
        )
        .unwrap();
        assert!(matches!(p[0].disks[0].source, Source::Disk { .. }));
        // A disk id in the VM's place is still refused.
        let mut wrong = vm("x", PowerState::Running);
        wrong.id = wrong.disks[0].id.clone().unwrap();
        let e = plan(&[wrong], &opts(None, DiskSet::All))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a Microsoft.Compute/virtualMachines (nor a scale-set instance)"),
            "{e}"
        );
    }

    #[test]
    fn defaults_snapshot_allocated_and_read_deallocated_directly() {
        let p = plan(
            &[
                vm("a", PowerState::Running),
                vm("b", PowerState::Deallocated),
            ],
            &opts(None, DiskSet::All),
        )
        .unwrap();
        assert_eq!(p[0].consistency, Consistency::Snapshot);
        let names: Vec<_> = p[0]
            .disks
            .iter()
            .map(|d| d.image.display().to_string())
            .collect();
        assert_eq!(
            names,
            ["a/a-os.qcow2", "a/a-data-lun0.qcow2", "a/a-data-lun3.qcow2"]
        );
        match &p[0].disks[0].source {
            Source::Snapshot { snapshot, .. } => {
                assert_eq!(snapshot.resource_group(), "RG");
                assert!(snapshot.is(&ResourceType::Snapshot));
                assert!(snapshot.name().starts_with("a2k-r1-os-"), "{snapshot}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p[1].disks[0].source, Source::Disk { .. }));
        assert!(!p[1].deallocate);
    }

    #[test]
    fn none_is_refused_for_allocated_vms_and_disk_sets_filter() {
        let e = plan(
            &[
                vm("a", PowerState::Stopped),
                vm("b", PowerState::Deallocated),
            ],
            &opts(Some(Consistency::None), DiskSet::All),
        )
        .unwrap_err();
        assert!(e.to_string().contains("a not deallocated"), "{e}");
        let p = plan(
            &[vm("a", PowerState::Running)],
            &opts(Some(Consistency::Deallocate), DiskSet::Data),
        )
        .unwrap();
        assert!(p[0].deallocate);
        assert_eq!(p[0].disks.len(), 2);
        assert!(
            p[0].disks
                .iter()
                .all(|d| matches!(d.source, Source::Disk { .. }))
        );
    }

    #[test]
    fn namesakes_in_two_groups_get_folders_named_by_group() {
        let a = vm("web", PowerState::Running);
        let b = vm_in("WEB", "RG-Two", PowerState::Deallocated);
        let other = vm("db", PowerState::Running);
        let fleet = [a.clone(), b.clone(), other.clone()];
        let o = PlanOptions {
            folders: Folders::for_fleet(&fleet),
            ..opts(None, DiskSet::Os)
        };
        let p = plan(&fleet, &o).unwrap();
        let folders: Vec<_> = p.iter().map(|v| v.folder.as_str()).collect();
        assert_eq!(folders, ["web.rg", "WEB.rg-two", "db"]);
        assert_eq!(
            p[1].disks[0].image,
            PathBuf::from("WEB.rg-two/WEB-os.qcow2")
        );
        // A shard holding one namesake names it as the whole fleet does.
        let shard = plan(std::slice::from_ref(&b), &o).unwrap();
        assert_eq!(shard[0].folder, "WEB.rg-two");
        // Without the fleet's view a VM keeps its name.
        assert_eq!(
            plan(&[a], &opts(None, DiskSet::Os)).unwrap()[0].folder,
            "web"
        );
    }

    #[test]
    fn names_that_would_leave_the_output_folder_are_refused_naming_the_field() {
        let long = "v".repeat(250);
        let cases: Vec<(VmInfo, &str)> = vec![
            (vm("../../etc", PowerState::Running), "name"),
            (vm("/tmp/x", PowerState::Running), "name"),
            (vm("..", PowerState::Running), "name"),
            (vm("a\\b", PowerState::Running), "name"),
            (vm("a\u{0}b", PowerState::Running), "name"),
            (vm_in("web", "..", PowerState::Running), "resource_group"),
            // Fits alone, not as `<name>-data-lun0.qcow2`.
            (vm(&long, PowerState::Running), "image file"),
        ];
        for (bad, field) in cases {
            let e = plan(std::slice::from_ref(&bad), &opts(None, DiskSet::All)).unwrap_err();
            assert!(
                matches!(&e, PlanError::BadName { field: f, .. } if f == field),
                "{:?}: {e}",
                bad.name
            );
        }
        let mut wrong = vm("web", PowerState::Running);
        wrong.disks[0].id = Some(wrong.id.clone());
        let e = check_vm_record(&wrong).unwrap_err().to_string();
        assert!(
            e.contains("disks[0].id") && e.contains("not a Microsoft.Compute/disks"),
            "{e}"
        );
        let mut bad_id = vm("web", PowerState::Running);
        bad_id.id = "/subscriptions/s/../../x".into();
        let e = check_vm_record(&bad_id).unwrap_err().to_string();
        assert!(
            e.contains("id") && e.contains("not an ARM resource id"),
            "{e}"
        );
    }

    #[test]
    fn folders_that_still_collide_are_refused() {
        // Two VMs named alike in the same group cannot exist in Azure; a VM literally
        // named like a namesake's folder can.
        let a = vm("web", PowerState::Running);
        let b = vm_in("web", "other", PowerState::Running);
        let c = vm_in("web.rg", "third", PowerState::Running);
        let fleet = [a, b, c];
        let o = PlanOptions {
            folders: Folders::for_fleet(&fleet),
            ..opts(None, DiskSet::All)
        };
        let e = plan(&fleet, &o).unwrap_err();
        assert!(matches!(e, PlanError::DuplicateFolder { .. }), "{e}");
        assert!(e.to_string().contains("web.rg"), "{e}");
    }
    fn shared(mut d: DiskInfo) -> DiskInfo {
        d.max_shares = Some(2);
        d
    }

    #[test]
    fn an_ephemeral_os_disk_is_unsupported_and_skipped_silently_with_data_only() {
        let mut v = vm("a", PowerState::Running);
        v.disks[1].ephemeral = true;
        let p = plan(std::slice::from_ref(&v), &opts(None, DiskSet::All)).unwrap();
        let refused: Vec<&PlannedDisk> =
            p[0].disks.iter().filter(|d| d.refused.is_some()).collect();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].role, DiskRole::Os);
        assert_eq!(refused[0].refused, Some(Refusal::Ephemeral));
        assert_eq!(refused[0].source, Source::Unavailable);
        let why = refused[0].refused.as_ref().unwrap();
        assert_eq!(why.status(), crate::export::ledger::DiskStatus::Unsupported);
        assert_eq!(why.reason(), "unsupported: ephemeral OS disk");
        let json = serde_json::to_value(refused[0]).unwrap();
        assert_eq!(json["refused"]["reason"], "ephemeral");
        let p = plan(&[v], &opts(None, DiskSet::Data)).unwrap();
        assert!(p[0].disks.iter().all(|d| d.refused.is_none()));
    }

    #[test]
    fn a_confidential_disk_is_refused_unless_allowed_and_ade_is_noted() {
        use crate::azure::inventory::DiskEncryption;
        let mut v = vm("a", PowerState::Running);
        v.disks[1].encryption = Some(DiskEncryption {
            kind: EncryptionKind::ConfidentialVm,
            key_vault_url: None,
        });
        v.disks[0].encryption = Some(DiskEncryption {
            kind: EncryptionKind::AzureDiskEncryption,
            key_vault_url: Some("https://kv.vault.azure.net/".into()),
        });
        let p = plan(std::slice::from_ref(&v), &opts(None, DiskSet::All)).unwrap();
        let os = &p[0].disks[0];
        assert_eq!(os.refused, Some(Refusal::ConfidentialVm));
        let why = os.refused.as_ref().unwrap();
        assert_eq!(why.status(), crate::export::ledger::DiskStatus::Refused);
        assert!(why.reason().starts_with("refused: "));
        assert!(why.reason().contains("--allow-encrypted"));
        let lun3 = p[0].disks.iter().find(|d| d.lun == Some(3)).unwrap();
        assert!(lun3.notes[0].contains("Key Vault https://kv.vault.azure.net/"));
        let allowed = PlanOptions {
            allow_encrypted: true,
            ..opts(None, DiskSet::All)
        };
        let p = plan(&[v], &allowed).unwrap();
        assert!(p[0].disks.iter().all(|d| d.refused.is_none()));
        assert!(p[0].disks[0].notes[0].contains("--allow-encrypted"));
    }

    #[test]
    fn a_shared_disk_is_planned_once_into_the_shared_folder() {
        let mut a = vm("a", PowerState::Running);
        let mut b = vm("b", PowerState::Running);
        a.disks[0] = shared(disk("quorum", DiskRole::Data, Some(3)));
        b.disks[0] = shared(disk("quorum", DiskRole::Data, Some(5)));
        b.disks[2] = disk("b-d0", DiskRole::Data, Some(0));
        // A shared disk with maxShares 1 is an ordinary disk.
        a.disks[2].max_shares = Some(1);
        let p = plan(&[a, b], &opts(None, DiskSet::All)).unwrap();
        let qa = p[0].disks.iter().find(|d| d.lun == Some(3)).unwrap();
        let qb = p[1].disks.iter().find(|d| d.lun == Some(5)).unwrap();
        assert_eq!(qa.image, PathBuf::from("shared-disks/quorum.rg.qcow2"));
        assert_eq!(qa.image, qb.image);
        assert_eq!(qb.image_in_vm_dir(), "../shared-disks/quorum.rg.qcow2");
        assert!(qa.shared && qb.shared);
        assert_eq!(qa.owner, None);
        assert_eq!(qb.owner.as_ref(), Some(&qa.key));
        assert_eq!(qb.exported_with.as_deref(), Some("a"));
        let d0 = p[0].disks.iter().find(|d| d.lun == Some(0)).unwrap();
        assert!(!d0.shared && d0.image_in_vm_dir() == "a-data-lun0.qcow2");
    }

    #[test]
    fn disk_kinds_decide_the_snapshot_and_refusals() {
        let mut v = vm("a", PowerState::Running);
        // d3: Premium SSD v2, 512-byte sectors; os: ordinary; d0: DenyAll.
        v.disks[0].storage.sku = Some("PremiumV2_LRS".into());
        v.disks[0].storage.sector_size = Some(512);
        v.disks[2].storage.network_access_policy = Some("DenyAll".into());
        let full = PlanOptions {
            snapshot_type: SnapshotType::Full,
            ..opts(None, DiskSet::All)
        };
        let p = plan(std::slice::from_ref(&v), &full).unwrap();
        let by_name = |n: &str| p[0].disks.iter().find(|d| d.name == n).unwrap().clone();
        let snap = |d: &PlannedDisk| match d.source {
            Source::Snapshot {
                incremental,
                background_copy,
                ..
            } => (incremental, background_copy),
            ref other => panic!("{other:?}"),
        };
        // Full as asked, except for the disk type that takes incremental snapshots only.
        assert_eq!(snap(&by_name("os")), (false, false));
        assert_eq!(snap(&by_name("d3")), (true, true));
        assert_eq!(by_name("d0").refused, Some(Refusal::DenyAll));
        assert_eq!(by_name("os").refused, None);
        // The default is incremental for every disk.
        let p = plan(&[v], &opts(None, DiskSet::Os)).unwrap();
        assert_eq!(snap(&p[0].disks[0]), (true, false));
        let json = serde_json::to_value(&p[0].disks[0]).unwrap();
        assert_eq!(json["source"]["incremental"], true);
        assert!(json.get("refused").is_none());
    }
}
