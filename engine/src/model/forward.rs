//! The forward pass: a [`Session`] owns a KV cache and scratch buffers and runs batches of
//! tokens (prefill) or single tokens (decode) through the model.
//!
//! Per layer, in the order the architecture fixes:
//! 1. the router reads the residual *entering* the layer and picks the experts (this is what
//!    lets an offloading engine fetch them while attention runs);
//! 2. `input_layernorm` → q/k/v → RoPE (RoPE layers only) → KV cache → attention (causal, or
//!    sliding-window) → `o_proj`, added to the residual;
//! 3. `post_attention_layernorm` → the chosen ReGLU experts, mixed by the router weights, added.
//!
//! Intermediate tensors and routing decisions can be observed through an [`Observer`].

use tracing::{Level, debug_span, event};

use super::Model;
use super::linear::{LinearScratch, matmul, matmul3};
use super::ops::{rms_norm, route};
use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvCacheConfig, KvType};
use crate::moe::{ExpertSource, MoeScratch, MoeStats, OffloadedLayer, Routes, moe_forward};
use crate::offload::Priority;

/// Largest step (in tokens) for which the next layer's experts are guessed and prefetched: a
/// prompt batch routes to most experts anyway, and its guesses would only churn the cache.
const SPECULATE_MAX_TOKENS: usize = 1;

/// Which logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (prefill whose output is not needed).
    None,
    /// Only the last token's row.
    Last,
    /// One row per token.
    All,
}

/// Whether a call is a prompt batch or a single generated token (for spans and statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Several tokens at once.
    Prefill,
    /// One token through the cache.
    Decode,
}

impl Phase {
    /// The `phase` field of the `forward` span: `"prefill"` or `"decode"`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

/// An intermediate tensor an [`Observer`] may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Token embeddings `[n × hidden]` (layer `None`).
    Embeddings,
    /// Router logits `[n × n_experts]` of a layer.
    RouterLogits,
    /// Attention output after `o_proj`, before the residual add `[n × hidden]`.
    AttnOut,
    /// MoE output before the residual add `[n × hidden]`.
    MoeOut,
    /// Residual leaving a layer `[n × hidden]`.
    LayerOut,
    /// Final RMSNorm output `[n × hidden]` (layer `None`).
    FinalNorm,
}

/// Receives intermediate tensors and routing decisions during a forward call.
///
/// Every method has an empty default; tensors are only materialised for probes where
/// [`Observer::wants`] returns true.
pub trait Observer: Send {
    /// Whether `probe` should be reported.
    fn wants(&self, _probe: Probe) -> bool {
        true
    }
    /// A tensor for positions `pos0 .. pos0 + n_tokens`, row-major per token.
    fn tensor(
        &mut self,
        _probe: Probe,
        _layer: Option<usize>,
        _pos0: usize,
        _n_tokens: usize,
        _data: &[f32],
    ) {
    }
    /// The experts chosen at `layer` for positions `pos0 ..`.
    fn routes(&mut self, _layer: usize, _pos0: usize, _routes: &Routes) {}
    /// MoE statistics of one layer and call.
    fn moe_stats(&mut self, _layer: usize, _stats: &MoeStats) {}
}

/// Session limits.
#[derive(Clone, Copy, Debug)]
pub struct SessionConfig {
    /// Maximum context (positions) the session may hold; 0 means the model's context length.
    pub max_positions: usize,
    /// Largest batch processed at once; longer prompts are split.
    pub max_batch: usize,
    /// KV cache element type.
    pub kv_type: KvType,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_positions: 4096,
            max_batch: 256,
            kv_type: KvType::F32,
        }
    }
}

/// Scratch buffers, sized for the largest batch, reused across calls.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    rl: Vec<f32>,
    moe: Vec<f32>,
    lin: LinearScratch,
    cos: Vec<f32>,
    sin: Vec<f32>,
    routes: Routes,
    moe_scratch: MoeScratch,
    /// Distinct experts of the current layer, ascending (offload).
    distinct: Vec<u32>,
    /// The next layer's router on the current residual, and its choice (speculation).
    spec_rl: Vec<f32>,
    spec_routes: Routes,
    spec_distinct: Vec<u32>,
}

