//! Quantisation formats: ggml golden vectors (bit-exact), K-quant dequantisation against an
//! independent per-element formula, hand-built blocks, error cases.

use engine::Error;
use engine::formats::npy;
use engine::quant::{
    self, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, GgmlType, QuantBlock, f16_to_f32,
    f32_to_f16,
};

use crate::common::fixture;

/// Cases whose Q8_0 bytes depend on undefined behaviour in C (see the fixtures README).
const INFORMATIVE_Q8_0: &[&str] = &["degenerate_1e-38"];

fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("quant/manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn golden_vectors_quantise_and_dequantise_bit_exactly() {
    let m = manifest();
    let files = m["files"].as_object().unwrap();
    assert!(files.len() >= 10, "manifest lists {} cases", files.len());
    let mut checked = 0;
    for (name, case) in files {
        let input = npy::read(&fixture(&format!(
            "quant/{}",
            case["input"].as_str().unwrap()
        )))
        .unwrap();
        let x = input.to_f32().unwrap();
        let (n_rows, n_cols) = (input.shape[0], input.shape[1]);
        for (key, ty) in [("q4_0", GgmlType::Q4_0), ("q8_0", GgmlType::Q8_0)] {
            let c = &case[key];
            let bytes =
                npy::read(&fixture(&format!("quant/{}", c["bytes"].as_str().unwrap()))).unwrap();
            let deq = npy::read(&fixture(&format!(
                "quant/{}",
                c["dequantised"].as_str().unwrap()
            )))
            .unwrap()
            .to_f32()
            .unwrap();
            let row_bytes = ty.row_bytes(n_cols as u64).unwrap() as usize;
            assert_eq!(bytes.shape, vec![n_rows, row_bytes], "{name} {key}");
            for r in 0..n_rows {
                let xr = &x[r * n_cols..(r + 1) * n_cols];
                let want = &bytes.data[r * row_bytes..(r + 1) * row_bytes];
                let mut got = vec![0u8; row_bytes];
                quant::quantize_row(ty, xr, &mut got).unwrap();
                if !(ty == GgmlType::Q8_0 && INFORMATIVE_Q8_0.contains(&name.as_str())) {
                    assert_eq!(got, want, "{name} {key} row {r}: quantised bytes differ");
                }
                // Dequantise the reference bytes: must equal gguf-py's output bit for bit.
                let mut out = vec![0f32; n_cols];
                quant::dequantize_row(ty, want, &mut out).unwrap();
                let want_deq = &deq[r * n_cols..(r + 1) * n_cols];
                for (i, (a, b)) in out.iter().zip(want_deq).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{name} {key} row {r} elem {i}: {a} vs {b}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 20);
}

#[test]
fn informative_degenerate_case_q8_0_matches_x86_behaviour() {
    // ggml on x86 turns the infinite quants into 0; we mirror that, so even this case matches.
    let x = npy::read(&fixture("quant/degenerate_1e-38.f32.npy"))
        .unwrap()
        .to_f32()
        .unwrap();
    let want = npy::read(&fixture("quant/degenerate_1e-38.q8_0.npy")).unwrap();
    let mut got = vec![0u8; want.data.len()];
    quant::quantize_row(GgmlType::Q8_0, &x, &mut got).unwrap();
    assert_eq!(got, want.data);
}

/// Small deterministic generator (xorshift64*), so the tests need no extra crates.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of uniforms), mean 0, std `std`.
    pub fn normal(&mut self, std: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.f32()).sum::<f32>() - 2.0;
        s * std * 1.732
    }
    /// Random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
    /// A random finite f16 scale of moderate size (|d| in about [2^-10, 2^-2]), as raw bits.
    pub fn f16_scale(&mut self) -> u16 {
        let v = (self.f32() + 0.001) * 0.25 * if self.f32() < 0.5 { -1.0 } else { 1.0 };
        f32_to_f16(v * if self.f32() < 0.3 { 0.01 } else { 1.0 })
    }
}

/// Random bytes for `n` blocks of type `B`, with sane f16 scales at the given byte offsets.
pub fn random_blocks<B: QuantBlock>(rng: &mut Rng, n: usize, f16_offsets: &[usize]) -> Vec<u8> {
    let bs = std::mem::size_of::<B>();
    let mut bytes = vec![0u8; n * bs];
    rng.fill(&mut bytes);
    for b in bytes.chunks_exact_mut(bs) {
        for &o in f16_offsets {
            b[o..o + 2].copy_from_slice(&rng.f16_scale().to_le_bytes());
        }
    }
    bytes
}

