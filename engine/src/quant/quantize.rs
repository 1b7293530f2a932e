//! Reference quantisers, bit-exact with ggml's `quantize_row_*_ref` as compiled for x86.
//!
//! Rounding follows ggml exactly: Q4_0 truncates `x·id + 8.5`, Q8_0/Q8_1 use `roundf` (half away
//! from zero), Q8_K uses ggml's `nearest_int` (half to even). Scales are stored as f16 rounded to
//! nearest even, and the unrounded f32 scale is used to compute the reciprocal. Where ggml's C
//! converts a non-finite float to an integer (only when the f32 scale is subnormal so that its
//! reciprocal overflows) we reproduce what x86 does: `cvttss2si` yields `i32::MIN`, whose low
//! byte is 0. NaN inputs give unspecified (but memory-safe) results.

use super::blocks::*;
use super::f32_to_f16;

/// `(int8_t)x` as GCC/Clang compile it on x86-64: convert to i32 with truncation, where NaN and
/// out-of-range values give `i32::MIN` ("integer indefinite"), then keep the low byte.
#[inline]
pub(crate) fn c_cast_f32_to_i8(x: f32) -> i8 {
    let i = if x.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&x) {
        i32::MIN
    } else {
        x as i32
    };
    i as i8
}

/// ggml's `nearest_int`, including its bit trick: adding 1.5·2^23 leaves the rounded
/// (half-to-even) integer in the low mantissa bits. Exact for |x| ≤ 4194303; for non-finite
/// input it gives what the C code gives (−2^22 for ±inf, 0 for NaN).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C `roundf`: half away from zero (Rust's `f32::round`).
#[inline]
fn roundf(x: f32) -> f32 {
    x.round()
}

/// Quantises to Q4_0 (`quantize_row_q4_0_ref`). `src.len()` must equal `32 · dst.len()`.
pub fn quantize_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
    debug_assert_eq!(src.len(), dst.len() * QK);
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d);
        let mut qs = [0u8; 16];
        for j in 0..16 {
            let x0 = x[j] * id;
            let x1 = x[16 + j] * id;
            let xi0 = c_cast_f32_to_i8(x0 + 8.5).min(15) as u8;
            let xi1 = c_cast_f32_to_i8(x1 + 8.5).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
        y.qs = qs;
    }
}

/// Scale, reciprocal and stored f16 scale of one Q8_0/Q8_1 block.
#[inline]
fn q8_scale(x: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    for &v in x {
        // ggml's MAX(a, b) is `a > b ? a : b`.
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// Quantises to Q8_0 (`quantize_row_q8_0_ref`). `src.len()` must equal `32 · dst.len()`.
pub fn quantize_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    debug_assert_eq!(src.len(), dst.len() * QK);
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let (d, id) = q8_scale(x);
        y.d = f32_to_f16(d);
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = c_cast_f32_to_i8(roundf(v * id));
        }
        y.qs = qs;
    }
}

/// Quantises to Q8_1 (`quantize_row_q8_1_ref`). `src.len()` must equal `32 · dst.len()`.
pub fn quantize_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    debug_assert_eq!(src.len(), dst.len() * QK);
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let (d, id) = q8_scale(x);
        y.d = f32_to_f16(d);
        let mut qs = [0i8; 32];
        let mut sum = 0i32;
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = c_cast_f32_to_i8(roundf(v * id));
            sum += *q as i32;
        }
        y.qs = qs;
        y.s = f32_to_f16(sum as f32 * d);
    }
}

/// Quantises to Q8_K (`quantize_row_q8_K_ref`). `src.len()` must equal `256 · dst.len()`.
///
/// Unlike ggml, an all-zero block also gets zero `bsums` (ggml leaves them untouched).
pub fn quantize_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    debug_assert_eq!(src.len(), dst.len() * QK_K);
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *y = BlockQ8K::zeroed_block();
            continue;
        }
        let iscale = -127.0 / max;
        let mut qs = [0i8; QK_K];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        let mut bsums = [0i16; 16];
        for (s, chunk) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
            *s = chunk.iter().map(|&q| q as i16).sum();
        }
        y.d = 1.0 / iscale;
        y.qs = qs;
        y.bsums = bsums;
    }
}

