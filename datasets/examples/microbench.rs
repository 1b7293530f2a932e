//! Temporary micro-benchmark.
use std::time::Instant;
fn main() {
    let n = 1536usize;
    let rows = 65536usize;
    let mut buf = vec![0f32; n];
    let mut out = vec![0u8; 864];
    let t = Instant::now();
    let mut s = 0f32;
    for r in 0..rows {
        datasets::rng::fill_normal(datasets::rng::key(1, &[r as u64]), &mut buf, 1.0);
        s += buf[7];
    }
    let e = t.elapsed().as_secs_f64();
    println!(
        "fill_normal {:.2} ns/elem ({s})",
        e * 1e9 / (n * rows) as f64
    );
    let t = Instant::now();
    for _ in 0..rows {
        datasets::quant::quantize_row(engine::quant::GgmlType::Q4_0, &buf, &mut out).unwrap();
    }
    let e = t.elapsed().as_secs_f64();
    println!("q4_0 {:.2} ns/elem", e * 1e9 / (n * rows) as f64);
    let mut out8 = vec![0u8; 1632];
    let t = Instant::now();
    for _ in 0..rows {
        datasets::quant::quantize_row(engine::quant::GgmlType::Q8_0, &buf, &mut out8).unwrap();
    }
    let e = t.elapsed().as_secs_f64();
    println!("q8_0 {:.2} ns/elem", e * 1e9 / (n * rows) as f64);
}
