//! x8-packed Q4_0 × Q8_0 matrix–vector kernels (layout: [`crate::kernels::packed`]), one and two
//! activation levels, for AVX-512 VNNI (256-bit `vpdpbusd`) and AVX2 (`pmaddubsw`).
//!
//! Per block and group of eight rows: four 32-byte loads, a mask and a shift per load, eight
//! integer dot steps against broadcast activation bytes, then one conversion and one FMA. The
//! unsigned nibbles' offset (`q − 8`) is removed exactly by starting the integer sum at
//! `−8·Σa`, computed once per activation ([`Q8Blocks`]), as are the activation scales in f32.
//!
//! Every function is a safe `#[target_feature]` function, callable (as `unsafe`) only from the
//! wrappers in [`super`] after runtime detection. The only `unsafe` operations are unaligned
//! loads through references to fixed-size arrays.

use std::arch::x86_64::*;

use super::avx2::{load_u8x32, load_u16x8, prefetch};
use crate::kernels::packed::{BlockQ4_0x8, GEMM_TOKENS, Q8Blocks, X8_ROWS};
use crate::quant::BlockQ4_0;

/// x8 repack of one group of eight rows (`src`: the rows one after the other, `nb` blocks
/// each; `dst`: the group's `nb` packed blocks): per block, the rows' 16 nibble bytes are four
/// 4-byte runs, and the packed block holds run `c` of row `r` at run `8c + r` — a 8×4 transpose
/// of 32-bit words, done as two 4×4 ones in the lanes of four registers (rows `r` and `r + 4`).
#[target_feature(enable = "avx2")]
pub fn repack_q4_0x8_group_avx2(src: &[BlockQ4_0], nb: usize, dst: &mut [BlockQ4_0x8]) {
    let rows: [&[BlockQ4_0]; X8_ROWS] = std::array::from_fn(|r| &src[r * nb..(r + 1) * nb]);
    for (b, o) in dst[..nb].iter_mut().enumerate() {
        // SAFETY: `qs` is 16 plain bytes; `loadu` has no alignment requirement.
        let q = |r: usize| unsafe { _mm_loadu_si128(rows[r][b].qs.as_ptr().cast()) };
        let a: [__m256i; 4] = std::array::from_fn(|r| _mm256_set_m128i(q(r + 4), q(r)));
        let t0 = _mm256_unpacklo_epi32(a[0], a[1]);
        let t1 = _mm256_unpackhi_epi32(a[0], a[1]);
        let t2 = _mm256_unpacklo_epi32(a[2], a[3]);
        let t3 = _mm256_unpackhi_epi32(a[2], a[3]);
        let runs = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
        for (c, v) in runs.iter().enumerate() {
            let at = &mut o.qs[32 * c..32 * (c + 1)];
            // SAFETY: `at` holds 32 bytes (a checked slice); `storeu` has no alignment
            // requirement.
            unsafe { _mm256_storeu_si256(at.as_mut_ptr().cast(), *v) };
        }
        o.d = std::array::from_fn(|r| rows[r][b].d);
    }
}

/// Four activation bytes `k..k+4` broadcast to every i32 lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bcast4(q: &[i8; 32], k: usize) -> __m256i {
    _mm256_set1_epi32(i32::from_le_bytes([
        q[k] as u8,
        q[k + 1] as u8,
        q[k + 2] as u8,
        q[k + 3] as u8,
    ]))
}

/// `$body` once for each `$t` in `0..$n` (`$n` a constant of at most [`GEMM_TOKENS`]), with `$t`
/// a literal: per-token arrays indexed by it stay in registers.
macro_rules! for_tokens {
    ($n:ident, $t:ident, $body:block) => {{
        const { assert!($n >= 1 && $n <= 4 && GEMM_TOKENS == 4) };
        {
            let $t = 0;
            $body
        }
        if $n > 1 {
            let $t = 1;
            $body
        }
        if $n > 2 {
            let $t = 2;
            $body
        }
        if $n > 3 {
            let $t = 3;
            $body
        }
    }};
}

/// How many packed blocks (144 bytes each) ahead of the one computed the x8 kernels request
/// into L1: 32 (4.5 KiB). Decode streams these matrices from DRAM, each thread its own range of
/// rows, ~300 short ranges per token; the hardware prefetcher needs a while to ramp up on each,
/// and 4 blocks ahead (the earlier distance) covered little more than DRAM's latency. Decode,
/// same binary otherwise, paired median t/s ratios against 4 blocks: 16 blocks 1.028 (4B, six
/// pairs) and 1.041 (21B, four); 32 blocks 1.026 (4B, eight) and 1.057 (21B, six); 64 blocks
/// 0.947 of 32's (4B, six). Prefill (four tokens per pass, compute-bound) unchanged (1.025).
const X8_AHEAD: usize = 32;

