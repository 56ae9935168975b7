//! The local copy loop: reads the data extents of a source and writes them into a sink.
//!
//! Only data is read — zero extents are skipped, and within data extents the source's own
//! holes are skipped too (see [`ReadAt::next_data`]) — so the work is proportional to the
//! data, not the disk. Reads go through one reusable buffer of [`COPY_BUFFER`] bytes: the
//! loop's memory is that buffer, whatever the disk's size.

use std::io;
use std::ops::ControlFlow;

use crate::image::extent::ExtentMap;
use crate::image::sink::{ImageSink, SinkError, SinkStats};
use crate::image::source::ReadAt;

/// Bytes per read. 4 MiB is past the point where larger reads stop helping throughput
/// on local disks, and small enough to keep the memory goal (≤ 64 MiB) with room to spare.
pub const COPY_BUFFER: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading source at offset {offset} ({length} bytes): {source}")]
    Read {
        offset: u64,
        length: usize,
        source: io::Error,
    },
    #[error("writing image: {0}")]
    Sink(#[from] SinkError),
    #[error("stopped at virtual offset {at} by request")]
    Stopped { at: u64 },
}

/// What a copy did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CopyStats {
    /// Bytes read from the source.
    pub bytes_read: u64,
    pub sink: SinkStats,
}

/// Copies every data extent of `map` from `src` into `sink` and finishes the sink.
/// `progress` receives the virtual offset up to which the disk is done after each chunk,
/// and stops the copy by returning `ControlFlow::Break` (Ctrl-C).
pub fn copy_extents<R: ReadAt + ?Sized>(
    src: &R,
    map: &ExtentMap,
    sink: &mut dyn ImageSink,
    progress: &mut dyn FnMut(u64) -> ControlFlow<()>,
) -> Result<CopyStats, CopyError> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut bytes_read = 0u64;
    for extent in map.data_extents() {
        let src_start = extent.source_offset().expect("data extent");
        let src_end = src_start + extent.length;
        let mut at = src_start;
        while let Some((data_start, data_end)) =
            src.next_data(at, src_end)
                .map_err(|source| CopyError::Read {
                    offset: at,
                    length: 0,
                    source,
                })?
        {
            let mut pos = data_start;
            while pos < data_end {
                let n = (data_end - pos).min(COPY_BUFFER as u64) as usize;
                src.read_exact_at(&mut buf[..n], pos)
                    .map_err(|source| CopyError::Read {
                        offset: pos,
                        length: n,
                        source,
                    })?;
                let virtual_at = extent.virtual_start + (pos - src_start);
                sink.write_at(virtual_at, &buf[..n])?;
                bytes_read += n as u64;
                pos += n as u64;
                if progress(virtual_at + n as u64).is_break() {
                    return Err(CopyError::Stopped {
                        at: virtual_at + n as u64,
                    });
                }
            }
            at = data_end;
        }
    }
    let _ = progress(map.virtual_size());
    Ok(CopyStats {
        bytes_read,
        sink: sink.finish()?,
    })
}
