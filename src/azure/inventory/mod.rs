//! The VM inventory: which VMs match a selection, with power state, size, OS, generation and
//! disks — found with a number of ARM requests that grows with pages, not with VMs.
//!
//! List strategy (the default): per scope (the subscription, or each `--resource-group`),
//! the full-model VM pages and the `statusOnly=true` pages run concurrently and are merged
//! by resource id, compared case-insensitively (ARM is not consistent about the case of
//! resource group names). A VM absent from the status pages gets `unknown`. Then disks are
//! listed once per resource group that holds a selected VM's disk, and sizes (Resource
//! SKUs) once per subscription and location. Per-VM strategy: when the selection names a few VMs exactly and gives their
//! resource groups, a GET with `$expand=instanceView` per candidate is cheaper than
//! listing a large subscription; the choice is logged at debug level.

pub mod fleet;
pub mod graph;
pub mod kql;
pub mod pace;
pub mod selection;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::arm::client::ResourceRef;
use super::arm::models::{
    ADE_EXTENSION_TYPES, Disk, OsType, PowerState, ResourceSku, ScaleSet, VirtualMachine, VmSize,
    name_of, resource_group_of,
};
use super::arm::{ArmClient, ArmError, ResourceId, ResourceType};
pub use fleet::{Discovery, DiscoverySource, discover, discover_with_source};
pub use selection::{Selection, SelectionError, SelectionInput, Subscriptions};

/// Concurrent list calls (scopes, resource groups, locations): enough to overlap latency,
/// far below ARM's read budget (a bucket of 250 reads, refilled at 25/s).
pub const CONCURRENCY: usize = 8;
/// At most this many exact-name GETs are preferred to listing.
pub const PER_VM_LIMIT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskRole {
    Os,
    Data,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Managed disk resource id; `null` for an unmanaged (page blob) disk.
    pub id: Option<String>,
    pub name: String,
    pub role: DiskRole,
    /// LUN of a data disk; `null` for the OS disk.
    pub lun: Option<u32>,
    pub size_gb: Option<u64>,
    pub managed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vhd_uri: Option<String>,
    /// An ephemeral OS disk: on the host, no managed disk behind it; cannot be exported.
    #[serde(default)]
    pub ephemeral: bool,
    /// `maxShares` of a shared disk (attached to several VMs at once); null otherwise.
    #[serde(default)]
    pub max_shares: Option<u32>,
    /// `AzureActiveDirectory` when reads of its export SAS need an Entra ID token too.
    #[serde(default)]
    pub data_access_auth_mode: Option<String>,
    /// Guest-visible encryption of its content; null for none or server-side only
    /// (platform or customer keys are transparent to a reader of the export).
    #[serde(default)]
    pub encryption: Option<DiskEncryption>,
    /// The disk's type, sector size and network policy (flattened into the disk's JSON).
    #[serde(flatten, default)]
    pub storage: DiskStorage,
    /// Bytes of data the disk holds: the sum of the written page ranges of its blob (Get
    /// Page Ranges over a snapshot, the disk or the VHD blob; the VHD footer's page
    /// counts too). Measured by `export --dry-run --measure` and kept in the plan file,
    /// where `--shard` balances by it; absent (null) when not measured, and never set by
    /// `list`, which only GETs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_bytes: Option<u64>,
}

impl DiskInfo {
    /// Attached to several VMs (`maxShares` > 1): exported once per run.
    pub fn shared(&self) -> bool {
        self.max_shares.is_some_and(|n| n > 1)
    }

    /// Reads of its export need an Entra ID token besides the SAS.
    pub fn needs_entra_for_export(&self) -> bool {
        self.data_access_auth_mode
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("AzureActiveDirectory"))
    }

    /// Short words for the kinds of this disk (`list`'s table, the dry run): empty for
    /// an ordinary disk.
    pub fn kind_notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.ephemeral {
            out.push("ephemeral".to_string());
        }
        if let Some(n) = self.max_shares.filter(|&n| n > 1) {
            out.push(format!("shared({n})"));
        }
        if self.needs_entra_for_export() {
            out.push("entra-export".to_string());
        }
        match self.encryption.as_ref().map(|e| e.kind) {
            Some(EncryptionKind::AzureDiskEncryption) => out.push("ade".to_string()),
            Some(EncryptionKind::ConfidentialVm) => out.push("cvm-encrypted".to_string()),
            None => {}
        }
        // The disk resource's kind (Premium SSD v2 / Ultra, sector size, network policy).
        let st = &self.storage;
        let sku = st.sku.as_deref().unwrap_or_default();
        let base = if sku.eq_ignore_ascii_case("PremiumV2_LRS") {
            Some("premium-v2")
        } else if sku.eq_ignore_ascii_case("UltraSSD_LRS") {
            Some("ultra")
        } else {
            None
        };
        if let Some(base) = base {
            // Azure's default for these types is 4096-byte sectors.
            match st.sector_size.unwrap_or(4096) {
                4096 => out.push(format!("{base}-4k")),
                _ => out.push(base.to_string()),
            }
        }
        match st.network_access_policy.as_deref() {
            Some(p) if p.eq_ignore_ascii_case("DenyAll") => out.push("deny-all".to_string()),
            Some(p) if p.eq_ignore_ascii_case("AllowPrivate") => {
                out.push("allow-private".to_string())
            }
            _ => {}
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncryptionKind {
    /// Azure Disk Encryption: BitLocker (Windows) or dm-crypt (Linux) inside the guest;
    /// the volume key is in Key Vault.
    AzureDiskEncryption,
    /// A confidential VM's disk encrypted with a key bound to that VM
    /// (`DiskWithVMGuestState`): unreadable outside it.
    ConfidentialVm,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEncryption {
    pub kind: EncryptionKind,
    /// The Key Vault holding the volume key, when the settings name it.
    #[serde(default)]
    pub key_vault_url: Option<String>,
}

/// What of a managed disk's kind decides how it can be exported, from its disk resource
/// (`Disks - Get`/`List`); every field null when the disk record could not be read or the
/// disk is unmanaged. A plan file written before these fields existed still reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStorage {
    /// `sku.name`: `PremiumV2_LRS`, `UltraSSD_LRS`, `Premium_LRS`, `StandardSSD_LRS`, ….
    #[serde(default)]
    pub sku: Option<String>,
    /// `creationData.logicalSectorSize` as the disk resource gives it: 512 or 4096
    /// (Premium SSD v2 and Ultra only). Named apart from the manifest's
    /// `logical_sector_size`, which is what the exported image reports.
    #[serde(default)]
    pub sector_size: Option<u32>,
    /// `AllowAll`, `AllowPrivate` or `DenyAll`.
    #[serde(default)]
    pub network_access_policy: Option<String>,
    /// The DiskAccess resource whose private endpoints may export an `AllowPrivate` disk.
    #[serde(default)]
    pub disk_access_id: Option<String>,
}

impl DiskStorage {
    /// From a disk resource as `Disks - Get` answers.
    pub fn of(disk: &Disk) -> Self {
        let props = disk.properties.as_ref();
        Self {
            sku: disk.sku_name().map(str::to_string),
            sector_size: props
                .and_then(|p| p.creation_data.as_ref())
                .and_then(|c| c.logical_sector_size),
            network_access_policy: props.and_then(|p| p.network_access_policy.clone()),
            disk_access_id: props.and_then(|p| p.disk_access_id.clone()),
        }
    }
}

/// The CPU architecture of a VM: what QEMU must emulate or what KVM host it needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    #[default]
    X64,
    Arm64,
}

