//! The SmallThinker model: configuration, weights and the forward pass.

pub mod attention;
pub mod config;
pub mod forward;
pub mod linear;
pub mod load_gguf;
pub mod load_hf;
pub mod offload;
pub mod ops;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

pub use config::{Gating, LayerKind, LayoutSource, ModelConfig};
pub use forward::{Logits, Observer, Phase, Probe, Session, SessionConfig};
pub use linear::ComputeMode;
pub use offload::{Offload, OffloadOptions, OffloadSnapshot, SpecStats};
pub use weights::{ExpertWeights, LayerWeights, Matrix, WeightBytes, Weights};

use crate::error::{Error, Result};

/// Options that shape how a model runs.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Exact (reference) or fast arithmetic.
    pub mode: ComputeMode,
    /// Compute threads (0: all cores).
    pub threads: usize,
    /// Stream experts from storage under a memory budget (`None`: everything in memory).
    pub offload: Option<OffloadOptions>,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            mode: ComputeMode::Fast,
            threads: 0,
            offload: None,
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
    /// Expert offloading, when loaded with a memory budget.
    pub(crate) offload: Option<Offload>,
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
    /// Builds a model from parts (used by the loaders and by tests). With
    /// [`ModelOptions::offload`] the experts must be views of a memory-mapped file.
    pub fn from_parts(config: ModelConfig, weights: Weights, opts: &ModelOptions) -> Result<Model> {
        Model::build(config, weights, None, opts)
    }

    fn build(
        config: ModelConfig,
        mut weights: Weights,
        gguf: Option<crate::formats::gguf::GgufFile>,
        opts: &ModelOptions,
    ) -> Result<Model> {
        config.validate()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .thread_name(|i| format!("compute-{i}"))
            .build()
            .map_err(|e| Error::Model(format!("cannot start compute threads: {e}")))?;
        let offload = match &opts.offload {
            Some(o) => Some(Offload::build(
                &config,
                &mut weights,
                gguf.as_ref(),
                opts.mode,
                o,
            )?),
            // Offloaded experts are never touched through the map: no repacking at load.
            None => {
                if opts.mode == ComputeMode::Fast {
                    pool.install(|| repack_down(&mut weights))?;
                    pool.install(|| pack_x8(&mut weights))?;
                }
                None
            }
        };
        Ok(Model {
            rope: ops::Rope::new(config.head_dim, config.rope_theta),
            config,
            weights,
            mode: opts.mode,
            pool: Arc::new(pool),
            gguf: gguf.map(Arc::new),
            offload,
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
            let g = crate::formats::gguf::GgufFile::open(path)?;
            if opts.offload.is_some() {
                // Before any tensor is touched: no read-around on page faults, so reading the
                // small norm vectors does not pull megabytes of neighbouring experts into the
                // page cache (with the device's readahead window, hundreds of MiB in all).
                g.blob().advise_random();
            }
            let config = load_gguf::config_from_gguf(&g)?;
            let weights = load_gguf::weights_from_gguf(&g, &config)?;
            Model::build(config, weights, Some(g), opts)
        }
    }

    /// Switches between exact and fast arithmetic (fast needs the repacked layout built at load;
    /// a model loaded in exact mode builds it on the first switch). An offloaded model keeps the
    /// mode it was loaded with (its cache slots hold that mode's layout).
    pub fn set_mode(&mut self, mode: ComputeMode) -> Result<()> {
        if self.offload.is_some() && mode != self.mode {
            return Err(Error::InvalidInput(format!(
                "an offloaded model cannot switch from {:?} to {mode:?} mode; load it in that mode",
                self.mode
            )));
        }
        if mode == ComputeMode::Fast && self.mode != ComputeMode::Fast {
            let pool = self.pool.clone();
            pool.install(|| repack_down(&mut self.weights))?;
            pool.install(|| pack_x8(&mut self.weights))?;
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

    /// The offloading machinery (plan, prefetcher, counters), when loaded with a budget.
    pub fn offload(&self) -> Option<&Offload> {
        self.offload.as_ref()
    }

    /// The memory plan loading this model with `opts` in `mode` would make, and how experts
    /// would be read. Fails with [`Error::BudgetTooSmall`] like the load would.
    pub fn memory_plan(
        &self,
        mode: ComputeMode,
        opts: &OffloadOptions,
    ) -> Result<(crate::offload::Plan, crate::offload::IoMode)> {
        offload::plan(
            &self.config,
            &self.weights,
            self.gguf.as_deref(),
            mode,
            opts,
        )
    }

    /// Offload counters now (`None` without offloading).
    pub fn offload_snapshot(&self) -> Option<OffloadSnapshot> {
        self.offload.as_ref().map(Offload::snapshot)
    }
}

/// Builds the x8-packed copies of the Q4_0 matrices read whole per token (attention
/// projections, the LM head, expert gates) and releases their mapped originals' pages. Expert up
/// matrices stay row-major: decode reads only the rows of neurons whose gate is positive.
fn pack_x8(w: &mut Weights) -> Result<()> {
    use rayon::prelude::*;
    let _sp = tracing::debug_span!("load.pack_x8").entered();
    w.lm_head.pack_x8()?;
    w.layers.par_iter_mut().try_for_each(|l| -> Result<()> {
        for m in [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo] {
            m.pack_x8()?;
        }
        l.experts
            .par_iter_mut()
            .try_for_each(|e| e.gate.pack_x8().map(|_| ()))
    })
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
