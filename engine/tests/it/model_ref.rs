//! The engine against the reference implementation's golden outputs (tiny-t1).

use std::path::Path;

use engine::model::{
    ComputeMode, Logits, Model, ModelOptions, Observer, Probe, Session, SessionConfig,
};
use engine::moe::Routes;

use crate::common::{assert_close, f32s, fixture, ids};

/// Logits against the reference (float32 torch): absolute tolerance.
const LOGIT_TOL: f32 = 1e-4;
/// Intermediate activations against the reference.
const ACT_TOL: f32 = 1e-4;
/// Router weights against the reference.
const ROUTER_WEIGHT_TOL: f32 = 1e-5;

const PROMPT: usize = 40;
const DECODE: usize = 8;

fn exact() -> ModelOptions {
    ModelOptions {
        mode: ComputeMode::Exact,
        threads: 2,
        offload: None,
    }
}

fn load(path: &Path) -> Model {
    Model::load(path, &exact()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Collects every probe over a single pass, as `[layer][pos][...]`.
#[derive(Default)]
struct Collect {
    hidden: usize,
    embeddings: Vec<f32>,
    final_norm: Vec<f32>,
    attn: Vec<Vec<f32>>,
    moe: Vec<Vec<f32>>,
    layer: Vec<Vec<f32>>,
    router_logits: Vec<Vec<f32>>,
    routes: Vec<Routes>,
}

impl Observer for Collect {
    fn tensor(&mut self, p: Probe, layer: Option<usize>, _pos0: usize, _n: usize, data: &[f32]) {
        let slot = |v: &mut Vec<Vec<f32>>| {
            let l = layer.unwrap();
            if v.len() <= l {
                v.resize(l + 1, Vec::new());
            }
            v[l].extend_from_slice(data);
        };
        match p {
            Probe::Embeddings => self.embeddings.extend_from_slice(data),
            Probe::FinalNorm => self.final_norm.extend_from_slice(data),
            Probe::AttnOut => slot(&mut self.attn),
            Probe::MoeOut => slot(&mut self.moe),
            Probe::LayerOut => slot(&mut self.layer),
            Probe::RouterLogits => slot(&mut self.router_logits),
        }
        let _ = self.hidden;
    }
    fn routes(&mut self, layer: usize, _pos0: usize, r: &Routes) {
        if self.routes.len() <= layer {
            self.routes.resize(layer + 1, Routes::default());
        }
        let e = &mut self.routes[layer];
        e.k = r.k;
        e.ids.extend_from_slice(&r.ids);
        e.weights.extend_from_slice(&r.weights);
    }
}

/// Prefill logits, decode logits through the cache, greedy ids: against `dir` targets.
fn check_logits(model: &Model, dir: &str) {
    let prompt = ids("tiny-t1/prompt_ids.npy");
    let decode_in = ids("tiny-t1/decode_input_ids.npy");
    let want_prefill = f32s(&format!("{dir}/prefill_logits.npy"));
    let want_decode = f32s(&format!("{dir}/decode_logits.npy"));
    let want_greedy = ids(&format!("{dir}/greedy_ids.npy"));
    let vocab = model.config.vocab_size;

    let mut s = Session::new(model, SessionConfig::default()).unwrap();
    let pre = s.forward(&prompt, Logits::All).unwrap();
    assert_close("prefill logits", &pre, &want_prefill, LOGIT_TOL);
    let mut greedy = vec![argmax(&pre[(PROMPT - 1) * vocab..])];
    for (i, &t) in decode_in.iter().enumerate() {
        let row = s.forward(&[t], Logits::Last).unwrap();
        assert_close(
            &format!("decode step {i}"),
            &row,
            &want_decode[i * vocab..(i + 1) * vocab],
            LOGIT_TOL,
        );
        greedy.push(argmax(&row));
    }
    assert_eq!(greedy, want_greedy, "greedy ids");
}

fn argmax(row: &[f32]) -> u32 {
    engine::sampler::argmax_logits(row).unwrap() as u32
}

fn all_positions() -> Vec<u32> {
    let mut t = ids("tiny-t1/prompt_ids.npy");
    t.extend(ids("tiny-t1/decode_input_ids.npy"));
    t
}

#[test]
fn hf_logits_match_reference() {
    let m = load(&fixture("tiny-t1"));
    check_logits(&m, "tiny-t1");
}

#[test]
fn hf_intermediates_and_routing_match_reference() {
    let m = load(&fixture("tiny-t1"));
    let toks = all_positions();
    let mut c = Collect::default();
    let mut s = Session::new(&m, SessionConfig::default()).unwrap();
    s.forward_observed(&toks, Logits::None, Some(&mut c))
        .unwrap();
    let (layers, npos, hidden, k) = (4, PROMPT + DECODE, 64, 2);
    assert_close(
        "embeddings",
        &c.embeddings,
        &f32s("tiny-t1/embeddings.npy"),
        ACT_TOL,
    );
    assert_close(
        "final_norm",
        &c.final_norm,
        &f32s("tiny-t1/final_norm.npy"),
        ACT_TOL,
    );
    let per_layer = |name: &str, got: &Vec<Vec<f32>>, width: usize| {
        let want = f32s(&format!("tiny-t1/{name}.npy"));
        assert_eq!(got.len(), layers, "{name}: layers");
        for l in 0..layers {
            let w = &want[l * npos * width..(l + 1) * npos * width];
            assert_close(&format!("{name} layer {l}"), &got[l], w, ACT_TOL);
        }
    };
    per_layer("attn_out", &c.attn, hidden);
    per_layer("moe_out", &c.moe, hidden);
    per_layer("layer_out", &c.layer, hidden);
    per_layer("router_logits", &c.router_logits, 8);
    let want_ids = ids("tiny-t1/router_ids.npy");
    let want_w = f32s("tiny-t1/router_weights.npy");
    for l in 0..layers {
        assert_eq!(
            c.routes[l].ids,
            want_ids[l * npos * k..(l + 1) * npos * k],
            "router ids layer {l}"
        );
        assert_close(
            &format!("router weights layer {l}"),
            &c.routes[l].weights,
            &want_w[l * npos * k..(l + 1) * npos * k],
            ROUTER_WEIGHT_TOL,
        );
    }
}

#[test]
fn prefill_then_decode_equals_longer_prefill() {
    let m = load(&fixture("tiny-t1"));
    let toks = all_positions();
    let vocab = m.config.vocab_size;
    let mut one = Session::new(&m, SessionConfig::default()).unwrap();
    let all = one.forward(&toks, Logits::All).unwrap();
    // Prefill in uneven chunks, then token by token.
    let mut two = Session::new(
        &m,
        SessionConfig {
            max_batch: 7,
            ..SessionConfig::default()
        },
    )
    .unwrap();
    let mut got = two.forward(&toks[..30], Logits::All).unwrap();
    for &t in &toks[30..] {
        got.extend(two.forward(&[t], Logits::Last).unwrap());
    }
    assert_eq!(got.len(), toks.len() * vocab);
    assert_close("chunked vs one pass", &got, &all, LOGIT_TOL);
}

#[test]
fn sliding_layers_keep_kv_bounded() {
    let m = load(&fixture("tiny-t1"));
    let mut s = Session::new(
        &m,
        SessionConfig {
            max_positions: 4096,
            max_batch: 16,
            ..SessionConfig::default()
        },
    )
    .unwrap();
    let toks = all_positions();
    let mut sliding_bytes = Vec::new();
    // Many windows long (window 8): feed 20 x 48 = 960 positions.
    for _ in 0..20 {
        s.forward(&toks, Logits::None).unwrap();
        let kv = s.kv();
        let b: usize = (0..m.config.n_layers)
            .filter(|&l| kv.is_sliding(l))
            .map(|l| kv.layer_bytes(l))
            .sum();
        sliding_bytes.push(b);
        for l in 0..m.config.n_layers {
            assert_eq!(
                kv.layer_bytes(l),
                kv.predicted_layer_bytes(l, s.pos()),
                "layer {l}"
            );
        }
    }
    assert!(
        sliding_bytes.iter().all(|&b| b == sliding_bytes[0]),
        "{sliding_bytes:?}"
    );
    let global: usize = (0..m.config.n_layers)
        .filter(|&l| !s.kv().is_sliding(l))
        .map(|l| s.kv().layer_bytes(l))
        .sum();
    assert!(
        global > sliding_bytes[0],
        "global layers grow with the context"
    );
}

#[test]
fn bad_tokens_and_full_context_are_errors() {
    let m = load(&fixture("tiny-t1"));
    let mut s = Session::new(
        &m,
        SessionConfig {
            max_positions: 10,
            ..SessionConfig::default()
        },
    )
    .unwrap();
    assert!(s.forward(&[512], Logits::Last).is_err());
    assert!(s.forward(&[], Logits::Last).is_err());
    assert!(s.forward(&[1; 11], Logits::Last).is_err());
    s.forward(&[1; 10], Logits::Last).unwrap();
    assert!(s.forward(&[1], Logits::Last).is_err());
}
