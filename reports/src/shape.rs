//! Pure functions that shape records into what the charts and tables draw: groups by machine,
//! scenario labels, grouped bars, budget lines, deltas against a baseline or a peer, percentiles
//! and reuse-distance bins. No drawing here, so every rule is unit-testable on its own.

use std::collections::BTreeMap;

use crate::format;
use crate::record::{PEER_ENGINE, Record, TestKind, budget_label};

/// Storage profiles in the order charts show them; unknown ones follow in first-seen order.
pub const STORAGE_ORDER: [&str; 6] = [
    "in-memory",
    "real",
    "nvme-gen4",
    "ufs-3.1",
    "sata-ssd",
    "emmc",
];

/// A change counts as real when it exceeds this many combined standard deviations...
pub const NOISE_SIGMAS: f64 = 2.0;
/// ...and at least this relative amount (timing noise on shared machines).
pub const MIN_NOISE_REL: f64 = 0.02;

/// Records of one machine (same `cpu_model`).
#[derive(Debug, Clone)]
pub struct MachineGroup<'a> {
    /// The CPU model shared by the records.
    pub cpu_model: String,
    /// The records, in input order.
    pub records: Vec<&'a Record>,
}

/// Groups records by `cpu_model`, machines in first-seen order.
pub fn by_machine(records: &[Record]) -> Vec<MachineGroup<'_>> {
    let mut groups: Vec<MachineGroup<'_>> = Vec::new();
    for r in records {
        match groups.iter_mut().find(|g| g.cpu_model == r.cpu_model) {
            Some(g) => g.records.push(r),
            None => groups.push(MachineGroup {
                cpu_model: r.cpu_model.clone(),
                records: vec![r],
            }),
        }
    }
    groups
}

/// A short machine name for legends: the CPU model without trademarks and filler words.
pub fn short_machine(cpu_model: &str) -> String {
    let mut s = cpu_model.to_owned();
    for noise in ["(R)", "(TM)", "(tm)", " CPU", " Processor", " processor"] {
        s = s.replace(noise, "");
    }
    if let Some(at) = s.find(" @ ") {
        s.truncate(at);
    }
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.is_empty() {
        "unknown CPU".to_owned()
    } else if s.chars().count() > 32 {
        s.chars().take(31).collect::<String>() + "…"
    } else {
        s
    }
}

/// Sort key of a storage profile: known profiles first in [`STORAGE_ORDER`], others by name.
pub fn storage_rank(storage: &str) -> (usize, String) {
    let i = STORAGE_ORDER
        .iter()
        .position(|s| *s == storage)
        .unwrap_or(STORAGE_ORDER.len());
    (i, storage.to_owned())
}

/// Sort key of a budget: ascending, unlimited last.
pub fn budget_rank(budget: Option<u64>) -> u64 {
    budget.unwrap_or(u64::MAX)
}

/// Labels scenarios by the dimensions that actually vary in a record set, so labels stay short:
/// `"nvme-gen4 · q4_0 · 1 GiB"` rather than every field.
#[derive(Debug, Clone, Default)]
pub struct Labeler {
    engine: bool,
    model: bool,
    budget: bool,
    test: bool,
    threads: bool,
}

