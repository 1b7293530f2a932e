//! Interleaved weight layouts built at load time: eight rows' blocks side by side.
//!
//! In row-major Q4_0, a SIMD register holds 32 consecutive weights of one row, so every block
//! needs its own integer reduction, conversion and scale per row. In the x8 layout one 32-byte
//! chunk holds four consecutive weights of each of eight rows; an integer dot instruction
//! (`vpdpbusd`, or `pmaddubsw` on AVX2) against four broadcast activation bytes yields eight row
//! partial sums at once (lanes = rows), and one conversion and one FMA per block serve eight
//! rows. This is the layout llama.cpp calls `Q4_0_8x8`-style repacking; ours is defined here.
//!
//! ## [`BlockQ4_0x8`]
//! Block `b` of rows `8g..8g+8` of a Q4_0 matrix: `d[r]` is row `8g+r`'s scale, and byte `j`
//! (0..16) of row `r`'s `qs` sits at `qs[32·(j/4) + 4·r + j%4]`. Byte `j` of a Q4_0 block holds
//! weight `j` in its low nibble and weight `j+16` in its high nibble, so the low nibbles of chunk
//! `c` (`qs[32c..32c+32]`) are weights `4c..4c+4` of the eight rows and its high nibbles weights
//! `16+4c..16+4c+4`. A matrix of `8·G` rows and `nb` blocks per row is `G·nb` of these, group
//! major: group `g`'s blocks are contiguous (`[g·nb + b]`), so a matrix–vector product streams
//! through memory once, front to back.
//!
//! The layout is lossless ([`unpack_q4_0x8_row`] recovers every original block).

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::quant::{BlockQ4_0, BlockQ8_0};

/// Rows interleaved per group.
pub const X8_ROWS: usize = 8;

/// One block of eight interleaved Q4_0 rows (see the [module docs](self)).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0x8 {
    /// The eight rows' scales (f16 bits).
    pub d: [u16; 8],
    /// The eight rows' nibbles, interleaved four bytes at a time.
    pub qs: [u8; 128],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0x8>() == 8 * 18);

/// Index in [`BlockQ4_0x8::qs`] of byte `j` of row `r`.
#[inline]
pub fn x8_index(r: usize, j: usize) -> usize {
    32 * (j / 4) + 4 * r + j % 4
}

/// Repacks a row-major Q4_0 matrix (`rows.len() / nb` rows of `nb` blocks, a multiple of 8) into
/// the x8 layout in `out` (`rows.len() / 8` blocks).
///
/// # Errors
/// [`Error::InvalidInput`] when the row count is not a multiple of 8 or `out` has the wrong
/// length.
pub fn repack_q4_0x8(rows: &[BlockQ4_0], nb: usize, out: &mut [BlockQ4_0x8]) -> Result<()> {
    check_x8(rows, nb, out)?;
    repack_q4_0x8_with(rows, nb, out, true);
    Ok(())
}

/// The scalar reference of [`repack_q4_0x8`] (benchmarks compare the two).
///
/// # Errors
/// As [`repack_q4_0x8`].
pub fn repack_q4_0x8_scalar(rows: &[BlockQ4_0], nb: usize, out: &mut [BlockQ4_0x8]) -> Result<()> {
    check_x8(rows, nb, out)?;
    repack_q4_0x8_with(rows, nb, out, false);
    Ok(())
}

fn check_x8(rows: &[BlockQ4_0], nb: usize, out: &[BlockQ4_0x8]) -> Result<()> {
    if nb == 0 || !rows.len().is_multiple_of(nb * X8_ROWS) || out.len() * X8_ROWS != rows.len() {
        return Err(Error::InvalidInput(format!(
            "x8 repack of {} Q4_0 blocks ({nb} per row) into {} groups: rows must come in eights",
            rows.len(),
            out.len()
        )));
    }
    Ok(())
}

