//! Row quantisation for the writer: Q4_0 and Q8_0 rewritten so the compiler vectorises them,
//! producing the same bytes as the engine's reference quantisers (ggml's
//! `quantize_row_*_ref`) for every finite input; every other type goes to the engine.
//!
//! The reference Q4_0 scans for the first element of largest magnitude with a data-dependent
//! branch; here the block's maximum and minimum decide, and only an exact tie between `+a` and
//! `−a` falls back to the scan. Q8_0 needs C `roundf` (half away from zero), done here as
//! truncation plus a correction, which maps to packed instructions instead of a libm call.

use engine::quant::{GgmlType, f32_to_f16};

use crate::error::Result;

/// Elements per Q4_0 / Q8_0 block.
const QK: usize = 32;

/// Quantises one row of `src` into `dst` (exactly the row's bytes).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { quantize_row_avx2(ty, src, dst) };
    }
    quantize_row_portable(ty, src, dst)
}

/// [`quantize_row`] compiled for AVX2 (same operations, same bytes), with an explicit kernel
/// for Q4_0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_row_avx2(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    if ty == GgmlType::Q4_0 && src.len().is_multiple_of(QK) && dst.len() == src.len() / QK * 18 {
        for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
            x86::q4_0_block(x.try_into().expect("32-element chunk"), y);
        }
        return Ok(());
    }
    quantize_row_portable(ty, src, dst)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The Q4_0 block quantiser in AVX2 intrinsics; same arithmetic as the portable code.

    use std::arch::x86_64::*;

    use super::{QK, f32_to_f16, signed_max};

    /// Quantises one block; `y` is the block's 18 bytes.
    #[target_feature(enable = "avx2")]
    pub(super) fn q4_0_block(x: &[f32; QK], y: &mut [u8]) {
        let p = x.as_ptr();
        // SAFETY: `x` holds 32 f32, so the four unaligned 8-lane loads stay in bounds.
        let (v0, v1, v2, v3) = unsafe {
            (
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            )
        };
        let zero = _mm256_setzero_ps();
        let hi8 = _mm256_max_ps(_mm256_max_ps(v0, v1), _mm256_max_ps(v2, v3));
        let lo8 = _mm256_min_ps(_mm256_min_ps(v0, v1), _mm256_min_ps(v2, v3));
        let hi = hmax(_mm256_max_ps(hi8, zero));
        let lo = hmin(_mm256_min_ps(lo8, zero));
        let max = signed_max(x, hi, lo);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let idv = _mm256_set1_ps(id);
        let half = _mm256_set1_ps(8.5);
        let fifteen = _mm256_set1_epi32(15);
        // x·id + 8.5 lies in [0.5, 16.5]: truncation to i32, then min 15.
        let q = |v: __m256| {
            _mm256_min_epi32(
                _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, idv), half)),
                fifteen,
            )
        };
        let (q0, q1, q2, q3) = (q(v0), q(v1), q(v2), q(v3));
        // Pack to bytes in element order (packs work per 128-bit lane; permute to fix).
        let w01 = _mm256_permute4x64_epi64(_mm256_packus_epi32(q0, q1), 0b11_01_10_00);
        let w23 = _mm256_permute4x64_epi64(_mm256_packus_epi32(q2, q3), 0b11_01_10_00);
        let b = _mm256_permute4x64_epi64(_mm256_packus_epi16(w01, w23), 0b11_01_10_00);
        let first = _mm256_castsi256_si128(b); // elements 0..16
        let second = _mm256_extracti128_si256(b, 1); // elements 16..32, each ≤ 15
        let packed = _mm_or_si128(first, _mm_slli_epi16(second, 4));
        let mut out = [0u8; 16];
        // SAFETY: `out` has 16 bytes, the size of one unaligned 128-bit store.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), packed) };
        y[2..18].copy_from_slice(&out);
    }

    #[target_feature(enable = "avx2")]
    fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
        _mm_cvtss_f32(m)
    }

    #[target_feature(enable = "avx2")]
    fn hmin(v: __m256) -> f32 {
        let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
        _mm_cvtss_f32(m)
    }
}

