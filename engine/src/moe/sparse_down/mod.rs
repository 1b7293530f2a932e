//! Neuron-major ("transposed") storage of an expert's down projection, so that a ReGLU neuron
//! whose activation is zero costs no bytes at all.
//!
//! A ggml down matrix is `[H rows × F cols]`: row `h` holds output `h`'s weights over the F
//! neurons, quantised in blocks of 32 *neurons*. Skipping an inactive neuron there skips nothing
//! (a block of 32 is all-zero with probability ~0.8³² even at 80% sparsity). [`DownPlanes`]
//! re-lays the same quantised values out per neuron, losslessly:
//! - `planes`: for neuron `j`, its H quantised weights (Q4_0: 4-bit, `H/2` bytes; Q8_0: 8-bit,
//!   `H` bytes). Q4_0 groups of 32 outputs use ggml's nibble order: byte `i` of a group holds
//!   output `i` (low nibble) and `i + 16` (high nibble);
//! - `scales`: the original per-block scales, `[F/32][H]` f16 (little-endian bytes) — the 32
//!   neurons of a block share output `h`'s scale.
//!
//! The size is identical to the original tensor, and `W[h][j] = scale[j/32][h] · (q[j][h] − z)`
//! exactly as ggml defines it. The product `out[h] = Σ_j a_j · W[h][j]` accumulates, per block of
//! neurons, `acc[h] = Σ_{j active} a_j · (q[j][h] − z)` and then adds `scale · acc`.
//!
//! The packed form is one byte string, scales first, then planes ([`repack`]), so it can live in
//! an owned buffer ([`DownPlanes`]) or in any borrowed bytes ([`PlanesView`]) — e.g. an expert
//! cache slot whose down matrix was repacked in place right after it was read from storage. Both
//! run the same kernel, so the results are bit-identical.

use crate::error::{Error, Result};
use crate::kernels::{Kernels, SimdLevel};
use crate::model::weights::{MatRef, Matrix, TensorBytes};
use crate::quant::GgmlType;

/// Neurons per quantisation block (Q4_0 and Q8_0).
const QK: usize = 32;

/// Element encoding of the planes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaneKind {
    /// 4-bit values, zero point 8.
    Q4,
    /// Signed 8-bit values.
    Q8,
}

impl PlaneKind {
    /// The encoding for a ggml down matrix of `ty` with `h` outputs (rows) and `f` neurons
    /// (columns), or `None` if it cannot be repacked (other types, sizes not multiples of 32).
    pub fn for_down(ty: GgmlType, h: usize, f: usize) -> Option<PlaneKind> {
        let kind = match ty {
            GgmlType::Q4_0 => PlaneKind::Q4,
            GgmlType::Q8_0 => PlaneKind::Q8,
            _ => return None,
        };
        (h > 0 && f > 0 && h.is_multiple_of(QK) && f.is_multiple_of(QK)).then_some(kind)
    }

    fn ty(self) -> GgmlType {
        match self {
            PlaneKind::Q4 => GgmlType::Q4_0,
            PlaneKind::Q8 => GgmlType::Q8_0,
        }
    }
}

/// Bytes of the packed form of an `h × f` matrix (equal to the ggml tensor's).
fn packed_bytes(kind: PlaneKind, h: usize, f: usize) -> usize {
    f / QK * h * 2 + f * plane_bytes(kind, h)
}

/// Repacks a ggml down matrix (`h` rows × `f` columns of `kind`'s type, `src`) into the packed
/// neuron-major form in `dst` (same length): scales `[F/32][H]` f16, then planes `[F][H/2 or H]`.
/// Every byte of `dst` is written.
pub fn repack(kind: PlaneKind, h: usize, f: usize, src: &[u8], dst: &mut [u8]) -> Result<()> {
    repack_with(kind, h, f, src, dst, true)
}

/// The scalar reference of [`repack`] (benchmarks compare the two).
pub fn repack_scalar(
    kind: PlaneKind,
    h: usize,
    f: usize,
    src: &[u8],
    dst: &mut [u8],
) -> Result<()> {
    repack_with(kind, h, f, src, dst, false)
}

