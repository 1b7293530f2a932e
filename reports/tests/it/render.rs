//! `render_report` end to end on synthetic inputs: valid HTML, every chart present or explained,
//! NaN and hostile text handled, the file replaced atomically.

use std::fs;
use std::path::PathBuf;

use reports::{Machine, ProfileData, Record, load_records, render_report, synthetic};

use crate::html_check;

/// Chart titles every report shows (drawn or as a "not measured" note).
const TITLES: [&str; 16] = [
    "Decode speed by storage profile and quantisation",
    "Prefill speed by storage profile and quantisation",
    "Decode speed against memory budget",
    "Share of the memory-bandwidth roofline",
    "Bytes per decoded token",
    "I/O and compute time per token",
    "Change against the baseline",
    "smallthinker-rs against llama.cpp",
    "Timeline excerpt",
    "Expert popularity",
    "Expert reuse distance",
    "Cache hit ratio against capacity",
    "KV cache memory against context",
    "Per-token latency",
    "Neuron sparsity per layer",
    "Why decoding waits",
];

fn render(
    records: &[Record],
    profiles: &[ProfileData],
    baseline: Option<&[Record]>,
) -> (String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = render_report(
        dir.path(),
        &synthetic::machine(),
        records,
        profiles,
        baseline,
    )
    .expect("renders");
    let html = fs::read_to_string(&index).expect("readable");
    (html, index, dir)
}

#[test]
fn full_synthetic_report_is_well_formed_and_complete() {
    let mut records = synthetic::records(3);
    records.extend(synthetic::other_machine(3));
    let baseline = synthetic::baseline(3);
    let (html, index, _dir) = render(&records, &synthetic::profiles(3), Some(&baseline));
    assert_eq!(
        index.file_name().and_then(|n| n.to_str()),
        Some("index.html")
    );
    let summary = html_check::check(&html);
    assert!(summary.problems.is_empty(), "{:#?}", summary.problems);
    for title in TITLES {
        assert!(summary.text.contains(title), "missing chart {title:?}");
    }
    assert!(summary.text.contains("Decode speed across machines"));
    assert!(summary.text.contains("Machine 2: Rockchip RK3588 (demo)"));
    // Every chart of this complete input is drawn: two machine sections of six, one
    // cross-machine chart, two comparisons, eight profile charts.
    assert_eq!(summary.svg_count, 6 + 6 + 1 + 2 + 8, "charts drawn");
    assert!(
        !summary.text.contains("Not measured in this run"),
        "nothing should be missing"
    );
    assert!(!summary.text.contains("NaN"));
    assert!(
        summary.text.contains("AMD EPYC 7B13 64-Core Processor"),
        "machine table"
    );
    assert!(
        summary.text.contains("1 GiB, 2 GiB, unlimited"),
        "settings table budgets"
    );
    assert!(
        summary.text.contains("[1] demo: cgroup v2"),
        "record notes as footnotes"
    );
}

#[test]
fn empty_input_explains_every_missing_chart() {
    let (html, _, _dir) = render(&[], &[], None);
    let summary = html_check::check(&html);
    assert!(summary.problems.is_empty(), "{:#?}", summary.problems);
    assert_eq!(summary.svg_count, 0);
    for title in TITLES {
        assert!(summary.text.contains(title), "missing chart {title:?}");
    }
    // 6 record charts, 2 comparisons, 8 profile charts.
    let notes = summary.text.matches("Not measured in this run (").count();
    assert_eq!(notes, 6 + 2 + 8, "{}", summary.text);
    assert!(summary.text.contains("no scenario was profiled"));
    assert!(summary.text.contains("No result records were given."));
}

