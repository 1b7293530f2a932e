//! The memory budget (`--memory-budget SIZE`) and the planner that splits it at load time
//! between what must stay resident and the expert cache.
//!
//! Everything the process holds counts: resident weights (embeddings, attention, norms,
//! routers, LM head), the KV cache, scratch buffers, I/O buffers (per I/O thread, what a repack
//! needs beside the slot: the down matrix read aside, eight gate rows; and page-cache slack for
//! buffered reads, none with `O_DIRECT`), a reserve for the process
//! itself (code, thread stacks, allocator slack), and the expert cache, which gets the rest.
//! The smallest workable budget holds everything but the cache plus one layer's active
//! experts (top-k slots); below it the planner fails with [`Error::BudgetTooSmall`] stating
//! the minimum. A plan that holds more than the process may ([`memory_ceiling`]: its cgroup's
//! memory limit, or the machine's memory) fails at load with [`Error::BudgetTooLarge`] rather
//! than being killed mid-run.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A memory budget in bytes, parsed from sizes like `1GiB`, `512MiB`, `1.5GB`, `800M`.
///
/// Units (case-insensitive): none or `B` = bytes; `KiB`/`MiB`/`GiB`/`TiB` = powers of 1024;
/// `KB`/`MB`/`GB`/`TB` = powers of 1000; bare `K`/`M`/`G`/`T` = powers of 1024, as cgroup
/// `memory.max`, `docker --memory` and `ulimit` read them. Fractions are allowed (`1.5GiB`);
/// the result is rounded down to whole bytes and must be positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemoryBudget(pub u64);

impl MemoryBudget {
    /// Bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

const UNITS: [(&str, u64); 17] = [
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
    ("t", 1 << 40),
    ("tib", 1 << 40),
    ("tb", 1_000_000_000_000),
    ("ki", 1 << 10),
    ("mi", 1 << 20),
    ("gi", 1 << 30),
];

impl FromStr for MemoryBudget {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidInput(format!(
                "memory budget '{s}': {why} (examples: 1GiB, 512MiB, 1.5GB, 800M)"
            ))
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(bad("no number"));
        }
        let unit = unit.trim().to_ascii_lowercase();
        let mult = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                bad(&format!(
                    "unknown unit '{unit}'; use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, K, M, G or T"
                ))
            })?;
        let bytes = match num.split_once('.') {
            None => num
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(|| bad("too large"))?,
            Some((int, frac)) => {
                if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
                    return Err(bad("not a number"));
                }
                // Exact decimal arithmetic: int·mult + frac·mult / 10^len(frac).
                let int: u128 = if int.is_empty() {
                    0
                } else {
                    int.parse().map_err(|_| bad("not a number"))?
                };
                let digits = frac.len().min(18);
                let frac_v: u128 = if digits == 0 {
                    0
                } else {
                    frac[..digits].parse().map_err(|_| bad("not a number"))?
                };
                let scale = 10u128.pow(digits as u32);
                let b = int * u128::from(mult) + frac_v * u128::from(mult) / scale;
                u64::try_from(b).map_err(|_| bad("too large"))?
            }
        };
        if bytes == 0 {
            return Err(bad("must be positive"));
        }
        Ok(MemoryBudget(bytes))
    }
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

/// `1.50 GiB`, `512.0 MiB`, `37.0 KiB`, `100 B`.
pub fn format_bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let x = b as f64;
    if x >= K * K * K {
        format!("{:.2} GiB", x / (K * K * K))
    } else if x >= K * K {
        format!("{:.1} MiB", x / (K * K))
    } else if x >= K {
        format!("{:.1} KiB", x / K)
    } else {
        format!("{b} B")
    }
}