// Independent per-element formulas, written from the format description (element index →
// bits), not from the loop structure of the dequantiser.

fn k4_scale_min(s: &[u8; 12], j: usize) -> (f32, f32) {
    // 6-bit fields: scales 0..3 in s[0..4] low 6 bits, mins 0..3 in s[4..8] low 6 bits,
    // scales/mins 4..7: low 4 bits in s[8..12] nibbles, high 2 bits in the top of s[0..8].
    let (sc, m) = if j < 4 {
        (s[j] as u32 & 0x3F, s[j + 4] as u32 & 0x3F)
    } else {
        let lo_sc = s[j + 4] as u32 & 0x0F;
        let lo_m = s[j + 4] as u32 >> 4;
        let hi_sc = (s[j - 4] as u32) >> 6;
        let hi_m = (s[j] as u32) >> 6;
        (lo_sc + 16 * hi_sc, lo_m + 16 * hi_m)
    };
    (sc as f32, m as f32)
}

fn q4k_elem(b: &BlockQ4K, i: usize) -> f32 {
    let s = i / 32; // sub-block
    let c = i / 64; // chunk of 64 sharing 32 bytes
    let l = i % 32;
    let byte = b.qs[32 * c + l];
    let q = if s.is_multiple_of(2) {
        byte & 0xF
    } else {
        byte >> 4
    } as f32;
    let (sc, m) = k4_scale_min(&b.scales, s);
    f16_to_f32(b.d) * sc * q - f16_to_f32(b.dmin) * m
}

fn q5k_elem(b: &BlockQ5K, i: usize) -> f32 {
    let s = i / 32;
    let c = i / 64;
    let l = i % 32;
    let byte = b.qs[32 * c + l];
    let lo = if s.is_multiple_of(2) {
        byte & 0xF
    } else {
        byte >> 4
    };
    let hi = (b.qh[l] >> s) & 1;
    let q = (lo + 16 * hi) as f32;
    let (sc, m) = k4_scale_min(&b.scales, s);
    f16_to_f32(b.d) * sc * q - f16_to_f32(b.dmin) * m
}

fn q6k_elem(b: &BlockQ6K, i: usize) -> f32 {
    let n = i / 128;
    let r = i % 128;
    let g = r / 32; // which of the four 32-groups of this half
    let l = r % 32;
    let ql = b.ql[64 * n + l + 32 * (g % 2)];
    let lo = if g < 2 { ql & 0xF } else { ql >> 4 };
    let hi = (b.qh[32 * n + l] >> (2 * g)) & 3;
    let q = (lo as i32 | (hi as i32) << 4) - 32;
    let sc = b.scales[8 * n + 2 * g + l / 16] as f32;
    f16_to_f32(b.d) * sc * q as f32
}

fn q2k_elem(b: &BlockQ2K, i: usize) -> f32 {
    let n = i / 128;
    let r = i % 128;
    let g = r / 32;
    let part = (r % 32) / 16;
    let l = r % 16;
    let q = (b.qs[32 * n + 16 * part + l] >> (2 * g)) & 3;
    let sc = b.scales[8 * n + 2 * g + part];
    f16_to_f32(b.d) * (sc & 0xF) as f32 * q as f32 - f16_to_f32(b.dmin) * (sc >> 4) as f32
}

