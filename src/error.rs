//! The top-level error type and its mapping to exit codes.
//!
//! Invariant: configuration and environment problems (bad keys, limits too
//! small, malformed cgroup files) exit 2; anything else that stops sparkvisor
//! itself exits 1. The app's own failures are not errors here: `run` returns
//! the app's exit code.

use crate::cgroup::CgroupError;
use crate::config::ConfigError;
use crate::sizing::SizingError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read the container's limits: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("sizing: {0}")]
    Sizing(#[from] SizingError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Runtime(String),
    /// Bad command-line input (a path that is not a checkpoint, …): exit 2.
    #[error("{0}")]
    Usage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Cgroup(_) | Error::Sizing(_) => 2,
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
