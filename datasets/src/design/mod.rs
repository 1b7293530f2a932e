//! The weight-shaping design: which directions of the residual stream carry what, and the
//! calibrated constants that make the engine's own forward pass route and sparsify like a
//! trained model.

pub mod calibrate;
pub mod kernel;
pub mod stats;
