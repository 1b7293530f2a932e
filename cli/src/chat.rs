//! `thinker chat`: an interactive conversation on stdin/stdout. The conversation is rendered with
//! the model's chat template; the KV cache is kept across turns, so each turn only runs the new
//! text. Works with piped stdin (one message per line), which is how it is tested.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use engine::kv_cache::KvType;
use engine::tokenizer::ChatMessage;

use crate::args::{ModelArgs, human_bytes};
use crate::gen_loop::{
    GenError, GenParams, Generator, Outcome, Prompt, SamplingArgs, peak_rss_bytes,
};

/// `thinker chat` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Largest number of tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    n_predict: usize,
    /// Context size in positions (0: the model's context length).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
    ctx: usize,
    /// Keep the KV cache in f16 (half the memory).
    #[arg(long)]
    kv_f16: bool,
    /// Keep generating past end-of-turn tokens (until -n or the context is full).
    #[arg(long)]
    ignore_eos: bool,
}

const HELP: &str =
    "commands: /reset (forget the conversation), /exit (quit); end a line with \\ to continue it";

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    if a.n_predict == 0 {
        bail!("-n must be at least 1");
    }
    let sampler = a.sampling.config();
    sampler.validate()?;
    let model = a.model.load()?;
    let tok = model
        .tokenizer(&a.model.model)
        .context("the model has no usable tokenizer")?;
    let kv = if a.kv_f16 { KvType::F16 } else { KvType::F32 };
    let mut g = Generator::new(&model, &tok, a.ctx, kv, sampler)?;

    let interactive = std::io::stdin().is_terminal();
    let cancel = Arc::new(AtomicBool::new(false));
    let generating = Arc::new(AtomicBool::new(false));
    install_interrupt(cancel.clone(), generating.clone());
    if interactive {
        eprintln!(
            "thinker chat: {} | context {} | {HELP}",
            a.model.model.display(),
            g.ctx()
        );
    }

    let base: Vec<ChatMessage> = a.system.iter().map(ChatMessage::system).collect();
    let mut messages = base.clone();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let stdout = std::io::stdout();
    loop {
        let Some(input) = read_message(&mut lines, interactive)? else {
            break;
        };
        let input = input.trim();
        if input.is_empty() {
            continue;
        }
        match input {
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = base.clone();
                g.reset();
                eprintln!("[conversation cleared]");
                continue;
            }
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::user(input));
        let rendered = match tok.render_chat(&messages, true) {
            Ok(r) => r,
            Err(e) => {
                messages.pop();
                eprintln!("[the chat template refused the conversation: {e}]");
                continue;
            }
        };
        let params = GenParams {
            max_tokens: a.n_predict,
            ignore_eos: a.ignore_eos,
            stop: Vec::new(),
            cancel: Some(cancel.clone()),
        };
        cancel.store(false, Ordering::Relaxed);
        generating.store(true, Ordering::Relaxed);
        let mut out = stdout.lock();
        let res = g.generate(Prompt::Text(&rendered), &params, |piece| {
            // A closed stdout ends the reply (and the loop below).
            write!(out, "{piece}").and_then(|_| out.flush()).is_ok()
        });
        generating.store(false, Ordering::Relaxed);
        let res = match res {
            Ok(o) => o,
            Err(GenError::ContextFull { need, limit }) => {
                messages.pop();
                eprintln!(
                    "[context full: the conversation needs {need} positions, the context holds {limit}; /reset to start over or raise -c]"
                );
                continue;
            }
            Err(GenError::Cancelled) => {
                messages.pop();
                eprintln!("[cancelled]");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        writeln!(out)?;
        out.flush()?;
        drop(out);
        messages.push(ChatMessage::assistant(res.text.clone()));
        eprintln!("{}", status_line(&g, &res));
    }
    Ok(())
}

/// Reads one message: a line, continued onto the next while it ends with `\`. `None` at EOF.
fn read_message(r: &mut impl BufRead, interactive: bool) -> Result<Option<String>> {
    let mut msg = String::new();
    loop {
        if interactive {
            let mut o = std::io::stdout().lock();
            write!(o, "{}", if msg.is_empty() { "> " } else { ". " })?;
            o.flush()?;
        }
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(if msg.is_empty() { None } else { Some(msg) });
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.strip_suffix('\\') {
            Some(head) => {
                msg.push_str(head);
                msg.push('\n');
            }
            None => {
                msg.push_str(line);
                return Ok(Some(msg));
            }
        }
    }
}

/// The status line printed after each reply.
pub fn status_line(g: &Generator<'_>, o: &Outcome) -> String {
    let s = g.session();
    let moe = s.moe_totals();
    let active = if moe.n_neurons > 0 {
        format!(
            " | experts active {:.1}%",
            100.0 * moe.n_active as f64 / moe.n_neurons as f64
        )
    } else {
        String::new()
    };
    let cache = match s.model().offload() {
        Some(off) => {
            let snap = off.snapshot();
            format!(
                " | expert cache hit {:.1}%, {} read from storage",
                100.0 * snap.stats.cache.hit_rate(),
                human_bytes(snap.stats.io.bytes)
            )
        }
        None => String::new(),
    };
    format!(
        "[prompt {} tok ({} cached) {:.1} t/s | reply {} tok {:.1} t/s ({}) | ctx {}/{} | KV {} | peak RSS {}{active}{cache}]",
        o.prompt_tokens,
        o.cached_tokens,
        o.prompt_tps(),
        o.generated(),
        o.gen_tps(),
        o.finish.as_openai(),
        s.pos(),
        g.ctx(),
        human_bytes(s.kv().total_bytes() as u64),
        peak_rss_bytes().map_or_else(|| "?".to_string(), human_bytes),
    )
}

/// Ctrl-C while a reply is being written stops the reply; at the prompt it quits.
fn install_interrupt(cancel: Arc<AtomicBool>, generating: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("sigint".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    if generating.load(Ordering::Relaxed) {
                        cancel.store(true, Ordering::Relaxed);
                    } else {
                        eprintln!();
                        std::process::exit(130);
                    }
                }
            });
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot watch for Ctrl-C");
    }
}
