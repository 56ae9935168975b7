//! Starting the kernel's writeback of image data while the image is still being written.
//!
//! Without it, every byte of a download or conversion sits dirty in the page cache until
//! the final fsync, which then flushes it all at once: on the 1 GiB benchmark disk that
//! fsync alone was ~10% of the run, and a 128 GiB image would push the host's page cache
//! out and stall at the end for minutes. After each [`WRITEBACK_BATCH`] of data, the span
//! written since the last batch gets `posix_fadvise(POSIX_FADV_DONTNEED)`: on Linux that
//! queues asynchronous writeback of the span's dirty pages (it does not wait for it) and
//! drops the pages that are already clean. The final fsync then only waits for the last
//! batch.
//!
//! Batches, not every write: writeback is issued over one sorted span per batch, so a disk
//! still sees large, ordered writes rather than one small write per chunk.
//!
//! The advice is only advice: a file system that ignores it, or an error from it, changes
//! timing, never the bytes (durability still comes from the sinks' fsyncs).

use std::fs::File;
use std::num::NonZeroU64;
use std::ops::Range;

/// Data bytes written between two writeback requests.
pub const WRITEBACK_BATCH: u64 = 32 << 20;

/// Accumulates the span written since the last request and issues one per batch.
#[derive(Debug, Default)]
pub struct Writeback {
    span: Option<Range<u64>>,
    pending: u64,
}

impl Writeback {
    /// Records that `len` bytes were written at file offset `at`; starts writeback of the
    /// accumulated span when a batch is complete.
    pub fn wrote(&mut self, file: &File, at: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = at.saturating_add(len);
        self.span = Some(match self.span.take() {
            Some(s) => s.start.min(at)..s.end.max(end),
            None => at..end,
        });
        self.pending += len;
        if self.pending >= WRITEBACK_BATCH {
            self.start(file);
        }
    }

    /// Starts writeback of whatever was written since the last request.
    pub fn start(&mut self, file: &File) {
        if let Some(span) = self.span.take() {
            // Advice: an error here costs time at the final fsync, nothing else.
            let _ = rustix::fs::fadvise(
                file,
                span.start,
                NonZeroU64::new(span.end - span.start),
                rustix::fs::Advice::DontNeed,
            );
        }
        self.pending = 0;
    }

    #[cfg(test)]
    fn span(&self) -> Option<Range<u64>> {
        self.span.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_grows_until_a_batch_then_resets() {
        let file = tempfile::tempfile().unwrap();
        let mut w = Writeback::default();
        w.wrote(&file, 10 << 20, 1 << 20);
        w.wrote(&file, 2 << 20, 1 << 20);
        w.wrote(&file, 5 << 20, 0);
        assert_eq!(w.span(), Some((2 << 20)..(11 << 20)));
        w.wrote(&file, 40 << 20, WRITEBACK_BATCH);
        assert_eq!(w.span(), None, "a full batch starts writeback and resets");
        w.wrote(&file, 0, 4096);
        assert_eq!(w.span(), Some(0..4096));
    }

    #[test]
    fn advice_keeps_the_bytes() {
        use std::io::Read;
        use std::os::unix::fs::FileExt;
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..WRITEBACK_BATCH + 4096)
            .map(|i| (i % 251) as u8)
            .collect();
        file.write_all_at(&data, 0).unwrap();
        let mut w = Writeback::default();
        w.wrote(&file, 0, data.len() as u64);
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert!(back == data, "the advised range reads back unchanged");
    }
}
