//! The pinned hot set: experts loaded once at start and never evicted, chosen from a previous
//! run's routing (`--hot-experts FILE`).
//!
//! # File format
//! Either of:
//! - a **hot-set file** as [`HotSet::save`] writes it: `#` comments, a header `layer,expert,count`,
//!   then one `layer,expert[,count]` line per expert, most valuable first;
//! - a **routing trace** as the profiler writes it (`routing.csv`): header
//!   `token,layer,expert,weight`, one row per chosen expert. Experts are then ranked by how
//!   often they were chosen.
//!
//! The cache takes experts from the front of the list while its hot share of the budget lasts
//! ([`HotSet::truncate`]). For a fixed set under stable popularity, the most frequently chosen
//! experts maximise the expected hits, which is the ranking used.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use super::ExpertKey;
use crate::error::{Error, Result};

/// Experts to pin, most valuable first, each with its observed count (0 if unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HotSet {
    entries: Vec<(ExpertKey, u64)>,
}

/// One routing decision of a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouteRow {
    /// Token position.
    pub token: u64,
    /// The chosen expert.
    pub key: ExpertKey,
    /// Its mixing weight.
    pub weight: f32,
}

fn bad(path: &Path, line: usize, what: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}:{line}: {what}", path.display()))
}

fn field<T: std::str::FromStr>(path: &Path, line: usize, s: Option<&str>, name: &str) -> Result<T> {
    let s = s.ok_or_else(|| bad(path, line, format!("missing field '{name}'")))?;
    s.trim()
        .parse()
        .map_err(|_| bad(path, line, format!("field '{name}': '{s}' is not a number")))
}

/// Reads a profiler `routing.csv` (`token,layer,expert,weight`).
pub fn read_routing_csv(path: &Path) -> Result<Vec<RouteRow>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_routing(path, &text)
}

fn parse_routing(path: &Path, text: &str) -> Result<Vec<RouteRow>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split(',');
        let token = field(path, n, it.next(), "token")?;
        let layer = field(path, n, it.next(), "layer")?;
        let expert = field(path, n, it.next(), "expert")?;
        let weight = field(path, n, it.next(), "weight")?;
        rows.push(RouteRow {
            token,
            key: ExpertKey::new(layer, expert),
            weight,
        });
    }
    Ok(rows)
}

impl HotSet {
    /// From explicit keys (most valuable first), with unknown counts.
    pub fn from_keys(keys: impl IntoIterator<Item = ExpertKey>) -> HotSet {
        let mut seen = std::collections::HashSet::new();
        HotSet {
            entries: keys
                .into_iter()
                .filter(|k| seen.insert(*k))
                .map(|k| (k, 0))
                .collect(),
        }
    }

    /// Ranks the experts of a routing trace by how often they were chosen (ties: lower layer,
    /// then lower expert first).
    pub fn from_trace(trace: impl IntoIterator<Item = ExpertKey>) -> HotSet {
        let mut counts: HashMap<ExpertKey, u64> = HashMap::new();
        for k in trace {
            *counts.entry(k).or_default() += 1;
        }
        let mut entries: Vec<_> = counts.into_iter().collect();
        entries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        HotSet { entries }
    }

    /// The hot set a byte budget buys from a routing trace: the most chosen experts, as many as
    /// `budget_bytes / slot_bytes` slots hold.
    pub fn from_trace_with_budget(
        trace: impl IntoIterator<Item = ExpertKey>,
        budget_bytes: u64,
        slot_bytes: u64,
    ) -> HotSet {
        let mut h = HotSet::from_trace(trace);
        h.truncate(usize::try_from(budget_bytes / slot_bytes.max(1)).unwrap_or(usize::MAX));
        h
    }

    /// Loads a hot-set file or a routing trace (see the module docs).
    pub fn load(path: &Path) -> Result<HotSet> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let header = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        if cols.starts_with(&["token", "layer", "expert"]) {
            let rows = parse_routing(path, &text)?;
            return Ok(HotSet::from_trace(rows.iter().map(|r| r.key)));
        }
        let mut entries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("layer") {
                continue;
            }
            let mut it = line.split(',');
            let layer = field(path, n, it.next(), "layer")?;
            let expert = field(path, n, it.next(), "expert")?;
            let count = match it.next() {
                Some(c) => field(path, n, Some(c), "count")?,
                None => 0,
            };
            let key = ExpertKey::new(layer, expert);
            if !seen.insert(key) {
                return Err(bad(path, n, format!("{key} listed twice")));
            }
            entries.push((key, count));
        }
        Ok(HotSet { entries })
    }

    /// Writes the hot-set file format.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut s = String::from(
            "# hot experts: pinned in the expert cache, most valuable first\nlayer,expert,count\n",
        );
        for (k, c) in &self.entries {
            let _ = writeln!(s, "{},{},{c}", k.layer, k.expert);
        }
        std::fs::write(path, s).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Keeps the first `n` experts.
    pub fn truncate(&mut self, n: usize) {
        self.entries.truncate(n);
    }

    /// The experts, most valuable first.
    pub fn keys(&self) -> impl Iterator<Item = ExpertKey> + '_ {
        self.entries.iter().map(|e| e.0)
    }

    /// Experts with their counts.
    pub fn entries(&self) -> &[(ExpertKey, u64)] {
        &self.entries
    }

    /// Number of experts.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(l: u32, e: u32) -> ExpertKey {
        ExpertKey::new(l, e)
    }

    #[test]
    fn trace_ranking_takes_the_most_chosen_within_the_budget() {
        let trace = [
            k(0, 1),
            k(0, 2),
            k(0, 1),
            k(1, 5),
            k(0, 1),
            k(1, 5),
            k(2, 0),
        ];
        let h = HotSet::from_trace(trace);
        assert_eq!(
            h.keys().collect::<Vec<_>>(),
            [k(0, 1), k(1, 5), k(0, 2), k(2, 0)]
        );
        let h = HotSet::from_trace_with_budget(trace, 2 * 1000 + 999, 1000);
        assert_eq!(h.entries(), &[(k(0, 1), 3), (k(1, 5), 2)]);
    }

    #[test]
    fn save_and_load_round_trip_and_routing_csv_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hot.csv");
        let h = HotSet::from_trace([k(3, 1), k(3, 1), k(0, 0)]);
        h.save(&p).unwrap();
        assert_eq!(HotSet::load(&p).unwrap(), h);

        let r = dir.path().join("routing.csv");
        std::fs::write(
            &r,
            "token,layer,expert,weight\n0,0,4,0.5\n0,0,2,0.5\n1,0,4,0.7\n",
        )
        .unwrap();
        let h = HotSet::load(&r).unwrap();
        assert_eq!(h.entries(), &[(k(0, 4), 2), (k(0, 2), 1)]);
        assert_eq!(read_routing_csv(&r).unwrap().len(), 3);

        let plain = dir.path().join("plain.txt");
        std::fs::write(&plain, "# mine\n2,7\n1,1\n").unwrap();
        assert_eq!(
            HotSet::load(&plain).unwrap().keys().collect::<Vec<_>>(),
            [k(2, 7), k(1, 1)]
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.csv");
        std::fs::write(&p, "layer,expert\n0,1\n0,x\n").unwrap();
        let e = HotSet::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.csv:3") && e.contains("'x'"), "{e}");
        std::fs::write(&p, "0,1\n0,1\n").unwrap();
        assert!(HotSet::load(&p).unwrap_err().to_string().contains("twice"));
        let e = HotSet::load(&dir.path().join("none.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.csv"), "{e}");
    }
}
