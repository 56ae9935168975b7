//! The export side of a diff pass: hands the two grants and the image to the transfer
//! engine's diff pass and turns its outcome into what a warm pass decides on — apply
//! succeeded (numbers), fall back to a full pass (the diff is unusable, e.g. a VHDX
//! grant), interrupted, or failed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::state::DiskState;
use crate::azure::arm::ResourceId;
use crate::azure::sas::SasUrl;
use crate::export::disk::{DiskContext, progress_of};
use crate::export::plan::PlannedDisk;
use crate::image::sink::ImageFormat;
use crate::transfer::diff::{
    DiffError as EngineDiffError, DiffRequest, DiffSource, apply_diff, journal_path_for,
};
use crate::transfer::discover::MapSource;
use crate::transfer::engine::{EngineConfig, TransferStats};
use crate::transfer::job::DownloadReport;

/// One diff pass: the image is at `previous`; after it, at `snapshot`.
#[derive(Debug, Clone)]
pub struct DiffPass {
    /// Read grant (SAS) on the new snapshot.
    pub snapshot: SasUrl,
    /// Read grant on the kept snapshot (a secret too: sent as `x-ms-previous-snapshot-url`).
    pub previous: SasUrl,
    pub new_id: ResourceId,
    pub base_id: ResourceId,
    pub image: PathBuf,
    pub format: ImageFormat,
    pub virtual_size: u64,
}

/// What a diff pass did, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiffNumbers {
    pub bytes_fetched: u64,
    pub bytes_changed: u64,
    pub bytes_cleared: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffError {
    Interrupted,
    /// The diff cannot bring this image up to date: a full pass must, for this reason.
    Unusable(String),
    Failed(String),
}

/// Applies the diff (see the module note) with the run's connection share, retries and
/// cancellation; the engine's journal beside the image makes it resumable.
pub async fn apply(
    ctx: &DiskContext,
    d: &PlannedDisk,
    pass: DiffPass,
) -> Result<DiffNumbers, DiffError> {
    let source = DiffSource {
        snapshot: pass.snapshot,
        previous: pass.previous,
        snapshot_key: pass.new_id.folded().to_string(),
        previous_key: pass.base_id.folded().to_string(),
    };
    let mut req = DiffRequest::new(source, pass.image, pass.format);
    req.client_options = Some(ctx.client_options.clone());
    req.md_service_version = ctx.md_service_version;
    req.engine = EngineConfig {
        concurrency: ctx.connections,
        queue_depth: ctx.queue_depth,
        ..EngineConfig::default()
    };
    req.io_timeout = ctx.io_timeout;
    if d.entra_id_reads {
        req.credential = Some(ctx.credential.clone());
    }
    let progress = progress_of(&ctx.events, &d.key);
    match apply_diff(req, progress, ctx.interrupt.clone()).await {
        Ok(out) => Ok(DiffNumbers {
            bytes_fetched: out.bytes_fetched,
            bytes_changed: out.bytes_changed,
            bytes_cleared: out.bytes_cleared,
        }),
        Err(e) => Err(match e {
            EngineDiffError::Interrupted(_) => DiffError::Interrupted,
            // Nothing written, or a journal of a pass the state does not name (an image
            // touched by hand): only a full pass makes the image right again.
            e @ (EngineDiffError::NotApplicable { .. }
            | EngineDiffError::ImageRefused { .. }
            | EngineDiffError::OtherPass { .. }) => DiffError::Unusable(e.to_string()),
            e @ (EngineDiffError::Usage(_)
            | EngineDiffError::AccessDenied(_)
            | EngineDiffError::Failed(_)) => DiffError::Failed(e.to_string()),
        }),
    }
}

/// Removes a diff journal left beside `image` (before the image is replaced by a full
/// pass: it belongs to a pass that will not be finished).
pub fn discard(image: &Path) {
    let journal = journal_path_for(image);
    if journal.exists() {
        crate::transfer::journal::remove(&journal);
    }
}

/// The download report a diff pass stands for in the manifest and the run report.
pub fn report(
    prior: &DiskState,
    image: PathBuf,
    n: &DiffNumbers,
    started: Instant,
) -> DownloadReport {
    DownloadReport {
        output: image,
        format: prior.format,
        virtual_size: prior.virtual_size,
        map_source: MapSource::PageRanges,
        logical_sector_size: prior.logical_sector_size,
        data_bytes: n.bytes_changed,
        planned_bytes: n.bytes_fetched,
        chunks: 0,
        resumed_chunks: 0,
        elapsed_secs: started.elapsed().as_secs_f64(),
        stats: TransferStats {
            bytes_fetched: n.bytes_fetched,
            ..TransferStats::default()
        },
    }
}
