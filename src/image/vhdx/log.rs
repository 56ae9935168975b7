//! Log replay (MS-VHDX 2.3). A host that stopped between logging a metadata update and
//! applying it leaves a log whose GUID the current header names; the file must be read as
//! if the log's active sequence had been applied. This module never writes the input: it
//! finds the active sequence and turns it into an [`Overlay`] of writes that
//! [`Replayed`] lays over the file for every later read (headers, BAT, metadata, data).
//!
//! The active sequence is found as the spec describes: of the entries that are valid on
//! their own (signature, CRC-32C over the whole entry, the header's log GUID, descriptors
//! and data sectors that agree on the sequence number), the one with the highest sequence
//! number whose `Tail` leads to it through entries of consecutive sequence numbers laid
//! end to end in the circular log. Its entries are applied in order; the file is at least
//! as long as the head entry's `LastFileOffset` afterwards, and must already be as long as
//! its `FlushedFileOffset` (else writes the log relies on were lost).

use std::collections::{BTreeMap, HashMap};
use std::io;

use super::crc32c::crc32c_with_zeroed_field;
use super::error::VhdxError;
use super::{Guid, le_u32, le_u64};
use crate::image::source::ReadAt;

/// Logs are written and replayed in 4 KiB sectors.
pub const SECTOR: u64 = 4096;
const ENTRY_HEADER: usize = 64;
const DESCRIPTOR: usize = 32;
/// Largest log replayed. Hyper-V and qemu write 1 MiB logs; the search checks each 4 KiB
/// position of the log, so its cost grows with the square of the length.
pub const MAX_LOG_LENGTH: u64 = 4 << 20;

/// What one logged write does to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    Zero { offset: u64, length: u64 },
    Data { offset: u64, sector: Box<[u8]> },
}

/// One entry, checked on its own.
#[derive(Debug, Clone)]
struct Entry {
    position: u64,
    length: u64,
    tail: u64,
    sequence: u64,
    flushed_file_offset: u64,
    last_file_offset: u64,
    writes: Vec<Write>,
}

/// What replay found, for `inspect`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplaySummary {
    pub entries: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    pub zero_writes: u64,
    pub data_writes: u64,
    /// The file's length as replay leaves it.
    pub file_length: u64,
}

/// `len` bytes of the circular log from `pos`.
fn circular(log: &[u8], pos: u64, len: u64) -> Vec<u8> {
    let size = log.len() as u64;
    (0..len).map(|i| log[((pos + i) % size) as usize]).collect()
}

/// Parses the entry at `pos`, or None if it is not a valid entry of this log.
fn parse_entry(log: &[u8], pos: u64, guid: Guid) -> Option<Entry> {
    let size = log.len() as u64;
    let head = circular(log, pos, ENTRY_HEADER as u64);
    let length = u64::from(le_u32(&head, 8));
    let tail = u64::from(le_u32(&head, 12));
    let count = u64::from(le_u32(&head, 24));
    let sane = &head[0..4] == b"loge"
        && Guid::from_le(&head, 32) == guid
        && length >= SECTOR
        && length.is_multiple_of(SECTOR)
        && length <= size
        && tail.is_multiple_of(SECTOR)
        && tail < size
        && count <= length / DESCRIPTOR as u64;
    if !sane {
        return None;
    }
    let entry = circular(log, pos, length);
    if le_u32(&entry, 4) != crc32c_with_zeroed_field(&entry, 4) {
        return None;
    }
    let sequence = le_u64(&entry, 16);
    let desc_sectors = (ENTRY_HEADER as u64 + count * DESCRIPTOR as u64).div_ceil(SECTOR);
    let mut data_at = desc_sectors * SECTOR;
    let mut writes = Vec::with_capacity(count as usize);
    for i in 0..count as usize {
        let d = &entry[ENTRY_HEADER + i * DESCRIPTOR..][..DESCRIPTOR];
        let offset = le_u64(d, 16);
        if le_u64(d, 24) != sequence || !offset.is_multiple_of(SECTOR) {
            return None;
        }
        match &d[0..4] {
            b"zero" => {
                let length = le_u64(d, 8);
                if !length.is_multiple_of(SECTOR) {
                    return None;
                }
                writes.push(Write::Zero { offset, length });
            }
            b"desc" => {
                let s = entry.get(data_at as usize..(data_at + SECTOR) as usize)?;
                let high = u64::from(le_u32(s, 4));
                let low = u64::from(le_u32(s, 4092));
                if &s[0..4] != b"data" || (high << 32 | low) != sequence {
                    return None;
                }
                let mut sector = vec![0u8; SECTOR as usize];
                sector[0..8].copy_from_slice(&d[8..16]); // leading bytes
                sector[8..4092].copy_from_slice(&s[8..4092]);
                sector[4092..].copy_from_slice(&d[4..8]); // trailing bytes
                writes.push(Write::Data {
                    offset,
                    sector: sector.into_boxed_slice(),
                });
                data_at += SECTOR;
            }
            _ => return None,
        }
    }
    (data_at == length && sequence > 0).then_some(Entry {
        position: pos,
        length,
        tail,
        sequence,
        flushed_file_offset: le_u64(&entry, 48),
        last_file_offset: le_u64(&entry, 56),
        writes,
    })
}

