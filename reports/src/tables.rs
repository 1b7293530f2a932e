//! Tables of the report: machine and settings key/value lists, the all-results table, and the
//! delta tables next to the comparison charts.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::format::{self, MISSING};
use crate::record::{Machine, Record, UNFAITHFUL_EXCESS, budget_label};
use crate::shape::{self, DeltaRow};

/// One key/value line.
#[derive(Debug, Clone, Serialize)]
pub struct KeyValue {
    /// Name.
    pub key: String,
    /// Value.
    pub value: String,
}

fn kv(key: &str, value: impl Into<String>) -> KeyValue {
    let value = value.into();
    KeyValue {
        key: key.to_owned(),
        value: if value.is_empty() {
            MISSING.to_owned()
        } else {
            value
        },
    }
}

/// A table cell with an optional CSS class (`num`, `good`, `bad`, `muted`, `note`).
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Text (escaped by the template).
    pub text: String,
    /// CSS class.
    pub class: String,
}

impl Cell {
    fn text(t: impl Into<String>) -> Self {
        Cell {
            text: t.into(),
            class: String::new(),
        }
    }
    fn num(t: impl Into<String>) -> Self {
        Cell {
            text: t.into(),
            class: "num".into(),
        }
    }
    fn with(t: impl Into<String>, class: &str) -> Self {
        Cell {
            text: t.into(),
            class: class.into(),
        }
    }
}

/// A table: header cells and rows of cells.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Table {
    /// Header cells.
    pub headers: Vec<Cell>,
    /// Body rows.
    pub rows: Vec<Vec<Cell>>,
}

/// The machine table.
pub fn machine_table(m: &Machine) -> Vec<KeyValue> {
    vec![
        kv("CPU", m.cpu_model.clone()),
        kv(
            "Cores",
            if m.cores > 0 {
                m.cores.to_string()
            } else {
                String::new()
            },
        ),
        kv("SIMD", m.simd.clone()),
        kv(
            "Memory",
            if m.mem_total_bytes > 0 {
                format::bytes(m.mem_total_bytes as f64)
            } else {
                String::new()
            },
        ),
        kv("Kernel", m.kernel.clone()),
        kv("Disk", m.disk.clone().unwrap_or_default()),
        kv("Date", m.date.clone()),
        kv("Commit", m.commit.clone()),
    ]
}

