//! Synthetic SmallThinker models at the real shapes (tiny, 4b-a0.6b, 21b-a3b) and prompt sets.

pub mod design;
pub mod rng;
