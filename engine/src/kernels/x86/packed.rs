//! x8-packed Q4_0 × Q8_0 matrix–vector kernels (layout: [`crate::kernels::packed`]), one and two
//! activation levels, for AVX-512 VNNI (256-bit `vpdpbusd`) and AVX2 (`pmaddubsw`).
//!
//! Per block and group of eight rows: four 32-byte loads, a mask and a shift per load, eight
//! integer dot steps against broadcast activation bytes, then one conversion and one FMA. The
//! unsigned nibbles' offset (`q − 8`) is removed exactly by starting the integer sum at
//! `−8·Σa`, computed once per activation ([`Q8Blocks`]), as are the activation scales in f32.
//!
//! Every function is a safe `#[target_feature]` function, callable (as `unsafe`) only from the
//! wrappers in [`super`] after runtime detection. The only `unsafe` operations are unaligned
//! loads through references to fixed-size arrays.

use std::arch::x86_64::*;

use super::avx2::{load_u8x32, load_u16x8, prefetch};
use crate::kernels::packed::{BlockQ4_0x8, Q8Blocks, X8_ROWS};

/// Four activation bytes `k..k+4` broadcast to every i32 lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bcast4(q: &[i8; 32], k: usize) -> __m256i {
    _mm256_set1_epi32(i32::from_le_bytes([
        q[k] as u8,
        q[k + 1] as u8,
        q[k + 2] as u8,
        q[k + 3] as u8,
    ]))
}

macro_rules! x8_kernel {
    ($gemv:ident, $feat:literal, |$acc:ident, $x:ident, $q:ident| $body:block) => {
        /// One or two activation levels over an x8-packed Q4_0 matrix; `out.len() / 8` groups
        /// of `hi.len()` blocks. With `TWO = false`, `lo` is ignored; with `TWO`, the caller
        /// has checked that `lo` has `hi`'s length.
        #[inline]
        #[target_feature(enable = $feat)]
        fn $gemv<const TWO: bool>(
            w: &[BlockQ4_0x8],
            hi: Q8Blocks<'_>,
            lo: Q8Blocks<'_>,
            out: &mut [f32],
        ) {
            let nb = hi.len();
            out.fill(0.0);
            if nb == 0 || (TWO && lo.len() != nb) {
                return;
            }
            let bytes: &[u8] = bytemuck::cast_slice(w);
            let blk_bytes = std::mem::size_of::<BlockQ4_0x8>();
            let (hb, sh, fh) = (hi.blocks(), hi.neg8(), hi.scales());
            let (lb, sl, fl) = (lo.blocks(), lo.neg8(), lo.scales());
            for (g, o) in out.chunks_exact_mut(X8_ROWS).enumerate() {
                // One accumulator per level: two short FMA chains instead of one long one.
                let mut acc_h = _mm256_setzero_ps();
                let mut acc_l = _mm256_setzero_ps();
                for b in 0..nb {
                    let i = g * nb + b;
                    prefetch(bytes, (i + 4) * blk_bytes);
                    prefetch(bytes, (i + 4) * blk_bytes + 64);
                    prefetch(bytes, (i + 4) * blk_bytes + 128);
                    let blk = &w[i];
                    let (chunks, _) = blk.qs.as_chunks::<32>();
                    let m = _mm256_set1_epi8(0x0F);
                    let mut xs = [_mm256_setzero_si256(); 8];
                    for (c, ch) in chunks.iter().enumerate() {
                        let v = load_u8x32(ch);
                        xs[c] = _mm256_and_si256(v, m);
                        xs[c + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
                    }
                    let d = blk.d;
                    let dw = _mm256_cvtph_ps(load_u16x8(&d));
                    {
                        let $x = &xs;
                        let $q = &hb[b].qs;
                        let $acc = _mm256_set1_epi32(sh[b]);
                        let s = $body;
                        let da = _mm256_set1_ps(fh[b]);
                        acc_h =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, da), acc_h);
                    }
                    if TWO {
                        let $x = &xs;
                        let $q = &lb[b].qs;
                        let $acc = _mm256_set1_epi32(sl[b]);
                        let s = $body;
                        let da = _mm256_set1_ps(fl[b]);
                        acc_l =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, da), acc_l);
                    }
                }
                let acc = _mm256_add_ps(acc_h, acc_l);
                let mut part = [0f32; 8];
                // SAFETY: `part` is 8 writable f32; `storeu` has no alignment requirement.
                unsafe { _mm256_storeu_ps(part.as_mut_ptr(), acc) };
                for (x, p) in o.iter_mut().zip(part) {
                    *x += p;
                }
            }
        }
    };
}

// xs[c] (c < 4): weights 4c..4c+4 of the eight rows; xs[c + 4]: weights 16+4c..16+4c+4.
x8_kernel!(
    gemv_x8_vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    |acc, x, q| {
        // Four independent chains of two steps (the integer sum is exact in any order).
        let mut s = [
            acc,
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
        ];
        for c in 0..4 {
            s[c] = _mm256_dpbusd_epi32(s[c], x[c], bcast4(q, 4 * c));
            s[c] = _mm256_dpbusd_epi32(s[c], x[c + 4], bcast4(q, 16 + 4 * c));
        }
        _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3]))
    }
);

// Pair sums of at most 2·15·127 = 3810; eight of them stay below i16::MAX.
x8_kernel!(gemv_x8_avx2, "avx2,fma,f16c", |acc, x, q| {
    let mut s16 = _mm256_setzero_si256();
    for c in 0..4 {
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(x[c], bcast4(q, 4 * c)));
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(x[c + 4], bcast4(q, 16 + 4 * c)));
    }
    _mm256_add_epi32(acc, _mm256_madd_epi16(s16, _mm256_set1_epi16(1)))
});

/// x8 Q4_0 × Q8_0 (AVX-512 VNNI).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gemv_q4_0x8_q8_0_vnni(w: &[BlockQ4_0x8], a: Q8Blocks<'_>, out: &mut [f32]) {
    gemv_x8_vnni::<false>(w, a, a, out)
}

/// x8 Q4_0 × two-level Q8_0 (AVX-512 VNNI).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gemv2_q4_0x8_q8_0_vnni(
    w: &[BlockQ4_0x8],
    hi: Q8Blocks<'_>,
    lo: Q8Blocks<'_>,
    out: &mut [f32],
) {
    gemv_x8_vnni::<true>(w, hi, lo, out)
}

/// x8 Q4_0 × Q8_0 (AVX2).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gemv_q4_0x8_q8_0_avx2(w: &[BlockQ4_0x8], a: Q8Blocks<'_>, out: &mut [f32]) {
    gemv_x8_avx2::<false>(w, a, a, out)
}

/// x8 Q4_0 × two-level Q8_0 (AVX2).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gemv2_q4_0x8_q8_0_avx2(
    w: &[BlockQ4_0x8],
    hi: Q8Blocks<'_>,
    lo: Q8Blocks<'_>,
    out: &mut [f32],
) {
    gemv_x8_avx2::<true>(w, hi, lo, out)
}
