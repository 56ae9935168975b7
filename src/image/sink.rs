//! The sink side of the extent map: where converted disk data lands.
//!
//! Every producer (local VHD conversion, page-blob download) writes positionally into an
//! [`ImageSink`] as data becomes available, in any order, and calls `finish` once. The sink
//! owns zero detection (all-zero data leaves holes) and the format's metadata; it never
//! renames or deletes files — that is [`crate::image::staging`]'s job.

use std::fs::File;
use std::io;
use std::path::Path;

use super::qcow2::Qcow2Writer;
use super::raw::RawWriter;

/// Output image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    /// The format an output path asks for by its extension: `.raw`/`.img` → raw,
    /// `.qcow2` → qcow2.
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "raw" | "img" => Some(Self::Raw),
            "qcow2" => Some(Self::Qcow2),
            _ => None,
        }
    }

    /// File extension used for images written by `export`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// What a finished sink reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SinkStats {
    /// Bytes handed to `write_at`.
    pub bytes_received: u64,
    /// Bytes actually written to the file (data, not holes; metadata included for qcow2).
    pub bytes_written: u64,
}

/// Errors from writing an image.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(
        "write of {length} bytes at virtual offset {offset} ends past the disk's virtual size {virtual_size}"
    )]
    OutOfBounds {
        offset: u64,
        length: u64,
        virtual_size: u64,
    },
    #[error("virtual size {virtual_size} is too large for {format:?} (limit {limit})")]
    TooLarge {
        virtual_size: u64,
        format: ImageFormat,
        limit: u64,
    },
    #[error("cannot resume the partial image: {why}")]
    NotResumable { why: String },
    /// A finished image that cannot be updated in place (`image::update`).
    #[error("not an image this tool can update in place: {why}")]
    NotUpdatable { why: String },
    #[error("{op} at file offset {offset}: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        source: io::Error,
    },
}

impl SinkError {
    /// True when the input, not the output, is at fault: a disk the format cannot hold.
    pub fn is_bad_image(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }

    pub(crate) fn io(op: &'static str, offset: u64) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { op, offset, source }
    }
}

/// A disk image being written.
///
/// Contract: regions may arrive in any order and from one writer at a time (`&mut self`);
/// a region is written once, or again only with the same bytes (a resumed download).
/// Bytes never written read as zeros.
pub trait ImageSink: Send {
    fn virtual_size(&self) -> u64;

    /// Writes `data` at `virtual_offset`. All-zero parts may become holes.
    fn write_at(&mut self, virtual_offset: u64, data: &[u8]) -> Result<(), SinkError>;

    /// Makes everything written so far durable and reloadable by [`resume_sink`]. Data
    /// written after the last checkpoint may or may not survive a crash.
    fn checkpoint(&mut self) -> Result<(), SinkError>;

    /// Completes the image's metadata and makes it durable (fsync). Call once, last.
    fn finish(&mut self) -> Result<SinkStats, SinkError>;
}

/// Opens a sink of `format` over an empty file for a disk of `virtual_size` bytes. The file
/// must be open for reading and writing (qcow2 reads back evicted L2 tables).
pub fn create_sink(
    format: ImageFormat,
    file: File,
    virtual_size: u64,
) -> Result<Box<dyn ImageSink>, SinkError> {
    Ok(match format {
        ImageFormat::Raw => Box::new(RawWriter::create(file, virtual_size)?),
        ImageFormat::Qcow2 => Box::new(Qcow2Writer::create(file, virtual_size)?),
    })
}

/// Reopens a partial image of `format` that an earlier run checkpointed, to go on writing
/// it. Refuses a file that is not such a checkpoint for a disk of `virtual_size` bytes.
pub fn resume_sink(
    format: ImageFormat,
    file: File,
    virtual_size: u64,
) -> Result<Box<dyn ImageSink>, SinkError> {
    Ok(match format {
        ImageFormat::Raw => Box::new(RawWriter::resume(file, virtual_size)?),
        ImageFormat::Qcow2 => Box::new(Qcow2Writer::resume(file, virtual_size)?),
    })
}

pub(crate) fn check_bounds(offset: u64, length: usize, virtual_size: u64) -> Result<(), SinkError> {
    let length = length as u64;
    match offset.checked_add(length) {
        Some(end) if end <= virtual_size => Ok(()),
        _ => Err(SinkError::OutOfBounds {
            offset,
            length,
            virtual_size,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_extension() {
        assert_eq!(
            ImageFormat::from_extension(Path::new("a/b.raw")),
            Some(ImageFormat::Raw)
        );
        assert_eq!(
            ImageFormat::from_extension(Path::new("b.IMG")),
            Some(ImageFormat::Raw)
        );
        assert_eq!(
            ImageFormat::from_extension(Path::new("b.qcow2")),
            Some(ImageFormat::Qcow2)
        );
        assert_eq!(ImageFormat::from_extension(Path::new("b.vhd")), None);
        assert_eq!(ImageFormat::from_extension(Path::new("noext")), None);
    }

    #[test]
    fn bounds_reject_overflow_and_past_end() {
        assert!(check_bounds(0, 10, 10).is_ok());
        assert!(check_bounds(1, 10, 10).is_err());
        assert!(check_bounds(u64::MAX, 2, u64::MAX).is_err());
    }
}
