//! Discovery across subscriptions: which subscriptions (`--subscription ID...`, or every
//! enabled one with `--all-subscriptions`), which source (`--discovery`), and one sorted
//! list of VMs whatever the source.
//!
//! Sources: the Compute lists, per subscription ([`super::select_in`], at most
//! [`SUBSCRIPTION_CONCURRENCY`] subscriptions at once), or Resource Graph, a few queries for
//! every subscription at once ([`super::graph`]). `auto` takes Resource Graph for more than
//! one subscription and the Compute lists for one; BENCHMARKS.md ("Discovery across
//! subscriptions") has the measurement behind that. Resource Graph lags Azure by up to a
//! minute: the power states it gives are for `list`; `export` re-reads them through
//! Compute before planning. The source is said in a log line (JSON stays the contract's
//! array).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::json;

use super::pace::Pacer;
use super::selection::Subscriptions;
use super::{DiscoveryProgress, Selection, VmInfo, VmSet, disks_by_id, graph, kql};
use crate::azure::arm::models::{ADE_EXTENSION_TYPES, Disk, PowerState, VirtualMachine};
use crate::azure::arm::{ArmClient, ArmError, ResourceId};

/// Subscriptions listed through Compute at once (each runs up to `super::CONCURRENCY`
/// requests): 4 × 8 stays well inside ARM's read budget.
pub const SUBSCRIPTION_CONCURRENCY: usize = 4;
/// Above this many resource groups the disk query is not narrowed by them (the query
/// text would grow past what is worth sending).
pub const MAX_PUSHED_GROUPS: usize = 100;

/// `--discovery`: what the user asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Discovery {
    #[default]
    Auto,
    Compute,
    ResourceGraph,
}

impl FromStr for Discovery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "compute" => Ok(Self::Compute),
            "resource-graph" => Ok(Self::ResourceGraph),
            _ => Err(format!(
                "{s:?} is not a discovery source (auto, compute, resource-graph)"
            )),
        }
    }
}

/// The source a discovery used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoverySource {
    Compute,
    ResourceGraph,
}

impl fmt::Display for DiscoverySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Compute => "the Compute lists",
            Self::ResourceGraph => "Resource Graph",
        })
    }
}

/// `auto`: Resource Graph as soon as there is more than one subscription.
pub fn choose_source(choice: Discovery, subscriptions: usize) -> DiscoverySource {
    match choice {
        Discovery::Compute => DiscoverySource::Compute,
        Discovery::ResourceGraph => DiscoverySource::ResourceGraph,
        Discovery::Auto if subscriptions > 1 => DiscoverySource::ResourceGraph,
        Discovery::Auto => DiscoverySource::Compute,
    }
}

/// The subscription ids to search: as given, or every enabled one (the others are named
/// in a warning).
pub async fn resolve_subscriptions(
    arm: &ArmClient,
    scope: &Subscriptions,
) -> Result<Vec<String>, ArmError> {
    let Subscriptions::Listed(ids) = scope else {
        let all = arm.list_subscriptions().await?;
        let mut out = Vec::new();
        for s in all {
            if s.enabled() {
                out.push(s.subscription_id);
            } else {
                tracing::warn!(
                    "subscription {} ({}) is {}: skipped",
                    s.subscription_id,
                    s.display_name.as_deref().unwrap_or("no name"),
                    s.state.as_deref().unwrap_or("in no state")
                );
            }
        }
        tracing::info!("{} enabled subscriptions", out.len());
        return Ok(out);
    };
    Ok(ids.clone())
}

/// Finds the selected VMs in every selected subscription, sorted by resource group, name
/// and id.
pub async fn discover(
    arm: &ArmClient,
    sel: &Selection,
    progress: &DiscoveryProgress,
) -> Result<Vec<VmInfo>, ArmError> {
    Ok(discover_with_source(arm, sel, progress).await?.0)
}

/// [`discover`], and which source it used (`export` re-reads Resource Graph's power
/// states through Compute).
pub async fn discover_with_source(
    arm: &ArmClient,
    sel: &Selection,
    progress: &DiscoveryProgress,
) -> Result<(Vec<VmInfo>, DiscoverySource), ArmError> {
    let subscriptions = resolve_subscriptions(arm, &sel.subscriptions).await?;
    let source = choose_source(sel.discovery, subscriptions.len());
    let (selected, disks) = match source {
        DiscoverySource::Compute => through_compute(arm, sel, &subscriptions, progress).await?,
        DiscoverySource::ResourceGraph => through_graph(arm, sel, &subscriptions, progress).await?,
    };
    let sizes = super::fetch_sizes(arm, &selected).await;
    let mut out: Vec<VmInfo> = selected
        .iter()
        .map(|(vm, state)| super::build_vm_info(vm, *state, &disks, &sizes))
        .collect();
    out.sort_by_key(|v| {
        (
            v.resource_group.to_ascii_lowercase(),
            v.name.to_ascii_lowercase(),
            v.id.to_ascii_lowercase(),
        )
    });
    tracing::info!(
        "discovered {} VMs in {} subscriptions through {source}",
        out.len(),
        subscriptions.len()
    );
    Ok((out, source))
}

