//! The mixture-of-experts step: the chosen experts' ReGLU FFNs, mixed by the router weights.
//!
//! `down(relu(gate(y)) ⊙ up(y))` per expert; the layer output is `Σ_i w_i · e_i`, summed in
//! ascending expert id (the reference's accumulation order), each expert over the tokens that
//! chose it.
//!
//! The fast path exploits ReGLU sparsity twice: the `up` row of a neuron whose gate is not
//! positive is never read (its product is zero whatever `up` says), and the down projection runs
//! over [`sparse_down`] planes, where an inactive neuron's weights are skipped byte for byte.
//! In decode the chosen experts run in parallel, one task each.
//!
//! Experts come from an [`ExpertSource`]: in memory ([`ExpertSource::Resident`]), or streamed
//! from storage through a [`Prefetcher`] ([`ExpertSource::Offloaded`]). Either way the compute
//! runs on borrowed bytes ([`ExpertRef`]) with the same code. Streamed experts are computed in
//! the order their reads finish (several at once in decode when several are ready), and their
//! outputs are still summed in ascending expert id, so the result is bit-identical to the
//! in-memory run.

pub mod sparse_down;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::packed::X8_ROWS;
use crate::model::linear::{
    Acts, ComputeMode, FastAct, LinearScratch, matmul_fast, matmul_ref, prepare_tokens, rows_fast,
};
use crate::model::weights::{ExpertWeights, MatRef};
use crate::offload::{ExpertGuard, Prefetcher};
use crate::quant::GgmlType;
use sparse_down::{PlaneKind, PlanesView};

/// One expert's weights, borrowed: from [`ExpertWeights`] in memory or from an expert cache slot.
#[derive(Clone, Copy, Debug)]
pub struct ExpertRef<'a> {
    /// Gate `[F × H]`.
    pub gate: MatRef<'a>,
    /// Up `[F × H]`.
    pub up: MatRef<'a>,
    /// Down `[H × F]`, or `[F × H]` when `down_transposed`. Unused by the fast path when
    /// `planes` is set.
    pub down: MatRef<'a>,
    /// Down stored neuron-major (PowerInfer's `--transpose-down`).
    pub down_transposed: bool,
    /// The down projection as packed neuron-major planes (fast path).
    pub planes: Option<PlanesView<'a>>,
}

impl ExpertRef<'_> {
    /// Outputs of the down projection (the hidden size).
    pub fn down_rows_out(&self) -> usize {
        if self.down_transposed {
            self.down.cols
        } else {
            self.down.rows
        }
    }
}

impl ExpertWeights {
    /// The expert as borrowed views (with its down planes if they were built).
    pub fn view(&self) -> ExpertRef<'_> {
        ExpertRef {
            gate: self.gate.view(),
            up: self.up.view(),
            down: self.down.view(),
            down_transposed: self.down_transposed,
            planes: self.down_planes.as_ref().map(|p| p.view()),
        }
    }
}

/// A layer's experts streamed through a [`Prefetcher`].
#[derive(Clone, Copy, Debug)]
pub struct OffloadedLayer<'a> {
    /// Serves the expert bytes (the layer's experts should have been requested already).
    pub prefetcher: &'a Prefetcher,
    /// The layer.
    pub layer: u32,
    /// Any expert of the layer, for the matrices' types and shapes (its bytes are not read).
    pub shape: &'a ExpertWeights,
    /// The slots hold the down matrix repacked as planes of this kind (fast mode).
    pub planes: Option<PlaneKind>,
    /// The slots hold the gate matrix x8-packed (fast mode, Q4_0).
    pub gate_x8: bool,
}

