//! The ARM operations the tool uses, each a typed method on [`ArmClient`]. Every request
//! goes through one `send`, which counts it per operation, maps failures to [`ArmError`]
//! with the operation and resource, and never lets a non-success status through.
//!
//! API versions: 2024-07-01 for virtual machines, 2024-03-02 for disks and snapshots (see
//! shared/reference/azure.md), 2021-07-01 for Resource SKUs (the VM sizes: `Virtual Machine
//! Sizes - List` is deprecated in their favour).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::headers::{HeaderName, Headers};
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineSendOptions, Request, Url,
};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::error::{ArmError, parse_service_error};
use super::id::{ResourceId, ResourceType};
use super::lro::{self, FinalState, LroResponse, LroSettings};
use super::models::{
    AccessUri, Disk, Page, ResourceSku, ScaleSet, Snapshot, Subscription, VirtualMachine,
};
use super::pager;
use crate::azure::sas::SasUrl;

pub const VM_API_VERSION: &str = "2024-07-01";
pub const DISK_API_VERSION: &str = "2024-03-02";
pub const SKU_API_VERSION: &str = "2021-07-01";
pub const SUBSCRIPTIONS_API_VERSION: &str = "2022-12-01";
pub const RESOURCE_GRAPH_API_VERSION: &str = "2024-04-01";

const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");
const ASYNC_OPERATION: HeaderName = HeaderName::from_static("azure-asyncoperation");
const LOCATION: HeaderName = HeaderName::from_static("location");
const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");
const QUOTA_REMAINING: HeaderName = HeaderName::from_static("x-ms-user-quota-remaining");
const QUOTA_RESETS_AFTER: HeaderName = HeaderName::from_static("x-ms-user-quota-resets-after");

/// Resource Graph's per-user quota as one answer reports it (both headers optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserQuota {
    /// Queries left in the current window.
    pub remaining: Option<u32>,
    /// When the window resets (`hh:mm:ss` on the wire).
    pub resets_after: Option<Duration>,
}

impl UserQuota {
    fn from_headers(headers: &Headers) -> Self {
        Self {
            remaining: headers
                .get_optional_str(&QUOTA_REMAINING)
                .and_then(|v| v.trim().parse().ok()),
            resets_after: headers
                .get_optional_str(&QUOTA_RESETS_AFTER)
                .and_then(parse_hms),
        }
    }
}

/// `hh:mm:ss` (Resource Graph's `x-ms-user-quota-resets-after`) as a duration.
pub fn parse_hms(v: &str) -> Option<Duration> {
    let mut parts = v.trim().split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let h: u64 = h.parse().ok()?;
    let m: u64 = m.parse().ok()?;
    let s: f64 = s.parse().ok()?;
    if m >= 60 || !(0.0..60.0).contains(&s) {
        return None;
    }
    Some(Duration::from_secs(h * 3600 + m * 60) + Duration::from_secs_f64(s))
}

/// Requests made, per operation (logical requests) and in total (HTTP attempts, including
/// the pipeline's retries of 429/5xx). `-v` prints them; the benchmark reads them.
#[derive(Debug, Default)]
pub struct RequestStats {
    by_operation: Mutex<BTreeMap<&'static str, u64>>,
    attempts: AtomicU64,
}

impl RequestStats {
    fn count(&self, operation: &'static str) {
        let mut m = self.by_operation.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(operation).or_default() += 1;
    }

    pub fn by_operation(&self) -> Vec<(&'static str, u64)> {
        let m = self.by_operation.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Logical requests (one per call, whatever the retries).
    pub fn requests(&self) -> u64 {
        self.by_operation().iter().map(|(_, n)| n).sum()
    }

    /// HTTP attempts that reached the transport, retries included.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// `list VMs=20, list VM statuses=20, ...; 41 requests, 43 attempts`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .by_operation()
            .iter()
            .map(|(op, n)| format!("{op}={n}"))
            .collect();
        format!(
            "{}; {} requests, {} HTTP attempts (retries included)",
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            },
            self.requests(),
            self.attempts()
        )
    }
}

/// Counts every try that the retry policy lets through to the transport, and turns an
/// untrusted server certificate into a non-retryable error: the pipeline retries every
/// connection error for up to a minute, but a certificate will not become trusted.
#[derive(Debug)]
struct AttemptCounter(Arc<RequestStats>);

