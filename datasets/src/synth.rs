//! The tensors of a generated model: their GGUF names, shapes and types (in the order llama.cpp's
//! converter writes them), and a generator for any range of rows of any tensor.
//!
//! Every row is a pure function of the [`Plan`], the tensor and the row index, so rows can be
//! produced in parallel and in any order. A "row" is one contiguous run of `ne0` values (one
//! output unit of a matrix; an expert tensor's rows run over all experts, expert-major).

use engine::quant::GgmlType;

use crate::design::plan::Plan;
use crate::rng::{approx_normal, fill_normal, key, mix64};
use crate::spec::{ModelSpec, OutType, Role};

/// What a tensor holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `token_embd.weight` `[H, V]`.
    TokenEmbd,
    /// `output.weight` `[H, V]`.
    Output,
    /// `output_norm.weight` `[H]`.
    OutputNorm,
    /// `blk.N.attn_norm.weight` `[H]`.
    AttnNorm,
    /// `blk.N.ffn_norm.weight` `[H]`.
    FfnNorm,
    /// `blk.N.attn_q.weight` `[H, n_h·d]`.
    AttnQ,
    /// `blk.N.attn_k.weight` `[H, n_kv·d]`.
    AttnK,
    /// `blk.N.attn_v.weight` `[H, n_kv·d]`.
    AttnV,
    /// `blk.N.attn_output.weight` `[n_h·d, H]`.
    AttnOut,
    /// `blk.N.ffn_gate_inp.weight` `[H, E]`.
    Router,
    /// `blk.N.ffn_gate_exps.weight` `[H, F, E]`.
    Gate,
    /// `blk.N.ffn_up_exps.weight` `[H, F, E]`.
    Up,
    /// `blk.N.ffn_down_exps.weight` `[F, H, E]`.
    Down,
}

impl Kind {
    fn id(self) -> u64 {
        self as u64 + 1
    }

    fn role(self) -> Role {
        match self {
            Kind::TokenEmbd => Role::TokenEmbd,
            Kind::Output => Role::Output,
            Kind::OutputNorm | Kind::AttnNorm | Kind::FfnNorm => Role::Norm,
            Kind::AttnQ | Kind::AttnOut => Role::AttnQo,
            Kind::AttnK | Kind::AttnV => Role::AttnKv,
            Kind::Router => Role::Router,
            Kind::Gate | Kind::Up | Kind::Down => Role::Experts,
        }
    }
}

/// One tensor of the file.
#[derive(Clone, Debug)]
pub struct TensorDef {
    /// GGUF name.
    pub name: String,
    /// What it holds.
    pub kind: Kind,
    /// Layer (0 for global tensors).
    pub layer: usize,
    /// ggml dimensions, `ne0` first.
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Rows (`ne1 · ne2`, or 1 for a vector).
    pub rows: usize,
    /// Row length (`ne0`).
    pub cols: usize,
}

/// The model's tensors in the converter's order: `token_embd`, then per block
/// `ffn_down_exps, ffn_gate_exps, ffn_up_exps, ffn_gate_inp, attn_norm, ffn_norm, attn_k,
/// attn_output, attn_q, attn_v`, then `output_norm` and (untied) `output`.
pub fn tensor_defs(spec: &ModelSpec, out: OutType) -> Vec<TensorDef> {
    let (h, v, f, e) = (
        spec.hidden as u64,
        spec.vocab_size as u64,
        spec.expert_ffn as u64,
        spec.n_experts as u64,
    );
    let (q, kv) = (spec.q_dim() as u64, spec.kv_dim() as u64);
    let def = |name: String, kind: Kind, layer: usize, dims: Vec<u64>| {
        let cols = dims[0] as usize;
        let rows = dims[1..].iter().product::<u64>() as usize;
        TensorDef {
            name,
            kind,
            layer,
            ty: out.tensor_type(kind.role(), spec),
            dims,
            rows,
            cols,
        }
    };
    let mut t = vec![def(
        "token_embd.weight".into(),
        Kind::TokenEmbd,
        0,
        vec![h, v],
    )];
    for l in 0..spec.n_layers {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        t.push(def(n("ffn_down_exps"), Kind::Down, l, vec![f, h, e]));
        t.push(def(n("ffn_gate_exps"), Kind::Gate, l, vec![h, f, e]));
        t.push(def(n("ffn_up_exps"), Kind::Up, l, vec![h, f, e]));
        t.push(def(n("ffn_gate_inp"), Kind::Router, l, vec![h, e]));
        t.push(def(n("attn_norm"), Kind::AttnNorm, l, vec![h]));
        t.push(def(n("ffn_norm"), Kind::FfnNorm, l, vec![h]));
        t.push(def(n("attn_k"), Kind::AttnK, l, vec![h, kv]));
        t.push(def(n("attn_output"), Kind::AttnOut, l, vec![q, h]));
        t.push(def(n("attn_q"), Kind::AttnQ, l, vec![h, q]));
        t.push(def(n("attn_v"), Kind::AttnV, l, vec![h, kv]));
    }
    t.push(def(
        "output_norm.weight".into(),
        Kind::OutputNorm,
        0,
        vec![h],
    ));
    if !spec.tied_embeddings {
        t.push(def("output.weight".into(), Kind::Output, 0, vec![h, v]));
    }
    t
}

