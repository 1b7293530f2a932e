//! AVX2 + FMA + F16C kernels.
//!
//! Every function here is a safe `#[target_feature]` function: calling one from code compiled
//! without those features is `unsafe`, and the only such callers are the wrappers in
//! [`super`], which are reachable only after runtime detection. Within this module the only
//! `unsafe` operations are unaligned loads and stores through pointers derived from references
//! to fixed-size arrays (the `load*`/`store*` helpers), so their bounds hold by construction.
//! Prefetches are issued only for addresses inside a live slice.
//!
//! Preconditions on slice lengths (equal lengths, `w.len() == a.len() · out.len()` for the
//! gemv kernels) are checked by the callers; violating them gives wrong results or a panic,
//! never out-of-bounds access, because all indexing here is bounds-checked or goes through
//! `zip`/`chunks_exact`.

use std::arch::x86_64::*;

use crate::quant::blocks::scale_min_k4;
use crate::quant::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, QK, QK_K, quantize,
};

// ---------------------------------------------------------------------------------------------
// Loads, stores and small helpers.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_i8x32(x: &[i8; 32]) -> __m256i {
    // SAFETY: `x` refers to 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_u8x32(x: &[u8; 32]) -> __m256i {
    // SAFETY: `x` refers to 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x16(x: &[u8; 16]) -> __m128i {
    // SAFETY: `x` refers to 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(x.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_u16x8(x: &[u16; 8]) -> __m128i {
    // SAFETY: `x` refers to 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(x.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32x8(x: &[f32; 8]) -> __m256 {
    // SAFETY: `x` refers to 8 readable f32; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_f32x8(x: &mut [f32; 8], v: __m256) {
    // SAFETY: `x` refers to 8 writable f32; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(x.as_mut_ptr(), v) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_i8x32(x: &mut [i8; 32], v: __m256i) {
    // SAFETY: `x` refers to 32 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(x.as_mut_ptr().cast(), v) }
}

/// Hints the cache line holding `buf[i]` into L1 (no-op when `i` is out of range).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch(buf: &[u8], i: usize) {
    if let Some(p) = buf.get(i) {
        // A prefetch never faults and has no architectural effect (a safe intrinsic).
        _mm_prefetch::<_MM_HINT_T0>((p as *const u8).cast());
    }
}

/// f16 bits → f32 with the F16C instruction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// f32 → f16 bits, round to nearest even (as `half` / ggml).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn to_f16(x: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))) as u16
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax_ps(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The 32 nibbles of a Q4_0/Q4_1 block as unsigned bytes in element order (low nibbles are
/// elements 0..16, high nibbles 16..32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn nibbles(qs: &[u8; 16]) -> __m256i {
    let v = _mm256_broadcastsi128_si256(load_u8x16(qs));
    let v = _mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0));
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// Σ pairs of signed products `x·y` as eight i32 lanes (the sign trick lets `maddubs`, which
/// wants an unsigned first operand, multiply two signed vectors; |x| ≤ 128 cannot saturate).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// Packs four vectors of eight i32 (values in i8 range) into 32 i8 in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_i32x32_to_i8(i0: __m256i, i1: __m256i, i2: __m256i, i3: __m256i) -> __m256i {
    let a = _mm256_packs_epi32(i0, i1);
    let b = _mm256_packs_epi32(i2, i3);
    let c = _mm256_packs_epi16(a, b);
    // packs works per 128-bit lane: restore element order.
    _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

// ---------------------------------------------------------------------------------------------
// Activation quantisers (bit-exact with the reference).

/// `roundf` (half away from zero) of every lane, exact: `trunc(x)` plus ±1 when the discarded
/// fraction (computed exactly) is at least one half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn round_half_away(x: __m256) -> __m256 {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(x);
    let sign = _mm256_set1_ps(-0.0);
    let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(x, t));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let one = _mm256_or_ps(_mm256_set1_ps(1.0), _mm256_and_ps(x, sign));
    _mm256_add_ps(t, _mm256_and_ps(up, one))
}

