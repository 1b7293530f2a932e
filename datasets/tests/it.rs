//! Integration tests: generated files load in the engine and behave as designed.

use std::path::Path;

use datasets::measure::measure;
use datasets::prompts::{TokenDist, synthetic_prompt};
use datasets::{GenOptions, GenRequest, OutType, generate};
use engine::model::{Model, ModelOptions};

fn load(path: &Path) -> Model {
    Model::load(path, &ModelOptions::default()).unwrap()
}

#[test]
fn tiny_explore() {
    let dir = tempfile::tempdir().unwrap();
    for ty in [OutType::F32, OutType::Q4_0] {
        let req = GenRequest::new("tiny", ty, 0);
        let path = dir.path().join(req.default_file_name());
        let rep = generate(&req, &path, &GenOptions::default()).unwrap();
        eprintln!("{rep:?}");
        let model = load(&path);
        let prompts: Vec<Vec<u32>> = (0..8)
            .map(|s| synthetic_prompt(s, 256, 512, TokenDist::Uniform))
            .collect();
        let (stats, generated) = measure(&model, &prompts, 32).unwrap();
        eprintln!("{ty}\n{}", stats.table());
        let plan = datasets::design::plan::Plan::new(&req.spec().unwrap(), &req.targets, 0);
        for l in &plan.layers {
            eprintln!(
                "pred rms_attn {:.3} rms_ffn {:.3} phi {:.3}",
                l.rms_attn, l.rms_ffn, l.phi
            );
        }
        eprintln!("gen {:?}", &generated[0]);
    }
}

struct LogitObs {
    e: usize,
    rows: Vec<Vec<Vec<f32>>>, // layer -> token -> logits
}
impl engine::model::Observer for LogitObs {
    fn wants(&self, p: engine::model::Probe) -> bool {
        p == engine::model::Probe::RouterLogits
    }
    fn tensor(
        &mut self,
        _p: engine::model::Probe,
        l: Option<usize>,
        _pos0: usize,
        _n: usize,
        d: &[f32],
    ) {
        let l = l.unwrap();
        for r in d.chunks(self.e) {
            self.rows[l].push(r.to_vec());
        }
    }
}

#[test]
fn tiny_logit_diag() {
    let dir = tempfile::tempdir().unwrap();
    let req = GenRequest::new("tiny", OutType::F32, 0);
    let path = dir.path().join(req.default_file_name());
    generate(&req, &path, &GenOptions::default()).unwrap();
    let model = load(&path);
    let plan = datasets::design::plan::Plan::new(&req.spec().unwrap(), &req.targets, 0);
    eprintln!(
        "kernel lag1 {:.3} var {:.4}",
        plan.kernel.lag1, plan.kernel.var
    );
    let e = model.config.n_experts;
    let len = 256;
    let mut obs = LogitObs {
        e,
        rows: vec![vec![]; 4],
    };
    for s in 0..8 {
        let p = synthetic_prompt(s, len, 512, TokenDist::Uniform);
        let mut sess = engine::model::Session::new(&model, Default::default()).unwrap();
        sess.forward_observed(&p, engine::model::Logits::None, Some(&mut obs))
            .unwrap();
    }
    for l in 0..4 {
        let rows = &obs.rows[l];
        let n = rows.len();
        // per expert mean/std over tokens at positions >= 32
        let idx: Vec<usize> = (0..n).filter(|i| i % len >= 32).collect();
        let mut corr = 0.0;
        let mut sd_mean = 0.0;
        for x in 0..e {
            let m = idx.iter().map(|&i| rows[i][x] as f64).sum::<f64>() / idx.len() as f64;
            let v = idx
                .iter()
                .map(|&i| (rows[i][x] as f64 - m).powi(2))
                .sum::<f64>()
                / idx.len() as f64;
            let c = idx
                .iter()
                .map(|&i| (rows[i][x] as f64 - m) * (rows[i - 1][x] as f64 - m))
                .sum::<f64>()
                / idx.len() as f64;
            corr += c / v / e as f64;
            sd_mean += v.sqrt() / e as f64;
        }
        // early positions std
        let early: Vec<usize> = (0..n).filter(|i| i % len < 4).collect();
        let mut sd_early = 0.0;
        for x in 0..e {
            let m = early.iter().map(|&i| rows[i][x] as f64).sum::<f64>() / early.len() as f64;
            let v = early
                .iter()
                .map(|&i| (rows[i][x] as f64 - m).powi(2))
                .sum::<f64>()
                / early.len() as f64;
            sd_early += v.sqrt() / e as f64;
        }
        eprintln!(
            "layer {l}: lag1 corr {corr:.3} (phi*lag1 = {:.3}) logit sd {sd_mean:.3} early sd {sd_early:.3}",
            plan.layers[l].phi * plan.kernel.lag1
        );
    }
}

