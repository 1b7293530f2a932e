//! Model shapes: the presets (`tiny`, `4b-a0.6b`, `21b-a3b`), overrides of any field, output
//! types and the per-tensor type recipe.
//!
//! The two full-size presets reproduce the released configs field by field
//! (`shared/docs/architecture.md` §a.1–a.2): 4B-A0.6B has 32 RoPE + global layers and a tied
//! embedding; 21B-A3B has 52 layers, NoPE + global when `i % 4 == 0` and RoPE + sliding (4096)
//! otherwise, and a separate LM head.

use std::fmt;
use std::str::FromStr;

use engine::quant::GgmlType;

use crate::error::{Error, Result};

/// Vocabulary of the Qwen2-family tokenizer's embedding (real tokens plus padding rows).
pub const QWEN_VOCAB_ROWS: usize = 151_936;

/// How the per-layer layout follows from the layer count (so `--layers N` keeps the design).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutRule {
    /// Every layer RoPE + global (the 4B).
    AllGlobal,
    /// NoPE + global when `i % 4 == 0`, RoPE + sliding otherwise (the 21B).
    Hybrid4,
}

/// Every hyperparameter of a model to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Preset the spec started from.
    pub preset: String,
    /// `general.name`.
    pub name: String,
    /// Decoder layers.
    pub n_layers: usize,
    /// Hidden size H.
    pub hidden: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Embedding rows.
    pub vocab_size: usize,
    /// Experts per layer.
    pub n_experts: usize,
    /// Experts chosen per token.
    pub n_experts_used: usize,
    /// Inner width of one expert.
    pub expert_ffn: usize,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Trained context length (`context_length`).
    pub context_length: usize,
    /// Window of sliding layers.
    pub sliding_window: usize,
    /// How the layout follows the layer count.
    pub layout_rule: LayoutRule,
    /// Per-layer RoPE flags (false: NoPE).
    pub rope_layout: Vec<bool>,
    /// Per-layer sliding-window flags.
    pub sliding_layout: Vec<bool>,
    /// Whether the LM head is the token embedding.
    pub tied_embeddings: bool,
    /// Softmax (true) or sigmoid (false) routing weights.
    pub softmax_gating: bool,
}

/// Overrides of preset fields (`None` keeps the preset's value).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// Decoder layers (the layout is rebuilt with the preset's rule).
    pub layers: Option<usize>,
    /// Hidden size.
    pub hidden: Option<usize>,
    /// Query heads.
    pub heads: Option<usize>,
    /// Key/value heads.
    pub kv_heads: Option<usize>,
    /// Head dimension.
    pub head_dim: Option<usize>,
    /// Embedding rows.
    pub vocab: Option<usize>,
    /// Experts per layer.
    pub experts: Option<usize>,
    /// Experts chosen per token.
    pub experts_used: Option<usize>,
    /// Expert inner width.
    pub ffn: Option<usize>,
    /// Context length.
    pub context: Option<usize>,
    /// Sliding window.
    pub window: Option<usize>,
    /// Tied (true) or separate (false) LM head.
    pub tied: Option<bool>,
}

impl Overrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// A compact description (`layers=4,vocab=4096`) for names and fingerprints.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        push("layers", self.layers.map(|v| v.to_string()));
        push("hidden", self.hidden.map(|v| v.to_string()));
        push("heads", self.heads.map(|v| v.to_string()));
        push("kv_heads", self.kv_heads.map(|v| v.to_string()));
        push("head_dim", self.head_dim.map(|v| v.to_string()));
        push("vocab", self.vocab.map(|v| v.to_string()));
        push("experts", self.experts.map(|v| v.to_string()));
        push("experts_used", self.experts_used.map(|v| v.to_string()));
        push("ffn", self.ffn.map(|v| v.to_string()));
        push("context", self.context.map(|v| v.to_string()));
        push("window", self.window.map(|v| v.to_string()));
        push("tied", self.tied.map(|v| v.to_string()));
        parts.join(",")
    }
}

/// Names of the presets.
pub const PRESETS: [&str; 3] = ["tiny", "4b-a0.6b", "21b-a3b"];

