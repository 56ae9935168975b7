//! The public error: a kind that maps to the documented exit code, and a message that
//! already carries the context (which file, which disk, which offset). Module errors
//! (`VhdError`, `SinkError`, ...) convert into it at the command layer, where the context
//! is known.

use std::fmt;

use crate::azure::arm::ArmError;
use crate::azure::inventory::SelectionError;
use crate::azure::session::SignInError;
use crate::image::copy::CopyError;
use crate::image::sink::SinkError;
use crate::image::source::OpenError;
use crate::image::staging::StagingError;
use crate::image::vhd::VhdError;
use crate::image::vhdx::VhdxError;
use crate::transfer::job::DownloadError;

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
        let kind = if e.is_usage() {
            ErrorKind::Usage
        } else {
            ErrorKind::Failed
        };
        Self::new(kind, e)
    }
}

impl From<SinkError> for Error {
    fn from(e: SinkError) -> Self {
        let kind = if e.is_bad_image() {
            ErrorKind::BadImage
        } else {
            ErrorKind::Failed
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

impl From<ArmError> for Error {
    /// 401/403 and credential failures are configuration (exit 2); the rest failed work.
    fn from(e: ArmError) -> Self {
        if e.is_auth() {
            Self::usage(e)
        } else {
            Self::failed(e)
        }
    }
}

impl From<SelectionError> for Error {
    fn from(e: SelectionError) -> Self {
        Self::usage(e)
    }
}

impl From<SignInError> for Error {
    fn from(e: SignInError) -> Self {
        Self::usage(e)
    }
}

impl From<DownloadError> for Error {
    fn from(e: DownloadError) -> Self {
        let kind = match &e {
            DownloadError::Usage(_) => ErrorKind::Usage,
            DownloadError::BadImage(_) => ErrorKind::BadImage,
            DownloadError::Interrupted { .. } => ErrorKind::Interrupted,
            DownloadError::AccessDenied { .. }
            | DownloadError::BlobChanged(_)
            | DownloadError::Failed { .. } => ErrorKind::Failed,
        };
        Self::new(kind, e)
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

    /// Each layer's own error maps to the contract's exit code here, and only here.
    #[test]
    fn layer_errors_map_to_their_exit_codes() {
        use crate::azure::arm::error::parse_service_error;
        let service = |status| ArmError::Service {
            operation: "list VMs",
            resource: "subscription s".into(),
            error: parse_service_error(
                status,
                None,
                br#"{"error":{"code":"AuthorizationFailed","message":"no"}}"#,
            ),
        };
        assert_eq!(Error::from(service(403)).kind(), ErrorKind::Usage);
        assert_eq!(Error::from(service(401)).kind(), ErrorKind::Usage);
        assert_eq!(Error::from(service(404)).kind(), ErrorKind::Failed);
        assert_eq!(
            Error::from(SelectionError::MissingSubscription).kind(),
            ErrorKind::Usage
        );
        let download = |e| Error::from(e).kind();
        assert_eq!(download(DownloadError::Usage("x".into())), ErrorKind::Usage);
        assert_eq!(
            download(DownloadError::BadImage("x".into())),
            ErrorKind::BadImage
        );
        assert_eq!(
            download(DownloadError::Interrupted {
                message: "x".into(),
                kept: None
            }),
            ErrorKind::Interrupted
        );
        assert_eq!(
            download(DownloadError::BlobChanged("x".into())),
            ErrorKind::Failed
        );
    }
}
