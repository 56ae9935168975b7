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

pub mod selection;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::arm::client::ResourceRef;
use super::arm::models::{
    Disk, OsType, PowerState, ResourceSku, VirtualMachine, VmSize, name_of, resource_group_of,
};
use super::arm::{ArmClient, ArmError, ResourceId, ResourceType};
pub use selection::{Selection, SelectionError, SelectionInput};

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
    /// The disk's type, sector size and network policy (flattened into the disk's JSON).
    #[serde(flatten, default)]
    pub storage: DiskStorage,
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

/// One VM as `list --output json` prints it and `export` plans with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
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
pub fn choose_strategy(sel: &Selection, limit: usize) -> Strategy {
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
                            .map(move |n| ResourceRef::new(&sel.subscription, rg, n))
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
            out_disks.push(disk_info(
                DiskRole::Os,
                None,
                &id,
                os.name.as_deref(),
                os.disk_size_gb,
                os.vhd.as_ref().and_then(|v| v.uri.clone()),
                record,
            ));
        }
        let mut data: Vec<_> = st.data_disks.iter().collect();
        data.sort_by_key(|d| d.lun);
        for d in data {
            let id = d.managed_disk.as_ref().and_then(|m| m.id.clone());
            let record = lookup(&id);
            out_disks.push(disk_info(
                DiskRole::Data,
                Some(d.lun),
                &id,
                d.name.as_deref(),
                d.disk_size_gb,
                d.vhd.as_ref().and_then(|v| v.uri.clone()),
                record,
            ));
        }
    }
    let size = vm
        .vm_size()
        .and_then(|s| sizes.get(&s.to_ascii_lowercase()));
    VmInfo {
        id: vm.id.clone(),
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
    }
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
    let size_gb = record
        .and_then(|d| d.properties.as_ref())
        .and_then(|p| p.disk_size_gb)
        .or(model_size);
    DiskInfo {
        id: id.clone(),
        name,
        role,
        lun,
        size_gb,
        managed: id.is_some(),
        vhd_uri: if id.is_some() { None } else { vhd_uri },
        storage: record.map(DiskStorage::of).unwrap_or_default(),
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

/// Finds the selected VMs, sorted by resource group and name.
pub async fn discover(
    arm: &ArmClient,
    sel: &Selection,
    progress: &DiscoveryProgress,
) -> Result<Vec<VmInfo>, ArmError> {
    let selected = match choose_strategy(sel, PER_VM_LIMIT) {
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
            list_all(arm, sel, progress).await?
        }
    };
    // Independent of each other: overlap them.
    let (disks, sizes) = futures::join!(
        fetch_disks(arm, sel, &selected, progress),
        fetch_sizes(arm, sel, &selected)
    );
    let mut out: Vec<VmInfo> = selected
        .iter()
        .map(|(vm, state)| build_vm_info(vm, *state, &disks, &sizes))
        .collect();
    out.sort_by_key(|v| {
        (
            v.resource_group.to_ascii_lowercase(),
            v.name.to_ascii_lowercase(),
        )
    });
    Ok(out)
}

async fn list_all(
    arm: &ArmClient,
    sel: &Selection,
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
            let full = arm.list_vms(&sel.subscription, scope, false, |n| {
                progress
                    .vms
                    .fetch_add(n - vms_before.replace(n), Ordering::Relaxed);
            });
            let status = arm.list_vms(&sel.subscription, scope, true, |n| {
                progress
                    .statuses
                    .fetch_add(n - st_before.replace(n), Ordering::Relaxed);
            });
            let (full, status) = futures::try_join!(full, status)?;
            let full: Vec<VirtualMachine> = full
                .into_iter()
                .filter(|vm| sel.matches_model(vm))
                .collect();
            let missing = full.len().saturating_sub(status.len());
            if missing > 0 {
                tracing::debug!(missing, "some VMs have no entry in the status pages");
            }
            Ok::<_, ArmError>(merge_power_states(full, &status))
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

async fn per_vm(
    arm: &ArmClient,
    sel: &Selection,
    candidates: Vec<ResourceRef>,
    progress: &DiscoveryProgress,
) -> Result<Vec<(VirtualMachine, PowerState)>, ArmError> {
    let found = futures::stream::iter(candidates)
        .map(|r| async move {
            match arm.get_vm(&r, true).await {
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
    vms: &[(VirtualMachine, PowerState)],
    progress: &DiscoveryProgress,
) -> HashMap<String, Disk> {
    let mut out = HashMap::new();
    let per_vm = matches!(choose_strategy(sel, PER_VM_LIMIT), Strategy::PerVm(_));
    if per_vm {
        let ids: Vec<String> = vms
            .iter()
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
            .collect();
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
            arm.list_disks(&sel.subscription, &rg, |n| {
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

/// VM sizes by lower-case name, one list per location of a selected VM.
async fn fetch_sizes(
    arm: &ArmClient,
    sel: &Selection,
    vms: &[(VirtualMachine, PowerState)],
) -> HashMap<String, VmSize> {
    // One Resource SKU listing (all its pages) per location. A size missing from every
    // listing, or a listing that fails, leaves vCPU and memory empty (the domain then gets
    // the defaults), as before with the deprecated `locations/{loc}/vmSizes` — which is not
    // asked as a fallback: it lists no more sizes (it omits those the subscription may not
    // deploy, which Resource SKUs list with their restrictions) and would cost a second
    // request per location.
    let mut locations: Vec<String> = Vec::new();
    for (vm, _) in vms {
        let l = selection::normalize_location(&vm.location);
        if l.is_empty() || locations.contains(&l) {
            continue;
        }
        if l.chars().all(|c| c.is_ascii_alphanumeric()) {
            locations.push(l);
        } else {
            tracing::warn!(
                "VM {}: location {l:?} is not a region name; vCPU and memory left empty",
                vm.name
            );
        }
    }
    let results: Vec<(String, Result<Vec<ResourceSku>, ArmError>)> =
        futures::stream::iter(locations)
            .map(|loc| async move {
                let r = arm.list_resource_skus(&sel.subscription, &loc).await;
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
    fn disk_groups_are_deduplicated_without_case() {
        let merged = merge_power_states(vms(), &[]);
        assert_eq!(
            disk_resource_groups(&merged),
            vec!["RG-WEB".to_string(), "RG-DATA".into(), "RG-DB".into()]
        );
    }

    #[test]
    fn strategy_by_count() {
        let sel = |names: &[&str], rgs: &[&str]| {
            Selection::parse(&SelectionInput {
                subscription: Some("00000000-0000-0000-0000-000000000001".into()),
                names: names.iter().map(|s| s.to_string()).collect(),
                resource_groups: rgs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .unwrap()
        };
        assert!(
            matches!(choose_strategy(&sel(&["a", "b"], &["rg"]), 8), Strategy::PerVm(c) if c.len() == 2)
        );
        assert_eq!(choose_strategy(&sel(&["a"], &[]), 8), Strategy::List);
        assert_eq!(choose_strategy(&sel(&["a*"], &["rg"]), 8), Strategy::List);
        assert_eq!(choose_strategy(&sel(&[], &["rg"]), 8), Strategy::List);
        let many: Vec<String> = (0..9).map(|i| format!("vm{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(choose_strategy(&sel(&many, &["rg"]), 8), Strategy::List);
    }
}
