//! Engine integration tests, one binary: reference fixtures, formats, kernels, tokenizer.

mod common;
mod kernels;
mod model_ref;
mod quant;
