//! Writes a SmallThinker GGUF with random weights at the 4B-A0.6B shape (llama.cpp tensor names
//! and layout, Q4_0 matrices, F32 norms and routers): routing is near uniform, the case where an
//! expert cache helps least. For offloading measurements; not part of CI.
//!
//! ```text
//! cargo run --release -p engine --example random_gguf -- OUT.gguf [LAYERS] [SEED]
//! ```
//! Q4_0 blocks are random nibbles with a scale giving weights of standard deviation
//! `1/sqrt(fan_in)` (embeddings 0.25; output projections a hundredth of that, so the routing follows
//! the token); routers are Gaussian with standard deviation `1/sqrt(H)`.

use std::path::PathBuf;

use engine::formats::gguf::{GgufWriter, TensorSpec, Value};
use engine::quant::GgmlType;
use engine::sampler::Rng;

const HIDDEN: u64 = 1536;
const HEADS: u64 = 12;
const KV_HEADS: u64 = 2;
const HEAD_DIM: u64 = 128;
const VOCAB: u64 = 151_936;
const EXPERTS: u64 = 32;
const TOP_K: u64 = 4;
const FFN: u64 = 768;
/// Output projections (attention output, expert down) relative to `1/sqrt(fan_in)`.
const OUT_PROJ_SCALE: f32 = 0.01;
/// Standard deviation of a Q4_0 value `q − 8` for uniform nibbles 1..=15: sqrt((15² − 1) / 12).
const Q4_STD: f32 = 4.32;

fn q4_blocks(rng: &mut Rng, n_blocks: u64, std: f32, out: &mut Vec<u8>) {
    out.clear();
    for _ in 0..n_blocks {
        let d = half::f16::from_f32(std / Q4_STD * (0.9 + 0.2 * unit(rng)));
        out.extend_from_slice(&d.to_le_bytes());
        // Nibbles 1..=15, so that `q − 8` is symmetric around 0 (uniform 0..=15 would give every
        // weight a mean of −0.5·d, a shared direction that takes over the residual).
        let mut r = rng.next_u64();
        let mut left = 16;
        for _ in 0..16 {
            let mut nib = || {
                if left == 0 {
                    r = rng.next_u64();
                    left = 16;
                }
                left -= 1;
                let v = (r & 0xFF) % 15 + 1;
                r >>= 4;
                v as u8
            };
            let lo = nib();
            let hi = nib();
            out.push(lo | (hi << 4));
        }
    }
}

fn unit(rng: &mut Rng) -> f32 {
    (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32
}

fn gaussian(rng: &mut Rng) -> f32 {
    let u1 = unit(rng).max(1e-7);
    let u2 = unit(rng);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn main() -> engine::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        eprintln!("usage: random_gguf OUT.gguf [LAYERS] [SEED]");
        std::process::exit(2);
    };
    let layers: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(7);
    let a = |k: &str| format!("smallthinker.{k}");
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("smallthinker".into()),
        ),
        (
            "general.name".to_string(),
            Value::String("SmallThinker 4B-A0.6B shape, random weights".into()),
        ),
        (a("block_count"), Value::U32(layers as u32)),
        (a("context_length"), Value::U32(4096)),
        (a("embedding_length"), Value::U32(HIDDEN as u32)),
        (a("feed_forward_length"), Value::U32(FFN as u32)),
        (a("expert_feed_forward_length"), Value::U32(FFN as u32)),
        (a("attention.head_count"), Value::U32(HEADS as u32)),
        (a("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (a("attention.key_length"), Value::U32(HEAD_DIM as u32)),
        (a("attention.value_length"), Value::U32(HEAD_DIM as u32)),
        (a("rope.freq_base"), Value::F32(1.5e6)),
        (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (a("expert_count"), Value::U32(EXPERTS as u32)),
        (a("expert_used_count"), Value::U32(TOP_K as u32)),
        (a("expert_gating_func"), Value::U32(2)),
    ];
    let q4 = GgmlType::Q4_0;
    let f32t = GgmlType::F32;
    let (qd, kvd) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut tensors = vec![
        TensorSpec::new("token_embd.weight", vec![HIDDEN, VOCAB], q4),
        TensorSpec::new("output_norm.weight", vec![HIDDEN], f32t),
    ];
    for l in 0..layers {
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.extend([
            TensorSpec::new(p("attn_norm"), vec![HIDDEN], f32t),
            TensorSpec::new(p("attn_q"), vec![HIDDEN, qd], q4),
            TensorSpec::new(p("attn_k"), vec![HIDDEN, kvd], q4),
            TensorSpec::new(p("attn_v"), vec![HIDDEN, kvd], q4),
            TensorSpec::new(p("attn_output"), vec![qd, HIDDEN], q4),
            TensorSpec::new(p("ffn_norm"), vec![HIDDEN], f32t),
            TensorSpec::new(p("ffn_gate_inp"), vec![HIDDEN, EXPERTS], f32t),
            TensorSpec::new(p("ffn_gate_exps"), vec![HIDDEN, FFN, EXPERTS], q4),
            TensorSpec::new(p("ffn_up_exps"), vec![HIDDEN, FFN, EXPERTS], q4),
            TensorSpec::new(p("ffn_down_exps"), vec![FFN, HIDDEN, EXPERTS], q4),
        ]);
    }
    let specs: Vec<(String, Vec<u64>, GgmlType)> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.dims.clone(), t.ty))
        .collect();
    let mut w = GgufWriter::create(&out, metadata, tensors, 32)?;
    let mut rng = Rng::new(seed);
    let mut buf = Vec::new();
    for (name, dims, ty) in specs {
        let n: u64 = dims.iter().product();
        let fan_in = dims[0] as f32;
        if ty == f32t {
            buf.clear();
            for _ in 0..n {
                let v = if name.contains("norm") {
                    1.0
                } else {
                    gaussian(&mut rng) / fan_in.sqrt()
                };
                buf.extend_from_slice(&v.to_le_bytes());
            }
            w.write_tensor(&buf)?;
        } else {
            // Output projections small, so that each layer nudges the residual and the routing
            // follows the token rather than settling on the same experts for every token.
            let std = if name == "token_embd.weight" {
                0.25
            } else if name.contains("attn_output") || name.contains("ffn_down") {
                OUT_PROJ_SCALE / fan_in.sqrt()
            } else {
                1.0 / fan_in.sqrt()
            };
            // Stream in chunks of rows to bound memory.
            let blocks = n / 32;
            let chunk = 1 << 16;
            let mut done = 0;
            while done < blocks {
                let k = chunk.min(blocks - done);
                q4_blocks(&mut rng, k, std, &mut buf);
                w.write_chunk(&buf)?;
                done += k;
            }
        }
    }
    w.finish()?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
