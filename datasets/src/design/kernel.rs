//! The recency kernel: constant queries and keys whose RoPE rotation alone makes a head attend to
//! recent positions with geometrically decaying weight, `α_Δ ∝ λ^Δ` (an exponential moving
//! average of the values over the last few dozen tokens).
//!
//! With `q` and `k` constant and non-zero only in the first element of RoPE pair `i`, the score
//! between positions `p` and `j` is `Σ_i W_i cos(θ_i (p − j))`, `W_i = q_i k_i / √d`. A tent
//! `−β · min(Δ, D)` has a non-negative cosine spectrum, so a non-negative least-squares fit of
//! `W` over RoPE's geometric frequency ladder approximates it well; `β = ln(1/λ)` and the drop
//! `β·D` is large enough that positions beyond the tent's foot get negligible weight even in
//! long contexts.

/// Depth of the tent in nats: positions beyond its foot get at most `e^-DROP` of the weight of
/// the current one.
const DROP_NATS: f64 = 24.0;
/// Sweeps of the coordinate-descent NNLS solver.
/// Weight of the fit beyond twice the tent's foot, relative to the near region.
const FAR_WEIGHT: f64 = 1.0;
/// Sweeps of the NNLS solver.
const NNLS_SWEEPS: usize = 4000;

/// A designed recency kernel for one head geometry.
#[derive(Clone, Debug)]
pub struct RecencyKernel {
    /// RoPE angular frequency of each pair, `θ_i = base^(−2i/d)`.
    pub freqs: Vec<f64>,
    /// Score weight of each pair (`≥ 0`).
    pub pair_weights: Vec<f64>,
    /// `score(Δ)` for `Δ = 0..=horizon` (up to an additive constant).
    pub score: Vec<f64>,
    /// Attention profile far from the sequence start, `α_Δ` for `Δ = 0..=horizon`.
    pub alpha: Vec<f64>,
    /// Lag-1 correlation of the kernel's output for i.i.d. values: `Σ α_Δ α_{Δ+1} / Σ α_Δ²`.
    pub lag1: f64,
    /// Variance of the output for i.i.d. unit-variance values: `Σ α_Δ²`.
    pub var: f64,
}

impl RecencyKernel {
    /// Designs a kernel for heads of `head_dim` with RoPE base `theta`, decay `lambda` per
    /// position, fitted over `horizon` positions.
    pub fn design(head_dim: usize, theta: f64, lambda: f64, horizon: usize) -> RecencyKernel {
        Self::design_with(head_dim, theta, lambda, horizon, DROP_NATS, FAR_WEIGHT)
    }

    /// [`RecencyKernel::design`] with an explicit tent depth and weight of the far region.
    pub fn design_with(
        head_dim: usize,
        theta: f64,
        lambda: f64,
        horizon: usize,
        drop_nats: f64,
        far_weight: f64,
    ) -> RecencyKernel {
        let pairs = head_dim / 2;
        let freqs: Vec<f64> = (0..pairs)
            .map(|i| theta.powf(-2.0 * i as f64 / head_dim as f64))
            .collect();
        let beta = -lambda.ln();
        let foot = (drop_nats / beta).ceil();
        let n = horizon + 1;
        // Columns: cos(θ_i Δ) for each pair, then the intercept.
        let nv = pairs + 1;
        let col = |i: usize, d: f64| if i < pairs { (freqs[i] * d).cos() } else { 1.0 };
        let mut g = vec![0.0; nv * nv];
        let mut b = vec![0.0; nv];
        for dd in 0..n {
            let d = dd as f64;
            let target = -beta * d.min(foot);
            let w = if d <= 2.0 * foot {
                1.0
            } else {
                far_weight * 2.0 * foot / d
            };
            let row: Vec<f64> = (0..nv).map(|i| col(i, d)).collect();
            for i in 0..nv {
                b[i] += w * row[i] * target;
                for j in 0..nv {
                    g[i * nv + j] += w * row[i] * row[j];
                }
            }
        }
        let x = nnls_cd(&g, &b, nv, pairs);
        let mut pair_weights = x[..pairs].to_vec();
        // Shift the score so that its peak is 0: the lowest-frequency pair is constant over any
        // practical context (θ·Δ < 0.01), so a negative weight there is an offset. Scores near
        // the peak are then near 0, and per-token scale changes of q and k (the RMS of the
        // stream varies from token to token) barely move the weights of recent positions.
        let peak: f64 = pair_weights.iter().sum();
        if let Some(w) = pair_weights.last_mut() {
            *w -= peak;
        }
        let score: Vec<f64> = (0..n)
            .map(|dd| {
                let d = dd as f64;
                (0..pairs)
                    .map(|i| pair_weights[i] * (freqs[i] * d).cos())
                    .sum()
            })
            .collect();
        let alpha = softmax(&score);
        let var = alpha.iter().map(|a| a * a).sum::<f64>();
        let cov = alpha.windows(2).map(|w| w[0] * w[1]).sum::<f64>();
        RecencyKernel {
            freqs,
            pair_weights,
            score,
            alpha,
            lag1: cov / var,
            var,
        }
    }

