//! Engine integration tests, one binary: reference fixtures, formats, kernels, tokenizer.

mod common;
mod model_ref;
mod offload;
