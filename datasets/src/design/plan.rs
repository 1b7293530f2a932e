//! The plan: every small quantity of the design, computed once before any tensor is written
//! (directions, per-layer scales, router matrices). Tensor rows are then pure functions of the
//! plan, the seed and the row index (see [`crate::synth`]).
//!
//! ## Residual-stream layout
//! Three 32-wide blocks of the hidden dimensions (positions drawn from the seed) are reserved:
//! - `u`, one coordinate of its own block: a constant `m` in every token's embedding. Nothing
//!   else writes it, so the router input has `x_u = m` at every layer (like the "massive
//!   activations" of trained transformers).
//! - `T` (32 coordinates): the token's features `σ_T · z_t`, `z_t` i.i.d. per token. Nothing else
//!   writes them.
//! - `S` (32 coordinates): the context. Every RoPE layer's attention adds `s · ζ_t`, where
//!   `ζ_t = Σ_Δ α_Δ z_{t−Δ}` is the [`RecencyKernel`]'s average of recent tokens' features.
//!
//! All other coordinates are free: embedding noise, expert outputs and NoPE-layer attention go
//! there, and their weights have zero rows for `u`, `T` and `S`.
//!
//! ## Router, gates, size
//! Router row `e` of layer `l` reads `u` (its popularity offset), `T` (token noise) and `S`
//! (context noise) in exactly the proportions the Monte Carlo calibration used, rotated by a
//! per-layer orthogonal matrix so layers choose independently, with a per-layer permutation of
//! popularity ranks. Gate rows carry `−τ_j · c_l` on `u`: after RMSNorm `y_u = m / rms`, which the
//! plan predicts per layer from the energies it puts into the stream. Expert outputs are sized
//! so that the stream's RMS grows by a bounded, known amount over the layers.

use super::Targets;
use super::calibrate::{
    GateCalibration, Gating, RouterCalibration, RouterTarget, calibrate_gates, calibrate_router,
};
use super::kernel::RecencyKernel;
use crate::rng::{Rng, key};
use crate::spec::ModelSpec;

/// Width of the token-feature and context blocks.
pub const FEATURE_DIM: usize = 32;
/// Quantisation block width the reserved blocks align to.
pub const BLOCK: usize = 32;
/// Smallest hidden size: the three reserved blocks plus one free block.
pub const MIN_HIDDEN: usize = 4 * BLOCK;

/// Share of the embedding's energy in the constant direction.
const ENERGY_U: f64 = 0.25;
/// Share of the embedding's energy in the token features.
const ENERGY_T: f64 = 0.25;
/// Share of the embedding's energy in free-coordinate noise.
const ENERGY_NOISE: f64 = 0.5;
/// Context energy (steady state, all layers together) relative to the embedding's.
const ENERGY_CONTEXT: f64 = 0.1;
/// Expert-output energy, all layers together, relative to the embedding's.
const ENERGY_MOE: f64 = 2.0;
/// Energy bound of one NoPE layer's attention output, relative to the embedding's.
const ENERGY_NOPE_ATTN: f64 = 0.01;
/// Decay per position of the recency heads.
const RECENCY_LAMBDA: f64 = 0.7;
/// Positions over which the recency kernel is fitted.
const KERNEL_HORIZON: usize = 4096;
/// Standard deviation of logits from the LM head.
const LOGIT_STD: f64 = 3.0;

/// The complete design of one model.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The model's shape.
    pub spec: ModelSpec,
    /// The behaviour targets.
    pub targets: Targets,
    /// Seed of every random choice.
    pub seed: u64,
    /// The constant coordinate `u`.
    pub coord_u: usize,
    /// Token-feature coordinates.
    pub coords_t: Vec<usize>,
    /// Context coordinates.
    pub coords_s: Vec<usize>,
    /// Reserved coordinates (`u`, `T`, `S`).
    pub reserved: Vec<bool>,
    /// Constant `m` on `u`.
    pub m: f64,
    /// Standard deviation of a token-feature coordinate.
    pub sigma_t: f64,
    /// Standard deviation of a free embedding coordinate.
    pub sigma_noise: f64,
    /// The recency kernel of RoPE layers.
    pub kernel: RecencyKernel,
    /// Constant query of a recency head (one head; all heads share it).
    pub q: Vec<f64>,
    /// Constant key of a recency head.
    pub k: Vec<f64>,
    /// Router calibration.
    pub router: RouterCalibration,
    /// Gate calibration.
    pub gates: GateCalibration,
    /// Per-layer quantities.
    pub layers: Vec<LayerPlan>,
    /// Standard deviation of gate and up weights.
    pub sigma_ffn_in: f64,
    /// `|output_norm|` gain (tied: random signs) or the LM head's weight standard deviation.
    pub head_scale: f64,
}