/// The active sequence, tail first (see the module note), or None.
fn active_sequence(log: &[u8], guid: Guid) -> Option<Vec<Entry>> {
    let size = log.len() as u64;
    let mut entries: HashMap<u64, Entry> = (0..size / SECTOR)
        .filter_map(|i| parse_entry(log, i * SECTOR, guid))
        .map(|e| (e.position, e))
        .collect();
    let mut heads: Vec<(u64, u64)> = entries.values().map(|e| (e.sequence, e.position)).collect();
    heads.sort_unstable_by_key(|&(sequence, _)| std::cmp::Reverse(sequence));
    // Positions only while searching: each walk is bounded by the log's size, and only
    // the winning chain's entries (with their data sectors) are taken out of the map.
    let chain = heads.into_iter().find_map(|(_, head_at)| {
        let head = entries.get(&head_at)?;
        let mut at = entries.get(&head.tail)?;
        let mut chain = vec![at.position];
        let mut walked = at.length;
        while at.position != head_at {
            let next = entries.get(&((at.position + at.length) % size))?;
            walked += next.length;
            if next.sequence != at.sequence.checked_add(1)? || walked > size {
                return None;
            }
            chain.push(next.position);
            at = next;
        }
        Some(chain)
    })?;
    chain.iter().map(|p| entries.remove(p)).collect()
}

/// Finds and checks the active sequence of `log` (the log region's bytes, read at
/// `log_at`) for a file of `file_len` bytes, and returns the writes to lay over it.
pub fn replay(
    log: &[u8],
    log_at: u64,
    guid: Guid,
    file_len: u64,
) -> Result<(Overlay, ReplaySummary), VhdxError> {
    let chain = active_sequence(log, guid).ok_or(VhdxError::LogCorrupt {
        offset: log_at,
        problem: "no complete sequence of valid entries carries the header's log GUID",
    })?;
    let head = chain.last().expect("a chain has a head");
    if head.flushed_file_offset > file_len {
        return Err(VhdxError::LogCorrupt {
            offset: log_at + head.position,
            problem: "the file is shorter than the log's flushed file offset: writes it relies on were lost",
        });
    }
    let mut overlay = Overlay::new(file_len.max(head.last_file_offset));
    let mut summary = ReplaySummary {
        entries: chain.len() as u64,
        first_sequence: chain[0].sequence,
        last_sequence: head.sequence,
        zero_writes: 0,
        data_writes: 0,
        file_length: overlay.len,
    };
    for w in chain.into_iter().flat_map(|e| e.writes) {
        match w {
            Write::Zero { offset, length } => {
                summary.zero_writes += 1;
                overlay.zero(offset, length)?;
            }
            Write::Data { offset, sector } => {
                summary.data_writes += 1;
                overlay.data(offset, sector)?;
            }
        }
    }
    summary.file_length = overlay.len;
    Ok((overlay, summary))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece {
    Zero,
    /// Bytes from `sectors[index]`, starting at `skip`.
    Data {
        index: usize,
        skip: u64,
    },
}

/// Replayed writes as disjoint intervals of the file: `start → (end, piece)`, the later
/// write winning where two overlap. Files grow to cover the last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    len: u64,
    intervals: BTreeMap<u64, (u64, Piece)>,
    sectors: Vec<Box<[u8]>>,
}

