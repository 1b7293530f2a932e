//! Runs `thinker profile` and turns its artefacts (`metrics.json`, `trace.json`) into the
//! report's [`reports::ProfileData`]. Fields are read by name from the JSON, so the profiler's
//! and the report's types stay independent.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use reports::{HitCurve, KvPoint, ProfileData, Span, Stalls};
use serde_json::Value;

/// Spans of the timeline excerpt (the first tokens of the decode).
const TIMELINE_SPANS: usize = 4000;

/// The `thinker profile` command for `model` (32 prompt + 64 generated tokens; fewer with
/// `tiny`) writing into `dir`; callers add flags (a memory budget) and run it.
pub fn command(thinker: &Path, model: &Path, threads: usize, dir: &Path, tiny: bool) -> Command {
    let n_prompt = if tiny { 8 } else { 32 };
    let tokens: Vec<String> = (0..n_prompt)
        .map(|i| ((i * 7919 + 13) % 500).to_string())
        .collect();
    let mut cmd = Command::new(thinker);
    cmd.arg("profile")
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
        .arg(dir);
    cmd
}

/// The model's file name without extension, naming its profile.
pub fn model_name(model: &Path) -> String {
    model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Profiles `model` in memory (see [`command`]) into `dir`.
pub fn profile(
    thinker: &Path,
    model: &Path,
    threads: usize,
    dir: &Path,
    tiny: bool,
) -> Result<ProfileData> {
    let mut cmd = command(thinker, model, threads, dir, tiny);
    run(&mut cmd, dir, &model_name(model))
}

/// Runs a [`command`] (its output discarded) and reads the artefacts it wrote into `dir` as the
/// profile `name`.
pub fn run(cmd: &mut Command, dir: &Path, name: &str) -> Result<ProfileData> {
    let st = cmd
        .stdout(std::process::Stdio::null())
        .status()
        .context("running thinker profile")?;
    if !st.success() {
        bail!("thinker profile failed ({st})");
    }
    from_artefacts(dir, name)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// The profiler's `stalls` (ns over the decode steps) as ms per decoded token, labels in
/// words; `None` without decode tokens or without expert reads and waits.
fn stalls(st: &Value) -> Option<Stalls> {
    let tokens = st["tokens"].as_u64().filter(|&t| t > 0)? as f64;
    let per = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1e6 / tokens;
    if st["io_busy_ns"].as_u64().unwrap_or(0) == 0 && st["waits"].as_u64().unwrap_or(0) == 0 {
        return None;
    }
    let mut idle: Vec<(String, f64)> = st["storage_idle_ns"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    let label = match k.as_str() {
                        "compute.lm_head" => "LM head".to_string(),
                        "compute.experts" | "compute.expert" => "experts".to_string(),
                        "io.wait" => "waiting (no read in flight)".to_string(),
                        other => other.trim_start_matches("compute.").replace('_', " "),
                    };
                    (label, per(v))
                })
                .collect()
        })
        .unwrap_or_default();
    // One row per label (both expert spans are "experts"), largest first.
    idle.sort_by(|a, b| a.0.cmp(&b.0));
    idle.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 += b.1;
            true
        } else {
            false
        }
    });
    // Labels under 2% of the idle time go to "other".
    let total: f64 = idle.iter().map(|e| e.1).sum();
    let (mut idle, small): (Vec<_>, Vec<_>) = idle
        .into_iter()
        .partition(|e| e.0 != "other" && e.1 >= 0.02 * total);
    let rest: f64 = small.iter().map(|e| e.1).sum();
    idle.sort_by(|a, b| b.1.total_cmp(&a.1));
    if rest > 0.0 {
        idle.push(("other".to_string(), rest));
    }
    let waits = [
        ("being read", "wait_reading_ns"),
        ("being repacked", "wait_repacking_ns"),
        ("queued", "wait_queued_ns"),
        ("ready (hand-off)", "wait_after_ns"),
    ]
    .into_iter()
    .map(|(label, k)| (label.to_string(), per(&st[k])))
    .collect();
    Some(Stalls {
        ms_per_token: per(&st["wall_ns"]),
        storage_idle: idle,
        waits,
    })
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
    p.stalls = stalls(&m["stalls"]);
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

#[cfg(test)]
mod stall_tests {
    use super::*;

    #[test]
    fn stalls_become_ms_per_token_with_expert_spans_merged_and_small_labels_in_other() {
        let m = serde_json::json!({
            "tokens": 2, "wall_ns": 100_000_000u64, "io_busy_ns": 60_000_000u64, "waits": 3,
            "storage_idle_ns": {
                "compute.lm_head": 20_000_000u64,
                "compute.expert": 8_000_000u64,
                "compute.experts": 2_000_000u64,
                "io.wait": 9_000_000u64,
                "kv.append": 400_000u64,
                "other": 600_000u64
            },
            "wait_ns": 30_000_000u64,
            "wait_queued_ns": 1_000_000u64,
            "wait_reading_ns": 24_000_000u64,
            "wait_repacking_ns": 4_000_000u64,
            "wait_after_ns": 1_000_000u64
        });
        let st = stalls(&m).expect("offloaded");
        assert_eq!(st.ms_per_token, 50.0);
        let idle: Vec<(&str, f64)> = st
            .storage_idle
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(
            idle,
            vec![
                ("LM head", 10.0),
                ("experts", 5.0),
                ("waiting (no read in flight)", 4.5),
                ("other", 0.5),
            ]
        );
        let waits: Vec<f64> = st.waits.iter().map(|w| w.1).collect();
        assert_eq!(waits, vec![12.0, 2.0, 0.5, 0.5]);
        let in_memory = serde_json::json!({
            "tokens": 2, "wall_ns": 1u64, "io_busy_ns": 0u64, "waits": 0,
            "storage_idle_ns": {"compute.lm_head": 1u64}
        });
        assert!(stalls(&in_memory).is_none());
        assert!(stalls(&serde_json::json!({})).is_none());
    }
}