/// Q8_0/Q8_1 block: returns (d, quants as four i32x8) or `None` when the reciprocal scale is
/// not finite (subnormal d), which the caller hands to the scalar reference.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_block(x: &[f32; 32]) -> Option<(f32, [__m256i; 4])> {
    let (c, _) = x.as_chunks::<8>();
    let v = [
        load_f32x8(&c[0]),
        load_f32x8(&c[1]),
        load_f32x8(&c[2]),
        load_f32x8(&c[3]),
    ];
    let sign = _mm256_set1_ps(-0.0);
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
        _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
    );
    let amax = hmax_ps(m);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if !id.is_finite() {
        return None;
    }
    let idv = _mm256_set1_ps(id);
    let q = v.map(|v| _mm256_cvtps_epi32(round_half_away(_mm256_mul_ps(v, idv))));
    Some((d, q))
}

/// Q8_0 activation quantiser.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    let (chunks, _) = src.as_chunks::<QK>();
    for (x, y) in chunks.iter().zip(dst.iter_mut()) {
        match q8_block(x) {
            Some((d, q)) => {
                y.d = to_f16(d);
                let mut qs = [0i8; 32];
                store_i8x32(&mut qs, pack_i32x32_to_i8(q[0], q[1], q[2], q[3]));
                y.qs = qs;
            }
            None => quantize::quantize_q8_0(x, std::slice::from_mut(y)),
        }
    }
}

/// Q8_1 activation quantiser.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_row_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    let (chunks, _) = src.as_chunks::<QK>();
    for (x, y) in chunks.iter().zip(dst.iter_mut()) {
        match q8_block(x) {
            Some((d, q)) => {
                y.d = to_f16(d);
                let mut qs = [0i8; 32];
                store_i8x32(&mut qs, pack_i32x32_to_i8(q[0], q[1], q[2], q[3]));
                y.qs = qs;
                let sum = hsum_epi32(_mm256_add_epi32(
                    _mm256_add_epi32(q[0], q[1]),
                    _mm256_add_epi32(q[2], q[3]),
                ));
                y.s = to_f16(sum as f32 * d);
            }
            None => quantize::quantize_q8_1(x, std::slice::from_mut(y)),
        }
    }
}

/// Q8_K activation quantiser.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    let (chunks, _) = src.as_chunks::<QK_K>();
    let sign = _mm256_set1_ps(-0.0);
    for (x, y) in chunks.iter().zip(dst.iter_mut()) {
        let (c8, _) = x.as_chunks::<8>();
        let mut m = _mm256_setzero_ps();
        for c in c8 {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, load_f32x8(c)));
        }
        let amax = hmax_ps(m);
        // The reference keeps the sign of the first element with the largest magnitude.
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        if amax == 0.0 || !amax.is_finite() || !iscale.is_finite() {
            // All zero, non-finite input or a subnormal maximum: the reference decides.
            quantize::quantize_q8_k(x, std::slice::from_mut(y));
            continue;
        }
        let iv = _mm256_set1_ps(iscale);
        let lim = _mm256_set1_epi32(127);
        let mut qs = [0i8; QK_K];
        let mut bsums = [0i16; 16];
        let (q32, _) = qs.as_chunks_mut::<32>();
        for (j, out) in q32.iter_mut().enumerate() {
            let q = [0, 1, 2, 3].map(|k| {
                let v = _mm256_mul_ps(load_f32x8(&c8[4 * j + k]), iv);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_min_epi32(_mm256_cvtps_epi32(r), lim)
            });
            store_i8x32(out, pack_i32x32_to_i8(q[0], q[1], q[2], q[3]));
            bsums[2 * j] = hsum_epi32(_mm256_add_epi32(q[0], q[1])) as i16;
            bsums[2 * j + 1] = hsum_epi32(_mm256_add_epi32(q[2], q[3])) as i16;
        }
        y.d = 1.0 / iscale;
        y.qs = qs;
        y.bsums = bsums;
    }
}

// ---------------------------------------------------------------------------------------------
// Quantised dot products.