impl OffloadedLayer<'_> {
    /// The expert in `g`'s slot as views.
    pub fn expert_ref<'g>(&self, g: &'g ExpertGuard<'_>) -> Result<ExpertRef<'g>> {
        let sh = self.shape;
        let m = |m: &crate::model::weights::Matrix, bytes: &'g [u8]| {
            MatRef::new(m.ty, m.rows, m.cols, bytes).map_err(|e| {
                Error::Model(format!(
                    "layer {} expert {}: cached bytes do not fit '{}': {e}",
                    self.layer,
                    g.expert(),
                    m.name
                ))
            })
        };
        let planes = match self.planes {
            Some(kind) => Some(PlanesView::new(kind, sh.down.rows, sh.down.cols, g.down())?),
            None => None,
        };
        let mut gate = m(&sh.gate, g.gate())?;
        if self.gate_x8 {
            // The slot's gate bytes are in the x8 layout (see `packed_rows`); only the packed
            // view is read.
            gate.packed = Some(bytemuck::try_cast_slice(g.gate()).map_err(|_| {
                Error::Model(format!(
                    "layer {} expert {}: packed gate of {} bytes",
                    self.layer,
                    g.expert(),
                    g.gate().len()
                ))
            })?);
        }
        Ok(ExpertRef {
            gate,
            up: m(&sh.up, g.up())?,
            down: m(&sh.down, g.down())?,
            down_transposed: sh.down_transposed,
            planes,
        })
    }
}

/// Where the MoE step gets a layer's experts.
#[derive(Clone, Copy, Debug)]
pub enum ExpertSource<'a> {
    /// In memory: expert `e` is `experts[e]`.
    Resident {
        /// The layer (for spans).
        layer: usize,
        /// The layer's experts by id.
        experts: &'a [ExpertWeights],
    },
    /// Streamed from storage.
    Offloaded(OffloadedLayer<'a>),
}

impl ExpertSource<'_> {
    fn layer(&self) -> usize {
        match self {
            ExpertSource::Resident { layer, .. } => *layer,
            ExpertSource::Offloaded(o) => o.layer as usize,
        }
    }

    fn down_transposed(&self) -> bool {
        match self {
            ExpertSource::Resident { experts, .. } => {
                experts.first().is_some_and(|e| e.down_transposed)
            }
            ExpertSource::Offloaded(o) => o.shape.down_transposed,
        }
    }

    /// The experts' gate type (the first expert's when resident), if the layer has experts.
    fn gate_type(&self) -> Option<GgmlType> {
        match self {
            ExpertSource::Resident { experts, .. } => experts.first().map(|e| e.gate.ty),
            ExpertSource::Offloaded(o) => Some(o.shape.gate.ty),
        }
    }

    fn resident(&self, e: u32) -> Result<ExpertRef<'_>> {
        match self {
            ExpertSource::Resident { layer, experts } => experts
                .get(e as usize)
                .map(ExpertWeights::view)
                .ok_or_else(|| {
                    Error::Model(format!("layer {layer}: router chose missing expert {e}"))
                }),
            ExpertSource::Offloaded(_) => Err(Error::Model("expert is not resident".into())),
        }
    }
}

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
    /// Fast mode, batches: every token of the layer's input prepared once for the experts'
    /// gate type, shared by every expert that token chose.
    batch_acts: Vec<FastAct>,
    per_expert: Vec<ExpertScratch>,
    decode_acts: DecodeActs,
    /// Per expert (position in the ascending order): its output rows, kept until the mix when
    /// experts are computed in arrival order.
    outs: Vec<Vec<f32>>,
}

/// One parallel expert task's buffers.
#[derive(Default)]
struct ExpertScratch {
    g: Vec<f32>,
    out: Vec<f32>,
    /// Batches: the tokens that chose the expert (ascending), their mixing weights, and the
    /// gate product's transposition buffer.
    tokens: Vec<usize>,
    w: Vec<f32>,
    tmp: Vec<f32>,
    t: TokenBufs,
    stats: MoeStats,
}

