//! A fake Azure Resource Manager for tests and demos: HTTPS on 127.0.0.1 with a CA and a
//! server certificate made at start (the SDK's bearer-token policy refuses plain http), and
//! an App Service-style managed-identity token endpoint on plain http (as on App Service).
//! HTTP/1.1 itself (parsing, framing, keep-alive) is hyper's, the server half of the
//! version the SDK's reqwest builds: the routes below see only `HttpRequest` and answer
//! `HttpResponse`. The fault proxy (fault_proxy.rs) stays byte-level on purpose.
//!
//! It behaves like ARM where the client depends on it: `nextLink` paging with skip tokens
//! containing `+ / =`, status-only pages whose ids differ in case, long-running operations
//! that stay InProgress for a few polls (Azure-AsyncOperation and/or Location, with
//! Retry-After), ARM error bodies with `x-ms-request-id`, 429 with Retry-After on demand,
//! per-request latency, and a request count per route. VM kinds as Azure reports them: Arm64
//! (the OS disk's `supportedCapabilities.architecture`, the size's `CpuArchitectureType`),
//! Trusted Launch (`securityProfile`), and instances of Uniform scale sets, which are not in
//! the VM lists or under `virtualMachines/{name}` but only under
//! `virtualMachineScaleSets/{vmss}/virtualMachines[/{instanceId}]`, sized by `sku.name`.
//! State (VMs, disks, VM sizes listed as
//! Resource SKUs, snapshots,
//! grants) is in memory, seeded by the test, so export tests can assert that no snapshot and
//! no granted access is left. `serve` runs it on given listeners, so a script can start it
//! as a standalone process later.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-0000000000aa";
pub const VM_API: &str = "2024-07-01";
pub const DISK_API: &str = "2024-03-02";
pub const SKU_API: &str = "2021-07-01";
pub const IDENTITY_HEADER: &str = "fake-identity-header-value-7d1c";
pub const ARM_TOKEN: &str = "fake-arm-access-token-3b9f";
/// The client secret the fake Entra endpoint accepts (service principal tests).
pub const CLIENT_SECRET: &str = "Fake~Client.Secret_value-93ab";
/// The federated token (workload identity) the fake Entra endpoint accepts.
pub const FEDERATED_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.fake-federated-token.sig";
/// The signature in every SAS the fake grants: tests assert it never reaches a log.
pub const SAS_SIGNATURE: &str = "FAKEsig%2Bsecret%3D";

/// One disk attached to a fake VM.
#[derive(Debug, Clone)]
pub struct FakeVmDisk {
    /// None for the OS disk.
    pub lun: Option<u32>,
    pub name: String,
    pub resource_group: String,
    pub size_gb: u64,
    /// Some for an unmanaged (page blob) disk.
    pub vhd_uri: Option<String>,
    /// What else Azure says about it (ephemeral, shared, Entra ID export, encryption).
    pub kind: FakeDiskKind,
}

/// The disk kinds of issue 12 that the fake answers as Azure does (REST: Virtual
/// Machines - Get, Disks - Get, api-version 2024-07-01 / 2024-03-02): both halves of the
/// issue, the VM-side kinds (ephemeral, shared, Entra ID export, encryption) and the disk
/// resource's type, sector size and network policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeDiskKind {
    /// OS disk only: `diffDiskSettings: {option: Local}`, no disk resource behind it.
    pub ephemeral: bool,
    /// `maxShares` of the disk resource; the same disk may sit on several fake VMs.
    pub max_shares: Option<u32>,
    /// `dataAccessAuthMode: AzureActiveDirectory`: the export host wants a disk token too.
    pub entra_export: bool,
    /// `encryptionSettingsCollection` (ADE) naming a secret in this vault URL.
    pub ade_vault: Option<String>,
    /// A confidential VM's disk: `securityEncryptionType: DiskWithVMGuestState` in the VM
    /// model, `securityType: ConfidentialVM_DiskEncryptedWithPlatformKey` on the disk.
    pub confidential: bool,
    /// `sku.name`; None: `Premium_LRS`.
    pub sku: Option<String>,
    /// `creationData.logicalSectorSize` (Azure gives it for Premium SSD v2 and Ultra only).
    pub logical_sector_size: Option<u32>,
    /// `networkAccessPolicy`; None: `AllowAll`.
    pub network_access_policy: Option<String>,
    pub disk_access_id: Option<String>,
}

impl FakeDiskKind {
    pub fn sku(sku: &str, logical_sector_size: u32) -> Self {
        Self {
            sku: Some(sku.into()),
            logical_sector_size: Some(logical_sector_size),
            ..Self::default()
        }
    }

    pub fn network(policy: &str, disk_access_id: Option<&str>) -> Self {
        Self {
            network_access_policy: Some(policy.into()),
            disk_access_id: disk_access_id.map(str::to_string),
            ..Self::default()
        }
    }

    pub fn sku_name(&self) -> &str {
        self.sku.as_deref().unwrap_or("Premium_LRS")
    }

    /// 4096-byte logical sectors: Azure stores the disk's snapshots as VHDX, grants access
    /// only when asked for `fileFormat: VHDX`, and serves a VHDX page blob (the fake
    /// Azure seeds such a disk's blob as one).
    pub fn vhdx(&self) -> bool {
        self.logical_sector_size == Some(4096)
    }

    /// Premium SSD v2 and Ultra: incremental snapshots only, with a background copy.
    pub fn background_copy(&self) -> bool {
        matches!(self.sku_name(), "PremiumV2_LRS" | "UltraSSD_LRS")
    }

    /// Exported only through a private endpoint, or not at all.
    pub fn restricted(&self) -> bool {
        self.network_access_policy
            .as_deref()
            .is_some_and(|p| p != "AllowAll")
    }
}

#[derive(Debug, Clone)]
pub struct FakeVm {
    pub name: String,
    pub resource_group: String,
    pub location: String,
    pub vm_size: String,
    pub os_type: String,
    pub hyperv_generation: String,
    /// running, stopped, deallocated...; None: missing from the status pages.
    pub power_state: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub disks: Vec<FakeVmDisk>,
    /// `x64` or `Arm64`, as the OS disk's `supportedCapabilities.architecture` says.
    pub architecture: String,
    /// `securityProfile`: (securityType, secureBootEnabled, vTpmEnabled).
    pub security: Option<(String, bool, bool)>,
    /// (scale set, instance id) of an instance of a Uniform scale set.
    pub scale_set: Option<(String, String)>,
    /// Azure Disk Encryption's VM extension in the model's `resources`.
    pub ade_extension: bool,
}

impl FakeVm {
    pub fn linux(name: &str, resource_group: &str) -> Self {
        Self {
            name: name.into(),
            resource_group: resource_group.into(),
            location: "westeurope".into(),
            vm_size: "Standard_D2s_v5".into(),
            os_type: "Linux".into(),
            hyperv_generation: "V1".into(),
            power_state: Some("running".into()),
            tags: BTreeMap::new(),
            disks: vec![FakeVmDisk {
                lun: None,
                name: format!("{name}-os"),
                resource_group: resource_group.into(),
                size_gb: 30,
                vhd_uri: None,
                kind: FakeDiskKind::default(),
            }],
            architecture: "x64".into(),
            security: None,
            scale_set: None,
            ade_extension: false,
        }
    }

    /// Sets the kind of the OS disk (`None`) or the data disk at `lun`.
    pub fn disk_kind(mut self, lun: Option<u32>, kind: FakeDiskKind) -> Self {
        let d = self
            .disks
            .iter_mut()
            .find(|d| d.lun == lun)
            .expect("a disk at that place");
        d.kind = kind;
        self
    }

    /// Attaches `disk` (another VM's shared disk) at `lun`.
    pub fn attach(mut self, lun: u32, disk: &FakeVmDisk) -> Self {
        self.disks.push(FakeVmDisk {
            lun: Some(lun),
            ..disk.clone()
        });
        self
    }

    /// An Arm64 VM: generation 2 (the only one Azure runs Arm64 as), an Arm64 size.
    pub fn arm64(mut self) -> Self {
        self.architecture = "Arm64".into();
        self.hyperv_generation = "V2".into();
        self.vm_size = "Standard_D4ps_v5".into();
        self
    }

    /// Trusted Launch (generation 2 only) with secure boot and vTPM as given.
    pub fn trusted_launch(mut self, secure_boot: bool, vtpm: bool) -> Self {
        self.hyperv_generation = "V2".into();
        self.security = Some(("TrustedLaunch".into(), secure_boot, vtpm));
        self
    }

    /// Makes this instance `instance` of the Uniform scale set `scale_set`, named as Azure
    /// names those (`{scale set}_{instance}`), its disks named after it.
    pub fn in_uniform_scale_set(mut self, scale_set: &str, instance: &str) -> Self {
        let name = format!("{scale_set}_{instance}");
        for d in &mut self.disks {
            d.name = d.name.replacen(&self.name, &name, 1);
        }
        self.name = name;
        self.scale_set = Some((scale_set.into(), instance.into()));
        self
    }

    pub fn windows_gen2(name: &str, resource_group: &str) -> Self {
        let mut vm = Self::linux(name, resource_group);
        vm.os_type = "Windows".into();
        vm.hyperv_generation = "V2".into();
        vm.vm_size = "Standard_E4s_v5".into();
        vm.disks[0].size_gb = 127;
        vm
    }

    pub fn power(mut self, state: Option<&str>) -> Self {
        self.power_state = state.map(str::to_string);
        self
    }

    pub fn tag(mut self, k: &str, v: &str) -> Self {
        self.tags.insert(k.into(), v.into());
        self
    }

    pub fn location(mut self, l: &str) -> Self {
        self.location = l.into();
        self
    }

    pub fn data_disk(mut self, lun: u32, size_gb: u64) -> Self {
        let rg = self.resource_group.clone();
        self.disks.push(FakeVmDisk {
            lun: Some(lun),
            name: format!("{}-data{lun}", self.name),
            resource_group: rg,
            size_gb,
            vhd_uri: None,
            kind: FakeDiskKind::default(),
        });
        self
    }

    /// Makes every disk an unmanaged page blob in a storage account.
    pub fn unmanaged(mut self) -> Self {
        for d in &mut self.disks {
            d.vhd_uri = Some(format!(
                "https://oldstorage.blob.core.windows.net/vhds/{}.vhd",
                d.name
            ));
        }
        self
    }

    pub fn id(&self, sub: &str) -> String {
        match &self.scale_set {
            Some((ss, instance)) => format!(
                "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{ss}/virtualMachines/{instance}",
                self.resource_group
            ),
            None => format!(
                "/subscriptions/{sub}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
                self.resource_group, self.name
            ),
        }
    }
}

