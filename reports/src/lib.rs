//! SVG charts and one self-contained HTML report from benchmark result records.
//!
//! Input is what the scenario runner writes — one [`Record`] per line of `results.jsonl` — plus
//! optional per-scenario [`ProfileData`] and a description of the [`Machine`]. Output is a single
//! `index.html` with inline CSS and inline SVG charts (drawn with plotters), readable without
//! JavaScript or network. The crate depends on no other crate of the workspace, so a report can
//! be rebuilt from the records alone, on any machine.
//!
//! ```
//! use reports::{Machine, render_report, synthetic};
//!
//! let dir = tempfile::tempdir()?;
//! let records = synthetic::records(7);
//! let index = render_report(dir.path(), &synthetic::machine(), &records, &synthetic::profiles(7), None)?;
//! let html = std::fs::read_to_string(&index)?;
//! assert!(html.contains("<svg") && !html.contains("<script"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layout: [`record`] and [`profile`] hold the input types, [`shape`] the pure data shaping,
//! [`charts`] one module per chart family, [`tables`] the tables, [`html`] the page and the
//! atomic write, [`browser`] the headless-Chromium check.

pub mod browser;
pub mod charts;
pub mod error;
pub mod format;
pub mod html;
pub mod profile;
pub mod record;
pub mod shape;
pub mod synthetic;
pub mod tables;

use std::path::{Path, PathBuf};

pub use error::{Error, Result};
pub use profile::{HitCurve, KvPoint, ProfileData, Span, Stalls, load_profile};
pub use record::{Machine, Record, TestKind, load_records};

/// Renders the report of `records` (and optional `profiles` and `baseline`) into
/// `out_dir/index.html`, replacing it atomically, and returns its path.
///
/// Charts without data become "not measured in this run (why)" notes; NaN values are left out.
/// Records from several machines (different `cpu_model`) get one section each plus a
/// cross-machine chart.
pub fn render_report(
    out_dir: &Path,
    machine: &Machine,
    records: &[Record],
    profiles: &[ProfileData],
    baseline: Option<&[Record]>,
) -> Result<PathBuf> {
    let page = html::page(machine, records, profiles, baseline);
    let text = html::render(&page)?;
    html::write_atomic(out_dir, &text)
}
