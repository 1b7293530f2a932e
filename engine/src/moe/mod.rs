//! The mixture-of-experts step: the chosen experts' ReGLU FFNs, mixed by the router weights.
//!
//! `down(relu(gate(y)) ⊙ up(y))` per expert; the layer output is `Σ_i w_i · e_i`, summed in
//! ascending expert id (the reference's accumulation order), each expert over the tokens that
//! chose it.
//!
//! The fast path exploits ReGLU sparsity twice: the `up` row of a neuron whose gate is not
//! positive is never read (its product is zero whatever `up` says), and the down projection runs
//! over [`sparse_down::DownPlanes`], where an inactive neuron's weights are skipped byte for byte.
//! In decode the chosen experts run in parallel, one task each.

pub mod sparse_down;

use rayon::prelude::*;

use crate::error::Result;
use crate::kernels::{QuantAct, act_format_for, dot_rows, wf32};
use crate::model::linear::{ComputeMode, LinearScratch, matmul};
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
    lin: LinearScratch,
    per_expert: Vec<ExpertScratch>,
}

/// One parallel expert task's buffers.
#[derive(Default)]
struct ExpertScratch {
    g: Vec<f32>,
    out: Vec<f32>,
    acc: Vec<f32>,
    hq: QuantAct,
    stats: MoeStats,
}

/// Statistics of one MoE step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoeStats {
    /// Expert neurons evaluated (tokens × experts × F).
    pub n_neurons: u64,
    /// Neurons whose gate was positive (not zeroed by ReLU).
    pub n_active: u64,
    /// Weight bytes the fast path did not read thanks to zero activations (up rows and down planes).
    pub bytes_skipped: u64,
}

impl MoeStats {
    /// Adds another step's counts.
    pub fn add(&mut self, o: &MoeStats) {
        self.n_neurons += o.n_neurons;
        self.n_active += o.n_active;
        self.bytes_skipped += o.bytes_skipped;
    }
}

/// Runs the experts of one layer for a batch: `out[t] = Σ_j w_tj · expert_{id_tj}(y_t)`.
///
/// `expert(e)` gives expert `e`'s weights; `y` and `out` are `[n_tokens × hidden]`.
pub fn moe_forward<'a>(
    expert: impl Fn(u32) -> Result<&'a ExpertWeights> + Sync,
    routes: &Routes,
    y: &[f32],
    hidden: usize,
    mode: ComputeMode,
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<MoeStats> {
    if mode == ComputeMode::Fast {
        if routes.n_tokens() == 1 {
            return decode_fast(&expert, routes, y, hidden, s, out);
        }
        return batch_fast(&expert, routes, y, hidden, s, out);
    }
    batch_exact(&expert, routes, y, hidden, s, out)
}

/// Distinct experts of the batch, ascending.
fn expert_order(routes: &Routes) -> Vec<u32> {
    let mut order: Vec<u32> = routes.ids.clone();
    order.sort_unstable();
    order.dedup();
    order
}

/// Gathers the tokens that chose `e` and their weights into `s.tokens` / `s.w`.
fn gather(routes: &Routes, e: u32, tokens: &mut Vec<usize>, w: &mut Vec<f32>) {
    tokens.clear();
    w.clear();
    for t in 0..routes.n_tokens() {
        for j in 0..routes.k {
            if routes.ids[t * routes.k + j] == e {
                tokens.push(t);
                w.push(routes.weights[t * routes.k + j]);
            }
        }
    }
}

fn batch_exact<'a>(
    expert: &impl Fn(u32) -> Result<&'a ExpertWeights>,
    routes: &Routes,
    y: &[f32],
    hidden: usize,
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<MoeStats> {
    out.fill(0.0);
    let mut stats = MoeStats::default();
    for e in expert_order(routes) {
        gather(routes, e, &mut s.tokens, &mut s.w);
        let n = s.tokens.len();
        let ew = expert(e)?;
        let _sp = tracing::debug_span!("compute.expert", expert = e, n_tokens = n).entered();
        let f = ew.gate.rows;
        s.ys.clear();
        for &t in &s.tokens {
            s.ys.extend_from_slice(&y[t * hidden..(t + 1) * hidden]);
        }
        s.g.resize(n * f, 0.0);
        s.u.resize(n * f, 0.0);
        matmul(&ew.gate, &s.ys, n, &mut s.g, ComputeMode::Exact, &mut s.lin)?;
        matmul(&ew.up, &s.ys, n, &mut s.u, ComputeMode::Exact, &mut s.lin)?;
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
            matmul(&ew.down, &s.g, n, &mut s.d, ComputeMode::Exact, &mut s.lin)?;
        }
        mix(&s.tokens, &s.w, &s.d, hidden, out);
    }
    Ok(stats)
}

/// `out[t] += w · d[i]` for each gathered token.
fn mix(tokens: &[usize], w: &[f32], d: &[f32], hidden: usize, out: &mut [f32]) {
    for (i, &t) in tokens.iter().enumerate() {
        let wi = w[i];
        for (o, &x) in out[t * hidden..(t + 1) * hidden]
            .iter_mut()
            .zip(&d[i * hidden..(i + 1) * hidden])
        {
            *o += wi * x;
        }
    }
}

/// Rows `r0 .. r0 + out.len()` of `m` times one activation: f32 activations where the type has
/// such a kernel, else the quantised `qa` (prepared by [`prepare`]).
fn rows_dot(
    m: &crate::model::weights::Matrix,
    r0: usize,
    x: &[f32],
    qa: &QuantAct,
    out: &mut [f32],
) -> Result<()> {
    let rb = m.row_bytes();
    let rows = &m.bytes()[r0 * rb..(r0 + out.len()) * rb];
    if wf32::supports(m.ty) {
        wf32::gemm(m.ty, rows, rb, x, m.cols, out)
    } else {
        dot_rows(m.ty, rows, rb, qa, out)
    }
}

