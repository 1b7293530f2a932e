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
use engine::formats::gguf::GgufLayout;

/// Version of the weight design; part of the fingerprint, so files from an older design are
/// rebuilt rather than reused.
pub const DESIGN_VERSION: u32 = 1;
/// Metadata key holding the request's fingerprint.
pub const KEY_FINGERPRINT: &str = "smallthinker_rs.gen.fingerprint";
/// Bytes of the file each work item produces (a multiple of [`IO_ALIGN`]).
const WINDOW_BYTES: usize = 8 << 20;
/// Alignment of O_DIRECT buffers, offsets and lengths.
const IO_ALIGN: usize = 4096;

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
    /// Write with O_DIRECT when the file system allows it (bypasses the page cache, which on
    /// some machines is far slower than the disk); falls back to buffered writes otherwise.
    pub direct_io: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            force: false,
            threads: 0,
            alignment: DEFAULT_ALIGNMENT,
            direct_io: true,
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

/// Opens the temporary output, with O_DIRECT if asked and supported.
fn open_output(path: &Path, direct: bool) -> Result<(File, bool)> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        let mut od = o.clone();
        od.custom_flags(libc::O_DIRECT);
        if let Ok(f) = od.open(path) {
            return Ok((f, true));
        }
    }
    Ok((o.open(path).map_err(|e| Error::io(path, e))?, false))
}

/// Per-worker buffers.
#[derive(Default)]
struct WindowBufs {
    raw: Vec<u8>,
    row_f32: Vec<f32>,
    row_q: Vec<u8>,
}

/// A zeroed, [`IO_ALIGN`]-aligned slice of `len` bytes of `raw` (grown as needed).
fn aligned_window(raw: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if raw.len() < len + IO_ALIGN {
        *raw = vec![0u8; len + IO_ALIGN];
    }
    let off = raw.as_ptr().align_offset(IO_ALIGN);
    let buf = &mut raw[off..off + len];
    buf.fill(0);
    buf
}

/// What a window needs to produce its bytes.
struct WindowCtx<'a> {
    plan: &'a Plan,
    defs: &'a [TensorDef],
    header: &'a [u8],
    layout: &'a GgufLayout,
}

impl WindowCtx<'_> {
    /// Produces file bytes `start .. start + out.len()` (header, tensor data; padding stays 0).
    fn fill_window(
        &self,
        start: u64,
        out: &mut [u8],
        row_f32: &mut Vec<f32>,
        row_q: &mut Vec<u8>,
    ) -> Result<()> {
        let end = start + out.len() as u64;
        let hl = self.header.len() as u64;
        if start < hl {
            let n = (hl.min(end) - start) as usize;
            out[..n].copy_from_slice(&self.header[start as usize..start as usize + n]);
        }
        let base = self.layout.data_offset;
        // Tensors are laid out in order; find the first one ending after `start`.
        let first = self
            .layout
            .tensor_offsets
            .iter()
            .zip(&self.layout.tensor_sizes)
            .position(|(&o, &z)| base + o + z > start)
            .unwrap_or(self.defs.len());
        for ti in first..self.defs.len() {
            let t0 = base + self.layout.tensor_offsets[ti];
            if t0 >= end {
                break;
            }
            let d = &self.defs[ti];
            let rb =
                d.ty.row_bytes(d.cols as u64)
                    .ok_or_else(|| Error::Spec(format!("{}: bad row length", d.name)))?;
            let lo = start.saturating_sub(t0) / rb;
            let hi = ((end - t0).div_ceil(rb)).min(d.rows as u64);
            row_f32.resize(d.cols, 0.0);
            row_q.resize(rb as usize, 0);
            for r in lo..hi {
                let r0 = t0 + r * rb;
                fill_rows(self.plan, d, r as usize, row_f32);
                if r0 >= start && r0 + rb <= end {
                    let o = (r0 - start) as usize;
                    crate::quant::quantize_row(d.ty, row_f32, &mut out[o..o + rb as usize])?;
                } else {
                    crate::quant::quantize_row(d.ty, row_f32, row_q)?;
                    let a = r0.max(start);
                    let b = (r0 + rb).min(end);
                    out[(a - start) as usize..(b - start) as usize]
                        .copy_from_slice(&row_q[(a - r0) as usize..(b - r0) as usize]);
                }
            }
        }
        Ok(())
    }
}

/// Writes only the header of the model `req` describes, with a sparse, all-zero data section of
/// the right size: a file with exactly the real metadata and tensor table (what `thinker
/// inspect` and any loader's shape checks see) that costs no disk space and no time. Returns
/// the file size. Not for running: every weight is zero.
pub fn write_skeleton(req: &GenRequest, path: &Path) -> Result<u64> {
    let spec = req.spec()?;
    req.targets.validate()?;
    let plan = Plan::new(&spec, &req.targets, req.seed);
    let defs = tensor_defs(&spec, req.out_type);
    let meta = metadata(req, &spec, &plan, DEFAULT_ALIGNMENT)?;
    let specs: Vec<TensorSpec> = defs
        .iter()
        .map(|d| TensorSpec::new(d.name.clone(), d.dims.clone(), d.ty))
        .collect();
    let (header, layout) = encode_header(&meta, &specs, DEFAULT_ALIGNMENT)?;
    let f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all_at(&header, 0).map_err(|e| Error::io(path, e))?;
    f.set_len(layout.total_len)
        .map_err(|e| Error::io(path, e))?;
    Ok(layout.total_len)
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
    let (file, direct) = open_output(&tmp, opts.direct_io)?;
    let total = layout.total_len;
    let windows = total.div_ceil(WINDOW_BYTES as u64) as usize;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .thread_name(|i| format!("gen-{i}"))
        .build()
        .map_err(|e| Error::Spec(format!("cannot start worker threads: {e}")))?;
    let ctx = WindowCtx {
        plan: &plan,
        defs: &defs,
        header: &header,
        layout: &layout,
    };
    pool.install(|| {
        (0..windows).into_par_iter().try_for_each_init(
            WindowBufs::default,
            |bufs, w| -> Result<()> {
                let start = w as u64 * WINDOW_BYTES as u64;
                let len = (total - start).min(WINDOW_BYTES as u64) as usize;
                // O_DIRECT needs block-aligned lengths: the tail is written rounded up and the
                // file truncated afterwards.
                let write_len = if direct {
                    len.next_multiple_of(IO_ALIGN)
                } else {
                    len
                };
                let buf = aligned_window(&mut bufs.raw, write_len);
                ctx.fill_window(start, &mut buf[..len], &mut bufs.row_f32, &mut bufs.row_q)?;
                buf[len..].fill(0);
                file.write_all_at(buf, start)
                    .map_err(|e| Error::io(&tmp, e))
            },
        )
    })?;
    file.set_len(total).map_err(|e| Error::io(&tmp, e))?;
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
        direct,
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
