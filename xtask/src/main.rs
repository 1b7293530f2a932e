//! `cargo xtask`: project automation. `main` only dispatches; each command has its own module.

mod gen_model;
mod tidy;

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
    /// Writes a synthetic model with `thinker gen` (release build) into `models/`, e.g.
    /// `cargo xtask gen-model --preset 4b-a0.6b --type q4_0`.
    GenModel {
        /// Arguments for `thinker gen` (see `thinker gen --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Tidy => tidy::run(),
        Cmd::GenModel { args } => gen_model::run(&args),
    }
}
