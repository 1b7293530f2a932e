//! x86-64 kernel variants and the safe wrappers that expose them through [`super::Kernels`].

pub(super) mod avx2;

use super::{Kernels, SimdLevel, scalar};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K};

/// Whether the AVX2 kernels may run: AVX2, FMA and F16C all present.
pub(super) fn avx2_supported() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

macro_rules! avx2_wrappers {
    ($( fn $name:ident($($arg:ident : $t:ty),*) $(-> $ret:ty)?; )*) => {
        $(
            fn $name($($arg: $t),*) $(-> $ret)? {
                debug_assert!(avx2_supported());
                // SAFETY: this wrapper is reachable only through `AVX2`, which
                // `Kernels::for_level` hands out only after `avx2_supported()` returned true,
                // so the target features of `avx2::$name` are present.
                unsafe { avx2::$name($($arg),*) }
            }
        )*
    };
}

avx2_wrappers! {
    fn quantize_row_q8_0(src: &[f32], dst: &mut [BlockQ8_0]);
    fn quantize_row_q8_1(src: &[f32], dst: &mut [BlockQ8_1]);
    fn quantize_row_q8_k(src: &[f32], dst: &mut [BlockQ8K]);
    fn vec_dot_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32;
    fn vec_dot_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32;
    fn vec_dot_q4_1_q8_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32;
    fn vec_dot_q4_k_q8_k(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32;
    fn vec_dot_q6_k_q8_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32;
    fn gemv_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0], out: &mut [f32]);
    fn gemv_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0], out: &mut [f32]);
    fn dot_f32(a: &[f32], b: &[f32]) -> f32;
    fn dot_f16_f32(w: &[u16], x: &[f32]) -> f32;
    fn dot_bf16_f32(w: &[u16], x: &[f32]) -> f32;
    fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]);
    fn scale_f32(x: &mut [f32], s: f32);
    fn axpy_q4_0_f32(alpha: f32, w: &[BlockQ4_0], y: &mut [f32]);
    fn axpy_q8_0_f32(alpha: f32, w: &[BlockQ8_0], y: &mut [f32]);
}

/// The AVX2 table. Kernels without an AVX2 variant use the scalar one.
pub(super) static AVX2: Kernels = Kernels {
    level: SimdLevel::Avx2,
    quantize_row_q8_0,
    quantize_row_q8_1,
    quantize_row_q8_k,
    vec_dot_q4_0_q8_0,
    vec_dot_q8_0_q8_0,
    vec_dot_q4_1_q8_1,
    vec_dot_q5_0_q8_0: scalar::vec_dot_q5_0_q8_0,
    vec_dot_q5_1_q8_1: scalar::vec_dot_q5_1_q8_1,
    vec_dot_q2_k_q8_k: scalar::vec_dot_q2_k_q8_k,
    vec_dot_q3_k_q8_k: scalar::vec_dot_q3_k_q8_k,
    vec_dot_q4_k_q8_k,
    vec_dot_q5_k_q8_k: scalar::vec_dot_q5_k_q8_k,
    vec_dot_q6_k_q8_k,
    gemv_q4_0_q8_0,
    gemv_q8_0_q8_0,
    dot_f32,
    dot_f16_f32,
    dot_bf16_f32,
    axpy_f32,
    scale_f32,
    axpy_q4_0_f32,
    axpy_q8_0_f32,
};
