//! Loading a Hugging Face directory: `config.json` plus `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), mapped zero-copy onto [`Weights`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use super::config::ModelConfig;
use super::weights::{ExpertWeights, LayerWeights, Matrix, TensorBytes, Weights, vector_f32};
use crate::error::{Error, Result};
use crate::formats::mmap::Blob;
use crate::quant::GgmlType;

/// One tensor found in a safetensors file.
struct StTensor {
    ty: GgmlType,
    shape: Vec<usize>,
    bytes: TensorBytes,
}

/// Every tensor of the checkpoint, by name.
struct StIndex {
    tensors: HashMap<String, StTensor>,
}

impl StIndex {
    fn open(dir: &Path) -> Result<StIndex> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_files(&index)?
        } else {
            return Err(Error::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the directory",
                ),
            });
        };
        let mut tensors = HashMap::new();
        for f in files {
            let blob = Blob::open(&f)?;
            let err = |what: String| Error::Safetensors {
                path: f.clone(),
                what,
            };
            let st = SafeTensors::deserialize(blob.as_bytes()).map_err(|e| err(e.to_string()))?;
            let base = blob.as_bytes().as_ptr() as usize;
            for (name, view) in st.tensors() {
                let ty = match view.dtype() {
                    Dtype::F32 => GgmlType::F32,
                    Dtype::F16 => GgmlType::F16,
                    Dtype::BF16 => GgmlType::BF16,
                    other => {
                        return Err(err(format!(
                            "tensor '{name}': dtype {other:?} is not supported"
                        )));
                    }
                };
                let start = view.data().as_ptr() as usize - base;
                let bytes = TensorBytes::new(blob.clone(), start, view.data().len())?;
                tensors.insert(
                    name.clone(),
                    StTensor {
                        ty,
                        shape: view.shape().to_vec(),
                        bytes,
                    },
                );
            }
        }
        Ok(StIndex { tensors })
    }

    fn get(&self, name: &str) -> Result<&StTensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let t = self.get(name)?;
        if t.shape != [rows, cols] {
            return Err(Error::BadShape {
                tensor: name.into(),
                found: t.shape.iter().rev().map(|&d| d as u64).collect(),
                expected: vec![cols as u64, rows as u64],
            });
        }
        Matrix::new(name, t.ty, rows, cols, t.bytes.clone())
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        if t.shape != [n] {
            return Err(Error::BadShape {
                tensor: name.into(),
                found: t.shape.iter().rev().map(|&d| d as u64).collect(),
                expected: vec![n as u64],
            });
        }
        vector_f32(name, t.ty, t.bytes.as_slice(), n)
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: index.to_path_buf(),
        what: e.to_string(),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config {
            path: index.to_path_buf(),
            what: "no weight_map object".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    for f in &files {
        if f.contains('/') || f.contains("..") {
            return Err(Error::Config {
                path: index.to_path_buf(),
                what: format!("shard name '{f}' leaves the directory"),
            });
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads `dir/config.json` and its safetensors.
pub fn load_hf_dir(dir: &Path) -> Result<(ModelConfig, Weights)> {
    let cfg = ModelConfig::from_hf_json(&dir.join("config.json"))?;
    let st = StIndex::open(dir)?;
    let (h, v) = (cfg.hidden, cfg.vocab_size);
    let (q, kv, f) = (cfg.q_dim(), cfg.kv_dim(), cfg.expert_ffn);
    let embed = st.matrix("model.embed_tokens.weight", v, h)?;
    let lm_head = if cfg.tied_embeddings {
        embed.clone()
    } else {
        st.matrix("lm_head.weight", v, h)?
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let p = format!("model.layers.{l}");
        let mut experts = Vec::with_capacity(cfg.n_experts);
        for e in 0..cfg.n_experts {
            let ep = format!("{p}.block_sparse_moe.experts.{e}");
            experts.push(ExpertWeights {
                gate: st.matrix(&format!("{ep}.gate.weight"), f, h)?,
                up: st.matrix(&format!("{ep}.up.weight"), f, h)?,
                down: st.matrix(&format!("{ep}.down.weight"), h, f)?,
                down_transposed: false,
                down_planes: None,
            });
        }
        layers.push(LayerWeights {
            attn_norm: st.vector(&format!("{p}.input_layernorm.weight"), h)?,
            wq: st.matrix(&format!("{p}.self_attn.q_proj.weight"), q, h)?,
            wk: st.matrix(&format!("{p}.self_attn.k_proj.weight"), kv, h)?,
            wv: st.matrix(&format!("{p}.self_attn.v_proj.weight"), kv, h)?,
            wo: st.matrix(&format!("{p}.self_attn.o_proj.weight"), h, q)?,
            ffn_norm: st.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
            router: st.matrix(
                &format!("{p}.block_sparse_moe.primary_router.weight"),
                cfg.n_experts,
                h,
            )?,
            experts,
        });
    }
    let output_norm = st.vector("model.norm.weight", h)?;
    Ok((
        cfg,
        Weights {
            embed,
            output_norm,
            lm_head,
            layers,
        },
    ))
}
