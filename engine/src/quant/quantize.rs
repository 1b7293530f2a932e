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
