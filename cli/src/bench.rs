//! `thinker bench`: llama-bench-style `ppN` / `tgN` measurements with result records.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bench_suite::machine::{
    Machine, cgroup_memory_limit, model_digest, now_rfc3339, peak_rss_bytes,
};
use bench_suite::measure::{self, BenchConfig};
use bench_suite::record::{self, Record, SCHEMA};

use tracing_subscriber::layer::SubscriberExt;

use crate::args::{ModelArgs, human_bytes};

/// `thinker bench` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt lengths, comma-separated (`ppN` tests; 0 for none).
    #[arg(
        short = 'p',
        long = "n-prompt",
        default_value = "128",
        value_delimiter = ','
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths, comma-separated (`tgN` tests; 0 for none).
    #[arg(
        short = 'n',
        long = "n-gen",
        default_value = "64",
        value_delimiter = ','
    )]
    n_gen: Vec<usize>,
    /// Repetitions per test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    reps: usize,
    /// Output format on stdout: a markdown table, CSV (one row per test), a JSON array or JSON
    /// lines (records with llama-bench's field names where it has one).
    #[arg(short = 'o', long = "output", default_value = "md", value_parser = ["md", "csv", "json", "jsonl"])]
    output: String,
    /// Append records to this JSONL file as well.
    #[arg(long)]
    append: Option<PathBuf>,
    /// Measure memory bandwidth (this many MiB, after the tests) for roofline figures; 0: skip.
    #[arg(long, default_value_t = 512)]
    bandwidth_mib: usize,
    /// Model label in records (default: file stem).
    #[arg(long)]
    label: Option<String>,
    /// Quantisation label in records (default: from the weights).
    #[arg(long)]
    quant: Option<String>,
    /// Run identifier in records.
    #[arg(long, default_value = "")]
    run_id: String,
    /// Workload seed.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Measure with the profiler's tracing layer installed (as `thinker profile` installs it).
    /// `on`: for the whole run (compare with a run without the flag). `ab`: behind a switch
    /// flipped between single decode steps (off, on, on, off, …), tg tests only; prints both
    /// sides' step times and their ratio. What the layer records is drained after every
    /// repetition, outside the timing, and only counted.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "on",
          value_parser = ["on", "ab"])]
    profiler: Option<String>,
}

/// What the profiler layer recorded during `--profiler` runs, per test.
#[derive(Default)]
pub(crate) struct Captured {
    forward_steps: usize,
    pub(crate) spans: usize,
    events: usize,
}

impl Captured {
    pub(crate) fn add(&mut self, rec: &profiler::Recording) {
        self.forward_steps += rec.spans_named("forward").count();
        self.spans += rec.spans.len();
        self.events += rec.events.len();
    }