/// What the planner needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PlanInput {
    /// The budget.
    pub budget_bytes: u64,
    /// Non-expert weights (embeddings, attention, norms, routers, LM head).
    pub resident_bytes: u64,
    /// KV cache at the planned context length.
    pub kv_bytes: u64,
    /// Activations and other scratch.
    pub scratch_bytes: u64,
    /// I/O staging beyond the cache slots: per I/O thread, the repack's buffers (the down
    /// matrix read aside, eight gate rows) and page-cache slack for buffered reads (none with
    /// `O_DIRECT`).
    pub io_buffer_bytes: u64,
    /// Reads in flight (I/O threads); they land in cache slots.
    pub io_threads: u32,
    /// Process overhead: code, thread stacks, allocator slack.
    pub reserve_bytes: u64,
    /// Bytes of one expert cache slot (an expert's three matrices, aligned).
    pub slot_bytes: u64,
    /// Experts per layer.
    pub n_experts: u32,
    /// Experts chosen per token (top-k).
    pub top_k: u32,
    /// Layers.
    pub n_layers: u32,
}

impl PlanInput {
    /// Everything but the expert cache.
    pub fn fixed_bytes(&self) -> u64 {
        self.resident_bytes
            .saturating_add(self.kv_bytes)
            .saturating_add(self.scratch_bytes)
            .saturating_add(self.io_buffer_bytes)
            .saturating_add(self.reserve_bytes)
    }

    /// All experts of the model.
    pub fn total_experts(&self) -> u64 {
        u64::from(self.n_experts) * u64::from(self.n_layers)
    }

    /// The smallest budget that works: fixed part + one layer's active experts.
    pub fn min_bytes(&self) -> u64 {
        self.fixed_bytes()
            .saturating_add(u64::from(self.top_k.max(1)).saturating_mul(self.slot_bytes))
    }
}

/// The split of a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The inputs.
    pub input: PlanInput,
    /// Expert cache slots.
    pub cache_slots: u64,
    /// Bytes of the expert cache.
    pub cache_bytes: u64,
    /// Reads in flight (I/O threads).
    pub io_buffers: u32,
    /// Whether every expert fits (no offloading needed).
    pub all_resident: bool,
    /// Budget left over.
    pub unused_bytes: u64,
}

impl Plan {
    /// Splits `input.budget_bytes`; errors with [`Error::BudgetTooSmall`] when it cannot hold the
    /// fixed part plus one layer's active experts.
    pub fn new(input: PlanInput) -> Result<Plan> {
        if input.slot_bytes == 0 || input.n_layers == 0 || input.n_experts == 0 {
            return Err(Error::InvalidInput(format!(
                "memory plan: slot_bytes, n_layers and n_experts must be positive ({input:?})"
            )));
        }
        let min = input.min_bytes();
        if input.budget_bytes < min {
            return Err(Error::BudgetTooSmall {
                budget_bytes: input.budget_bytes,
                min_bytes: min,
                what: format!(
                    "resident weights {} + KV cache {} + scratch {} + I/O buffers {} + reserve {} + one layer's {} active experts x {}",
                    format_bytes(input.resident_bytes),
                    format_bytes(input.kv_bytes),
                    format_bytes(input.scratch_bytes),
                    format_bytes(input.io_buffer_bytes),
                    format_bytes(input.reserve_bytes),
                    input.top_k.max(1),
                    format_bytes(input.slot_bytes)
                ),
            });
        }
        let room = input.budget_bytes - input.fixed_bytes();
        let cache_slots = (room / input.slot_bytes).min(input.total_experts());
        let cache_bytes = cache_slots * input.slot_bytes;
        Ok(Plan {
            input,
            cache_slots,
            cache_bytes,
            io_buffers: input.io_threads,
            all_resident: cache_slots == input.total_experts(),
            unused_bytes: room - cache_bytes,
        })
    }

    /// Fraction of all experts the cache holds.
    pub fn cache_fraction(&self) -> f64 {
        self.cache_slots as f64 / self.input.total_experts().max(1) as f64
    }

    /// Whether a per-layer split gives every layer at least its top-k slots.
    pub fn per_layer_feasible(&self) -> bool {
        self.cache_slots >= u64::from(self.input.n_layers) * u64::from(self.input.top_k.max(1))
    }

    /// Bytes the plan holds: the budget less what it leaves unused.
    pub fn planned_bytes(&self) -> u64 {
        self.input.budget_bytes - self.unused_bytes
    }

