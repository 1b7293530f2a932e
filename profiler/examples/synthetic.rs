//! Writes the artefacts of the synthetic run used by the integration tests (one compute thread,
//! two I/O threads) into a directory, for opening `trace.json` in a viewer and for looking at
//! the other files: `cargo run -p profiler --example synthetic -- OUT_DIR`.

#[path = "../tests/it/synthetic.rs"]
#[allow(dead_code)]
mod synthetic;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "profile-synthetic".to_owned());
    let rec = synthetic::run();
    let out = profiler::write_artefacts(
        std::path::Path::new(&dir),
        &rec,
        &profiler::AnalysisConfig::default(),
    )?;
    print!("{}", out.summary.render_text());
    println!("artefacts in {dir}");
    Ok(())
}
