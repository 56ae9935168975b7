//! One download, end to end: plan, stage the output, resume or start over, run the engine,
//! commit — or keep the partial output and journal for a later resume, or remove them when
//! resuming would be wrong. This is what `download` runs, and what `export` calls per disk.
//!
//! Resume contract: the temporary output `.NAME.azure2kvm-partial` and its journal
//! `.NAME.azure2kvm-partial.journal` stay after a transient failure, an expired SAS or
//! Ctrl-C. A later call for the same OUTPUT continues when the blob (identity without SAS),
//! its ETag, the format and the plan match, and says so; otherwise it says why and starts
//! over. Bad input (exit 4) and a blob that changed (412) remove both: nothing in them
//! can be trusted for a resume.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;

use super::discover::{DiscoverError, DownloadPlan, MapSource, discover};
use super::engine::{self, EngineConfig, EngineError, ProgressFn, TransferStats};
use super::fetch::{FetchContext, FetchCounters, FetchError, RetryPolicy, default_jitter};
use super::journal::{self, Journal, JournalHeader};
use super::plan::{self, ChunkKey};
use crate::azure::blob::{BlobReader, ServiceVersion};
use crate::azure::sas::SasUrl;
use crate::image::sink::{ImageFormat, create_sink, resume_sink};
use crate::image::staging::{Overwrite, StagedOutput, check_output_free, temp_path_for};
use crate::interrupt::Interrupt;
use crate::units::human_bytes;

/// Whether to check each range against the service's transactional MD5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    #[default]
    None,
    Md5,
}

/// Default wait for response headers or the next piece of a body before an attempt is
/// counted as failed: long enough for a throttled service, short enough to notice a dead
/// connection well within the SAS's lifetime.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// How blob data is read, the same for a download and for a diff pass (see the module
/// notes of `plan`, `engine`, `fetch`).
#[derive(Clone)]
pub struct ReadSettings {
    /// For blob URLs without SAS (Entra ID); ignored when the URL has a SAS.
    pub credential: Option<Arc<dyn TokenCredential>>,
    /// Shared transport and options (`AzureSession::client_options`); None: the storage
    /// SDK's default transport.
    pub client_options: Option<ClientOptions>,
    /// `x-ms-version` for managed-disk export hosts (see `azure::blob`).
    pub md_service_version: ServiceVersion,
    /// None: 8 MiB, or 4 MiB with `Verify::Md5`.
    pub chunk_size: Option<u64>,
    pub verify: Verify,
    pub engine: EngineConfig,
    pub retry: RetryPolicy,
    pub io_timeout: Duration,
}

impl Default for ReadSettings {
    fn default() -> Self {
        Self {
            credential: None,
            client_options: None,
            md_service_version: ServiceVersion::default(),
            chunk_size: None,
            verify: Verify::None,
            engine: EngineConfig::default(),
            retry: RetryPolicy::default(),
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for ReadSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSettings")
            .field("chunk_size", &self.chunk_size)
            .field("verify", &self.verify)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// Everything one download needs.
#[derive(Clone)]
pub struct DownloadRequest {
    pub url: SasUrl,
    pub output: PathBuf,
    pub format: ImageFormat,
    pub overwrite: Overwrite,
    pub read: ReadSettings,
    /// What names the blob in the resume journal. None: the URL without its query. Set it
    /// when a re-granted SAS may point at another host or path for the same data (e.g.
    /// managed-disk exports: use the snapshot's resource id).
    pub resume_key: Option<String>,
}

impl std::fmt::Debug for DownloadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadRequest")
            .field("url", &self.url)
            .field("output", &self.output)
            .field("format", &self.format)
            .field("read", &self.read)
            .field("resume_key", &self.resume_key)
            .finish_non_exhaustive()
    }
}

impl DownloadRequest {
    /// A request with the default [`ReadSettings`].
    pub fn new(url: SasUrl, output: PathBuf, format: ImageFormat) -> Self {
        Self {
            url,
            output,
            format,
            overwrite: Overwrite::Refuse,
            read: ReadSettings::default(),
            resume_key: None,
        }
    }
}

/// What a completed download did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DownloadReport {
    pub output: PathBuf,
    pub format: ImageFormat,
    pub virtual_size: u64,
    pub map_source: MapSource,
    /// The guest's sector size: 512, or 4096 for a VHDX of 4 KiB logical sectors.
    pub logical_sector_size: u32,
    /// Bytes of written pages (or allocated blocks) in the blob.
    pub data_bytes: u64,
    /// Bytes the plan fetches (data plus coalesced gaps), all chunks.
    pub planned_bytes: u64,
    pub chunks: u64,
    /// Chunks a previous run had already made durable.
    pub resumed_chunks: u64,
    pub elapsed_secs: f64,
    pub stats: TransferStats,
}

