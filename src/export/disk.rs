//! One disk, from read access to a finished image: grant → download → revoke, and when
//! the grant expires mid-download (403), revoke, grant again and call the download again,
//! which resumes from its journal (the journal is keyed by the resource id, not the SAS).
//! Every grant is in the ledger before it is requested and marked removed once revoked, so
//! a crash at any point leaves a report that names it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;

use super::budget::RunLimits;
use super::disk_kind::{self, Refusal};
use super::ledger::{Ledger, ResourceKind, ResourceState};
use super::plan::{DiskKey, PlannedDisk, Source};
use crate::azure::arm::client::{AccessTarget, GrantFormat, ResourceRef};
use crate::azure::arm::{ArmClient, ResourceId};
use crate::azure::cloud::Cloud;
use crate::azure::inventory::DiskStorage;
use crate::azure::sas::SasUrl;
use crate::image::sink::ImageFormat;
use crate::image::staging::Overwrite;
use crate::interrupt::Interrupt;
use crate::transfer::engine::{EngineConfig, ProgressEvent, ProgressFn};
use crate::transfer::job::{
    DownloadError, DownloadReport, DownloadRequest, ReadSettings, download,
};

/// Grants per disk: the first, and renewals after an expiry. A grant that expires this
/// often means --sas-duration is far too short for the link; stop instead of looping.
pub const MAX_GRANTS: u32 = 20;

/// Refusals long before a grant could have expired, after which a disk is given up.
pub const MAX_EARLY_REFUSALS: u32 = 2;

/// What every disk of a run shares.
#[derive(Clone)]
pub struct DiskContext {
    pub arm: ArmClient,
    /// For unmanaged disks: the session credential (storage scope asked by the client).
    pub credential: Arc<dyn TokenCredential>,
    /// The session's transport and options (`--ca-bundle` roots) for blob reads too.
    pub client_options: azure_core::http::ClientOptions,
    /// The cloud: an unmanaged disk's storage token goes only to hosts under its storage
    /// suffix.
    pub cloud: Cloud,
    pub ledger: Arc<Ledger>,
    pub output_dir: PathBuf,
    pub format: ImageFormat,
    pub sas_duration: u32,
    /// `--private-network`: AllowPrivate disks are reachable from this host.
    pub private_network: bool,
    /// Background copies (Premium SSD v2 / Ultra snapshots) the run lets run at once.
    pub background_copies: usize,
    /// `x-ms-version` for managed-disk export hosts (`--md-service-version`).
    pub md_service_version: crate::azure::blob::ServiceVersion,
    /// The run's `--concurrency` and `--memory`, shared out by `run::run`.
    pub limits: RunLimits,
    /// Connections of one disk (its share, set by `run::run`).
    pub connections: usize,
    /// Chunks waiting for the writer, per disk (its share of the run's memory).
    pub queue_depth: usize,
    /// Bytes per ranged GET (None: the transfer's default), from the run's budget.
    pub chunk_size: Option<u64>,
    /// The run's data slots: a disk holds one while it downloads, and only then, so its
    /// grant (and renewals) and its revoke happen outside them and the wire stays busy
    /// while Azure's control plane answers. Its size bounds the downloads, and with them
    /// the chunk memory, of the whole run.
    pub data_slots: Arc<tokio::sync::Semaphore>,
    pub io_timeout: Duration,
    pub interrupt: Interrupt,
    pub events: EventFn,
}

/// What an export reports while it runs: numbers, typed; the caller decides how they
/// look (a bar, log lines, nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportEvent {
    /// The run starts with this many disks (its ledger exists).
    RunStarted { disks: usize },
    /// A disk's download advanced: `done` of the `total` bytes it fetches. A disk's total
    /// is known once its page ranges are, so early events cover only the disks started.
    DiskAdvanced {
        disk: DiskKey,
        done: u64,
        total: u64,
    },
    /// Every download has ended; the sweep and the manifests follow.
    DownloadsEnded,
}

/// Where a run sends its [`ExportEvent`]s.
pub type EventFn = Arc<dyn Fn(ExportEvent) + Send + Sync>;

/// The transfer engine's progress callback for one disk, as export events.
pub fn progress_of(events: &EventFn, disk: &DiskKey) -> ProgressFn {
    let events = Arc::clone(events);
    let disk = disk.clone();
    Arc::new(move |event| match event {
        ProgressEvent::Advanced { done, total } => events(ExportEvent::DiskAdvanced {
            disk: disk.clone(),
            done,
            total,
        }),
    })
}