impl Architecture {
    /// Azure's spelling (`x64`, `Arm64`, any case); None for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "x64" => Some(Self::X64),
            "arm64" => Some(Self::Arm64),
            _ => None,
        }
    }
}

/// What kind of machine a VM is beyond size and generation (printed flat into the VM's
/// JSON): the three things that change what its libvirt domain must be or whether and how
/// it can be read. Defaults are those of an ordinary x64 VM, so older plan files load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmKind {
    /// From the OS disk's `supportedCapabilities.architecture`, else the size's
    /// `CpuArchitectureType`, else x64.
    pub architecture: Architecture,
    /// `securityProfile.securityType`: "TrustedLaunch", "ConfidentialVM", or null
    /// (a standard VM).
    pub security_type: Option<String>,
    /// `uefiSettings.secureBootEnabled`.
    pub secure_boot: bool,
    /// `uefiSettings.vTpmEnabled`.
    pub vtpm: bool,
    /// The resource id of the Uniform scale set this VM is an instance of; null for
    /// ordinary VMs (including Flexible scale-set members, which are ordinary VMs).
    pub scale_set: Option<String>,
}

/// One VM as `list --output json` prints it and `export` plans with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    /// The subscription the VM is in (from its id); older plan files without it still
    /// load, and it is filled from the id when they are read.
    #[serde(default)]
    pub subscription_id: String,
    pub name: String,
    pub resource_group: String,
    pub location: String,
    pub power_state: PowerState,
    pub vm_size: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// "linux", "windows" or null.
    pub os_type: Option<String>,
    /// "V1" or "V2" as Azure reports it, or null when unknown.
    pub hyperv_generation: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub disks: Vec<DiskInfo>,
    #[serde(flatten, default)]
    pub kind: VmKind,
}

impl VmInfo {
    pub fn total_disk_gb(&self) -> u64 {
        self.disks.iter().filter_map(|d| d.size_gb).sum()
    }
}

/// Counts that the caller can render while discovery runs (stderr spinner).
#[derive(Debug, Default)]
pub struct DiscoveryProgress {
    pub vms: AtomicUsize,
    pub statuses: AtomicUsize,
    pub disks: AtomicUsize,
}

