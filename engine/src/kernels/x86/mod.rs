//! x86-64 kernel variants and the safe wrappers that expose them through [`super::Kernels`].

pub(super) mod avx2;
mod packed;
mod vnni;

use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};

use super::packed::{BlockQ4_0x8, Q8Blocks};
use super::{Kernels, SimdLevel, scalar};
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K};

/// Whether the AVX2 kernels may run: AVX2, FMA and F16C all present.
pub(super) fn avx2_supported() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
}

/// Whether the AVX-512 kernels may run: AVX-512 F/BW/VL/VNNI plus everything AVX2 needs.
pub(super) fn avx512_supported() -> bool {
    avx2_supported()
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
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
    fn gemv2_q4_0_q8_0(w: &[BlockQ4_0], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]);
    fn gemv2_q8_0_q8_0(w: &[BlockQ8_0], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]);
    fn gather_gemv2_q4_0_q8_0(w: &[BlockQ4_0], idx: &[u32], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]);
    fn gather_gemv2_q8_0_q8_0(w: &[BlockQ8_0], idx: &[u32], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]);
    fn dot_f32(a: &[f32], b: &[f32]) -> f32;
    fn dot_f16_f32(w: &[u16], x: &[f32]) -> f32;
    fn dot_bf16_f32(w: &[u16], x: &[f32]) -> f32;
    fn axpy_f32(alpha: f32, x: &[f32], y: &mut [f32]);
    fn scale_f32(x: &mut [f32], s: f32);
    fn axpy_q4_0_f32(alpha: f32, w: &[BlockQ4_0], y: &mut [f32]);
    fn axpy_q8_0_f32(alpha: f32, w: &[BlockQ8_0], y: &mut [f32]);
    fn sgemm_acc(s: crate::kernels::Sgemm, a: &[f32], b: &[f32], c: &mut [f32]);
    fn exp_shift_sum(x: &mut [f32], m: f32) -> f32;
}

/// See [`crate::kernels::prefetch_l2`].
#[inline]
pub(super) fn prefetch_l2(bytes: &[u8]) {
    #[target_feature(enable = "sse")]
    fn lines(bytes: &[u8], last: usize) {
        for at in (0..bytes.len()).step_by(64).chain([last]) {
            // A prefetch never faults and has no architectural effect.
            _mm_prefetch::<_MM_HINT_T1>(bytes[at..].as_ptr().cast());
        }
    }
    if let Some(last) = bytes.len().checked_sub(1) {
        // SAFETY: SSE is part of the x86_64 baseline.
        unsafe { lines(bytes, last) }
    }
}

/// [`crate::kernels::packed::repack_q4_0x8`] for one group of eight rows with AVX2; `false`
/// (nothing written) below the AVX2 level (`THINKER_SIMD` caps it).
pub(crate) fn repack_q4_0x8_group(src: &[BlockQ4_0], nb: usize, dst: &mut [BlockQ4_0x8]) -> bool {
    if super::simd_level() < SimdLevel::Avx2 {
        return false;
    }
    // SAFETY: the level is AVX2 or above only on a CPU where AVX2 was detected.
    unsafe { packed::repack_q4_0x8_group_avx2(src, nb, dst) };
    true
}

fn gemv_q4_0x8_q8_0(w: &[BlockQ4_0x8], a: Q8Blocks<'_>, out: &mut [f32]) {
    debug_assert!(avx2_supported());
    // SAFETY: reachable only through `AVX2`/`AVX512`, handed out after detection of AVX2+.
    unsafe { packed::gemv_q4_0x8_q8_0_avx2(w, a, out) }
}

fn gemv2_q4_0x8_q8_0(w: &[BlockQ4_0x8], hi: Q8Blocks<'_>, lo: Q8Blocks<'_>, out: &mut [f32]) {
    debug_assert!(avx2_supported());
    // SAFETY: reachable only through `AVX2`/`AVX512`, handed out after detection of AVX2+.
    unsafe { packed::gemv2_q4_0x8_q8_0_avx2(w, hi, lo, out) }
}

fn gemv_q4_0x8_q8_0_vnni(w: &[BlockQ4_0x8], a: Q8Blocks<'_>, out: &mut [f32]) {
    debug_assert!(avx512_supported());
    // SAFETY: reachable only through `AVX512`, handed out after `avx512_supported()`.
    unsafe { packed::gemv_q4_0x8_q8_0_vnni(w, a, out) }
}

