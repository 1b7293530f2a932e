//! Writing a synthetic model as GGUF: metadata as llama.cpp's converter writes it plus our
//! explicit layout and provenance keys, then every tensor generated and quantised in parallel
//! chunks, each written at its final offset (`pwrite`), into a temporary file that is fsynced and
//! renamed into place. The model is never held in memory: each worker holds one chunk.
//!
//! An existing file whose `smallthinker_rs.gen.fingerprint` equals the request's is reused; one
//! that this generator wrote with other settings is rebuilt; any other file is left alone unless
//! `force` is set.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use engine::formats::gguf::{
    ALIGNMENT_KEY, Array, DEFAULT_ALIGNMENT, GgufFile, TensorSpec, Value, encode_header,
};
use engine::model::load_gguf::{KEY_ROPE_LAYOUT, KEY_SLIDING_LAYOUT};
use rayon::prelude::*;

use crate::design::Targets;
use crate::design::plan::Plan;
use crate::error::{Error, Result};
use crate::spec::{ModelSpec, OutType, Overrides};
use crate::synth::{TensorDef, fill_rows, tensor_defs};
use crate::tokenizer::{CHATML_TEMPLATE, qwen_tokenizer};

/// Version of the weight design; part of the fingerprint, so files from an older design are
/// rebuilt rather than reused.
pub const DESIGN_VERSION: u32 = 1;
/// Metadata key holding the request's fingerprint.
pub const KEY_FINGERPRINT: &str = "smallthinker_rs.gen.fingerprint";
/// Elements generated per work item (bounds each worker's buffer to 4 MiB of f32).
const CHUNK_ELEMS: usize = 1 << 20;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenRequest {
    /// Preset name.
    pub preset: String,
    /// Overrides applied to the preset.
    pub overrides: Overrides,
    /// Output type.
    pub out_type: OutType,
    /// Seed of every random choice.
    pub seed: u64,
    /// Behaviour targets.
    pub targets: Targets,
}

impl GenRequest {
    /// A request for a preset with default targets.
    pub fn new(preset: &str, out_type: OutType, seed: u64) -> GenRequest {
        GenRequest {
            preset: preset.to_string(),
            overrides: Overrides::default(),
            out_type,
            seed,
            targets: Targets::default(),
        }
    }

    /// The model spec (preset plus overrides).
    pub fn spec(&self) -> Result<ModelSpec> {
        ModelSpec::with_overrides(&self.preset, &self.overrides)
    }

    /// The string stored under [`KEY_FINGERPRINT`]: everything that determines the file's bytes.
    pub fn fingerprint(&self, alignment: u64) -> String {
        let t = &self.targets;
        format!(
            "smallthinker-rs synthetic v{DESIGN_VERSION}; preset={}; overrides={}; type={}; seed={}; \
             zipf={}; reuse={}; zero_share={}; neuron_spread={}; logit_scale={}; alignment={alignment}",
            self.preset,
            self.overrides.describe(),
            self.out_type,
            self.seed,
            t.zipf_s,
            t.reuse,
            t.zero_share,
            t.neuron_spread,
            t.logit_scale
        )
    }

    /// A default file name, e.g. `smallthinker-4b-a0.6b-synthetic-q4_0-s0.gguf`.
    pub fn default_file_name(&self) -> String {
        let o = self.overrides.describe().replace([',', '='], "-");
        let o = if o.is_empty() { o } else { format!("-{o}") };
        format!(
            "smallthinker-{}{o}-synthetic-{}-s{}.gguf",
            self.preset, self.out_type, self.seed
        )
    }
}

/// How to write.
#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Rebuild even if a matching file exists, and replace files this generator did not write.
    pub force: bool,
    /// Worker threads (0: all cores).
    pub threads: usize,
    /// Data alignment (32, llama.cpp's default; 4096 makes every tensor O_DIRECT-readable).
    pub alignment: u64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            force: false,
            threads: 0,
            alignment: DEFAULT_ALIGNMENT,
        }
    }
}

/// What a generation did.
#[derive(Clone, Debug)]
pub struct GenReport {
    /// The file.
    pub path: PathBuf,
    /// Whether an existing file was reused.
    pub reused: bool,
    /// File size.
    pub bytes: u64,
    /// Seconds spent designing (calibration).
    pub plan_secs: f64,
    /// Seconds spent generating and writing tensors, including the final fsync.
    pub write_secs: f64,
    /// Calibrated context share of the router noise.
    pub phi: f64,
    /// Reuse the calibration model predicts (average over layers).
    pub predicted_reuse: f64,
}

impl GenReport {
    /// Write throughput in GB/s (1e9 bytes).
    pub fn gb_per_s(&self) -> f64 {
        if self.write_secs > 0.0 {
            self.bytes as f64 / 1e9 / self.write_secs
        } else {
            0.0
        }
    }
}

fn arr_flags(v: &[bool]) -> Value {
    Value::Array(Array::I32(v.iter().map(|&b| i32::from(b)).collect()))
}

