//! Grouped-query attention over the KV cache, with causal and sliding-window masks.
//!
//! One token (decode) runs each query head on its own. A batch (prefill) runs tiles: the
//! [`Q_TILE`] tokens × the query heads sharing one kv head form a block of query rows, and the
//! keys visible to any of them are read in chunks of [`K_CHUNK`]. Per chunk the scores are one
//! f32 matrix product ([`kernels::sgemm_acc`], against the chunk's keys transposed), masked per
//! row and folded into a running maximum and sum (online softmax, [`kernels::exp_shift_sum`]);
//! the weighted values are a second product straight over the cached values. Every key and
//! value is read once per tile instead of once per query head and token.

use rayon::prelude::*;

use crate::error::Result;
use crate::kernels;
use crate::kernels::Sgemm;
use crate::kv_cache::{KvCache, Run};

/// Tokens per tile of a batch.
const Q_TILE: usize = 16;

/// Keys per step of a tile's online softmax.
const K_CHUNK: usize = 128;

/// Attention of `n_tokens` queries (positions `pos0..`) of one layer, whose keys and values are
/// already in `kv`. `q` is `[n_tokens × n_heads · head_dim]`, `out` the same shape.
///
/// # Errors
/// Only if a product's lengths are inconsistent (an internal error).
pub fn attend(
    kv: &KvCache,
    layer: usize,
    q: &[f32],
    pos0: usize,
    n_tokens: usize,
    heads: Heads,
    out: &mut [f32],
) -> Result<()> {
    debug_assert_eq!(q.len(), n_tokens * heads.n_heads * heads.head_dim);
    if n_tokens == 1 {
        // One token: each query head on its own (a tile of one kv head's query heads measured
        // slower here: its key transpose is not amortised over enough rows).
        attend_heads(kv, layer, q, pos0, heads, out);
        return Ok(());
    }
    // A batch: tiles of `Q_TILE` tokens (in parallel; each writes its own tokens' rows), each
    // run for every kv head and the query heads it serves.
    let Heads {
        n_heads,
        n_kv_heads,
        head_dim,
    } = heads;
    let group = n_heads / n_kv_heads;
    let width = group * head_dim;
    out.par_chunks_mut(Q_TILE * n_heads * head_dim)
        .enumerate()
        .try_for_each_init(TileBufs::default, |b, (tile, o)| {
            let t0 = tile * Q_TILE;
            let nt = o.len() / (n_heads * head_dim);
            let rows = nt * group;
            let scale = 1.0 / (head_dim as f32).sqrt();
            let mut res = std::mem::take(&mut b.o);
            res.resize(rows * head_dim, 0.0);
            for g in 0..n_kv_heads {
                b.q.clear();
                b.vis.clear();
                for t in 0..nt {
                    let at = (t0 + t) * n_heads * head_dim + g * width;
                    b.q.extend(q[at..at + width].iter().map(|&x| x * scale));
                    let v = kv.visible_range(layer, pos0 + t0 + t);
                    b.vis.extend(std::iter::repeat_n(v, group));
                }
                attend_tile(kv, layer, g, head_dim, rows, b, &mut res)?;
                for (t, src) in res.chunks_exact(width).enumerate() {
                    let at = t * n_heads * head_dim + g * width;
                    o[at..at + width].copy_from_slice(src);
                }
            }
            b.o = res;
            Ok::<(), crate::error::Error>(())
        })?;
    Ok(())
}

/// A layer's attention heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (each serves `n_heads / n_kv_heads` query heads).
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

/// [`attend`] one query head and token at a time (the decode path, and the tiles' reference).
fn attend_heads(kv: &KvCache, layer: usize, q: &[f32], pos0: usize, heads: Heads, out: &mut [f32]) {
    let (n_heads, head_dim) = (heads.n_heads, heads.head_dim);
    let group = n_heads / heads.n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    out.par_chunks_mut(head_dim).enumerate().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, (i, o)| {
            let (t, h) = (i / n_heads, i % n_heads);
            let g = h / group;
            let qh = &q[i * head_dim..(i + 1) * head_dim];
            let pos = pos0 + t;
            let (lo, hi) = kv.visible_range(layer, pos);
            attend_one(kv, layer, g, qh, lo, hi, scale, scores, o);
        },
    );
}