impl DiscoveryProgress {
    pub fn message(&self) -> String {
        format!(
            "VMs {} · power states {} · disks {}",
            self.vms.load(Ordering::Relaxed),
            self.statuses.load(Ordering::Relaxed),
            self.disks.load(Ordering::Relaxed)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    List,
    PerVm(Vec<ResourceRef>),
}

/// List, unless the selection names at most `limit` exact VMs × resource groups.
pub fn choose_strategy(sel: &Selection, subscription: &str, limit: usize) -> Strategy {
    match sel.exact_names() {
        Some(names)
            if !sel.resource_groups.is_empty()
                && names.len() * sel.resource_groups.len() <= limit =>
        {
            Strategy::PerVm(
                sel.resource_groups
                    .iter()
                    .flat_map(|rg| {
                        names
                            .iter()
                            .map(move |n| ResourceRef::new(subscription, rg, n))
                    })
                    .collect(),
            )
        }
        _ => Strategy::List,
    }
}

/// Pairs each full VM with its power state from the status pages, by id without case.
pub fn merge_power_states(
    full: Vec<VirtualMachine>,
    statuses: &[VirtualMachine],
) -> Vec<(VirtualMachine, PowerState)> {
    let by_id: HashMap<String, PowerState> = statuses
        .iter()
        .map(|s| (s.id.to_ascii_lowercase(), s.power_state()))
        .collect();
    full.into_iter()
        .map(|vm| {
            let state = by_id
                .get(&vm.id.to_ascii_lowercase())
                .copied()
                .unwrap_or(PowerState::Unknown);
            (vm, state)
        })
        .collect()
}

fn os_name(t: OsType) -> Option<String> {
    match t {
        OsType::Linux => Some("linux".into()),
        OsType::Windows => Some("windows".into()),
        OsType::Unknown => None,
    }
}

/// Builds the output record from the VM, its power state and what the disk and size
/// lists say (keyed by lower-case disk id and lower-case size name).
pub fn build_vm_info(
    vm: &VirtualMachine,
    power_state: PowerState,
    disks: &HashMap<String, Disk>,
    sizes: &HashMap<String, VmSize>,
) -> VmInfo {
    let lookup = |id: &Option<String>| id.as_ref().and_then(|i| disks.get(&i.to_ascii_lowercase()));
    let mut out_disks = Vec::new();
    let mut os_type = None;
    let mut generation = vm
        .instance_view()
        .and_then(|iv| iv.hyper_v_generation.clone());
    let ade_extension = has_ade_extension(vm);
    if let Some(st) = vm.storage() {
        if let Some(os) = &st.os_disk {
            let id = os.managed_disk.as_ref().and_then(|m| m.id.clone());
            let record = lookup(&id);
            let props = record.and_then(|d| d.properties.as_ref());
            os_type = os
                .os_type
                .or(props.and_then(|p| p.os_type))
                .and_then(os_name);
            if generation.is_none() {
                generation = props.and_then(|p| p.hyper_v_generation.clone());
            }
            let mut info = disk_info(
                DiskRole::Os,
                None,
                &id,
                os.name.as_deref(),
                os.disk_size_gb,
                os.vhd.as_ref().and_then(|v| v.uri.clone()),
                record,
            );
            os_disk_kinds(&mut info, os, record, ade_extension);
            out_disks.push(info);
        }
        let mut data: Vec<_> = st.data_disks.iter().collect();
        data.sort_by_key(|d| d.lun);
        for d in data {
            let id = d.managed_disk.as_ref().and_then(|m| m.id.clone());
            let record = lookup(&id);
            let mut info = disk_info(
                DiskRole::Data,
                Some(d.lun),
                &id,
                d.name.as_deref(),
                d.disk_size_gb,
                d.vhd.as_ref().and_then(|v| v.uri.clone()),
                record,
            );
            info.encryption = encryption(record, d.managed_disk.as_ref(), ade_extension, None);
            out_disks.push(info);
        }
    }
    let size = vm
        .vm_size()
        .and_then(|s| sizes.get(&s.to_ascii_lowercase()));
    let os_record = vm
        .storage()
        .and_then(|st| st.os_disk.as_ref())
        .and_then(|os| lookup(&os.managed_disk.as_ref().and_then(|m| m.id.clone())));
    let kind = vm_kind(vm, os_record, size);
    VmInfo {
        id: vm.id.clone(),
        subscription_id: subscription_of(&vm.id).unwrap_or_default().to_string(),
        name: vm.name.clone(),
        resource_group: resource_group_of(&vm.id).unwrap_or_default().to_string(),
        location: vm.location.clone(),
        power_state,
        vm_size: vm.vm_size().map(str::to_string),
        vcpus: size.and_then(|s| s.vcpus),
        memory_mib: size.and_then(|s| s.memory_mib),
        os_type,
        hyperv_generation: generation,
        tags: vm.tags(),
        disks: out_disks,
        kind,
    }
}

/// The VM's [`VmKind`] from its model, its OS disk's record and its size.
fn vm_kind(vm: &VirtualMachine, os_disk: Option<&Disk>, size: Option<&VmSize>) -> VmKind {
    let disk_arch = os_disk
        .and_then(|d| d.properties.as_ref()?.supported_capabilities.as_ref())
        .and_then(|c| c.architecture.as_deref());
    let size_arch = size.and_then(|s| s.cpu_architecture.as_deref());
    let architecture = disk_arch
        .and_then(Architecture::parse)
        .or_else(|| size_arch.and_then(Architecture::parse))
        .unwrap_or_default();
    let security = vm.security_profile();
    let uefi = security.and_then(|p| p.uefi_settings.as_ref());
    let scale_set = match vm.id.parse::<ResourceId>() {
        Ok(id) if id.is(&ResourceType::ScaleSetVm) => Some(
            ResourceId::new(
                id.subscription(),
                id.resource_group(),
                ResourceType::Other {
                    namespace: "Microsoft.Compute".into(),
                    kind: "virtualMachineScaleSets".into(),
                },
                id.parent().unwrap_or_default(),
            )
            .to_string(),
        ),
        _ => None,
    };
    VmKind {
        architecture,
        security_type: security.and_then(|p| p.security_type.clone()),
        secure_boot: uefi.and_then(|u| u.secure_boot_enabled).unwrap_or(false),
        vtpm: uefi.and_then(|u| u.v_tpm_enabled).unwrap_or(false),
        scale_set,
    }
}

/// The OS disk's kinds: ephemeral, and its encryption (ADE v0 kept its settings on the
/// OS disk of the VM model).
fn os_disk_kinds(
    info: &mut DiskInfo,
    os: &crate::azure::arm::models::OsDisk,
    record: Option<&Disk>,
    ade_extension: bool,
) {
    info.ephemeral = os.is_ephemeral();
    let v0 = os
        .encryption_settings
        .as_ref()
        .filter(|e| e.enabled == Some(true))
        .map(|e| e.disk_encryption_key.as_ref().and_then(|k| k.vault_url()));
    info.encryption = encryption(
        record,
        os.managed_disk.as_ref(),
        v0.is_some() || ade_extension,
        v0.flatten(),
    );
}

/// Whether the VM model lists an Azure Disk Encryption extension among its child
/// resources (what list and GET return anyway: no call per VM).
fn has_ade_extension(vm: &VirtualMachine) -> bool {
    vm.resources.iter().any(|r| {
        let kind = r.properties.as_ref().and_then(|p| p.kind.as_deref());
        let named = r.id.as_deref().map(name_of);
        [kind, named].into_iter().flatten().any(|t| {
            ADE_EXTENSION_TYPES
                .iter()
                .any(|ade| t.eq_ignore_ascii_case(ade))
        })
    })
}

/// What a reader of the disk's export finds encrypted: a confidential VM's disk (its VM
/// model's `securityEncryptionType`, or the disk's `securityType`), else ADE (the disk's
/// `encryptionSettingsCollection`, the OS disk's v0 settings or the VM's extension).
/// Server-side encryption is transparent and is not reported.
fn encryption(
    record: Option<&Disk>,
    model: Option<&crate::azure::arm::models::ManagedDiskRef>,
    ade_on_vm: bool,
    vm_vault: Option<String>,
) -> Option<DiskEncryption> {
    let props = record.and_then(|d| d.properties.as_ref());
    let cvm_disk = props
        .and_then(|p| p.security_profile.as_ref())
        .and_then(|p| p.security_type.as_deref())
        .is_some_and(|t| {
            t.to_ascii_lowercase()
                .starts_with("confidentialvm_diskencrypted")
        });
    if cvm_disk || model.is_some_and(|m| m.encrypted_with_vm_key()) {
        return Some(DiskEncryption {
            kind: EncryptionKind::ConfidentialVm,
            key_vault_url: None,
        });
    }
    let collection = props
        .and_then(|p| p.encryption_settings_collection.as_ref())
        .filter(|c| c.enabled);
    if collection.is_none() && !ade_on_vm {
        return None;
    }
    let disk_vault = collection.and_then(|c| {
        c.encryption_settings
            .iter()
            .find_map(|e| e.disk_encryption_key.as_ref()?.vault_url())
    });
    Some(DiskEncryption {
        kind: EncryptionKind::AzureDiskEncryption,
        key_vault_url: disk_vault.or(vm_vault),
    })
}

fn disk_info(
    role: DiskRole,
    lun: Option<u32>,
    id: &Option<String>,
    model_name: Option<&str>,
    model_size: Option<u64>,
    vhd_uri: Option<String>,
    record: Option<&Disk>,
) -> DiskInfo {
    let name = record
        .map(|d| d.name.clone())
        .or_else(|| model_name.map(str::to_string))
        .or_else(|| id.as_deref().map(|i| name_of(i).to_string()))
        .or_else(|| vhd_uri.as_deref().map(|u| name_of(u).to_string()))
        .unwrap_or_default();
    let props = record.and_then(|d| d.properties.as_ref());
    let size_gb = props.and_then(|p| p.disk_size_gb).or(model_size);
    DiskInfo {
        id: id.clone(),
        name,
        role,
        lun,
        size_gb,
        managed: id.is_some(),
        vhd_uri: if id.is_some() { None } else { vhd_uri },
        ephemeral: false,
        max_shares: props.and_then(|p| p.max_shares),
        data_access_auth_mode: props.and_then(|p| p.data_access_auth_mode.clone()),
        encryption: None,
        storage: record.map(DiskStorage::of).unwrap_or_default(),
        written_bytes: None,
    }
}

/// Selected VMs with their power states, and the disk records read for them (by lower-case
/// id).
pub type VmSet = (Vec<(VirtualMachine, PowerState)>, HashMap<String, Disk>);

/// Disk records by lower-case id.
pub fn disks_by_id(disks: Vec<Disk>) -> HashMap<String, Disk> {
    disks
        .into_iter()
        .map(|d| (d.id.to_ascii_lowercase(), d))
        .collect()
}

/// The managed disk ids (OS and data) the VM models name.
pub fn managed_disk_ids(vms: &[(VirtualMachine, PowerState)]) -> Vec<String> {
    vms.iter()
        .filter_map(|(vm, _)| vm.storage())
        .flat_map(|st| {
            st.os_disk
                .iter()
                .filter_map(|d| d.managed_disk.as_ref()?.id.clone())
                .chain(
                    st.data_disks
                        .iter()
                        .filter_map(|d| d.managed_disk.as_ref()?.id.clone()),
                )
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The subscription id of a resource id (`/subscriptions/{id}/…`), as written.
pub fn subscription_of(id: &str) -> Option<&str> {
    let mut parts = id.split('/').filter(|p| !p.is_empty());
    match (parts.next(), parts.next()) {
        (Some(k), Some(sub)) if k.eq_ignore_ascii_case("subscriptions") => Some(sub),
        _ => None,
    }
}

/// Resource groups (first spelling seen, compared without case) that hold managed disks of
/// these VMs.
fn disk_resource_groups(vms: &[(VirtualMachine, PowerState)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (vm, _) in vms {
        let Some(st) = vm.storage() else { continue };
        let ids = st
            .os_disk
            .iter()
            .filter_map(|d| d.managed_disk.as_ref()?.id.as_deref())
            .chain(
                st.data_disks
                    .iter()
                    .filter_map(|d| d.managed_disk.as_ref()?.id.as_deref()),
            );
        for id in ids {
            if let Some(rg) = resource_group_of(id)
                && !out.iter().any(|r| r.eq_ignore_ascii_case(rg))
            {
                out.push(rg.to_string());
            }
        }
    }
    out
}

/// The selected VMs of one subscription through the Compute lists (or per-VM GETs), with
/// their disk records; sizes are read once for the whole discovery ([`fetch_sizes`]).
pub async fn select_in(
    arm: &ArmClient,
    sel: &Selection,
    subscription: &str,
    progress: &DiscoveryProgress,
) -> Result<VmSet, ArmError> {
    let selected = match choose_strategy(sel, subscription, PER_VM_LIMIT) {
        Strategy::PerVm(candidates) => {
            tracing::debug!(
                candidates = candidates.len(),
                "per-VM strategy: a GET with instance view per named VM is cheaper than listing"
            );
            per_vm(arm, sel, candidates, progress).await?
        }
        Strategy::List => {
            tracing::debug!(
                "list strategy: full VM pages and status pages per scope, merged by id"
            );
            list_all(arm, sel, subscription, progress).await?
        }
    };
    let disks = fetch_disks(arm, sel, subscription, &selected, progress).await;
    Ok((selected, disks))
}

async fn list_all(
    arm: &ArmClient,
    sel: &Selection,
    subscription: &str,
    progress: &DiscoveryProgress,
) -> Result<Vec<(VirtualMachine, PowerState)>, ArmError> {
    let scopes: Vec<Option<&str>> = if sel.resource_groups.is_empty() {
        vec![None]
    } else {
        sel.resource_groups
            .iter()
            .map(|r| Some(r.as_str()))
            .collect()
    };
    let per_scope = futures::stream::iter(scopes)
        .map(|scope| async move {
            let vms_before = std::cell::Cell::new(0usize);
            let st_before = std::cell::Cell::new(0usize);
            let full = arm.list_vms(subscription, scope, false, |n| {
                progress
                    .vms
                    .fetch_add(n - vms_before.replace(n), Ordering::Relaxed);
            });
            let status = arm.list_vms(subscription, scope, true, |n| {
                progress
                    .statuses
                    .fetch_add(n - st_before.replace(n), Ordering::Relaxed);
            });
            let instances = uniform_instances(arm, sel, subscription, scope);
            let (full, status, instances) = futures::try_join!(full, status, instances)?;
            let full: Vec<VirtualMachine> = full
                .into_iter()
                .filter(|vm| sel.matches_model(vm))
                .collect();
            let missing = full.len().saturating_sub(status.len());
            if missing > 0 {
                tracing::debug!(missing, "some VMs have no entry in the status pages");
            }
            let mut merged = merge_power_states(full, &status);
            merged.extend(instances);
            Ok::<_, ArmError>(merged)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(per_scope
        .into_iter()
        .flatten()
        .filter(|(_, state)| sel.matches_power_state(*state))
        .collect())
}

/// The instances of the Uniform scale sets in `scope` that match the selection, with
/// their power states (their list carries instance views). They are not in the VM lists;
/// Flexible scale sets' members are, as ordinary VMs, so those scale sets are skipped.
async fn uniform_instances(
    arm: &ArmClient,
    sel: &Selection,
    subscription: &str,
    scope: Option<&str>,
) -> Result<Vec<(VirtualMachine, PowerState)>, ArmError> {
    // A role may read VMs but not scale sets (a custom role): the VMs are still listed,
    // and the warning says what is missing. Any other failure fails the list.
    let scale_sets: Vec<ScaleSet> = match arm.list_scale_sets(subscription, scope).await {
        Ok(all) => all.into_iter().filter(ScaleSet::is_uniform).collect(),
        Err(e) if e.status() == Some(403) => {
            tracing::warn!("{e}; instances of Uniform scale sets are not listed");
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    instances_of(arm, sel, scale_sets.iter().map(|ss| ss.id.as_str())).await
}

/// The instances of the scale sets `ids` names that match the selection, with their
/// power states (their list carries instance views), a bounded number of lists at once.
/// An id that does not parse is skipped with a warning naming it.
pub(crate) async fn instances_of<'a>(
    arm: &ArmClient,
    sel: &Selection,
    ids: impl Iterator<Item = &'a str>,
) -> Result<Vec<(VirtualMachine, PowerState)>, ArmError> {
    let refs: Vec<ResourceRef> = ids
        .filter_map(|id| match id.parse::<ResourceId>() {
            Ok(parsed) => Some(ResourceRef::from(&parsed)),
            Err(e) => {
                tracing::warn!("scale set {id}: {e}; its instances are not listed");
                None
            }
        })
        .collect();
    let lists = futures::stream::iter(refs)
        .map(|r| async move { arm.list_scale_set_vms(&r).await })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(lists
        .into_iter()
        .flatten()
        .filter(|vm| sel.matches_model(vm))
        .map(|vm| {
            let state = vm.power_state();
            (vm, state)
        })
        .collect())
}

/// A Uniform scale-set instance named as Azure names them, `{scale set}_{instance id}`:
/// its id, to read when no VM has that name.
fn scale_set_instance_id(r: &ResourceRef) -> Option<ResourceId> {
    let (scale_set, instance) = r.name.rsplit_once('_')?;
    (!scale_set.is_empty() && !instance.is_empty() && instance.bytes().all(|b| b.is_ascii_digit()))
        .then(|| ResourceId::scale_set_vm(&r.subscription, &r.resource_group, scale_set, instance))
}

/// A named VM, or the scale-set instance of that name when there is no such VM.
async fn get_named(arm: &ArmClient, r: &ResourceRef) -> Result<VirtualMachine, ArmError> {
    match arm.get_vm(r, true).await {
        Err(e) if e.status() == Some(404) => match scale_set_instance_id(r) {
            Some(id) => arm.get_scale_set_vm(&id).await,
            None => Err(e),
        },
        other => other,
    }
}

async fn per_vm(
    arm: &ArmClient,
    sel: &Selection,
    candidates: Vec<ResourceRef>,
    progress: &DiscoveryProgress,
) -> Result<Vec<(VirtualMachine, PowerState)>, ArmError> {
    let found = futures::stream::iter(candidates)
        .map(|r| async move {
            match get_named(arm, &r).await {
                Ok(vm) => {
                    progress.vms.fetch_add(1, Ordering::Relaxed);
                    progress.statuses.fetch_add(1, Ordering::Relaxed);
                    Ok(Some(vm))
                }
                Err(e) if e.status() == Some(404) => {
                    tracing::debug!(vm = %r, "not found");
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(found
        .into_iter()
        .flatten()
        .filter(|vm| sel.matches_model(vm))
        .map(|vm| {
            let state = vm.power_state();
            (vm, state)
        })
        .filter(|(_, state)| sel.matches_power_state(*state))
        .collect())
}

/// Disk records by lower-case id. Per-VM mode reads each disk; list mode lists each
/// resource group once. Failures degrade to the sizes in the VM model, with a warning.
async fn fetch_disks(
    arm: &ArmClient,
    sel: &Selection,
    subscription: &str,
    vms: &[(VirtualMachine, PowerState)],
    progress: &DiscoveryProgress,
) -> HashMap<String, Disk> {
    let mut out = HashMap::new();
    let per_vm = matches!(
        choose_strategy(sel, subscription, PER_VM_LIMIT),
        Strategy::PerVm(_)
    );
    if per_vm {
        let ids = managed_disk_ids(vms);
        let results: Vec<Result<Disk, ArmError>> =
            futures::stream::iter(ids.into_iter().filter_map(|id| disk_ref(&id)))
                .map(|r| async move { arm.get_disk(&r).await })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
        for r in results {
            match r {
                Ok(d) => {
                    progress.disks.fetch_add(1, Ordering::Relaxed);
                    out.insert(d.id.to_ascii_lowercase(), d);
                }
                Err(e) => tracing::warn!("{e}; using the sizes in the VM model"),
            }
        }
        return out;
    }
    let groups = disk_resource_groups(vms);
    let results: Vec<Result<Vec<Disk>, ArmError>> = futures::stream::iter(groups)
        .map(|rg| async move {
            let before = std::cell::Cell::new(0usize);
            arm.list_disks(subscription, &rg, |n| {
                progress
                    .disks
                    .fetch_add(n - before.replace(n), Ordering::Relaxed);
            })
            .await
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        match r {
            Ok(disks) => out.extend(disks.into_iter().map(|d| (d.id.to_ascii_lowercase(), d))),
            Err(e) => tracing::warn!("{e}; using the sizes in the VM model"),
        }
    }
    out
}

/// The disk a VM model's managed-disk id names; None (and a warning) for anything else.
fn disk_ref(id: &str) -> Option<ResourceRef> {
    match id.parse::<ResourceId>() {
        Ok(r) if r.is(&ResourceType::Disk) => Some(ResourceRef::from(&r)),
        Ok(r) => {
            tracing::warn!(
                "managed disk id {r} names a {}, not a disk",
                r.resource_type()
            );
            None
        }
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    }
}

/// VM sizes by lower-case name, one list per location of a selected VM, asked in the
/// subscription of the first VM found there (the size catalogue of a region is Azure's, not
/// the subscription's: a size restricted for one subscription is still listed, with its
/// restriction, which does not hide its vCPUs and memory).
pub async fn fetch_sizes(
    arm: &ArmClient,
    vms: &[(VirtualMachine, PowerState)],
) -> HashMap<String, VmSize> {
    // One Resource SKU listing (all its pages) per location. A size missing from every
    // listing, or a listing that fails, leaves vCPU and memory empty (the domain then gets
    // the defaults), as before with the deprecated `locations/{loc}/vmSizes` — which is not
    // asked as a fallback: it lists no more sizes (it omits those the subscription may not
    // deploy, which Resource SKUs list with their restrictions) and would cost a second
    // request per location.
    let mut locations: Vec<(String, String)> = Vec::new();
    for (vm, _) in vms {
        let l = selection::normalize_location(&vm.location);
        if l.is_empty() || locations.iter().any(|(known, _)| *known == l) {
            continue;
        }
        let Some(subscription) = subscription_of(&vm.id) else {
            continue;
        };
        if l.chars().all(|c| c.is_ascii_alphanumeric()) {
            locations.push((l, subscription.to_string()));
        } else {
            tracing::warn!(
                "VM {}: location {l:?} is not a region name; vCPU and memory left empty",
                vm.name
            );
        }
    }
    let results: Vec<(String, Result<Vec<ResourceSku>, ArmError>)> =
        futures::stream::iter(locations)
            .map(|(loc, subscription)| async move {
                let r = arm.list_resource_skus(&subscription, &loc).await;
                (loc, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let mut out = HashMap::new();
    for (loc, r) in results {
        match r {
            Ok(skus) => out.extend(vm_sizes_in(&skus, &loc)),
            Err(e) => tracing::warn!("{e}; vCPU and memory left empty"),
        }
    }
    out
}

/// The VM sizes among `skus` listed for `location`, by lower-case name.
fn vm_sizes_in(skus: &[ResourceSku], location: &str) -> HashMap<String, VmSize> {
    skus.iter()
        .filter(|s| s.offered_in(location))
        .filter_map(ResourceSku::vm_size)
        .map(|s| (s.name.to_ascii_lowercase(), s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::arm::models::Page;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = format!("{}/fixtures/arm/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn vms() -> Vec<VirtualMachine> {
        fixture::<Page<VirtualMachine>>("vms_page.json").value
    }

    fn statuses() -> Vec<VirtualMachine> {
        fixture::<Page<VirtualMachine>>("vms_status_page.json").value
    }

    #[test]
    fn merge_matches_ids_case_insensitively_and_marks_missing_unknown() {
        let merged = merge_power_states(vms(), &statuses());
        let states: Vec<(&str, PowerState)> =
            merged.iter().map(|(v, s)| (v.name.as_str(), *s)).collect();
        // web-01's status id differs in case (rg-web/WEB-01); classic-01 has no status.
        assert_eq!(
            states,
            vec![
                ("web-01", PowerState::Running),
                ("sql-01", PowerState::Deallocated),
                ("classic-01", PowerState::Unknown)
            ]
        );
    }

    #[test]
    fn vm_info_combines_model_disks_and_sizes() {
        let disks: HashMap<String, Disk> = fixture::<Page<Disk>>("disks_page.json")
            .value
            .into_iter()
            .map(|d| (d.id.to_ascii_lowercase(), d))
            .collect();
        let skus = fixture::<Page<ResourceSku>>("resource_skus.json").value;
        let sizes = vm_sizes_in(&skus, "westeurope");
        // Listed for another region only: not taken.
        assert!(vm_sizes_in(&skus, "northeurope").is_empty());
        let all = vms();
        let web = build_vm_info(&all[0], PowerState::Running, &disks, &sizes);
        assert_eq!(web.resource_group, "RG-WEB");
        assert_eq!((web.vcpus, web.memory_mib), (Some(2), Some(8192)));
        assert_eq!(web.os_type.as_deref(), Some("linux"));
        // From the OS disk resource (list items have no instance view).
        assert_eq!(web.hyperv_generation.as_deref(), Some("V1"));
        assert_eq!(web.disks.len(), 3);
        assert_eq!(web.disks[0].role, DiskRole::Os);
        assert_eq!(web.disks[0].lun, None);
        // The data disk id in the VM is "rg-web" but the disk says "RG-WEB": still found.
        assert_eq!(web.disks[1].size_gb, Some(128));
        assert_eq!(web.disks[2].lun, Some(1));
        assert_eq!(web.disks[2].size_gb, Some(256)); // not in the disk list: from the VM model
        assert_eq!(web.total_disk_gb(), 30 + 128 + 256);

        let sql = build_vm_info(&all[1], PowerState::Deallocated, &disks, &sizes);
        // Its size is restricted for new VMs in the subscription: still known.
        assert_eq!((sql.vcpus, sql.memory_mib), (Some(4), Some(32768)));
        assert_eq!(sql.os_type.as_deref(), Some("windows"));
        assert_eq!(sql.hyperv_generation.as_deref(), Some("V2"));

        let classic = build_vm_info(&all[2], PowerState::Unknown, &disks, &sizes);
        assert!(classic.disks.iter().all(|d| !d.managed && d.id.is_none()));
        assert_eq!(
            classic.disks[1].vhd_uri.as_deref(),
            Some("https://oldstorage.blob.core.windows.net/vhds/classic-01-data.vhd")
        );
        assert_eq!(classic.disks[1].lun, Some(3));
        assert_eq!(classic.os_type, None);
        // Standard_A2_v2 is in no listing: unknown, as before.
        assert_eq!((classic.vcpus, classic.memory_mib), (None, None));
    }

    #[test]
    fn json_shape_has_the_contract_fields() {
        let info = build_vm_info(
            &vms()[2],
            PowerState::Unknown,
            &HashMap::new(),
            &HashMap::new(),
        );
        let v = serde_json::to_value(&info).unwrap();
        for key in [
            "id",
            "name",
            "resource_group",
            "location",
            "power_state",
            "vm_size",
            "os_type",
            "hyperv_generation",
            "tags",
            "disks",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["power_state"], "unknown");
        let d = &v["disks"][0];
        for key in ["id", "name", "role", "lun", "size_gb", "managed", "vhd_uri"] {
            assert!(d.get(key).is_some(), "{key}");
        }
        assert_eq!(d["role"], "os");
        assert_eq!(d["managed"], false);
    }

    #[test]
    fn managed_disks_have_no_vhd_uri_field() {
        let info = build_vm_info(
            &vms()[0],
            PowerState::Running,
            &HashMap::new(),
            &HashMap::new(),
        );
        let v = serde_json::to_value(&info).unwrap();
        assert!(v["disks"][0].get("vhd_uri").is_none());
    }

    #[test]
    fn kind_comes_from_security_profile_os_disk_size_and_id() {
        let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/7",
            "name": "ss_7",
            "sku": {"name": "Standard_D4ps_v5"},
            "properties": {
                "securityProfile": {"securityType": "TrustedLaunch",
                    "uefiSettings": {"secureBootEnabled": true, "vTpmEnabled": true}},
                "storageProfile": {"osDisk": {"osType": "Linux", "managedDisk": {"id":
                    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/os7"}}}
            }
        }))
        .unwrap();
        let arm_size = VmSize {
            name: "Standard_D4ps_v5".into(),
            vcpus: Some(4),
            memory_mib: Some(16384),
            cpu_architecture: Some("Arm64".into()),
        };
        let sizes = HashMap::from([("standard_d4ps_v5".to_string(), arm_size)]);
        let info = build_vm_info(&vm, PowerState::Running, &HashMap::new(), &sizes);
        assert_eq!(info.vm_size.as_deref(), Some("Standard_D4ps_v5"));
        assert_eq!(info.kind.architecture, Architecture::Arm64);
        assert_eq!(info.kind.security_type.as_deref(), Some("TrustedLaunch"));
        assert!(info.kind.secure_boot && info.kind.vtpm);
        assert_eq!(
            info.kind.scale_set.as_deref(),
            Some(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss"
            )
        );
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["architecture"], "arm64");
        assert_eq!(v["secure_boot"], true);
        // The OS disk's own architecture wins over the size's.
        let disk: Disk = serde_json::from_value(serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/OS7",
            "name": "os7",
            "properties": {"supportedCapabilities": {"architecture": "x64"}}
        }))
        .unwrap();
        let disks = HashMap::from([(disk.id.to_ascii_lowercase(), disk)]);
        let info = build_vm_info(&vm, PowerState::Running, &disks, &sizes);
        assert_eq!(info.kind.architecture, Architecture::X64);
        // An ordinary VM: defaults, and older JSON without the fields still loads.
        // web-01 of the fixture page (after Microsoft's example) is Trusted Launch.
        let web = build_vm_info(
            &vms()[0],
            PowerState::Running,
            &HashMap::new(),
            &HashMap::new(),
        );
        assert!(web.kind.secure_boot && web.kind.vtpm && web.kind.scale_set.is_none());
        let plain = build_vm_info(
            &vms()[2],
            PowerState::Running,
            &HashMap::new(),
            &HashMap::new(),
        );
        assert_eq!(plain.kind, VmKind::default());
        let mut old = serde_json::to_value(&plain).unwrap();
        for k in [
            "architecture",
            "security_type",
            "secure_boot",
            "vtpm",
            "scale_set",
        ] {
            old.as_object_mut().unwrap().remove(k);
        }
        assert_eq!(serde_json::from_value::<VmInfo>(old).unwrap(), plain);
    }

    #[test]
    fn scale_set_instance_names_map_to_their_ids() {
        let r = |n: &str| ResourceRef::new("s", "rg", n);
        let id = scale_set_instance_id(&r("web_ss_12")).unwrap();
        assert_eq!((id.parent(), id.name()), (Some("web_ss"), "12"));
        for not in ["web", "web_", "_3", "web_3a", "web-3"] {
            assert!(scale_set_instance_id(&r(not)).is_none(), "{not}");
        }
    }

    #[test]
    fn disk_groups_are_deduplicated_without_case() {
        let merged = merge_power_states(vms(), &[]);
        assert_eq!(
            disk_resource_groups(&merged),
            vec!["RG-WEB".to_string(), "RG-DATA".into(), "RG-DB".into()]
        );
    }

    const SUB: &str = "00000000-0000-0000-0000-000000000001";

    #[test]
    fn subscription_of_reads_the_id() {
        assert_eq!(
            subscription_of("/subscriptions/S1/resourceGroups/rg"),
            Some("S1")
        );
        assert_eq!(subscription_of("/SUBSCRIPTIONS/s2"), Some("s2"));
        assert_eq!(subscription_of("/resourceGroups/rg"), None);
        assert_eq!(subscription_of(""), None);
    }

    #[test]
    fn strategy_by_count() {
        let sel = |names: &[&str], rgs: &[&str]| {
            Selection::parse(&SelectionInput {
                subscriptions: vec!["00000000-0000-0000-0000-000000000001".into()],
                names: names.iter().map(|s| s.to_string()).collect(),
                resource_groups: rgs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .unwrap()
        };
        assert!(
            matches!(choose_strategy(&sel(&["a", "b"], &["rg"]), SUB, 8), Strategy::PerVm(c) if c.len() == 2)
        );
        assert_eq!(choose_strategy(&sel(&["a"], &[]), SUB, 8), Strategy::List);
        assert_eq!(
            choose_strategy(&sel(&["a*"], &["rg"]), SUB, 8),
            Strategy::List
        );
        assert_eq!(choose_strategy(&sel(&[], &["rg"]), SUB, 8), Strategy::List);
        let many: Vec<String> = (0..9).map(|i| format!("vm{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            choose_strategy(&sel(&many, &["rg"]), SUB, 8),
            Strategy::List
        );
    }
    /// The kinds come from what list and GET already return (VM model, disk list): an
    /// ephemeral OS disk, ADE by extension and by the disk's settings, a confidential
    /// disk, a shared disk, Entra ID export; server-side encryption is not reported.
    #[test]
    fn disk_kinds_are_read_from_the_vm_model_and_the_disk_list() {
        let sub = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute";
        let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "id": format!("{sub}/virtualMachines/v"), "name": "v", "location": "westeurope",
            "properties": {"storageProfile": {
                "osDisk": {"osType": "Linux", "name": "v-os",
                           "diffDiskSettings": {"option": "Local", "placement": "ResourceDisk"},
                           "managedDisk": {"storageAccountType": "Standard_LRS"}},
                "dataDisks": [
                    {"lun": 0, "managedDisk": {"id": format!("{sub}/disks/d0")}},
                    {"lun": 1, "managedDisk": {"id": format!("{sub}/disks/d1"),
                        "securityProfile": {"securityEncryptionType": "DiskWithVMGuestState"}}},
                    {"lun": 2, "managedDisk": {"id": format!("{sub}/disks/d2")}}
                ]}},
            "resources": [{"id": format!("{sub}/virtualMachines/v/extensions/AzureDiskEncryptionForLinux"),
                           "properties": {"publisher": "Microsoft.Azure.Security",
                                          "type": "AzureDiskEncryptionForLinux"}}]
        }))
        .unwrap();
        let disk = |name: &str, props: serde_json::Value| -> (String, Disk) {
            let id = format!("{sub}/disks/{name}");
            let d: Disk = serde_json::from_value(
                serde_json::json!({"id": id, "name": name, "properties": props}),
            )
            .unwrap();
            (id.to_ascii_lowercase(), d)
        };
        let disks: HashMap<String, Disk> = [
            disk("d0", serde_json::json!({"maxShares": 3, "dataAccessAuthMode": "AzureActiveDirectory",
                "encryption": {"type": "EncryptionAtRestWithCustomerKey"},
                "encryptionSettingsCollection": {"enabled": true, "encryptionSettings": [
                    {"diskEncryptionKey": {"secretUrl": "https://kv1.vault.azure.net/secrets/s/1"}}]}})),
            disk("d1", serde_json::json!({})),
            disk("d2", serde_json::json!({"maxShares": 1, "dataAccessAuthMode": "None"})),
        ]
        .into_iter()
        .collect();
        let info = build_vm_info(&vm, PowerState::Running, &disks, &HashMap::new());
        let [os, d0, d1, d2] = info.disks.as_slice() else {
            panic!("{:?}", info.disks)
        };
        assert!(os.ephemeral && !d0.ephemeral);
        // The extension marks every disk; the disk's own settings name the vault.
        let ade = |url: Option<&str>| {
            Some(DiskEncryption {
                kind: EncryptionKind::AzureDiskEncryption,
                key_vault_url: url.map(str::to_string),
            })
        };
        assert_eq!(os.encryption, ade(None));
        assert_eq!(d0.encryption, ade(Some("https://kv1.vault.azure.net/")));
        assert_eq!(
            d1.encryption.as_ref().map(|e| e.kind),
            Some(EncryptionKind::ConfidentialVm)
        );
        assert!(d0.shared() && !d2.shared() && !d1.shared());
        assert!(d0.needs_entra_for_export() && !d2.needs_entra_for_export());

        // Without the extension, a disk with only server-side encryption says nothing.
        let mut plain = vm.clone();
        plain.resources.clear();
        let info = build_vm_info(&plain, PowerState::Running, &disks, &HashMap::new());
        assert_eq!(info.disks[3].encryption, None);
        assert_eq!(info.disks[0].encryption, None);

        // ADE's older settings on the VM model's OS disk name the vault too.
        let mut v0 = plain.clone();
        let os = v0
            .properties
            .as_mut()
            .and_then(|p| p.storage_profile.as_mut())
            .and_then(|s| s.os_disk.as_mut())
            .unwrap();
        os.encryption_settings = serde_json::from_value(serde_json::json!({"enabled": true,
            "diskEncryptionKey": {"secretUrl": "https://kv0.vault.azure.net/secrets/s/2"}}))
        .unwrap();
        let info = build_vm_info(&v0, PowerState::Running, &disks, &HashMap::new());
        assert_eq!(
            info.disks[0].encryption,
            ade(Some("https://kv0.vault.azure.net/"))
        );
        assert_eq!(info.disks[3].encryption, None);
    }
}
