//! `cargo xtask`: project automation. `main` only dispatches; each command has its own module.

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Tidy => tidy::run(),
    }
}
