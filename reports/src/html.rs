//! Assembles the report page (sections of charts and tables) and writes it as one
//! self-contained `index.html`: inline CSS and SVG, no scripts, no network, written atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use minijinja::Environment;
use serde::Serialize;

use crate::charts::{self, Chart, ChartBody};
use crate::error::{Error, Result};
use crate::profile::ProfileData;
use crate::record::{Machine, Record, TestKind};
use crate::shape;
use crate::tables::{self, KeyValue, Table};

/// The page template (see `templates/report.html`).
const TEMPLATE: &str = include_str!("../templates/report.html");
/// The page styles, inlined into the `<style>` element.
const CSS: &str = include_str!("../templates/report.css");
/// Name of the written page.
pub const INDEX: &str = "index.html";

/// Everything the template shows.
#[derive(Debug, Serialize)]
pub struct Page {
    title: String,
    subtitle: String,
    css: &'static str,
    toc: Vec<TocEntry>,
    machine: Vec<KeyValue>,
    settings: Vec<KeyValue>,
    notes: Vec<tables::Note>,
    machine_sections: Vec<Section>,
    cross_machine: Option<Chart>,
    comparisons: Vec<Comparison>,
    profile_sections: Vec<Section>,
    results: Vec<ResultsGroup>,
    footer: String,
}

#[derive(Debug, Serialize)]
struct TocEntry {
    id: String,
    title: String,
}

/// A titled group of charts.
#[derive(Debug, Serialize)]
struct Section {
    id: String,
    title: String,
    subtitle: String,
    charts: Vec<Chart>,
}

/// A delta table next to its chart.
#[derive(Debug, Serialize)]
struct Comparison {
    id: String,
    title: String,
    table: Table,
    chart: Chart,
}

/// The results of one machine.
#[derive(Debug, Serialize)]
struct ResultsGroup {
    heading: String,
    table: Table,
    dropped: String,
}

/// Builds the page model from the report inputs.
pub fn page(
    machine: &Machine,
    records: &[Record],
    profiles: &[ProfileData],
    baseline: Option<&[Record]>,
) -> Page {
    let groups = shape::by_machine(records);
    let several = groups.len() > 1;
    let mut toc = vec![TocEntry {
        id: "setup".into(),
        title: "Machine & settings".into(),
    }];

    let mut machine_sections = Vec::new();
    if groups.is_empty() {
        machine_sections.push(machine_section("m1", "Throughput", String::new(), &[]));
    }
    for (i, g) in groups.iter().enumerate() {
        let id = format!("m{}", i + 1);
        let (title, subtitle) = if several {
            (
                format!("Machine {}: {}", i + 1, shape::short_machine(&g.cpu_model)),
                machine_subtitle(&g.records),
            )
        } else {
            ("Throughput".to_owned(), machine_subtitle(&g.records))
        };
        machine_sections.push(machine_section(&id, &title, subtitle, &g.records));
    }
    toc.extend(machine_sections.iter().map(|s| TocEntry {
        id: s.id.clone(),
        title: s.title.clone(),
    }));

    let cross_machine = several.then(|| charts::bars::across_machines("x-machines", records));
    if cross_machine.is_some() {
        toc.push(TocEntry {
            id: "machines".into(),
            title: "Across machines".into(),
        });
    }

    let (base_rows, base_chart) =
        charts::deltas::against_baseline("cmp-baseline-chart", records, baseline);
    let (peer_rows, peer_chart) = charts::deltas::against_peer("cmp-peer-chart", records);
    let comparisons = vec![
        comparison(
            "cmp-baseline",
            "This run against the baseline",
            &base_rows,
            base_chart,
            "baseline",
            "this run",
        ),
        comparison(
            "cmp-peer",
            "smallthinker-rs against llama.cpp",
            &peer_rows,
            peer_chart,
            "llama.cpp",
            "ours",
        ),
    ];
    toc.push(TocEntry {
        id: "comparisons".into(),
        title: "Comparisons".into(),
    });

    let profile_sections = profile_sections(profiles);
    toc.extend(profile_sections.iter().map(|s| TocEntry {
        id: s.id.clone(),
        title: s.title.clone(),
    }));

    let notes = tables::notes(records);
    let results: Vec<ResultsGroup> = groups
        .iter()
        .map(|g| {
            let (table, dropped) = tables::results_table(&g.records, &notes);
            ResultsGroup {
                heading: if several {
                    g.cpu_model.clone()
                } else {
                    String::new()
                },
                table,
                dropped: dropped.join(", "),
            }
        })
        .collect();
    toc.push(TocEntry {
        id: "results".into(),
        title: "All results".into(),
    });

    Page {
        title: "smallthinker-rs benchmark report".into(),
        subtitle: format!(
            "{} records{}{} · generated {} · readable without JavaScript",
            records.len(),
            if several {
                format!(" from {} machines", groups.len())
            } else {
                String::new()
            },
            if machine.commit.is_empty() {
                String::new()
            } else {
                format!(" · commit {}", machine.commit)
            },
            if machine.date.is_empty() {
                "without a date"
            } else {
                &machine.date
            },
        ),
        css: CSS,
        toc,
        machine: tables::machine_table(machine),
        settings: tables::settings_table(records, profiles.len(), baseline),
        notes,
        machine_sections,
        cross_machine,
        comparisons,
        profile_sections,
        results,
        footer:
            "Written by the reports crate of smallthinker-rs; charts drawn with plotters as inline \
                 SVG. Rebuild from the records with `cargo xtask report RESULTS...`."
                .into(),
    }
}

