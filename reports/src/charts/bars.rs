//! Grouped vertical bars with ±sd whiskers: t/s by storage profile (groups) and quantisation
//! (bars), and the same across machines.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    CHART_H, CategoryAxis, Chart, DrawResult, GRID, HALF_W, INK, LegendItem, ValueAxis, axis_max,
    category_label, color, desc_style, drawn, label_style, swatch,
};
use crate::format;
use crate::record::{Record, TestKind};
use crate::shape::{self, GroupSeries, Grouped};

/// Share of a category slot the bars fill.
const GROUP_FILL: f64 = 0.8;
/// Above this many bars, values are not printed on top of them.
const MAX_VALUE_LABELS: usize = 24;

/// Decode or prefill t/s by storage profile x quantisation, from one machine's records.
pub fn tps_by_storage(id: &str, records: &[&Record], kind: TestKind) -> Chart {
    let (what, test) = match kind {
        TestKind::Decode => ("Decode", "tg"),
        TestKind::Prefill => ("Prefill", "pp"),
    };
    let title = format!("{what} speed by storage profile and quantisation");
    let caption = format!(
        "Tokens per second of the {test} tests, one group per storage profile and one bar per \
         quantisation and memory budget (one colour per quantisation, lighter for smaller \
         budgets); taller is faster and whiskers span ±1 standard deviation over repetitions."
    );
    let data = shape::tps_by_storage(records, kind);
    if data.is_empty() {
        return Chart::missing(id, &title, &caption, &format!("no {test} records"));
    }
    grouped_bars(id, &title, &caption, &data, "tokens / s", Values::Rate)
}

/// Decode t/s across machines: one group per storage profile, one bar per machine x quantisation.
pub fn across_machines(id: &str, records: &[Record]) -> Chart {
    let title = "Decode speed across machines";
    let caption = "Decode tokens per second for each storage profile, one colour per machine and \
                   quantisation, lighter shades for smaller memory budgets; compare the same \
                   colour between groups to see how much each device slows each machine.";
    let machines = shape::by_machine(records);
    if machines.len() < 2 {
        return Chart::missing(id, title, caption, "records come from a single machine");
    }
    let mut merged = Grouped::default();
    let mut hue_offset = 0;
    for m in &machines {
        let g = shape::tps_by_storage(&m.records, TestKind::Decode);
        let name = shape::short_machine(&m.cpu_model);
        for c in &g.categories {
            if !merged.categories.contains(c) {
                merged.categories.push(c.clone());
            }
        }
        let hues = g.series.iter().map(|s| s.hue + 1).max().unwrap_or(0);
        for s in g.series {
            let values = merged
                .categories
                .iter()
                .map(|c| {
                    g.categories
                        .iter()
                        .position(|gc| gc == c)
                        .and_then(|i| s.values.get(i).copied().flatten())
                })
                .collect();
            merged.series.push(shape::GroupSeries {
                name: format!("{name} · {}", s.name),
                values,
                hue: hue_offset + s.hue,
                shade: s.shade,
            });
        }
        hue_offset += hues;
    }
    // Categories added late must extend the earlier series.
    let n = merged.categories.len();
    for s in &mut merged.series {
        s.values.resize(n, None);
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| shape::storage_rank(&merged.categories[i]));
    merged.categories = order
        .iter()
        .map(|&i| merged.categories[i].clone())
        .collect();
    for s in &mut merged.series {
        s.values = order.iter().map(|&i| s.values[i]).collect();
    }
    if merged.is_empty() {
        return Chart::missing(id, title, caption, "no decode records");
    }
    grouped_bars(id, title, caption, &merged, "tokens / s", Values::Rate).wide()
}

/// Most category labels shown on the axis; more categories show every k-th label.
const MAX_CATEGORY_LABELS: usize = 24;

/// How bar values and the value axis are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// Rates such as t/s: three significant digits.
    Rate,
    /// Shares 0..1 as percent.
    Percent,
    /// Whole counts.
    Count,
}

