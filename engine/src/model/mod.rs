//! The SmallThinker model: configuration, weights and the forward pass.

pub mod attention;
pub mod config;
pub mod forward;
pub mod linear;
pub mod load_gguf;
pub mod load_hf;
pub mod ops;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

pub use config::{Gating, LayerKind, LayoutSource, ModelConfig};
pub use forward::{Logits, Observer, Phase, Probe, Session, SessionConfig};
pub use linear::ComputeMode;
pub use weights::{ExpertWeights, LayerWeights, Matrix, WeightBytes, Weights};

use crate::error::{Error, Result};

/// Options that shape how a model runs.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Exact (reference) or fast arithmetic.
    pub mode: ComputeMode,
    /// Compute threads (0: all cores).
    pub threads: usize,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            mode: ComputeMode::Fast,
            threads: 0,
        }
    }
}

/// A loaded model, ready to run sessions.
pub struct Model {
    /// Hyperparameters and layout.
    pub config: ModelConfig,
    /// The weights.
    pub weights: Weights,
    pub(crate) rope: ops::Rope,
    pub(crate) mode: ComputeMode,
    pub(crate) pool: Arc<rayon::ThreadPool>,
    /// The GGUF file the model came from (metadata such as the tokenizer), if any.
    pub gguf: Option<Arc<crate::formats::gguf::GgufFile>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Model {
    /// Builds a model from parts (used by the loaders and by tests).
    pub fn from_parts(
        config: ModelConfig,
        mut weights: Weights,
        opts: &ModelOptions,
    ) -> Result<Model> {
        config.validate()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .thread_name(|i| format!("compute-{i}"))
            .build()
            .map_err(|e| Error::Model(format!("cannot start compute threads: {e}")))?;
        if opts.mode == ComputeMode::Fast {
            pool.install(|| repack_down(&mut weights))?;
        }
        Ok(Model {
            rope: ops::Rope::new(config.head_dim, config.rope_theta),
            config,
            weights,
            mode: opts.mode,
            pool: Arc::new(pool),
            gguf: None,
        })
    }

    /// Loads a `.gguf` file or a Hugging Face directory (`config.json` + safetensors).
    pub fn load(path: &Path, opts: &ModelOptions) -> Result<Model> {
        if !path.exists() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
        if path.is_dir() {
            let (config, weights) = load_hf::load_hf_dir(path)?;
            Model::from_parts(config, weights, opts)
        } else {
            let (config, weights, gguf) = load_gguf::load_gguf(path)?;
            let mut m = Model::from_parts(config, weights, opts)?;
            m.gguf = Some(Arc::new(gguf));
            Ok(m)
        }
    }

    /// Switches between exact and fast arithmetic (fast needs the repacked layout built at load;
    /// a model loaded in exact mode builds it on the first switch).
    pub fn set_mode(&mut self, mode: ComputeMode) -> Result<()> {
        if mode == ComputeMode::Fast && self.mode != ComputeMode::Fast {
            let pool = self.pool.clone();
            pool.install(|| repack_down(&mut self.weights))?;
        }
        self.mode = mode;
        Ok(())
    }

    /// The model's tokenizer: from the GGUF metadata, or `tokenizer.json` in a Hugging Face
    /// directory (`dir` is where the model was loaded from).
    pub fn tokenizer(&self, dir: &Path) -> Result<crate::tokenizer::Tokenizer> {
        match &self.gguf {
            Some(g) => crate::tokenizer::Tokenizer::from_gguf(g),
            None => crate::tokenizer::Tokenizer::from_json_file(dir.join("tokenizer.json")),
        }
    }

    /// The compute mode.
    pub fn mode(&self) -> ComputeMode {
        self.mode
    }

    /// Number of compute threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

/// Builds the neuron-major down planes of every Q4_0/Q8_0 expert (in parallel) and releases the
/// original down pages of mapped files, so the repacked copy replaces rather than duplicates them.
fn repack_down(w: &mut Weights) -> Result<()> {
    use rayon::prelude::*;
    let _sp = tracing::debug_span!("load.repack_down").entered();
    w.layers
        .par_iter_mut()
        .flat_map(|l| l.experts.par_iter_mut())
        .try_for_each(|e| -> Result<()> {
            if e.down_transposed || e.down_planes.is_some() {
                return Ok(());
            }
            if let Some(p) = crate::moe::sparse_down::DownPlanes::from_down(&e.down)? {
                e.down_planes = Some(Arc::new(p));
                let (blob, start) = e.down.data.location();
                blob.release_pages(start, e.down.data.len());
            }
            Ok(())
        })
}