/// [`repack_q4_0x8`] (arguments checked), with AVX2 where the kernels' level has it (`simd`) or
/// the scalar reference.
fn repack_q4_0x8_with(rows: &[BlockQ4_0], nb: usize, out: &mut [BlockQ4_0x8], simd: bool) {
    for (g, dst) in out.chunks_exact_mut(nb).enumerate() {
        let src = &rows[g * X8_ROWS * nb..(g + 1) * X8_ROWS * nb];
        #[cfg(target_arch = "x86_64")]
        if simd && super::x86::repack_q4_0x8_group(src, nb, dst) {
            continue;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        for (b, o) in dst.iter_mut().enumerate() {
            let mut d = [0u16; 8];
            let mut qs = [0u8; 128];
            for (r, dr) in d.iter_mut().enumerate() {
                let blk = src[r * nb + b];
                *dr = blk.d;
                for (j, &q) in blk.qs.iter().enumerate() {
                    qs[x8_index(r, j)] = q;
                }
            }
            *o = BlockQ4_0x8 { d, qs };
        }
    }
}

/// Row `r` (of the whole matrix) of an x8-packed matrix with `nb` blocks per row, as row-major
/// Q4_0 blocks in `out` (`nb` of them).
///
/// # Panics
/// If `r` is out of range or `out.len() != nb`.
pub fn unpack_q4_0x8_row(p: &[BlockQ4_0x8], nb: usize, r: usize, out: &mut [BlockQ4_0]) {
    assert_eq!(out.len(), nb, "unpack_q4_0x8_row: output length");
    let (g, lane) = (r / X8_ROWS, r % X8_ROWS);
    for (b, o) in out.iter_mut().enumerate() {
        let blk = p[g * nb + b];
        let mut qs = [0u8; 16];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = blk.qs[x8_index(lane, j)];
        }
        let d = blk.d;
        *o = BlockQ4_0 { d: d[lane], qs };
    }
}

/// A Q8_0 activation with two per-block facts the x8 kernels use, computed once per activation
/// rather than once per call: each block's scale as f32 and `−8·Σq` (the exact correction for
/// the unsigned Q4_0 nibbles, `Σ (q−8)·a = Σ q·a − 8·Σ a`). The three slices have one length.
#[derive(Clone, Copy, Debug)]
pub struct Q8Blocks<'a> {
    blocks: &'a [BlockQ8_0],
    neg8: &'a [i32],
    scales: &'a [f32],
}

impl<'a> Q8Blocks<'a> {
    /// The view, or `None` when the lengths differ.
    pub fn new(blocks: &'a [BlockQ8_0], neg8: &'a [i32], scales: &'a [f32]) -> Option<Self> {
        (neg8.len() == blocks.len() && scales.len() == blocks.len()).then_some(Q8Blocks {
            blocks,
            neg8,
            scales,
        })
    }

    /// The blocks.
    pub fn blocks(&self) -> &'a [BlockQ8_0] {
        self.blocks
    }

    /// `−8·Σq` per block.
    pub fn neg8(&self) -> &'a [i32] {
        self.neg8
    }

    /// Scale per block, as f32.
    pub fn scales(&self) -> &'a [f32] {
        self.scales
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// Owned per-block facts of a Q8_0 activation (see [`Q8Blocks`]).
#[derive(Clone, Debug, Default)]
pub struct Q8Facts {
    neg8: Vec<i32>,
    scales: Vec<f32>,
}

impl Q8Facts {
    /// The facts of `a`.
    pub fn of(a: &[BlockQ8_0]) -> Self {
        let mut f = Q8Facts::default();
        f.compute(a);
        f
    }

    /// Recomputes the facts for `a` (no allocation once warm).
    pub fn compute(&mut self, a: &[BlockQ8_0]) {
        self.neg8.clear();
        self.neg8.extend(
            a.iter()
                .map(|y| -8 * y.qs.iter().map(|&q| q as i32).sum::<i32>()),
        );
        self.scales.clear();
        self.scales.extend(a.iter().map(BlockQ8_0::scale));
    }

    /// `a` with these facts, or `None` if they were computed for a different length.
    pub fn view<'a>(&'a self, a: &'a [BlockQ8_0]) -> Option<Q8Blocks<'a>> {
        Q8Blocks::new(a, &self.neg8, &self.scales)
    }
}

/// Scalar reference: `out[8g + r] = Σ_b d_w·d_a·Σ_j (q−8)·a` over an x8-packed Q4_0 matrix
/// (`out.len() / 8` groups of `a.len()` blocks).
pub fn gemv_q4_0x8_q8_0(w: &[BlockQ4_0x8], a: Q8Blocks<'_>, out: &mut [f32]) {
    let nb = a.len();
    let a = a.blocks();
    for (g, o) in out.chunks_exact_mut(X8_ROWS).enumerate() {
        let mut acc = [0f32; 8];
        for (blk, y) in w[g * nb..(g + 1) * nb].iter().zip(a) {
            let d = blk.d;
            for (r, s) in acc.iter_mut().enumerate() {
                let mut sumi = 0i32;
                for j in 0..16 {
                    let q = blk.qs[x8_index(r, j)];
                    sumi += ((q & 0x0F) as i32 - 8) * y.qs[j] as i32;
                    sumi += ((q >> 4) as i32 - 8) * y.qs[j + 16] as i32;
                }
                *s += sumi as f32 * (crate::quant::f16_to_f32(d[r]) * y.scale());
            }
        }
        o.copy_from_slice(&acc);
    }
}

