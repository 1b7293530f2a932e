//! Expert offloading: run models larger than RAM by keeping only some experts in memory and
//! reading the others from the model file as the router asks for them.
//!
//! Storage-side building blocks, each usable on its own:
//! - [`layout`]: where each expert's gate/up/down bytes are in the file, and how they fill a
//!   cache slot.
//! - [`file`](mod@file): the model file opened for positioned reads (`O_DIRECT` where possible) into
//!   aligned buffers, with typed errors for truncated/removed/unreadable files.
//! - [`storage`]: storage-device profiles (`--storage`) and their emulation on top of real reads.
//! - [`io`]: a pool of I/O threads serving prioritised, cancellable expert reads.
//! - [`cache`] and [`policy`]: the expert cache over a pre-allocated slab, with LRU, LFU, LRFU and
//!   [`learned`] eviction, pinning, per-layer or global capacity, and a pinned hot set ([`hotset`]).
//! - [`budget`]: memory-budget parsing (`--memory-budget`) and the planner that splits it.
//! - [`prefetch`]: the [`Prefetcher`] the forward pass calls: `request` experts as soon as the
//!   router has run, `wait` for each one and compute on its bytes while it is pinned.
//! - [`sim`]: trace-driven replay of the cache policies, and Belady's optimum for comparison.
//!
//! `unsafe` is confined to the small `sys` module (aligned allocation, `posix_fadvise`, the
//! timer slack of emulating threads).

pub mod budget;
pub mod cache;
pub mod file;
pub mod hotset;
pub mod io;
pub mod layout;
pub mod learned;
pub mod policy;
pub mod prefetch;
pub mod sim;
pub mod storage;
mod sys;

pub use sys::pin_malloc_mmap_threshold;

pub use budget::{MemoryBudget, Plan, PlanInput};
pub use cache::{CacheConfig, CacheScope, CacheStats, Capacity, ExpertCache};
pub use file::{ExpertFile, IoMode, OpenMode};
pub use hotset::HotSet;
pub use io::{InPlacePart, IoConfig, IoPool, IoStats, Priority, SlotTransform, StagedPart};
pub use layout::{ExpertLayout, FileRange, Part, SlotLayout};
pub use policy::PolicyKind;
pub use prefetch::{ExpertGuard, OffloadStats, PrefetchConfig, Prefetcher};
pub use storage::{DeviceModel, DeviceSpec, DeviceStats, StorageProfile, UNFAITHFUL_SHARE};
pub use sys::{ALIGN, AlignedBuf};

use std::fmt;

/// An expert of a layer: the cache and I/O key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpertKey {
    /// Layer index.
    pub layer: u32,
    /// Expert index within the layer.
    pub expert: u32,
}

impl ExpertKey {
    /// `(layer, expert)`.
    pub const fn new(layer: u32, expert: u32) -> ExpertKey {
        ExpertKey { layer, expert }
    }
}

impl fmt::Display for ExpertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layer {} expert {}", self.layer, self.expert)
    }
}

/// `d` in nanoseconds, or `u64::MAX` (585 years) if it is longer: the conversion the time
/// counters use.
pub fn saturating_nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