impl Overlay {
    fn new(len: u64) -> Self {
        Self {
            len,
            intervals: BTreeMap::new(),
            sectors: Vec::new(),
        }
    }

    /// The file's length with the log applied.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn zero(&mut self, offset: u64, length: u64) -> Result<(), VhdxError> {
        self.insert(offset, length, Piece::Zero)
    }

    fn data(&mut self, offset: u64, sector: Box<[u8]>) -> Result<(), VhdxError> {
        self.sectors.push(sector);
        let index = self.sectors.len() - 1;
        self.insert(offset, SECTOR, Piece::Data { index, skip: 0 })
    }

    fn insert(&mut self, start: u64, length: u64, piece: Piece) -> Result<(), VhdxError> {
        let end = start
            .checked_add(length)
            .filter(|&e| e <= super::metadata::MAX_VIRTUAL_SIZE * 2)
            .ok_or(VhdxError::LogCorrupt {
                offset: start,
                problem: "a logged write reaches past any possible file size",
            })?;
        if length == 0 {
            return Ok(());
        }
        // Cut every interval that overlaps [start, end) down to what lies outside it.
        let overlapping: Vec<u64> = self
            .intervals
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, _)| *s)
            .collect();
        for s in overlapping {
            let (e, p) = self.intervals.remove(&s).expect("listed");
            if s < start {
                self.intervals.insert(s, (start, p));
            }
            if e > end {
                let moved = match p {
                    Piece::Zero => Piece::Zero,
                    Piece::Data { index, skip } => Piece::Data {
                        index,
                        skip: skip + (end - s),
                    },
                };
                self.intervals.insert(end, (e, moved));
            }
        }
        self.intervals.insert(start, (end, piece));
        self.len = self.len.max(end);
        Ok(())
    }
}

/// A source with a replayed log laid over it.
#[derive(Debug)]
pub struct Replayed<'a, R: ?Sized> {
    pub inner: &'a R,
    pub overlay: &'a Overlay,
}

impl<R: ReadAt + ?Sized> ReadAt for Replayed<'_, R> {
    fn len(&self) -> u64 {
        self.overlay.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.overlay.len)
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        // The file's own bytes, then zeros where the log grew it.
        let inner_end = end.min(self.inner.len());
        if offset < inner_end {
            self.inner
                .read_exact_at(&mut buf[..(inner_end - offset) as usize], offset)?;
        }
        if inner_end < end {
            buf[(inner_end.max(offset) - offset) as usize..].fill(0);
        }
        let first = self
            .overlay
            .intervals
            .range(..=offset)
            .next_back()
            .map(|(s, _)| *s)
            .unwrap_or(offset);
        for (&s, &(e, piece)) in self.overlay.intervals.range(first..end) {
            let (a, z) = (s.max(offset), e.min(end));
            if a >= z {
                continue;
            }
            let out = &mut buf[(a - offset) as usize..(z - offset) as usize];
            match piece {
                Piece::Zero => out.fill(0),
                Piece::Data { index, skip } => {
                    let from = (skip + (a - s)) as usize;
                    out.copy_from_slice(&self.overlay.sectors[index][from..from + out.len()]);
                }
            }
        }
        Ok(())
    }
}
