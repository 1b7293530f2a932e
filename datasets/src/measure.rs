//! Measuring what a model does, with the engine's own forward pass: expert popularity (and its
//! fitted Zipf exponent), how often a token re-selects the previous token's experts, the share
//! of exactly-zero ReGLU activations, and the health of the residual stream.

use engine::model::{Logits, Model, Observer, Probe, Session, SessionConfig};
use engine::moe::{MoeStats, Routes};

use crate::design::stats::zipf_slope;
use crate::error::Result;

/// Routing and sparsity statistics, per layer.
#[derive(Clone, Debug)]
pub struct RoutingStats {
    /// Experts per layer.
    pub n_experts: usize,
    /// Experts chosen per token.
    pub k: usize,
    /// `counts[l][e]`: tokens that chose expert `e` at layer `l`.
    pub counts: Vec<Vec<u64>>,
    /// The same counted over every second sequence only (for the split-half estimate).
    pub counts_odd: Vec<Vec<u64>>,
    /// Tokens routed per layer in those sequences.
    pub tokens_odd: Vec<u64>,
    /// Tokens routed per layer.
    pub tokens: Vec<u64>,
    /// Experts shared with the previous position's choice, summed per layer.
    pub shared: Vec<u64>,
    /// Consecutive position pairs seen per layer.
    pub pairs: Vec<u64>,
    /// ReGLU neurons evaluated per layer.
    pub neurons: Vec<u64>,
    /// Of those, neurons with a positive gate.
    pub active: Vec<u64>,
    /// Largest residual RMS seen leaving each layer.
    pub max_rms: Vec<f64>,
    /// Sum of residual RMS leaving each layer (divide by `tokens` for the mean).
    pub sum_rms: Vec<f64>,
    /// Whether any non-finite value left any layer.
    pub non_finite: bool,
}

impl RoutingStats {
    /// Empty statistics for a model.
    pub fn new(n_layers: usize, n_experts: usize, k: usize) -> RoutingStats {
        RoutingStats {
            n_experts,
            k,
            counts: vec![vec![0; n_experts]; n_layers],
            counts_odd: vec![vec![0; n_experts]; n_layers],
            tokens_odd: vec![0; n_layers],
            tokens: vec![0; n_layers],
            shared: vec![0; n_layers],
            pairs: vec![0; n_layers],
            neurons: vec![0; n_layers],
            active: vec![0; n_layers],
            max_rms: vec![0.0; n_layers],
            sum_rms: vec![0.0; n_layers],
            non_finite: false,
        }
    }

    /// Layers.
    pub fn n_layers(&self) -> usize {
        self.tokens.len()
    }

    /// Selection frequency of each expert at layer `l` (sums to `k`).
    pub fn frequencies(&self, l: usize) -> Vec<f64> {
        let n = self.tokens[l].max(1) as f64;
        self.counts[l].iter().map(|&c| c as f64 / n).collect()
    }

    /// Fitted Zipf exponent of layer `l`'s popularity (`-slope` of log frequency on log rank).
    pub fn zipf_exponent(&self, l: usize) -> f64 {
        let floor = 0.5 / self.tokens[l].max(1) as f64;
        -zipf_slope(&self.frequencies(l), floor)
    }

    /// Mean fitted Zipf exponent over layers.
    pub fn mean_zipf_exponent(&self) -> f64 {
        let n = self.n_layers();
        (0..n).map(|l| self.zipf_exponent(l)).sum::<f64>() / n.max(1) as f64
    }

