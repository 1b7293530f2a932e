//! Matrix products of weights with activations: `out[t][r] = W[r] · x[t]` for a batch of tokens.
//!
//! `Exact` dequantises each weight row to f32 once and accumulates in f32 (the correctness
//! oracle). `Fast` quantises activations once per product and runs integer dot kernels, as
//! llama.cpp does.

use rayon::prelude::*;

use super::weights::{MatRef, Matrix};
use crate::error::Result;
use crate::kernels::packed::{BlockQ4_0x8, GEMM_TOKENS, X8_ROWS};
use crate::kernels::{
    ActFormat, QuantAct, act_format_for, dot_rows, dot_rows_gather2, dot_rows_x8, dot_rows2,
};
use crate::quant::GgmlType;

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
    pub acts: Vec<FastAct>,
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
    if mode == ComputeMode::Fast {
        prepare_tokens(&mut scratch.acts, m.ty, x, n_tokens)?;
        return matmul_fast(
            m,
            Acts::all(&scratch.acts[..n_tokens]),
            out,
            &mut scratch.tmp,
        );
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

/// Prepares `n_tokens` activations (`x`: `n_tokens` rows of equal length) for rows of type
/// `ty` into `acts[..n_tokens]`, the tokens in parallel when there are several.
pub fn prepare_tokens(
    acts: &mut Vec<FastAct>,
    ty: GgmlType,
    x: &[f32],
    n_tokens: usize,
) -> Result<()> {
    if acts.len() < n_tokens {
        acts.resize_with(n_tokens, FastAct::default);
    }
    let cols = x.len().checked_div(n_tokens).unwrap_or(0);
    if n_tokens == 1 {
        return acts[0].prepare(ty, x);
    }
    acts[..n_tokens]
        .par_iter_mut()
        .zip(x.par_chunks(cols.max(1)))
        .try_for_each(|(act, xt)| act.prepare(ty, xt))
}

/// The prepared activations a fast product reads: all of a slice, or the tokens `idx` of it
/// (an expert's gathered tokens), in that order.
#[derive(Clone, Copy, Debug)]
pub struct Acts<'a> {
    all: &'a [FastAct],
    idx: Option<&'a [usize]>,
}

impl<'a> Acts<'a> {
    /// Every activation of `all`.
    pub fn all(all: &'a [FastAct]) -> Self {
        Acts { all, idx: None }
    }

    /// The activations `all[idx[0]], all[idx[1]], …`.
    ///
    /// # Errors
    /// [`crate::error::Error::InvalidInput`] for an index outside `all`.
    pub fn gathered(all: &'a [FastAct], idx: &'a [usize]) -> Result<Self> {
        if let Some(&i) = idx.iter().find(|&&i| i >= all.len()) {
            return Err(crate::error::Error::InvalidInput(format!(
                "token {i} of a batch of {} prepared activations",
                all.len()
            )));
        }
        Ok(Acts {
            all,
            idx: Some(idx),
        })
    }

    /// How many activations.
    pub fn len(&self) -> usize {
        self.idx.map_or(self.all.len(), <[usize]>::len)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th activation.
    pub fn get(&self, i: usize) -> &'a FastAct {
        match self.idx {
            Some(idx) => &self.all[idx[i]],
            None => &self.all[i],
        }
    }
}

/// Rows per task so that every thread gets a few tasks.
pub fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 4).max(MIN_ROWS_PER_TASK)
}

/// An activation prepared for the fast products with one weight type.
///
/// Float weights (F32/F16/BF16) use the f32 activation directly. Quantised weights use integer
/// dot kernels over an int8 activation; for the Q8_0 family the activation is quantised in two
/// levels, `x ≈ d₁·q₁ + d₂·q₂` with `q₂` the quantised residual, and both dots are summed. That
/// costs a second integer dot per weight block (fused into the same pass over the weights for
/// Q4_0 and Q8_0, see [`dot_rows2`]), and brings the activation error
/// from ~2⁻⁸ of each block's range to ~2⁻¹⁶: routing decisions with small margins no longer
/// flip, while decode remains bound by weight bytes, not arithmetic.
#[derive(Clone, Debug, Default)]
pub struct FastAct {
    hi: QuantAct,
    lo: QuantAct,
    two_level: bool,
    residual: Vec<f32>,
}

