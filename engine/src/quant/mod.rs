//! ggml tensor types: block layouts, row dequantisation and row quantisation.
//!
//! [`GgmlType`] knows every type id ggml defines (so the GGUF reader can size any tensor in a
//! file llama.cpp wrote); the compute paths support a subset and return
//! [`crate::Error::UnsupportedType`] for the rest.

mod types;

pub use types::GgmlType;

use crate::error::{Error, Result};

/// Dequantises one row of `ty` (`src`, exactly one row's bytes) into `dst`.
///
/// Interim implementation covering the float types; quantised types arrive with the quant module.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let need = ty.row_bytes(dst.len() as u64);
    if need != Some(src.len() as u64) {
        return Err(Error::BadLength {
            ty,
            what: format!("{} bytes for a row of {} values", src.len(), dst.len()),
        });
    }
    match ty {
        GgmlType::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            return Err(Error::UnsupportedType {
                ty,
                op: "dequantize_row",
            });
        }
    }
    Ok(())
}
