//! `thinker run`: generate from token ids and report prompt and generation speed.

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use engine::model::{Logits, Session, SessionConfig};
use engine::sampler::{Sampler, SamplerConfig};

use crate::args::{ModelArgs, offload_summary, parse_ids};

/// `thinker run` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt token ids, e.g. `1,2,3`.
    #[arg(long, conflicts_with = "prompt", required_unless_present = "prompt")]
    tokens: Option<String>,
    /// Prompt text (encoded with the model's tokenizer; output printed as text).
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 32)]
    n_predict: usize,
    /// Context size (positions); default: prompt + n.
    #[arg(short = 'c', long = "ctx-size")]
    ctx: Option<usize>,
    /// Sampling temperature (0: greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    /// Top-k (0: off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Top-p (1: off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Min-p (0: off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Window of the repetition penalty.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed.
    #[arg(short = 's', long, default_value_t = 0x5eed)]
    seed: u64,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let text_mode = a.prompt.is_some();
    let mut sampler = Sampler::new(SamplerConfig {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        seed: a.seed,
    })?;
    let tok = if text_mode {
        Some(crate::tokenize::load_tokenizer(&a.model.model)?)
    } else {
        None
    };
    let prompt = match (&a.tokens, &a.prompt, &tok) {
        (Some(ids), _, _) => parse_ids(ids)?,
        (None, Some(text), Some(t)) => {
            let ids = t.encode_prompt(text)?;
            if ids.is_empty() {
                bail!("the prompt encodes to no tokens");
            }
            ids
        }
        _ => bail!("give --tokens or --prompt"),
    };
    let ctx = a.ctx.unwrap_or(prompt.len() + a.n_predict);
    if ctx < prompt.len() + a.n_predict {
        bail!(
            "context {ctx} is smaller than prompt ({}) + n ({})",
            prompt.len(),
            a.n_predict
        );
    }
    let model = a
        .model
        .load_for(ctx, SessionConfig::default().max_batch.min(ctx))?;
    let mut stream = tok.as_ref().map(|t| t.stream_decoder(true));
    let stops: Vec<u32> = match &tok {
        Some(t) => t.stop_ids().to_vec(),
        None => model.config.eos_token_ids.clone(),
    };
    let mut s = Session::new(
        &model,
        SessionConfig {
            max_positions: ctx,
            ..SessionConfig::default()
        },
    )?;
    sampler.accept(&prompt);
    let t0 = Instant::now();
    let mut logits = s.forward(&prompt, Logits::Last)?;
    let t_prompt = t0.elapsed();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let t1 = Instant::now();
    let mut generated = 0usize;
    for i in 0..a.n_predict {
        let id = sampler.sample(&logits)?;
        generated += 1;
        let stop = !a.ignore_eos && stops.contains(&id);
        match &mut stream {
            Some(sd) => {
                if let Some(text) = sd.push(id)? {
                    write!(out, "{text}")?;
                }
            }
            None => write!(out, "{}{id}", if i == 0 { "" } else { "," })?,
        }
        out.flush()?;
        if stop {
            break;
        }
        if i + 1 < a.n_predict {
            logits = s.forward(&[id], Logits::Last)?;
        }
    }
    if let Some(text) = stream.as_mut().and_then(|sd| sd.flush()) {
        write!(out, "{text}")?;
    }
    writeln!(out)?;
    let t_gen = t1.elapsed();
    // The first generated token comes from the prompt pass; decode steps are generated - 1.
    let steps = generated.saturating_sub(1).max(1);
    eprintln!(
        "prompt: {} tokens in {:.3} s ({:.2} t/s) | generation: {generated} tokens, {:.2} t/s | threads {} | mode {:?}",
        prompt.len(),
        t_prompt.as_secs_f64(),
        prompt.len() as f64 / t_prompt.as_secs_f64(),
        steps as f64 / t_gen.as_secs_f64().max(1e-9),
        model.threads(),
        model.mode(),
    );
    if let Some(line) = offload_summary(&model) {
        eprintln!("{line}");
    }
    Ok(())
}
