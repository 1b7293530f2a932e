//! Best-of-N kernel throughput at 4B shapes, for every SIMD level this CPU supports.
//!
//! Criterion reports means, which on a shared machine mostly measure the other tenants. The
//! minimum over many repetitions approximates what a quiet core does. Prints weight GB/s.
//!
//! `cargo run --release -p bench-suite --example kernel_peak`

use std::hint::black_box;
use std::time::Instant;

use bench_suite::synth::{matrix, values};

use bytemuck::Zeroable;
use engine::kernels::Kernels;
use engine::kernels::packed::{self, BlockQ4_0x8};
use engine::quant::{self, BlockQ4_0, BlockQ8_0, GgmlType};

const H: usize = 1536;
const F: usize = 768;
const REPS: usize = 300;

/// Best time in seconds of `f` over `REPS` runs.
fn best(mut f: impl FnMut()) -> f64 {
    let mut t = f64::INFINITY;
    for _ in 0..REPS {
        let s = Instant::now();
        f();
        t = t.min(s.elapsed().as_secs_f64());
    }
    t
}

fn main() {
    let x = values(H, 99);
    let mut a = vec![BlockQ8_0 { d: 0, qs: [0; 32] }; H / 32];
    quant::quantize::quantize_q8_0(&x, &mut a);
    let gate4 = matrix(GgmlType::Q4_0, F, H, 91);
    let gate8 = matrix(GgmlType::Q8_0, F, H, 92);
    let big = matrix(GgmlType::Q4_0, 40_000, H, 93);
    let x8 = |m: &[u8]| {
        let rows: &[BlockQ4_0] = bytemuck::cast_slice(m);
        let mut p = vec![BlockQ4_0x8::zeroed(); rows.len() / 8];
        packed::repack_q4_0x8(rows, H / 32, &mut p).expect("repack");
        p
    };
    let (px8, bx8) = (x8(&gate4), x8(&big));
    let report = |what: &str, bytes: usize, t: f64| {
        println!(
            "{what:40} {:9.1} µs {:7.2} GB/s",
            t * 1e6,
            bytes as f64 / t / 1e9
        );
    };
    for (name, buf) in [
        ("read u64 sum 663KB", &gate4),
        ("read u64 sum 34.6MB", &big),
    ] {
        let t = best(|| {
            let (c, _) = black_box(buf.as_slice()).as_chunks::<8>();
            black_box(
                c.iter()
                    .fold(0u64, |s, c| s.wrapping_add(u64::from_le_bytes(*c))),
            );
        });
        report(name, buf.len(), t);
    }
    // Repacking one 21B expert's gate (x8) and down (neuron-major planes), as the offload path
    // does in a cache slot after each read.
    {
        let (h, f) = (2560, 768);
        let gate = matrix(GgmlType::Q4_0, f, h, 94);
        let rows: &[BlockQ4_0] = bytemuck::cast_slice(&gate);
        let mut p = vec![BlockQ4_0x8::zeroed(); rows.len() / 8];
        let t = best(|| packed::repack_q4_0x8(black_box(rows), h / 32, &mut p).expect("repack"));
        report("repack_q4_0x8 768x2560", gate.len(), t);
        let down = matrix(GgmlType::Q4_0, h, f, 95);
        let mut dst = vec![0u8; down.len()];
        let t = best(|| {
            engine::moe::sparse_down::repack(
                engine::moe::sparse_down::PlaneKind::Q4,
                h,
                f,
                black_box(&down),
                &mut dst,
            )
            .expect("repack")
        });
        report("sparse_down::repack Q4 2560x768", down.len(), t);
    }
    let facts = packed::Q8Facts::of(&a);
    let av = facts.view(&a).expect("facts of a");
    for k in Kernels::available() {
        let lvl = k.level.name();
        let row: &[BlockQ4_0] = bytemuck::cast_slice(&gate4[..H / 32 * 18]);
        let t = best(|| {
            for _ in 0..100 {
                black_box((k.vec_dot_q4_0_q8_0)(black_box(row), &a));
            }
        }) / 100.0;
        report(&format!("{lvl} vec_dot_q4_0_q8_0 1536"), H / 32 * 18, t);
        let w: &[BlockQ4_0] = bytemuck::cast_slice(&gate4);
        let mut out = vec![0f32; F];
        let t = best(|| (k.gemv_q4_0_q8_0)(black_box(w), &a, &mut out));
        report(&format!("{lvl} gemv_q4_0 768x1536"), gate4.len(), t);
        let w8: &[BlockQ8_0] = bytemuck::cast_slice(&gate8);
        let t = best(|| (k.gemv_q8_0_q8_0)(black_box(w8), &a, &mut out));
        report(&format!("{lvl} gemv_q8_0 768x1536"), gate8.len(), t);
        let t = best(|| (k.gemv2_q4_0_q8_0)(black_box(w), &a, &a, &mut out));
        report(&format!("{lvl} gemv2_q4_0 768x1536"), gate4.len(), t);
        let t = best(|| (k.gemv2_q8_0_q8_0)(black_box(w8), &a, &a, &mut out));
        report(&format!("{lvl} gemv2_q8_0 768x1536"), gate8.len(), t);
        let wb: &[BlockQ4_0] = bytemuck::cast_slice(&big);
        let mut outb = vec![0f32; 40_000];
        let t = best(|| (k.gemv_q4_0_q8_0)(black_box(wb), &a, &mut outb));
        report(&format!("{lvl} gemv_q4_0 40000x1536 (DRAM)"), big.len(), t);
        let t = best(|| (k.gemv2_q4_0_q8_0)(black_box(wb), &a, &a, &mut outb));
        report(&format!("{lvl} gemv2_q4_0 40000x1536 (DRAM)"), big.len(), t);
        let t = best(|| (k.gemv_q4_0x8_q8_0)(black_box(&px8), av, &mut out));
        report(&format!("{lvl} gemv_q4_0x8 768x1536"), gate4.len(), t);
        let t = best(|| (k.gemv2_q4_0x8_q8_0)(black_box(&px8), av, av, &mut out));
        report(&format!("{lvl} gemv2_q4_0x8 768x1536"), gate4.len(), t);
        // Several tokens per pass: bytes counted once per token (the work of that many gemv2).
        for n in [1usize, 2, 4, 8] {
            let acts = vec![(av, av); n];
            let mut outn = vec![0f32; F * n];
            let t = best(|| (k.gemm2_q4_0x8_q8_0)(black_box(&px8), &acts, &mut outn));
            report(
                &format!("{lvl} gemm2_q4_0x8 768x1536 x{n} tokens (per-token bytes)"),
                gate4.len() * n,
                t,
            );
        }
        let t = best(|| (k.gemv_q4_0x8_q8_0)(black_box(&bx8), av, &mut outb));
        report(
            &format!("{lvl} gemv_q4_0x8 40000x1536 (DRAM)"),
            big.len(),
            t,
        );
        let t = best(|| (k.gemv2_q4_0x8_q8_0)(black_box(&bx8), av, av, &mut outb));
        report(
            &format!("{lvl} gemv2_q4_0x8 40000x1536 (DRAM)"),
            big.len(),
            t,
        );
    }
}