impl FastAct {
    /// Prepares `x` for rows of type `ty`.
    pub fn prepare(&mut self, ty: GgmlType, x: &[f32]) -> Result<()> {
        let fmt = act_format_for(ty)?;
        self.hi.quantize(x, fmt)?;
        self.two_level = fmt == ActFormat::Q8_0;
        if self.two_level {
            let blocks = self.hi.q8_0().unwrap_or(&[]);
            self.residual.clear();
            for (xb, b) in x.chunks(32).zip(blocks) {
                let d = b.scale();
                self.residual
                    .extend(xb.iter().zip(&b.qs).map(|(&v, &q)| v - d * q as f32));
            }
            self.lo.quantize(&self.residual, ActFormat::Q8_0)?;
        }
        Ok(())
    }

    /// `out[i] = row(idx[i]) · x` for gathered rows of a matrix of type `ty` (`rows`: whole rows
    /// of `row_bytes`).
    pub fn dot_rows_gather(
        &self,
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        idx: &[u32],
        out: &mut [f32],
    ) -> Result<()> {
        if self.two_level {
            dot_rows_gather2(ty, rows, row_bytes, idx, &self.hi, &self.lo, out)
        } else {
            for (o, &i) in out.iter_mut().zip(idx) {
                let r = i as usize * row_bytes;
                let row = rows.get(r..r + row_bytes).ok_or_else(|| {
                    crate::error::Error::InvalidInput(format!("row {i} outside the matrix"))
                })?;
                dot_rows(ty, row, row_bytes, &self.hi, std::slice::from_mut(o))?;
            }
            Ok(())
        }
    }

    /// `out[r] = row_r · x` over x8-packed Q4_0 rows (`out.len()`, a multiple of 8).
    pub fn dot_rows_x8(&self, w: &[BlockQ4_0x8], out: &mut [f32]) -> Result<()> {
        dot_rows_x8(w, &self.hi, self.two_level.then_some(&self.lo), out)
    }

    /// `out[t·rows + r] = row_r · acts[t]` over x8-packed Q4_0 rows for several activations
    /// (`rows = out.len() / acts.len()`), two-level ones in one pass over the weights per
    /// [`GEMM_TOKENS`](crate::kernels::packed::GEMM_TOKENS) tokens; each token's result is
    /// [`FastAct::dot_rows_x8`]'s.
    pub fn dot_rows_x8_tokens(acts: Acts<'_>, w: &[BlockQ4_0x8], out: &mut [f32]) -> Result<()> {
        let n = acts.len();
        if n == 0 {
            return Ok(());
        }
        let rows = out.len() / n;
        if !(0..n).all(|t| acts.get(t).two_level) {
            for (t, o) in out.chunks_mut(rows.max(1)).take(n).enumerate() {
                acts.get(t).dot_rows_x8(w, o)?;
            }
            return Ok(());
        }
        let first = acts.get(0);
        let mut pairs = [(&first.hi, &first.lo); GEMM_TOKENS];
        for (c, o) in out.chunks_mut(GEMM_TOKENS * rows.max(1)).enumerate() {
            let t0 = c * GEMM_TOKENS;
            let k = GEMM_TOKENS.min(n - t0);
            for (j, p) in pairs.iter_mut().take(k).enumerate() {
                let a = acts.get(t0 + j);
                *p = (&a.hi, &a.lo);
            }
            crate::kernels::dot_rows_x8_tokens(w, &pairs[..k], o)?;
        }
        Ok(())
    }

    /// `out[r] = row_r · x` for `rows` of type `ty` (`out.len()` rows of `row_bytes`).
    pub fn dot_rows(
        &self,
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        out: &mut [f32],
    ) -> Result<()> {
        if self.two_level {
            dot_rows2(ty, rows, row_bytes, &self.hi, &self.lo, out)
        } else {
            dot_rows(ty, rows, row_bytes, &self.hi, out)
        }
    }
}

