//! The plan `cargo xtask bench` prints before measuring: which engine runs which scenario, what is
//! already measured (resumed) or skipped and why, and a time estimate. Pure, so it is tested
//! without running anything.

use std::collections::HashSet;

use crate::peer::{self, Peer};
use crate::scenario::Scenario;

/// Who measures a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Our engine (`thinker bench`).
    Ours,
    /// A peer engine through its driver.
    Peer(Peer),
}

impl Engine {
    /// The engine's name in records.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Ours => peer::OUR_ENGINE,
            Engine::Peer(Peer::LlamaCpp) => peer::ENGINE,
        }
    }
}

/// One scenario for one engine.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// What to measure.
    pub scenario: Scenario,
    /// Who measures it.
    pub engine: Engine,
}

/// Settings the plan depends on.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    /// Compute threads.
    pub threads: u32,
    /// Repetitions per test.
    pub reps: usize,
    /// The tiny smoke model (`--quick`).
    pub tiny: bool,
    /// The built `thinker` can offload experts.
    pub offload: bool,
    /// The peer to measure too, if any.
    pub peer: Option<Peer>,
    /// Memory cgroups usable here (the peer's budgets need them).
    pub cgroup: bool,
}

/// The plan: lines to print, jobs to run, estimated seconds.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// One line per scenario and engine.
    pub lines: Vec<String>,
    /// Jobs still to run, in order.
    pub todo: Vec<Job>,
    /// Estimated seconds of the jobs to run.
    pub est_secs: f64,
}

/// A rough per-scenario time estimate, seconds.
pub fn estimate_secs(s: &Scenario, reps: usize, tiny: bool) -> f64 {
    if tiny {
        return 2.0;
    }
    let runs = (reps + 1) as f64;
    let offload = s.budget.is_some();
    let pp: f64 = s.pp.iter().map(|&n| n as f64 / 40.0).sum();
    let tg: f64 =
        s.tg.iter()
            .map(|&n| n as f64 / if offload { 4.0 } else { 15.0 })
            .sum();
    5.0 + runs * (pp + tg)
}

/// Why the peer cannot run `s`, if it cannot.
pub fn peer_skip_reason(s: &Scenario, cgroup: bool) -> Option<&'static str> {
    if s.emulated_storage() {
        Some(
            "skipped: emulated storage is our engine's own device model (the peer runs in memory or mmaps the real disk)",
        )
    } else if s.budget.is_some() && !cgroup {
        Some("skipped: no cgroup memory limit here, and the peer has no budget of its own")
    } else {
        None
    }
}

/// Builds the plan of `scenarios`, given the record keys already `done`.
pub fn plan(scenarios: &[Scenario], done: &HashSet<String>, c: &PlanConfig) -> Plan {
    let mut p = Plan::default();
    for s in scenarios {
        let est = estimate_secs(s, c.reps, c.tiny);
        let mut engines = vec![Engine::Ours];
        engines.extend(c.peer.map(Engine::Peer));
        for engine in engines {
            let finished = s
                .keys(c.threads, engine.name())
                .iter()
                .all(|k| done.contains(k));
            let skip = match engine {
                Engine::Ours => (s.budget.is_some() && !c.offload)
                    .then_some("skipped: offload not in this build"),
                Engine::Peer(_) => peer_skip_reason(s, c.cgroup),
            };
            let status = if let Some(why) = skip {
                why
            } else if finished {
                "done (resumed)"
            } else {
                p.est_secs += est;
                p.todo.push(Job {
                    scenario: s.clone(),
                    engine,
                });
                "to run"
            };
            let what = match engine {
                Engine::Ours => s.describe(),
                Engine::Peer(_) => format!("  + {}", engine.name()),
            };
            p.lines
                .push(format!("  {what:<60} ~{est:>4.0} s  {status}"));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::default_matrix;

    fn cfg(peer: Option<Peer>) -> PlanConfig {
        PlanConfig {
            threads: 2,
            reps: 3,
            tiny: false,
            offload: true,
            peer,
            cgroup: true,
        }
    }

    fn scenarios() -> Vec<Scenario> {
        default_matrix(false)
            .expand(std::path::Path::new("m"))
            .unwrap()
    }

    #[test]
    fn without_peer_only_ours_is_planned() {
        let p = plan(&scenarios(), &HashSet::new(), &cfg(None));
        assert_eq!(p.todo.len(), 8);
        assert!(p.todo.iter().all(|j| j.engine == Engine::Ours));
        assert!(p.lines.iter().all(|l| !l.contains("llama.cpp")));
    }

    #[test]
    fn peer_skips_emulated_storage_and_says_so() {
        let sc = scenarios();
        let p = plan(&sc, &HashSet::new(), &cfg(Some(Peer::LlamaCpp)));
        let peer_jobs: Vec<(&str, Option<u64>)> = p
            .todo
            .iter()
            .filter(|j| j.engine == Engine::Peer(Peer::LlamaCpp))
            .map(|j| (j.scenario.storage.as_str(), j.scenario.budget))
            .collect();
        assert_eq!(
            peer_jobs,
            [
                ("in-memory", None),
                ("in-memory", None),
                ("real", Some(2 << 30)),
                ("real", Some(1 << 30))
            ]
        );
        // One line per scenario and engine; the emulated ones say why the peer is skipped.
        assert_eq!(p.lines.len(), 16);
        let emmc = p.lines.iter().position(|l| l.contains("emmc")).unwrap();
        assert!(p.lines[emmc + 1].contains("+ llama.cpp"));
        assert!(
            p.lines[emmc + 1].contains("skipped: emulated storage"),
            "{}",
            p.lines[emmc + 1]
        );
        assert!(p.lines[emmc].ends_with("to run"));
    }

    #[test]
    fn peer_budgets_need_a_cgroup() {
        let sc = scenarios();
        let c = PlanConfig {
            cgroup: false,
            ..cfg(Some(Peer::LlamaCpp))
        };
        let p = plan(&sc, &HashSet::new(), &c);
        let peer_storages: Vec<&str> = p
            .todo
            .iter()
            .filter(|j| j.engine != Engine::Ours)
            .map(|j| j.scenario.storage.as_str())
            .collect();
        assert_eq!(peer_storages, ["in-memory", "in-memory"]);
        assert!(p.lines.iter().any(|l| l.contains("no cgroup memory limit")));
    }

    #[test]
    fn measured_peer_scenarios_resume() {
        let sc = scenarios();
        let done: HashSet<String> = sc[0]
            .keys(2, "llama.cpp")
            .into_iter()
            .chain(sc[1].keys(2, "smallthinker-rs"))
            .collect();
        let p = plan(&sc[..2], &done, &cfg(Some(Peer::LlamaCpp)));
        assert_eq!(
            p.todo
                .iter()
                .map(|j| (j.scenario.quant.as_str(), j.engine))
                .collect::<Vec<_>>(),
            [
                ("q4_0", Engine::Ours),
                ("q8_0", Engine::Peer(Peer::LlamaCpp))
            ]
        );
        assert!(p.lines[1].ends_with("done (resumed)"));
        assert!(p.lines[2].ends_with("done (resumed)"));
    }
}