/// ggml's `GROUP_MAX_EPS`: groups whose largest magnitude is below this are all-zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (weights `x²`):
/// symmetric quantisation of `x` to `-nmax..nmax` with a small search over the scale.
/// Writes `L[i] = q + nmax` and returns the scale.
fn make_qx_quants(nmax: i32, x: &[f32], l_out: &mut [i8]) -> f32 {
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = quant(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (o, &v) in l_out.iter_mut().zip(x) {
        *o = (quant(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l_out.iter_mut().zip(x) {
                *o = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_qkx2_quants` (squared error): asymmetric quantisation of `x` to `0..=nmax`
/// with a min, searching `nstep + 1` scales. Returns `(scale, the_min)` with
/// `x ≈ scale·L − the_min`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l_out: &mut [u8],
    l_aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((o, &v), &w) in l_out.iter_mut().zip(x).zip(weights) {
        let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
        *o = l as u8;
        let diff = scale * l as f32 + min - v;
        best_error += w * (diff * diff);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((o, &v), &w) in l_aux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *o = l as u8;
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for ((&l, &v), &w) in l_aux.iter().zip(x).zip(weights) {
                let diff = this_scale * l as f32 + this_min - v;
                cur_error += w * (diff * diff);
            }
            if cur_error < best_error {
                l_out.copy_from_slice(l_aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Quantises to Q6_K following ggml's `quantize_row_q6_K_ref` (no importance matrix).
///
/// Same algorithm and operation order as ggml; not checked bit-for-bit against ggml (there
/// are no golden vectors for it, and C compilers may contract its sums into FMAs).
/// `src.len()` must equal `256 · dst.len()`.
pub fn quantize_q6_k(src: &[f32], dst: &mut [BlockQ6K]) {
    debug_assert_eq!(src.len(), dst.len() * QK_K);
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for (ib, sc) in scales.iter_mut().enumerate() {
            let r = 16 * ib..16 * ib + 16;
            *sc = make_qx_quants(32, &x[r.clone()], &mut l[r]);
            if sc.abs() > max_abs_scale {
                max_abs_scale = sc.abs();
                max_scale = *sc;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *y = bytemuck::Zeroable::zeroed();
            continue;
        }
        let iscale = -128.0 / max_scale;
        y.d = f32_to_f16(1.0 / iscale);
        let mut sc8 = [0i8; 16];
        for (o, &s) in sc8.iter_mut().zip(&scales) {
            *o = nearest_int(iscale * s).min(127) as i8;
        }
        y.scales = sc8;
        let d_all = super::f16_to_f32(y.d);
        for (j, &s) in sc8.iter().enumerate() {
            let d = d_all * s as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        let mut ql = [0u8; 128];
        let mut qh = [0u8; 64];
        for half in 0..2 {
            let lb = &l[128 * half..128 * half + 128];
            for i in 0..32 {
                let q = [lb[i], lb[i + 32], lb[i + 64], lb[i + 96]].map(|v| v as u8);
                ql[64 * half + i] = (q[0] & 0xF) | ((q[2] & 0xF) << 4);
                ql[64 * half + i + 32] = (q[1] & 0xF) | ((q[3] & 0xF) << 4);
                qh[32 * half + i] =
                    (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
            }
        }
        y.ql = ql;
        y.qh = qh;
    }
}

/// Quantises to Q4_K following ggml's `quantize_row_q4_K_ref` (no importance matrix).
///
/// Same algorithm and operation order as ggml; not checked bit-for-bit against ggml (see
/// [`quantize_q6_k`]). `src.len()` must equal `256 · dst.len()`.
pub fn quantize_q4_k(src: &[f32], dst: &mut [BlockQ4K]) {
    debug_assert_eq!(src.len(), dst.len() * QK_K);
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut l = [0u8; QK_K];
        let mut l_aux = [0u8; 32];
        let mut weights = [0f32; 32];
        let mut mins = [0f32; 8];
        let mut scales = [0f32; 8];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..8 {
            let xs = &x[32 * j..32 * j + 32];
            let sum_x2: f32 = xs.iter().fold(0.0, |s, &v| s + v * v);
            let av_x = (sum_x2 / 32.0).sqrt();
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            let (sc, mn) = make_qkx2_quants(
                15,
                xs,
                &weights,
                &mut l[32 * j..32 * j + 32],
                &mut l_aux,
                -1.0,
                0.1,
                20,
            );
            scales[j] = sc;
            mins[j] = mn;
            if sc > max_scale {
                max_scale = sc;
            }
            if mn > max_min {
                max_min = mn;
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut packed = [0u8; 12];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                packed[j] = ls;
                packed[j + 4] = lm;
            } else {
                packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                packed[j - 4] |= (ls >> 4) << 6;
                packed[j] |= (lm >> 4) << 6;
            }
        }
        y.scales = packed;
        y.d = f32_to_f16(max_scale / 63.0);
        y.dmin = f32_to_f16(max_min / 63.0);
        let (d_all, dmin_all) = y.scales_f32();
        for j in 0..8 {
            let (sc, m) = super::blocks::scale_min_k4(j, &packed);
            let d = d_all * sc as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * m as f32;
            for ii in 0..32 {
                let q = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, 15);
                l[32 * j + ii] = q as u8;
            }
        }
        let mut qs = [0u8; 128];
        for c in 0..4 {
            for i in 0..32 {
                qs[32 * c + i] = l[64 * c + i] | (l[64 * c + i + 32] << 4);
            }
        }
        y.qs = qs;
    }
}

impl BlockQ8K {
    /// An all-zero block (`d = 0`).
    pub fn zeroed_block() -> Self {
        bytemuck::Zeroable::zeroed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_cast_matches_x86_for_special_values() {
        assert_eq!(c_cast_f32_to_i8(f32::INFINITY), 0);
        assert_eq!(c_cast_f32_to_i8(f32::NEG_INFINITY), 0);
        assert_eq!(c_cast_f32_to_i8(f32::NAN), 0);
        assert_eq!(c_cast_f32_to_i8(16.9), 16);
        assert_eq!(c_cast_f32_to_i8(-3.7), -3);
        assert_eq!(c_cast_f32_to_i8(300.0), 44); // low byte of 300
    }

    #[test]
    fn nearest_int_is_half_to_even_and_roundf_half_away() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-126.5), -126);
        // Non-finite: the bit trick's values, whose low byte (what ggml stores) is 0.
        assert_eq!(nearest_int(f32::INFINITY), -0x40_0000);
        assert_eq!(nearest_int(f32::NEG_INFINITY), -0x40_0000);
        assert_eq!(nearest_int(f32::NAN), 0);
        assert_eq!(roundf(2.5), 3.0);
        assert_eq!(roundf(-2.5), -3.0);
        assert_eq!(roundf(0.49999997), 0.0);
    }

    #[test]
    fn q8_k_block_sums_and_scale() {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) * 0.5).collect();
        let mut y = [BlockQ8K::zeroed_block()];
        quantize_q8_k(&x, &mut y);
        let b = y[0];
        let (d, qs, bsums) = (b.d, b.qs, b.bsums);
        // max |x| is at i = 255 (77.5, positive) so iscale = -127/77.5 and q[255] = -127.
        assert_eq!(qs[255], -127);
        assert!((d - 77.5 / -127.0).abs() < 1e-7);
        for j in 0..16 {
            let s: i32 = qs[16 * j..16 * j + 16].iter().map(|&q| q as i32).sum();
            assert_eq!(bsums[j] as i32, s);
        }
    }

    #[test]
    fn q8_k_zero_block_is_all_zero() {
        let x = [0.0f32; 256];
        let mut y = [BlockQ8K {
            d: 1.0,
            qs: [3; 256],
            bsums: [7; 16],
        }];
        quantize_q8_k(&x, &mut y);
        assert_eq!(y[0], BlockQ8K::zeroed_block());
    }
}
