//! The type-generic matrix–vector entry: quantise an activation once ([`QuantAct`]), then dot
//! it with weight rows of any supported type ([`dot_row`], [`dot_rows`]).

use super::Kernels;
use super::packed::{BlockQ4_0x8, GEMM_TOKENS, Q8Blocks, Q8Facts, X8_ROWS};
use crate::error::{Error, Result};
use crate::quant::blocks::as_blocks;
use crate::quant::{BlockQ4_0, BlockQ8_0, BlockQ8_1, BlockQ8K, GgmlType, QK, QK_K};

/// The activation format a weight type's dot product needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActFormat {
    /// Plain f32 (for F32, F16 and BF16 weights).
    F32,
    /// Q8_0 blocks of 32 (for Q4_0, Q5_0, Q8_0).
    Q8_0,
    /// Q8_1 blocks of 32 with sums (for Q4_1, Q5_1).
    Q8_1,
    /// Q8_K super-blocks of 256 (for Q2_K … Q6_K).
    Q8K,
}

impl ActFormat {
    /// Elements per block of this format.
    pub fn block_elems(self) -> usize {
        match self {
            ActFormat::F32 => 1,
            ActFormat::Q8_0 | ActFormat::Q8_1 => QK,
            ActFormat::Q8K => QK_K,
        }
    }
}

/// The activation format that rows of `ty` are multiplied with.
///
/// # Errors
/// [`Error::UnsupportedType`] for weight types without a dot product.
pub fn act_format_for(ty: GgmlType) -> Result<ActFormat> {
    use GgmlType as T;
    Ok(match ty {
        T::F32 | T::F16 | T::BF16 => ActFormat::F32,
        T::Q4_0 | T::Q5_0 | T::Q8_0 => ActFormat::Q8_0,
        T::Q4_1 | T::Q5_1 => ActFormat::Q8_1,
        T::Q2_K | T::Q3_K | T::Q4_K | T::Q5_K | T::Q6_K => ActFormat::Q8K,
        _ => {
            return Err(Error::UnsupportedType {
                ty,
                op: "dot product",
            });
        }
    })
}

/// An activation vector prepared for dot products: always its f32 values, plus its quantised
/// form in one [`ActFormat`]. Buffers are reused: after the first call with a given length,
/// [`QuantAct::quantize`] does not allocate.
#[derive(Clone, Debug)]
pub struct QuantAct {
    fmt: ActFormat,
    f32: Vec<f32>,
    q8_0: Vec<BlockQ8_0>,
    /// Per-block facts of `q8_0` for the x8 kernels.
    q8_0_facts: Q8Facts,
    q8_1: Vec<BlockQ8_1>,
    q8k: Vec<BlockQ8K>,
}

impl Default for QuantAct {
    fn default() -> Self {
        Self::new()
    }
}

impl QuantAct {
    /// An empty activation (length 0, format F32).
    pub fn new() -> Self {
        QuantAct {
            fmt: ActFormat::F32,
            f32: Vec::new(),
            q8_0: Vec::new(),
            q8_0_facts: Q8Facts::default(),
            q8_1: Vec::new(),
            q8k: Vec::new(),
        }
    }

    /// An empty activation with room for `n` elements in every format.
    pub fn with_capacity(n: usize) -> Self {
        QuantAct {
            fmt: ActFormat::F32,
            f32: Vec::with_capacity(n),
            q8_0: Vec::with_capacity(n / QK),
            q8_0_facts: Q8Facts::default(),
            q8_1: Vec::with_capacity(n / QK),
            q8k: Vec::with_capacity(n / QK_K),
        }
    }

    /// Stores `x` and quantises it to `fmt` with the active kernels (bit-exact with ggml's
    /// reference quantisers).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `x.len()` is not a multiple of the format's block size.
    pub fn quantize(&mut self, x: &[f32], fmt: ActFormat) -> Result<()> {
        let be = fmt.block_elems();
        if !x.len().is_multiple_of(be) {
            return Err(Error::InvalidInput(format!(
                "activation of {} values cannot be quantised to {fmt:?} (blocks of {be})",
                x.len()
            )));
        }
        let k = Kernels::active();
        self.f32.clear();
        self.f32.extend_from_slice(x);
        self.fmt = fmt;
        let nb = x.len() / be;
        match fmt {
            ActFormat::F32 => {}
            ActFormat::Q8_0 => {
                self.q8_0.resize(nb, bytemuck::Zeroable::zeroed());
                (k.quantize_row_q8_0)(x, &mut self.q8_0);
                self.q8_0_facts.compute(&self.q8_0);
            }
            ActFormat::Q8_1 => {
                self.q8_1.resize(nb, bytemuck::Zeroable::zeroed());
                (k.quantize_row_q8_1)(x, &mut self.q8_1);
            }
            ActFormat::Q8K => {
                self.q8k.resize(nb, bytemuck::Zeroable::zeroed());
                (k.quantize_row_q8_k)(x, &mut self.q8k);
            }
        }
        Ok(())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.f32.len()
    }