/// Buffers of one tile (reused across the tiles a thread runs).
#[derive(Default)]
struct TileBufs {
    /// Query rows, pre-scaled: `[rows × d]`, row `t·group + h`.
    q: Vec<f32>,
    /// A chunk's keys transposed, `[d × padded chunk]`.
    kt: Vec<f32>,
    /// A chunk's scores, then its weights: `[rows × padded chunk]`.
    s: Vec<f32>,
    /// A chunk's f16 values as f32, `[chunk × d]`.
    v: Vec<f32>,
    /// The tile's output for one kv head, `[rows × d]`.
    o: Vec<f32>,
    /// Running maximum and sum per row.
    m: Vec<f32>,
    l: Vec<f32>,
    /// Each row's visible positions.
    vis: Vec<(usize, usize)>,
}

/// One tile: `rows` pre-scaled query rows in `b.q` with their visible ranges in `b.vis`
/// (ascending), against kv head `g`; `out` gets `[rows × d]`.
fn attend_tile(
    kv: &KvCache,
    layer: usize,
    g: usize,
    d: usize,
    rows: usize,
    b: &mut TileBufs,
    out: &mut [f32],
) -> Result<()> {
    let lo = b.vis.iter().map(|v| v.0).min().unwrap_or(0);
    let hi = b.vis.iter().map(|v| v.1).max().unwrap_or(0);
    b.m.clear();
    b.m.resize(rows, f32::NEG_INFINITY);
    b.l.clear();
    b.l.resize(rows, 0.0);
    out.fill(0.0);
    let mut err = Ok(());
    kv.for_each_run(layer, g, lo, hi, |p0, n, run| {
        for c0 in (0..n).step_by(K_CHUNK) {
            let cn = K_CHUNK.min(n - c0);
            if err.is_ok() {
                err = chunk(d, rows, p0 + c0, cn, run, c0, b, out);
            }
        }
    });
    err?;
    for (o, &l) in out.chunks_exact_mut(d).zip(&b.l) {
        let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
        kernels::scale_f32(o, inv);
    }
    Ok(())
}

/// Keys `c0 .. c0 + cn` of `run` (positions from `p`) folded into the tile's running state.
#[allow(clippy::too_many_arguments)]
fn chunk(
    d: usize,
    rows: usize,
    p: usize,
    cn: usize,
    run: Run<'_>,
    c0: usize,
    b: &mut TileBufs,
    out: &mut [f32],
) -> Result<()> {
    let pad = cn.next_multiple_of(16);
    let (keys, vals) = match run {
        Run::F32(k, v) => (
            Vals::F32(&k[c0 * d..(c0 + cn) * d]),
            Vals::F32(&v[c0 * d..(c0 + cn) * d]),
        ),
        Run::F16(k, v) => (
            Vals::F16(&k[c0 * d..(c0 + cn) * d]),
            Vals::F16(&v[c0 * d..(c0 + cn) * d]),
        ),
    };
    // Keys transposed to `[d × pad]` (zero columns past `cn`), so that the scores are a
    // product with contiguous rows on both sides.
    b.kt.clear();
    b.kt.resize(d * pad, 0.0);
    // Row by row of the transpose: sequential writes; the reads (one cache line per key)
    // stay in L1 across consecutive rows.
    for (c, kt) in b.kt.chunks_exact_mut(pad).enumerate() {
        match keys {
            Vals::F32(k) => {
                for (o, &x) in kt.iter_mut().zip(k[c..].iter().step_by(d)) {
                    *o = x;
                }
            }
            Vals::F16(k) => {
                for (o, &x) in kt.iter_mut().zip(k[c..].iter().step_by(d)) {
                    *o = x.to_f32();
                }
            }
        }
    }
    b.s.clear();
    b.s.resize(rows * pad, 0.0);
    let scores = Sgemm {
        m: rows,
        n: pad,
        k: d,
        lda: d,
        ldb: pad,
        ldc: pad,
    };
    kernels::sgemm_acc(scores, &b.q[..rows * d], &b.kt, &mut b.s)?;
    // Mask and online softmax; the scores become the weights in place (0 where masked).
    let mut any = false;
    for r in 0..rows {
        let (vlo, vhi) = b.vis[r];
        // The chunk's keys this row may see.
        let j0 = vlo.saturating_sub(p).min(cn);
        let j1 = (vhi + 1).saturating_sub(p).min(cn);
        let row = &mut b.s[r * pad..(r + 1) * pad];
        if j0 >= j1 {
            row.fill(0.0);
            continue;
        }
        any = true;
        let mc = row[j0..j1].iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let m_new = b.m[r].max(mc);
        let f = (b.m[r] - m_new).exp();
        row[..j0].fill(0.0);
        row[j1..].fill(0.0);
        let sum = kernels::exp_shift_sum(&mut row[j0..j1], m_new);
        if f != 1.0 {
            kernels::scale_f32(&mut out[r * d..(r + 1) * d], f);
        }
        b.l[r] = b.l[r] * f + sum;
        b.m[r] = m_new;
    }
    if !any {
        return Ok(());
    }
    let v: &[f32] = match vals {
        Vals::F32(v) => v,
        Vals::F16(v) => {
            b.v.clear();
            b.v.extend(v.iter().map(|x| x.to_f32()));
            &b.v
        }
    };
    let weighted = Sgemm {
        m: rows,
        n: d,
        k: cn,
        lda: pad,
        ldb: d,
        ldc: d,
    };
    kernels::sgemm_acc(weighted, &b.s, v, out)
}

