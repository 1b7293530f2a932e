//! Token sampling: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeded.
//!
//! The order of operations follows llama.cpp's default chain: repetition penalty over the recent
//! window, top-k, top-p, min-p, temperature, then a draw from the renormalised distribution.
//! Temperature 0 (or `top_k == 1`) is greedy, ties going to the lower id. The generator is a
//! self-contained xoshiro256** seeded through SplitMix64, so a seed reproduces the same tokens on
//! every platform and build.

use crate::error::{Error, Result};

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 is greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` × the top probability (0: none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens by this (1: off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0x5eed,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding.
    pub fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            top_k: 1,
            ..SamplerConfig::default()
        }
    }

    /// Checks the settings are meaningful.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidInput(format!("sampler: {what}")));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min-p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad(format!(
                "repeat penalty {} must be > 0",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// xoshiro256** (Blackman & Vigna), seeded by SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in `[0, 1)` with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sampler with its own random state and recent-token history.
#[derive(Clone, Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    history: Vec<u32>,
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler; fails on meaningless settings.
    pub fn new(cfg: SamplerConfig) -> Result<Sampler> {
        cfg.validate()?;
        Ok(Sampler {
            rng: Rng::new(cfg.seed),
            cfg,
            history: Vec::new(),
            cand: Vec::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Records tokens (e.g. the prompt) for the repetition penalty.
    pub fn accept(&mut self, tokens: &[u32]) {
        self.history.extend_from_slice(tokens);
        let keep = self.cfg.repeat_last_n.max(1) * 4;
        if self.history.len() > keep {
            let cut = self.history.len() - self.cfg.repeat_last_n;
            self.history.drain(..cut);
        }
    }

    /// Picks the next token from one row of logits and records it.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::InvalidInput("sampler: empty logits".into()));
        }
        if let Some(i) = logits.iter().position(|x| x.is_nan()) {
            return Err(Error::InvalidInput(format!("sampler: logit {i} is NaN")));
        }
        let c = &self.cfg;
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        if c.repeat_penalty != 1.0 {
            let from = self.history.len().saturating_sub(c.repeat_last_n);
            let mut seen: Vec<u32> = self.history[from..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(e) = self.cand.get_mut(id as usize) {
                    e.1 = if e.1 > 0.0 {
                        e.1 / c.repeat_penalty
                    } else {
                        e.1 * c.repeat_penalty
                    };
                }
            }
        }
        let id = if c.temperature == 0.0 || c.top_k == 1 {
            argmax(&self.cand)
        } else {
            let (cand, rng) = (&mut self.cand, &mut self.rng);
            draw(cand, c, rng)
        };
        self.accept(&[id]);
        Ok(id)
    }
}

/// Highest logit, ties to the lower id.
fn argmax(cand: &[(u32, f32)]) -> u32 {
    let mut best = cand[0];
    for &e in &cand[1..] {
        if e.1 > best.1 {
            best = e;
        }
    }
    best.0
}

/// Index of the largest logit (ties to the lower index).
pub fn argmax_logits(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

fn draw(cand: &mut Vec<(u32, f32)>, c: &SamplerConfig, rng: &mut Rng) -> u32 {
    // Sort by logit, descending; ties by id for determinism.
    let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if c.top_k > 0 && c.top_k < cand.len() {
        cand.select_nth_unstable_by(c.top_k - 1, by_logit);
        cand.truncate(c.top_k);
    }
    cand.sort_unstable_by(by_logit);
    // Probabilities at temperature 1 for the top-p / min-p filters (llama.cpp order).
    let max = cand[0].1;
    let mut probs: Vec<f64> = cand.iter().map(|e| ((e.1 - max) as f64).exp()).collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    let mut keep = cand.len();
    if c.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= c.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
    }
    if c.min_p > 0.0 {
        let floor = probs[0] * c.min_p as f64;
        let n = probs[..keep].iter().take_while(|&&p| p >= floor).count();
        keep = n.max(1);
    }
    cand.truncate(keep);
    // Temperature, softmax, draw.
    let t = c.temperature as f64;
    let mut weights: Vec<f64> = cand
        .iter()
        .map(|e| ((e.1 - max) as f64 / t).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= total);
    let r = rng.next_f64();
    let mut acc = 0.0;
    for (e, w) in cand.iter().zip(&weights) {
        acc += w;
        if r < acc {
            return e.0;
        }
    }
    cand[cand.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax_ties_low() {
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]).unwrap(), 1);
    }

    #[test]
    fn seed_reproduces_and_differs() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        };
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                seed,
                ..cfg.clone()
            })
            .unwrap();
            (0..50)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_restricts_support() {
        let logits = [5.0, 4.9, 4.8, 0.0, 0.0, 0.0];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 5.0,
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        })
        .unwrap();
        for _ in 0..500 {
            assert!(s.sample(&logits).unwrap() < 2);
        }
    }

    #[test]
    fn top_p_and_min_p_restrict_support() {
        // p ≈ [0.88, 0.12, ~0...]: top-p 0.5 keeps only the first.
        let logits = [4.0, 2.0, -6.0, -6.0];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            min_p: 0.0,
            ..SamplerConfig::default()
        })
        .unwrap();
        for _ in 0..200 {
            assert_eq!(s.sample(&logits).unwrap(), 0);
        }
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.1,
            ..SamplerConfig::default()
        })
        .unwrap();
        for _ in 0..200 {
            assert!(s.sample(&logits).unwrap() < 2);
        }
    }

    #[test]
    fn frequencies_follow_softmax() {
        let logits = [1.0f32, 0.0, -1.0];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 3,
            ..SamplerConfig::default()
        })
        .unwrap();
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let p = (logits[i] as f64).exp() / z;
            let f = c as f64 / n as f64;
            // 5 standard errors.
            let tol = 5.0 * (p * (1.0 - p) / n as f64).sqrt();
            assert!((f - p).abs() < tol, "token {i}: {f} vs {p}");
        }
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        s.accept(&[0]);
        // 3.0 / 2 = 1.5 < 2.0.
        assert_eq!(s.sample(&[3.0, 2.0]).unwrap(), 1);
    }

    #[test]
    fn rejects_bad_settings_and_nan() {
        assert!(
            Sampler::new(SamplerConfig {
                top_p: 0.0,
                ..SamplerConfig::default()
            })
            .is_err()
        );
        assert!(
            Sampler::new(SamplerConfig {
                temperature: -1.0,
                ..SamplerConfig::default()
            })
            .is_err()
        );
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert!(s.sample(&[0.0, f32::NAN]).is_err());
        assert!(s.sample(&[]).is_err());
    }
}
