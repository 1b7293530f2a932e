//! Small numeric helpers for the design: the normal distribution's tail, ReLU moments, and the
//! Zipf popularity profile.

/// Complementary error function (W. J. Cody's rational Chebyshev fit as in Numerical Recipes'
/// `erfcc`; relative error below 1.2e-7 everywhere, plenty for calibration).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// `P(N(0,1) > x)`.
pub fn normal_tail(x: f64) -> f64 {
    0.5 * erfc(x / std::f64::consts::SQRT_2)
}

/// Standard normal density.
pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// `E[relu(Z − τ)²]` for `Z ~ N(0,1)`: the second moment of a ReLU whose threshold sits `τ`
/// standard deviations above the mean.
pub fn relu_second_moment(tau: f64) -> f64 {
    (tau * tau + 1.0) * normal_tail(tau) - tau * normal_pdf(tau)
}

/// Nodes and weights (summing to 1) of an equal-probability quadrature of `N(0,1)`:
/// the midpoints of `n` equal-mass bins, found by bisection on the tail.
pub fn normal_quadrature(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let p = (i as f64 + 0.5) / n as f64; // tail mass
            bisect(|x| normal_tail(x) - p, -10.0, 10.0)
        })
        .collect()
}

/// Root of a decreasing function `f` on `[lo, hi]` by bisection (60 halvings).
pub fn bisect(f: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if f(mid) > 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Zipf popularity of `n` experts with exponent `s` when each token picks `k` of them:
/// `p_r = k · r^{-s} / Σ_j j^{-s}` for ranks `r = 1..=n`, capped at 1 (the excess is spread over
/// the rest in proportion, so the sum stays `k`).
pub fn zipf_popularity(n: usize, k: usize, s: f64) -> Vec<f64> {
    let raw: Vec<f64> = (1..=n).map(|r| (r as f64).powf(-s)).collect();
    let mut p = vec![0.0; n];
    let mut fixed = vec![false; n];
    loop {
        let budget = k as f64 - fixed.iter().filter(|&&f| f).count() as f64;
        let free: f64 = raw
            .iter()
            .zip(&fixed)
            .filter(|(_, f)| !**f)
            .map(|(r, _)| r)
            .sum();
        let mut changed = false;
        for i in 0..n {
            if fixed[i] {
                p[i] = 1.0;
                continue;
            }
            p[i] = raw[i] * budget / free;
            if p[i] > 1.0 {
                fixed[i] = true;
                changed = true;
            }
        }
        if !changed {
            return p;
        }
    }
}

/// Least-squares slope of `ln(freq)` against `ln(rank)` over the experts sorted by descending
/// frequency (zero frequencies are floored at `floor`); a Zipf profile with exponent `s` gives
/// `-s`.
pub fn zipf_slope(freqs: &[f64], floor: f64) -> f64 {
    let mut f: Vec<f64> = freqs.to_vec();
    f.sort_by(|a, b| b.total_cmp(a));
    log_log_slope(&f, floor)
}

/// Least-squares slope of `ln(values[i])` against `ln(i + 1)`, values floored at `floor`.
pub fn log_log_slope(f: &[f64], floor: f64) -> f64 {
    let pts: Vec<(f64, f64)> = f
        .iter()
        .enumerate()
        .map(|(i, &v)| (((i + 1) as f64).ln(), v.max(floor).ln()))
        .collect();
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_matches_known_values() {
        const TOL: f64 = 1e-6;
        assert!((normal_tail(0.0) - 0.5).abs() < TOL);
        assert!((normal_tail(1.0) - 0.158_655_25).abs() < TOL);
        assert!((normal_tail(-1.959_964) - 0.975).abs() < TOL);
        assert!((normal_tail(0.841_621_2) - 0.2).abs() < TOL);
    }

    #[test]
    fn relu_moment_at_zero_is_half() {
        assert!((relu_second_moment(0.0) - 0.5).abs() < 1e-6);
        assert!(relu_second_moment(3.0) < 1e-3);
    }

    #[test]
    fn zipf_sums_to_k_and_is_capped() {
        for (n, k, s) in [(32, 4, 0.8), (64, 6, 0.8), (8, 2, 0.8), (8, 6, 2.0)] {
            let p = zipf_popularity(n, k, s);
            let sum: f64 = p.iter().sum();
            assert!((sum - k as f64).abs() < 1e-9, "{sum}");
            assert!(p.iter().all(|&x| x <= 1.0 + 1e-12));
        }
        let p = zipf_popularity(32, 4, 0.8);
        assert!((zipf_slope(&p, 1e-9) + 0.8).abs() < 1e-9);
    }

    #[test]
    fn quadrature_is_symmetric() {
        let q = normal_quadrature(16);
        assert!((q[0] + q[15]).abs() < 1e-9);
        assert!(q[0] > q[15]);
    }
}