impl Values {
    /// A value printed on a bar.
    pub fn value(self, v: f64) -> String {
        match self {
            Values::Rate => format::num(v),
            Values::Percent => format!("{:.0}%", v * 100.0),
            Values::Count => format!("{}", v.round() as u64),
        }
    }

    /// An axis tick.
    pub fn tick(self, v: f64) -> String {
        match self {
            Values::Rate => format::tick(v),
            Values::Percent => format!("{}%", format::tick(v * 100.0)),
            Values::Count => format!("{}", v.round() as u64),
        }
    }
}

/// Draws `data` as grouped bars with whiskers; values (formatted by `values`) are
/// printed on the bars when there is room. Each group shows only its measured bars, centred.
pub fn grouped_bars(
    id: &str,
    title: &str,
    caption: &str,
    data: &Grouped,
    y_desc: &str,
    values: Values,
) -> Chart {
    let legend: Vec<LegendItem> = data
        .series
        .iter()
        .map(|s| swatch(&s.name, series_color(s)))
        .collect();
    let n_bars = bar_count(data);
    let wide = n_bars > WIDE_ABOVE_BARS && data.series.len() > 1;
    let width = if wide { super::WIDE_W } else { HALF_W };
    let chart = drawn(id, title, caption, (width, CHART_H), legend, |root| {
        draw(root, data, y_desc, values)
    });
    if wide { chart.wide() } else { chart }
}

/// Charts with more bars than this (and several series) span the page.
const WIDE_ABOVE_BARS: usize = 16;
/// Widest bar, px, so a lone bar does not fill the chart.
const MAX_BAR_PX: f64 = 70.0;
/// Smallest bar pitch, px, that still gets a value printed on top.
const MIN_LABEL_PITCH_PX: f64 = 34.0;

/// The colour of a series: its hue, lightened by its shade.
pub(crate) fn series_color(s: &GroupSeries) -> RGBColor {
    lighten(color(s.hue), s.shade)
}

/// Mixes `c` with white: `t` = 0 keeps it, 1 gives white.
pub(crate) fn lighten(c: RGBColor, t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let m = |v: u8| (v as f64 + (255.0 - v as f64) * t).round() as u8;
    RGBColor(m(c.0), m(c.1), m(c.2))
}

