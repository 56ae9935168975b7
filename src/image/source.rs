//! Positional reads from whatever holds an image: a local file, or bytes in memory (tests,
//! fuzzing, the tail of a blob). Parsers never see the source, only the bytes it returns.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A source of bytes at absolute offsets.
pub trait ReadAt {
    /// Total length in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`; a short source is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The first run `[start, end)` within `[offset, limit)` that may hold data, or None if
    /// the rest reads as zeros. Sources that cannot tell say "all of it".
    fn next_data(&self, offset: u64, limit: u64) -> io::Result<Option<(u64, u64)>> {
        Ok((offset < limit).then_some((offset, limit)))
    }
}

/// A local file with its length taken once at open.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

impl ReadAt for FileSource {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    /// Asks the filesystem (lseek SEEK_DATA/SEEK_HOLE) so holes in a sparse source are not
    /// read at all: a fixed VHD copied with `cp --sparse` or made by qemu-img is mostly
    /// holes. Filesystems without support report the whole file as data, which is correct.
    fn next_data(&self, offset: u64, limit: u64) -> io::Result<Option<(u64, u64)>> {
        if offset >= limit {
            return Ok(None);
        }
        let start = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => return Ok(None), // only a hole up to EOF
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                return Ok(Some((offset, limit)));
            }
            Err(e) => return Err(e.into()),
        };
        if start >= limit {
            return Ok(None);
        }
        let end = match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(start)) {
            Ok(p) => p.min(limit),
            Err(_) => limit,
        };
        Ok(Some((start, end)))
    }
}

impl ReadAt for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..end).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}