/// Scratch bytes a session of `config` needs for steps of up to `max_batch` tokens (activations,
/// router logits, expert products, one row of logits), for memory planning.
pub fn scratch_bytes(config: &super::ModelConfig, max_batch: usize) -> u64 {
    let c = config;
    let n = max_batch.max(1) as u64;
    let per_token = 6 * c.hidden
        + 3 * c.q_dim()
        + 2 * c.kv_dim()
        + 2 * c.n_experts
        + 3 * c.expert_ffn
        + (c.n_experts_used + 1) * c.hidden;
    // f32 everywhere; logits of the last row twice (output and sampler copy); 2 MiB slack for
    // small per-thread buffers (attention tiles: ~0.3 MiB each).
    n * per_token as u64 * 4 + 2 * c.vocab_size as u64 * 4 + (2 << 20)
}

/// Sorted distinct ids of `ids` into `out`.
fn distinct_into(ids: &[u32], out: &mut Vec<u32>) {
    out.clear();
    out.extend_from_slice(ids);
    out.sort_unstable();
    out.dedup();
}

/// A generation session: the model, a KV cache and the position reached.
pub struct Session<'m> {
    model: &'m Model,
    kv: KvCache,
    cfg: SessionConfig,
    s: Scratch,
    /// Cumulative MoE statistics.
    moe_totals: MoeStats,
}