fn machine_subtitle(records: &[&Record]) -> String {
    let Some(first) = records.first() else {
        return String::new();
    };
    let mut threads: Vec<u32> = records.iter().map(|r| r.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let threads = threads
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("/");
    format!("{} · {} · {threads} threads", first.cpu_model, first.simd)
}

fn machine_section(id: &str, title: &str, subtitle: String, records: &[&Record]) -> Section {
    let c = |name: &str| format!("{id}-{name}");
    Section {
        id: id.to_owned(),
        title: title.to_owned(),
        subtitle,
        charts: vec![
            charts::bars::tps_by_storage(&c("decode"), records, TestKind::Decode),
            charts::bars::tps_by_storage(&c("prefill"), records, TestKind::Prefill),
            charts::budget::tps_vs_budget(&c("budget"), records),
            charts::hbars::roofline_share(&c("roofline"), records),
            charts::hbars::bytes_per_token(&c("bytes"), records),
            charts::hbars::io_vs_compute(&c("io"), records),
        ],
    }
}

fn comparison(
    id: &str,
    title: &str,
    rows: &[shape::DeltaRow],
    chart: Chart,
    before: &str,
    after: &str,
) -> Comparison {
    Comparison {
        id: id.to_owned(),
        title: title.to_owned(),
        table: tables::delta_table(rows, before, after),
        chart,
    }
}

fn profile_charts(id: &str, p: &ProfileData) -> Vec<Chart> {
    let c = |name: &str| format!("{id}-{name}");
    vec![
        charts::timeline::timeline(&c("timeline"), &p.timeline),
        charts::popularity::popularity(&c("popularity"), &p.popularity),
        charts::reuse::reuse_distance(&c("reuse"), &p.reuse_distance_hist),
        charts::hit_curves::hit_curves(&c("hits"), &p.hit_curves),
        charts::kv::kv_memory(&c("kv"), &p.kv),
        charts::latency::latency(&c("latency"), &p.latency_ms),
        charts::popularity::sparsity(&c("sparsity"), &p.sparsity_per_layer),
        charts::stalls::why_it_waits(&c("stalls"), p.stalls.as_ref()),
    ]
}

fn profile_sections(profiles: &[ProfileData]) -> Vec<Section> {
    if profiles.is_empty() {
        let mut charts = profile_charts("p1", &ProfileData::default());
        for c in &mut charts {
            c.body = ChartBody::Missing(
                "Not measured in this run (no scenario was profiled; run the bench with profiling on).".into(),
            );
        }
        return vec![Section {
            id: "p1".into(),
            title: "Profile".into(),
            subtitle: "no profile data".into(),
            charts,
        }];
    }
    profiles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = format!("p{}", i + 1);
            Section {
                charts: profile_charts(&id, p),
                id,
                title: if profiles.len() > 1 {
                    format!("Profile {}", i + 1)
                } else {
                    "Profile".into()
                },
                subtitle: p.name.clone(),
            }
        })
        .collect()
}

/// Renders the page model to HTML.
pub fn render(page: &Page) -> Result<String> {
    let mut env = Environment::new();
    env.add_template("report.html", TEMPLATE)?;
    let ctx = minijinja::Value::from(minijinja::value::Serde(page));
    Ok(env.get_template("report.html")?.render(ctx)?)
}

/// Writes `html` to `out_dir/index.html` atomically: a temporary file in the same directory,
/// fsynced, renamed over the target, then the directory fsynced.
pub fn write_atomic(out_dir: &Path, html: &str) -> Result<PathBuf> {
    fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let target = out_dir.join(INDEX);
    let mut tmp = tempfile::Builder::new()
        .prefix(".index-")
        .suffix(".html.tmp")
        .tempfile_in(out_dir)
        .map_err(|e| Error::io(out_dir, e))?;
    tmp.write_all(html.as_bytes())
        .map_err(|e| Error::io(tmp.path(), e))?;
    // Temporary files are private (0600); a report is for reading.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(tmp.path(), e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(&target)
        .map_err(|e| Error::io(&target, e.error))?;
    // Make the rename durable; not every filesystem supports fsync on a directory.
    if let Ok(dir) = fs::File::open(out_dir) {
        let _ = dir.sync_all();
    }
    Ok(target)
}