#[inline(always)]
fn quantize_row_portable(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    match ty {
        GgmlType::Q4_0 if src.len().is_multiple_of(QK) && dst.len() == src.len() / QK * 18 => {
            for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
                q4_0_block(x.try_into().expect("32-element chunk"), y);
            }
            Ok(())
        }
        GgmlType::Q8_0 if src.len().is_multiple_of(QK) && dst.len() == src.len() / QK * 34 => {
            for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
                q8_0_block(x.try_into().expect("32-element chunk"), y);
            }
            Ok(())
        }
        GgmlType::F32 if dst.len() == src.len() * 4 => {
            for (c, &x) in dst.chunks_exact_mut(4).zip(src) {
                c.copy_from_slice(&x.to_le_bytes());
            }
            Ok(())
        }
        _ => Ok(engine::quant::quantize_row(ty, src, dst)?),
    }
}

/// The reference's choice of scale element: the first element whose magnitude is strictly the
/// largest (`+0.0` for an all-zero block), given the block's `max(0, x)` and `min(0, x)`.
#[inline(always)]
fn signed_max(x: &[f32; QK], hi: f32, lo: f32) -> f32 {
    if -lo > hi {
        lo
    } else if hi > -lo {
        hi
    } else if hi == 0.0 {
        0.0
    } else {
        x.iter().copied().find(|v| v.abs() == hi).unwrap_or(0.0)
    }
}

#[inline(always)]
fn q4_0_block(x: &[f32; QK], y: &mut [u8]) {
    let mut hi = 0f32;
    let mut lo = 0f32;
    for &v in x {
        hi = if v > hi { v } else { hi };
        lo = if v < lo { v } else { lo };
    }
    let max = signed_max(x, hi, lo);
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let mut q = [0u8; QK];
    for (o, &v) in q.iter_mut().zip(x) {
        // x·id lies in [−8, 8], so x·id + 8.5 is in [0.5, 16.5]: truncation is a plain cast.
        *o = ((v * id + 8.5) as u8).min(15);
    }
    for j in 0..16 {
        y[2 + j] = q[j] | (q[16 + j] << 4);
    }
}

#[inline(always)]
fn q8_0_block(x: &[f32; QK], y: &mut [u8]) {
    let mut amax = 0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for (o, &v) in y[2..].iter_mut().zip(x) {
        let s = v * id;
        let t = s.trunc();
        // roundf: away from zero at exactly .5; |s| ≤ 127, so s − t is exact.
        let r = if (s - t).abs() >= 0.5 {
            t + if s < 0.0 { -1.0 } else { 1.0 }
        } else {
            t
        };
        *o = (r as i8) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Rng, fill_normal, key};

    fn cases() -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        for i in 0..200u64 {
            let mut v = vec![0f32; 256];
            fill_normal(key(9, &[i]), &mut v, 0.02 + i as f32 * 0.1);
            out.push(v);
        }
        let mut r = Rng::new(4);
        // Ties between +a and −a, zeros, halfway values, tiny and large values.
        let mut t = vec![0f32; 64];
        t[3] = -2.0;
        t[7] = 2.0;
        t[40] = 3.0;
        t[50] = -3.0;
        out.push(t);
        out.push(vec![0.0; 64]);
        out.push(vec![-0.0; 64]);
        out.push(
            (0..64)
                .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
                .collect(),
        );
        out.push((0..64).map(|i| (i as f32 - 32.0) * 0.5).collect());
        out.push((0..64).map(|i| (i as f32 - 32.0) * 127.0 / 32.0).collect());
        out.push((0..64).map(|_| (r.normal() * 1e-30) as f32).collect());
        out.push((0..64).map(|_| (r.normal() * 1e30) as f32).collect());
        out
    }

    #[test]
    fn fast_quantisers_match_the_engine_byte_for_byte() {
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::F32, GgmlType::F16] {
            for x in cases() {
                let n = ty.row_bytes(x.len() as u64).unwrap() as usize;
                let mut a = vec![0u8; n];
                let mut b = vec![0u8; n];
                quantize_row(ty, &x, &mut a).unwrap();
                let mut c = vec![0u8; n];
                quantize_row_portable(ty, &x, &mut c).unwrap();
                assert_eq!(a, c);
                engine::quant::quantize_row(ty, &x, &mut b).unwrap();
                assert_eq!(a, b, "{ty:?} {:?}", &x[..8]);
            }
        }
    }
}
