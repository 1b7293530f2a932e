//! `thinker profile`: run a generation under the profiler and write its artefacts
//! (`trace.json`, `metrics.json`, `summary.md`, `routing.csv`, `kv.csv`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use engine::model::{Logits, Session, SessionConfig};
use engine::sampler::{Sampler, SamplerConfig};
use profiler::{AnalysisConfig, ProfileLayer, write_artefacts};
use tracing_subscriber::layer::SubscriberExt;

use crate::args::{ModelArgs, offload_summary, parse_ids};

/// `thinker profile` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt token ids, e.g. `1,2,3`.
    #[arg(long)]
    tokens: String,
    /// Tokens to generate (greedy unless --temp is set).
    #[arg(short = 'n', long = "n-predict", default_value_t = 32)]
    n_predict: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long = "temp", default_value_t = 0.0)]
    temperature: f32,
    /// Random seed.
    #[arg(short = 's', long, default_value_t = 0x5eed)]
    seed: u64,
    /// Directory for the artefacts (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let prompt = parse_ids(&a.tokens)?;
    if a.n_predict == 0 {
        bail!("-n must be at least 1");
    }
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: a.temperature,
        top_k: if a.temperature == 0.0 { 1 } else { 40 },
        seed: a.seed,
        ..SamplerConfig::default()
    })?;
    let ctx = prompt.len() + a.n_predict;
    let model = a
        .model
        .load_for(ctx, SessionConfig::default().max_batch.min(ctx))?;
    let (layer, handle) = ProfileLayer::new();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .context("installing the profiler")?;
    let mut s = Session::new(
        &model,
        SessionConfig {
            max_positions: prompt.len() + a.n_predict,
            ..SessionConfig::default()
        },
    )?;
    let t0 = Instant::now();
    let mut logits = s.forward(&prompt, Logits::Last)?;
    for i in 0..a.n_predict {
        let id = sampler.sample(&logits)?;
        if i + 1 < a.n_predict {
            logits = s.forward(&[id], Logits::Last)?;
        }
    }
    let wall = t0.elapsed();
    let rec = handle.take();
    // With offloading, replay the cache curves around the real cache's capacity too.
    let global_capacities = model.offload().map(|o| {
        let slots = o.plan().cache_slots as usize;
        let all = model.config.n_layers * model.config.n_experts;
        let mut c: Vec<usize> = [slots / 4, slots / 2, slots, slots * 2]
            .into_iter()
            .filter(|&n| n > 0 && n <= all)
            .collect();
        c.dedup();
        c
    });
    let cfg = AnalysisConfig {
        n_experts: Some(model.config.n_experts),
        global_capacities,
        ..AnalysisConfig::default()
    };
    let art = write_artefacts(&a.out, &rec, &cfg)
        .with_context(|| format!("writing artefacts to {}", a.out.display()))?;
    println!("{}", art.summary.render_text());
    eprintln!(
        "profiled {} prompt + {} generated tokens in {:.3} s; artefacts in {}",
        prompt.len(),
        a.n_predict,
        wall.as_secs_f64(),
        a.out.display()
    );
    if let Some(line) = offload_summary(&model) {
        eprintln!("{line}");
    }
    if let (Some(o), Some(peak)) = (model.offload(), crate::gen_loop::peak_rss_bytes()) {
        // The budget plans the engine; the recording and its analysis come on top.
        let budget = o.options().budget.bytes();
        eprintln!(
            "memory: peak RSS {:.1} MiB against the {:.1} MiB budget; the profiler's recording \
             ({} spans, {} events) and its analysis are not part of the budget, so give a \
             cgroup limit room for them",
            peak as f64 / f64::from(1 << 20),
            budget as f64 / f64::from(1 << 20),
            rec.spans.len(),
            rec.events.len()
        );
    }
    Ok(())
}
