//! Kernel micro benchmarks at SmallThinker-4B shapes (hidden H = 1536, expert FFN F = 768),
//! for every SIMD level this CPU supports (scalar, AVX2 and AVX-512 side by side).
//!
//! Throughput is reported in weight bytes read (criterion `Throughput::Bytes`), so the numbers
//! compare directly with memory bandwidth: decode is memory-bound, and a kernel that cannot
//! stream its weights at close to bandwidth from cache is compute-bound.
//!
//! Run briefly: `cargo bench -p bench-suite --bench kernels -- --warm-up-time 1
//! --measurement-time 2`.

use std::hint::black_box;

use bench_suite::synth::{matrix, values};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::kernels::{Kernels, QuantAct, act_format_for, dot_rows};
use engine::quant::{self, BlockQ4_0, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8K, GgmlType};

/// Hidden size of the 4B model.
const H: usize = 1536;
/// Expert FFN width of the 4B model.
const F: usize = 768;
/// Rows of the "out of cache" matrix: 40,000 × 1536 in Q4_0 is 34.6 MB, beyond the 32 MB L3.
const BIG_ROWS: usize = 40_000;

fn q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    let mut a = vec![bytemuck::Zeroable::zeroed(); x.len() / 32];
    quant::quantize::quantize_q8_0(x, &mut a);
    a
}

fn q8k(x: &[f32]) -> Vec<BlockQ8K> {
    let mut a = vec![bytemuck::Zeroable::zeroed(); x.len() / 256];
    quant::quantize::quantize_q8_k(x, &mut a);
    a
}