    /// For the record's note.
    pub(crate) fn describe(&self) -> String {
        let per = |n: usize| n as f64 / self.forward_steps.max(1) as f64;
        format!(
            "profiler layer on: {:.0} spans + {:.0} events per forward step recorded",
            per(self.spans),
            per(self.events)
        )
    }
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    if a.reps == 0 {
        bail!("repetitions must be at least 1");
    }
    // Sessions hold one test's tokens (warm-up: 8); prompts run as one batch.
    let longest = a
        .n_prompt
        .iter()
        .chain(&a.n_gen)
        .copied()
        .max()
        .unwrap_or(0)
        .max(8);
    let max_batch = a.n_prompt.iter().copied().max().unwrap_or(0).max(8);
    let offload = a.model.offload_options(longest, max_batch).map(|mut o| {
        o.record_trace = true;
        o
    });
    // Before the model is loaded: detection runs child processes (git) and the digest reads the
    // model's header, which should not add to the memory measured under a budget (the load
    // drops the header's pages from the page cache).
    let machine = Machine::detect();
    let cgroup_limit = cgroup_memory_limit();
    let digest = model_digest(&a.model.model);
    let model = a.model.load_with(offload)?;
    let cfg = BenchConfig {
        n_prompt: a.n_prompt.clone(),
        n_gen: a.n_gen.clone(),
        reps: a.reps,
        seed: a.seed,
    };
    if a.profiler.as_deref() == Some("ab") {
        let cfg = crate::bench_ab::AbConfig {
            n_gen: &a.n_gen,
            reps: a.reps,
            seed: a.seed,
            json: a.output != "md",
        };
        return crate::bench_ab::run(&model, &cfg);
    }
    let handle = if a.profiler.is_some() {
        let (layer, handle) = profiler::ProfileLayer::new();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .context("installing the profiler")?;
        Some(handle)
    } else {
        None
    };
    let mut captured: HashMap<String, Captured> = HashMap::new();
    let results = measure::run(&model, &cfg, |name, rep| {
        // Called between repetitions, outside the timed region. The first drain also holds
        // the warm-up's steps; counts are per forward step, so that does not skew them.
        if let Some(h) = &handle {
            captured.entry(name.to_string()).or_default().add(&h.take());
        }
        eprint!("\r{name} rep {}/{}   ", rep + 1, a.reps);
    })?;
    eprintln!();
    let wb = model
        .weights
        .bytes(model.config.tied_embeddings, model.config.n_experts_used);
    // Peak RSS of the model run, before the bandwidth probe allocates its buffer.
    let peak = peak_rss_bytes();
    let label = a.label.clone().unwrap_or_else(|| {
        a.model
            .model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let quant = a
        .quant
        .clone()
        .unwrap_or_else(|| model.weights.quant_label());
    let off = model.offload();
    let storage = off.map_or_else(
        || "in-memory".to_string(),
        |o| o.options().storage.name().to_string(),
    );
    let note = match off {
        None => format!("mode {:?}", model.mode()),
        Some(o) => {
            let p = o.options();
            format!(
                "mode {:?}; offload: {} cache slots ({:.0}% of experts), policy {}, scope {:?}, prefetch {}, speculation {}, {} I/O threads, {}",
                model.mode(),
                o.plan().cache_slots,
                100.0 * o.plan().cache_fraction(),
                p.policy,
                p.scope,
                if p.prefetch { "on" } else { "off" },
                if p.speculative { "on" } else { "off" },
                p.io_threads,
                o.io_mode()
            )
        }
    };
    let threads = model.threads();
    let mode = model.mode();
    let offloaded = off.is_some();
    let budget_bytes = off.map(|o| o.options().budget.bytes());
    // The probe's buffer comes after the model is gone: under a memory budget the model holds
    // the whole budget, and the probe on top of it would break the budget (and, in a cgroup
    // sized to it, get the process killed after the tests).
    drop(model);
    let bw = if a.bandwidth_mib > 0 {
        Some(bench_suite::membw::read_bandwidth(
            a.bandwidth_mib << 20,
            threads,
            5,
        )?)
    } else {
        None
    };
    let mut records = Vec::new();
    for r in &results {
        let (mean, sd, median) = record::stats(&r.samples_tps);
        let (samples_ns, avg_ns, stddev_ns) =
            record::ns_fields(&r.samples_tps, (r.n_prompt + r.n_gen) as u32);
        let per_token = wb.per_token() as f64;
        let opt = r.offload_per_token();
        records.push(Record {
            schema: SCHEMA,
            run_id: a.run_id.clone(),
            commit: machine.commit.clone(),
            date: now_rfc3339(),
            cpu_model: machine.cpu_model.clone(),
            simd: machine.simd.clone(),
            rustc: machine.rustc.clone(),
            kernel: machine.kernel.clone(),
            cgroup_limit_bytes: cgroup_limit,
            model_digest: digest.clone(),
            threads: threads as u32,
            engine: "smallthinker-rs".into(),
            model: label.clone(),
            model_size: Some(wb.total),
            model_n_params: Some(wb.params),
            quant: quant.clone(),
            storage: storage.clone(),
            budget_bytes,
            hit_rate: opt.map(|o| o.hit_rate),
            ready_rate: opt.map(|o| o.ready_rate),
            belady_hit_rate: r.belady_hit_rate,
            overlap_ratio: opt.and_then(|o| o.overlap),
            bytes_read_per_token: opt.map(|o| o.bytes_read),
            io_ms_per_token: opt.map(|o| o.io_ms),
            exposed_io_ms_per_token: opt.map(|o| o.exposed_io_ms),
            emulation_excess: opt.and_then(|o| o.emulation_excess),
            compute_ms_per_token: opt.and_then(|o| o.compute_ms),
            test: r.test.clone(),
            n_prompt: r.n_prompt as u32,
            n_gen: r.n_gen as u32,
            samples_tps: r.samples_tps.clone(),
            mean_tps: mean,
            sd_tps: sd,
            samples_ns,
            avg_ns,
            stddev_ns,
            median_tps: median,
            peak_mem_bytes: peak,
            mem_source: peak.map(|_| "rss".into()),
            weight_bytes_per_token: (r.n_gen > 0).then_some(per_token),
            roofline_tps: bw.filter(|_| r.n_gen > 0).map(|b| b / per_token),
            bandwidth_gbps: bw.map(|b| b / 1e9),
            sparsity: r.sparsity,
            note: Some({
                let mut n = note.clone();
                if let Some(d) = r.offload.as_ref().and_then(|o| o.stats.device) {
                    n.push_str(&format!("; {d}"));
                    if d.unfaithful() {
                        eprintln!("warning: {}: storage emulation not faithful: {d}", r.test);
                    }
                }
                if let Some(c) = captured.get(&r.test) {
                    n.push_str(&format!("; {}", c.describe()));
                }
                n
            }),
            ..Record::default()
        });
    }
    match a.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&records)?),
        "csv" => print!("{}", to_csv(&records)?),
        "jsonl" => {
            for r in &records {
                println!("{}", serde_json::to_string(r)?);
            }
        }
        _ => {
            println!(
                "| model | size | params | quant | threads | mode | test | t/s | roofline share |\n| --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: |"
            );
            for r in &records {
                let share = r
                    .roofline_tps
                    .map(|rt| format!("{:.0}%", 100.0 * r.median_tps / rt))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "| {} | {} | {} | {} | {} | {:?} | {} | {:.2} ± {:.2} | {} |",
                    r.model,
                    human_bytes(wb.total),
                    human_params(wb.params),
                    r.quant,
                    r.threads,
                    mode,
                    r.test,
                    r.mean_tps,
                    r.sd_tps,
                    share
                );
            }
            for r in &records {
                if let Some(c) = captured.get(&r.test) {
                    println!("\n{}: {}", r.test, c.describe());
                }
            }
            if offloaded {
                println!(
                    "\n| test | hit rate | Belady | ready | MiB read/token | I/O ms/token | exposed ms/token | compute ms/token | overlap | real-storage excess |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
                );
                for r in &records {
                    let pct = |v: Option<f64>| {
                        v.map_or_else(|| "-".to_string(), |x| format!("{:.1}%", 100.0 * x))
                    };
                    let num = |v: Option<f64>, scale: f64| {
                        v.map_or_else(|| "-".to_string(), |x| format!("{:.2}", x * scale))
                    };
                    println!(
                        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        r.test,
                        pct(r.hit_rate),
                        pct(r.belady_hit_rate),
                        pct(r.ready_rate),
                        num(r.bytes_read_per_token, 1.0 / f64::from(1 << 20)),
                        num(r.io_ms_per_token, 1.0),
                        num(r.exposed_io_ms_per_token, 1.0),
                        num(r.compute_ms_per_token, 1.0),
                        pct(r.overlap_ratio),
                        r.emulation_excess
                            .map_or_else(|| "-".to_string(), |x| format!("+{:.1}%", 100.0 * x))
                    );
                }
                println!("\n{note}");
            }
            if let Some(b) = bw {
                println!(
                    "\nmemory bandwidth {:.1} GB/s; a decode step reads {} of weights → roofline {:.1} t/s",
                    b / 1e9,
                    human_bytes(wb.per_token()),
                    b / wb.per_token() as f64
                );
            }
        }
    }
    if let Some(path) = &a.append {
        for r in &records {
            record::append(path, r)?;
        }
    }
    Ok(())
}