macro_rules! x8_kernel {
    ($gemv:ident, $feat:literal, |$acc:ident, $x:ident, $q:ident| $body:block) => {
        /// One or two activation levels of `T` tokens over an x8-packed Q4_0 matrix:
        /// `out[t·rows + r]` for `rows = out.len() / T` (whole groups of eight) and `hi[t].len()`
        /// blocks per row. Each block's nibbles are unpacked once and serve every token; each
        /// token's sums take the same operations in the same order as with `T = 1`, so a token's
        /// result does not depend on the tokens batched with it. With `TWO = false`, `lo` is
        /// ignored. Activations shorter than `hi[0]` panic.
        #[inline]
        #[target_feature(enable = $feat)]
        fn $gemv<const TWO: bool, const T: usize>(
            w: &[BlockQ4_0x8],
            hi: [Q8Blocks<'_>; T],
            lo: [Q8Blocks<'_>; T],
            out: &mut [f32],
        ) {
            out.fill(0.0);
            let nb = hi[0].len();
            let rows = out.len() / T;
            if nb == 0 || rows < X8_ROWS {
                return;
            }
            let w = &w[..rows / X8_ROWS * nb];
            // Every per-token slice cut to `nb` blocks, so the block loop needs no bounds checks.
            let hq = hi.map(|a| &a.blocks()[..nb]);
            let hn = hi.map(|a| &a.neg8()[..nb]);
            let hs = hi.map(|a| &a.scales()[..nb]);
            let lo = if TWO { lo } else { hi };
            let lq = lo.map(|a| &a.blocks()[..nb]);
            let ln = lo.map(|a| &a.neg8()[..nb]);
            let ls = lo.map(|a| &a.scales()[..nb]);
            let bytes: &[u8] = bytemuck::cast_slice(w);
            let blk_bytes = std::mem::size_of::<BlockQ4_0x8>();
            for (g, wg) in w.chunks_exact(nb).enumerate() {
                // One accumulator per token and level: short FMA chains.
                let mut acc_h = [_mm256_setzero_ps(); T];
                let mut acc_l = [_mm256_setzero_ps(); T];
                for (b, blk) in wg.iter().enumerate() {
                    let i = g * nb + b;
                    prefetch(bytes, (i + X8_AHEAD) * blk_bytes);
                    prefetch(bytes, (i + X8_AHEAD) * blk_bytes + 64);
                    prefetch(bytes, (i + X8_AHEAD) * blk_bytes + 128);
                    let (chunks, _) = blk.qs.as_chunks::<32>();
                    let m = _mm256_set1_epi8(0x0F);
                    let mut xs = [_mm256_setzero_si256(); 8];
                    for (c, ch) in chunks.iter().enumerate() {
                        let v = load_u8x32(ch);
                        xs[c] = _mm256_and_si256(v, m);
                        xs[c + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
                    }
                    let d = blk.d;
                    let dw = _mm256_cvtph_ps(load_u16x8(&d));
                    for_tokens!(T, t, {
                        {
                            let $x = &xs;
                            let $q = &hq[t][b].qs;
                            let $acc = _mm256_set1_epi32(hn[t][b]);
                            let s = $body;
                            let da = _mm256_set1_ps(hs[t][b]);
                            acc_h[t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(s),
                                _mm256_mul_ps(dw, da),
                                acc_h[t],
                            );
                        }
                        if TWO {
                            let $x = &xs;
                            let $q = &lq[t][b].qs;
                            let $acc = _mm256_set1_epi32(ln[t][b]);
                            let s = $body;
                            let da = _mm256_set1_ps(ls[t][b]);
                            acc_l[t] = _mm256_fmadd_ps(
                                _mm256_cvtepi32_ps(s),
                                _mm256_mul_ps(dw, da),
                                acc_l[t],
                            );
                        }
                    });
                }
                for_tokens!(T, t, {
                    let acc = _mm256_add_ps(acc_h[t], acc_l[t]);
                    let o = &mut out[t * rows + g * X8_ROWS..t * rows + (g + 1) * X8_ROWS];
                    // SAFETY: `o` is 8 writable f32; `storeu` has no alignment requirement.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc) };
                });
            }
        }
    };
}

// xs[c] (c < 4): weights 4c..4c+4 of the eight rows; xs[c + 4]: weights 16+4c..16+4c+4.
x8_kernel!(
    gemv_x8_vnni,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c",
    |acc, x, q| {
        // Enough independent chains to cover `vpdpbusd`'s latency: four for one token, fewer
        // when several tokens' sums interleave (the integer sum is exact in any order).
        if T == 1 {
            let mut s = [
                acc,
                _mm256_setzero_si256(),
                _mm256_setzero_si256(),
                _mm256_setzero_si256(),
            ];
            for c in 0..4 {
                s[c] = _mm256_dpbusd_epi32(s[c], x[c], bcast4(q, 4 * c));
                s[c] = _mm256_dpbusd_epi32(s[c], x[c + 4], bcast4(q, 16 + 4 * c));
            }
            _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3]))
        } else {
            let mut s = acc;
            for c in 0..4 {
                s = _mm256_dpbusd_epi32(s, x[c], bcast4(q, 4 * c));
                s = _mm256_dpbusd_epi32(s, x[c + 4], bcast4(q, 16 + 4 * c));
            }
            s
        }
    }
);