/// Four f16 scales → f32, times `da`, each broadcast to a full vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scales4(d: [u16; 4], da: f32) -> [__m256; 4] {
    let h = _mm_set_epi64x(
        0,
        ((d[3] as i64) << 48) | ((d[2] as i64) << 32) | ((d[1] as i64) << 16) | d[0] as i64,
    );
    let f = _mm256_castps128_ps256(_mm_mul_ps(_mm_cvtph_ps(h), _mm_set1_ps(da)));
    [
        _mm256_permutevar8x32_ps(f, _mm256_set1_epi32(0)),
        _mm256_permutevar8x32_ps(f, _mm256_set1_epi32(1)),
        _mm256_permutevar8x32_ps(f, _mm256_set1_epi32(2)),
        _mm256_permutevar8x32_ps(f, _mm256_set1_epi32(3)),
    ]
}

/// `Σ (q−8)·a` of one Q4_0 block as eight i32 lanes, given `corr = maddubs(8, a)`.
///
/// Uses the unsigned nibbles directly: `Σ (q−8)·a = Σ q·a − 8·Σ a`, in i16 pair sums (exact:
/// |pair| ≤ 2·15·127), so `corr` can be shared by every row multiplied with the same block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_block_dot(qs: &[u8; 16], qa: __m256i, corr: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(nibbles(qs), qa);
    _mm256_madd_epi16(_mm256_sub_epi16(p, corr), _mm256_set1_epi16(1))
}

/// Four Q4_0 rows · one Q8_0 activation, sharing the activation loads and correction, while
/// prefetching `next` (the following four rows): rows are contiguous, so the hardware sees four
/// interleaved streams; the explicit prefetch lets a DRAM-resident matrix reach memory bandwidth.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot4_q4_0<const TWO: bool>(
    w: [&[BlockQ4_0]; 4],
    a: &[BlockQ8_0],
    lo: &[BlockQ8_0],
    next: &[u8],
) -> [f32; 4] {
    let eight = _mm256_set1_epi8(8);
    let mut acc = [_mm256_setzero_ps(); 4];
    // Spread prefetches of the next four rows (`next`) over this group's iterations.
    let step = next.len().div_ceil(a.len().max(1));
    for b in 0..a.len() {
        prefetch(next, b * step);
        prefetch(next, b * step + 64);
        let y = &a[b];
        let qa = load_i8x32(&y.qs);
        let corr = _mm256_maddubs_epi16(eight, qa);
        let ds = [w[0][b].d, w[1][b].d, w[2][b].d, w[3][b].d];
        let d = scales4(ds, f16(y.d));
        let q = [
            nibbles(&w[0][b].qs),
            nibbles(&w[1][b].qs),
            nibbles(&w[2][b].qs),
            nibbles(&w[3][b].qs),
        ];
        for k in 0..4 {
            let p = _mm256_madd_epi16(
                _mm256_sub_epi16(_mm256_maddubs_epi16(q[k], qa), corr),
                _mm256_set1_epi16(1),
            );
            acc[k] = _mm256_fmadd_ps(d[k], _mm256_cvtepi32_ps(p), acc[k]);
        }
        if TWO {
            // The second level reuses the unpacked nibbles.
            let z = &lo[b];
            let qz = load_i8x32(&z.qs);
            let corr = _mm256_maddubs_epi16(eight, qz);
            let d = scales4(ds, f16(z.d));
            for k in 0..4 {
                let p = _mm256_madd_epi16(
                    _mm256_sub_epi16(_mm256_maddubs_epi16(q[k], qz), corr),
                    _mm256_set1_epi16(1),
                );
                acc[k] = _mm256_fmadd_ps(d[k], _mm256_cvtepi32_ps(p), acc[k]);
            }
        }
    }
    [
        hsum_ps(acc[0]),
        hsum_ps(acc[1]),
        hsum_ps(acc[2]),
        hsum_ps(acc[3]),
    ]
}

