//! Custom plotters axes: categories with ticks at slot centres, and a linear or logarithmic value
//! axis with "nice" 1-2-5 ticks, so every chart shares one monomorphic coordinate type.

use std::ops::Range;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};

/// A categorical axis: `n` slots of width 1 over `0..n`, with key points at the slot centres,
/// so bars can be placed at fractional positions and labels land in the middle of each group.
#[derive(Debug, Clone)]
pub(crate) struct CategoryAxis {
    /// Number of categories.
    pub n: usize,
}

impl CategoryAxis {
    /// The category whose slot contains `v` (the tick formatter's inverse).
    pub fn index(v: f64) -> Option<usize> {
        if v.is_finite() && v >= 0.0 {
            Some(v.floor() as usize)
        } else {
            None
        }
    }
}

impl Ranged for CategoryAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let n = self.n.max(1) as f64;
        let frac = v / n;
        (limit.0 as f64 + frac * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let max = hint.max_num_points().max(1);
        let step = self.n.div_ceil(max).max(1);
        (0..self.n).step_by(step).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.n.max(1) as f64
    }
}

/// Label of the category at tick `v`, or empty.
pub(crate) fn category_label(labels: &[String], v: f64) -> String {
    CategoryAxis::index(v)
        .and_then(|i| labels.get(i))
        .cloned()
        .unwrap_or_default()
}

/// A value axis over `lo..hi`, linear or base-10 logarithmic, with ticks at 1-2-5 steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ValueAxis {
    /// Lower end (positive when `log`).
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// Logarithmic scale.
    pub log: bool,
    /// Linear ticks are nice multiples of this unit (1, or 1024^k for bytes).
    pub unit: f64,
}

/// Ratio between the largest and smallest value above which [`ValueAxis::fit`] goes logarithmic.
pub(crate) const LOG_RATIO: f64 = 50.0;

impl ValueAxis {
    /// A linear axis.
    pub fn linear(lo: f64, hi: f64) -> Self {
        let (lo, hi) = sane(lo, hi);
        ValueAxis {
            lo,
            hi,
            log: false,
            unit: 1.0,
        }
    }

    /// A linear axis of byte counts: ticks at nice multiples of B, KiB, MiB or GiB.
    pub fn bytes(lo: f64, hi: f64) -> Self {
        let (lo, hi) = sane(lo, hi);
        let mut unit = 1.0;
        while hi / unit >= 1024.0 && unit < 1024f64.powi(4) {
            unit *= 1024.0;
        }
        ValueAxis {
            lo,
            hi,
            log: false,
            unit,
        }
    }

    /// True when `v` lies on the axis.
    pub fn contains(&self, v: f64) -> bool {
        v >= self.lo && v <= self.hi
    }

    /// An axis fitted to positive `values`: logarithmic when they span more than [`LOG_RATIO`],
    /// else linear from zero; with a little headroom.
    pub fn fit(values: impl IntoIterator<Item = f64>) -> Self {
        let v: Vec<f64> = values
            .into_iter()
            .filter(|x| x.is_finite() && *x > 0.0)
            .collect();
        let max = v.iter().copied().fold(f64::MIN, f64::max);
        let min = v.iter().copied().fold(f64::MAX, f64::min);
        if v.is_empty() {
            return ValueAxis::linear(0.0, 1.0);
        }
        if max / min > LOG_RATIO {
            let lo = 10f64.powf(min.log10().floor());
            let hi = 10f64.powf((max * 1.3).log10().ceil().max(lo.log10() + 1.0));
            ValueAxis {
                lo,
                hi,
                log: true,
                unit: 1.0,
            }
        } else {
            ValueAxis::linear(0.0, max * 1.12)
        }
    }

    fn unit_position(&self, v: f64) -> f64 {
        if self.log {
            let v = v.max(self.lo * 1e-3);
            (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }
}

fn sane(lo: f64, hi: f64) -> (f64, f64) {
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let hi = if hi.is_finite() && hi > lo {
        hi
    } else {
        lo + 1.0
    };
    (lo, hi)
}

/// Ticks at multiples of a 1-2-5 step, at most `max` of them.
pub(crate) fn nice_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let max = max.max(2);
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return vec![];
    }
    let raw = span / max as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= max as f64)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Decade ticks (1, 2, 5 per decade when room allows) between `lo` and `hi`.
pub(crate) fn log_ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    for mults in [&[1.0, 2.0, 5.0][..], &[1.0, 3.0], &[1.0]] {
        let t: Vec<f64> = (d0..=d1)
            .flat_map(|d| mults.iter().map(move |m| m * 10f64.powi(d)))
            .filter(|v| *v >= lo * 0.999 && *v <= hi * 1.001)
            .collect();
        if t.len() <= max.max(2) {
            return t;
        }
    }
    let decades: Vec<f64> = (d0..=d1).map(|d| 10f64.powi(d)).collect();
    let step = decades.len().div_ceil(max.max(2));
    decades.into_iter().step_by(step.max(1)).collect()
}

impl Ranged for ValueAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let u = self.unit_position(*v);
        let u = if u.is_finite() {
            u.clamp(-0.5, 1.5)
        } else {
            0.0
        };
        (limit.0 as f64 + u * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let max = hint.max_num_points();
        if self.log {
            log_ticks(self.lo, self.hi, max)
        } else {
            nice_ticks(self.lo / self.unit, self.hi / self.unit, max)
                .into_iter()
                .map(|t| t * self.unit)
                .collect()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_axis_puts_ticks_at_slot_centres() {
        let axis = CategoryAxis { n: 3 };
        assert_eq!(axis.key_points(10usize), vec![0.5, 1.5, 2.5]);
        assert_eq!(axis.map(&1.5, (0, 300)), 150);
        assert_eq!(axis.key_points(2usize), vec![0.5, 2.5]);
        assert_eq!(category_label(&["a".into(), "b".into()], 1.5), "b");
        assert_eq!(category_label(&["a".into()], f64::NAN), "");
    }

    #[test]
    fn nice_ticks_use_round_steps() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 6),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(
            nice_ticks(0.0, 0.9, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8]
        );
        assert!(nice_ticks(1.0, 1.0, 5).is_empty());
    }

    #[test]
    fn log_ticks_thin_out_over_many_decades() {
        assert_eq!(
            log_ticks(1.0, 100.0, 10),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(
            log_ticks(1.0, 1e6, 8),
            vec![1.0, 10.0, 100.0, 1000.0, 1e4, 1e5, 1e6]
        );
    }

    #[test]
    fn byte_axes_tick_in_binary_units() {
        let mib = 1024.0 * 1024.0;
        let axis = ValueAxis::bytes(0.0, 700.0 * mib);
        assert_eq!(axis.unit, mib);
        assert_eq!(
            axis.key_points(5usize),
            vec![0.0, 200.0 * mib, 400.0 * mib, 600.0 * mib]
        );
    }

    #[test]
    fn fit_goes_log_over_wide_ranges() {
        let lin = ValueAxis::fit([1.0, 10.0]);
        assert!(!lin.log && lin.lo == 0.0 && lin.hi > 10.0);
        let log = ValueAxis::fit([0.4, 40.0, f64::NAN]);
        assert!(log.log && log.lo == 0.1 && log.hi == 100.0);
        assert_eq!(log.map(&1.0, (0, 300)), 100);
        let empty = ValueAxis::fit([]);
        assert_eq!((empty.lo, empty.hi), (0.0, 1.0));
    }
}