impl std::fmt::Debug for DiskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskContext")
            .field("output_dir", &self.output_dir)
            .field("format", &self.format)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// Why a disk was not exported; the message names the VM, the disk and the cause.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("VM {vm}, disk {disk}: {message}")]
    Failed {
        vm: String,
        disk: String,
        message: String,
    },
    #[error("VM {vm}, disk {disk}: interrupted")]
    Interrupted { vm: String, disk: String },
    #[error("VM {vm}, disk {disk}: refused: {why}")]
    Refused {
        vm: String,
        disk: String,
        why: Refusal,
    },
}

/// Exports one disk whose source is ready (its snapshot exists, or its VM is
/// deallocated). Never leaves a grant it made unrevoked unless the revoke itself fails
/// (then the ledger says so and the run's final sweep tries again).
pub async fn export_disk(
    ctx: &DiskContext,
    vm: &str,
    disk: &PlannedDisk,
) -> Result<DownloadReport, DiskError> {
    let fail = |message: String| failed(vm, disk, message);
    if disk.source == Source::Unavailable {
        // Refused by the plan before any run gets here; never a grant on nothing.
        return Err(fail("nothing in Azure to read (ephemeral OS disk)".into()));
    }
    let output = ctx.output_dir.join(&disk.image);
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    }
    let resource_id = match &disk.source {
        Source::Snapshot { snapshot, .. } => snapshot,
        Source::Disk { disk_id } => disk_id,
        Source::Blob { uri } => return export_blob(ctx, vm, disk, uri, output).await,
        Source::Unavailable => unreachable!("handled above"),
    };
    let (target, format) = what_to_grant(ctx, vm, disk, resource_id).await?;
    let mut grants = Grants {
        from_snapshot: matches!(target, AccessTarget::Snapshot(_)),
        last_kept: None,
        early_refusals: 0,
    };
    for grant in 1..=MAX_GRANTS {
        let sas = grant_read_access(ctx, &target, resource_id, format)
            .await
            .map_err(|e| match e {
                None => interrupted(vm, disk),
                Some(message) => fail(message),
            })?;
        let granted_at = std::time::Instant::now();
        log_grant(ctx, vm, disk, &target, format, grant);
        let mut req = request(ctx, sas, &output, resource_id.folded());
        if disk.entra_id_reads {
            req.read.credential = Some(ctx.credential.clone());
        }
        // Granted ahead: wait for a data slot with the grant in hand, and give the slot
        // back before the revoke, so the next disk's bytes start at once.
        let Some(slot) = data_slot(ctx).await else {
            revoke(ctx, &target, resource_id).await;
            grants.discard();
            return Err(interrupted(vm, disk));
        };
        let result = download(
            req,
            progress_of(&ctx.events, &disk.key),
            ctx.interrupt.clone(),
        )
        .await;
        drop(slot);
        revoke(ctx, &target, resource_id).await;
        // Granted, but the URL refuses this host: a policy set since the plan was made, or
        // a private endpoint out of reach. The grant is revoked above; say why instead of
        // asking again.
        if let Err(DownloadError::AccessDenied { kept, .. }) = &result
            && let Some(refused) = refused_now(ctx, vm, disk).await
        {
            grants.last_kept = kept.clone();
            grants.discard();
            return Err(refused);
        }
        let result = match result {
            // A new grant does not give the identity a role: stop, naming it.
            Err(DownloadError::AccessDenied { message, kept }) if disk.entra_id_reads => {
                grants.last_kept = kept;
                grants.discard();
                return Err(failed(vm, disk, entra_refusal(resource_id, &message)));
            }
            other => other,
        };
        if let Some(end) = grants.settle(ctx, vm, disk, result, granted_at) {
            return end;
        }
    }
    grants.discard();
    Err(fail(format!(
        "read access expired {MAX_GRANTS} times; raise --sas-duration"
    )))
}

fn log_grant(
    ctx: &DiskContext,
    vm: &str,
    disk: &PlannedDisk,
    target: &AccessTarget,
    format: GrantFormat,
    grant: u32,
) {
    let format = match format {
        GrantFormat::Vhd => "VHD",
        GrantFormat::Vhdx => "VHDX",
    };
    tracing::info!(
        "{vm}: {} read access granted on {} for {} s as {format} (grant {grant})",
        disk.name,
        target_name(target),
        ctx.sas_duration,
    );
}