/// A scale set; Uniform ones hold the VMs whose `scale_set` names them.
#[derive(Debug, Clone)]
pub struct FakeScaleSet {
    pub name: String,
    pub resource_group: String,
    pub location: String,
    pub uniform: bool,
}

/// A VM size, listed as a Resource SKU of its location.
#[derive(Debug, Clone)]
pub struct FakeSize {
    pub name: String,
    pub vcpus: u32,
    /// What the guest sees of a constrained-core size (`vCPUsAvailable`), if less.
    pub vcpus_available: Option<u32>,
    /// Listed as `MemoryGB`, fractional where it is not whole GiB.
    pub memory_mib: u64,
    /// Not offered to new VMs of this subscription there (a Location restriction).
    pub restricted: bool,
    /// `CpuArchitectureType`: `x64` or `Arm64`.
    pub architecture: &'static str,
}

impl FakeSize {
    pub fn new(name: &str, vcpus: u32, memory_mib: u64) -> Self {
        Self {
            name: name.into(),
            vcpus,
            vcpus_available: None,
            memory_mib,
            restricted: false,
            architecture: "x64",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FakeDisk {
    pub name: String,
    pub resource_group: String,
    pub location: String,
    pub size_gb: u64,
    pub os_type: Option<String>,
    pub hyperv_generation: Option<String>,
    /// Lower-case id of the VM it is attached to.
    pub managed_by: Option<String>,
    /// OS disks: `supportedCapabilities.architecture`.
    pub architecture: Option<String>,
    /// Lower-case ids of every VM a shared disk is attached to (`managedByExtended`).
    pub managed_by_extended: Vec<String>,
    pub kind: FakeDiskKind,
}

#[derive(Debug, Clone)]
pub struct FakeSnapshot {
    pub name: String,
    pub resource_group: String,
    pub location: String,
    pub source_id: String,
    pub size_gb: u64,
    pub tags: Value,
    pub succeeded: bool,
    pub incremental: bool,
    /// The background copy of a Premium SSD v2 / Ultra snapshot: rises by
    /// `FakeConfig::copy_step` per GET; None for other disks (they report 100).
    pub completion_percent: Option<u32>,
    /// Inherited from the source disk (sector size, network policy).
    pub kind: FakeDiskKind,
}

/// Which polling headers an LRO gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LroHeaders {
    AsyncOperation,
    Location,
    Both,
}

#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub page_size: usize,
    pub latency: Duration,
    /// Every Nth ARM request is answered 429 (the retry is a new request).
    pub throttle_every: Option<u64>,
    /// The next N ARM requests are answered 429.
    pub throttle_next: u32,
    /// Retry-After seconds on a 429.
    pub throttle_retry_after: u64,
    /// Polls an LRO answers InProgress (202) before it completes.
    pub lro_polls: u32,
    pub lro_headers: LroHeaders,
    /// Retry-After seconds on LRO responses.
    pub lro_retry_after: u64,
    /// The next LRO fails with this (code, message).
    pub lro_fail: Option<(String, String)>,
    /// Grants (getAccess) only: (polls InProgress, Retry-After seconds) instead of
    /// `lro_polls`/`lro_retry_after`, so a test can keep a run waiting on a grant while
    /// revokes and deletes stay quick.
    pub grant_lro: Option<(u32, u64)>,
    /// The next ARM request whose path ends with the first field fails with (status, code,
    /// message). Matched by path because `list` sends some lists concurrently (VMs and
    /// scale sets), so "the next request" would be whichever one wins the race.
    pub fail_next: Option<(String, u16, String, String)>,
    pub identity_header: String,
    pub token: String,
    /// User-assigned identity client id the token endpoint accepts (None: any).
    pub identity_client_id: Option<String>,
    /// The managed-identity token for `https://storage.azure.com` (e.g. an unsigned JWT
    /// that an Azurite with `--oauth basic` accepts); None: `token`, as for ARM.
    pub storage_token: Option<String>,
    /// Accepted by the Entra token endpoint (`POST /{tenant}/oauth2/v2.0/token`).
    pub client_secret: String,
    pub federated_token: String,
    /// Resource SKUs answer 403, as for an identity whose role lacks
    /// `Microsoft.Compute/skus/read`.
    pub skus_forbidden: bool,
    /// Scale-set lists answer 403, as for a custom role without
    /// `Microsoft.Compute/virtualMachineScaleSets/read`.
    pub scale_sets_forbidden: bool,
    /// The token the identity endpoint gives for resource `https://disk.azure.com/` (with
    /// its trailing slash, as the service checks); None: the ARM token.
    pub disk_token: Option<String>,
    /// Whether the identity holds Data Operator for Managed Disks (else 403 on reads of
    /// an Entra-ID-export disk).
    pub disk_data_operator: bool,
    /// Percent a background copy advances per GET of its snapshot.
    pub copy_step: u32,
    /// Background copies the subscription may have running (Azure: 50).
    pub max_background_copies: usize,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            page_size: 50,
            latency: Duration::ZERO,
            throttle_every: None,
            throttle_next: 0,
            throttle_retry_after: 1,
            lro_polls: 2,
            lro_headers: LroHeaders::Both,
            lro_retry_after: 0,
            lro_fail: None,
            grant_lro: None,
            fail_next: None,
            identity_header: IDENTITY_HEADER.into(),
            token: ARM_TOKEN.into(),
            identity_client_id: None,
            storage_token: None,
            client_secret: CLIENT_SECRET.into(),
            federated_token: FEDERATED_TOKEN.into(),
            skus_forbidden: false,
            scale_sets_forbidden: false,
            disk_token: None,
            disk_data_operator: true,
            copy_step: 34,
            max_background_copies: 50,
        }
    }
}

enum Effect {
    SnapshotReady(String),
    SnapshotDeleted(String),
    Granted(String),
    Revoked(String),
    Power(String, &'static str),
}

struct Operation {
    polls_left: u32,
    retry_after: u64,
    effect: Option<Effect>,
    result: Option<Value>,
    failure: Option<(String, String)>,
    done: bool,
}

/// Where disk and snapshot contents live when the fake is wired to a running Azurite
/// (see `fake_azure`): each managed disk is page blob `disks/<rg>--<name>` and each
/// snapshot `snapshots/<rg>--<name>` (lower case) in devstoreaccount1.
#[derive(Debug, Clone)]
pub struct StorageBackend {
    /// Azurite's port, for seeding, copying and deleting blobs.
    pub port: u16,
    /// The port granted SAS URLs name: Azurite's, or a proxy in front of it (a SAS
    /// signature does not cover host:port).
    pub sas_port: u16,
}

pub const DISK_CONTAINER: &str = "disks";
pub const SNAPSHOT_CONTAINER: &str = "snapshots";

/// The blob holding a disk's or snapshot's contents (see [`StorageBackend`]).
pub fn blob_name(resource_group: &str, name: &str) -> String {
    format!("{resource_group}--{name}").to_ascii_lowercase()
}

/// Everything the fake knows; tests read and change it through [`FakeArm::with_state`].
pub struct ArmState {
    /// None: grants return a fake SAS that no blob service accepts.
    pub storage: Option<StorageBackend>,
    pub subscription: String,
    pub config: FakeConfig,
    pub vms: Vec<FakeVm>,
    pub scale_sets: Vec<FakeScaleSet>,
    pub disks: Vec<FakeDisk>,
    /// VM sizes per lower-case location.
    pub sizes: BTreeMap<String, Vec<FakeSize>>,
    /// By lower-case id.
    pub snapshots: BTreeMap<String, FakeSnapshot>,
    /// Lower-case ids of disks and snapshots with an active SAS.
    pub grants: BTreeSet<String>,
    /// Of those, the ones whose SAS works only from a private network (network policy
    /// AllowPrivate or DenyAll): the gate refuses reads from here with 403.
    pub private_grants: BTreeSet<String>,
    /// Every snapshot PUT body's `incremental` (absent: false), in order.
    pub snapshot_kinds: Vec<bool>,
    /// Grants asked while a snapshot's background copy ran (refused with 409).
    pub early_grants: u64,
    /// Every Grant Access body's `fileFormat` (None: absent), in order.
    pub grant_formats: Vec<Option<String>>,
    /// The signature of every real SAS granted (percent-encoded as in the URL), so tests
    /// can assert that none reaches a log, a report or a manifest.
    pub issued_signatures: Vec<String>,
    /// Requests per route (see `route` names), plus "throttled".
    pub counts: BTreeMap<String, u64>,
    /// More subscriptions, `GET /subscriptions` and Resource Graph (fake_graph.rs).
    pub fleet: super::fake_graph::Fleet,
    /// Incremental-snapshot tracking: dirty pages, `uniqueId`s, limits (see `warm.rs`).
    pub warm: super::warm::WarmState,
    operations: HashMap<u64, Operation>,
    next_operation: u64,
    arm_requests: u64,
}

impl std::fmt::Debug for ArmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmState")
            .field("vms", &self.vms.len())
            .field("disks", &self.disks.len())
            .field("snapshots", &self.snapshots.len())
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

/// What an export run must not leave behind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub snapshots: Vec<String>,
    pub grants: Vec<String>,
}

impl ArmState {
    pub fn new() -> Self {
        let mut sizes = BTreeMap::new();
        let table = vec![
            FakeSize::new("Standard_B1ls", 1, 512),
            FakeSize::new("Standard_B2ms", 2, 8192),
            FakeSize::new("Standard_D2s_v5", 2, 8192),
            FakeSize::new("Standard_D4s_v5", 4, 16384),
            FakeSize {
                vcpus_available: Some(2),
                ..FakeSize::new("Standard_E4-2s_v5", 4, 32768)
            },
            // Windows VMs use it: their domains must still get 4 vCPUs and 32 GiB.
            FakeSize {
                restricted: true,
                ..FakeSize::new("Standard_E4s_v5", 4, 32768)
            },
            // Ampere Altra: Arm64 VMs.
            FakeSize {
                architecture: "Arm64",
                ..FakeSize::new("Standard_D4ps_v5", 4, 16384)
            },
        ];
        for loc in ["westeurope", "northeurope", "eastus"] {
            sizes.insert(loc.to_string(), table.clone());
        }
        Self {
            storage: None,
            subscription: SUBSCRIPTION.into(),
            config: FakeConfig::default(),
            vms: Vec::new(),
            scale_sets: Vec::new(),
            disks: Vec::new(),
            sizes,
            snapshots: BTreeMap::new(),
            grants: BTreeSet::new(),
            private_grants: BTreeSet::new(),
            snapshot_kinds: Vec::new(),
            early_grants: 0,
            grant_formats: Vec::new(),
            issued_signatures: Vec::new(),
            counts: BTreeMap::new(),
            fleet: Default::default(),
            warm: super::warm::WarmState::default(),
            operations: HashMap::new(),
            next_operation: 1,
            arm_requests: 0,
        }
    }