impl Labeler {
    /// Looks at which fields differ among `records`.
    pub fn new<'a>(records: impl IntoIterator<Item = &'a Record> + Clone) -> Self {
        fn varies<'a, T: PartialEq>(
            rs: impl IntoIterator<Item = &'a Record>,
            f: impl Fn(&Record) -> T,
        ) -> bool {
            let mut it = rs.into_iter();
            match it.next() {
                Some(first) => {
                    let v = f(first);
                    it.any(|r| f(r) != v)
                }
                None => false,
            }
        }
        Labeler {
            engine: varies(records.clone(), |r| r.engine.clone()),
            model: varies(records.clone(), |r| r.model.clone()),
            budget: varies(records.clone(), |r| r.budget_bytes),
            test: varies(records.clone(), |r| r.test.clone()),
            threads: varies(records, |r| r.threads),
        }
    }

    /// The label of a whole scenario: storage and quantisation always, other fields if they vary.
    pub fn scenario(&self, r: &Record) -> String {
        let mut parts = vec![r.storage.clone(), r.quant.clone()];
        if self.budget {
            parts.push(r.budget_label());
        }
        self.extras(r, &mut parts);
        parts.join(" · ")
    }

    /// Like [`Labeler::scenario`], always naming the test.
    pub fn scenario_with_test(&self, r: &Record) -> String {
        let label = self.scenario(r);
        if self.test {
            label
        } else {
            format!("{label} · {}", r.test)
        }
    }

    /// The series part of a grouped-bar label (everything but storage and budget).
    pub fn series(&self, r: &Record) -> String {
        let mut parts = vec![r.quant.clone()];
        self.extras(r, &mut parts);
        parts.join(" · ")
    }

    /// A line label for the budget chart (everything but the budget).
    pub fn line(&self, r: &Record) -> String {
        let mut parts = vec![r.storage.clone(), r.quant.clone()];
        self.extras(r, &mut parts);
        parts.join(" · ")
    }

    fn extras(&self, r: &Record, parts: &mut Vec<String>) {
        if self.model {
            parts.insert(0, r.model.clone());
        }
        if self.test {
            parts.push(r.test.clone());
        }
        if self.threads {
            parts.push(format!("{}t", r.threads));
        }
        // Our engine is the default; only peers are named.
        if self.engine && r.is_peer() {
            parts.push(r.engine.clone());
        }
    }
}

/// Bars grouped by category (storage profile), one bar per series (quantisation, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grouped {
    /// Category labels along the axis.
    pub categories: Vec<String>,
    /// Series, each with one optional `(mean, sd)` per category.
    pub series: Vec<GroupSeries>,
}

/// One series of a [`Grouped`] chart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupSeries {
    /// Legend label.
    pub name: String,
    /// `(mean, sd)` per category; `None` where not measured.
    pub values: Vec<Option<(f64, f64)>>,
    /// Colour index: series sharing a hue differ only in shade.
    pub hue: usize,
    /// Lightening towards white, 0 (full colour) to 1 (white).
    pub shade: f64,
}

impl GroupSeries {
    /// A series with its own hue and full colour.
    pub fn plain(name: impl Into<String>, hue: usize, values: Vec<Option<(f64, f64)>>) -> Self {
        GroupSeries {
            name: name.into(),
            values,
            hue,
            shade: 0.0,
        }
    }
}

impl Grouped {
    /// True when no bar has a finite value.
    pub fn is_empty(&self) -> bool {
        !self
            .series
            .iter()
            .flat_map(|s| &s.values)
            .any(|v| v.is_some_and(|(m, _)| m.is_finite()))
    }
}

/// Tokens per second of `kind` tests by storage profile (categories) and quantisation x budget
/// (series): one hue per quantisation (and peer engine), lighter shades for smaller budgets.
/// A scenario measured twice counts with its last record.
pub fn tps_by_storage(records: &[&Record], kind: TestKind) -> Grouped {
    let rs: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| r.kind() == kind)
        .collect();
    let labeler = Labeler::new(rs.iter().copied());
    let mut budgets: Vec<Option<u64>> = rs.iter().map(|r| r.budget_bytes).collect();
    budgets.sort_by_key(|b| u64::MAX - budget_rank(*b));
    budgets.dedup();
    let show_budget = budgets.len() > 1;
    let mut storages: Vec<String> = Vec::new();
    let mut bases: Vec<String> = Vec::new();
    // (base series, budget level) -> storage -> record.
    let mut cells: BTreeMap<(usize, usize), BTreeMap<String, &Record>> = BTreeMap::new();
    for r in &rs {
        if !storages.contains(&r.storage) {
            storages.push(r.storage.clone());
        }
        let base = labeler.series(r);
        let hue = bases.iter().position(|b| *b == base).unwrap_or_else(|| {
            bases.push(base);
            bases.len() - 1
        });
        let level = budgets
            .iter()
            .position(|b| *b == r.budget_bytes)
            .unwrap_or(0);
        cells
            .entry((hue, level))
            .or_default()
            .insert(r.storage.clone(), r);
    }
    storages.sort_by_key(|s| storage_rank(s));
    let series = cells
        .into_iter()
        .map(|((hue, level), by_storage)| GroupSeries {
            name: if show_budget {
                format!("{} · {}", bases[hue], budget_label(budgets[level]))
            } else {
                bases[hue].clone()
            },
            values: storages
                .iter()
                .map(|st| by_storage.get(st).map(|r| (r.mean_tps, r.sd_tps)))
                .collect(),
            hue,
            shade: if budgets.len() > 1 {
                SHADE_RANGE * level as f64 / (budgets.len() - 1) as f64
            } else {
                0.0
            },
        })
        .collect();
    Grouped {
        categories: storages,
        series,
    }
}

