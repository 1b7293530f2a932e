//! Portable reference kernels: the specification every SIMD variant is tested against.
//!
//! Quantised dot products accumulate exact integer sums per block (or per K-quant super-block)
//! and combine blocks in f32, as ggml's scalar code does. The callers guarantee equal lengths
//! (checked in [`super`]); here mismatched slices are simply truncated by `zip`.

use crate::quant::blocks::{q3k_scales, scale_min_k4};
use crate::quant::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, BlockQ8_1, BlockQ8K, bf16_to_f32, f16_to_f32, quantize,
};

/// Quantises activations to Q8_0 (ggml's reference quantiser).
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    quantize::quantize_q8_0(src, dst);
}

/// Quantises activations to Q8_1 (ggml's reference quantiser).
pub fn quantize_row_q8_1(src: &[f32], dst: &mut [BlockQ8_1]) {
    quantize::quantize_q8_1(src, dst);
}

/// Quantises activations to Q8_K (ggml's reference quantiser).
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]) {
    quantize::quantize_q8_k(src, dst);
}

/// The 32 quants of a Q4_0 block, minus 8, in element order.
#[inline]
pub(crate) fn unpack_q4_0(b: &BlockQ4_0) -> [i8; 32] {
    let mut q = [0i8; 32];
    for j in 0..16 {
        q[j] = (b.qs[j] & 0xF) as i8 - 8;
        q[j + 16] = (b.qs[j] >> 4) as i8 - 8;
    }
    q
}

#[inline]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// Σ over blocks of `d_w·d_a·Σ q_w·q_a`.
pub fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi = dot_i8(&unpack_q4_0(x), &y.qs);
        sum += sumi as f32 * (x.scale() * y.scale());
    }
    sum
}

/// Σ over blocks of `d_w·d_a·Σ q_w·q_a`.
pub fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let sumi = dot_i8(&x.qs, &y.qs);
        sum += sumi as f32 * (x.scale() * y.scale());
    }
    sum
}

/// Σ over blocks of `d_w·d_a·Σ q_w·q_a + m_w·s_a`.
pub fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (x.qs[j] & 0xF) as i32 * y.qs[j] as i32;
            sumi += (x.qs[j] >> 4) as i32 * y.qs[j + 16] as i32;
        }
        sum += sumi as f32 * (x.scale() * y.scale()) + x.min() * y.sum();
    }
    sum
}

/// Q5_0 × Q8_0.
pub fn vec_dot_q5_0_q8_0(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let qh = x.high_bits();
        let mut sumi = 0i32;
        for j in 0..16 {
            let q0 = ((x.qs[j] & 0xF) as u32 | ((qh >> j) & 1) << 4) as i32 - 16;
            let q1 = ((x.qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32 - 16;
            sumi += q0 * y.qs[j] as i32 + q1 * y.qs[j + 16] as i32;
        }
        sum += sumi as f32 * (x.scale() * y.scale());
    }
    sum
}

/// Q5_1 × Q8_1.
pub fn vec_dot_q5_1_q8_1(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let qh = x.high_bits();
        let mut sumi = 0i32;
        for j in 0..16 {
            let q0 = ((x.qs[j] & 0xF) as u32 | ((qh >> j) & 1) << 4) as i32;
            let q1 = ((x.qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32;
            sumi += q0 * y.qs[j] as i32 + q1 * y.qs[j + 16] as i32;
        }
        sum += sumi as f32 * (x.scale() * y.scale()) + x.min() * y.sum();
    }
    sum
}

/// Q2_K × Q8_K.
pub fn vec_dot_q2_k_q8_k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let (yqs, bsums) = (y.qs, y.bsums);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for j in 0..16 {
            // Sub-block j of 16: half n, shift group g, part.
            let (n, g, part) = (j / 8, (j % 8) / 2, j % 2);
            let mut s = 0i32;
            for l in 0..16 {
                let q = ((x.qs[32 * n + 16 * part + l] >> (2 * g)) & 3) as i32;
                s += q * yqs[16 * j + l] as i32;
            }
            sumi += (x.scales[j] & 0xF) as i32 * s;
            summ += (x.scales[j] >> 4) as i32 * bsums[j] as i32;
        }
        let d = y.d * f16_to_f32(x.d);
        let dmin = y.d * f16_to_f32(x.dmin);
        sum += d * sumi as f32 - dmin * summ as f32;
    }
    sum
}