    /// Whether the activation is empty.
    pub fn is_empty(&self) -> bool {
        self.f32.is_empty()
    }

    /// The quantised format of the last [`QuantAct::quantize`].
    pub fn format(&self) -> ActFormat {
        self.fmt
    }

    /// The f32 values.
    pub fn f32(&self) -> &[f32] {
        &self.f32
    }

    /// The Q8_0 blocks, if that is the current format.
    pub fn q8_0(&self) -> Option<&[BlockQ8_0]> {
        (self.fmt == ActFormat::Q8_0).then_some(&self.q8_0[..])
    }

    /// The Q8_1 blocks, if that is the current format.
    pub fn q8_1(&self) -> Option<&[BlockQ8_1]> {
        (self.fmt == ActFormat::Q8_1).then_some(&self.q8_1[..])
    }

    /// The Q8_K blocks, if that is the current format.
    pub fn q8k(&self) -> Option<&[BlockQ8K]> {
        (self.fmt == ActFormat::Q8K).then_some(&self.q8k[..])
    }

    fn need(&self, ty: GgmlType) -> Result<ActFormat> {
        let want = act_format_for(ty)?;
        if want != ActFormat::F32 && want != self.fmt {
            return Err(Error::InvalidInput(format!(
                "{ty:?} rows need a {want:?} activation, this one is {:?}",
                self.fmt
            )));
        }
        Ok(want)
    }
}

fn bad_len(ty: GgmlType, what: String) -> Error {
    Error::BadLength { ty, what }
}

/// One weight row (`w_row`: raw bytes of `act.len()` elements of `ty`) · the activation.
///
/// F32/F16/BF16 rows use the activation's f32 values; quantised rows need the activation in
/// [`act_format_for`]`(ty)`.
///
/// # Errors
/// [`Error::UnsupportedType`] for types without a dot product, [`Error::BadLength`] when the row
/// size does not match the activation, [`Error::InvalidInput`] for an activation in the wrong
/// format.
pub fn dot_row(ty: GgmlType, w_row: &[u8], act: &QuantAct) -> Result<f32> {
    act.need(ty)?;
    let want = ty.row_bytes(act.len() as u64);
    if want != Some(w_row.len() as u64) {
        return Err(bad_len(
            ty,
            format!(
                "row of {} bytes for an activation of {} values",
                w_row.len(),
                act.len()
            ),
        ));
    }
    Ok(dot_row_unchecked(Kernels::active(), ty, w_row, act))
}

/// `dot_row` after validation (lengths and format are known to match).
fn dot_row_unchecked(k: &Kernels, ty: GgmlType, w: &[u8], act: &QuantAct) -> f32 {
    use GgmlType as T;
    fn b<B: crate::quant::QuantBlock>(w: &[u8]) -> &[B] {
        as_blocks(w).expect("row length checked against the block size")
    }
    match ty {
        T::F32 => {
            if let Ok(wf) = bytemuck::try_cast_slice::<u8, f32>(w) {
                (k.dot_f32)(wf, &act.f32)
            } else {
                w.chunks_exact(4)
                    .zip(&act.f32)
                    .map(|(c, x)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * x)
                    .sum()
            }
        }
        T::F16 | T::BF16 => {
            let f = if ty == T::F16 {
                k.dot_f16_f32
            } else {
                k.dot_bf16_f32
            };
            if let Ok(wh) = bytemuck::try_cast_slice::<u8, u16>(w) {
                f(wh, &act.f32)
            } else {
                // Odd address: copy through a small aligned buffer.
                let mut sum = 0.0f32;
                let mut buf = [0u16; 256];
                for (c, x) in w.chunks(512).zip(act.f32.chunks(256)) {
                    let n = c.len() / 2;
                    for (o, p) in buf.iter_mut().zip(c.chunks_exact(2)) {
                        *o = u16::from_le_bytes([p[0], p[1]]);
                    }
                    sum += f(&buf[..n], x);
                }
                sum
            }
        }
        T::Q4_0 => (k.vec_dot_q4_0_q8_0)(b(w), &act.q8_0),
        T::Q5_0 => (k.vec_dot_q5_0_q8_0)(b(w), &act.q8_0),
        T::Q8_0 => (k.vec_dot_q8_0_q8_0)(b(w), &act.q8_0),
        T::Q4_1 => (k.vec_dot_q4_1_q8_1)(b(w), &act.q8_1),
        T::Q5_1 => (k.vec_dot_q5_1_q8_1)(b(w), &act.q8_1),
        T::Q2_K => (k.vec_dot_q2_k_q8_k)(b(w), &act.q8k),
        T::Q3_K => (k.vec_dot_q3_k_q8_k)(b(w), &act.q8k),
        T::Q4_K => (k.vec_dot_q4_k_q8_k)(b(w), &act.q8k),
        T::Q5_K => (k.vec_dot_q5_k_q8_k)(b(w), &act.q8k),
        T::Q6_K => (k.vec_dot_q6_k_q8_k)(b(w), &act.q8k),
        _ => unreachable!("act_format_for rejected {ty:?}"),
    }
}

