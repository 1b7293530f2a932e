//! Criterion micro benchmarks and the scenario runner that writes result records.
//!
//! Filled by the `[kernels]` and `[bench-report]` issues; empty for now.
