//! Writes every router score of a decode (one line per decoded token and layer,
//! `token,layer,s0,s1,…`), the input of the `hint_replay` example. Not part of CI.
//!
//! ```text
//! cargo run --release -p engine --example router_scores -- MODEL START N_TOKENS OUT_CSV
//! ```
//! `START` is one of:
//! - a token id: start from that token and feed back the greedy choice, one session;
//! - `random:SEED:LEN`: uniform random token ids in sessions of `LEN` tokens, each from an
//!   empty context;
//! - `bench:SEED`: `thinker bench -p 0 -n 64 --seed SEED`'s generation test: its warm-up (8
//!   prompt tokens at once, then 2 decode steps) and `N_TOKENS / 64` sessions of its 64-token
//!   workloads, planned for the same context (64) and batch (8). The warm-up's prompt pass is
//!   not written (one line per decoded token only), so a replay starts a little colder than
//!   the run.
//!
//! With `BUDGET=SIZE` in the environment the model runs under that memory budget (experts from
//! the file, the default cache; `NOSPEC=1` turns speculation off), and the example prints the
//! cache's hit rate from token `WARM` (environment, default 0; in `bench:` mode the counting
//! starts after the warm-up, as the bench's) on: the live run's number to set beside
//! `hint_replay`'s replay of the same scores.

use std::io::Write;
use std::path::Path;

use engine::model::{
    Logits, Model, ModelOptions, Observer, OffloadOptions, OffloadSnapshot, Probe, Session,
    SessionConfig,
};

struct Scores {
    token: usize,
    out: Vec<u8>,
}

impl Observer for Scores {
    fn wants(&self, probe: Probe) -> bool {
        probe == Probe::RouterLogits
    }
    fn tensor(&mut self, _: Probe, layer: Option<usize>, _: usize, n: usize, data: &[f32]) {
        if n != 1 {
            return;
        }
        let l = layer.unwrap_or(0);
        let _ = write!(self.out, "{},{l}", self.token);
        for x in data {
            let _ = write!(self.out, ",{x}");
        }
        let _ = writeln!(self.out);
    }
}

#[derive(Clone, Copy)]
enum Start {
    Greedy(u32),
    Random { seed: u64, len: usize },
    Bench(u64),
}

fn parse(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s}"))
}

/// Token ids as `bench_suite::measure::workload` draws them.
fn workload(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = engine::sampler::Rng::new(seed);
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

fn print_live(model: &Model, before: Option<OffloadSnapshot>, from: usize) {
    if let (Some(a), Some(b)) = (model.offload_snapshot(), before) {
        let c = a.since(&b).stats.cache;
        println!(
            "live cache from token {from}: hit rate {:.1}% ({} hits, {} prefetch hits, {} in flight, {} misses)",
            100.0 * c.hit_rate(),
            c.hits,
            c.prefetch_hits,
            c.inflight_hits,
            c.misses
        );
    }
}

fn main() -> engine::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        eprintln!("usage: router_scores MODEL START N_TOKENS OUT_CSV");
        std::process::exit(2);
    }
    let n_tokens = parse(&args[2]);
    let start = if let Some(r) = args[1].strip_prefix("random:") {
        let (seed, len) = r.split_once(':').expect("random:SEED:LEN");
        Start::Random {
            seed: parse(seed) as u64 | 1,
            len: parse(len).max(1),
        }
    } else if let Some(seed) = args[1].strip_prefix("bench:") {
        Start::Bench(parse(seed) as u64)
    } else {
        Start::Greedy(parse(&args[1]) as u32)
    };
    // Positions a session holds (the plan's context under a budget).
    let (positions, batch) = match start {
        Start::Greedy(_) => (n_tokens.max(1), 1),
        Start::Random { len, .. } => (len, 1),
        Start::Bench(_) => (64, 8),
    };
    let offload = match std::env::var("BUDGET") {
        Ok(b) => Some(OffloadOptions {
            speculative: std::env::var("NOSPEC").is_err(),
            context: positions,
            max_batch: batch,
            ..OffloadOptions::new(b.parse()?)
        }),
        Err(_) => None,
    };
    let model = Model::load(
        Path::new(&args[0]),
        &ModelOptions {
            offload,
            ..ModelOptions::default()
        },
    )?;
    if let Some(off) = model.offload() {
        println!("cache: {:?}", off.slot_shares());
    }
    let mut session = Session::new(
        &model,
        SessionConfig {
            max_positions: positions,
            max_batch: batch,
            ..SessionConfig::default()
        },
    )?;
    let mut obs = Scores {
        token: 0,
        out: Vec::new(),
    };
    let vocab = model.config.vocab_size;
    let step = |s: &mut Session<'_>, obs: &mut Scores, tok: u32| -> engine::Result<u32> {
        let logits = s.forward_observed(&[tok], Logits::Last, Some(obs))?;
        obs.token += 1;
        Ok(engine::sampler::argmax_logits(&logits).unwrap_or(0) as u32)
    };
    match start {
        Start::Bench(seed) => {
            session.forward_observed(&workload(vocab, 8, seed ^ 0xfeed), Logits::Last, None)?;
            session.reset();
            for tok in workload(vocab, 2, seed ^ 0xbeef) {
                step(&mut session, &mut obs, tok)?;
            }
            let (before, from) = (model.offload_snapshot(), obs.token);
            for rep in 0..n_tokens / 64 {
                session.reset();
                for tok in workload(vocab, 64, seed.wrapping_add(rep as u64)) {
                    step(&mut session, &mut obs, tok)?;
                }
            }
            print_live(&model, before, from);
        }
        Start::Random { .. } | Start::Greedy(_) => {
            let warm: usize = std::env::var("WARM").map_or(0, |w| parse(&w));
            let mut before = None;
            let (mut tok, mut state) = match start {
                Start::Greedy(first) => (first, 1),
                Start::Random { seed, .. } => (0, seed),
                Start::Bench(_) => unreachable!(),
            };
            for t in 0..n_tokens {
                if t == warm {
                    before = model.offload_snapshot();
                }
                if let Start::Random { len, .. } = start {
                    if t > 0 && t % len == 0 {
                        session.reset();
                    }
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    tok = (state % vocab as u64) as u32;
                }
                let next = step(&mut session, &mut obs, tok)?;
                if let Start::Greedy(_) = start {
                    tok = next;
                }
            }
            print_live(&model, before, warm);
        }
    }
    std::fs::write(&args[3], &obs.out)
        .map_err(|e| engine::Error::InvalidInput(format!("{}: {e}", args[3])))
}