/// Why a download did not complete, sorted by what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Bad arguments (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The blob is not a usable VHD (exit 4); nothing was kept.
    #[error("{0}")]
    BadImage(String),
    /// The SAS or token was refused (SAS expired or revoked, identity without a data
    /// role): fix access and call again — the partial output is kept and the call resumes.
    #[error("{message}")]
    AccessDenied {
        message: String,
        kept: Option<PathBuf>,
    },
    /// The blob changed during the download; nothing was kept.
    #[error("{0}")]
    BlobChanged(String),
    /// Ctrl-C/SIGTERM; partial output kept for a resume.
    #[error("{message}")]
    Interrupted {
        message: String,
        kept: Option<PathBuf>,
    },
    /// Anything else (network, disk); partial output kept when it is resumable.
    #[error("{message}")]
    Failed {
        message: String,
        kept: Option<PathBuf>,
    },
}

/// Downloads the VHD in `req.url` into `req.output` (see the module note): settings,
/// plan, staged output (resumed when the journal allows), transfer, commit.
pub async fn download(
    req: DownloadRequest,
    progress: ProgressFn,
    interrupt: Interrupt,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    let scrub = |s: String| req.url.scrub(&s);
    let (chunk_size, config, journal_path) = settings(&req)?;
    let ctx = fetch_context(&req, interrupt.clone())?;
    let plan = plan_download(&req, &ctx, chunk_size, config.concurrency, &journal_path).await?;
    let ctx = FetchContext {
        etag: plan.properties.etag.clone(),
        ..ctx
    };
    let header = JournalHeader::new(
        req.resume_key.clone().unwrap_or_else(|| req.url.identity()),
        plan.properties.etag.clone(),
        plan.properties.length,
        plan.virtual_size(),
        chunk_size,
        req.format.extension().to_string(),
        &plan.chunks,
    );
    let (staged, sink, journal, done) = stage(&req, &plan, &header, &journal_path)?;
    let todo: Vec<_> = plan
        .chunks
        .iter()
        .copied()
        .filter(|c| !done.contains(&c.key()))
        .collect();
    let resumed_chunks = (plan.chunks.len() - todo.len()) as u64;
    let already: u64 = plan.fetch_bytes() - todo.iter().map(|c| c.length.get()).sum::<u64>();

    let result = engine::run(
        ctx,
        todo,
        already,
        plan.fetch_bytes(),
        sink,
        Some(journal),
        config,
        progress,
        interrupt,
    )
    .await;
    let stats = match result {
        Ok(s) => s,
        Err(e) => return Err(engine_error(e, staged, &journal_path, &scrub)),
    };
    let out = staged
        .commit(req.overwrite)
        .map_err(|e| DownloadError::Failed {
            message: e.to_string(),
            kept: None,
        })?;
    journal::remove(&journal_path);
    Ok(DownloadReport {
        output: out,
        format: req.format,
        virtual_size: plan.virtual_size(),
        map_source: plan.map_source,
        logical_sector_size: plan.logical_sector_size,
        data_bytes: plan.map.data_bytes(),
        planned_bytes: plan.fetch_bytes(),
        chunks: plan.chunks.len() as u64,
        resumed_chunks,
        elapsed_secs: started.elapsed().as_secs_f64(),
        stats,
    })
}

/// The checks that need no network: chunk size, a free output, the temporary and journal
/// paths, and the engine settings the memory budget allows.
fn settings(req: &DownloadRequest) -> Result<(u64, EngineConfig, PathBuf), DownloadError> {
    let usage = |e: &dyn std::fmt::Display| DownloadError::Usage(e.to_string());
    let chunk_size = plan::choose_chunk_size(req.read.chunk_size, req.read.verify == Verify::Md5)
        .map_err(|e| usage(&e))?;
    check_output_free(&req.output, req.overwrite).map_err(|e| usage(&e))?;
    let temp = temp_path_for(&req.output).map_err(|e| usage(&e))?;
    let config = req.read.engine.effective(chunk_size);
    if config.concurrency < req.read.engine.concurrency {
        tracing::info!(
            "concurrency lowered from {} to {} to keep chunk buffers within {} at {} chunks",
            req.read.engine.concurrency,
            config.concurrency,
            human_bytes(engine::CHUNK_MEMORY_BUDGET),
            human_bytes(chunk_size)
        );
    }
    Ok((chunk_size, config, journal::path_for(&temp)))
}