// Pair sums of at most 2·15·127 = 3810; eight of them stay below i16::MAX.
x8_kernel!(gemv_x8_avx2, "avx2,fma,f16c", |acc, x, q| {
    let mut s16 = _mm256_setzero_si256();
    for c in 0..4 {
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(x[c], bcast4(q, 4 * c)));
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(x[c + 4], bcast4(q, 16 + 4 * c)));
    }
    _mm256_add_epi32(acc, _mm256_madd_epi16(s16, _mm256_set1_epi16(1)))
});

/// Several tokens' two-level products through `$kernel::<true, T>`, four tokens at a time:
/// `out[t·rows + r]`, `rows = out.len() / acts.len()`.
macro_rules! gemm2_tokens {
    ($kernel:ident, $w:expr, $acts:expr, $out:expr) => {{
        let (w, acts, out): (&[BlockQ4_0x8], &[(Q8Blocks<'_>, Q8Blocks<'_>)], &mut [f32]) =
            ($w, $acts, $out);
        let rows = out.len() / acts.len().max(1);
        if rows == 0 {
            return;
        }
        for (a, o) in acts
            .chunks(GEMM_TOKENS)
            .zip(out.chunks_mut(GEMM_TOKENS * rows))
        {
            match *a {
                [a0] => $kernel::<true, 1>(w, [a0.0], [a0.1], o),
                [a0, a1] => $kernel::<true, 2>(w, [a0.0, a1.0], [a0.1, a1.1], o),
                [a0, a1, a2] => $kernel::<true, 3>(w, [a0.0, a1.0, a2.0], [a0.1, a1.1, a2.1], o),
                [a0, a1, a2, a3] => {
                    $kernel::<true, 4>(w, [a0.0, a1.0, a2.0, a3.0], [a0.1, a1.1, a2.1, a3.1], o)
                }
                _ => unreachable!("chunks of at most GEMM_TOKENS"),
            }
        }
    }};
}

/// x8 Q4_0 × Q8_0 (AVX-512 VNNI).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gemv_q4_0x8_q8_0_vnni(w: &[BlockQ4_0x8], a: Q8Blocks<'_>, out: &mut [f32]) {
    gemv_x8_vnni::<false, 1>(w, [a], [a], out)
}

/// x8 Q4_0 × two-level Q8_0 (AVX-512 VNNI).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gemv2_q4_0x8_q8_0_vnni(
    w: &[BlockQ4_0x8],
    hi: Q8Blocks<'_>,
    lo: Q8Blocks<'_>,
    out: &mut [f32],
) {
    gemv_x8_vnni::<true, 1>(w, [hi], [lo], out)
}

/// x8 Q4_0 × several two-level Q8_0 tokens (AVX-512 VNNI).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub fn gemm2_q4_0x8_q8_0_vnni(
    w: &[BlockQ4_0x8],
    acts: &[(Q8Blocks<'_>, Q8Blocks<'_>)],
    out: &mut [f32],
) {
    gemm2_tokens!(gemv_x8_vnni, w, acts, out)
}

/// x8 Q4_0 × Q8_0 (AVX2).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gemv_q4_0x8_q8_0_avx2(w: &[BlockQ4_0x8], a: Q8Blocks<'_>, out: &mut [f32]) {
    gemv_x8_avx2::<false, 1>(w, [a], [a], out)
}

/// x8 Q4_0 × two-level Q8_0 (AVX2).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gemv2_q4_0x8_q8_0_avx2(
    w: &[BlockQ4_0x8],
    hi: Q8Blocks<'_>,
    lo: Q8Blocks<'_>,
    out: &mut [f32],
) {
    gemv_x8_avx2::<true, 1>(w, [hi], [lo], out)
}

/// x8 Q4_0 × several two-level Q8_0 tokens (AVX2).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn gemm2_q4_0x8_q8_0_avx2(
    w: &[BlockQ4_0x8],
    acts: &[(Q8Blocks<'_>, Q8Blocks<'_>)],
    out: &mut [f32],
) {
    gemm2_tokens!(gemv_x8_avx2, w, acts, out)
}
