//! Best-of-N timing of the f32-activation product (`kernels::wf32`) against the Q8_0-activation
//! gemv, one thread, for cache-resident and DRAM-sized Q4_0 matrices. Best-of-N is robust to a
//! loaded machine; run with `cargo run --release -p bench-suite --example wf32_peak`.

use std::time::Instant;

use engine::kernels::{ActFormat, QuantAct, dot_rows, wf32};
use engine::quant::{GgmlType, quantize_row};

fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    let mut b = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

fn main() {
    let cols = 1536;
    let ty = GgmlType::Q4_0;
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    for (rows, reps) in [(768usize, 300usize), (40_000, 30)] {
        let mut w = vec![0u8; rows * rb];
        let vals: Vec<f32> = (0..cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        for r in 0..rows {
            quantize_row(ty, &vals, &mut w[r * rb..(r + 1) * rb]).unwrap();
        }
        let x: Vec<f32> = (0..cols * 8)
            .map(|i| ((i * 13 % 97) as f32 - 48.0) / 48.0)
            .collect();
        let mut out = vec![0f32; rows * 8];
        let mb = (rows * rb) as f64 / 1e9;
        let t1 = best(reps, || {
            wf32::gemm(ty, &w, rb, &x[..cols], cols, &mut out[..rows]).unwrap()
        });
        let t8 = best(reps, || wf32::gemm(ty, &w, rb, &x, cols, &mut out).unwrap());
        let mut qa = QuantAct::new();
        let tq = best(reps, || {
            qa.quantize(&x[..cols], ActFormat::Q8_0).unwrap();
            dot_rows(ty, &w, rb, &qa, &mut out[..rows]).unwrap()
        });
        println!(
            "{rows}x{cols} Q4_0 ({:.1} MB): f32-act 1 token {:.1} GB/s | f32-act 8 tokens {:.1} GB/s ({:.1} GMAC/s) | q8-act 1 token {:.1} GB/s",
            mb * 1e3,
            mb / t1,
            mb / t8,
            (rows * cols * 8) as f64 / t8 / 1e9,
            mb / tq
        );
    }
}
