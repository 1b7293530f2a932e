//! Kernels: every available SIMD table against the scalar reference (bit-exact quantisers,
//! dot products within named tolerances), the scalar dot products against dequantise + f64
//! dot, on ragged lengths with random and extreme data; the generic `dot_row`/`dot_rows` entry.

use bytemuck::Zeroable;
use engine::Error;
use engine::formats::npy;
use engine::kernels::{self, ActFormat, Kernels, QuantAct, SimdLevel, act_format_for};
use engine::quant::{
    self, BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K,
    BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, GgmlType, QuantBlock,
};

use crate::common::fixture;
use crate::quant::{Rng, random_blocks};

/// SIMD vs scalar quantised dot products: both sum exact integer block products; only the f32
/// accumulation order differs. Relative to Σ|w·a| over the dequantised values.
const SIMD_VS_SCALAR_REL_TOL: f64 = 1e-5;
/// Scalar quantised dot vs f64 dot of the dequantised operands (f32 block scaling only).
const SCALAR_VS_DEQUANT_REL_TOL: f64 = 1e-5;
/// f32/f16/bf16 dots (any level) vs the f64 dot of the same values; n ≤ 1000 terms.
const FLOAT_DOT_REL_TOL: f64 = 1e-4;
/// `axpy`: FMA (one rounding) vs multiply-then-add (two roundings).
const AXPY_REL_TOL: f32 = 2.0 * f32::EPSILON;
/// Absolute floor for comparisons whose magnitude is 0.
const ABS_FLOOR: f64 = 1e-30;

/// Block counts with ragged tails for the 4-row and 2-way-split kernels.
const BLOCK_COUNTS: [usize; 8] = [0, 1, 2, 3, 7, 8, 33, 64];

fn levels() -> Vec<&'static Kernels> {
    let v = Kernels::available();
    if kernels::features().avx2 && kernels::features().fma && kernels::features().f16c {
        assert!(
            v.iter().any(|k| k.level == SimdLevel::Avx2),
            "AVX2 CPU but no AVX2 table"
        );
    }
    let f = kernels::features();
    if f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni {
        assert!(
            v.iter().any(|k| k.level == SimdLevel::Avx512),
            "AVX-512 VNNI CPU but no AVX-512 table"
        );
    }
    v
}

fn scalar() -> &'static Kernels {
    Kernels::for_level(SimdLevel::Scalar).unwrap()
}

fn deq<B: QuantBlock>(b: &[B]) -> Vec<f32> {
    let mut out = vec![0f32; b.len() * B::ELEMS];
    quant::dequantize_row(B::TYPE, bytemuck::cast_slice(b), &mut out).unwrap();
    out
}

/// (Σ|w·a|, Σ w·a) in f64.
fn mag_exact(w: &[f32], a: &[f32]) -> (f64, f64) {
    assert_eq!(w.len(), a.len());
    let mut m = 0.0;
    let mut s = 0.0;
    for (&x, &y) in w.iter().zip(a) {
        let p = x as f64 * y as f64;
        m += p.abs();
        s += p;
    }
    (m, s)
}

/// Activation values of several kinds: 0 normal, 1 large with outliers and zeros, 2 tiny
/// (subnormal scales), 3 exact half-way values (scale 1), 4 constant.
fn act_values(rng: &mut Rng, n: usize, kind: usize) -> Vec<f32> {
    (0..n)
        .map(|i| match kind {
            0 => rng.normal(1.0),
            1 => {
                let r = rng.f32();
                if r < 0.05 {
                    // Outliers small enough for Q8_1's f16 block sum (≤ 65504).
                    1e3 * if r < 0.025 { -1.0 } else { 1.0 }
                } else if r < 0.15 {
                    0.0
                } else {
                    rng.normal(30.0)
                }
            }
            2 => rng.normal(1e-39),
            3 => {
                if i % 32 == 0 {
                    127.0
                } else {
                    ((rng.next_u64() % 254) as f32 - 127.0) + 0.5 * (i % 2) as f32
                }
            }
            _ => 2.75,
        })
        .collect()
}

/// Random weight rows: `kind` 0 random bytes, 1 all bits set, 2 all zero quants.
fn weights<B: QuantBlock>(rng: &mut Rng, n: usize, f16_offsets: &[usize], kind: usize) -> Vec<B> {
    let mut bytes = random_blocks::<B>(rng, n, f16_offsets);
    if kind > 0 {
        let fill = if kind == 1 { 0xFF } else { 0x00 };
        for b in bytes.chunks_exact_mut(std::mem::size_of::<B>()) {
            for (i, v) in b.iter_mut().enumerate() {
                if !f16_offsets.iter().any(|&o| i == o || i == o + 1) {
                    *v = fill;
                }
            }
        }
    }
    bytemuck::cast_slice(&bytes).to_vec()
}

type DotFn<W, A> = fn(&[W], &[A]) -> f32;
type QuantFn<A> = fn(&[f32], &mut [A]);

/// Extra error allowed by the activation format itself: Q8_1 stores `s = d·Σq` as f16, and the
/// Q4_1/Q5_1 dot products use `m_w·s`, so the rounding of `s` (times |m_w|) is part of the
/// result. Weight blocks of those types hold `m` as f16 at byte offset 2.
fn format_slack<W: QuantBlock, A: QuantBlock>(w: &[W], a: &[A]) -> f64 {
    if A::TYPE != GgmlType::Q8_1 {
        return 0.0;
    }
    let a: &[BlockQ8_1] = bytemuck::cast_slice(a);
    let wb: &[u8] = bytemuck::cast_slice(w);
    let bs = std::mem::size_of::<W>();
    a.iter()
        .enumerate()
        .map(|(i, y)| {
            let m = quant::f16_to_f32(u16::from_le_bytes([wb[i * bs + 2], wb[i * bs + 3]]));
            let qs = y.qs;
            let exact = y.scale() as f64 * qs.iter().map(|&q| q as f64).sum::<f64>();
            (m as f64).abs() * (y.sum() as f64 - exact).abs()
        })
        .sum()
}

