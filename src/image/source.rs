//! Positional reads from whatever holds an image: a local file, or bytes in memory (tests,
//! fuzzing, the tail of a blob). Parsers never see the source, only the bytes it returns.
//!
//! [`open_image`] tells VHDX from VHD by content, never by name: a VHDX starts with the
//! "vhdxfile" identifier; anything else is read as a VHD (whose footer check then says
//! what is wrong).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::image::extent::ExtentMap;
use crate::image::vhd::{self, VhdError, VhdImage};
use crate::image::vhdx::log::Replayed;
use crate::image::vhdx::{self, VhdxError, VhdxImage};

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

/// A checked source image of either format.
#[derive(Debug, Clone)]
pub enum DiskImage {
    Vhd(VhdImage),
    Vhdx(VhdxImage),
}

/// Why [`open_image`] failed, from the format that was detected.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Vhd(#[from] VhdError),
    #[error(transparent)]
    Vhdx(#[from] VhdxError),
}

impl OpenError {
    /// True when the image itself is at fault (exit code 4), false for I/O trouble.
    pub fn is_bad_image(&self) -> bool {
        match self {
            Self::Vhd(e) => e.is_bad_image(),
            Self::Vhdx(e) => e.is_bad_image(),
        }
    }
}

impl DiskImage {
    /// "VHD" or "VHDX", for messages.
    pub fn format_name(&self) -> &'static str {
        match self {
            Self::Vhd(_) => "VHD",
            Self::Vhdx(_) => "VHDX",
        }
    }

    pub fn virtual_size(&self) -> u64 {
        match self {
            Self::Vhd(i) => i.virtual_size(),
            Self::Vhdx(i) => i.virtual_size(),
        }
    }

    pub fn extents(&self) -> &ExtentMap {
        match self {
            Self::Vhd(i) => &i.extents,
            Self::Vhdx(i) => &i.extents,
        }
    }

    /// The sector size the guest formatted the disk with: always 512 for a VHD; 512 or
    /// 4096 for a VHDX.
    pub fn logical_sector_size(&self) -> u32 {
        match self {
            Self::Vhd(_) => 512,
            Self::Vhdx(i) => i.metadata.logical_sector_size,
        }
    }
}

/// What the data of an image is read through: the source itself, or the source with a
/// VHDX's replayed log laid over it.
#[derive(Debug)]
pub enum ImageReader<'a, R: ?Sized> {
    Plain(&'a R),
    Replayed(Replayed<'a, R>),
}

impl<R: ReadAt + ?Sized> ReadAt for ImageReader<'_, R> {
    fn len(&self) -> u64 {
        match self {
            Self::Plain(r) => r.len(),
            Self::Replayed(r) => r.len(),
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Self::Plain(r) => r.read_exact_at(buf, offset),
            Self::Replayed(r) => r.read_exact_at(buf, offset),
        }
    }

    fn next_data(&self, offset: u64, limit: u64) -> io::Result<Option<(u64, u64)>> {
        match self {
            Self::Plain(r) => r.next_data(offset, limit),
            // Logged writes may land in the file's holes: read all of it.
            Self::Replayed(r) => r.next_data(offset, limit),
        }
    }
}

impl DiskImage {
    /// What to read this image's data extents through, given the source it was opened
    /// from: the source, or for a VHDX whose log was replayed, the source under the log.
    pub fn reader<'a, R: ReadAt + ?Sized>(&'a self, src: &'a R) -> ImageReader<'a, R> {
        match self {
            Self::Vhdx(VhdxImage { log: Some(l), .. }) => ImageReader::Replayed(Replayed {
                inner: src,
                overlay: &l.overlay,
            }),
            _ => ImageReader::Plain(src),
        }
    }
}

/// True when `head` (the first bytes of a file or blob) starts with the VHDX identifier.
pub fn is_vhdx(head: &[u8]) -> bool {
    head.starts_with(vhdx::FILE_SIGNATURE)
}

/// Opens a VHD or a VHDX, whichever the content says.
pub fn open_image<R: ReadAt + ?Sized>(src: &R) -> Result<DiskImage, OpenError> {
    let mut head = [0u8; 8];
    let sniffed = src.len() >= head.len() as u64 && src.read_exact_at(&mut head, 0).is_ok();
    if sniffed && is_vhdx(&head) {
        Ok(DiskImage::Vhdx(vhdx::open(src)?))
    } else {
        Ok(DiskImage::Vhd(vhd::open(src)?))
    }
}
