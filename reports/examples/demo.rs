//! Renders a demo report from synthetic data into `target/reports/demo/index.html` and, when
//! Chromium is installed, a screenshot next to it (`screenshot.png`).
//!
//! `cargo run -p reports --example demo [-- [--small] [OUT_DIR]]`; `--small` renders what a
//! quick CI run would produce (in-memory only, one quantisation, no profile, no baseline) into
//! `target/reports/demo-small/`.

use std::path::PathBuf;

use reports::browser::{BrowserConfig, check_report, find_chromium};
use reports::{render_report, synthetic};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let small = args.iter().any(|a| a == "--small");
    args.retain(|a| a != "--small");
    let out = match args.first() {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/reports")
            .join(if small { "demo-small" } else { "demo" }),
    };
    let seed = 7;
    let machine = synthetic::machine();
    let index = if small {
        let records: Vec<_> = synthetic::records(seed)
            .into_iter()
            .filter(|r| r.storage == "in-memory" && r.quant == "q4_0" && !r.is_peer())
            .collect();
        render_report(&out, &machine, &records, &[], None)?
    } else {
        let mut records = synthetic::records(seed);
        records.extend(synthetic::other_machine(seed));
        let baseline = synthetic::baseline(seed);
        let profiles = synthetic::profiles(seed);
        render_report(&out, &machine, &records, &profiles, Some(&baseline))?
    };
    println!("report: {}", index.display());
    let Some(chromium) = find_chromium() else {
        println!("no chromium found; skipped the screenshot");
        return Ok(());
    };
    let shot = out.join("screenshot.png");
    let check = check_report(&index, &shot, &BrowserConfig::new(chromium))?;
    println!(
        "screenshot: {} ({} bytes, {}x{}), {} SVG charts in the DOM",
        shot.display(),
        check.screenshot_bytes,
        check.screenshot_size.0,
        check.screenshot_size.1,
        check.svg_count
    );
    for p in check.problems() {
        println!("problem: {p}");
    }
    Ok(())
}
