//! ggml tensor types: block layouts, row dequantisation and row quantisation.
//!
//! [`GgmlType`] knows every type id ggml defines (so the GGUF reader can size any tensor in a
//! file llama.cpp wrote); the compute paths support a subset and return
//! [`crate::Error::UnsupportedType`] for the rest.

mod types;

pub use types::GgmlType;
