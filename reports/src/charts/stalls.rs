//! Why decoding under a memory budget waits: where the storage sat idle, and what each wait for
//! an expert was waiting on, per decoded token.

use super::hbars::{HBar, HRow, HSpec, draw_rows};
use super::{Chart, HALF_W, IO, STALL, ValueAxis, swatch};
use crate::format;
use crate::profile::Stalls;

/// The two breakdowns of a profile's [`Stalls`] as one chart of horizontal bars.
pub fn why_it_waits(id: &str, stalls: Option<&Stalls>) -> Chart {
    let title = "Why decoding waits";
    let caption = "Per decoded token of the profiled run under its memory budget: the orange \
                   bars split the time no expert read was in flight by what the compute side \
                   was doing (idle storage during the LM head cannot be used: the next token's \
                   experts are unknown until it is sampled); the red bars split the time the \
                   compute side waited for an expert by what that expert was doing (being read \
                   is the device; being repacked is CPU work after the read).";
    let Some(st) = stalls.filter(|s| !s.storage_idle.is_empty() || !s.waits.is_empty()) else {
        return Chart::missing(
            id,
            title,
            caption,
            "the profiled run read no experts: it ran in memory",
        );
    };
    let row = |prefix: &str, (k, v): &(String, f64), color| HRow {
        label: format!("{prefix} · {k}"),
        bars: vec![HBar {
            lane: 0,
            from: 0.0,
            to: v.max(0.0),
            color,
        }],
        note: Some(format!("{} ms", format::num(*v))),
    };
    let rows: Vec<HRow> = st
        .storage_idle
        .iter()
        .map(|e| row("storage idle", e, IO))
        .chain(st.waits.iter().map(|e| row("waiting", e, STALL)))
        .collect();
    let max = rows
        .iter()
        .flat_map(|r| r.bars.iter().map(|b| b.to))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let fmt = |v: f64| format!("{} ms", format::tick(v));
    let desc = format!(
        "ms per token (of {} ms per token)",
        format::num(st.ms_per_token)
    );
    let spec = HSpec {
        lanes: 1,
        x: ValueAxis::linear(0.0, super::axis_max([max]) * 1.2),
        x_desc: &desc,
        x_fmt: &fmt,
        ref_lines: vec![],
        width: HALF_W,
    };
    draw_rows(
        id,
        title,
        caption,
        vec![
            swatch("storage idle (no expert read in flight)", IO),
            swatch("waiting for an expert", STALL),
        ],
        &rows,
        &spec,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_both_breakdowns_or_says_why_not() {
        let st = Stalls {
            ms_per_token: 52.5,
            storage_idle: vec![("LM head".into(), 4.5), ("attention".into(), 1.9)],
            waits: vec![("being read".into(), 21.1), ("being repacked".into(), 3.2)],
        };
        let c = why_it_waits("w", Some(&st));
        let svg = c.svg().expect("drawn");
        for label in [
            "storage idle · LM head",
            "waiting · being read",
            "waiting · being repacked",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        assert!(svg.contains("52.5"), "the token time is in the axis title");
        let none = why_it_waits("w", None);
        assert!(none.svg().is_none());
        let empty = why_it_waits("w", Some(&Stalls::default()));
        assert!(empty.svg().is_none());
    }
}
