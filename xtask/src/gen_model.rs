//! `cargo xtask gen-model`: builds `thinker` in release mode and runs `thinker gen`, writing to
//! `models/` at the workspace root (git-ignored) unless `--out` is given.
//!
//! xtask does not link the engine: it shells out to the release `thinker`, so `cargo xtask tidy`
//! stays cheap.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `thinker gen` with `args` (plus `--out models/` when no output is given).
pub fn run(args: &[String]) -> Result<()> {
    let root = crate::workspace_root();
    let mut args = args.to_vec();
    let has_out = args
        .iter()
        .any(|a| a == "-o" || a == "--out" || a.starts_with("--out="));
    let help = args.iter().any(|a| a == "-h" || a == "--help");
    if !has_out && !help {
        let dir = root.join("models");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        args.push("--out".into());
        args.push(dir.display().to_string());
    }
    let thinker = crate::bench::build_thinker(&root)?;
    let status = Command::new(&thinker)
        .arg("gen")
        .args(&args)
        .status()
        .with_context(|| format!("cannot run {}", thinker.display()))?;
    if !status.success() {
        bail!("thinker gen failed ({status})");
    }
    Ok(())
}
