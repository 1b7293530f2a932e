//! GGUF v2/v3: a zero-copy reader over a [`crate::formats::mmap::Blob`] and a streaming writer.
