//! The decode expert path on weights streamed from DRAM rather than cache: per expert, the x8
//! gate, the up rows of the active neurons (gathered) and the sparse down projection, over `N`
//! distinct experts (more bytes than the caches hold), against the same work on one expert
//! repeated (in cache); a third pass requests each part's up rows into L2 while the gate runs.
//! Prints GB/s of the bytes each step must read and µs per expert; one thread.
//!
//! `[HUGE=1] cargo run --release -p bench-suite --example expert_stream [ACTIVE_PERCENT]`
//!
//! The weights sit in anonymous memory in 4 KiB pages, or with `HUGE=1` advised for transparent
//! huge pages, as the engine's load-time layout is (measured: 121 µs per 4B expert streamed in
//! 4 KiB pages, 75 µs in 2 MiB pages).

use std::hint::black_box;
use std::time::Instant;

use bench_suite::synth::{matrix, values};

use bytemuck::Zeroable;
use engine::kernels::Kernels;
use engine::kernels::packed::{self, BlockQ4_0x8};
use engine::moe::sparse_down::{self, PlaneKind, PlanesView};
use engine::quant::{self, BlockQ4_0, BlockQ8_0, GgmlType};

const H: usize = 1536;
const F: usize = 768;
const N: usize = 160;

fn main() {
    let pct: usize = std::env::args()
        .nth(1)
        .map_or(20, |s| s.parse().expect("a percentage"));
    let up1 = matrix(GgmlType::Q4_0, F, H, 1);
    let down1 = matrix(GgmlType::Q4_0, H, F, 2);
    let mut planes1 = vec![0u8; down1.len()];
    sparse_down::repack(PlaneKind::Q4, H, F, &down1, &mut planes1).expect("repack");
    let huge = std::env::var("HUGE").is_ok();
    let alloc = |src: &[u8]| -> memmap2::MmapMut {
        let mut m = memmap2::MmapMut::map_anon(src.len() * N).expect("anon map");
        if huge {
            m.advise(memmap2::Advice::HugePage).expect("madvise");
        }
        for c in m.chunks_exact_mut(src.len()) {
            c.copy_from_slice(src);
        }
        m
    };
    let gate1 = {
        let rows: &[BlockQ4_0] = bytemuck::cast_slice(&up1);
        let mut p = vec![BlockQ4_0x8::zeroed(); rows.len() / 8];
        packed::repack_q4_0x8(rows, H / 32, &mut p).expect("repack");
        bytemuck::cast_slice::<BlockQ4_0x8, u8>(&p).to_vec()
    };
    let (upm, plm, gm) = (alloc(&up1), alloc(&planes1), alloc(&gate1));
    let gates: Vec<&[u8]> = gm.chunks_exact(gate1.len()).collect();
    let ups: Vec<&[u8]> = upm.chunks_exact(up1.len()).collect();
    let planes: Vec<&[u8]> = plm.chunks_exact(planes1.len()).collect();
    // Per expert: a different random active set of about `pct`% of the neurons.
    let sets: Vec<(Vec<u32>, Vec<f32>)> = (0..N)
        .map(|e| {
            let r = values(F, 1000 + e as u64);
            // A hash of (expert, neuron) picks each neuron with probability `pct`%.
            let idx: Vec<u32> = (0..F as u32)
                .filter(|&j| {
                    let h =
                        (e as u64 * 1_000_003 + u64::from(j)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    ((h >> 40) % 100) < pct as u64
                })
                .collect();
            let mut act = vec![0f32; F];
            for &j in &idx {
                act[j as usize] = 0.01 + r[j as usize].abs();
            }
            (idx, act)
        })
        .collect();
    let x = values(H, 7);
    let mut hi = vec![BlockQ8_0 { d: 0, qs: [0; 32] }; H / 32];
    quant::quantize::quantize_q8_0(&x, &mut hi);
    let lo = hi.clone();
    let mean_active = sets.iter().map(|s| s.0.len()).sum::<usize>() as f64 / N as f64;
    println!("{N} experts, {mean_active:.0} of {F} neurons active on average");
    let k = Kernels::active();
    let row_bytes = H / 32 * 18;
    let mut g = vec![0f32; F];
    let mut u = vec![0f32; F];
    let mut out = vec![0f32; H];
    let mut acc = Vec::new();
    let facts = packed::Q8Facts::of(&hi);
    let av = facts.view(&hi).expect("facts");
    for (name, stream, early) in [
        ("in cache (one expert)", false, false),
        ("streamed", true, false),
        ("streamed, up rows requested during the gate", true, true),
    ] {
        let mut best = [f64::INFINITY; 3];
        let mut bytes = [0usize; 3];
        for _ in 0..5 {
            let mut t = [0f64; 3];
            bytes = [0; 3];
            for (e, (idx, act)) in sets.iter().enumerate() {
                let w = if stream { e } else { 0 };
                let gate: &[BlockQ4_0x8] = bytemuck::cast_slice(gates[w]);
                let rows: &[BlockQ4_0] = bytemuck::cast_slice(ups[w]);
                let view = PlanesView::new(PlaneKind::Q4, H, F, planes[w]).expect("view");
                let s = Instant::now();
                if early {
                    // The gate in parts of 96 rows; after each, the up rows of the part's active
                    // neurons are requested (in the engine: its positive outputs).
                    let nb = H / 32;
                    let mut next = 0;
                    for (c, o) in g.chunks_mut(GATE_PART).enumerate() {
                        let part = &gate[c * GATE_PART / 8 * nb..(c + 1) * GATE_PART / 8 * nb];
                        (k.gemv2_q4_0x8_q8_0)(black_box(part), av, av, o);
                        while next < idx.len() && (idx[next] as usize) < (c + 1) * GATE_PART {
                            let r = idx[next] as usize * row_bytes;
                            engine::kernels::prefetch_l2(&ups[w][r..r + row_bytes]);
                            next += 1;
                        }
                    }
                } else {
                    (k.gemv2_q4_0x8_q8_0)(black_box(gate), av, av, &mut g);
                }
                t[0] += s.elapsed().as_secs_f64();
                let s = Instant::now();
                (k.gather_gemv2_q4_0_q8_0)(black_box(rows), idx, &hi, &lo, &mut u[..idx.len()]);
                t[1] += s.elapsed().as_secs_f64();
                let s = Instant::now();
                view.apply(black_box(act), &mut out, &mut acc)
                    .expect("apply");
                t[2] += s.elapsed().as_secs_f64();
                bytes[0] += gates[w].len();
                bytes[1] += idx.len() * row_bytes;
                // Active planes plus the scales of blocks with an active neuron.
                let blocks = (0..F / 32)
                    .filter(|b| act[b * 32..(b + 1) * 32].iter().any(|&a| a != 0.0))
                    .count();
                bytes[2] += idx.len() * view.neuron_bytes() + blocks * H * 2;
            }
            for (b, t) in best.iter_mut().zip(t) {
                *b = b.min(t);
            }
        }
        let per = |i: usize| (bytes[i] as f64 / best[i] / 1e9, best[i] / N as f64 * 1e6);
        let ((g0, g1), (u0, u1), (d0, d1)) = (per(0), per(1), per(2));
        println!("{name}");
        println!(
            "  gate {g0:6.2} GB/s ({g1:5.1} µs)   up gather {u0:6.2} GB/s ({u1:5.1} µs)   \
             sparse down {d0:6.2} GB/s ({d1:5.1} µs)   total {:5.1} µs/expert",
            g1 + u1 + d1
        );
    }
}

/// Rows of the gate computed between requests for up rows.
const GATE_PART: usize = 96;
