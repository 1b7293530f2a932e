//! x86 kernels for [`super::DownPlanes`]: AVX2 + FMA + F16C (per active neuron, 32 outputs per
//! step, accumulated in f32) and, for Q4 and Q8 planes, AVX-512 VNNI (integer products of four
//! neurons at a time against a two-level int8 quantisation of the activations).

use std::arch::x86_64::*;

use super::{PlaneKind, PlanesView, QK, plane_bytes};
use crate::kernels::{Kernels, SimdLevel, prefetch_l2};

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

/// [`transpose16`] on the two 16×16 byte matrices held in the lanes of `r` (row `i` in register
/// `i`), both at once: the byte interleaves stay within 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose16_lanes(r: &mut [__m256i; 16]) {
    for _ in 0..4 {
        let mut x = *r;
        for i in 0..8 {
            x[2 * i] = _mm256_unpacklo_epi8(r[i], r[i + 8]);
            x[2 * i + 1] = _mm256_unpackhi_epi8(r[i], r[i + 8]);
        }
        *r = x;
    }
}

/// Stores a transposed tile: register `i`'s low lane as 16 plane bytes of neuron `i` of the
/// block at byte `off` of its plane, its high lane likewise for neuron `i + 16`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_tile(r: &[__m256i; 16], block_planes: &mut [u8], pb: usize, off: usize) {
    for (i, t) in r.iter().enumerate() {
        let at = i * pb + off;
        let lo = &mut block_planes[at..at + 16];
        // SAFETY: `lo` holds 16 bytes (a checked slice); `storeu` has no alignment requirement.
        unsafe { _mm_storeu_si128(lo.as_mut_ptr().cast(), _mm256_castsi256_si128(*t)) };
        let at = (i + 16) * pb + off;
        let hi = &mut block_planes[at..at + 16];
        // SAFETY: as above.
        unsafe { _mm_storeu_si128(hi.as_mut_ptr().cast(), _mm256_extracti128_si256::<1>(*t)) };
    }
}

/// [`super::repack`] with AVX2, if the kernels' level has it (returns `false` otherwise, writing
/// nothing): `scales` and `planes` are the two parts of the packed output (lengths checked by the
/// caller). The slot transform after every offloaded expert read, and the load-time layout of
/// resident experts. At the 4B shape, in cache (criterion `repack`, 2026-12-07): Q4 72 µs
/// against the scalar form's 108 µs; Q8 203 µs against 196 µs, no faster.
pub(super) fn repack(
    kind: PlaneKind,
    h: usize,
    f: usize,
    src: &[u8],
    scales: &mut [u8],
    planes: &mut [u8],
) -> bool {
    // The kernels' level (`THINKER_SIMD` caps it); AVX2 or above means it was detected.
    if crate::kernels::simd_level() < SimdLevel::Avx2 {
        return false;
    }
    // SAFETY: the level is AVX2 or above only on a CPU where AVX2 was detected.
    unsafe {
        match kind {
            PlaneKind::Q4 => repack_q4_avx2(h, f, src, scales, planes),
            PlaneKind::Q8 => repack_q8_avx2(h, f, src, scales, planes),
        }
    }
    true
}

/// Q8 tiles: 16 rows × a block of 32 neurons. A row's 32 bytes of the block fill one register,
/// its first 16 neurons in the low lane and the other 16 in the high lane, so one pass of
/// [`transpose16_lanes`] transposes both 16×16 halves: register `i` then holds neuron `i`'s and
/// neuron `i + 16`'s 16 plane bytes for these rows.
#[target_feature(enable = "avx2")]
fn repack_q8_avx2(h: usize, f: usize, src: &[u8], scales: &mut [u8], planes: &mut [u8]) {
    let bb = PlaneKind::Q8.ty().block_bytes();
    let nb = f / QK;
    let rb = nb * bb;
    let pb = plane_bytes(PlaneKind::Q8, h);
    for r0 in (0..h).step_by(16) {
        for b in 0..nb {
            let block_planes = &mut planes[b * QK * pb..(b + 1) * QK * pb];
            // Scales straight to the output (see `repack_q4_avx2`).
            let sc = &mut scales[(b * h + r0) * 2..(b * h + r0) * 2 + 32];
            let mut r = [_mm256_setzero_si256(); 16];
            for (k, rk) in r.iter_mut().enumerate() {
                let at = (r0 + k) * rb + b * bb;
                sc[2 * k..2 * k + 2].copy_from_slice(&src[at..at + 2]);
                let q = &src[at + 2..at + bb];
                // SAFETY: `q` holds 32 bytes (a checked slice); `loadu` has no alignment
                // requirement.
                *rk = unsafe { _mm256_loadu_si256(q.as_ptr().cast()) };
            }
            transpose16_lanes(&mut r);
            store_tile(&r, block_planes, pb, r0);
        }
    }
}