fn gemv2_q4_0x8_q8_0_vnni(w: &[BlockQ4_0x8], hi: Q8Blocks<'_>, lo: Q8Blocks<'_>, out: &mut [f32]) {
    debug_assert!(avx512_supported());
    // SAFETY: reachable only through `AVX512`, handed out after `avx512_supported()`.
    unsafe { packed::gemv2_q4_0x8_q8_0_vnni(w, hi, lo, out) }
}

fn gemm2_q4_0x8_q8_0(w: &[BlockQ4_0x8], acts: &[(Q8Blocks<'_>, Q8Blocks<'_>)], out: &mut [f32]) {
    debug_assert!(avx2_supported());
    // SAFETY: reachable only through `AVX2`/`AVX512`, handed out after detection of AVX2+.
    unsafe { packed::gemm2_q4_0x8_q8_0_avx2(w, acts, out) }
}

macro_rules! vnni_wrappers {
    ($( fn $name:ident => $kernel:path, ($($arg:ident : $t:ty),*); )*) => {
        $(
            fn $name($($arg: $t),*) {
                debug_assert!(avx512_supported());
                // SAFETY: reachable only through `AVX512`, handed out after
                // `avx512_supported()`, so the kernel's target features are present.
                unsafe { $kernel($($arg),*) }
            }
        )*
    };
}

vnni_wrappers! {
    fn gemm2_q4_0x8_q8_0_vnni => packed::gemm2_q4_0x8_q8_0_vnni, (w: &[BlockQ4_0x8], acts: &[(Q8Blocks<'_>, Q8Blocks<'_>)], out: &mut [f32]);
    fn gemv2_q4_0_q8_0_vnni => vnni::gemv2_q4_0_q8_0, (w: &[BlockQ4_0], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]);
    fn gemv2_q8_0_q8_0_vnni => vnni::gemv2_q8_0_q8_0, (w: &[BlockQ8_0], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]);
    fn gather_gemv2_q4_0_q8_0_vnni => vnni::gather_gemv2_q4_0_q8_0, (w: &[BlockQ4_0], idx: &[u32], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]);
    fn gather_gemv2_q8_0_q8_0_vnni => vnni::gather_gemv2_q8_0_q8_0, (w: &[BlockQ8_0], idx: &[u32], a: &[BlockQ8_0], lo: &[BlockQ8_0], out: &mut [f32]);
}

/// The AVX2 table. Kernels without an AVX2 variant use the scalar one.
pub(super) static AVX2: Kernels = AVX2_TABLE;

const AVX2_TABLE: Kernels = Kernels {
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
    gemv2_q4_0_q8_0,
    gemv2_q8_0_q8_0,
    gemv_q4_0x8_q8_0,
    gemv2_q4_0x8_q8_0,
    gemm2_q4_0x8_q8_0,
    gather_gemv2_q4_0_q8_0,
    gather_gemv2_q8_0_q8_0,
    dot_f32,
    dot_f16_f32,
    dot_bf16_f32,
    axpy_f32,
    scale_f32,
    axpy_q4_0_f32,
    axpy_q8_0_f32,
    sgemm_acc,
    exp_shift_sum,
};

/// The AVX-512 (VNNI) table: the x8-packed products and the row-major two-level Q4_0/Q8_0
/// products use 256-bit `vpdpbusd`; everything else is the AVX2 kernel. (Row-major one-level
/// products with `vpdpbusd` measured slower than AVX2's `pmaddubsw` ones on Zen 4: 15.4 vs 19.1
/// GB/s in cache; two-level, 11.6 vs 9.4.) (Row-major kernels with 512-bit `vpdpbusd`,
/// two blocks per register, measured slower than AVX2's on Zen 4, which splits 512-bit
/// operations in two.)
pub(super) static AVX512: Kernels = Kernels {
    level: SimdLevel::Avx512,
    gemv_q4_0x8_q8_0: gemv_q4_0x8_q8_0_vnni,
    gemv2_q4_0x8_q8_0: gemv2_q4_0x8_q8_0_vnni,
    gemm2_q4_0x8_q8_0: gemm2_q4_0x8_q8_0_vnni,
    gemv2_q4_0_q8_0: gemv2_q4_0_q8_0_vnni,
    gemv2_q8_0_q8_0: gemv2_q8_0_q8_0_vnni,
    gather_gemv2_q4_0_q8_0: gather_gemv2_q4_0_q8_0_vnni,
    gather_gemv2_q8_0_q8_0: gather_gemv2_q8_0_q8_0_vnni,
    ..AVX2_TABLE
};
