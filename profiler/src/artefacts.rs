//! Artefact writers: `trace.json`, `metrics.json`, `summary.md`, `routing.csv`, `kv.csv`.
//!
//! Every file is written atomically (a temporary file in the same directory, fsynced, renamed
//! over the target, then the directory fsynced), so a crashed run leaves each artefact either
//! complete or absent, never truncated.
//!
//! `trace.json` is Chrome trace-event JSON (opens in Perfetto and chrome://tracing):
//! `{"traceEvents": [...], "displayTimeUnit": "ms"}` with
//! - `ph:"M"` metadata: `process_name` and, per recorded thread, `thread_name` and
//!   `thread_sort_index`;
//! - `ph:"X"` complete events, one per span interval: `name`, `cat` (the part before the first
//!   `.`: `compute`, `io`, `kv`, or `forward`), `ts` and `dur` in microseconds (floats with ns
//!   precision), `pid` 1, `tid` = [`ThreadInfo::tid`](crate::ThreadInfo) + 1 ([`trace_tid`]),
//!   `args` = the fields;
//! - `ph:"i"` global instants named `token <n>` (category `token`) at each `forward` start;
//! - `ph:"i"` thread instants for events (category = target, name = message, args = fields).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::kv::write_kv_csv;
use crate::metrics::{AnalysisConfig, Metrics, analyze_with_trace};
use crate::recording::{Fields, Recording, names};
use crate::routing::RoutingTrace;
use crate::summary::Summary;

/// Process id used in `trace.json`.
pub const TRACE_PID: u32 = 1;

/// The `tid` a recorded thread gets in `trace.json`: its [`ThreadInfo::tid`](crate::ThreadInfo)
/// plus one. Perfetto's importer takes tid 0 for the idle (swapper) thread: a thread written as
/// tid 0 loses its name and its slices land on another thread's track (seen in Perfetto's
/// trace processor v52).
pub fn trace_tid(tid: u32) -> u64 {
    u64::from(tid) + 1
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically (temp file in the same directory, fsync, rename, fsync
/// of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artefact".to_owned());
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        // Persist the rename; not all platforms can open a directory, so failure to open is ok.
        if let Ok(d) = File::open(&dir) {
            d.sync_all().map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn args(fields: &Fields) -> Value {
    serde_json::to_value(fields).unwrap_or_else(|_| Value::Object(Map::new()))
}

fn category(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// The Chrome trace-event JSON value of a recording (see the module docs for the layout): what
/// [`write_chrome_trace`] writes, parsed back.
pub fn chrome_trace(rec: &Recording) -> Result<Value> {
    let mut buf = Vec::new();
    write_chrome_trace(rec, &mut buf)?;
    Ok(serde_json::from_slice(&buf)?)
}

/// Writes the Chrome trace-event JSON of a recording (see the module docs for the layout) one
/// event at a time, so only the JSON text grows with the recording (50–100 KiB per decoded
/// token of the 4B model), not a JSON value of the whole trace (about 1 MiB per token).
pub fn write_chrome_trace(rec: &Recording, w: &mut impl Write) -> Result<()> {
    let raw = |w: &mut dyn Write, b: &[u8]| w.write_all(b).map_err(|e| Error::io("trace.json", e));
    let mut first = true;
    let mut put = |w: &mut dyn Write, v: Value| -> Result<()> {
        if !first {
            raw(w, b",")?;
        }
        first = false;
        serde_json::to_writer(&mut *w, &v)?;
        Ok(())
    };
    raw(w, b"{\"traceEvents\":[")?;
    put(
        w,
        json!({
            "name": "process_name", "ph": "M", "pid": TRACE_PID, "tid": 0,
            "args": {"name": "smallthinker"}
        }),
    )?;
    for t in &rec.threads {
        put(
            w,
            json!({
                "name": "thread_name", "ph": "M", "pid": TRACE_PID, "tid": trace_tid(t.tid),
                "args": {"name": t.name}
            }),
        )?;
        put(
            w,
            json!({
                "name": "thread_sort_index", "ph": "M", "pid": TRACE_PID, "tid": trace_tid(t.tid),
                "args": {"sort_index": t.tid}
            }),
        )?;
    }
    // Parents before children on equal start (the Recording's order) keeps viewers' nesting.
    let mut spans: Vec<_> = rec.spans.iter().collect();
    spans.sort_by(|a, b| {
        (a.start_ns, std::cmp::Reverse(a.end_ns), a.id).cmp(&(
            b.start_ns,
            std::cmp::Reverse(b.end_ns),
            b.id,
        ))
    });
    for s in spans {
        put(
            w,
            json!({
                "name": s.name, "cat": category(&s.name), "ph": "X",
                "ts": us(s.start_ns), "dur": us(s.dur_ns()),
                "pid": TRACE_PID, "tid": trace_tid(s.tid), "args": args(&s.fields)
            }),
        )?;
        if s.name == names::FORWARD {
            let label = s
                .u64("token")
                .map_or_else(|| "token".to_owned(), |t| format!("token {t}"));
            put(
                w,
                json!({
                    "name": label, "cat": "token", "ph": "i", "s": "g",
                    "ts": us(s.start_ns), "pid": TRACE_PID, "tid": trace_tid(s.tid),
                    "args": args(&s.fields)
                }),
            )?;
        }
    }
    for e in &rec.events {
        put(
            w,
            json!({
                "name": e.name, "cat": e.target, "ph": "i", "s": "t",
                "ts": us(e.ts_ns), "pid": TRACE_PID, "tid": trace_tid(e.tid),
                "args": args(&e.fields)
            }),
        )?;
    }
    raw(w, b"],\"displayTimeUnit\":\"ms\"}")?;
    Ok(())
}

fn to_json_bytes(v: &impl Serialize) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v)?;
    b.push(b'\n');
    Ok(b)
}

/// Paths of the written artefacts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtefactPaths {
    /// `trace.json`.
    pub trace_json: PathBuf,
    /// `metrics.json`.
    pub metrics_json: PathBuf,
    /// `summary.md`.
    pub summary_md: PathBuf,
    /// `routing.csv`.
    pub routing_csv: PathBuf,
    /// `kv.csv`.
    pub kv_csv: PathBuf,
}

impl ArtefactPaths {
    /// The standard file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        ArtefactPaths {
            trace_json: dir.join("trace.json"),
            metrics_json: dir.join("metrics.json"),
            summary_md: dir.join("summary.md"),
            routing_csv: dir.join("routing.csv"),
            kv_csv: dir.join("kv.csv"),
        }
    }
}