/// Buffers of one token's ReGLU and down projection ([`reglu_down`]).
#[derive(Default)]
struct TokenBufs {
    /// Active neurons (positive gate) and their up values.
    idx: Vec<u32>,
    u: Vec<f32>,
    acc: Vec<f32>,
    /// The hidden activation prepared for a row-major down matrix.
    dq: FastAct,
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
/// `y` and `out` are `[n_tokens × hidden]`. With [`ExpertSource::Offloaded`] the layer's experts
/// should have been requested ([`Prefetcher::request`]) before; they are waited for here and
/// computed in arrival order.
pub fn moe_forward(
    experts: ExpertSource<'_>,
    routes: &Routes,
    y: &[f32],
    hidden: usize,
    mode: ComputeMode,
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<MoeStats> {
    if mode == ComputeMode::Fast && routes.n_tokens() == 1 {
        return decode_fast(&experts, routes, y, hidden, s, out);
    }
    // Batches with a neuron-major down file layout take the exact path.
    let mode = if mode == ComputeMode::Fast && experts.down_transposed() {
        ComputeMode::Exact
    } else {
        mode
    };
    batch(&experts, routes, y, hidden, mode, s, out)
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

/// Buffers of one expert's batch product.
struct BatchBufs<'s> {
    ys: &'s mut Vec<f32>,
    g: &'s mut Vec<f32>,
    u: &'s mut Vec<f32>,
    lin: &'s mut LinearScratch,
    /// Fast mode: the batch's tokens prepared for the experts' gate type (see
    /// [`MoeScratch`]); empty in exact mode.
    pre: &'s [FastAct],
}

/// One expert over the gathered tokens `tokens`: `d = expert(y[tokens])`, `[n × hidden]`.
fn expert_batch(
    ew: ExpertRef<'_>,
    tokens: &[usize],
    y: &[f32],
    hidden: usize,
    mode: ComputeMode,
    b: BatchBufs<'_>,
    d: &mut Vec<f32>,
) -> Result<MoeStats> {
    let n = tokens.len();
    let f = ew.gate.rows;
    b.g.resize(n * f, 0.0);
    if mode == ComputeMode::Fast {
        // The whole batch was prepared once per layer (in parallel); each expert reads the
        // tokens that chose it.
        let acts = Acts::gathered(b.pre, tokens)?;
        matmul_fast(ew.gate, acts, b.g, &mut b.lin.tmp)?;
        return expert_batch_fast(ew, tokens, acts, y, hidden, b.g, d);
    }
    b.ys.clear();
    for &t in tokens {
        b.ys.extend_from_slice(&y[t * hidden..(t + 1) * hidden]);
    }
    matmul_ref(ew.gate, b.ys, n, b.g, mode, b.lin)?;
    let mut stats = MoeStats::default();
    b.u.resize(n * f, 0.0);
    matmul_ref(ew.up, b.ys, n, b.u, mode, b.lin)?;
    for (g, &u) in b.g.iter_mut().zip(b.u.iter()) {
        stats.n_neurons += 1;
        if *g > 0.0 {
            stats.n_active += 1;
            *g *= u;
        } else {
            *g = 0.0;
        }
    }
    d.clear();
    d.resize(n * hidden, 0.0);
    if ew.down_transposed {
        // Row j of down^T is neuron j's output column: accumulate h_j · row_j.
        let mut row = vec![0f32; hidden];
        for j in 0..f {
            let mut loaded = false;
            for i in 0..n {
                let h = b.g[i * f + j];
                if h == 0.0 {
                    continue;
                }
                if !loaded {
                    crate::quant::dequantize_row(ew.down.ty, ew.down.row(j), &mut row)?;
                    loaded = true;
                }
                for (d, &r) in d[i * hidden..(i + 1) * hidden].iter_mut().zip(&row) {
                    *d += h * r;
                }
            }
        }
    } else {
        matmul_ref(ew.down, b.g, n, d, mode, b.lin)?;
    }
    Ok(stats)
}

/// The rest of [`expert_batch`] in fast mode, after the gate's product `g` over the gathered
/// `tokens` (`acts`: their activations prepared for the gate's type; each block of gate
/// weights was reused from cache by every token): per token, in parallel, the up rows of its
/// active neurons only and the sparse down projection ([`reglu_down`], as in decode).
fn expert_batch_fast(
    ew: ExpertRef<'_>,
    tokens: &[usize],
    acts: Acts<'_>,
    y: &[f32],
    hidden: usize,
    g: &mut [f32],
    d: &mut Vec<f32>,
) -> Result<MoeStats> {
    let n = tokens.len();
    let f = ew.gate.rows;
    let same = ew.up.ty == ew.gate.ty;
    let out_len = ew.down_rows_out();
    d.clear();
    d.resize(n * out_len, 0.0);
    d.par_chunks_mut(out_len)
        .zip(g.par_chunks_mut(f))
        .enumerate()
        .map_init(
            || (TokenBufs::default(), FastAct::default()),
            |(tb, ua), (i, (d, g))| -> Result<MoeStats> {
                let mut st = MoeStats::default();
                let act = if same {
                    acts.get(i)
                } else {
                    let t = tokens[i];
                    ua.prepare(ew.up.ty, &y[t * hidden..(t + 1) * hidden])?;
                    &*ua
                };
                reglu_down(ew, act, g, tb, d, &mut st)?;
                Ok(st)
            },
        )
        .try_reduce(MoeStats::default, |mut a, s| {
            a.add(&s);
            Ok(a)
        })
}

/// `out[t] += w · d[i]` for each gathered token.
fn mix(tokens: &[usize], w: &[f32], d: &[f32], hidden: usize, out: &mut [f32]) {
    for (i, &t) in tokens.iter().enumerate() {
        mix_row(
            w[i],
            &d[i * hidden..(i + 1) * hidden],
            &mut out[t * hidden..(t + 1) * hidden],
        );
    }
}

/// Batch path (prefill, and every exact-mode step): one expert at a time, each product
/// parallel inside.
fn batch(
    experts: &ExpertSource<'_>,
    routes: &Routes,
    y: &[f32],
    hidden: usize,
    mode: ComputeMode,
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<MoeStats> {
    if y.len() != routes.n_tokens() * hidden || out.len() != y.len() {
        return Err(Error::Model(format!(
            "MoE batch of {} tokens × {hidden}: input of {} and output of {} values",
            routes.n_tokens(),
            y.len(),
            out.len()
        )));
    }
    out.fill(0.0);
    let mut stats = MoeStats::default();
    let order = expert_order(routes);
    let layer = experts.layer();
    let n = routes.n_tokens();
    // Fast mode: every token prepared once for the experts' gate type, in parallel.
    let gate_ty = experts.gate_type().filter(|_| mode == ComputeMode::Fast);
    let pre: &[FastAct] = match gate_ty {
        Some(ty) => {
            prepare_tokens(&mut s.batch_acts, ty, y, n)?;
            &s.batch_acts[..n]
        }
        None => &[],
    };
    match (experts, gate_ty) {
        (ExpertSource::Resident { .. }, Some(ty)) => {
            let fast = FastBatch {
                routes,
                order: &order,
                pre,
                ty,
                y,
                hidden,
            };
            return batch_fast_resident(experts, fast, &mut s.per_expert, out);
        }
        (ExpertSource::Resident { .. }, None) => {
            for &e in &order {
                gather(routes, e, &mut s.tokens, &mut s.w);
                let ew = experts.resident(e)?;
                let _sp = expert_span(layer, e, s.tokens.len()).entered();
                let bufs = BatchBufs {
                    ys: &mut s.ys,
                    g: &mut s.g,
                    u: &mut s.u,
                    lin: &mut s.lin,
                    pre,
                };
                stats.add(&expert_batch(
                    ew, &s.tokens, y, hidden, mode, bufs, &mut s.d,
                )?);
                mix(&s.tokens, &s.w, &s.d, hidden, out);
            }
        }
        (ExpertSource::Offloaded(o), _) => {
            if s.outs.len() < order.len() {
                s.outs.resize_with(order.len(), Vec::new);
            }
            let mut pending = order.clone();
            while !pending.is_empty() {
                let g = o.prefetcher.wait_any(o.layer, &pending)?;
                let e = g.expert();
                let Some(i) = pending.iter().position(|&p| p == e) else {
                    return Err(Error::Model(format!(
                        "layer {layer}: the prefetcher returned expert {e}, not requested"
                    )));
                };
                pending.swap_remove(i);
                let pos = order.binary_search(&e).unwrap_or(0);
                gather(routes, e, &mut s.tokens, &mut s.w);
                let ew = o.expert_ref(&g)?;
                let _sp = expert_span(layer, e, s.tokens.len()).entered();
                let bufs = BatchBufs {
                    ys: &mut s.ys,
                    g: &mut s.g,
                    u: &mut s.u,
                    lin: &mut s.lin,
                    pre,
                };
                stats.add(&expert_batch(
                    ew,
                    &s.tokens,
                    y,
                    hidden,
                    mode,
                    bufs,
                    &mut s.outs[pos],
                )?);
            }
            // Mix in ascending expert id, as the in-memory path does.
            for (pos, &e) in order.iter().enumerate() {
                gather(routes, e, &mut s.tokens, &mut s.w);
                mix(&s.tokens, &s.w, &s.outs[pos], hidden, out);
            }
        }
    }
    Ok(stats)
}

/// What [`batch_fast_resident`] computes: the batch's routing and distinct experts
/// (ascending), its input `y` (`[n × hidden]`) and that input prepared for the gate type `ty`.
#[derive(Clone, Copy)]
struct FastBatch<'a> {
    routes: &'a Routes,
    order: &'a [u32],
    pre: &'a [FastAct],
    ty: GgmlType,
    y: &'a [f32],
    hidden: usize,
}

/// [`batch`] in fast mode over resident experts: every chosen expert is one parallel task (its
/// gate product over its tokens, then per token the up rows of the active neurons and the
/// sparse down, each parallel inside), so a thread that finishes a small expert takes another
/// instead of waiting inside a large one; then each token mixes its experts' outputs, tokens
/// in parallel. Each expert's result and each token's mix (ascending expert id, one add per
/// expert) are the sequential path's, bit for bit.
fn batch_fast_resident(
    experts: &ExpertSource<'_>,
    fast: FastBatch<'_>,
    per_expert: &mut Vec<ExpertScratch>,
    out: &mut [f32],
) -> Result<MoeStats> {
    let FastBatch {
        routes,
        order,
        pre,
        ty,
        y,
        hidden,
    } = fast;
    let layer = experts.layer();
    let refs = order
        .iter()
        .map(|&e| experts.resident(e))
        .collect::<Result<Vec<_>>>()?;
    if let Some(r) = refs.iter().find(|r| r.gate.ty != ty) {
        return Err(Error::Model(format!(
            "layer {layer}: expert gates of types {} and {}",
            ty.name(),
            r.gate.ty.name()
        )));
    }
    if per_expert.len() < order.len() {
        per_expert.resize_with(order.len(), ExpertScratch::default);
    }
    let tasks = &mut per_expert[..order.len()];
    for (es, &e) in tasks.iter_mut().zip(order) {
        gather(routes, e, &mut es.tokens, &mut es.w);
    }
    let stats = tasks
        .par_iter_mut()
        .zip(order.par_iter().zip(refs.par_iter()))
        .map(|(es, (&e, &ew))| -> Result<MoeStats> {
            let _sp = expert_span(layer, e, es.tokens.len()).entered();
            let acts = Acts::gathered(pre, &es.tokens)?;
            es.g.resize(es.tokens.len() * ew.gate.rows, 0.0);
            matmul_fast(ew.gate, acts, &mut es.g, &mut es.tmp)?;
            expert_batch_fast(ew, &es.tokens, acts, y, hidden, &mut es.g, &mut es.out)
        })
        .try_reduce(MoeStats::default, |mut a, b| {
            a.add(&b);
            Ok(a)
        })?;
    let tasks = &per_expert[..order.len()];
    out.par_chunks_mut(hidden).enumerate().try_for_each_init(
        Vec::new,
        |chosen, (t, o)| -> Result<()> {
            // The token's experts in ascending id (rank order for repeats), as `batch` mixes.
            chosen.clear();
            chosen.extend(routes.ids_of(t).iter().enumerate().map(|(j, &e)| (e, j)));
            chosen.sort_unstable();
            let mut prev: Option<(u32, usize)> = None;
            for &(e, j) in chosen.iter() {
                let pos = order.binary_search(&e).map_err(|_| {
                    Error::Model(format!("layer {layer}: expert {e} missing from the batch"))
                })?;
                let es = &tasks[pos];
                // The token's row among the expert's (its first, then one per repeat).
                let row = match prev {
                    Some((pe, pr)) if pe == e => pr + 1,
                    _ => es.tokens.partition_point(|&x| x < t),
                };
                prev = Some((e, row));
                let d = es
                    .out
                    .get(row * hidden..(row + 1) * hidden)
                    .ok_or_else(|| {
                        Error::Model(format!(
                            "layer {layer}: expert {e} has no row for token {t}"
                        ))
                    })?;
                mix_row(routes.weights[t * routes.k + j], d, o);
            }
            Ok(())
        },
    )?;
    Ok(stats)
}

/// The `compute.expert` span of expert `e` over `n_tokens` tokens.
fn expert_span(layer: usize, e: u32, n_tokens: usize) -> tracing::Span {
    tracing::debug_span!("compute.expert", layer, expert = e, n_tokens)
}

/// One expert's output row into a token's mix: `o += w · d`.
fn mix_row(w: f32, d: &[f32], o: &mut [f32]) {
    for (o, &x) in o.iter_mut().zip(d) {
        *o += w * x;
    }
}

/// One token of one expert after its gate: ReLU of the gate outputs `g`, the up rows of the
/// active neurons only (`up_act`: the input prepared for the up matrix's type), their product
/// into `g`, then the down projection of `g` into `out` (zeroed by the caller), skipping the
/// inactive neurons' bytes where the layout allows. Counts into `stats`.
fn reglu_down(
    ew: ExpertRef<'_>,
    up_act: &FastAct,
    g: &mut [f32],
    t: &mut TokenBufs,
    out: &mut [f32],
    stats: &mut MoeStats,
) -> Result<()> {
    let f = ew.gate.rows;
    let h = out.len();
    t.idx.clear();
    for (j, g) in g.iter_mut().enumerate() {
        if *g > 0.0 {
            t.idx.push(j as u32);
        } else {
            *g = 0.0;
        }
    }
    let active = t.idx.len() as u64;
    t.u.resize(t.idx.len(), 0.0);
    up_act.dot_rows_gather(ew.up.ty, ew.up.bytes(), ew.up.row_bytes(), &t.idx, &mut t.u)?;
    for (&j, &u) in t.idx.iter().zip(&t.u) {
        g[j as usize] *= u;
    }
    let inactive = f as u64 - active;
    stats.n_neurons += f as u64;
    stats.n_active += active;
    stats.bytes_skipped += inactive * ew.up.row_bytes() as u64;
    if let Some(p) = ew.planes {
        p.apply(g, out, &mut t.acc)?;
        stats.bytes_skipped += inactive * p.neuron_bytes() as u64;
    } else if ew.down_transposed {
        // Neuron-major file layout: axpy the rows of active neurons.
        t.acc.resize(h, 0.0);
        for (j, &a) in g.iter().enumerate() {
            if a != 0.0 {
                crate::quant::dequantize_row(ew.down.ty, ew.down.row(j), &mut t.acc)?;
                for (o, &r) in out.iter_mut().zip(&t.acc) {
                    *o += a * r;
                }
            }
        }
        stats.bytes_skipped += inactive * ew.down.row_bytes() as u64;
    } else {
        t.dq.prepare(ew.down.ty, g)?;
        rows_fast(ew.down, 0, &t.dq, out)?;
    }
    Ok(())
}

/// The decode input prepared once per layer for the experts' gate and (if its type differs)
/// up matrices.
#[derive(Default)]
struct DecodeActs {
    gate: FastAct,
    up: FastAct,
    up_differs: bool,
}

impl DecodeActs {
    fn prepare(&mut self, gate: GgmlType, up: GgmlType, y: &[f32]) -> Result<()> {
        self.gate.prepare(gate, y)?;
        self.up_differs = up != gate;
        if self.up_differs {
            self.up.prepare(up, y)?;
        }
        Ok(())
    }

    fn up(&self) -> &FastAct {
        if self.up_differs {
            &self.up
        } else {
            &self.gate
        }
    }
}

/// Runs one token through the experts at the order positions where `refs` has one, in
/// parallel: per expert, the gate rows in two parallel halves (so a thread whose experts finish
/// early takes half of another's gate instead of idling), then the ReGLU and sparse down
/// ([`reglu_down`]) into `tasks[i].out`.
fn run_fast_tasks(
    layer: usize,
    order: &[u32],
    refs: &[Option<ExpertRef<'_>>],
    acts: &DecodeActs,
    tasks: &mut [ExpertScratch],
) -> Result<()> {
    tasks
        .par_iter_mut()
        .zip(order.par_iter().zip(refs.par_iter()))
        .try_for_each(|(es, (&e, r))| -> Result<()> {
            let Some(ew) = *r else { return Ok(()) };
            let _sp =
                tracing::debug_span!("compute.expert", layer, expert = e, n_tokens = 1).entered();
            es.stats = MoeStats::default();
            let f = ew.gate.rows;
            es.g.resize(f, 0.0);
            let half = f.div_ceil(2).next_multiple_of(X8_ROWS).max(X8_ROWS);
            es.g.par_chunks_mut(half)
                .enumerate()
                .try_for_each(|(i, o)| rows_fast(ew.gate, i * half, &acts.gate, o))?;
            es.out.clear();
            es.out.resize(ew.down_rows_out(), 0.0);
            reglu_down(
                ew,
                acts.up(),
                &mut es.g,
                &mut es.t,
                &mut es.out,
                &mut es.stats,
            )
        })
}

fn decode_fast(
    experts: &ExpertSource<'_>,
    routes: &Routes,
    y: &[f32],
    hidden: usize,
    s: &mut MoeScratch,
    out: &mut [f32],
) -> Result<MoeStats> {
    let order = expert_order(routes);
    let layer = experts.layer();
    if s.per_expert.len() < order.len() {
        s.per_expert
            .resize_with(order.len(), ExpertScratch::default);
    }
    let tasks = &mut s.per_expert[..order.len()];
    let acts = &mut s.decode_acts;
    match experts {
        ExpertSource::Resident { .. } => {
            let refs = order
                .iter()
                .map(|&e| experts.resident(e).map(Some))
                .collect::<Result<Vec<_>>>()?;
            if let Some(Some(r)) = refs.first() {
                acts.prepare(r.gate.ty, r.up.ty, y)?;
            }
            run_fast_tasks(layer, &order, &refs, acts, tasks)?;
        }
        ExpertSource::Offloaded(o) => {
            // Compute whatever has arrived, all of it in parallel; block only when nothing has.
            acts.prepare(o.shape.gate.ty, o.shape.up.ty, y)?;
            let mut pending: Vec<u32> = order.clone();
            while !pending.is_empty() {
                let mut guards: Vec<ExpertGuard<'_>> = Vec::with_capacity(pending.len());
                for &e in &pending {
                    if let Some(g) = o.prefetcher.try_wait(o.layer, e)? {
                        guards.push(g);
                    }
                }
                if guards.is_empty() {
                    guards.push(o.prefetcher.wait_any(o.layer, &pending)?);
                    for &e in &pending {
                        if e != guards[0].expert()
                            && let Some(g) = o.prefetcher.try_wait(o.layer, e)?
                        {
                            guards.push(g);
                        }
                    }
                }
                let mut refs: Vec<Option<ExpertRef<'_>>> = vec![None; order.len()];
                for g in &guards {
                    let pos = order.binary_search(&g.expert()).map_err(|_| {
                        Error::Model(format!(
                            "layer {layer}: the prefetcher returned expert {}, not requested",
                            g.expert()
                        ))
                    })?;
                    refs[pos] = Some(o.expert_ref(g)?);
                }
                run_fast_tasks(layer, &order, &refs, acts, tasks)?;
                pending.retain(|e| !guards.iter().any(|g| g.expert() == *e));
            }
        }
    }
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