fn q3k_elem(b: &BlockQ3K, i: usize) -> f32 {
    let n = i / 128;
    let r = i % 128;
    let g = r / 32;
    let part = (r % 32) / 16;
    let l = r % 16;
    let j = 8 * n + 2 * g + part; // sub-block of 16
    let lo = ((b.qs[32 * n + 16 * part + l] >> (2 * g)) & 3) as i32;
    let hbit = (b.hmask[16 * part + l] >> (4 * n + g)) & 1;
    let q = lo - if hbit == 1 { 0 } else { 4 };
    // 6-bit scale j: low 4 bits are nibble (j / 8) of scales[j % 8], high 2 bits are bits
    // 2·(j / 4)..+2 of scales[8 + j % 4].
    let low = (b.scales[j % 8] >> (4 * (j / 8))) & 0xF;
    let high = (b.scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    let sc = (low as i32 + 16 * high as i32) - 32;
    f16_to_f32(b.d) * sc as f32 * q as f32
}

/// Relative tolerance between the dequantiser and the per-element formula: both use f32, in a
/// possibly different multiplication order.
const K_FORMULA_REL_TOL: f32 = 4.0 * f32::EPSILON;

fn check_against_formula<B: QuantBlock>(f16_offsets: &[usize], elem: impl Fn(&B, usize) -> f32) {
    let mut rng = Rng::new(B::TYPE.id() as u64);
    for n_blocks in [1, 2, 5] {
        let bytes = random_blocks::<B>(&mut rng, n_blocks, f16_offsets);
        let mut out = vec![0f32; n_blocks * B::ELEMS];
        quant::dequantize_row(B::TYPE, &bytes, &mut out).unwrap();
        let blocks: &[B] = quant::blocks::as_blocks(&bytes).unwrap();
        for (bi, b) in blocks.iter().enumerate() {
            for i in 0..B::ELEMS {
                let want = elem(b, i);
                let got = out[bi * B::ELEMS + i];
                let tol = K_FORMULA_REL_TOL * want.abs().max(1e-30);
                assert!(
                    (got - want).abs() <= tol,
                    "{:?} block {bi} elem {i}: {got} vs {want}",
                    B::TYPE
                );
            }
        }
    }
}

#[test]
fn q4_k_dequant_matches_element_formula() {
    check_against_formula::<BlockQ4K>(&[0, 2], q4k_elem);
}

#[test]
fn q5_k_dequant_matches_element_formula() {
    check_against_formula::<BlockQ5K>(&[0, 2], q5k_elem);
}

#[test]
fn q6_k_dequant_matches_element_formula() {
    check_against_formula::<BlockQ6K>(&[208], q6k_elem);
}

#[test]
fn q2_k_dequant_matches_element_formula() {
    check_against_formula::<BlockQ2K>(&[80, 82], q2k_elem);
}

#[test]
fn q3_k_dequant_matches_element_formula() {
    check_against_formula::<BlockQ3K>(&[108], q3k_elem);
}

#[test]
fn hand_built_q4_k_block() {
    // d = 0.5, dmin = 0.25; sub-block 0: scale 3, min 4; sub-block 1: scale 10, min 1;
    // sub-block 5: scale 33 (needs the high bits), min 50.
    let mut b = BlockQ4K {
        d: f32_to_f16(0.5),
        dmin: f32_to_f16(0.25),
        scales: [0; 12],
        qs: [0; 128],
    };
    b.scales[0] = 3;
    b.scales[4] = 4;
    b.scales[1] = 10;
    b.scales[5] = 1;
    // j = 5: low nibbles in scales[9], high bits in top of scales[1] (scale) / scales[5] (min).
    b.scales[9] = (33 & 0xF) | ((50 & 0xF) << 4);
    b.scales[1] |= (33 >> 4) << 6;
    b.scales[5] |= (50 >> 4) << 6;
    b.qs[0] = 0x7C; // element 0: q = 12 (sub-block 0), element 32: q = 7 (sub-block 1)
    b.qs[64 + 3] = 0xF0; // element 128+32+3 = 163: sub-block 5, q = 15
    let bytes = bytemuck::bytes_of(&b).to_vec();
    let mut out = vec![0f32; 256];
    quant::dequantize_row(GgmlType::Q4_K, &bytes, &mut out).unwrap();
    assert_eq!(out[0], 0.5 * 3.0 * 12.0 - 0.25 * 4.0); // 17
    assert_eq!(out[1], -1.0); // q = 0 → −dmin·m
    assert_eq!(out[32], 0.5 * 10.0 * 7.0 - 0.25 * 1.0); // 34.75
    assert_eq!(out[163], 0.5 * 33.0 * 15.0 - 0.25 * 50.0); // 235
    assert_eq!(out[160], -12.5);
}

#[test]
fn hand_built_q6_k_block() {
    let mut b = BlockQ6K {
        ql: [0; 128],
        qh: [0; 64],
        scales: [0; 16],
        d: f32_to_f16(0.125),
    };
    b.scales[0] = 8;
    b.scales[6] = -4;
    b.scales[15] = 127;
    b.ql[0] = 0x3A; // element 0 low = 10, element 64 low = 3
    b.qh[0] = 0b10_00_00_01; // element 0 high = 1 (q = 26), element 96 high = 2
    // element 96: low nibble = high of ql[32] (0), q = 32 - 32 = 0 unless set:
    b.ql[32] = 0x50; // element 96 low = 5 → q = (5 | 2<<4) − 32 = 5
    // last element 255: half 1, g = 3, l = 31 → ql[64+63] high, qh[32+31] bits 6..7, scale 15.
    b.ql[127] = 0xF0;
    b.qh[63] = 0xC0;
    let bytes = bytemuck::bytes_of(&b).to_vec();
    let mut out = vec![0f32; 256];
    quant::dequantize_row(GgmlType::Q6_K, &bytes, &mut out).unwrap();
    assert_eq!(out[0], 0.125 * 8.0 * (26.0 - 32.0)); // −6
    assert_eq!(out[64], 0.125 * 0.0 * (3.0 - 32.0)); // scale index 4 is 0
    assert_eq!(out[96], 0.125 * -4.0 * 5.0); // −2.5
    assert_eq!(out[255], 0.125 * 127.0 * 31.0);
}

#[test]
fn row_length_errors() {
    let mut out = vec![0f32; 256];
    let e = quant::dequantize_row(GgmlType::Q6_K, &[0u8; 209], &mut out).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadLength {
                ty: GgmlType::Q6_K,
                ..
            }
        ),
        "{e}"
    );
    let mut out = vec![0f32; 100];
    let e = quant::dequantize_row(GgmlType::Q4_K, &[0u8; 144], &mut out).unwrap_err();
    assert!(matches!(e, Error::BadLength { .. }), "{e}");
    let e = quant::dequantize_row(GgmlType::MXFP4, &[0u8; 17], &mut [0f32; 32]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnsupportedType {
                ty: GgmlType::MXFP4,
                ..
            }
        ),
        "{e}"
    );
    let e = quant::quantize_row(GgmlType::Q4_0, &[0f32; 31], &mut [0u8; 18]).unwrap_err();
    assert!(matches!(e, Error::BadLength { .. }), "{e}");
    let e = quant::quantize_row(GgmlType::F16, &[0f32; 3], &mut [0u8; 8]).unwrap_err();
    assert!(matches!(e, Error::BadLength { .. }), "{e}");
}