/// Per-layer quantities of the plan.
#[derive(Clone, Debug)]
pub struct LayerPlan {
    /// Whether this layer's attention is made of recency heads writing the context.
    pub recency: bool,
    /// Whether the router input already holds context (some earlier layer wrote it).
    pub has_context: bool,
    /// Predicted RMS of the residual entering the layer.
    pub rms_attn: f64,
    /// Predicted RMS after attention (the FFN norm's input).
    pub rms_ffn: f64,
    /// Context gain added by this layer's attention.
    pub ctx_gain: f64,
    /// Context gain accumulated before this layer.
    pub ctx_before: f64,
    /// Per kv head: `head_dim × FEATURE_DIM` row-major with orthonormal columns (recency
    /// layers only).
    pub v_basis: Vec<Vec<f64>>,
    /// Context share of the router noise.
    pub phi: f64,
    /// Popularity rank of each expert.
    pub rank: Vec<usize>,
    /// The router `[E × H]`, row-major.
    pub router: Vec<f32>,
    /// Gate weight on `u` per unit of threshold `τ`.
    pub gate_scale: f64,
    /// Standard deviation of expert down weights.
    pub sigma_down: f64,
    /// Standard deviation of this layer's attention output weights (NoPE layers).
    pub sigma_attn_out: f64,
}

impl Plan {
    /// Computes the plan (includes the Monte Carlo calibrations; a few seconds at most).
    pub fn new(spec: &ModelSpec, targets: &Targets, seed: u64) -> Plan {
        let h = spec.hidden;
        let d = FEATURE_DIM;
        let mut rng = Rng::new(key(seed, &[0x9A1A]));
        let blocks = rng.permutation(h / BLOCK);
        let (bu, bt, bs) = (blocks[0], blocks[1], blocks[2]);
        let coord_u = bu * BLOCK + rng.below(BLOCK);
        let coords_t: Vec<usize> = (bt * BLOCK..bt * BLOCK + d).collect();
        let coords_s: Vec<usize> = (bs * BLOCK..bs * BLOCK + d).collect();
        let mut reserved = vec![false; h];
        reserved[coord_u] = true;
        for &c in coords_t.iter().chain(&coords_s) {
            reserved[c] = true;
        }
        let n_free = h - 1 - 2 * d;
        let hf = h as f64;
        let m = (ENERGY_U * hf).sqrt();
        let sigma_t = (ENERGY_T * hf / d as f64).sqrt();
        let sigma_noise = (ENERGY_NOISE * hf / n_free as f64).sqrt();

        let kernel = RecencyKernel::design(
            spec.head_dim,
            spec.rope_theta as f64,
            RECENCY_LAMBDA,
            KERNEL_HORIZON,
        );
        let (q, k) = kernel.query_key(spec.head_dim);

        // Context gains: equal per recency layer, the total sized by ENERGY_CONTEXT.
        let n_layers = spec.n_layers;
        let recency: Vec<bool> = spec.rope_layout.clone();
        let n_recency = recency.iter().filter(|&&r| r).count();
        let total_gain = (ENERGY_CONTEXT * hf / (d as f64 * kernel.var)).sqrt();
        let gain = if n_recency > 0 {
            total_gain / n_recency as f64
        } else {
            0.0
        };
        let mut before = 0.0;
        let ctx: Vec<(f64, f64)> = recency
            .iter()
            .map(|&r| {
                let g = if r { gain } else { 0.0 };
                let b = before;
                before += g;
                (b, g)
            })
            .collect();
        let n_no_context = ctx.iter().filter(|(b, _)| *b == 0.0).count();

        let gating = if spec.softmax_gating {
            Gating::Softmax
        } else {
            Gating::Sigmoid
        };
        let rt = RouterTarget {
            n_experts: spec.n_experts,
            k: spec.n_experts_used,
            d_token: d,
            zipf_s: targets.zipf_s,
            reuse: targets.reuse,
            logit_scale: targets.logit_scale,
            gating,
        };
        let router = calibrate_router(&rt, &kernel, seed, |reuse0| {
            // Layers without context re-select only through popularity; the others make up the
            // difference so the average over layers hits the target.
            let l = n_layers as f64;
            let n0 = n_no_context as f64;
            if n_no_context == n_layers {
                reuse0
            } else {
                ((l * targets.reuse - n0 * reuse0) / (l - n0)).clamp(reuse0, 0.95)
            }
        });
        let gates = calibrate_gates(targets.zero_share, targets.neuron_spread);

        let sigma_ffn_in = 1.0 / hf.sqrt();
        let moe_per_layer = ENERGY_MOE / n_layers as f64;
        let mut energy: f64 = 1.0;
        let mut layers = Vec::with_capacity(n_layers);
        for (l, &(ctx_before, ctx_gain)) in ctx.iter().enumerate() {
            let rms_attn = energy.sqrt();
            energy += if recency[l] {
                ((ctx_before + ctx_gain).powi(2) - ctx_before.powi(2)) * d as f64 * kernel.var / hf
            } else {
                0.5 * ENERGY_NOPE_ATTN
            };
            let rms_ffn = energy.sqrt();
            energy += moe_per_layer;
            let y_u = m / rms_ffn;
            let gate_scale = sigma_ffn_in * (hf - y_u * y_u).max(1.0).sqrt() / y_u;
            let sum_w2 = router.mean_sum_w2;
            let rows_free = (h - 1 - 2 * d) as f64;
            let var_down = moe_per_layer * hf
                / (sum_w2
                    * rows_free
                    * spec.expert_ffn as f64
                    * (1.0 - y_u * y_u / hf)
                    * gates.relu_moment);
            let sigma_attn_out =
                (ENERGY_NOPE_ATTN * hf / (n_free as f64 * spec.q_dim() as f64 * 0.5)).sqrt();
            let has_context = ctx_before > 0.0;
            let mut lrng = Rng::new(key(seed, &[0x1A7E, l as u64]));
            let rank = lrng.permutation(spec.n_experts);
            let rotation = orthogonal(&mut lrng, d);
            let v_basis = if recency[l] {
                (0..spec.n_kv_heads)
                    .map(|_| orthonormal_columns(&mut lrng, spec.head_dim, d))
                    .collect()
            } else {
                Vec::new()
            };
            let phi = if has_context { router.phi } else { 0.0 };
            let delta = if has_context {
                &router.delta
            } else {
                &router.delta_no_context
            };
            let s = targets.logit_scale;
            let mut rows = vec![0f32; spec.n_experts * h];
            for (e, row) in rows.chunks_mut(h).enumerate() {
                let r = rank[e];
                row[coord_u] = (s * delta[r] / m) as f32;
                let a = matvec(&rotation, &router.token_dirs[r]);
                for (i, &c) in coords_t.iter().enumerate() {
                    row[c] = (s * (1.0 - phi).sqrt() * a[i] / sigma_t) as f32;
                }
                if has_context {
                    let cdir = matvec(&rotation, &router.context_dirs[r]);
                    for (i, &c) in coords_s.iter().enumerate() {
                        row[c] =
                            (s * phi.sqrt() * cdir[i] / (kernel.var.sqrt() * ctx_before)) as f32;
                    }
                }
            }
            layers.push(LayerPlan {
                recency: recency[l],
                has_context,
                rms_attn,
                rms_ffn,
                ctx_gain,
                ctx_before,
                v_basis,
                phi,
                rank,
                router: rows,
                gate_scale,
                sigma_down: var_down.sqrt(),
                sigma_attn_out,
            });
        }
        let head_scale = LOGIT_STD / hf.sqrt();
        Plan {
            spec: spec.clone(),
            targets: targets.clone(),
            seed,
            coord_u,
            coords_t,
            coords_s,
            reserved,
            m,
            sigma_t,
            sigma_noise,
            kernel,
            q,
            k,
            router,
            gates,
            layers,
            sigma_ffn_in,
            head_scale,
        }
    }