    /// Split-half Zipf exponent of layer `l`: experts ranked by their frequency in one half of
    /// the sequences, frequencies taken from the other half (both ways, averaged). Sorting a
    /// sample by its own noisy frequencies steepens the fit ([`RoutingStats::zipf_exponent`] is
    /// biased up on small samples); ranking on independent data removes that bias (and, with
    /// noisy ranks, leans slightly the other way). `None` without sequences in both halves.
    pub fn zipf_exponent_split(&self, l: usize) -> Option<f64> {
        let (na, nb) = (self.tokens[l] - self.tokens_odd[l], self.tokens_odd[l]);
        if na == 0 || nb == 0 {
            return None;
        }
        let fa: Vec<f64> = (0..self.n_experts)
            .map(|e| (self.counts[l][e] - self.counts_odd[l][e]) as f64 / na as f64)
            .collect();
        let fb: Vec<f64> = (0..self.n_experts)
            .map(|e| self.counts_odd[l][e] as f64 / nb as f64)
            .collect();
        let floor = 0.5 / na.min(nb) as f64;
        let cross = |rank_by: &[f64], values: &[f64]| {
            let mut order: Vec<usize> = (0..self.n_experts).collect();
            order.sort_by(|&a, &b| rank_by[b].total_cmp(&rank_by[a]).then(a.cmp(&b)));
            let v: Vec<f64> = order.iter().map(|&e| values[e]).collect();
            -crate::design::stats::log_log_slope(&v, floor)
        };
        Some(0.5 * (cross(&fa, &fb) + cross(&fb, &fa)))
    }

    /// Mean split-half Zipf exponent over layers (see [`RoutingStats::zipf_exponent_split`]).
    pub fn mean_zipf_exponent_split(&self) -> Option<f64> {
        let v: Option<Vec<f64>> = (0..self.n_layers())
            .map(|l| self.zipf_exponent_split(l))
            .collect();
        v.map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
    }

    /// Share of layer `l`'s chosen experts that the previous position also chose.
    pub fn reuse(&self, l: usize) -> f64 {
        self.shared[l] as f64 / (self.pairs[l].max(1) * self.k as u64) as f64
    }

    /// Reuse over all layers.
    pub fn mean_reuse(&self) -> f64 {
        let s: u64 = self.shared.iter().sum();
        let p: u64 = self.pairs.iter().sum();
        s as f64 / (p.max(1) * self.k as u64) as f64
    }

    /// Share of exactly-zero ReGLU activations at layer `l`.
    pub fn zero_share(&self, l: usize) -> f64 {
        1.0 - self.active[l] as f64 / self.neurons[l].max(1) as f64
    }

    /// Zero share over all layers.
    pub fn mean_zero_share(&self) -> f64 {
        let a: u64 = self.active.iter().sum();
        let n: u64 = self.neurons.iter().sum();
        1.0 - a as f64 / n.max(1) as f64
    }

    /// Mean residual RMS leaving layer `l`.
    pub fn mean_rms(&self, l: usize) -> f64 {
        self.sum_rms[l] / self.tokens[l].max(1) as f64
    }

    /// Share of tokens that chose the most popular expert of layer `l`.
    pub fn top_share(&self, l: usize) -> f64 {
        self.frequencies(l).into_iter().fold(0.0, f64::max)
    }

    /// A per-layer table (layer, zipf, reuse, zero share, top share, max rms).
    pub fn table(&self) -> String {
        let mut s = String::from("layer  zipf   zipf×  reuse  zero   top    rms    max_rms\n");
        let split = |v: Option<f64>| v.map_or_else(|| "  -  ".to_string(), |z| format!("{z:.3}"));
        for l in 0..self.n_layers() {
            s.push_str(&format!(
                "{l:>5}  {:.3}  {}  {:.3}  {:.3}  {:.3}  {:.2}  {:.2}\n",
                self.zipf_exponent(l),
                split(self.zipf_exponent_split(l)),
                self.reuse(l),
                self.zero_share(l),
                self.top_share(l),
                self.mean_rms(l),
                self.max_rms[l]
            ));
        }
        s.push_str(&format!(
            "  all  {:.3}  {}  {:.3}  {:.3}\n",
            self.mean_zipf_exponent(),
            split(self.mean_zipf_exponent_split()),
            self.mean_reuse(),
            self.mean_zero_share()
        ));
        s
    }
}