/// `out[t · rows + r] = m.row(r) · acts[t]` with activations prepared for `m.ty` (over the
/// x8-packed copy when there is one).
pub fn matmul_fast(
    m: MatRef<'_>,
    acts: Acts<'_>,
    out: &mut [f32],
    tmp: &mut Vec<f32>,
) -> Result<()> {
    let (rows, n) = (m.rows, acts.len());
    let chunk = fast_chunk(m);
    if n == 1 {
        return out
            .par_chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(task, o)| rows_fast(m, task * chunk, acts.get(0), o));
    }
    if rows <= chunk && m.packed.is_none() {
        // One chunk of rows (a router): the tokens are the parallel dimension.
        return out
            .par_chunks_mut(rows)
            .enumerate()
            .try_for_each(|(t, o)| rows_fast(m, 0, acts.get(t), o));
    }
    // Row chunks outermost so a chunk of weights is reused from cache by every token.
    tmp.clear();
    tmp.resize(rows * n, 0.0);
    tmp.par_chunks_mut(chunk * n)
        .enumerate()
        .try_for_each(|(task, dst)| -> Result<()> {
            let nr = dst.len() / n;
            if m.packed.is_some() {
                return FastAct::dot_rows_x8_tokens(acts, packed_rows(m, task * chunk, nr)?, dst);
            }
            for t in 0..n {
                rows_fast(m, task * chunk, acts.get(t), &mut dst[t * nr..(t + 1) * nr])?;
            }
            Ok(())
        })?;
    // Back to token-major, tokens in parallel.
    out.par_chunks_mut(rows).enumerate().for_each(|(t, o)| {
        for (task, src) in tmp.chunks(chunk * n).enumerate() {
            let (r0, nr) = (task * chunk, src.len() / n);
            o[r0..r0 + nr].copy_from_slice(&src[t * nr..(t + 1) * nr]);
        }
    });
    Ok(())
}

/// Rows `r0 .. r0 + out.len()` of `m` times one prepared activation: the x8-packed copy when
/// there is one (the range must then be in whole groups: a packed expert slot has no row-major
/// bytes to fall back on), else the row-major bytes.
pub(crate) fn rows_fast(m: MatRef<'_>, r0: usize, act: &FastAct, out: &mut [f32]) -> Result<()> {
    if m.packed.is_some() {
        return act.dot_rows_x8(packed_rows(m, r0, out.len())?, out);
    }
    let rb = m.row_bytes();
    act.dot_rows(m.ty, &m.bytes()[r0 * rb..(r0 + out.len()) * rb], rb, out)
}

/// Rows `r0 .. r0 + n` of `m`'s x8-packed copy (whole groups).
fn packed_rows(m: MatRef<'_>, r0: usize, n: usize) -> Result<&[BlockQ4_0x8]> {
    m.packed_rows(r0, n).ok_or_else(|| {
        crate::error::Error::Model(format!(
            "x8 rows {r0}+{n} outside whole groups of a {}-row matrix",
            m.rows
        ))
    })
}

/// Rows per task of a fast product of `m` (whole x8 groups when packed).
fn fast_chunk(m: MatRef<'_>) -> usize {
    let c = rows_per_task(m.rows);
    if m.packed.is_some() {
        c.next_multiple_of(X8_ROWS)
    } else {
        c
    }
}

/// Three products of the same input (the query, key and value projections). For one token in
/// fast mode with matrices of one type, the activation is prepared once and the three matrices'
/// row chunks go to the threads in one parallel dispatch (the key and value matrices are small:
/// alone, each would cost a dispatch for a few microseconds of work). For a batch in fast mode,
/// the activations are prepared once (in parallel) for the three products. Otherwise three
/// [`matmul`] calls.
pub fn matmul3(
    ms: [&Matrix; 3],
    x: &[f32],
    n_tokens: usize,
    outs: [&mut [f32]; 3],
    mode: ComputeMode,
    scratch: &mut LinearScratch,
) -> Result<()> {
    let ty = ms[0].ty;
    if mode != ComputeMode::Fast || ms.iter().any(|m| m.ty != ty) {
        for (m, o) in ms.into_iter().zip(outs) {
            matmul(m, x, n_tokens, o, mode, scratch)?;
        }
        return Ok(());
    }
    if n_tokens != 1 {
        // A batch: the activations are prepared once for the three products.
        prepare_tokens(&mut scratch.acts, ty, x, n_tokens)?;
        let acts = Acts::all(&scratch.acts[..n_tokens]);
        for (m, o) in ms.into_iter().zip(outs) {
            matmul_fast(m.view(), acts, o, &mut scratch.tmp)?;
        }
        return Ok(());
    }
    prepare_tokens(&mut scratch.acts, ty, x, 1)?;
    let act = &scratch.acts[0];
    let v = ms.map(Matrix::view);
    let c = v.map(fast_chunk);
    let [o0, o1, o2] = outs;
    o0.par_chunks_mut(c[0])
        .enumerate()
        .map(|(i, o)| (0usize, i, o))
        .chain(o1.par_chunks_mut(c[1]).enumerate().map(|(i, o)| (1, i, o)))
        .chain(o2.par_chunks_mut(c[2]).enumerate().map(|(i, o)| (2, i, o)))
        .try_for_each(|(k, i, o)| rows_fast(v[k], i * c[k], act, o))
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