/// A chunk's keys or values as stored.
#[derive(Clone, Copy)]
enum Vals<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

/// One query head against positions `lo..=hi` of kv head `g`.
#[allow(clippy::too_many_arguments)]
fn attend_one(
    kv: &KvCache,
    layer: usize,
    g: usize,
    q: &[f32],
    lo: usize,
    hi: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = q.len();
    scores.clear();
    kv.for_each_run(layer, g, lo, hi, |_, n, run| match run {
        Run::F32(k, _) => {
            for kj in k[..n * d].chunks_exact(d) {
                scores.push(kernels::dot_f32(q, kj) * scale);
            }
        }
        Run::F16(k, _) => {
            let k: &[u16] = bytemuck::cast_slice(&k[..n * d]);
            for kj in k.chunks_exact(d) {
                scores.push(kernels::dot_f16_f32(kj, q) * scale);
            }
        }
    });
    super::ops::softmax(scores);
    out.fill(0.0);
    let mut idx = 0;
    kv.for_each_run(layer, g, lo, hi, |_, n, run| match run {
        Run::F32(_, v) => {
            for (j, vj) in v[..n * d].chunks_exact(d).enumerate() {
                kernels::axpy_f32(scores[idx + j], vj, out);
            }
            idx += n;
        }
        Run::F16(_, v) => {
            for j in 0..n {
                let a = scores[idx + j];
                for (o, x) in out.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                    *o += a * x.to_f32();
                }
            }
            idx += n;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::{KvCacheConfig, KvType};

    /// Tiles against one head at a time: same math, different summation order.
    const TILE_TOL: f32 = 2e-5;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Every tile shape against the per-head path: batches longer than a tile and a key chunk,
    /// a continued batch (`pos0 > 0`), a sliding window shorter than the batch, grouped heads,
    /// f32 and f16 caches.
    #[test]
    fn tiles_match_one_head_at_a_time() {
        let (n_heads, n_kv, d) = (6, 2, 64);
        let mut m = crate::kv_cache::tests::cfg(40);
        (m.n_heads, m.n_kv_heads, m.head_dim) = (n_heads, n_kv, d);
        for dtype in [KvType::F32, KvType::F16] {
            let kc = KvCacheConfig {
                max_positions: 400,
                max_batch: 160,
                dtype,
            };
            let mut kv = KvCache::new(&m, kc).unwrap();
            let mut pos0 = 0;
            for (step, n) in [150usize, 37, 1].into_iter().enumerate() {
                let kvd = n_kv * d;
                let k = values(n * kvd, 1 + step as u32);
                let v = values(n * kvd, 11 + step as u32);
                let q = values(n * n_heads * d, 21 + step as u32);
                for layer in 0..2 {
                    for t in 0..n {
                        kv.store(
                            layer,
                            pos0 + t,
                            &k[t * kvd..(t + 1) * kvd],
                            &v[t * kvd..(t + 1) * kvd],
                        )
                        .unwrap();
                    }
                }
                for layer in 0..2 {
                    let mut tiled = vec![0f32; q.len()];
                    let mut heads = vec![0f32; q.len()];
                    let h = Heads {
                        n_heads,
                        n_kv_heads: n_kv,
                        head_dim: d,
                    };
                    attend(&kv, layer, &q, pos0, n, h, &mut tiled).unwrap();
                    attend_heads(&kv, layer, &q, pos0, h, &mut heads);
                    let worst = tiled
                        .iter()
                        .zip(&heads)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        worst <= TILE_TOL,
                        "{dtype:?} layer {layer} batch {n} at {pos0}: {worst}"
                    );
                }
                kv.advance(n);
                pos0 += n;
            }
        }
    }
}
