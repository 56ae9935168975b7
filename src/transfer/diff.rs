//! A diff pass (warm migration): the pages that changed between two incremental snapshots
//! of one managed disk, written into the image an earlier pass left, in place.
//!
//! Steps: read the new snapshot's properties and footer (a fixed VHD is required: a VHDX
//! grant, served for 4 KiB-sector disks, has diffs in VHDX file offsets and is refused with
//! [`DiffError::NotApplicable`], so the caller falls back to a full pass); ask Get Page
//! Ranges with the previous snapshot's SAS in windows of [`DIFF_WINDOW`] (bounded parallel,
//! retried like every blob call); plan ([`super::diff_plan`]); make the journal durable
//! *before* the image is touched; open the image for update; zero the cleared ranges; fetch
//! the changed ranges with the engine (bounded parallel ranged GETs, retries, optional
//! MD5, checkpoints); finish the image (qcow2: refcounts rebuilt) and remove the journal.
//!
//! Resume: the journal's header names the pass — previous snapshot, new snapshot and the
//! image (path, device and inode) — plus the usual plan digest. A run that finds a journal
//! for the same pass goes on where it stopped (cleared ranges are zeroed again: idempotent
//! and cheap); a journal for another pass or image is refused ([`DiffError::OtherPass`])
//! and left alone, because the image is half-way through that pass. [`pending_pass`] tells
//! the caller which pass that is, so it can re-grant those snapshots and finish it.
//! Ctrl-C: the engine's cancellation; the journal and the image stay for the next run.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};

use super::diff_plan::{DiffPlan, plan_diff};
use super::engine::{self, EngineConfig, EngineError, ProgressFn};
use super::fetch::{FetchContext, FetchCounters, FetchError, default_jitter};
use super::job::{ReadSettings, Verify};
use super::journal::{self, Journal, JournalHeader};
use super::plan::{self, Chunk};
use crate::azure::blob::{BlobReader, PageChange};
use crate::azure::sas::SasUrl;
use crate::image::offset::{ByteLen, GuestOffset, SourceOffset};
use crate::image::sink::ImageFormat;
use crate::image::update::{ImageUpdate, UpdateStart, open_for_update};
use crate::image::vhd::{DiskType, FOOTER_SIZE, VhdError};
use crate::interrupt::Interrupt;

/// Width of one Get Page Ranges diff request. Azure's guidance for heavily written disks
/// is windows of ~10% of a large blob (50 GB of 500 GB); a diff between two passes is far
/// sparser than a full listing, so 4 GiB windows keep a 1 TiB disk at 256 requests while
/// no single answer covers enough of the disk to time out. A multiple of every chunk size.
pub const DIFF_WINDOW: u64 = 4 << 30;

/// The two snapshots of a diff. Keys name them in the journal (use their resource ids: a
/// re-granted SAS points elsewhere for the same snapshot).
#[derive(Clone)]
pub struct DiffSource {
    /// SAS of the new snapshot: the data is read from here.
    pub snapshot: SasUrl,
    /// SAS of the kept (older) snapshot: sent as `x-ms-previous-snapshot-url` only.
    pub previous: SasUrl,
    pub snapshot_key: String,
    pub previous_key: String,
}

impl std::fmt::Debug for DiffSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffSource")
            .field("snapshot", &self.snapshot)
            .field("previous", &self.previous)
            .field("snapshot_key", &self.snapshot_key)
            .field("previous_key", &self.previous_key)
            .finish()
    }
}

/// Everything one diff pass needs; [`DiffRequest::new`] fills in the defaults.
#[derive(Clone)]
pub struct DiffRequest {
    pub source: DiffSource,
    /// The finished image of the earlier pass, updated in place.
    pub image: PathBuf,
    pub format: ImageFormat,
    pub read: ReadSettings,
    /// None: [`journal_path_for`] the image.
    pub journal: Option<PathBuf>,
}

impl std::fmt::Debug for DiffRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffRequest")
            .field("source", &self.source)
            .field("image", &self.image)
            .field("format", &self.format)
            .field("read", &self.read)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

impl DiffRequest {
    pub fn new(source: DiffSource, image: PathBuf, format: ImageFormat) -> Self {
        Self {
            source,
            image,
            format,
            read: ReadSettings::default(),
            journal: None,
        }
    }
}