fn u32v(x: usize) -> Result<Value> {
    u32::try_from(x)
        .map(Value::U32)
        .map_err(|_| Error::Spec(format!("{x} does not fit a u32 metadata value")))
}

/// The metadata of a generated file, in the converter's order, then tokenizer and our keys.
pub fn metadata(
    req: &GenRequest,
    spec: &ModelSpec,
    plan: &Plan,
    alignment: u64,
) -> Result<Vec<(String, Value)>> {
    let a = "smallthinker";
    let mut m: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Value| m.push((k.to_string(), v));
    put("general.architecture", Value::String(a.into()));
    put("general.type", Value::String("model".into()));
    put("general.name", Value::String(spec.name.clone()));
    put("general.size_label", Value::String(spec.size_label()));
    if alignment != DEFAULT_ALIGNMENT {
        put(ALIGNMENT_KEY, u32v(alignment as usize)?);
    }
    put(&format!("{a}.block_count"), u32v(spec.n_layers)?);
    put(&format!("{a}.context_length"), u32v(spec.context_length)?);
    put(&format!("{a}.embedding_length"), u32v(spec.hidden)?);
    put(&format!("{a}.attention.head_count"), u32v(spec.n_heads)?);
    put(
        &format!("{a}.attention.head_count_kv"),
        u32v(spec.n_kv_heads)?,
    );
    put(&format!("{a}.rope.freq_base"), Value::F32(spec.rope_theta));
    put(
        &format!("{a}.attention.layer_norm_rms_epsilon"),
        Value::F32(spec.rms_eps),
    );
    put(&format!("{a}.attention.key_length"), u32v(spec.head_dim)?);
    put(&format!("{a}.attention.value_length"), u32v(spec.head_dim)?);
    put("general.file_type", Value::U32(req.out_type.file_type()));
    put(&format!("{a}.expert_count"), u32v(spec.n_experts)?);
    put(
        &format!("{a}.expert_used_count"),
        u32v(spec.n_experts_used)?,
    );
    put(
        &format!("{a}.expert_feed_forward_length"),
        u32v(spec.expert_ffn)?,
    );
    put(&format!("{a}.feed_forward_length"), u32v(spec.expert_ffn)?);
    put(
        &format!("{a}.expert_gating_func"),
        Value::U32(if spec.softmax_gating { 1 } else { 2 }),
    );
    if spec.any_sliding() {
        put(
            &format!("{a}.attention.sliding_window"),
            u32v(spec.sliding_window)?,
        );
    }
    put("general.quantization_version", Value::U32(2));
    if let Some(t) = qwen_tokenizer(spec.vocab_size)? {
        put("tokenizer.ggml.model", Value::String("gpt2".into()));
        put("tokenizer.ggml.pre", Value::String("qwen2".into()));
        put(
            "tokenizer.ggml.tokens",
            Value::Array(Array::String(t.tokens)),
        );
        put(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(t.token_type)),
        );
        put(
            "tokenizer.ggml.merges",
            Value::Array(Array::String(t.merges)),
        );
        put("tokenizer.ggml.eos_token_id", Value::U32(t.eos));
        put("tokenizer.ggml.padding_token_id", Value::U32(t.pad));
        put("tokenizer.ggml.bos_token_id", Value::U32(t.bos));
        put("tokenizer.ggml.add_bos_token", Value::Bool(false));
        put("tokenizer.ggml.add_eos_token", Value::Bool(false));
        put(
            "tokenizer.chat_template",
            Value::String(CHATML_TEMPLATE.into()),
        );
    }
    // Explicit per-layer layout (read first by our engine; llama.cpp ignores these keys and
    // applies its rule to `attention.sliding_window`, which gives the same layout for the
    // presets' layout rules).
    put(KEY_ROPE_LAYOUT, arr_flags(&spec.rope_layout));
    put(KEY_SLIDING_LAYOUT, arr_flags(&spec.sliding_layout));
    // Provenance.
    let g = "smallthinker_rs.gen";
    put(KEY_FINGERPRINT, Value::String(req.fingerprint(alignment)));
    put(&format!("{g}.preset"), Value::String(req.preset.clone()));
    put(&format!("{g}.seed"), Value::U64(req.seed));
    put(
        &format!("{g}.type"),
        Value::String(req.out_type.to_string()),
    );
    put(
        &format!("{g}.target.zipf"),
        Value::F32(req.targets.zipf_s as f32),
    );
    put(
        &format!("{g}.target.reuse"),
        Value::F32(req.targets.reuse as f32),
    );
    put(
        &format!("{g}.target.zero_share"),
        Value::F32(req.targets.zero_share as f32),
    );
    put(
        &format!("{g}.design.phi"),
        Value::F32(plan.router.phi as f32),
    );
    put(
        &format!("{g}.design.context_layers"),
        Value::Array(Array::I32(
            plan.layers
                .iter()
                .map(|l| i32::from(l.has_context))
                .collect(),
        )),
    );
    Ok(m)
}

