//! The datasets crate's error type.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while generating a model or a workload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An invalid preset, override or type.
    #[error("spec: {0}")]
    Spec(String),

    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An existing file at the output path that this generator did not write with the same
    /// settings (it is left alone unless `force` is set).
    #[error(
        "{path} exists and was not generated with these settings ({what}); use --force to replace it"
    )]
    Exists {
        /// The file.
        path: PathBuf,
        /// Why it does not match.
        what: String,
    },

    /// The embedded tokenizer could not be read.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// An error from the engine (GGUF encoding, quantisation, model loading, forward pass).
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

impl Error {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