/// What a completed pass did, as numbers (the caller formats them).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DiffOutcome {
    pub image: PathBuf,
    pub virtual_size: u64,
    /// Bytes received from the new snapshot this run (data of ranged GETs and the footer).
    pub bytes_fetched: u64,
    /// Bytes in the diff's changed ranges (`PageRange`).
    pub bytes_changed: u64,
    /// Bytes in the diff's cleared ranges (`ClearRange`).
    pub bytes_cleared: u64,
    pub chunks: u64,
    /// Chunks an interrupted run of the same pass had already made durable.
    pub resumed_chunks: u64,
    pub requests: u64,
    pub retries: u64,
    pub elapsed_secs: f64,
}

/// Why a pass did not complete, sorted by what the caller should do next.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Bad settings (exit 2).
    #[error("{0}")]
    Usage(String),
    /// This diff cannot be applied (a VHDX grant, a disk whose size changed, an inconsistent
    /// answer): do a full pass instead. Nothing was written.
    #[error("cannot apply a page diff: {why}; a full pass is needed")]
    NotApplicable { why: String },
    /// The image is not one of ours in this format and size, or a half-updated one without
    /// its journal: do a full pass. Nothing was written.
    #[error("cannot update {image} in place: {why}; a full pass is needed")]
    ImageRefused { image: PathBuf, why: String },
    /// A journal of another, unfinished pass (or another image) is there; the image is
    /// half-way through it. Finish that pass ([`pending_pass`]) or do a full pass.
    #[error("{journal}: {why}")]
    OtherPass { journal: PathBuf, why: String },
    /// The SAS or token was refused; the journal stays, run the same pass again.
    #[error("{0}")]
    AccessDenied(String),
    /// Ctrl-C/SIGTERM; the journal stays (exit 130).
    #[error("{0}")]
    Interrupted(String),
    /// Anything else (network, disk); the journal stays when the image was touched.
    #[error("{0}")]
    Failed(String),
}

/// Which pass an unfinished journal belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPass {
    pub previous_key: String,
    pub snapshot_key: String,
}

/// The diff journal's name for an image: `.NAME.azure2kvm-diff.journal` beside it.
pub fn journal_path_for(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    image.with_file_name(format!(".{name}.azure2kvm-diff.journal"))
}

/// The pass an unfinished journal at `journal` was written for, if there is one.
pub fn pending_pass(journal: &Path) -> Result<Option<PendingPass>, DiffError> {
    let loaded = Journal::load(journal).map_err(|e| DiffError::Failed(e.to_string()))?;
    Ok(loaded.and_then(|l| parse_pass(&l.header.blob)))
}

