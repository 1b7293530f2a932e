//! Horizontal bars, one row per scenario: bytes per token, roofline share, and I/O against
//! compute time per token. Also the shared row drawer used by the delta charts.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    COMPUTE, CategoryAxis, Chart, DrawResult, GRID, HALF_W, INK, IO, LegendItem, STALL, ValueAxis,
    category_label, color, desc_style, drawn, label_style, swatch, text_width,
};
use crate::format;
use crate::record::{Record, TestKind};
use crate::shape::{self, Labeler};

/// Pixel height of one bar lane.
const LANE_PX: u32 = 15;
/// Pixel gap between rows.
const ROW_GAP_PX: u32 = 9;
/// Widest label area, px; longer labels are cut by the browser's SVG clip.
const MAX_LABEL_PX: u32 = 300;

/// One bar: a lane within the row and an extent along the value axis.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HBar {
    /// Lane within the row, 0 on top.
    pub lane: usize,
    /// Start value.
    pub from: f64,
    /// End value.
    pub to: f64,
    /// Fill colour.
    pub color: RGBColor,
}

/// One row: a label, its bars and an optional value text after the bars.
#[derive(Debug, Clone)]
pub(crate) struct HRow {
    /// Category label on the left.
    pub label: String,
    /// Bars of the row.
    pub bars: Vec<HBar>,
    /// Text printed right of the row's bars (left of them when they extend below zero).
    pub note: Option<String>,
}

/// Axis and layout of a horizontal bar chart.
pub(crate) struct HSpec<'a> {
    /// Lanes per row.
    pub lanes: usize,
    /// Value axis.
    pub x: ValueAxis,
    /// Value-axis description.
    pub x_desc: &'a str,
    /// Tick formatter.
    pub x_fmt: &'a dyn Fn(f64) -> String,
    /// Vertical reference lines (e.g. 0 or 100%).
    pub ref_lines: Vec<f64>,
    /// Chart width, px.
    pub width: u32,
}

/// Draws rows of horizontal bars.
pub(crate) fn draw_rows(
    id: &str,
    title: &str,
    caption: &str,
    legend: Vec<LegendItem>,
    rows: &[HRow],
    spec: &HSpec<'_>,
) -> Chart {
    let row_px = LANE_PX * spec.lanes.max(1) as u32 + ROW_GAP_PX;
    let height = (rows.len() as u32 * row_px + 90).max(170);
    let label_px = rows
        .iter()
        .map(|r| text_width(&r.label))
        .max()
        .unwrap_or(0)
        .clamp(40, MAX_LABEL_PX)
        + 14;
    drawn(id, title, caption, (spec.width, height), legend, |root| {
        draw(root, rows, spec, label_px)
    })
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    rows: &[HRow],
    spec: &HSpec<'_>,
    label_px: u32,
) -> DrawResult {
    let n = rows.len();
    // Row 0 is drawn on top: slot n-1-i.
    let labels: Vec<String> = rows.iter().rev().map(|r| r.label.clone()).collect();
    let mut chart = ChartBuilder::on(root)
        .margin(14)
        .margin_right(24)
        .x_label_area_size(44)
        .y_label_area_size(label_px)
        .build_cartesian_2d(spec.x, CategoryAxis { n })?;
    let yfmt = move |v: &f64| category_label(&labels, *v);
    let xfmt = |v: &f64| (spec.x_fmt)(*v);
    chart
        .configure_mesh()
        .disable_y_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .y_labels(n)
        .x_labels(6)
        .y_label_formatter(&yfmt)
        .x_label_formatter(&xfmt)
        .x_desc(spec.x_desc)
        .label_style(label_style())
        .axis_desc_style(desc_style())
        .axis_style(INK)
        .draw()?;
    for &x in &spec.ref_lines {
        if spec.x.contains(x) {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, n as f64)],
                INK.stroke_width(1),
            )))?;
        }
    }
    let lanes = spec.lanes.max(1) as f64;
    // Bars fill 80% of a slot; each lane gets an equal part.
    let lane_h = 0.8 / lanes;
    for (i, row) in rows.iter().enumerate() {
        let slot = (n - 1 - i) as f64;
        let top = slot + 0.9;
        for b in &row.bars {
            if !(b.from.is_finite() && b.to.is_finite()) {
                continue;
            }
            let y1 = top - b.lane as f64 * lane_h;
            let y0 = y1 - lane_h * 0.9;
            let (lo, hi) = (b.from.min(b.to), b.from.max(b.to));
            let (lo, hi) = (lo.max(spec.x.lo), hi.min(spec.x.hi));
            chart.draw_series(std::iter::once(Rectangle::new(
                [(lo, y0), (hi, y1)],
                b.color.filled(),
            )))?;
        }
        if let Some(note) = &row.note {
            let ends = row
                .bars
                .iter()
                .flat_map(|b| [b.from, b.to])
                .filter(|v| v.is_finite());
            let right = ends.clone().fold(0.0_f64, f64::max);
            let left = ends.fold(0.0_f64, f64::min);
            let (x, dx, h) = if right <= 0.0 && left < 0.0 {
                (left.max(spec.x.lo), -4, HPos::Right)
            } else {
                (right.min(spec.x.hi), 4, HPos::Left)
            };
            let style = label_style().pos(Pos::new(h, VPos::Center));
            chart.draw_series(std::iter::once(
                EmptyElement::at((x, slot + 0.5)) + Text::new(note.clone(), (dx, 0), style),
            ))?;
        }
    }
    Ok(())
}

