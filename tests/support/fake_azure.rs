//! The test world for `export` and `cleanup`: a running Azurite and the fake ARM wired
//! together, so that a grant returns a real, expiring service SAS for a real page blob and
//! a snapshot is a real copy of its disk's blob. Each managed disk is seeded as a small
//! fixed VHD (a few MiB, a few written extents, the rest never-written pages) whose bytes
//! the test keeps, so an exported image can be compared with what was "in Azure".
//!
//! Usable from tests (`mod support;`) and from an example or demo binary: include this
//! file together with `azurite.rs`, `fake_arm.rs`, `fault_proxy.rs`, `http.rs`, `pages.rs`,
//! `seed.rs`, `vhd.rs`, `vhdx.rs`, `warm.rs`, `warm_disk.rs` and `warm_gate.rs` as siblings
//! in one module (`#[path]`, see examples/fake_azure.rs); it uses nothing else from the test
//! crate. Disks change between warm-migration passes through `warm_disk.rs`; the gate
//! answers incremental-snapshot diffs through `warm_gate.rs`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::azurite::Azurite;
use super::fake_arm::{
    ArmState, DISK_CONTAINER, FakeArm, FakeDisk, FakeVm, FakeVmDisk, IDENTITY_HEADER, Leftovers,
    SNAPSHOT_CONTAINER, StorageBackend, blob_name,
};
use super::fault_proxy::{FaultProxy, Gate, TokenGate};
use super::seed;
use super::vhd::{Disk, MIB, fill, footer};

/// A small, sparse disk whose contents depend on `name` (so a mix-up between two disks
/// shows): 4 MiB with three written extents, one of them unaligned to 4 KiB.
pub fn small_disk(name: &str) -> Disk {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    let seed = h.finish();
    let layout = [
        (0u64, 64 * 1024u64),
        (MIB + 4096, 100 * 1024),
        (3 * MIB, 256 * 1024),
    ];
    Disk {
        size: 4 * MIB,
        extents: layout
            .iter()
            .enumerate()
            .map(|(i, &(off, len))| (off, fill(seed.wrapping_add(i as u64), len as usize)))
            .collect(),
    }
}

/// Azurite + fake ARM, stopped (both) when dropped. Granted SAS URLs point at `proxy`, in
/// front of Azurite: it refuses (403) a blob whose grant was revoked, as Azure does, and
/// tests can slow it down or inject faults.
pub struct FakeAzure {
    // Field order: the fake ARM stops first, Azurite last.
    pub arm: FakeArm,
    pub proxy: FaultProxy,
    pub azurite: Azurite,
    /// What each managed disk holds, by lower-case disk name.
    pub disks: BTreeMap<String, Disk>,
    /// The same by lower-case (resource group, disk name): namesake disks in two groups.
    pub disks_by_group: BTreeMap<(String, String), Disk>,
}

impl std::fmt::Debug for FakeAzure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAzure")
            .field("arm", &self.arm)
            .field("azurite_port", &self.azurite.port)
            .finish_non_exhaustive()
    }
}

impl FakeAzure {
    /// Starts both services and seeds `vms` with [`small_disk`] contents.
    pub fn start(vms: Vec<FakeVm>) -> Self {
        Self::start_with(ArmState::new(), vms, |d| small_disk(&d.name))
    }

    /// Starts both services from `state` (config, sizes, ...), then adds `vms`, seeding
    /// each managed disk with `content(disk)` as a fixed VHD page blob, or as a VHDX with
    /// 4096-byte sectors for a disk with such sectors (needs qemu-img).
    pub fn start_with(
        state: ArmState,
        vms: Vec<FakeVm>,
        content: impl Fn(&FakeVmDisk) -> Disk,
    ) -> Self {
        let placed = vms.into_iter().map(|vm| (None, vm)).collect();
        Self::start_placed(state, placed, content)
    }

    /// Starts both services with each VM in the subscription named beside it (the fake's
    /// fleet, see `fake_graph`), seeded with [`small_disk`] contents. Disk names must be
    /// unique across subscriptions (Azurite holds them all in one container).
    pub fn start_fleet(vms: Vec<(&str, FakeVm)>) -> Self {
        let placed = vms
            .into_iter()
            .map(|(sub, vm)| (Some(sub.to_string()), vm))
            .collect();
        Self::start_placed(ArmState::new(), placed, |d| small_disk(&d.name))
    }

