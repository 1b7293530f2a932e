//! Chart builders: each takes shaped data and returns a [`Chart`] holding an inline SVG string
//! (plotters' SVG backend) or, when there is nothing to draw, the reason why.
//!
//! Every chart has a title and a one-sentence caption saying what it shows and how to read it.
//! Legends are returned as data and drawn in HTML under the chart, so they never cover data.
//! One file per chart family; shared axis, palette and SVG plumbing live here.

mod axis;
pub mod bars;
pub mod budget;
pub mod deltas;
pub mod hbars;
pub mod hit_curves;
pub mod kv;
pub mod latency;
pub mod popularity;
pub mod reuse;
pub mod stalls;
pub mod timeline;

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

pub(crate) use axis::{CategoryAxis, ValueAxis, category_label};

/// A finished chart: SVG or a "not measured" note, plus title, caption and legend.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    /// Anchor id, unique within a report section.
    pub id: String,
    /// Short title.
    pub title: String,
    /// One sentence: what the chart shows and how to read it.
    pub caption: String,
    /// The drawing or the reason there is none.
    pub body: ChartBody,
    /// Legend entries, drawn in HTML below the chart.
    pub legend: Vec<LegendItem>,
    /// Spans the full page width instead of half.
    pub wide: bool,
}

/// The content of a chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "content", rename_all = "snake_case")]
pub enum ChartBody {
    /// Inline SVG markup.
    Svg(String),
    /// Why there is no chart ("not measured in this run (...)").
    Missing(String),
}

/// One legend entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LegendItem {
    /// Series name.
    pub label: String,
    /// CSS colour, `#rrggbb`.
    pub color: String,
    /// Drawn as a dashed line rather than a filled swatch.
    pub dashed: bool,
}

impl Chart {
    /// A chart with no data: `title`, `caption` and the reason shown instead of a drawing.
    pub fn missing(id: &str, title: &str, caption: &str, why: &str) -> Self {
        Chart {
            id: id.to_owned(),
            title: title.to_owned(),
            caption: caption.to_owned(),
            body: ChartBody::Missing(format!("Not measured in this run ({why}).")),
            legend: Vec::new(),
            wide: false,
        }
    }

    /// The SVG markup, if the chart was drawn.
    pub fn svg(&self) -> Option<&str> {
        match &self.body {
            ChartBody::Svg(s) => Some(s),
            ChartBody::Missing(_) => None,
        }
    }

    /// Marks the chart as full width.
    pub fn wide(mut self) -> Self {
        self.wide = true;
        self
    }
}

/// Builds a drawn chart from SVG drawing code; a drawing failure becomes a note, not a panic.
pub(crate) fn drawn(
    id: &str,
    title: &str,
    caption: &str,
    size: (u32, u32),
    legend: Vec<LegendItem>,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult,
) -> Chart {
    let body = match render_svg(size, title, draw) {
        Ok(svg) => ChartBody::Svg(svg),
        Err(e) => {
            tracing::warn!(chart = id, "chart could not be drawn: {e}");
            ChartBody::Missing(format!("The chart could not be drawn ({e})."))
        }
    };
    Chart {
        id: id.to_owned(),
        title: title.to_owned(),
        caption: caption.to_owned(),
        body,
        legend,
        wide: false,
    }
}

/// What drawing code returns.
pub(crate) type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Runs `draw` on an SVG canvas of `size` pixels and returns the markup, with a `<title>`.
pub(crate) fn render_svg(
    size: (u32, u32),
    title: &str,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> DrawResult,
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    // Give the drawing an accessible name (shown as a tooltip too).
    if let Some(end) = svg.find('>') {
        let title = format!("<title>{}</title>", escape_xml(title));
        svg.insert_str(end + 1, &title);
    }
    Ok(svg)
}

