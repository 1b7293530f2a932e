//! Replays router scores (every expert's score per token and layer, e.g. dumped from a forward
//! pass) through the expert cache with and without the router hints the forward pass gives,
//! next to Belady's optimum on the same accesses. Not part of CI.
//!
//! ```text
//! cargo run --release -p engine --example hint_replay -- SCORES_CSV TOP_K WARM_TOKENS SLOTS...
//! ```
//! `SCORES_CSV`: one line per token and layer, in forward order, `token,layer,s0,s1,…`. The
//! top `TOP_K` scores are the chosen experts. Counts start after `WARM_TOKENS` tokens (the
//! earlier ones warm the cache, for Belady too).

use engine::offload::cache::{CacheConfig, CacheScope, Capacity};
use engine::offload::sim::{Visit, belady_counting_from, simulate_visits};
use engine::offload::{ExpertKey, PolicyKind};

fn main() -> engine::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: hint_replay SCORES_CSV TOP_K WARM_TOKENS SLOTS...");
        std::process::exit(2);
    }
    let text = std::fs::read_to_string(&args[0])
        .map_err(|e| engine::Error::InvalidInput(format!("{}: {e}", args[0])))?;
    let parse = |s: &str| -> usize { s.trim().parse().expect("a number") };
    let (k, warm) = (parse(&args[1]), parse(&args[2]));
    let mut visits = Vec::new();
    let mut from = None;
    let (mut n_layers, mut n_experts) = (0u32, 0u32);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = line.split(',');
        let token = parse(f.next().unwrap_or(""));
        let layer = parse(f.next().unwrap_or("")) as u32;
        let scores: Vec<f32> = f.map(|x| x.trim().parse().expect("a score")).collect();
        let mut order: Vec<u32> = (0..scores.len() as u32).collect();
        order.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
        order.truncate(k);
        if token >= warm && from.is_none() {
            from = Some(visits.len());
        }
        n_layers = n_layers.max(layer + 1);
        n_experts = n_experts.max(scores.len() as u32);
        visits.push(Visit {
            layer,
            experts: order,
            scores,
        });
    }
    let Some(from) = from else {
        eprintln!("no visits after the first {warm} tokens to count");
        std::process::exit(2);
    };
    let trace: Vec<ExpertKey> = visits
        .iter()
        .flat_map(|v| v.experts.iter().map(|&e| ExpertKey::new(v.layer, e)))
        .collect();
    let from_access = visits[..from].iter().map(|v| v.experts.len()).sum();
    println!(
        "{} visits, {n_layers} layers x {n_experts} experts, top {k}, counting from visit {from}",
        visits.len()
    );
    let bare: Vec<Visit> = visits
        .iter()
        .map(|v| Visit {
            scores: Vec::new(),
            ..v.clone()
        })
        .collect();
    for slots in args[3..].iter().map(|s| parse(s)) {
        let opt = belady_counting_from(&trace, slots, from_access).hit_rate();
        let mut line = format!("{slots} slots: belady {:5.1}%", 100.0 * opt);
        for p in PolicyKind::ALL {
            let cfg = CacheConfig {
                capacity: Capacity::Slots(slots),
                scope: CacheScope::Global,
                policy: p,
                hot: None,
            };
            for (tag, vs) in [("", &visits), (" (no hints)", &bare)] {
                if p != PolicyKind::Learned && !tag.is_empty() {
                    continue;
                }
                let h = simulate_visits(n_layers, n_experts, vs, &cfg, from)?.hit_rate();
                line += &format!("  {p}{tag} {:5.1}% ({:.1}%)", 100.0 * h, 100.0 * h / opt);
            }
        }
        println!("{line}");
    }
    Ok(())
}