/// Q4 tiles, as in the scalar form but two at once: a 256-bit register holds row `k`'s
/// low-nibble combination (`lo`, low lane) and high-nibble one (`hi`, high lane), built with
/// per-lane shifts from the two rows broadcast; [`transpose16_lanes`] then transposes both
/// 16×16 tiles in one pass.
#[target_feature(enable = "avx2")]
fn repack_q4_avx2(h: usize, f: usize, src: &[u8], scales: &mut [u8], planes: &mut [u8]) {
    let bb = PlaneKind::Q4.ty().block_bytes();
    let nb = f / QK;
    let rb = nb * bb;
    let pb = plane_bytes(PlaneKind::Q4, h);
    let low = _mm256_set1_epi8(0x0F);
    let lanes = _mm256_set_epi64x(4, 4, 0, 0);
    // Row `row`'s 16 nibble bytes of block `b`, in both lanes.
    let load = |row: usize, b: usize| {
        let q = &src[row * rb + b * bb + 2..row * rb + (b + 1) * bb];
        // SAFETY: `q` holds 16 bytes (a checked slice); `loadu` has no alignment requirement.
        _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(q.as_ptr().cast()) })
    };
    // Output groups outermost: a group's 32 source rows stay in the L1 while its tiles are
    // written.
    let group_bytes = QK * rb;
    // The next group's rows (contiguous) are prefetched a slice per block, so a source read
    // straight from storage into memory arrives while this group is transposed.
    let slice = group_bytes.div_ceil(nb.max(1));
    for g in 0..h / QK {
        let next = src
            .get((g + 1) * group_bytes..(g + 2) * group_bytes)
            .unwrap_or(&[]);
        for b in 0..nb {
            if let Some(part) = next.get(b * slice..((b + 1) * slice).min(next.len())) {
                prefetch_l2(part);
            }
            let block_planes = &mut planes[b * QK * pb..(b + 1) * QK * pb];
            // The tile's 32 scales (`[F/32][H]`: contiguous for its rows), copied straight to
            // the output: gathered into a stack buffer and copied on as one vector, the 2-byte
            // stores could not forward to the vector load, which stalled on every tile.
            let at = (b * h + g * QK) * 2;
            for (k, d) in scales[at..at + 2 * QK].chunks_exact_mut(2).enumerate() {
                let from = (g * QK + k) * rb + b * bb;
                d.copy_from_slice(&src[from..from + 2]);
            }
            let mut r = [_mm256_setzero_si256(); 16];
            for (k, rk) in r.iter_mut().enumerate() {
                let x = load(g * QK + k, b);
                let y = load(g * QK + k + 16, b);
                // Low lane: (x & 0F) | (y & 0F) << 4; high lane: (x >> 4) | (y & F0).
                let xs = _mm256_and_si256(_mm256_srlv_epi64(x, lanes), low);
                let ys = _mm256_and_si256(_mm256_srlv_epi64(y, lanes), low);
                *rk = _mm256_or_si256(xs, _mm256_slli_epi64::<4>(ys));
            }
            transpose16_lanes(&mut r);
            store_tile(&r, block_planes, pb, g * 16);
        }
    }
}

