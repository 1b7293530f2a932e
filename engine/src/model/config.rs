//! Model hyperparameters and per-layer layout, read from a Hugging Face `config.json` or from GGUF
//! metadata, and validated so the rest of the engine can index without further checks.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// How the router turns the chosen logits into mixing weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gating {
    /// `w_i = σ(r_i) / Σ_{j∈S} σ(r_j)` (the 4B; `moe_primary_router_apply_softmax = false`).
    Sigmoid,
    /// `w_i = softmax over the chosen logits`.
    Softmax,
}

/// Attention properties of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerKind {
    /// Whether RoPE is applied to q and k (false: NoPE).
    pub rope: bool,
    /// Whether attention is limited to a sliding window (false: global).
    pub sliding: bool,
}

/// Where the per-layer layout came from (reported by `thinker inspect`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    /// Explicit per-layer arrays (config.json, or our GGUF layout keys).
    Explicit,
    /// llama.cpp's rule: window key present, layer i NoPE+global when i % 4 == 0.
    LlamaCppRule,
    /// No window key in the GGUF: every layer RoPE + global.
    AllGlobal,
}

/// Everything the forward pass needs to know about the model's shape.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Number of decoder layers.
    pub n_layers: usize,
    /// Hidden size H.
    pub hidden: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Dimension of one head (not necessarily hidden / heads).
    pub head_dim: usize,
    /// Embedding rows.
    pub vocab_size: usize,
    /// Experts per layer E.
    pub n_experts: usize,
    /// Experts chosen per token k.
    pub n_experts_used: usize,
    /// Inner width of one expert F.
    pub expert_ffn: usize,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Trained context length (informational; the KV cache may be sized differently).
    pub context_length: usize,
    /// Window W of sliding layers (keys p-W+1..=p).
    pub sliding_window: usize,
    /// Per-layer attention kind.
    pub layers: Vec<LayerKind>,
    /// Where `layers` came from.
    pub layout_source: LayoutSource,
    /// Router weight normalisation.
    pub gating: Gating,
    /// Whether the LM head reuses the token embedding.
    pub tied_embeddings: bool,
    /// Beginning-of-sequence id, if known.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids.
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Query width n_h · d.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Key/value width n_kv · d.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Checks internal consistency; every later index relies on this.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Model(m));
        let nonzero = [
            ("layers", self.n_layers),
            ("hidden size", self.hidden),
            ("attention heads", self.n_heads),
            ("kv heads", self.n_kv_heads),
            ("head dim", self.head_dim),
            ("vocab size", self.vocab_size),
            ("experts", self.n_experts),
            ("active experts", self.n_experts_used),
            ("expert ffn size", self.expert_ffn),
        ];
        for (what, v) in nonzero {
            if v == 0 {
                return bad(format!("{what} is 0"));
            }
        }
        const CAP: usize = 1 << 24;
        for (what, v) in nonzero {
            if v > CAP {
                return bad(format!("{what} = {v} is implausibly large"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads do not divide into {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head dim {} is odd (RoPE pairs halves)",
                self.head_dim
            ));
        }
        if self.n_experts_used > self.n_experts {
            return bad(format!(
                "top-k {} exceeds {} experts",
                self.n_experts_used, self.n_experts
            ));
        }
        if self.layers.len() != self.n_layers {
            return bad(format!(
                "layout has {} entries for {} layers",
                self.layers.len(),
                self.n_layers
            ));
        }
        if self.layers.iter().any(|l| l.sliding) && self.sliding_window == 0 {
            return bad("a sliding layer with window 0".into());
        }
        if !self.rope_theta.is_finite() || self.rope_theta <= 0.0 {
            return bad(format!("rope theta {} is not positive", self.rope_theta));
        }
        if !self.rms_eps.is_finite() || self.rms_eps < 0.0 {
            return bad(format!("rms eps {} is invalid", self.rms_eps));
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json`, applying the released config class's defaults.
    pub fn from_hf_json(path: &Path) -> Result<ModelConfig> {
        let err = |what: String| Error::Config {
            path: path.to_path_buf(),
            what,
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        raw.into_config().map_err(|e| match e {
            Error::Model(m) => err(m),
            other => other,
        })
    }

    /// Parses `config.json` text (see [`ModelConfig::from_hf_json`]).
    pub fn from_hf_str(text: &str) -> Result<ModelConfig> {
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            path: "config.json".into(),
            what: e.to_string(),
        })?;
        raw.into_config()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// The fields of `config.json` we read, with the released class's defaults.
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_hidden")]
    hidden_size: usize,
    #[serde(default = "d_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_kv_heads")]
    num_key_value_heads: usize,
    #[serde(default = "d_head_dim")]
    head_dim: usize,
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_experts")]
    moe_num_primary_experts: usize,
    #[serde(default = "d_active")]
    moe_num_active_primary_experts: usize,
    #[serde(default = "d_ffn")]
    moe_ffn_hidden_size: usize,
    #[serde(default)]
    moe_primary_router_apply_softmax: bool,
    #[serde(default = "d_theta")]
    rope_theta: f64,
    #[serde(default = "d_eps")]
    rms_norm_eps: f64,
    #[serde(default = "d_ctx")]
    max_position_embeddings: usize,
    rope_layout: Option<Vec<u32>>,
    sliding_window_layout: Option<Vec<u32>>,
    #[serde(default = "d_window")]
    sliding_window_size: usize,
    #[serde(default = "d_true")]
    tie_word_embeddings: bool,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    rope_scaling: Option<serde_json::Value>,
}

fn d_layers() -> usize {
    32
}
fn d_hidden() -> usize {
    1536
}
fn d_heads() -> usize {
    12
}
fn d_kv_heads() -> usize {
    2
}
fn d_head_dim() -> usize {
    128
}
fn d_vocab() -> usize {
    151936
}
fn d_experts() -> usize {
    32
}
fn d_active() -> usize {
    4
}
fn d_ffn() -> usize {
    768
}
fn d_theta() -> f64 {
    1e6
}
fn d_eps() -> f64 {
    1e-6
}
fn d_ctx() -> usize {
    131072
}
fn d_window() -> usize {
    4096
}
fn d_true() -> bool {
    true
}

impl HfConfig {
    fn into_config(self) -> Result<ModelConfig> {
        let is_st = self
            .architectures
            .iter()
            .any(|a| a == "SmallThinkerForCausalLM")
            || self.model_type.as_deref() == Some("smallthinker");
        if !is_st {
            return Err(Error::Model(format!(
                "not a SmallThinker config (architectures {:?}, model_type {:?})",
                self.architectures, self.model_type
            )));
        }
        if let Some(s) = &self.rope_scaling
            && !s.is_null()
        {
            return Err(Error::Model(format!(
                "rope_scaling {s} is not supported (SmallThinker uses none)"
            )));
        }
        let n = self.num_hidden_layers;
        let rope = self.rope_layout.unwrap_or_else(|| vec![1; n]);
        let swa = self.sliding_window_layout.unwrap_or_else(|| vec![0; n]);
        if rope.len() != n || swa.len() != n {
            return Err(Error::Model(format!(
                "rope_layout ({}) and sliding_window_layout ({}) must have num_hidden_layers = {n} entries",
                rope.len(),
                swa.len()
            )));
        }
        let layers = rope
            .iter()
            .zip(&swa)
            .map(|(&r, &s)| LayerKind {
                rope: r != 0,
                sliding: s != 0,
            })
            .collect();
        let eos_token_ids = match self.eos_token_id {
            None => vec![151643, 151645],
            Some(OneOrMany::One(x)) => vec![x],
            Some(OneOrMany::Many(v)) => v,
        };
        let cfg = ModelConfig {
            n_layers: n,
            hidden: self.hidden_size,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            vocab_size: self.vocab_size,
            n_experts: self.moe_num_primary_experts,
            n_experts_used: self.moe_num_active_primary_experts,
            expert_ffn: self.moe_ffn_hidden_size,
            rope_theta: self.rope_theta as f32,
            rms_eps: self.rms_norm_eps as f32,
            context_length: self.max_position_embeddings,
            sliding_window: self.sliding_window_size,
            layers,
            layout_source: LayoutSource::Explicit,
            gating: if self.moe_primary_router_apply_softmax {
                Gating::Softmax
            } else {
                Gating::Sigmoid
            },
            tied_embeddings: self.tie_word_embeddings,
            bos_token_id: Some(self.bos_token_id.unwrap_or(151643)),
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{"architectures":["SmallThinkerForCausalLM"],"head_dim":16,"hidden_size":64,
        "moe_ffn_hidden_size":32,"moe_num_active_primary_experts":2,"moe_num_primary_experts":8,
        "moe_primary_router_apply_softmax":false,"num_attention_heads":4,"num_hidden_layers":4,
        "num_key_value_heads":2,"rope_layout":[0,1,1,1],"sliding_window_layout":[0,1,1,1],
        "sliding_window_size":8,"rope_theta":1500000.0,"vocab_size":512,"eos_token_id":[509,511]}"#;

    #[test]
    fn reads_layout_arrays_and_gating() {
        let c = ModelConfig::from_hf_str(TINY).unwrap();
        assert_eq!(
            c.layers[0],
            LayerKind {
                rope: false,
                sliding: false
            }
        );
        assert_eq!(
            c.layers[3],
            LayerKind {
                rope: true,
                sliding: true
            }
        );
        assert_eq!(c.gating, Gating::Sigmoid);
        assert_eq!(c.sliding_window, 8);
        assert_eq!(c.eos_token_ids, vec![509, 511]);
        assert_eq!(c.q_dim(), 64);
        assert_eq!(c.kv_dim(), 32);
    }

    #[test]
    fn missing_keys_take_the_released_class_defaults() {
        let c =
            ModelConfig::from_hf_str(r#"{"architectures":["SmallThinkerForCausalLM"]}"#).unwrap();
        assert_eq!(
            (c.n_layers, c.hidden, c.n_experts, c.n_experts_used),
            (32, 1536, 32, 4)
        );
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.layers.iter().all(|l| l.rope && !l.sliding));
        assert!(c.tied_embeddings);
    }

    #[test]
    fn rejects_inconsistent_configs_with_a_reason() {
        let cases = [
            (
                r#"{"architectures":["LlamaForCausalLM"]}"#,
                "not a SmallThinker",
            ),
            (
                r#"{"architectures":["SmallThinkerForCausalLM"],"num_hidden_layers":2,"rope_layout":[1]}"#,
                "must have num_hidden_layers",
            ),
            (
                r#"{"architectures":["SmallThinkerForCausalLM"],"num_attention_heads":5}"#,
                "do not divide",
            ),
            (
                r#"{"architectures":["SmallThinkerForCausalLM"],"moe_num_active_primary_experts":40}"#,
                "exceeds",
            ),
            (
                r#"{"architectures":["SmallThinkerForCausalLM"],"hidden_size":0}"#,
                "is 0",
            ),
        ];
        for (text, want) in cases {
            let e = ModelConfig::from_hf_str(text).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }
}
