//! Monte Carlo calibration of the router and the ReGLU gates against the design's own
//! linear-Gaussian model of the residual stream.
//!
//! **Router.** At a layer whose input has seen the recency heads, expert `e`'s logit is
//! `s · (δ_e + √(1−φ)·a_e·z_t + √φ·c_e·ζ_t/σ_ζ)`: an offset `δ_e` from the constant direction,
//! plus a token part (`z_t`, i.i.d. per token) and a context part (`ζ_t`, the recency kernel's
//! average of recent `z`). `δ` sets each expert's popularity; `φ` sets how much of the noise
//! carries over from one token to the next, hence how often experts are re-selected. Both are
//! found by simulating that model over sequences that start at position 0, as the engine's
//! workloads do.
//!
//! **Gates.** Neuron `j`'s pre-activation is `N(0,1)` noise minus a threshold `τ_j` (in units of
//! the noise's standard deviation); `τ_j = τ̄ + spread·ξ_j` gives hot and cold neurons, and `τ̄`
//! makes the mean zero share hit its target.

use super::kernel::RecencyKernel;
use super::stats::{bisect, normal_quadrature, normal_tail, relu_second_moment, zipf_popularity};
use crate::rng::{Rng, key};

/// Sequences in the router simulation.
const MC_SEQS: usize = 32;
/// Tokens per simulated sequence.
const MC_LEN: usize = 256;
/// Fixed-point iterations of the offsets per evaluation of `φ`.
const DELTA_ITERS: usize = 12;
/// Damping of the offset updates.
const DELTA_STEP: f64 = 0.8;
/// Bisection steps on `φ`.
const PHI_STEPS: usize = 18;
/// Kernel taps kept when simulating `ζ` (weights beyond are below `e^-24`).
const KERNEL_TAPS: usize = 160;
/// Nodes of the quadrature over per-neuron thresholds.
const GATE_NODES: usize = 64;

/// How the router turns chosen logits into weights (for the expected `Σ w²`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// `σ(r_i) / Σ_S σ(r_j)`.
    Sigmoid,
    /// Softmax over the chosen logits.
    Softmax,
}

/// The router's calibrated constants.
#[derive(Clone, Debug)]
pub struct RouterCalibration {
    /// Offset of the expert of popularity rank `r` (index 0 = most popular), in units of the
    /// logit noise's standard deviation, at layers with context.
    pub delta: Vec<f64>,
    /// The same at layers without context (`φ = 0`).
    pub delta_no_context: Vec<f64>,
    /// Unit direction in token-feature space of each rank's token noise.
    pub token_dirs: Vec<Vec<f64>>,
    /// Unit direction in token-feature space of each rank's context noise.
    pub context_dirs: Vec<Vec<f64>>,
    /// Reuse targeted at layers with context.
    pub reuse_target_context: f64,
    /// Share of the logit noise's variance that comes from the context (`ζ`) at layers that have
    /// context.
    pub phi: f64,
    /// Reuse the simulation achieves at layers with context.
    pub reuse_context: f64,
    /// Reuse at layers without context (`φ = 0`: only popularity makes experts return).
    pub reuse_no_context: f64,
    /// Fitted Zipf exponent of the simulated popularity.
    pub zipf_exponent: f64,
    /// `E[Σ_i w_i²]` over the chosen experts' mixing weights.
    pub mean_sum_w2: f64,
}

/// What to calibrate the router for.
#[derive(Clone, Copy, Debug)]
pub struct RouterTarget {
    /// Experts per layer.
    pub n_experts: usize,
    /// Experts chosen per token.
    pub k: usize,
    /// Dimension of the token features `z`.
    pub d_token: usize,
    /// Zipf exponent of expert popularity.
    pub zipf_s: f64,
    /// Target reuse at layers with context.
    pub reuse: f64,
    /// Logit scale `s`.
    pub logit_scale: f64,
    /// Weight normalisation.
    pub gating: Gating,
}

struct Sim {
    a: Vec<Vec<f64>>,
    c: Vec<Vec<f64>>,
    e: usize,
    k: usize,
    /// Token noise `a_e · z_t`, `[token × expert]`.
    tok: Vec<f64>,
    /// Context noise `c_e · ζ_t / σ_ζ`, `[token × expert]`.
    ctx: Vec<f64>,
    n_tokens: usize,
}

struct Eval {
    freq: Vec<f64>,
    reuse: f64,
    sum_w2: f64,
}