    /// The attention profile of the token at position `t` (it sees `Δ = 0..=t`).
    pub fn alpha_at(&self, t: usize) -> Vec<f64> {
        let n = (t + 1).min(self.score.len());
        softmax(&self.score[..n])
    }

    /// Constant query and key vectors (one head, RoPE's NeoX layout: pair `i` is elements `i`
    /// and `i + d/2`) whose rotated dot product, scaled by `1/√d`, is the kernel's score.
    pub fn query_key(&self, head_dim: usize) -> (Vec<f64>, Vec<f64>) {
        let mut q = vec![0.0; head_dim];
        let mut k = vec![0.0; head_dim];
        let s = (head_dim as f64).sqrt();
        for (i, &w) in self.pair_weights.iter().enumerate() {
            let a = (w.abs() * s).sqrt();
            q[i] = a;
            k[i] = if w < 0.0 { -a } else { a };
        }
        (q, k)
    }
}

fn softmax(s: &[f64]) -> Vec<f64> {
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Minimises `½ xᵀGx − bᵀx` with `x_i ≥ 0` for `i < n_constrained` by cyclic coordinate descent.
fn nnls_cd(g: &[f64], b: &[f64], n: usize, n_constrained: usize) -> Vec<f64> {
    let mut x = vec![0.0; n];
    let mut grad: Vec<f64> = b.iter().map(|v| -v).collect(); // G x − b at x = 0
    for _ in 0..NNLS_SWEEPS {
        for i in 0..n {
            let gii = g[i * n + i];
            if gii <= 0.0 {
                continue;
            }
            let mut xi = x[i] - grad[i] / gii;
            if i < n_constrained && xi < 0.0 {
                xi = 0.0;
            }
            let dx = xi - x[i];
            if dx != 0.0 {
                for j in 0..n {
                    grad[j] += g[j * n + i] * dx;
                }
                x[i] = xi;
            }
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative drift of the output variance between a 32-token and a 4096-token context.
    const VAR_DRIFT_TOL: f64 = 0.05;

    #[test]
    fn kernel_is_local_correlated_and_stationary() {
        let k = RecencyKernel::design(128, 1.5e6, 0.7, 4096);
        assert!(k.pair_weights[..63].iter().all(|&w| w >= 0.0));
        assert!(k.lag1 > 0.85 && k.lag1 < 0.97, "lag1 {}", k.lag1);
        let var_at = |t: usize| k.alpha_at(t).iter().map(|a| a * a).sum::<f64>();
        let (v32, v4k) = (var_at(32), var_at(4096));
        assert!((v32 / v4k - 1.0).abs() < VAR_DRIFT_TOL, "{v32} vs {v4k}");
        // Monotone decay over the first positions: recency, not a revival.
        assert!(k.alpha.windows(2).take(20).all(|w| w[0] >= w[1]));
        // The query/key pair reproduces the score differences.
        let (q, kk) = k.query_key(128);
        assert!(k.score[0].abs() < 1e-3, "peak shifted to 0: {}", k.score[0]);
        let s = |d: f64| -> f64 {
            (0..64)
                .map(|i| q[i] * kk[i] * (k.freqs[i] * d).cos())
                .sum::<f64>()
                / (128f64).sqrt()
        };
        assert!(((s(0.0) - s(5.0)) - (k.score[0] - k.score[5])).abs() < 1e-9);
    }
}
