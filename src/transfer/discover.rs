//! The metadata reads a plan needs, in the order that fails fastest: properties (length,
//! ETag, type), then the last 512 bytes — a bad footer stops the run with exit 4 before
//! anything else is fetched — then either the written page ranges (fixed VHD in a page
//! blob), or the dynamic header and BAT (dynamic VHD, any blob type), or nothing (fixed VHD
//! in a block blob: everything is data). Every read is pinned to the ETag where the host
//! allows it (see `azure::blob`).

use futures::{StreamExt, TryStreamExt};

use super::fetch::{FetchContext, FetchError};
use super::plan::{self, Chunk};
use crate::azure::blob::{BlobKind, BlobProperties};
use crate::image::extent::ExtentMap;
use crate::image::offset::{ByteLen, GuestOffset, SourceOffset};
use crate::image::source::is_vhdx;
use crate::image::vhd::{self, DiskType, FOOTER_SIZE, Footer, VhdError};
use crate::image::vhdx::{self, VhdxError};

/// Where the extent map came from (reported, and part of the resume identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapSource {
    /// Get Page Ranges of a page blob holding a fixed VHD.
    PageRanges,
    /// The BAT of a dynamic VHD.
    DynamicBat,
    /// A fixed VHD in a block blob: every byte is fetched.
    Dense,
    /// The BAT of a VHDX (fixed or dynamic) in a block blob.
    VhdxBat,
    /// The BAT of a VHDX in a page blob, less the pages never written.
    VhdxBatPageRanges,
}

/// A checked plan: what to fetch and where it goes.
#[derive(Debug, Clone)]
pub struct DownloadPlan {
    pub properties: BlobProperties,
    /// The VHD footer; None for a VHDX.
    pub footer: Option<Footer>,
    /// "fixed VHD", "dynamic VHDX", ...: for messages.
    pub description: String,
    /// 512, or 4096 for a VHDX of 4 KiB logical sectors: the guest's sector size.
    pub logical_sector_size: u32,
    pub map_source: MapSource,
    pub map: ExtentMap,
    pub chunk_size: u64,
    pub chunks: Vec<Chunk>,
}

impl DownloadPlan {
    pub fn virtual_size(&self) -> u64 {
        self.map.virtual_size()
    }