/// One of the run's data slots; None when interrupted while waiting for it.
async fn data_slot(ctx: &DiskContext) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slots = Arc::clone(&ctx.data_slots);
    ctx.interrupt
        .unless_cancelled(slots.acquire_owned())
        .await?
        .ok()
}

/// What a grant is asked on, and in which format. The disk as Azure has it now decides
/// both whether it may be read and, by its sector size, the format its grants ask for (the
/// plan's when it cannot be read).
pub(super) async fn what_to_grant(
    ctx: &DiskContext,
    vm: &str,
    disk: &PlannedDisk,
    resource_id: &ResourceId,
) -> Result<(AccessTarget, GrantFormat), DiskError> {
    let target = AccessTarget::of(resource_id).ok_or_else(|| {
        failed(
            vm,
            disk,
            format!(
                "{resource_id} is a {}: read access is granted on disks and snapshots only",
                resource_id.resource_type()
            ),
        )
    })?;
    let storage = current_storage(ctx, &disk.source).await;
    if let Some(refused) = storage
        .as_ref()
        .and_then(|s| refused_by(ctx, vm, disk, s, false))
    {
        return Err(refused);
    }
    let format = storage
        .as_ref()
        .map_or(disk.grant_format, disk_kind::grant_format);
    Ok((target, format))
}

fn failed(vm: &str, disk: &PlannedDisk, message: String) -> DiskError {
    DiskError::Failed {
        vm: vm.to_string(),
        disk: disk.name.clone(),
        message,
    }
}

fn interrupted(vm: &str, disk: &PlannedDisk) -> DiskError {
    DiskError::Interrupted {
        vm: vm.to_string(),
        disk: disk.name.clone(),
    }
}

/// The grants of one disk so far: what a failed download kept, and how many grants were
/// refused early.
struct Grants {
    /// A snapshot is deleted when its disk ends, so nothing kept from it can resume.
    from_snapshot: bool,
    last_kept: Option<PathBuf>,
    early_refusals: u32,
}

impl Grants {
    /// What one grant's download means for the disk: `Some` ends it, `None` asks for
    /// another grant (the download resumes from its journal).
    fn settle(
        &mut self,
        ctx: &DiskContext,
        vm: &str,
        disk: &PlannedDisk,
        result: Result<DownloadReport, DownloadError>,
        granted_at: std::time::Instant,
    ) -> Option<Result<DownloadReport, DiskError>> {
        let e = match result {
            Ok(report) => return Some(Ok(report)),
            Err(e) => e,
        };
        match e {
            DownloadError::AccessDenied { message, kept } => {
                self.last_kept = kept;
                // An expiry comes after about --sas-duration; a refusal well before that
                // is something a new grant will not fix (storage firewall, network rules,
                // a concurrent revoke). One more try, then give up with that reason.
                if granted_at.elapsed() < Duration::from_secs(u64::from(ctx.sas_duration)) / 2 {
                    self.early_refusals += 1;
                    if self.early_refusals >= MAX_EARLY_REFUSALS {
                        self.discard();
                        return Some(Err(failed(
                            vm,
                            disk,
                            format!(
                                "read access was refused right after it was granted, {} times ({message}); is storage access restricted by a firewall or network rules?",
                                self.early_refusals
                            ),
                        )));
                    }
                }
                tracing::warn!(
                    "{vm}: {}: read access ended mid-download ({message}); granting again and resuming",
                    disk.name
                );
                None
            }
            DownloadError::Interrupted { kept, .. } => {
                self.last_kept = kept;
                self.discard();
                Some(Err(interrupted(vm, disk)))
            }
            e => {
                let kept = match &e {
                    DownloadError::Failed { kept, .. } => kept.clone(),
                    _ => None,
                };
                if self.from_snapshot && kept.is_some() {
                    discard_partial(kept.as_deref());
                    return Some(Err(failed(
                        vm,
                        disk,
                        format!(
                            "{e} [discarded: its snapshot is deleted now, so it could not resume]"
                        ),
                    )));
                }
                Some(Err(failed(vm, disk, e.to_string())))
            }
        }
    }

    /// Removes what the last download kept, when it came from a snapshot.
    fn discard(&self) {
        if self.from_snapshot {
            discard_partial(self.last_kept.as_deref());
        }
    }
}

/// The error for a disk whose export needs Entra ID (`dataAccessAuthMode:
/// AzureActiveDirectory`) when the export host refuses the token: the role to grant, and
/// on what.
pub fn entra_refusal(resource_id: &ResourceId, message: &str) -> String {
    format!(
        "the export host refused the Entra ID token ({message}): this disk requires Entra ID for export (dataAccessAuthMode AzureActiveDirectory), and the identity needs the Data Operator for Managed Disks role on {resource_id} (or its resource group)"
    )
}