    fn start_placed(
        mut state: ArmState,
        placed: Vec<(Option<String>, FakeVm)>,
        content: impl Fn(&FakeVmDisk) -> Disk,
    ) -> Self {
        let vms: Vec<&FakeVm> = placed.iter().map(|(_, vm)| vm).collect();
        let azurite = Azurite::start();
        seed::create_container_once(azurite.port, DISK_CONTAINER);
        seed::create_container_once(azurite.port, SNAPSHOT_CONTAINER);
        let mut disks = BTreeMap::new();
        let mut disks_by_group = BTreeMap::new();
        for vm in &vms {
            for d in vm
                .disks
                .iter()
                .filter(|d| d.vhd_uri.is_none() && !d.kind.ephemeral)
            {
                let disk = content(d);
                let blob = blob_name(&d.resource_group, &d.name);
                if d.kind.vhdx() {
                    // Granted only with fileFormat VHDX (see `grant_refusal`), served as
                    // Azure serves a 4 KiB-sector disk: a VHDX with 4096-byte sectors.
                    let vhdx = super::vhdx::vhdx_of_image(&disk.image(), 4096);
                    super::vhdx::seed_pages(azurite.port, DISK_CONTAINER, &blob, &vhdx);
                } else {
                    seed_fixed_vhd(azurite.port, &blob, &disk);
                }
                disks_by_group.insert(
                    (
                        d.resource_group.to_ascii_lowercase(),
                        d.name.to_ascii_lowercase(),
                    ),
                    disk.clone(),
                );
                disks.insert(d.name.to_ascii_lowercase(), disk);
            }
        }
        for (sub, vm) in placed {
            match sub {
                Some(sub) => super::fake_graph::add_vm_in(&mut state, &sub, vm),
                None => state.add_vm(vm),
            }
        }
        super::warm_disk::track_seeded(&mut state, azurite.port);
        let proxy = FaultProxy::start(azurite.port);
        state.storage = Some(StorageBackend {
            port: azurite.port,
            sas_port: proxy.port,
        });
        let arm = FakeArm::start(state);
        let grants = arm.state.clone();
        proxy.set_gate(Gate(Arc::new(move |path: &str| {
            let s = grants.lock().unwrap_or_else(|p| p.into_inner());
            granted(&s, path)
        })));
        let tokens = arm.state.clone();
        proxy.set_token_gate(TokenGate(Arc::new(
            move |path: &str, auth: Option<&str>| {
                let s = tokens.lock().unwrap_or_else(|p| p.into_inner());
                token_refusal(&s, path, auth)
            },
        )));
        proxy.set_page_list_gate(super::warm_gate::diff_gate(arm.state.clone(), azurite.port));
        Self {
            arm,
            proxy,
            azurite,
            disks,
            disks_by_group,
        }
    }

    /// The bytes disk `name` holds (its virtual disk, without the VHD footer).
    pub fn disk(&self, name: &str) -> &Disk {
        self.disks
            .get(&name.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("no seeded disk {name}"))
    }

    /// The bytes disk `name` of resource group `rg` holds (for namesake disks).
    pub fn disk_in(&self, rg: &str, name: &str) -> &Disk {
        self.disks_by_group
            .get(&(rg.to_ascii_lowercase(), name.to_ascii_lowercase()))
            .unwrap_or_else(|| panic!("no seeded disk {rg}/{name}"))
    }

    pub fn with_state<R>(&self, f: impl FnOnce(&mut ArmState) -> R) -> R {
        self.arm.with_state(f)
    }

    /// Snapshots and grants that exist now (an export must leave none).
    pub fn leftovers(&self) -> Leftovers {
        self.with_state(|s| s.leftovers())
    }

    /// Points granted SAS URLs at `port` instead of the gate proxy (e.g. another
    /// `FaultProxy` in front of Azurite; revocation is then not enforced). The URLs keep
    /// their managed-disk host name, so whatever listens there must set Azurite's Host.
    pub fn set_sas_port(&self, port: u16) {
        self.with_state(|s| {
            if let Some(st) = s.storage.as_mut() {
                st.sas_port = port;
            }
        });
    }

