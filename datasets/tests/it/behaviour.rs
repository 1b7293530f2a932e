//! The engine's own forward pass on generated models routes with the target skew and temporal
//! locality, hits the target zero share, and keeps the residual stream healthy.

use datasets::generate::{GenOptions, GenRequest, generate};
use datasets::measure::{RoutingStats, measure};
use datasets::prompts::{TokenDist, synthetic_prompt};
use datasets::{OutType, Targets};

/// Mean split-half Zipf exponent over layers, absolute tolerance (finite samples, few experts).
const ZIPF_TOL: f64 = 0.15;
/// Reuse averaged over layers, absolute tolerance.
const REUSE_TOL: f64 = 0.04;
/// Zero share over all layers, absolute tolerance.
const ZERO_TOL: f64 = 0.02;
/// Zero share of any single layer, absolute tolerance.
const ZERO_LAYER_TOL: f64 = 0.04;
/// Largest residual RMS allowed anywhere (the embedding's RMS is 1).
const MAX_RMS: f64 = 6.0;

fn check(stats: &RoutingStats, t: &Targets, what: &str) {
    eprintln!("{what}\n{}", stats.table());
    assert!(!stats.non_finite, "{what}: non-finite hidden state");
    let zipf = stats
        .mean_zipf_exponent_split()
        .unwrap_or_else(|| stats.mean_zipf_exponent());
    assert!((zipf - t.zipf_s).abs() < ZIPF_TOL, "{what}: zipf {zipf}");
    assert!(
        (stats.mean_reuse() - t.reuse).abs() < REUSE_TOL,
        "{what}: reuse {}",
        stats.mean_reuse()
    );
    assert!(
        (stats.mean_zero_share() - t.zero_share).abs() < ZERO_TOL,
        "{what}: zero share {}",
        stats.mean_zero_share()
    );
    for l in 0..stats.n_layers() {
        assert!(
            (stats.zero_share(l) - t.zero_share).abs() < ZERO_LAYER_TOL,
            "{what}: layer {l} zero share {}",
            stats.zero_share(l)
        );
        assert!(
            stats.max_rms[l] < MAX_RMS,
            "{what}: layer {l} rms {}",
            stats.max_rms[l]
        );
    }
}

fn uniform_reuse(stats: &RoutingStats) -> f64 {
    stats.k as f64 / stats.n_experts as f64
}

#[test]
fn tiny_routes_skewed_and_local_and_is_sparse() {
    let dir = tempfile::tempdir().unwrap();
    for ty in [OutType::F32, OutType::Q4_0] {
        let req = GenRequest::new("tiny", ty, 0);
        let path = dir.path().join(req.default_file_name());
        generate(&req, &path, &GenOptions::default()).unwrap();
        let model = crate::load(&path);
        let prompts: Vec<Vec<u32>> = (0..16)
            .map(|s| synthetic_prompt(s, 256, 512, TokenDist::Uniform))
            .collect();
        let (stats, generated) = measure(&model, &prompts, 16).unwrap();
        check(&stats, &req.targets, &format!("tiny {ty}"));
        assert!(stats.mean_reuse() > uniform_reuse(&stats) + 0.15);
        for g in &generated {
            let distinct: std::collections::HashSet<_> = g.iter().collect();
            assert!(
                distinct.len() >= g.len() / 2,
                "greedy decoding cycles: {g:?}"
            );
        }
    }
}

#[test]
fn reduced_4b_routes_skewed_and_local_and_is_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = GenRequest::new("4b-a0.6b", OutType::Q4_0, 0);
    req.overrides.layers = Some(2);
    req.overrides.vocab = Some(4096);
    let path = dir.path().join(req.default_file_name());
    generate(&req, &path, &GenOptions::default()).unwrap();
    let model = crate::load(&path);
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|s| synthetic_prompt(s, 160, 4096, TokenDist::Uniform))
        .collect();
    let (stats, generated) = measure(&model, &prompts, 16).unwrap();
    check(&stats, &req.targets, "4b-a0.6b, 2 layers, q4_0");
    assert!(
        stats.top_share(0) > 0.5,
        "the hottest expert serves most tokens"
    );
    for g in &generated {
        let distinct: std::collections::HashSet<_> = g.iter().collect();
        assert!(
            distinct.len() >= g.len() / 2,
            "greedy decoding cycles: {g:?}"
        );
    }
}

#[test]
fn other_targets_are_met_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = GenRequest::new("tiny", OutType::F32, 5);
    req.targets = Targets {
        zipf_s: 1.2,
        reuse: 0.6,
        zero_share: 0.9,
        ..Targets::default()
    };
    let path = dir.path().join(req.default_file_name());
    generate(&req, &path, &GenOptions::default()).unwrap();
    let model = crate::load(&path);
    let prompts: Vec<Vec<u32>> = (0..16)
        .map(|s| synthetic_prompt(s + 100, 256, 512, TokenDist::Uniform))
        .collect();
    let (stats, _) = measure(&model, &prompts, 0).unwrap();
    check(&stats, &req.targets, "tiny, zipf 1.2 reuse 0.6 zero 0.9");
}

#[test]
fn deep_models_stay_healthy_over_long_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = GenRequest::new("21b-a3b", OutType::Q8_0, 2);
    // The 21B's 52-layer hybrid layout at tiny widths.
    req.overrides = datasets::Overrides {
        hidden: Some(256),
        heads: Some(2),
        kv_heads: Some(1),
        vocab: Some(512),
        experts: Some(32),
        experts_used: Some(4),
        ffn: Some(64),
        ..Default::default()
    };
    let path = dir.path().join(req.default_file_name());
    generate(&req, &path, &GenOptions::default()).unwrap();
    let model = crate::load(&path);
    assert_eq!(model.config.n_layers, 52);
    let prompts = vec![synthetic_prompt(9, 1200, 512, TokenDist::Uniform)];
    let (stats, _) = measure(&model, &prompts, 8).unwrap();
    eprintln!("52 layers, 1200 tokens\n{}", stats.table());
    assert!(!stats.non_finite);
    for l in 0..52 {
        assert!(
            stats.max_rms[l] < MAX_RMS,
            "layer {l}: {}",
            stats.max_rms[l]
        );
    }
    assert!((stats.mean_zero_share() - req.targets.zero_share).abs() < ZERO_TOL);
    assert!((stats.mean_reuse() - req.targets.reuse).abs() < REUSE_TOL);
}
