//! `thinker logits`: prefill logits, then decode logits through the KV cache, as `.npy`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use engine::formats::npy;
use engine::model::{Logits, Observer, Session, SessionConfig};
use engine::moe::Routes;

use crate::args::{ModelArgs, parse_ids};

/// `thinker logits` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt token ids, e.g. `1,2,3` (one prefill pass).
    #[arg(long)]
    tokens: String,
    /// Token ids fed one at a time after the prompt, through the KV cache.
    #[arg(long)]
    decode_tokens: Option<String>,
    /// Output: float32 `[n_prompt + n_decode, vocab]`.
    #[arg(long)]
    out: PathBuf,
    /// Also write the chosen expert ids `[layers, positions, k]` as int32.
    #[arg(long)]
    routes: Option<PathBuf>,
}

/// Router choices per layer, in position order.
struct RouteLog {
    per_layer: Vec<Vec<u32>>,
}

impl Observer for RouteLog {
    fn wants(&self, _p: engine::model::Probe) -> bool {
        false
    }
    fn routes(&mut self, layer: usize, _pos0: usize, r: &Routes) {
        self.per_layer[layer].extend_from_slice(&r.ids);
    }
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let prompt = parse_ids(&a.tokens)?;
    let decode = match &a.decode_tokens {
        Some(s) => parse_ids(s)?,
        None => Vec::new(),
    };
    let model = a.model.load()?;
    let cfg = &model.config;
    let total = prompt.len() + decode.len();
    let mut session = Session::new(
        &model,
        SessionConfig {
            max_positions: total,
            max_batch: prompt.len().max(1),
            ..SessionConfig::default()
        },
    )?;
    let mut log = RouteLog {
        per_layer: vec![Vec::new(); cfg.n_layers],
    };
    let mut rows = session.forward_observed(&prompt, Logits::All, Some(&mut log))?;
    for &t in &decode {
        rows.extend(session.forward_observed(&[t], Logits::Last, Some(&mut log))?);
    }
    let vocab = rows.len() / total;
    npy::write_f32(&a.out, &[total, vocab], &rows)
        .with_context(|| format!("writing {}", a.out.display()))?;
    if let Some(path) = &a.routes {
        let k = cfg.n_experts_used;
        let flat: Vec<i32> = log.per_layer.iter().flatten().map(|&e| e as i32).collect();
        npy::write_i32(path, &[cfg.n_layers, total, k], &flat)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!(
        "wrote {} ({total} x {vocab}){}",
        a.out.display(),
        a.routes
            .as_ref()
            .map(|p| format!(" and {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}
