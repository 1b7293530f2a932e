//! Deterministic synthetic inputs for the kernel benchmarks and examples.

use engine::quant::{self, GgmlType};

/// Deterministic pseudo-random normal-ish values (xorshift + sum of uniforms).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (next() + next() + next() + next() - 2.0) * 0.05)
        .collect()
}

/// `rows` rows of `cols` values quantised to `ty`.
pub fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let rb = ty.row_bytes(cols as u64).expect("row size") as usize;
    let x = values(cols, seed);
    let mut row = vec![0u8; rb];
    let mut out = Vec::with_capacity(rb * rows);
    for r in 0..rows {
        // Rotate one source row so rows differ without quantising rows·cols values.
        let mut xr = x.clone();
        xr.rotate_left(r % cols);
        quant::quantize_row(ty, &xr, &mut row).expect("quantise a row");
        out.extend_from_slice(&row);
    }
    out
}