/// Scalar reference of the two-level product: `row·hi + row·lo` per row.
pub fn gemv2_q4_0x8_q8_0(w: &[BlockQ4_0x8], hi: Q8Blocks<'_>, lo: Q8Blocks<'_>, out: &mut [f32]) {
    gemv_q4_0x8_q8_0(w, hi, out);
    let mut l = [0f32; X8_ROWS];
    let nb = hi.len();
    for (g, o) in out.chunks_exact_mut(X8_ROWS).enumerate() {
        gemv_q4_0x8_q8_0(&w[g * nb..(g + 1) * nb], lo, &mut l);
        for (x, y) in o.iter_mut().zip(l) {
            *x += y;
        }
    }
}

/// Tokens per pass over the weights in the x8 multi-token kernels (`gemm2_q4_0x8_q8_0`): each
/// block's nibbles, unpacked once, serve this many tokens' integer dots.
pub const GEMM_TOKENS: usize = 4;

/// A multi-token two-level x8 kernel: `(w, acts, out)` (see `Kernels::gemm2_q4_0x8_q8_0`).
pub type Gemm2 = fn(&[BlockQ4_0x8], &[(Q8Blocks<'_>, Q8Blocks<'_>)], &mut [f32]);

/// Scalar reference of the multi-token product: `out[t·rows + r] = row_r · (hi_t + lo_t)` for
/// `acts[t] = (hi_t, lo_t)` and `rows = out.len() / acts.len()`, token by token.
pub fn gemm2_q4_0x8_q8_0(
    w: &[BlockQ4_0x8],
    acts: &[(Q8Blocks<'_>, Q8Blocks<'_>)],
    out: &mut [f32],
) {
    let rows = out.len() / acts.len().max(1);
    if rows == 0 {
        return;
    }
    for (&(hi, lo), o) in acts.iter().zip(out.chunks_exact_mut(rows)) {
        gemv2_q4_0x8_q8_0(w, hi, lo, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize, seed: u64) -> Vec<BlockQ4_0> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                let mut qs = [0u8; 16];
                for q in &mut qs {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    *q = s as u8;
                }
                BlockQ4_0 {
                    d: 0x3000 + (s >> 40) as u16 % 0x800,
                    qs,
                }
            })
            .collect()
    }

    #[test]
    fn repack_round_trips_every_row() {
        for nb in [1, 3, 48] {
            let rows = blocks(16 * nb, nb as u64);
            let mut p = vec![BlockQ4_0x8::zeroed(); 2 * nb];
            repack_q4_0x8(&rows, nb, &mut p).unwrap();
            let mut back = vec![BlockQ4_0::zeroed(); nb];
            for r in 0..16 {
                unpack_q4_0x8_row(&p, nb, r, &mut back);
                assert_eq!(back, rows[r * nb..(r + 1) * nb], "nb {nb} row {r}");
            }
        }
    }

    #[test]
    fn simd_repack_equals_the_scalar_one() {
        for nb in [1, 2, 5, 48] {
            let rows = blocks(24 * nb, 7 + nb as u64);
            let mut a = vec![BlockQ4_0x8::zeroed(); 3 * nb];
            let mut b = vec![BlockQ4_0x8::zeroed(); 3 * nb];
            repack_q4_0x8(&rows, nb, &mut a).unwrap();
            repack_q4_0x8_scalar(&rows, nb, &mut b).unwrap();
            assert_eq!(a, b, "nb {nb}");
        }
    }

    #[test]
    fn repack_rejects_rows_not_in_eights() {
        let rows = blocks(12, 1);
        let mut p = vec![BlockQ4_0x8::zeroed(); 2];
        assert!(repack_q4_0x8(&rows, 2, &mut p).is_err());
        assert!(repack_q4_0x8(&rows[..8], 0, &mut p).is_err());
    }

    #[test]
    fn packed_reference_equals_row_major_reference() {
        let nb = 5;
        let rows = blocks(8 * 3 * nb, 9);
        let mut p = vec![BlockQ4_0x8::zeroed(); 3 * nb];
        repack_q4_0x8(&rows, nb, &mut p).unwrap();
        let a: Vec<BlockQ8_0> = (0..nb)
            .map(|b| BlockQ8_0 {
                d: 0x2c00 + b as u16,
                qs: std::array::from_fn(|i| (i as i32 * 7 - 100 + b as i32) as i8),
            })
            .collect();
        let mut got = vec![0f32; 24];
        let facts = Q8Facts::of(&a);
        gemv_q4_0x8_q8_0(&p, facts.view(&a).unwrap(), &mut got);
        for (r, g) in got.iter().enumerate() {
            let want = super::super::scalar::vec_dot_q4_0_q8_0(&rows[r * nb..(r + 1) * nb], &a);
            // Same integer sums and the same f32 operations in the same order.
            assert_eq!(*g, want, "row {r}");
        }
    }
}