/// Distinct values of `f` in first-seen order, joined.
fn distinct(records: &[Record], f: impl Fn(&Record) -> String) -> String {
    let mut seen: Vec<String> = Vec::new();
    for r in records {
        let v = f(r);
        if !v.is_empty() && !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen.join(", ")
}

/// The settings table: what the records cover.
pub fn settings_table(
    records: &[Record],
    n_profiles: usize,
    baseline: Option<&[Record]>,
) -> Vec<KeyValue> {
    let mut budgets: Vec<Option<u64>> = records.iter().map(|r| r.budget_bytes).collect();
    budgets.sort_by_key(|b| shape::budget_rank(*b));
    budgets.dedup();
    let mut storages: Vec<String> = records
        .iter()
        .map(|r| r.storage.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    storages.sort_by_key(|s| shape::storage_rank(s));
    let mem_sources = distinct(records, |r| r.mem_source.clone().unwrap_or_default());
    vec![
        kv("Records", records.len().to_string()),
        kv("Machines", shape::by_machine(records).len().to_string()),
        kv("Runs", distinct(records, |r| r.run_id.clone())),
        kv("Commits", distinct(records, |r| r.commit.clone())),
        kv("Engines", distinct(records, |r| r.engine.clone())),
        kv("Models", distinct(records, |r| r.model.clone())),
        kv(
            "Model digests",
            distinct(records, |r| {
                r.model_digest
                    .as_deref()
                    .map(|d| format!("{} {}", r.model, d.get(..19).unwrap_or(d)))
                    .unwrap_or_default()
            }),
        ),
        kv("Compilers", distinct(records, |r| r.rustc.clone())),
        kv("Kernels", distinct(records, |r| r.kernel.clone())),
        kv(
            "Cgroup limits",
            distinct(records, |r| {
                r.cgroup_limit_bytes
                    .map(|b| {
                        format!(
                            "{} ({})",
                            budget_label(r.budget_bytes),
                            format::bytes(b as f64)
                        )
                    })
                    .unwrap_or_default()
            }),
        ),
        kv("Quantisations", distinct(records, |r| r.quant.clone())),
        kv("Storage profiles", storages.join(", ")),
        kv(
            "Memory budgets",
            budgets
                .iter()
                .map(|b| budget_label(*b))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        kv("Tests", distinct(records, |r| r.test.clone())),
        kv("Threads", distinct(records, |r| r.threads.to_string())),
        kv(
            "Peak memory from",
            if mem_sources.is_empty() {
                "not measured".to_owned()
            } else {
                mem_sources
            },
        ),
        kv("Profiled scenarios", n_profiles.to_string()),
        kv(
            "Baseline",
            match baseline {
                Some(b) => format!("{} records", b.len()),
                None => "none".to_owned(),
            },
        ),
    ]
}

/// A distinct note from the records, numbered for footnote marks in the results table.
#[derive(Debug, Clone, Serialize)]
pub struct Note {
    /// Footnote number, from 1.
    pub index: usize,
    /// The note.
    pub text: String,
    /// Scenarios carrying it (`storage · quant · budget · test`), joined.
    pub scenarios: String,
}

/// The distinct notes of `records`, in first-seen order.
pub fn notes(records: &[Record]) -> Vec<Note> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in records {
        let Some(text) = r.note.as_deref().map(str::trim).filter(|n| !n.is_empty()) else {
            continue;
        };
        let scenario = format!(
            "{} · {} · {} · {}",
            r.storage,
            r.quant,
            r.budget_label(),
            r.test
        );
        match out.iter_mut().find(|(t, _)| t == text) {
            Some((_, s)) if !s.contains(&scenario) => s.push(scenario),
            Some(_) => {}
            None => out.push((text.to_owned(), vec![scenario])),
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, (text, s))| Note {
            index: i + 1,
            text,
            scenarios: s.join("; "),
        })
        .collect()
}

/// One column of the results table: header, numeric or not, and the cell text of a record.
struct Column {
    header: &'static str,
    numeric: bool,
    cell: fn(&Record) -> String,
}

fn share(v: Option<f64>) -> String {
    format::opt(v, format::pct)
}

fn ms(v: Option<f64>) -> String {
    format::opt(v, format::num)
}

const COLUMNS: &[Column] = &[
    Column {
        header: "engine",
        numeric: false,
        cell: |r| r.engine.clone(),
    },
    Column {
        header: "model",
        numeric: false,
        cell: |r| r.model.clone(),
    },
    Column {
        header: "quant",
        numeric: false,
        cell: |r| r.quant.clone(),
    },
    Column {
        header: "storage",
        numeric: false,
        cell: |r| match r.emulation_excess {
            Some(x) if x > UNFAITHFUL_EXCESS => format!("{} (not faithful)", r.storage),
            _ => r.storage.clone(),
        },
    },
    Column {
        header: "budget",
        numeric: true,
        cell: |r| r.budget_label(),
    },
    Column {
        header: "test",
        numeric: false,
        cell: |r| r.test.clone(),
    },
    Column {
        header: "threads",
        numeric: true,
        cell: |r| r.threads.to_string(),
    },
    Column {
        header: "t/s (mean ± sd)",
        numeric: true,
        cell: |r| format::mean_sd(r.mean_tps, r.sd_tps),
    },
    Column {
        header: "median",
        numeric: true,
        cell: |r| format::num(r.median_tps),
    },
    Column {
        header: "runs",
        numeric: true,
        cell: |r| r.samples_tps.len().to_string(),
    },
    Column {
        header: "peak memory",
        numeric: true,
        cell: |r| match (r.peak_mem_bytes, &r.mem_source) {
            (Some(b), Some(src)) => format!("{} ({src})", format::bytes(b as f64)),
            (Some(b), None) => format::bytes(b as f64),
            (None, _) => MISSING.to_owned(),
        },
    },
    Column {
        header: "hit rate",
        numeric: true,
        cell: |r| share(r.hit_rate),
    },
    Column {
        header: "Belady",
        numeric: true,
        cell: |r| share(r.belady_hit_rate),
    },
    Column {
        header: "overlap",
        numeric: true,
        cell: |r| share(r.overlap_ratio),
    },
    Column {
        header: "read / token",
        numeric: true,
        cell: |r| format::opt(r.bytes_read_per_token, format::bytes),
    },
    Column {
        header: "weights / token",
        numeric: true,
        cell: |r| format::opt(r.weight_bytes_per_token, format::bytes),
    },
    Column {
        header: "roofline",
        numeric: true,
        cell: |r| match r.roofline_tps {
            Some(roof) if roof > 0.0 => format!(
                "{} ({} t/s)",
                format::pct(r.mean_tps / roof),
                format::num(roof)
            ),
            _ => MISSING.to_owned(),
        },
    },
    Column {
        header: "bandwidth",
        numeric: true,
        cell: |r| format::opt(r.bandwidth_gbps, |g| format!("{} GB/s", format::num(g))),
    },
    Column {
        header: "sparsity",
        numeric: true,
        cell: |r| share(r.sparsity),
    },
    Column {
        header: "compute ms/tok",
        numeric: true,
        cell: |r| ms(r.compute_ms_per_token),
    },
    Column {
        header: "I/O ms/tok",
        numeric: true,
        cell: |r| ms(r.io_ms_per_token),
    },
    Column {
        header: "exposed I/O ms/tok",
        numeric: true,
        cell: |r| ms(r.exposed_io_ms_per_token),
    },
    Column {
        header: "real-storage excess",
        numeric: true,
        cell: |r| format::opt(r.emulation_excess, |x| format!("+{:.1}%", 100.0 * x)),
    },
    Column {
        header: "profile",
        numeric: false,
        cell: |r| r.profile_dir.clone().unwrap_or_else(|| MISSING.to_owned()),
    },
    Column {
        header: "note",
        numeric: false,
        cell: |r| r.note.clone().unwrap_or_else(|| MISSING.to_owned()),
    },
];

/// The results table of `records` (display order: test kind, storage, quantisation, budget) and
/// the names of the columns left out because no record has a value for them. A record's note
/// shows as a footnote mark (`[1]`) into `notes`.
pub fn results_table(records: &[&Record], notes: &[Note]) -> (Table, Vec<String>) {
    let mut rs: Vec<&Record> = records.to_vec();
    rs.sort_by_key(|r| {
        (
            shape::kind_rank(r.kind()),
            shape::storage_rank(&r.storage),
            r.model.clone(),
            r.quant.clone(),
            u64::MAX - shape::budget_rank(r.budget_bytes),
            r.test.clone(),
            r.is_peer(),
            r.engine.clone(),
        )
    });
    let note_mark = |r: &Record| {
        r.note
            .as_deref()
            .and_then(|n| notes.iter().find(|x| x.text == n.trim()))
            .map(|n| format!("[{}]", n.index))
            .unwrap_or_else(|| MISSING.to_owned())
    };
    let cells: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            COLUMNS
                .iter()
                .map(|c| {
                    if c.header == "note" {
                        note_mark(r)
                    } else {
                        (c.cell)(r)
                    }
                })
                .collect()
        })
        .collect();
    let keep: Vec<bool> = (0..COLUMNS.len())
        .map(|j| {
            cells
                .iter()
                .any(|row| row[j] != MISSING && !row[j].is_empty())
        })
        .collect();
    let dropped = COLUMNS
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|(c, _)| c.header.to_owned())
        .collect();
    let class = |c: &Column| if c.numeric { "num" } else { "" };
    let headers = COLUMNS
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(c, _)| Cell::with(c.header, class(c)))
        .collect();
    let rows = cells
        .into_iter()
        .map(|row| {
            row.into_iter()
                .zip(COLUMNS)
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|((text, c), _)| {
                    if c.header == "note" {
                        Cell::with(text, "note")
                    } else {
                        Cell::with(text, class(c))
                    }
                })
                .collect()
        })
        .collect();
    (Table { headers, rows }, dropped)
}