    /// Adds a VM and a disk resource for each of its managed disks.
    pub fn add_vm(&mut self, vm: FakeVm) {
        let vm_id = vm.id(&self.subscription).to_ascii_lowercase();
        for d in &vm.disks {
            if d.vhd_uri.is_some() || d.kind.ephemeral {
                continue;
            }
            // A shared disk already added with another VM: one more attachment.
            if let Some(i) = find_disk(self, &d.resource_group, &d.name) {
                self.disks[i].managed_by_extended.push(vm_id.clone());
                continue;
            }
            let os = d.lun.is_none();
            self.disks.push(FakeDisk {
                name: d.name.clone(),
                resource_group: d.resource_group.clone(),
                location: vm.location.clone(),
                size_gb: d.size_gb,
                os_type: os.then(|| vm.os_type.clone()),
                hyperv_generation: os.then(|| vm.hyperv_generation.clone()),
                managed_by: Some(vm_id.clone()),
                architecture: os.then(|| vm.architecture.clone()),
                managed_by_extended: vec![vm_id.clone()],
                kind: d.kind.clone(),
            });
        }
        if let Some((ss, _)) = &vm.scale_set
            && !self.scale_sets.iter().any(|s| {
                s.name.eq_ignore_ascii_case(ss)
                    && s.resource_group.eq_ignore_ascii_case(&vm.resource_group)
            })
        {
            self.scale_sets.push(FakeScaleSet {
                name: ss.clone(),
                resource_group: vm.resource_group.clone(),
                location: vm.location.clone(),
                uniform: true,
            });
        }
        self.vms.push(vm);
    }

    pub fn leftovers(&self) -> Leftovers {
        Leftovers {
            snapshots: self.snapshots.values().map(|s| s.name.clone()).collect(),
            grants: self.grants.iter().cloned().collect(),
        }
    }

    pub fn count(&self, route: &str) -> u64 {
        self.counts.get(route).copied().unwrap_or(0)
    }

    /// ARM requests, excluding the token endpoint and throttled answers.
    pub fn arm_total(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(k, _)| *k != "token" && *k != "throttled")
            .map(|(_, v)| v)
            .sum()
    }

    fn disk_id(&self, rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}",
            self.subscription
        )
    }
}

impl Default for ArmState {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------- HTTP plumbing

#[derive(Debug)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Query parameters: keys decoded, values percent-decoded only ('+' stays '+').
    fn params(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    pub(super) fn param(&self, name: &str) -> Option<String> {
        self.params()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub(super) fn json(status: u16, v: Value) -> Self {
        Self {
            status,
            headers: vec![(
                "content-type".into(),
                "application/json; charset=utf-8".into(),
            )],
            body: serde_json::to_vec(&v).unwrap(),
        }
    }

    fn empty(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            body: vec![],
        }
    }

    pub(super) fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub(super) fn arm_error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::json(
        status,
        json!({"error": {"code": code, "message": message, "target": null, "details": []}}),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%'
            && let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request off the wire, as the routes see it (names lower-case, as hyper gives them;
/// a repeated header keeps its last value).
async fn read_request(req: hyper::Request<Incoming>) -> Result<HttpRequest, hyper::Error> {
    let (head, body) = req.into_parts();
    let headers = head
        .headers
        .iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
            (k.as_str().to_string(), v)
        })
        .collect();
    Ok(HttpRequest {
        method: head.method.as_str().to_string(),
        path: head.uri.path().to_string(),
        query: head.uri.query().unwrap_or("").to_string(),
        headers,
        body: body.collect().await?.to_bytes().to_vec(),
    })
}

/// A route's answer as hyper sends it (hyper adds content-length from the body).
fn write_response(resp: HttpResponse) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(resp.body)));
    *out.status_mut() = hyper::StatusCode::from_u16(resp.status).expect("a valid status code");
    for (k, v) in resp.headers {
        let name = hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("a header name");
        let value = hyper::header::HeaderValue::from_str(&v).expect("a header value");
        out.headers_mut().append(name, value);
    }
    out
}

/// HTTP/1.1 with keep-alive on one connection (TLS or not), parsed and framed by hyper.
async fn serve_connection<S>(stream: S, shared: Arc<Mutex<ArmState>>, https: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move {
            let req = read_request(req).await?;
            Ok::<_, hyper::Error>(write_response(handle(&shared, &req, https).await))
        }
    });
    // A client that hangs up mid-request ends only its own connection.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// TLS material made at start: the CA's PEM (for `--ca-bundle`) and the server config.
pub struct Tls {
    pub ca_pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

pub fn make_tls() -> Tls {
    let super::tls::Minted {
        ca_cert,
        leaf_cert,
        leaf_key,
    } = super::tls::mint();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Tls {
        ca_pem: ca_cert.pem(),
        config: Arc::new(config),
    }
}

/// Serves ARM over TLS on `arm` and the token endpoint over plain http on `identity`
/// until the runtime stops.
pub async fn serve(
    state: Arc<Mutex<ArmState>>,
    arm: TcpListener,
    identity: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let st = state.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = identity.accept().await {
            tokio::spawn(serve_connection(sock, st.clone(), false));
        }
    });
    while let Ok((sock, _)) = arm.accept().await {
        let acceptor = acceptor.clone();
        let st = state.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(sock).await {
                serve_connection(tls, st, true).await;
            }
        });
    }
}

/// A running fake on free loopback ports; stopped when dropped.
pub struct FakeArm {
    pub state: Arc<Mutex<ArmState>>,
    /// `https://127.0.0.1:PORT`
    pub arm_url: String,
    /// `http://127.0.0.1:PORT/msi/token` (IDENTITY_ENDPOINT)
    pub identity_url: String,
    /// The CA certificate, for `--ca-bundle`.
    pub ca_pem: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for FakeArm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeArm")
            .field("arm_url", &self.arm_url)
            .finish_non_exhaustive()
    }
}

impl FakeArm {
    pub fn start(state: ArmState) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tls = make_tls();
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = dir.path().join("fake-arm-ca.pem");
        std::fs::write(&ca_pem, &tls.ca_pem).unwrap();
        let (arm, identity) = runtime.block_on(async {
            (
                TcpListener::bind("127.0.0.1:0").await.unwrap(),
                TcpListener::bind("127.0.0.1:0").await.unwrap(),
            )
        });
        let arm_addr: SocketAddr = arm.local_addr().unwrap();
        let id_addr: SocketAddr = identity.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        runtime.spawn(serve(state.clone(), arm, identity, tls.config));
        Self {
            state,
            arm_url: format!("https://{arm_addr}"),
            identity_url: format!("http://{id_addr}/msi/token"),
            ca_pem,
            runtime: Some(runtime),
            _dir: dir,
        }
    }

    pub fn with_state<R>(&self, f: impl FnOnce(&mut ArmState) -> R) -> R {
        f(&mut lock(&self.state))
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.with_state(|s| s.counts.clone())
    }

    pub fn reset_counts(&self) {
        self.with_state(|s| s.counts.clear());
    }
}

impl Drop for FakeArm {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------- behaviour

/// A panic in one handler must not poison every later request (and hang the client in
/// retries): keep going with the state as it is.
fn lock(state: &Mutex<ArmState>) -> std::sync::MutexGuard<'_, ArmState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn bump(s: &mut ArmState, route: &str) {
    *s.counts.entry(route.to_string()).or_default() += 1;
}

async fn handle(shared: &Arc<Mutex<ArmState>>, req: &HttpRequest, https: bool) -> HttpResponse {
    if !https {
        return token_endpoint(shared, req);
    }
    if req.method == "POST" && req.path.ends_with("/oauth2/v2.0/token") {
        return entra_token(shared, req);
    }
    let latency = lock(shared).config.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut s = lock(shared);
    s.arm_requests += 1;
    let request_id = format!("fake-req-{}", s.arm_requests);
    let throttled = if s.config.throttle_next > 0 {
        s.config.throttle_next -= 1;
        true
    } else {
        s.config
            .throttle_every
            .is_some_and(|n| n > 0 && s.arm_requests.is_multiple_of(n))
    };
    if throttled {
        bump(&mut s, "throttled");
        let after = s.config.throttle_retry_after;
        return arm_error(429, "TooManyRequests", "The request is being throttled.")
            .header("retry-after", after.to_string())
            .header("x-ms-request-id", request_id);
    }
    let authorized = req.header("authorization") == Some(&format!("Bearer {}", s.config.token));
    let resp = if !authorized {
        bump(&mut s, "unauthorized");
        arm_error(
            401,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )
    } else if let Some((status, code, message)) = take_injected_error(&mut s, &req.path) {
        bump(&mut s, "injected_error");
        arm_error(status, &code, &message)
    } else {
        let host = req.header("host").unwrap_or("127.0.0.1").to_string();
        route(&mut s, req, &format!("https://{host}"))
    };
    resp.header("x-ms-request-id", request_id)
}

fn take_injected_error(s: &mut ArmState, path: &str) -> Option<(u16, String, String)> {
    let matches =
        matches!(&s.config.fail_next, Some((suffix, ..)) if path.ends_with(suffix.as_str()));
    if !matches {
        return None;
    }
    s.config
        .fail_next
        .take()
        .map(|(_, status, code, message)| (status, code, message))
}

/// Entra ID's token endpoint (the authority host is the fake's https address): client
/// credentials with a client secret or a client assertion (workload identity).
fn entra_token(shared: &Arc<Mutex<ArmState>>, req: &HttpRequest) -> HttpResponse {
    let mut s = lock(shared);
    bump(&mut s, "entra_token");
    let form: HashMap<String, String> = String::from_utf8_lossy(&req.body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(&v.replace('+', " "))))
        .collect();
    let denied = |code: u32, text: &str| {
        HttpResponse::json(
            401,
            json!({"error": "invalid_client", "error_description": format!("AADSTS{code}: {text}"), "error_codes": [code]}),
        )
    };
    let ok = match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(secret), _) if *secret == s.config.client_secret => true,
        (Some(_), _) => return denied(7000215, "Invalid client secret provided."),
        (None, Some(a)) if *a == s.config.federated_token => true,
        (None, Some(_)) => {
            return denied(
                700211,
                "No matching federated identity record found for presented assertion.",
            );
        }
        (None, None) => return denied(7000216, "client_assertion or client_secret is required."),
    };
    if !ok || form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return HttpResponse::json(
            400,
            json!({"error": "unsupported_grant_type", "error_description": "AADSTS70003", "error_codes": [70003]}),
        );
    }
    HttpResponse::json(
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": s.config.token}),
    )
}