/// `out[r] = dot_row(ty, rows[r·row_bytes..(r+1)·row_bytes], act)` for every row; Q4_0 and
/// Q8_0 go through the multi-row gemv kernels.
///
/// # Errors
/// As [`dot_row`], plus [`Error::BadLength`] when `rows.len() != out.len() · row_bytes`.
pub fn dot_rows(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    act: &QuantAct,
    out: &mut [f32],
) -> Result<()> {
    act.need(ty)?;
    let want = ty.row_bytes(act.len() as u64);
    if want != Some(row_bytes as u64) {
        return Err(bad_len(
            ty,
            format!(
                "rows of {row_bytes} bytes for an activation of {} values",
                act.len()
            ),
        ));
    }
    if Some(rows.len()) != out.len().checked_mul(row_bytes) {
        return Err(bad_len(
            ty,
            format!(
                "{} bytes for {} rows of {row_bytes} bytes",
                rows.len(),
                out.len()
            ),
        ));
    }
    let k = Kernels::active();
    match ty {
        GgmlType::Q4_0 => {
            (k.gemv_q4_0_q8_0)(as_blocks(rows).expect("length checked"), &act.q8_0, out)
        }
        GgmlType::Q8_0 => {
            (k.gemv_q8_0_q8_0)(as_blocks(rows).expect("length checked"), &act.q8_0, out)
        }
        _ if row_bytes == 0 => out.fill(0.0),
        _ => {
            for (o, r) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
                *o = dot_row_unchecked(k, ty, r, act);
            }
        }
    }
    Ok(())
}

/// `out[r] = row_r · hi + row_r · lo` for an activation quantised in two levels (`hi` and the
/// quantised residual `lo`, both in [`act_format_for`]`(ty)`). Q4_0 and Q8_0 rows go through
/// the fused kernels (one pass over the weights); other types take two passes per small group
/// of rows, so the second pass hits the cache.
///
/// # Errors
/// As [`dot_rows`]; both activations must have the same length and format.
pub fn dot_rows2(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    hi: &QuantAct,
    lo: &QuantAct,
    out: &mut [f32],
) -> Result<()> {
    /// Rows per group of the two-pass fallback.
    const SUB_ROWS: usize = 32;
    if hi.len() != lo.len() || hi.fmt != lo.fmt {
        return Err(Error::InvalidInput(format!(
            "two-level activation with levels of {} {:?} and {} {:?} values",
            hi.len(),
            hi.fmt,
            lo.len(),
            lo.fmt
        )));
    }
    let k = Kernels::active();
    match ty {
        GgmlType::Q4_0 | GgmlType::Q8_0 => {
            // Validates lengths and formats (zero rows: nothing to compute).
            dot_rows(ty, &[], row_bytes, hi, &mut [])?;
            if Some(rows.len()) != out.len().checked_mul(row_bytes) {
                return Err(bad_len(
                    ty,
                    format!(
                        "{} bytes for {} rows of {row_bytes} bytes",
                        rows.len(),
                        out.len()
                    ),
                ));
            }
            if ty == GgmlType::Q4_0 {
                (k.gemv2_q4_0_q8_0)(
                    as_blocks(rows).expect("length checked"),
                    &hi.q8_0,
                    &lo.q8_0,
                    out,
                );
            } else {
                (k.gemv2_q8_0_q8_0)(
                    as_blocks(rows).expect("length checked"),
                    &hi.q8_0,
                    &lo.q8_0,
                    out,
                );
            }
            Ok(())
        }
        _ => {
            if Some(rows.len()) != out.len().checked_mul(row_bytes) {
                return dot_rows(ty, rows, row_bytes, hi, out);
            }
            let mut l = [0f32; SUB_ROWS];
            for (i, o) in out.chunks_mut(SUB_ROWS).enumerate() {
                let r0 = i * SUB_ROWS;
                let w = &rows[r0 * row_bytes..(r0 + o.len()) * row_bytes];
                dot_rows(ty, w, row_bytes, hi, o)?;
                let l = &mut l[..o.len()];
                dot_rows(ty, w, row_bytes, lo, l)?;
                for (a, b) in o.iter_mut().zip(l.iter()) {
                    *a += *b;
                }
            }
            Ok(())
        }
    }
}

