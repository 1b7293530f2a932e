//! GGUF models written by llama.cpp against the reference: F32 against the HF targets, F16 / Q8_0 /
//! Q4_0 in exact mode against `ref-<TYPE>/`, and the fast path against llama.cpp's own error.

use engine::model::{ComputeMode, Logits, Model, ModelOptions, Observer, Session, SessionConfig};
use engine::moe::Routes;

use crate::common::{assert_close, f32s, fixture, ids, max_abs_diff};

/// Exact mode against the reference, any file type (f32 arithmetic on dequantised weights).
const LOGIT_TOL: f32 = 1e-4;

/// The fast path quantises activations in two levels (int8 plus an int8 residual), so it stays
/// close to the reference (measured 2e-3 on Q8_0); plain one-level Q8_0 activations give ~4 on
/// this model (routing flips) and trip this bound.
const FAST_TOL: f32 = 1e-2;

/// llama.cpp's own error on these files (fixture `llamacpp_crosscheck.json`): the fast path may be
/// no worse. (max |logit error|, argmax agreement over the prompt positions)
const LLAMA_CPP_F16: (f32, f32) = (0.012_358_368, 1.0);
const LLAMA_CPP_Q8_0: (f32, f32) = (2.365_639_4, 0.9);
const LLAMA_CPP_Q4_0: (f32, f32) = (2.607_166_8, 0.825);