/// Q4_0 × Q8_0 dot product: four blocks per step into four independent accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let eight = _mm256_set1_epi8(8);
    let mut acc = [_mm256_setzero_ps(); 4];
    let (w4, wr) = w.as_chunks::<4>();
    let (a4, ar) = a.as_chunks::<4>();
    for (x, y) in w4.iter().zip(a4) {
        let d = scales4([x[0].d, x[1].d, x[2].d, x[3].d], 1.0);
        for k in 0..4 {
            let qa = load_i8x32(&y[k].qs);
            let corr = _mm256_maddubs_epi16(eight, qa);
            let p = q4_0_block_dot(&x[k].qs, qa, corr);
            let dk = _mm256_mul_ps(d[k], _mm256_set1_ps(f16(y[k].d)));
            acc[k] = _mm256_fmadd_ps(dk, _mm256_cvtepi32_ps(p), acc[k]);
        }
    }
    for (x, y) in wr.iter().zip(ar) {
        let qa = load_i8x32(&y.qs);
        let corr = _mm256_maddubs_epi16(eight, qa);
        let p = q4_0_block_dot(&x.qs, qa, corr);
        let d = _mm256_set1_ps(f16(x.d) * f16(y.d));
        acc[0] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[0]);
    }
    hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

/// Q4_0 matrix × Q8_0 vector, four rows at a time.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gemv_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0], out: &mut [f32]) {
    gemv_q4_0::<false>(w, a, a, out)
}

/// As [`gemv_q4_0_q8_0`] with a two-level activation `a + lo`, in one pass over the weights.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gemv2_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    gemv_q4_0::<true>(w, a, lo, out)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_q4_0<const TWO: bool>(w: &[BlockQ4_0], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    let nb = a.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let mut rows = w.chunks_exact(nb);
    let mut outs = out.chunks_exact_mut(4);
    let bytes: &[u8] = bytemuck::cast_slice(w);
    let group_bytes = 4 * nb * std::mem::size_of::<BlockQ4_0>();
    for (g, o) in (&mut outs).enumerate() {
        let (Some(r0), Some(r1), Some(r2), Some(r3)) =
            (rows.next(), rows.next(), rows.next(), rows.next())
        else {
            break;
        };
        let next_start = ((g + 1) * group_bytes).min(bytes.len());
        let next_end = ((g + 2) * group_bytes).min(bytes.len());
        o.copy_from_slice(&dot4_q4_0::<TWO>(
            [r0, r1, r2, r3],
            a,
            lo,
            &bytes[next_start..next_end],
        ));
    }
    for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
        *o = vec_dot_q4_0_q8_0(r, a);
        if TWO {
            *o += vec_dot_q4_0_q8_0(r, lo);
        }
    }
}

/// Four Q8_0 rows · one Q8_0 activation.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot4_q8_0<const TWO: bool>(
    w: [&[BlockQ8_0]; 4],
    a: &[BlockQ8_0],
    lo: &[BlockQ8_0],
    next: &[u8],
) -> [f32; 4] {
    let mut acc = [_mm256_setzero_ps(); 4];
    let step = next.len().div_ceil(a.len().max(1));
    for b in 0..a.len() {
        prefetch(next, b * step);
        prefetch(next, b * step + 64);
        prefetch(next, b * step + 128);
        let y = &a[b];
        let ds = [w[0][b].d, w[1][b].d, w[2][b].d, w[3][b].d];
        // Sign trick once per row: |w| and the activations with w's signs.
        let x = [
            load_i8x32(&w[0][b].qs),
            load_i8x32(&w[1][b].qs),
            load_i8x32(&w[2][b].qs),
            load_i8x32(&w[3][b].qs),
        ];
        let ax = x.map(|x| _mm256_sign_epi8(x, x));
        let ones = _mm256_set1_epi16(1);
        let qa = load_i8x32(&y.qs);
        let d = scales4(ds, f16(y.d));
        for k in 0..4 {
            let p = _mm256_madd_epi16(
                _mm256_maddubs_epi16(ax[k], _mm256_sign_epi8(qa, x[k])),
                ones,
            );
            acc[k] = _mm256_fmadd_ps(d[k], _mm256_cvtepi32_ps(p), acc[k]);
        }
        if TWO {
            let z = &lo[b];
            let qz = load_i8x32(&z.qs);
            let d = scales4(ds, f16(z.d));
            for k in 0..4 {
                let p = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(ax[k], _mm256_sign_epi8(qz, x[k])),
                    ones,
                );
                acc[k] = _mm256_fmadd_ps(d[k], _mm256_cvtepi32_ps(p), acc[k]);
            }
        }
    }
    [
        hsum_ps(acc[0]),
        hsum_ps(acc[1]),
        hsum_ps(acc[2]),
        hsum_ps(acc[3]),
    ]
}