fn bench_dots(c: &mut Criterion) {
    let x = values(H, 1);
    let a = q8_0(&x);
    let ak = q8k(&x);
    let w4 = matrix(GgmlType::Q4_0, 1, H, 2);
    let w8 = matrix(GgmlType::Q8_0, 1, H, 3);
    let wk4 = matrix(GgmlType::Q4_K, 1, H, 4);
    let wk6 = matrix(GgmlType::Q6_K, 1, H, 5);
    let wf: Vec<f32> = values(H, 6);
    let wh: Vec<u16> = wf.iter().map(|&v| quant::f32_to_f16(v)).collect();

    let mut g = c.benchmark_group("dot_row_1536");
    for k in Kernels::available() {
        let lvl = k.level.name();
        let w4b: &[BlockQ4_0] = bytemuck::cast_slice(&w4);
        g.throughput(Throughput::Bytes(w4.len() as u64));
        g.bench_function(BenchmarkId::new("q4_0_q8_0", lvl), |b| {
            b.iter(|| (k.vec_dot_q4_0_q8_0)(black_box(w4b), black_box(&a)))
        });
        let w8b: &[BlockQ8_0] = bytemuck::cast_slice(&w8);
        g.throughput(Throughput::Bytes(w8.len() as u64));
        g.bench_function(BenchmarkId::new("q8_0_q8_0", lvl), |b| {
            b.iter(|| (k.vec_dot_q8_0_q8_0)(black_box(w8b), black_box(&a)))
        });
        let wk4b: &[BlockQ4K] = bytemuck::cast_slice(&wk4);
        g.throughput(Throughput::Bytes(wk4.len() as u64));
        g.bench_function(BenchmarkId::new("q4_k_q8_k", lvl), |b| {
            b.iter(|| (k.vec_dot_q4_k_q8_k)(black_box(wk4b), black_box(&ak)))
        });
        let wk6b: &[BlockQ6K] = bytemuck::cast_slice(&wk6);
        g.throughput(Throughput::Bytes(wk6.len() as u64));
        g.bench_function(BenchmarkId::new("q6_k_q8_k", lvl), |b| {
            b.iter(|| (k.vec_dot_q6_k_q8_k)(black_box(wk6b), black_box(&ak)))
        });
        g.throughput(Throughput::Bytes((wf.len() * 4) as u64));
        g.bench_function(BenchmarkId::new("f32", lvl), |b| {
            b.iter(|| (k.dot_f32)(black_box(&wf), black_box(&x)))
        });
        g.throughput(Throughput::Bytes((wh.len() * 2) as u64));
        g.bench_function(BenchmarkId::new("f16_f32", lvl), |b| {
            b.iter(|| (k.dot_f16_f32)(black_box(&wh), black_box(&x)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("quantize_act_1536");
    g.throughput(Throughput::Bytes((H * 4) as u64));
    for k in Kernels::available() {
        let mut out = a.clone();
        g.bench_function(BenchmarkId::new("q8_0", k.level.name()), |b| {
            b.iter(|| (k.quantize_row_q8_0)(black_box(&x), black_box(&mut out)))
        });
        let mut outk = ak.clone();
        g.bench_function(BenchmarkId::new("q8_k", k.level.name()), |b| {
            b.iter(|| (k.quantize_row_q8_k)(black_box(&x), black_box(&mut outk)))
        });
    }
    g.finish();
}

fn bench_gemv(c: &mut Criterion) {
    // Expert gate/up: F rows × H; expert down (transposed for sparse use, as PowerInfer stores
    // it, or plain for dense): H rows × F. Both are 663,552 bytes in Q4_0.
    let xh = values(H, 11);
    let xf = values(F, 12);
    let ah = q8_0(&xh);
    let af = q8_0(&xf);
    let gate = matrix(GgmlType::Q4_0, F, H, 13);
    let down = matrix(GgmlType::Q4_0, H, F, 14);
    let gate8 = matrix(GgmlType::Q8_0, F, H, 15);
    let big = matrix(GgmlType::Q4_0, BIG_ROWS, H, 16);

    let mut g = c.benchmark_group("gemv");
    for k in Kernels::available() {
        let lvl = k.level.name();
        let cases: [(&str, &[u8], &[BlockQ8_0], usize); 3] = [
            ("q4_0_768x1536", &gate, &ah, F),
            ("q4_0_1536x768", &down, &af, H),
            ("q4_0_40000x1536_dram", &big, &ah, BIG_ROWS),
        ];
        for (name, w, a, rows) in cases {
            let wb: &[BlockQ4_0] = bytemuck::cast_slice(w);
            let mut out = vec![0f32; rows];
            g.throughput(Throughput::Bytes(w.len() as u64));
            g.bench_function(BenchmarkId::new(name, lvl), |b| {
                b.iter(|| (k.gemv_q4_0_q8_0)(black_box(wb), black_box(a), black_box(&mut out)))
            });
        }
        let wb: &[BlockQ8_0] = bytemuck::cast_slice(&gate8);
        let mut out = vec![0f32; F];
        g.throughput(Throughput::Bytes(gate8.len() as u64));
        g.bench_function(BenchmarkId::new("q8_0_768x1536", lvl), |b| {
            b.iter(|| (k.gemv_q8_0_q8_0)(black_box(wb), black_box(&ah), black_box(&mut out)))
        });
    }
    g.finish();

    // The generic entry the model uses, on the active level (Q6_K goes row by row).
    let mut g = c.benchmark_group("dot_rows_active");
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q6_K] {
        let w = matrix(ty, F, H, 21);
        let rb = ty.row_bytes(H as u64).unwrap() as usize;
        let mut act = QuantAct::with_capacity(H);
        act.quantize(&xh, act_format_for(ty).unwrap()).unwrap();
        let mut out = vec![0f32; F];
        g.throughput(Throughput::Bytes(w.len() as u64));
        g.bench_function(BenchmarkId::new(ty.name(), "768x1536"), |b| {
            b.iter(|| dot_rows(ty, black_box(&w), rb, &act, black_box(&mut out)).unwrap())
        });
    }
    g.finish();
}

/// Plain memory-read baselines over the same buffers, so kernel GB/s can be compared with what
/// the machine delivers at the moment of the run (shared machines vary a lot).
fn bench_baseline(c: &mut Criterion) {
    let small = matrix(GgmlType::Q4_0, F, H, 31);
    let big = matrix(GgmlType::Q4_0, BIG_ROWS, H, 32);
    let mut g = c.benchmark_group("baseline_read");
    for (name, buf) in [("663KB", &small), ("34.6MB_dram", &big)] {
        g.throughput(Throughput::Bytes(buf.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let (chunks, _) = black_box(buf.as_slice()).as_chunks::<8>();
                chunks
                    .iter()
                    .fold(0u64, |s, c| s.wrapping_add(u64::from_le_bytes(*c)))
            })
        });
    }
    g.finish();
}

/// The decode path's two-level kernels, per SIMD level: x8-packed and row-major dense products,
/// the gathered up rows of active neurons and the sparse down planes (every fifth neuron active,
/// close to SmallThinker's ~80% ReGLU zeros). Throughput counts the weight bytes actually read.
fn bench_two_level(c: &mut Criterion) {
    use engine::kernels::packed::{self, BlockQ4_0x8, Q8Facts};
    use engine::moe::sparse_down::{self, PlaneKind, PlanesView};

    let x = values(H, 41);
    let hi = q8_0(&x);
    let residual: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| v - quant::f16_to_f32(hi[i / 32].d) * hi[i / 32].qs[i % 32] as f32)
        .collect();
    let lo = q8_0(&residual);
    let (fh, fl) = (Q8Facts::of(&hi), Q8Facts::of(&lo));
    let (vh, vl) = (fh.view(&hi).unwrap(), fl.view(&lo).unwrap());
    let gate = matrix(GgmlType::Q4_0, F, H, 42);
    let rows: &[BlockQ4_0] = bytemuck::cast_slice(&gate);
    let mut x8 = vec![<BlockQ4_0x8 as bytemuck::Zeroable>::zeroed(); rows.len() / 8];
    packed::repack_q4_0x8(rows, H / 32, &mut x8).unwrap();
    let idx: Vec<u32> = (0..F as u32).step_by(5).collect();
    let row_bytes = gate.len() / F;
    let down = matrix(GgmlType::Q4_0, H, F, 43);
    let mut planes = vec![0u8; down.len()];
    sparse_down::repack(PlaneKind::Q4, H, F, &down, &mut planes).unwrap();
    let view = PlanesView::new(PlaneKind::Q4, H, F, &planes).unwrap();
    let act: Vec<f32> = values(F, 44)
        .iter()
        .enumerate()
        .map(|(j, &v)| if j % 5 == 0 { v.abs() + 0.01 } else { 0.0 })
        .collect();
    let active_down_bytes = (F / 5 + 1) * H / 2;
    let down8 = matrix(GgmlType::Q8_0, H, F, 45);
    let mut planes8 = vec![0u8; down8.len()];
    sparse_down::repack(PlaneKind::Q8, H, F, &down8, &mut planes8).unwrap();
    let view8 = PlanesView::new(PlaneKind::Q8, H, F, &planes8).unwrap();

    let mut g = c.benchmark_group("two_level");
    for k in Kernels::available() {
        let lvl = k.level.name();
        let mut out = vec![0f32; F];
        g.throughput(Throughput::Bytes(gate.len() as u64));
        g.bench_function(BenchmarkId::new("x8_q4_0_768x1536", lvl), |b| {
            b.iter(|| (k.gemv2_q4_0x8_q8_0)(black_box(&x8), vh, vl, black_box(&mut out)))
        });
        // Four tokens per pass over the weights (prefill); bytes counted once per token.
        let acts = [(vh, vl); 4];
        let mut out4 = vec![0f32; 4 * F];
        g.throughput(Throughput::Bytes(4 * gate.len() as u64));
        g.bench_function(BenchmarkId::new("x8_gemm_4_tokens_768x1536", lvl), |b| {
            b.iter(|| (k.gemm2_q4_0x8_q8_0)(black_box(&x8), &acts, black_box(&mut out4)))
        });
        g.throughput(Throughput::Bytes(gate.len() as u64));
        g.bench_function(BenchmarkId::new("rowmajor_q4_0_768x1536", lvl), |b| {
            b.iter(|| (k.gemv2_q4_0_q8_0)(black_box(rows), &hi, &lo, black_box(&mut out)))
        });
        let mut up = vec![0f32; idx.len()];
        g.throughput(Throughput::Bytes((idx.len() * row_bytes) as u64));
        g.bench_function(BenchmarkId::new("gather_q4_0_1of5_rows", lvl), |b| {
            b.iter(|| (k.gather_gemv2_q4_0_q8_0)(black_box(rows), &idx, &hi, &lo, &mut up))
        });
        let mut o = vec![0f32; H];
        let mut acc = Vec::new();
        g.throughput(Throughput::Bytes(active_down_bytes as u64));
        g.bench_function(BenchmarkId::new("sparse_down_q4_1of5_neurons", lvl), |b| {
            b.iter(|| {
                view.apply_at(k.level, black_box(&act), &mut o, &mut acc)
                    .unwrap()
            })
        });
        g.throughput(Throughput::Bytes(2 * active_down_bytes as u64));
        g.bench_function(BenchmarkId::new("sparse_down_q8_1of5_neurons", lvl), |b| {
            b.iter(|| {
                view8
                    .apply_at(k.level, black_box(&act), &mut o, &mut acc)
                    .unwrap()
            })
        });
    }
    g.finish();
}

/// Prefill attention's f32 kernels at a 4B tile (16 tokens × 6 query heads = 96 rows, head
/// size 128, chunks of 128 keys): the scores product (`Q · Kᵀ`), the weighted values (`P · V`)
/// and the softmax numerators. Throughput counts the f32 operands read once (the key or value
/// chunk and the query or weight rows).
fn bench_attention(c: &mut Criterion) {
    use engine::kernels::Sgemm;
    const ROWS: usize = 96;
    const D: usize = 128;
    const KEYS: usize = 128;
    let q = values(ROWS * D, 21);
    let kt = values(D * KEYS, 22);
    let p = values(ROWS * KEYS, 23);
    let v = values(KEYS * D, 24);
    let scores = Sgemm {
        m: ROWS,
        n: KEYS,
        k: D,
        lda: D,
        ldb: KEYS,
        ldc: KEYS,
    };
    let weighted = Sgemm {
        m: ROWS,
        n: D,
        k: KEYS,
        lda: KEYS,
        ldb: D,
        ldc: D,
    };
    let mut g = c.benchmark_group("attention_tile_96x128x128");
    for k in Kernels::available() {
        let lvl = k.level.name();
        let mut s = vec![0f32; ROWS * KEYS];
        g.throughput(Throughput::Bytes(((q.len() + kt.len()) * 4) as u64));
        g.bench_function(BenchmarkId::new("sgemm_scores", lvl), |b| {
            b.iter(|| (k.sgemm_acc)(scores, black_box(&q), &kt, &mut s))
        });
        let mut o = vec![0f32; ROWS * D];
        g.throughput(Throughput::Bytes(((p.len() + v.len()) * 4) as u64));
        g.bench_function(BenchmarkId::new("sgemm_weighted_values", lvl), |b| {
            b.iter(|| (k.sgemm_acc)(weighted, black_box(&p), &v, &mut o))
        });
        let x: Vec<f32> = values(ROWS * KEYS, 25).iter().map(|v| -v.abs()).collect();
        let mut y = x.clone();
        g.throughput(Throughput::Bytes((x.len() * 4) as u64));
        g.bench_function(BenchmarkId::new("exp_shift_sum", lvl), |b| {
            b.iter(|| {
                y.copy_from_slice(&x);
                (k.exp_shift_sum)(black_box(&mut y), 0.0)
            })
        });
    }
    g.finish();
}

/// The load-time and after-every-offloaded-read layouts of a 4B expert: the down matrix into
/// neuron-major planes (Q4_0 and Q8_0) and the gate into x8 blocks, scalar reference against
/// the level's form (`THINKER_SIMD` caps it). Throughput in bytes repacked.
fn bench_repack(c: &mut Criterion) {
    use engine::kernels::packed::{self, BlockQ4_0x8};
    use engine::moe::sparse_down::{self, PlaneKind};

    let mut g = c.benchmark_group("repack");
    for (kind, ty) in [
        (PlaneKind::Q4, GgmlType::Q4_0),
        (PlaneKind::Q8, GgmlType::Q8_0),
    ] {
        let down = matrix(ty, H, F, 51);
        let mut dst = vec![0u8; down.len()];
        g.throughput(Throughput::Bytes(down.len() as u64));
        let name = format!("down_planes_{}_1536x768", ty.name());
        g.bench_function(BenchmarkId::new(name.clone(), "scalar"), |b| {
            b.iter(|| sparse_down::repack_scalar(kind, H, F, black_box(&down), &mut dst))
        });
        g.bench_function(BenchmarkId::new(name, "best"), |b| {
            b.iter(|| sparse_down::repack(kind, H, F, black_box(&down), &mut dst))
        });
    }
    let gate = matrix(GgmlType::Q4_0, F, H, 52);
    let rows: &[BlockQ4_0] = bytemuck::cast_slice(&gate);
    let mut x8 = vec![<BlockQ4_0x8 as bytemuck::Zeroable>::zeroed(); rows.len() / 8];
    g.throughput(Throughput::Bytes(gate.len() as u64));
    g.bench_function(BenchmarkId::new("x8_q4_0_768x1536", "scalar"), |b| {
        b.iter(|| packed::repack_q4_0x8_scalar(black_box(rows), H / 32, &mut x8))
    });
    g.bench_function(BenchmarkId::new("x8_q4_0_768x1536", "best"), |b| {
        b.iter(|| packed::repack_q4_0x8(black_box(rows), H / 32, &mut x8))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_baseline,
    bench_dots,
    bench_gemv,
    bench_two_level,
    bench_attention,
    bench_repack
);
criterion_main!(benches);
