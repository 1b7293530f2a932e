//! Row-major Q4_0 and Q8_0 × Q8_0 matrix–vector kernels with AVX-512 VNNI (256-bit `vpdpbusd`).
//!
//! Four rows share each activation block. `vpdpbusd` multiplies unsigned by signed bytes and
//! sums four products per i32 lane in one instruction (AVX2 needs `pmaddubsw` + `pmaddwd` and,
//! for signed weights, two sign fixes). The weights are made unsigned by an exact offset: Q4_0
//! nibbles are `q + 8` already, Q8_0 bytes get `+ 128` (`xor 0x80`); the offset's contribution
//! `off·Σa` is computed once per activation block (one more `vpdpbusd`, shared by the four rows)
//! and each row's integer sum starts from its negation.
//!
//! Every function is a safe `#[target_feature]` function, callable (as `unsafe`) only from the
//! wrappers in [`super`] after runtime detection.

use std::arch::x86_64::*;

use super::avx2::{f16, hsum_ps, load_i8x32, nibbles, prefetch, scales4};
use crate::quant::{BlockQ4_0, BlockQ8_0};

/// A row-major weight block these kernels read.
pub(super) trait Row: bytemuck::Pod {
    /// The unsigned offset of the stored bytes (`stored = q + OFF`).
    const OFF: u8;
    /// Block bytes.
    const BYTES: usize = std::mem::size_of::<Self>();
    /// Scale bits (f16).
    fn d(&self) -> u16;
    /// The 32 weights as unsigned bytes `q + OFF`, in element order.
    ///
    /// # Safety
    /// The CPU must support AVX2 (callers are `#[target_feature]` functions that imply it).
    unsafe fn ubytes(&self) -> __m256i;
}

impl Row for BlockQ4_0 {
    const OFF: u8 = 8;
    #[inline(always)]
    fn d(&self) -> u16 {
        self.d
    }
    #[inline(always)]
    unsafe fn ubytes(&self) -> __m256i {
        // SAFETY: AVX2 is present (the caller's contract).
        unsafe { nibbles(&self.qs) }
    }
}

impl Row for BlockQ8_0 {
    const OFF: u8 = 128;
    #[inline(always)]
    fn d(&self) -> u16 {
        self.d
    }
    #[inline(always)]
    unsafe fn ubytes(&self) -> __m256i {
        // SAFETY: AVX2 is present (the caller's contract).
        unsafe { _mm256_xor_si256(load_i8x32(&self.qs), _mm256_set1_epi8(i8::MIN)) }
    }
}

/// Four rows · a two-level activation (`hi + lo`), prefetching `next` (the bytes of the rows
/// that follow) spread over the blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn dot4<W: Row>(w: [&[W]; 4], hi: &[BlockQ8_0], lo: &[BlockQ8_0], next: &[u8]) -> [f32; 4] {
    let off = _mm256_set1_epi8(W::OFF as i8);
    let zero = _mm256_setzero_si256();
    // One accumulator per row and level: independent FMA chains.
    let mut ah = [_mm256_setzero_ps(); 4];
    let mut al = [_mm256_setzero_ps(); 4];
    let step = next.len().div_ceil(hi.len().max(1));
    let nb = hi.len().min(w.iter().map(|r| r.len()).min().unwrap_or(0));
    for b in 0..nb {
        let mut p = 0;
        while p < step {
            prefetch(next, b * step + p);
            p += 64;
        }
        let ds = [w[0][b].d(), w[1][b].d(), w[2][b].d(), w[3][b].d()];
        // SAFETY: AVX2 is enabled for this function.
        let q = unsafe {
            [
                w[0][b].ubytes(),
                w[1][b].ubytes(),
                w[2][b].ubytes(),
                w[3][b].ubytes(),
            ]
        };
        let y = &hi[b];
        let qa = load_i8x32(&y.qs);
        let nc = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, off, qa));
        let d = scales4(ds, f16(y.d));
        for k in 0..4 {
            let s = _mm256_dpbusd_epi32(nc, q[k], qa);
            ah[k] = _mm256_fmadd_ps(d[k], _mm256_cvtepi32_ps(s), ah[k]);
        }
        let z = &lo[b];
        let qz = load_i8x32(&z.qs);
        let nc = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, off, qz));
        let d = scales4(ds, f16(z.d));
        for k in 0..4 {
            let s = _mm256_dpbusd_epi32(nc, q[k], qz);
            al[k] = _mm256_fmadd_ps(d[k], _mm256_cvtepi32_ps(s), al[k]);
        }
    }
    [0, 1, 2, 3].map(|k| hsum_ps(_mm256_add_ps(ah[k], al[k])))
}

/// Dense rows: `out[r] = w_r · (hi + lo)` over `out.len()` rows of `hi.len()` blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gemv<W: Row>(w: &[W], hi: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    let nb = hi.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let bytes: &[u8] = bytemuck::cast_slice(w);
    let group_bytes = 4 * nb * W::BYTES;
    let row = |r: usize| w.get(r * nb..(r + 1) * nb).unwrap_or(&[]);
    let (o4, or) = out.as_chunks_mut::<4>();
    for (g, o) in o4.iter_mut().enumerate() {
        let next_start = ((g + 1) * group_bytes).min(bytes.len());
        let next_end = ((g + 2) * group_bytes).min(bytes.len());
        let r = 4 * g;
        *o = dot4::<W>(
            [row(r), row(r + 1), row(r + 2), row(r + 3)],
            hi,
            lo,
            &bytes[next_start..next_end],
        );
    }
    let r0 = o4.len() * 4;
    for (i, o) in or.iter_mut().enumerate() {
        let r = row(r0 + i);
        *o = dot4::<W>([r; 4], hi, lo, &[])[0];
    }
}

/// Gathered rows: `out[i] = w_{idx[i]} · (hi + lo)` (indices checked by the caller).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn gather<W: Row>(w: &[W], idx: &[u32], hi: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    crate::kernels::gather_rows(
        w,
        hi.len(),
        idx,
        out,
        |r| dot4::<W>(r, hi, lo, &[]),
        |r| dot4::<W>([r; 4], hi, lo, &[])[0],
    );
}

/// Q4_0 × two-level Q8_0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gemv2_q4_0_q8_0(w: &[BlockQ4_0], hi: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    gemv::<BlockQ4_0>(w, hi, lo, out)
}

/// Q8_0 × two-level Q8_0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gemv2_q8_0_q8_0(w: &[BlockQ8_0], hi: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    gemv::<BlockQ8_0>(w, hi, lo, out)
}

/// Gathered Q4_0 rows × two-level Q8_0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gather_gemv2_q4_0_q8_0(
    w: &[BlockQ4_0],
    idx: &[u32],
    hi: &[BlockQ8_0],
    lo: &[BlockQ8_0],
    out: &mut [f32],
) {
    gather(w, idx, hi, lo, out)
}

/// Gathered Q8_0 rows × two-level Q8_0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gather_gemv2_q8_0_q8_0(
    w: &[BlockQ8_0],
    idx: &[u32],
    hi: &[BlockQ8_0],
    lo: &[BlockQ8_0],
    out: &mut [f32],
) {
    gather(w, idx, hi, lo, out)
}