    /// Errors with [`Error::BudgetTooLarge`] if the plan holds more than `ceiling`.
    pub fn check_ceiling(&self, ceiling: Option<MemoryCeiling>) -> Result<()> {
        match ceiling {
            Some(c) if self.planned_bytes() > c.bytes => Err(Error::BudgetTooLarge {
                budget_bytes: self.input.budget_bytes,
                planned_bytes: self.planned_bytes(),
                limit: c.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// What caps the memory this process can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CeilingSource {
    /// The memory limit of the process's cgroup (the smallest on its path).
    Cgroup,
    /// The machine's memory (`MemTotal`).
    Machine,
}

/// The most memory this process can hold, and what sets it ([`memory_ceiling`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryCeiling {
    /// Bytes.
    pub bytes: u64,
    /// Cgroup limit or machine memory.
    pub source: CeilingSource,
}

impl fmt::Display for MemoryCeiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = format_bytes(self.bytes);
        match self.source {
            CeilingSource::Cgroup => write!(
                f,
                "this process's cgroup allows {} B ({b}, its memory limit)",
                self.bytes
            ),
            CeilingSource::Machine => {
                write!(f, "this machine has {} B ({b}) of memory", self.bytes)
            }
        }
    }
}

/// The smaller of this process's cgroup memory limit ([`cgroup_memory_limit`]) and the
/// machine's memory (`MemTotal` in `/proc/meminfo`); `None` where neither can be read.
pub fn memory_ceiling() -> Option<MemoryCeiling> {
    let cgroup = cgroup_memory_limit().map(|bytes| MemoryCeiling {
        bytes,
        source: CeilingSource::Cgroup,
    });
    let machine = machine_memory_bytes().map(|bytes| MemoryCeiling {
        bytes,
        source: CeilingSource::Machine,
    });
    [cgroup, machine]
        .into_iter()
        .flatten()
        .min_by_key(|c| c.bytes)
}

/// The machine's memory, bytes: `MemTotal` in `/proc/meminfo` (`None` where unreadable).
pub fn machine_memory_bytes() -> Option<u64> {
    meminfo_bytes(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal")
}

/// The value of `field` (e.g. `MemTotal`, `MemAvailable`) in the text of `/proc/meminfo`,
/// bytes (the file gives kB).
pub fn meminfo_bytes(meminfo: &str, field: &str) -> Option<u64> {
    let rest = meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let mut f = rest.split_whitespace();
    let n: u64 = f.next()?.parse().ok()?;
    match f.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// The memory limit of this process's cgroup, the smallest of its own and its ancestors'
/// (cgroup v1 `memory.limit_in_bytes` or v2 `memory.max`); `None` without one.
pub fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_limit_from(&own, |p| std::fs::read_to_string(p).ok())
}

/// [`cgroup_memory_limit`] from the text of `/proc/self/cgroup` and a file reader.
fn cgroup_limit_from(own: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    // v1: "N:memory:/path" (controllers may be comma-separated); v2: "0::/path".
    let v1 = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
        ctl.split(',')
            .any(|c| c == "memory")
            .then(|| path.to_string())
    });
    let (root, file, path) = match v1 {
        Some(p) => ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", p),
        None => {
            let p = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            ("/sys/fs/cgroup", "memory.max", p.to_string())
        }
    };
    let mut limit: Option<u64> = None;
    let mut at = path.trim_end_matches('/').to_string();
    loop {
        let v = read(&format!("{root}{at}/{file}"))
            .and_then(|t| t.trim().parse::<u64>().ok())
            // v1 writes "unlimited" as the largest page-aligned i64; v2 writes "max".
            .filter(|&b| b < 1 << 60);
        if let Some(b) = v {
            limit = Some(limit.map_or(b, |l| l.min(b)));
        }
        match at.rfind('/') {
            Some(i) if !at.is_empty() => at.truncate(i),
            _ => break,
        }
    }
    limit
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.input;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, b: u64, note: &str| {
            writeln!(f, "  {name:<17}{:>12}{note}", format_bytes(b))
        };
        writeln!(
            f,
            "memory budget      {:>12} ({} B)",
            format_bytes(i.budget_bytes),
            i.budget_bytes
        )?;
        row(f, "resident weights", i.resident_bytes, "")?;
        row(f, "KV cache", i.kv_bytes, "")?;
        row(f, "scratch", i.scratch_bytes, "")?;
        row(
            f,
            "I/O buffers",
            i.io_buffer_bytes,
            &format!("  ({} reads in flight)", self.io_buffers),
        )?;
        row(f, "reserve", i.reserve_bytes, "")?;
        row(
            f,
            "expert cache",
            self.cache_bytes,
            &format!(
                "  = {} slots x {} ({:.1}% of {} experts, {:.1} per layer, top-{}){}",
                self.cache_slots,
                format_bytes(i.slot_bytes),
                100.0 * self.cache_fraction(),
                i.total_experts(),
                self.cache_slots as f64 / f64::from(i.n_layers.max(1)),
                i.top_k,
                if self.all_resident {
                    ", all resident"
                } else {
                    ""
                }
            ),
        )?;
        row(f, "unused", self.unused_bytes, "")?;
        write!(
            f,
            "  minimum budget   {:>12} (everything above but the cache, plus {} experts)",
            format_bytes(i.min_bytes()),
            i.top_k.max(1)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> u64 {
        s.parse::<MemoryBudget>().unwrap().bytes()
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse("1GiB"), 1 << 30);
        assert_eq!(parse("512MiB"), 512 << 20);
        assert_eq!(parse("1.5GB"), 1_500_000_000);
        assert_eq!(parse("800M"), 800 << 20);
        assert_eq!(parse("800m"), 800 << 20);
        assert_eq!(parse(" 2 gib "), 2 << 30);
        assert_eq!(parse("4096"), 4096);
        assert_eq!(parse("1.5GiB"), 3 << 29);
        assert_eq!(parse("0.5K"), 512);
        assert_eq!(parse("10kb"), 10_000);
        assert_eq!(parse("1T"), 1 << 40);
    }

