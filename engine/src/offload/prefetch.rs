//! The [`Prefetcher`]: what the forward pass calls to get expert bytes under offloading.
//!
//! Per layer, in the forward pass:
//! 1. as soon as the router has chosen the layer's experts, [`Prefetcher::request`] them with
//!    [`Priority::Demand`]: cached experts are pinned, missing ones are queued to the I/O threads;
//!    attention then runs while they are read;
//! 2. in the MoE step, [`Prefetcher::wait`] (a given expert) or [`Prefetcher::wait_any`] (the
//!    first to arrive) returns an [`ExpertGuard`]: the expert's gate/up/down bytes, pinned until
//!    the guard is dropped. Only experts that have not arrived block (span `io.wait`).
//!
//! Speculation: [`Priority::Prefetch`] requests (e.g. the next layer's likely experts) are
//! served after demand reads, are not pinned, and can be cancelled with
//! [`Prefetcher::cancel_prefetch`] once the real routing is known; a later demand request
//! promotes a queued prefetch of the same expert.
//!
//! The guard's bytes are exactly the file's bytes, so computing on them is bit-identical to
//! computing on the memory-mapped weights, provided the caller keeps the arithmetic order (e.g.
//! sums the experts' outputs in the same order whatever order they arrive in).
//!
//! A failed read (file truncated, removed, unreadable) is sticky: that and every later call
//! returns an error naming the file, the byte range and the expert; no guard ever exposes a
//! partially read expert.
//!
//! `request` and `wait` are meant for one thread (the compute thread); guards may be dropped
//! anywhere.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, RwLockReadGuard};
use std::time::{Duration, Instant};

use super::ExpertKey;
use super::cache::{CacheConfig, CacheStats, ExpertCache, Lookup};
use super::file::ExpertFile;
use super::io::{
    Completion, IoConfig, IoPool, IoStats, Outcome, Priority, ReadRequest, SlotBuf, SlotTransform,
};
use super::layout::{ExpertLayout, Part, SlotLayout};
use super::policy::SlotId;
use super::storage::DeviceStats;
use super::sys::AlignedBuf;
use crate::error::{Error, Result};

/// Prefetcher settings.
#[derive(Clone, Debug, Default)]
pub struct PrefetchConfig {
    /// I/O threads and storage profile.
    pub io: IoConfig,
    /// Cache size, scope, policy and hot set.
    pub cache: CacheConfig,
}

/// Counters of the compute side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitStats {
    /// `wait` calls that had to block.
    pub blocked: u64,
    /// Time blocked, nanoseconds.
    pub blocked_ns: u64,
    /// Demand reads that had to wait for a free slot (every slot pinned or loading).
    pub deferred: u64,
    /// Prefetches dropped for lack of an evictable slot.
    pub prefetch_dropped: u64,
    /// Prefetches cancelled.
    pub prefetch_cancelled: u64,
}

/// Everything measured by a [`Prefetcher`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Cache counters.
    pub cache: CacheStats,
    /// I/O pool counters.
    pub io: IoStats,
    /// Compute-side waiting.
    pub wait: WaitStats,
    /// Storage emulation counters, if a profile is emulated.
    pub device: Option<DeviceStats>,
}

struct State {
    cache: ExpertCache,
    /// Per layer: (expert, slot) pinned by a demand request, not yet taken by a guard.
    reserved: Vec<Vec<(u32, SlotId)>>,
    /// Demand keys waiting for a slot.
    deferred: VecDeque<ExpertKey>,
    failed: Option<Error>,
    wait: WaitStats,
}

/// Copies an error for repeated reporting (errors are not `Clone`).
fn replicate(e: &Error) -> Error {
    match e {
        Error::ReadRange {
            path,
            offset,
            len,
            context,
            source,
        } => Error::ReadRange {
            path: path.clone(),
            offset: *offset,
            len: *len,
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => Error::Model(other.to_string()),
    }
}

/// Expert reads through an [`ExpertCache`] and an [`IoPool`]; see the module docs.
pub struct Prefetcher {
    layout: ExpertLayout,
    bufs: Vec<SlotBuf>,
    pool: IoPool,
    state: Mutex<State>,
}

impl std::fmt::Debug for Prefetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetcher")
            .field("pool", &self.pool)
            .field("slots", &self.bufs.len())
            .finish()
    }
}