/// Runs one diff pass of `req` (see the module note).
pub async fn apply_diff(
    req: DiffRequest,
    progress: ProgressFn,
    interrupt: Interrupt,
) -> Result<DiffOutcome, DiffError> {
    let started = Instant::now();
    let (chunk_size, config, journal_path) = settings(&req)?;
    let pass = pass_identity(&req)?;
    let old = load_journal(&journal_path, &pass)?;
    let ctx = fetch_context(&req, interrupt.clone())?;
    let (etag, blob_length, virtual_size) = check_snapshot(&ctx).await?;
    let ctx = FetchContext {
        etag: etag.clone(),
        ..ctx
    };
    let changes = diff_ranges(&ctx, &req.source.previous, virtual_size, config.concurrency).await?;
    let plan = plan_diff(changes, virtual_size, chunk_size)
        .map_err(|e| DiffError::NotApplicable { why: e.to_string() })?;
    let header = JournalHeader::new(
        pass,
        etag,
        blob_length,
        virtual_size,
        chunk_size,
        req.format.extension().to_string(),
        &journal_plan(&plan),
    );
    let (journal, done, resumed) = start_journal(&journal_path, &header, old)?;
    let updater = open_image(&req, virtual_size, resumed, &journal_path)?;
    let (todo, resumed_chunks, already) = remaining(&plan, &done);
    let stats = run_pass(
        &ctx, &plan, todo, already, updater, journal, config, progress, interrupt,
    )
    .await?;
    journal::remove(&journal_path);
    tracing::info!(
        "{}: diff applied: {} bytes changed, {} cleared, {} fetched",
        req.image.display(),
        plan.changed_bytes,
        plan.cleared_bytes,
        stats.bytes_fetched
    );
    Ok(DiffOutcome {
        image: req.image.clone(),
        virtual_size,
        bytes_fetched: ctx
            .counters
            .bytes_fetched
            .load(std::sync::atomic::Ordering::Relaxed),
        bytes_changed: plan.changed_bytes,
        bytes_cleared: plan.cleared_bytes,
        chunks: plan.chunks.len() as u64,
        resumed_chunks,
        requests: stats.requests,
        retries: stats.retries,
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

/// Checks that need no network: chunk size, engine settings (zeros written: this is an
/// update), the journal's path.
fn settings(req: &DiffRequest) -> Result<(u64, EngineConfig, PathBuf), DiffError> {
    let chunk_size = plan::choose_chunk_size(req.read.chunk_size, req.read.verify == Verify::Md5)
        .map_err(|e| DiffError::Usage(e.to_string()))?;
    let config = EngineConfig {
        write_zero_chunks: true,
        ..req.read.engine.effective(chunk_size)
    };
    let journal = req
        .journal
        .clone()
        .unwrap_or_else(|| journal_path_for(&req.image));
    Ok((chunk_size, config, journal))
}

/// The pass as the journal names it: both snapshots and the image (its path, and its
/// device and inode, so a file put in its place is another image).
fn pass_identity(req: &DiffRequest) -> Result<String, DiffError> {
    use std::os::unix::fs::MetadataExt;
    let refused = |why: String| DiffError::ImageRefused {
        image: req.image.clone(),
        why,
    };
    let path = std::fs::canonicalize(&req.image).map_err(|e| refused(e.to_string()))?;
    let meta = std::fs::metadata(&path).map_err(|e| refused(e.to_string()))?;
    Ok(format!(
        "diff {} -> {} into {} (device {} inode {})",
        req.source.previous_key,
        req.source.snapshot_key,
        path.display(),
        meta.dev(),
        meta.ino()
    ))
}

fn parse_pass(identity: &str) -> Option<PendingPass> {
    let rest = identity.strip_prefix("diff ")?;
    let (previous, rest) = rest.split_once(" -> ")?;
    let (snapshot, _) = rest.split_once(" into ")?;
    Some(PendingPass {
        previous_key: previous.to_string(),
        snapshot_key: snapshot.to_string(),
    })
}

/// The journal an interrupted run left, if it is for this very pass; a journal for
/// another pass or image is refused and left where it is.
fn load_journal(path: &Path, pass: &str) -> Result<Option<journal::Loaded>, DiffError> {
    let loaded = Journal::load(path).map_err(|e| DiffError::Failed(e.to_string()))?;
    match loaded {
        Some(old) if old.header.blob != pass => Err(DiffError::OtherPass {
            journal: path.to_path_buf(),
            why: format!(
                "an unfinished pass is recorded here ({}), not this one ({pass}): finish it first, or do a full pass",
                old.header.blob
            ),
        }),
        other => Ok(other),
    }
}

/// The new snapshot's ETag (may be empty on export hosts), blob length and disk size,
/// after checking it holds a fixed VHD in a page blob.
async fn check_snapshot(ctx: &FetchContext) -> Result<(String, u64, u64), DiffError> {
    let name = ctx.blob.url().identity();
    let not_applicable = |why: String| DiffError::NotApplicable { why };
    let props = ctx
        .retry(|| name.clone(), || ctx.blob.properties())
        .await
        .map_err(|e| fetch_error(e, ctx))?;
    if props.kind != crate::azure::blob::BlobKind::Page {
        return Err(not_applicable(format!(
            "{name} is a {:?} blob, not a page blob",
            props.kind
        )));
    }
    let len = props.length;
    let read = |offset: u64, length: u64| {
        ctx.fetch(Chunk {
            virtual_offset: GuestOffset(0),
            source_offset: SourceOffset(offset),
            length: ByteLen(length),
        })
    };
    if len < FOOTER_SIZE as u64 {
        return Err(not_applicable(VhdError::TooSmall { len }.to_string()));
    }
    let tail = read(len - FOOTER_SIZE as u64, FOOTER_SIZE as u64)
        .await
        .map_err(|e| fetch_error(e, ctx))?;
    let tail: [u8; FOOTER_SIZE] = tail.try_into().expect("512 bytes read");
    match plan::check_footer(&tail, len) {
        Ok(f) if f.disk_type == DiskType::Fixed => Ok((props.etag, len, f.current_size)),
        Ok(f) => Err(not_applicable(format!(
            "{name} holds a {:?} VHD; diffs apply to fixed VHDs only",
            f.disk_type
        ))),
        Err(VhdError::BadFooterCookie { .. }) => {
            let head = read(0, 8).await.map_err(|e| fetch_error(e, ctx))?;
            if crate::image::source::is_vhdx(&head) {
                return Err(not_applicable(format!(
                    "{name} is served as VHDX (a 4 KiB-sector disk): its page diffs are in VHDX file offsets, not disk offsets"
                )));
            }
            Err(not_applicable(format!("{name} holds no VHD footer")))
        }
        Err(e) => Err(not_applicable(e.to_string())),
    }
}

/// Get Page Ranges diff over `[0, end)` in [`DIFF_WINDOW`] windows, at most
/// `concurrency` windows at once, each retried like any blob call.
async fn diff_ranges(
    ctx: &FetchContext,
    previous: &SasUrl,
    end: u64,
    concurrency: usize,
) -> Result<Vec<PageChange>, DiffError> {
    let windows = plan::page_range_windows(end, DIFF_WINDOW);
    let lists: Vec<Vec<PageChange>> = futures::stream::iter(windows)
        .map(|w| async move {
            let what = || {
                format!(
                    "{} page ranges diff {}-{}",
                    ctx.blob.url().identity(),
                    w.start,
                    w.end
                )
            };
            ctx.retry(what, || ctx.blob.page_diff(w.clone(), previous))
                .await
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
        .map_err(|e| fetch_error(e, ctx))?;
    Ok(lists.into_iter().flatten().collect())
}

/// What the journal's plan digest covers: the chunks, then each cleared range as a chunk
/// with source offset `u64::MAX` (no chunk has it), so a different set of clears is a
/// different plan too.
fn journal_plan(plan: &DiffPlan) -> Vec<Chunk> {
    let clears = plan.clears.iter().map(|r| Chunk {
        virtual_offset: GuestOffset(r.start),
        source_offset: SourceOffset(u64::MAX),
        length: ByteLen(r.end - r.start),
    });
    plan.chunks.iter().copied().chain(clears).collect()
}

type Done = std::collections::HashSet<plan::ChunkKey>;

/// Continues the journal of an interrupted run of this pass, or makes a new one durable
/// (before the image is opened). Returns it, the chunks already done, and whether it
/// resumes.
fn start_journal(
    path: &Path,
    header: &JournalHeader,
    old: Option<journal::Loaded>,
) -> Result<(Journal, Done, bool), DiffError> {
    let failed = |e: journal::JournalError| DiffError::Failed(e.to_string());
    match old {
        Some(old) => {
            if let Some(why) = old.header.mismatch(header) {
                return Err(DiffError::OtherPass {
                    journal: path.to_path_buf(),
                    why: format!("the unfinished run of this pass planned otherwise ({why})"),
                });
            }
            tracing::info!(
                "resuming the diff pass recorded in {}: {} chunks already done",
                path.display(),
                old.done.len()
            );
            Ok((Journal::append_to(path).map_err(failed)?, old.done, true))
        }
        None => Ok((
            Journal::create(path, header).map_err(failed)?,
            Done::new(),
            false,
        )),
    }
}

/// Opens the image for update. A refusal on a fresh pass removes the journal just made
/// (the image was not touched); on a resumed one the journal stays for the caller to see.
fn open_image(
    req: &DiffRequest,
    virtual_size: u64,
    resumed: bool,
    journal_path: &Path,
) -> Result<Box<dyn ImageUpdate>, DiffError> {
    let refused = |why: String| DiffError::ImageRefused {
        image: req.image.clone(),
        why,
    };
    let start = if resumed {
        UpdateStart::Resume
    } else {
        UpdateStart::Fresh
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&req.image)
        .map_err(|e| refused(e.to_string()))
        .and_then(|f| {
            open_for_update(req.format, f, virtual_size, start).map_err(|e| refused(e.to_string()))
        });
    if opened.is_err() && !resumed {
        journal::remove(journal_path);
    }
    opened
}

/// The chunks still to fetch, how many were done, and their bytes.
fn remaining(plan: &DiffPlan, done: &Done) -> (Vec<Chunk>, u64, u64) {
    let todo: Vec<Chunk> = plan
        .chunks
        .iter()
        .copied()
        .filter(|c| !done.contains(&c.key()))
        .collect();
    let resumed = (plan.chunks.len() - todo.len()) as u64;
    let all: u64 = plan.chunks.iter().map(|c| c.length.get()).sum();
    let left: u64 = todo.iter().map(|c| c.length.get()).sum();
    (todo, resumed, all - left)
}

/// Zeroes the cleared ranges, then runs the engine over the chunks still to do; the engine
/// finishes the image.
#[allow(clippy::too_many_arguments)]
async fn run_pass(
    ctx: &FetchContext,
    plan: &DiffPlan,
    todo: Vec<Chunk>,
    already: u64,
    mut updater: Box<dyn ImageUpdate>,
    journal: Journal,
    config: EngineConfig,
    progress: ProgressFn,
    interrupt: Interrupt,
) -> Result<engine::TransferStats, DiffError> {
    let kept = journal.path().display().to_string();
    if interrupt.is_set() {
        return Err(interrupted(&kept));
    }
    let clears: Vec<Range<u64>> = plan.clears.clone();
    let updater = tokio::task::spawn_blocking(move || {
        for r in clears {
            updater.zero_range(r)?;
        }
        Ok::<_, crate::image::sink::SinkError>(updater)
    })
    .await
    .map_err(|e| DiffError::Failed(format!("clearing ranges: {e}")))?
    .map_err(|e| DiffError::Failed(format!("clearing ranges: {e}; journal kept at {kept}")))?;
    let total = plan.chunks.iter().map(|c| c.length.get()).sum();
    let result = engine::run(
        ctx.clone(),
        todo,
        already,
        total,
        updater,
        Some(journal),
        config,
        progress,
        interrupt,
    )
    .await;
    result.map_err(|e| match e {
        EngineError::Interrupted | EngineError::Fetch(FetchError::Interrupted { .. }) => {
            interrupted(&kept)
        }
        EngineError::Fetch(f) => match fetch_error(f, ctx) {
            DiffError::AccessDenied(m) => {
                DiffError::AccessDenied(format!("{m}; journal kept at {kept}"))
            }
            other => DiffError::Failed(format!("{other}; journal kept at {kept}")),
        },
        other => DiffError::Failed(format!(
            "{}; journal kept at {kept}",
            scrub(ctx, other.to_string())
        )),
    })
}

fn interrupted(kept: &str) -> DiffError {
    DiffError::Interrupted(format!(
        "interrupted; the pass resumes from the journal {kept} when run again"
    ))
}

/// The blob client and retry settings every request of this pass goes through.
fn fetch_context(req: &DiffRequest, interrupt: Interrupt) -> Result<FetchContext, DiffError> {
    let blob = BlobReader::with_md_version(
        &req.source.snapshot,
        req.read.credential.clone(),
        req.read.client_options.clone(),
        &req.read.md_service_version,
    )
    .map_err(|e| DiffError::Usage(req.source.snapshot.scrub(&e.to_string())))?;
    Ok(FetchContext {
        blob,
        etag: String::new(),
        verify_md5: req.read.verify == Verify::Md5,
        policy: req.read.retry,
        jitter: default_jitter(),
        io_timeout: req.read.io_timeout,
        counters: Arc::new(FetchCounters::default()),
        interrupt,
    })
}

fn scrub(ctx: &FetchContext, text: String) -> String {
    crate::azure::sas::scrub(&ctx.blob.url().scrub(&text))
}

fn fetch_error(e: FetchError, ctx: &FetchContext) -> DiffError {
    let message = scrub(ctx, e.to_string());
    match e {
        FetchError::AccessDenied { .. } => DiffError::AccessDenied(message),
        FetchError::Interrupted { .. } => DiffError::Interrupted(message),
        _ => DiffError::Failed(message),
    }
}