/// The refusal of `disk` by its network policy as Azure has it now, once a granted URL
/// refused this host.
async fn refused_now(ctx: &DiskContext, vm: &str, disk: &PlannedDisk) -> Option<DiskError> {
    let storage = current_storage(ctx, &disk.source).await?;
    refused_by(ctx, vm, disk, &storage, true)
}

/// The refusal of `disk` by its network policy as `storage` (read just now) gives it,
/// before a grant or, `after_denied_read`, once a granted URL refused this host.
fn refused_by(
    ctx: &DiskContext,
    vm: &str,
    disk: &PlannedDisk,
    storage: &DiskStorage,
    after_denied_read: bool,
) -> Option<DiskError> {
    let why = if after_denied_read {
        disk_kind::refusal_after_denied_read(storage, ctx.private_network)
    } else {
        disk_kind::refusal(storage, ctx.private_network)
    }?;
    Some(DiskError::Refused {
        vm: vm.to_string(),
        disk: disk.name.clone(),
        why,
    })
}

/// The kind of the managed disk behind `source` as Azure has it now: a plan may be older
/// than a network policy change, and a disk's policy is the owner's word on whether its
/// data leaves. None for a blob, or a disk that cannot be read (the grant will say what
/// is wrong).
async fn current_storage(ctx: &DiskContext, source: &Source) -> Option<DiskStorage> {
    let disk_id = match source {
        Source::Snapshot { disk_id, .. } | Source::Disk { disk_id } => disk_id,
        Source::Blob { .. } | Source::Unavailable => return None,
    };
    let read = ctx
        .interrupt
        .unless_cancelled(ctx.arm.get_disk(&ResourceRef::from(disk_id)))
        .await?;
    match read {
        Ok(d) => Some(DiskStorage::of(&d)),
        Err(e) => {
            tracing::warn!("reading disk {disk_id} before its grant: {e}");
            None
        }
    }
}

/// Records the grant in the ledger, then asks for it. `Err(None)`: interrupted before or
/// while waiting for it — the grant stays "creating" in the ledger, so the run's final
/// sweep revokes it whether or not Azure finished it. `Err(Some(why))`: it failed (it may
/// exist even so after a lost reply: the sweep handles that the same way).
pub async fn grant_read_access(
    ctx: &DiskContext,
    target: &AccessTarget,
    resource_id: &ResourceId,
    format: GrantFormat,
) -> Result<SasUrl, Option<String>> {
    if ctx.interrupt.is_set() {
        return Err(None);
    }
    ctx.ledger
        .creating(ResourceKind::AccessGrant, resource_id, None)
        .map_err(|e| Some(e.to_string()))?;
    let sas = ctx
        .interrupt
        .unless_cancelled(ctx.arm.grant_access(target, ctx.sas_duration, format))
        .await
        .ok_or(None)?
        .map_err(|e| Some(format!("grant read access: {e}")))?;
    let _ = ctx.ledger.set_state(
        ResourceKind::AccessGrant,
        resource_id,
        ResourceState::Exists,
        None,
    );
    Ok(sas)
}

/// Removes a kept partial image and its journal. Only for snapshot sources: the snapshot
/// is deleted when the disk ends, so a later run reads a new one and could never resume
/// from these (a direct disk export keeps them: the same disk can resume).
fn discard_partial(temp: Option<&std::path::Path>) {
    if let Some(temp) = temp {
        crate::transfer::journal::remove(&crate::transfer::journal::path_for(temp));
        let _ = std::fs::remove_file(temp);
    }
}

fn target_name(t: &AccessTarget) -> String {
    match t {
        AccessTarget::Disk(r) => format!("disk {r}"),
        AccessTarget::Snapshot(r) => format!("snapshot {r}"),
    }
}

/// Revokes a grant; a failure is recorded for the final sweep and `cleanup`.
pub async fn revoke(ctx: &DiskContext, target: &AccessTarget, resource_id: &ResourceId) {
    match ctx.arm.revoke_access(target).await {
        Ok(()) => {
            let _ = ctx.ledger.set_state(
                ResourceKind::AccessGrant,
                resource_id,
                ResourceState::Removed,
                None,
            );
        }
        Err(e) if e.status() == Some(404) => {
            let _ = ctx.ledger.set_state(
                ResourceKind::AccessGrant,
                resource_id,
                ResourceState::Removed,
                None,
            );
        }
        Err(e) => {
            tracing::warn!("revoking access on {}: {e}", target_name(target));
            let _ = ctx.ledger.set_state(
                ResourceKind::AccessGrant,
                resource_id,
                ResourceState::RemoveFailed,
                Some(e.to_string()),
            );
        }
    }
}

