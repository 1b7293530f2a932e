//! Number formatting shared by charts and tables: bytes in binary units, rates, shares.
//!
//! Every function accepts NaN and infinities and prints them as `–`, so missing data never turns
//! into `NaN` text in a report.

/// Placeholder for a missing or non-finite value.
pub const MISSING: &str = "–";

/// Bytes in binary units: `512 B`, `1.5 KiB`, `2 GiB`.
pub fn bytes(b: f64) -> String {
    if !b.is_finite() {
        return MISSING.to_owned();
    }
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || (v - v.round()).abs() < 0.05 {
        format!("{:.0} {}", v, UNITS[unit])
    } else if v.abs() < 10.0 {
        format!("{:.2} {}", v, UNITS[unit])
    } else {
        format!("{:.1} {}", v, UNITS[unit])
    }
}

/// A positive quantity with about three significant digits: `0.412`, `12.3`, `1530`.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return MISSING.to_owned();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An axis tick: as few decimals as the value needs (`5`, `2.5`, `0.25`, `1500`).
pub fn tick(v: f64) -> String {
    if !v.is_finite() {
        return MISSING.to_owned();
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// A share 0..1 as percent: `73.4%`.
pub fn pct(share: f64) -> String {
    if !share.is_finite() {
        return MISSING.to_owned();
    }
    format!("{:.1}%", share * 100.0)
}

/// A signed relative change as percent: `+4.2%`, `-12.0%`.
pub fn delta_pct(rel: f64) -> String {
    if !rel.is_finite() {
        return MISSING.to_owned();
    }
    format!("{:+.1}%", rel * 100.0)
}

/// `mean ± sd` for rates; the `± sd` part is left out when sd is not finite.
pub fn mean_sd(mean: f64, sd: f64) -> String {
    if sd.is_finite() && mean.is_finite() {
        format!("{} ± {}", num(mean), num(sd))
    } else {
        num(mean)
    }
}

/// An optional value through `f`, or [`MISSING`].
pub fn opt<T: Copy>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| MISSING.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(2.0 * 1024.0 * 1024.0 * 1024.0), "2 GiB");
        assert_eq!(bytes(1536.0), "1.50 KiB");
        assert_eq!(bytes(f64::NAN), MISSING);
    }

    #[test]
    fn numbers_keep_three_significant_digits() {
        assert_eq!(num(0.41234), "0.412");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1530.2), "1530");
        assert_eq!(num(f64::INFINITY), MISSING);
        assert_eq!(pct(0.734), "73.4%");
        assert_eq!(delta_pct(-0.12), "-12.0%");
        assert_eq!(mean_sd(10.0, f64::NAN), "10.0");
        assert_eq!(mean_sd(10.0, 0.5), "10.0 ± 0.500");
        assert_eq!(tick(5.0), "5");
        assert_eq!(tick(0.6000000000000001), "0.6");
        assert_eq!(tick(-0.0), "0");
    }
}