/// Stream id of the per-neuron gate thresholds.
const TAU_STREAM: u64 = 0x7A0;
/// Stream id of the token features.
const FEATURE_STREAM: u64 = 0xFEA;
/// Per-element standard deviation (in q/k units) of the recency heads' content noise.
const QK_CONTENT_NOISE: f64 = 0.0;

/// Fills `out` (`n · def.cols` values) with rows `row0 .. row0 + n` of `def`.
pub fn fill_rows(plan: &Plan, def: &TensorDef, row0: usize, out: &mut [f32]) {
    let cols = def.cols;
    debug_assert!(out.len().is_multiple_of(cols));
    for (i, row) in out.chunks_mut(cols).enumerate() {
        fill_row(plan, def, row0 + i, row);
    }
}

fn zero_reserved(plan: &Plan, row: &mut [f32]) {
    row[plan.coord_u] = 0.0;
    for &c in plan.coords_t.iter().chain(&plan.coords_s) {
        row[c] = 0.0;
    }
}

fn fill_row(plan: &Plan, def: &TensorDef, r: usize, row: &mut [f32]) {
    let s = &plan.spec;
    let l = def.layer;
    let k = key(plan.seed, &[def.kind.id(), l as u64, r as u64]);
    let h = s.hidden as f64;
    match def.kind {
        Kind::TokenEmbd => {
            fill_normal(k, row, plan.sigma_noise as f32);
            zero_reserved(plan, row);
            row[plan.coord_u] = plan.m as f32;
            let fk = key(plan.seed, &[FEATURE_STREAM, r as u64]);
            let mut z = [0f32; crate::design::plan::FEATURE_DIM];
            fill_normal(fk, &mut z, plan.sigma_t as f32);
            for (&c, &v) in plan.coords_t.iter().zip(&z) {
                row[c] = v;
            }
        }
        Kind::Output => fill_normal(k, row, plan.head_scale as f32),
        Kind::OutputNorm => {
            if s.tied_embeddings {
                // A tied head scores `Σ g_i x_i e_v,i`: symmetric in the input token (whose
                // embedding is in x) and the candidate. Random signs remove the bias toward
                // repeating the input token, and zero gain on the reserved coordinates (large
                // token features) keeps the symmetric part small against the experts' outputs,
                // so greedy decoding does not fall into two-token cycles.
                let g = plan.head_scale as f32;
                for (i, x) in row.iter_mut().enumerate() {
                    let bit = mix64(k ^ (i as u64).wrapping_mul(0x9E37_79B9)) & 1;
                    *x = if plan.reserved[i] {
                        0.0
                    } else if bit == 0 {
                        g
                    } else {
                        -g
                    };
                }
            } else {
                row.fill(1.0);
            }
        }
        Kind::AttnNorm | Kind::FfnNorm => row.fill(1.0),
        Kind::AttnQ | Kind::AttnK => {
            let lp = &plan.layers[l];
            if lp.recency {
                let j = r % s.head_dim;
                // Content noise on free coordinates, sized in q/k units.
                let sd = QK_CONTENT_NOISE / (0.5 * h).sqrt();
                fill_normal(k, row, sd as f32);
                zero_reserved(plan, row);
                let y_u = plan.m / lp.rms_attn;
                let v = if def.kind == Kind::AttnQ {
                    &plan.q
                } else {
                    &plan.k
                };
                row[plan.coord_u] = (v[j] / y_u) as f32;
            } else {
                fill_normal(k, row, (1.0 / h.sqrt()) as f32);
                zero_reserved(plan, row);
            }
        }
        Kind::AttnV => {
            let lp = &plan.layers[l];
            if lp.recency {
                row.fill(0.0);
                let (g, j) = (r / s.head_dim, r % s.head_dim);
                let d = plan.coords_t.len();
                let basis = &lp.v_basis[g];
                let scale = lp.rms_attn / plan.sigma_t;
                for (i, &c) in plan.coords_t.iter().enumerate() {
                    row[c] = (basis[j * d + i] * scale) as f32;
                }
            } else {
                fill_normal(k, row, (1.0 / h.sqrt()) as f32);
                zero_reserved(plan, row);
            }
        }
        Kind::AttnOut => {
            let lp = &plan.layers[l];
            if lp.recency {
                row.fill(0.0);
                if let Some(i) = plan.coords_s.iter().position(|&c| c == r) {
                    let d = plan.coords_s.len();
                    let group = s.n_heads / s.n_kv_heads;
                    let w = lp.ctx_gain / s.n_heads as f64;
                    for head in 0..s.n_heads {
                        let basis = &lp.v_basis[head / group];
                        for j in 0..s.head_dim {
                            row[head * s.head_dim + j] = (w * basis[j * d + i]) as f32;
                        }
                    }
                }
            } else if plan.reserved[r] {
                row.fill(0.0);
            } else {
                fill_normal(k, row, lp.sigma_attn_out as f32);
            }
        }
        Kind::Router => {
            let lp = &plan.layers[l];
            let hd = s.hidden;
            row.copy_from_slice(&lp.router[r * hd..(r + 1) * hd]);
        }
        Kind::Gate => {
            let lp = &plan.layers[l];
            fill_normal(k, row, plan.sigma_ffn_in as f32);
            let xi = approx_normal(mix64(key(plan.seed, &[TAU_STREAM, l as u64, r as u64])));
            let tau = plan.gates.tau_mean + plan.gates.tau_spread * xi as f64;
            row[plan.coord_u] = (-tau * lp.gate_scale) as f32;
        }
        Kind::Up => fill_normal(k, row, plan.sigma_ffn_in as f32),
        Kind::Down => {
            let h_row = r % s.hidden;
            if plan.reserved[h_row] {
                row.fill(0.0);
            } else {
                fill_normal(k, row, plan.layers[l].sigma_down as f32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::design::Targets;

    #[test]
    fn tensor_table_matches_the_converter() {
        let s = ModelSpec::preset("4b-a0.6b").unwrap();
        let t = tensor_defs(&s, OutType::Q4_0Mixed);
        assert_eq!(t.len(), 2 + 10 * 32);
        assert_eq!(t[0].dims, vec![1536, 151_936]);
        assert_eq!(t[0].ty, GgmlType::Q6_K);
        let down = t
            .iter()
            .find(|d| d.name == "blk.3.ffn_down_exps.weight")
            .unwrap();
        assert_eq!(down.dims, vec![768, 1536, 32]);
        assert_eq!((down.rows, down.cols), (1536 * 32, 768));
        let b = ModelSpec::preset("21b-a3b").unwrap();
        let t = tensor_defs(&b, OutType::Q4_0);
        assert_eq!(t.len(), 523);
        assert_eq!(t.last().unwrap().name, "output.weight");
        let q = t.iter().find(|d| d.name == "blk.0.attn_q.weight").unwrap();
        assert_eq!(q.dims, vec![2560, 3584]);
        let r = t
            .iter()
            .find(|d| d.name == "blk.0.ffn_gate_inp.weight")
            .unwrap();
        assert_eq!((r.dims.clone(), r.ty), (vec![2560, 64], GgmlType::F32));
    }

    #[test]
    fn rows_are_reproducible_and_reserved_rows_are_zero() {
        let s = ModelSpec::preset("tiny").unwrap();
        let plan = Plan::new(&s, &Targets::default(), 11);
        let defs = tensor_defs(&s, OutType::F32);
        for d in &defs {
            let n = d.rows.min(3);
            let mut a = vec![0f32; n * d.cols];
            let mut b = vec![0f32; d.cols];
            fill_rows(&plan, d, 0, &mut a);
            fill_rows(&plan, d, n - 1, &mut b);
            assert_eq!(&a[(n - 1) * d.cols..], &b[..], "{}", d.name);
            assert!(a.iter().all(|x| x.is_finite()), "{}", d.name);
        }
        let down = defs.iter().find(|d| d.kind == Kind::Down).unwrap();
        let mut row = vec![1f32; down.cols];
        fill_rows(&plan, down, plan.coord_u, &mut row);
        assert!(row.iter().all(|&x| x == 0.0));
    }
}
