//! In-place update of a sparse raw image: positional writes in which zeros land too, and
//! cleared ranges punched out as holes.
//!
//! Zeros: a 4 KiB block of zeros inside an update (aligned to the disk, like the sink's
//! holes) is punched rather than written, so an update keeps the image as sparse as a
//! fresh download would be; anything shorter is written. Punching uses
//! `fallocate(PUNCH_HOLE | KEEP_SIZE)`, which zeroes partial filesystem blocks itself; a
//! file system without it (EOPNOTSUPP, e.g. some network file systems) gets zeros written,
//! in pieces of at most [`ZERO_WRITE`] bytes so memory stays bounded.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::ImageUpdate;
use crate::image::sink::{ImageSink, SinkError, SinkStats, check_bounds};
use crate::image::writeback::Writeback;
use crate::image::zero::{ZERO_BLOCK, data_runs};

/// Largest buffer of zeros written when holes cannot be punched.
pub const ZERO_WRITE: usize = 1 << 20;

/// The first bytes of a qcow2 file ("QFI\xfb"): a raw disk does not start like that (its
/// first sector is a boot sector or a partition table), so such a file is refused as raw.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

#[derive(Debug)]
pub struct RawUpdater {
    file: File,
    virtual_size: u64,
    stats: SinkStats,
    writeback: Writeback,
    /// False once the file system said it cannot punch holes.
    can_punch: bool,
}

impl RawUpdater {
    /// Opens a finished raw image: exactly the disk's size, and not a qcow2 file.
    pub fn open(file: File, virtual_size: u64) -> Result<Self, SinkError> {
        let len = file.metadata().map_err(SinkError::io("stat", 0))?.len();
        if len != virtual_size {
            return Err(SinkError::NotUpdatable {
                why: format!("raw image is {len} bytes, the disk is {virtual_size}"),
            });
        }
        let mut magic = [0u8; 4];
        if len >= 4 {
            file.read_exact_at(&mut magic, 0)
                .map_err(SinkError::io("read", 0))?;
            if magic == QCOW2_MAGIC {
                return Err(SinkError::NotUpdatable {
                    why: "the file is a qcow2 image, not raw".into(),
                });
            }
        }
        Ok(Self {
            file,
            virtual_size,
            stats: SinkStats::default(),
            writeback: Writeback::default(),
            can_punch: true,
        })
    }

    fn write(&mut self, data: &[u8], at: u64) -> Result<(), SinkError> {
        self.file
            .write_all_at(data, at)
            .map_err(SinkError::io("write", at))?;
        self.stats.bytes_written += data.len() as u64;
        self.writeback.wrote(&self.file, at, data.len() as u64);
        Ok(())
    }

    /// Punches `range`, or writes zeros over it when the file system cannot punch.
    fn clear(&mut self, range: Range<u64>) -> Result<(), SinkError> {
        if range.is_empty() {
            return Ok(());
        }
        if self.can_punch {
            use rustix::fs::{FallocateFlags, fallocate};
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            match fallocate(&self.file, flags, range.start, range.end - range.start) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
                    tracing::debug!("punching holes is not supported here: writing zeros");
                    self.can_punch = false;
                }
                Err(e) => {
                    return Err(SinkError::Io {
                        op: "punch hole",
                        offset: range.start,
                        source: e.into(),
                    });
                }
            }
        }
        let zeros = vec![0u8; ZERO_WRITE.min((range.end - range.start) as usize)];
        let mut at = range.start;
        while at < range.end {
            let n = (range.end - at).min(zeros.len() as u64) as usize;
            self.write(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

impl ImageSink for RawUpdater {
    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Overwrites `[virtual_offset, +len)`: non-zero 4 KiB blocks are written, the zero
    /// blocks between them punched (so the old data there is gone).
    fn write_at(&mut self, virtual_offset: u64, data: &[u8]) -> Result<(), SinkError> {
        check_bounds(virtual_offset, data.len(), self.virtual_size)?;
        let mut at = 0usize;
        for run in data_runs(data, virtual_offset, ZERO_BLOCK) {
            let base = virtual_offset;
            self.clear(base + at as u64..base + run.start as u64)?;
            self.write(&data[run.clone()], base + run.start as u64)?;
            at = run.end;
        }
        self.clear(virtual_offset + at as u64..virtual_offset + data.len() as u64)?;
        self.stats.bytes_received += data.len() as u64;
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), SinkError> {
        self.file.sync_data().map_err(SinkError::io("fsync", 0))
    }

    fn finish(&mut self) -> Result<SinkStats, SinkError> {
        self.file.sync_all().map_err(SinkError::io("fsync", 0))?;
        Ok(self.stats)
    }
}

impl ImageUpdate for RawUpdater {
    fn zero_range(&mut self, range: Range<u64>) -> Result<(), SinkError> {
        let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
        check_bounds(range.start, len, self.virtual_size)?;
        self.clear(range)
    }
}
