//! Sparse raw sink: the file is the disk, byte for byte.
//!
//! The file is sized to the virtual size up front (a hole), data lands by positional
//! writes, and 4 KiB blocks of zeros are skipped so they stay holes: allocated bytes track
//! data bytes, not the disk size. Skipping is correct because the sink contract writes a
//! region at most once (or again with the same bytes).

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::image::sink::{ImageSink, SinkError, SinkStats, check_bounds};
use crate::image::writeback::Writeback;
use crate::image::zero::{ZERO_BLOCK, data_runs};

#[derive(Debug)]
pub struct RawWriter {
    file: File,
    virtual_size: u64,
    stats: SinkStats,
    writeback: Writeback,
}

impl RawWriter {
    pub fn create(file: File, virtual_size: u64) -> Result<Self, SinkError> {
        file.set_len(virtual_size)
            .map_err(SinkError::io("set length", virtual_size))?;
        Ok(Self {
            file,
            virtual_size,
            stats: SinkStats::default(),
            writeback: Writeback::default(),
        })
    }

    /// Reopens a partial raw image: it must already have the disk's exact size.
    pub fn resume(file: File, virtual_size: u64) -> Result<Self, SinkError> {
        let len = file.metadata().map_err(SinkError::io("stat", 0))?.len();
        if len != virtual_size {
            return Err(SinkError::NotResumable {
                why: format!("partial raw image is {len} bytes, the disk is {virtual_size}"),
            });
        }
        Ok(Self {
            file,
            virtual_size,
            stats: SinkStats::default(),
            writeback: Writeback::default(),
        })
    }
}

impl ImageSink for RawWriter {
    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn write_at(&mut self, virtual_offset: u64, data: &[u8]) -> Result<(), SinkError> {
        check_bounds(virtual_offset, data.len(), self.virtual_size)?;
        for run in data_runs(data, virtual_offset, ZERO_BLOCK) {
            let at = virtual_offset + run.start as u64;
            self.file
                .write_all_at(&data[run.clone()], at)
                .map_err(SinkError::io("write", at))?;
            self.stats.bytes_written += run.len() as u64;
            self.writeback.wrote(&self.file, at, run.len() as u64);
        }
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