/// Q8_0 × Q8_0 dot product: four blocks per step into four independent accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let (w4, wr) = w.as_chunks::<4>();
    let (a4, ar) = a.as_chunks::<4>();
    for (x, y) in w4.iter().zip(a4) {
        let d = scales4([x[0].d, x[1].d, x[2].d, x[3].d], 1.0);
        for k in 0..4 {
            let p = mul_sum_i8(load_i8x32(&x[k].qs), load_i8x32(&y[k].qs));
            let dk = _mm256_mul_ps(d[k], _mm256_set1_ps(f16(y[k].d)));
            acc[k] = _mm256_fmadd_ps(dk, _mm256_cvtepi32_ps(p), acc[k]);
        }
    }
    for (x, y) in wr.iter().zip(ar) {
        let p = mul_sum_i8(load_i8x32(&x.qs), load_i8x32(&y.qs));
        let d = _mm256_set1_ps(f16(x.d) * f16(y.d));
        acc[0] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[0]);
    }
    hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

/// Q8_0 matrix × Q8_0 vector, four rows at a time.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gemv_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0], out: &mut [f32]) {
    gemv_q8_0::<false>(w, a, a, out)
}

/// As [`gemv_q8_0_q8_0`] with a two-level activation `a + lo`, in one pass over the weights.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gemv2_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    gemv_q8_0::<true>(w, a, lo, out)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn gemv_q8_0<const TWO: bool>(w: &[BlockQ8_0], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    let nb = a.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let mut rows = w.chunks_exact(nb);
    let mut outs = out.chunks_exact_mut(4);
    let bytes: &[u8] = bytemuck::cast_slice(w);
    let group_bytes = 4 * nb * std::mem::size_of::<BlockQ8_0>();
    for (g, o) in (&mut outs).enumerate() {
        let (Some(r0), Some(r1), Some(r2), Some(r3)) =
            (rows.next(), rows.next(), rows.next(), rows.next())
        else {
            break;
        };
        let next_start = ((g + 1) * group_bytes).min(bytes.len());
        let next_end = ((g + 2) * group_bytes).min(bytes.len());
        o.copy_from_slice(&dot4_q8_0::<TWO>(
            [r0, r1, r2, r3],
            a,
            lo,
            &bytes[next_start..next_end],
        ));
    }
    for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
        *o = vec_dot_q8_0_q8_0(r, a);
        if TWO {
            *o += vec_dot_q8_0_q8_0(r, lo);
        }
    }
}

/// Q4_1 × Q8_1 dot product.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let p = _mm256_maddubs_epi16(nibbles(&x.qs), load_i8x32(&y.qs));
        let p = _mm256_madd_epi16(p, ones);
        let d = _mm256_set1_ps(f16(x.d) * f16(y.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
        summs += f16(x.m) * f16(y.s);
    }
    hsum_ps(acc) + summs
}

/// Q4_K × Q8_K dot product.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let bsums = y.bsums;
        let mut sc = [0i16; 8];
        let mut summ = 0i32;
        for (s, out) in sc.iter_mut().enumerate() {
            let (scale, m) = scale_min_k4(s, &x.scales);
            *out = scale as i16;
            summ += m as i32 * (bsums[2 * s] as i32 + bsums[2 * s + 1] as i32);
        }
        let (qs, _) = x.qs.as_chunks::<32>();
        let (ys, _) = y.qs.as_chunks::<32>();
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let q4 = load_u8x32(&qs[c]);
            let lo = _mm256_and_si256(q4, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
            let plo = _mm256_maddubs_epi16(lo, load_i8x32(&ys[2 * c]));
            let phi = _mm256_maddubs_epi16(hi, load_i8x32(&ys[2 * c + 1]));
            let plo = _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * c]));
            let phi = _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(plo, phi));
        }
        let yd = y.d;
        let d = _mm256_set1_ps(yd * f16(x.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        acc_m += yd * f16(x.dmin) * summ as f32;
    }
    hsum_ps(acc) - acc_m
}

