//! ggml tensor types: block layouts, row dequantisation and row quantisation.
//!
//! [`GgmlType`] knows every type id ggml defines (so the GGUF reader can size any tensor in a
//! file llama.cpp wrote); the compute paths support a subset and return
//! [`crate::Error::UnsupportedType`] for the rest.
//!
//! - [`dequantize_row`]: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
//!   Q6_K (and Q8_1/Q8_K, the activation formats). Bit-identical to ggml's scalar code.
//! - [`quantize_row`]: F32, F16, BF16, Q4_0, Q8_0 (and Q8_1/Q8_K), bit-exact with ggml's
//!   reference quantisers (`quantize_row_*_ref`); Q4_K and Q6_K with ggml's reference
//!   algorithm (not verified bit-for-bit: no golden vectors).
//!
//! Block structs live in [`blocks`]; the typed per-format functions in [`dequant`] and
//! [`quantize`].

pub mod blocks;
pub mod dequant;
pub mod quantize;
mod types;

pub use blocks::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, BlockQ8_1, BlockQ8K, QK, QK_K, QuantBlock,
};
pub use types::GgmlType;

use crate::error::{Error, Result};

/// IEEE half bits → f32 (exact; subnormals, infinities and NaN preserved).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// f32 → IEEE half bits, rounding to nearest even (as ggml's `GGML_FP32_TO_FP16`).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// bfloat16 bits → f32 (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 → bfloat16 bits as ggml does: round to nearest even, NaN forced quiet, subnormals kept.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Checks `dst_len`/`src_len` against the type's geometry and returns the number of blocks.
fn check_lengths(ty: GgmlType, n_elems: usize, n_bytes: usize) -> Result<usize> {
    let be = ty.block_elems();
    if !n_elems.is_multiple_of(be) {
        return Err(Error::BadLength {
            ty,
            what: format!("{n_elems} elements is not a multiple of the block size {be}"),
        });
    }
    let n_blocks = n_elems / be;
    let want = n_blocks.checked_mul(ty.block_bytes());
    if want != Some(n_bytes) {
        return Err(Error::BadLength {
            ty,
            what: format!(
                "{n_elems} elements need {} bytes, got {n_bytes}",
                want.map_or_else(|| "too many".to_string(), |w| w.to_string())
            ),
        });
    }
    Ok(n_blocks)
}

fn cast<B: QuantBlock>(bytes: &[u8]) -> &[B] {
    blocks::as_blocks(bytes).expect("length checked against the block size")
}

fn cast_mut<B: QuantBlock>(bytes: &mut [u8]) -> &mut [B] {
    blocks::as_blocks_mut(bytes).expect("length checked against the block size")
}

/// Dequantises one row: `src` holds the raw bytes of `dst.len()` elements of type `ty`.
///
/// # Errors
/// [`Error::BadLength`] when `dst.len()` is not a multiple of the block size or `src.len()` is not
/// the matching byte count; [`Error::UnsupportedType`] for types without a dequantiser.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    use GgmlType as T;
    if !matches!(
        ty,
        T::F32
            | T::F16
            | T::BF16
            | T::Q4_0
            | T::Q4_1
            | T::Q5_0
            | T::Q5_1
            | T::Q8_0
            | T::Q8_1
            | T::Q2_K
            | T::Q3_K
            | T::Q4_K
            | T::Q5_K
            | T::Q6_K
            | T::Q8_K
    ) {
        return Err(Error::UnsupportedType {
            ty,
            op: "dequantisation",
        });
    }
    check_lengths(ty, dst.len(), src.len())?;
    match ty {
        T::F32 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        T::F16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        T::BF16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        T::Q4_0 => dequant::dequantize_q4_0(cast(src), dst),
        T::Q4_1 => dequant::dequantize_q4_1(cast(src), dst),
        T::Q5_0 => dequant::dequantize_q5_0(cast(src), dst),
        T::Q5_1 => dequant::dequantize_q5_1(cast(src), dst),
        T::Q8_0 => dequant::dequantize_q8_0(cast(src), dst),
        T::Q8_1 => dequant::dequantize_q8_1(cast(src), dst),
        T::Q2_K => dequant::dequantize_q2_k(cast(src), dst),
        T::Q3_K => dequant::dequantize_q3_k(cast(src), dst),
        T::Q4_K => dequant::dequantize_q4_k(cast(src), dst),
        T::Q5_K => dequant::dequantize_q5_k(cast(src), dst),
        T::Q6_K => dequant::dequantize_q6_k(cast(src), dst),
        T::Q8_K => dequant::dequantize_q8_k(cast(src), dst),
        _ => unreachable!("filtered above"),
    }
    Ok(())
}

