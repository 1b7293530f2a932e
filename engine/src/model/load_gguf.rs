//! Loading a GGUF file (as llama.cpp's converter, `llama-quantize`, PowerInfer's fork or our own
//! generator write it) onto [`ModelConfig`] and zero-copy [`Weights`].
//!
//! Per-layer layout, in order of preference:
//! 1. explicit arrays: our `smallthinker.rope_layout` / `smallthinker.sliding_window_layout`
//!    (1 = RoPE / sliding), or llama.cpp's `smallthinker.attention.sliding_window_pattern`
//!    (a per-layer bool array, or a period `n`: layer `i` is global when `i % n == 0`, as
//!    llama.cpp applies it to this architecture);
//! 2. `smallthinker.attention.sliding_window` present: layer `i` is NoPE + global when `i % 4 == 0`,
//!    RoPE + sliding otherwise, with the window read from the file;
//! 3. otherwise every layer is RoPE + global.
//!
//! `ffn_down_exps` comes in two dialects: `[F, H, E]` (llama.cpp) or `[H, F, E]` (PowerInfer's
//! `--transpose-down`); `ne0 == H` identifies the latter.

use std::path::Path;

use super::config::{Gating, LayerKind, LayoutSource, ModelConfig};
use super::weights::{ExpertWeights, LayerWeights, Matrix, TensorBytes, Weights, vector_f32};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, TensorInfo};

/// The architecture name this loader accepts.
pub const ARCH: &str = "smallthinker";

/// Our explicit per-layer RoPE layout key (1 = RoPE, 0 = NoPE).
pub const KEY_ROPE_LAYOUT: &str = "smallthinker.rope_layout";
/// Our explicit per-layer sliding-window layout key (1 = sliding).
pub const KEY_SLIDING_LAYOUT: &str = "smallthinker.sliding_window_layout";

fn key(k: &str) -> String {
    format!("{ARCH}.{k}")
}

fn usize_of(v: u64, k: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::BadKey {
        key: k.to_string(),
        what: format!("{v} does not fit in memory"),
    })
}

fn req(g: &GgufFile, k: &str) -> Result<usize> {
    let full = key(k);
    usize_of(g.require_u64(&full)?, &full)
}

fn opt(g: &GgufFile, k: &str) -> Result<Option<usize>> {
    let full = key(k);
    g.get_u64(&full)?.map(|v| usize_of(v, &full)).transpose()
}

/// A per-layer 0/1 array under `k`, if present; must have one entry per layer.
fn layer_flags(g: &GgufFile, k: &str, n_layers: usize) -> Result<Option<Vec<bool>>> {
    let Some(arr) = g.get_array(k)? else {
        return Ok(None);
    };
    let vals = arr.to_u64_vec().ok_or_else(|| Error::BadKey {
        key: k.to_string(),
        what: "expected an array of integers or booleans".into(),
    })?;
    if vals.len() != n_layers {
        return Err(Error::BadKey {
            key: k.to_string(),
            what: format!("{} entries for {n_layers} layers", vals.len()),
        });
    }
    Ok(Some(vals.into_iter().map(|v| v != 0).collect()))
}

