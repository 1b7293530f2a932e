//! Replays a routing trace through the expert cache's policies and compares their hit rates
//! with Belady's optimum. Not part of CI.
//!
//! ```text
//! cargo run -p engine --example cache_sim -- routing.csv [SLOTS ...]
//! cargo run -p engine --example cache_sim -- synthetic [SLOTS ...]
//! ```
//! `routing.csv` is the profiler's trace (`token,layer,expert,weight`). `synthetic` generates
//! SmallThinker-4B-shaped routing (32 layers x 32 experts, top-4) with the datasets issue's
//! default statistics: Zipf(0.8) popularity per layer, and each of a token's experts repeats
//! one of the previous token's with probability 0.45.

use std::path::Path;

use engine::offload::hotset::read_routing_csv;
use engine::offload::sim::{belady_for, simulate};
use engine::offload::{CacheConfig, CacheScope, Capacity, ExpertKey, HotSet, PolicyKind};

struct Rng(u64);

impl Rng {
    fn f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Synthetic routing: `tokens` tokens, per token and layer `k` distinct experts.
fn synthetic(layers: u32, experts: u32, k: usize, tokens: usize) -> Vec<ExpertKey> {
    const ZIPF: f64 = 0.8;
    const REUSE: f64 = 0.45;
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    // Per layer: a random permutation of experts ranked by popularity.
    let perms: Vec<Vec<u32>> = (0..layers)
        .map(|_| {
            let mut p: Vec<u32> = (0..experts).collect();
            for i in (1..p.len()).rev() {
                let j = (rng.f64() * (i + 1) as f64) as usize;
                p.swap(i, j.min(i));
            }
            p
        })
        .collect();
    let w: Vec<f64> = (1..=experts)
        .map(|r| 1.0 / f64::from(r).powf(ZIPF))
        .collect();
    let total: f64 = w.iter().sum();
    let mut prev: Vec<Vec<u32>> = vec![Vec::new(); layers as usize];
    let mut trace = Vec::with_capacity(tokens * layers as usize * k);
    for _ in 0..tokens {
        for l in 0..layers as usize {
            let mut chosen: Vec<u32> = Vec::with_capacity(k);
            while chosen.len() < k {
                let e = if !prev[l].is_empty() && rng.f64() < REUSE {
                    prev[l][(rng.f64() * prev[l].len() as f64) as usize % prev[l].len()]
                } else {
                    let mut x = rng.f64() * total;
                    let mut r = 0;
                    while r + 1 < w.len() && x >= w[r] {
                        x -= w[r];
                        r += 1;
                    }
                    perms[l][r]
                };
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
            }
            trace.extend(chosen.iter().map(|&e| ExpertKey::new(l as u32, e)));
            prev[l] = chosen;
        }
    }
    trace
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let src = args.get(1).map_or("synthetic", String::as_str);
    let (trace, layers, experts) = if src == "synthetic" {
        (synthetic(32, 32, 4, 2000), 32, 32)
    } else {
        let rows = read_routing_csv(Path::new(src)).expect("routing trace");
        let trace: Vec<ExpertKey> = rows.iter().map(|r| r.key).collect();
        let layers = trace.iter().map(|k| k.layer).max().map_or(0, |m| m + 1);
        let experts = trace.iter().map(|k| k.expert).max().map_or(0, |m| m + 1);
        (trace, layers, experts)
    };
    let slots: Vec<usize> = if args.len() > 2 {
        args[2..].iter().filter_map(|s| s.parse().ok()).collect()
    } else {
        vec![128, 256, 307, 512]
    };
    println!(
        "{} accesses, {layers} layers x {experts} experts ({src})",
        trace.len()
    );
    println!(
        "{:>6} {:<10} {:>7} {:>7} {:>7} {:>9} {:>8} {:>9}",
        "slots", "scope", "lru", "lfu", "lrfu", "hot+lrfu", "belady", "best/opt"
    );
    // The hot set is learned from the first half and judged on the whole trace.
    let learn = &trace[..trace.len() / 2];
    for &n in &slots {
        for scope in [CacheScope::Global, CacheScope::PerLayer] {
            let mut rates = Vec::new();
            for policy in PolicyKind::ALL {
                let cfg = CacheConfig {
                    capacity: Capacity::Slots(n),
                    scope,
                    policy,
                    hot: None,
                };
                let s = simulate(layers, experts, &trace, &cfg).expect("simulate");
                rates.push(s.hit_rate());
            }
            let mut hot = HotSet::from_trace(learn.iter().copied());
            hot.truncate(n / 2);
            let cfg = CacheConfig {
                capacity: Capacity::Slots(n),
                scope,
                policy: PolicyKind::Lrfu,
                hot: Some(hot),
            };
            let hot_rate = simulate(layers, experts, &trace, &cfg)
                .expect("simulate")
                .hit_rate();
            let opt = belady_for(&trace, layers, n, scope).hit_rate();
            let best = rates.iter().copied().fold(hot_rate, f64::max);
            println!(
                "{n:>6} {:<10} {:>6.1}% {:>6.1}% {:>6.1}% {:>8.1}% {:>7.1}% {:>8.2}",
                format!("{scope:?}"),
                100.0 * rates[0],
                100.0 * rates[1],
                100.0 * rates[2],
                100.0 * hot_rate,
                100.0 * opt,
                best / opt
            );
        }
    }
}