async fn through_compute(
    arm: &ArmClient,
    sel: &Selection,
    subscriptions: &[String],
    progress: &DiscoveryProgress,
) -> Result<VmSet, ArmError> {
    let per_sub = futures::stream::iter(subscriptions)
        .map(|sub| super::select_in(arm, sel, sub, progress))
        .buffered(SUBSCRIPTION_CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    let mut vms = Vec::new();
    let mut disks = HashMap::new();
    for (v, d) in per_sub {
        vms.extend(v);
        disks.extend(d);
    }
    Ok((vms, disks))
}

/// A VM row of [`kql::vms`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VmRow {
    id: String,
    name: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    hardware_profile: serde_json::Value,
    #[serde(default)]
    storage_profile: serde_json::Value,
    #[serde(default)]
    security_profile: serde_json::Value,
    #[serde(default)]
    power_state: Option<String>,
}

/// A row of [`kql::ade_extensions`] or [`kql::uniform_scale_sets`]: the id is all we need.
#[derive(Debug, Deserialize)]
struct IdRow {
    id: String,
    #[serde(default)]
    kind: Option<String>,
}

/// The VM model `list` reads, rebuilt from a row and the VM's ADE extensions (which the
/// Compute list carries in `resources`).
fn vm_of(row: VmRow, extensions: &HashMap<String, Vec<IdRow>>) -> Result<VirtualMachine, String> {
    let resources: Vec<serde_json::Value> = extensions
        .get(&row.id.to_ascii_lowercase())
        .into_iter()
        .flatten()
        .map(|e| json!({"id": e.id, "properties": {"type": e.kind}}))
        .collect();
    let code = row.power_state.filter(|c| !c.is_empty());
    let value = json!({
        "id": row.id, "name": row.name, "location": row.location, "tags": row.tags,
        "properties": {
            "hardwareProfile": row.hardware_profile,
            "storageProfile": row.storage_profile,
            "securityProfile": row.security_profile,
            "instanceView": {"statuses": code.map(|c| vec![json!({"code": c})]).unwrap_or_default()},
        },
        "resources": resources,
    });
    serde_json::from_value(value).map_err(|e| e.to_string())
}

async fn through_graph(
    arm: &ArmClient,
    sel: &Selection,
    subscriptions: &[String],
    progress: &DiscoveryProgress,
) -> Result<VmSet, ArmError> {
    let pacer = Pacer::default();
    let (vm_query, ade_query, sets_query) = (
        kql::vms(sel),
        kql::ade_extensions(sel, &ADE_EXTENSION_TYPES),
        kql::uniform_scale_sets(sel),
    );
    let vms_before = std::cell::Cell::new(0usize);
    let on_vms = |n: usize| {
        progress
            .vms
            .fetch_add(n - vms_before.replace(n), Ordering::Relaxed);
    };
    let (rows, extensions, scale_sets) = futures::try_join!(
        graph::query_all::<VmRow>(arm, &pacer, subscriptions, &vm_query, on_vms),
        graph::query_all::<IdRow>(arm, &pacer, subscriptions, &ade_query, |_| {}),
        graph::query_all::<IdRow>(arm, &pacer, subscriptions, &sets_query, |_| {}),
    )?;
    let mut by_vm: HashMap<String, Vec<IdRow>> = HashMap::new();
    for e in extensions {
        let vm =
            e.id.rsplitn(3, '/')
                .nth(2)
                .unwrap_or_default()
                .to_ascii_lowercase();
        by_vm.entry(vm).or_default().push(e);
    }
    let mut selected = Vec::new();
    for row in rows {
        let id = row.id.clone();
        match vm_of(row, &by_vm) {
            Ok(vm) => selected.push(vm),
            Err(e) => tracing::warn!("Resource Graph row {id}: {e}; skipped"),
        }
    }
    progress.statuses.store(selected.len(), Ordering::Relaxed);
    let mut selected: Vec<(VirtualMachine, PowerState)> = selected
        .into_iter()
        .filter(|vm| sel.matches_model(vm))
        .map(|vm| {
            let state = vm.power_state();
            (vm, state)
        })
        .collect();
    selected.extend(uniform_instances(arm, sel, &scale_sets).await?);
    selected.retain(|(_, state)| sel.matches_power_state(*state));
    let disks = graph_disks(arm, &pacer, &selected, progress).await?;
    Ok((selected, disks))
}