/// Q3_K × Q8_K.
pub fn vec_dot_q3_k_q8_k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let yqs = y.qs;
        let scales = q3k_scales(&x.scales);
        let mut sumi = 0i32;
        for (j, &sc) in scales.iter().enumerate() {
            let (n, g, part) = (j / 8, (j % 8) / 2, j % 2);
            let mut s = 0i32;
            for l in 0..16 {
                let lo = ((x.qs[32 * n + 16 * part + l] >> (2 * g)) & 3) as i32;
                let h = (x.hmask[16 * part + l] >> (4 * n + g)) & 1;
                let q = lo - if h == 1 { 0 } else { 4 };
                s += q * yqs[16 * j + l] as i32;
            }
            sumi += sc as i32 * s;
        }
        sum += y.d * f16_to_f32(x.d) * sumi as f32;
    }
    sum
}

/// Q4_K × Q8_K.
pub fn vec_dot_q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let (yqs, bsums) = (y.qs, y.bsums);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, &x.scales);
            let c = s / 2;
            let mut t = 0i32;
            for l in 0..32 {
                let byte = x.qs[32 * c + l];
                let q = if s % 2 == 0 { byte & 0xF } else { byte >> 4 };
                t += q as i32 * yqs[32 * s + l] as i32;
            }
            sumi += sc as i32 * t;
            summ += m as i32 * (bsums[2 * s] as i32 + bsums[2 * s + 1] as i32);
        }
        let (d, dmin) = x.scales_f32();
        sum += y.d * d * sumi as f32 - y.d * dmin * summ as f32;
    }
    sum
}

/// Q5_K × Q8_K.
pub fn vec_dot_q5_k_q8_k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let (yqs, bsums) = (y.qs, y.bsums);
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, &x.scales);
            let c = s / 2;
            let mut t = 0i32;
            for l in 0..32 {
                let byte = x.qs[32 * c + l];
                let lo = if s % 2 == 0 { byte & 0xF } else { byte >> 4 };
                let q = lo as i32 + 16 * ((x.qh[l] >> s) & 1) as i32;
                t += q * yqs[32 * s + l] as i32;
            }
            sumi += sc as i32 * t;
            summ += m as i32 * (bsums[2 * s] as i32 + bsums[2 * s + 1] as i32);
        }
        let (d, dmin) = x.scales_f32();
        sum += y.d * d * sumi as f32 - y.d * dmin * summ as f32;
    }
    sum
}

/// Q6_K × Q8_K.
pub fn vec_dot_q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in w.iter().zip(a) {
        let yqs = y.qs;
        let mut sumi = 0i32;
        for n in 0..2 {
            for g in 0..4 {
                for h in 0..2 {
                    let mut t = 0i32;
                    for l in 16 * h..16 * h + 16 {
                        let ql = x.ql[64 * n + l + 32 * (g % 2)];
                        let lo = if g < 2 { ql & 0xF } else { ql >> 4 };
                        let hi = (x.qh[32 * n + l] >> (2 * g)) & 3;
                        let q = (lo | (hi << 4)) as i32 - 32;
                        t += q * yqs[128 * n + 32 * g + l] as i32;
                    }
                    sumi += x.scales[8 * n + 2 * g + h] as i32 * t;
                }
            }
        }
        sum += y.d * x.scale() * sumi as f32;
    }
    sum
}

/// Σ a·b in f32.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Σ w·x with f16 weights.
pub fn dot_f16_f32(w: &[u16], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(&h, y)| f16_to_f32(h) * y).sum()
}

/// Σ w·x with bf16 weights.
pub fn dot_bf16_f32(w: &[u16], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(&h, y)| bf16_to_f32(h) * y).sum()
}

/// `y += alpha·x`.
pub fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

/// `x[i] = exp(x[i] − m)`, returning their sum in order (see [`super::exp_shift_sum`]).
pub fn exp_shift_sum(x: &mut [f32], m: f32) -> f32 {
    let mut sum = 0f32;
    for v in x {
        *v = (*v - m).exp();
        sum += *v;
    }
    sum
}

