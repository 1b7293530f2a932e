//! Engine integration tests, one binary: reference fixtures, formats, kernels, tokenizer.

mod common;
mod gguf;
mod kernels;
mod model_gguf;
mod model_ref;
mod offload;
mod offload_model;
mod quant;
mod tokenizer;
