//! Engine integration tests, one binary: reference fixtures, formats, kernels, tokenizer.

mod gguf;
