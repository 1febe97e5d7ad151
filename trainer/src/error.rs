//! The trainer's error type: every message names the file or setting at fault.

use std::path::{Path, PathBuf};

/// What went wrong.
#[derive(Debug)]
pub enum Error {
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A data or checkpoint file is malformed.
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Flags or configuration that cannot work.
    Config(String),
    /// candle refused an operation.
    Candle(candle_core::Error),
    /// The .smk writer refused the model.
    Format(smk_format::Error),
}

impl Error {
    /// A malformed-file error.
    pub fn data(path: &Path, message: impl Into<String>) -> Self {
        Self::Data {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Data { path, message } => write!(f, "{}: {message}", path.display()),
            Error::Config(m) => f.write_str(m),
            Error::Candle(e) => write!(f, "tensor error: {e}"),
            Error::Format(e) => write!(f, "model format: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e)
    }
}

impl From<smk_format::Error> for Error {
    fn from(e: smk_format::Error) -> Self {
        Error::Format(e)
    }
}

/// Result with the trainer's error.
pub type Result<T> = std::result::Result<T, Error>;
