//! The resume journal: a small JSON-lines file beside the temporary output that says which
//! chunks are durably in it.
//!
//! Line 1 is the [`JournalHeader`] — the blob's identity *without* its SAS (so a re-run
//! with a re-granted SAS still matches), its ETag and length, the chunk size, the output
//! format and a digest of the chunk list. Each further line lists chunks that a sink
//! checkpoint has made durable; it is appended and fsynced only *after* that checkpoint,
//! in batches (never one fsync per chunk). A crash can tear the last line: a line that
//! does not parse, or has no newline yet, ends the journal and everything before it still
//! counts; a resume cuts such a tail off before it appends, so the lines it adds are read
//! next time instead of being hidden behind the torn one.
//!
//! A re-run resumes only when the header matches exactly; otherwise it says why and
//! starts over.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use super::plan::{Chunk, ChunkKey};

const VERSION: u32 = 1;

/// What a journal is about; a resume needs all of it to match.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalHeader {
    pub version: u32,
    /// `scheme://host/container/blob`, never the SAS.
    pub blob: String,
    pub etag: String,
    pub blob_length: u64,
    pub virtual_size: u64,
    pub chunk_size: u64,
    pub format: String,
    pub chunks: usize,
    /// MD5 of the chunk list: same plan, same chunks.
    pub plan_digest: String,
}

impl JournalHeader {
    pub fn new(
        blob: String,
        etag: String,
        blob_length: u64,
        virtual_size: u64,
        chunk_size: u64,
        format: String,
        chunks: &[Chunk],
    ) -> Self {
        Self {
            version: VERSION,
            blob,
            etag,
            blob_length,
            virtual_size,
            chunk_size,
            format,
            chunks: chunks.len(),
            plan_digest: plan_digest(chunks),
        }
    }

    /// Why `self` (found on disk) cannot be resumed as `current`, or None if it can.
    pub fn mismatch(&self, current: &Self) -> Option<String> {
        let diff = |what: &str, a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| {
            Some(format!("{what} was {a}, now {b}"))
        };
        if self.version != current.version {
            return diff("journal version", &self.version, &current.version);
        }
        if self.blob != current.blob {
            return diff("blob", &self.blob, &current.blob);
        }
        if self.etag != current.etag {
            return diff("the blob's ETag (it changed)", &self.etag, &current.etag);
        }
        if self.blob_length != current.blob_length {
            return diff("blob length", &self.blob_length, &current.blob_length);
        }
        if self.format != current.format {
            return diff("output format", &self.format, &current.format);
        }
        if self.chunk_size != current.chunk_size {
            return diff("chunk size", &self.chunk_size, &current.chunk_size);
        }
        if self.virtual_size != current.virtual_size
            || self.chunks != current.chunks
            || self.plan_digest != current.plan_digest
        {
            return Some("the download plan differs".into());
        }
        None
    }
}