/// A delta table: scenario, reference and compared t/s, change and verdict.
pub fn delta_table(rows: &[DeltaRow], before: &str, after: &str) -> Table {
    let headers = vec![
        Cell::text("scenario"),
        Cell::num(format!("{before} t/s")),
        Cell::num(format!("{after} t/s")),
        Cell::num("change"),
        Cell::text("verdict"),
    ];
    let rows = rows
        .iter()
        .map(|d| {
            let class = match d.verdict() {
                "faster" => "good",
                "slower" => "bad",
                _ => "muted",
            };
            vec![
                Cell::text(d.label.clone()),
                Cell::num(format::mean_sd(d.before.0, d.before.1)),
                Cell::num(format::mean_sd(d.after.0, d.after.1)),
                Cell::with(format::delta_pct(d.rel), &format!("num {class}")),
                Cell::with(d.verdict(), &format!("{class} nowrap")),
            ]
        })
        .collect();
    Table { headers, rows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::tests::rec;

    #[test]
    fn results_table_drops_empty_columns() {
        let mut a = rec("emmc", "q4_0", Some(1 << 30), "tg64", 2.0);
        a.hit_rate = Some(0.75);
        a.note = Some("cgroup unavailable".into());
        let b = rec("in-memory", "q4_0", None, "pp128", 50.0);
        let all = [a.clone(), b.clone()];
        let notes = notes(&all);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].scenarios, "emmc · q4_0 · 1 GiB · tg64");
        let (t, dropped) = results_table(&[&a, &b], &notes);
        let headers: Vec<&str> = t.headers.iter().map(|h| h.text.as_str()).collect();
        assert!(headers.contains(&"hit rate") && headers.contains(&"note"));
        assert!(!headers.contains(&"Belady"));
        assert!(dropped.contains(&"Belady".to_owned()));
        assert_eq!(t.rows.len(), 2);
        assert_eq!(t.rows[0][3].text, "emmc", "decode first");
        let hit = headers
            .iter()
            .position(|h| *h == "hit rate")
            .expect("column");
        assert_eq!(t.rows[0][hit].text, "75.0%");
        assert_eq!(t.rows[1][hit].text, MISSING);
        let note = headers.iter().position(|h| *h == "note").expect("column");
        assert_eq!(t.rows[0][note].text, "[1]");
    }

    #[test]
    fn unfaithful_emulation_is_marked_and_its_excess_shown() {
        let mut slow = rec("nvme-gen4", "q4_0", Some(1 << 30), "tg32", 17.0);
        slow.emulation_excess = Some(4.62);
        let mut ok = rec("emmc", "q4_0", Some(1 << 30), "tg32", 3.0);
        ok.emulation_excess = Some(0.01);
        let (t, _) = results_table(&[&slow, &ok], &[]);
        let headers: Vec<&str> = t.headers.iter().map(|h| h.text.as_str()).collect();
        let col = |name: &str| headers.iter().position(|h| *h == name).expect(name);
        let row = |storage: &str| {
            t.rows
                .iter()
                .find(|r| r[col("storage")].text.starts_with(storage))
                .expect(storage)
        };
        assert_eq!(
            row("nvme-gen4")[col("storage")].text,
            "nvme-gen4 (not faithful)"
        );
        assert_eq!(row("nvme-gen4")[col("real-storage excess")].text, "+462.0%");
        assert_eq!(row("emmc")[col("storage")].text, "emmc");
        assert_eq!(row("emmc")[col("real-storage excess")].text, "+1.0%");
    }

    #[test]
    fn settings_list_budgets_in_order() {
        let rs = [
            rec("emmc", "q4_0", None, "tg64", 2.0),
            rec("emmc", "q4_0", Some(1 << 30), "tg64", 2.0),
        ];
        let s = settings_table(&rs, 0, None);
        let budgets = s.iter().find(|k| k.key == "Memory budgets").expect("row");
        assert_eq!(budgets.value, "1 GiB, unlimited");
        let mem = s.iter().find(|k| k.key == "Peak memory from").expect("row");
        assert_eq!(mem.value, "not measured");
    }

    #[test]
    fn machine_table_marks_unknowns() {
        let t = machine_table(&Machine::default());
        assert!(t.iter().all(|kv| kv.value == MISSING));
    }
}