fn load(ty: &str, mode: ComputeMode) -> Model {
    let p = fixture(&format!("tiny-t1-gguf/tiny-t1-{ty}.gguf"));
    Model::load(
        &p,
        &ModelOptions {
            mode,
            threads: 2,
            offload: None,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn target_dir(ty: &str) -> String {
    if ty == "F32" {
        "tiny-t1".into()
    } else {
        format!("tiny-t1-gguf/ref-{ty}")
    }
}

#[derive(Default)]
struct RouteLog(Vec<Vec<u32>>);

impl Observer for RouteLog {
    fn wants(&self, _p: engine::model::Probe) -> bool {
        false
    }
    fn routes(&mut self, layer: usize, _pos0: usize, r: &Routes) {
        if self.0.len() <= layer {
            self.0.resize(layer + 1, Vec::new());
        }
        self.0[layer].extend_from_slice(&r.ids);
    }
}

/// Runs prefill + the target's decode inputs; returns (prefill rows, decode rows, greedy, routes).
fn run(m: &Model, dir: &str) -> (Vec<f32>, Vec<f32>, Vec<u32>, Vec<u32>) {
    let prompt = ids("tiny-t1/prompt_ids.npy");
    let dec = ids(&format!("{dir}/decode_input_ids.npy"));
    let vocab = m.config.vocab_size;
    let mut log = RouteLog::default();
    let mut s = Session::new(m, SessionConfig::default()).unwrap();
    let pre = s
        .forward_observed(&prompt, Logits::All, Some(&mut log))
        .unwrap();
    let mut greedy = vec![argmax(&pre[(prompt.len() - 1) * vocab..])];
    let mut decode = Vec::new();
    for &t in &dec {
        let row = s
            .forward_observed(&[t], Logits::Last, Some(&mut log))
            .unwrap();
        greedy.push(argmax(&row));
        decode.extend(row);
    }
    // Routes as [layer][position][k], the fixture layout.
    let routes = log.0.concat();
    (pre, decode, greedy, routes)
}

fn argmax(r: &[f32]) -> u32 {
    engine::sampler::argmax_logits(r).unwrap() as u32
}

fn check_exact(ty: &str) {
    let m = load(ty, ComputeMode::Exact);
    let dir = target_dir(ty);
    let (pre, dec, greedy, routes) = run(&m, &dir);
    assert_close(
        &format!("{ty} prefill"),
        &pre,
        &f32s(&format!("{dir}/prefill_logits.npy")),
        LOGIT_TOL,
    );
    assert_close(
        &format!("{ty} decode"),
        &dec,
        &f32s(&format!("{dir}/decode_logits.npy")),
        LOGIT_TOL,
    );
    assert_eq!(
        greedy,
        ids(&format!("{dir}/greedy_ids.npy")),
        "{ty} greedy ids"
    );
    // Fixture routes cover 48 positions: prompt + that directory's decode inputs.
    assert_eq!(
        routes,
        ids(&format!("{dir}/router_ids.npy")),
        "{ty} router ids"
    );
}

#[test]
fn f32_gguf_matches_reference() {
    check_exact("F32");
}

#[test]
fn f16_gguf_exact_matches_reference() {
    check_exact("F16");
}

#[test]
fn q8_0_gguf_exact_matches_reference() {
    check_exact("Q8_0");
}

#[test]
fn q4_0_gguf_exact_matches_reference() {
    check_exact("Q4_0");
}

/// Fast mode: max error and argmax agreement over the prompt no worse than llama.cpp's.
fn check_fast(ty: &str, (max_err, agreement): (f32, f32)) {
    let m = load(ty, ComputeMode::Fast);
    let dir = target_dir(ty);
    let prompt = ids("tiny-t1/prompt_ids.npy");
    let vocab = m.config.vocab_size;
    let mut s = Session::new(&m, SessionConfig::default()).unwrap();
    let got = s.forward(&prompt, Logits::All).unwrap();
    let want = f32s(&format!("{dir}/prefill_logits.npy"));
    let err = max_abs_diff(&got, &want);
    let agree = got
        .chunks(vocab)
        .zip(want.chunks(vocab))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count() as f32
        / prompt.len() as f32;
    eprintln!(
        "{ty} fast: max err {err:.4} (llama.cpp {max_err}), argmax agreement {agree:.3} (llama.cpp {agreement})"
    );
    assert!(
        err <= max_err,
        "{ty} fast: max error {err} worse than llama.cpp's {max_err}"
    );
    assert!(
        err <= FAST_TOL,
        "{ty} fast: max error {err} above {FAST_TOL}"
    );
    assert!(
        agree >= agreement,
        "{ty} fast: agreement {agree} below llama.cpp's {agreement}"
    );
}

#[test]
fn fast_mode_no_worse_than_llama_cpp() {
    check_fast("F16", LLAMA_CPP_F16);
    check_fast("Q8_0", LLAMA_CPP_Q8_0);
    check_fast("Q4_0", LLAMA_CPP_Q4_0);
    check_fast("F32", (1e-3, 1.0));
}

#[test]
fn gguf_layout_follows_llama_cpp_rule_with_true_window() {
    let m = load("F32", ComputeMode::Exact);
    let c = &m.config;
    assert_eq!(c.sliding_window, 8);
    let kinds: Vec<(bool, bool)> = c.layers.iter().map(|k| (k.rope, k.sliding)).collect();
    assert_eq!(
        kinds,
        vec![(false, false), (true, true), (true, true), (true, true)]
    );
}

/// Fast mode's load-time relayout (x8 gates and attention, neuron-major down planes, copies of
/// the up matrices and routers, all in per-layer huge-page arenas; the embedding and LM head)
/// holds the same weights as the file: every copied or packed row dequantises to the file's
/// row, the planes are the file's down matrix repacked, and no up matrix or router is still
/// read through the file map.
#[test]
fn fast_relayout_holds_the_files_weights() {
    use engine::moe::sparse_down::DownPlanes;
    let fast = load("Q4_0", ComputeMode::Fast);
    let exact = load("Q4_0", ComputeMode::Exact);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut same_rows = |f: &engine::model::Matrix, e: &engine::model::Matrix| {
        a.resize(f.cols, 0.0);
        b.resize(e.cols, 0.0);
        for r in 0..f.rows {
            f.dequantize_row(r, &mut a).unwrap();
            e.dequantize_row(r, &mut b).unwrap();
            assert_eq!(a, b, "{} row {r}", f.name);
        }
    };
    same_rows(&fast.weights.embed, &exact.weights.embed);
    same_rows(&fast.weights.lm_head, &exact.weights.lm_head);
    let mut packed = 0;
    for (lf, le) in fast.weights.layers.iter().zip(&exact.weights.layers) {
        for (f, e) in [
            (&lf.wq, &le.wq),
            (&lf.wk, &le.wk),
            (&lf.wv, &le.wv),
            (&lf.wo, &le.wo),
        ] {
            packed += usize::from(f.packed.is_some());
            same_rows(f, e);
        }
        for (ef, ee) in lf.experts.iter().zip(&le.experts) {
            assert!(
                ef.gate.packed.is_some(),
                "{}: gate not packed",
                ef.gate.name
            );
            assert!(ee.gate.packed.is_none());
            same_rows(&ef.gate, &ee.gate);
            assert!(
                ef.up.data.location().0.path().is_none(),
                "{}: still mapped",
                ef.up.name
            );
            assert_eq!(ef.up.bytes(), ee.up.bytes(), "{}", ef.up.name);
            let want = DownPlanes::from_down(&ee.down).unwrap().unwrap();
            let got = ef.down_planes.as_ref().expect("down planes");
            let (mut o1, mut o2, mut acc) = (
                vec![0f32; got.outputs()],
                vec![0f32; got.outputs()],
                Vec::new(),
            );
            let act: Vec<f32> = (0..got.neurons()).map(|j| (j % 3) as f32 - 0.5).collect();
            got.apply_scalar(&act, &mut o1, &mut acc).unwrap();
            want.apply_scalar(&act, &mut o2, &mut acc).unwrap();
            assert_eq!(o1, o2, "{}", ef.down.name);
        }
    }
    assert!(packed > 0, "no attention matrix was packed");
}

/// The byte and parameter counts `thinker bench` reports (llama-bench's size and params) are the
/// file's: every tensor's elements and bytes, each stored tensor counted once.
#[test]
fn weight_counts_match_the_files_tensors() {
    for ty in ["F32", "F16", "Q8_0", "Q4_0"] {
        let p = fixture(&format!("tiny-t1-gguf/tiny-t1-{ty}.gguf"));
        let f = engine::formats::gguf::GgufFile::open(&p).unwrap();
        let elems: u64 = f.tensors().iter().map(|t| t.n_elements()).sum();
        let bytes: u64 = f
            .tensors()
            .iter()
            .map(|t| t.abs_range().end - t.abs_range().start)
            .sum();
        let m = load(ty, ComputeMode::Exact);
        let wb = m
            .weights
            .bytes(m.config.tied_embeddings, m.config.n_experts_used);
        assert_eq!(wb.params, elems, "{ty}: parameters");
        assert_eq!(wb.total, bytes, "{ty}: bytes");
    }
}