fn token_endpoint(shared: &Arc<Mutex<ArmState>>, req: &HttpRequest) -> HttpResponse {
    let mut s = lock(shared);
    bump(&mut s, "token");
    if req.path != "/msi/token" {
        return HttpResponse::json(404, json!({"error": "not found"}));
    }
    match req.header("x-identity-header") {
        None => {
            return HttpResponse::json(
                400,
                json!({"statusCode": 400, "message": "Missing X-IDENTITY-HEADER"}),
            );
        }
        Some(h) if h != s.config.identity_header => {
            return HttpResponse::json(
                401,
                json!({"statusCode": 401, "message": "Unauthorized: X-IDENTITY-HEADER does not match"}),
            );
        }
        Some(_) => {}
    }
    let Some(resource) = req.param("resource") else {
        return HttpResponse::json(
            400,
            json!({"statusCode": 400, "message": "resource is required"}),
        );
    };
    if let (Some(want), Some(got)) = (&s.config.identity_client_id, req.param("client_id"))
        && *want != got
    {
        return HttpResponse::json(
            400,
            json!({"statusCode": 400, "message": "Identity not found"}),
        );
    }
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = match (&s.config.storage_token, &s.config.disk_token) {
        (Some(t), _) if resource.trim_end_matches('/') == "https://storage.azure.com" => t.clone(),
        // Exactly with the trailing slash: the managed-disk service checks for it.
        (_, Some(t)) if resource == "https://disk.azure.com/" => t.clone(),
        _ => s.config.token.clone(),
    };
    HttpResponse::json(
        200,
        json!({
            "access_token": token,
            "expires_on": expires.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": "fake-client-id"
        }),
    )
}

pub(super) fn route(s: &mut ArmState, req: &HttpRequest, base: &str) -> HttpResponse {
    let segs: Vec<String> = req
        .path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(percent_decode)
        .collect();
    let low: Vec<String> = segs.iter().map(|p| p.to_ascii_lowercase()).collect();
    let low: Vec<&str> = low.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    if let ["fakeops", id] = low.as_slice() {
        bump(s, "operation_poll");
        return poll_operation(s, id, req.param("mode").as_deref() == Some("location"));
    }
    if let Some(answer) = super::fake_graph::route(s, req, base, &low) {
        return answer;
    }
    if low.len() < 2 || low[0] != "subscriptions" {
        return arm_error(404, "NotFound", "no such route");
    }
    if !segs[1].eq_ignore_ascii_case(&s.subscription) {
        return arm_error(
            404,
            "SubscriptionNotFound",
            &format!("The subscription '{}' could not be found.", segs[1]),
        );
    }
    let api = req.param("api-version");
    let need = |want: &str| -> Option<HttpResponse> {
        match api.as_deref() {
            None => Some(arm_error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )),
            Some(v) if v != want => Some(arm_error(
                400,
                "InvalidApiVersionParameter",
                &format!("The api-version '{v}' is invalid here; the fake expects '{want}'."),
            )),
            _ => None,
        }
    };
    match (m, &low[2..]) {
        ("GET", ["providers", "microsoft.compute", "virtualmachines"]) => {
            if let Some(e) = need(VM_API) {
                return e;
            }
            list_vms(s, req, base, None)
        }
        ("GET", ["providers", "microsoft.compute", "virtualmachinescalesets"]) => {
            if let Some(e) = need(VM_API) {
                return e;
            }
            list_scale_sets(s, req, base, None)
        }
        ("GET", ["providers", "microsoft.compute", "skus"]) => {
            if let Some(e) = need(SKU_API) {
                return e;
            }
            list_skus(s, req, base)
        }
        ("GET", ["providers", "microsoft.compute", "snapshots"]) => {
            if let Some(e) = need(DISK_API) {
                return e;
            }
            list_snapshots(s, req, base, None)
        }
        (
            _,
            [
                "resourcegroups",
                _,
                "providers",
                "microsoft.compute",
                kind,
                rest @ ..,
            ],
        ) => {
            let rg = segs[3].clone();
            let rest_orig: Vec<String> = segs.get(7..).map(<[String]>::to_vec).unwrap_or_default();
            match *kind {
                "virtualmachines" => {
                    if let Some(e) = need(VM_API) {
                        return e;
                    }
                    vm_routes(s, req, base, &rg, rest, &rest_orig)
                }
                "virtualmachinescalesets" => {
                    if let Some(e) = need(VM_API) {
                        return e;
                    }
                    scale_set_routes(s, req, base, &rg, rest, &rest_orig)
                }
                "disks" | "snapshots" => {
                    if let Some(e) = need(DISK_API) {
                        return e;
                    }
                    if *kind == "disks" {
                        disk_routes(s, req, base, &rg, rest, &rest_orig)
                    } else {
                        snapshot_routes(s, req, base, &rg, rest, &rest_orig)
                    }
                }
                _ => arm_error(404, "NotFound", "no such resource type"),
            }
        }
        _ => arm_error(404, "NotFound", "no such route"),
    }
}

/// Pages `items`: the skip token is `c2tpcA+/<offset>=` (it must come back intact).
pub(super) fn page(
    req: &HttpRequest,
    base: &str,
    items: Vec<Value>,
    page_size: usize,
) -> HttpResponse {
    let offset = match req.param("$skiptoken") {
        None => 0,
        Some(tok) => match tok
            .strip_prefix("c2tpcA+/")
            .and_then(|t| t.strip_suffix('='))
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => n,
            None => {
                return arm_error(
                    400,
                    "InvalidSkipToken",
                    &format!("The skip token '{tok}' is invalid (was it re-encoded?)."),
                );
            }
        },
    };
    let end = (offset + page_size.max(1)).min(items.len());
    let value: Vec<Value> = items
        .get(offset..end)
        .map(<[Value]>::to_vec)
        .unwrap_or_default();
    let mut body = json!({"value": value});
    if end < items.len() {
        let keep: Vec<String> = req
            .query
            .split('&')
            .filter(|kv| {
                let k = percent_decode(kv.split('=').next().unwrap_or(""));
                !k.eq_ignore_ascii_case("$skiptoken")
            })
            .map(str::to_string)
            .collect();
        body["nextLink"] = json!(format!(
            "{base}{}?{}&%24skiptoken=c2tpcA+/{end}=",
            req.path,
            keep.join("&")
        ));
    }
    HttpResponse::json(200, body)
}

pub(super) fn vm_json(s: &ArmState, vm: &FakeVm, instance_view: bool) -> Value {
    let sub = &s.subscription;
    let disk_json = |d: &FakeVmDisk| {
        let mut v = json!({"name": d.name, "createOption": "Attach", "caching": "ReadWrite", "diskSizeGB": d.size_gb, "deleteOption": "Detach"});
        match &d.vhd_uri {
            Some(uri) => v["vhd"] = json!({"uri": uri}),
            // An ephemeral OS disk: a storage type but no disk resource, and its settings.
            None if d.kind.ephemeral => {
                v["managedDisk"] = json!({"storageAccountType": "Standard_LRS"});
                v["diffDiskSettings"] = json!({"option": "Local", "placement": "CacheDisk"});
                v["caching"] = json!("ReadOnly");
                v["createOption"] = json!("FromImage");
            }
            None => {
                v["managedDisk"] = json!({"storageAccountType": d.kind.sku_name(), "id": s.disk_id(&d.resource_group, &d.name)});
                if d.kind.confidential {
                    v["managedDisk"]["securityProfile"] =
                        json!({"securityEncryptionType": "DiskWithVMGuestState"});
                }
            }
        }
        v
    };
    let os = vm.disks.iter().find(|d| d.lun.is_none()).map(|d| {
        let mut v = disk_json(d);
        v["osType"] = json!(vm.os_type);
        v
    });
    let data: Vec<Value> = vm
        .disks
        .iter()
        .filter(|d| d.lun.is_some())
        .map(|d| {
            let mut v = disk_json(d);
            v["lun"] = json!(d.lun);
            v
        })
        .collect();
    let mut v = json!({
        "name": vm.name,
        "id": vm.id(sub),
        "type": "Microsoft.Compute/virtualMachines",
        "location": vm.location,
        "tags": vm.tags,
        "properties": {
            "vmId": format!("00000000-0000-4000-8000-{:012x}", vm.name.len()),
            "hardwareProfile": {"vmSize": vm.vm_size},
            "storageProfile": {"osDisk": os, "dataDisks": data, "diskControllerType": "SCSI"},
            "osProfile": {"computerName": vm.name, "adminUsername": "azureuser"},
            "provisioningState": "Succeeded",
            "aFieldFromTheFuture": {"x": [1, 2]}
        }
    });
    if let Some((t, sb, tpm)) = &vm.security {
        v["properties"]["securityProfile"] = json!({"securityType": t,
            "uefiSettings": {"secureBootEnabled": sb, "vTpmEnabled": tpm}});
    }
    if let Some((_, instance)) = &vm.scale_set {
        // A Uniform instance: sized by its sku, an empty hardware profile, an instance id.
        v["type"] = json!("Microsoft.Compute/virtualMachineScaleSets/virtualMachines");
        v["instanceId"] = json!(instance);
        v["sku"] = json!({"name": vm.vm_size, "tier": "Standard"});
        v["properties"]["hardwareProfile"] = json!({});
        v["properties"]["latestModelApplied"] = json!(true);
    }
    if vm.disks.iter().any(|d| d.kind.confidential) {
        v["properties"]["securityProfile"] = json!({"securityType": "ConfidentialVM",
            "uefiSettings": {"secureBootEnabled": true, "vTpmEnabled": true}});
    }
    if vm.ade_extension {
        let (ext, settings) = if vm.os_type == "Linux" {
            (
                "AzureDiskEncryptionForLinux",
                json!({"EncryptionOperation": "EnableEncryption", "KeyVaultURL": "https://kv-ade.vault.azure.net/", "VolumeType": "All"}),
            )
        } else {
            (
                "AzureDiskEncryption",
                json!({"EncryptionOperation": "EnableEncryption", "KeyVaultURL": "https://kv-ade.vault.azure.net/", "VolumeType": "All"}),
            )
        };
        v["resources"] = json!([{
            "id": format!("{}/extensions/{ext}", vm.id(sub)),
            "name": ext,
            "type": "Microsoft.Compute/virtualMachines/extensions",
            "location": vm.location,
            "properties": {"publisher": "Microsoft.Azure.Security", "type": ext,
                           "typeHandlerVersion": "1.1", "autoUpgradeMinorVersion": true,
                           "provisioningState": "Succeeded", "settings": settings}
        }]);
    }
    if instance_view {
        v["properties"]["instanceView"] = instance_view_json(vm, true);
    }
    v
}