/// The fingerprint stored in an existing file, if it is a GGUF with one.
fn existing_fingerprint(path: &Path) -> Option<Option<String>> {
    let g = GgufFile::open(path).ok()?;
    Some(
        g.get_str(KEY_FINGERPRINT)
            .ok()
            .flatten()
            .map(|s| s.to_string()),
    )
}

/// Removes the temporary file unless the write completed.
struct TempGuard {
    path: PathBuf,
    done: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One chunk of rows of one tensor.
struct Job {
    tensor: usize,
    row0: usize,
    rows: usize,
}

/// Generates the model `req` describes at `path`.
pub fn generate(req: &GenRequest, path: &Path, opts: &GenOptions) -> Result<GenReport> {
    let spec = req.spec()?;
    req.targets.validate()?;
    let fingerprint = req.fingerprint(opts.alignment);
    if path.exists() {
        match existing_fingerprint(path) {
            Some(Some(fp)) if fp == fingerprint && !opts.force => {
                let bytes = std::fs::metadata(path)
                    .map_err(|e| Error::io(path, e))?
                    .len();
                return Ok(GenReport {
                    path: path.to_path_buf(),
                    reused: true,
                    bytes,
                    plan_secs: 0.0,
                    write_secs: 0.0,
                    phi: f64::NAN,
                    predicted_reuse: f64::NAN,
                });
            }
            Some(Some(_)) => {} // ours, other settings: rebuild
            _ if opts.force => {}
            Some(None) => {
                return Err(Error::Exists {
                    path: path.to_path_buf(),
                    what: "a GGUF without a generator fingerprint".into(),
                });
            }
            None => {
                return Err(Error::Exists {
                    path: path.to_path_buf(),
                    what: "not a readable GGUF file".into(),
                });
            }
        }
    }

    let t0 = Instant::now();
    let plan = Plan::new(&spec, &req.targets, req.seed);
    let defs = tensor_defs(&spec, req.out_type);
    let meta = metadata(req, &spec, &plan, opts.alignment)?;
    let specs: Vec<TensorSpec> = defs
        .iter()
        .map(|d| TensorSpec::new(d.name.clone(), d.dims.clone(), d.ty))
        .collect();
    let (header, layout) = encode_header(&meta, &specs, opts.alignment)?;
    let plan_secs = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Spec(format!("{} has no file name", path.display())))?;
    let tmp = path.with_file_name(format!(
        "{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let mut guard = TempGuard {
        path: tmp.clone(),
        done: false,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    file.set_len(layout.total_len)
        .map_err(|e| Error::io(&tmp, e))?;
    file.write_all_at(&header, 0)
        .map_err(|e| Error::io(&tmp, e))?;

    let mut jobs = Vec::new();
    for (i, d) in defs.iter().enumerate() {
        let per = (CHUNK_ELEMS / d.cols).max(1);
        let mut r = 0;
        while r < d.rows {
            let n = per.min(d.rows - r);
            jobs.push(Job {
                tensor: i,
                row0: r,
                rows: n,
            });
            r += n;
        }
    }
    let written = AtomicU64::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .thread_name(|i| format!("gen-{i}"))
        .build()
        .map_err(|e| Error::Spec(format!("cannot start worker threads: {e}")))?;
    let data_offset = layout.data_offset;
    pool.install(|| {
        jobs.par_iter().try_for_each_init(
            || (Vec::<f32>::new(), Vec::<u8>::new()),
            |(vals, bytes), job| -> Result<()> {
                let d: &TensorDef = &defs[job.tensor];
                let row_bytes =
                    d.ty.row_bytes(d.cols as u64)
                        .ok_or_else(|| Error::Spec(format!("{}: bad row length", d.name)))?
                        as usize;
                vals.resize(job.rows * d.cols, 0.0);
                bytes.resize(job.rows * row_bytes, 0);
                fill_rows(&plan, d, job.row0, vals);
                for (src, dst) in vals.chunks(d.cols).zip(bytes.chunks_mut(row_bytes)) {
                    engine::quant::quantize_row(d.ty, src, dst)?;
                }
                let off =
                    data_offset + layout.tensor_offsets[job.tensor] + (job.row0 * row_bytes) as u64;
                file.write_all_at(bytes, off)
                    .map_err(|e| Error::io(&tmp, e))?;
                written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            },
        )
    })?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    guard.done = true;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    let write_secs = t1.elapsed().as_secs_f64();
    tracing::info!(
        path = %path.display(),
        bytes = layout.total_len,
        tensor_bytes = written.load(Ordering::Relaxed),
        plan_secs,
        write_secs,
        "generated"
    );
    let n_ctx = plan.layers.iter().filter(|l| l.has_context).count() as f64;
    let n = plan.layers.len() as f64;
    let predicted_reuse =
        (n_ctx * plan.router.reuse_context + (n - n_ctx) * plan.router.reuse_no_context) / n;
    Ok(GenReport {
        path: path.to_path_buf(),
        reused: false,
        bytes: layout.total_len,
        plan_secs,
        write_secs,
        phi: plan.router.phi,
        predicted_reuse,
    })
}