/// Escapes text for XML content and attributes.
pub(crate) fn escape_xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Font family of all chart text.
pub(crate) const FONT: &str = "sans-serif";
/// plotters font size of tick labels (the SVG gets this / 1.24, about 12 px).
pub(crate) const LABEL_SIZE: f64 = 15.0;
/// plotters font size of axis descriptions.
pub(crate) const DESC_SIZE: f64 = 16.0;
/// Width of a half-page chart, px.
pub(crate) const HALF_W: u32 = 640;
/// Width of a full-page chart, px.
pub(crate) const WIDE_W: u32 = 1300;
/// Height of most charts, px.
pub(crate) const CHART_H: u32 = 380;

/// Categorical colours (Tableau 10).
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
    RGBColor(0xed, 0xc9, 0x48),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xff, 0x9d, 0xa7),
    RGBColor(0x9c, 0x75, 0x5f),
    RGBColor(0xba, 0xb0, 0xac),
];

/// Colour of compute work.
pub(crate) const COMPUTE: RGBColor = RGBColor(0x4e, 0x79, 0xa7);
/// Colour of I/O work.
pub(crate) const IO: RGBColor = RGBColor(0xf2, 0x8e, 0x2b);
/// Colour of I/O that stalls compute.
pub(crate) const STALL: RGBColor = RGBColor(0xe1, 0x57, 0x59);
/// Colour of KV cache work.
pub(crate) const KV: RGBColor = RGBColor(0x59, 0xa1, 0x4f);
/// Colour of anything else.
pub(crate) const OTHER: RGBColor = RGBColor(0xba, 0xb0, 0xac);
/// Grid line colour.
pub(crate) const GRID: RGBColor = RGBColor(0xe4, 0xe4, 0xe4);
/// Axis and text colour.
pub(crate) const INK: RGBColor = RGBColor(0x33, 0x33, 0x33);

/// The `i`-th categorical colour (cycling).
pub(crate) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// `#rrggbb` of a colour, for HTML legends.
pub(crate) fn css(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// A legend entry with a filled swatch.
pub(crate) fn swatch(label: &str, c: RGBColor) -> LegendItem {
    LegendItem {
        label: label.to_owned(),
        color: css(c),
        dashed: false,
    }
}

/// Tick-label style.
pub(crate) fn label_style() -> TextStyle<'static> {
    (FONT, LABEL_SIZE).into_font().color(&INK)
}

/// Axis-description style.
pub(crate) fn desc_style() -> TextStyle<'static> {
    (FONT, DESC_SIZE).into_font().color(&INK)
}

/// Upper end of a value axis: a bit above the largest finite value (1 if there is none).
pub(crate) fn axis_max(values: impl IntoIterator<Item = f64>) -> f64 {
    let m = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    if m > 0.0 { m * 1.12 } else { 1.0 }
}

/// Approximate pixel width of `text` at [`LABEL_SIZE`], for sizing label areas.
pub(crate) fn text_width(text: &str) -> u32 {
    // About 0.62 em per character for sans-serif at the SVG font size (DejaVu Sans is wide).
    let em = LABEL_SIZE / 1.24;
    (text.chars().count() as f64 * em * 0.62).ceil() as u32
}

/// The text content of every `<text>` element of an SVG, trimmed (for tests).
#[cfg(test)]
pub(crate) fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_gets_an_escaped_title() {
        let svg = render_svg((100, 50), "a < b", |_| Ok(())).expect("draws");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("<title>a &lt; b</title>"));
        assert!(svg.contains("viewBox=\"0 0 100 50\""));
    }

    #[test]
    fn svg_texts_extracts_labels() {
        let svg = "<svg><text x=\"1\">\nq4_0\n</text><rect/><text>\n1 GiB\n</text></svg>";
        assert_eq!(svg_texts(svg), vec!["q4_0", "1 GiB"]);
    }

    #[test]
    fn axis_max_ignores_nan() {
        assert_eq!(axis_max([f64::NAN, 10.0]), 11.200000000000001);
        assert_eq!(axis_max([f64::NAN]), 1.0);
        assert_eq!(axis_max([]), 1.0);
    }
}