/// [`repack`], with the SIMD form where the kernels' level has one (`simd`) or the scalar
/// reference.
fn repack_with(
    kind: PlaneKind,
    h: usize,
    f: usize,
    src: &[u8],
    dst: &mut [u8],
    simd: bool,
) -> Result<()> {
    let ty = kind.ty();
    let bb = ty.block_bytes();
    let nb = f / QK;
    let rb = nb * bb;
    let n = packed_bytes(kind, h, f);
    if PlaneKind::for_down(ty, h, f) != Some(kind) || src.len() != h * rb || dst.len() != n {
        return Err(Error::BadLength {
            ty,
            what: format!(
                "sparse down repack: {h}x{f} needs {} source and {n} packed bytes, got {} and {}",
                h * rb,
                src.len(),
                dst.len()
            ),
        });
    }
    let pb = plane_bytes(kind, h);
    let (scales, planes) = dst.split_at_mut(nb * h * 2);
    #[cfg(target_arch = "x86_64")]
    if simd && x86::repack(kind, h, f, src, scales, planes) {
        return Ok(());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    // Row `row`'s scale of block `b` (copied as the tiles below read the block).
    let mut scale = |row: usize, b: usize| {
        let at = row * rb + b * bb;
        let s = (b * h + row) * 2;
        scales[s..s + 2].copy_from_slice(&src[at..at + 2]);
    };
    match kind {
        PlaneKind::Q4 => {
            // Tile: one block of 32 neurons × 32 rows (output group g). Plane byte `g·16 + k` of
            // neuron j holds row g·32+k (low nibble) and row g·32+k+16 (high nibble). Rows k and
            // k+16 combine byte-wise (u128 lanes of 16 nibble bytes) into `lo` (neurons 0..16
            // of the block) and `hi` (neurons 16..32); a 16×16 byte transpose then gives each
            // neuron's 16 contiguous plane bytes. Blocks outermost, so the 32 planes being
            // written stay in cache while the rows stream by.
            const LOW: u128 = 0x0F0F_0F0F_0F0F_0F0F_0F0F_0F0F_0F0F_0F0F;
            let qs = |row: usize, b: usize| -> u128 {
                let at = row * rb + b * bb + 2;
                let mut q = [0u8; 16];
                q.copy_from_slice(&src[at..at + 16]);
                u128::from_le_bytes(q)
            };
            let mut lo = [0u128; 16];
            let mut hi = [0u128; 16];
            for b in 0..nb {
                let block_planes = &mut planes[b * QK * pb..(b + 1) * QK * pb];
                for g in 0..h / QK {
                    for k in 0..16 {
                        scale(g * QK + k, b);
                        scale(g * QK + k + 16, b);
                        let x = qs(g * QK + k, b);
                        let y = qs(g * QK + k + 16, b);
                        lo[k] = (x & LOW) | ((y & LOW) << 4);
                        hi[k] = ((x >> 4) & LOW) | (y & !LOW);
                    }
                    let (t_lo, t_hi) = (transpose16_best(&lo), transpose16_best(&hi));
                    for i in 0..16 {
                        let at = i * pb + g * 16;
                        block_planes[at..at + 16].copy_from_slice(&t_lo[i].to_le_bytes());
                        let at = (i + 16) * pb + g * 16;
                        block_planes[at..at + 16].copy_from_slice(&t_hi[i].to_le_bytes());
                    }
                }
            }
        }
        PlaneKind::Q8 => {
            // Tile: one block of 32 neurons × 16 rows: two 16×16 byte transposes give 16
            // contiguous plane bytes for each of the 32 neurons.
            let mut a = [0u128; 16];
            let mut c = [0u128; 16];
            for b in 0..nb {
                let block_planes = &mut planes[b * QK * pb..(b + 1) * QK * pb];
                for r0 in (0..h).step_by(16) {
                    for k in 0..16 {
                        scale(r0 + k, b);
                        let at = (r0 + k) * rb + b * bb + 2;
                        let mut q = [0u8; 16];
                        q.copy_from_slice(&src[at..at + 16]);
                        a[k] = u128::from_le_bytes(q);
                        q.copy_from_slice(&src[at + 16..at + 32]);
                        c[k] = u128::from_le_bytes(q);
                    }
                    let (ta, tc) = (transpose16_best(&a), transpose16_best(&c));
                    for i in 0..16 {
                        let at = i * pb + r0;
                        block_planes[at..at + 16].copy_from_slice(&ta[i].to_le_bytes());
                        let at = (i + 16) * pb + r0;
                        block_planes[at..at + 16].copy_from_slice(&tc[i].to_le_bytes());
                    }
                }
            }
        }
    }
    Ok(())
}

/// [`transpose16`] with SSE2 byte unpacks where available (64 instructions instead of ~600
/// scalar ones; repacking is on the offload path's critical CPU budget).
fn transpose16_best(m: &[u128; 16]) -> [u128; 16] {
    #[cfg(target_arch = "x86_64")]
    {
        x86::transpose16(m)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        transpose16(m)
    }
}

/// Transposes a 16×16 byte matrix held as 16 little-endian `u128` rows (byte `j` of row `i` is
/// element `(i, j)`): byte `i` of output row `j` is byte `j` of input row `i`. Four rounds of
/// swapping off-diagonal blocks (8×8, 4×4, 2×2, 1×1 bytes) with shifts and masks.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
fn transpose16(m: &[u128; 16]) -> [u128; 16] {
    let mut r = *m;
    // Round with block size `s` bytes: for rows i (with bit s clear) and i + s, swap the
    // high-s-byte halves of each 2s-byte group of row i with the low halves of row i + s.
    for (s, mask) in [
        (8usize, 0x0000_0000_0000_0000_FFFF_FFFF_FFFF_FFFFu128),
        (4, 0x0000_0000_FFFF_FFFF_0000_0000_FFFF_FFFF),
        (2, 0x0000_FFFF_0000_FFFF_0000_FFFF_0000_FFFF),
        (1, 0x00FF_00FF_00FF_00FF_00FF_00FF_00FF_00FF),
    ] {
        let shift = 8 * s as u32;
        for i in 0..16 {
            if i & s != 0 {
                continue;
            }
            let (a, b) = (r[i], r[i + s]);
            // Low-half bytes of each group stay in a; a's high halves go to b's low halves.
            r[i] = (a & mask) | ((b & mask) << shift);
            r[i + s] = ((a >> shift) & mask) | (b & !mask);
        }
    }
    r
}

/// An expert's down projection, neuron-major, in a buffer of its own or a range of a shared
/// one (the layer's huge-page arena, see `Blob::anon_filled`).
#[derive(Clone, Debug)]
pub struct DownPlanes {
    kind: PlaneKind,
    /// Neurons (F).
    f: usize,
    /// Outputs (H).
    h: usize,
    /// Scales `[F/32][H]` f16 (LE bytes), then planes `[F][plane_bytes]`.
    data: TensorBytes,
}

impl DownPlanes {
    /// Repacks a ggml down matrix (`rows = H`, `cols = F`) of type Q4_0 or Q8_0. Other types, or H
    /// not a multiple of 32, give `Ok(None)`: the caller keeps the dense layout.
    pub fn from_down(m: &Matrix) -> Result<Option<DownPlanes>> {
        DownPlanes::from_down_ref(m.view())
    }

    /// [`DownPlanes::from_down`] on borrowed bytes.
    pub fn from_down_ref(m: MatRef<'_>) -> Result<Option<DownPlanes>> {
        let (h, f) = (m.rows, m.cols);
        let Some(kind) = PlaneKind::for_down(m.ty, h, f) else {
            return Ok(None);
        };
        let mut data = vec![0u8; packed_bytes(kind, h, f)];
        repack(kind, h, f, m.data, &mut data)?;
        Ok(Some(DownPlanes {
            kind,
            f,
            h,
            data: TensorBytes::owned(data),
        }))
    }

    /// The layout of a down matrix of type `ty` (`h` rows × `f` columns), and the bytes its
    /// planes take, or `None` when it has none (see [`DownPlanes::from_down`]).
    pub fn layout_for(ty: GgmlType, h: usize, f: usize) -> Option<(PlaneKind, usize)> {
        PlaneKind::for_down(ty, h, f).map(|k| (k, packed_bytes(k, h, f)))
    }

    /// Planes already written (by [`repack`]) into `data`.
    ///
    /// # Errors
    /// [`Error::BadLength`] when `data` is not the size of `kind`'s planes for `h × f`.
    pub fn from_packed(kind: PlaneKind, h: usize, f: usize, data: TensorBytes) -> Result<Self> {
        PlanesView::new(kind, h, f, data.as_slice())?;
        Ok(DownPlanes { kind, f, h, data })
    }

    /// Bytes held (equal to the original tensor's).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Bytes one neuron's plane occupies (what an inactive neuron saves).
    pub fn neuron_bytes(&self) -> usize {
        plane_bytes(self.kind, self.h)
    }

    /// Outputs (H).
    pub fn outputs(&self) -> usize {
        self.h
    }

    /// Neurons (F).
    pub fn neurons(&self) -> usize {
        self.f
    }

    /// `out[h] += Σ_j a[j] · W[h][j]` over the neurons with `a[j] != 0`; returns how many.
    ///
    /// `acc` is scratch of at least H floats.
    pub fn apply(&self, a: &[f32], out: &mut [f32], acc: &mut Vec<f32>) -> Result<usize> {
        self.view().apply(a, out, acc)
    }

    /// Scalar reference of [`DownPlanes::apply`].
    pub fn apply_scalar(&self, a: &[f32], out: &mut [f32], acc: &mut Vec<f32>) -> Result<usize> {
        let v = self.view();
        v.check(a, out)?;
        acc.resize(self.h, 0.0);
        Ok(apply_scalar(v, a, out, &mut acc[..self.h]))
    }

    /// The packed bytes as a view.
    pub fn view(&self) -> PlanesView<'_> {
        PlanesView {
            kind: self.kind,
            f: self.f,
            h: self.h,
            scales: &self.data.as_slice()[..self.f / QK * self.h * 2],
            planes: &self.data.as_slice()[self.f / QK * self.h * 2..],
        }
    }
}

