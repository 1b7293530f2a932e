//! AVX2 + FMA + F16C kernel for [`super::DownPlanes`]: per active neuron, 32 outputs per step
//! (16 bytes of Q4 nibbles or 32 bytes of Q8), accumulated in f32.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::{PlaneKind, PlanesView, QK, plane_bytes};

fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        std::env::var("THINKER_SIMD")
            .map(|v| v != "scalar")
            .unwrap_or(true)
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// Transposes a 16×16 byte matrix (16 little-endian `u128` rows; see [`super::transpose16`], its
/// scalar reference) with SSE2, part of every x86-64 CPU: four rounds of byte interleaves,
/// `x[2i] = lo(r[i], r[i+8])`, `x[2i+1] = hi(r[i], r[i+8])`, transpose a 16×16 byte matrix.
pub(super) fn transpose16(m: &[u128; 16]) -> [u128; 16] {
    // SAFETY: `u128` and `__m128i` are both 16 plain bytes; SSE2 is in the x86-64 baseline.
    let mut r: [__m128i; 16] = unsafe { std::mem::transmute(*m) };
    for _ in 0..4 {
        let mut x = r;
        for i in 0..8 {
            // SAFETY: SSE2 is in the x86-64 baseline (register-only operations).
            unsafe {
                x[2 * i] = _mm_unpacklo_epi8(r[i], r[i + 8]);
                x[2 * i + 1] = _mm_unpackhi_epi8(r[i], r[i + 8]);
            }
        }
        r = x;
    }
    // SAFETY: as above.
    unsafe { std::mem::transmute(r) }
}

/// Runs the AVX2 kernel when the CPU has it; `None` otherwise.
pub(super) fn apply(
    p: PlanesView<'_>,
    a: &[f32],
    out: &mut [f32],
    acc: &mut [f32],
) -> Option<usize> {
    if !has_avx2() {
        return None;
    }
    assert!(a.len() == p.f && out.len() == p.h && acc.len() == p.h && p.h.is_multiple_of(QK));
    assert!(
        p.planes.len() == p.f * plane_bytes(p.kind, p.h) && p.scales.len() == p.f / QK * p.h * 2
    );
    // SAFETY: AVX2, FMA and F16C were detected above; the asserts bound every access below.
    Some(unsafe { apply_avx2(p, a, out, acc) })
}

/// Per block of 32 neurons: the active ones are listed first; then for each group of 32
/// outputs, their contributions accumulate in four registers (no accumulator round trips
/// through memory), and the block's scales are applied once per group.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn apply_avx2(p: PlanesView<'_>, a: &[f32], out: &mut [f32], _acc: &mut [f32]) -> usize {
    let pb = plane_bytes(p.kind, p.h);
    let groups = p.h / QK;
    let mut n_active = 0;
    // The active neurons of block `b` into `act`; their count.
    let list = |b: usize, act: &mut [(usize, f32); QK]| {
        let mut n = 0;
        for i in 0..QK {
            let j = b * QK + i;
            if a[j] != 0.0 {
                act[n] = (j, a[j]);
                n += 1;
            }
        }
        n
    };
    let mut next = [(0usize, 0f32); QK];
    let nblocks = p.f / QK;
    let mut n_next = if nblocks > 0 { list(0, &mut next) } else { 0 };
    for b in 0..nblocks {
        let n = n_next;
        let act = next;
        // The next block's active planes are scattered in memory (no hardware prefetcher
        // follows them): request them while this block computes.
        if b + 1 < nblocks {
            n_next = list(b + 1, &mut next);
            for &(j, _) in &next[..n_next] {
                let plane = &p.planes[j * pb..(j + 1) * pb];
                for at in (0..pb).step_by(64) {
                    // A prefetch never faults and has no architectural effect.
                    _mm_prefetch::<_MM_HINT_T0>(plane[at..].as_ptr().cast());
                }
            }
        }
        if n == 0 {
            continue;
        }
        n_active += n;
        let sc = &p.scales[b * p.h * 2..(b + 1) * p.h * 2];
        for g in 0..groups {
            let mut acc = [_mm256_setzero_ps(); 4];
            for &(j, aj) in &act[..n] {
                let va = _mm256_set1_ps(aj);
                let plane = p.planes[j * pb..(j + 1) * pb].as_ptr();
                // SAFETY: group g covers plane bytes [g*16, g*16+16) (Q4) or [g*32, g*32+32)
                // (Q8), within the plane's `pb` bytes (asserted lengths).
                let q: [__m128i; 2] = unsafe {
                    match p.kind {
                        PlaneKind::Q4 => {
                            let bytes = _mm_loadu_si128(plane.add(g * 16) as *const __m128i);
                            let m = _mm_set1_epi8(0x0F);
                            let eight = _mm_set1_epi8(8);
                            let lo = _mm_sub_epi8(_mm_and_si128(bytes, m), eight);
                            let hi =
                                _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(bytes, 4), m), eight);
                            [lo, hi]
                        }
                        PlaneKind::Q8 => [
                            _mm_loadu_si128(plane.add(g * 32) as *const __m128i),
                            _mm_loadu_si128(plane.add(g * 32 + 16) as *const __m128i),
                        ],
                    }
                };
                for (half, qv) in q.iter().enumerate() {
                    let w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(*qv));
                    let w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(*qv, 8)));
                    acc[2 * half] = _mm256_fmadd_ps(va, w0, acc[2 * half]);
                    acc[2 * half + 1] = _mm256_fmadd_ps(va, w1, acc[2 * half + 1]);
                }
            }
            for (k, v) in acc.iter().enumerate() {
                let o = g * QK + 8 * k;
                // SAFETY: o + 8 <= h; `out` has h elements and `sc` 2h bytes (h f16 scales), so
                // the 16 bytes at 2o are in bounds.
                unsafe {
                    let s =
                        _mm256_cvtph_ps(_mm_loadu_si128(sc.as_ptr().add(2 * o) as *const __m128i));
                    let op = out.as_mut_ptr().add(o);
                    _mm256_storeu_ps(op, _mm256_fmadd_ps(s, *v, _mm256_loadu_ps(op)));
                }
            }
        }
    }
    n_active
}