/// Q6_K × Q8_K dot product. The −32 offset is applied through the activation block sums:
/// `Σ sc·(q−32)·a = Σ sc·q·a − 32·Σ_j sc_j·bsums_j`.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.iter().zip(a) {
        let bsums = y.bsums;
        let corr: i32 = x
            .scales
            .iter()
            .zip(bsums)
            .map(|(&s, b)| s as i32 * b as i32)
            .sum();
        let (ql, _) = x.ql.as_chunks::<32>();
        let (qh, _) = x.qh.as_chunks::<32>();
        let (ys, _) = y.qs.as_chunks::<32>();
        let mut sumi = _mm256_setzero_si256();
        for n in 0..2 {
            let h = load_u8x32(&qh[n]);
            let l0 = load_u8x32(&ql[2 * n]);
            let l1 = load_u8x32(&ql[2 * n + 1]);
            let lows = [
                _mm256_and_si256(l0, m4),
                _mm256_and_si256(l1, m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
            ];
            let highs = [
                _mm256_and_si256(h, m2),
                _mm256_and_si256(_mm256_srli_epi16::<2>(h), m2),
                _mm256_and_si256(_mm256_srli_epi16::<4>(h), m2),
                _mm256_and_si256(_mm256_srli_epi16::<6>(h), m2),
            ];
            for g in 0..4 {
                let q = _mm256_or_si256(lows[g], _mm256_slli_epi16::<4>(highs[g]));
                let p = _mm256_maddubs_epi16(q, load_i8x32(&ys[4 * n + g]));
                let s0 = x.scales[8 * n + 2 * g] as i16;
                let s1 = x.scales[8 * n + 2 * g + 1] as i16;
                let scv = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
            }
        }
        let sumi = _mm256_sub_epi32(sumi, _mm256_setr_epi32(32 * corr, 0, 0, 0, 0, 0, 0, 0));
        let d = _mm256_set1_ps(y.d * f16(x.d));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}

// ---------------------------------------------------------------------------------------------
// Float kernels.

/// `x[i] = exp(x[i] − m)` for `x[i] ≤ m`, returning their sum (see
/// [`crate::kernels::exp_shift_sum`]). Eight lanes at a time: `2^n · p(r)` with
/// `n = round((x − m)·log₂e)`, `r` the remainder in two parts of ln 2, and Cephes' degree-6
/// polynomial for `expf`; arguments below −87.3 (results under `f32::MIN_POSITIVE`) are clamped
/// there. Lanes past the last whole eight use the scalar `exp`.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn exp_shift_sum(x: &mut [f32], m: f32) -> f32 {
    let (lo, hi) = (_mm256_set1_ps(-87.336_55), _mm256_setzero_ps());
    let mv = _mm256_set1_ps(m);
    let c = |v: f32| _mm256_set1_ps(v);
    let mut acc = _mm256_setzero_ps();
    let (chunks, rest) = x.as_chunks_mut::<8>();
    for ch in chunks {
        let v = _mm256_min_ps(_mm256_max_ps(_mm256_sub_ps(load_f32x8(ch), mv), lo), hi);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(v, c(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, c(0.693_359_4), v);
        let r = _mm256_fnmadd_ps(n, c(-2.121_944_4e-4), r);
        let mut p = c(1.987_569_2e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, c(k));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), c(1.0));
        // 2^n from the exponent bits (n in −126 ..= 0).
        let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let e = _mm256_mul_ps(y, pow);
        store_f32x8(ch, e);
        acc = _mm256_add_ps(acc, e);
    }
    let mut sum = hsum_ps(acc);
    for v in rest {
        *v = (*v - m).exp();
        sum += *v;
    }
    sum
}

/// Rows of `C` per register block of [`sgemm_acc`].
const SGEMM_MR: usize = 6;