fn plan_digest(chunks: &[Chunk]) -> String {
    let mut h = Md5::new();
    for c in chunks {
        h.update(c.virtual_offset.get().to_le_bytes());
        h.update(c.source_offset.get().to_le_bytes());
        h.update(c.length.get().to_le_bytes());
    }
    crate::units::hex(&h.finalize())
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct DoneLine {
    /// `[virtual_offset, length]` of chunks made durable.
    done: Vec<ChunkKey>,
}

#[derive(Debug, thiserror::Error)]
#[error("resume journal {path}: {op}: {source}")]
pub struct JournalError {
    pub path: PathBuf,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

/// What an earlier run left.
#[derive(Debug)]
pub struct Loaded {
    pub header: JournalHeader,
    /// `(virtual_offset, length)` of chunks known durable.
    pub done: HashSet<ChunkKey>,
}

/// An open journal being appended to.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// The journal's name for a temporary output: `.NAME.azure2kvm-partial.journal`.
pub fn path_for(temp_output: &Path) -> PathBuf {
    let mut p = temp_output.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

impl Journal {
    /// Starts a new journal (replacing any old one) and makes its header durable.
    pub fn create(path: &Path, header: &JournalHeader) -> Result<Self, JournalError> {
        let err = |op| {
            move |source| JournalError {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        let mut file = File::create(path).map_err(err("create"))?;
        let mut line = serde_json::to_vec(header).expect("header serializes");
        line.push(b'\n');
        file.write_all(&line).map_err(err("write header"))?;
        file.sync_all().map_err(err("sync"))?;
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err("sync directory"))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Reopens an existing journal to append to it, first cutting off a torn last line
    /// (made durable before anything is appended).
    pub fn append_to(path: &Path) -> Result<Self, JournalError> {
        let err = |op| {
            move |source| JournalError {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err("open"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(err("read"))?;
        let keep = parse(&bytes).map_or(0, |p| p.valid_len);
        if keep < bytes.len() {
            tracing::debug!(
                "resume journal {}: cutting off a torn tail of {} bytes",
                path.display(),
                bytes.len() - keep
            );
            file.set_len(keep as u64).map_err(err("truncate"))?;
            file.sync_data().map_err(err("sync"))?;
        }
        file.seek(SeekFrom::Start(keep as u64))
            .map_err(err("seek"))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Reads a journal; `Ok(None)` when there is none or its header is unreadable.
    pub fn load(path: &Path) -> Result<Option<Loaded>, JournalError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError {
                    path: path.to_path_buf(),
                    op: "read",
                    source,
                });
            }
        };
        Ok(parse(&bytes).map(|p| p.loaded))
    }

    /// Appends chunks a checkpoint has just made durable, and syncs. Call after
    /// `ImageSink::checkpoint`, never before.
    pub fn record(&mut self, chunks: &[Chunk]) -> Result<(), JournalError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let line = DoneLine {
            done: chunks.iter().map(Chunk::key).collect(),
        };
        let mut bytes = serde_json::to_vec(&line).expect("line serializes");
        bytes.push(b'\n');
        let err = |op| {
            let path = self.path.clone();
            move |source| JournalError { path, op, source }
        };
        self.file.write_all(&bytes).map_err(err("append"))?;
        self.file.sync_data().map_err(err("sync"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct Parsed {
    loaded: Loaded,
    /// Bytes up to the end of the last good, newline-terminated line.
    valid_len: usize,
}

/// The header and every complete line up to the first torn one; None without a header.
fn parse(bytes: &[u8]) -> Option<Parsed> {
    let mut lines = complete_lines(bytes);
    let (header_line, mut valid_len) = lines.next()?;
    let header: JournalHeader = serde_json::from_slice(header_line).ok()?;
    let mut done = HashSet::new();
    for (line, end) in lines {
        let Ok(parsed) = serde_json::from_slice::<DoneLine>(line) else {
            break;
        };
        done.extend(parsed.done);
        valid_len = end;
    }
    Some(Parsed {
        loaded: Loaded { header, done },
        valid_len,
    })
}

/// Newline-terminated lines (without the newline) and the offset just past each; a last
/// line without its newline is torn by definition and not returned.
fn complete_lines(bytes: &[u8]) -> impl Iterator<Item = (&[u8], usize)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = bytes[at..].iter().position(|&b| b == b'\n')?;
        let line = &bytes[at..at + len];
        at += len + 1;
        Some((line, at))
    })
}

/// Removes a journal; a missing one is fine.
pub fn remove(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove resume journal {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::offset::{ByteLen, GuestOffset, SourceOffset};

    fn chunks() -> Vec<Chunk> {
        (0..4)
            .map(|i| Chunk {
                virtual_offset: GuestOffset(i * 100),
                source_offset: SourceOffset(i * 100),
                length: ByteLen(100),
            })
            .collect()
    }

    fn header() -> JournalHeader {
        JournalHeader::new(
            "http://127.0.0.1:1/a/c/b".into(),
            "\"0x1\"".into(),
            912,
            400,
            100,
            "raw".into(),
            &chunks(),
        )
    }

    #[test]
    fn records_survive_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let mut j = Journal::create(&p, &header()).unwrap();
        j.record(&chunks()[..2]).unwrap();
        drop(j);
        let mut j = Journal::append_to(&p).unwrap();
        j.record(&chunks()[3..]).unwrap();
        drop(j);
        // A crash in the middle of an append.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"done\":[[2").unwrap();
        let loaded = Journal::load(&p).unwrap().unwrap();
        assert_eq!(loaded.header, header());
        let mut done: Vec<_> = loaded
            .done
            .into_iter()
            .map(|(o, l)| (o.get(), l.get()))
            .collect();
        done.sort_unstable();
        assert_eq!(done, vec![(0, 100), (100, 100), (300, 100)]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_before_new_lines_are_appended() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let mut j = Journal::create(&p, &header()).unwrap();
        j.record(&chunks()[..1]).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"done\":[[1").unwrap();
        drop(f);
        // The resume after the crash appends what it makes durable.
        let mut j = Journal::append_to(&p).unwrap();
        j.record(&chunks()[2..3]).unwrap();
        j.record(&chunks()[3..]).unwrap();
        drop(j);
        let loaded = Journal::load(&p).unwrap().unwrap();
        let mut done: Vec<_> = loaded
            .done
            .into_iter()
            .map(|(o, l)| (o.get(), l.get()))
            .collect();
        done.sort_unstable();
        assert_eq!(done, vec![(0, 100), (200, 100), (300, 100)]);
        assert!(!fs::read_to_string(&p).unwrap().contains("[[1\n"));
        // A whole line that lost only its newline is torn too, and cut as well.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"done\":[[100,100]]}").unwrap();
        drop(f);
        assert_eq!(Journal::load(&p).unwrap().unwrap().done.len(), 3);
        let mut j = Journal::append_to(&p).unwrap();
        j.record(&chunks()[1..2]).unwrap();
        drop(j);
        assert_eq!(Journal::load(&p).unwrap().unwrap().done.len(), 4);
    }

    #[test]
    fn missing_or_garbage_journal_means_no_resume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        assert!(Journal::load(&p).unwrap().is_none());
        fs::write(&p, b"not json\n").unwrap();
        assert!(Journal::load(&p).unwrap().is_none());
    }

    #[test]
    fn mismatch_names_the_reason() {
        let a = header();
        assert_eq!(a.mismatch(&header()), None);
        let mut b = header();
        b.etag = "\"0x2\"".into();
        assert!(a.mismatch(&b).unwrap().contains("ETag"));
        let mut c = header();
        c.format = "qcow2".into();
        assert!(a.mismatch(&c).unwrap().contains("format"));
        let mut other = chunks();
        other[0].length = ByteLen(50);
        let d = JournalHeader::new(
            a.blob.clone(),
            a.etag.clone(),
            912,
            400,
            100,
            "raw".into(),
            &other,
        );
        assert!(a.mismatch(&d).unwrap().contains("plan"));
    }

    #[test]
    fn journal_never_holds_a_sas() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        let url = crate::azure::sas::SasUrl::parse(
            "https://a.blob.core.windows.net/c/b?sv=1&sig=SECRETSIG",
        )
        .unwrap();
        let h = JournalHeader::new(url.identity(), "e".into(), 1, 1, 1, "raw".into(), &[]);
        Journal::create(&p, &h).unwrap();
        assert!(!fs::read_to_string(&p).unwrap().contains("SECRETSIG"));
    }
}