impl ModelSpec {
    /// A preset by name.
    pub fn preset(name: &str) -> Result<ModelSpec> {
        let s = match name {
            "tiny" => ModelSpec {
                preset: "tiny".into(),
                name: "SmallThinker tiny (synthetic)".into(),
                n_layers: 4,
                hidden: 256,
                n_heads: 2,
                n_kv_heads: 1,
                head_dim: 128,
                vocab_size: 512,
                n_experts: 8,
                n_experts_used: 2,
                expert_ffn: 64,
                rope_theta: 1.5e6,
                rms_eps: 1e-6,
                context_length: 4096,
                sliding_window: 4096,
                layout_rule: LayoutRule::AllGlobal,
                rope_layout: vec![],
                sliding_layout: vec![],
                tied_embeddings: true,
                softmax_gating: false,
            },
            "4b-a0.6b" => ModelSpec {
                preset: "4b-a0.6b".into(),
                name: "SmallThinker 4B-A0.6B (synthetic)".into(),
                n_layers: 32,
                hidden: 1536,
                n_heads: 12,
                n_kv_heads: 2,
                head_dim: 128,
                vocab_size: QWEN_VOCAB_ROWS,
                n_experts: 32,
                n_experts_used: 4,
                expert_ffn: 768,
                rope_theta: 1.5e6,
                rms_eps: 1e-6,
                context_length: 32768,
                sliding_window: 4096,
                layout_rule: LayoutRule::AllGlobal,
                rope_layout: vec![],
                sliding_layout: vec![],
                tied_embeddings: true,
                softmax_gating: false,
            },
            "21b-a3b" => ModelSpec {
                preset: "21b-a3b".into(),
                name: "SmallThinker 21B-A3B (synthetic)".into(),
                n_layers: 52,
                hidden: 2560,
                n_heads: 28,
                n_kv_heads: 4,
                head_dim: 128,
                vocab_size: QWEN_VOCAB_ROWS,
                n_experts: 64,
                n_experts_used: 6,
                expert_ffn: 768,
                rope_theta: 1.5e6,
                rms_eps: 1e-6,
                context_length: 16384,
                sliding_window: 4096,
                layout_rule: LayoutRule::Hybrid4,
                rope_layout: vec![],
                sliding_layout: vec![],
                tied_embeddings: false,
                softmax_gating: false,
            },
            other => {
                return Err(Error::Spec(format!(
                    "unknown preset '{other}' (known: {})",
                    PRESETS.join(", ")
                )));
            }
        };
        let mut s = s;
        s.rebuild_layout();
        s.validate()?;
        Ok(s)
    }