fn instance_view_json(vm: &FakeVm, with_generation: bool) -> Value {
    let mut statuses = vec![
        json!({"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"}),
    ];
    if let Some(p) = &vm.power_state {
        statuses.push(json!({"code": format!("PowerState/{p}"), "level": "Info", "displayStatus": format!("VM {p}")}));
    }
    let mut v = json!({"statuses": statuses});
    if with_generation {
        v["hyperVGeneration"] = json!(vm.hyperv_generation);
    }
    v
}

fn list_vms(s: &mut ArmState, req: &HttpRequest, base: &str, rg: Option<&str>) -> HttpResponse {
    let status_only = req
        .param("statusOnly")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    bump(
        s,
        if status_only {
            "list_vm_status"
        } else {
            "list_vms"
        },
    );
    // Instances of Uniform scale sets are not in the VM lists.
    let in_scope = |vm: &&FakeVm| {
        vm.scale_set.is_none() && rg.is_none_or(|r| vm.resource_group.eq_ignore_ascii_case(r))
    };
    let items: Vec<Value> = if status_only {
        // Reverse order and upper-case resource groups: merging must go by id, not position.
        s.vms
            .iter()
            .rev()
            .filter(in_scope)
            .filter(|vm| vm.power_state.is_some())
            .map(|vm| {
                let id = format!(
                    "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
                    s.subscription,
                    vm.resource_group.to_uppercase(),
                    vm.name
                );
                json!({"name": vm.name, "id": id, "location": vm.location,
                       "properties": {"hardwareProfile": {}, "provisioningState": "Succeeded", "instanceView": instance_view_json(vm, false)}})
            })
            .collect()
    } else {
        s.vms
            .iter()
            .filter(in_scope)
            .map(|vm| vm_json(s, vm, false))
            .collect()
    };
    page(req, base, items, s.config.page_size)
}

/// `Resource Skus - List`: every location's SKUs, or one location's with `$filter=location
/// eq '…'` (the only filter the API takes), paged with `nextLink` like every list here.
/// VM sizes come mixed with availability-set, disk, snapshot and dedicated-host SKUs,
/// capabilities as strings, and restrictions, as Azure answers. Only first pages count as
/// `list_skus` (one listing); every page also counts as `list_skus_page`.
fn list_skus(s: &mut ArmState, req: &HttpRequest, base: &str) -> HttpResponse {
    let location = match req.param("$filter") {
        None => None,
        // A form-encoded query may carry its spaces as '+'.
        Some(f) => match parse_location_filter(&f.replace('+', " ")) {
            Some(loc) => Some(loc),
            None => {
                return arm_error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "The filter '{f}' is not supported: only location filter is supported currently."
                    ),
                );
            }
        },
    };
    if req.param("$skiptoken").is_none() {
        bump(s, "list_skus");
    }
    if s.config.skus_forbidden {
        return arm_error(
            403,
            "AuthorizationFailed",
            "The client does not have authorization to perform action 'Microsoft.Compute/skus/read'.",
        );
    }
    bump(s, "list_skus_page");
    let items: Vec<Value> = s
        .sizes
        .iter()
        .filter(|(loc, _)| {
            location
                .as_deref()
                .is_none_or(|l| l.eq_ignore_ascii_case(loc))
        })
        .flat_map(|(loc, sizes)| location_skus(loc, sizes))
        .collect();
    page(req, base, items, s.config.page_size)
}

/// `location eq 'westeurope'` → `westeurope` (keyword and operator in any case).
fn parse_location_filter(f: &str) -> Option<String> {
    let words: Vec<&str> = f.split_whitespace().collect();
    let [field, op, value] = words.as_slice() else {
        return None;
    };
    let value = value.strip_prefix('\'')?.strip_suffix('\'')?;
    (field.eq_ignore_ascii_case("location") && op.eq_ignore_ascii_case("eq") && !value.is_empty())
        .then(|| value.to_string())
}

fn capabilities(pairs: &[(&str, String)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect(),
    )
}

/// One location's SKUs: the VM sizes with other resource types between them.
fn location_skus(loc: &str, sizes: &[FakeSize]) -> Vec<Value> {
    let other = |kind: &str, name: &str, caps: &[(&str, String)]| {
        json!({"resourceType": kind, "name": name, "locations": [loc],
               "locationInfo": [{"location": loc, "zones": ["1", "2", "3"], "zoneDetails": []}],
               "capabilities": capabilities(caps), "restrictions": []})
    };
    let mut out = vec![
        other(
            "availabilitySets",
            "Classic",
            &[("MaximumPlatformFaultDomainCount", "3".into())],
        ),
        other(
            "availabilitySets",
            "Aligned",
            &[("MaximumPlatformFaultDomainCount", "3".into())],
        ),
    ];
    for (i, size) in sizes.iter().enumerate() {
        out.push(vm_sku(loc, size));
        if i % 2 == 0 {
            // A disk SKU between VM sizes: only resourceType tells them apart.
            let tier = ["Premium_LRS", "StandardSSD_LRS", "Standard_LRS"][i / 2 % 3];
            out.push(other(
                "disks",
                tier,
                &[
                    ("MaxSizeGiB", "32767".into()),
                    ("MinSizeGiB", "0".into()),
                    ("MaxIOps", "20000".into()),
                ],
            ));
        }
    }
    out.push(other("snapshots", "Standard_ZRS", &[]));
    out.push(other("hostGroups/hosts", "DSv3-Type1", &[]));
    out
}

fn vm_sku(loc: &str, size: &FakeSize) -> Value {
    let gib = size.memory_mib as f64 / 1024.0;
    let mut caps = vec![
        ("MaxResourceVolumeMB", "0".to_string()),
        ("OSVhdSizeMB", "1047552".into()),
        ("vCPUs", size.vcpus.to_string()),
        ("MemoryPreservingMaintenanceSupported", "True".into()),
        ("HyperVGenerations", "V1,V2".into()),
        ("MemoryGB", format!("{gib}")),
        ("MaxDataDiskCount", "8".into()),
        ("CpuArchitectureType", size.architecture.into()),
        ("LowPriorityCapable", "True".into()),
        ("PremiumIO", "True".into()),
    ];
    if let Some(n) = size.vcpus_available {
        caps.push(("vCPUsAvailable", n.to_string()));
    }
    caps.push(("vCPUsPerCore", "2".into()));
    caps.push(("EphemeralOSDiskSupported", "False".into()));
    let restrictions = if size.restricted {
        json!([{"type": "Location", "values": [loc], "restrictionInfo": {"locations": [loc]},
                "reasonCode": "NotAvailableForSubscription"}])
    } else {
        json!([])
    };
    let family = size.name.trim_start_matches("Standard_");
    json!({"resourceType": "virtualMachines", "name": size.name, "tier": "Standard",
           "size": family, "family": format!("standard{family}Family"), "locations": [loc],
           "locationInfo": [{"location": loc, "zones": ["1", "2", "3"], "zoneDetails": []}],
           "capabilities": capabilities(&caps), "restrictions": restrictions})
}

/// A VM (not a scale-set instance: those are not under `virtualMachines/{name}`).
fn find_vm(s: &ArmState, rg: &str, name: &str) -> Option<usize> {
    s.vms.iter().position(|v| {
        v.scale_set.is_none()
            && v.resource_group.eq_ignore_ascii_case(rg)
            && v.name.eq_ignore_ascii_case(name)
    })
}

pub(super) fn scale_set_json(s: &ArmState, ss: &FakeScaleSet) -> Value {
    json!({"name": ss.name, "type": "Microsoft.Compute/virtualMachineScaleSets",
           "id": format!("/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
                         s.subscription, ss.resource_group, ss.name),
           "location": ss.location, "sku": {"name": "Standard_D2s_v5", "tier": "Standard", "capacity": 2},
           "properties": {"orchestrationMode": if ss.uniform { "Uniform" } else { "Flexible" },
                          "upgradePolicy": {"mode": "Manual"}, "provisioningState": "Succeeded"}})
}

/// `Virtual Machine Scale Sets - List All` (subscription) or `- List` (resource group).
fn list_scale_sets(
    s: &mut ArmState,
    req: &HttpRequest,
    base: &str,
    rg: Option<&str>,
) -> HttpResponse {
    bump(s, "list_scale_sets");
    if s.config.scale_sets_forbidden {
        return arm_error(
            403,
            "AuthorizationFailed",
            "The client does not have authorization to perform action 'Microsoft.Compute/virtualMachineScaleSets/read'.",
        );
    }
    let items: Vec<Value> = s
        .scale_sets
        .iter()
        .filter(|ss| rg.is_none_or(|r| ss.resource_group.eq_ignore_ascii_case(r)))
        .map(|ss| scale_set_json(s, ss))
        .collect();
    page(req, base, items, s.config.page_size)
}

/// Instances of a Uniform scale set: the list (`$expand=instanceView` allowed, unlike on
/// the VM lists) and one instance. A Flexible scale set's members are ordinary VMs: its
/// instance list is empty here.
fn scale_set_routes(
    s: &mut ArmState,
    req: &HttpRequest,
    base: &str,
    rg: &str,
    rest: &[&str],
    orig: &[String],
) -> HttpResponse {
    let iv = req
        .param("$expand")
        .is_some_and(|e| e.eq_ignore_ascii_case("instanceView"));
    let member = |v: &FakeVm, ss: &str| {
        v.resource_group.eq_ignore_ascii_case(rg)
            && v.scale_set
                .as_ref()
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(ss))
    };
    let exists = |s: &ArmState, ss: &str| {
        s.scale_sets
            .iter()
            .any(|x| x.resource_group.eq_ignore_ascii_case(rg) && x.name.eq_ignore_ascii_case(ss))
    };
    match (req.method.as_str(), rest) {
        ("GET", []) => list_scale_sets(s, req, base, Some(rg)),
        ("GET", [_, "virtualmachines"]) => {
            bump(s, "list_scale_set_vms");
            if !exists(s, &orig[0]) {
                return not_found("virtualMachineScaleSets", rg, &orig[0]);
            }
            let items: Vec<Value> = s
                .vms
                .iter()
                .filter(|v| member(v, &orig[0]))
                .map(|v| vm_json(s, v, iv))
                .collect();
            page(req, base, items, s.config.page_size)
        }
        ("GET", [_, "virtualmachines", _]) => {
            bump(s, "get_scale_set_vm");
            let found = s.vms.iter().find(|v| {
                member(v, &orig[0]) && v.scale_set.as_ref().is_some_and(|(_, i)| *i == orig[2])
            });
            match found {
                Some(v) => HttpResponse::json(200, vm_json(s, v, iv)),
                None => not_found("virtualMachineScaleSets/virtualMachines", rg, &orig[2]),
            }
        }
        _ => arm_error(405, "MethodNotAllowed", "not supported by the fake"),
    }
}

