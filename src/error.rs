//! The public error: a kind that maps to the documented exit code, and a message that
//! already carries the context (which file, which disk, which offset). Module errors
//! (`VhdError`, `SinkError`, ...) convert into it at the command layer, where the context
//! is known.

use std::fmt;

use crate::image::copy::CopyError;
use crate::image::sink::SinkError;
use crate::image::source::OpenError;
use crate::image::staging::StagingError;
use crate::image::vhd::VhdError;
use crate::image::vhdx::VhdxError;

/// What went wrong, as far as the exit code is concerned (see DESIGN.md, "exit").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 1: the work failed (I/O, network, Azure).
    Failed,
    /// 2: bad usage or configuration, found before any work.
    Usage,
    /// 3: some disks were done, others failed.
    Partial,
    /// 4: the input image is invalid or unsupported.
    BadImage,
    /// 130: interrupted by SIGINT/SIGTERM, after cleanup.
    Interrupted,
}

impl ErrorKind {
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Failed => 1,
            Self::Usage => 2,
            Self::Partial => 3,
            Self::BadImage => 4,
            Self::Interrupted => 130,
        }
    }
}

#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }

    pub fn usage(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Usage, message)
    }

    pub fn failed(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    pub fn interrupted() -> Self {
        Self::new(
            ErrorKind::Interrupted,
            "interrupted; partial output removed",
        )
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Prefixes the message with what was being worked on.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<VhdError> for Error {
    fn from(e: VhdError) -> Self {
        let kind = if e.is_bad_image() {
            ErrorKind::BadImage
        } else {
            ErrorKind::Failed
        };
        Self::new(kind, e)
    }
}

impl From<VhdxError> for Error {
    fn from(e: VhdxError) -> Self {
        let kind = if e.is_bad_image() {
            ErrorKind::BadImage
        } else {
            ErrorKind::Failed
        };
        Self::new(kind, e)
    }
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Vhd(e) => e.into(),
            OpenError::Vhdx(e) => e.into(),
        }
    }
}

impl From<StagingError> for Error {
    fn from(e: StagingError) -> Self {
        let kind = match e {
            StagingError::Exists { .. }
            | StagingError::Locked { .. }
            | StagingError::NoFileName { .. }
            | StagingError::IsDirectory { .. }
            | StagingError::BadDirectory { .. } => ErrorKind::Usage,
            StagingError::Io { .. } => ErrorKind::Failed,
        };
        Self::new(kind, e)
    }
}

impl From<SinkError> for Error {
    fn from(e: SinkError) -> Self {
        let kind = match e {
            SinkError::TooLarge { .. } => ErrorKind::BadImage,
            _ => ErrorKind::Failed,
        };
        Self::new(kind, e)
    }
}

impl From<CopyError> for Error {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Sink(s) => s.into(),
            CopyError::Stopped { .. } => Self::interrupted(),
            read @ CopyError::Read { .. } => Self::failed(read),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_contract() {
        let codes: Vec<u8> = [
            ErrorKind::Failed,
            ErrorKind::Usage,
            ErrorKind::Partial,
            ErrorKind::BadImage,
            ErrorKind::Interrupted,
        ]
        .iter()
        .map(|k| k.exit_code())
        .collect();
        assert_eq!(codes, vec![1, 2, 3, 4, 130]);
    }

    #[test]
    fn image_errors_are_exit_4_and_io_errors_exit_1() {
        assert_eq!(
            Error::from(VhdError::TooSmall { len: 1 }).kind(),
            ErrorKind::BadImage
        );
        let io = VhdError::Io {
            what: "footer",
            offset: 0,
            source: std::io::Error::other("disk gone"),
        };
        assert_eq!(Error::from(io).kind(), ErrorKind::Failed);
    }
}
