//! Serde models for the ARM resources we read — only the fields the tool uses. Unknown
//! fields are ignored (serde's default) and unknown enum values map to `Other`/`Unknown`
//! variants, so a new API field or value never breaks discovery. Optional everywhere that
//! ARM may omit (status-only items have no storage profile, list items no instance view).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A subscription as `GET /subscriptions` lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub subscription_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// `Enabled`, `Disabled`, `Warned`, `PastDue`, `Deleted`: only `Enabled` is searched.
    #[serde(default)]
    pub state: Option<String>,
}

impl Subscription {
    pub fn enabled(&self) -> bool {
        self.state
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("Enabled"))
    }
}

/// One page of a list operation.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    #[serde(default)]
    pub next_link: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachine {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub properties: Option<VmProperties>,
    /// Instances of a Uniform scale set carry their size here (`sku.name`), not in
    /// `hardwareProfile.vmSize`.
    #[serde(default)]
    pub sku: Option<Sku>,
    /// A scale-set instance's id within its scale set ("0", "17").
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Child resources in the model: Azure lists the VM's extensions here (GET and list
    /// alike), which is where Azure Disk Encryption shows without a call per VM.
    #[serde(default)]
    pub resources: Vec<VmChildResource>,
}

/// A child resource of a VM model (`resources[]`): for extensions, publisher and type.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmChildResource {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub properties: Option<ExtensionProperties>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProperties {
    #[serde(default)]
    pub publisher: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// The extension types of Azure Disk Encryption (publisher
/// `Microsoft.Azure.Security`): a guest that BitLocker or dm-crypt encrypted.
pub const ADE_EXTENSION_TYPES: [&str; 2] = ["AzureDiskEncryption", "AzureDiskEncryptionForLinux"];

/// `diffDiskSettings` of an OS disk: `option: Local` is an ephemeral OS disk, held on the
/// host's cache or resource disk, with no managed disk behind it to snapshot or grant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffDiskSettings {
    #[serde(default)]
    pub option: Option<String>,
    #[serde(default)]
    pub placement: Option<String>,
}

/// ADE's older (single-pass v0) settings on the VM's OS disk model.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OsDiskEncryptionSettings {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub disk_encryption_key: Option<KeyVaultSecretRef>,
}

/// A Key Vault secret (`secretUrl`) or key (`keyUrl`) the guest's volume key is kept in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyVaultSecretRef {
    #[serde(default)]
    pub secret_url: Option<String>,
}

impl KeyVaultSecretRef {
    /// The vault's URL (`https://<vault>.vault.azure.net/`) from the secret's URL; the
    /// secret's name and version are not needed to say where the key is.
    pub fn vault_url(&self) -> Option<String> {
        let u = url::Url::parse(self.secret_url.as_deref()?).ok()?;
        let host = u.host_str()?;
        Some(format!("{}://{host}/", u.scheme()))
    }
}

/// `securityProfile` of a managed disk in the VM model: `securityEncryptionType`
/// `DiskWithVMGuestState` means a confidential VM whose disk is encrypted with a key
/// bound to that VM's TPM — unreadable anywhere else.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmDiskSecurityProfile {
    #[serde(default)]
    pub security_encryption_type: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sku {
    #[serde(default)]
    pub name: Option<String>,
}

/// `securityProfile` of a VM (api-version 2020-12-01 onwards): `securityType`
/// `TrustedLaunch` or `ConfidentialVM` enables `uefiSettings`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityProfile {
    #[serde(default)]
    pub security_type: Option<String>,
    #[serde(default)]
    pub uefi_settings: Option<UefiSettings>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UefiSettings {
    #[serde(default)]
    pub secure_boot_enabled: Option<bool>,
    #[serde(default, rename = "vTpmEnabled")]
    pub v_tpm_enabled: Option<bool>,
}

/// A scale set (`Microsoft.Compute/virtualMachineScaleSets`): only what tells Uniform
/// from Flexible orchestration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSet {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub properties: Option<ScaleSetProperties>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleSetProperties {
    /// `Uniform` or `Flexible`; absent on scale sets made before the property existed,
    /// which are Uniform.
    #[serde(default)]
    pub orchestration_mode: Option<String>,
}