/// An [`Observer`] that accumulates [`RoutingStats`].
pub struct StatsObserver {
    /// The statistics so far.
    pub stats: RoutingStats,
    hidden: usize,
    /// Per layer: the last position seen and its experts.
    prev: Vec<Option<(usize, Vec<u32>)>>,
    /// Sequences started so far.
    sequences: usize,
}

impl StatsObserver {
    /// An observer for a model with these dimensions.
    pub fn new(n_layers: usize, n_experts: usize, k: usize, hidden: usize) -> StatsObserver {
        StatsObserver {
            stats: RoutingStats::new(n_layers, n_experts, k),
            hidden,
            prev: vec![None; n_layers],
            sequences: 0,
        }
    }

    /// Forgets the previous positions (a new sequence starts).
    pub fn new_sequence(&mut self) {
        self.prev.iter_mut().for_each(|p| *p = None);
        self.sequences += 1;
    }
}

impl Observer for StatsObserver {
    fn wants(&self, probe: Probe) -> bool {
        probe == Probe::LayerOut
    }

    fn tensor(
        &mut self,
        probe: Probe,
        layer: Option<usize>,
        _pos0: usize,
        _n: usize,
        data: &[f32],
    ) {
        if probe != Probe::LayerOut {
            return;
        }
        let Some(l) = layer else { return };
        for row in data.chunks(self.hidden) {
            let ms = row.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / row.len() as f64;
            if !ms.is_finite() {
                self.stats.non_finite = true;
            }
            self.stats.max_rms[l] = self.stats.max_rms[l].max(ms.sqrt());
            self.stats.sum_rms[l] += ms.sqrt();
        }
    }

    fn routes(&mut self, layer: usize, pos0: usize, routes: &Routes) {
        let st = &mut self.stats;
        for t in 0..routes.n_tokens() {
            let ids = routes.ids_of(t);
            let pos = pos0 + t;
            let odd = self.sequences.is_multiple_of(2);
            for &e in ids {
                if let Some(c) = st.counts[layer].get_mut(e as usize) {
                    *c += 1;
                }
                if odd && let Some(c) = st.counts_odd[layer].get_mut(e as usize) {
                    *c += 1;
                }
            }
            st.tokens[layer] += 1;
            if odd {
                st.tokens_odd[layer] += 1;
            }
            if let Some((p, prev)) = &self.prev[layer]
                && *p + 1 == pos
            {
                st.shared[layer] += ids.iter().filter(|e| prev.contains(e)).count() as u64;
                st.pairs[layer] += 1;
            }
            self.prev[layer] = Some((pos, ids.to_vec()));
        }
    }

    fn moe_stats(&mut self, layer: usize, s: &MoeStats) {
        self.stats.neurons[layer] += s.n_neurons;
        self.stats.active[layer] += s.n_active;
    }
}

/// Runs each prompt (prefill, then `decode` greedy steps fed back one at a time) and returns
/// the statistics over all positions, together with the generated tokens of each sequence.
pub fn measure(
    model: &Model,
    prompts: &[Vec<u32>],
    decode: usize,
) -> Result<(RoutingStats, Vec<Vec<u32>>)> {
    let c = &model.config;
    let mut obs = StatsObserver::new(c.n_layers, c.n_experts, c.n_experts_used, c.hidden);
    let mut generated = Vec::with_capacity(prompts.len());
    for p in prompts {
        obs.new_sequence();
        let mut session = Session::new(
            model,
            SessionConfig {
                max_positions: p.len() + decode + 1,
                ..SessionConfig::default()
            },
        )?;
        let want = if decode > 0 {
            Logits::Last
        } else {
            Logits::None
        };
        let mut logits = session.forward_observed(p, want, Some(&mut obs))?;
        let mut out = Vec::with_capacity(decode);
        for _ in 0..decode {
            let next = engine::sampler::argmax_logits(&logits).unwrap_or(0) as u32;
            out.push(next);
            logits = session.forward_observed(&[next], Logits::Last, Some(&mut obs))?;
        }
        generated.push(out);
    }
    Ok((obs.stats, generated))
}