/// The blob client and retry settings every request of this download goes through.
fn fetch_context(
    req: &DownloadRequest,
    interrupt: Interrupt,
) -> Result<FetchContext, DownloadError> {
    read_context(&req.url, &req.read, interrupt)
        .map_err(|e| DownloadError::Usage(req.url.scrub(&e.to_string())))
}

/// How every request to `url` is sent and retried under `read`: a download's, a
/// measurement's (see `measure`).
pub(super) fn read_context(
    url: &SasUrl,
    read: &ReadSettings,
    interrupt: Interrupt,
) -> Result<FetchContext, crate::azure::blob::BlobError> {
    let blob = BlobReader::with_md_version(
        url,
        read.credential.clone(),
        read.client_options.clone(),
        &read.md_service_version,
    )?;
    Ok(FetchContext {
        blob,
        etag: String::new(),
        verify_md5: read.verify == Verify::Md5,
        policy: read.retry,
        jitter: default_jitter(),
        io_timeout: read.io_timeout,
        counters: Arc::new(FetchCounters::default()),
        interrupt,
    })
}

/// Reads the blob's metadata into a plan. A bad image also ends any earlier partial run
/// for this output: it cannot be resumed from.
async fn plan_download(
    req: &DownloadRequest,
    ctx: &FetchContext,
    chunk_size: u64,
    concurrency: usize,
    journal_path: &Path,
) -> Result<DownloadPlan, DownloadError> {
    let plan = match discover(ctx, chunk_size, concurrency).await {
        Ok(p) => p,
        Err(e @ (DiscoverError::Image(_) | DiscoverError::Vhdx(_))) => {
            journal::remove(journal_path);
            remove_temp_if_unlocked(&req.output, req.overwrite);
            let why = match e {
                DiscoverError::Image(vhd) => vhd.to_string(),
                other => other.to_string(),
            };
            return Err(DownloadError::BadImage(format!(
                "{}: {why}",
                req.url.identity()
            )));
        }
        Err(DiscoverError::Fetch(e)) => {
            return Err(fetch_error(e, None, &|s: String| req.url.scrub(&s)));
        }
    };
    tracing::info!(
        "{}: {}, virtual size {}, {} to fetch in {} chunks of up to {} ({} written, from {:?})",
        req.url.identity(),
        plan.description,
        human_bytes(plan.virtual_size()),
        human_bytes(plan.fetch_bytes()),
        plan.chunks.len(),
        human_bytes(chunk_size),
        human_bytes(plan.map.data_bytes()),
        plan.map_source,
    );
    Ok(plan)
}

type Staged = (
    StagedOutput,
    Box<dyn crate::image::sink::ImageSink>,
    Journal,
    std::collections::HashSet<ChunkKey>,
);

/// Opens the temporary output: resumed when the journal matches, fresh otherwise.
fn stage(
    req: &DownloadRequest,
    plan: &DownloadPlan,
    header: &JournalHeader,
    journal_path: &Path,
) -> Result<Staged, DownloadError> {
    let failed = |e: &dyn std::fmt::Display| DownloadError::Failed {
        message: e.to_string(),
        kept: None,
    };
    let staging_err = |e: crate::image::staging::StagingError| {
        if e.is_usage() {
            DownloadError::Usage(e.to_string())
        } else {
            failed(&e)
        }
    };
    let loaded = journal::Journal::load(journal_path).map_err(|e| failed(&e))?;
    if let Some(old) = loaded {
        match resume_blocker(&old.header, header) {
            None => {
                let (staged, had) = StagedOutput::open_for_resume(&req.output, req.overwrite)
                    .map_err(staging_err)?;
                if had {
                    let file = staged.file().map_err(staging_err)?;
                    match resume_sink(req.format, file, plan.virtual_size()) {
                        Ok(sink) => {
                            let done = old.done;
                            let bytes: u64 = plan
                                .chunks
                                .iter()
                                .filter(|c| done.contains(&c.key()))
                                .map(|c| c.length.get())
                                .sum();
                            let n = plan
                                .chunks
                                .iter()
                                .filter(|c| done.contains(&c.key()))
                                .count();
                            tracing::info!(
                                "resuming {} from {}: ETag unchanged, {n} of {} chunks ({}) already done",
                                req.output.display(),
                                staged.temp_path().display(),
                                plan.chunks.len(),
                                human_bytes(bytes)
                            );
                            let journal =
                                Journal::append_to(journal_path).map_err(|e| failed(&e))?;
                            return Ok((staged, sink, journal, done));
                        }
                        Err(e) => tracing::info!(
                            "starting over: the partial output {} cannot be resumed ({e})",
                            staged.temp_path().display()
                        ),
                    }
                } else {
                    tracing::info!("starting over: the partial output is missing or empty");
                }
                drop(staged); // removes the temp file; created afresh below
            }
            Some(why) => tracing::info!(
                "starting over: a previous partial download of {} cannot be resumed ({why})",
                req.output.display()
            ),
        }
    }
    let staged = StagedOutput::create(&req.output, req.overwrite).map_err(staging_err)?;
    let file = staged.file().map_err(staging_err)?;
    let sink = create_sink(req.format, file, plan.virtual_size()).map_err(|e| {
        if e.is_bad_image() {
            DownloadError::BadImage(e.to_string())
        } else {
            failed(&e)
        }
    })?;
    let journal = Journal::create(journal_path, header).map_err(|e| failed(&e))?;
    Ok((staged, sink, journal, Default::default()))
}

