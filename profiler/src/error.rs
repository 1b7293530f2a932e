//! The profiler's error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading traces or writing artefacts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written, synced or renamed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A CSV file (or stream) was malformed.
    #[error("CSV error in {what}: {source}")]
    Csv {
        /// What was being read or written (a path or a description).
        what: String,
        /// The underlying error.
        #[source]
        source: csv::Error,
    },
    /// JSON serialisation or parsing failed.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// An `engine::routing` event lacked a field or had an unparsable one.
    #[error("malformed routing event (token {token:?}, layer {layer:?}): {reason}")]
    RoutingEvent {
        /// The event's `token` field, if it had one.
        token: Option<u64>,
        /// The event's `layer` field, if it had one.
        layer: Option<u64>,
        /// What was wrong.
        reason: String,
    },
    /// A latency histogram could not be built.
    #[error("histogram error: {0}")]
    Histogram(String),
}

/// The profiler's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
