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
        let mut s = String::from("layer  zipf   reuse  zero   top    rms    max_rms\n");
        for l in 0..self.n_layers() {
            s.push_str(&format!(
                "{l:>5}  {:.3}  {:.3}  {:.3}  {:.3}  {:.2}  {:.2}\n",
                self.zipf_exponent(l),
                self.reuse(l),
                self.zero_share(l),
                self.top_share(l),
                self.mean_rms(l),
                self.max_rms[l]
            ));
        }
        s.push_str(&format!(
            "  all  {:.3}  {:.3}  {:.3}\n",
            self.mean_zipf_exponent(),
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
}

impl StatsObserver {
    /// An observer for a model with these dimensions.
    pub fn new(n_layers: usize, n_experts: usize, k: usize, hidden: usize) -> StatsObserver {
        StatsObserver {
            stats: RoutingStats::new(n_layers, n_experts, k),
            hidden,
            prev: vec![None; n_layers],
        }
    }

    /// Forgets the previous positions (a new sequence starts).
    pub fn new_sequence(&mut self) {
        self.prev.iter_mut().for_each(|p| *p = None);
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
            for &e in ids {
                if let Some(c) = st.counts[layer].get_mut(e as usize) {
                    *c += 1;
                }
            }
            st.tokens[layer] += 1;
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