/// Runs the kernel of `level` (VNNI for Q4 planes at the AVX-512 level, else AVX2); `None` for
/// the scalar level or a level this CPU cannot run.
pub(super) fn apply(
    level: SimdLevel,
    p: PlanesView<'_>,
    a: &[f32],
    out: &mut [f32],
    acc: &mut [f32],
) -> Option<usize> {
    if level == SimdLevel::Scalar || Kernels::for_level(level).is_none() {
        return None;
    }
    assert!(a.len() == p.f && out.len() == p.h && acc.len() == p.h && p.h.is_multiple_of(QK));
    assert!(
        p.planes.len() == p.f * plane_bytes(p.kind, p.h) && p.scales.len() == p.f / QK * p.h * 2
    );
    if level == SimdLevel::Avx512 {
        // SAFETY: `Kernels::for_level(Avx512)` is `Some` only after AVX-512 F/BW/VL/VNNI and
        // AVX2/FMA/F16C were detected; the asserts bound every access.
        return Some(unsafe {
            match p.kind {
                PlaneKind::Q4 => apply_vnni::<false>(p, a, out),
                PlaneKind::Q8 => apply_vnni::<true>(p, a, out),
            }
        });
    }
    // SAFETY: AVX2, FMA and F16C were detected (every non-scalar level needs them); the
    // asserts bound every access below.
    Some(unsafe { apply_avx2(p, a, out, acc) })
}

/// Block `b`'s active neurons (`a[j] != 0`): their indices, their activations, and how many.
fn active(a: &[f32], b: usize) -> ([usize; QK], [f32; QK], usize) {
    let (mut js, mut vs, mut n) = ([0usize; QK], [0f32; QK], 0);
    for (j, &aj) in a.iter().enumerate().skip(b * QK).take(QK) {
        if aj != 0.0 {
            js[n] = j;
            vs[n] = aj;
            n += 1;
        }
    }
    (js, vs, n)
}

/// Blocks of 32 neurons whose active lists are kept ahead of the one computed; while block `b`
/// is computed, blocks up to `b + PREFETCH_BLOCKS + 1` have been requested. Over
/// DRAM-resident experts (`expert_stream` example) this and the L2 hint took the sparse down
/// from 4.8 to 8.4 GB/s; one block ahead gave 7.5.
const PREFETCH_BLOCKS: usize = 2;

/// The block loop of both kernels: `f(b, active neurons, their activations)` for every block
/// of 32 neurons with an active one, while later blocks' active planes and scales are requested
/// (see [`PREFETCH_BLOCKS`]). Returns the number of active neurons.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn for_active_blocks(
    p: PlanesView<'_>,
    a: &[f32],
    mut f: impl FnMut(usize, &[usize], &[f32]),
) -> usize {
    let pb = plane_bytes(p.kind, p.h);
    let nblocks = p.f / QK;
    // Requests a block's scales and active planes into L2 (scattered planes: no hardware
    // prefetcher follows them; L2 because the L1 cannot keep enough requests in flight).
    let request = |b: usize, js: &[usize]| {
        for &j in js {
            prefetch_l2(&p.planes[j * pb..(j + 1) * pb]);
        }
        if !js.is_empty() {
            prefetch_l2(&p.scales[b * p.h * 2..(b + 1) * p.h * 2]);
        }
    };
    // The active lists of blocks b .. b + PREFETCH_BLOCKS, found once each.
    let mut ring = [([0usize; QK], [0f32; QK], 0usize); PREFETCH_BLOCKS + 1];
    for (b, r) in ring.iter_mut().enumerate().take(nblocks) {
        *r = active(a, b);
        request(b, &r.0[..r.2]);
    }
    let mut n_active = 0;
    for b in 0..nblocks {
        let (js, vs, n) = ring[b % ring.len()];
        let ahead = b + PREFETCH_BLOCKS + 1;
        if ahead < nblocks {
            let r = &mut ring[ahead % (PREFETCH_BLOCKS + 1)];
            *r = active(a, ahead);
            request(ahead, &r.0[..r.2]);
        }
        if n > 0 {
            n_active += n;
            f(b, &js[..n], &vs[..n]);
        }
    }
    n_active
}