/// Quantises one row of `src.len()` elements into `dst` (exactly the row's byte count), with
/// ggml's reference quantiser for `ty`.
///
/// # Errors
/// [`Error::BadLength`] on mismatched lengths; [`Error::UnsupportedType`] for types without a
/// quantiser here (Q2_K, Q3_K, Q5_K, Q4_1, Q5_x, the IQ types, ...).
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    use GgmlType as T;
    if !matches!(
        ty,
        T::F32 | T::F16 | T::BF16 | T::Q4_0 | T::Q8_0 | T::Q8_1 | T::Q4_K | T::Q6_K | T::Q8_K
    ) {
        return Err(Error::UnsupportedType {
            ty,
            op: "quantisation",
        });
    }
    check_lengths(ty, src.len(), dst.len())?;
    match ty {
        T::F32 => {
            for (c, &x) in dst.chunks_exact_mut(4).zip(src) {
                c.copy_from_slice(&x.to_le_bytes());
            }
        }
        T::F16 => {
            for (c, &x) in dst.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&f32_to_f16(x).to_le_bytes());
            }
        }
        T::BF16 => {
            for (c, &x) in dst.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&f32_to_bf16(x).to_le_bytes());
            }
        }
        T::Q4_0 => quantize::quantize_q4_0(src, cast_mut(dst)),
        T::Q8_0 => quantize::quantize_q8_0(src, cast_mut(dst)),
        T::Q8_1 => quantize::quantize_q8_1(src, cast_mut(dst)),
        T::Q4_K => quantize::quantize_q4_k(src, cast_mut(dst)),
        T::Q6_K => quantize::quantize_q6_k(src, cast_mut(dst)),
        T::Q8_K => quantize::quantize_q8_k(src, cast_mut(dst)),
        _ => unreachable!("filtered above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        // 1.0 + 2^-8 is exactly half-way between two bf16 values: ties to even (down).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        // 1.0 + 3·2^-8 is half-way with an odd low bit: rounds up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        // A signalling NaN with only low payload bits stays a NaN.
        let b = f32_to_bf16(f32::from_bits(0x7f80_0001));
        assert!(bf16_to_f32(b).is_nan());
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        // Subnormals are kept (current ggml), not flushed.
        assert_eq!(f32_to_bf16(f32::from_bits(0x0001_0000)), 0x0001);
    }

    #[test]
    fn f16_handles_subnormal_inf_nan() {
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000); // tie → even (0)
        assert_eq!(f32_to_f16(3.0 * 2f32.powi(-25)), 0x0002); // tie → even (2)
        assert_eq!(f32_to_f16(70000.0), 0x7c00);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn float_types_round_trip() {
        let xs: Vec<f32> = (0..1000)
            .map(|i| ((i as f32) * 0.731).sin() * 10f32.powi(i % 9 - 4))
            .collect();
        for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
            let mut bytes = vec![0u8; xs.len() * ty.block_bytes()];
            quantize_row(ty, &xs, &mut bytes).unwrap();
            let mut back = vec![0f32; xs.len()];
            dequantize_row(ty, &bytes, &mut back).unwrap();
            // Re-encoding the decoded values is lossless.
            let mut bytes2 = vec![0u8; bytes.len()];
            quantize_row(ty, &back, &mut bytes2).unwrap();
            assert_eq!(bytes, bytes2, "{ty:?}");
            let rel = match ty {
                GgmlType::F16 => 2f32.powi(-11),
                GgmlType::BF16 => 2f32.powi(-8),
                _ => 0.0,
            };
            for (a, b) in xs.iter().zip(&back) {
                // f16 loses relative precision for its subnormals (< 6.1e-5).
                let tol = rel * a.abs()
                    + if ty == GgmlType::F16 {
                        2f32.powi(-25)
                    } else {
                        0.0
                    };
                assert!((a - b).abs() <= tol, "{ty:?}: {a} -> {b}");
            }
        }
    }

    #[test]
    fn lengths_are_checked() {
        let mut out = vec![0f32; 32];
        assert!(matches!(
            dequantize_row(GgmlType::Q4_0, &[0u8; 17], &mut out),
            Err(Error::BadLength { .. })
        ));
        let mut out = vec![0f32; 33];
        assert!(matches!(
            dequantize_row(GgmlType::Q4_0, &[0u8; 18], &mut out),
            Err(Error::BadLength { .. })
        ));
        assert!(matches!(
            dequantize_row(GgmlType::IQ2_XXS, &[0u8; 66], &mut vec![0f32; 256]),
            Err(Error::UnsupportedType { .. })
        ));
        assert!(matches!(
            quantize_row(GgmlType::Q5_K, &[0f32; 256], &mut [0u8; 176]),
            Err(Error::UnsupportedType { .. })
        ));
        assert!(matches!(
            quantize_row(GgmlType::Q8_0, &[0f32; 64], &mut [0u8; 67]),
            Err(Error::BadLength { .. })
        ));
        assert!(dequantize_row(GgmlType::Q4_0, &[], &mut []).is_ok());
    }
}
