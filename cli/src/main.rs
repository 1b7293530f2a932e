//! `thinker`: the command-line front end. Argument parsing and wiring only; the work happens in
//! the library crates.

mod args;
mod bench;
mod bench_ab;
mod chat;
mod r#gen;
mod gen_loop;
mod inspect;
mod logits;
mod profile;
mod run;
mod serve;
mod tokenize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run, inspect and measure SmallThinker mixture-of-experts models on the CPU.
#[derive(Parser)]
#[command(name = "thinker", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a synthetic model at the real shapes, with realistic routing and sparsity.
    Gen(r#gen::Args),
    /// Architecture, hyperparameters, layer layout, tensor table and memory figures of a model.
    Inspect(inspect::Args),
    /// Writes logits (and optionally router choices) for given token ids as `.npy`.
    Logits(logits::Args),
    /// Generates tokens from a prompt and reports prompt and generation speed.
    Run(run::Args),
    /// Encodes text with a model's tokenizer and prints the ids.
    Tokenize(tokenize::Args),
    /// Interactive chat on stdin/stdout with the model's chat template.
    Chat(chat::Args),
    /// OpenAI-compatible HTTP server (chat and text completions, SSE streaming, metrics).
    Serve(serve::Args),
    /// Runs a generation under the profiler: timeline, routing, cache curves, KV, latency.
    Profile(profile::Args),
    /// llama-bench-style prompt (ppN) and generation (tgN) throughput, with result records.
    Bench(bench::Args),
}

/// Allocations from this size on get a mapping of their own, returned when freed (see
/// `engine::offload::pin_malloc_mmap_threshold`): glibc's own starting value, kept fixed. Under a
/// memory budget, `bench -p 512` on the 4B at 1 GiB peaked at 1,062–1,107 MiB without it (each
/// compute thread's arena keeping its prefill temporaries) and 1,036–1,037 MiB with it; decode
/// and prefill speed did not move.
const MALLOC_MMAP_THRESHOLD: usize = 128 << 10;

fn main() -> ExitCode {
    engine::offload::pin_malloc_mmap_threshold(MALLOC_MMAP_THRESHOLD);
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Gen(a) => r#gen::main(a),
        Cmd::Inspect(a) => inspect::main(a),
        Cmd::Logits(a) => logits::main(a),
        Cmd::Run(a) => run::main(a),
        Cmd::Bench(a) => bench::main(a),
        Cmd::Profile(a) => profile::main(a),
        Cmd::Tokenize(a) => tokenize::main(a),
        Cmd::Chat(a) => chat::main(a),
        Cmd::Serve(a) => serve::main(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
