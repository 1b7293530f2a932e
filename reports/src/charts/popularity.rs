//! Expert popularity as a heatmap (layer x expert rank) and neuron sparsity per layer.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::bars::{Values, grouped_bars};
use super::{
    CategoryAxis, Chart, DrawResult, HALF_W, INK, ValueAxis, desc_style, drawn, label_style,
};
use crate::format;
use crate::shape::{GroupSeries, Grouped};

/// Stops of the sequential colour scale, light to dark (a viridis-like ramp, reversed so that
/// "more" is darker).
const RAMP: [(u8, u8, u8); 5] = [
    (0xfd, 0xe7, 0x25),
    (0x5e, 0xc9, 0x62),
    (0x21, 0x91, 0x8c),
    (0x3b, 0x52, 0x8b),
    (0x44, 0x01, 0x54),
];
/// Width of the colour bar area, px.
const SCALE_PX: u32 = 90;

/// Colour of `t` in 0..1 on [`RAMP`].
pub(crate) fn ramp(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (RAMP.len() - 1) as f64;
    let i = (x.floor() as usize).min(RAMP.len() - 2);
    let f = x - i as f64;
    let (a, b) = (RAMP[i], RAMP[i + 1]);
    let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Expert popularity heatmap: layers down, experts sorted by share within each layer across.
pub fn popularity(id: &str, popularity: &[Vec<f64>]) -> Chart {
    let title = "Expert popularity";
    let caption = "Share of router selections per expert, one row per layer with experts sorted \
                   from most to least used (rank 0 on the left); dark cells crowded on the left \
                   mean a few hot experts carry most tokens, which is what makes an expert cache \
                   pay off.";
    let n_experts = popularity.iter().map(Vec::len).max().unwrap_or(0);
    let max = popularity
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    if popularity.is_empty() || n_experts == 0 || max <= 0.0 {
        return Chart::missing(id, title, caption, "no routing statistics in the profile");
    }
    let sorted: Vec<Vec<f64>> = popularity
        .iter()
        .map(|layer| {
            let mut l: Vec<f64> = layer
                .iter()
                .map(|v| if v.is_finite() { *v } else { 0.0 })
                .collect();
            l.sort_by(|a, b| b.total_cmp(a));
            l
        })
        .collect();
    let n_layers = sorted.len();
    let height = (n_layers as u32 * 9).clamp(160, 560) + 90;
    drawn(id, title, caption, (HALF_W, height), Vec::new(), |root| {
        draw(root, &sorted, n_experts, max)
    })
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    sorted: &[Vec<f64>],
    n_experts: usize,
    max: f64,
) -> DrawResult {
    let (w, _) = root.dim_in_pixel();
    let (main, scale) = root.split_horizontally(w - SCALE_PX);
    let n_layers = sorted.len();
    let mut chart = ChartBuilder::on(&main)
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(54)
        .build_cartesian_2d(
            ValueAxis::linear(0.0, n_experts as f64),
            CategoryAxis { n: n_layers },
        )?;
    // Layer 0 on top.
    let yfmt = |v: &f64| {
        CategoryAxis::index(*v)
            .filter(|&i| i < n_layers)
            .map(|i| (n_layers - 1 - i).to_string())
            .unwrap_or_default()
    };
    let xfmt = |v: &f64| format!("{}", *v as u64);
    chart
        .configure_mesh()
        .disable_mesh()
        .y_labels(n_layers.min(16))
        .x_labels(8)
        .y_label_formatter(&yfmt)
        .x_label_formatter(&xfmt)
        .x_desc("expert rank within the layer")
        .y_desc("layer")
        .label_style(label_style())
        .axis_desc_style(desc_style())
        .axis_style(INK)
        .draw()?;
    let cells = sorted.iter().enumerate().flat_map(|(layer, row)| {
        let slot = (n_layers - 1 - layer) as f64;
        row.iter().enumerate().map(move |(rank, v)| {
            Rectangle::new(
                [(rank as f64, slot), (rank as f64 + 1.0, slot + 1.0)],
                ramp(v / max).filled(),
            )
        })
    });
    chart.draw_series(cells)?;

    // Colour bar with its range.
    let (_, sh) = scale.dim_in_pixel();
    let (top, bottom) = (30_i32, sh as i32 - 60);
    let steps = 40;
    for k in 0..steps {
        let t = 1.0 - k as f64 / steps as f64;
        let y0 = top + (bottom - top) * k / steps;
        let y1 = top + (bottom - top) * (k + 1) / steps;
        scale.draw(&Rectangle::new([(14, y0), (30, y1 + 1)], ramp(t).filled()))?;
    }
    let st = label_style().pos(Pos::new(HPos::Left, VPos::Center));
    scale.draw(&Text::new(format::pct(max), (34, top), st.clone()))?;
    scale.draw(&Text::new("0%".to_owned(), (34, bottom), st))?;
    let head = label_style().pos(Pos::new(HPos::Left, VPos::Bottom));
    scale.draw(&Text::new("share".to_owned(), (8, top - 8), head))?;
    Ok(())
}

/// Neuron sparsity (share of FFN neurons skipped) per layer.
pub fn sparsity(id: &str, per_layer: &[f64]) -> Chart {
    let title = "Neuron sparsity per layer";
    let caption = "Share of FFN neurons whose ReGLU activation was zero and whose rows the kernel \
                   skipped, per layer; higher bars mean less compute and, with offloading, fewer \
                   bytes to read for that layer.";
    if !per_layer.iter().any(|v| v.is_finite()) {
        return Chart::missing(id, title, caption, "no sparsity counters in the profile");
    }
    let data = Grouped {
        categories: (0..per_layer.len()).map(|i| i.to_string()).collect(),
        series: vec![GroupSeries::plain(
            "sparsity",
            0,
            per_layer.iter().map(|v| Some((*v, f64::NAN))).collect(),
        )],
    };
    grouped_bars(
        id,
        title,
        caption,
        &data,
        "neurons skipped",
        Values::Percent,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_labels_layers_and_scale() {
        let pop = vec![
            vec![0.1, 0.5, 0.2, 0.2],
            vec![0.25; 4],
            vec![f64::NAN, 0.9, 0.05, 0.05],
        ];
        let c = popularity("pop", &pop);
        let svg = c.svg().expect("drawn");
        assert!(svg.contains("expert rank within the layer"));
        assert!(svg.contains("90.0%"), "scale maximum");
        assert!(svg.contains("layer"));
        assert!(!svg.contains("NaN"));
        // 12 cells plus 40 colour-bar steps at least.
        assert!(svg.matches("<rect").count() >= 52);
    }

    #[test]
    fn ramp_goes_from_light_to_dark() {
        let light = ramp(0.0);
        let dark = ramp(1.0);
        let lum = |c: RGBColor| c.0 as u32 + c.1 as u32 + c.2 as u32;
        assert!(lum(light) > lum(dark));
        assert_eq!(ramp(f64::NAN), light);
    }

    #[test]
    fn empty_popularity_and_sparsity_are_notes() {
        assert!(popularity("p", &[]).svg().is_none());
        assert!(popularity("p", &[vec![0.0; 4]]).svg().is_none());
        assert!(sparsity("s", &[f64::NAN]).svg().is_none());
        let s = sparsity("s", &[0.9, 0.6]);
        assert!(s.svg().expect("drawn").contains("90%"));
    }
}
