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
use crate::image::vhd::{self, DiskType, FOOTER_SIZE, Footer, VhdError};

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
}

/// A checked plan: what to fetch and where it goes.
#[derive(Debug, Clone)]
pub struct DownloadPlan {
    pub properties: BlobProperties,
    pub footer: Footer,
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
        self.chunks.iter().map(|c| c.length).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("not a usable VHD: {0}")]
    Image(#[from] VhdError),
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
    let footer = plan::check_footer(&tail, len)?;

    let (map_source, map, max_gap) = match (footer.disk_type, properties.kind) {
        (DiskType::Fixed, BlobKind::Page) => {
            let windows = plan::page_range_windows(footer.current_size, plan::PAGE_RANGE_WINDOW);
            let ctx = &ctx;
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
            let ranges = lists.into_iter().flatten().collect();
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
        footer,
        map_source,
        map,
        chunk_size,
        chunks,
    })
}

async fn read(ctx: &FetchContext, offset: u64, length: u64) -> Result<Vec<u8>, FetchError> {
    ctx.fetch(Chunk {
        virtual_offset: 0,
        source_offset: offset,
        length,
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
    let header = vhd::dynamic::parse_header(&raw, header_at)?;
    vhd::dynamic::check_block_size(&header, header_at)?;
    let (bat_at, bat_len) =
        vhd::dynamic::bat_location(&header, header_at, footer.current_size, file_len)?;
    // The BAT is held whole while it is checked: 4 bytes per block (2 MiB for a 1 TiB disk
    // of 2 MiB blocks), and never more than `MAX_BAT_ENTRIES` (64 MiB) because
    // `bat_location` refused any larger table before this allocation. It is fetched in
    // chunk-sized requests only so no single GET exceeds the chunk size.
    let mut bat = Vec::with_capacity(usize::try_from(bat_len).unwrap_or(0));
    let mut at = bat_at;
    while at < bat_at + bat_len {
        let n = (bat_at + bat_len - at).min(chunk_size);
        bat.extend_from_slice(&read(ctx, at, n).await?);
        at += n;
    }
    let (map, _summary) = vhd::dynamic::extent_map(
        &header,
        header_at,
        &bat,
        bat_at,
        footer.current_size,
        file_len,
    )?;
    Ok(map)
}