/// Relative RMS error of a quantise → dequantise round trip.
fn round_trip_rel_rmse(ty: GgmlType, x: &[f32]) -> f64 {
    let mut bytes = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
    quant::quantize_row(ty, x, &mut bytes).unwrap();
    let mut y = vec![0f32; x.len()];
    quant::dequantize_row(ty, &bytes, &mut y).unwrap();
    let err: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / sig).sqrt()
}

/// Measured on this data: Q6_K 0.024, Q4_K 0.080, Q4_0 0.109 relative RMS error (Gaussian
/// theory: about 0.017 and 0.079 for Q6_K/Q4_K step sizes). The bounds leave about 40 %
/// headroom while still catching a broken layout or scale packing (errors of order 1).
const Q6_K_MAX_REL_RMSE: f64 = 0.035;
const Q4_K_MAX_REL_RMSE: f64 = 0.11;

#[test]
fn k_quant_quantisers_round_trip_with_small_error() {
    let mut rng = Rng::new(77);
    let mut x: Vec<f32> = (0..4096).map(|_| rng.normal(0.02)).collect();
    // A few outliers and an all-zero super-block.
    x[100] = 0.5;
    x[1000] = -0.7;
    x[2048..2304].fill(0.0);
    let e6 = round_trip_rel_rmse(GgmlType::Q6_K, &x);
    let e4k = round_trip_rel_rmse(GgmlType::Q4_K, &x);
    let e40 = round_trip_rel_rmse(GgmlType::Q4_0, &x);
    eprintln!("relative RMS error: Q6_K {e6:.4}, Q4_K {e4k:.4}, Q4_0 {e40:.4}");
    assert!(e6 < Q6_K_MAX_REL_RMSE, "Q6_K {e6}");
    assert!(e4k < Q4_K_MAX_REL_RMSE, "Q4_K {e4k}");
    assert!(e6 < e4k && e4k < e40, "precision order Q6_K < Q4_K < Q4_0");
    // All-zero input gives all-zero output, exactly.
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
        let z = vec![0f32; 256];
        let mut b = vec![0xAAu8; ty.block_bytes()];
        quant::quantize_row(ty, &z, &mut b).unwrap();
        let mut y = vec![1f32; 256];
        quant::dequantize_row(ty, &b, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{ty:?}");
    }
}
