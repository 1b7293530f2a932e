//! The weight-shaping design: which directions of the residual stream carry what, and the
//! calibrated constants that make the engine's own forward pass route and sparsify like a
//! trained model. [`plan`] documents the layout.

pub mod calibrate;
pub mod kernel;
pub mod plan;
pub mod stats;

/// Behaviour the generated weights are shaped for. Defaults follow the SmallThinker paper's
/// observations where it gives them (`architecture.md` §d.9) and the defaults otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct Targets {
    /// Zipf exponent of expert popularity within a layer (default 0.8).
    pub zipf_s: f64,
    /// Share of a token's experts that the previous token also chose, averaged over layers
    /// (default 0.45; uniform routing gives k/E). Popularity skew alone already makes experts
    /// return (about 0.27 for the 4B at Zipf 0.8); lower targets cannot be reached and give
    /// that floor (the generator logs a warning).
    pub reuse: f64,
    /// Share of exactly-zero ReGLU activations (default 0.8).
    pub zero_share: f64,
    /// Spread of per-neuron gate thresholds, in noise standard deviations: hot and cold
    /// neurons (default 0.5; 0 makes every neuron fire equally often).
    pub neuron_spread: f64,
    /// Scale of router logits (default 1: the offsets and noise in the units calibrated).
    pub logit_scale: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            zipf_s: 0.8,
            reuse: 0.45,
            zero_share: 0.8,
            neuron_spread: 0.5,
            logit_scale: 1.0,
        }
    }
}

impl Targets {
    /// Checks ranges.
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |m: String| Err(crate::error::Error::Spec(m));
        if !(0.0..=4.0).contains(&self.zipf_s) {
            return bad(format!("zipf exponent {} outside 0..=4", self.zipf_s));
        }
        if !(0.0..0.95).contains(&self.reuse) {
            return bad(format!("reuse {} outside 0..0.95", self.reuse));
        }
        if !(0.0..0.995).contains(&self.zero_share) {
            return bad(format!("zero share {} outside 0..0.995", self.zero_share));
        }
        if !(0.0..=3.0).contains(&self.neuron_spread) {
            return bad(format!(
                "neuron spread {} outside 0..=3",
                self.neuron_spread
            ));
        }
        if !(self.logit_scale > 0.0 && self.logit_scale <= 10.0) {
            return bad(format!("logit scale {} outside (0, 10]", self.logit_scale));
        }
        Ok(())
    }
}
