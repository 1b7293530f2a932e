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
//! - `scales`: the original per-block scales, `[F/32][H]` f16 — the 32 neurons of a block share
//!   output `h`'s scale.
//!
//! The size is identical to the original tensor, and `W[h][j] = scale[j/32][h] · (q[j][h] − z)`
//! exactly as ggml defines it. The product `out[h] = Σ_j a_j · W[h][j]` accumulates, per block of
//! neurons, `acc[h] = Σ_{j active} a_j · (q[j][h] − z)` and then adds `scale · acc`.

use crate::error::{Error, Result};
use crate::model::weights::Matrix;
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

/// An expert's down projection, neuron-major.
#[derive(Clone, Debug)]
pub struct DownPlanes {
    kind: PlaneKind,
    /// Neurons (F).
    f: usize,
    /// Outputs (H).
    h: usize,
    /// `[F/32][H]` f16 bits.
    scales: Vec<u16>,
    /// `[F][plane_bytes]`.
    planes: Vec<u8>,
}

impl DownPlanes {
    /// Repacks a ggml down matrix (`rows = H`, `cols = F`) of type Q4_0 or Q8_0. Other types, or H
    /// not a multiple of 32, give `Ok(None)`: the caller keeps the dense layout.
    pub fn from_down(m: &Matrix) -> Result<Option<DownPlanes>> {
        let kind = match m.ty {
            GgmlType::Q4_0 => PlaneKind::Q4,
            GgmlType::Q8_0 => PlaneKind::Q8,
            _ => return Ok(None),
        };
        let (h, f) = (m.rows, m.cols);
        if !h.is_multiple_of(QK) || !f.is_multiple_of(QK) || h == 0 {
            return Ok(None);
        }
        let nb = f / QK;
        let block_bytes = m.ty.block_bytes();
        if m.row_bytes() != nb * block_bytes {
            return Err(Error::BadLength {
                ty: m.ty,
                what: format!(
                    "tensor '{}': row bytes {} for {f} columns",
                    m.name,
                    m.row_bytes()
                ),
            });
        }
        let pb = plane_bytes(kind, h);
        let mut scales = vec![0u16; nb * h];
        let mut planes = vec![0u8; f * pb];
        for row in 0..h {
            let r = m.row(row);
            for b in 0..nb {
                let blk = &r[b * block_bytes..(b + 1) * block_bytes];
                scales[b * h + row] = u16::from_le_bytes([blk[0], blk[1]]);
                let qs = &blk[2..];
                for i in 0..QK {
                    let j = b * QK + i;
                    let plane = &mut planes[j * pb..(j + 1) * pb];
                    match kind {
                        PlaneKind::Q4 => {
                            let q = if i < 16 {
                                qs[i] & 0x0F
                            } else {
                                qs[i - 16] >> 4
                            };
                            let (g, k) = (row / QK, row % QK);
                            let byte = &mut plane[g * 16 + (k % 16)];
                            if k < 16 {
                                *byte |= q;
                            } else {
                                *byte |= q << 4;
                            }
                        }
                        PlaneKind::Q8 => plane[row] = qs[i],
                    }
                }
            }
        }
        Ok(Some(DownPlanes {
            kind,
            f,
            h,
            scales,
            planes,
        }))
    }

    /// Bytes held (equal to the original tensor's).
    pub fn bytes(&self) -> usize {
        self.scales.len() * 2 + self.planes.len()
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
        self.check(a, out)?;
        acc.resize(self.h, 0.0);
        Ok(apply_best(self.view(), a, out, &mut acc[..self.h]))
    }

    /// Scalar reference of [`DownPlanes::apply`].
    pub fn apply_scalar(&self, a: &[f32], out: &mut [f32], acc: &mut Vec<f32>) -> Result<usize> {
        self.check(a, out)?;
        acc.resize(self.h, 0.0);
        Ok(apply_scalar(self.view(), a, out, &mut acc[..self.h]))
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

    pub(crate) fn view(&self) -> PlanesView<'_> {
        PlanesView {
            kind: self.kind,
            f: self.f,
            h: self.h,
            scales: &self.scales,
            planes: &self.planes,
        }
    }
}

/// Borrowed planes, as the kernels see them.
#[derive(Clone, Copy)]
pub(crate) struct PlanesView<'a> {
    pub kind: PlaneKind,
    pub f: usize,
    pub h: usize,
    pub scales: &'a [u16],
    pub planes: &'a [u8],
}

fn plane_bytes(kind: PlaneKind, h: usize) -> usize {
    match kind {
        PlaneKind::Q4 => h / 2,
        PlaneKind::Q8 => h,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86;

/// The fastest kernel this CPU runs (AVX2 + FMA + F16C when present; scalar otherwise).
fn apply_best(p: PlanesView<'_>, a: &[f32], out: &mut [f32], acc: &mut [f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(n) = x86::apply(p, a, out, acc) {
        return n;
    }
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
            let sc = &p.scales[b * p.h..(b + 1) * p.h];
            for ((o, &x), &s) in out.iter_mut().zip(acc.iter()).zip(sc) {
                *o += half::f16::from_bits(s).to_f32() * x;
            }
        }
    }
    n_active
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::TensorBytes;

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
            for (h, f) in [(32, 32), (64, 96), (96, 64)] {
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
                for simd in [false, true] {
                    let mut out = vec![0f32; h];
                    let n = if simd {
                        p.apply(&a, &mut out, &mut acc).unwrap()
                    } else {
                        p.apply_scalar(&a, &mut out, &mut acc).unwrap()
                    };
                    assert_eq!(n, a.iter().filter(|x| **x != 0.0).count());
                    let scale = want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
                    for (o, w) in out.iter().zip(&want) {
                        assert!(
                            (o - w).abs() <= TOL * scale,
                            "{ty:?} {h}x{f} simd={simd}: {o} vs {w}"
                        );
                    }
                }
            }
        }
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