/// Hyperparameters and layout from GGUF metadata (plus tensor shapes where keys are optional).
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch = g.architecture()?;
    if arch != ARCH {
        return Err(Error::BadKey {
            key: "general.architecture".into(),
            what: format!("'{arch}' is not '{ARCH}'"),
        });
    }
    let n_layers = req(g, "block_count")?;
    let hidden = req(g, "embedding_length")?;
    let n_heads = req(g, "attention.head_count")?;
    let n_kv_heads = opt(g, "attention.head_count_kv")?.unwrap_or(n_heads);
    let head_dim = match opt(g, "attention.key_length")? {
        Some(d) => d,
        None if n_heads > 0 => hidden / n_heads,
        None => 0,
    };
    if let Some(vd) = opt(g, "attention.value_length")?
        && vd != head_dim
    {
        return Err(Error::BadKey {
            key: key("attention.value_length"),
            what: format!("{vd} differs from key_length {head_dim}; not supported"),
        });
    }
    let n_experts = req(g, "expert_count")?;
    let n_experts_used = req(g, "expert_used_count")?;
    let expert_ffn = match opt(g, "expert_feed_forward_length") {
        Ok(Some(f)) => f,
        // Per-layer array form, or absent: take the first entry / feed_forward_length.
        Ok(None) | Err(_) => match g.get_array(&key("expert_feed_forward_length"))? {
            Some(a) => {
                let v = a.to_u64_vec().unwrap_or_default();
                if v.is_empty() || v.iter().any(|&x| x != v[0]) {
                    return Err(Error::BadKey {
                        key: key("expert_feed_forward_length"),
                        what: "per-layer expert widths must be equal".into(),
                    });
                }
                usize_of(v[0], "expert_feed_forward_length")?
            }
            None => req(g, "feed_forward_length")?,
        },
    };
    let rope_theta = g.get_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
    let rms_eps = g
        .get_f32(&key("attention.layer_norm_rms_epsilon"))?
        .unwrap_or(1e-6);
    let context_length = opt(g, "context_length")?.unwrap_or(4096);
    let window = opt(g, "attention.sliding_window")?;
    let gating = match g.get_u64(&key("expert_gating_func"))? {
        Some(2) => Gating::Sigmoid,
        Some(1) => Gating::Softmax,
        Some(other) => {
            return Err(Error::BadKey {
                key: key("expert_gating_func"),
                what: format!(
                    "gating function {other} is not used by SmallThinker (1 softmax, 2 sigmoid)"
                ),
            });
        }
        None => {
            tracing::warn!(
                "{} absent (PowerInfer-style file): assuming sigmoid routing, the config default",
                key("expert_gating_func")
            );
            Gating::Sigmoid
        }
    };

    // Layout.
    let rope_arr = layer_flags(g, KEY_ROPE_LAYOUT, n_layers)?;
    let slide_arr = layer_flags(g, KEY_SLIDING_LAYOUT, n_layers)?;
    let pattern_key = key("attention.sliding_window_pattern");
    let pattern = match g.get(&pattern_key) {
        None => None,
        Some(v) => {
            if let Some(period) = v.as_u64() {
                let p = usize_of(period, &pattern_key)?;
                if p == 0 {
                    return Err(Error::BadKey {
                        key: pattern_key,
                        what: "period 0".into(),
                    });
                }
                // As llama.cpp sets it for this architecture (`set_swa_pattern(n, dense_first)`):
                // layer i is global when i % n == 0, sliding otherwise.
                Some((0..n_layers).map(|i| i % p != 0).collect::<Vec<_>>())
            } else {
                layer_flags(g, &pattern_key, n_layers)?
            }
        }
    };
    let (layers, layout_source) = if rope_arr.is_some() || slide_arr.is_some() || pattern.is_some()
    {
        let slide = slide_arr
            .or(pattern)
            .unwrap_or_else(|| vec![false; n_layers]);
        // Without an explicit RoPE layout, the hybrid design pairs NoPE with global layers.
        let rope = rope_arr.unwrap_or_else(|| {
            if window.is_some() {
                slide.clone()
            } else {
                vec![true; n_layers]
            }
        });
        let kinds = (0..n_layers)
            .map(|i| LayerKind {
                rope: rope[i],
                sliding: slide[i],
            })
            .collect();
        (kinds, LayoutSource::Explicit)
    } else if window.is_some() {
        let kinds = (0..n_layers)
            .map(|i| LayerKind {
                rope: i % 4 != 0,
                sliding: i % 4 != 0,
            })
            .collect();
        (kinds, LayoutSource::LlamaCppRule)
    } else {
        let kinds = vec![
            LayerKind {
                rope: true,
                sliding: false,
            };
            n_layers
        ];
        (kinds, LayoutSource::AllGlobal)
    };
    let any_sliding = layers.iter().any(|k| k.sliding);
    let sliding_window = match (window, any_sliding) {
        (Some(w), _) => w,
        (None, true) => {
            return Err(Error::MissingKey(key("attention.sliding_window")));
        }
        (None, false) => 0,
    };

    let embd = g.require_tensor("token_embd.weight")?;
    let vocab_size = match embd.dims.as_slice() {
        [_, v] => usize_of(*v, "token_embd.weight")?,
        d => {
            return Err(Error::BadShape {
                tensor: embd.name.clone(),
                found: d.to_vec(),
                expected: vec![hidden as u64, 0],
            });
        }
    };
    let tied_embeddings = g.tensor("output.weight").is_none();
    let bos_token_id = g.get_u32("tokenizer.ggml.bos_token_id")?;
    let mut eos_token_ids = Vec::new();
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = g.get_u32(k)?
            && !eos_token_ids.contains(&id)
        {
            eos_token_ids.push(id);
        }
    }

    let cfg = ModelConfig {
        n_layers,
        hidden,
        n_heads,
        n_kv_heads,
        head_dim,
        vocab_size,
        n_experts,
        n_experts_used,
        expert_ffn,
        rope_theta,
        rms_eps,
        context_length,
        sliding_window,
        layers,
        layout_source,
        gating,
        tied_embeddings,
        bos_token_id,
        eos_token_ids,
    };
    cfg.validate()?;
    Ok(cfg)
}

