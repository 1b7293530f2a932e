//! Cache hit ratio against capacity: one line per policy, Belady's optimum dashed in black.

use plotters::prelude::*;

use super::{
    CHART_H, Chart, DrawResult, GRID, HALF_W, INK, LegendItem, ValueAxis, color, css, desc_style,
    drawn, label_style,
};
use crate::format;
use crate::profile::HitCurve;

/// A curve ready to draw: policy, sorted finite points, colour, dashed.
type Styled = (String, Vec<(f64, f64)>, RGBColor, bool);

/// The hit-ratio curves of a profile.
pub fn hit_curves(id: &str, curves: &[HitCurve]) -> Chart {
    let title = "Cache hit ratio against capacity";
    let caption = "Expert-cache hit ratio when replaying the recorded routing trace at each cache \
                   capacity, one line per policy; Belady's clairvoyant optimum (dashed black) is \
                   the upper bound, so the gap between a policy and it is what a better policy \
                   could still win.";
    let curves: Vec<(String, Vec<(f64, f64)>)> = curves
        .iter()
        .map(|c| {
            let mut pts: Vec<(f64, f64)> = c
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (c.policy.clone(), pts)
        })
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if curves.is_empty() {
        return Chart::missing(id, title, caption, "no cache simulation in the profile");
    }
    let mut k = 0;
    let styled: Vec<Styled> = curves
        .into_iter()
        .map(|(name, pts)| {
            if name.eq_ignore_ascii_case("belady") {
                (name, pts, INK, true)
            } else {
                k += 1;
                (name, pts, color(k - 1), false)
            }
        })
        .collect();
    let legend = styled
        .iter()
        .map(|(name, _, c, dashed)| LegendItem {
            label: name.clone(),
            color: css(*c),
            dashed: *dashed,
        })
        .collect();
    drawn(id, title, caption, (HALF_W, CHART_H), legend, |root| {
        draw(root, &styled)
    })
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    curves: &[Styled],
) -> DrawResult {
    let xmax = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .fold(0.0_f64, f64::max);
    let share = xmax <= 1.0;
    let x = if share {
        ValueAxis::linear(0.0, 1.0)
    } else {
        ValueAxis::linear(0.0, xmax * 1.05)
    };
    let ymax = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let y = ValueAxis::linear(0.0, if ymax <= 1.0 { 1.0 } else { ymax * 1.1 });
    let mut chart = ChartBuilder::on(root)
        .margin(14)
        .margin_right(24)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?;
    let xfmt = |v: &f64| {
        if share {
            format!("{:.0}%", v * 100.0)
        } else {
            format::tick(*v)
        }
    };
    let yfmt = |v: &f64| format!("{:.0}%", v * 100.0);
    chart
        .configure_mesh()
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&xfmt)
        .y_label_formatter(&yfmt)
        .x_desc(if share {
            "cache capacity (share of all experts)"
        } else {
            "cache capacity (expert slots)"
        })
        .y_desc("hit ratio")
        .label_style(label_style())
        .axis_desc_style(desc_style())
        .axis_style(INK)
        .draw()?;
    for (_, pts, c, dashed) in curves {
        let style = c.stroke_width(2);
        if *dashed {
            chart.draw_series(DashedLineSeries::new(pts.iter().copied(), 7, 5, style))?;
        } else {
            chart.draw_series(LineSeries::new(pts.iter().copied(), style))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(policy: &str, pts: &[(f64, f64)]) -> HitCurve {
        HitCurve {
            policy: policy.into(),
            points: pts.to_vec(),
        }
    }

    #[test]
    fn curves_share_axes_and_belady_is_dashed_black() {
        let c = hit_curves(
            "h",
            &[
                curve("LRU", &[(0.25, 0.4), (0.5, 0.6), (1.0, 1.0)]),
                curve("Belady", &[(0.25, 0.6), (0.5, 0.8), (1.0, 1.0)]),
                curve("LFU", &[(0.5, f64::NAN)]),
            ],
        );
        let svg = c.svg().expect("drawn");
        assert!(svg.contains("share of all experts"));
        assert!(svg.contains("hit ratio"));
        assert!(svg.contains("100%"));
        assert_eq!(c.legend.len(), 2, "LFU had no finite point");
        let belady = c
            .legend
            .iter()
            .find(|l| l.label == "Belady")
            .expect("belady");
        assert!(belady.dashed);
        assert_eq!(belady.color, "#333333");
    }

    #[test]
    fn slot_capacities_use_a_count_axis() {
        let c = hit_curves("h", &[curve("engine", &[(8.0, 0.3), (64.0, 0.9)])]);
        assert!(c.svg().expect("drawn").contains("expert slots"));
        assert!(hit_curves("h", &[]).svg().is_none());
    }
}
