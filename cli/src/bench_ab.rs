//! `thinker bench --profiler ab`: the profiler layer's cost on decode, measured in one process
//! by switching the layer on and off between single decode steps (off, on, on, off, …).
//!
//! Alternating whole runs on a shared machine compares runs that met different loads; adjacent
//! decode steps meet the same load. The layer is installed globally behind a per-layer filter
//! that reads a flag, so "off" still asks that filter once per span (a few ns against the
//! ~0.5 µs of a recorded span): the measured difference is the layer's recording cost.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use bench_suite::measure::{self, AbSteps};
use bench_suite::record;
use engine::model::Model;
use profiler::ProfileLayer;
use tracing::subscriber::Interest;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::layer::SubscriberExt;

use crate::bench::Captured;

/// Whether the profile layer records (read by its filter at every span and event).
static RECORDING: AtomicBool = AtomicBool::new(false);

/// What to measure.
pub struct AbConfig<'a> {
    /// Decode lengths (`tgN`).
    pub n_gen: &'a [usize],
    /// Repetitions per test.
    pub reps: usize,
    /// Workload seed.
    pub seed: u64,
    /// JSON instead of Markdown.
    pub json: bool,
}

/// One test's outcome.
struct AbRow {
    test: String,
    steps_off: usize,
    steps_on: usize,
    median_ms_off: f64,
    median_ms_on: f64,
    /// Median over blocks of four adjacent steps of on time / off time.
    ratio_block_median: f64,
    /// Total on time / total off time.
    ratio_total: f64,
    /// What the layer recorded.
    captured: String,
}

fn median_ms(ns: &[u64]) -> f64 {
    let v: Vec<f64> = ns.iter().map(|&n| n as f64 / 1e6).collect();
    record::stats(&v).2
}

/// Runs the A/B tests and prints the outcome.
pub fn run(model: &Model, cfg: &AbConfig<'_>) -> Result<()> {
    let (layer, handle) = ProfileLayer::new();
    // Dynamic: a plain `filter_fn` caches its first answer per callsite (`Interest::never`
    // while the switch is off), which would record nothing.
    let filter = DynFilterFn::new(|_, _| RECORDING.load(Ordering::Relaxed))
        .with_callsite_filter(|_| Interest::sometimes());
    let layer = layer.with_filter(filter);
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
        .context("installing the profiler")?;
    let vocab = model.config.vocab_size;
    // Warm-up: page the weights in, spin the thread pool up, record once.
    measure::time_tg_ab(
        model,
        &measure::workload(vocab, 4, cfg.seed ^ 0xbeef),
        |on| RECORDING.store(on, Ordering::Relaxed),
    )?;
    drop(handle.take());
    let mut rows = Vec::new();
    for &n in cfg.n_gen.iter().filter(|&&n| n > 0) {
        let mut all = AbSteps::default();
        let mut blocks = Vec::new();
        let mut captured = Captured::default();
        for rep in 0..cfg.reps.max(1) {
            let toks = measure::workload(vocab, n, cfg.seed.wrapping_add(rep as u64));
            let steps =
                measure::time_tg_ab(model, &toks, |on| RECORDING.store(on, Ordering::Relaxed))?;
            blocks.extend(steps.block_ratios());
            all.off_ns.extend(&steps.off_ns);
            all.on_ns.extend(&steps.on_ns);
            captured.add(&handle.take());
            eprint!("\rtg{n} A/B rep {}/{}   ", rep + 1, cfg.reps);
        }
        if captured.spans == 0 {
            bail!("the profiler layer recorded nothing during the on steps");
        }
        let total = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
        rows.push(AbRow {
            test: format!("tg{n}"),
            steps_off: all.off_ns.len(),
            steps_on: all.on_ns.len(),
            median_ms_off: median_ms(&all.off_ns),
            median_ms_on: median_ms(&all.on_ns),
            ratio_block_median: record::stats(&blocks).2,
            ratio_total: total(&all.on_ns) / total(&all.off_ns),
            captured: captured.describe(),
        });
    }
    eprintln!();
    if cfg.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "test": r.test, "steps_off": r.steps_off, "steps_on": r.steps_on,
                    "median_ms_off": r.median_ms_off, "median_ms_on": r.median_ms_on,
                    "ratio_block_median": r.ratio_block_median, "ratio_total": r.ratio_total,
                    "captured": r.captured,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "| test | steps off / on | off ms/step (median) | on ms/step (median) | on/off (median of 4-step blocks) | on/off (mean step) |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &rows {
        println!(
            "| {} | {} / {} | {:.3} | {:.3} | {:.4} ({:+.2}%) | {:.4} ({:+.2}%) |",
            r.test,
            r.steps_off,
            r.steps_on,
            r.median_ms_off,
            r.median_ms_on,
            r.ratio_block_median,
            (r.ratio_block_median - 1.0) * 100.0,
            r.ratio_total,
            (r.ratio_total - 1.0) * 100.0
        );
    }
    for r in &rows {
        println!("\n{}: {}", r.test, r.captured);
    }
    Ok(())
}
