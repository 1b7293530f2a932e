//! The crate's one error type: every variant names the file (and line) it came from.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading records or writing a report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSONL line is not a valid record.
    #[error("{path}:{line}: not a valid result record: {source}")]
    BadRecord {
        /// The results file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What serde_json found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A record carries a schema version this crate does not read.
    #[error(
        "{path}:{line}: record schema {found} is not supported (this reader knows schema {supported})"
    )]
    UnsupportedSchema {
        /// The results file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The schema number in the record.
        found: u32,
        /// The schema number this crate reads.
        supported: u32,
    },
    /// A profile file is not valid profile JSON.
    #[error("{path}: not valid profile data: {source}")]
    BadProfile {
        /// The profile file.
        path: PathBuf,
        /// What serde_json found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// Filling the HTML template failed (a bug in the template, not in the data).
    #[error("report template: {0}")]
    Template(#[from] minijinja::Error),
    /// The headless browser could not be run or reported problems.
    #[error("browser check: {0}")]
    Browser(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
