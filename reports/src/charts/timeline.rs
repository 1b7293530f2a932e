//! A Gantt chart of a profiled excerpt: one row per thread, one bar per span, coloured by area
//! (compute, I/O, KV cache), nested spans drawn thinner on top of their parents.

use plotters::prelude::*;

use super::{
    COMPUTE, CategoryAxis, Chart, DrawResult, GRID, INK, IO, KV, OTHER, ValueAxis, WIDE_W,
    category_label, desc_style, drawn, label_style, swatch, text_width,
};
use crate::format;
use crate::profile::Span;

/// Spans drawn at most; later ones are cut (the caption says so).
pub const MAX_SPANS: usize = 5000;
/// Row height per thread, px.
const ROW_PX: u32 = 30;
/// Each nesting level shrinks a bar by this share of the row.
const DEPTH_SHRINK: f64 = 0.22;

/// Which area a span belongs to, from its name prefix.
fn area(name: &str) -> (&'static str, RGBColor) {
    if name.starts_with("io.") || name == "io" {
        ("I/O", IO)
    } else if name.starts_with("compute.") || name == "compute" {
        ("compute", COMPUTE)
    } else if name.starts_with("kv.") || name == "kv" {
        ("KV cache", KV)
    } else {
        ("other", OTHER)
    }
}

/// The timeline chart of `spans`.
pub fn timeline(id: &str, spans: &[Span]) -> Chart {
    let title = "Timeline excerpt";
    let valid: Vec<&Span> = spans
        .iter()
        .filter(|s| s.start_us.is_finite() && s.dur_us.is_finite() && s.dur_us >= 0.0)
        .collect();
    let cut = valid.len() > MAX_SPANS;
    let mut valid = valid;
    valid.sort_by(|a, b| a.start_us.total_cmp(&b.start_us));
    valid.truncate(MAX_SPANS);
    let t0 = valid
        .iter()
        .map(|s| s.start_us)
        .fold(f64::INFINITY, f64::min);
    let t1 = valid
        .iter()
        .map(|s| s.start_us + s.dur_us)
        .fold(f64::NEG_INFINITY, f64::max);
    let span_ms = (t1 - t0) / 1000.0;
    let caption = format!(
        "{} of a profiled decode{}: one row per thread, each bar a span (blue compute, orange I/O, \
         green KV cache, nested spans thinner); orange on I/O threads under blue on the main \
         thread is I/O hidden behind compute, and gaps on the main thread are stalls.",
        if span_ms.is_finite() {
            format!("{} ms", format::num(span_ms))
        } else {
            "An excerpt".into()
        },
        if cut {
            format!(" (first {MAX_SPANS} spans)")
        } else {
            String::new()
        },
    );
    if valid.is_empty() {
        return Chart::missing(id, title, &caption, "no timeline spans in the profile");
    }
    let mut threads: Vec<String> = Vec::new();
    for s in &valid {
        if !threads.contains(&s.thread) {
            threads.push(s.thread.clone());
        }
    }
    // Main thread(s) first, then the rest in first-seen order.
    threads.sort_by_key(|t| !t.contains("main"));
    let mut legend = Vec::new();
    for s in &valid {
        let (name, c) = area(&s.name);
        if !legend.iter().any(|l: &super::LegendItem| l.label == name) {
            legend.push(swatch(name, c));
        }
    }
    let height = threads.len() as u32 * ROW_PX + 90;
    let label_px = threads
        .iter()
        .map(|t| text_width(t))
        .max()
        .unwrap_or(0)
        .clamp(40, 200)
        + 14;
    let chart = drawn(id, title, &caption, (WIDE_W, height), legend, |root| {
        draw(root, &valid, &threads, t0, t1, label_px)
    });
    chart.wide()
}

/// Nesting depth of each span within its thread (0 = top level); `spans` sorted by start.
fn depths(spans: &[&Span]) -> Vec<usize> {
    let mut open: std::collections::HashMap<&str, Vec<f64>> = std::collections::HashMap::new();
    spans
        .iter()
        .map(|s| {
            let stack = open.entry(s.thread.as_str()).or_default();
            while stack.last().is_some_and(|&end| end <= s.start_us) {
                stack.pop();
            }
            let d = stack.len();
            stack.push(s.start_us + s.dur_us);
            d
        })
        .collect()
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    spans: &[&Span],
    threads: &[String],
    t0: f64,
    t1: f64,
    label_px: u32,
) -> DrawResult {
    let n = threads.len();
    let labels: Vec<String> = threads.iter().rev().cloned().collect();
    let x = ValueAxis::linear(0.0, ((t1 - t0) / 1000.0).max(1e-3));
    let mut chart = ChartBuilder::on(root)
        .margin(14)
        .margin_right(24)
        .x_label_area_size(44)
        .y_label_area_size(label_px)
        .build_cartesian_2d(x, CategoryAxis { n })?;
    let yfmt = move |v: &f64| category_label(&labels, *v);
    let xfmt = |v: &f64| format!("{} ms", format::tick(*v));
    chart
        .configure_mesh()
        .disable_y_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .y_labels(n)
        .x_labels(12)
        .y_label_formatter(&yfmt)
        .x_label_formatter(&xfmt)
        .x_desc("time from the start of the excerpt")
        .label_style(label_style())
        .axis_desc_style(desc_style())
        .axis_style(INK)
        .draw()?;
    let depth = depths(spans);
    let rects = spans.iter().zip(depth).filter_map(|(s, d)| {
        let row = threads.iter().position(|t| *t == s.thread)?;
        let slot = (n - 1 - row) as f64;
        let shrink = (d as f64 * DEPTH_SHRINK).min(0.6);
        let (y0, y1) = (slot + 0.1 + shrink * 0.4, slot + 0.9 - shrink * 0.4);
        let xa = (s.start_us - t0) / 1000.0;
        let xb = xa + s.dur_us / 1000.0;
        Some(Rectangle::new(
            [(xa, y0), (xb, y1)],
            area(&s.name).1.filled(),
        ))
    });
    chart.draw_series(rects)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(thread: &str, name: &str, start_us: f64, dur_us: f64) -> Span {
        Span {
            thread: thread.into(),
            name: name.into(),
            start_us,
            dur_us,
        }
    }

    #[test]
    fn timeline_has_a_row_per_thread_and_area_legend() {
        let spans = vec![
            span("io-0", "io.read_expert", 100.0, 900.0),
            span("main", "compute.layer", 0.0, 2000.0),
            span("main", "compute.moe", 500.0, 800.0),
            span("main", "kv.append", 2000.0, 100.0),
            span("main", "bad", f64::NAN, 1.0),
        ];
        let c = timeline("tl", &spans);
        let svg = c.svg().expect("drawn");
        assert!(
            svg.contains(">main") || svg.contains("main\n"),
            "thread label"
        );
        assert!(svg.contains("io-0"));
        let legend: Vec<&str> = c.legend.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(legend, vec!["compute", "I/O", "KV cache"]);
        assert!(c.caption.starts_with("2.10 ms"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn nested_spans_get_deeper_levels() {
        let a = span("main", "compute.layer", 0.0, 10.0);
        let b = span("main", "compute.moe", 2.0, 3.0);
        let c = span("main", "compute.attn", 6.0, 1.0);
        let d = span("main", "kv.append", 10.0, 1.0);
        assert_eq!(depths(&[&a, &b, &c, &d]), vec![0, 1, 1, 0]);
    }

    #[test]
    fn no_spans_is_a_note() {
        assert!(timeline("tl", &[]).svg().is_none());
    }
}