    /// A preset with overrides applied and checked.
    pub fn with_overrides(name: &str, o: &Overrides) -> Result<ModelSpec> {
        let mut s = ModelSpec::preset(name)?;
        let set = |dst: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut s.n_layers, o.layers);
        set(&mut s.hidden, o.hidden);
        set(&mut s.n_heads, o.heads);
        set(&mut s.n_kv_heads, o.kv_heads);
        set(&mut s.head_dim, o.head_dim);
        set(&mut s.vocab_size, o.vocab);
        set(&mut s.n_experts, o.experts);
        set(&mut s.n_experts_used, o.experts_used);
        set(&mut s.expert_ffn, o.ffn);
        set(&mut s.context_length, o.context);
        set(&mut s.sliding_window, o.window);
        if let Some(t) = o.tied {
            s.tied_embeddings = t;
        }
        if !o.is_empty() {
            s.name = format!("{} [{}]", s.name, o.describe());
        }
        s.rebuild_layout();
        s.validate()?;
        Ok(s)
    }

    fn rebuild_layout(&mut self) {
        let n = self.n_layers;
        match self.layout_rule {
            LayoutRule::AllGlobal => {
                self.rope_layout = vec![true; n];
                self.sliding_layout = vec![false; n];
            }
            LayoutRule::Hybrid4 => {
                self.rope_layout = (0..n).map(|i| i % 4 != 0).collect();
                self.sliding_layout = (0..n).map(|i| i % 4 != 0).collect();
            }
        }
    }

    /// Whether some layer uses a sliding window (then `attention.sliding_window` is written).
    pub fn any_sliding(&self) -> bool {
        self.sliding_layout.iter().any(|&s| s)
    }

    /// Query width.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Key/value width.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Checks what the generator needs (block-aligned widths, room for the design's
    /// directions) on top of what the engine needs.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Spec(m));
        let checks = [
            ("layers", self.n_layers),
            ("hidden", self.hidden),
            ("heads", self.n_heads),
            ("kv_heads", self.n_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab", self.vocab_size),
            ("experts", self.n_experts),
            ("experts_used", self.n_experts_used),
            ("ffn", self.expert_ffn),
        ];
        for (what, v) in checks {
            if v == 0 {
                return bad(format!("{what} must be positive"));
            }
        }
        if self.n_layers > 1024 || self.n_experts > 1024 {
            return bad("more than 1024 layers or experts".into());
        }
        for (what, v) in [
            ("hidden", self.hidden),
            ("ffn", self.expert_ffn),
            ("head_dim", self.head_dim),
        ] {
            if !v.is_multiple_of(32) {
                return bad(format!(
                    "{what} = {v} is not a multiple of 32 (quantisation blocks)"
                ));
            }
        }
        if self.hidden < crate::design::plan::MIN_HIDDEN {
            return bad(format!(
                "hidden = {} is below {} (the design needs separate blocks for its directions)",
                self.hidden,
                crate::design::plan::MIN_HIDDEN
            ));
        }
        if self.head_dim < crate::design::plan::FEATURE_DIM {
            return bad(format!(
                "head_dim = {} is below {}",
                self.head_dim,
                crate::design::plan::FEATURE_DIM
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} heads do not divide into {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.n_experts_used > self.n_experts {
            return bad(format!(
                "experts_used {} exceeds experts {}",
                self.n_experts_used, self.n_experts
            ));
        }
        if self.vocab_size > u32::MAX as usize / 2 {
            return bad("vocabulary too large".into());
        }
        if self.any_sliding() && self.sliding_window == 0 {
            return bad("sliding layers need a window".into());
        }
        if self.rope_layout.len() != self.n_layers || self.sliding_layout.len() != self.n_layers {
            return bad("layout length differs from the layer count".into());
        }
        Ok(())
    }

    /// Parameter counts `(shared, per_expert_all_layers, total)` as gguf-py counts them for
    /// `general.size_label`.
    pub fn param_counts(&self) -> (u64, u64, u64) {
        let (h, v, f, e) = (
            self.hidden as u64,
            self.vocab_size as u64,
            self.expert_ffn as u64,
            self.n_experts as u64,
        );
        let l = self.n_layers as u64;
        let attn = h * self.q_dim() as u64 * 2 + h * self.kv_dim() as u64 * 2;
        let per_layer_shared = attn + e * h + 2 * h;
        let head = if self.tied_embeddings { 0 } else { v * h };
        let shared = v * h + head + h + l * per_layer_shared;
        let per_expert = l * 3 * f * h;
        (shared, per_expert, shared + per_expert * e)
    }

    /// `general.size_label` as gguf-py writes it for a MoE model: `{E}x{shared + one expert}`.
    pub fn size_label(&self) -> String {
        let (shared, per_expert, _) = self.param_counts();
        format!(
            "{}x{}",
            self.n_experts,
            rounded_notation(shared + per_expert, 2)
        )
    }
}

/// gguf-py's `model_weight_count_rounded_notation`.
fn rounded_notation(n: u64, min_digits: usize) -> String {
    let x = n as f64;
    let (scaled, suffix) = if x > 1e12 {
        (x * 1e-12, "T")
    } else if x > 1e9 {
        (x * 1e-9, "B")
    } else if x > 1e6 {
        (x * 1e-6, "M")
    } else {
        (x * 1e-3, "K")
    };
    let int_digits = format!("{}", scaled.round() as u64).len();
    let fix = min_digits.saturating_sub(int_digits);
    format!("{scaled:.fix$}{suffix}")
}

/// Output type of a generated file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutType {
    /// Everything F32.
    F32,
    /// Matrices F16; norms and routers F32 (the converter's `--outtype f16`).
    F16,
    /// Matrices BF16; norms and routers F32.
    Bf16,
    /// Matrices Q8_0; norms and routers F32 (the converter's `--outtype q8_0`).
    Q8_0,
    /// Matrices Q4_0 including the embedding and head (`llama-quantize --pure … Q4_0`, what
    /// PowerInfer uses); norms and routers F32.
    Q4_0,
    /// `llama-quantize … Q4_0` without `--pure`: Q4_0 except the output tensor (the token
    /// embedding when tied), which is Q6_K (Q8_0, llama.cpp's fallback, when its rows are not a
    /// multiple of 256); with exactly 8 experts attn_k/attn_v are Q8_0 as llama-quantize does.
    /// Norms and routers F32.
    Q4_0Mixed,
}

/// Names accepted by [`OutType::from_str`].
pub const OUT_TYPES: [&str; 6] = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_0-mixed"];

impl fmt::Display for OutType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutType::F32 => "f32",
            OutType::F16 => "f16",
            OutType::Bf16 => "bf16",
            OutType::Q8_0 => "q8_0",
            OutType::Q4_0 => "q4_0",
            OutType::Q4_0Mixed => "q4_0-mixed",
        })
    }
}