impl ScaleSet {
    /// Uniform orchestration: its instances are not in the VM lists and are read through
    /// `virtualMachineScaleSets/{name}/virtualMachines`. Flexible instances are ordinary
    /// VMs.
    pub fn is_uniform(&self) -> bool {
        !self
            .properties
            .as_ref()
            .and_then(|p| p.orchestration_mode.as_deref())
            .is_some_and(|m| m.eq_ignore_ascii_case("Flexible"))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmProperties {
    #[serde(default)]
    pub vm_id: Option<String>,
    #[serde(default)]
    pub hardware_profile: Option<HardwareProfile>,
    #[serde(default)]
    pub storage_profile: Option<StorageProfile>,
    #[serde(default)]
    pub instance_view: Option<InstanceView>,
    #[serde(default)]
    pub provisioning_state: Option<String>,
    #[serde(default)]
    pub security_profile: Option<SecurityProfile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareProfile {
    #[serde(default)]
    pub vm_size: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfile {
    #[serde(default)]
    pub os_disk: Option<OsDisk>,
    #[serde(default)]
    pub data_disks: Vec<DataDisk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum OsType {
    Windows,
    Linux,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OsDisk {
    #[serde(default)]
    pub os_type: Option<OsType>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "diskSizeGB")]
    pub disk_size_gb: Option<u64>,
    #[serde(default)]
    pub managed_disk: Option<ManagedDiskRef>,
    #[serde(default)]
    pub vhd: Option<VhdRef>,
    #[serde(default)]
    pub diff_disk_settings: Option<DiffDiskSettings>,
    #[serde(default)]
    pub encryption_settings: Option<OsDiskEncryptionSettings>,
}

impl OsDisk {
    /// An ephemeral OS disk (`diffDiskSettings.option: Local`).
    pub fn is_ephemeral(&self) -> bool {
        self.diff_disk_settings
            .as_ref()
            .and_then(|d| d.option.as_deref())
            .is_some_and(|o| o.eq_ignore_ascii_case("Local"))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataDisk {
    pub lun: u32,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "diskSizeGB")]
    pub disk_size_gb: Option<u64>,
    #[serde(default)]
    pub managed_disk: Option<ManagedDiskRef>,
    #[serde(default)]
    pub vhd: Option<VhdRef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedDiskRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub security_profile: Option<VmDiskSecurityProfile>,
}

impl ManagedDiskRef {
    /// A confidential VM disk encrypted with the VM's own key.
    pub fn encrypted_with_vm_key(&self) -> bool {
        self.security_profile
            .as_ref()
            .and_then(|p| p.security_encryption_type.as_deref())
            .is_some_and(|t| t.eq_ignore_ascii_case("DiskWithVMGuestState"))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VhdRef {
    #[serde(default)]
    pub uri: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    #[serde(default)]
    pub statuses: Vec<InstanceViewStatus>,
    #[serde(default, rename = "hyperVGeneration")]
    pub hyper_v_generation: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceViewStatus {
    #[serde(default)]
    pub code: Option<String>,
}

/// A VM's power state, from the `PowerState/...` status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    Running,
    Stopped,
    Deallocated,
    Starting,
    Stopping,
    Deallocating,
    Unknown,
}

impl PowerState {
    pub const ALL: [PowerState; 7] = [
        Self::Running,
        Self::Stopped,
        Self::Deallocated,
        Self::Starting,
        Self::Stopping,
        Self::Deallocating,
        Self::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Deallocated => "deallocated",
            Self::Starting => "starting",
            Self::Stopping => "stopping",
            Self::Deallocating => "deallocating",
            Self::Unknown => "unknown",
        }
    }

    /// Parses a user's or ARM's name, case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }

    /// From an instance view's statuses: the `PowerState/xxx` entry; unknown codes and a
    /// missing entry are `Unknown`.
    pub fn from_statuses(statuses: &[InstanceViewStatus]) -> Self {
        statuses
            .iter()
            .filter_map(|s| s.code.as_deref())
            .find_map(|c| {
                let (prefix, state) = c.split_once('/')?;
                prefix
                    .eq_ignore_ascii_case("PowerState")
                    .then(|| Self::parse(state))?
            })
            .unwrap_or(Self::Unknown)
    }
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl VirtualMachine {
    /// `hardwareProfile.vmSize`, or a scale-set instance's `sku.name`.
    pub fn vm_size(&self) -> Option<&str> {
        self.properties
            .as_ref()
            .and_then(|p| p.hardware_profile.as_ref()?.vm_size.as_deref())
            .or_else(|| self.sku.as_ref()?.name.as_deref())
    }

    pub fn security_profile(&self) -> Option<&SecurityProfile> {
        self.properties.as_ref()?.security_profile.as_ref()
    }

    pub fn storage(&self) -> Option<&StorageProfile> {
        self.properties.as_ref()?.storage_profile.as_ref()
    }

    pub fn instance_view(&self) -> Option<&InstanceView> {
        self.properties.as_ref()?.instance_view.as_ref()
    }

    /// Power state from the instance view, `Unknown` if there is none.
    pub fn power_state(&self) -> PowerState {
        self.instance_view()
            .map(|iv| PowerState::from_statuses(&iv.statuses))
            .unwrap_or(PowerState::Unknown)
    }

    pub fn tags(&self) -> BTreeMap<String, String> {
        self.tags.clone().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub managed_by: Option<String>,
    /// `PremiumV2_LRS`, `UltraSSD_LRS`, `Premium_LRS`, … (Disks - Get, `sku.name`).
    #[serde(default)]
    pub sku: Option<DiskSku>,
    #[serde(default)]
    pub properties: Option<DiskProperties>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSku {
    #[serde(default)]
    pub name: Option<String>,
}

/// How a disk was created; only the sector size is read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationData {
    /// 512 or 4096, for Premium SSD v2 and Ultra disks only (their default is 4096);
    /// absent for every other disk type, whose sectors are 512 bytes.
    #[serde(default)]
    pub logical_sector_size: Option<u32>,
}

impl Disk {
    pub fn sku_name(&self) -> Option<&str> {
        self.sku.as_ref()?.name.as_deref()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskProperties {
    #[serde(default, rename = "diskSizeGB")]
    pub disk_size_gb: Option<u64>,
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    #[serde(default)]
    pub os_type: Option<OsType>,
    #[serde(default, rename = "hyperVGeneration")]
    pub hyper_v_generation: Option<String>,
    #[serde(default)]
    pub disk_state: Option<String>,
    #[serde(default)]
    pub provisioning_state: Option<String>,
    /// How many VMs may attach the disk at once; above 1 it is a shared disk.
    #[serde(default)]
    pub max_shares: Option<u32>,
    /// `AzureActiveDirectory`: reads of an export SAS must also carry an Entra ID token.
    #[serde(default)]
    pub data_access_auth_mode: Option<String>,
    /// Azure Disk Encryption's record on the disk (`enabled` and its Key Vault secrets).
    #[serde(default)]
    pub encryption_settings_collection: Option<EncryptionSettingsCollection>,
    #[serde(default)]
    pub security_profile: Option<DiskSecurityProfile>,
    /// `AllowAll`, `AllowPrivate` (export only through a DiskAccess's private endpoints,
    /// named by `diskAccessId`) or `DenyAll` (no export at all).
    #[serde(default)]
    pub network_access_policy: Option<String>,
    #[serde(default)]
    pub disk_access_id: Option<String>,
    #[serde(default)]
    pub creation_data: Option<CreationData>,
    #[serde(default)]
    pub supported_capabilities: Option<SupportedCapabilities>,
}

/// What the OS on a disk supports; `architecture` is `x64` or `Arm64`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedCapabilities {
    #[serde(default)]
    pub architecture: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionSettingsCollection {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub encryption_settings: Vec<EncryptionSettingsElement>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionSettingsElement {
    #[serde(default)]
    pub disk_encryption_key: Option<KeyVaultSecretRef>,
}

/// A disk's `securityProfile.securityType`: `ConfidentialVM_DiskEncryptedWith…Key` is
/// the disk resource's side of `DiskWithVMGuestState`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSecurityProfile {
    #[serde(default)]
    pub security_type: Option<String>,
}

/// What a VM size gives the guest, as read from its Resource SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSize {
    pub name: String,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// `CpuArchitectureType`: `x64` or `Arm64`.
    pub cpu_architecture: Option<String>,
}

/// One entry of `Resource Skus - List` (`Microsoft.Compute/skus`): sizes of VMs and the
/// SKUs of disks, snapshots, availability sets, dedicated hosts… in one list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSku {
    #[serde(default)]
    pub resource_type: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub locations: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<SkuCapability>,
    /// Why the SKU cannot be used for *new* resources here (quota, not offered to the
    /// subscription, a zone). Not read: a VM that already has the size still has its
    /// vCPUs and memory.
    #[serde(default)]
    pub restrictions: Vec<serde_json::Value>,
}

/// A capability: name and value, both strings (`"vCPUs": "4"`, `"MemoryGB": "0.75"`).
#[derive(Debug, Clone, Deserialize)]
pub struct SkuCapability {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// The largest memory a SKU may claim (1 PiB): a bigger number is a bad answer.
const MAX_MEMORY_GB: f64 = 1024.0 * 1024.0;

impl ResourceSku {
    fn capability(&self, name: &str) -> Option<&str> {
        self.capabilities
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .map(|c| c.value.trim())
    }

    /// The VM size this SKU describes, if it is one (`resourceType` `virtualMachines`).
    /// vCPUs: `vCPUsAvailable` where given — a constrained-core size (`Standard_E4-2s_v5`)
    /// shows the guest fewer than its `vCPUs` — else `vCPUs`. Memory: `MemoryGB` (GiB,
    /// may be fractional: `0.75`) in MiB. A value that does not parse or is out of range
    /// is left empty rather than trusted.
    pub fn vm_size(&self) -> Option<VmSize> {
        if !self.resource_type.eq_ignore_ascii_case("virtualMachines") || self.name.is_empty() {
            return None;
        }
        let count = |name| {
            self.capability(name)
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|&n| n > 0)
        };
        let memory_mib = self
            .capability("MemoryGB")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|gb| gb.is_finite() && *gb > 0.0 && *gb <= MAX_MEMORY_GB)
            // In range, so the cast is exact up to rounding to a whole MiB.
            .map(|gb| (gb * 1024.0).round() as u64)
            .filter(|&mib| mib > 0);
        Some(VmSize {
            name: self.name.clone(),
            vcpus: count("vCPUsAvailable").or_else(|| count("vCPUs")),
            memory_mib,
            cpu_architecture: self
                .capability("CpuArchitectureType")
                .filter(|a| !a.is_empty())
                .map(str::to_string),
        })
    }

    /// Whether the SKU is listed for `location` (an entry without locations is taken as
    /// the filtered location's).
    pub fn offered_in(&self, location: &str) -> bool {
        self.locations.is_empty()
            || self
                .locations
                .iter()
                .any(|l| l.eq_ignore_ascii_case(location))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub properties: Option<SnapshotProperties>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotProperties {
    #[serde(default)]
    pub provisioning_state: Option<String>,
    #[serde(default, rename = "diskSizeGB")]
    pub disk_size_gb: Option<u64>,
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    #[serde(default)]
    pub disk_state: Option<String>,
    #[serde(default)]
    pub incremental: Option<bool>,
    /// Premium SSD v2 and Ultra disks: how far the background copy into the snapshot is
    /// (0–100); a grant is refused until it is 100. Other snapshots report 100 or nothing.
    #[serde(default)]
    pub completion_percent: Option<f64>,
}

/// Body of a finished grant-access operation.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AccessUri {
    #[serde(rename = "accessSAS")]
    pub access_sas: String,
}

/// The resource group named in an ARM resource id (`/subscriptions/s/resourceGroups/RG/...`).
pub fn resource_group_of(id: &str) -> Option<&str> {
    let mut parts = id.split('/').filter(|p| !p.is_empty());
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case("resourceGroups") {
            return parts.next();
        }
    }
    None
}

/// The last segment of a resource id: the resource's name.
pub fn name_of(id: &str) -> &str {
    id.trim_end_matches('/').rsplit('/').next().unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!("{}/fixtures/arm/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn full_vm_page_parses_managed_unmanaged_and_unknown_fields() {
        let page: Page<VirtualMachine> = serde_json::from_str(&fixture("vms_page.json")).unwrap();
        assert_eq!(page.value.len(), 3);
        assert!(page.next_link.as_deref().unwrap().contains("%24skiptoken="));
        let linux = &page.value[0];
        assert_eq!(linux.name, "web-01");
        assert_eq!(linux.vm_size(), Some("Standard_D2s_v5"));
        let st = linux.storage().unwrap();
        let os = st.os_disk.as_ref().unwrap();
        assert_eq!(os.os_type, Some(OsType::Linux));
        assert!(
            os.managed_disk
                .as_ref()
                .unwrap()
                .id
                .as_deref()
                .unwrap()
                .contains("/disks/web-01_OsDisk")
        );
        assert_eq!(st.data_disks.len(), 2);
        assert_eq!(st.data_disks[1].lun, 1);
        assert_eq!(linux.tags().get("env").map(String::as_str), Some("prod"));
        // List items carry no instance view.
        assert_eq!(linux.power_state(), PowerState::Unknown);

        let win = &page.value[1];
        assert_eq!(
            win.storage().unwrap().os_disk.as_ref().unwrap().os_type,
            Some(OsType::Windows)
        );

        let classic = &page.value[2];
        let os = classic.storage().unwrap().os_disk.as_ref().unwrap();
        assert!(os.managed_disk.is_none());
        assert!(
            os.vhd
                .as_ref()
                .unwrap()
                .uri
                .as_deref()
                .unwrap()
                .ends_with(".vhd")
        );
        // An OS type this tool has never heard of.
        assert_eq!(os.os_type, Some(OsType::Unknown));
    }

    #[test]
    fn status_only_page_has_power_states() {
        let page: Page<VirtualMachine> =
            serde_json::from_str(&fixture("vms_status_page.json")).unwrap();
        let states: Vec<PowerState> = page.value.iter().map(VirtualMachine::power_state).collect();
        assert_eq!(
            states,
            vec![
                PowerState::Running,
                PowerState::Deallocated,
                PowerState::Unknown
            ]
        );
        assert!(page.value[0].storage().is_none());
        assert!(page.next_link.is_none());
    }

    #[test]
    fn vm_with_instance_view_has_generation() {
        let vm: VirtualMachine = serde_json::from_str(&fixture("vm_instance_view.json")).unwrap();
        assert_eq!(vm.power_state(), PowerState::Stopped);
        assert_eq!(
            vm.instance_view().unwrap().hyper_v_generation.as_deref(),
            Some("V2")
        );
    }

    #[test]
    fn disks_and_sizes_parse() {
        let page: Page<Disk> = serde_json::from_str(&fixture("disks_page.json")).unwrap();
        assert_eq!(page.value.len(), 3);
        let p = page.value[0].properties.as_ref().unwrap();
        assert_eq!(p.disk_size_gb, Some(30));
        assert_eq!(p.hyper_v_generation.as_deref(), Some("V1"));
        assert_eq!(
            page.value[2]
                .properties
                .as_ref()
                .unwrap()
                .hyper_v_generation
                .as_deref(),
            Some("V2")
        );
    }

    /// The shape Azure answers (fixture after Microsoft's REST example): VM sizes mixed
    /// with other resource types, string capabilities, fractional GiB, a constrained-core
    /// size and a restricted one.
    #[test]
    fn resource_skus_give_vm_sizes_only() {
        let page: Page<ResourceSku> = serde_json::from_str(&fixture("resource_skus.json")).unwrap();
        let sizes: Vec<VmSize> = page.value.iter().filter_map(ResourceSku::vm_size).collect();
        let find = |n: &str| sizes.iter().find(|s| s.name == n).cloned();
        let size = |n: &str| find(n).map(|s| (s.vcpus, s.memory_mib));
        assert_eq!(size("Standard_A0"), Some((Some(1), Some(768))));
        assert_eq!(size("Standard_D2s_v5"), Some((Some(2), Some(8192))));
        // Constrained cores: the guest sees vCPUsAvailable.
        assert_eq!(size("Standard_E4-2s_v5"), Some((Some(2), Some(32768))));
        // Restricted for new VMs in this subscription; an existing VM still has the size.
        assert_eq!(size("Standard_E4s_v5"), Some((Some(4), Some(32768))));
        // Disk and availability-set SKUs are not VM sizes, whatever their names.
        assert!(find("Premium_LRS").is_none() && find("Aligned").is_none());
        assert_eq!(sizes.len(), 4, "{sizes:?}");
        assert!(page.next_link.is_some());
        assert!(page.value[0].offered_in("WestEurope"));
        assert!(!page.value[0].offered_in("eastus"));
    }

    #[test]
    fn bad_sku_numbers_are_left_empty() {
        let sku = |caps: &[(&str, &str)]| ResourceSku {
            resource_type: "virtualMachines".into(),
            name: "Standard_X".into(),
            locations: vec![],
            capabilities: caps
                .iter()
                .map(|(n, v)| SkuCapability {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            restrictions: vec![],
        };
        for (cores, mem) in [
            ("-1", "-2"),
            ("0", "0"),
            ("four", "NaN"),
            ("99999999999", "inf"),
            ("", "1e300"),
        ] {
            let s = sku(&[("vCPUs", cores), ("MemoryGB", mem)])
                .vm_size()
                .unwrap();
            assert_eq!((s.vcpus, s.memory_mib), (None, None), "{cores} {mem}");
        }
        let s = sku(&[("vcpus", "8"), ("memorygb", "3.5")])
            .vm_size()
            .unwrap();
        assert_eq!((s.vcpus, s.memory_mib), (Some(8), Some(3584)));
        assert!(sku(&[]).offered_in("anywhere"));
        let arm = sku(&[("CpuArchitectureType", "Arm64")]).vm_size().unwrap();
        assert_eq!(arm.cpu_architecture.as_deref(), Some("Arm64"));
        let mut disk = sku(&[("vCPUs", "2")]);
        disk.resource_type = "disks".into();
        assert!(disk.vm_size().is_none());
    }

    /// Shapes after Microsoft's REST examples: a Trusted Launch VM, a Uniform scale-set
    /// instance (size in `sku`), an Arm64 disk, scale sets of both orchestration modes.
    #[test]
    fn security_profile_scale_set_instances_and_architecture_parse() {
        let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/tl",
            "name": "tl",
            "properties": {"securityProfile": {"securityType": "TrustedLaunch",
                "uefiSettings": {"secureBootEnabled": true, "vTpmEnabled": false}}}
        }))
        .unwrap();
        let sp = vm.security_profile().unwrap();
        assert_eq!(sp.security_type.as_deref(), Some("TrustedLaunch"));
        let uefi = sp.uefi_settings.as_ref().unwrap();
        assert_eq!(
            (uefi.secure_boot_enabled, uefi.v_tpm_enabled),
            (Some(true), Some(false))
        );

        let inst: VirtualMachine = serde_json::from_value(serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/3",
            "name": "ss_3", "instanceId": "3",
            "sku": {"name": "Standard_D2s_v5", "tier": "Standard"},
            "properties": {"hardwareProfile": {}, "latestModelApplied": true}
        }))
        .unwrap();
        assert_eq!(inst.vm_size(), Some("Standard_D2s_v5"));
        assert_eq!(inst.instance_id.as_deref(), Some("3"));

        let disk: Disk = serde_json::from_value(serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d",
            "name": "d",
            "properties": {"supportedCapabilities": {"architecture": "Arm64", "acceleratedNetwork": true}}
        }))
        .unwrap();
        let caps = disk.properties.unwrap().supported_capabilities.unwrap();
        assert_eq!(caps.architecture.as_deref(), Some("Arm64"));

        let ss = |mode: Option<&str>| -> ScaleSet {
            let mut v = serde_json::json!({"id": "x", "name": "ss", "properties": {}});
            if let Some(m) = mode {
                v["properties"]["orchestrationMode"] = serde_json::json!(m);
            }
            serde_json::from_value(v).unwrap()
        };
        assert!(ss(Some("Uniform")).is_uniform());
        assert!(ss(None).is_uniform());
        assert!(!ss(Some("flexible")).is_uniform());
    }

    #[test]
    fn power_state_parsing() {
        let st = |c: &str| InstanceViewStatus {
            code: Some(c.into()),
        };
        assert_eq!(
            PowerState::from_statuses(&[
                st("ProvisioningState/succeeded"),
                st("PowerState/deallocating")
            ]),
            PowerState::Deallocating
        );
        assert_eq!(
            PowerState::from_statuses(&[st("PowerState/hibernated")]),
            PowerState::Unknown
        );
        assert_eq!(PowerState::from_statuses(&[]), PowerState::Unknown);
        assert_eq!(PowerState::parse("RUNNING"), Some(PowerState::Running));
        assert_eq!(PowerState::parse("paused"), None);
    }

    #[test]
    fn resource_ids() {
        let id = "/subscriptions/s/resourceGroups/RG-One/providers/Microsoft.Compute/disks/d1";
        assert_eq!(resource_group_of(id), Some("RG-One"));
        assert_eq!(name_of(id), "d1");
        assert_eq!(resource_group_of("/subscriptions/s"), None);
    }
}
