//! Small element-wise operations of the forward pass: RMSNorm, NeoX RoPE, softmax, routing.

use super::config::Gating;

/// `out_i = g_i · x_i / sqrt(mean(x²) + eps)`, mean accumulated in f64 for stability, applied
/// in f32 as the reference does.
pub fn rms_norm(x: &[f32], g: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let mean = (ss / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &gi) in out.iter_mut().zip(x).zip(g) {
        *o = gi * (v * scale);
    }
}

/// Precomputed RoPE inverse frequencies, built as the reference does in f32:
/// `inv_freq_i = 1 / base^(2i / d)`.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Tables for heads of `head_dim` with base `theta`.
    pub fn new(head_dim: usize, theta: f32) -> Rope {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let e = (2 * i) as f32 / head_dim as f32;
                1.0f32 / theta.powf(e)
            })
            .collect();
        Rope { inv_freq }
    }

    /// Rotates every head of `x` (`n_heads · head_dim`) in place for absolute position `pos`:
    /// element i pairs with i + d/2 (NeoX / rotate-half).
    pub fn apply(
        &self,
        x: &mut [f32],
        head_dim: usize,
        pos: usize,
        cos: &mut [f32],
        sin: &mut [f32],
    ) {
        let half = head_dim / 2;
        for i in 0..half {
            // φ is the f32 product as in the reference; cos/sin evaluated in f64 and rounded.
            let phi = (pos as f32) * self.inv_freq[i];
            cos[i] = (phi as f64).cos() as f32;
            sin[i] = (phi as f64).sin() as f32;
        }
        for head in x.chunks_exact_mut(head_dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (u, w) = (a[i], b[i]);
                a[i] = u * cos[i] - w * sin[i];
                b[i] = w * cos[i] + u * sin[i];
            }
        }
    }
}

/// In-place softmax over `x` (max-subtracted, f32).
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Chooses the `k` largest logits (ties to the lower index) and their mixing weights; writes ids
/// in descending logit order.
pub fn route(logits: &[f32], k: usize, gating: Gating, ids: &mut [u32], weights: &mut [f32]) {
    debug_assert!(k <= logits.len() && ids.len() == k && weights.len() == k);
    for slot in 0..k {
        let mut best: Option<usize> = None;
        for (i, &v) in logits.iter().enumerate() {
            if ids[..slot].contains(&(i as u32)) {
                continue;
            }
            // Strictly greater replaces, so ties keep the lower index; NaN never wins.
            let better = match best {
                None => true,
                Some(b) => v > logits[b] || (logits[b].is_nan() && !v.is_nan()),
            };
            if better {
                best = Some(i);
            }
        }
        ids[slot] = best.unwrap_or(0) as u32;
    }
    match gating {
        Gating::Sigmoid => {
            let mut sum = 0f32;
            for (w, &id) in weights.iter_mut().zip(ids.iter()) {
                *w = 1.0 / (1.0 + (-logits[id as usize]).exp());
                sum += *w;
            }
            for w in weights.iter_mut() {
                *w /= sum;
            }
        }
        Gating::Softmax => {
            let m = logits[ids[0] as usize];
            let mut sum = 0f32;
            for (w, &id) in weights.iter_mut().zip(ids.iter()) {
                *w = (logits[id as usize] - m).exp();
                sum += *w;
            }
            for w in weights.iter_mut() {
                *w /= sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_picks_top_k_in_order_with_low_index_ties() {
        let logits = [0.5, 2.0, -1.0, 2.0, 1.0];
        let mut ids = [0u32; 3];
        let mut w = [0f32; 3];
        route(&logits, 3, Gating::Softmax, &mut ids, &mut w);
        assert_eq!(ids, [1, 3, 4]);
        let e1 = (1.0f32 - 2.0).exp();
        let s = 1.0 + 1.0 + e1;
        assert!((w[0] - 1.0 / s).abs() < 1e-6 && (w[2] - e1 / s).abs() < 1e-6);
        route(&logits, 2, Gating::Sigmoid, &mut ids[..2], &mut w[..2]);
        assert_eq!(&ids[..2], &[1, 3]);
        assert!((w[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn route_handles_more_than_128_experts() {
        let logits: Vec<f32> = (0..300).map(|i| ((i * 37) % 301) as f32).collect();
        let mut ids = [0u32; 2];
        let mut w = [0f32; 2];
        route(&logits, 2, Gating::Sigmoid, &mut ids, &mut w);
        let mut sorted: Vec<usize> = (0..300).collect();
        sorted.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        assert_eq!(ids, [sorted[0] as u32, sorted[1] as u32]);
    }

    #[test]
    fn rope_rotates_halves_not_pairs() {
        let rope = Rope::new(4, 10000.0);
        let mut x = [1.0, 0.0, 0.0, 0.0];
        let (mut c, mut s) = ([0f32; 2], [0f32; 2]);
        rope.apply(&mut x, 4, 1, &mut c, &mut s);
        // Element 0 pairs with element 2 (angle 1 rad at i = 0).
        assert!((x[0] - 1f32.cos()).abs() < 1e-6);
        assert!((x[2] - 1f32.sin()).abs() < 1e-6);
        assert_eq!(x[1], 0.0);
    }

    #[test]
    fn rms_norm_matches_definition() {
        let x = [1.0, -2.0, 3.0, 0.0];
        let g = [1.0, 2.0, 0.5, 1.0];
        let mut o = [0f32; 4];
        rms_norm(&x, &g, 0.0, &mut o);
        let r = (14.0f32 / 4.0).sqrt();
        assert!((o[1] - (-4.0 / r)).abs() < 1e-6);
    }
}