impl FromStr for OutType {
    type Err = Error;
    fn from_str(s: &str) -> Result<OutType> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" => OutType::F32,
            "f16" => OutType::F16,
            "bf16" => OutType::Bf16,
            "q8_0" => OutType::Q8_0,
            "q4_0" => OutType::Q4_0,
            "q4_0-mixed" | "q4_0_mixed" => OutType::Q4_0Mixed,
            other => {
                return Err(Error::Spec(format!(
                    "unknown type '{other}' (known: {})",
                    OUT_TYPES.join(", ")
                )));
            }
        })
    }
}

/// What a tensor is, for the type recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `token_embd.weight`.
    TokenEmbd,
    /// `output.weight`.
    Output,
    /// A norm gain vector.
    Norm,
    /// `ffn_gate_inp.weight`.
    Router,
    /// `attn_q` / `attn_output`.
    AttnQo,
    /// `attn_k` / `attn_v`.
    AttnKv,
    /// Stacked expert matrices.
    Experts,
}

impl OutType {
    /// `general.file_type` (llama_ftype).
    pub fn file_type(self) -> u32 {
        match self {
            OutType::F32 => 0,
            OutType::F16 => 1,
            OutType::Bf16 => 32,
            OutType::Q8_0 => 7,
            OutType::Q4_0 | OutType::Q4_0Mixed => 2,
        }
    }

