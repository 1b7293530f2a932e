//! Flags shared by the subcommands that load a model.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use engine::model::{ComputeMode, Model, ModelOptions};

/// Which model and how to run it.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a `.gguf` file or a Hugging Face directory (`config.json` + safetensors).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Reference arithmetic (f32 activations, dequantised weights) instead of the fast path.
    #[arg(long)]
    pub exact: bool,
}

impl ModelArgs {
    /// Loads the model with these options.
    pub fn load(&self) -> Result<Model> {
        let opts = ModelOptions {
            mode: if self.exact {
                ComputeMode::Exact
            } else {
                ComputeMode::Fast
            },
            threads: self.threads,
        };
        Model::load(&self.model, &opts)
            .with_context(|| format!("cannot load model {}", self.model.display()))
    }
}

/// Parses `1,2,3` (spaces allowed) into token ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids: Vec<u32> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .with_context(|| format!("'{p}' is not a token id"))
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        bail!("no token ids given");
    }
    Ok(ids)
}

/// Human-readable bytes.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_reject() {
        assert_eq!(parse_ids("1, 2,3").unwrap(), vec![1, 2, 3]);
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids("").is_err());
        assert!(parse_ids("-1").is_err());
    }

    #[test]
    fn bytes_are_humane() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }
}