fn bar_count(data: &Grouped) -> usize {
    data.series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .filter(|(m, _)| m.is_finite())
        .count()
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    data: &Grouped,
    y_desc: &str,
    values: Values,
) -> DrawResult {
    let n = data.categories.len();
    let ymax = axis_max(
        data.series
            .iter()
            .flat_map(|s| s.values.iter().flatten())
            .map(|(m, sd)| if sd.is_finite() { m + sd } else { *m }),
    );
    let mut chart = ChartBuilder::on(root)
        .margin(14)
        .x_label_area_size(34)
        .y_label_area_size(64)
        .build_cartesian_2d(CategoryAxis { n }, ValueAxis::linear(0.0, ymax))?;
    let cats = data.categories.clone();
    let xfmt = move |v: &f64| category_label(&cats, *v);
    let yfmt = |v: &f64| values.tick(*v);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_labels(n.min(MAX_CATEGORY_LABELS))
        .y_labels(6)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .y_desc(y_desc)
        .label_style(label_style())
        .axis_desc_style(desc_style())
        .axis_style(INK)
        .draw()?;

    // Bars present per category, in series order.
    let present: Vec<Vec<(usize, f64, f64)>> = (0..n)
        .map(|i| {
            data.series
                .iter()
                .enumerate()
                .filter_map(|(j, s)| s.values.get(i).copied().flatten().map(|(m, sd)| (j, m, sd)))
                .filter(|(_, m, _)| m.is_finite())
                .collect()
        })
        .collect();
    let widest = present.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let plot_px = chart.plotting_area().dim_in_pixel().0 as f64;
    let slot_px = plot_px / n.max(1) as f64;
    let bar_w = (GROUP_FILL / widest as f64).min(MAX_BAR_PX / slot_px);
    let pitch_px = slot_px * bar_w;
    let label_values = bar_count(data) <= MAX_VALUE_LABELS && pitch_px >= MIN_LABEL_PITCH_PX;
    let value_style = label_style().pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, bars) in present.iter().enumerate() {
        let start = i as f64 + 0.5 - bars.len() as f64 * bar_w / 2.0;
        for (k, &(j, m, sd)) in bars.iter().enumerate() {
            let c = series_color(&data.series[j]);
            let x0 = start + k as f64 * bar_w;
            let x1 = x0 + bar_w * 0.92;
            let xc = (x0 + x1) / 2.0;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x1, m)],
                c.filled(),
            )))?;
            let mut top = m;
            if sd.is_finite() && sd > 0.0 {
                let (lo, hi) = ((m - sd).max(0.0), m + sd);
                let cap = bar_w * 0.2;
                for seg in [
                    vec![(xc, lo), (xc, hi)],
                    vec![(xc - cap, lo), (xc + cap, lo)],
                    vec![(xc - cap, hi), (xc + cap, hi)],
                ] {
                    chart.draw_series(std::iter::once(PathElement::new(seg, INK)))?;
                }
                top = hi;
            }
            if label_values {
                chart.draw_series(std::iter::once(
                    EmptyElement::at((xc, top))
                        + Text::new(values.value(m), (0, -3), value_style.clone()),
                ))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::tests::rec;

    #[test]
    fn decode_bars_show_storage_labels_and_values() {
        let rs = [
            rec("in-memory", "q4_0", None, "tg64", 12.5),
            rec("nvme-gen4", "q4_0", None, "tg64", 3.25),
            rec("nvme-gen4", "q8_0", None, "tg64", 2.0),
        ];
        let refs: Vec<&Record> = rs.iter().collect();
        let c = tps_by_storage("decode", &refs, TestKind::Decode);
        let svg = c.svg().expect("drawn");
        assert!(
            svg.contains("in-memory") && svg.contains("nvme-gen4"),
            "category labels"
        );
        assert!(
            svg.contains(">12.5") || svg.contains("12.5\n"),
            "value label"
        );
        assert!(svg.contains("tokens / s"));
        let names: Vec<&str> = c.legend.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(names, vec!["q4_0", "q8_0"]);
        assert_eq!(c.legend[1].color, "#f28e2b", "second hue");
    }

    #[test]
    fn prefill_without_records_is_a_note() {
        let rs = [rec("in-memory", "q4_0", None, "tg64", 12.5)];
        let refs: Vec<&Record> = rs.iter().collect();
        let c = tps_by_storage("prefill", &refs, TestKind::Prefill);
        assert!(c.svg().is_none());
        assert!(
            matches!(&c.body, super::super::ChartBody::Missing(m) if m.contains("no pp records"))
        );
    }

    #[test]
    fn nan_values_are_skipped_not_drawn() {
        let rs = [
            rec("in-memory", "q4_0", None, "tg64", f64::NAN),
            rec("emmc", "q4_0", None, "tg64", 1.0),
        ];
        let refs: Vec<&Record> = rs.iter().collect();
        let svg = tps_by_storage("d", &refs, TestKind::Decode)
            .svg()
            .expect("drawn")
            .to_owned();
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn machines_are_compared_when_there_are_two() {
        let a = rec("in-memory", "q4_0", None, "tg64", 12.5);
        let mut b = rec("emmc", "q4_0", None, "tg64", 2.5);
        b.cpu_model = "Other CPU".into();
        let c = across_machines("m", &[a.clone(), b]);
        assert!(c.svg().is_some());
        assert!(c.legend.iter().any(|l| l.label == "Other · q4_0"));
        assert!(across_machines("m", &[a]).svg().is_none());
    }
}