struct AttnObs {
    h: usize,
    rows: Vec<Vec<Vec<f32>>>,
}
impl engine::model::Observer for AttnObs {
    fn wants(&self, p: engine::model::Probe) -> bool {
        p == engine::model::Probe::AttnOut
    }
    fn tensor(
        &mut self,
        _p: engine::model::Probe,
        l: Option<usize>,
        _pos0: usize,
        _n: usize,
        d: &[f32],
    ) {
        for r in d.chunks(self.h) {
            self.rows[l.unwrap()].push(r.to_vec());
        }
    }
}

#[test]
fn tiny_attn_diag() {
    let dir = tempfile::tempdir().unwrap();
    let req = GenRequest::new("tiny", OutType::F32, 0);
    let path = dir.path().join(req.default_file_name());
    generate(&req, &path, &GenOptions::default()).unwrap();
    let model = load(&path);
    let plan = datasets::design::plan::Plan::new(&req.spec().unwrap(), &req.targets, 0);
    let h = model.config.hidden;
    let len = 256;
    let mut obs = AttnObs {
        h,
        rows: vec![vec![]; 4],
    };
    for s in 0..8 {
        let p = synthetic_prompt(s, len, 512, TokenDist::Uniform);
        let mut sess = engine::model::Session::new(&model, Default::default()).unwrap();
        sess.forward_observed(&p, engine::model::Logits::None, Some(&mut obs))
            .unwrap();
    }
    for l in 0..4 {
        let rows = &obs.rows[l];
        let n = rows.len();
        let idx: Vec<usize> = (0..n).filter(|i| i % len >= 32).collect();
        let s = plan.layers[l].ctx_gain;
        let (mut var, mut cov) = (0.0, 0.0);
        for &c in &plan.coords_s {
            let m = idx.iter().map(|&i| rows[i][c] as f64).sum::<f64>() / idx.len() as f64;
            var += idx
                .iter()
                .map(|&i| ((rows[i][c] as f64 - m) / s).powi(2))
                .sum::<f64>()
                / idx.len() as f64
                / 32.0;
            cov += idx
                .iter()
                .map(|&i| (rows[i][c] as f64 - m) * (rows[i - 1][c] as f64 - m) / s / s)
                .sum::<f64>()
                / idx.len() as f64
                / 32.0;
        }
        // embedding T features stats
        eprintln!(
            "layer {l}: zeta var {var:.4} (design {:.4}) lag1 {:.3} (design {:.3})",
            plan.kernel.var,
            cov / var,
            plan.kernel.lag1
        );
    }
}

struct KObs {
    h: usize,
    emb: Vec<Vec<f32>>,
    attn: Vec<Vec<Vec<f32>>>,
}
impl engine::model::Observer for KObs {
    fn wants(&self, p: engine::model::Probe) -> bool {
        p == engine::model::Probe::AttnOut || p == engine::model::Probe::Embeddings
    }
    fn tensor(
        &mut self,
        p: engine::model::Probe,
        l: Option<usize>,
        _pos0: usize,
        _n: usize,
        d: &[f32],
    ) {
        for r in d.chunks(self.h) {
            if p == engine::model::Probe::Embeddings {
                self.emb.push(r.to_vec());
            } else {
                self.attn[l.unwrap()].push(r.to_vec());
            }
        }
    }
}

#[test]
fn tiny_kernel_diag() {
    let dir = tempfile::tempdir().unwrap();
    let req = GenRequest::new("tiny", OutType::F32, 0);
    let path = dir.path().join(req.default_file_name());
    generate(&req, &path, &GenOptions::default()).unwrap();
    let model = load(&path);
    let plan = datasets::design::plan::Plan::new(&req.spec().unwrap(), &req.targets, 0);
    let h = model.config.hidden;
    let len = 256;
    let mut obs = KObs {
        h,
        emb: vec![],
        attn: vec![vec![]; 4],
    };
    let p = synthetic_prompt(3, len, 512, TokenDist::Uniform);
    let mut sess = engine::model::Session::new(&model, Default::default()).unwrap();
    sess.forward_observed(&p, engine::model::Logits::None, Some(&mut obs))
        .unwrap();
    // Effective alpha at t=200 via projection: a_S(t)_i/s · z_{t-Δ,i} summed over i / |z|^2
    for l in 0..4 {
        let s = plan.layers[l].ctx_gain;
        let mut est = vec![0.0f64; 12];
        for t in 100..250 {
            for d in 0..12 {
                let mut num = 0.0;
                let mut den = 0.0;
                for (i, &c) in plan.coords_s.iter().enumerate() {
                    let z = obs.emb[t - d][plan.coords_t[i]] as f64 / plan.sigma_t;
                    num += obs.attn[l][t][c] as f64 / s * z;
                    den += z * z;
                }
                est[d] += num / den / 150.0;
            }
        }
        let a: Vec<String> = est.iter().map(|x| format!("{x:.3}")).collect();
        let k: Vec<String> = plan.kernel.alpha[..12]
            .iter()
            .map(|x| format!("{x:.3}"))
            .collect();
        eprintln!(
            "layer {l}: est {}\n        design {}",
            a.join(" "),
            k.join(" ")
        );
        let (mut va, mut vp, mut vr) = (0.0, 0.0, 0.0);
        for t in 100..250 {
            for (i, &c) in plan.coords_s.iter().enumerate() {
                let pred: f64 = (0..=t.min(150))
                    .map(|d| {
                        plan.kernel.alpha[d] * obs.emb[t - d][plan.coords_t[i]] as f64
                            / plan.sigma_t
                    })
                    .sum();
                let act = obs.attn[l][t][c] as f64 / s;
                va += act * act;
                vp += pred * pred;
                vr += (act - pred) * (act - pred);
            }
        }
        eprintln!(
            "   E[act^2] {:.4} E[pred^2] {:.4} E[resid^2] {:.4}",
            va / 4800.0,
            vp / 4800.0,
            vr / 4800.0
        );
    }
}

