//! Histogram of per-token decode latency with p50, p90 and p99 marked.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    CHART_H, Chart, DrawResult, GRID, HALF_W, INK, ValueAxis, color, desc_style, drawn,
    label_style, swatch,
};
use crate::format;
use crate::shape;

/// Fewest and most histogram bins.
const BINS: (usize, usize) = (10, 60);
/// Percentiles marked on the chart.
const MARKS: [f64; 3] = [50.0, 90.0, 99.0];

/// The latency histogram of a profile.
pub fn latency(id: &str, latency_ms: &[f64]) -> Chart {
    let title = "Per-token latency";
    let sorted = shape::sorted_finite(latency_ms);
    let caption = format!(
        "Distribution of the time between consecutive decoded tokens{}, with the median (p50), \
         p90 and p99 marked; a long right tail means occasional stalls (usually expert reads) \
         that the mean t/s hides.",
        if sorted.is_empty() {
            String::new()
        } else {
            format!(" over {} tokens", sorted.len())
        }
    );
    if sorted.is_empty() {
        return Chart::missing(id, title, &caption, "no per-token latencies in the profile");
    }
    drawn(
        id,
        title,
        &caption,
        (HALF_W, CHART_H),
        vec![swatch("tokens", color(0))],
        |root| draw(root, &sorted),
    )
}

/// Bin start, bin width and counts of ascending `sorted` values. The width follows the
/// Freedman–Diaconis rule (2 IQR / n^(1/3)), so a long tail does not squash the bulk into a few
/// bins, with the bin count kept within [`BINS`].
pub(crate) fn bins(sorted: &[f64]) -> (f64, f64, Vec<u64>) {
    let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, hi + 0.5)
    };
    let iqr = shape::percentile(sorted, 75.0) - shape::percentile(sorted, 25.0);
    let fd = 2.0 * iqr / (sorted.len() as f64).cbrt();
    let n = if fd > 0.0 {
        ((hi - lo) / fd).ceil() as usize
    } else {
        BINS.0
    };
    let n = n.clamp(BINS.0, BINS.1);
    let w = (hi - lo) / n as f64;
    let mut counts = vec![0u64; n];
    for v in sorted {
        let i = (((v - lo) / w) as usize).min(n - 1);
        counts[i] += 1;
    }
    (lo, w, counts)
}

fn draw(root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>, sorted: &[f64]) -> DrawResult {
    let (lo, w, counts) = bins(sorted);
    let hi = lo + w * counts.len() as f64;
    let cmax = counts.iter().copied().max().unwrap_or(1) as f64;
    let x = ValueAxis::linear(lo - w * 0.5, hi + w * 0.5);
    let y = ValueAxis::linear(0.0, cmax * 1.35);
    let mut chart = ChartBuilder::on(root)
        .margin(14)
        .margin_right(24)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    let xfmt = |v: &f64| format::tick(*v);
    let yfmt = |v: &f64| format!("{}", v.round() as u64);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .x_desc("ms per token")
        .y_desc("tokens")
        .label_style(label_style())
        .axis_desc_style(desc_style())
        .axis_style(INK)
        .draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(i, &c)| {
        let x0 = lo + w * i as f64;
        Rectangle::new(
            [(x0 + w * 0.04, 0.0), (x0 + w * 0.96, c as f64)],
            color(0).filled(),
        )
    }))?;
    let style = label_style().pos(Pos::new(HPos::Left, VPos::Center));
    for (k, p) in MARKS.iter().enumerate() {
        let v = shape::percentile(sorted, *p);
        let top = cmax * (1.3 - 0.09 * k as f64);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(v, 0.0), (v, top)],
            INK.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(
            EmptyElement::at((v, top))
                + Text::new(
                    format!("p{p:.0} {} ms", format::num(v)),
                    (4, 0),
                    style.clone(),
                ),
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_marks_percentiles() {
        let mut v: Vec<f64> = (0..200).map(|i| 20.0 + (i % 10) as f64).collect();
        v.extend([95.0, 95.0, 95.0, f64::NAN]);
        let c = latency("lat", &v);
        let svg = c.svg().expect("drawn");
        assert!(svg.contains("p50 25.0 ms"), "median");
        assert!(svg.contains("p90 29.0 ms"));
        assert!(svg.contains("p99 95.0 ms"), "the tail");
        assert!(c.caption.contains("203 tokens"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn bins_cover_every_value_and_constant_input() {
        let (_, _, counts) = bins(&[1.0, 2.0, 3.0]);
        assert_eq!(counts.iter().sum::<u64>(), 3);
        let (lo, w, counts) = bins(&[5.0; 4]);
        assert!(w > 0.0 && lo < 5.0);
        assert_eq!(counts.iter().sum::<u64>(), 4);
        assert!(latency("lat", &[f64::NAN]).svg().is_none());
    }
}