/// Quantises `x` into `qa` when `ty` has no f32-activation kernel.
fn prepare(ty: crate::quant::GgmlType, x: &[f32], qa: &mut QuantAct) -> Result<()> {
    if !wf32::supports(ty) {
        qa.quantize(x, act_format_for(ty)?)?;
    }
    Ok(())
}

/// One token, one expert, fast path: `es.out = expert(y)`.
fn expert_fast(ew: &ExpertWeights, y: &[f32], es: &mut ExpertScratch) -> Result<()> {
    let f = ew.gate.rows;
    let h = ew.down_rows_out();
    es.g.resize(f, 0.0);
    prepare(ew.gate.ty, y, &mut es.hq)?;
    rows_dot(&ew.gate, 0, y, &es.hq, &mut es.g)?;
    if ew.up.ty != ew.gate.ty {
        prepare(ew.up.ty, y, &mut es.hq)?;
    }
    let mut active = 0u64;
    for j in 0..f {
        if es.g[j] > 0.0 {
            active += 1;
            let mut u = [0f32];
            rows_dot(&ew.up, j, y, &es.hq, &mut u)?;
            es.g[j] *= u[0];
        } else {
            es.g[j] = 0.0;
        }
    }
    let inactive = f as u64 - active;
    es.stats.n_neurons += f as u64;
    es.stats.n_active += active;
    es.stats.bytes_skipped += inactive * ew.up.row_bytes() as u64;
    es.out.clear();
    es.out.resize(h, 0.0);
    if let Some(p) = &ew.down_planes {
        p.apply(&es.g, &mut es.out, &mut es.acc)?;
        es.stats.bytes_skipped += inactive * p.neuron_bytes() as u64;
    } else if ew.down_transposed {
        // Neuron-major file layout: axpy the rows of active neurons.
        let mut row = std::mem::take(&mut es.acc);
        row.resize(h, 0.0);
        for j in 0..f {
            let a = es.g[j];
            if a != 0.0 {
                crate::quant::dequantize_row(ew.down.ty, ew.down.row(j), &mut row)?;
                for (o, &r) in es.out.iter_mut().zip(&row) {
                    *o += a * r;
                }
            }
        }
        es.acc = row;
        es.stats.bytes_skipped += inactive * ew.down.row_bytes() as u64;
    } else {
        let g = std::mem::take(&mut es.g);
        prepare(ew.down.ty, &g, &mut es.hq)?;
        rows_dot(&ew.down, 0, &g, &es.hq, &mut es.out)?;
        es.g = g;
    }
    Ok(())
}

fn decode_fast<'a>(
    expert: &(impl Fn(u32) -> Result<&'a ExpertWeights> + Sync),
    routes: &Routes,
    y: &[f32],
    hidden: usize,
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<MoeStats> {
    let order = expert_order(routes);
    if s.per_expert.len() < order.len() {
        s.per_expert
            .resize_with(order.len(), ExpertScratch::default);
    }
    let tasks = &mut s.per_expert[..order.len()];
    tasks
        .par_iter_mut()
        .zip(order.par_iter())
        .try_for_each(|(es, &e)| -> Result<()> {
            let ew = expert(e)?;
            let _sp = tracing::debug_span!("compute.expert", expert = e, n_tokens = 1).entered();
            es.stats = MoeStats::default();
            expert_fast(ew, y, es)
        })?;
    out[..hidden].fill(0.0);
    let mut stats = MoeStats::default();
    for (es, &e) in tasks.iter().zip(&order) {
        let w = (0..routes.k)
            .filter(|&j| routes.ids[j] == e)
            .map(|j| routes.weights[j])
            .sum::<f32>();
        for (o, &x) in out[..hidden].iter_mut().zip(&es.out) {
            *o += w * x;
        }
        stats.add(&es.stats);
    }
    Ok(stats)
}

fn batch_fast<'a>(
    expert: &(impl Fn(u32) -> Result<&'a ExpertWeights> + Sync),
    routes: &Routes,
    y: &[f32],
    hidden: usize,
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<MoeStats> {
    out.fill(0.0);
    let mut stats = MoeStats::default();
    for e in expert_order(routes) {
        gather(routes, e, &mut s.tokens, &mut s.w);
        let n = s.tokens.len();
        let ew = expert(e)?;
        let _sp = tracing::debug_span!("compute.expert", expert = e, n_tokens = n).entered();
        let f = ew.gate.rows;
        s.ys.clear();
        for &t in &s.tokens {
            s.ys.extend_from_slice(&y[t * hidden..(t + 1) * hidden]);
        }
        s.g.resize(n * f, 0.0);
        s.u.resize(n * f, 0.0);
        matmul(&ew.gate, &s.ys, n, &mut s.g, ComputeMode::Fast, &mut s.lin)?;
        matmul(&ew.up, &s.ys, n, &mut s.u, ComputeMode::Fast, &mut s.lin)?;
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
        if let Some(p) = &ew.down_planes {
            let (g, d) = (&s.g, &mut s.d);
            d.par_chunks_mut(hidden)
                .zip(g.par_chunks(f))
                .try_for_each_init(Vec::new, |acc, (d, g)| -> Result<()> {
                    d.fill(0.0);
                    p.apply(g, d, acc)?;
                    Ok(())
                })?;
        } else if ew.down_transposed {
            return batch_exact(expert, routes, y, hidden, s, out);
        } else {
            matmul(&ew.down, &s.g, n, &mut s.d, ComputeMode::Fast, &mut s.lin)?;
        }
        mix(&s.tokens, &s.w, &s.d, hidden, out);
    }
    Ok(stats)
}
