//! The mixture-of-experts step: the chosen experts' ReGLU FFNs, mixed by the router weights.
//!
//! `down(relu(gate(y)) ⊙ up(y))` per expert; the layer output is `Σ_i w_i · e_i`. Experts are
//! visited in ascending id (the reference's accumulation order), each over the tokens that chose it.

pub mod sparse_down;

use crate::error::Result;
use crate::model::linear::{ComputeMode, matmul};
use crate::model::weights::ExpertWeights;

/// Routing of a batch at one layer: `ids[t · k + j]`, `weights[t · k + j]`.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// Experts per token.
    pub k: usize,
    /// Chosen expert ids, rank order per token.
    pub ids: Vec<u32>,
    /// Mixing weights, same layout.
    pub weights: Vec<f32>,
}

impl Routes {
    /// Number of tokens.
    pub fn n_tokens(&self) -> usize {
        self.ids.len().checked_div(self.k).unwrap_or(0)
    }

    /// Token `t`'s ids.
    pub fn ids_of(&self, t: usize) -> &[u32] {
        &self.ids[t * self.k..(t + 1) * self.k]
    }
}

/// Scratch for the MoE step, reused across calls.
#[derive(Default)]
pub struct MoeScratch {
    tokens: Vec<usize>,
    w: Vec<f32>,
    ys: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    d: Vec<f32>,
    tmp: Vec<f32>,
}

/// Statistics of one MoE step.
#[derive(Clone, Copy, Debug, Default)]
pub struct MoeStats {
    /// Expert neurons evaluated (tokens × experts × F).
    pub n_neurons: u64,
    /// Neurons whose gate was positive (not zeroed by ReLU).
    pub n_active: u64,
}

/// Runs the experts of one layer for a batch: `out[t] = Σ_j w_tj · expert_{id_tj}(y_t)`.
///
/// `expert(e)` gives expert `e`'s weights; `y` and `out` are `[n_tokens × hidden]`.
pub fn moe_forward<'a>(
    expert: impl Fn(u32) -> Result<&'a ExpertWeights>,
    routes: &Routes,
    y: &[f32],
    hidden: usize,
    mode: ComputeMode,
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<MoeStats> {
    out.fill(0.0);
    let n_tokens = routes.n_tokens();
    let mut order: Vec<u32> = routes.ids.clone();
    order.sort_unstable();
    order.dedup();
    let mut stats = MoeStats::default();
    for &e in &order {
        s.tokens.clear();
        s.w.clear();
        for t in 0..n_tokens {
            for j in 0..routes.k {
                if routes.ids[t * routes.k + j] == e {
                    s.tokens.push(t);
                    s.w.push(routes.weights[t * routes.k + j]);
                }
            }
        }
        let n = s.tokens.len();
        let ew = expert(e)?;
        let f = ew.gate.rows;
        s.ys.clear();
        for &t in &s.tokens {
            s.ys.extend_from_slice(&y[t * hidden..(t + 1) * hidden]);
        }
        s.g.resize(n * f, 0.0);
        s.u.resize(n * f, 0.0);
        matmul(&ew.gate, &s.ys, n, &mut s.g, mode, &mut s.tmp)?;
        matmul(&ew.up, &s.ys, n, &mut s.u, mode, &mut s.tmp)?;
        for (g, &u) in s.g.iter_mut().zip(&s.u) {
            stats.n_neurons += 1;
            if *g > 0.0 {
                stats.n_active += 1;
                *g *= u;
            } else {
                *g = 0.0;
            }
        }
        s.d.resize(n * hidden, 0.0);
        if ew.down_transposed {
            // Row j of down^T is neuron j's output column: accumulate h_j · row_j.
            let mut row = vec![0f32; hidden];
            s.d.fill(0.0);
            for j in 0..f {
                let mut loaded = false;
                for i in 0..n {
                    let h = s.g[i * f + j];
                    if h == 0.0 {
                        continue;
                    }
                    if !loaded {
                        crate::quant::dequantize_row(ew.down.ty, ew.down.row(j), &mut row)?;
                        loaded = true;
                    }
                    for (d, &r) in s.d[i * hidden..(i + 1) * hidden].iter_mut().zip(&row) {
                        *d += h * r;
                    }
                }
            }
        } else {
            matmul(&ew.down, &s.g, n, &mut s.d, mode, &mut s.tmp)?;
        }
        for (i, &t) in s.tokens.iter().enumerate() {
            let w = s.w[i];
            for (o, &d) in out[t * hidden..(t + 1) * hidden]
                .iter_mut()
                .zip(&s.d[i * hidden..(i + 1) * hidden])
            {
                *o += w * d;
            }
        }
    }
    Ok(stats)
}