/// A parameter count as llama-bench prints it (`4.27 B`, `596.05 M`).
fn human_params(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2} M", n / 1e6)
    } else {
        format!("{:.2} K", n / 1e3)
    }
}

/// llama-bench's leading CSV columns, in its order; ours follow by name.
const CSV_LEAD: [&str; 16] = [
    "build_commit",
    "cpu_info",
    "model",
    "model_size",
    "model_n_params",
    "quant",
    "n_threads",
    "test",
    "n_prompt",
    "n_gen",
    "avg_ns",
    "stddev_ns",
    "avg_ts",
    "stddev_ts",
    "samples_ns",
    "samples_ts",
];

/// The records as CSV: a header row of the JSON field names (llama-bench's first), then one
/// row per test. Lists (`samples_ts`, `samples_ns`) are one field of `;`-separated values;
/// absent values are empty. No records, no output.
fn to_csv(records: &[Record]) -> Result<String> {
    let fields = |r: &Record| -> Result<serde_json::Map<String, serde_json::Value>> {
        match serde_json::to_value(r)? {
            serde_json::Value::Object(f) => Ok(f),
            _ => bail!("a record did not serialise to an object"),
        }
    };
    if records.is_empty() {
        return Ok(String::new());
    }
    // Every record has the same fields.
    let mut header: Vec<String> = CSV_LEAD.iter().map(|k| k.to_string()).collect();
    header.extend(
        fields(&Record::default())?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| !CSV_LEAD.contains(&k.as_str())),
    );
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(";"),
        other => other.to_string(),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&header)?;
    for r in records {
        let f = fields(r)?;
        w.write_record(
            header
                .iter()
                .map(|k| f.get(k).map(cell).unwrap_or_default()),
        )?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_read_like_llama_bench() {
        assert_eq!(human_params(4_270_000_000), "4.27 B");
        assert_eq!(human_params(596_050_000), "596.05 M");
        assert_eq!(human_params(12_345), "12.35 K");
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_test_with_llama_bench_names() {
        let rec = |test: &str, n_gen: u32| Record {
            test: test.into(),
            n_gen,
            model: "m, with a comma".into(),
            samples_tps: vec![10.0, 12.5],
            mean_tps: 11.25,
            threads: 2,
            ..Record::default()
        };
        let text = to_csv(&[rec("tg64", 64), rec("tg128", 128)]).unwrap();
        let mut rd = csv::Reader::from_reader(text.as_bytes());
        let h = rd.headers().unwrap().clone();
        let col = |name: &str| {
            h.iter()
                .position(|x| x == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        let rows: Vec<csv::StringRecord> = rd.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[1][col("test")], "tg128");
        assert_eq!(&rows[0][col("model")], "m, with a comma");
        assert_eq!(&rows[0][col("n_threads")], "2");
        assert_eq!(&rows[0][col("avg_ts")], "11.25");
        assert_eq!(&rows[0][col("samples_ts")], "10.0;12.5");
        assert_eq!(&rows[0][col("budget_bytes")], "");
        assert_eq!(&h[0], "build_commit");
        assert_eq!(
            h.len(),
            serde_json::to_value(Record::default())
                .unwrap()
                .as_object()
                .unwrap()
                .len()
        );
    }
}
