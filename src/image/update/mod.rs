//! Updating a finished image in place: a warm-migration pass writes the pages that changed
//! since the last pass into the image the earlier pass left, and turns cleared pages into
//! zeros, instead of writing a new image.
//!
//! Why a separate contract from [`ImageSink`]: a sink may skip zero data (a region is written
//! once, and never-written bytes read as zeros), but an update overwrites old data, so
//! zeros must land. An [`ImageUpdate`] is an [`ImageSink`] whose `write_at` replaces what was
//! there, zeros included, plus [`ImageUpdate::zero_range`] for cleared ranges; so the
//! transfer engine drives an update exactly as it drives a download.
//!
//! Only images our sinks wrote are opened (qcow2: the layout of `image::qcow2`, checked
//! table by table before anything is written; raw: the disk's exact size). Crash safety
//! comes from the caller's journal (`transfer::diff`): a pass interrupted half-way leaves a
//! half-updated image, and the journal finishes the same pass on the next run. A qcow2 image
//! being updated carries the "corrupt" bit, like a checkpoint, so no qemu opens it
//! half-updated; [`ImageUpdate`]'s `finish` rebuilds its refcounts and clears the bit.

use std::fs::File;
use std::ops::Range;

use super::qcow2::Qcow2Writer;
use super::sink::{ImageFormat, ImageSink, SinkError};

mod raw;

pub use raw::RawUpdater;

/// A finished image opened for an in-place update.
pub trait ImageUpdate: ImageSink {
    /// Makes `range` (guest offsets, any alignment) read as zeros: a hole where the format
    /// allows one, written zeros where it does not.
    fn zero_range(&mut self, range: Range<u64>) -> Result<(), SinkError>;
}

/// Whether the image may be one an interrupted pass left half-updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStart {
    /// A new pass: the image must be finished (a qcow2 checkpoint is refused).
    Fresh,
    /// The same pass again, after a crash or Ctrl-C: a qcow2 image may still be marked as
    /// being updated (the journal vouches for it).
    Resume,
}

/// Opens the finished image in `file` (read and write) of `format` for a disk of
/// `virtual_size` bytes. Refuses, with [`SinkError::NotUpdatable`] and nothing written,
/// an image of another size or one our writers did not produce.
pub fn open_for_update(
    format: ImageFormat,
    file: File,
    virtual_size: u64,
    start: UpdateStart,
) -> Result<Box<dyn ImageUpdate>, SinkError> {
    Ok(match format {
        ImageFormat::Raw => Box::new(RawUpdater::open(file, virtual_size)?),
        ImageFormat::Qcow2 => Box::new(Qcow2Writer::open_for_update(
            file,
            virtual_size,
            start == UpdateStart::Resume,
        )?),
    })
}

#[cfg(test)]
mod tests;