#[test]
fn nan_values_never_reach_the_page() {
    let mut records = synthetic::records(5);
    for (i, r) in records.iter_mut().enumerate() {
        if i % 3 == 0 {
            r.mean_tps = f64::NAN;
            r.sd_tps = f64::NAN;
            r.median_tps = f64::NAN;
            r.roofline_tps = Some(f64::NAN);
            r.bytes_read_per_token = Some(f64::INFINITY);
            r.hit_rate = Some(f64::NAN);
        }
    }
    let mut profiles = synthetic::profiles(5);
    profiles[0].latency_ms.extend([f64::NAN, f64::INFINITY]);
    profiles[0].popularity[0][0] = f64::NAN;
    profiles[0].hit_curves[0].points.push((f64::NAN, 0.5));
    let (html, _, _dir) = render(&records, &profiles, None);
    let summary = html_check::check(&html);
    assert!(summary.problems.is_empty(), "{:#?}", summary.problems);
    let words: Vec<&str> = html.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    for bad in ["NaN", "inf", "Infinity"] {
        assert!(!words.contains(&bad), "{bad} printed");
    }
    assert!(summary.svg_count >= 10);
}

#[test]
fn hostile_text_in_records_is_escaped() {
    let mut records = synthetic::records(1);
    records[0].storage = "<script>alert(1)</script>".into();
    records[1].note = Some("a & b <b>bold</b> \"quoted\"".into());
    records[2].cpu_model = "Evil <svg onload=alert(1)> CPU".into();
    let profiles = vec![ProfileData {
        name: "<img src=x onerror=alert(1)>".into(),
        latency_ms: vec![1.0, 2.0, 3.0],
        ..ProfileData::default()
    }];
    let (html, _, _dir) = render(&records, &profiles, None);
    let summary = html_check::check(&html);
    assert!(summary.problems.is_empty(), "{:#?}", summary.problems);
    assert!(!html.contains("<script"));
    assert!(!html.contains("<img"));
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "escaped in SVG and tables"
    );
    assert!(
        summary.text.contains("a & b <b>bold</b> \"quoted\""),
        "note text survives as text"
    );
}

#[test]
fn report_is_replaced_atomically_and_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("nested/run-1");
    let machine = Machine::default();
    let first = render_report(&out, &machine, &[], &[], None).expect("first render");
    let records = synthetic::records(2);
    let second = render_report(&out, &machine, &records, &[], None).expect("second render");
    assert_eq!(first, second);
    let html = fs::read_to_string(&second).expect("readable");
    assert!(
        html.contains(&format!("{} records", records.len())),
        "the second render won"
    );
    let entries: Vec<String> = fs::read_dir(&out)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        vec!["index.html".to_owned()],
        "no temporary files left"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&second).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
    }
}

#[test]
fn records_load_from_jsonl_files_and_render() {
    let dir = tempfile::tempdir().expect("tempdir");
    let records = synthetic::records(9);
    let (a, b) = records.split_at(records.len() / 2);
    let write = |name: &str, rs: &[Record], tail: &str| {
        let mut text = String::new();
        for r in rs {
            text.push_str(&serde_json::to_string(r).expect("serialises"));
            text.push_str("\n\n");
        }
        text.push_str(tail);
        let path = dir.path().join(name);
        fs::write(&path, text).expect("write");
        path
    };
    let pa = write("a.jsonl", a, "");
    // A torn last line (no newline) is what a crash leaves behind.
    let pb = write("b.jsonl", b, "{\"schema\":1,\"run_id\":\"to");
    let loaded = load_records(&[pa.clone(), pb]).expect("loads");
    assert_eq!(loaded.len(), records.len());
    assert_eq!(loaded[0].mean_tps, records[0].mean_tps);

    let bad = write("c.jsonl", a, "{\"schema\":1}\n");
    let err = load_records(&[pa, bad.clone()])
        .expect_err("bad line")
        .to_string();
    let line = a.len() * 2 + 1;
    assert!(
        err.starts_with(&format!("{}:{line}:", bad.display())),
        "{err}"
    );

    let (html, _, _dir) = render(&loaded, &[], None);
    assert!(html_check::check(&html).problems.is_empty());
}
