//! SVG charts and one self-contained HTML report from benchmark result records.
//!
//! Filled by the `[bench-report]` issue; empty for now.