/// `C += A·B` (see [`crate::kernels::sgemm_acc`]; shape checked by the caller). Blocks of
/// [`SGEMM_MR`] rows × 16 columns of `C` stay in twelve registers while `p` runs: per step, two
/// loads of `B`, one broadcast per row, two FMAs per row. Columns past the last whole 16 run
/// in scalar code with the same order of operations (and FMA, which this level has).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn sgemm_acc(s: crate::kernels::Sgemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    let n16 = s.n / 16 * 16;
    // Column panels outermost: a panel of B (k × 16) stays in L1 across all rows.
    for j0 in (0..n16).step_by(16) {
        let mut i0 = 0;
        while i0 < s.m {
            let mr = (s.m - i0).min(SGEMM_MR);
            match mr {
                6 => sgemm_block::<6>(s, i0, j0, a, b, c),
                5 => sgemm_block::<5>(s, i0, j0, a, b, c),
                4 => sgemm_block::<4>(s, i0, j0, a, b, c),
                3 => sgemm_block::<3>(s, i0, j0, a, b, c),
                2 => sgemm_block::<2>(s, i0, j0, a, b, c),
                _ => sgemm_block::<1>(s, i0, j0, a, b, c),
            }
            i0 += mr;
        }
    }
    for i in 0..s.m {
        for j in n16..s.n {
            let mut acc = 0f32;
            for p in 0..s.k {
                acc = a[i * s.lda + p].mul_add(b[p * s.ldb + j], acc);
            }
            c[i * s.ldc + j] += acc;
        }
    }
}

/// Rows `i0 .. i0 + MR` × columns `j0 .. j0 + 16` of [`sgemm_acc`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sgemm_block<const MR: usize>(
    s: crate::kernels::Sgemm,
    i0: usize,
    j0: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    let rows: [&[f32]; MR] = std::array::from_fn(|i| &a[(i0 + i) * s.lda..][..s.k]);
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..s.k {
        let (bp, _) = b[p * s.ldb + j0..][..16].as_chunks::<8>();
        let (b0, b1) = (load_f32x8(&bp[0]), load_f32x8(&bp[1]));
        for i in 0..MR {
            let av = _mm256_set1_ps(rows[i][p]);
            acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let (cr, _) = c[(i0 + i) * s.ldc + j0..][..16].as_chunks_mut::<8>();
        for (h, cv) in cr.iter_mut().enumerate() {
            store_f32x8(cv, _mm256_add_ps(load_f32x8(cv), acc[h]));
        }
    }
}

/// Σ a·b.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let (ca, ra) = a.as_chunks::<32>();
    let (cb, rb) = b.as_chunks::<32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (x, y) in ca.iter().zip(cb) {
        let (x8, _) = x.as_chunks::<8>();
        let (y8, _) = y.as_chunks::<8>();
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(load_f32x8(&x8[k]), load_f32x8(&y8[k]), acc[k]);
        }
    }
    let mut sum = hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ));
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// Σ w·x with f16 weights.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_f16_f32(w: &[u16], x: &[f32]) -> f32 {
    let (cw, rw) = w.as_chunks::<16>();
    let (cx, rx) = x.as_chunks::<16>();
    let mut acc = [_mm256_setzero_ps(); 2];
    for (a, b) in cw.iter().zip(cx) {
        let (a8, _) = a.as_chunks::<8>();
        let (b8, _) = b.as_chunks::<8>();
        for k in 0..2 {
            let wf = _mm256_cvtph_ps(load_u16x8(&a8[k]));
            acc[k] = _mm256_fmadd_ps(wf, load_f32x8(&b8[k]), acc[k]);
        }
    }
    let mut sum = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
    for (&a, b) in rw.iter().zip(rx) {
        sum += f16(a) * b;
    }
    sum
}

/// Σ w·x with bf16 weights.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_bf16_f32(w: &[u16], x: &[f32]) -> f32 {
    let (cw, rw) = w.as_chunks::<16>();
    let (cx, rx) = x.as_chunks::<16>();
    let mut acc = [_mm256_setzero_ps(); 2];
    for (a, b) in cw.iter().zip(cx) {
        let (a8, _) = a.as_chunks::<8>();
        let (b8, _) = b.as_chunks::<8>();
        for k in 0..2 {
            let wi = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load_u16x8(&a8[k])));
            let wf = _mm256_castsi256_ps(wi);
            acc[k] = _mm256_fmadd_ps(wf, load_f32x8(&b8[k]), acc[k]);
        }
    }
    let mut sum = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
    for (&a, b) in rw.iter().zip(rx) {
        sum += f32::from_bits((a as u32) << 16) * b;
    }
    sum
}

