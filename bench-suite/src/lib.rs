//! Benchmarks: the llama-bench-style measurements behind `thinker bench`, result records,
//! machine facts, a memory-bandwidth probe for roofline ratios, and (with `xtask`) the scenario
//! runner. Criterion micro benchmarks live in `benches/`.

pub mod machine;
pub mod measure;
pub mod membw;
pub mod record;
pub mod synth;
