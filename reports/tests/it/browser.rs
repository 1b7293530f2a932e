//! The report in a real headless browser (Debian's `chromium`): a screenshot that is not blank,
//! every chart in the rendered DOM, and no console messages. Skipped, with a note, when no
//! browser is installed.

use reports::browser::{BrowserConfig, check_report, find_chromium};
use reports::{render_report, synthetic};

#[test]
fn report_renders_in_headless_chromium_without_errors() {
    let Some(chromium) = find_chromium() else {
        eprintln!(
            "note: no chromium installed (apt-get install -y chromium); browser check skipped"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut records = synthetic::records(11);
    records.extend(synthetic::other_machine(11));
    let baseline = synthetic::baseline(11);
    let index = render_report(
        dir.path(),
        &synthetic::machine(),
        &records,
        &synthetic::profiles(11),
        Some(&baseline),
    )
    .expect("renders");
    let html = std::fs::read_to_string(&index).expect("readable");
    let shot = dir.path().join("screenshot.png");
    let config = BrowserConfig::new(chromium);
    let check = check_report(&index, &shot, &config).expect("browser runs");
    assert!(check.problems().is_empty(), "{:#?}", check.problems());
    assert_eq!(check.screenshot_size, config.window);
    assert_eq!(
        check.svg_count,
        html.matches("<svg").count(),
        "every chart reaches the DOM"
    );
    assert!(check.dom_bytes > html.len() / 2);
}

#[test]
fn the_browser_check_sees_console_errors() {
    let Some(chromium) = find_chromium() else {
        eprintln!("note: no chromium installed; browser check skipped");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let index = dir.path().join("index.html");
    std::fs::write(
        &index,
        "<!DOCTYPE html><html><body><p>x</p><script>console.error('boom'); nosuchfn();</script></body></html>",
    )
    .expect("write");
    let mut config = BrowserConfig::new(chromium);
    config.window = (400, 300);
    let check = check_report(&index, &dir.path().join("s.png"), &config).expect("browser runs");
    let problems = check.problems().join("\n");
    assert!(problems.contains("boom"), "{problems}");
    assert!(problems.contains("nosuchfn"), "{problems}");
    assert!(
        problems.contains("looks blank"),
        "a nearly empty page: {problems}"
    );
    assert!(problems.contains("no <svg>"), "{problems}");
}
