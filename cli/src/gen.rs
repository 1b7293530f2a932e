//! `thinker gen`: write a synthetic SmallThinker model (real shapes, shaped routing and sparsity)
//! as GGUF, and optionally measure its routing with the engine.

use std::path::PathBuf;

use anyhow::{Context, Result};
use datasets::generate::{GenOptions, GenRequest, generate};
use datasets::measure::measure;
use datasets::prompts::{TokenDist, synthetic_prompt};
use datasets::spec::{OUT_TYPES, PRESETS};
use datasets::{OutType, Targets};
use engine::model::{Model, ModelOptions};

use crate::args::human_bytes;

/// `thinker gen` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Preset: tiny, 4b-a0.6b or 21b-a3b.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Output type: f32, f16, bf16, q8_0, q4_0 (everything Q4_0, as `--pure`) or q4_0-mixed
    /// (llama-quantize's default Q4_0 recipe).
    #[arg(long = "type", default_value = "q4_0")]
    out_type: String,
    /// Output file, or a directory to put the default file name in.
    #[arg(long, short = 'o')]
    out: PathBuf,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rebuild even if a matching file exists (and replace files not made by this generator).
    #[arg(long)]
    force: bool,
    /// Worker threads (0: all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    threads: usize,
    /// Data alignment in bytes (32 as llama.cpp; 4096 for O_DIRECT-friendly expert offsets).
    #[arg(long, default_value_t = 32)]
    alignment: u64,
    /// Write through the page cache instead of O_DIRECT.
    #[arg(long)]
    buffered: bool,
    /// Override: layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Override: hidden size.
    #[arg(long)]
    hidden: Option<usize>,
    /// Override: attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Override: key/value heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Override: head dimension.
    #[arg(long)]
    head_dim: Option<usize>,
    /// Override: vocabulary rows.
    #[arg(long)]
    vocab: Option<usize>,
    /// Override: experts per layer.
    #[arg(long)]
    experts: Option<usize>,
    /// Override: experts chosen per token.
    #[arg(long)]
    experts_used: Option<usize>,
    /// Override: expert inner width.
    #[arg(long)]
    ffn: Option<usize>,
    /// Override: context length.
    #[arg(long)]
    context: Option<usize>,
    /// Override: sliding window.
    #[arg(long)]
    window: Option<usize>,
    /// Override: tied (true) or separate (false) LM head.
    #[arg(long)]
    tied: Option<bool>,
    /// Target Zipf exponent of expert popularity.
    #[arg(long, default_value_t = Targets::default().zipf_s)]
    zipf: f64,
    /// Target share of a token's experts also chosen by the previous token.
    #[arg(long, default_value_t = Targets::default().reuse)]
    reuse: f64,
    /// Target share of exactly-zero ReGLU activations.
    #[arg(long, default_value_t = Targets::default().zero_share)]
    zero_share: f64,
    /// Spread of per-neuron gate thresholds (hot and cold neurons).
    #[arg(long, default_value_t = Targets::default().neuron_spread)]
    neuron_spread: f64,
    /// After writing, run this many synthetic prompts (128 tokens, 16 generated) through the
    /// engine and print the measured skew, reuse and zero share per layer.
    #[arg(long, default_value_t = 0)]
    measure: usize,
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let out_type: OutType = a
        .out_type
        .parse()
        .with_context(|| format!("--type must be one of {}", OUT_TYPES.join(", ")))?;
    if !PRESETS.contains(&a.preset.as_str()) {
        anyhow::bail!("--preset must be one of {}", PRESETS.join(", "));
    }
    let mut req = GenRequest::new(&a.preset, out_type, a.seed);
    let o = &mut req.overrides;
    o.layers = a.layers;
    o.hidden = a.hidden;
    o.heads = a.heads;
    o.kv_heads = a.kv_heads;
    o.head_dim = a.head_dim;
    o.vocab = a.vocab;
    o.experts = a.experts;
    o.experts_used = a.experts_used;
    o.ffn = a.ffn;
    o.context = a.context;
    o.window = a.window;
    o.tied = a.tied;
    req.targets = Targets {
        zipf_s: a.zipf,
        reuse: a.reuse,
        zero_share: a.zero_share,
        neuron_spread: a.neuron_spread,
        ..Targets::default()
    };
    let spec = req.spec()?;
    let path = if a.out.is_dir() {
        a.out.join(req.default_file_name())
    } else {
        a.out.clone()
    };
    let opts = GenOptions {
        force: a.force,
        threads: a.threads,
        alignment: a.alignment,
        direct_io: !a.buffered,
    };
    let (_, _, params) = spec.param_counts();
    eprintln!(
        "generating {} ({} layers, hidden {}, {} experts top-{}, vocab {}, {:.3} B parameters) as {} ...",
        spec.name,
        spec.n_layers,
        spec.hidden,
        spec.n_experts,
        spec.n_experts_used,
        spec.vocab_size,
        params as f64 / 1e9,
        out_type
    );
    let rep = generate(&req, &path, &opts)
        .with_context(|| format!("cannot generate {}", path.display()))?;
    if rep.reused {
        println!(
            "{}: up to date ({}), reused; --force rebuilds",
            rep.path.display(),
            human_bytes(rep.bytes)
        );
    } else {
        println!(
            "{}: {} written in {:.2} s ({:.3} GB/s), design {:.2} s; router context share φ = {:.3}, predicted reuse {:.3}",
            rep.path.display(),
            human_bytes(rep.bytes),
            rep.write_secs,
            rep.gb_per_s(),
            rep.plan_secs,
            rep.phi,
            rep.predicted_reuse
        );
    }
    if a.measure > 0 {
        let model = Model::load(&rep.path, &ModelOptions::default())
            .with_context(|| format!("cannot load {}", rep.path.display()))?;
        let prompts: Vec<Vec<u32>> = (0..a.measure as u64)
            .map(|s| synthetic_prompt(s, 128, spec.vocab_size, TokenDist::Uniform))
            .collect();
        let (stats, _) = measure(&model, &prompts, 16)?;
        println!(
            "targets: zipf {:.2}, reuse {:.2}, zero share {:.2}\n{}",
            req.targets.zipf_s,
            req.targets.reuse,
            req.targets.zero_share,
            stats.table()
        );
    }
    Ok(())
}
