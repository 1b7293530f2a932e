//! Grouped vertical bars with ±sd whiskers: t/s by storage profile (groups) and quantisation
//! (bars), and the same across machines.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    CHART_H, CategoryAxis, Chart, DrawResult, GRID, HALF_W, INK, LegendItem, axis_max,
    category_label, color, desc_style, drawn, label_style, swatch,
};
use crate::format;
use crate::record::{Record, TestKind};
use crate::shape::{self, Grouped};

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
         quantisation, each at the largest memory budget measured (unlimited when present); \
         taller is faster and whiskers span ±1 standard deviation over repetitions."
    );
    let data = shape::tps_by_storage(records, kind);
    if data.is_empty() {
        return Chart::missing(id, &title, &caption, &format!("no {test} records"));
    }
    grouped_bars(id, &title, &caption, &data, "tokens / s", &format::num)
}

/// Decode t/s across machines: one group per storage profile, one bar per machine x quantisation.
pub fn across_machines(id: &str, records: &[Record]) -> Chart {
    let title = "Decode speed across machines";
    let caption = "Decode tokens per second for each storage profile, one bar per machine and \
                   quantisation at the largest budget measured; compare bars of the same colour \
                   family between groups to see how a device moves each machine.";
    let machines = shape::by_machine(records);
    if machines.len() < 2 {
        return Chart::missing(id, title, caption, "records come from a single machine");
    }
    let mut merged = Grouped::default();
    for m in &machines {
        let g = shape::tps_by_storage(&m.records, TestKind::Decode);
        let name = shape::short_machine(&m.cpu_model);
        for c in &g.categories {
            if !merged.categories.contains(c) {
                merged.categories.push(c.clone());
            }
        }
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
            });
        }
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
    grouped_bars(id, title, caption, &merged, "tokens / s", &format::num).wide()
}

/// Most category labels shown on the axis; more categories show every k-th label.
const MAX_CATEGORY_LABELS: usize = 24;

/// Draws `data` as grouped bars with whiskers; values (formatted by `y_fmt`, like the axis) are
/// printed on the bars when there are few.
pub fn grouped_bars(
    id: &str,
    title: &str,
    caption: &str,
    data: &Grouped,
    y_desc: &str,
    y_fmt: &dyn Fn(f64) -> String,
) -> Chart {
    let legend: Vec<LegendItem> = data
        .series
        .iter()
        .enumerate()
        .map(|(j, s)| swatch(&s.name, color(j)))
        .collect();
    let wide = data.categories.len() * data.series.len().max(1) > 16;
    let width = if wide { super::WIDE_W } else { HALF_W };
    let chart = drawn(id, title, caption, (width, CHART_H), legend, |root| {
        draw(root, data, y_desc, y_fmt)
    });
    if wide { chart.wide() } else { chart }
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    data: &Grouped,
    y_desc: &str,
    y_fmt: &dyn Fn(f64) -> String,
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
        .build_cartesian_2d(CategoryAxis { n }, 0.0..ymax)?;
    let cats = data.categories.clone();
    let xfmt = move |v: &f64| category_label(&cats, *v);
    let yfmt = |v: &f64| y_fmt(*v);
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

    let n_series = data.series.len().max(1);
    let bar_w = GROUP_FILL / n_series as f64;
    let n_bars = data
        .series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .count();
    let value_style = label_style().pos(Pos::new(HPos::Center, VPos::Bottom));
    for (j, s) in data.series.iter().enumerate() {
        let c = color(j);
        for (i, v) in s.values.iter().enumerate() {
            let Some((m, sd)) = v.filter(|(m, _)| m.is_finite()) else {
                continue;
            };
            let x0 = i as f64 + (1.0 - GROUP_FILL) / 2.0 + j as f64 * bar_w;
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
            if n_bars <= MAX_VALUE_LABELS {
                chart.draw_series(std::iter::once(
                    EmptyElement::at((xc, top)) + Text::new(y_fmt(m), (0, -3), value_style.clone()),
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