/// Decode records of one machine that have a value for `f`, in display order with labels.
fn decode_rows<'a>(
    records: &[&'a Record],
    f: impl Fn(&Record) -> bool,
) -> Vec<(String, &'a Record)> {
    let rs: Vec<&Record> = shape::ordered(records, TestKind::Decode)
        .into_iter()
        .filter(|r| f(r))
        .collect();
    let labeler = Labeler::new(rs.iter().copied());
    rs.into_iter().map(|r| (labeler.scenario(r), r)).collect()
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

/// Bytes read from storage and weight bytes touched per decoded token, per scenario.
pub fn bytes_per_token(id: &str, records: &[&Record]) -> Chart {
    let title = "Bytes per decoded token";
    let caption = "For each decode scenario, the weight bytes the computation touched per token \
                   (blue) and the bytes actually read from storage per token (orange); an orange \
                   bar much shorter than the blue one means the expert cache served most weights.";
    let rows = decode_rows(records, |r| {
        finite(r.bytes_read_per_token).is_some() || finite(r.weight_bytes_per_token).is_some()
    });
    if rows.is_empty() {
        return Chart::missing(
            id,
            title,
            caption,
            "no decode record carries bytes per token",
        );
    }
    let max = super::axis_max(
        rows.iter()
            .flat_map(|(_, r)| [r.bytes_read_per_token, r.weight_bytes_per_token])
            .flatten(),
    ) * 1.12;
    let hrows: Vec<HRow> = rows
        .iter()
        .map(|(label, r)| {
            let mut bars = Vec::new();
            if let Some(w) = finite(r.weight_bytes_per_token) {
                bars.push(HBar {
                    lane: 0,
                    from: 0.0,
                    to: w,
                    color: COMPUTE,
                });
            }
            if let Some(b) = finite(r.bytes_read_per_token) {
                bars.push(HBar {
                    lane: 1,
                    from: 0.0,
                    to: b,
                    color: IO,
                });
            }
            let note = finite(r.bytes_read_per_token).map(|b| format!("read {}", format::bytes(b)));
            HRow {
                label: label.clone(),
                bars,
                note,
            }
        })
        .collect();
    let fmt = |v: f64| format::bytes(v);
    let spec = HSpec {
        lanes: 2,
        x: ValueAxis::bytes(0.0, max),
        x_desc: "bytes per token",
        x_fmt: &fmt,
        ref_lines: vec![],
        width: HALF_W,
    };
    let legend = vec![
        swatch("weights touched", COMPUTE),
        swatch("read from storage", IO),
    ];
    draw_rows(id, title, caption, legend, &hrows, &spec)
}

/// Decode speed as a share of the memory-bandwidth roofline measured in the same run.
pub fn roofline_share(id: &str, records: &[&Record]) -> Chart {
    let title = "Share of the memory-bandwidth roofline";
    let caption = "Measured decode tokens per second divided by the memory-bandwidth bound \
                   measured in the same run (weights touched per token over copy bandwidth); \
                   100% means decode runs as fast as memory can feed it, so lower bars have more \
                   headroom.";
    let rows = decode_rows(records, |r| {
        r.mean_tps.is_finite() && finite(r.roofline_tps).is_some_and(|x| x > 0.0)
    });
    if rows.is_empty() {
        return Chart::missing(id, title, caption, "no decode record carries a roofline");
    }
    let shares: Vec<f64> = rows
        .iter()
        .map(|(_, r)| r.mean_tps / r.roofline_tps.unwrap_or(f64::NAN))
        .collect();
    let max = shares
        .iter()
        .copied()
        .filter(|s| s.is_finite())
        .fold(1.0_f64, f64::max)
        * 1.25;
    let hrows: Vec<HRow> = rows
        .iter()
        .zip(&shares)
        .map(|((label, r), &s)| HRow {
            label: label.clone(),
            bars: vec![HBar {
                lane: 0,
                from: 0.0,
                to: s,
                color: color(2),
            }],
            note: Some(format!(
                "{} ({} of {} t/s)",
                format::pct(s),
                format::num(r.mean_tps),
                format::opt(r.roofline_tps, format::num)
            )),
        })
        .collect();
    let fmt = |v: f64| format!("{:.0}%", v * 100.0);
    let spec = HSpec {
        lanes: 1,
        x: ValueAxis::linear(0.0, max),
        x_desc: "measured / roofline t/s",
        x_fmt: &fmt,
        ref_lines: vec![1.0],
        width: HALF_W,
    };
    draw_rows(
        id,
        title,
        caption,
        vec![swatch("share of roofline", color(2))],
        &hrows,
        &spec,
    )
}

/// I/O against compute time per decoded token, per scenario.
pub fn io_vs_compute(id: &str, records: &[&Record]) -> Chart {
    let title = "I/O and compute time per token";
    let caption = "Per decode scenario, the top bar stacks compute time (blue) and the I/O time \
                   left exposed on the critical path (red), which together approximate the time \
                   per token; the thin bar below is all I/O time (orange), so the part of it \
                   without red was hidden behind compute.";
    let rows = decode_rows(records, |r| {
        finite(r.compute_ms_per_token).is_some() || finite(r.io_ms_per_token).is_some()
    });
    if rows.is_empty() {
        return Chart::missing(
            id,
            title,
            caption,
            "no decode record carries I/O or compute time",
        );
    }
    let mut max: f64 = 0.0;
    let hrows: Vec<HRow> = rows
        .iter()
        .map(|(label, r)| {
            let c = finite(r.compute_ms_per_token).unwrap_or(0.0);
            let io = finite(r.io_ms_per_token);
            let exposed = finite(r.exposed_io_ms_per_token)
                .or_else(|| {
                    io.zip(finite(r.overlap_ratio))
                        .map(|(io, o)| io * (1.0 - o.clamp(0.0, 1.0)))
                })
                .or(io)
                .unwrap_or(0.0);
            let mut bars = vec![
                HBar {
                    lane: 0,
                    from: 0.0,
                    to: c,
                    color: COMPUTE,
                },
                HBar {
                    lane: 0,
                    from: c,
                    to: c + exposed,
                    color: STALL,
                },
            ];
            if let Some(io) = io {
                bars.push(HBar {
                    lane: 1,
                    from: 0.0,
                    to: io,
                    color: IO,
                });
            }
            max = max.max(c + exposed).max(io.unwrap_or(0.0));
            HRow {
                label: label.clone(),
                bars,
                note: Some(format!("{} ms", format::num(c + exposed))),
            }
        })
        .collect();
    let fmt = |v: f64| format!("{} ms", format::tick(v));
    let spec = HSpec {
        lanes: 2,
        x: ValueAxis::linear(0.0, super::axis_max([max]) * 1.15),
        x_desc: "ms per token",
        x_fmt: &fmt,
        ref_lines: vec![],
        width: super::WIDE_W,
    };
    let legend = vec![
        swatch("compute", COMPUTE),
        swatch("exposed I/O (stall)", STALL),
        swatch("all I/O", IO),
    ];
    draw_rows(id, title, caption, legend, &hrows, &spec).wide()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::tests::rec;

    const GIB: u64 = 1 << 30;

    fn sample() -> Vec<Record> {
        let mut a = rec("nvme-gen4", "q4_0", Some(GIB), "tg64", 4.0);
        a.bytes_read_per_token = Some(80e6);
        a.weight_bytes_per_token = Some(300e6);
        a.roofline_tps = Some(10.0);
        a.compute_ms_per_token = Some(120.0);
        a.io_ms_per_token = Some(200.0);
        a.exposed_io_ms_per_token = Some(130.0);
        let mut b = rec("in-memory", "q4_0", None, "tg64", 9.0);
        b.weight_bytes_per_token = Some(300e6);
        b.roofline_tps = Some(f64::NAN);
        b.compute_ms_per_token = Some(110.0);
        vec![a, b, rec("emmc", "q4_0", None, "pp128", 50.0)]
    }

    #[test]
    fn bytes_chart_labels_rows_and_values() {
        let rs = sample();
        let refs: Vec<&Record> = rs.iter().collect();
        let c = bytes_per_token("bytes", &refs);
        let svg = c.svg().expect("drawn");
        assert!(svg.contains("nvme-gen4 · q4_0 · 1 GiB"), "row label");
        assert!(svg.contains("in-memory · q4_0 · unlimited"));
        assert!(svg.contains("read 76.3 MiB"), "value note");
        assert!(!svg.contains("emmc"), "prefill rows are not decode rows");
    }

    #[test]
    fn roofline_share_skips_nan_rooflines() {
        let rs = sample();
        let refs: Vec<&Record> = rs.iter().collect();
        let c = roofline_share("roof", &refs);
        let svg = c.svg().expect("drawn");
        assert!(svg.contains("40.0% (4.00 of 10.0 t/s)"));
        assert!(!svg.contains("in-memory"), "NaN roofline row left out");
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn io_compute_stacks_exposed_io_on_compute() {
        let rs = sample();
        let refs: Vec<&Record> = rs.iter().collect();
        let c = io_vs_compute("io", &refs);
        assert!(c.wide);
        let svg = c.svg().expect("drawn");
        assert!(svg.contains("250 ms"), "120 compute + 130 exposed");
        assert!(svg.contains("110 ms"));
        assert!(svg.contains("ms per token"));
    }

    #[test]
    fn empty_inputs_give_notes() {
        for c in [
            bytes_per_token("a", &[]),
            roofline_share("b", &[]),
            io_vs_compute("c", &[]),
        ] {
            assert!(c.svg().is_none(), "{}", c.title);
        }
    }
}