fn check_dot<W: QuantBlock, A: QuantBlock>(
    get: fn(&Kernels) -> DotFn<W, A>,
    quant_a: fn(&Kernels) -> QuantFn<A>,
    f16_offsets: &[usize],
) {
    let mut rng = Rng::new(W::TYPE.id() as u64 * 7 + 1);
    let mut checked = 0;
    for nb in BLOCK_COUNTS {
        for wkind in 0..3 {
            for akind in 0..5 {
                let w: Vec<W> = weights(&mut rng, nb, f16_offsets, wkind);
                let x = act_values(&mut rng, nb * A::ELEMS, akind);
                let mut a = vec![A::zeroed(); nb];
                quant_a(scalar())(&x, &mut a);
                let (mag, exact) = mag_exact(&deq(&w), &deq(&a));
                let s = get(scalar())(&w, &a) as f64;
                let slack = format_slack(&w, &a);
                assert!(slack.is_finite());
                assert!(
                    (s - exact).abs() <= SCALAR_VS_DEQUANT_REL_TOL * mag + slack + ABS_FLOOR,
                    "{:?} scalar: {nb} blocks, kinds {wkind}/{akind}: {s} vs {exact} (mag {mag})",
                    W::TYPE
                );
                for k in levels() {
                    let v = get(k)(&w, &a) as f64;
                    assert!(
                        (v - s).abs() <= SIMD_VS_SCALAR_REL_TOL * mag + ABS_FLOOR,
                        "{:?} {:?}: {nb} blocks, kinds {wkind}/{akind}: {v} vs scalar {s} (mag {mag})",
                        W::TYPE,
                        k.level
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, BLOCK_COUNTS.len() * 15);
}

fn q8_0(k: &Kernels) -> QuantFn<BlockQ8_0> {
    k.quantize_row_q8_0
}
fn q8_1(k: &Kernels) -> QuantFn<BlockQ8_1> {
    k.quantize_row_q8_1
}
fn q8k(k: &Kernels) -> QuantFn<BlockQ8K> {
    k.quantize_row_q8_k
}

#[test]
fn dot_q4_0_q8_0_all_levels() {
    check_dot::<BlockQ4_0, BlockQ8_0>(|k| k.vec_dot_q4_0_q8_0, q8_0, &[0]);
}

#[test]
fn dot_q8_0_q8_0_all_levels() {
    check_dot::<BlockQ8_0, BlockQ8_0>(|k| k.vec_dot_q8_0_q8_0, q8_0, &[0]);
}

#[test]
fn dot_q4_1_q8_1_all_levels() {
    check_dot::<BlockQ4_1, BlockQ8_1>(|k| k.vec_dot_q4_1_q8_1, q8_1, &[0, 2]);
}

#[test]
fn dot_q5_0_q8_0_all_levels() {
    check_dot::<BlockQ5_0, BlockQ8_0>(|k| k.vec_dot_q5_0_q8_0, q8_0, &[0]);
}

#[test]
fn dot_q5_1_q8_1_all_levels() {
    check_dot::<BlockQ5_1, BlockQ8_1>(|k| k.vec_dot_q5_1_q8_1, q8_1, &[0, 2]);
}

#[test]
fn dot_q2_k_q8_k_all_levels() {
    check_dot::<BlockQ2K, BlockQ8K>(|k| k.vec_dot_q2_k_q8_k, q8k, &[80, 82]);
}

#[test]
fn dot_q3_k_q8_k_all_levels() {
    check_dot::<BlockQ3K, BlockQ8K>(|k| k.vec_dot_q3_k_q8_k, q8k, &[108]);
}

#[test]
fn dot_q4_k_q8_k_all_levels() {
    check_dot::<BlockQ4K, BlockQ8K>(|k| k.vec_dot_q4_k_q8_k, q8k, &[0, 2]);
}

#[test]
fn dot_q5_k_q8_k_all_levels() {
    check_dot::<BlockQ5K, BlockQ8K>(|k| k.vec_dot_q5_k_q8_k, q8k, &[0, 2]);
}

#[test]
fn dot_q6_k_q8_k_all_levels() {
    check_dot::<BlockQ6K, BlockQ8K>(|k| k.vec_dot_q6_k_q8_k, q8k, &[208]);
}

fn check_quantizer<A: QuantBlock + PartialEq + std::fmt::Debug>(get: fn(&Kernels) -> QuantFn<A>) {
    let mut rng = Rng::new(A::TYPE.id() as u64);
    for nb in BLOCK_COUNTS {
        for kind in 0..5 {
            let mut x = act_values(&mut rng, nb * A::ELEMS, kind);
            if kind == 1 && nb > 1 {
                // Equal magnitudes of both signs: the first one decides the Q8_K scale sign.
                x[3] = -1e4;
                x[A::ELEMS - 2] = 1e4;
            }
            let mut want = vec![A::zeroed(); nb];
            get(scalar())(&x, &mut want);
            for k in levels() {
                let mut got = vec![A::zeroed(); nb];
                get(k)(&x, &mut got);
                assert_eq!(
                    got,
                    want,
                    "{:?} {:?} {nb} blocks kind {kind}",
                    A::TYPE,
                    k.level
                );
            }
        }
    }
}

#[test]
fn activation_quantisers_bit_exact_on_all_levels() {
    check_quantizer::<BlockQ8_0>(q8_0);
    check_quantizer::<BlockQ8_1>(q8_1);
    check_quantizer::<BlockQ8K>(q8k);
}

#[test]
fn q8_0_quantiser_matches_golden_bytes_on_all_levels() {
    for name in [
        "normal",
        "outliers",
        "tiny",
        "q8_halfway",
        "large",
        "zeros",
        "constant",
    ] {
        let input = npy::read(&fixture(&format!("quant/{name}.f32.npy"))).unwrap();
        let x = input.to_f32().unwrap();
        let want = npy::read(&fixture(&format!("quant/{name}.q8_0.npy"))).unwrap();
        for k in levels() {
            let mut got = vec![BlockQ8_0::zeroed(); x.len() / 32];
            (k.quantize_row_q8_0)(&x, &mut got);
            assert_eq!(
                bytemuck::cast_slice::<BlockQ8_0, u8>(&got),
                &want.data[..],
                "{name} {:?}",
                k.level
            );
        }
    }
}

#[test]
fn gemv_matches_per_row_dot_for_ragged_row_counts() {
    let mut rng = Rng::new(42);
    for nb in [1, 7, 33] {
        for n_rows in 0..=9 {
            let x = act_values(&mut rng, nb * 32, 0);
            let mut a = vec![BlockQ8_0::zeroed(); nb];
            kernels::quantize_row_q8_0(&x, &mut a);
            let w4: Vec<BlockQ4_0> = weights(&mut rng, nb * n_rows, &[0], 0);
            let w8: Vec<BlockQ8_0> = weights(&mut rng, nb * n_rows, &[0], 0);
            for k in levels() {
                let mut out4 = vec![f32::NAN; n_rows];
                let mut out8 = vec![f32::NAN; n_rows];
                (k.gemv_q4_0_q8_0)(&w4, &a, &mut out4);
                (k.gemv_q8_0_q8_0)(&w8, &a, &mut out8);
                for r in 0..n_rows {
                    let (row4, row8) = (&w4[r * nb..(r + 1) * nb], &w8[r * nb..(r + 1) * nb]);
                    let (m4, _) = mag_exact(&deq(row4), &deq(&a));
                    let (m8, _) = mag_exact(&deq(row8), &deq(&a));
                    let s4 = (scalar().vec_dot_q4_0_q8_0)(row4, &a) as f64;
                    let s8 = (scalar().vec_dot_q8_0_q8_0)(row8, &a) as f64;
                    assert!(
                        (out4[r] as f64 - s4).abs() <= SIMD_VS_SCALAR_REL_TOL * m4 + ABS_FLOOR,
                        "q4_0 {:?} nb {nb} rows {n_rows} r {r}: {} vs {s4}",
                        k.level,
                        out4[r]
                    );
                    assert!(
                        (out8[r] as f64 - s8).abs() <= SIMD_VS_SCALAR_REL_TOL * m8 + ABS_FLOOR,
                        "q8_0 {:?} nb {nb} rows {n_rows} r {r}: {} vs {s8}",
                        k.level,
                        out8[r]
                    );
                }
            }
        }
    }
}

/// The fused two-level kernels (`row·hi + row·lo` in one pass) against two scalar dots, on
/// ragged block and row counts (odd block counts exercise the pair kernels' tail block).
#[test]
fn gemv2_matches_two_scalar_dots_for_ragged_sizes() {
    let mut rng = Rng::new(43);
    for nb in [1, 2, 3, 7, 24, 33, 48] {
        for n_rows in [0, 1, 3, 4, 5, 8, 9, 13] {
            let x = act_values(&mut rng, nb * 32, 0);
            let mut hi = vec![BlockQ8_0::zeroed(); nb];
            kernels::quantize_row_q8_0(&x, &mut hi);
            let res: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| v - quant::f16_to_f32(hi[i / 32].d) * hi[i / 32].qs[i % 32] as f32)
                .collect();
            let mut lo = vec![BlockQ8_0::zeroed(); nb];
            kernels::quantize_row_q8_0(&res, &mut lo);
            let w4: Vec<BlockQ4_0> = weights(&mut rng, nb * n_rows, &[0], 0);
            let w8: Vec<BlockQ8_0> = weights(&mut rng, nb * n_rows, &[0], 0);
            for k in levels() {
                let mut out4 = vec![f32::NAN; n_rows];
                let mut out8 = vec![f32::NAN; n_rows];
                (k.gemv2_q4_0_q8_0)(&w4, &hi, &lo, &mut out4);
                (k.gemv2_q8_0_q8_0)(&w8, &hi, &lo, &mut out8);
                for r in 0..n_rows {
                    let (row4, row8) = (&w4[r * nb..(r + 1) * nb], &w8[r * nb..(r + 1) * nb]);
                    let (m4, _) = mag_exact(&deq(row4), &x);
                    let (m8, _) = mag_exact(&deq(row8), &x);
                    let s4 = (scalar().vec_dot_q4_0_q8_0)(row4, &hi) as f64
                        + (scalar().vec_dot_q4_0_q8_0)(row4, &lo) as f64;
                    let s8 = (scalar().vec_dot_q8_0_q8_0)(row8, &hi) as f64
                        + (scalar().vec_dot_q8_0_q8_0)(row8, &lo) as f64;
                    assert!(
                        (out4[r] as f64 - s4).abs() <= SIMD_VS_SCALAR_REL_TOL * m4 + ABS_FLOOR,
                        "gemv2 q4_0 {:?} nb {nb} rows {n_rows} r {r}: {} vs {s4}",
                        k.level,
                        out4[r]
                    );
                    assert!(
                        (out8[r] as f64 - s8).abs() <= SIMD_VS_SCALAR_REL_TOL * m8 + ABS_FLOOR,
                        "gemv2 q8_0 {:?} nb {nb} rows {n_rows} r {r}: {} vs {s8}",
                        k.level,
                        out8[r]
                    );
                }
            }
        }
    }
}

/// The x8-packed kernels of every level against the row-major scalar reference on the same
/// rows, one and two activation levels, for ragged block and group counts.
#[test]
fn packed_x8_gemv_matches_row_major_scalar() {
    use engine::kernels::packed::{BlockQ4_0x8, Q8Facts, repack_q4_0x8};
    let mut rng = Rng::new(44);
    for nb in [1, 2, 3, 24, 48, 300] {
        for groups in [0, 1, 2, 5] {
            let n_rows = groups * 8;
            let x = act_values(&mut rng, nb * 32, 0);
            let mut hi = vec![BlockQ8_0::zeroed(); nb];
            kernels::quantize_row_q8_0(&x, &mut hi);
            let res: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| v - quant::f16_to_f32(hi[i / 32].d) * hi[i / 32].qs[i % 32] as f32)
                .collect();
            let mut lo = vec![BlockQ8_0::zeroed(); nb];
            kernels::quantize_row_q8_0(&res, &mut lo);
            let w: Vec<BlockQ4_0> = weights(&mut rng, nb * n_rows, &[0], 0);
            let mut p = vec![BlockQ4_0x8::zeroed(); groups * nb];
            if n_rows > 0 {
                repack_q4_0x8(&w, nb, &mut p).unwrap();
            }
            for k in levels() {
                let mut one = vec![f32::NAN; n_rows];
                let mut two = vec![f32::NAN; n_rows];
                let (fh, fl) = (Q8Facts::of(&hi), Q8Facts::of(&lo));
                let (vh, vl) = (fh.view(&hi).unwrap(), fl.view(&lo).unwrap());
                (k.gemv_q4_0x8_q8_0)(&p, vh, &mut one);
                (k.gemv2_q4_0x8_q8_0)(&p, vh, vl, &mut two);
                for r in 0..n_rows {
                    let row = &w[r * nb..(r + 1) * nb];
                    let (m, _) = mag_exact(&deq(row), &x);
                    let s1 = (scalar().vec_dot_q4_0_q8_0)(row, &hi) as f64;
                    let s2 = s1 + (scalar().vec_dot_q4_0_q8_0)(row, &lo) as f64;
                    let tol = SIMD_VS_SCALAR_REL_TOL * m + ABS_FLOOR;
                    assert!(
                        (one[r] as f64 - s1).abs() <= tol,
                        "x8 {:?} nb {nb} rows {n_rows} r {r}: {} vs {s1}",
                        k.level,
                        one[r]
                    );
                    assert!(
                        (two[r] as f64 - s2).abs() <= tol,
                        "x8 two-level {:?} nb {nb} rows {n_rows} r {r}: {} vs {s2}",
                        k.level,
                        two[r]
                    );
                }
            }
        }
    }
}

/// The multi-token x8 kernel of every level: each token's outputs are bit for bit that level's
/// single-token two-level product (so batching never changes a token's result), and within
/// tolerance of the scalar reference, for 1 to 9 tokens (whole and partial passes of
/// `GEMM_TOKENS`) and ragged block and group counts.
#[test]
fn packed_x8_gemm_equals_per_token_gemv() {
    use engine::kernels::packed::{BlockQ4_0x8, Q8Facts, repack_q4_0x8};
    let mut rng = Rng::new(45);
    for nb in [1, 3, 48] {
        for groups in [1, 3] {
            let n_rows = groups * 8;
            let w: Vec<BlockQ4_0> = weights(&mut rng, nb * n_rows, &[0], 0);
            let mut p = vec![BlockQ4_0x8::zeroed(); groups * nb];
            repack_q4_0x8(&w, nb, &mut p).unwrap();
            let tokens: Vec<(Vec<BlockQ8_0>, Vec<BlockQ8_0>)> = (0..9)
                .map(|t| {
                    let x = act_values(&mut rng, nb * 32, t % 3);
                    let mut hi = vec![BlockQ8_0::zeroed(); nb];
                    kernels::quantize_row_q8_0(&x, &mut hi);
                    let mut lo = vec![BlockQ8_0::zeroed(); nb];
                    let res: Vec<f32> = x
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| v - hi[i / 32].scale() * hi[i / 32].qs[i % 32] as f32)
                        .collect();
                    kernels::quantize_row_q8_0(&res, &mut lo);
                    (hi, lo)
                })
                .collect();
            let facts: Vec<(Q8Facts, Q8Facts)> = tokens
                .iter()
                .map(|(h, l)| (Q8Facts::of(h), Q8Facts::of(l)))
                .collect();
            let views: Vec<_> = tokens
                .iter()
                .zip(&facts)
                .map(|((h, l), (fh, fl))| (fh.view(h).unwrap(), fl.view(l).unwrap()))
                .collect();
            for n in 1..=views.len() {
                let mut want = vec![0f32; n * n_rows];
                (scalar().gemm2_q4_0x8_q8_0)(&p, &views[..n], &mut want);
                for k in levels() {
                    let mut got = vec![f32::NAN; n * n_rows];
                    (k.gemm2_q4_0x8_q8_0)(&p, &views[..n], &mut got);
                    for (t, &(vh, vl)) in views[..n].iter().enumerate() {
                        let mut one = vec![f32::NAN; n_rows];
                        (k.gemv2_q4_0x8_q8_0)(&p, vh, vl, &mut one);
                        let g = &got[t * n_rows..(t + 1) * n_rows];
                        assert_eq!(
                            g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{:?} nb {nb} groups {groups} {n} tokens: token {t}",
                            k.level
                        );
                        for (r, (&a, &b)) in g.iter().zip(&want[t * n_rows..]).enumerate() {
                            let tol = SIMD_VS_SCALAR_REL_TOL * b.abs().max(1.0) as f64;
                            assert!(
                                (a as f64 - b as f64).abs() <= tol,
                                "{:?} nb {nb} {n} tokens: token {t} row {r}: {a} vs {b}",
                                k.level
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The checked multi-token x8 entry: same results as the single-token one, and clear errors
/// for outputs that are not whole rows per token and activations of other lengths.
#[test]
fn packed_x8_tokens_entry_checks_lengths() {
    use engine::kernels::packed::BlockQ4_0x8;
    use engine::kernels::{dot_rows_x8, dot_rows_x8_tokens};
    let w: Vec<BlockQ4_0> = weights(&mut Rng::new(46), 2 * 16, &[0], 0);
    let mut p = vec![BlockQ4_0x8::zeroed(); 4];
    kernels::packed::repack_q4_0x8(&w, 2, &mut p).unwrap();
    let acts: Vec<QuantAct> = (0..5)
        .map(|t| {
            let mut a = QuantAct::new();
            let x: Vec<f32> = (0..64)
                .map(|i| ((i * 7 + t * 13) % 23) as f32 - 11.0)
                .collect();
            a.quantize(&x, ActFormat::Q8_0).unwrap();
            a
        })
        .collect();
    let pairs: Vec<(&QuantAct, &QuantAct)> = acts.iter().map(|a| (a, a)).collect();
    let mut out = vec![0f32; 5 * 16];
    dot_rows_x8_tokens(&p, &pairs, &mut out).unwrap();
    for (t, a) in acts.iter().enumerate() {
        let mut one = vec![0f32; 16];
        dot_rows_x8(&p, a, Some(a), &mut one).unwrap();
        assert_eq!(&out[t * 16..(t + 1) * 16], &one[..], "token {t}");
    }
    assert!(dot_rows_x8_tokens(&p, &pairs, &mut out[..79]).is_err());
    assert!(dot_rows_x8_tokens(&p, &pairs, &mut out[..5 * 8]).is_err());
    assert!(dot_rows_x8_tokens(&p[..2], &pairs, &mut out).is_err());
    let mut short = QuantAct::new();
    short.quantize(&[0.5; 32], ActFormat::Q8_0).unwrap();
    let bad = [(&acts[0], &acts[0]), (&acts[1], &short)];
    assert!(dot_rows_x8_tokens(&p, &bad, &mut out[..32]).is_err());
    let mut f = QuantAct::new();
    f.quantize(&[0.5; 64], ActFormat::F32).unwrap();
    assert!(dot_rows_x8_tokens(&p, &[(&f, &f)], &mut out[..16]).is_err());
    assert!(dot_rows_x8_tokens(&p, &[], &mut []).is_ok());
}

/// The checked x8 entry rejects mismatched sizes and activation formats.
#[test]
fn packed_x8_entry_checks_lengths() {
    use engine::kernels::packed::BlockQ4_0x8;
    use engine::kernels::{ActFormat, QuantAct, dot_rows_x8};
    let mut a = QuantAct::new();
    a.quantize(&[0.5; 64], ActFormat::Q8_0).unwrap();
    let p = vec![BlockQ4_0x8::zeroed(); 2];
    let mut out = vec![0f32; 8];
    dot_rows_x8(&p, &a, None, &mut out).unwrap();
    dot_rows_x8(&p, &a, Some(&a), &mut out).unwrap();
    assert!(dot_rows_x8(&p[..1], &a, None, &mut out).is_err());
    assert!(dot_rows_x8(&p, &a, None, &mut out[..4]).is_err());
    let mut f = QuantAct::new();
    f.quantize(&[0.5; 64], ActFormat::F32).unwrap();
    assert!(dot_rows_x8(&p, &f, None, &mut out).is_err());
    let mut short = QuantAct::new();
    short.quantize(&[0.5; 32], ActFormat::Q8_0).unwrap();
    assert!(dot_rows_x8(&p, &a, Some(&short), &mut out).is_err());
}

/// Gathered rows (an expert's active neurons): every level against per-row scalar dots, for
/// index lists with ragged lengths, repeats and any order; the checked entry rejects indices
/// outside the matrix.
#[test]
fn gather_gemv2_matches_scalar_rows() {
    let mut rng = Rng::new(45);
    let (nb, n_rows) = (7, 23);
    let x = act_values(&mut rng, nb * 32, 0);
    let mut hi = vec![BlockQ8_0::zeroed(); nb];
    kernels::quantize_row_q8_0(&x, &mut hi);
    let lo: Vec<BlockQ8_0> = hi.iter().rev().cloned().collect();
    let w4: Vec<BlockQ4_0> = weights(&mut rng, nb * n_rows, &[0], 0);
    let w8: Vec<BlockQ8_0> = weights(&mut rng, nb * n_rows, &[0], 0);
    for idx in [
        vec![],
        vec![5],
        vec![22, 0, 3, 3, 9],
        (0..23u32).rev().collect::<Vec<_>>(),
    ] {
        for k in levels() {
            let mut o4 = vec![f32::NAN; idx.len()];
            let mut o8 = vec![f32::NAN; idx.len()];
            (k.gather_gemv2_q4_0_q8_0)(&w4, &idx, &hi, &lo, &mut o4);
            (k.gather_gemv2_q8_0_q8_0)(&w8, &idx, &hi, &lo, &mut o8);
            for (n, &i) in idx.iter().enumerate() {
                let i = i as usize;
                let (r4, r8) = (&w4[i * nb..(i + 1) * nb], &w8[i * nb..(i + 1) * nb]);
                let s4 = (scalar().vec_dot_q4_0_q8_0)(r4, &hi) as f64
                    + (scalar().vec_dot_q4_0_q8_0)(r4, &lo) as f64;
                let s8 = (scalar().vec_dot_q8_0_q8_0)(r8, &hi) as f64
                    + (scalar().vec_dot_q8_0_q8_0)(r8, &lo) as f64;
                let m4 = 2.0 * mag_exact(&deq(r4), &deq(&hi)).0;
                let m8 = 2.0 * mag_exact(&deq(r8), &deq(&hi)).0;
                assert!(
                    (o4[n] as f64 - s4).abs() <= SIMD_VS_SCALAR_REL_TOL * m4 + ABS_FLOOR,
                    "gather q4_0 {:?} {idx:?}: {} vs {s4}",
                    k.level,
                    o4[n]
                );
                assert!(
                    (o8[n] as f64 - s8).abs() <= SIMD_VS_SCALAR_REL_TOL * m8 + ABS_FLOOR,
                    "gather q8_0 {:?} {idx:?}: {} vs {s8}",
                    k.level,
                    o8[n]
                );
            }
        }
    }
    let mut a = kernels::QuantAct::new();
    a.quantize(&x, kernels::ActFormat::Q8_0).unwrap();
    let bytes: &[u8] = bytemuck::cast_slice(&w4);
    let mut out = [0f32; 1];
    let rb = nb * 18;
    kernels::dot_rows_gather2(quant::GgmlType::Q4_0, bytes, rb, &[22], &a, &a, &mut out).unwrap();
    assert!(
        kernels::dot_rows_gather2(quant::GgmlType::Q4_0, bytes, rb, &[23], &a, &a, &mut out)
            .is_err()
    );
}

#[test]
fn gemv_byte_entry_checks_lengths() {
    let a = vec![BlockQ8_0::zeroed(); 2];
    let rows = vec![0u8; 3 * 36];
    let mut out = vec![0f32; 3];
    kernels::gemv_q4_0_q8_0(&rows, 36, &a, &mut out).unwrap();
    assert!(matches!(
        kernels::gemv_q4_0_q8_0(&rows, 35, &a, &mut out),
        Err(Error::BadLength { .. })
    ));
    assert!(matches!(
        kernels::gemv_q4_0_q8_0(&rows[1..], 36, &a, &mut out),
        Err(Error::BadLength { .. })
    ));
    assert!(matches!(
        kernels::gemv_q8_0_q8_0(&rows, 36, &a, &mut out),
        Err(Error::BadLength { .. })
    ));
}

const FLOAT_LENS: [usize; 12] = [0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 100, 1000];

#[test]
fn float_dots_all_levels() {
    let mut rng = Rng::new(7);
    for n in FLOAT_LENS {
        let a: Vec<f32> = (0..n).map(|_| rng.normal(1.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.normal(3.0)).collect();
        let h: Vec<u16> = a.iter().map(|&v| quant::f32_to_f16(v)).collect();
        let bf: Vec<u16> = a.iter().map(|&v| quant::f32_to_bf16(v)).collect();
        let ah: Vec<f32> = h.iter().map(|&v| quant::f16_to_f32(v)).collect();
        let abf: Vec<f32> = bf.iter().map(|&v| quant::bf16_to_f32(v)).collect();
        let (m, e) = mag_exact(&a, &b);
        let (mh, eh) = mag_exact(&ah, &b);
        let (mb, eb) = mag_exact(&abf, &b);
        for k in levels() {
            let tol = |m: f64| FLOAT_DOT_REL_TOL * m + ABS_FLOOR;
            let v = (k.dot_f32)(&a, &b) as f64;
            assert!(
                (v - e).abs() <= tol(m),
                "dot_f32 {:?} n {n}: {v} vs {e}",
                k.level
            );
            let v = (k.dot_f16_f32)(&h, &b) as f64;
            assert!(
                (v - eh).abs() <= tol(mh),
                "dot_f16 {:?} n {n}: {v} vs {eh}",
                k.level
            );
            let v = (k.dot_bf16_f32)(&bf, &b) as f64;
            assert!(
                (v - eb).abs() <= tol(mb),
                "dot_bf16 {:?} n {n}: {v} vs {eb}",
                k.level
            );
        }
    }
}

#[test]
fn axpy_and_scale_all_levels() {
    let mut rng = Rng::new(9);
    for n in FLOAT_LENS {
        let x: Vec<f32> = (0..n).map(|_| rng.normal(1.0)).collect();
        let y0: Vec<f32> = (0..n).map(|_| rng.normal(1.0)).collect();
        let alpha = -0.37f32;
        let mut want = y0.clone();
        (scalar().axpy_f32)(alpha, &x, &mut want);
        let mut want_s = x.clone();
        (scalar().scale_f32)(&mut want_s, alpha);
        for k in levels() {
            let mut y = y0.clone();
            (k.axpy_f32)(alpha, &x, &mut y);
            for i in 0..n {
                let tol = AXPY_REL_TOL * ((alpha * x[i]).abs() + y0[i].abs());
                assert!(
                    (y[i] - want[i]).abs() <= tol,
                    "axpy {:?} n {n} i {i}",
                    k.level
                );
            }
            let mut s = x.clone();
            (k.scale_f32)(&mut s, alpha);
            assert_eq!(s, want_s, "scale {:?} n {n}", k.level);
        }
    }
}

/// `sgemm_acc` on every level against an f64 product (within f32 summation rounding of
/// `Σ|a·b|`), the padding between rows untouched; shapes with ragged row blocks and column
/// tails, strides wider than the rows, and bad shapes.
#[test]
fn sgemm_all_levels() {
    use engine::kernels::Sgemm;
    let mut rng = Rng::new(21);
    for (m, n, k) in [
        (1, 1, 1),
        (6, 16, 8),
        (7, 33, 5),
        (96, 128, 128),
        (13, 47, 64),
        (5, 15, 3),
    ] {
        let s = Sgemm {
            m,
            n,
            k,
            lda: k + 3,
            ldb: n + 1,
            ldc: n + 2,
        };
        let a: Vec<f32> = (0..m * s.lda).map(|_| rng.normal(1.0)).collect();
        let b: Vec<f32> = (0..k * s.ldb).map(|_| rng.normal(1.0)).collect();
        let c0: Vec<f32> = (0..m * s.ldc).map(|_| rng.normal(1.0)).collect();
        let check = |got: &[f32], what: &str| {
            for i in 0..m {
                for j in 0..s.ldc {
                    let at = i * s.ldc + j;
                    if j >= n {
                        assert_eq!(got[at], c0[at], "{what} ({m},{n},{k}): padding {i},{j}");
                        continue;
                    }
                    let (mut exact, mut mag) = (f64::from(c0[at]), f64::from(c0[at]).abs());
                    for p in 0..k {
                        let t = f64::from(a[i * s.lda + p]) * f64::from(b[p * s.ldb + j]);
                        exact += t;
                        mag += t.abs();
                    }
                    let err = (f64::from(got[at]) - exact).abs();
                    assert!(
                        err <= FLOAT_DOT_REL_TOL * mag + ABS_FLOOR,
                        "{what} ({m},{n},{k}) {i},{j}: {} vs {exact}",
                        got[at]
                    );
                }
            }
        };
        for kt in levels() {
            let mut c = c0.clone();
            (kt.sgemm_acc)(s, &a, &b, &mut c);
            check(&c, &format!("{:?}", kt.level));
        }
        let mut c = c0.clone();
        kernels::sgemm_acc(s, &a, &b, &mut c).unwrap();
        check(&c, "active level");
    }
    let s = Sgemm {
        m: 2,
        n: 4,
        k: 3,
        lda: 3,
        ldb: 4,
        ldc: 4,
    };
    let (a, b, mut c) = (vec![0f32; 6], vec![0f32; 12], vec![0f32; 8]);
    assert!(kernels::sgemm_acc(s, &a[..5], &b, &mut c).is_err());
    assert!(kernels::sgemm_acc(s, &a, &b[..11], &mut c).is_err());
    assert!(kernels::sgemm_acc(s, &a, &b, &mut c[..7]).is_err());
    assert!(kernels::sgemm_acc(Sgemm { lda: 2, ..s }, &a, &b, &mut c).is_err());
    kernels::sgemm_acc(s, &a, &b, &mut c).unwrap();
}

/// `exp_shift_sum` on every level against f64 `exp`: each value within a few ulp (relative),
/// values below `f32::MIN_POSITIVE` within that, the sum within the summation's rounding.
#[test]
fn exp_shift_sum_all_levels() {
    /// Relative error of one exponential (Cephes' polynomial: ~2 ulp).
    const EXP_REL_TOL: f64 = 4.0 * f32::EPSILON as f64;
    let mut rng = Rng::new(31);
    for n in [0usize, 1, 7, 8, 9, 33, 130] {
        let m = rng.normal(3.0);
        // Differences from 0 down to −100 (past the smallest normal result).
        let x: Vec<f32> = (0..n)
            .map(|i| {
                if i == 0 {
                    m
                } else {
                    m - 100.0 * rng.f32() * rng.f32()
                }
            })
            .collect();
        for k in levels() {
            let mut y = x.clone();
            let sum = (k.exp_shift_sum)(&mut y, m);
            let mut want_sum = 0f64;
            for (i, (&xi, &yi)) in x.iter().zip(&y).enumerate() {
                // Of the f32 difference, which every level computes first.
                let want = f64::from(xi - m).exp();
                want_sum += want;
                let err = (f64::from(yi) - want).abs();
                assert!(
                    err <= EXP_REL_TOL * want + f64::from(f32::MIN_POSITIVE),
                    "{:?} n {n} i {i}: exp({}) = {yi}, want {want}",
                    k.level,
                    xi - m
                );
            }
            assert!(
                (f64::from(sum) - want_sum).abs() <= 1e-6 * want_sum + 1e-30,
                "{:?} n {n}: sum {sum} want {want_sum}",
                k.level
            );
        }
    }
}

#[test]
fn quantised_axpy_matches_dequantise_then_axpy() {
    let mut rng = Rng::new(11);
    for nb in BLOCK_COUNTS {
        let w4: Vec<BlockQ4_0> = weights(&mut rng, nb, &[0], 0);
        let w8: Vec<BlockQ8_0> = weights(&mut rng, nb, &[0], 0);
        let y0: Vec<f32> = (0..nb * 32).map(|_| rng.normal(1.0)).collect();
        let alpha = 1.7f32;
        for k in levels() {
            for (wd, which) in [(deq(&w4), 4), (deq(&w8), 8)] {
                let mut y = y0.clone();
                if which == 4 {
                    (k.axpy_q4_0_f32)(alpha, &w4, &mut y);
                } else {
                    (k.axpy_q8_0_f32)(alpha, &w8, &mut y);
                }
                for i in 0..y.len() {
                    let want = y0[i] + alpha * wd[i];
                    let tol = 2.0 * AXPY_REL_TOL * ((alpha * wd[i]).abs() + y0[i].abs());
                    assert!(
                        (y[i] - want).abs() <= tol,
                        "axpy_q{which} {:?} nb {nb} i {i}: {} vs {want}",
                        k.level,
                        y[i]
                    );
                }
            }
        }
    }
}

/// Bytes of `n_rows` rows of `n` elements of `ty`: quantised from random values for the float
/// types, random blocks for the others.
fn random_rows(rng: &mut Rng, ty: GgmlType, n: usize, n_rows: usize) -> Vec<u8> {
    let rb = ty.row_bytes(n as u64).unwrap() as usize;
    let f16_offsets: &[usize] = match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    };
    let mut out = Vec::with_capacity(rb * n_rows);
    for _ in 0..n_rows {
        let row = match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                let x: Vec<f32> = (0..n).map(|_| rng.normal(0.5)).collect();
                let mut b = vec![0u8; rb];
                quant::quantize_row(ty, &x, &mut b).unwrap();
                b
            }
            GgmlType::Q4_0 => random_blocks::<BlockQ4_0>(rng, n / 32, f16_offsets),
            GgmlType::Q8_0 => random_blocks::<BlockQ8_0>(rng, n / 32, f16_offsets),
            GgmlType::Q4_1 => random_blocks::<BlockQ4_1>(rng, n / 32, f16_offsets),
            GgmlType::Q5_0 => random_blocks::<BlockQ5_0>(rng, n / 32, f16_offsets),
            GgmlType::Q5_1 => random_blocks::<BlockQ5_1>(rng, n / 32, f16_offsets),
            GgmlType::Q2_K => random_blocks::<BlockQ2K>(rng, n / 256, f16_offsets),
            GgmlType::Q3_K => random_blocks::<BlockQ3K>(rng, n / 256, f16_offsets),
            GgmlType::Q4_K => random_blocks::<BlockQ4K>(rng, n / 256, f16_offsets),
            GgmlType::Q5_K => random_blocks::<BlockQ5K>(rng, n / 256, f16_offsets),
            GgmlType::Q6_K => random_blocks::<BlockQ6K>(rng, n / 256, f16_offsets),
            _ => unreachable!(),
        };
        out.extend_from_slice(&row);
    }
    out
}

const DOT_ROW_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The activation the kernels actually see, dequantised.
fn act_as_seen(act: &QuantAct) -> Vec<f32> {
    match act.format() {
        ActFormat::F32 => act.f32().to_vec(),
        ActFormat::Q8_0 => deq(act.q8_0().unwrap()),
        ActFormat::Q8_1 => deq(act.q8_1().unwrap()),
        ActFormat::Q8K => deq(act.q8k().unwrap()),
    }
}

#[test]
fn dot_row_and_dot_rows_for_every_type() {
    let mut rng = Rng::new(5);
    let n = 512;
    let n_rows = 6;
    let x: Vec<f32> = (0..n).map(|_| rng.normal(1.0)).collect();
    let mut act = QuantAct::with_capacity(n);
    for ty in DOT_ROW_TYPES {
        let fmt = act_format_for(ty).unwrap();
        act.quantize(&x, fmt).unwrap();
        let seen = act_as_seen(&act);
        let rb = ty.row_bytes(n as u64).unwrap() as usize;
        let rows = random_rows(&mut rng, ty, n, n_rows);
        let mut out = vec![f32::NAN; n_rows];
        kernels::dot_rows(ty, &rows, rb, &act, &mut out).unwrap();
        for r in 0..n_rows {
            let row = &rows[r * rb..(r + 1) * rb];
            let mut wd = vec![0f32; n];
            quant::dequantize_row(ty, row, &mut wd).unwrap();
            let (m, e) = mag_exact(&wd, &seen);
            let one = kernels::dot_row(ty, row, &act).unwrap() as f64;
            let tol = FLOAT_DOT_REL_TOL * m + ABS_FLOOR;
            assert!((one - e).abs() <= tol, "{ty:?} dot_row r {r}: {one} vs {e}");
            assert!(
                (out[r] as f64 - e).abs() <= tol,
                "{ty:?} dot_rows r {r}: {} vs {e}",
                out[r]
            );
        }
        // Unaligned rows (float types copy through an aligned buffer) give the same answer.
        if !ty.is_quantized() {
            let mut shifted = vec![0u8; rb + 1];
            shifted[1..].copy_from_slice(&rows[..rb]);
            let a = kernels::dot_row(ty, &rows[..rb], &act).unwrap();
            let b = kernels::dot_row(ty, &shifted[1..], &act).unwrap();
            let (m, _) = mag_exact(&act_as_seen(&act), &act_as_seen(&act));
            assert!(
                ((a - b) as f64).abs() <= FLOAT_DOT_REL_TOL * m,
                "{ty:?} unaligned"
            );
        }
    }
}

#[test]
fn dot_row_errors() {
    let mut act = QuantAct::new();
    act.quantize(&[0.5f32; 64], ActFormat::Q8_0).unwrap();
    // Wrong activation format for the weight type.
    assert!(matches!(
        kernels::dot_row(GgmlType::Q4_K, &[0u8; 144], &act),
        Err(Error::InvalidInput(_))
    ));
    // Row size does not match the activation length.
    assert!(matches!(
        kernels::dot_row(GgmlType::Q4_0, &[0u8; 18], &act),
        Err(Error::BadLength { .. })
    ));
    assert!(matches!(
        kernels::dot_rows(GgmlType::Q4_0, &[0u8; 37], 36, &act, &mut [0.0]),
        Err(Error::BadLength { .. })
    ));
    // Types without a dot product.
    assert!(matches!(
        kernels::dot_row(GgmlType::IQ2_XS, &[0u8; 74], &act),
        Err(Error::UnsupportedType { .. })
    ));
    assert!(matches!(
        act_format_for(GgmlType::Q8_K),
        Err(Error::UnsupportedType { .. })
    ));
    // Activation length not a multiple of the block size.
    assert!(matches!(
        act.quantize(&[1.0f32; 33], ActFormat::Q8_0),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        act.quantize(&[1.0f32; 128], ActFormat::Q8K),
        Err(Error::InvalidInput(_))
    ));
    // Float rows work with any activation format.
    let w = vec![0u8; 64 * 4];
    assert_eq!(kernels::dot_row(GgmlType::F32, &w, &act).unwrap(), 0.0);
}

#[test]
fn quant_act_reuses_its_buffers() {
    let x: Vec<f32> = (0..1536).map(|i| (i as f32).sin()).collect();
    let mut act = QuantAct::new();
    act.quantize(&x, ActFormat::Q8_0).unwrap();
    let p = (act.f32().as_ptr(), act.q8_0().unwrap().as_ptr());
    for _ in 0..3 {
        act.quantize(&x, ActFormat::Q8_0).unwrap();
    }
    assert_eq!(p, (act.f32().as_ptr(), act.q8_0().unwrap().as_ptr()));
    assert_eq!(act.len(), 1536);
    assert!(act.q8k().is_none());
}

#[test]
fn public_entry_points_use_active_level_and_check_lengths() {
    let x: Vec<f32> = (0..64).map(|i| i as f32 - 31.5).collect();
    let mut a = vec![BlockQ8_0::zeroed(); 2];
    kernels::quantize_row_q8_0(&x, &mut a);
    let w = vec![BlockQ4_0::zeroed(); 2];
    assert_eq!(kernels::vec_dot_q4_0_q8_0(&w, &a), 0.0);
    let r = std::panic::catch_unwind(|| kernels::vec_dot_q4_0_q8_0(&w[..1], &a));
    assert!(r.is_err(), "length mismatch must panic");
    assert!(Kernels::active().level <= SimdLevel::detected());
}
