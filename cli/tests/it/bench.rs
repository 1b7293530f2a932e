//! `thinker bench` with a memory budget: its records say how faithful a storage emulation was.

use std::process::Command;

use serde_json::Value;

use crate::{FIXTURES, THINKER};

/// One offloaded `tg4` of the tiny fixture from `storage`; its JSON records and stderr.
fn bench(storage: &str) -> (Vec<Value>, String) {
    let out = Command::new(THINKER)
        .args([
            "bench",
            "-m",
            &format!("{FIXTURES}/tiny-t1-gguf/tiny-t1-Q8_0.gguf"),
            "-t",
            "1",
            "-p",
            "0",
            "-n",
            "4",
            "-r",
            "1",
            "--bandwidth-mib",
            "0",
            "--memory-budget",
            "512MiB",
            "--storage",
            storage,
            // Through the page cache, which holds the small fixture after the load: the real
            // reads then cost microseconds on any machine.
            "--io-mode",
            "buffered",
            "-o",
            "json",
        ])
        .output()
        .expect("run thinker bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON array");
    (v.as_array().expect("array").clone(), stderr)
}

#[test]
fn emulated_storage_records_its_fidelity_and_real_storage_does_not() {
    // An SD card (~0.7 ms per request) is far slower than reading a small file the page cache
    // holds: the emulation keeps its pace.
    let (recs, stderr) = bench("sd-card");
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r["storage"], "sd-card");
    let excess = r["emulation_excess"].as_f64().expect("emulation_excess");
    assert!((0.0..0.10).contains(&excess), "{excess}");
    let note = r["note"].as_str().expect("note");
    assert!(
        note.contains("emulated") && note.contains("reads"),
        "{note}"
    );
    assert!(!stderr.contains("not faithful"), "{stderr}");

    let (recs, _) = bench("real");
    assert_eq!(recs[0]["storage"], "real");
    assert!(recs[0]["emulation_excess"].is_null(), "{}", recs[0]);
}

#[test]
fn records_carry_the_build_the_kernel_and_the_model_digest() {
    // (The cgroup limit's parsing is tested in bench-suite's `machine`.)
    let (recs, _) = bench("real");
    let r = &recs[0];
    let rustc = r["rustc"].as_str().expect("rustc");
    assert!(rustc.starts_with("rustc "), "{rustc}");
    let kernel = r["kernel"].as_str().expect("kernel");
    assert_eq!(
        kernel,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );
    let digest = r["model_digest"].as_str().expect("model_digest");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
}