    #[test]
    fn bad_sizes_explain_themselves() {
        for s in [
            "",
            "GiB",
            "1XB",
            "-1G",
            "0",
            "1..5G",
            "99999999999999999999",
            "0.0M",
            "1.2.3G",
        ] {
            let e = s.parse::<MemoryBudget>().unwrap_err().to_string();
            assert!(
                e.contains("memory budget") && e.contains("examples"),
                "{s}: {e}"
            );
        }
        assert!(
            "1XB"
                .parse::<MemoryBudget>()
                .unwrap_err()
                .to_string()
                .contains("unknown unit 'xb'")
        );
        assert_eq!(MemoryBudget(3 << 29).to_string(), "1.50 GiB");
    }

    /// SmallThinker-4B Q4_0-like numbers.
    fn input(budget: u64) -> PlanInput {
        PlanInput {
            budget_bytes: budget,
            resident_bytes: 300 << 20,
            kv_bytes: 32 << 20,
            scratch_bytes: 8 << 20,
            io_buffer_bytes: 0,
            io_threads: 4,
            reserve_bytes: 32 << 20,
            slot_bytes: 1_994_752,
            n_experts: 32,
            top_k: 4,
            n_layers: 32,
        }
    }

    #[test]
    fn the_cache_gets_what_is_left() {
        let p = Plan::new(input(1 << 30)).unwrap();
        let room = (1u64 << 30) - (372 << 20);
        assert_eq!(p.cache_slots, room / 1_994_752);
        assert_eq!(p.cache_bytes + p.unused_bytes + (372 << 20), 1 << 30);
        assert!(!p.all_resident);
        assert!(p.per_layer_feasible());
        let text = p.to_string();
        assert!(
            text.contains("expert cache") && text.contains("top-4"),
            "{text}"
        );
        // A huge budget caps at all experts.
        let p = Plan::new(input(64 << 30)).unwrap();
        assert_eq!(p.cache_slots, 1024);
        assert!(p.all_resident);
    }