/// How much lighter the smallest budget's bars are than the unlimited ones (0..1 towards white).
pub const SHADE_RANGE: f64 = 0.6;

/// Tokens per second against memory budget: one line per storage x quantisation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetLines {
    /// Budgets along the x axis, ascending, unlimited (`None`) last.
    pub budgets: Vec<Option<u64>>,
    /// The lines.
    pub lines: Vec<BudgetLine>,
}

/// One line of [`BudgetLines`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BudgetLine {
    /// Legend label.
    pub name: String,
    /// Storage profile (the line's colour).
    pub storage: String,
    /// Everything but storage and budget: quantisation, peer engine, ... (the line's dash).
    pub variant: String,
    /// Mean t/s per budget; `None` where not measured.
    pub tps: Vec<Option<f64>>,
}

impl BudgetLines {
    /// Budget labels for the axis.
    pub fn labels(&self) -> Vec<String> {
        self.budgets.iter().map(|b| budget_label(*b)).collect()
    }
}

/// Decode (or prefill) t/s per budget, one line per storage x quantisation.
pub fn tps_vs_budget(records: &[&Record], kind: TestKind) -> BudgetLines {
    let rs: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| r.kind() == kind)
        .collect();
    let labeler = Labeler::new(rs.iter().copied());
    let mut budgets: Vec<Option<u64>> = rs.iter().map(|r| r.budget_bytes).collect();
    budgets.sort_by_key(|b| budget_rank(*b));
    budgets.dedup();
    let mut ordered = rs.clone();
    ordered.sort_by_key(|r| (storage_rank(&r.storage), r.quant.clone()));
    let mut lines: Vec<BudgetLine> = Vec::new();
    for r in ordered {
        let name = labeler.line(r);
        let Some(at) = budgets.iter().position(|b| *b == r.budget_bytes) else {
            continue;
        };
        let line = match lines.iter_mut().position(|l| l.name == name) {
            Some(i) => &mut lines[i],
            None => {
                lines.push(BudgetLine {
                    name,
                    storage: r.storage.clone(),
                    variant: labeler.series(r),
                    tps: vec![None; budgets.len()],
                });
                lines.last_mut().expect("just pushed")
            }
        };
        line.tps[at] = Some(r.mean_tps).filter(|v| v.is_finite());
    }
    BudgetLines { budgets, lines }
}

/// Records of `kind` in display order: storage, quantisation, budget (largest first), engine.
pub fn ordered<'a>(records: &[&'a Record], kind: TestKind) -> Vec<&'a Record> {
    let mut rs: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| r.kind() == kind)
        .collect();
    rs.sort_by_key(|r| {
        (
            storage_rank(&r.storage),
            r.model.clone(),
            r.quant.clone(),
            u64::MAX - budget_rank(r.budget_bytes),
            r.test.clone(),
            r.is_peer(),
            r.engine.clone(),
        )
    });
    rs
}

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