/// How long a blocked `wait` sleeps before re-checking (covers completions taken by another
/// thread).
const RECHECK: Duration = Duration::from_millis(20);

impl Prefetcher {
    /// Builds the cache (allocating its slab) and starts the I/O threads on `file`, whose
    /// experts are where `layout` says. Checks that the file is long enough for every expert.
    pub fn new(
        file: Arc<ExpertFile>,
        layout: ExpertLayout,
        cfg: &PrefetchConfig,
    ) -> Result<Prefetcher> {
        Prefetcher::with_transform(file, layout, cfg, None)
    }

    /// [`Prefetcher::new`] with a transformation applied to each slot as part of its read (on the
    /// I/O pool's repack threads, see [`SlotTransform`]); guards then expose the transformed
    /// bytes.
    pub fn with_transform(
        file: Arc<ExpertFile>,
        layout: ExpertLayout,
        cfg: &PrefetchConfig,
        transform: Option<SlotTransform>,
    ) -> Result<Prefetcher> {
        if file.len_at_open() < layout.end() {
            return Err(Error::ReadRange {
                path: file.path().to_path_buf(),
                offset: 0,
                len: layout.end(),
                context: " (expert weights)".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file has {} bytes: truncated?", file.len_at_open()),
                ),
            });
        }
        let cache = ExpertCache::new(&layout, &cfg.cache)?;
        let bufs = (0..cache.n_slots())
            .map(|s| Arc::clone(cache.buf(s)))
            .collect();
        let pool = IoPool::with_transform(file, cfg.io, transform)?;
        let reserved = (0..layout.n_layers())
            .map(|_| Vec::with_capacity(16))
            .collect();
        Ok(Prefetcher {
            layout,
            bufs,
            pool,
            state: Mutex::new(State {
                cache,
                reserved,
                deferred: VecDeque::with_capacity(64),
                failed: None,
                wait: WaitStats::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The expert layout.
    pub fn layout(&self) -> &ExpertLayout {
        &self.layout
    }

    /// The I/O pool (mode, file, counters).
    pub fn io(&self) -> &IoPool {
        &self.pool
    }

    /// Starts reading the hot set into its reserved slots (prefetch priority).
    pub fn warm_hot_set(&self) -> Result<()> {
        let mut st = self.lock();
        let hot: Vec<ExpertKey> = st.cache.hot_keys().collect();
        for key in hot {
            if st.cache.lookup(key)? == Lookup::Absent
                && let Some(s) = st.cache.insert(key, false)?
            {
                self.submit(key, s, Priority::Prefetch)?;
            }
        }
        Ok(())
    }

    fn submit(&self, key: ExpertKey, slot: SlotId, priority: Priority) -> Result<()> {
        let layout: SlotLayout = self.layout.slot_layout(key)?;
        self.pool.submit(ReadRequest {
            key,
            layout,
            buf: Arc::clone(&self.bufs[slot]),
            priority,
            tag: slot as u64,
        });
        Ok(())
    }

    /// Applies a completion to the cache.
    fn apply(&self, st: &mut State, c: Completion) -> Result<()> {
        let slot = c.tag as SlotId;
        match c.outcome {
            Outcome::Done { bytes } => st.cache.complete(slot, bytes),
            Outcome::Cancelled => {
                st.wait.prefetch_cancelled += 1;
                if st.cache.pins(slot) > 0 {
                    // A demand request claimed it after the cancellation was decided: read it.
                    self.submit(c.key, slot, Priority::Demand)?;
                } else {
                    st.cache.abort(slot);
                }
            }
            Outcome::Failed(e) => {
                st.cache.abort(slot);
                if st.failed.is_none() {
                    st.failed = Some(e);
                }
            }
        }
        Ok(())
    }

    /// Applies finished reads and starts deferred demand reads that now have room.
    fn pump(&self, st: &mut State) -> Result<()> {
        while let Some(c) = self.pool.try_recv() {
            self.apply(st, c)?;
        }
        while let Some(&key) = st.deferred.front() {
            if !st.cache.has_room_for(key) {
                break;
            }
            st.deferred.pop_front();
            if let Some(s) = st.cache.insert(key, true)? {
                st.cache.pin(s);
                st.reserved[key.layer as usize].push((key.expert, s));
                self.submit(key, s, Priority::Demand)?;
            }
        }
        match &st.failed {
            Some(e) => Err(replicate(e)),
            None => Ok(()),
        }
    }

    /// A demand access to `key` that ends with a pin on its slot (returned) or with the key
    /// deferred (`None`).
    fn demand(&self, st: &mut State, key: ExpertKey) -> Result<Option<SlotId>> {
        match st.cache.access(key)? {
            Lookup::Ready(s) => {
                st.cache.pin(s);
                Ok(Some(s))
            }
            Lookup::Loading(s) => {
                st.cache.pin(s);
                self.pool.promote(key);
                Ok(Some(s))
            }
            Lookup::Absent => match st.cache.insert(key, true)? {
                Some(s) => {
                    st.cache.pin(s);
                    self.submit(key, s, Priority::Demand)?;
                    Ok(Some(s))
                }
                None => {
                    st.wait.deferred += 1;
                    st.deferred.push_back(key);
                    Ok(None)
                }
            },
        }
    }

    /// The router's scores for every expert of `layer` at the latest token (higher: more
    /// likely chosen), for the cache policy (see [`ExpertCache::hint`]). Call once the layer's
    /// experts have been requested.
    pub fn hint(&self, layer: u32, scores: &[f32]) {
        self.lock().cache.hint(layer, scores);
    }

    /// Unpins the experts of `layer` requested with [`Priority::Demand`] and not (yet) taken
    /// with `wait`.
    pub fn release(&self, layer: u32) {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(r) = st.reserved.get_mut(layer as usize) {
            for (_, s) in r.drain(..) {
                st.cache.unpin(s);
            }
        }
        st.deferred.retain(|k| k.layer != layer);
    }

    /// Asks for `experts` of `layer`.
    ///
    /// - [`Priority::Demand`]: the layer's routed experts. Replaces the layer's previous demand
    ///   set (unpinning what was not taken). Each expert is counted as a cache access, pinned,
    ///   and read if missing (a queued prefetch of it is promoted). If no slot is free the read
    ///   waits for one (deferred).
    /// - [`Priority::Prefetch`]: speculation. Missing experts are read after demand reads if a
    ///   slot can be evicted; nothing is pinned or counted.
    ///
    /// Errors: an expert out of range, or an earlier failed read.
    pub fn request(&self, layer: u32, experts: &[u32], priority: Priority) -> Result<()> {
        let mut st = self.lock();
        let st = &mut *st;
        self.pump(st)?;
        for &e in experts {
            self.layout.index(ExpertKey::new(layer, e))?;
        }
        match priority {
            Priority::Demand => {
                for (_, s) in st.reserved[layer as usize].drain(..) {
                    st.cache.unpin(s);
                }
                st.deferred.retain(|k| k.layer != layer);
                for &e in experts {
                    let key = ExpertKey::new(layer, e);
                    let dup = st.reserved[layer as usize].iter().any(|r| r.0 == e)
                        || st.deferred.contains(&key);
                    if dup {
                        continue;
                    }
                    if let Some(s) = self.demand(st, key)? {
                        st.reserved[layer as usize].push((e, s));
                    }
                }
            }
            Priority::Prefetch => {
                for &e in experts {
                    let key = ExpertKey::new(layer, e);
                    if st.cache.lookup(key)? != Lookup::Absent {
                        continue;
                    }
                    match st.cache.insert(key, false)? {
                        Some(s) => self.submit(key, s, Priority::Prefetch)?,
                        None => st.wait.prefetch_dropped += 1,
                    }
                }
            }
        }
        Ok(())
    }

    /// Cancels queued prefetches of `layer` except those of `keep` (the experts the router
    /// actually chose); reads already in progress complete and stay cached. Returns how many
    /// were cancelled.
    pub fn cancel_prefetch(&self, layer: u32, keep: &[u32]) -> usize {
        self.pool
            .cancel_prefetch_where(|k| k.layer == layer && !keep.contains(&k.expert))
    }

    /// Cancels every queued prefetch.
    pub fn cancel_all_prefetches(&self) -> usize {
        self.pool.cancel_prefetch_where(|_| true)
    }

    /// Takes the demand pin of `key` if it was requested, else makes a demand access.
    fn claim(&self, st: &mut State, key: ExpertKey) -> Result<Option<SlotId>> {
        let r = &mut st.reserved[key.layer as usize];
        if let Some(i) = r.iter().position(|x| x.0 == key.expert) {
            return Ok(Some(r.swap_remove(i).1));
        }
        if st.deferred.contains(&key) {
            return Ok(None);
        }
        self.demand(st, key)
    }

    fn is_ready(st: &State, key: ExpertKey, slot: SlotId) -> Result<bool> {
        Ok(st.cache.lookup(key)? == Lookup::Ready(slot))
    }

    /// Waits until `expert` of `layer` is in memory and returns it pinned. Blocks (span
    /// `io.wait`) only if its read has not finished.
    ///
    /// Errors: a failed read (sticky), an expert out of range, or a deadlock: the expert has no
    /// slot, nothing is being read, and every slot is pinned by guards still alive.
    pub fn wait(&self, layer: u32, expert: u32) -> Result<ExpertGuard<'_>> {
        let key = ExpertKey::new(layer, expert);
        self.layout.index(key)?;
        let mut st = self.lock();
        self.pump(&mut st)?;
        let mut slot = self.claim(&mut st, key)?;
        let mut blocked: Option<(Instant, tracing::span::EnteredSpan)> = None;
        loop {
            if slot.is_none() {
                slot = self.claim(&mut st, key)?;
            }
            if let Some(s) = slot
                && Self::is_ready(&st, key, s)?
            {
                break;
            }
            if slot.is_none() && self.pool.outstanding() == 0 && !st.cache.has_room_for(key) {
                return Err(Error::InvalidInput(format!(
                    "{key}: no expert-cache slot can be freed ({} slots, all pinned): drop ExpertGuards before waiting for more experts",
                    st.cache.n_slots()
                )));
            }
            if blocked.is_none() {
                let span = tracing::trace_span!(
                    "io.wait",
                    layer,
                    expert,
                    bytes = self.layout.slot_layout(key)?.data_bytes()
                )
                .entered();
                blocked = Some((Instant::now(), span));
            }
            drop(st);
            let c = self.pool.recv_timeout(RECHECK);
            st = self.lock();
            if let Some(c) = c
                && let Err(e) = self.apply(&mut st, c)
            {
                if let Some(s) = slot {
                    st.cache.unpin(s);
                }
                return Err(e);
            }
            if let Err(e) = self.pump(&mut st) {
                if let Some(s) = slot {
                    st.cache.unpin(s);
                }
                return Err(e);
            }
        }
        let slot = slot.expect("ready implies a slot");
        if let Some((t0, _span)) = blocked {
            st.wait.blocked += 1;
            st.wait.blocked_ns += super::saturating_nanos(t0.elapsed());
        }
        drop(st);
        let layout = self.layout.slot_layout(key)?;
        let buf = self.bufs[slot].read().unwrap_or_else(|p| p.into_inner());
        Ok(ExpertGuard {
            owner: self,
            key,
            slot,
            layout,
            buf,
        })
    }

    /// `expert` of `layer`, pinned, if it is in memory now; `None` if its read has not finished
    /// (or was never requested). Never blocks on I/O.
    pub fn try_wait(&self, layer: u32, expert: u32) -> Result<Option<ExpertGuard<'_>>> {
        let key = ExpertKey::new(layer, expert);
        self.layout.index(key)?;
        {
            let mut st = self.lock();
            self.pump(&mut st)?;
            if !matches!(st.cache.lookup(key)?, Lookup::Ready(_)) {
                return Ok(None);
            }
        }
        self.wait(layer, expert).map(Some)
    }

    /// Waits for whichever of `experts` (of `layer`, requested before) is in memory first and
    /// returns it: computing experts in arrival order. `experts` must not be empty.
    pub fn wait_any(&self, layer: u32, experts: &[u32]) -> Result<ExpertGuard<'_>> {
        let first = *experts
            .first()
            .ok_or_else(|| Error::InvalidInput("wait_any: no experts".into()))?;
        loop {
            let (expert, bytes) = {
                let mut st = self.lock();
                self.pump(&mut st)?;
                let mut pending = None;
                for &e in experts {
                    match st.cache.lookup(ExpertKey::new(layer, e))? {
                        Lookup::Ready(_) => {
                            drop(st);
                            return self.wait(layer, e);
                        }
                        Lookup::Loading(_) => pending = pending.or(Some(e)),
                        Lookup::Absent => {}
                    }
                }
                let Some(e) = pending else { break };
                // The span names the first expert still being read.
                let key = ExpertKey::new(layer, e);
                (e, self.layout.slot_layout(key)?.data_bytes())
            };
            let span = tracing::trace_span!("io.wait", layer, expert, bytes).entered();
            let t0 = Instant::now();
            let c = self.pool.recv_timeout(RECHECK);
            drop(span);
            let mut st = self.lock();
            st.wait.blocked += 1;
            st.wait.blocked_ns += super::saturating_nanos(t0.elapsed());
            if let Some(c) = c {
                self.apply(&mut st, c)?;
            }
        }
        self.wait(layer, first)
    }

    fn unpin(&self, slot: SlotId) {
        self.lock().cache.unpin(slot);
    }

    /// Counters so far.
    pub fn stats(&self) -> OffloadStats {
        let st = self.lock();
        OffloadStats {
            cache: st.cache.stats(),
            io: self.pool.stats(),
            wait: st.wait,
            device: self.pool.device_stats(),
        }
    }

    /// Zeroes the cache counters (e.g. after warm-up).
    pub fn reset_cache_stats(&self) {
        self.lock().cache.reset_stats();
    }

    /// Runs `f` on the cache (inspection: hot keys, capacity, policy).
    pub fn with_cache<T>(&self, f: impl FnOnce(&ExpertCache) -> T) -> T {
        f(&self.lock().cache)
    }
}

/// An expert in memory, pinned until dropped: its gate, up and down matrix bytes.
pub struct ExpertGuard<'a> {
    owner: &'a Prefetcher,
    key: ExpertKey,
    slot: SlotId,
    layout: SlotLayout,
    buf: RwLockReadGuard<'a, AlignedBuf>,
}

impl std::fmt::Debug for ExpertGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertGuard")
            .field("key", &self.key)
            .field("slot", &self.slot)
            .finish()
    }
}

impl ExpertGuard<'_> {
    /// The expert.
    pub fn key(&self) -> ExpertKey {
        self.key
    }

    /// The expert index within its layer.
    pub fn expert(&self) -> u32 {
        self.key.expert
    }

    /// The cache slot holding it.
    pub fn slot(&self) -> SlotId {
        self.slot
    }

    /// One matrix's bytes, exactly as in the file.
    pub fn part(&self, p: Part) -> &[u8] {
        &self.buf.as_slice()[self.layout.parts[p as usize].slot_range()]
    }

    /// Gate matrix bytes.
    pub fn gate(&self) -> &[u8] {
        self.part(Part::Gate)
    }

    /// Up matrix bytes.
    pub fn up(&self) -> &[u8] {
        self.part(Part::Up)
    }

    /// Down matrix bytes.
    pub fn down(&self) -> &[u8] {
        self.part(Part::Down)
    }
}

impl Drop for ExpertGuard<'_> {
    fn drop(&mut self) {
        self.owner.unpin(self.slot);
    }
}
