//! SmallThinker inference engine.
//!
//! Loads SmallThinker mixture-of-experts models from GGUF (as llama.cpp writes them) or from a
//! Hugging Face directory (`config.json` + `model.safetensors`), and runs them on the CPU.
//!
//! Module map:
//! - [`formats`]: memory-mapped GGUF reader and streaming writer, safetensors, `config.json`.
//! - [`quant`]: ggml tensor types, block layouts, row quantisation and dequantisation.
//! - [`kernels`]: dot products and other hot loops; scalar reference plus SIMD variants chosen at
//!   run time.
//! - [`model`]: hyperparameters, weights, the forward pass, KV cache.
//! - [`tokenizer`]: Qwen2-family byte-level BPE (from GGUF metadata or `tokenizer.json`), streaming
//!   detokenisation and chat templates.
//! - [`offload`]: expert offloading: expert file reads, storage profiles, I/O threads, expert
//!   cache, memory budget, prefetcher.
//! - [`sampler`]: greedy / temperature / top-k / top-p / min-p / repetition penalty.
//!
//! The engine emits `tracing` spans (see `docs/spans.md`) and never installs a subscriber.
#![warn(missing_docs)]

pub mod error;
pub mod formats;
pub mod kernels;
pub mod kv_cache;
pub mod model;
pub mod moe;
pub mod offload;
pub mod quant;
pub mod sampler;
pub mod tokenizer;

pub use error::{Error, Result};
pub use model::{Model, ModelOptions};
