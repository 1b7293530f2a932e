//! Comparisons of the same scenarios measured twice: this run against a baseline, and our engine
//! against the llama.cpp peer, with a noise-aware verdict per scenario.

use std::collections::BTreeMap;

use super::{Labeler, budget_rank, kind_rank, short_machine, storage_rank};
use crate::format;
use crate::record::{PEER_ENGINE, Record};

/// A change counts as real when it exceeds this many combined standard deviations...
pub const NOISE_SIGMAS: f64 = 2.0;
/// ...and at least this relative amount (timing noise on shared machines).
pub const MIN_NOISE_REL: f64 = 0.02;

/// One row of a comparison: the same scenario measured twice.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaRow {
    /// Scenario label.
    pub label: String,
    /// Reference `(mean, sd)` t/s (baseline or peer).
    pub before: (f64, f64),
    /// Compared `(mean, sd)` t/s (this run or our engine).
    pub after: (f64, f64),
    /// Relative change `after / before - 1`.
    pub rel: f64,
    /// Relative change that noise alone could explain, see [`NOISE_SIGMAS`].
    pub noise: f64,
}

impl DeltaRow {
    fn new(label: String, before: &Record, after: &Record) -> Self {
        let rel = if before.mean_tps > 0.0 {
            after.mean_tps / before.mean_tps - 1.0
        } else {
            f64::NAN
        };
        let cv = |r: &Record| {
            if r.sd_tps.is_finite() && r.mean_tps > 0.0 {
                r.sd_tps / r.mean_tps
            } else {
                0.0
            }
        };
        let noise =
            (NOISE_SIGMAS * (cv(before).powi(2) + cv(after).powi(2)).sqrt()).max(MIN_NOISE_REL);
        DeltaRow {
            label,
            before: (before.mean_tps, before.sd_tps),
            after: (after.mean_tps, after.sd_tps),
            rel,
            noise,
        }
    }

    /// True when the change is larger than noise; false when within noise or not computable.
    pub fn significant(&self) -> bool {
        self.rel.is_finite() && self.rel.abs() > self.noise
    }

    /// `"faster"`, `"slower"` or `"within noise"` (or `"–"` without a value).
    pub fn verdict(&self) -> &'static str {
        if !self.rel.is_finite() {
            format::MISSING
        } else if !self.significant() {
            "within noise"
        } else if self.rel > 0.0 {
            "faster"
        } else {
            "slower"
        }
    }
}

/// Key identifying the same scenario in two runs.
fn same_scenario(
    r: &Record,
) -> (
    String,
    String,
    String,
    String,
    String,
    Option<u64>,
    String,
    u32,
) {
    (
        r.cpu_model.clone(),
        r.engine.clone(),
        r.model.clone(),
        r.quant.clone(),
        r.storage.clone(),
        r.budget_bytes,
        r.test.clone(),
        r.threads,
    )
}

/// This run against a baseline run: one row per scenario present in both (the last record of
/// each scenario counts), in display order.
pub fn baseline_deltas(current: &[Record], baseline: &[Record]) -> Vec<DeltaRow> {
    let base: BTreeMap<_, &Record> = baseline.iter().map(|r| (same_scenario(r), r)).collect();
    let mut latest: BTreeMap<_, &Record> = BTreeMap::new();
    for r in current {
        latest.insert(same_scenario(r), r);
    }
    let matched: Vec<(&Record, &Record)> = latest
        .iter()
        .filter_map(|(k, r)| base.get(k).map(|b| (*b, *r)))
        .collect();
    let labeler = Labeler::new(matched.iter().map(|(_, r)| *r));
    let machines = spans_machines(matched.iter().map(|(_, r)| *r));
    let mut rows: Vec<(_, DeltaRow)> = matched
        .into_iter()
        .map(|(b, r)| {
            let mut label = labeler.scenario_with_test(r);
            if machines {
                label = format!("{} · {label}", short_machine(&r.cpu_model));
            }
            (display_key(r), DeltaRow::new(label, b, r))
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter().map(|(_, d)| d).collect()
}

/// Our engine against the llama.cpp peer on the same machine, model, quantisation, storage,
/// budget, test and threads: `after` is ours, `before` the peer.
pub fn peer_deltas(records: &[Record]) -> Vec<DeltaRow> {
    let key = |r: &Record| {
        let mut k = same_scenario(r);
        k.1 = String::new();
        k
    };
    let mut peers: BTreeMap<_, &Record> = BTreeMap::new();
    let mut ours: BTreeMap<_, &Record> = BTreeMap::new();
    for r in records {
        if r.engine == PEER_ENGINE {
            peers.insert(key(r), r);
        } else if !r.is_peer() {
            ours.insert(key(r), r);
        }
    }
    let matched: Vec<(&Record, &Record)> = ours
        .iter()
        .filter_map(|(k, r)| peers.get(k).map(|p| (*p, *r)))
        .collect();
    let labeler = Labeler::new(matched.iter().map(|(_, r)| *r));
    let machines = spans_machines(matched.iter().map(|(_, r)| *r));
    let mut rows: Vec<(_, DeltaRow)> = matched
        .into_iter()
        .map(|(p, r)| {
            let mut label = labeler.scenario_with_test(r);
            if machines {
                label = format!("{} · {label}", short_machine(&r.cpu_model));
            }
            (display_key(r), DeltaRow::new(label, p, r))
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter().map(|(_, d)| d).collect()
}

/// True when `records` come from more than one machine.
fn spans_machines<'a>(records: impl IntoIterator<Item = &'a Record>) -> bool {
    let mut it = records.into_iter();
    it.next()
        .is_some_and(|first| it.any(|r| r.cpu_model != first.cpu_model))
}

type DisplayKey = (String, u8, (usize, String), String, String, u64, String);

fn display_key(r: &Record) -> DisplayKey {
    (
        r.cpu_model.clone(),
        kind_rank(r.kind()),
        storage_rank(&r.storage),
        r.model.clone(),
        r.quant.clone(),
        u64::MAX - budget_rank(r.budget_bytes),
        r.test.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::tests::rec;

    #[test]
    fn baseline_deltas_match_scenarios_and_judge_noise() {
        let base = [
            rec("emmc", "q4_0", None, "tg64", 10.0),
            rec("real", "q4_0", None, "tg64", 10.0),
        ];
        let cur = [
            rec("emmc", "q4_0", None, "tg64", 11.0),
            rec("real", "q4_0", None, "tg64", 10.1),
        ];
        let d = baseline_deltas(&cur, &base);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].label, "real · q4_0 · tg64");
        assert!((d[0].rel - 0.01).abs() < 1e-9);
        assert_eq!(d[0].verdict(), "within noise");
        assert!((d[1].rel - 0.1).abs() < 1e-9);
        assert_eq!(d[1].verdict(), "faster");
        assert!(baseline_deltas(&cur, &[]).is_empty());
    }

    #[test]
    fn peer_deltas_pair_ours_with_llama_cpp() {
        let mut peer = rec("in-memory", "q4_0", None, "tg64", 20.0);
        peer.engine = PEER_ENGINE.into();
        let ours = rec("in-memory", "q4_0", None, "tg64", 15.0);
        let lonely = rec("emmc", "q4_0", None, "tg64", 1.0);
        let d = peer_deltas(&[peer, ours, lonely]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].before.0, 20.0);
        assert_eq!(d[0].after.0, 15.0);
        assert!((d[0].rel + 0.25).abs() < 1e-9);
        assert_eq!(d[0].verdict(), "slower");
    }
}
