//! The decode expert path on weights streamed from DRAM rather than cache: per expert, the up
//! rows of the active neurons (gathered) and the sparse down projection, over `N` distinct
//! experts (more bytes than the caches hold), against the same work on one expert repeated
//! (in cache). Prints GB/s of the bytes each step must read; one thread.
//!
//! `cargo run --release -p bench-suite --example expert_stream [ACTIVE_PERCENT]`

use std::hint::black_box;
use std::time::Instant;

use bench_suite::synth::{matrix, values};

use engine::kernels::Kernels;
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
    let (upm, plm) = (alloc(&up1), alloc(&planes1));
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
    let mut u = vec![0f32; F];
    let mut out = vec![0f32; H];
    let mut acc = Vec::new();
    for (name, stream) in [("in cache (one expert)", false), ("streamed", true)] {
        let (mut t_up, mut t_down, mut b_up, mut b_down) = (f64::INFINITY, f64::INFINITY, 0, 0);
        for _ in 0..5 {
            let (mut tu, mut td) = (0f64, 0f64);
            (b_up, b_down) = (0, 0);
            for (e, (idx, act)) in sets.iter().enumerate() {
                let w = if stream { e } else { 0 };
                let rows: &[BlockQ4_0] = bytemuck::cast_slice(ups[w]);
                let view = PlanesView::new(PlaneKind::Q4, H, F, planes[w]).expect("view");
                let s = Instant::now();
                (k.gather_gemv2_q4_0_q8_0)(black_box(rows), idx, &hi, &lo, &mut u[..idx.len()]);
                tu += s.elapsed().as_secs_f64();
                let s = Instant::now();
                view.apply(black_box(act), &mut out, &mut acc)
                    .expect("apply");
                td += s.elapsed().as_secs_f64();
                b_up += idx.len() * row_bytes;
                // Active planes plus the scales of blocks with an active neuron.
                let blocks = (0..F / 32)
                    .filter(|b| act[b * 32..(b + 1) * 32].iter().any(|&a| a != 0.0))
                    .count();
                b_down += idx.len() * view.neuron_bytes() + blocks * H * 2;
            }
            t_up = t_up.min(tu);
            t_down = t_down.min(td);
        }
        println!(
            "{name:24} up gather {:6.2} GB/s ({:5.1} µs/expert)   sparse down {:6.2} GB/s ({:5.1} µs/expert)",
            b_up as f64 / t_up / 1e9,
            t_up / N as f64 * 1e6,
            b_down as f64 / t_down / 1e9,
            t_down / N as f64 * 1e6
        );
    }
}