fn not_found(kind: &str, rg: &str, name: &str) -> HttpResponse {
    arm_error(
        404,
        "ResourceNotFound",
        &format!(
            "The Resource 'Microsoft.Compute/{kind}/{name}' under resource group '{rg}' was not found."
        ),
    )
}

fn vm_routes(
    s: &mut ArmState,
    req: &HttpRequest,
    base: &str,
    rg: &str,
    rest: &[&str],
    orig: &[String],
) -> HttpResponse {
    match (req.method.as_str(), rest) {
        ("GET", []) => list_vms(s, req, base, Some(rg)),
        ("GET", [_]) => {
            bump(s, "get_vm");
            match find_vm(s, rg, &orig[0]) {
                Some(i) => {
                    let iv = req
                        .param("$expand")
                        .is_some_and(|e| e.eq_ignore_ascii_case("instanceView"));
                    HttpResponse::json(200, vm_json(s, &s.vms[i].clone(), iv))
                }
                None => not_found("virtualMachines", rg, &orig[0]),
            }
        }
        ("POST", [_, action @ ("poweroff" | "deallocate")]) => {
            bump(
                s,
                if *action == "poweroff" {
                    "power_off"
                } else {
                    "deallocate"
                },
            );
            let Some(i) = find_vm(s, rg, &orig[0]) else {
                return not_found("virtualMachines", rg, &orig[0]);
            };
            let id = s.vms[i].id(&s.subscription).to_ascii_lowercase();
            let state = if *action == "poweroff" {
                "stopped"
            } else {
                "deallocated"
            };
            start_operation(s, base, 202, None, Some(Effect::Power(id, state)), None)
        }
        _ => arm_error(405, "MethodNotAllowed", "not supported by the fake"),
    }
}

pub(super) fn disk_json(s: &ArmState, d: &FakeDisk) -> Value {
    let attached = d.managed_by.as_ref().and_then(|id| {
        s.vms
            .iter()
            .find(|v| v.id(&s.subscription).eq_ignore_ascii_case(id))
    });
    let state = match attached {
        None => "Unattached",
        Some(vm) if matches!(vm.power_state.as_deref(), Some("deallocated")) => "Reserved",
        Some(_) => "Attached",
    };
    let state = if s
        .grants
        .contains(&s.disk_id(&d.resource_group, &d.name).to_ascii_lowercase())
    {
        "ActiveSAS"
    } else {
        state
    };
    let mut props = json!({"diskSizeGB": d.size_gb, "diskSizeBytes": d.size_gb << 30, "diskState": state,
                           "provisioningState": "Succeeded", "creationData": {"createOption": "Empty"}});
    if let Some(os) = &d.os_type {
        props["osType"] = json!(os);
    }
    if let Some(g) = &d.hyperv_generation {
        props["hyperVGeneration"] = json!(g);
    }
    if let Some(a) = &d.architecture {
        props["supportedCapabilities"] = json!({"architecture": a, "acceleratedNetwork": true});
    }
    disk_kind_json(&mut props, &d.kind, &s.subscription, &d.resource_group);
    kind_properties(&mut props, &d.kind);
    props["uniqueId"] = json!(s.warm.unique_id(&s.disk_id(&d.resource_group, &d.name)));
    let mut v = json!({"name": d.name, "id": s.disk_id(&d.resource_group, &d.name), "type": "Microsoft.Compute/disks",
                       "location": d.location, "sku": {"name": d.kind.sku_name(), "tier": "Premium"}, "properties": props});
    if let Some(vm) = attached {
        v["managedBy"] = json!(vm.id(&s.subscription));
    }
    if d.kind.max_shares.is_some() {
        let ids: Vec<String> = d
            .managed_by_extended
            .iter()
            .filter_map(|id| {
                s.vms
                    .iter()
                    .find(|v| v.id(&s.subscription).eq_ignore_ascii_case(id))
                    .map(|v| v.id(&s.subscription))
            })
            .collect();
        v["managedByExtended"] = json!(ids);
    }
    v
}

/// The properties of a disk's kind, as Disks - Get shows them. Every disk has server-side
/// encryption (`encryption.type`), which the tool must not report.
fn disk_kind_json(props: &mut Value, kind: &FakeDiskKind, sub: &str, rg: &str) {
    props["encryption"] = json!({"type": "EncryptionAtRestWithPlatformKey"});
    props["networkAccessPolicy"] = json!("AllowAll");
    if let Some(n) = kind.max_shares {
        props["maxShares"] = json!(n);
    }
    if kind.entra_export {
        props["dataAccessAuthMode"] = json!("AzureActiveDirectory");
    }
    if let Some(vault) = &kind.ade_vault {
        let vault_id = format!(
            "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/kv-ade"
        );
        props["encryptionSettingsCollection"] = json!({
            "enabled": true,
            "encryptionSettings": [{
                "diskEncryptionKey": {"sourceVault": {"id": vault_id},
                                      "secretUrl": format!("{}secrets/0f1e2d3c/4b5a6978", vault)},
                "keyEncryptionKey": {"sourceVault": {"id": vault_id},
                                     "keyUrl": format!("{}keys/kek/0a1b2c3d", vault)}
            }],
            "encryptionSettingsVersion": "1.1"
        });
    }
    if kind.confidential {
        props["securityProfile"] =
            json!({"securityType": "ConfidentialVM_DiskEncryptedWithPlatformKey"});
    }
}

fn find_disk(s: &ArmState, rg: &str, name: &str) -> Option<usize> {
    s.disks.iter().position(|d| {
        d.resource_group.eq_ignore_ascii_case(rg) && d.name.eq_ignore_ascii_case(name)
    })
}

fn sas_for(base: &str, name: &str) -> String {
    let host = base.trim_start_matches("https://");
    format!("https://{host}/fakeblob/{name}/abcd?sv=2018-03-28&sr=b&si=x&sig={SAS_SIGNATURE}")
}

/// The SAS a grant returns: with storage, a real read-only service SAS for the resource's
/// blob that expires after the requested `durationInSeconds` (as Azure's does).
fn grant_sas(
    s: &mut ArmState,
    req: &HttpRequest,
    base: &str,
    container: &str,
    rg: &str,
    name: &str,
) -> String {
    let Some(storage) = &s.storage else {
        return sas_for(base, name);
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let secs = body
        .get("durationInSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(3600);
    let blob = blob_name(rg, name);
    let sas = super::seed::blob_sas(container, &blob, Duration::from_secs(secs), false);
    // A managed-disk export host name, as Azure grants (md-impexp-….blob.storage.azure.net):
    // the tool treats it by its rules, and the proxy answers like one. Under localhost. it
    // reaches the loopback proxy without DNS.
    let url = format!(
        "http://md-impexp-{container}.localhost:{}/{}/{container}/{blob}?{sas}",
        storage.sas_port,
        super::seed::ACCOUNT
    );
    if let Some(sig) = sas.split('&').find_map(|kv| kv.strip_prefix("sig=")) {
        s.issued_signatures.push(sig.to_string());
    }
    url
}

fn disk_routes(
    s: &mut ArmState,
    req: &HttpRequest,
    base: &str,
    rg: &str,
    rest: &[&str],
    orig: &[String],
) -> HttpResponse {
    match (req.method.as_str(), rest) {
        ("GET", []) => {
            bump(s, "list_disks");
            let items: Vec<Value> = s
                .disks
                .iter()
                .filter(|d| d.resource_group.eq_ignore_ascii_case(rg))
                .map(|d| disk_json(s, d))
                .collect();
            page(req, base, items, s.config.page_size)
        }
        ("GET", [_]) => {
            bump(s, "get_disk");
            match find_disk(s, rg, &orig[0]) {
                Some(i) => HttpResponse::json(200, disk_json(s, &s.disks[i])),
                None => not_found("disks", rg, &orig[0]),
            }
        }
        ("POST", [_, "begingetaccess"]) => {
            bump(s, "grant_access");
            record_grant_format(s, req);
            let Some(i) = find_disk(s, rg, &orig[0]) else {
                return not_found("disks", rg, &orig[0]);
            };
            let d = s.disks[i].clone();
            let allocated = d
                .managed_by
                .as_ref()
                .and_then(|id| {
                    s.vms
                        .iter()
                        .find(|v| v.id(&s.subscription).eq_ignore_ascii_case(id))
                })
                .is_some_and(|vm| !matches!(vm.power_state.as_deref(), Some("deallocated")));
            if allocated {
                return arm_error(
                    409,
                    "OperationNotAllowed",
                    &format!(
                        "Cannot grant access to disk '{}' while it is attached to a running VM. Snapshot it or deallocate the VM.",
                        d.name
                    ),
                );
            }
            if let Some(refusal) = grant_refusal(req, &d.kind, None) {
                return refusal;
            }
            let id = s.disk_id(&d.resource_group, &d.name).to_ascii_lowercase();
            if d.kind.restricted() {
                s.private_grants.insert(id.clone());
            }
            let sas = grant_sas(s, req, base, DISK_CONTAINER, &d.resource_group, &d.name);
            start_operation(
                s,
                base,
                202,
                None,
                Some(Effect::Granted(id)),
                Some(json!({"accessSAS": sas})),
            )
        }
        ("POST", [_, "endgetaccess"]) => {
            bump(s, "revoke_access");
            let Some(i) = find_disk(s, rg, &orig[0]) else {
                return not_found("disks", rg, &orig[0]);
            };
            let id = s
                .disk_id(&s.disks[i].resource_group, &s.disks[i].name)
                .to_ascii_lowercase();
            start_operation(s, base, 202, None, Some(Effect::Revoked(id)), None)
        }
        _ => arm_error(405, "MethodNotAllowed", "not supported by the fake"),
    }
}

fn valid_snapshot_name(n: &str) -> bool {
    let ok_chars = n
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    let first = n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let last = n
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    (1..=80).contains(&n.len()) && ok_chars && first && last
}

/// Azure's limits on a resource's tags: at most 50, names up to 512 characters, values
/// up to 256; a request over any of them is refused with 400 and nothing is created.
fn tag_refusal(body: &Value) -> Option<HttpResponse> {
    let tags = body.get("tags")?.as_object()?;
    if tags.len() > 50 {
        return Some(arm_error(
            400,
            "InvalidTagCount",
            "A resource can have at most 50 tags.",
        ));
    }
    for (name, value) in tags {
        if name.chars().count() > 512 {
            return Some(arm_error(
                400,
                "InvalidTagNameLength",
                &format!("The tag name '{name}' is longer than the 512 characters allowed."),
            ));
        }
        let value = value.as_str().unwrap_or_default();
        if value.chars().count() > 256 {
            return Some(arm_error(
                400,
                "InvalidTagValueLength",
                &format!(
                    "The value of tag '{name}' has {} characters; at most 256 are allowed.",
                    value.chars().count()
                ),
            ));
        }
    }
    None
}

fn snapshot_json(s: &ArmState, snap: &FakeSnapshot) -> Value {
    let id = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/snapshots/{}",
        s.subscription, snap.resource_group, snap.name
    );
    let granted = s.grants.contains(&id.to_ascii_lowercase());
    let mut v = json!({"name": snap.name, "id": id, "type": "Microsoft.Compute/snapshots", "location": snap.location, "tags": snap.tags,
           "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": snap.source_id},
                          "diskSizeGB": snap.size_gb, "diskSizeBytes": snap.size_gb << 30,
                          "provisioningState": if snap.succeeded { "Succeeded" } else { "Creating" },
                          "diskState": if granted { "ActiveSAS" } else { "Unattached" }, "incremental": snap.incremental,
                          // Kept from the source disk (modelled so; see token_refusal).
                          "dataAccessAuthMode": if source_needs_entra(s, &snap.source_id) { "AzureActiveDirectory" } else { "None" },
                          "completionPercent": snap.completion_percent.unwrap_or(100)}});
    let props = v["properties"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut props = Value::Object(props);
    kind_properties(&mut props, &snap.kind);
    super::warm::snapshot_properties(&mut props, &s.warm, &id, &snap.source_id);
    v["properties"] = props;
    v
}

