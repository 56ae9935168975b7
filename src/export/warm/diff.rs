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
use crate::transfer::job::{DownloadReport, ReadSettings};
use crate::transfer::plan::DEFAULT_CHUNK_SIZE;

/// A diff is a running VM's writes between passes: small ranges scattered over the disk,
/// so its time is round trips more than bytes (measured: 1,300 ranges of ~64 KiB over an
/// 8 GiB disk, 20 ms each, kept 16 connections latency-bound at 1.6× the wire time). Its
/// chunks are smaller and its connections more, within the same chunk memory as the
/// disk's share of the run budget: connections × chunk size stays what the budget gave.
const DIFF_CHUNK_SIZE: u64 = 1 << 20;
/// Requests in flight on one snapshot, whatever the memory allows.
const DIFF_MAX_CONNECTIONS: usize = 64;

/// Connections for a diff pass: the disk's chunk memory in [`DIFF_CHUNK_SIZE`] chunks,
/// never fewer than a full pass would use and never more than [`DIFF_MAX_CONNECTIONS`].
fn diff_connections(connections: usize, chunk_size: Option<u64>) -> usize {
    let memory = connections as u64 * chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
    let by_memory = usize::try_from(memory / DIFF_CHUNK_SIZE).unwrap_or(usize::MAX);
    by_memory.clamp(connections.min(DIFF_MAX_CONNECTIONS), DIFF_MAX_CONNECTIONS)
}

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
    let read = ctx.read_settings();
    req.read = ReadSettings {
        chunk_size: Some(DIFF_CHUNK_SIZE),
        engine: EngineConfig {
            concurrency: diff_connections(ctx.connections, ctx.chunk_size),
            ..read.engine
        },
        ..read
    };
    if d.entra_id_reads {
        req.read.credential = Some(ctx.credential.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_spends_the_disks_chunk_memory_on_more_smaller_requests() {
        // 16 connections of 8 MiB: 128 MiB, so 64 (the cap) of 1 MiB.
        assert_eq!(diff_connections(16, Some(8 << 20)), 64);
        // 4 connections of 4 MiB: 16 MiB, 16 of 1 MiB.
        assert_eq!(diff_connections(4, Some(4 << 20)), 16);
        // Never fewer than a full pass had, never over the cap.
        assert_eq!(diff_connections(2, Some(1 << 20)), 2);
        assert_eq!(diff_connections(200, None), DIFF_MAX_CONNECTIONS);
        for (c, size) in [(1, 4u64 << 20), (16, 8 << 20), (3, 8 << 20)] {
            let n = diff_connections(c, Some(size)) as u64;
            assert!(n * DIFF_CHUNK_SIZE <= (c as u64 * size).max(c as u64 * DIFF_CHUNK_SIZE));
        }
    }
}
