//! Replays a routing trace (a `routing.csv` from `thinker profile`) through the expert cache's
//! policies at given capacities, next to Belady's optimum for the same trace: the noise-free
//! way to compare policies, scopes and hot sets. Not part of CI.
//!
//! ```text
//! cargo run --release -p engine --example policy_replay -- ROUTING_CSV N_LAYERS N_EXPERTS SLOTS...
//! ```
//! For each capacity (in expert slots), prints the hit rate of LRU, LFU and LRFU with a global
//! and a per-layer cache, Belady (global and per layer), LRU that knows the next 1, 2 or 4
//! tokens' accesses ([`lookahead_lru`]), and LRFU with a hot set learned from
//! the first half of the trace, with a quarter and a half of the slots pinned (counting the
//! second half only, the first warming the cache, against Belady counted the same way).

use std::path::Path;

use engine::offload::cache::{CacheConfig, CacheScope, Capacity};
use engine::offload::hotset::read_routing_csv;
use engine::offload::sim::{belady_counting_from, belady_for, lookahead_lru, simulate};
use engine::offload::{ExpertKey, HotSet, PolicyKind};

fn main() -> engine::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: policy_replay ROUTING_CSV N_LAYERS N_EXPERTS SLOTS...");
        std::process::exit(2);
    }
    let rows = read_routing_csv(Path::new(&args[0]))?;
    let parse = |s: &str| -> u32 { s.parse().expect("a number") };
    let (n_layers, n_experts) = (parse(&args[1]), parse(&args[2]));
    let trace: Vec<ExpertKey> = rows.iter().map(|r| r.key).collect();
    let tokens = rows.last().map_or(0, |r| r.token + 1);
    println!(
        "{} accesses, {tokens} tokens, {n_layers} layers x {n_experts} experts",
        trace.len()
    );
    let half = trace.len() / 2;
    let (train, test) = trace.split_at(half);
    for slots in args[3..].iter().map(|s| parse(s) as usize) {
        println!(
            "\n{slots} slots ({:.1}% of experts)",
            100.0 * slots as f64 / f64::from(n_layers * n_experts)
        );
        for scope in [CacheScope::Global, CacheScope::PerLayer] {
            let opt = belady_for(&trace, n_layers, slots, scope);
            let mut line = format!(
                "  {:<9} belady {:5.1}%",
                format!("{scope:?}"),
                100.0 * opt.hit_rate()
            );
            for p in PolicyKind::ALL {
                let cfg = CacheConfig {
                    capacity: Capacity::Slots(slots),
                    scope,
                    policy: p,
                    hot: None,
                };
                let s = simulate(n_layers, n_experts, &trace, &cfg)?;
                line += &format!(
                    "  {p} {:5.1}% ({:.0}% of belady)",
                    100.0 * s.hit_rate(),
                    100.0 * s.hit_rate() / opt.hit_rate().max(1e-9)
                );
            }
            println!("{line}");
        }
        // How much foreknowledge of the next accesses adds to recency (global cache): a window
        // of one token's accesses is what predicting the rest of the token's routing could give.
        let opt = belady_for(&trace, n_layers, slots, CacheScope::Global);
        let per_token = trace.len() / tokens.max(1) as usize;
        let mut line = "  lookahead".to_string();
        for tok in [0usize, 1, 2, 4] {
            let h = lookahead_lru(&trace, slots, tok * per_token);
            line += &format!(
                "  {tok} token(s) {:5.1}% ({:.1}% of belady)",
                100.0 * h.hit_rate(),
                100.0 * h.hit_rate() / opt.hit_rate().max(1e-9)
            );
        }
        println!("{line}");
        // Hot set learned on the first half, measured on the second.
        let opt = belady_counting_from(&trace, slots, half);
        let mut line = format!("  2nd half  belady {:5.1}%", 100.0 * opt.hit_rate());
        for share in [0usize, 4, 2] {
            let hot = (share > 0).then(|| {
                let mut h = HotSet::from_trace(train.iter().copied());
                h.truncate(slots / share);
                h
            });
            let cfg = CacheConfig {
                capacity: Capacity::Slots(slots),
                scope: CacheScope::Global,
                policy: PolicyKind::Lrfu,
                hot,
            };
            // Warm the cache on the first half (as the run before would), count the second.
            let all = simulate(n_layers, n_experts, &trace, &cfg)?;
            let first = simulate(n_layers, n_experts, train, &cfg)?;
            let hits = all.hits - first.hits;
            let rate = hits as f64 / test.len().max(1) as f64;
            let name = match share {
                0 => "lrfu".to_string(),
                s => format!("lrfu+hot 1/{s}"),
            };
            line += &format!(
                "  {name} {:5.1}% ({:.0}%)",
                100.0 * rate,
                100.0 * rate / opt.hit_rate().max(1e-9)
            );
        }
        println!("{line}");
    }
    Ok(())
}
