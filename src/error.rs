//! The service-level error and the one place that maps errors to ttrpc codes.
//!
//! Modules keep their own typed errors (runtime, stdio, mount, options); they
//! convert into [`Error`] here, and [`Error::to_status`] is the only code that
//! decides which gRPC code a caller sees. Messages follow containerd's
//! `errdefs` convention (`<detail>: not found`), which containerd strips back
//! to the detail when it decodes the code.

use containerd_shim_protos::ttrpc::{Code, Status};

/// An error returned by a Task RPC.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The container, process or resource does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// The id is already in use.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The request is not valid in the current state (coded as containerd does).
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// The request itself is malformed.
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    /// The RPC or feature is not provided by this shim.
    #[error("{0}: not implemented")]
    Unimplemented(String),
    /// A runtime or system failure; the message is kept verbatim.
    #[error("{0}")]
    Unknown(String),
}

impl Error {
    /// The gRPC code containerd sees for this error.
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Unknown(_) => Code::UNKNOWN,
        }
    }

    /// Encodes the error as a ttrpc status.
    pub fn to_status(&self) -> Status {
        crate::ttrpc::status(self.code(), self.to_string())
    }
}

/// An OS error worded as Go words it (`no such file or directory`, no
/// `(os error 2)`): containerd's clients see the Go shim's errors that way
/// and some match them (Docker turns "no such file or directory" and
/// "permission denied" into exit codes 127 and 126).
pub struct OsText<'a>(pub &'a std::io::Error);

impl std::fmt::Display for OsText<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.to_string();
        let text = match (self.0.raw_os_error(), text.rfind(" (os error ")) {
            (Some(_), Some(i)) => &text[..i],
            _ => &text,
        };
        let mut chars = text.chars();
        match chars.next() {
            Some(c) => write!(f, "{}{}", c.to_lowercase(), chars.as_str()),
            None => Ok(()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind;
        let text = OsText(&e).to_string();
        match e.kind() {
            ErrorKind::NotFound => Error::NotFound(text),
            ErrorKind::AlreadyExists => Error::AlreadyExists(text),
            _ => Error::Unknown(text),
        }
    }
}

impl From<crate::runtime::RuntimeError> for Error {
    fn from(e: crate::runtime::RuntimeError) -> Self {
        Error::Unknown(e.to_string())
    }
}

impl From<crate::stdio::StdioError> for Error {
    fn from(e: crate::stdio::StdioError) -> Self {
        match e {
            crate::stdio::StdioError::UnknownScheme(_) | crate::stdio::StdioError::BadUri(_) => {
                Error::InvalidArgument(e.to_string())
            }
            crate::stdio::StdioError::Io(..) => Error::Unknown(e.to_string()),
        }
    }
}

impl From<crate::options::OptionsError> for Error {
    fn from(e: crate::options::OptionsError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl From<crate::mount::MountError> for Error {
    fn from(e: crate::mount::MountError) -> Self {
        match e {
            crate::mount::MountError::Options { .. } => Error::InvalidArgument(e.to_string()),
            _ => Error::Unknown(e.to_string()),
        }
    }
}

/// Result of a Task RPC.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_follow_errdefs() {
        let e = Error::NotFound("container not created".into());
        assert_eq!(e.code(), Code::NOT_FOUND);
        assert_eq!(e.to_status().message, "container not created: not found");
        assert_eq!(Error::Unknown("x".into()).to_status().code(), Code::UNKNOWN);
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(Error::from(io).code(), Code::NOT_FOUND);
    }
}
