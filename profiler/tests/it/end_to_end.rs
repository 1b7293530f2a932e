//! The synthetic run through capture, analyses and artefacts.

use std::collections::{HashMap, HashSet};
use std::fs;

use profiler::{AnalysisConfig, Metrics, RoutingTrace, Summary, write_artefacts};
use serde_json::Value;

use crate::synthetic::{self, DECODE, EXPERT_BYTES, N_LAYERS, PREFILL};

/// Lines the one-screen summary may take.
const MAX_SUMMARY_LINES: usize = 24;

#[test]
fn synthetic_run_produces_consistent_artefacts() {
    let rec = synthetic::run();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = write_artefacts(dir.path(), &rec, &AnalysisConfig::default()).expect("artefacts");
    let m = &out.metrics;

    // Threads: compute thread plus two named I/O threads, reads only on I/O threads.
    assert_eq!(rec.threads.len(), 3);
    let io_tids: HashSet<u32> = rec
        .threads
        .iter()
        .filter(|t| t.name.starts_with("io-"))
        .map(|t| t.tid)
        .collect();
    assert_eq!(io_tids.len(), 2);
    assert!(
        rec.spans_named("io.expert_read")
            .all(|s| io_tids.contains(&s.tid))
    );
    assert!(
        rec.spans_named("compute.attention")
            .all(|s| !io_tids.contains(&s.tid))
    );

    // Overlap: reads were issued before attention, so part is hidden, part waited for.
    let steps = 1 + DECODE as usize;
    assert_eq!(m.overlap.steps.len(), steps);
    let n_reads = steps as u64 * N_LAYERS * 2;
    assert_eq!(m.overlap.total.n_reads, n_reads);
    assert_eq!(m.overlap.total.bytes_read, n_reads * EXPERT_BYTES);
    assert_eq!(m.overlap.total.cache_misses, n_reads);
    let t = &m.overlap.total;
    assert!(t.io_hidden_ns > 0 && t.io_exposed_ns > 0, "{t:?}");
    assert!(t.io_hidden_ns <= t.io_busy_ns);
    let ratio = t.overlap_ratio.expect("ratio");
    assert!(ratio > 0.0 && ratio <= 1.0);
    for s in &m.overlap.steps {
        assert_eq!(
            s.window.n_reads,
            N_LAYERS * 2,
            "reads attributed to their step"
        );
    }

    // Latency.
    assert_eq!(m.latency.n_prefill_tokens, PREFILL);
    assert_eq!(m.latency.n_decode_tokens, DECODE);
    assert!(m.latency.ttft_ns.expect("ttft") > 0);
    assert_eq!(m.latency.decode.expect("decode").count, DECODE);

    // Routing: one route event per token and layer, top-2.
    let routing = m.routing.as_ref().expect("routing");
    assert_eq!(routing.n_tokens as u64, PREFILL + DECODE);
    assert_eq!(routing.n_choices as u64, (PREFILL + DECODE) * N_LAYERS * 2);
    assert_eq!(m.cache_curves.len(), 2);

    // KV: one sample per step, sliding layers capped at 2 positions.
    assert_eq!(m.kv.len(), steps);
    let last = m.kv.last().expect("kv");
    assert_eq!(last.context_len, PREFILL + DECODE);
    assert_eq!(last.global_bytes, 64 * (PREFILL + DECODE));
    assert_eq!(last.sliding_bytes, 2 * 64 * 2);

    // Sparsity: 10% active.
    assert!((m.sparsity.total.zero_share - 0.9).abs() < 1e-12);

    // routing.csv reads back to the trace of the events.
    let from_csv = RoutingTrace::from_csv_path(&out.paths.routing_csv).expect("csv");
    assert_eq!(
        from_csv,
        RoutingTrace::from_recording(&rec).expect("events")
    );
    for (t, l, e) in from_csv
        .choices
        .iter()
        .map(|c| (c.token, c.layer, c.expert))
    {
        assert!(synthetic::route(t, u64::from(l)).contains(&u64::from(e)));
    }

    // metrics.json parses back into Metrics.
    let back: Metrics =
        serde_json::from_slice(&fs::read(&out.paths.metrics_json).expect("read")).expect("parse");
    assert_eq!(back.overlap.steps.len(), steps);
    assert_eq!(back.kv, m.kv);

    // kv.csv and summary.md.
    let kv = fs::read_to_string(&out.paths.kv_csv).expect("kv.csv");
    assert_eq!(kv.lines().count(), 1 + steps);
    assert!(kv.starts_with("context_len,"));
    let md = fs::read_to_string(&out.paths.summary_md).expect("summary.md");
    assert!(md.starts_with("# Profile summary"));
    let text = Summary::from_metrics(m).render_text();
    assert!(text.lines().count() <= MAX_SUMMARY_LINES, "{text}");
    assert!(text.contains("TTFT"));

    check_trace_json(
        &fs::read(&out.paths.trace_json).expect("trace.json"),
        &io_tids,
        steps,
    );
}