/// Packed down planes in borrowed bytes (an owned [`DownPlanes`] or an expert cache slot).
#[derive(Clone, Copy, Debug)]
pub struct PlanesView<'a> {
    pub(crate) kind: PlaneKind,
    pub(crate) f: usize,
    pub(crate) h: usize,
    /// `[F/32][H]` f16, little-endian bytes.
    pub(crate) scales: &'a [u8],
    /// `[F][plane_bytes]`.
    pub(crate) planes: &'a [u8],
}

impl<'a> PlanesView<'a> {
    /// Views `bytes` (as [`repack`] wrote them) as the planes of an `h × f` matrix.
    pub fn new(kind: PlaneKind, h: usize, f: usize, bytes: &'a [u8]) -> Result<PlanesView<'a>> {
        if PlaneKind::for_down(kind.ty(), h, f) != Some(kind)
            || bytes.len() != packed_bytes(kind, h, f)
        {
            return Err(Error::BadLength {
                ty: kind.ty(),
                what: format!(
                    "sparse down view: {h}x{f} needs {} bytes, got {}",
                    packed_bytes(kind, h, f),
                    bytes.len()
                ),
            });
        }
        let (scales, planes) = bytes.split_at(f / QK * h * 2);
        Ok(PlanesView {
            kind,
            f,
            h,
            scales,
            planes,
        })
    }

    /// Bytes one neuron's plane occupies.
    pub fn neuron_bytes(&self) -> usize {
        plane_bytes(self.kind, self.h)
    }

    /// Outputs (H).
    pub fn outputs(&self) -> usize {
        self.h
    }

    /// `out[h] += Σ_j a[j] · W[h][j]` over the neurons with `a[j] != 0`; returns how many.
    /// `acc` is scratch of at least H floats.
    pub fn apply(&self, a: &[f32], out: &mut [f32], acc: &mut Vec<f32>) -> Result<usize> {
        self.check(a, out)?;
        acc.resize(self.h, 0.0);
        Ok(apply_best(*self, a, out, &mut acc[..self.h]))
    }

    /// [`PlanesView::apply`] with the kernel of `level` (tests compare every level).
    pub fn apply_at(
        &self,
        level: SimdLevel,
        a: &[f32],
        out: &mut [f32],
        acc: &mut Vec<f32>,
    ) -> Result<usize> {
        self.check(a, out)?;
        acc.resize(self.h, 0.0);
        Ok(apply_level(level, *self, a, out, &mut acc[..self.h]))
    }

    fn check(&self, a: &[f32], out: &[f32]) -> Result<()> {
        if a.len() != self.f || out.len() != self.h {
            return Err(Error::InvalidInput(format!(
                "sparse down: {} activations / {} outputs for a {}x{} matrix",
                a.len(),
                out.len(),
                self.h,
                self.f
            )));
        }
        Ok(())
    }
}

fn plane_bytes(kind: PlaneKind, h: usize) -> usize {
    match kind {
        PlaneKind::Q4 => h / 2,
        PlaneKind::Q8 => h,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

/// The kernel of the active SIMD level ([`Kernels::active`]).
fn apply_best(p: PlanesView<'_>, a: &[f32], out: &mut [f32], acc: &mut [f32]) -> usize {
    apply_level(Kernels::active().level, p, a, out, acc)
}

/// The kernel of `level` (scalar for levels this CPU cannot run or without a variant).
fn apply_level(
    level: SimdLevel,
    p: PlanesView<'_>,
    a: &[f32],
    out: &mut [f32],
    acc: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(n) = x86::apply(level, p, a, out, acc) {
        return n;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    apply_scalar(p, a, out, acc)
}

/// The scalar kernel (reference for the SIMD one).
pub(crate) fn apply_scalar(
    p: PlanesView<'_>,
    a: &[f32],
    out: &mut [f32],
    acc: &mut [f32],
) -> usize {
    let pb = plane_bytes(p.kind, p.h);
    let mut n_active = 0;
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
            let plane = &p.planes[j * pb..(j + 1) * pb];
            match p.kind {
                PlaneKind::Q4 => {
                    for (g, bytes) in plane.chunks_exact(16).enumerate() {
                        for (k, &byte) in bytes.iter().enumerate() {
                            acc[g * QK + k] += aj * ((byte & 0x0F) as i32 - 8) as f32;
                            acc[g * QK + k + 16] += aj * ((byte >> 4) as i32 - 8) as f32;
                        }
                    }
                }
                PlaneKind::Q8 => {
                    for (x, &q) in acc.iter_mut().zip(plane) {
                        *x += aj * (q as i8) as f32;
                    }
                }
            }
        }
        if any {
            let sc = &p.scales[b * p.h * 2..(b + 1) * p.h * 2];
            for ((o, &x), s) in out.iter_mut().zip(acc.iter()).zip(sc.chunks_exact(2)) {
                *o += half::f16::from_le_bytes([s[0], s[1]]).to_f32() * x;
            }
        }
    }
    n_active
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::TensorBytes;

    #[test]
    fn transpose16_best_matches_scalar() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..64 {
            let m: [u128; 16] = std::array::from_fn(|_| (next() as u128) << 64 | next() as u128);
            let t = transpose16(&m);
            assert_eq!(transpose16_best(&m), t);
            // Byte (i, j) of the input is byte (j, i) of the output.
            for (i, row) in m.iter().enumerate() {
                for (j, &byte) in row.to_le_bytes().iter().enumerate() {
                    assert_eq!(byte, t[j].to_le_bytes()[i]);
                }
            }
        }
    }

    fn rand_f32(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A random Q4_0/Q8_0 matrix built from raw random blocks.
    fn matrix(ty: GgmlType, h: usize, f: usize, seed: u64) -> Matrix {
        let mut s = seed;
        let nb = f / QK;
        let bb = ty.block_bytes();
        let mut data = vec![0u8; h * nb * bb];
        for blk in data.chunks_exact_mut(bb) {
            let d = half::f16::from_f32(rand_f32(&mut s).abs() * 0.1 + 0.01);
            blk[..2].copy_from_slice(&d.to_le_bytes());
            for x in &mut blk[2..] {
                *x = (rand_f32(&mut s) * 127.0) as i8 as u8;
            }
        }
        Matrix::new("down", ty, h, f, TensorBytes::owned(data)).unwrap()
    }

    /// Dense `W · a` in f64, dequantising by ggml's definition (independent of the planes).
    fn dense_product(m: &Matrix, a: &[f32]) -> Vec<f32> {
        let bb = m.ty.block_bytes();
        (0..m.rows)
            .map(|r| {
                let row = m.row(r);
                let mut sum = 0f64;
                for (b, blk) in row.chunks_exact(bb).enumerate() {
                    let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32() as f64;
                    for i in 0..QK {
                        let q = match m.ty {
                            GgmlType::Q4_0 if i < 16 => (blk[2 + i] & 15) as f64 - 8.0,
                            GgmlType::Q4_0 => (blk[2 + i - 16] >> 4) as f64 - 8.0,
                            _ => blk[2 + i] as i8 as f64,
                        };
                        sum += d * q * a[b * QK + i] as f64;
                    }
                }
                sum as f32
            })
            .collect()
    }

    /// Relative tolerance of the sparse product against a float64 dense product.
    const TOL: f32 = 1e-4;

    #[test]
    fn matches_dense_product_and_counts_active() {
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
            for (h, f) in [(32, 32), (64, 96), (96, 64), (256, 160)] {
                let m = matrix(ty, h, f, (h * 7 + f) as u64);
                let p = DownPlanes::from_down(&m).unwrap().unwrap();
                assert_eq!(p.bytes(), m.data.len());
                let mut s = 99u64;
                let a: Vec<f32> = (0..f)
                    .map(|_| {
                        let v = rand_f32(&mut s);
                        if v < 0.4 { 0.0 } else { v }
                    })
                    .collect();
                let want = dense_product(&m, &a);
                let mut acc = Vec::new();
                let levels = Kernels::available();
                for simd in std::iter::once(None).chain(levels.iter().map(|k| Some(k.level))) {
                    let mut out = vec![0f32; h];
                    let n = match simd {
                        Some(level) => p.view().apply_at(level, &a, &mut out, &mut acc).unwrap(),
                        None => p.apply_scalar(&a, &mut out, &mut acc).unwrap(),
                    };
                    assert_eq!(n, a.iter().filter(|x| **x != 0.0).count());
                    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
                    for (o, w) in out.iter().zip(&want) {
                        assert!(
                            (o - w).abs() <= TOL * scale,
                            "{ty:?} {h}x{f} simd={simd:?}: {o} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// The packed form by its definition, one value at a time (independent of [`repack`]).
    fn repack_reference(m: &Matrix) -> Vec<u8> {
        let kind = PlaneKind::for_down(m.ty, m.rows, m.cols).unwrap();
        let (h, f) = (m.rows, m.cols);
        let (nb, bb, pb) = (f / QK, m.ty.block_bytes(), plane_bytes(kind, h));
        let mut out = vec![0u8; packed_bytes(kind, h, f)];
        let (scales, planes) = out.split_at_mut(nb * h * 2);
        for row in 0..h {
            let r = m.row(row);
            for b in 0..nb {
                let blk = &r[b * bb..(b + 1) * bb];
                scales[(b * h + row) * 2] = blk[0];
                scales[(b * h + row) * 2 + 1] = blk[1];
                for i in 0..QK {
                    let plane = &mut planes[(b * QK + i) * pb..(b * QK + i + 1) * pb];
                    match kind {
                        PlaneKind::Q4 => {
                            let q = if i < 16 {
                                blk[2 + i] & 0x0F
                            } else {
                                blk[2 + i - 16] >> 4
                            };
                            let (g, k) = (row / QK, row % QK);
                            let byte = &mut plane[g * 16 + k % 16];
                            *byte |= if k < 16 { q } else { q << 4 };
                        }
                        PlaneKind::Q8 => plane[row] = blk[2 + i],
                    }
                }
            }
        }
        out
    }

    #[test]
    fn repack_matches_the_definition_and_views_run_identically() {
        for ty in [GgmlType::Q4_0, GgmlType::Q8_0] {
            for (h, f) in [(32, 32), (64, 96), (96, 64), (1536, 768)] {
                let m = matrix(ty, h, f, (h * 3 + f) as u64);
                let want = repack_reference(&m);
                let owned = DownPlanes::from_down(&m).unwrap().unwrap();
                assert_eq!(owned.data.as_slice(), &want[..], "{ty:?} {h}x{f}");
                // The scalar form too (`repack` takes the SIMD one where the CPU has it).
                let kind = PlaneKind::for_down(ty, h, f).unwrap();
                let mut scalar = vec![0u8; want.len()];
                repack_scalar(kind, h, f, m.bytes(), &mut scalar).unwrap();
                assert_eq!(scalar, want, "scalar {ty:?} {h}x{f}");
                // In place over a copy of the ggml bytes, as a cache slot does it.
                let mut slot = m.bytes().to_vec();
                let src = slot.clone();
                let kind = PlaneKind::for_down(ty, h, f).unwrap();
                repack(kind, h, f, &src, &mut slot).unwrap();
                assert_eq!(slot, want);
                let view = PlanesView::new(kind, h, f, &slot).unwrap();
                let a: Vec<f32> = (0..f)
                    .map(|j| {
                        if j % 3 == 0 {
                            0.0
                        } else {
                            j as f32 * 0.01 - 0.3
                        }
                    })
                    .collect();
                let (mut o1, mut o2) = (vec![0.5f32; h], vec![0.5f32; h]);
                owned.apply(&a, &mut o1, &mut Vec::new()).unwrap();
                view.apply(&a, &mut o2, &mut Vec::new()).unwrap();
                assert!(o1.iter().zip(&o2).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
        let m = matrix(GgmlType::Q4_0, 64, 64, 1);
        let kind = PlaneKind::Q4;
        assert!(repack(kind, 64, 64, m.bytes(), &mut [0u8; 10]).is_err());
        assert!(PlanesView::new(kind, 64, 64, &[0u8; 10]).is_err());
        assert_eq!(PlaneKind::for_down(GgmlType::Q4_0, 48, 64), None);
        assert_eq!(PlaneKind::for_down(GgmlType::F32, 64, 64), None);
    }

    #[test]
    fn all_zero_activations_touch_nothing() {
        let m = matrix(GgmlType::Q4_0, 64, 64, 3);
        let p = DownPlanes::from_down(&m).unwrap().unwrap();
        let mut out = vec![1.5f32; 64];
        let n = p.apply(&[0.0; 64], &mut out, &mut Vec::new()).unwrap();
        assert_eq!(n, 0);
        assert!(out.iter().all(|&x| x == 1.5));
        assert!(p.apply(&[0.0; 63], &mut out, &mut Vec::new()).is_err());
    }

    #[test]
    fn other_types_keep_dense_layout() {
        let m = Matrix::new(
            "d",
            GgmlType::F32,
            32,
            32,
            TensorBytes::owned(vec![0; 32 * 32 * 4]),
        )
        .unwrap();
        assert!(DownPlanes::from_down(&m).unwrap().is_none());
    }
}