fn source_needs_entra(s: &ArmState, source_id: &str) -> bool {
    s.disks.iter().any(|d| {
        d.kind.entra_export
            && s.disk_id(&d.resource_group, &d.name)
                .eq_ignore_ascii_case(source_id)
    })
}

/// A disk's or snapshot's kind as Azure shows it: the network policy always (AllowAll by
/// default), the disk access when set, the sector size inside creationData when known.
fn kind_properties(props: &mut Value, kind: &FakeDiskKind) {
    props["networkAccessPolicy"] =
        json!(kind.network_access_policy.as_deref().unwrap_or("AllowAll"));
    if let Some(id) = &kind.disk_access_id {
        props["diskAccessId"] = json!(id);
    }
    if let Some(n) = kind.logical_sector_size {
        props["creationData"]["logicalSectorSize"] = json!(n);
    }
}

fn record_grant_format(s: &mut ArmState, req: &HttpRequest) {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let format = body.get("fileFormat").and_then(Value::as_str);
    s.grant_formats.push(format.map(str::to_string));
}

/// Why Azure refuses a grant on a disk or snapshot of this kind, if it does: its
/// background copy is still running (`completion` below 100; the docs say a SAS cannot be
/// generated until it is 100 but name no error code: this fake answers 409
/// OperationNotAllowed, as for the other state conflicts of this operation), or its
/// sectors are 4096 bytes and the body lacks `fileFormat: VHDX` (400 BadRequest, message
/// as Azure gives it: azure-cli issue #28320).
fn grant_refusal(
    req: &HttpRequest,
    kind: &FakeDiskKind,
    completion: Option<u32>,
) -> Option<HttpResponse> {
    if let Some(p) = completion.filter(|p| *p < 100) {
        return Some(arm_error(
            409,
            "OperationNotAllowed",
            &format!(
                "The snapshot's background copy is in progress (CompletionPercent {p}); access can be granted once it is 100."
            ),
        ));
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let vhdx = body.get("fileFormat").and_then(Value::as_str) == Some("VHDX");
    if kind.vhdx() && !vhdx {
        return Some(arm_error(
            400,
            "BadRequest",
            "Accessing disk or snapshot with a logical sector size of 4096 requires specifying the file format. Set the fileFormat property to VHDX.",
        ));
    }
    None
}

fn snapshot_routes(
    s: &mut ArmState,
    req: &HttpRequest,
    base: &str,
    rg: &str,
    rest: &[&str],
    orig: &[String],
) -> HttpResponse {
    let id_of = |s: &ArmState, name: &str| {
        format!(
            "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.Compute/snapshots/{name}",
            s.subscription
        )
        .to_ascii_lowercase()
    };
    match (req.method.as_str(), rest) {
        ("GET", []) => list_snapshots(s, req, base, Some(rg)),
        ("PUT", [_]) => {
            bump(s, "snapshot_create");
            let name = orig[0].clone();
            if !valid_snapshot_name(&name) {
                return arm_error(
                    400,
                    "InvalidResourceName",
                    &format!("Resource name {name} is invalid."),
                );
            }
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            if let Some(refusal) = tag_refusal(&body) {
                return refusal;
            }
            let Some(source) = body
                .pointer("/properties/creationData/sourceResourceId")
                .and_then(Value::as_str)
            else {
                return arm_error(
                    400,
                    "InvalidParameter",
                    "creationData.sourceResourceId is required.",
                );
            };
            let Some(disk) = s
                .disks
                .iter()
                .find(|d| {
                    s.disk_id(&d.resource_group, &d.name)
                        .eq_ignore_ascii_case(source)
                })
                .cloned()
            else {
                return arm_error(
                    404,
                    "NotFound",
                    &format!("Source resource {source} was not found."),
                );
            };
            let location = body
                .get("location")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if !location.eq_ignore_ascii_case(&disk.location) {
                return arm_error(
                    400,
                    "InvalidParameter",
                    "The snapshot must be in the source disk's region.",
                );
            }
            let incremental = body
                .pointer("/properties/incremental")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            s.snapshot_kinds.push(incremental);
            if let Some(refusal) = snapshot_refusal(s, &disk, source, incremental) {
                return refusal;
            }
            let disk_id = s.disk_id(&disk.resource_group, &disk.name);
            if let Some(msg) = incremental.then(|| s.warm.rate_refusal(&disk_id)).flatten() {
                return arm_error(409, "OperationNotAllowed", &msg);
            }
            let id = id_of(s, &name);
            let snap = FakeSnapshot {
                name,
                resource_group: rg.to_string(),
                location,
                source_id: source.to_string(),
                size_gb: disk.size_gb,
                tags: body.get("tags").cloned().unwrap_or(json!({})),
                succeeded: false,
                incremental,
                completion_percent: disk.kind.background_copy().then_some(0),
                kind: disk.kind.clone(),
            };
            if let Some(storage) = &s.storage
                && let Err(e) = copy_blob(
                    storage.port,
                    (DISK_CONTAINER, &blob_name(&disk.resource_group, &disk.name)),
                    (SNAPSHOT_CONTAINER, &blob_name(rg, &snap.name)),
                )
            {
                return arm_error(500, "InternalServerError", &e);
            }
            s.warm.snapshot_taken(&disk_id, &id, incremental);
            let initial = snapshot_json(s, &snap);
            s.snapshots.insert(id.clone(), snap);
            start_operation(
                s,
                base,
                201,
                Some(initial),
                Some(Effect::SnapshotReady(id)),
                None,
            )
        }
        ("GET", [_]) => {
            bump(s, "snapshot_get");
            let id = id_of(s, &orig[0]);
            let step = s.config.copy_step;
            match s.snapshots.get_mut(&id) {
                Some(snap) => {
                    // The background copy moves on while the caller waits between GETs.
                    if let Some(p) = snap.completion_percent.as_mut()
                        && snap.succeeded
                    {
                        *p = (*p + step).min(100);
                    }
                    let snap = snap.clone();
                    HttpResponse::json(200, snapshot_json(s, &snap))
                }
                None => not_found("snapshots", rg, &orig[0]),
            }
        }
        ("DELETE", [_]) => {
            bump(s, "snapshot_delete");
            let id = id_of(s, &orig[0]);
            if !s.snapshots.contains_key(&id) {
                return HttpResponse::empty(204);
            }
            if s.grants.contains(&id) {
                return arm_error(
                    409,
                    "OperationNotAllowed",
                    "The snapshot has an active SAS; revoke access before deleting it.",
                );
            }
            start_operation(s, base, 202, None, Some(Effect::SnapshotDeleted(id)), None)
        }
        ("POST", [_, "begingetaccess"]) => {
            bump(s, "grant_access");
            record_grant_format(s, req);
            let id = id_of(s, &orig[0]);
            match s.snapshots.get(&id) {
                None => not_found("snapshots", rg, &orig[0]),
                Some(snap) if !snap.succeeded => arm_error(
                    409,
                    "OperationNotAllowed",
                    "The snapshot is still being created.",
                ),
                Some(snap) => {
                    if let Some(refusal) = grant_refusal(req, &snap.kind, snap.completion_percent) {
                        if snap.completion_percent.is_some_and(|p| p < 100) {
                            s.early_grants += 1;
                        }
                        return refusal;
                    }
                    if let Some(refusal) = family_sas_refusal(s, &id) {
                        return refusal;
                    }
                    if snap.kind.restricted() {
                        s.private_grants.insert(id.clone());
                    }
                    let (rg, name) = (snap.resource_group.clone(), snap.name.clone());
                    let sas = grant_sas(s, req, base, SNAPSHOT_CONTAINER, &rg, &name);
                    start_operation(
                        s,
                        base,
                        202,
                        None,
                        Some(Effect::Granted(id)),
                        Some(json!({"accessSAS": sas})),
                    )
                }
            }
        }
        ("POST", [_, "endgetaccess"]) => {
            bump(s, "revoke_access");
            let id = id_of(s, &orig[0]);
            if !s.snapshots.contains_key(&id) {
                return not_found("snapshots", rg, &orig[0]);
            }
            start_operation(s, base, 202, None, Some(Effect::Revoked(id)), None)
        }
        _ => arm_error(405, "MethodNotAllowed", "not supported by the fake"),
    }
}

/// Azure's rules for a snapshot of `disk` (Microsoft Learn, incremental snapshots,
/// Restrictions): Premium SSD v2 and Ultra disks take incremental snapshots only, at most
/// 3 of a disk may be pending (background copy running), and at most 50 background copies
/// may run in a subscription. The docs name no error codes for these; this fake answers
/// 400 BadRequest for the first and 409 OperationNotAllowed for the limits.
fn snapshot_refusal(
    s: &ArmState,
    disk: &FakeDisk,
    source: &str,
    incremental: bool,
) -> Option<HttpResponse> {
    if !disk.kind.background_copy() {
        return None;
    }
    if !incremental {
        return Some(arm_error(
            400,
            "BadRequest",
            &format!(
                "Only incremental snapshots can be created of disk '{}' with sku {}.",
                disk.name,
                disk.kind.sku_name()
            ),
        ));
    }
    let copying = |snap: &&FakeSnapshot| snap.completion_percent.is_some_and(|p| p < 100);
    let of_disk = s
        .snapshots
        .values()
        .filter(copying)
        .filter(|snap| snap.source_id.eq_ignore_ascii_case(source))
        .count();
    if of_disk >= 3 {
        return Some(arm_error(
            409,
            "OperationNotAllowed",
            "A disk can have at most 3 snapshots pending background copy.",
        ));
    }
    let limit = s.config.max_background_copies;
    if s.snapshots.values().filter(copying).count() >= limit {
        return Some(arm_error(
            409,
            "OperationNotAllowed",
            &format!("The subscription has reached its limit of {limit} active background copies."),
        ));
    }
    None
}

/// Azure's limit on SAS of incremental snapshots: at most `sas_per_family` snapshots of one
/// disk with an active (or pending) grant at once. Not documented with an error code; this
/// fake answers 409 OperationNotAllowed, as for the other limits of this operation.
fn family_sas_refusal(s: &ArmState, id: &str) -> Option<HttpResponse> {
    let target = s.snapshots.get(id)?;
    if !target.incremental {
        return None;
    }
    let pending = s.operations.values().filter_map(|op| match &op.effect {
        Some(Effect::Granted(g)) => Some(g),
        _ => None,
    });
    let granted: BTreeSet<&String> = s.grants.iter().chain(pending).collect();
    let family = granted
        .into_iter()
        .filter(|g| *g != id)
        .filter_map(|g| s.snapshots.get(g))
        .filter(|n| n.incremental && n.source_id.eq_ignore_ascii_case(&target.source_id))
        .count();
    let limit = s.warm.sas_per_family;
    (family >= limit).then(|| {
        arm_error(
            409,
            "OperationNotAllowed",
            &format!(
                "At most {limit} incremental snapshots of a disk can have an active SAS at once; revoke access to one first."
            ),
        )
    })
}

/// Snapshots in the subscription or one resource group, paged like every ARM list.
fn list_snapshots(
    s: &mut ArmState,
    req: &HttpRequest,
    base: &str,
    rg: Option<&str>,
) -> HttpResponse {
    bump(s, "list_snapshots");
    let items: Vec<Value> = s
        .snapshots
        .values()
        .filter(|snap| rg.is_none_or(|r| snap.resource_group.eq_ignore_ascii_case(r)))
        .map(|snap| snapshot_json(s, snap))
        .collect();
    page(req, base, items, s.config.page_size)
}

/// Copy Blob within devstoreaccount1 (Azurite copies synchronously, page ranges kept):
/// the snapshot's contents are the disk's at the time of the request, as in Azure.
/// Azurite 3.37 (in memory) gives a copied page blob the *same* page-range list object as
/// its source, so a later Put Page or Clear Page on the disk would show in every snapshot
/// copied from it. A blob snapshot gets a list of its own and is never written: copy from
/// one, then delete it.
fn copy_blob(port: u16, from: (&str, &str), to: (&str, &str)) -> Result<(), String> {
    let from_path = format!("/{}/{}", from.0, from.1);
    let frozen = blob_request(port, "PUT", &from_path, &[("comp", "snapshot")], &[])?;
    let stamp = frozen
        .header("x-ms-snapshot")
        .ok_or("blob snapshot: no x-ms-snapshot")?
        .to_string();
    let source = format!(
        "http://127.0.0.1:{port}/{}{from_path}?snapshot={stamp}",
        super::seed::ACCOUNT
    );
    let copied = blob_request(
        port,
        "PUT",
        &format!("/{}/{}", to.0, to.1),
        &[],
        &[("x-ms-copy-source", source)],
    );
    blob_request(port, "DELETE", &from_path, &[("snapshot", &stamp)], &[])?;
    copied.map(|_| ())
}

/// A SharedKey request to Azurite that must succeed (2xx).
fn blob_request(
    port: u16,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    headers: &[(&str, String)],
) -> Result<super::http::Response, String> {
    let r = super::seed::signed_request(port, method, path, query, headers, b"")
        .map_err(|e| format!("{method} {path}: {e}"))?;
    if (200..300).contains(&r.status) {
        Ok(r)
    } else {
        Err(format!(
            "{method} {path}: HTTP {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ))
    }
}

/// Registers an LRO and answers its first response with the configured polling headers.
fn start_operation(
    s: &mut ArmState,
    base: &str,
    status: u16,
    body: Option<Value>,
    effect: Option<Effect>,
    result: Option<Value>,
) -> HttpResponse {
    let id = s.next_operation;
    s.next_operation += 1;
    let failure = s.config.lro_fail.take();
    let (polls, retry_after) = match (&effect, s.config.grant_lro) {
        (Some(Effect::Granted(_)), Some(slow)) => slow,
        _ => (s.config.lro_polls, s.config.lro_retry_after),
    };
    s.operations.insert(
        id,
        Operation {
            polls_left: polls,
            retry_after,
            effect,
            result,
            failure,
            done: false,
        },
    );
    let mut resp = match body {
        Some(b) => HttpResponse::json(status, b),
        None => HttpResponse::empty(status),
    };
    let async_url = format!("{base}/fakeops/{id}?api-version=2024-03-02");
    let location_url = format!("{base}/fakeops/{id}?mode=location&api-version=2024-03-02");
    // A PUT's result is the resource itself: ARM gives it Azure-AsyncOperation only.
    let headers = if status == 201 && s.config.lro_headers == LroHeaders::Both {
        LroHeaders::AsyncOperation
    } else {
        s.config.lro_headers
    };
    if matches!(headers, LroHeaders::AsyncOperation | LroHeaders::Both) {
        resp = resp.header("azure-asyncoperation", async_url);
    }
    if matches!(headers, LroHeaders::Location | LroHeaders::Both) {
        resp = resp.header("location", location_url);
    }
    resp.header("retry-after", retry_after.to_string())
}

fn poll_operation(s: &mut ArmState, id: &str, location_mode: bool) -> HttpResponse {
    let Ok(id) = id.parse::<u64>() else {
        return arm_error(404, "NotFound", "no such operation");
    };
    let Some(op) = s.operations.get_mut(&id) else {
        return arm_error(404, "NotFound", "no such operation");
    };
    let retry_after = op.retry_after.to_string();
    if op.polls_left > 0 {
        op.polls_left -= 1;
        return if location_mode {
            HttpResponse::empty(202)
        } else {
            HttpResponse::json(
                200,
                json!({"status": "InProgress", "startTime": "2026-01-01T00:00:00Z"}),
            )
        }
        .header("retry-after", retry_after);
    }
    if let Some((code, message)) = op.failure.clone() {
        return if location_mode {
            arm_error(400, &code, &message)
        } else {
            HttpResponse::json(
                200,
                json!({"status": "Failed", "error": {"code": code, "message": message}}),
            )
        };
    }
    let first_completion = !op.done;
    op.done = true;
    let result = op.result.clone();
    let effect = if first_completion {
        op.effect.take()
    } else {
        None
    };
    if let Some(effect) = effect {
        apply(s, effect);
    }
    if location_mode {
        match result {
            Some(r) => HttpResponse::json(200, r),
            None => HttpResponse::empty(204),
        }
    } else {
        // As Azure does for getAccess: the result also sits in the status body.
        let mut body = json!({"status": "Succeeded", "startTime": "2026-01-01T00:00:00Z", "endTime": "2026-01-01T00:00:05Z"});
        if let Some(r) = result {
            body["properties"] = json!({"output": r});
        }
        HttpResponse::json(200, body)
    }
}

fn apply(s: &mut ArmState, effect: Effect) {
    // An operation in another subscription of the fleet changes that subscription's world.
    let (Effect::SnapshotReady(id)
    | Effect::SnapshotDeleted(id)
    | Effect::Granted(id)
    | Effect::Revoked(id)
    | Effect::Power(id, _)) = &effect;
    if let Some(sub) = id.split('/').nth(2).map(str::to_string)
        && !sub.eq_ignore_ascii_case(&s.subscription)
        && s.fleet
            .others
            .iter()
            .any(|w| w.subscription.eq_ignore_ascii_case(&sub))
    {
        return super::fake_graph::in_subscription(s, &sub, |s| apply(s, effect));
    }
    match effect {
        Effect::SnapshotReady(id) => {
            if let Some(snap) = s.snapshots.get_mut(&id) {
                snap.succeeded = true;
            }
        }
        Effect::SnapshotDeleted(id) => {
            s.warm.snapshot_deleted(&id);
            if let Some(snap) = s.snapshots.remove(&id)
                && let Some(storage) = &s.storage
            {
                let blob = blob_name(&snap.resource_group, &snap.name);
                let path = format!("/{SNAPSHOT_CONTAINER}/{blob}");
                let _ = super::seed::signed_request(storage.port, "DELETE", &path, &[], &[], b"");
            }
        }
        Effect::Granted(id) => {
            s.grants.insert(id);
        }
        Effect::Revoked(id) => {
            // Access ended: a grant still in progress on it never takes effect either.
            for op in s.operations.values_mut() {
                if matches!(&op.effect, Some(Effect::Granted(g)) if *g == id) {
                    op.effect = None;
                }
            }
            s.grants.remove(&id);
            s.private_grants.remove(&id);
        }
        Effect::Power(vm_id, state) => {
            let sub = s.subscription.clone();
            if let Some(vm) = s
                .vms
                .iter_mut()
                .find(|v| v.id(&sub).eq_ignore_ascii_case(&vm_id))
            {
                vm.power_state = Some(state.to_string());
            }
        }
    }
}
