//! End-to-end tests of the `thinker` binary: real processes, real files.

use std::path::PathBuf;
use std::process::{Command, Output};

use engine::formats::npy;

/// Logits written by `thinker logits --exact` against the reference (absolute).
const LOGIT_TOL: f32 = 1e-4;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/fixtures")
        .join(rel)
}

fn thinker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_thinker"))
        .args(args)
        .output()
        .expect("run thinker")
}

fn ids_csv(rel: &str) -> String {
    let a = npy::read(&fixture(rel)).unwrap().to_i32().unwrap();
    a.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn logits_match_reference_and_routes_have_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.npy");
    let routes = dir.path().join("routes.npy");
    let model = fixture("tiny-t1");
    let o = thinker(&[
        "logits",
        "-m",
        model.to_str().unwrap(),
        "--tokens",
        &ids_csv("tiny-t1/prompt_ids.npy"),
        "--decode-tokens",
        &ids_csv("tiny-t1/decode_input_ids.npy"),
        "--exact",
        "--out",
        out.to_str().unwrap(),
        "--routes",
        routes.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = npy::read(&out).unwrap();
    assert_eq!(got.shape, vec![48, 512]);
    let got = got.to_f32().unwrap();
    let mut want = npy::read(&fixture("tiny-t1/prefill_logits.npy"))
        .unwrap()
        .to_f32()
        .unwrap();
    want.extend(
        npy::read(&fixture("tiny-t1/decode_logits.npy"))
            .unwrap()
            .to_f32()
            .unwrap(),
    );
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(err <= LOGIT_TOL, "max error {err}");
    let r = npy::read(&routes).unwrap();
    assert_eq!(r.shape, vec![4, 48, 2]);
    let want_r = npy::read(&fixture("tiny-t1/router_ids.npy"))
        .unwrap()
        .to_i32()
        .unwrap();
    assert_eq!(r.to_i32().unwrap(), want_r);
}

#[test]
fn inspect_shows_layout_and_costs() {
    let o = thinker(&["inspect", fixture("tiny-t1").to_str().unwrap()]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "layout         GSSS",
        "top-2",
        "per token",
        "KV per token",
        "q_proj",
    ] {
        assert!(s.contains(needle), "missing '{needle}' in:\n{s}");
    }
}

#[test]
fn run_greedy_reproduces_reference_ids() {
    let o = thinker(&[
        "run",
        "-m",
        fixture("tiny-t1").to_str().unwrap(),
        "--tokens",
        &ids_csv("tiny-t1/prompt_ids.npy"),
        "-n",
        "9",
        "--temp",
        "0",
        "--exact",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert_eq!(got, ids_csv("tiny-t1/greedy_ids.npy"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("t/s"));
}

#[test]
fn bad_input_is_one_clear_line_and_nonzero() {
    let model = fixture("tiny-t1");
    let m = model.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "-m", "/nonexistent/model.gguf", "--tokens", "1"],
            "/nonexistent/model.gguf",
        ),
        (
            vec!["run", "-m", m, "--tokens", "1,99999"],
            "outside the vocabulary",
        ),
        (vec!["run", "-m", m, "--tokens", "1,x"], "not a token id"),
        (
            vec!["run", "-m", m, "--tokens", "1", "--top-p", "0"],
            "top-p",
        ),
        (
            vec![
                "logits",
                "-m",
                m,
                "--tokens",
                "1",
                "--out",
                "/nonexistent-dir/x.npy",
            ],
            "x.npy",
        ),
    ];
    for (args, needle) in cases {
        let o = thinker(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line expected: {err}"
        );
        assert!(err.contains(needle), "{args:?}: '{needle}' not in {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn tokenize_gguf_and_json_agree_and_json_output_parses() {
    let text = "Hello world, this is SmallThinker. 你好 <|im_end|>";
    let run = |tok: PathBuf, extra: &[&str]| {
        let mut args = vec![
            "tokenize",
            "--tokenizer",
            tok.to_str().unwrap(),
            "--text",
            text,
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = thinker(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<Vec<u32>>(&o.stdout).unwrap()
    };
    let a = run(fixture("tiny-t1-gguf/tiny-t1-Q8_0.gguf"), &[]);
    let b = run(fixture("tiny-t1/tokenizer.json"), &[]);
    assert_eq!(a, b);
    let special = run(fixture("tiny-t1"), &["--parse-special"]);
    assert!(
        special.contains(&511),
        "<|im_end|> is id 511 in the tiny vocabulary: {special:?}"
    );
    assert!(!a.contains(&511));
}

#[test]
fn run_with_text_prompt_prints_text() {
    let o = thinker(&[
        "run",
        "-m",
        fixture("tiny-t1-gguf/tiny-t1-F32.gguf").to_str().unwrap(),
        "-p",
        "Once upon a time",
        "-n",
        "8",
        "--temp",
        "0",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!o.stdout.is_empty());
}

#[test]
fn gen_writes_reuses_and_measures_a_synthetic_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = thinker(&[
        "gen",
        "--preset",
        "tiny",
        "--type",
        "q4_0",
        "--out",
        d,
        "--measure",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("written in"), "{stdout}");
    assert!(
        stdout.contains("zipf") && stdout.contains("  all  "),
        "{stdout}"
    );
    let file = dir.path().join("smallthinker-tiny-synthetic-q4_0-s0.gguf");
    assert!(file.exists());
    let again = thinker(&["gen", "--preset", "tiny", "--type", "q4_0", "--out", d]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("reused"));
    let inspect = thinker(&["inspect", file.to_str().unwrap(), "--no-tensors"]);
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(inspect.status.success());
    assert!(text.contains("4 layers, hidden 256"), "{text}");
    let run = thinker(&[
        "run",
        "-m",
        file.to_str().unwrap(),
        "-p",
        "Hello",
        "-n",
        "4",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bad = thinker(&["gen", "--preset", "7b", "--out", d]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--preset must be one of"));
}

/// `thinker profile` of the tiny Q4_0 model (prompt `1,2,3,4,5`, one thread) decoding `n`
/// tokens into `dir`, with `extra` arguments.
fn profile_tiny_q4(dir: &std::path::Path, n: usize, extra: &[&str]) {
    let model = fixture("tiny-t1-gguf/tiny-t1-Q4_0.gguf");
    let n = n.to_string();
    let mut args = vec!["profile", "-m", model.to_str().unwrap()];
    args.extend(["--tokens", "1,2,3,4,5", "-n", &n, "-t", "1"]);
    args.extend(["--out", dir.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let o = thinker(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `thinker profile` on a real model writes `kv.csv` from the engine's own per-layer KV events:
/// one row per step, context growing by one per decode step, bytes never shrinking, and the
/// per-kind columns adding up to the total.
#[test]
fn profile_writes_kv_csv_from_the_engines_allocations() {
    let dir = tempfile::tempdir().unwrap();
    profile_tiny_q4(dir.path(), 4, &[]);
    let kv = std::fs::read_to_string(dir.path().join("kv.csv")).unwrap();
    let mut lines = kv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<u64>> = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    // Prefill (5 positions) and the decode steps that fed a token back (at least 3).
    assert!(rows.len() >= 4, "{kv}");
    assert_eq!(rows[0][col("context_len")], 5, "{kv}");
    for w in rows.windows(2) {
        assert_eq!(
            w[1][col("context_len")],
            w[0][col("context_len")] + 1,
            "{kv}"
        );
        assert!(w[1][col("total_bytes")] >= w[0][col("total_bytes")], "{kv}");
    }
    for r in &rows {
        assert!(r[col("total_bytes")] > 0, "{kv}");
        assert_eq!(
            r[col("global_bytes")] + r[col("sliding_bytes")] + r[col("other_bytes")],
            r[col("total_bytes")],
            "{kv}"
        );
    }
}

/// `thinker profile` writes the stall analysis into `metrics.json`: over the decode steps, the
/// storage's idle time split by compute phase adds up to the time no read was in flight, and the
/// waits' causes add up to the waits. Offloaded, the experts are read while the model decodes;
/// in memory nothing is read and the storage is idle throughout.
#[test]
fn profile_metrics_split_idle_storage_and_waits_consistently() {
    // 69,900,000 B leaves the tiny model's cache 9 slots for its 32 experts: decoding reads.
    for budget in [Some("69900000"), None] {
        let dir = tempfile::tempdir().unwrap();
        let extra = budget
            .map(|b| vec!["--memory-budget", b])
            .unwrap_or_default();
        profile_tiny_q4(dir.path(), 12, &extra);
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("metrics.json")).unwrap())
                .unwrap();
        let st = &m["stalls"];
        let n = |v: &serde_json::Value| v.as_u64().unwrap();
        assert_eq!(
            n(&st["tokens"]),
            n(&m["latency"]["n_decode_tokens"]),
            "{st}"
        );
        assert!(n(&st["steps"]) >= 1, "{st}");
        let idle: u64 = st["storage_idle_ns"]
            .as_object()
            .unwrap()
            .values()
            .map(n)
            .sum();
        assert_eq!(idle, n(&st["wall_ns"]) - n(&st["io_busy_ns"]), "{st}");
        let causes: u64 = [
            "wait_queued_ns",
            "wait_reading_ns",
            "wait_repacking_ns",
            "wait_after_ns",
        ]
        .iter()
        .map(|k| n(&st[*k]))
        .sum();
        assert_eq!(causes, n(&st["wait_ns"]), "{st}");
        let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
        let offloaded_io = n(&st["io_busy_ns"]) > 0 || n(&st["waits"]) > 0;
        assert_eq!(summary.contains("why it waits"), offloaded_io, "{summary}");
        if budget.is_some() {
            assert!(n(&st["io_busy_ns"]) > 0, "{st}");
        } else {
            assert_eq!((n(&st["io_busy_ns"]), n(&st["waits"])), (0, 0), "{st}");
            assert!(
                st["storage_idle_ns"]["compute.lm_head"].as_u64().unwrap() > 0,
                "{st}"
            );
        }
    }
}
