//! The engine's error type: every failure names what went wrong and where (path, tensor, key,
//! byte offset), so a user with a bad file can tell what is wrong with it.

use std::path::PathBuf;

use crate::quant::GgmlType;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A malformed GGUF file.
    #[error("GGUF: {0}")]
    Gguf(#[from] GgufError),

    /// A tensor type id that this engine does not know.
    #[error("tensor '{tensor}': unknown ggml type id {type_id}")]
    UnknownTensorType {
        /// Tensor name.
        tensor: String,
        /// The raw ggml type id found in the file.
        type_id: u32,
    },

    /// A known tensor type for which an operation is not implemented.
    #[error("tensor type {ty:?} is not supported for {op}")]
    UnsupportedType {
        /// The type.
        ty: GgmlType,
        /// What was attempted (e.g. "dequantisation", "quantisation").
        op: &'static str,
    },

    /// A row length that does not fit the type's block size, or buffers of the wrong size.
    #[error("{ty:?}: {what}")]
    BadLength {
        /// The type.
        ty: GgmlType,
        /// Human-readable description with the numbers involved.
        what: String,
    },

    /// A required metadata key is missing.
    #[error("missing metadata key '{0}'")]
    MissingKey(String),

    /// A metadata key has the wrong type or an invalid value.
    #[error("metadata key '{key}': {what}")]
    BadKey {
        /// The key.
        key: String,
        /// What is wrong.
        what: String,
    },

    /// A required tensor is missing from the file.
    #[error("missing tensor '{0}'")]
    MissingTensor(String),

    /// A tensor has the wrong shape for the model's hyperparameters.
    #[error("tensor '{tensor}': shape {found:?}, expected {expected:?}")]
    BadShape {
        /// Tensor name.
        tensor: String,
        /// Shape found (ggml order, fastest dimension first).
        found: Vec<u64>,
        /// Shape expected (ggml order).
        expected: Vec<u64>,
    },

    /// The model description is inconsistent or unsupported.
    #[error("model: {0}")]
    Model(String),

    /// A safetensors file could not be read.
    #[error("safetensors {path}: {what}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },

    /// `config.json` could not be read or is invalid.
    #[error("config {path}: {what}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },

    /// Invalid input from the caller (token ids out of range, bad sampler settings, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A tokenizer description (GGUF `tokenizer.ggml.*` metadata or `tokenizer.json`) is invalid or
    /// unsupported.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A chat template failed to compile or to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// A positioned read of a byte range of a file (an expert's weights) failed or came up short:
    /// the file was truncated, removed or became unreadable. Never returns partial data.
    #[error("{}: reading bytes {offset}..{end}{context}: {source}", path.display(), end = offset.saturating_add(*len))]
    ReadRange {
        /// The file.
        path: PathBuf,
        /// First byte of the range.
        offset: u64,
        /// Length of the range in bytes.
        len: u64,
        /// What the range holds, e.g. " (layer 3 expert 7 gate)"; may be empty.
        context: String,
        /// The underlying error (`UnexpectedEof` for a truncated file, `NotFound` for a removed
        /// one).
        #[source]
        source: std::io::Error,
    },

    /// A large buffer could not be allocated.
    #[error("cannot allocate {bytes} bytes for {what}")]
    OutOfMemory {
        /// Bytes requested.
        bytes: u64,
        /// What the buffer was for.
        what: &'static str,
    },

    /// The memory budget cannot hold what the model needs.
    #[error("memory budget {budget_bytes} B is too small: at least {min_bytes} B needed ({what})")]
    BudgetTooSmall {
        /// The budget asked for.
        budget_bytes: u64,
        /// The minimum that would work.
        min_bytes: u64,
        /// What the minimum consists of.
        what: String,
    },

    /// The memory budget's plan holds more than this process can: its cgroup's memory limit or
    /// the machine's memory.
    #[error(
        "memory budget {budget_bytes} B cannot be held: its plan holds {planned_bytes} B, and {limit}; pass a smaller --memory-budget"
    )]
    BudgetTooLarge {
        /// The budget asked for.
        budget_bytes: u64,
        /// What its plan holds (the budget less what it leaves unused).
        planned_bytes: u64,
        /// The ceiling, in words (e.g. "this process's cgroup allows 4294967296 B").
        limit: String,
    },

    /// An error found while reading a named file (e.g. a GGUF parse error), with its path.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What went wrong in it.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// The error without [`Error::InFile`] wrappers, for matching on the cause.
    pub fn inner(&self) -> &Error {
        match self {
            Error::InFile { source, .. } => source.inner(),
            e => e,
        }
    }
}

/// What is wrong with a GGUF file, with the byte offset where it was found.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file ends before a field could be read.
    #[error("truncated at offset {offset}: need {need} bytes for {what}, file has {len}")]
    Truncated {
        /// Offset of the field.
        offset: u64,
        /// Bytes needed.
        need: u64,
        /// What was being read.
        what: &'static str,
        /// File length.
        len: u64,
    },
    /// Anything else, with the offset of the offending field.
    #[error("at offset {offset}: {what}")]
    Invalid {
        /// Offset of the offending field.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}
