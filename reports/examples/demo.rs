//! Renders a demo report from synthetic data into `target/reports/demo/index.html` and, when
//! Chromium is installed, a screenshot next to it (`screenshot.png`).
//!
//! `cargo run -p reports --example demo [-- OUT_DIR]`

use std::path::PathBuf;

use reports::browser::{BrowserConfig, check_report, find_chromium};
use reports::{render_report, synthetic};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/reports/demo")
        });
    let seed = 7;
    let mut records = synthetic::records(seed);
    records.extend(synthetic::other_machine(seed));
    let baseline = synthetic::baseline(seed);
    let index = render_report(
        &out,
        &synthetic::machine(),
        &records,
        &synthetic::profiles(seed),
        Some(&baseline),
    )?;
    println!("report: {}", index.display());
    match find_chromium() {
        Some(chromium) => {
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
        }
        None => println!("no chromium found; skipped the screenshot"),
    }
    Ok(())
}
