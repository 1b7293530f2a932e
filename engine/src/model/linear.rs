//! Matrix products of weights with activations: `out[t][r] = W[r] · x[t]` for a batch of tokens.
//!
//! `Exact` dequantises each weight row to f32 once and accumulates in f32 (the correctness
//! oracle). `Fast` quantises activations once per product and runs integer dot kernels, as
//! llama.cpp does.

use rayon::prelude::*;

use super::weights::Matrix;
use crate::error::Result;

/// How products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ComputeMode {
    /// Weights dequantised, f32 activations: matches the reference.
    Exact,
    /// Activations quantised like llama.cpp for speed.
    #[default]
    Fast,
}

/// Rows handled per parallel task.
const ROWS_PER_TASK: usize = 16;

/// `out[t · rows + r] = m.row(r) · x[t · cols ..]` for `n_tokens` tokens.
///
/// `tmp` is scratch the caller keeps between calls (no allocation once warm).
pub fn matmul(
    m: &Matrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    _mode: ComputeMode,
    tmp: &mut Vec<f32>,
) -> Result<()> {
    let (rows, cols) = (m.rows, m.cols);
    debug_assert_eq!(x.len(), n_tokens * cols);
    debug_assert_eq!(out.len(), n_tokens * rows);
    if n_tokens == 1 {
        return matvec_exact(m, x, out);
    }
    // Row-major over weights: dequantise a row once, use it for every token.
    tmp.clear();
    tmp.resize(rows * n_tokens, 0.0);
    tmp.par_chunks_mut(ROWS_PER_TASK * n_tokens)
        .enumerate()
        .try_for_each_init(
            || vec![0f32; cols],
            |row_buf, (task, chunk)| -> Result<()> {
                let r0 = task * ROWS_PER_TASK;
                for (i, dst) in chunk.chunks_mut(n_tokens).enumerate() {
                    crate::quant::dequantize_row(m.ty, m.row(r0 + i), row_buf)?;
                    for (t, d) in dst.iter_mut().enumerate() {
                        *d = dot(row_buf, &x[t * cols..(t + 1) * cols]);
                    }
                }
                Ok(())
            },
        )?;
    for t in 0..n_tokens {
        for r in 0..rows {
            out[t * rows + r] = tmp[r * n_tokens + t];
        }
    }
    Ok(())
}

fn matvec_exact(m: &Matrix, x: &[f32], out: &mut [f32]) -> Result<()> {
    let cols = m.cols;
    out.par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .try_for_each_init(
            || vec![0f32; cols],
            |row_buf, (task, chunk)| -> Result<()> {
                let r0 = task * ROWS_PER_TASK;
                for (i, d) in chunk.iter_mut().enumerate() {
                    crate::quant::dequantize_row(m.ty, m.row(r0 + i), row_buf)?;
                    *d = dot(row_buf, x);
                }
                Ok(())
            },
        )
}

/// f32 dot product with eight partial sums (vectorises; deterministic order).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    acc.iter().sum::<f32>() + s
}
