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
use weights::{PackedX8, TensorBytes};

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
                    pool.install(|| relayout_fast(&mut weights))?;
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
            pool.install(|| relayout_fast(&mut self.weights))?;
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

/// Builds the fast path's layouts and releases the mapped originals' pages, so the copies
/// replace rather than duplicate them: x8-packed copies of the Q4_0 matrices read whole per
/// token (LM head, attention projections, expert gates), neuron-major down planes of Q4_0/Q8_0
/// experts (so inactive neurons' bytes are skipped), and plain copies of every other matrix
/// read per token (expert up matrices, of which decode reads only the rows of neurons whose
/// gate is positive; routers; matrices of other types).
///
/// Each layer's copies share one huge-page arena ([`Blob::anon_filled`]): decode reads an
/// expert's gate, scattered up rows and scattered down planes from DRAM, and with 4 KiB pages
/// nearly every scattered row costs a TLB miss.
fn relayout_fast(w: &mut Weights) -> Result<()> {
    use rayon::prelude::*;
    let _sp = tracing::debug_span!("load.relayout").entered();
    // The token embedding is packed too: its lookups then read the copy (a row per token),
    // not the released map, whose pages a model larger than half the RAM gets evicted from the
    // page cache (21B: 4 ms per token of disk reads). Tied weights share one copy.
    let tied = w.lm_head_is_embedding();
    w.lm_head.pack_x8()?;
    if w.lm_head.packed.is_none() {
        w.lm_head.copy_resident()?;
    }
    if tied {
        w.embed.packed = w.lm_head.packed.clone();
        if w.embed.packed.is_none() {
            w.embed.data = w.lm_head.data.clone();
        }
    } else if !w.embed.pack_x8()? {
        w.embed.copy_resident()?;
    }
    w.layers.par_iter_mut().try_for_each(relayout_layer)
}

/// What a layer's arena holds for one matrix.
#[derive(Clone, Copy)]
enum Piece {
    /// The x8-packed copy (Q4_0, rows in eights).
    X8,
    /// The neuron-major down planes.
    Planes(crate::moe::sparse_down::PlaneKind),
    /// A verbatim copy of bytes still mapped from the file.
    Copy,
}

/// Which matrix of a layer a piece is for.
#[derive(Clone, Copy)]
enum Target {
    Attn(usize),
    Router,
    Gate(usize),
    Up(usize),
    Down(usize),
}

fn target(l: &LayerWeights, t: Target) -> &Matrix {
    match t {
        Target::Attn(i) => [&l.wq, &l.wk, &l.wv, &l.wo][i],
        Target::Router => &l.router,
        Target::Gate(e) => &l.experts[e].gate,
        Target::Up(e) => &l.experts[e].up,
        Target::Down(e) => &l.experts[e].down,
    }
}

fn target_mut(l: &mut LayerWeights, t: Target) -> &mut Matrix {
    match t {
        Target::Attn(0) => &mut l.wq,
        Target::Attn(1) => &mut l.wk,
        Target::Attn(2) => &mut l.wv,
        Target::Attn(_) => &mut l.wo,
        Target::Router => &mut l.router,
        Target::Gate(e) => &mut l.experts[e].gate,
        Target::Up(e) => &mut l.experts[e].up,
        Target::Down(e) => &mut l.experts[e].down,
    }
}

/// [`relayout_fast`] for one layer: every matrix read per token gets its fast layout (x8 for
/// dense Q4_0 products, planes for Q4_0/Q8_0 down matrices) or, when it has none and is still
/// mapped (other types, the router, the up rows), a copy.
fn relayout_layer(l: &mut LayerWeights) -> Result<()> {
    use crate::formats::mmap::Blob;
    use crate::moe::sparse_down::{self, DownPlanes};
    use rayon::prelude::*;
    // (piece, bytes) for a matrix, if it gets one: x8 and plain copies take its own length.
    let copy = |m: &Matrix| m.is_mapped().then_some((Piece::Copy, m.data.len()));
    let dense = |m: &Matrix| {
        if m.x8_packable() {
            Some((Piece::X8, m.data.len()))
        } else {
            copy(m)
        }
    };
    let mut plan: Vec<(Target, Piece, usize)> = Vec::new();
    let mut add = |t: Target, p: Option<(Piece, usize)>| {
        if let Some((p, n)) = p {
            plan.push((t, p, n));
        }
    };
    for (i, m) in [&l.wq, &l.wk, &l.wv, &l.wo].into_iter().enumerate() {
        add(Target::Attn(i), dense(m));
    }
    add(Target::Router, copy(&l.router));
    for (e, x) in l.experts.iter().enumerate() {
        add(Target::Gate(e), dense(&x.gate));
        add(Target::Up(e), copy(&x.up));
        let d = &x.down;
        let planes = (!x.down_transposed && x.down_planes.is_none())
            .then(|| DownPlanes::layout_for(d.ty, d.rows, d.cols))
            .flatten();
        add(
            Target::Down(e),
            planes
                .map(|(kind, n)| (Piece::Planes(kind), n))
                .or_else(|| copy(d)),
        );
    }
    let total = plan.iter().map(|p| p.2).sum();
    let arena = Blob::anon_filled(total, |buf| {
        let mut dsts = Vec::with_capacity(plan.len());
        let mut rest = buf;
        for &(_, _, n) in &plan {
            let (d, r) = rest.split_at_mut(n);
            dsts.push(d);
            rest = r;
        }
        plan.par_iter()
            .zip(dsts)
            .try_for_each(|(&(t, piece, _), dst)| {
                let m = target(l, t);
                match piece {
                    Piece::X8 => m.pack_x8_into(dst),
                    Piece::Planes(kind) => {
                        sparse_down::repack(kind, m.rows, m.cols, m.bytes(), dst)
                    }
                    Piece::Copy => {
                        dst.copy_from_slice(m.bytes());
                        Ok(())
                    }
                }
            })
    })?;
    let mut at = 0;
    for (t, piece, n) in plan {
        let bytes = TensorBytes::new(arena.clone(), at, n)?;
        at += n;
        let m = target_mut(l, t);
        match piece {
            Piece::X8 => m.set_packed(PackedX8::new(bytes)?),
            Piece::Planes(kind) => {
                let p = DownPlanes::from_packed(kind, m.rows, m.cols, bytes)?;
                m.release_pages();
                if let Target::Down(e) = t {
                    l.experts[e].down_planes = Some(Arc::new(p));
                }
            }
            Piece::Copy => m.replace_data(bytes),
        }
    }
    Ok(())
}