impl Sim {
    fn new(t: &RouterTarget, kernel: &RecencyKernel, seed: u64) -> Sim {
        let (e, d) = (t.n_experts, t.d_token);
        let mut rng = Rng::new(key(seed, &[0xCA11, e as u64, d as u64]));
        let a: Vec<Vec<f64>> = (0..e).map(|_| rng.unit_vector(d)).collect();
        let c: Vec<Vec<f64>> = (0..e).map(|_| rng.unit_vector(d)).collect();
        let sigma = kernel.var.sqrt();
        let profiles: Vec<Vec<f64>> = (0..MC_LEN.min(KERNEL_TAPS))
            .map(|t| kernel.alpha_at(t))
            .collect();
        let steady: Vec<f64> = kernel.alpha_at(KERNEL_TAPS - 1);
        let n_tokens = MC_SEQS * MC_LEN;
        let mut tok = vec![0.0; n_tokens * e];
        let mut ctx = vec![0.0; n_tokens * e];
        let mut z = vec![0.0; MC_LEN * d];
        let mut zeta = vec![0.0; d];
        for s in 0..MC_SEQS {
            for v in z.iter_mut() {
                *v = rng.normal();
            }
            for ti in 0..MC_LEN {
                let prof = profiles.get(ti).unwrap_or(&steady);
                zeta.fill(0.0);
                for (dd, &w) in prof.iter().enumerate().take(ti + 1) {
                    let zr = &z[(ti - dd) * d..(ti - dd + 1) * d];
                    for (o, &x) in zeta.iter_mut().zip(zr) {
                        *o += w * x;
                    }
                }
                let row = (s * MC_LEN + ti) * e;
                let zt = &z[ti * d..(ti + 1) * d];
                for j in 0..e {
                    tok[row + j] = dot(&a[j], zt);
                    ctx[row + j] = dot(&c[j], &zeta) / sigma;
                }
            }
        }
        Sim {
            a,
            c,
            e,
            k: t.k,
            tok,
            ctx,
            n_tokens,
        }
    }

    fn eval(&self, delta: &[f64], phi: f64, scale: f64, gating: Gating) -> Eval {
        let (e, k) = (self.e, self.k);
        let (wt, wc) = ((1.0 - phi).sqrt(), phi.sqrt());
        let mut count = vec![0usize; e];
        let mut logits = vec![0.0; e];
        let mut chosen = vec![usize::MAX; k];
        let mut prev = vec![usize::MAX; k];
        let (mut shared, mut pairs) = (0usize, 0usize);
        let mut sum_w2 = 0.0;
        for t in 0..self.n_tokens {
            let row = t * e;
            for j in 0..e {
                logits[j] = delta[j] + wt * self.tok[row + j] + wc * self.ctx[row + j];
            }
            top_k(&logits, &mut chosen);
            for &c in &chosen {
                count[c] += 1;
            }
            let ws: Vec<f64> = match gating {
                Gating::Sigmoid => chosen
                    .iter()
                    .map(|&c| 1.0 / (1.0 + (-scale * logits[c]).exp()))
                    .collect(),
                Gating::Softmax => {
                    let m = scale * logits[chosen[0]];
                    chosen
                        .iter()
                        .map(|&c| (scale * logits[c] - m).exp())
                        .collect()
                }
            };
            let z: f64 = ws.iter().sum();
            sum_w2 += ws.iter().map(|w| (w / z) * (w / z)).sum::<f64>();
            if t % MC_LEN != 0 {
                shared += chosen.iter().filter(|c| prev.contains(c)).count();
                pairs += 1;
            }
            prev.copy_from_slice(&chosen);
        }
        Eval {
            freq: count
                .iter()
                .map(|&c| c as f64 / self.n_tokens as f64)
                .collect(),
            reuse: shared as f64 / (pairs * k) as f64,
            sum_w2: sum_w2 / self.n_tokens as f64,
        }
    }