#[async_trait::async_trait]
impl Policy for AttemptCounter {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        self.0.attempts.fetch_add(1, Ordering::Relaxed);
        match next[0].send(ctx, request, &next[1..]).await {
            Err(e) if is_untrusted_certificate(&error_chain(&e)) => {
                Err(azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Other,
                    format!(
                        "{}; the server's TLS certificate is not trusted (for a private CA or a \
                         TLS-inspecting proxy, pass --ca-bundle PEM)",
                        error_chain(&e)
                    ),
                ))
            }
            other => other,
        }
    }
}

fn is_untrusted_certificate(chain: &str) -> bool {
    chain.contains("invalid peer certificate") || chain.contains("UnknownIssuer")
}

/// A resource in a resource group: subscription, group and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
}

impl ResourceRef {
    pub fn new(subscription: &str, resource_group: &str, name: &str) -> Self {
        Self {
            subscription: subscription.into(),
            resource_group: resource_group.into(),
            name: name.into(),
        }
    }
}

/// The parts of a parsed id the URL builder needs (its type is the caller's to check).
impl From<&ResourceId> for ResourceRef {
    fn from(id: &ResourceId) -> Self {
        Self::new(id.subscription(), id.resource_group(), id.name())
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_group, self.name)
    }
}

/// What grant/revoke access applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTarget {
    Disk(ResourceRef),
    Snapshot(ResourceRef),
}

impl AccessTarget {
    /// The grant target a parsed id names: a disk or a snapshot by its type, None for any
    /// other type.
    pub fn of(id: &ResourceId) -> Option<Self> {
        match id.resource_type() {
            ResourceType::Disk => Some(Self::Disk(id.into())),
            ResourceType::Snapshot => Some(Self::Snapshot(id.into())),
            _ => None,
        }
    }

    fn parts(&self) -> (&'static str, &ResourceRef) {
        match self {
            Self::Disk(r) => ("disks", r),
            Self::Snapshot(r) => ("snapshots", r),
        }
    }
}

/// The file format a grant asks Azure to serve (`GrantAccessData.fileFormat`). Azure
/// stores snapshots of disks with 4096-byte logical sectors as VHDX and refuses a grant on
/// them that does not ask for it (400: "Set the fileFormat property to VHDX.").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum GrantFormat {
    /// A fixed VHD: every disk with 512-byte sectors. The request names no format.
    #[default]
    Vhd,
    /// A VHDX: disks with 4096-byte logical sectors.
    Vhdx,
}

impl GrantFormat {
    pub fn is_vhd(&self) -> bool {
        *self == Self::Vhd
    }
}

/// Typed ARM client; cheap to clone (the pipeline and counters are shared).
#[derive(Debug, Clone)]
pub struct ArmClient {
    pipeline: Pipeline,
    endpoint: Url,
    stats: Arc<RequestStats>,
    lro: LroSettings,
}