fn shape_err(t: &TensorInfo, expected: &[usize]) -> Error {
    Error::BadShape {
        tensor: t.name.clone(),
        found: t.dims.clone(),
        expected: expected.iter().map(|&d| d as u64).collect(),
    }
}

fn bytes_of(g: &GgufFile, t: &TensorInfo) -> Result<TensorBytes> {
    TensorBytes::new(
        g.blob().clone(),
        t.abs_offset as usize,
        t.size_bytes as usize,
    )
}

/// A 2-D tensor `[cols, rows]` (ggml order) as a matrix, checking the shape.
fn matrix(g: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
    let t = g.require_tensor(name)?;
    if t.dims != [cols as u64, rows as u64] {
        return Err(shape_err(t, &[cols, rows]));
    }
    Matrix::new(name, t.ty, rows, cols, bytes_of(g, t)?)
}

fn vector(g: &GgufFile, name: &str, n: usize) -> Result<Vec<f32>> {
    let t = g.require_tensor(name)?;
    if t.dims != [n as u64] {
        return Err(shape_err(t, &[n]));
    }
    vector_f32(name, t.ty, g.tensor_data(t), n)
}

/// Splits a stacked `[ne0, ne1, E]` expert tensor into E matrices of `ne1` rows × `ne0` cols.
fn experts_of(g: &GgufFile, name: &str, ne0: usize, ne1: usize, e: usize) -> Result<Vec<Matrix>> {
    let t = g.require_tensor(name)?;
    if t.dims != [ne0 as u64, ne1 as u64, e as u64] {
        return Err(shape_err(t, &[ne0, ne1, e]));
    }
    let all = bytes_of(g, t)?;
    let per = all.len() / e.max(1);
    (0..e)
        .map(|i| {
            Matrix::new(
                format!("{name}[{i}]"),
                t.ty,
                ne1,
                ne0,
                all.slice(i * per, per)?,
            )
        })
        .collect()
}

/// Weights from a parsed GGUF, checked against `cfg`.
pub fn weights_from_gguf(g: &GgufFile, cfg: &ModelConfig) -> Result<Weights> {
    let (h, v, f, e) = (cfg.hidden, cfg.vocab_size, cfg.expert_ffn, cfg.n_experts);
    let embed = matrix(g, "token_embd.weight", v, h)?;
    let lm_head = if cfg.tied_embeddings {
        embed.clone()
    } else {
        matrix(g, "output.weight", v, h)?
    };
    let output_norm = vector(g, "output_norm.weight", h)?;
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("blk.{l}");
        let down_name = format!("{p}.ffn_down_exps.weight");
        let down_t = g.require_tensor(&down_name)?;
        let down_transposed = down_t.dims.first() == Some(&(h as u64)) && h != f;
        let gate = experts_of(g, &format!("{p}.ffn_gate_exps.weight"), h, f, e)?;
        let up = experts_of(g, &format!("{p}.ffn_up_exps.weight"), h, f, e)?;
        let down = if down_transposed {
            experts_of(g, &down_name, h, f, e)?
        } else {
            experts_of(g, &down_name, f, h, e)?
        };
        let experts = gate
            .into_iter()
            .zip(up)
            .zip(down)
            .map(|((gate, up), down)| ExpertWeights {
                gate,
                up,
                down,
                down_transposed,
                down_planes: None,
            })
            .collect();
        layers.push(LayerWeights {
            attn_norm: vector(g, &format!("{p}.attn_norm.weight"), h)?,
            wq: matrix(g, &format!("{p}.attn_q.weight"), cfg.q_dim(), h)?,
            wk: matrix(g, &format!("{p}.attn_k.weight"), cfg.kv_dim(), h)?,
            wv: matrix(g, &format!("{p}.attn_v.weight"), cfg.kv_dim(), h)?,
            wo: matrix(g, &format!("{p}.attn_output.weight"), h, cfg.q_dim())?,
            ffn_norm: vector(g, &format!("{p}.ffn_norm.weight"), h)?,
            router: matrix(g, &format!("{p}.ffn_gate_inp.weight"), e, h)?,
            experts,
        });
    }
    Ok(Weights {
        embed,
        output_norm,
        lm_head,
        layers,
    })
}

/// Opens and loads a GGUF model.
pub fn load_gguf(path: &Path) -> Result<(ModelConfig, Weights, GgufFile)> {
    let g = GgufFile::open(path)?;
    let cfg = config_from_gguf(&g)?;
    let w = weights_from_gguf(&g, &cfg)?;
    Ok((cfg, w, g))
}