struct ResObs {
    h: usize,
    emb: Vec<Vec<f32>>,
    out: Vec<Vec<Vec<f32>>>,
    moe: Vec<Vec<Vec<f32>>>,
}
impl engine::model::Observer for ResObs {
    fn wants(&self, p: engine::model::Probe) -> bool {
        matches!(
            p,
            engine::model::Probe::LayerOut
                | engine::model::Probe::Embeddings
                | engine::model::Probe::MoeOut
        )
    }
    fn tensor(
        &mut self,
        p: engine::model::Probe,
        l: Option<usize>,
        _pos0: usize,
        _n: usize,
        d: &[f32],
    ) {
        for r in d.chunks(self.h) {
            match p {
                engine::model::Probe::Embeddings => self.emb.push(r.to_vec()),
                engine::model::Probe::LayerOut => self.out[l.unwrap()].push(r.to_vec()),
                _ => self.moe[l.unwrap()].push(r.to_vec()),
            }
        }
    }
}

#[test]
fn tiny_residual_diag() {
    let dir = tempfile::tempdir().unwrap();
    let req = GenRequest::new("tiny", OutType::F32, 0);
    let path = dir.path().join(req.default_file_name());
    generate(&req, &path, &GenOptions::default()).unwrap();
    let model = load(&path);
    let plan = datasets::design::plan::Plan::new(&req.spec().unwrap(), &req.targets, 0);
    let h = model.config.hidden;
    let mut obs = ResObs {
        h,
        emb: vec![],
        out: vec![vec![]; 4],
        moe: vec![vec![]; 4],
    };
    let p = synthetic_prompt(3, 64, 512, TokenDist::Uniform);
    let mut sess = engine::model::Session::new(&model, Default::default()).unwrap();
    sess.forward_observed(&p, engine::model::Logits::None, Some(&mut obs))
        .unwrap();
    let t = 50;
    eprintln!(
        "u: emb {} out0 {} moe0 {}",
        obs.emb[t][plan.coord_u], obs.out[0][t][plan.coord_u], obs.moe[0][t][plan.coord_u]
    );
    for i in 0..4 {
        let c = plan.coords_t[i];
        eprintln!(
            "T{i}: emb {} out0 {} out1 {} moe0 {}",
            obs.emb[t][c], obs.out[0][t][c], obs.out[1][t][c], obs.moe[0][t][c]
        );
    }
    let maxmoe = plan
        .coords_t
        .iter()
        .chain(&plan.coords_s)
        .map(|&c| obs.moe[1][t][c].abs())
        .fold(0.0f32, f32::max);
    eprintln!("max |moe| on reserved at layer1: {maxmoe}");
}

#[test]
fn b4_explore() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = GenRequest::new("4b-a0.6b", OutType::Q4_0, 0);
    req.overrides.layers = Some(4);
    req.overrides.vocab = Some(4096);
    let path = dir.path().join(req.default_file_name());
    let t = std::time::Instant::now();
    let rep = generate(&req, &path, &GenOptions::default()).unwrap();
    eprintln!("{rep:?} total {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let model = load(&path);
    let prompts: Vec<Vec<u32>> = (0..6)
        .map(|s| synthetic_prompt(s, 192, 4096, TokenDist::Uniform))
        .collect();
    let (stats, generated) = measure(&model, &prompts, 16).unwrap();
    eprintln!("{}\nmeasure {:?}", stats.table(), t.elapsed());
    eprintln!("gen {:?}", &generated[0]);
}
