//! Synthetic SmallThinker models at the real shapes (`tiny`, `4b-a0.6b`, `21b-a3b`) with
//! realistic routing and sparsity, and prompt sets for benchmarks.
//!
//! - [`spec`]: presets, overrides, output types and the per-tensor type recipe.
//! - [`design`]: how the weights are shaped so that the engine's own forward pass shows skewed,
//!   temporally local routing and sparse ReGLU activations (see [`design::plan`]).
//! - [`synth`]: the tensor table and a generator for any rows of any tensor.
//! - [`generate`]: streaming, parallel, atomic GGUF writing with reuse of matching files.
//! - [`tokenizer`]: the Qwen tokenizer as GGUF metadata.
//! - [`measure`]: popularity skew, reuse and zero share measured with the engine.
//! - [`prompts`]: an embedded corpus and seeded synthetic workloads.

pub mod design;
pub mod error;
pub mod generate;
pub mod measure;
pub mod prompts;
pub mod quant;
pub mod rng;
pub mod spec;
pub mod synth;
pub mod tokenizer;

pub use design::Targets;
pub use error::{Error, Result};
pub use generate::{GenOptions, GenReport, GenRequest, generate};
pub use spec::{ModelSpec, OutType, Overrides};