/// `out[r] = row_r · hi (+ row_r · lo)` over an x8-packed Q4_0 matrix ([`super::packed`]):
/// `out.len()` rows (a multiple of 8) of `hi.len()` elements, with a one- or two-level Q8_0
/// activation.
///
/// # Errors
/// [`Error::InvalidInput`] for activations not in Q8_0 or of different lengths,
/// [`Error::BadLength`] when the sizes do not match.
pub fn dot_rows_x8(
    w: &[BlockQ4_0x8],
    hi: &QuantAct,
    lo: Option<&QuantAct>,
    out: &mut [f32],
) -> Result<()> {
    hi.need(GgmlType::Q4_0)?;
    if let Some(lo) = lo
        && (lo.fmt != hi.fmt || lo.len() != hi.len())
    {
        return Err(Error::InvalidInput(format!(
            "two-level activation with levels of {} and {} values",
            hi.len(),
            lo.len()
        )));
    }
    let nb = hi.q8_0.len();
    if !out.len().is_multiple_of(X8_ROWS) || Some(w.len() * X8_ROWS) != out.len().checked_mul(nb) {
        return Err(bad_len(
            GgmlType::Q4_0,
            format!(
                "{} x8 blocks for {} rows of {nb} blocks",
                w.len(),
                out.len()
            ),
        ));
    }
    let k = Kernels::active();
    match lo {
        Some(lo) => (k.gemv2_q4_0x8_q8_0)(w, view(hi)?, view(lo)?, out),
        None => (k.gemv_q4_0x8_q8_0)(w, view(hi)?, out),
    }
    Ok(())
}

/// A Q8_0 activation with its per-block facts.
fn view(a: &QuantAct) -> Result<Q8Blocks<'_>> {
    a.q8_0_facts
        .view(&a.q8_0)
        .ok_or_else(|| Error::InvalidInput("activation facts out of date with its blocks".into()))
}

/// `out[t·rows + r] = row_r · (hi_t + lo_t)` over an x8-packed Q4_0 matrix for several
/// two-level activations `acts[t] = (hi_t, lo_t)` (`rows = out.len() / acts.len()`, a multiple
/// of 8): one pass over the weights per [`GEMM_TOKENS`] tokens. Each token's result is bit for
/// bit [`dot_rows_x8`]'s.
///
/// # Errors
/// As [`dot_rows_x8`], and [`Error::BadLength`] when `out` is not `acts.len()` equal parts.
pub fn dot_rows_x8_tokens(
    w: &[BlockQ4_0x8],
    acts: &[(&QuantAct, &QuantAct)],
    out: &mut [f32],
) -> Result<()> {
    let Some(&(first, _)) = acts.first() else {
        return Ok(());
    };
    let nb = first.q8_0.len();
    for &(hi, lo) in acts {
        hi.need(GgmlType::Q4_0)?;
        if lo.fmt != hi.fmt || lo.len() != first.len() || hi.len() != first.len() {
            return Err(Error::InvalidInput(format!(
                "batched two-level activations of {}, {} and {} values",
                first.len(),
                hi.len(),
                lo.len()
            )));
        }
    }
    let n = acts.len();
    let rows = out.len() / n;
    if rows * n != out.len()
        || !rows.is_multiple_of(X8_ROWS)
        || Some(w.len() * X8_ROWS) != rows.checked_mul(nb)
    {
        return Err(bad_len(
            GgmlType::Q4_0,
            format!(
                "{} x8 blocks for {n} tokens' {} outputs of {nb} blocks",
                w.len(),
                out.len()
            ),
        ));
    }
    let k = Kernels::active();
    for (c, o) in acts
        .chunks(GEMM_TOKENS)
        .zip(out.chunks_mut(GEMM_TOKENS * rows))
    {
        let v0 = (view(c[0].0)?, view(c[0].1)?);
        let mut views = [v0; GEMM_TOKENS];
        for (v, &(hi, lo)) in views.iter_mut().zip(c).skip(1) {
            *v = (view(hi)?, view(lo)?);
        }
        (k.gemm2_q4_0x8_q8_0)(w, &views[..c.len()], o);
    }
    Ok(())
}