/// Why an earlier partial download cannot be continued, if it cannot. Without an ETag (a
/// managed-disk export host may send none) nothing shows that the disk was not written
/// between the two runs — a disk can be attached and detached again between grants — so
/// only a fresh start is safe.
fn resume_blocker(old: &JournalHeader, current: &JournalHeader) -> Option<String> {
    if current.etag.is_empty() {
        return Some("the blob has no ETag to show it is the same version".into());
    }
    old.mismatch(current)
}

/// Best effort: remove a temp output no other process is writing (bad input found).
fn remove_temp_if_unlocked(output: &Path, overwrite: Overwrite) {
    if let Ok((staged, _)) = StagedOutput::open_for_resume(output, overwrite) {
        drop(staged);
    }
}

fn fetch_error(
    e: FetchError,
    kept: Option<PathBuf>,
    scrub: &dyn Fn(String) -> String,
) -> DownloadError {
    let message = scrub(e.to_string());
    match e {
        FetchError::AccessDenied { .. } => DownloadError::AccessDenied { message, kept },
        FetchError::Interrupted { .. } => DownloadError::Interrupted { message, kept },
        FetchError::BlobChanged { .. } => DownloadError::BlobChanged(message),
        _ => DownloadError::Failed { message, kept },
    }
}

/// Decides what to keep after a failed run and says where it is.
fn engine_error(
    e: EngineError,
    staged: StagedOutput,
    journal_path: &Path,
    scrub: &dyn Fn(String) -> String,
) -> DownloadError {
    if let EngineError::Fetch(FetchError::BlobChanged { .. }) = &e {
        journal::remove(journal_path);
        drop(staged);
        return fetch_error(
            match e {
                EngineError::Fetch(f) => f,
                _ => unreachable!(),
            },
            None,
            scrub,
        );
    }
    let temp = staged.keep();
    let where_ = format!(
        "partial output kept at {} with journal {}; run the same command again to resume",
        temp.display(),
        journal_path.display()
    );
    tracing::info!("{where_}");
    match e {
        EngineError::Interrupted | EngineError::Fetch(FetchError::Interrupted { .. }) => {
            DownloadError::Interrupted {
                message: format!("interrupted; {where_}"),
                kept: Some(temp),
            }
        }
        EngineError::Fetch(f) => {
            let mut d = fetch_error(f, Some(temp), scrub);
            if let DownloadError::AccessDenied { message, .. }
            | DownloadError::Failed { message, .. } = &mut d
            {
                message.push_str(&format!(" ({where_})"));
            }
            d
        }
        other => DownloadError::Failed {
            message: format!("{}; {where_}", scrub(other.to_string())),
            kept: Some(temp),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(etag: &str) -> JournalHeader {
        JournalHeader::new(
            "disk-id".into(),
            etag.into(),
            1024,
            512,
            512,
            "raw".into(),
            &[],
        )
    }

    #[test]
    fn no_etag_never_resumes() {
        assert_eq!(resume_blocker(&header("\"0x1\""), &header("\"0x1\"")), None);
        assert!(resume_blocker(&header("\"0x1\""), &header("\"0x2\"")).is_some());
        let why = resume_blocker(&header(""), &header("")).unwrap();
        assert!(why.contains("no ETag"), "{why}");
    }
}