/// Decode before prefill in tables and delta charts: decode speed is the headline number.
pub fn kind_rank(kind: TestKind) -> u8 {
    match kind {
        TestKind::Decode => 0,
        TestKind::Prefill => 1,
    }
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

/// The finite values of `v`, sorted ascending.
pub fn sorted_finite(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s
}

/// Nearest-rank percentile `p` (0..100) of ascending `sorted` values; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Reuse distances binned by powers of two, labelled by the bin's first distance: `"1"` (0 and
/// 1), `"2"` (2–3), `"4"` (4–7), ..., `"1k"` (1024–2047), and `"first"` for first accesses
/// (`u64::MAX`). Empty bins between filled ones are kept so the axis is regular.
pub fn reuse_bins(hist: &[(u64, u64)]) -> Vec<(String, u64)> {
    let mut bins: BTreeMap<u32, u64> = BTreeMap::new();
    let mut first = 0u64;
    for &(d, c) in hist {
        if d == u64::MAX {
            first += c;
        } else {
            // Distance 0 (immediate reuse) shares the first bin with 1.
            let b = 63 - d.max(1).leading_zeros();
            *bins.entry(b).or_default() += c;
        }
    }
    let mut out = Vec::new();
    if let (Some((&lo, _)), Some((&hi, _))) = (bins.first_key_value(), bins.last_key_value()) {
        for b in lo..=hi {
            out.push((pow2_label(b), bins.get(&b).copied().unwrap_or(0)));
        }
    }
    if first > 0 {
        out.push(("first".to_owned(), first));
    }
    out
}

/// `2^b` in short form: `1`, `512`, `1k`, `64k`, `1M`, `4G`.
fn pow2_label(b: u32) -> String {
    match b {
        0..10 => (1u64 << b).to_string(),
        10..20 => format!("{}k", 1u64 << (b - 10)),
        20..30 => format!("{}M", 1u64 << (b - 20)),
        _ => format!("{}G", 1u64 << (b.min(63) - 30)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::OUR_ENGINE;

    /// A record with the fields that matter for shaping.
    pub fn rec(storage: &str, quant: &str, budget: Option<u64>, test: &str, tps: f64) -> Record {
        Record {
            schema: 1,
            run_id: "r".into(),
            commit: "c".into(),
            date: "2026-01-01T00:00:00Z".into(),
            cpu_model: "Test CPU".into(),
            simd: "avx2".into(),
            threads: 2,
            engine: OUR_ENGINE.into(),
            model: "4b-a0.6b".into(),
            quant: quant.into(),
            storage: storage.into(),
            budget_bytes: budget,
            test: test.into(),
            n_prompt: 0,
            n_gen: 0,
            samples_tps: vec![tps],
            mean_tps: tps,
            sd_tps: tps * 0.01,
            median_tps: tps,
            peak_mem_bytes: None,
            mem_source: None,
            hit_rate: None,
            belady_hit_rate: None,
            overlap_ratio: None,
            bytes_read_per_token: None,
            weight_bytes_per_token: None,
            roofline_tps: None,
            bandwidth_gbps: None,
            sparsity: None,
            io_ms_per_token: None,
            compute_ms_per_token: None,
            exposed_io_ms_per_token: None,
            profile_dir: None,
            note: None,
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn bars_group_by_storage_in_canonical_order_with_budgets_as_shades() {
        let rs = [
            rec("emmc", "q4_0", Some(GIB), "tg64", 1.0),
            rec("emmc", "q4_0", None, "tg64", 5.0),
            rec("in-memory", "q8_0", None, "tg64", 9.0),
            rec("in-memory", "q4_0", None, "tg64", 10.0),
            rec("in-memory", "q4_0", None, "pp128", 100.0),
        ];
        let refs: Vec<&Record> = rs.iter().collect();
        let g = tps_by_storage(&refs, TestKind::Decode);
        assert_eq!(g.categories, vec!["in-memory", "emmc"]);
        let names: Vec<&str> = g.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["q4_0 · unlimited", "q4_0 · 1 GiB", "q8_0 · unlimited"]
        );
        assert_eq!(
            g.series[0].values,
            vec![Some((10.0, 0.1)), Some((5.0, 0.05))]
        );
        assert_eq!(g.series[1].values[0], None);
        assert_eq!((g.series[1].hue, g.series[1].shade), (0, SHADE_RANGE));
        assert_eq!((g.series[2].hue, g.series[2].shade), (1, 0.0));
        assert_eq!(g.series[2].values[1], None);
        assert!(tps_by_storage(&refs[..0], TestKind::Decode).is_empty());
    }

    #[test]
    fn budget_lines_put_unlimited_last() {
        let rs = [
            rec("nvme-gen4", "q4_0", None, "tg64", 10.0),
            rec("nvme-gen4", "q4_0", Some(GIB), "tg64", 2.0),
            rec("nvme-gen4", "q4_0", Some(2 * GIB), "tg64", 4.0),
            rec("emmc", "q4_0", Some(GIB), "tg64", f64::NAN),
        ];
        let refs: Vec<&Record> = rs.iter().collect();
        let b = tps_vs_budget(&refs, TestKind::Decode);
        assert_eq!(b.labels(), vec!["1 GiB", "2 GiB", "unlimited"]);
        let nvme = b
            .lines
            .iter()
            .find(|l| l.name.starts_with("nvme"))
            .expect("line");
        assert_eq!(nvme.tps, vec![Some(2.0), Some(4.0), Some(10.0)]);
        let emmc = b
            .lines
            .iter()
            .find(|l| l.name.starts_with("emmc"))
            .expect("line");
        assert_eq!(emmc.tps, vec![None, None, None], "NaN is not a point");
    }

    #[test]
    fn labels_show_only_varying_fields() {
        let a = rec("emmc", "q4_0", Some(GIB), "tg64", 1.0);
        let mut b = rec("emmc", "q4_0", None, "tg64", 1.0);
        b.engine = PEER_ENGINE.into();
        let l = Labeler::new([&a, &b]);
        assert_eq!(l.scenario(&a), "emmc · q4_0 · 1 GiB");
        assert_eq!(l.series(&b), "q4_0 · llama.cpp");
        let single = Labeler::new([&a]);
        assert_eq!(single.scenario(&a), "emmc · q4_0");
    }

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

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 90.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
        assert_eq!(sorted_finite(&[2.0, f64::NAN, 1.0]), vec![1.0, 2.0]);
    }

    #[test]
    fn reuse_bins_are_powers_of_two_with_first_accesses_last() {
        let bins = reuse_bins(&[(1, 5), (2, 1), (3, 2), (9, 4), (u64::MAX, 7)]);
        let labels: Vec<&str> = bins.iter().map(|b| b.0.as_str()).collect();
        assert_eq!(labels, vec!["1", "2", "4", "8", "first"]);
        let counts: Vec<u64> = bins.iter().map(|b| b.1).collect();
        assert_eq!(counts, vec![5, 3, 0, 4, 7]);
        assert!(reuse_bins(&[]).is_empty());
        let wide = reuse_bins(&[(0, 1), (1500, 1), (3 << 20, 1)]);
        assert_eq!(wide.len(), 22);
        assert_eq!(wide[10].0, "1k");
        assert_eq!(wide[21].0, "2M");
    }

    #[test]
    fn machines_group_by_cpu_and_get_short_names() {
        let a = rec("emmc", "q4_0", None, "tg64", 1.0);
        let mut b = a.clone();
        b.cpu_model = "AMD EPYC 7B13 64-Core Processor".into();
        let all = [a.clone(), b, a];
        let g = by_machine(&all);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].records.len(), 2);
        assert_eq!(
            short_machine("Intel(R) Core(TM) i9-14900K CPU @ 3.20GHz"),
            "Intel Core i9-14900K"
        );
        assert_eq!(
            short_machine("AMD EPYC 7B13 64-Core Processor"),
            "AMD EPYC 7B13 64-Core"
        );
    }
}
