//! `cargo xtask gen-model`: builds `thinker` in release mode and runs `thinker gen`, writing to
//! `models/` at the workspace root (git-ignored) unless `--out` is given.
//!
//! xtask does not link the engine: it shells out to cargo, so `cargo xtask tidy` stays cheap.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `thinker gen` with `args` (plus `--out models/` when no output is given).
pub fn run(args: &[String]) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?
        .to_path_buf();
    let mut args = args.to_vec();
    let has_out = args
        .iter()
        .any(|a| a == "-o" || a == "--out" || a.starts_with("--out="));
    if !has_out {
        let dir = root.join("models");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        args.push("--out".into());
        args.push(dir.display().to_string());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["run", "--release", "--quiet", "-p", "thinker", "--", "gen"])
        .args(&args)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("thinker gen failed ({status})");
    }
    Ok(())
}
