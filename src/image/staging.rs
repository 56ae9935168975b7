//! Output files that appear only when complete.
//!
//! Work goes to a temporary file beside the final path (same directory, so the rename is
//! atomic on one filesystem) and is renamed over the final name only after the sink has
//! finished and synced. A [`StagedOutput`] that is dropped without [`StagedOutput::commit`]
//! removes its temporary file, so an error or panic leaves nothing behind. An existing
//! final file is refused unless overwriting was asked for.
//!
//! Without `--force` the final name is taken with `renameat2(RENAME_NOREPLACE)`, so a file
//! that another writer puts there between our existence check and the rename is never
//! replaced; the check before the work only makes the common mistake cheap.
//!
//! The temporary name is deterministic (`.NAME.azure2kvm-partial`) so a later run can find
//! the work of an interrupted one; an exclusive advisory lock on it keeps two processes
//! from writing the same output at once.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Errors preparing or committing an output path.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("output {path} already exists (use --force to overwrite it)")]
    Exists { path: PathBuf },
    #[error("output {path} is being written by another azure2kvm process (lock held on {temp})")]
    Locked { path: PathBuf, temp: PathBuf },
    #[error("output {path} has no file name")]
    NoFileName { path: PathBuf },
    #[error("output {path} is a directory; name the image file to write")]
    IsDirectory { path: PathBuf },
    #[error("cannot write output {path}: its directory {dir} {reason}")]
    BadDirectory {
        path: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl StagingError {
    /// True when the output path itself is the problem (exists, locked, not a file name,
    /// a bad directory): the caller asked for something that cannot be done as asked,
    /// not an I/O failure along the way.
    pub fn is_usage(&self) -> bool {
        !matches!(self, Self::Io { .. })
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StagingError + 'a {
    move |source| StagingError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether an existing output may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    Refuse,
    Allow,
}

/// A temporary output file that becomes `final_path` on commit, or disappears on drop.
#[derive(Debug)]
pub struct StagedOutput {
    final_path: PathBuf,
    temp_path: PathBuf,
    file: Option<File>,
    committed: bool,
}

/// The temporary name used for `final_path`.
pub fn temp_path_for(final_path: &Path) -> Result<PathBuf, StagingError> {
    let name = final_path
        .file_name()
        .ok_or_else(|| StagingError::NoFileName {
            path: final_path.to_path_buf(),
        })?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(".azure2kvm-partial");
    Ok(final_path.with_file_name(temp))
}

/// Refuses an output that could not be written or would replace something it should not:
/// a directory that is missing, not a directory or not writable; a final path that is a
/// directory; an existing file unless overwriting is allowed. Call before any work (and
/// before any download) so a mistake costs nothing.
pub fn check_output_free(final_path: &Path, overwrite: Overwrite) -> Result<(), StagingError> {
    let dir = match final_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let bad_dir = |reason: String| StagingError::BadDirectory {
        path: final_path.to_path_buf(),
        dir: dir.to_path_buf(),
        reason,
    };
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(bad_dir("does not exist".into()));
        }
        Err(e) => return Err(bad_dir(format!("cannot be read ({e})"))),
        Ok(m) if !m.is_dir() => return Err(bad_dir("is not a directory".into())),
        Ok(_) => {}
    }
    if let Err(e) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
        return Err(bad_dir(format!("is not writable ({e})")));
    }
    match fs::symlink_metadata(final_path) {
        Ok(m) if m.is_dir() => Err(StagingError::IsDirectory {
            path: final_path.to_path_buf(),
        }),
        Ok(_) if overwrite == Overwrite::Refuse => Err(StagingError::Exists {
            path: final_path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

impl StagedOutput {
    /// Creates (truncating any leftover of an interrupted run) and locks the temporary file.
    pub fn create(final_path: &Path, overwrite: Overwrite) -> Result<Self, StagingError> {
        let staged = Self::open_locked(final_path, overwrite)?;
        let file = staged.file.as_ref().expect("just opened");
        // Locked: any content is a dead run's leftover.
        file.set_len(0)
            .map_err(io_err("truncate", &staged.temp_path))?;
        Ok(staged)
    }

    /// Opens and locks the temporary file, keeping what an interrupted run left in it.
    /// The flag says whether there was anything (a non-empty file) to resume from.
    pub fn open_for_resume(
        final_path: &Path,
        overwrite: Overwrite,
    ) -> Result<(Self, bool), StagingError> {
        let staged = Self::open_locked(final_path, overwrite)?;
        let len = staged
            .file
            .as_ref()
            .expect("just opened")
            .metadata()
            .map_err(io_err("stat", &staged.temp_path))?
            .len();
        Ok((staged, len > 0))
    }

    /// Leaves the temporary file in place on purpose (a resumable download that failed),
    /// returning its path so the caller can say where it is.
    pub fn keep(mut self) -> PathBuf {
        self.committed = true;
        self.file = None;
        self.temp_path.clone()
    }

    fn open_locked(final_path: &Path, overwrite: Overwrite) -> Result<Self, StagingError> {
        check_output_free(final_path, overwrite)?;
        let temp_path = temp_path_for(final_path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&temp_path)
            .map_err(io_err("create", &temp_path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StagingError::Locked {
                    path: final_path.to_path_buf(),
                    temp: temp_path,
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &temp_path)(e)),
        }
        Ok(Self {
            final_path: final_path.to_path_buf(),
            temp_path,
            file: Some(file),
            committed: false,
        })
    }

    /// A handle to the temporary file for the sink (shares the lock's open file description).
    pub fn file(&self) -> Result<File, StagingError> {
        self.file
            .as_ref()
            .expect("file present until commit")
            .try_clone()
            .map_err(io_err("duplicate handle of", &self.temp_path))
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Renames the finished (already synced) temporary file to the final name and syncs
    /// the directory so the rename survives a power loss.
    pub fn commit(mut self, overwrite: Overwrite) -> Result<PathBuf, StagingError> {
        // Re-check: the final name may have appeared while we worked (a clear error now;
        // the no-replace move below closes the window that remains).
        check_output_free(&self.final_path, overwrite)?;
        move_into_place(&self.temp_path, &self.final_path, overwrite)?;
        self.committed = true;
        self.file = None;
        let dir = match self.final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory", &dir))?;
        Ok(self.final_path.clone())
    }
}

/// Renames `temp` to `final_path`. With [`Overwrite::Refuse`] an existing `final_path` is
/// never replaced, even one created an instant ago: the kernel checks and renames in one
/// step.
fn move_into_place(
    temp: &Path,
    final_path: &Path,
    overwrite: Overwrite,
) -> Result<(), StagingError> {
    if overwrite == Overwrite::Allow {
        return fs::rename(temp, final_path).map_err(io_err("rename to", final_path));
    }
    let cwd = rustix::fs::CWD;
    match rustix::fs::renameat_with(
        cwd,
        temp,
        cwd,
        final_path,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Err(StagingError::Exists {
            path: final_path.to_path_buf(),
        }),
        // EINVAL: the filesystem has no RENAME_NOREPLACE (NFS, some FUSE filesystems);
        // ENOSYS: a kernel or seccomp filter without renameat2.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            link_then_unlink(temp, final_path)
        }
        Err(e) => Err(io_err("rename to", final_path)(e.into())),
    }
}

/// The fallback for filesystems without RENAME_NOREPLACE: link(2) never replaces an
/// existing name (EEXIST), so taking the final name is just as atomic; the temporary name
/// is removed afterwards (if that fails, the output is complete and only a stray
/// temporary name is left).
fn link_then_unlink(temp: &Path, final_path: &Path) -> Result<(), StagingError> {
    match fs::hard_link(temp, final_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(StagingError::Exists {
                path: final_path.to_path_buf(),
            });
        }
        Err(e) => return Err(io_err("link to", final_path)(e)),
    }
    fs::remove_file(temp).map_err(io_err("remove", temp))
}

impl Drop for StagedOutput {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error that led here is the one worth reporting.
            let _ = fs::remove_file(&self.temp_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_renames_and_drop_removes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.raw");
        let staged = StagedOutput::create(&out, Overwrite::Refuse).unwrap();
        let temp = staged.temp_path().to_path_buf();
        staged.file().unwrap().write_all(b"hello").unwrap();
        assert!(temp.exists() && !out.exists());
        staged.commit(Overwrite::Refuse).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"hello");
        assert!(!temp.exists());

        let other = dir.path().join("other.raw");
        let staged = StagedOutput::create(&other, Overwrite::Refuse).unwrap();
        let temp = staged.temp_path().to_path_buf();
        drop(staged);
        assert!(!temp.exists() && !other.exists());
    }

    #[test]
    fn resume_keeps_leftover_and_create_truncates_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.raw");
        let staged = StagedOutput::create(&out, Overwrite::Refuse).unwrap();
        staged.file().unwrap().write_all(b"partial").unwrap();
        let temp = staged.keep();
        assert_eq!(fs::read(&temp).unwrap(), b"partial");

        let (staged, existing) = StagedOutput::open_for_resume(&out, Overwrite::Refuse).unwrap();
        assert!(existing);
        assert_eq!(fs::read(staged.temp_path()).unwrap(), b"partial");
        drop(staged);
        assert!(
            !temp.exists(),
            "a resumed output that is dropped is removed like any other"
        );

        let (staged, existing) = StagedOutput::open_for_resume(&out, Overwrite::Refuse).unwrap();
        assert!(!existing);
        drop(staged);
    }

    #[test]
    fn output_directory_must_exist_be_a_directory_and_writable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope").join("disk.raw");
        let e = check_output_free(&missing, Overwrite::Allow).unwrap_err();
        assert!(matches!(e, StagingError::BadDirectory { .. }), "{e}");
        assert!(e.to_string().contains("does not exist") && e.to_string().contains("nope"));

        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let e = check_output_free(&file.join("disk.raw"), Overwrite::Allow).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");

        let e = check_output_free(dir.path(), Overwrite::Allow).unwrap_err();
        assert!(matches!(e, StagingError::IsDirectory { .. }), "{e}");

        // A relative name lands in the current directory, which exists.
        check_output_free(Path::new("surely-not-here.raw"), Overwrite::Refuse).unwrap();
        check_output_free(&dir.path().join("disk.raw"), Overwrite::Refuse).unwrap();
    }

    #[test]
    fn read_only_output_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        let result = check_output_free(&ro.join("disk.raw"), Overwrite::Refuse);
        let can_write_anyway = fs::write(ro.join("probe"), b"").is_ok(); // root
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
        if can_write_anyway {
            assert!(result.is_ok(), "writable for this user: {result:?}");
        } else {
            let e = result.unwrap_err();
            assert!(e.to_string().contains("is not writable"), "{e}");
        }
    }

    #[test]
    fn refuses_existing_output_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.raw");
        fs::write(&out, b"keep").unwrap();
        assert!(matches!(
            StagedOutput::create(&out, Overwrite::Refuse),
            Err(StagingError::Exists { .. })
        ));
        let staged = StagedOutput::create(&out, Overwrite::Allow).unwrap();
        staged.file().unwrap().write_all(b"new").unwrap();
        staged.commit(Overwrite::Allow).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"new");
    }

    #[test]
    fn a_file_that_appears_after_the_check_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.raw");
        let temp = dir.path().join("work");
        fs::write(&temp, b"ours").unwrap();
        check_output_free(&out, Overwrite::Refuse).unwrap();
        // Another writer takes the name between the check and the rename.
        fs::write(&out, b"theirs").unwrap();
        let e = move_into_place(&temp, &out, Overwrite::Refuse).unwrap_err();
        assert!(matches!(e, StagingError::Exists { .. }), "{e}");
        assert_eq!(fs::read(&out).unwrap(), b"theirs");
        assert_eq!(fs::read(&temp).unwrap(), b"ours");
        // --force replaces it.
        move_into_place(&temp, &out, Overwrite::Allow).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"ours");
        assert!(!temp.exists());
    }

    #[test]
    fn the_link_fallback_never_replaces_either() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.raw");
        let temp = dir.path().join("work");
        fs::write(&temp, b"ours").unwrap();
        fs::write(&out, b"theirs").unwrap();
        let e = link_then_unlink(&temp, &out).unwrap_err();
        assert!(matches!(e, StagingError::Exists { .. }), "{e}");
        assert_eq!(fs::read(&out).unwrap(), b"theirs");
        fs::remove_file(&out).unwrap();
        link_then_unlink(&temp, &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"ours");
        assert!(!temp.exists());
    }

    #[test]
    fn second_writer_is_refused_while_first_holds_lock() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.qcow2");
        let _first = StagedOutput::create(&out, Overwrite::Refuse).unwrap();
        assert!(matches!(
            StagedOutput::create(&out, Overwrite::Refuse),
            Err(StagingError::Locked { .. })
        ));
    }
}