/// `C += A·B` (see [`super::sgemm_acc`]; shape checked by the caller). Each element gets its
/// `k` products added in order of `p`, each with a multiply and an add (`mul_add` would be a
/// library call per product on x86-64 builds without FMA): rows of `B` scaled by `A`'s row,
/// contiguous loops the compiler vectorises.
pub fn sgemm_acc(s: super::Sgemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    for i in 0..s.m {
        let cr = &mut c[i * s.ldc..i * s.ldc + s.n];
        for (p, &av) in a[i * s.lda..i * s.lda + s.k].iter().enumerate() {
            for (o, &bv) in cr.iter_mut().zip(&b[p * s.ldb..p * s.ldb + s.n]) {
                *o += av * bv;
            }
        }
    }
}

/// `x *= s`.
pub fn scale_f32(x: &mut [f32], s: f32) {
    for v in x {
        *v *= s;
    }
}

/// `y += alpha·dequant(w)` for one Q4_0 row.
pub fn axpy_q4_0_f32(alpha: f32, w: &[BlockQ4_0], y: &mut [f32]) {
    for (b, out) in w.iter().zip(y.chunks_exact_mut(32)) {
        let d = alpha * b.scale();
        for (o, q) in out.iter_mut().zip(unpack_q4_0(b)) {
            *o += d * q as f32;
        }
    }
}

/// `y += alpha·dequant(w)` for one Q8_0 row.
pub fn axpy_q8_0_f32(alpha: f32, w: &[BlockQ8_0], y: &mut [f32]) {
    for (b, out) in w.iter().zip(y.chunks_exact_mut(32)) {
        let d = alpha * b.scale();
        for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
            *o += d * q as f32;
        }
    }
}

/// Matrix × vector: `out[r] = vec_dot(w[r·nb..(r+1)·nb], a)` with `nb = a.len()`.
pub fn gemv_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0], out: &mut [f32]) {
    let nb = a.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
        *o = vec_dot_q4_0_q8_0(row, a);
    }
}

/// Matrix × vector for Q8_0 weights (see [`gemv_q4_0_q8_0`]).
pub fn gemv_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0], out: &mut [f32]) {
    let nb = a.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
        *o = vec_dot_q8_0_q8_0(row, a);
    }
}

/// Matrix × two-level vector: `out[r] = row_r · hi + row_r · lo` (the reference for the fused
/// SIMD kernels).
pub fn gemv2_q4_0_q8_0(w: &[BlockQ4_0], hi: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    let nb = hi.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
        *o = vec_dot_q4_0_q8_0(row, hi) + vec_dot_q4_0_q8_0(row, lo);
    }
}

/// As [`gemv2_q4_0_q8_0`] for Q8_0 weights.
pub fn gemv2_q8_0_q8_0(w: &[BlockQ8_0], hi: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]) {
    let nb = hi.len();
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
        *o = vec_dot_q8_0_q8_0(row, hi) + vec_dot_q8_0_q8_0(row, lo);
    }
}

/// Rows `idx` × a two-level activation: `out[i] = row(idx[i]) · hi + row(idx[i]) · lo`.
pub fn gather_gemv2_q4_0_q8_0(
    w: &[BlockQ4_0],
    idx: &[u32],
    hi: &[BlockQ8_0],
    lo: &[BlockQ8_0],
    out: &mut [f32],
) {
    let one = |r: &[BlockQ4_0]| vec_dot_q4_0_q8_0(r, hi) + vec_dot_q4_0_q8_0(r, lo);
    super::gather_rows(w, hi.len(), idx, out, |r| r.map(one), one);
}

/// As [`gather_gemv2_q4_0_q8_0`] for Q8_0 weights.
pub fn gather_gemv2_q8_0_q8_0(
    w: &[BlockQ8_0],
    idx: &[u32],
    hi: &[BlockQ8_0],
    lo: &[BlockQ8_0],
    out: &mut [f32],
) {
    let one = |r: &[BlockQ8_0]| vec_dot_q8_0_q8_0(r, hi) + vec_dot_q8_0_q8_0(r, lo);
    super::gather_rows(w, hi.len(), idx, out, |r| r.map(one), one);
}
