//! File formats: GGUF (read and write), safetensors and Hugging Face `config.json`.

pub mod gguf;
pub mod mmap;
pub mod npy;