    /// The ggml type of a tensor with this role in a model of this spec.
    pub fn tensor_type(self, role: Role, spec: &ModelSpec) -> GgmlType {
        use GgmlType as G;
        if matches!(role, Role::Norm | Role::Router) {
            return G::F32;
        }
        match self {
            OutType::F32 => G::F32,
            OutType::F16 => G::F16,
            OutType::Bf16 => G::BF16,
            OutType::Q8_0 => G::Q8_0,
            OutType::Q4_0 => G::Q4_0,
            OutType::Q4_0Mixed => {
                let is_output =
                    role == Role::Output || (role == Role::TokenEmbd && spec.tied_embeddings);
                if is_output {
                    if spec.hidden.is_multiple_of(256) {
                        G::Q6_K
                    } else {
                        G::Q8_0
                    }
                } else if role == Role::AttnKv && spec.n_experts == 8 {
                    G::Q8_0
                } else {
                    G::Q4_0
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_released_configs() {
        let s = ModelSpec::preset("4b-a0.6b").unwrap();
        assert_eq!(
            (s.n_layers, s.hidden, s.n_heads, s.n_kv_heads, s.head_dim),
            (32, 1536, 12, 2, 128)
        );
        assert_eq!(
            (s.n_experts, s.n_experts_used, s.expert_ffn, s.vocab_size),
            (32, 4, 768, 151_936)
        );
        assert!(s.tied_embeddings && !s.any_sliding() && s.rope_layout.iter().all(|&r| r));
        assert_eq!(s.context_length, 32768);
        let (_, _, total) = s.param_counts();
        assert!((total as f64 / 1e9 - 4.0351).abs() < 1e-3, "{total}"); // a.3, tied
        let b = ModelSpec::preset("21b-a3b").unwrap();
        assert_eq!(
            (b.n_layers, b.hidden, b.n_heads, b.n_kv_heads, b.head_dim),
            (52, 2560, 28, 4, 128)
        );
        assert_eq!(
            (b.n_experts, b.n_experts_used, b.context_length),
            (64, 6, 16384)
        );
        assert!(!b.tied_embeddings);
        assert_eq!(b.rope_layout.iter().filter(|&&r| !r).count(), 13);
        assert_eq!(b.sliding_layout.iter().filter(|&&r| r).count(), 39);
        assert!(!b.rope_layout[0] && !b.sliding_layout[48] && b.sliding_layout[49]);
        let (_, _, total) = b.param_counts();
        assert!((total as f64 / 1e9 - 21.5066).abs() < 1e-3, "{total}");
    }

    #[test]
    fn size_label_follows_gguf_py() {
        assert_eq!(rounded_notation(109_120, 2), "109K");
        assert_eq!(rounded_notation(530_000_000, 2), "530M");
        assert_eq!(rounded_notation(1_530_000_000, 2), "1.5B");
    }

    #[test]
    fn overrides_rebuild_the_layout_and_are_checked() {
        let o = Overrides {
            layers: Some(8),
            vocab: Some(4096),
            ..Default::default()
        };
        let s = ModelSpec::with_overrides("21b-a3b", &o).unwrap();
        assert_eq!(s.rope_layout.len(), 8);
        assert!(!s.rope_layout[4] && s.rope_layout[5]);
        assert!(s.name.contains("layers=8"));
        let bad = Overrides {
            hidden: Some(100),
            ..Default::default()
        };
        assert!(ModelSpec::with_overrides("tiny", &bad).is_err());
        let bad = Overrides {
            experts_used: Some(9),
            ..Default::default()
        };
        assert!(ModelSpec::with_overrides("tiny", &bad).is_err());
        assert!(ModelSpec::preset("7b").is_err());
    }

    #[test]
    fn mixed_recipe_matches_llama_quantize() {
        let s = ModelSpec::preset("4b-a0.6b").unwrap();
        let t = OutType::Q4_0Mixed;
        assert_eq!(t.tensor_type(Role::TokenEmbd, &s), GgmlType::Q6_K);
        assert_eq!(t.tensor_type(Role::AttnKv, &s), GgmlType::Q4_0);
        assert_eq!(t.tensor_type(Role::Experts, &s), GgmlType::Q4_0);
        assert_eq!(t.tensor_type(Role::Router, &s), GgmlType::F32);
        let b = ModelSpec::preset("21b-a3b").unwrap();
        assert_eq!(t.tensor_type(Role::TokenEmbd, &b), GgmlType::Q4_0);
        assert_eq!(t.tensor_type(Role::Output, &b), GgmlType::Q6_K);
        let tiny = ModelSpec::preset("tiny").unwrap();
        assert_eq!(t.tensor_type(Role::AttnKv, &tiny), GgmlType::Q8_0);
        assert_eq!(t.tensor_type(Role::TokenEmbd, &tiny), GgmlType::Q6_K);
        let narrow = ModelSpec::with_overrides(
            "tiny",
            &Overrides {
                hidden: Some(160),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(t.tensor_type(Role::TokenEmbd, &narrow), GgmlType::Q8_0);
        assert_eq!(
            OutType::Q4_0.tensor_type(Role::TokenEmbd, &s),
            GgmlType::Q4_0
        );
        for n in OUT_TYPES {
            assert_eq!(n.parse::<OutType>().unwrap().to_string(), n);
        }
    }
}