/// `out[g·32 + 8i ..][..8] += scale · v[i]` for the four vectors of output group `g`, with
/// `sc` the block's per-output f16 scales (little-endian bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_scaled(sc: &[u8], g: usize, v: &[__m256; 4], out: &mut [f32]) {
    for (i, v) in v.iter().enumerate() {
        let at = g * QK + 8 * i;
        let (s, o) = (&sc[2 * at..2 * at + 16], &mut out[at..at + 8]);
        // SAFETY: `s` holds 16 bytes and `o` 8 floats (checked slices); `loadu`/`storeu` have
        // no alignment requirement.
        unsafe {
            let s = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr() as *const __m128i));
            let op = o.as_mut_ptr();
            _mm256_storeu_ps(op, _mm256_fmadd_ps(s, *v, _mm256_loadu_ps(op)));
        }
    }
}

/// Per block of 32 neurons: the active ones are listed first; then for each group of 32
/// outputs, their contributions accumulate in four registers (no accumulator round trips
/// through memory), and the block's scales are applied once per group.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn apply_avx2(p: PlanesView<'_>, a: &[f32], out: &mut [f32], _acc: &mut [f32]) -> usize {
    let pb = plane_bytes(p.kind, p.h);
    let groups = p.h / QK;
    for_active_blocks(p, a, |b, js, vs| {
        let sc = &p.scales[b * p.h * 2..(b + 1) * p.h * 2];
        for g in 0..groups {
            let mut acc = [_mm256_setzero_ps(); 4];
            for (&j, &aj) in js.iter().zip(vs) {
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
            add_scaled(sc, g, &acc, out);
        }
    })
}

