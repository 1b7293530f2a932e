//! Matrix products of weights with activations: `out[t][r] = W[r] · x[t]` for a batch of tokens.
//!
//! `Exact` dequantises each weight row to f32 once and accumulates in f32 (the correctness
//! oracle). `Fast` quantises activations once per product and runs integer dot kernels, as
//! llama.cpp does.

use rayon::prelude::*;

use super::weights::{MatRef, Matrix};
use crate::error::Result;
use crate::kernels::{QuantAct, act_format_for, dot_rows, wf32};

/// How products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ComputeMode {
    /// Weights dequantised, f32 activations: matches the reference.
    Exact,
    /// Activations quantised like llama.cpp for speed.
    #[default]
    Fast,
}

/// Rows handled per parallel task in exact mode.
const ROWS_PER_TASK: usize = 16;

/// Smallest number of rows a fast-mode task gets (amortises scheduling).
const MIN_ROWS_PER_TASK: usize = 32;

/// Scratch for products, reused across calls (no allocation once warm).
#[derive(Default)]
pub struct LinearScratch {
    /// Transposition buffer for batches.
    pub tmp: Vec<f32>,
    /// Quantised activations, one per token.
    pub acts: Vec<QuantAct>,
}

/// `out[t · rows + r] = m.row(r) · x[t · cols ..]` for `n_tokens` tokens.
///
/// `scratch` is kept by the caller between calls (no allocation once warm).
pub fn matmul(
    m: &Matrix,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    mode: ComputeMode,
    scratch: &mut LinearScratch,
) -> Result<()> {
    matmul_ref(m.view(), x, n_tokens, out, mode, scratch)
}

/// [`matmul`] on a borrowed matrix (e.g. an expert in a cache slot).
pub fn matmul_ref(
    m: MatRef<'_>,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
    mode: ComputeMode,
    scratch: &mut LinearScratch,
) -> Result<()> {
    let (rows, cols) = (m.rows, m.cols);
    debug_assert_eq!(x.len(), n_tokens * cols);
    debug_assert_eq!(out.len(), n_tokens * rows);
    if mode == ComputeMode::Fast && wf32::supports(m.ty) {
        return matmul_f32act(m, x, n_tokens, out, &mut scratch.tmp);
    }
    if mode == ComputeMode::Fast {
        if scratch.acts.len() < n_tokens {
            scratch.acts.resize_with(n_tokens, QuantAct::new);
        }
        let fmt = act_format_for(m.ty)?;
        for (t, act) in scratch.acts[..n_tokens].iter_mut().enumerate() {
            act.quantize(&x[t * cols..(t + 1) * cols], fmt)?;
        }
        return matmul_quantised(m, &scratch.acts[..n_tokens], out, &mut scratch.tmp);
    }
    let tmp = &mut scratch.tmp;
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

/// Rows per task so that every thread gets a few tasks.
pub fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 4).max(MIN_ROWS_PER_TASK)
}

/// Fast product with f32 activations (weights dequantised in registers, see [`wf32`]).
pub fn matmul_f32act(
    m: MatRef<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    tmp: &mut Vec<f32>,
) -> Result<()> {
    let (rows, cols) = (m.rows, m.cols);
    let rb = m.row_bytes();
    let bytes = m.bytes();
    let chunk = rows_per_task(rows);
    if n == 1 {
        return out
            .par_chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(task, o)| {
                let r0 = task * chunk;
                wf32::gemm(m.ty, &bytes[r0 * rb..(r0 + o.len()) * rb], rb, x, cols, o)
            });
    }
    tmp.clear();
    tmp.resize(rows * n, 0.0);
    tmp.par_chunks_mut(chunk * n)
        .enumerate()
        .try_for_each(|(task, dst)| {
            let r0 = task * chunk;
            let nr = dst.len() / n;
            wf32::gemm(m.ty, &bytes[r0 * rb..(r0 + nr) * rb], rb, x, cols, dst)
        })?;
    for (task, src) in tmp.chunks(chunk * n).enumerate() {
        let r0 = task * chunk;
        let nr = src.len() / n;
        for t in 0..n {
            out[t * rows + r0..t * rows + r0 + nr].copy_from_slice(&src[t * nr..(t + 1) * nr]);
        }
    }
    Ok(())
}

/// `out[t · rows + r] = m.row(r) · acts[t]` with activations already quantised for `m.ty`.
pub fn matmul_quantised(
    m: MatRef<'_>,
    acts: &[QuantAct],
    out: &mut [f32],
    tmp: &mut Vec<f32>,
) -> Result<()> {
    let (rows, n) = (m.rows, acts.len());
    let rb = m.row_bytes();
    let bytes = m.bytes();
    let chunk = rows_per_task(rows);
    if n == 1 {
        return out
            .par_chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(task, o)| {
                let r0 = task * chunk;
                dot_rows(m.ty, &bytes[r0 * rb..(r0 + o.len()) * rb], rb, &acts[0], o)
            });
    }
    // Row chunks outermost so a chunk of weights is reused from cache by every token.
    tmp.clear();
    tmp.resize(rows * n, 0.0);
    tmp.par_chunks_mut(chunk * n)
        .enumerate()
        .try_for_each(|(task, dst)| -> Result<()> {
            let r0 = task * chunk;
            let nr = dst.len() / n;
            let w = &bytes[r0 * rb..(r0 + nr) * rb];
            for (t, act) in acts.iter().enumerate() {
                dot_rows(m.ty, w, rb, act, &mut dst[t * nr..(t + 1) * nr])?;
            }
            Ok(())
        })?;
    // tmp holds, per task, [token][row-in-chunk]; scatter into [token][row].
    for (task, src) in tmp.chunks(chunk * n).enumerate() {
        let r0 = task * chunk;
        let nr = src.len() / n;
        for t in 0..n {
            out[t * rows + r0..t * rows + r0 + nr].copy_from_slice(&src[t * nr..(t + 1) * nr]);
        }
    }
    Ok(())
}

fn matvec_exact(m: MatRef<'_>, x: &[f32], out: &mut [f32]) -> Result<()> {
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