impl DiskContext {
    /// How this disk's blob data is read: the run's transport and service version, the
    /// disk's share of connections and chunk memory (a download's and a diff pass's).
    pub fn read_settings(&self) -> ReadSettings {
        ReadSettings {
            client_options: Some(self.client_options.clone()),
            md_service_version: self.md_service_version,
            chunk_size: self.chunk_size,
            engine: EngineConfig {
                concurrency: self.connections,
                queue_depth: self.queue_depth,
                ..EngineConfig::default()
            },
            io_timeout: self.io_timeout,
            ..ReadSettings::default()
        }
    }
}

fn request(
    ctx: &DiskContext,
    url: SasUrl,
    output: &std::path::Path,
    resume_key: &str,
) -> DownloadRequest {
    let mut req = DownloadRequest::new(url, output.to_path_buf(), ctx.format);
    req.read = ctx.read_settings();
    req.overwrite = Overwrite::Refuse;
    req.resume_key = Some(resume_key.to_ascii_lowercase());
    req
}

/// The URL an unmanaged disk's blob is read at with the session's Entra ID token, or why
/// no token may be sent to it.
pub(super) fn unmanaged_blob_url(ctx: &DiskContext, uri: &str) -> Result<SasUrl, String> {
    let url = SasUrl::parse(uri).map_err(|e| e.to_string())?;
    if url.expose().scheme() != "https" {
        return Err("no SAS: signing in with Entra ID needs an https URL".to_string());
    }
    // The URI comes from the VM model (or a plan file): a token is a credential for every
    // storage account the identity can read, so it goes to the cloud's blob hosts only.
    let host = url.expose().host_str().unwrap_or_default();
    if !ctx.cloud.storage_host_allowed(host) {
        return Err(match &ctx.cloud.storage_suffix {
            Some(suffix) => format!(
                "host {host} is not under the cloud's storage suffix {suffix}; no storage token is sent to it"
            ),
            None => format!(
                "host {host}: this custom cloud has no storage suffix, so no storage token is sent anywhere (give --storage-suffix)"
            ),
        });
    }
    Ok(url)
}

/// An unmanaged disk: its page blob read with the session's Entra ID credential (the
/// identity needs Storage Blob Data Reader on the account). No grant, nothing to clean.
async fn export_blob(
    ctx: &DiskContext,
    vm: &str,
    disk: &PlannedDisk,
    uri: &str,
    output: PathBuf,
) -> Result<DownloadReport, DiskError> {
    let fail = |message: String| DiskError::Failed {
        vm: vm.to_string(),
        disk: disk.name.clone(),
        message: format!("unmanaged disk {uri}: {message}"),
    };
    let url = unmanaged_blob_url(ctx, uri).map_err(fail)?;
    let mut req = request(ctx, url, &output, uri);
    req.read.credential = Some(ctx.credential.clone());
    let Some(_slot) = data_slot(ctx).await else {
        return Err(DiskError::Interrupted {
            vm: vm.into(),
            disk: disk.name.clone(),
        });
    };
    match download(
        req,
        progress_of(&ctx.events, &disk.key),
        ctx.interrupt.clone(),
    )
    .await
    {
        Ok(r) => Ok(r),
        Err(DownloadError::Interrupted { .. }) => Err(DiskError::Interrupted {
            vm: vm.into(),
            disk: disk.name.clone(),
        }),
        Err(DownloadError::AccessDenied { message, .. }) => Err(fail(format!(
            "{message} (the identity needs the Storage Blob Data Reader role on the storage account)"
        ))),
        Err(e) => Err(fail(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_progress_becomes_events_naming_the_disk() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let events: EventFn = {
            let seen = Arc::clone(&seen);
            Arc::new(move |e| seen.lock().unwrap().push(e))
        };
        let key = DiskKey {
            vm: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
                .parse()
                .unwrap(),
            lun: Some(3),
        };
        progress_of(&events, &key)(ProgressEvent::Advanced { done: 5, total: 10 });
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [ExportEvent::DiskAdvanced {
                disk: key,
                done: 5,
                total: 10
            }]
        );
    }
}