/// Planes with AVX-512 VNNI (`Q8`: Q8 planes, else Q4): integer products instead of an
/// int→float conversion and an FMA per weight.
///
/// Per block of 32 neurons, the active neurons' activations are quantised to int8 in two levels
/// (`a ≈ d₁·q₁ + d₂·q₂`, `q₂` the quantised residual: error ~2⁻¹⁵ of the block's largest
/// activation). Four active neurons at a time, their weights for 32 outputs, as unsigned bytes
/// (Q4 nibbles are `w + 8`; Q8 bytes get `+ 128`), are interleaved so that each i32 lane holds
/// one output's four weights, and one `vpdpbusd` per level and eight outputs adds `Σ q·w` for
/// all four neurons. The offset is removed exactly by starting each lane at `−offset·Σq`. The
/// block's per-output scales apply once per group of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn apply_vnni<const Q8: bool>(p: PlanesView<'_>, a: &[f32], out: &mut [f32]) -> usize {
    let pb = plane_bytes(p.kind, p.h);
    let groups = p.h / QK;
    let mask = _mm256_set1_epi8(0x0F);
    let shifts = _mm256_set_epi64x(4, 4, 0, 0);
    let flip = _mm256_set1_epi8(i8::MIN);
    let off: i32 = if Q8 { 128 } else { 8 };
    // The 32 weights of neuron `j` for output group `g` as unsigned bytes, in output order.
    // Q4: lane 0 holds outputs 0..16 from the low nibbles, lane 1 16..32 from the high ones.
    let nibbles = |j: usize, g: usize| {
        if Q8 {
            let at = j * pb + g * QK;
            // SAFETY: `at + 32 <= (j + 1) * pb <= planes.len()` (asserted by the caller);
            // `loadu` has no alignment requirement.
            let v = unsafe { _mm256_loadu_si256(p.planes.as_ptr().add(at) as *const __m256i) };
            _mm256_xor_si256(v, flip)
        } else {
            let at = j * pb + g * 16;
            // SAFETY: `at + 16 <= (j + 1) * pb <= planes.len()` (asserted by the caller);
            // `loadu` has no alignment requirement.
            let v = unsafe { _mm_loadu_si128(p.planes.as_ptr().add(at) as *const __m128i) };
            _mm256_and_si256(
                _mm256_srlv_epi64(_mm256_broadcastsi128_si256(v), shifts),
                mask,
            )
        }
    };
    for_active_blocks(p, a, |b, active, vs| {
        let n = active.len();
        let mut js = [0usize; QK];
        js[..n].copy_from_slice(active);
        let (qh, dh) = quantize_i8(&vs[..n]);
        let mut res = [0f32; QK];
        for k in 0..n {
            res[k] = vs[k] - dh * qh[k] as f32;
        }
        let (ql, dl) = quantize_i8(&res[..n]);
        let sum_h: i32 = qh[..n].iter().map(|&q| q as i32).sum();
        let sum_l: i32 = ql[..n].iter().map(|&q| q as i32).sum();
        // Pad to whole quads with a zero activation (the weights then do not matter).
        let quads = n.div_ceil(4);
        for k in n..quads * 4 {
            js[k] = js[0];
        }
        let bcast = |q: &[i8; QK], m: usize| {
            _mm256_set1_epi32(i32::from_le_bytes([
                q[4 * m] as u8,
                q[4 * m + 1] as u8,
                q[4 * m + 2] as u8,
                q[4 * m + 3] as u8,
            ]))
        };
        let mut ah = [_mm256_setzero_si256(); QK / 4];
        let mut al = [_mm256_setzero_si256(); QK / 4];
        for m in 0..quads {
            ah[m] = bcast(&qh, m);
            al[m] = bcast(&ql, m);
        }
        let (vdh, vdl) = (_mm256_set1_ps(dh), _mm256_set1_ps(dl));
        let (ch, cl) = (
            _mm256_set1_epi32(-off * sum_h),
            _mm256_set1_epi32(-off * sum_l),
        );
        let sc = &p.scales[b * p.h * 2..(b + 1) * p.h * 2];
        for g in 0..groups {
            let mut acc_h = [ch; 4];
            let mut acc_l = [cl; 4];
            for m in 0..quads {
                let n0 = nibbles(js[4 * m], g);
                let n1 = nibbles(js[4 * m + 1], g);
                let n2 = nibbles(js[4 * m + 2], g);
                let n3 = nibbles(js[4 * m + 3], g);
                let (ab_lo, ab_hi) = (_mm256_unpacklo_epi8(n0, n1), _mm256_unpackhi_epi8(n0, n1));
                let (cd_lo, cd_hi) = (_mm256_unpacklo_epi8(n2, n3), _mm256_unpackhi_epi8(n2, n3));
                // x[k]: lanes hold outputs [4k..4k+4 | 16+4k..16+4k+4], four neurons' weights each.
                let x = [
                    _mm256_unpacklo_epi16(ab_lo, cd_lo),
                    _mm256_unpackhi_epi16(ab_lo, cd_lo),
                    _mm256_unpacklo_epi16(ab_hi, cd_hi),
                    _mm256_unpackhi_epi16(ab_hi, cd_hi),
                ];
                for k in 0..4 {
                    acc_h[k] = _mm256_dpbusd_epi32(acc_h[k], x[k], ah[m]);
                    acc_l[k] = _mm256_dpbusd_epi32(acc_l[k], x[k], al[m]);
                }
            }
            let f = [0, 1, 2, 3].map(|k| {
                _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(acc_l[k]),
                    vdl,
                    _mm256_mul_ps(_mm256_cvtepi32_ps(acc_h[k]), vdh),
                )
            });
            // Back to output order: 0..8, 8..16, 16..24, 24..32.
            let o = [
                _mm256_permute2f128_ps::<0x20>(f[0], f[1]),
                _mm256_permute2f128_ps::<0x20>(f[2], f[3]),
                _mm256_permute2f128_ps::<0x31>(f[0], f[1]),
                _mm256_permute2f128_ps::<0x31>(f[2], f[3]),
            ];
            add_scaled(sc, g, &o, out);
        }
    })
}

/// Symmetric int8 quantisation of `v` (at most 32 values) with one scale: `(q, d)`,
/// `v ≈ d·q`, `|q| ≤ 127`, rounding half away from zero.
fn quantize_i8(v: &[f32]) -> ([i8; QK], f32) {
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; QK];
    for (q, &x) in q.iter_mut().zip(v) {
        *q = (x * inv).round().clamp(-127.0, 127.0) as i8;
    }
    (q, d)
}