/// What [`write_artefacts`] produced.
#[derive(Clone, Debug)]
pub struct Artefacts {
    /// Where the files are.
    pub paths: ArtefactPaths,
    /// The analyses (also in `metrics.json`).
    pub metrics: Metrics,
    /// The summary (also in `summary.md`).
    pub summary: Summary,
}

/// Analyses `rec` and writes all five artefacts into `dir` (created if missing). Files are
/// written one by one, each atomically: raw data first (`routing.csv`, `kv.csv`, `trace.json`),
/// then `metrics.json` and `summary.md`.
pub fn write_artefacts(dir: &Path, rec: &Recording, cfg: &AnalysisConfig) -> Result<Artefacts> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let paths = ArtefactPaths::in_dir(dir);
    let trace = RoutingTrace::from_recording(rec)?;

    let mut buf = Vec::new();
    trace.write_csv(&mut buf)?;
    write_atomic(&paths.routing_csv, &buf)?;

    let metrics = analyze_with_trace(rec, &trace, cfg)?;
    let mut buf = Vec::new();
    write_kv_csv(&metrics.kv, &mut buf)?;
    write_atomic(&paths.kv_csv, &buf)?;

    let mut buf = Vec::new();
    write_chrome_trace(rec, &mut buf)?;
    write_atomic(&paths.trace_json, &buf)?;
    write_atomic(&paths.metrics_json, &to_json_bytes(&metrics)?)?;
    let summary = Summary::from_metrics(&metrics);
    write_atomic(&paths.summary_md, summary.render_markdown().as_bytes())?;
    Ok(Artefacts {
        paths,
        metrics,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }

    #[test]
    fn write_atomic_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("missing").join("a.txt");
        assert!(matches!(write_atomic(&p, b"x"), Err(Error::Io { .. })));
    }
}
