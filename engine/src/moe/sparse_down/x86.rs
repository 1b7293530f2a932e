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

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn apply_avx2(p: PlanesView<'_>, a: &[f32], out: &mut [f32], acc: &mut [f32]) -> usize {
    let pb = plane_bytes(p.kind, p.h);
    let groups = p.h / QK;
    let mut n_active = 0;
    let accp = acc.as_mut_ptr();
    for b in 0..p.f / QK {
        let mut any = false;
        for i in 0..QK {
            let j = b * QK + i;
            let aj = a[j];
            if aj == 0.0 {
                continue;
            }
            if !any {
                acc.fill(0.0);
                any = true;
            }
            n_active += 1;
            let va = _mm256_set1_ps(aj);
            let plane = p.planes[j * pb..(j + 1) * pb].as_ptr();
            for g in 0..groups {
                // SAFETY: group g covers plane bytes [g*16, g*16+16) (Q4) or [g*32, g*32+32)
                // (Q8) and acc[g*32 .. g*32+32], all within the asserted lengths.
                unsafe {
                    let q: [__m128i; 2] = match p.kind {
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
                    };
                    for (half_i, qv) in q.iter().enumerate() {
                        let base = accp.add(g * QK + half_i * 16);
                        let w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(*qv));
                        let w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(*qv, 8)));
                        _mm256_storeu_ps(base, _mm256_fmadd_ps(va, w0, _mm256_loadu_ps(base)));
                        _mm256_storeu_ps(
                            base.add(8),
                            _mm256_fmadd_ps(va, w1, _mm256_loadu_ps(base.add(8))),
                        );
                    }
                }
            }
        }
        if any {
            let sc = &p.scales[b * p.h * 2..(b + 1) * p.h * 2];
            for k in (0..p.h).step_by(8) {
                // SAFETY: k + 8 <= h (h is a multiple of 32); acc and out have h elements and sc has
                // 2h bytes (h f16 scales), so the 16 bytes at 2k are in bounds.
                unsafe {
                    let s =
                        _mm256_cvtph_ps(_mm_loadu_si128(sc.as_ptr().add(2 * k) as *const __m128i));
                    let o = out.as_mut_ptr().add(k);
                    let x = _mm256_loadu_ps(accp.add(k));
                    _mm256_storeu_ps(o, _mm256_fmadd_ps(s, x, _mm256_loadu_ps(o)));
                }
            }
        }
    }
    n_active
}