struct Reply {
    status: u16,
    headers: Headers,
    body: Vec<u8>,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn retry_after(headers: &Headers) -> Option<Duration> {
    let v = headers.get_optional_str(&RETRY_AFTER)?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl ArmClient {
    /// `endpoint`: the cloud's ARM URL; `scope`: `{audience}/.default`; `options`: from
    /// [`crate::azure::http::client_options`] (shared transport, default retry policy).
    pub fn new(
        endpoint: Url,
        credential: Arc<dyn TokenCredential>,
        scope: String,
        options: ClientOptions,
    ) -> Self {
        let stats = Arc::new(RequestStats::default());
        let per_try: Vec<Arc<dyn Policy>> = vec![
            Arc::new(BearerTokenAuthorizationPolicy::new(credential, vec![scope])),
            Arc::new(AttemptCounter(stats.clone())),
        ];
        let pipeline = Pipeline::new(
            Some(env!("CARGO_PKG_NAME")),
            Some(env!("CARGO_PKG_VERSION")),
            options,
            Vec::new(),
            per_try,
            None,
        );
        Self {
            pipeline,
            endpoint,
            stats,
            lro: LroSettings::default(),
        }
    }

    /// Overrides the long-running-operation poll settings (tests, impatient callers).
    pub fn with_lro_settings(mut self, lro: LroSettings) -> Self {
        self.lro = lro;
        self
    }

    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    pub fn stats(&self) -> Arc<RequestStats> {
        self.stats.clone()
    }

    fn url(&self, segments: &[&str], api_version: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.endpoint.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("the ARM endpoint is an https URL");
            path.pop_if_empty();
            path.extend(segments);
        }
        {
            let mut q = url.query_pairs_mut();
            q.clear();
            q.append_pair("api-version", api_version);
            for (k, v) in query {
                q.append_pair(k, v);
            }
        }
        url
    }

    fn rg_url(
        &self,
        r: &ResourceRef,
        kind: &str,
        tail: &[&str],
        api: &str,
        query: &[(&str, &str)],
    ) -> Url {
        let mut segs = vec![
            "subscriptions",
            &r.subscription,
            "resourceGroups",
            &r.resource_group,
            "providers",
            "Microsoft.Compute",
            kind,
            &r.name,
        ];
        segs.extend_from_slice(tail);
        self.url(&segs, api, query)
    }

    async fn send(
        &self,
        operation: &'static str,
        resource: &str,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<Reply, ArmError> {
        self.stats.count(operation);
        tracing::trace!(operation, %url, "ARM request");
        let mut request = Request::new(url, method);
        request.insert_header("accept", "application/json");
        match body {
            Some(b) => {
                request.insert_header("content-type", "application/json");
                request.set_body(serde_json::to_vec(&b).expect("JSON values serialize"));
            }
            None if matches!(method, Method::Post | Method::Put) => {
                request.set_body(Vec::<u8>::new())
            }
            None => {}
        }
        let ctx = Context::new();
        let options = PipelineSendOptions {
            skip_checks: true,
            ..Default::default()
        };
        let response = self
            .pipeline
            .send(&ctx, &mut request, Some(options))
            .await
            .map_err(|e| match e.kind() {
                azure_core::error::ErrorKind::Credential => ArmError::Auth {
                    operation,
                    resource: resource.to_string(),
                    message: e.to_string(),
                },
                _ => ArmError::Transport {
                    operation,
                    resource: resource.to_string(),
                    message: error_chain(&e),
                },
            })?;
        let (status, headers, body) = response.deconstruct();
        let status = u16::from(status);
        let body = body.to_vec();
        if !(200..300).contains(&status) {
            let request_id = headers.get_optional_string(&REQUEST_ID);
            return Err(ArmError::Service {
                operation,
                resource: resource.to_string(),
                error: parse_service_error(status, request_id, &body),
            });
        }
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn decode<T: DeserializeOwned>(
        operation: &'static str,
        resource: &str,
        body: &[u8],
    ) -> Result<T, ArmError> {
        serde_json::from_slice(body).map_err(|e| ArmError::Decode {
            operation,
            resource: resource.to_string(),
            message: e.to_string(),
        })
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        resource: &str,
        url: Url,
    ) -> Result<T, ArmError> {
        let reply = self
            .send(operation, resource, Method::Get, url, None)
            .await?;
        Self::decode(operation, resource, &reply.body)
    }

    async fn list<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        resource: &str,
        first: Url,
        on_page: impl FnMut(usize),
    ) -> Result<Vec<T>, ArmError> {
        pager::collect_pages(
            operation,
            first,
            |url| self.get_json::<Page<T>>(operation, resource, url),
            on_page,
        )
        .await
    }

    /// Starts an operation and waits for it (see [`lro`]).
    async fn long_running(
        &self,
        operation: &'static str,
        resource: &str,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        final_state: FinalState,
    ) -> Result<Option<Vec<u8>>, ArmError> {
        let initial = self.send(operation, resource, method, url, body).await?;
        let to_lro = |r: Reply| LroResponse {
            status: r.status,
            async_operation: r.headers.get_optional_string(&ASYNC_OPERATION),
            location: r.headers.get_optional_string(&LOCATION),
            retry_after: retry_after(&r.headers),
            body: r.body,
        };
        lro::wait(
            operation,
            resource,
            &self.endpoint,
            to_lro(initial),
            final_state,
            &self.lro,
            |url| async move {
                self.send(operation, resource, Method::Get, url, None)
                    .await
                    .map(to_lro)
            },
            tokio::time::sleep,
        )
        .await
    }

    // ---- virtual machines ----

    /// Lists VMs in a subscription or one resource group. `status_only`: the cheap
    /// status pages (id, name, instance view statuses; no storage profile, no tags).
    pub async fn list_vms(
        &self,
        subscription: &str,
        resource_group: Option<&str>,
        status_only: bool,
        on_page: impl FnMut(usize),
    ) -> Result<Vec<VirtualMachine>, ArmError> {
        let (segs, resource): (Vec<&str>, String) = match resource_group {
            Some(rg) => (
                vec![
                    "subscriptions",
                    subscription,
                    "resourceGroups",
                    rg,
                    "providers",
                    "Microsoft.Compute",
                    "virtualMachines",
                ],
                format!("resource group {rg}"),
            ),
            None => (
                vec![
                    "subscriptions",
                    subscription,
                    "providers",
                    "Microsoft.Compute",
                    "virtualMachines",
                ],
                format!("subscription {subscription}"),
            ),
        };
        let (operation, query): (&'static str, &[(&str, &str)]) = if status_only {
            ("list VM statuses", &[("statusOnly", "true")])
        } else {
            ("list VMs", &[])
        };
        let first = self.url(&segs, VM_API_VERSION, query);
        self.list(operation, &resource, first, on_page).await
    }

    /// One VM; `instance_view` adds power state and Hyper-V generation.
    pub async fn get_vm(
        &self,
        vm: &ResourceRef,
        instance_view: bool,
    ) -> Result<VirtualMachine, ArmError> {
        let query: &[(&str, &str)] = if instance_view {
            &[("$expand", "instanceView")]
        } else {
            &[]
        };
        let url = self.rg_url(vm, "virtualMachines", &[], VM_API_VERSION, query);
        self.get_json("get VM", &vm.to_string(), url).await
    }

    // ---- scale sets (Uniform orchestration: instances are not in the VM lists) ----

    /// Lists scale sets in a subscription or one resource group (both orchestration modes).
    pub async fn list_scale_sets(
        &self,
        subscription: &str,
        resource_group: Option<&str>,
    ) -> Result<Vec<ScaleSet>, ArmError> {
        let mut segs = vec!["subscriptions", subscription];
        if let Some(rg) = resource_group {
            segs.extend(["resourceGroups", rg]);
        }
        segs.extend(["providers", "Microsoft.Compute", "virtualMachineScaleSets"]);
        let resource = match resource_group {
            Some(rg) => format!("resource group {rg}"),
            None => format!("subscription {subscription}"),
        };
        let first = self.url(&segs, VM_API_VERSION, &[]);
        self.list("list scale sets", &resource, first, |_| {}).await
    }

    /// The instances of scale set `scale_set` (a Uniform one), with their instance views
    /// (`$expand=instanceView` is allowed on this list, unlike on the VM lists): power state
    /// and Hyper-V generation in one pass.
    pub async fn list_scale_set_vms(
        &self,
        scale_set: &ResourceRef,
    ) -> Result<Vec<VirtualMachine>, ArmError> {
        let first = self.rg_url(
            scale_set,
            "virtualMachineScaleSets",
            &["virtualMachines"],
            VM_API_VERSION,
            &[("$expand", "instanceView")],
        );
        self.list(
            "list scale-set VMs",
            &format!("scale set {scale_set}"),
            first,
            |_| {},
        )
        .await
    }

    /// One scale-set instance with its instance view; `id` must be a
    /// [`ResourceType::ScaleSetVm`].
    pub async fn get_scale_set_vm(&self, id: &ResourceId) -> Result<VirtualMachine, ArmError> {
        debug_assert!(id.is(&ResourceType::ScaleSetVm));
        let scale_set = ResourceRef::new(
            id.subscription(),
            id.resource_group(),
            id.parent().unwrap_or_default(),
        );
        let url = self.rg_url(
            &scale_set,
            "virtualMachineScaleSets",
            &["virtualMachines", id.name()],
            VM_API_VERSION,
            &[("$expand", "instanceView")],
        );
        self.get_json("get scale-set VM", &id.to_string(), url)
            .await
    }

    /// Power off (the VM stays allocated and billed); waits until done.
    pub async fn power_off(&self, vm: &ResourceRef) -> Result<(), ArmError> {
        let url = self.rg_url(vm, "virtualMachines", &["powerOff"], VM_API_VERSION, &[]);
        self.long_running(
            "power off VM",
            &vm.to_string(),
            Method::Post,
            url,
            None,
            FinalState::None,
        )
        .await
        .map(drop)
    }

    /// Deallocate (frees compute; disks can then be exported directly); waits until done.
    pub async fn deallocate(&self, vm: &ResourceRef) -> Result<(), ArmError> {
        let url = self.rg_url(vm, "virtualMachines", &["deallocate"], VM_API_VERSION, &[]);
        self.long_running(
            "deallocate VM",
            &vm.to_string(),
            Method::Post,
            url,
            None,
            FinalState::None,
        )
        .await
        .map(drop)
    }

    /// The Compute Resource SKUs of one location (`$filter=location eq '…'`, the only filter
    /// the API takes), all pages: VM sizes with their vCPUs and memory, mixed with the SKUs
    /// of other resource types. `location` must be a region name (letters and digits), as
    /// it is quoted into the filter.
    pub async fn list_resource_skus(
        &self,
        subscription: &str,
        location: &str,
    ) -> Result<Vec<ResourceSku>, ArmError> {
        debug_assert!(location.chars().all(|c| c.is_ascii_alphanumeric()));
        let filter = format!("location eq '{location}'");
        let url = self.url(
            &[
                "subscriptions",
                subscription,
                "providers",
                "Microsoft.Compute",
                "skus",
            ],
            SKU_API_VERSION,
            &[("$filter", filter.as_str())],
        );
        self.list(
            "list resource SKUs",
            &format!("location {location}"),
            url,
            |_| {},
        )
        .await
    }

    // ---- subscriptions and Resource Graph (discovery across subscriptions) ----

    /// Every subscription the identity can see, all pages, whatever their state.
    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>, ArmError> {
        let url = self.url(&["subscriptions"], SUBSCRIPTIONS_API_VERSION, &[]);
        self.list("list subscriptions", "tenant", url, |_| {}).await
    }

    /// One Resource Graph query page: `body` is the request (subscriptions, query,
    /// options); the answer is decoded as `T`, with the quota the answer reported.
    pub async fn resource_graph<T: DeserializeOwned>(
        &self,
        body: serde_json::Value,
    ) -> Result<(T, UserQuota), ArmError> {
        const OPERATION: &str = "query Resource Graph";
        let url = self.url(
            &["providers", "Microsoft.ResourceGraph", "resources"],
            RESOURCE_GRAPH_API_VERSION,
            &[],
        );
        let reply = self
            .send(OPERATION, "resources", Method::Post, url, Some(body))
            .await?;
        let page = Self::decode(OPERATION, "resources", &reply.body)?;
        Ok((page, UserQuota::from_headers(&reply.headers)))
    }

    // ---- disks ----

    pub async fn list_disks(
        &self,
        subscription: &str,
        resource_group: &str,
        on_page: impl FnMut(usize),
    ) -> Result<Vec<Disk>, ArmError> {
        let url = self.url(
            &[
                "subscriptions",
                subscription,
                "resourceGroups",
                resource_group,
                "providers",
                "Microsoft.Compute",
                "disks",
            ],
            DISK_API_VERSION,
            &[],
        );
        self.list(
            "list disks",
            &format!("resource group {resource_group}"),
            url,
            on_page,
        )
        .await
    }

    pub async fn get_disk(&self, disk: &ResourceRef) -> Result<Disk, ArmError> {
        let url = self.rg_url(disk, "disks", &[], DISK_API_VERSION, &[]);
        self.get_json("get disk", &disk.to_string(), url).await
    }

    // ---- snapshots ----

    /// Creates (or replaces) a full or incremental snapshot of `source_disk_id` in the
    /// disk's region; waits until it is provisioned.
    pub async fn create_snapshot(
        &self,
        snapshot: &ResourceRef,
        location: &str,
        source_disk_id: &str,
        incremental: bool,
        tags: &BTreeMap<String, String>,
    ) -> Result<Snapshot, ArmError> {
        let url = self.rg_url(snapshot, "snapshots", &[], DISK_API_VERSION, &[]);
        let body = json!({
            "location": location,
            "tags": tags,
            "properties": {
                "creationData": { "createOption": "Copy", "sourceResourceId": source_disk_id },
                "incremental": incremental,
            }
        });
        let resource = snapshot.to_string();
        let out = self
            .long_running(
                "create snapshot",
                &resource,
                Method::Put,
                url.clone(),
                Some(body),
                FinalState::OriginalUri(url),
            )
            .await?;
        match out {
            Some(body) => Self::decode("create snapshot", &resource, &body),
            None => self.get_snapshot(snapshot).await,
        }
    }

    /// Lists snapshots in a subscription or one resource group (paged). `cleanup` uses it
    /// to find what a run left, by the run's tag, when its report is gone.
    pub async fn list_snapshots(
        &self,
        subscription: &str,
        resource_group: Option<&str>,
    ) -> Result<Vec<Snapshot>, ArmError> {
        let mut segs = vec!["subscriptions", subscription];
        if let Some(rg) = resource_group {
            segs.extend(["resourceGroups", rg]);
        }
        segs.extend(["providers", "Microsoft.Compute", "snapshots"]);
        let resource = match resource_group {
            Some(rg) => format!("resource group {rg}"),
            None => format!("subscription {subscription}"),
        };
        let url = self.url(&segs, DISK_API_VERSION, &[]);
        self.list("list snapshots", &resource, url, |_| {}).await
    }

    pub async fn get_snapshot(&self, snapshot: &ResourceRef) -> Result<Snapshot, ArmError> {
        let url = self.rg_url(snapshot, "snapshots", &[], DISK_API_VERSION, &[]);
        self.get_json("get snapshot", &snapshot.to_string(), url)
            .await
    }

    /// Deletes a snapshot and waits. A snapshot that is already gone counts as deleted
    /// (cleanup may run twice).
    pub async fn delete_snapshot(&self, snapshot: &ResourceRef) -> Result<(), ArmError> {
        let url = self.rg_url(snapshot, "snapshots", &[], DISK_API_VERSION, &[]);
        match self
            .long_running(
                "delete snapshot",
                &snapshot.to_string(),
                Method::Delete,
                url,
                None,
                FinalState::None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    // ---- export access ----

    /// Grants read access for `duration_secs`, the content served as `format`, and returns
    /// the SAS URL (a secret: its Debug/Display hide the signature).
    pub async fn grant_access(
        &self,
        target: &AccessTarget,
        duration_secs: u32,
        format: GrantFormat,
    ) -> Result<SasUrl, ArmError> {
        let (kind, r) = target.parts();
        let operation = "grant access";
        let resource = r.to_string();
        let url = self.rg_url(r, kind, &["beginGetAccess"], DISK_API_VERSION, &[]);
        let body = grant_body(duration_secs, format);
        let out = self
            .long_running(
                operation,
                &resource,
                Method::Post,
                url,
                Some(body),
                FinalState::Location,
            )
            .await?
            .ok_or_else(|| ArmError::Decode {
                operation,
                resource: resource.clone(),
                message: "the finished operation returned no body".into(),
            })?;
        parse_access_sas(&out).map_err(|message| ArmError::Decode {
            operation,
            resource,
            message,
        })
    }

    /// Revokes the access granted on a disk or snapshot; waits.
    pub async fn revoke_access(&self, target: &AccessTarget) -> Result<(), ArmError> {
        let (kind, r) = target.parts();
        let url = self.rg_url(r, kind, &["endGetAccess"], DISK_API_VERSION, &[]);
        self.long_running(
            "revoke access",
            &r.to_string(),
            Method::Post,
            url,
            None,
            FinalState::None,
        )
        .await
        .map(drop)
    }
}

/// The Grant Access body: a VHD grant is the body every API version takes (no
/// `fileFormat`), a VHDX grant names its format.
fn grant_body(duration_secs: u32, format: GrantFormat) -> serde_json::Value {
    let mut body = json!({ "access": "Read", "durationInSeconds": duration_secs });
    if format == GrantFormat::Vhdx {
        body["fileFormat"] = json!(format);
    }
    body
}

/// The SAS from a finished grant: `{"accessSAS"}` (Location result) or
/// `{"properties": {"output": {"accessSAS"}}}` (status body). Errors never quote the body.
fn parse_access_sas(body: &[u8]) -> Result<SasUrl, String> {
    let direct = serde_json::from_slice::<AccessUri>(body).map(|a| a.access_sas);
    let sas = match direct {
        Ok(s) => s,
        Err(_) => {
            let v: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| format!("grant result is not JSON ({e})"))?;
            v.pointer("/properties/output/accessSAS")
                .and_then(|s| s.as_str())
                .map(str::to_string)
                .ok_or("grant result has no accessSAS")?
        }
    };
    SasUrl::parse(&sas).map_err(|e| format!("accessSAS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vhdx_grant_names_its_format_and_a_vhd_grant_is_unchanged() {
        assert_eq!(
            grant_body(600, GrantFormat::Vhd),
            json!({"access": "Read", "durationInSeconds": 600})
        );
        assert_eq!(
            grant_body(3600, GrantFormat::Vhdx),
            json!({"access": "Read", "durationInSeconds": 3600, "fileFormat": "VHDX"})
        );
    }

    #[test]
    fn untrusted_certificates_are_recognised() {
        assert!(is_untrusted_certificate(
            "error sending request: invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_untrusted_certificate("connection refused"));
    }

    #[test]
    fn quota_reset_times_read_as_hh_mm_ss() {
        assert_eq!(parse_hms("00:00:05"), Some(Duration::from_secs(5)));
        assert_eq!(parse_hms("01:02:03"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_hms("00:00:00.5"), Some(Duration::from_millis(500)));
        for bad in [
            "5",
            "00:05",
            "00:60:00",
            "00:00:61",
            "a:b:c",
            "00:00:05:00",
            "-1:00:00",
        ] {
            assert_eq!(parse_hms(bad), None, "{bad}");
        }
    }

    #[test]
    fn grant_targets_by_type_never_by_substring() {
        let id = |s: &str| s.parse::<ResourceId>().unwrap();
        let disk =
            id("/subscriptions/s1/resourceGroups/snapshots/providers/Microsoft.Compute/disks/d1");
        assert_eq!(
            AccessTarget::of(&disk),
            Some(AccessTarget::Disk(ResourceRef::new(
                "s1",
                "snapshots",
                "d1"
            )))
        );
        let snap =
            id("/subscriptions/s1/resourceGroups/disks/providers/Microsoft.Compute/snapshots/s");
        assert_eq!(
            AccessTarget::of(&snap),
            Some(AccessTarget::Snapshot(ResourceRef::new("s1", "disks", "s")))
        );
        let vm = id(
            "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/snapshots",
        );
        assert_eq!(AccessTarget::of(&vm), None);
    }

    #[test]
    fn access_sas_from_either_shape_and_never_quoted() {
        let a = parse_access_sas(
            br#"{"accessSAS":"https://md-x.blob.storage.azure.net/y/abcd?sv=1&sig=SECRETSIG"}"#,
        )
        .unwrap();
        assert!(!a.to_string().contains("SECRETSIG"));
        assert!(a.expose().as_str().contains("SECRETSIG"));
        let b = parse_access_sas(
            br#"{"status":"Succeeded","properties":{"output":{"accessSAS":"https://md-h.blob.storage.azure.net/c/p?sig=S2"}}}"#,
        )
        .unwrap();
        assert!(b.has_sas());
        let e = parse_access_sas(br#"{"accessSAS": 5, "x": "sig=S3"}"#).unwrap_err();
        assert!(!e.contains("S3"), "{e}");
    }

    #[test]
    fn urls_are_built_with_api_version_and_encoded_names() {
        let client = ArmClient::new(
            Url::parse("https://management.azure.com").unwrap(),
            Arc::new(NoCredential),
            "https://management.azure.com/.default".into(),
            ClientOptions::default(),
        );
        let u = client.rg_url(
            &ResourceRef::new("s", "my rg(1)", "vm.1"),
            "virtualMachines",
            &[],
            VM_API_VERSION,
            &[("$expand", "instanceView")],
        );
        assert_eq!(
            u.as_str(),
            "https://management.azure.com/subscriptions/s/resourceGroups/my%20rg(1)/providers/Microsoft.Compute/virtualMachines/vm.1?api-version=2024-07-01&%24expand=instanceView"
        );
    }

    #[derive(Debug)]
    struct NoCredential;

    #[async_trait::async_trait]
    impl TokenCredential for NoCredential {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "none",
            ))
        }
    }
}
