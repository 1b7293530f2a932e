//! SVG charts and one self-contained HTML report from benchmark result records.

pub mod charts;
pub mod error;
pub mod format;
pub mod profile;
pub mod record;
pub mod shape;
