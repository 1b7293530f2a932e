//! Checks a written report in a real headless browser (Debian's `chromium`): takes a
//! screenshot, dumps the DOM, and collects console messages, with the network blocked.
//!
//! Used by the crate's integration test (skipped when no browser is installed) and callable from
//! xtask. The page has no scripts and loads nothing, so *any* console message is a problem.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Browsers tried by [`find_chromium`], in order.
pub const CHROMIUM_CANDIDATES: [&str; 4] = [
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/bin/google-chrome",
    "/usr/bin/google-chrome-stable",
];

/// A screenshot smaller than this is treated as blank (a white 1400x4000 PNG is a few KiB).
pub const MIN_SCREENSHOT_BYTES: u64 = 40_000;

/// How to run the browser.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    /// Browser binary.
    pub chromium: PathBuf,
    /// Window (and screenshot) size, px.
    pub window: (u32, u32),
    /// Longest a browser run may take.
    pub timeout: Duration,
}

impl BrowserConfig {
    /// Defaults for `chromium`: a 1400 x 4000 window and two minutes per run.
    pub fn new(chromium: impl Into<PathBuf>) -> Self {
        BrowserConfig {
            chromium: chromium.into(),
            window: (1400, 4000),
            timeout: Duration::from_secs(120),
        }
    }
}

/// What the browser saw.
#[derive(Debug, Clone)]
pub struct BrowserCheck {
    /// The screenshot written.
    pub screenshot: PathBuf,
    /// Its size in bytes.
    pub screenshot_bytes: u64,
    /// Its pixel size from the PNG header.
    pub screenshot_size: (u32, u32),
    /// Console messages the page produced (errors, failed loads, ...).
    pub console: Vec<String>,
    /// Number of `<svg` elements in the rendered DOM.
    pub svg_count: usize,
    /// Length of the rendered DOM, bytes.
    pub dom_bytes: usize,
}

impl BrowserCheck {
    /// Problems found: console messages, a blank-looking or missing screenshot, no SVG.
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .console
            .iter()
            .map(|c| format!("console: {c}"))
            .collect();
        if self.screenshot_bytes < MIN_SCREENSHOT_BYTES {
            p.push(format!(
                "screenshot is only {} bytes (< {MIN_SCREENSHOT_BYTES}), the page looks blank",
                self.screenshot_bytes
            ));
        }
        if self.svg_count == 0 {
            p.push("the rendered DOM has no <svg> element".into());
        }
        p
    }
}

/// The first installed browser of [`CHROMIUM_CANDIDATES`].
pub fn find_chromium() -> Option<PathBuf> {
    CHROMIUM_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Opens `index` in headless Chromium, writes a screenshot to `screenshot`, and reports what it
/// saw. Fails if the browser cannot run, times out or writes no PNG; page problems are returned
/// in [`BrowserCheck::problems`] for the caller to judge.
pub fn check_report(
    index: &Path,
    screenshot: &Path,
    config: &BrowserConfig,
) -> Result<BrowserCheck> {
    let index = index.canonicalize().map_err(|e| Error::io(index, e))?;
    let url = format!("file://{}", index.display());
    let profile = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let window = format!("--window-size={},{}", config.window.0, config.window.1);
    let base: Vec<String> = vec![
        "--headless".into(),
        "--disable-gpu".into(),
        "--no-sandbox".into(),
        "--no-first-run".into(),
        "--disable-extensions".into(),
        "--disable-dev-shm-usage".into(),
        "--hide-scrollbars".into(),
        // Any network access fails, and shows up as a console error.
        "--host-resolver-rules=MAP * ~NOTFOUND".into(),
        format!("--user-data-dir={}", profile.path().display()),
        "--enable-logging=stderr".into(),
        "--v=0".into(),
        window,
    ];
    if screenshot.exists() {
        std::fs::remove_file(screenshot).map_err(|e| Error::io(screenshot, e))?;
    }
    let mut shot_args = base.clone();
    shot_args.push(format!("--screenshot={}", screenshot.display()));
    shot_args.push(url.clone());
    let shot = run(&config.chromium, &shot_args, config.timeout)?;

    let mut dom_args = base;
    dom_args.push("--dump-dom".into());
    dom_args.push(url);
    let dom = run(&config.chromium, &dom_args, config.timeout)?;

    let png = std::fs::read(screenshot).map_err(|e| {
        Error::Browser(format!(
            "no screenshot at {} ({e}); browser said: {}",
            screenshot.display(),
            tail(&shot.stderr)
        ))
    })?;
    let screenshot_size = png_size(&png)
        .ok_or_else(|| Error::Browser(format!("{} is not a PNG", screenshot.display())))?;
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    let mut console = console_messages(&shot.stderr);
    for m in console_messages(&dom.stderr) {
        if !console.contains(&m) {
            console.push(m);
        }
    }
    Ok(BrowserCheck {
        screenshot: screenshot.to_owned(),
        screenshot_bytes: png.len() as u64,
        screenshot_size,
        console,
        svg_count: dom_text.matches("<svg").count(),
        dom_bytes: dom_text.len(),
    })
}

/// Runs the browser with a deadline, capturing its output.
fn run(chromium: &Path, args: &[String], timeout: Duration) -> Result<Output> {
    let mut child = Command::new(chromium)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Browser(format!("cannot start {}: {e}", chromium.display())))?;
    // Drain the pipes on threads so a chatty browser cannot block on a full pipe.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_t = thread::spawn(move || read_all(out.as_mut()));
    let err_t = thread::spawn(move || read_all(err.as_mut()));
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Browser(format!(
                    "{} did not finish within {:?}",
                    chromium.display(),
                    timeout
                )));
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(Error::Browser(format!("waiting for the browser: {e}"))),
        }
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        return Err(Error::Browser(format!(
            "{} exited with {status}: {}",
            chromium.display(),
            tail(&stderr)
        )));
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn read_all<R: std::io::Read>(r: Option<&mut R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    buf
}

/// The last few lines of browser output, for error messages.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// Console messages in Chromium's stderr log (`...:INFO:CONSOLE(12)] "msg", source: ...`).
pub fn console_messages(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught") || l.contains("net::ERR_"))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Width and height from a PNG's IHDR chunk.
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
    if png.len() < 24 || png[..8] != SIGNATURE || &png[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_are_picked_from_the_log() {
        let log = b"[1:2:0501/1:ERROR:bus.cc(407)] Failed to connect to the bus\n\
[1:2:0501/1:INFO:CONSOLE(3)] \"Uncaught ReferenceError: x\", source: file:///r/index.html (3)\n";
        let m = console_messages(log);
        assert_eq!(m.len(), 1);
        assert!(m[0].contains("ReferenceError"));
    }

    #[test]
    fn png_header_gives_the_size() {
        let mut png = vec![
            0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13,
        ];
        png.extend_from_slice(b"IHDR");
        png.extend_from_slice(&1400u32.to_be_bytes());
        png.extend_from_slice(&4000u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((1400, 4000)));
        assert_eq!(png_size(b"GIF89a"), None);
    }

    #[test]
    fn a_missing_browser_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = dir.path().join("index.html");
        std::fs::write(&index, "<!DOCTYPE html><title>x</title>").expect("write");
        let cfg = BrowserConfig::new("/nonexistent/chromium");
        let err = check_report(&index, &dir.path().join("s.png"), &cfg).expect_err("no browser");
        assert!(err.to_string().contains("cannot start"), "{err}");
    }
}
