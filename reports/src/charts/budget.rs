//! Tokens per second against memory budget: one line per storage profile x quantisation.

use plotters::prelude::*;

use super::{
    CHART_H, CategoryAxis, Chart, DrawResult, GRID, INK, LegendItem, ValueAxis, WIDE_W,
    category_label, color, css, desc_style, drawn, label_style,
};
use crate::format;
use crate::record::{Record, TestKind};
use crate::shape::{self, BudgetLines};

/// Dash patterns `(dash, gap)` px by variant (quantisation, peer, ...); `(0, 0)` is solid.
const DASHES: [(u32, u32); 4] = [(0, 0), (8, 4), (3, 3), (14, 4)];

/// Colour (by storage profile) and dash (by variant) of every line.
fn styles(data: &BudgetLines) -> Vec<(RGBColor, (u32, u32))> {
    let mut storages: Vec<&str> = Vec::new();
    let mut variants: Vec<&str> = Vec::new();
    data.lines
        .iter()
        .map(|l| {
            let s = storages
                .iter()
                .position(|s| *s == l.storage)
                .unwrap_or_else(|| {
                    storages.push(&l.storage);
                    storages.len() - 1
                });
            let v = variants
                .iter()
                .position(|v| *v == l.variant)
                .unwrap_or_else(|| {
                    variants.push(&l.variant);
                    variants.len() - 1
                });
            (color(s), DASHES[v % DASHES.len()])
        })
        .collect()
}

/// Decode t/s against memory budget for one machine's records.
pub fn tps_vs_budget(id: &str, records: &[&Record]) -> Chart {
    let title = "Decode speed against memory budget";
    let caption = "Decode tokens per second at each memory budget (unlimited on the right), one \
                   colour per storage profile and one line style per quantisation; a line that \
                   falls steeply to the left means that device cannot stream the experts that no \
                   longer fit in memory fast enough.";
    let data = shape::tps_vs_budget(records, TestKind::Decode);
    if data.budgets.len() < 2 {
        let why = if data.budgets.is_empty() {
            "no decode records"
        } else {
            "only one memory budget was measured"
        };
        return Chart::missing(id, title, caption, why);
    }
    let styles = styles(&data);
    let legend: Vec<LegendItem> = data
        .lines
        .iter()
        .zip(&styles)
        .map(|(l, (c, dash))| LegendItem {
            label: l.name.clone(),
            color: css(*c),
            dashed: dash.0 > 0,
        })
        .collect();
    drawn(id, title, caption, (WIDE_W, CHART_H), legend, |root| {
        draw(root, &data, &styles)
    })
    .wide()
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    data: &BudgetLines,
    styles: &[(RGBColor, (u32, u32))],
) -> DrawResult {
    let labels = data.labels();
    let n = labels.len();
    let y = ValueAxis::fit(
        data.lines
            .iter()
            .flat_map(|l| l.tps.iter().flatten().copied()),
    );
    let mut chart = ChartBuilder::on(root)
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(CategoryAxis { n }, y)?;
    let xfmt = move |v: &f64| category_label(&labels, *v);
    let yfmt = |v: &f64| format::tick(*v);
    let y_desc = if y.log {
        "tokens / s (log scale)"
    } else {
        "tokens / s"
    };
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_labels(n)
        .y_labels(8)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .x_desc("memory budget")
        .y_desc(y_desc)
        .label_style(label_style())
        .axis_desc_style(desc_style())
        .axis_style(INK)
        .draw()?;
    for (line, &(c, dash)) in data.lines.iter().zip(styles) {
        let style = c.stroke_width(2);
        // Gaps (budgets not measured) split the line into runs.
        let mut run: Vec<(f64, f64)> = Vec::new();
        let mut runs = Vec::new();
        for (k, v) in line.tps.iter().enumerate() {
            match v {
                Some(v) if !y.log || *v > 0.0 => run.push((k as f64 + 0.5, *v)),
                _ => runs.push(std::mem::take(&mut run)),
            }
        }
        runs.push(run);
        for run in runs.iter().filter(|r| !r.is_empty()) {
            if dash.0 > 0 {
                chart.draw_series(DashedLineSeries::new(
                    run.iter().copied(),
                    dash.0,
                    dash.1,
                    style,
                ))?;
            } else {
                chart.draw_series(LineSeries::new(run.iter().copied(), style))?;
            }
            chart.draw_series(run.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::tests::rec;

    const GIB: u64 = 1 << 30;

    #[test]
    fn budget_chart_has_budget_ticks_and_a_line_per_storage() {
        let rs = [
            rec("nvme-gen4", "q4_0", None, "tg64", 10.0),
            rec("nvme-gen4", "q4_0", Some(GIB), "tg64", 0.3),
            rec("emmc", "q4_0", Some(GIB), "tg64", 0.1),
            rec("emmc", "q4_0", Some(2 * GIB), "tg64", f64::NAN),
        ];
        let refs: Vec<&Record> = rs.iter().collect();
        let c = tps_vs_budget("budget", &refs);
        let svg = c.svg().expect("drawn");
        for label in ["1 GiB", "2 GiB", "unlimited", "memory budget", "log scale"] {
            assert!(svg.contains(label), "{label}");
        }
        assert!(!svg.contains("NaN"));
        assert_eq!(c.legend.len(), 2);
        assert!(c.legend[0].label.starts_with("nvme-gen4"));
    }

    #[test]
    fn a_single_budget_is_a_note() {
        let rs = [rec("nvme-gen4", "q4_0", None, "tg64", 10.0)];
        let refs: Vec<&Record> = rs.iter().collect();
        let c = tps_vs_budget("budget", &refs);
        assert!(
            matches!(c.body, super::super::ChartBody::Missing(ref m) if m.contains("one memory budget"))
        );
    }
}