    /// Bytes the chunks fetch (data plus coalesced gaps).
    pub fn fetch_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.length.get()).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("not a usable VHD: {0}")]
    Image(#[from] VhdError),
    #[error("not a usable VHDX: {0}")]
    Vhdx(#[from] VhdxError),
}

/// Reads what the plan needs and builds it. `concurrency` bounds parallel page-range calls.
pub async fn discover(
    ctx: &FetchContext,
    chunk_size: u64,
    concurrency: usize,
) -> Result<DownloadPlan, DiscoverError> {
    let name = ctx.blob.url().identity();
    let properties = ctx.retry(|| name.clone(), || ctx.blob.properties()).await?;
    let len = properties.length;
    if len < FOOTER_SIZE as u64 {
        return Err(VhdError::TooSmall { len }.into());
    }
    // From here on every read is pinned to the ETag just seen.
    let ctx = FetchContext {
        etag: properties.etag.clone(),
        ..ctx.clone()
    };
    let tail = read(&ctx, len - FOOTER_SIZE as u64, FOOTER_SIZE as u64).await?;
    let tail: [u8; FOOTER_SIZE] = tail.try_into().expect("512 bytes read");
    let footer = match plan::check_footer(&tail, len) {
        Ok(f) => f,
        Err(e @ VhdError::BadFooterCookie { .. }) => {
            let head = read_span(&ctx, 0, vhdx::HEAD_LEN.min(len), chunk_size).await?;
            if !is_vhdx(&head) {
                return Err(e.into());
            }
            return vhdx_plan(&ctx, properties, head, chunk_size, concurrency).await;
        }
        Err(e) => return Err(e.into()),
    };

    let (map_source, map, max_gap) = match (footer.disk_type, properties.kind) {
        (DiskType::Fixed, BlobKind::Page) => {
            let ranges = written_ranges(&ctx, footer.current_size, concurrency).await?;
            let map =
                plan::map_from_page_ranges(ranges, footer.current_size).map_err(VhdError::from)?;
            (MapSource::PageRanges, map, plan::COALESCE_GAP)
        }
        (DiskType::Fixed, _) => (MapSource::Dense, ExtentMap::dense(footer.current_size), 0),
        (DiskType::Dynamic, _) => {
            let map = dynamic_map(&ctx, &footer, len, chunk_size).await?;
            // Between a dynamic VHD's blocks lie bitmaps and other blocks: never coalesce.
            (MapSource::DynamicBat, map, 0)
        }
        (DiskType::Differencing, _) => unreachable!("refused by check_footer"),
    };
    let chunks = plan::chunks(&map, chunk_size, max_gap);
    Ok(DownloadPlan {
        properties,
        description: format!("{:?} VHD", footer.disk_type).to_lowercase(),
        logical_sector_size: 512,
        footer: Some(footer),
        map_source,
        map,
        chunk_size,
        chunks,
    })
}

/// The written page ranges of `[0, end)` of a page blob, by windows of Get Page Ranges.
pub(super) async fn written_ranges(
    ctx: &FetchContext,
    end: u64,
    concurrency: usize,
) -> Result<Vec<std::ops::Range<u64>>, FetchError> {
    let windows = plan::page_range_windows(end, plan::PAGE_RANGE_WINDOW);
    let lists: Vec<Vec<std::ops::Range<u64>>> = futures::stream::iter(windows)
        .map(|w| async move {
            let what = || {
                format!(
                    "{} page ranges {}-{}",
                    ctx.blob.url().identity(),
                    w.start,
                    w.end
                )
            };
            ctx.retry(what, || ctx.blob.page_ranges(w.clone(), &ctx.etag))
                .await
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    Ok(lists.into_iter().flatten().collect())
}

/// `length` bytes at `offset`, in requests of at most `chunk_size` so no single GET exceeds
/// the chunk size. Callers bound `length` first.
async fn read_span(
    ctx: &FetchContext,
    offset: u64,
    length: u64,
    chunk_size: u64,
) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    let mut at = offset;
    while at < offset + length {
        let n = (offset + length - at).min(chunk_size);
        out.extend_from_slice(&read(ctx, at, n).await?);
        at += n;
    }
    Ok(out)
}

/// The plan of a VHDX whose header section (`head`, the first [`vhdx::HEAD_LEN`] bytes)
/// was read: metadata table, then the items, then the BAT, each checked before the next
/// read is sized from it, through the same pure parsers `convert` uses.
///
/// A blob is looked at from the front only when its last 512 bytes are no VHD footer, so
/// VHD downloads make exactly the requests they made before. Only FULLY_PRESENT blocks are
/// fetched; in a page blob, Get Page Ranges then drops the never-written pages inside
/// them. A non-empty log is refused: replaying it would need the whole log and an overlay
/// on every chunk (`convert` replays).
async fn vhdx_plan(
    ctx: &FetchContext,
    properties: BlobProperties,
    head: Vec<u8>,
    chunk_size: u64,
    concurrency: usize,
) -> Result<DownloadPlan, DiscoverError> {
    let len = properties.length;
    let section = vhdx::parse_header_section(&head, len)?;
    if section.log_needs_replay() {
        return Err(section.log_not_empty().into());
    }
    let region = section.regions.metadata;
    let table_len = vhdx::metadata::TABLE_SIZE as u64;
    let raw = read_span(ctx, region.offset, table_len, chunk_size).await?;
    let table = vhdx::metadata::parse_table(&raw, region)?;
    let span = table.span(region)?;
    let items = read_span(ctx, region.offset + span.offset, span.length, chunk_size).await?;
    let metadata = vhdx::check_metadata(&table, &items, span.offset, region)?;
    let (bat_at, bat_len) = vhdx::bat::bat_location(&metadata, section.regions.bat)?;
    let bat = read_bat(ctx, bat_at, bat_len, chunk_size).await?;
    let (map, _) = vhdx::bat::extent_map(&metadata, &bat, bat_at, &section.fixed, len)?;
    let (map_source, map) = match properties.kind {
        BlobKind::Page => {
            let ranges = written_ranges(ctx, len, concurrency).await?;
            let map = plan::restrict_to_written(&map, ranges).map_err(VhdxError::from)?;
            (MapSource::VhdxBatPageRanges, map)
        }
        _ => (MapSource::VhdxBat, map),
    };
    let kind = if metadata.leave_blocks_allocated {
        "fixed"
    } else {
        "dynamic"
    };
    // Between a VHDX's blocks lie other blocks and metadata: never coalesce.
    let chunks = plan::chunks(&map, chunk_size, 0);
    Ok(DownloadPlan {
        properties,
        footer: None,
        description: format!("{kind} VHDX"),
        logical_sector_size: metadata.logical_sector_size,
        map_source,
        map,
        chunk_size,
        chunks,
    })
}

/// A BAT located (and its size refused above the format's limit) by `bat_location`,
/// read whole. Memory is not streamed: the whole table is allocated up front and held
/// while it is checked — 4 bytes a block for a VHD (2 MiB for a 1 TiB disk of 2 MiB
/// blocks), 8 for a VHDX, and never more than `MAX_BAT_ENTRIES` entries (64 MiB for a VHD,
/// 128 MiB for a VHDX) — and the extent map built from it costs 24 bytes per allocated
/// run on top. It is fetched in chunk-sized requests only so no single GET exceeds the
/// chunk size.
async fn read_bat(
    ctx: &FetchContext,
    bat_at: u64,
    bat_len: u64,
    chunk_size: u64,
) -> Result<Vec<u8>, FetchError> {
    read_span(ctx, bat_at, bat_len, chunk_size).await
}

async fn read(ctx: &FetchContext, offset: u64, length: u64) -> Result<Vec<u8>, FetchError> {
    ctx.fetch(Chunk {
        virtual_offset: GuestOffset(0),
        source_offset: SourceOffset(offset),
        length: ByteLen(length),
    })
    .await
}

/// Dynamic header and BAT by ranged reads, checked by the same pure parsers `convert` uses.
async fn dynamic_map(
    ctx: &FetchContext,
    footer: &Footer,
    file_len: u64,
    chunk_size: u64,
) -> Result<ExtentMap, DiscoverError> {
    let header_at = vhd::dynamic::header_offset(footer.data_offset, file_len)?;
    let raw = read(ctx, header_at, vhd::dynamic::HEADER_SIZE as u64).await?;
    let raw: [u8; vhd::dynamic::HEADER_SIZE] = raw.try_into().expect("header read");
    let layout = vhd::dynamic::locate_bat(&raw, header_at, footer, file_len)?;
    let bat = read_bat(ctx, layout.bat_at, layout.bat_len, chunk_size).await?;
    let (map, _summary) = layout.extent_map(&bat)?;
    Ok(map)
}
