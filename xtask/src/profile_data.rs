//! Runs `thinker profile` and turns its artefacts (`metrics.json`, `trace.json`) into the
//! report's [`reports::ProfileData`]. Fields are read by name from the JSON, so the profiler's
//! and the report's types stay independent.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use reports::{HitCurve, KvPoint, ProfileData, Span};
use serde_json::Value;

/// Spans of the timeline excerpt (the first tokens of the decode).
const TIMELINE_SPANS: usize = 4000;

/// Profiles `model` (32 prompt + 64 generated tokens; fewer with `tiny`) into `dir`.
pub fn profile(
    thinker: &Path,
    model: &Path,
    threads: usize,
    dir: &Path,
    tiny: bool,
) -> Result<ProfileData> {
    let n_prompt = if tiny { 8 } else { 32 };
    let tokens: Vec<String> = (0..n_prompt)
        .map(|i| ((i * 7919 + 13) % 500).to_string())
        .collect();
    let st = Command::new(thinker)
        .arg("profile")
        .arg("-m")
        .arg(model)
        .args([
            "-t",
            &threads.to_string(),
            "--tokens",
            &tokens.join(","),
            "-n",
        ])
        .arg(if tiny { "16" } else { "64" })
        .arg("--out")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running thinker profile")?;
    if !st.success() {
        bail!("thinker profile failed");
    }
    let name = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    from_artefacts(dir, &name)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Reads a profiler artefact directory.
pub fn from_artefacts(dir: &Path, name: &str) -> Result<ProfileData> {
    let read = |f: &str| -> Result<Value> {
        let p = dir.join(f);
        serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))
    };
    let m = read("metrics.json")?;
    let mut p = ProfileData {
        name: name.to_string(),
        ..ProfileData::default()
    };
    if let Some(layers) = m.pointer("/routing/popularity").and_then(Value::as_array) {
        for l in layers {
            let counts: Vec<f64> = l["counts"]
                .as_array()
                .map(|c| c.iter().map(f).collect())
                .unwrap_or_default();
            let total: f64 = counts.iter().sum();
            p.popularity.push(
                counts
                    .iter()
                    .map(|c| if total > 0.0 { c / total } else { 0.0 })
                    .collect(),
            );
        }
    }
    if let Some(h) = m
        .pointer("/routing/reuse/token_gap")
        .and_then(Value::as_object)
    {
        p.reuse_distance_hist = h
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
            .collect();
    }
    if let Some(curves) = m["cache_curves"].as_array() {
        for c in curves {
            let mode = c["mode"].as_str().unwrap_or("").to_lowercase();
            let mut by_policy: std::collections::BTreeMap<String, Vec<(f64, f64)>> =
                Default::default();
            for pt in c["points"].as_array().into_iter().flatten() {
                let pol = pt["policy"].as_str().unwrap_or("?").to_string();
                by_policy
                    .entry(pol)
                    .or_default()
                    .push((f(&pt["capacity"]), f(&pt["hit_ratio"])));
            }
            for (pol, points) in by_policy {
                p.hit_curves.push(HitCurve {
                    policy: format!("{pol} ({mode})"),
                    points,
                });
            }
        }
    }
    if let Some(kv) = m["kv"].as_array() {
        for s in kv {
            p.kv.push(KvPoint {
                context: s["context_len"].as_u64().unwrap_or(0),
                hybrid_bytes: s["total_bytes"].as_u64().unwrap_or(0),
                all_global_bytes: s["all_global_baseline_bytes"].as_u64().unwrap_or(0),
            });
        }
    }
    if let Some(steps) = m
        .pointer("/latency/decode_step_ns")
        .and_then(Value::as_array)
    {
        p.latency_ms = steps.iter().map(|v| f(v) / 1e6).collect();
    }
    if let Some(layers) = m.pointer("/sparsity/layers").and_then(Value::as_array) {
        p.sparsity_per_layer = layers.iter().map(|l| f(&l["zero_share"])).collect();
    }
    // Timeline excerpt from the Chrome trace: complete events, thread names from metadata.
    if let Ok(trace) = read("trace.json") {
        let events = trace["traceEvents"].as_array().cloned().unwrap_or_default();
        let mut names = std::collections::HashMap::new();
        for e in &events {
            if e["ph"] == "M" && e["name"] == "thread_name" {
                names.insert(
                    e["tid"].as_u64().unwrap_or(0),
                    e["args"]["name"].as_str().unwrap_or("").to_string(),
                );
            }
        }
        let mut spans: Vec<Span> = events
            .iter()
            .filter(|e| e["ph"] == "X")
            .map(|e| Span {
                thread: names
                    .get(&e["tid"].as_u64().unwrap_or(0))
                    .cloned()
                    .unwrap_or_else(|| format!("tid {}", e["tid"])),
                name: e["name"].as_str().unwrap_or("").to_string(),
                start_us: f(&e["ts"]),
                dur_us: f(&e["dur"]),
            })
            .collect();
        spans.sort_by(|a, b| a.start_us.total_cmp(&b.start_us));
        // Skip the prefill: start at the second forward span (the first decode step).
        let forwards: Vec<f64> = spans
            .iter()
            .filter(|s| s.name == "forward")
            .map(|s| s.start_us)
            .collect();
        let from = forwards.get(1).copied().unwrap_or(0.0);
        let to = forwards.get(4).copied().unwrap_or(f64::INFINITY);
        p.timeline = spans
            .into_iter()
            .filter(|s| s.start_us >= from && s.start_us < to)
            .take(TIMELINE_SPANS)
            .collect();
    }
    Ok(p)
}
