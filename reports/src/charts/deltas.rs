//! Relative differences per scenario: this run against a baseline, and our engine against the
//! llama.cpp peer. Diverging bars around zero with the noise band drawn behind each bar.

use plotters::prelude::RGBColor;

use super::hbars::{HBar, HRow, HSpec, draw_rows};
use super::{Chart, HALF_W, ValueAxis, swatch};
use crate::format;
use crate::record::Record;
use crate::shape::{self, DeltaRow};

/// Colour of a change beyond noise in the good direction.
const BETTER: RGBColor = RGBColor(0x59, 0xa1, 0x4f);
/// Colour of a change beyond noise in the bad direction.
const WORSE: RGBColor = RGBColor(0xe1, 0x57, 0x59);
/// Colour of a change within noise.
const NEUTRAL: RGBColor = RGBColor(0x9a, 0x9a, 0x9a);
/// Colour of the noise band.
const BAND: RGBColor = RGBColor(0xe8, 0xe8, 0xe8);
/// Smallest half-width of the value axis (±5%).
const MIN_SPAN: f64 = 0.05;

/// This run against `baseline`: the rows for the table and the chart.
pub fn against_baseline(
    id: &str,
    current: &[Record],
    baseline: Option<&[Record]>,
) -> (Vec<DeltaRow>, Chart) {
    let title = "Change against the baseline";
    let caption = "Relative change of mean tokens per second for every scenario measured in both \
                   this run and the baseline; bars right of zero are faster, green or red only when \
                   the change exceeds the grey noise band (2 combined standard deviations, at least 2%).";
    let Some(baseline) = baseline else {
        return (
            Vec::new(),
            Chart::missing(id, title, caption, "no baseline records were given"),
        );
    };
    let rows = shape::baseline_deltas(current, baseline);
    if rows.is_empty() {
        return (
            rows,
            Chart::missing(
                id,
                title,
                caption,
                "no scenario of this run appears in the baseline",
            ),
        );
    }
    let chart = delta_chart(id, title, caption, &rows, "this run vs baseline");
    (rows, chart)
}

/// Our engine against llama.cpp on the same scenarios: the rows for the table and the chart.
pub fn against_peer(id: &str, records: &[Record]) -> (Vec<DeltaRow>, Chart) {
    let title = "smallthinker-rs against llama.cpp";
    let caption = "Our mean tokens per second relative to llama.cpp on the same machine, model \
                   file, storage, budget, test and threads; right of zero means we are faster, \
                   coloured only beyond the grey noise band.";
    let rows = shape::peer_deltas(records);
    if rows.is_empty() {
        let why = if records
            .iter()
            .any(|r| r.engine == crate::record::PEER_ENGINE)
        {
            "llama.cpp records match none of our scenarios"
        } else {
            "no llama.cpp records; run the bench with --peer llama.cpp"
        };
        return (rows, Chart::missing(id, title, caption, why));
    }
    let chart = delta_chart(id, title, caption, &rows, "ours vs llama.cpp");
    (rows, chart)
}

/// Diverging bars of `rows`' relative changes.
pub fn delta_chart(id: &str, title: &str, caption: &str, rows: &[DeltaRow], x_desc: &str) -> Chart {
    let span = rows
        .iter()
        .flat_map(|r| [r.rel.abs(), r.noise])
        .filter(|v| v.is_finite())
        .fold(MIN_SPAN, f64::max)
        * 1.35;
    let hrows: Vec<HRow> = rows
        .iter()
        .map(|r| {
            let c = if !r.significant() {
                NEUTRAL
            } else if r.rel > 0.0 {
                BETTER
            } else {
                WORSE
            };
            HRow {
                label: r.label.clone(),
                bars: vec![
                    HBar {
                        lane: 0,
                        from: -r.noise,
                        to: r.noise,
                        color: BAND,
                    },
                    HBar {
                        lane: 0,
                        from: 0.0,
                        to: r.rel,
                        color: c,
                    },
                ],
                note: Some(format::delta_pct(r.rel)),
            }
        })
        .collect();
    let fmt = |v: f64| format!("{:+.0}%", v * 100.0);
    let spec = HSpec {
        lanes: 1,
        x: ValueAxis::linear(-span, span),
        x_desc,
        x_fmt: &fmt,
        ref_lines: vec![0.0],
        width: HALF_W,
    };
    let legend = vec![
        swatch("faster", BETTER),
        swatch("slower", WORSE),
        swatch("within noise", NEUTRAL),
        swatch("noise band", BAND),
    ];
    draw_rows(id, title, caption, legend, &hrows, &spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::PEER_ENGINE;
    use crate::shape::tests::rec;

    #[test]
    fn baseline_chart_shows_signed_changes() {
        let base = [
            rec("emmc", "q4_0", None, "tg64", 10.0),
            rec("real", "q4_0", None, "tg64", 10.0),
        ];
        let cur = [
            rec("emmc", "q4_0", None, "tg64", 12.0),
            rec("real", "q4_0", None, "tg64", 7.0),
        ];
        let (rows, chart) = against_baseline("base", &cur, Some(&base));
        assert_eq!(rows.len(), 2);
        let svg = chart.svg().expect("drawn");
        assert!(svg.contains("+20.0%") && svg.contains("-30.0%"));
        assert!(svg.contains("emmc · q4_0 · tg64"));
        let (_, none) = against_baseline("base", &cur, None);
        assert!(none.svg().is_none());
    }

    #[test]
    fn peer_chart_explains_missing_peer() {
        let ours = rec("in-memory", "q4_0", None, "tg64", 15.0);
        let (_, c) = against_peer("peer", std::slice::from_ref(&ours));
        assert!(matches!(c.body, super::super::ChartBody::Missing(ref m) if m.contains("--peer")));
        let mut peer = ours.clone();
        peer.engine = PEER_ENGINE.into();
        peer.mean_tps = 30.0;
        let (rows, c) = against_peer("peer", &[ours, peer]);
        assert_eq!(rows.len(), 1);
        assert!(c.svg().expect("drawn").contains("-50.0%"));
    }
}