impl<'m> Session<'m> {
    /// A new, empty session.
    pub fn new(model: &'m Model, mut cfg: SessionConfig) -> Result<Session<'m>> {
        if cfg.max_positions == 0 {
            cfg.max_positions = model.config.context_length.max(1);
        }
        cfg.max_batch = cfg.max_batch.clamp(1, cfg.max_positions);
        if let Some(o) = model.offload() {
            let want =
                super::offload::plan_kv_bytes(&model.config, cfg.max_positions, cfg.max_batch)?;
            if want > o.kv_allowance() {
                return Err(Error::InvalidInput(format!(
                    "a session of {} positions needs {} B of KV cache, but the memory budget planned {} B (for {} positions); use a smaller context or load with a larger context/budget",
                    cfg.max_positions,
                    want,
                    o.plan().input.kv_bytes,
                    o.options().context
                )));
            }
        }
        let kv = KvCache::new(
            &model.config,
            KvCacheConfig {
                max_positions: cfg.max_positions,
                max_batch: cfg.max_batch,
                dtype: cfg.kv_type,
            },
        )?;
        Ok(Session {
            model,
            kv,
            cfg,
            s: Scratch::default(),
            moe_totals: MoeStats::default(),
        })
    }

    /// Positions already in the cache.
    pub fn pos(&self) -> usize {
        self.kv.len()
    }

    /// The model this session runs.
    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// The KV cache (for memory accounting).
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// The session's limits.
    pub fn config(&self) -> SessionConfig {
        self.cfg
    }

    /// MoE statistics accumulated since the session began.
    pub fn moe_totals(&self) -> MoeStats {
        self.moe_totals
    }

    /// Forgets the context.
    pub fn reset(&mut self) {
        self.kv.clear();
    }

    /// Runs `tokens` at the next positions and returns the requested logits
    /// (`[rows × vocab]`, rows as [`Logits`] says).
    pub fn forward(&mut self, tokens: &[u32], logits: Logits) -> Result<Vec<f32>> {
        self.forward_observed(tokens, logits, None)
    }

    /// [`Session::forward`] with an observer.
    pub fn forward_observed(
        &mut self,
        tokens: &[u32],
        logits: Logits,
        mut obs: Option<&mut (dyn Observer + '_)>,
    ) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidInput("no tokens to process".into()));
        }
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        if self.kv.len() + tokens.len() > self.cfg.max_positions {
            return Err(Error::InvalidInput(format!(
                "context full: {} + {} positions exceed the session limit of {}",
                self.kv.len(),
                tokens.len(),
                self.cfg.max_positions
            )));
        }
        let mut out = Vec::new();
        let chunks: Vec<&[u32]> = tokens.chunks(self.cfg.max_batch).collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let want = match logits {
                Logits::All => Logits::All,
                Logits::Last if i == last => Logits::Last,
                _ => Logits::None,
            };
            let rows = self.forward_batch(chunk, want, obs.as_deref_mut())?;
            out.extend_from_slice(&rows);
        }
        Ok(out)
    }

    fn forward_batch<'o>(
        &mut self,
        tokens: &[u32],
        logits: Logits,
        mut obs: Option<&mut (dyn Observer + 'o)>,
    ) -> Result<Vec<f32>> {
        let model = self.model;
        let c = &model.config;
        let w = &model.weights;
        let n = tokens.len();
        let pos0 = self.kv.len();
        self.kv.check_room(n)?;
        let phase = if n == 1 {
            Phase::Decode
        } else {
            Phase::Prefill
        };
        // Field names and values as `docs/spans.md` lists them (the profiler matches on them).
        let _fwd =
            debug_span!("forward", token = pos0, n_tokens = n, phase = phase.name()).entered();
        let (hd, qd, kvd) = (c.hidden, c.q_dim(), c.kv_dim());
        let s = &mut self.s;
        s.x.resize(n * hd, 0.0);
        s.h.resize(n * hd, 0.0);
        s.q.resize(n * qd, 0.0);
        s.k.resize(n * kvd, 0.0);
        s.v.resize(n * kvd, 0.0);
        s.att.resize(n * qd, 0.0);
        s.o.resize(n * hd, 0.0);
        s.rl.resize(n * c.n_experts, 0.0);
        s.moe.resize(n * hd, 0.0);
        s.cos.resize(c.head_dim / 2, 0.0);
        s.sin.resize(c.head_dim / 2, 0.0);
        let wants = |obs: &Option<&mut (dyn Observer + 'o)>, p: Probe| {
            obs.as_ref().map(|o| o.wants(p)).unwrap_or(false)
        };

        {
            let _sp = debug_span!("compute.embed", n_tokens = n).entered();
            for (t, &id) in tokens.iter().enumerate() {
                w.embed
                    .dequantize_row(id as usize, &mut s.x[t * hd..(t + 1) * hd])?;
            }
        }
        if wants(&obs, Probe::Embeddings)
            && let Some(o) = obs.as_deref_mut()
        {
            o.tensor(Probe::Embeddings, None, pos0, n, &s.x);
        }

        model.pool.install(|| -> Result<()> {
            for (l, lw) in w.layers.iter().enumerate() {
                let kind = c.layers[l];
                // 1. Router on the residual entering the layer.
                {
                    let _sp = debug_span!("compute.router", layer = l).entered();
                    matmul(&lw.router, &s.x, n, &mut s.rl, model.mode, &mut s.lin)?;
                    let k = c.n_experts_used;
                    s.routes.k = k;
                    s.routes.ids.resize(n * k, 0);
                    s.routes.weights.resize(n * k, 0.0);
                    for t in 0..n {
                        route(
                            &s.rl[t * c.n_experts..(t + 1) * c.n_experts],
                            k,
                            c.gating,
                            &mut s.routes.ids[t * k..(t + 1) * k],
                            &mut s.routes.weights[t * k..(t + 1) * k],
                        );
                    }
                }
                if tracing::enabled!(target: "engine::routing", Level::DEBUG) {
                    for t in 0..n {
                        let ids = s.routes.ids_of(t);
                        let ws = &s.routes.weights[t * s.routes.k..(t + 1) * s.routes.k];
                        event!(
                            target: "engine::routing",
                            Level::DEBUG,
                            token = pos0 + t,
                            layer = l,
                            experts = join(ids.iter()).as_str(),
                            weights = join(ws.iter()).as_str(),
                            "route"
                        );
                    }
                }
                if let Some(o) = obs.as_deref_mut() {
                    if o.wants(Probe::RouterLogits) {
                        o.tensor(Probe::RouterLogits, Some(l), pos0, n, &s.rl);
                    }
                    o.routes(l, pos0, &s.routes);
                }
                // 1b. Offload: ask for the chosen experts now, so they are read while attention
                // runs; guess the next layer's from the same residual and prefetch those.
                if let Some(off) = model.offload() {
                    let pf = off.prefetcher();
                    distinct_into(&s.routes.ids, &mut s.distinct);
                    off.routed(l, &s.distinct);
                    if off.options().speculative {
                        pf.cancel_prefetch(l as u32, &s.distinct);
                    }
                    if off.options().prefetch {
                        pf.request(l as u32, &s.distinct, Priority::Demand)?;
                    }
                    let ahead = if off.options().speculative && n <= SPECULATE_MAX_TOKENS {
                        off.options().lookahead.max(1)
                    } else {
                        0
                    };
                    for next in l + 1..(l + 1 + ahead).min(c.n_layers) {
                        let _sp = debug_span!("compute.router", layer = next, speculative = true)
                            .entered();
                        let k = c.n_experts_used;
                        s.spec_rl.resize(n * c.n_experts, 0.0);
                        matmul(
                            &w.layers[next].router,
                            &s.x,
                            n,
                            &mut s.spec_rl,
                            model.mode,
                            &mut s.lin,
                        )?;
                        s.spec_routes.k = k;
                        s.spec_routes.ids.resize(n * k, 0);
                        s.spec_routes.weights.resize(n * k, 0.0);
                        for t in 0..n {
                            route(
                                &s.spec_rl[t * c.n_experts..(t + 1) * c.n_experts],
                                k,
                                c.gating,
                                &mut s.spec_routes.ids[t * k..(t + 1) * k],
                                &mut s.spec_routes.weights[t * k..(t + 1) * k],
                            );
                        }
                        distinct_into(&s.spec_routes.ids, &mut s.spec_distinct);
                        off.guessed(next, &s.spec_distinct);
                        pf.request(next as u32, &s.spec_distinct, Priority::Prefetch)?;
                    }
                }

                // 2. Attention.
                {
                    let _sp = debug_span!("compute.attention", layer = l, n_tokens = n).entered();
                    for t in 0..n {
                        rms_norm(
                            &s.x[t * hd..(t + 1) * hd],
                            &lw.attn_norm,
                            c.rms_eps,
                            &mut s.h[t * hd..(t + 1) * hd],
                        );
                    }
                    matmul3(
                        [&lw.wq, &lw.wk, &lw.wv],
                        &s.h,
                        n,
                        [&mut s.q, &mut s.k, &mut s.v],
                        model.mode,
                        &mut s.lin,
                    )?;
                    if kind.rope {
                        for t in 0..n {
                            let p = pos0 + t;
                            model.rope.apply(
                                &mut s.q[t * qd..(t + 1) * qd],
                                c.head_dim,
                                p,
                                &mut s.cos,
                                &mut s.sin,
                            );
                            model.rope.apply(
                                &mut s.k[t * kvd..(t + 1) * kvd],
                                c.head_dim,
                                p,
                                &mut s.cos,
                                &mut s.sin,
                            );
                        }
                    }
                    {
                        let _kv = debug_span!("kv.append", layer = l, n_tokens = n).entered();
                        for t in 0..n {
                            self.kv.store(
                                l,
                                pos0 + t,
                                &s.k[t * kvd..(t + 1) * kvd],
                                &s.v[t * kvd..(t + 1) * kvd],
                            )?;
                        }
                    }
                    super::attention::attend(
                        &self.kv,
                        l,
                        &s.q,
                        pos0,
                        n,
                        super::attention::Heads {
                            n_heads: c.n_heads,
                            n_kv_heads: c.n_kv_heads,
                            head_dim: c.head_dim,
                        },
                        &mut s.att,
                    )?;
                    matmul(&lw.wo, &s.att, n, &mut s.o, model.mode, &mut s.lin)?;
                }
                if wants(&obs, Probe::AttnOut)
                    && let Some(o) = obs.as_deref_mut()
                {
                    o.tensor(Probe::AttnOut, Some(l), pos0, n, &s.o);
                }
                for (x, &a) in s.x.iter_mut().zip(&s.o) {
                    *x += a;
                }

                // 3. Experts.
                {
                    let _sp = debug_span!("compute.experts", layer = l, n_tokens = n).entered();
                    for t in 0..n {
                        rms_norm(
                            &s.x[t * hd..(t + 1) * hd],
                            &lw.ffn_norm,
                            c.rms_eps,
                            &mut s.h[t * hd..(t + 1) * hd],
                        );
                    }
                    let source = match model.offload() {
                        Some(off) => {
                            let shape = lw
                                .experts
                                .first()
                                .ok_or_else(|| Error::Model(format!("layer {l} has no experts")))?;
                            if !off.options().prefetch {
                                off.prefetcher().request(
                                    l as u32,
                                    &s.distinct,
                                    Priority::Demand,
                                )?;
                            }
                            ExpertSource::Offloaded(OffloadedLayer {
                                prefetcher: off.prefetcher(),
                                layer: l as u32,
                                shape,
                                planes: off.planes(l),
                                gate_x8: off.gate_x8(l),
                            })
                        }
                        None => ExpertSource::Resident {
                            layer: l,
                            experts: &lw.experts,
                        },
                    };
                    let res = moe_forward(
                        source,
                        &s.routes,
                        &s.h,
                        hd,
                        model.mode,
                        &mut s.moe_scratch,
                        &mut s.moe,
                    );
                    if let Some(off) = model.offload() {
                        let pf = off.prefetcher();
                        pf.release(l as u32);
                        // The last token's router scores: a hint for the layer's next visit.
                        let e = c.n_experts;
                        if let Some(last) = s.rl.get((n - 1) * e..n * e) {
                            pf.hint(l as u32, last);
                        }
                    }
                    let stats = res?;
                    self.moe_totals.add(&stats);
                    event!(
                        target: "engine::moe",
                        Level::DEBUG,
                        layer = l,
                        active = stats.n_active,
                        total = stats.n_neurons,
                        bytes_skipped = stats.bytes_skipped,
                        "sparsity"
                    );
                    if let Some(o) = obs.as_deref_mut() {
                        o.moe_stats(l, &stats);
                    }
                }
                if wants(&obs, Probe::MoeOut)
                    && let Some(o) = obs.as_deref_mut()
                {
                    o.tensor(Probe::MoeOut, Some(l), pos0, n, &s.moe);
                }
                for (x, &m) in s.x.iter_mut().zip(&s.moe) {
                    *x += m;
                }
                if wants(&obs, Probe::LayerOut)
                    && let Some(o) = obs.as_deref_mut()
                {
                    o.tensor(Probe::LayerOut, Some(l), pos0, n, &s.x);
                }
            }
            Ok(())
        })?;
        self.kv.advance(n);
        if tracing::enabled!(target: "engine::kv", Level::DEBUG) {
            // One event per layer: the profiler's KV analysis (kv.csv) groups them per step.
            let last = self.kv.len().saturating_sub(1);
            for l in 0..c.n_layers {
                let (lo, hi) = self.kv.visible_range(l, last);
                let kind = if self.kv.is_sliding(l) {
                    "sliding"
                } else {
                    "global"
                };
                event!(
                    target: "engine::kv",
                    Level::DEBUG,
                    layer = l,
                    kind,
                    allocated_bytes = self.kv.layer_bytes(l) as u64,
                    n_positions = (hi + 1 - lo) as u64,
                    "kv_bytes"
                );
            }
        }

        let want_final = wants(&obs, Probe::FinalNorm);
        let (first, rows) = match logits {
            Logits::None if !want_final => return Ok(Vec::new()),
            Logits::None | Logits::All => (0, n),
            Logits::Last if want_final => (0, n),
            Logits::Last => (n - 1, 1),
        };
        for t in first..first + rows {
            rms_norm(
                &s.x[t * hd..(t + 1) * hd],
                &w.output_norm,
                c.rms_eps,
                &mut s.h[t * hd..(t + 1) * hd],
            );
        }
        if want_final && let Some(o) = obs {
            o.tensor(Probe::FinalNorm, None, pos0, n, &s.h);
        }
        let (first, rows) = match logits {
            Logits::None => return Ok(Vec::new()),
            Logits::All => (0, n),
            Logits::Last => (n - 1, 1),
        };
        let _sp = debug_span!("compute.lm_head", n_tokens = rows).entered();
        let mut out = vec![0f32; rows * vocab_rows(model)];
        model.pool.install(|| {
            matmul(
                &w.lm_head,
                &s.h[first * hd..(first + rows) * hd],
                rows,
                &mut out,
                model.mode,
                &mut s.lin,
            )
        })?;
        Ok(out)
    }
}

fn vocab_rows(model: &Model) -> usize {
    model.weights.lm_head.rows
}

fn join<T: std::fmt::Display>(it: impl Iterator<Item = T>) -> String {
    let mut s = String::new();
    for (i, v) in it.enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&v.to_string());
    }
    s
}