    #[test]
    fn a_plan_above_the_ceiling_names_it_and_a_small_model_under_a_big_budget_passes() {
        let p = Plan::new(input(8 << 30)).unwrap();
        // 1024 experts x 1.9 MiB + 372 MiB: the whole model, about 2.3 GiB, not the 8 GiB.
        assert!(p.all_resident);
        assert_eq!(p.planned_bytes(), (372 << 20) + 1024 * 1_994_752);
        let roomy = MemoryCeiling {
            bytes: 4 << 30,
            source: CeilingSource::Cgroup,
        };
        p.check_ceiling(Some(roomy)).unwrap();
        p.check_ceiling(None).unwrap();
        let tight = MemoryCeiling {
            bytes: 1 << 30,
            source: CeilingSource::Cgroup,
        };
        let e = p.check_ceiling(Some(tight)).unwrap_err();
        match &e {
            Error::BudgetTooLarge {
                budget_bytes,
                planned_bytes,
                limit,
            } => {
                assert_eq!(*budget_bytes, 8 << 30);
                assert_eq!(*planned_bytes, p.planned_bytes());
                assert!(limit.contains("cgroup allows 1073741824 B"), "{limit}");
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("smaller --memory-budget"), "{e}");
        let machine = MemoryCeiling {
            bytes: 2 << 30,
            source: CeilingSource::Machine,
        };
        assert!(
            p.check_ceiling(Some(machine))
                .unwrap_err()
                .to_string()
                .contains("this machine has 2147483648 B (2.00 GiB) of memory")
        );
    }

    #[test]
    fn mem_total_is_read_in_kib() {
        let t = "MemTotal:       24683520 kB\nMemFree:        1 kB\n";
        assert_eq!(meminfo_bytes(t, "MemTotal"), Some(24_683_520 * 1024));
        assert_eq!(meminfo_bytes(t, "MemFree"), Some(1024));
        assert_eq!(meminfo_bytes("MemFree: 1 kB\n", "MemTotal"), None);
        assert_eq!(meminfo_bytes("MemTotal: x kB\n", "MemTotal"), None);
        assert_eq!(meminfo_bytes("MemTotal: 5 MB\n", "MemTotal"), None);
        assert_eq!(meminfo_bytes("MemTotalX: 5 kB\n", "MemTotal"), None);
        // This machine's ceiling, if readable, is positive.
        assert!(memory_ceiling().is_none_or(|c| c.bytes > 0));
    }

    #[test]
    fn cgroup_limits_are_the_smallest_on_the_path_and_unlimited_is_none() {
        let files = |path: &str| -> Option<String> {
            match path {
                "/sys/fs/cgroup/memory/a/b/memory.limit_in_bytes" => Some("1127219200\n".into()),
                "/sys/fs/cgroup/memory/a/memory.limit_in_bytes" => Some("2147483648\n".into()),
                "/sys/fs/cgroup/memory/memory.limit_in_bytes" => {
                    Some("9223372036854771712\n".into())
                }
                "/sys/fs/cgroup/u/memory.max" => Some("max\n".into()),
                "/sys/fs/cgroup/memory.max" => None,
                _ => None,
            }
        };
        let v1 = "12:pids:/a/b\n4:cpu,memory:/a/b\n0::/a/b\n";
        assert_eq!(cgroup_limit_from(v1, files), Some(1_127_219_200));
        assert_eq!(cgroup_limit_from("0::/u\n", files), None);
        assert_eq!(cgroup_limit_from("4:memory:/\n", files), None);
        let tight = |p: &str| (p == "/sys/fs/cgroup/memory.max").then(|| "536870912".to_string());
        assert_eq!(cgroup_limit_from("0::/u/v\n", tight), Some(512 << 20));
        assert_eq!(cgroup_limit_from("", files), None);
    }

    #[test]
    fn a_budget_below_the_minimum_names_the_minimum() {
        let i = input(0);
        let min = i.min_bytes();
        assert_eq!(min, (372 << 20) + 4 * 1_994_752);
        let mut i = input(min - 1);
        let e = Plan::new(i).unwrap_err();
        match &e {
            Error::BudgetTooSmall {
                min_bytes,
                budget_bytes,
                what,
            } => {
                assert_eq!((*min_bytes, *budget_bytes), (min, min - 1));
                assert!(what.contains("resident weights 300.0 MiB"), "{what}");
            }
            other => panic!("{other}"),
        }
        i.budget_bytes = min;
        assert_eq!(Plan::new(i).unwrap().cache_slots, 4);
    }
}