/// `out[i] = row(idx[i]) · hi + row(idx[i]) · lo` for the rows `idx` of a matrix (`rows`:
/// whole rows of `row_bytes` bytes) and a two-level activation. Q4_0 and Q8_0 go through the
/// gathering kernels (four rows at a time); other types row by row.
///
/// # Errors
/// As [`dot_rows2`], plus [`Error::InvalidInput`] for an index outside the matrix or
/// `idx.len() != out.len()`.
pub fn dot_rows_gather2(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    idx: &[u32],
    hi: &QuantAct,
    lo: &QuantAct,
    out: &mut [f32],
) -> Result<()> {
    // Validates types, formats and the row size.
    dot_rows2(ty, &[], row_bytes, hi, lo, &mut [])?;
    let n_rows = rows.len().checked_div(row_bytes).unwrap_or(0);
    if idx.len() != out.len() || idx.iter().any(|&i| i as usize >= n_rows) {
        return Err(Error::InvalidInput(format!(
            "gathering {} rows ({} outputs) of a {n_rows}-row matrix",
            idx.len(),
            out.len()
        )));
    }
    let rows = &rows[..n_rows * row_bytes];
    let k = Kernels::active();
    match ty {
        GgmlType::Q4_0 => (k.gather_gemv2_q4_0_q8_0)(
            as_blocks(rows).expect("whole rows"),
            idx,
            &hi.q8_0,
            &lo.q8_0,
            out,
        ),
        GgmlType::Q8_0 => (k.gather_gemv2_q8_0_q8_0)(
            as_blocks(rows).expect("whole rows"),
            idx,
            &hi.q8_0,
            &lo.q8_0,
            out,
        ),
        _ => {
            for (o, &i) in out.iter_mut().zip(idx) {
                let r = i as usize * row_bytes;
                dot_rows2(
                    ty,
                    &rows[r..r + row_bytes],
                    row_bytes,
                    hi,
                    lo,
                    std::slice::from_mut(o),
                )?;
            }
        }
    }
    Ok(())
}

fn check_gemv(ty: GgmlType, rows: &[u8], row_bytes: usize, nb: usize, n_out: usize) -> Result<()> {
    if row_bytes != nb * ty.block_bytes() {
        return Err(bad_len(
            ty,
            format!("rows of {row_bytes} bytes for an activation of {nb} blocks"),
        ));
    }
    if Some(rows.len()) != n_out.checked_mul(row_bytes) {
        return Err(bad_len(
            ty,
            format!("{} bytes for {n_out} rows of {row_bytes} bytes", rows.len()),
        ));
    }
    Ok(())
}

/// Q4_0 matrix (`out.len()` rows of `row_bytes` raw bytes each) × Q8_0 vector, four rows at a
/// time.
///
/// # Errors
/// [`Error::BadLength`] unless `row_bytes == 18 · a.len()` and `rows.len() == out.len() ·
/// row_bytes`.
pub fn gemv_q4_0_q8_0(
    rows: &[u8],
    row_bytes: usize,
    a: &[BlockQ8_0],
    out: &mut [f32],
) -> Result<()> {
    check_gemv(GgmlType::Q4_0, rows, row_bytes, a.len(), out.len())?;
    let w: &[BlockQ4_0] = as_blocks(rows).expect("length checked");
    (Kernels::active().gemv_q4_0_q8_0)(w, a, out);
    Ok(())
}

/// Q8_0 matrix × Q8_0 vector (see [`gemv_q4_0_q8_0`]).
///
/// # Errors
/// [`Error::BadLength`] unless `row_bytes == 34 · a.len()` and `rows.len() == out.len() ·
/// row_bytes`.
pub fn gemv_q8_0_q8_0(
    rows: &[u8],
    row_bytes: usize,
    a: &[BlockQ8_0],
    out: &mut [f32],
) -> Result<()> {
    check_gemv(GgmlType::Q8_0, rows, row_bytes, a.len(), out.len())?;
    let w: &[BlockQ8_0] = as_blocks(rows).expect("length checked");
    (Kernels::active().gemv_q8_0_q8_0)(w, a, out);
    Ok(())
}
