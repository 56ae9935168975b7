//! The local copy loop: reads the data extents of a source and writes them into a sink.
//!
//! Only data is read — zero extents are skipped, and within data extents the source's own
//! holes are skipped too (see [`ReadAt::next_data`]) — so the work is proportional to the
//! data, not the disk. Reads go through [`BUFFERS`] recycled buffers of [`COPY_BUFFER`]
//! bytes: the loop's memory is those buffers, whatever the disk's size.

use std::io;
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::thread;

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

/// Buffers in flight between the reader thread and the writer: one being read, one being
/// written, one queued. Memory = `BUFFERS × COPY_BUFFER` (12 MiB), whatever the disk size.
pub const BUFFERS: usize = 3;

/// A filled buffer on its way to the sink.
struct Filled {
    virtual_at: u64,
    len: usize,
    buf: Vec<u8>,
}

/// Copies every data extent of `map` from `src` into `sink` and finishes the sink.
/// `progress` receives the virtual offset up to which the disk is done after each chunk,
/// and stops the copy by returning `ControlFlow::Break` (Ctrl-C).
///
/// Reading and writing overlap: a scoped reader thread fills recycled buffers while this
/// thread writes the previous ones, so neither waits for the other's system calls.
pub fn copy_extents<R: ReadAt + Sync + ?Sized>(
    src: &R,
    map: &ExtentMap,
    sink: &mut dyn ImageSink,
    progress: &mut dyn FnMut(u64) -> ControlFlow<()>,
) -> Result<CopyStats, CopyError> {
    let (filled_tx, filled_rx) = mpsc::sync_channel::<Result<Filled, CopyError>>(BUFFERS - 1);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        empty_tx
            .send(vec![0u8; COPY_BUFFER])
            .expect("receiver alive");
    }
    // `move`: the writer's channel ends live in the closure, so they are dropped when it
    // returns — before the scope joins the reader — and a reader blocked on either wakes.
    let (sink_ref, progress_ref) = (&mut *sink, &mut *progress);
    let bytes_read = thread::scope(move |scope| {
        scope.spawn(move || read_all(src, map, &empty_rx, &filled_tx));
        let mut bytes_read = 0u64;
        // The reader ends the stream by dropping its sender; an error ends it early.
        for item in filled_rx.iter() {
            let Filled {
                virtual_at,
                len,
                buf,
            } = item?;
            sink_ref.write_at(virtual_at, &buf[..len])?;
            bytes_read += len as u64;
            if progress_ref(virtual_at + len as u64).is_break() {
                return Err(CopyError::Stopped {
                    at: virtual_at + len as u64,
                });
            }
            // The reader may have stopped after an error: losing the buffer is fine then.
            let _ = empty_tx.send(buf);
        }
        Ok(bytes_read)
    })?;
    let _ = progress(map.virtual_size());
    Ok(CopyStats {
        bytes_read,
        sink: sink.finish()?,
    })
}

/// The reader thread: walks the data extents, skipping the source's holes, and sends
/// filled buffers in virtual order. Stops quietly when the writer hangs up.
fn read_all<R: ReadAt + ?Sized>(
    src: &R,
    map: &ExtentMap,
    empty: &mpsc::Receiver<Vec<u8>>,
    filled: &mpsc::SyncSender<Result<Filled, CopyError>>,
) {
    for extent in map.data_extents() {
        let src_start = extent.source_offset().expect("data extent");
        let src_end = src_start + extent.length;
        let mut at = src_start;
        loop {
            let (data_start, data_end) = match src.next_data(at, src_end) {
                Ok(Some(run)) => run,
                Ok(None) => break,
                Err(source) => {
                    let _ = filled.send(Err(CopyError::Read {
                        offset: at,
                        length: 0,
                        source,
                    }));
                    return;
                }
            };
            let mut pos = data_start;
            while pos < data_end {
                let Ok(mut buf) = empty.recv() else { return };
                let len = (data_end - pos).min(COPY_BUFFER as u64) as usize;
                let item = match src.read_exact_at(&mut buf[..len], pos) {
                    Ok(()) => Ok(Filled {
                        virtual_at: extent.virtual_start + (pos - src_start),
                        len,
                        buf,
                    }),
                    Err(source) => Err(CopyError::Read {
                        offset: pos,
                        length: len,
                        source,
                    }),
                };
                let failed = item.is_err();
                if filled.send(item).is_err() || failed {
                    return;
                }
                pos += len as u64;
            }
            at = data_end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::extent::ExtentMapBuilder;
    use crate::image::offset::{ByteLen, GuestOffset, SourceOffset};
    use crate::image::sink::{ImageFormat, create_sink};
    use std::io;

    /// A source that fails reads past a point, to check errors come back, not hangs.
    struct Failing {
        data: Vec<u8>,
        fail_from: u64,
    }

    impl ReadAt for Failing {
        fn len(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            if offset >= self.fail_from {
                return Err(io::Error::other("medium error"));
            }
            self.data.as_slice().read_exact_at(buf, offset)
        }
    }

    fn map(size: u64) -> ExtentMap {
        let mut b = ExtentMapBuilder::new(size);
        b.push_data(GuestOffset(0), ByteLen(size), SourceOffset(0))
            .unwrap();
        b.finish()
    }

    #[test]
    fn copies_data_and_skips_zero_extents() {
        let size = 3 * COPY_BUFFER as u64 + 4096;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 | 1).collect();
        let mut b = ExtentMapBuilder::new(size);
        b.push_data(GuestOffset(4096), ByteLen(size - 4096), SourceOffset(4096))
            .unwrap();
        let map = b.finish();
        let file = tempfile::tempfile().unwrap();
        let mut sink = create_sink(ImageFormat::Raw, file.try_clone().unwrap(), size).unwrap();
        let stats = copy_extents(data.as_slice(), &map, sink.as_mut(), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(stats.bytes_read, size - 4096);
        let mut out = vec![0u8; size as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut out, 0).unwrap();
        assert!(out[..4096].iter().all(|&b| b == 0));
        assert_eq!(&out[4096..], &data[4096..]);
    }

    #[test]
    fn read_error_is_reported_with_offset() {
        let size = 5 * COPY_BUFFER as u64;
        let src = Failing {
            data: vec![1; size as usize],
            fail_from: 2 * COPY_BUFFER as u64,
        };
        let mut sink = create_sink(ImageFormat::Raw, tempfile::tempfile().unwrap(), size).unwrap();
        let err = copy_extents(&src, &map(size), sink.as_mut(), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert!(
            matches!(err, CopyError::Read { offset, .. } if offset == 2 * COPY_BUFFER as u64),
            "{err}"
        );
    }

    #[test]
    fn break_from_progress_stops_without_hanging() {
        let size = 8 * COPY_BUFFER as u64;
        let data = vec![1u8; size as usize];
        let mut sink = create_sink(ImageFormat::Raw, tempfile::tempfile().unwrap(), size).unwrap();
        let mut calls = 0;
        let err = copy_extents(data.as_slice(), &map(size), sink.as_mut(), &mut |_| {
            calls += 1;
            if calls == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
        assert!(
            matches!(err, CopyError::Stopped { at } if at == 2 * COPY_BUFFER as u64),
            "{err}"
        );
    }
}