    /// Adjusts `delta` in place until the popularity matches `target`.
    fn fit_delta(&self, delta: &mut [f64], target: &[f64], phi: f64, t: &RouterTarget) -> Eval {
        let floor = 0.5 / self.n_tokens as f64;
        for _ in 0..DELTA_ITERS {
            let ev = self.eval(delta, phi, t.logit_scale, t.gating);
            for j in 0..self.e {
                delta[j] += DELTA_STEP * (target[j] / ev.freq[j].max(floor)).ln();
            }
            let mean = delta.iter().sum::<f64>() / self.e as f64;
            for d in delta.iter_mut() {
                *d -= mean;
            }
        }
        self.eval(delta, phi, t.logit_scale, t.gating)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Indices of the `out.len()` largest values in descending order, ties toward the lower index.
fn top_k(v: &[f64], out: &mut [usize]) {
    let k = out.len();
    let mut n = 0;
    for (i, &x) in v.iter().enumerate() {
        if n == k && x <= v[out[k - 1]] {
            continue;
        }
        let mut pos = n.min(k - 1);
        if n < k {
            n += 1;
        }
        while pos > 0 && x > v[out[pos - 1]] {
            out[pos] = out[pos - 1];
            pos -= 1;
        }
        out[pos] = i;
    }
}

/// Calibrates the router offsets and the context share for `t`. `context_target` maps the reuse
/// of layers without context (found first) to the reuse wanted at layers with context.
pub fn calibrate_router(
    t: &RouterTarget,
    kernel: &RecencyKernel,
    seed: u64,
    context_target: impl Fn(f64) -> f64,
) -> RouterCalibration {
    let sim = Sim::new(t, kernel, seed);
    let target = zipf_popularity(t.n_experts, t.k, t.zipf_s);
    // Initial offsets: the normal quantile of each expert's share, a good start for top-k.
    let mut delta: Vec<f64> = target
        .iter()
        .map(|&p| -bisect(|x| normal_tail(x) - p.clamp(1e-6, 1.0 - 1e-6), -10.0, 10.0))
        .map(|x| -x)
        .collect();
    let base = sim.fit_delta(&mut delta, &target, 0.0, t);
    let delta_no_context = delta.clone();
    let reuse_no_context = base.reuse;
    let want = context_target(reuse_no_context);
    if t.reuse < reuse_no_context {
        tracing::warn!(
            target_reuse = t.reuse,
            floor = reuse_no_context,
            "reuse target is below what popularity alone gives; using no context"
        );
    }
    let mut phi = 0.0;
    let mut ev = base;
    if want > reuse_no_context {
        let (mut lo, mut hi) = (0.0f64, 0.995f64);
        for _ in 0..PHI_STEPS {
            let mid = 0.5 * (lo + hi);
            let e = sim.fit_delta(&mut delta, &target, mid, t);
            if e.reuse < want {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        phi = 0.5 * (lo + hi);
        ev = sim.fit_delta(&mut delta, &target, phi, t);
    }
    RouterCalibration {
        zipf_exponent: -super::stats::zipf_slope(&ev.freq, 1e-9),
        delta,
        delta_no_context,
        token_dirs: sim.a,
        context_dirs: sim.c,
        reuse_target_context: want,
        phi,
        reuse_context: ev.reuse,
        reuse_no_context,
        mean_sum_w2: ev.sum_w2,
    }
}

/// The ReGLU gates' calibrated constants.
#[derive(Clone, Debug)]
pub struct GateCalibration {
    /// Mean threshold `τ̄` in noise standard deviations.
    pub tau_mean: f64,
    /// Spread of per-neuron thresholds.
    pub tau_spread: f64,
    /// `E[relu(Z − τ)²]` averaged over neurons (sizes the expert output).
    pub relu_moment: f64,
    /// Zero share the thresholds give.
    pub zero_share: f64,
}

/// Finds `τ̄` so that the mean of `P(Z > τ̄ + spread·ξ)` over neurons is `1 − zero_share`.
pub fn calibrate_gates(zero_share: f64, spread: f64) -> GateCalibration {
    let xi = normal_quadrature(GATE_NODES);
    let active =
        |m: f64| xi.iter().map(|&x| normal_tail(m + spread * x)).sum::<f64>() / xi.len() as f64;
    let want = 1.0 - zero_share;
    let tau_mean = bisect(|m| active(m) - want, -20.0, 20.0);
    let relu_moment = xi
        .iter()
        .map(|&x| relu_second_moment(tau_mean + spread * x))
        .sum::<f64>()
        / xi.len() as f64;
    GateCalibration {
        tau_mean,
        tau_spread: spread,
        relu_moment,
        zero_share: 1.0 - active(tau_mean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calibration accuracy required of the simulation itself.
    const REUSE_TOL: f64 = 0.01;
    const ZIPF_TOL: f64 = 0.05;

    #[test]
    fn router_hits_targets_in_its_own_model() {
        let kernel = RecencyKernel::design(128, 1.5e6, 0.7, 4096);
        for (e, k) in [(32, 4), (64, 6), (8, 2)] {
            let t = RouterTarget {
                n_experts: e,
                k,
                d_token: 32,
                zipf_s: 0.8,
                reuse: 0.45,
                logit_scale: 1.0,
                gating: Gating::Sigmoid,
            };
            let c = calibrate_router(&t, &kernel, 1, |_| 0.45);
            eprintln!(
                "E{e} k{k}: phi {:.3} reuse {:.3} (no ctx {:.3}) zipf {:.3} Σw² {:.3} δ {:?}",
                c.phi,
                c.reuse_context,
                c.reuse_no_context,
                c.zipf_exponent,
                c.mean_sum_w2,
                c.delta
                    .iter()
                    .map(|d| (d * 100.0).round() / 100.0)
                    .collect::<Vec<_>>()
            );
            assert!((c.reuse_context - 0.45).abs() < REUSE_TOL);
            assert!((c.zipf_exponent - 0.8).abs() < ZIPF_TOL);
        }
    }

    #[test]
    fn gates_hit_the_zero_share() {
        for spread in [0.0, 0.5, 1.0] {
            let g = calibrate_gates(0.8, spread);
            assert!((g.zero_share - 0.8).abs() < 1e-6);
            if spread == 0.0 {
                assert!((g.tau_mean - 0.841_621).abs() < 1e-4);
            }
        }
    }
}