/// Parses `trace.json` and checks its shape, thread ids and nesting.
fn check_trace_json(bytes: &[u8], io_tids: &HashSet<u32>, n_steps: usize) {
    let v: Value = serde_json::from_slice(bytes).expect("trace.json is JSON");
    assert_eq!(v["displayTimeUnit"], "ms");
    let events = v["traceEvents"].as_array().expect("traceEvents array");
    let mut thread_names: HashMap<u64, String> = HashMap::new();
    let mut by_tid: HashMap<u64, Vec<(f64, f64, String)>> = HashMap::new();
    let mut token_marks = 0;
    for e in events {
        let ph = e["ph"].as_str().expect("ph");
        assert_eq!(e["pid"], 1);
        let tid = e["tid"].as_u64().expect("tid");
        match ph {
            "M" => {
                if e["name"] == "thread_name" {
                    thread_names.insert(tid, e["args"]["name"].as_str().expect("name").to_owned());
                }
            }
            "X" => {
                let ts = e["ts"].as_f64().expect("ts");
                let dur = e["dur"].as_f64().expect("dur");
                assert!(ts >= 0.0 && dur >= 0.0);
                by_tid.entry(tid).or_default().push((
                    ts,
                    ts + dur,
                    e["name"].as_str().expect("name").to_owned(),
                ));
            }
            "i" => {
                assert!(e["ts"].as_f64().is_some());
                if e["cat"] == "token" {
                    token_marks += 1;
                }
            }
            other => panic!("unexpected phase {other}"),
        }
    }
    assert_eq!(token_marks, n_steps);
    // Every tid with spans is named; I/O tids are distinct from compute tids.
    for tid in by_tid.keys() {
        assert!(
            thread_names.contains_key(tid),
            "tid {tid} has no thread_name"
        );
    }
    // No thread is written as tid 0 (Perfetto's idle thread); trace tids are recorded + 1.
    assert!(!by_tid.contains_key(&0) && !thread_names.contains_key(&0));
    for tid in io_tids {
        assert!(thread_names[&profiler::artefacts::trace_tid(*tid)].starts_with("io-"));
    }
    // Complete events on one thread nest: each is inside the enclosing open one or after it.
    for (tid, spans) in &by_tid {
        let mut stack: Vec<(f64, f64, String)> = Vec::new();
        for s in spans {
            while stack.last().is_some_and(|top| s.0 >= top.1) {
                stack.pop();
            }
            if let Some(top) = stack.last() {
                assert!(
                    s.1 <= top.1,
                    "tid {tid}: {s:?} overlaps {top:?} without nesting"
                );
            }
            stack.push(s.clone());
        }
    }
    // Compute spans are inside forward spans on the compute thread.
    let compute_tid = by_tid
        .iter()
        .find(|(_, v)| v.iter().any(|s| s.2 == "forward"))
        .map(|(t, _)| *t)
        .expect("compute thread");
    let fwd: Vec<_> = by_tid[&compute_tid]
        .iter()
        .filter(|s| s.2 == "forward")
        .cloned()
        .collect();
    for s in by_tid[&compute_tid]
        .iter()
        .filter(|s| s.2.starts_with("compute."))
    {
        assert!(
            fwd.iter().any(|f| f.0 <= s.0 && s.1 <= f.1),
            "{s:?} outside forward"
        );
    }
    // I/O overlaps compute somewhere (visible in the viewer).
    let io: Vec<_> = by_tid
        .iter()
        .filter(|(t, _)| io_tids.contains(&(**t as u32)))
        .flat_map(|(_, v)| v.iter())
        .collect();
    let attn: Vec<_> = by_tid[&compute_tid]
        .iter()
        .filter(|s| s.2 == "compute.attention")
        .collect();
    assert!(
        io.iter()
            .any(|r| attn.iter().any(|a| r.0 < a.1 && a.0 < r.1))
    );
}
