//! Grouped-query attention over the KV cache, with causal and sliding-window masks.

use rayon::prelude::*;

use crate::kernels;
use crate::kv_cache::{KvCache, Run};

/// Attention of `n_tokens` queries (positions `pos0..`) of one layer, whose keys and values are
/// already in `kv`. `q` is `[n_tokens × n_heads · head_dim]`, `out` the same shape.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    kv: &KvCache,
    layer: usize,
    q: &[f32],
    pos0: usize,
    n_tokens: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    out: &mut [f32],
) {
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    debug_assert_eq!(q.len(), n_tokens * n_heads * head_dim);
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
