//! Memory read bandwidth, measured in the same run as the model so that tokens/s can be stated
//! as a share of the roofline `bandwidth / bytes read per token`.

use std::time::Instant;

use rayon::prelude::*;

/// Read bandwidth in bytes/s over a `bytes`-sized buffer with `threads` threads (median of
/// `reps` passes after one warm-up pass). The buffer should be several times the last-level cache.
pub fn read_bandwidth(bytes: usize, threads: usize, reps: usize) -> anyhow::Result<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let n = (bytes / 8).max(1 << 16);
    // Touch every page so the passes measure reads, not page faults.
    let buf: Vec<u64> = (0..n as u64).collect();
    let chunk = (n / (threads.max(1) * 8)).max(1 << 14);
    let pass = || {
        pool.install(|| {
            buf.par_chunks(chunk)
                .map(|c| {
                    // Eight independent lanes so the loop vectorises and is not latency bound.
                    let mut acc = [0u64; 8];
                    for w in c.chunks_exact(8) {
                        for i in 0..8 {
                            acc[i] = acc[i].wrapping_add(w[i]);
                        }
                    }
                    acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                })
                .reduce(|| 0, u64::wrapping_add)
        })
    };
    std::hint::black_box(pass());
    let mut rates = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        std::hint::black_box(pass());
        rates.push((n * 8) as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    Ok(rates[rates.len() / 2])
}

#[cfg(test)]
mod tests {
    #[test]
    fn bandwidth_is_plausible() {
        let bw = super::read_bandwidth(32 << 20, 1, 3).unwrap();
        // A sanity range only (debug builds on a loaded machine are slow): 10 MB/s .. 10 TB/s.
        assert!(bw.is_finite() && bw > 1e7 && bw < 1e13, "{bw}");
    }
}