/// Instances of the Uniform scale sets Resource Graph found, through Compute (their
/// instance views carry the power state).
async fn uniform_instances(
    arm: &ArmClient,
    sel: &Selection,
    scale_sets: &[IdRow],
) -> Result<Vec<(VirtualMachine, PowerState)>, ArmError> {
    super::instances_of(arm, sel, scale_sets.iter().map(|ss| ss.id.as_str())).await
}

/// The disk records of the selected VMs: one query over the subscriptions that hold their
/// disks, narrowed to the disks' resource groups when there are few.
async fn graph_disks(
    arm: &ArmClient,
    pacer: &Pacer,
    selected: &[(VirtualMachine, PowerState)],
    progress: &DiscoveryProgress,
) -> Result<HashMap<String, Disk>, ArmError> {
    let ids = super::managed_disk_ids(selected);
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut subscriptions: Vec<String> = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    for id in &ids {
        if let Ok(r) = id.parse::<ResourceId>() {
            if !subscriptions
                .iter()
                .any(|s| s.eq_ignore_ascii_case(r.subscription()))
            {
                subscriptions.push(r.subscription().to_string());
            }
            if !groups
                .iter()
                .any(|g| g.eq_ignore_ascii_case(r.resource_group()))
            {
                groups.push(r.resource_group().to_string());
            }
        }
    }
    let narrowed = (groups.len() <= MAX_PUSHED_GROUPS).then_some(groups.as_slice());
    let before = std::cell::Cell::new(0usize);
    let rows: Vec<Disk> =
        graph::query_all(arm, pacer, &subscriptions, &kql::disks(narrowed), |n| {
            progress
                .disks
                .fetch_add(n - before.replace(n), Ordering::Relaxed);
        })
        .await?;
    Ok(disks_by_id(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_resource_graph_for_more_than_one_subscription() {
        assert_eq!(choose_source(Discovery::Auto, 1), DiscoverySource::Compute);
        assert_eq!(
            choose_source(Discovery::Auto, 2),
            DiscoverySource::ResourceGraph
        );
        assert_eq!(
            choose_source(Discovery::Compute, 40),
            DiscoverySource::Compute
        );
        assert_eq!(
            choose_source(Discovery::ResourceGraph, 1),
            DiscoverySource::ResourceGraph
        );
    }

    #[test]
    fn discovery_names_parse_and_others_are_refused() {
        assert_eq!("Resource-Graph".parse(), Ok(Discovery::ResourceGraph));
        assert_eq!("compute".parse(), Ok(Discovery::Compute));
        let err = "graph".parse::<Discovery>().unwrap_err();
        assert!(err.contains("auto, compute, resource-graph"), "{err}");
    }

    #[test]
    fn a_row_becomes_the_model_with_power_state_and_ade_extension() {
        let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/v";
        let row: VmRow = serde_json::from_value(json!({
            "id": id, "name": "v", "location": "westeurope", "tags": {"env": "prod"},
            "hardwareProfile": {"vmSize": "Standard_D2s_v5"},
            "storageProfile": {"osDisk": {"osType": "Linux", "name": "v-os"}},
            "securityProfile": null, "powerState": "PowerState/deallocated"
        }))
        .unwrap();
        let ext = IdRow {
            id: format!("{id}/extensions/ade"),
            kind: Some("AzureDiskEncryptionForLinux".into()),
        };
        let exts = HashMap::from([(id.to_ascii_lowercase(), vec![ext])]);
        let vm = vm_of(row, &exts).unwrap();
        assert_eq!(vm.power_state(), PowerState::Deallocated);
        assert_eq!(vm.vm_size(), Some("Standard_D2s_v5"));
        assert_eq!(vm.tags()["env"], "prod");
        assert_eq!(vm.resources.len(), 1);
        let none: VmRow = serde_json::from_value(json!({"id": id, "name": "v"})).unwrap();
        assert_eq!(
            vm_of(none, &HashMap::new()).unwrap().power_state(),
            PowerState::Unknown
        );
    }
}
