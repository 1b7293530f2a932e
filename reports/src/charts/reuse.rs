//! Histogram of expert reuse distances in power-of-two bins.

use super::Chart;
use super::bars::{Values, grouped_bars};
use crate::shape::{self, GroupSeries, Grouped};

/// The reuse-distance histogram of a profile.
pub fn reuse_distance(id: &str, hist: &[(u64, u64)]) -> Chart {
    let title = "Expert reuse distance";
    let caption = "How many other expert accesses happen between two uses of the same expert, in \
                   power-of-two bins labelled by their first distance ('first' counts experts \
                   never used before); mass at short distances means even a small cache catches \
                   most reuse.";
    let bins = shape::reuse_bins(hist);
    if bins.iter().all(|(_, c)| *c == 0) {
        return Chart::missing(id, title, caption, "no expert access trace in the profile");
    }
    let data = Grouped {
        categories: bins.iter().map(|(l, _)| l.clone()).collect(),
        series: vec![GroupSeries {
            name: "accesses".into(),
            hue: 0,
            shade: 0.0,
            values: bins
                .iter()
                .map(|(_, c)| Some((*c as f64, f64::NAN)))
                .collect(),
        }],
    };
    let mut chart = grouped_bars(id, title, caption, &data, "accesses", Values::Count);
    chart.legend.clear();
    chart
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_histogram_labels_bins() {
        let c = reuse_distance("r", &[(1, 50), (5, 20), (40, 3), (u64::MAX, 64)]);
        let texts = crate::charts::svg_texts(c.svg().expect("drawn"));
        for label in ["1", "4", "32", "first", "accesses", "64"] {
            assert!(texts.iter().any(|t| t == label), "{label} in {texts:?}");
        }
        assert!(reuse_distance("r", &[]).svg().is_none());
        assert!(reuse_distance("r", &[(3, 0)]).svg().is_none());
    }
}