/// `y += alpha·x`.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    let av = _mm256_set1_ps(alpha);
    let (cx, rx) = x.as_chunks::<8>();
    let (cy, ry) = y.as_chunks_mut::<8>();
    for (a, b) in cx.iter().zip(cy.iter_mut()) {
        store_f32x8(b, _mm256_fmadd_ps(av, load_f32x8(a), load_f32x8(b)));
    }
    for (a, b) in rx.iter().zip(ry.iter_mut()) {
        *b += alpha * a;
    }
}

/// `x *= s`.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn scale_f32(x: &mut [f32], s: f32) {
    let sv = _mm256_set1_ps(s);
    let (cx, rx) = x.as_chunks_mut::<8>();
    for a in cx.iter_mut() {
        store_f32x8(a, _mm256_mul_ps(load_f32x8(a), sv));
    }
    for a in rx {
        *a *= s;
    }
}

/// `y += alpha·dequant(w)` for a Q4_0 row.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn axpy_q4_0_f32(alpha: f32, w: &[BlockQ4_0], y: &mut [f32]) {
    let (cy, _) = y.as_chunks_mut::<32>();
    for (b, out) in w.iter().zip(cy.iter_mut()) {
        let d = _mm256_set1_ps(alpha * f16(b.d));
        let q = _mm256_sub_epi8(nibbles(&b.qs), _mm256_set1_epi8(8));
        let lo = _mm256_castsi256_si128(q);
        let hi = _mm256_extracti128_si256::<1>(q);
        let parts = [
            _mm256_cvtepi8_epi32(lo),
            _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo)),
            _mm256_cvtepi8_epi32(hi),
            _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi)),
        ];
        let (o8, _) = out.as_chunks_mut::<8>();
        for k in 0..4 {
            let v = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(parts[k]), load_f32x8(&o8[k]));
            store_f32x8(&mut o8[k], v);
        }
    }
}

/// `y += alpha·dequant(w)` for a Q8_0 row.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn axpy_q8_0_f32(alpha: f32, w: &[BlockQ8_0], y: &mut [f32]) {
    let (cy, _) = y.as_chunks_mut::<32>();
    for (b, out) in w.iter().zip(cy.iter_mut()) {
        let d = _mm256_set1_ps(alpha * f16(b.d));
        let q = load_i8x32(&b.qs);
        let lo = _mm256_castsi256_si128(q);
        let hi = _mm256_extracti128_si256::<1>(q);
        let parts = [
            _mm256_cvtepi8_epi32(lo),
            _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo)),
            _mm256_cvtepi8_epi32(hi),
            _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi)),
        ];
        let (o8, _) = out.as_chunks_mut::<8>();
        for k in 0..4 {
            let v = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(parts[k]), load_f32x8(&o8[k]));
            store_f32x8(&mut o8[k], v);
        }
    }
}

/// Rows `idx` of a Q4_0 matrix (`nb = hi.len()` blocks per row) × a two-level activation,
/// four gathered rows at a time: `out[i] = row(idx[i]) · hi + row(idx[i]) · lo`.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gather_gemv2_q4_0_q8_0(
    w: &[BlockQ4_0],
    idx: &[u32],
    hi: &[BlockQ8_0],
    lo: &[BlockQ8_0],
    out: &mut [f32],
) {
    crate::kernels::gather_rows(
        w,
        hi.len(),
        idx,
        out,
        |r| dot4_q4_0::<true>(r, hi, lo, &[]),
        |r| vec_dot_q4_0_q8_0(r, hi) + vec_dot_q4_0_q8_0(r, lo),
    );
}

/// As [`gather_gemv2_q4_0_q8_0`] for Q8_0 weights.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gather_gemv2_q8_0_q8_0(
    w: &[BlockQ8_0],
    idx: &[u32],
    hi: &[BlockQ8_0],
    lo: &[BlockQ8_0],
    out: &mut [f32],
) {
    crate::kernels::gather_rows(
        w,
        hi.len(),
        idx,
        out,
        |r| dot4_q8_0::<true>(r, hi, lo, &[]),
        |r| vec_dot_q8_0_q8_0(r, hi) + vec_dot_q8_0_q8_0(r, lo),
    );
}
