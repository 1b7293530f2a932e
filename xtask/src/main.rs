//! `cargo xtask`: project automation. `main` only dispatches; each command has its own module.

mod bench;
mod cgroup;
mod ci;
mod gen_model;
mod overhead;
mod peer;
mod peer_setup;
mod perfetto;
mod plan;
mod profile_data;
mod report;
mod scenario;
mod stage;
mod tidy;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Project automation for smallthinker-rs.
#[derive(Parser)]
#[command(name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Formatting check, clippy with -D warnings, and the file-header rule.
    Tidy,
    /// The main job: generate models, run the scenario matrix, write the HTML report.
    Bench(bench::Args),
    /// The profiler layer's cost on a real decode: interleaved runs with and without it.
    ProfilerOverhead(overhead::Args),
    /// Load a `thinker profile` trace into Perfetto's trace processor and check it with SQL.
    PerfettoCheck(perfetto::Args),
    /// Install the llama.cpp peer (llama-cpp-python built from source) under `target/peer/venv`.
    PeerSetup(peer_setup::Args),
    /// Rebuild a report from existing result records.
    Report(report::Args),
    /// Deterministic regression gate against the committed baseline.
    Ci(ci::Args),
    /// Generate a synthetic model (`thinker gen` on a release build; into `models/` unless
    /// `--out` is given), e.g. `cargo xtask gen-model --preset 4b-a0.6b --type q4_0`.
    GenModel {
        /// Arguments passed to `thinker gen` (e.g. --preset 4b-a0.6b --type q4_0 --out PATH).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Tidy => tidy::run(),
        Cmd::Bench(a) => bench::main(a),
        Cmd::ProfilerOverhead(a) => overhead::main(a),
        Cmd::PerfettoCheck(a) => perfetto::main(a),
        Cmd::PeerSetup(a) => peer_setup::main(a),
        Cmd::Report(a) => report::main(a),
        Cmd::Ci(a) => ci::main(a),
        Cmd::GenModel { args } => gen_model::run(&args),
    }
}