    /// Arguments that point the binary at this world (after the subcommand).
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "--cloud".into(),
            "custom".into(),
            "--arm-endpoint".into(),
            self.arm.arm_url.clone(),
            "--ca-bundle".into(),
            self.arm.ca_pem.display().to_string(),
        ]
    }

    /// Environment that authenticates the binary as an App Service managed identity.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("IDENTITY_ENDPOINT".into(), self.arm.identity_url.clone()),
            ("IDENTITY_HEADER".into(), IDENTITY_HEADER.into()),
        ]
    }
}

/// True if `path` (`/devstoreaccount1/<container>/<blob>`) is the blob of a disk or
/// snapshot with an active grant.
fn granted(s: &ArmState, path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let [_, container, blob] = parts.as_slice() else {
        return false;
    };
    s.grants.difference(&s.private_grants).any(|id| {
        // Lower-case ids: /subscriptions/s/resourcegroups/rg/providers/ns/kind/name
        let p: Vec<&str> = id.split('/').filter(|p| !p.is_empty()).collect();
        p.len() == 8 && p[6] == *container && blob_name(p[3], p[7]) == *blob
    })
}

/// The managed disk whose data the blob at `path` holds: the disk itself, or the source
/// of a snapshot.
fn disk_behind<'a>(s: &'a ArmState, path: &str) -> Option<&'a FakeDisk> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let [_, container, blob] = parts.as_slice() else {
        return None;
    };
    let by_blob = |rg: &str, name: &str| blob_name(rg, name) == *blob;
    if *container == DISK_CONTAINER {
        return s.disks.iter().find(|d| by_blob(&d.resource_group, &d.name));
    }
    let snap = s
        .snapshots
        .values()
        .find(|n| *container == SNAPSHOT_CONTAINER && by_blob(&n.resource_group, &n.name))?;
    s.disks.iter().find(|d| {
        snap.source_id.to_ascii_lowercase().ends_with(
            &format!(
                "/resourcegroups/{}/providers/microsoft.compute/disks/{}",
                d.resource_group, d.name
            )
            .to_ascii_lowercase(),
        )
    })
}

/// How an export host answers a read of an Entra-ID-export disk (or a snapshot of one,
/// which keeps the disk's `dataAccessAuthMode`): without a bearer token, or with one for
/// another audience, 401 NoAuthenticationInformation / InvalidAuthenticationInfo with a
/// challenge naming `https://disk.azure.com/`; with the right token but no Data Operator
/// for Managed Disks role, 403 AuthorizationPermissionMismatch.
fn token_refusal(
    s: &ArmState,
    path: &str,
    auth: Option<&str>,
) -> Option<(u16, &'static str, String)> {
    let disk = disk_behind(s, path)?;
    if !disk.kind.entra_export {
        return None;
    }
    let Some(auth) = auth else {
        return Some((
            401,
            "NoAuthenticationInformation",
            "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.".into(),
        ));
    };
    let want = s
        .config
        .disk_token
        .as_deref()
        .unwrap_or("\u{0}no disk token configured");
    if auth.strip_prefix("Bearer ") != Some(want) {
        return Some((
            401,
            "InvalidAuthenticationInfo",
            "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.".into(),
        ));
    }
    if !s.config.disk_data_operator {
        return Some((
            403,
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission."
                .into(),
        ));
    }
    None
}

/// Writes `disk` as a fixed VHD into page blob `disks/<blob>`: its extents as pages, the
/// rest never written, then the footer.
pub fn seed_fixed_vhd(port: u16, blob: &str, disk: &Disk) {
    seed_vhd_into(port, DISK_CONTAINER, blob, disk);
}

/// [`seed_fixed_vhd`] into any container (created if needed), e.g. an unmanaged disk's
/// `vhds` container in another storage account.
pub fn seed_vhd_into(port: u16, container: &str, blob: &str, disk: &Disk) {
    seed::create_container_once(port, container);
    seed::create_page_blob(port, container, blob, disk.size + 512);
    for (off, data) in &disk.extents {
        seed::put_pages(port, container, blob, *off, data);
    }
    seed::put_pages(
        port,
        container,
        blob,
        disk.size,
        &footer(2, disk.size, u64::MAX),
    );
}
