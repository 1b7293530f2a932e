//! Quantised weights × f32 activations: each block of weights is dequantised in registers and
//! multiplied with full-precision activations.
//!
//! Why: on AVX2 (no VNNI) an int8 dot needs sign tricks, `maddubs`, `madd` and a conversion per
//! block, about the same instruction count as four FMAs over f32 activations, so quantising the
//! activations buys little speed — and costs accuracy (routing decisions with small margins flip).
//! Decode is memory-bound either way. This path keeps activations in f32, so the fast mode's
//! logits stay within float rounding of the exact mode's.
//!
//! [`gemm`] computes `out[t][r] = W[r] · x[t]` for a block of rows and up to [`TOKEN_TILE`]
//! tokens at a time, reusing each dequantised block across the tokens.

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// Tokens sharing one pass over a weight block (accumulators kept in registers).
pub const TOKEN_TILE: usize = 8;

/// Whether [`gemm`] handles `ty`.
pub fn supports(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q8_0 | GgmlType::F16 | GgmlType::F32
    )
}

/// `out[t · n_rows + r] = row_r · x[t]` for `n_rows = rows.len() / row_bytes` rows and
/// `n_tok = x.len() / cols` tokens.
pub fn gemm(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &[f32],
    cols: usize,
    out: &mut [f32],
) -> Result<()> {
    if !supports(ty) {
        return Err(Error::UnsupportedType {
            ty,
            op: "f32-activation product",
        });
    }
    let bad = |what: String| Err(Error::BadLength { ty, what });
    if cols == 0
        || !x.len().is_multiple_of(cols)
        || Some(row_bytes as u64) != ty.row_bytes(cols as u64)
    {
        return bad(format!(
            "{} activations of width {cols} for rows of {row_bytes} bytes",
            x.len()
        ));
    }
    if row_bytes == 0 || !rows.len().is_multiple_of(row_bytes) {
        return bad(format!("{} bytes of rows of {row_bytes} bytes", rows.len()));
    }
    let (n_rows, n_tok) = (rows.len() / row_bytes, x.len() / cols);
    if out.len() != n_rows * n_tok {
        return bad(format!(
            "output of {} for {n_rows} rows x {n_tok} tokens",
            out.len()
        ));
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_level() >= crate::kernels::SimdLevel::Avx2 {
        x86::gemm(ty, rows, row_bytes, x, cols, out);
        return Ok(());
    }
    gemm_scalar(ty, rows, row_bytes, x, cols, out);
    Ok(())
}

/// The scalar reference of [`gemm`] (same contract, lengths already checked).
pub fn gemm_scalar(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &[f32],
    cols: usize,
    out: &mut [f32],
) {
    let n_rows = rows.len() / row_bytes;
    let mut w = vec![0f32; cols];
    for r in 0..n_rows {
        let row = &rows[r * row_bytes..(r + 1) * row_bytes];
        dequant(ty, row, &mut w);
        for (t, xt) in x.chunks_exact(cols).enumerate() {
            out[t * n_rows + r] = w.iter().zip(xt).map(|(a, b)| a * b).sum();
        }
    }
}

fn dequant(ty: GgmlType, row: &[u8], w: &mut [f32]) {
    let h = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        GgmlType::Q4_0 => {
            for (blk, o) in row.chunks_exact(18).zip(w.chunks_exact_mut(32)) {
                let d = h(blk);
                for i in 0..16 {
                    o[i] = d * ((blk[2 + i] & 15) as i32 - 8) as f32;
                    o[i + 16] = d * ((blk[2 + i] >> 4) as i32 - 8) as f32;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (blk, o) in row.chunks_exact(34).zip(w.chunks_exact_mut(32)) {
                let d = h(blk);
                for i in 0..32 {
                    o[i] = d * (blk[2 + i] as i8) as f32;
                }
            }
        }
        GgmlType::F16 => {
            for (b, o) in row.chunks_exact(2).zip(w.iter_mut()) {
                *o = h(b);
            }
        }
        _ => {
            for (b, o) in row.chunks_exact(4).zip(w.iter_mut()) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 + FMA + F16C implementation.
    use std::arch::x86_64::*;

    use super::TOKEN_TILE;
    use crate::quant::GgmlType;

    pub(super) fn gemm(
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        x: &[f32],
        cols: usize,
        out: &mut [f32],
    ) {
        assert!(
            row_bytes > 0 && rows.len().is_multiple_of(row_bytes) && x.len().is_multiple_of(cols)
        );
        assert!(cols.is_multiple_of(32) || matches!(ty, GgmlType::F16 | GgmlType::F32));
        assert_eq!(out.len(), rows.len() / row_bytes * (x.len() / cols));
        // SAFETY: the caller checked AVX2/FMA/F16C via `simd_level`; the asserts above give the
        // bounds every pointer offset below relies on.
        unsafe { gemm_avx2(ty, rows, row_bytes, x, cols, out) }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        // SAFETY: register-only intrinsics; AVX enabled by the caller's target features.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    /// Four ymm of dequantised weights for block `b` of `row`.
    #[inline(always)]
    unsafe fn load_block(ty: GgmlType, row: *const u8, b: usize) -> [__m256; 4] {
        // SAFETY: the caller guarantees block b lies within the row.
        unsafe {
            match ty {
                GgmlType::Q4_0 => {
                    let p = row.add(b * 18);
                    let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                        u16::from_le_bytes([*p, *p.add(1)]) as i32,
                    ))));
                    let qs = _mm_loadu_si128(p.add(2) as *const __m128i);
                    let m = _mm_set1_epi8(0x0F);
                    let eight = _mm_set1_epi8(8);
                    let lo = _mm_sub_epi8(_mm_and_si128(qs, m), eight);
                    let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(qs, 4), m), eight);
                    let cv =
                        |v: __m128i| _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)));
                    [
                        cv(lo),
                        cv(_mm_srli_si128(lo, 8)),
                        cv(hi),
                        cv(_mm_srli_si128(hi, 8)),
                    ]
                }
                GgmlType::Q8_0 => {
                    let p = row.add(b * 34);
                    let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                        u16::from_le_bytes([*p, *p.add(1)]) as i32,
                    ))));
                    let q0 = _mm_loadu_si128(p.add(2) as *const __m128i);
                    let q1 = _mm_loadu_si128(p.add(18) as *const __m128i);
                    let cv =
                        |v: __m128i| _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)));
                    [
                        cv(q0),
                        cv(_mm_srli_si128(q0, 8)),
                        cv(q1),
                        cv(_mm_srli_si128(q1, 8)),
                    ]
                }
                GgmlType::F16 => {
                    let p = row.add(b * 64) as *const __m128i;
                    [
                        _mm256_cvtph_ps(_mm_loadu_si128(p)),
                        _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
                        _mm256_cvtph_ps(_mm_loadu_si128(p.add(2))),
                        _mm256_cvtph_ps(_mm_loadu_si128(p.add(3))),
                    ]
                }
                _ => {
                    let p = row.add(b * 128) as *const f32;
                    [
                        _mm256_loadu_ps(p),
                        _mm256_loadu_ps(p.add(8)),
                        _mm256_loadu_ps(p.add(16)),
                        _mm256_loadu_ps(p.add(24)),
                    ]
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn gemm_avx2(
        ty: GgmlType,
        rows: &[u8],
        row_bytes: usize,
        x: &[f32],
        cols: usize,
        out: &mut [f32],
    ) {
        let n_rows = rows.len() / row_bytes;
        let n_tok = x.len() / cols;
        let nb = cols / 32;
        let tail = cols % 32; // only F16/F32 rows may have one
        for r in 0..n_rows {
            // SAFETY: r < n_rows, so the row lies within `rows`.
            let row = unsafe { rows.as_ptr().add(r * row_bytes) };
            let mut t0 = 0;
            while t0 < n_tok {
                let nt = (n_tok - t0).min(TOKEN_TILE);
                let mut acc = [_mm256_setzero_ps(); TOKEN_TILE];
                for b in 0..nb {
                    // SAFETY: b < nb blocks of this row; activations t0..t0+nt exist and have
                    // `cols` values, so offsets b*32 .. b*32+32 are in bounds.
                    unsafe {
                        let w = load_block(ty, row, b);
                        for (t, a) in acc.iter_mut().enumerate().take(nt) {
                            let xp = x.as_ptr().add((t0 + t) * cols + b * 32);
                            let mut s = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xp), *a);
                            s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xp.add(8)), s);
                            s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xp.add(16)), s);
                            *a = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xp.add(24)), s);
                        }
                    }
                }
                for (t, a) in acc.iter().enumerate().take(nt) {
                    // SAFETY: register reduction.
                    let mut v = unsafe { hsum(*a) };
                    for i in cols - tail..cols {
                        let w = match ty {
                            GgmlType::F16 => half::f16::from_le_bytes([
                                rows[r * row_bytes + 2 * i],
                                rows[r * row_bytes + 2 * i + 1],
                            ])
                            .to_f32(),
                            _ => {
                                let o = r * row_bytes + 4 * i;
                                f32::from_le_bytes([rows[o], rows[o + 1], rows[o + 2], rows[o + 3]])
                            }
                        };
                        v += w * x[(t0 + t) * cols + i];
                    }
                    out[(t0 + t) * n_rows + r] = v;
                }
                t0 += nt;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(s: &mut u64) -> f32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// SIMD vs scalar (different summation order), relative to the row's |w|·|x| mass.
    const REL_TOL: f32 = 1e-5;

    #[test]
    fn simd_matches_scalar_on_ragged_shapes() {
        let mut s = 5u64;
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F16, GgmlType::F32] {
            for (rows, cols, toks) in [
                (1usize, 32usize, 1usize),
                (3, 64, 2),
                (5, 96, 9),
                (17, 256, 17),
                (2, 40, 3),
            ] {
                if !cols.is_multiple_of(32) && !matches!(ty, GgmlType::F16 | GgmlType::F32) {
                    continue;
                }
                let rb = ty.row_bytes(cols as u64).unwrap() as usize;
                let mut w = vec![0u8; rows * rb];
                let mut vals = vec![0f32; cols];
                for r in 0..rows {
                    vals.iter_mut().for_each(|v| *v = rnd(&mut s));
                    crate::quant::quantize_row(ty, &vals, &mut w[r * rb..(r + 1) * rb]).unwrap();
                }
                let x: Vec<f32> = (0..toks * cols).map(|_| rnd(&mut s)).collect();
                let mut a = vec![0f32; rows * toks];
                let mut b = vec![0f32; rows * toks];
                gemm(ty, &w, rb, &x, cols, &mut a).unwrap();
                gemm_scalar(ty, &w, rb, &x, cols, &mut b);
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    let scale = cols as f32;
                    assert!(
                        (p - q).abs() <= REL_TOL * scale,
                        "{ty:?} {rows}x{cols}x{toks} [{i}]: {p} vs {q}"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_bad_lengths_and_types() {
        let w = vec![0u8; 18];
        let mut o = vec![0f32; 1];
        assert!(gemm(GgmlType::Q4_0, &w, 18, &[0.0; 31], 31, &mut o).is_err());
        assert!(gemm(GgmlType::Q4_0, &w, 18, &[0.0; 32], 32, &mut [0.0; 2]).is_err());
        assert!(gemm(GgmlType::Q4_K, &w, 18, &[0.0; 32], 32, &mut o).is_err());
        assert!(gemm(GgmlType::Q4_0, &w, 18, &[0.0; 32], 32, &mut o).is_ok());
    }
}
