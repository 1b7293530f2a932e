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
