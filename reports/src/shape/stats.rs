//! Small statistics for the profile charts: sorted finite values, nearest-rank percentiles and
//! power-of-two reuse-distance bins.

use std::collections::BTreeMap;

/// The finite values of `v`, sorted ascending.
pub fn sorted_finite(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s
}

/// Nearest-rank percentile `p` (0..100) of ascending `sorted` values; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Reuse distances binned by powers of two, labelled by the bin's first distance: `"1"` (0 and
/// 1), `"2"` (2–3), `"4"` (4–7), ..., `"1k"` (1024–2047), and `"first"` for first accesses
/// (`u64::MAX`). Empty bins between filled ones are kept so the axis is regular.
pub fn reuse_bins(hist: &[(u64, u64)]) -> Vec<(String, u64)> {
    let mut bins: BTreeMap<u32, u64> = BTreeMap::new();
    let mut first = 0u64;
    for &(d, c) in hist {
        if d == u64::MAX {
            first += c;
        } else {
            // Distance 0 (immediate reuse) shares the first bin with 1.
            let b = 63 - d.max(1).leading_zeros();
            *bins.entry(b).or_default() += c;
        }
    }
    let mut out = Vec::new();
    if let (Some((&lo, _)), Some((&hi, _))) = (bins.first_key_value(), bins.last_key_value()) {
        for b in lo..=hi {
            out.push((pow2_label(b), bins.get(&b).copied().unwrap_or(0)));
        }
    }
    if first > 0 {
        out.push(("first".to_owned(), first));
    }
    out
}

/// `2^b` in short form: `1`, `512`, `1k`, `64k`, `1M`, `4G`.
fn pow2_label(b: u32) -> String {
    match b {
        0..10 => (1u64 << b).to_string(),
        10..20 => format!("{}k", 1u64 << (b - 10)),
        20..30 => format!("{}M", 1u64 << (b - 20)),
        _ => format!("{}G", 1u64 << (b.min(63) - 30)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
        assert_eq!(sorted_finite(&[2.0, f64::NAN, 1.0]), vec![1.0, 2.0]);
    }

    #[test]
    fn reuse_bins_are_powers_of_two_with_first_accesses_last() {
        let bins = reuse_bins(&[(1, 5), (2, 1), (3, 2), (9, 4), (u64::MAX, 7)]);
        let labels: Vec<&str> = bins.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(labels, vec!["1", "2", "4", "8", "first"]);
        let counts: Vec<u64> = bins.iter().map(|b| b.1).collect();
        assert_eq!(counts, vec![5, 3, 0, 4, 7]);
        assert!(reuse_bins(&[]).is_empty());
        let wide = reuse_bins(&[(0, 1), (1500, 1), (3 << 20, 1)]);
        assert_eq!(wide.len(), 22);
        assert_eq!(wide[10].0, "1k");
        assert_eq!(wide[21].0, "2M");
    }
}
