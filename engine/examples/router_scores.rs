//! Writes every router score of a greedy decode (one line per token and layer,
//! `token,layer,s0,s1,…`), the input of the `hint_replay` example. Not part of CI.
//!
//! ```text
//! cargo run --release -p engine --example router_scores -- MODEL START N_TOKENS OUT_CSV
//! ```
//! `START` a token id: start from that token and feed back the greedy choice. `START`
//! `random:SEED:LEN`: uniform random token ids in sessions of `LEN` tokens, each from an empty
//! context, as `thinker bench`'s generation test runs them.
//!
//! With `BUDGET=SIZE` in the environment the model runs under that memory budget (experts from
//! the file, the default cache; `NOSPEC=1` turns speculation off), and the example prints the
//! cache's hit rate over the tokens from `WARM` (environment, default 0) on: the live run's
//! number to set beside `hint_replay`'s replay of the same scores.

use std::io::Write;
use std::path::Path;

use engine::model::{Logits, Model, ModelOptions, Observer, Probe, Session, SessionConfig};

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

fn main() -> engine::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 4 {
        eprintln!("usage: router_scores MODEL FIRST_TOKEN N_TOKENS OUT_CSV");
        std::process::exit(2);
    }
    let parse = |s: &str| -> usize { s.parse().expect("a number") };
    let offload = match std::env::var("BUDGET") {
        Ok(b) => Some(engine::model::OffloadOptions {
            speculative: std::env::var("NOSPEC").is_err(),
            context: 72,
            max_batch: 8,
            ..engine::model::OffloadOptions::new(b.parse()?)
        }),
        Err(_) => None,
    };
    let warm: usize = std::env::var("WARM").map_or(0, |w| parse(&w));
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
    let mut before = None;
    let positions = if model.offload().is_some() { 72 } else { 4096 };
    let mut session = Session::new(
        &model,
        SessionConfig {
            max_positions: positions,
            max_batch: 8,
            ..SessionConfig::default()
        },
    )?;
    let mut obs = Scores {
        token: 0,
        out: Vec::new(),
    };
    if let Some(seed) = args[1].strip_prefix("bench:") {
        // `thinker bench`'s generation test: its warm-up (8 prompt tokens at once, 2 decode
        // steps), then N_TOKENS / 64 repetitions of 64 tokens, each from an empty context.
        let seed: u64 = seed.parse().expect("bench:SEED");
        let vocab = model.config.vocab_size;
        let workload = |n: usize, seed: u64| {
            let mut rng = engine::sampler::Rng::new(seed);
            (0..n)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect::<Vec<u32>>()
        };
        let mut s = Session::new(
            &model,
            SessionConfig {
                max_positions: 64,
                max_batch: 8,
                ..SessionConfig::default()
            },
        )?;
        s.forward_observed(&workload(8, seed ^ 0xfeed), Logits::Last, Some(&mut obs))?;
        s.reset();
        for tok in workload(2, seed ^ 0xbeef) {
            s.forward_observed(&[tok], Logits::Last, Some(&mut obs))?;
            obs.token += 1;
        }
        let before = model.offload_snapshot();
        let warm = obs.token;
        for rep in 0..parse(&args[2]) / 64 {
            s.reset();
            for tok in workload(64, seed.wrapping_add(rep as u64)) {
                s.forward_observed(&[tok], Logits::Last, Some(&mut obs))?;
                obs.token += 1;
            }
        }
        if let (Some(a), Some(b)) = (model.offload_snapshot(), before) {
            let c = a.since(&b).stats.cache;
            println!(
                "live cache from token {warm}: hit rate {:.1}%",
                100.0 * c.hit_rate()
            );
        }
        return std::fs::write(&args[3], &obs.out)
            .map_err(|e| engine::Error::InvalidInput(format!("{}: {e}", args[3])));
    }
    let random = args[1].strip_prefix("random:").map(|r| {
        let (seed, len) = r.split_once(':').expect("random:SEED:LEN");
        (parse(seed) as u64 | 1, parse(len).max(1))
    });
    let vocab = model.config.vocab_size as u64;
    let mut tok = if random.is_some() {
        0
    } else {
        parse(&args[1]) as u32
    };
    let mut state = random.map_or(1, |r| r.0);
    for t in 0..parse(&args[2]) {
        obs.token = t;
        if t == warm {
            before = model.offload_snapshot();
        }
        if let Some((_, len)) = random {
            if t > 0 && t % len == 0 {
                session.reset();
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            tok = (state % vocab) as u32;
        }
        let logits = session.forward_observed(&[tok], Logits::Last, Some(&mut obs))?;
        if random.is_none() {
            tok = engine::sampler::argmax_logits(&logits).unwrap_or(0) as u32;
        }
    }
    if let (Some(a), Some(b)) = (model.offload_snapshot(), before) {
        let c = a.since(&b).stats.cache;
        println!(
            "live cache from token {warm}: hit rate {:.1}% ({} hits, {} prefetch hits, {} in flight, {} misses)",
            100.0 * c.hit_rate(),
            c.hits,
            c.prefetch_hits,
            c.inflight_hits,
            c.misses
        );
    }
    std::fs::write(&args[3], &obs.out)
        .map_err(|e| engine::Error::InvalidInput(format!("{}: {e}", args[3])))?;
    Ok(())
}
