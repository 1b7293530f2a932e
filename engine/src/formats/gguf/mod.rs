//! GGUF v2/v3: a zero-copy reader over a [`crate::formats::mmap::Blob`] and a streaming writer.
//!
//! Layout (little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 key/value count, the
//! key/value pairs, the tensor-info records, zero padding to `general.alignment` (default 32),
//! then the tensor data. Each tensor's offset is relative to the data section and aligned.
//!
//! The reader treats the file as hostile: every length is bounded by the bytes left before
//! anything is allocated, every multiplication is checked, and every problem is a typed
//! [`crate::Error`] (mostly [`crate::error::GgufError`], with the byte offset of the offending
//! field) rather than a panic. It is tolerant where llama.cpp is needlessly strict: tensor
//! offsets need only be aligned, in bounds and non-overlapping (not cumulative in file order),
//! and arrays of arrays are accepted up to [`MAX_ARRAY_DEPTH`] levels.
//!
//! The writer produces exactly the layout llama.cpp and gguf-py write (v3, tensors packed in
//! the given order, each padded to the alignment), so re-writing a parsed llama.cpp file from
//! its own metadata and tensors reproduces it byte for byte.

mod read;
mod value;
mod write;

pub use read::{GgufFile, TensorInfo};
pub use value::{Array, Value};
pub use write::{GgufLayout, GgufWriter, MAX_TENSOR_NAME_WRITE, TensorSpec, encode_header};

/// The four magic bytes at offset 0.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version the writer produces. The reader accepts 2 and 3.
pub const GGUF_VERSION: u32 = 3;
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`] (a u32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// The metadata key naming the model architecture.
pub const ARCHITECTURE_KEY: &str = "general.architecture";
/// Largest accepted alignment (anything larger is treated as a corrupt file).
pub const MAX_ALIGNMENT: u64 = 1 << 24;
/// Largest accepted tensor count.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Largest accepted key/value count.
pub const MAX_KV: u64 = 1 << 20;
/// Largest accepted string (key, value or tensor name), in bytes.
pub const MAX_STRING_LEN: u64 = 1 << 24;
/// Deepest accepted array nesting: 1 = an array of scalars or strings, 2 = an array of such
/// arrays, ... (llama.cpp accepts only 1; gguf-py writes nested arrays).
pub const MAX_ARRAY_DEPTH: usize = 4;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    Some(x.checked_add(align - 1)? & !(align - 1))
}