    /// Predicted RMS of the final residual (before the output norm).
    pub fn final_rms(&self) -> f64 {
        let last = self.layers.last().map(|l| l.rms_ffn).unwrap_or(1.0);
        (last * last + ENERGY_MOE / self.spec.n_layers as f64).sqrt()
    }
}

fn matvec(m: &[f64], v: &[f64]) -> Vec<f64> {
    let n = v.len();
    (0..n)
        .map(|i| (0..n).map(|j| m[i * n + j] * v[j]).sum())
        .collect()
}

/// Gram–Schmidt on Gaussian columns: `rows × cols` row-major with orthonormal columns.
fn orthonormal_columns(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f64> {
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(cols);
    while q.len() < cols {
        let mut v: Vec<f64> = (0..rows).map(|_| rng.normal()).collect();
        for _ in 0..2 {
            for b in &q {
                let p: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                for (x, y) in v.iter_mut().zip(b) {
                    *x -= p * y;
                }
            }
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if n > 1e-6 {
            q.push(v.into_iter().map(|x| x / n).collect());
        }
    }
    let mut out = vec![0.0; rows * cols];
    for (c, col) in q.iter().enumerate() {
        for (r, &x) in col.iter().enumerate() {
            out[r * cols + c] = x;
        }
    }
    out
}

/// A random `n × n` orthogonal matrix, row-major.
fn orthogonal(rng: &mut Rng, n: usize) -> Vec<f64> {
    orthonormal_columns(rng, n, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basis_is_orthonormal() {
        let mut r = Rng::new(5);
        let (rows, cols) = (128, 32);
        let q = orthonormal_columns(&mut r, rows, cols);
        for a in 0..cols {
            for b in 0..cols {
                let d: f64 = (0..rows).map(|i| q[i * cols + a] * q[i * cols + b]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((d - want).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn plan_reserves_disjoint_blocks_and_bounds_the_stream() {
        let spec = ModelSpec::preset("tiny").unwrap();
        let p = Plan::new(&spec, &Targets::default(), 3);
        assert_eq!(
            p.reserved.iter().filter(|&&r| r).count(),
            1 + 2 * FEATURE_DIM
        );
        assert_eq!(p.coords_t.len(), FEATURE_DIM);
        assert!(!p.coords_t.contains(&p.coord_u) && !p.coords_s.contains(&p.coord_u));
        assert!(!p.layers[0].has_context && p.layers[1].has_context);
        assert!(p.final_rms() < 2.5, "{}", p.final_rms());
        assert!(
            p.layers
                .iter()
                .all(|l| l.sigma_down.is_finite() && l.sigma_down > 0.0)
        );
    }
}
