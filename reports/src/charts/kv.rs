//! KV cache memory against context length: the hybrid attention layout against every layer
//! keeping the whole context.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    CHART_H, Chart, DrawResult, GRID, HALF_W, INK, LegendItem, ValueAxis, color, css, desc_style,
    drawn, label_style,
};
use crate::format;
use crate::profile::KvPoint;

/// The KV-memory chart.
pub fn kv_memory(id: &str, points: &[KvPoint]) -> Chart {
    let title = "KV cache memory against context";
    let caption = "KV cache bytes as the context grows, for the model's hybrid layout \
                   (sliding-window layers keep only their window) and for all layers global; the \
                   vertical gap is the memory the hybrid layout saves, and it widens with context.";
    let mut pts: Vec<KvPoint> = points.iter().copied().filter(|p| p.context > 0).collect();
    pts.sort_by_key(|p| p.context);
    if pts.is_empty() {
        return Chart::missing(id, title, caption, "no KV cache sizes in the profile");
    }
    let legend = vec![
        LegendItem {
            label: "hybrid (sliding window + global)".into(),
            color: css(color(0)),
            dashed: false,
        },
        LegendItem {
            label: "all layers global".into(),
            color: css(color(3)),
            dashed: true,
        },
    ];
    drawn(id, title, caption, (HALF_W, CHART_H), legend, |root| {
        draw(root, &pts)
    })
}

fn draw(root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>, pts: &[KvPoint]) -> DrawResult {
    let x = ValueAxis::fit(pts.iter().map(|p| p.context as f64));
    let x = if x.log {
        x
    } else {
        ValueAxis::linear(0.0, x.hi)
    };
    let ymax = pts
        .iter()
        .map(|p| p.hybrid_bytes.max(p.all_global_bytes) as f64)
        .fold(0.0, f64::max);
    let y = ValueAxis::bytes(0.0, if ymax > 0.0 { ymax * 1.15 } else { 1.0 });
    let mut chart = ChartBuilder::on(root)
        .margin(14)
        .margin_right(24)
        .x_label_area_size(44)
        .y_label_area_size(78)
        .build_cartesian_2d(x, y)?;
    let xfmt = |v: &f64| format!("{}", v.round() as u64);
    let yfmt = |v: &f64| format::bytes(*v);
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .x_desc(if x.log {
            "context, tokens (log scale)"
        } else {
            "context, tokens"
        })
        .y_desc("KV cache")
        .label_style(label_style())
        .axis_desc_style(desc_style())
        .axis_style(INK)
        .draw()?;
    let hybrid: Vec<(f64, f64)> = pts
        .iter()
        .map(|p| (p.context as f64, p.hybrid_bytes as f64))
        .collect();
    let global: Vec<(f64, f64)> = pts
        .iter()
        .map(|p| (p.context as f64, p.all_global_bytes as f64))
        .collect();
    chart.draw_series(DashedLineSeries::new(
        global.iter().copied(),
        7,
        5,
        color(3).stroke_width(2),
    ))?;
    chart.draw_series(LineSeries::new(
        hybrid.iter().copied(),
        color(0).stroke_width(2),
    ))?;
    chart.draw_series(hybrid.iter().map(|&p| Circle::new(p, 3, color(0).filled())))?;
    if let Some(last) = pts.last().filter(|p| p.all_global_bytes > 0) {
        let note = format!(
            "at {} tokens: {} vs {} ({:.0}%)",
            last.context,
            format::bytes(last.hybrid_bytes as f64),
            format::bytes(last.all_global_bytes as f64),
            100.0 * last.hybrid_bytes as f64 / last.all_global_bytes as f64
        );
        let style = label_style().pos(Pos::new(HPos::Left, VPos::Top));
        let area = chart.plotting_area();
        area.draw(&Text::new(note, (x.range().start, ymax * 1.13), style))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_chart_notes_the_saving_at_the_longest_context() {
        let pts: Vec<KvPoint> = [512u64, 4096, 32768]
            .iter()
            .map(|&c| KvPoint {
                context: c,
                hybrid_bytes: c.min(4096) * 1000 + c * 250,
                all_global_bytes: c * 1000,
            })
            .collect();
        let c = kv_memory("kv", &pts);
        let svg = c.svg().expect("drawn");
        assert!(svg.contains("at 32768 tokens"));
        assert!(svg.contains("log scale"), "512..32768 spans 64x");
        assert!(svg.contains("KV cache"));
        assert!(kv_memory("kv", &[]).svg().is_none());
    }
}
