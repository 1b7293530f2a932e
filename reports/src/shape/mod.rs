//! Pure functions that shape records into what the charts and tables draw: groups by machine,
//! scenario labels, grouped bars, budget lines, deltas against a baseline or a peer, percentiles
//! and reuse-distance bins. No drawing here, so every rule is unit-testable on its own.

use std::collections::BTreeMap;

use crate::record::{Record, TestKind, budget_label};

mod deltas;
mod stats;

pub use deltas::{DeltaRow, MIN_NOISE_REL, NOISE_SIGMAS, baseline_deltas, peer_deltas};
pub use stats::{percentile, reuse_bins, sorted_finite};

/// Storage profiles in the order charts show them; unknown ones follow in first-seen order.
pub const STORAGE_ORDER: [&str; 6] = [
    "in-memory",
    "real",
    "nvme-gen4",
    "ufs-3.1",
    "sata-ssd",
    "emmc",
];

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

/// Decode before prefill in tables and delta charts: decode speed is the headline number.
pub fn kind_rank(kind: TestKind) -> u8 {
    match kind {
        TestKind::Decode => 0,
        TestKind::Prefill => 1,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::{OUR_ENGINE, PEER_ENGINE};

    /// A record with the fields that matter for shaping.
    pub fn rec(storage: &str, quant: &str, budget: Option<u64>, test: &str, tps: f64) -> Record {
        Record {
            schema: 1,
            run_id: "r".into(),
            commit: "c".into(),
            date: "2026-01-01T00:00:00Z".into(),
            cpu_model: "Test CPU".into(),
            simd: "avx2".into(),
            rustc: String::new(),
            kernel: String::new(),
            cgroup_limit_bytes: None,
            model_digest: None,
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
            emulation_excess: None,
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
