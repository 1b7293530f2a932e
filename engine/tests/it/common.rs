//! Shared helpers: fixture paths, npy loading, tolerant comparisons.

use std::path::PathBuf;

use engine::formats::npy;

/// `engine/tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// An f32 fixture array.
pub fn f32s(rel: &str) -> Vec<f32> {
    npy::read(&fixture(rel)).unwrap().to_f32().unwrap()
}

/// An i32 fixture array as token/expert ids.
pub fn ids(rel: &str) -> Vec<u32> {
    npy::read(&fixture(rel))
        .unwrap()
        .to_i32()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

/// Largest absolute difference; panics on length mismatch.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts `a` and `b` agree within `tol` (absolute), naming `what`.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max |diff| {d:e} exceeds {tol:e}");
}
