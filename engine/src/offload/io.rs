//! I/O threads: a pool of `N` threads (`io-0`, `io-1`, ...) that read experts from the model file
//! into slot buffers, so up to `N` reads are in flight at once (queue depth = threads).
//!
//! Requests wait in two FIFO queues, demand before prefetch. Queued prefetches can be promoted to
//! demand (the router confirmed a speculation) or cancelled (it did not), by key or by
//! generation (see [`IoPool::next_generation`]); a read already in progress always completes.
//! Every request ends in exactly one [`Completion`], received with [`IoPool::recv`] /
//! [`IoPool::try_recv`]; the buffer travels with the request and comes back in the completion.
//!
//! Each read is a `tracing` span `io.expert_read` (fields `layer`, `expert`, `bytes`,
//! `prefetch`) on the I/O thread. With an emulated [`StorageProfile`] every part read goes
//! through the shared [`DeviceModel`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ExpertKey;
use super::file::ExpertFile;
use super::layout::{Part, SlotLayout};
use super::storage::{DeviceModel, DeviceStats, StorageProfile};
use super::sys::AlignedBuf;
use crate::error::{Error, Result};

/// A slot buffer shared between the cache (readers) and an I/O thread (the one writer while the
/// slot is loading). The cache never hands a loading slot to readers, so the lock is never
/// contended; it makes the hand-over safe without `unsafe`.
pub type SlotBuf = Arc<RwLock<AlignedBuf>>;

/// The in-slot function of a [`SlotTransform`]: `(key, layout, slot bytes)`.
pub type InSlotFn = dyn Fn(ExpertKey, &SlotLayout, &mut [u8]) -> Result<()> + Send + Sync;

/// The staged function of a [`SlotTransform`]: `(key, layout, the staged part's slot range, its
/// bytes as read)`.
pub type StagedFn = dyn Fn(ExpertKey, &SlotLayout, &mut [u8], &[u8]) -> Result<()> + Send + Sync;

/// A part read aside into a buffer of the I/O thread instead of into the slot, and the function
/// that writes the part's [`slot_range`](super::layout::PartPlacement::slot_range) from its bytes
/// (the matrix's, without the alignment around them). A repack out of place then needs no copy
/// of the matrix first.
#[derive(Clone)]
pub struct StagedPart {
    /// The part.
    pub part: Part,
    /// Writes the part's slot range (exactly its length) from the staged bytes.
    pub apply: Arc<StagedFn>,
}

/// A transformation applied to a slot right after its expert was read, on the I/O threads,
/// before the slot is handed to readers. Used to repack an expert's matrices into the layouts
/// the fast kernels read ([`crate::moe::sparse_down`], the x8 gate). An error fails the read.
///
/// The staged part is read first; its function then runs on a repack thread while the I/O
/// thread reads the other parts into the slot (they write disjoint ranges), so the repack's
/// time hides behind the rest of the read. `in_slot` runs last, on the I/O thread, over the
/// whole slot.
#[derive(Clone, Default)]
pub struct SlotTransform {
    /// Applied to the slot once every part is in place (e.g. the gate's x8 repack, in place).
    pub in_slot: Option<Arc<InSlotFn>>,
    /// The part read aside, if any.
    pub staged: Option<StagedPart>,
}

impl std::fmt::Debug for SlotTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTransform")
            .field("in_slot", &self.in_slot.is_some())
            .field("staged", &self.staged.as_ref().map(|s| s.part))
            .finish()
    }
}

/// Request priority: demand reads (the layer needs them now) are served before prefetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Speculative or early: may be cancelled.
    Prefetch,
    /// Needed by the current layer.
    Demand,
}

/// One expert read: the parts of `layout` go into `buf`.
#[derive(Debug)]
pub struct ReadRequest {
    /// The expert.
    pub key: ExpertKey,
    /// What to read and where it goes in `buf`.
    pub layout: SlotLayout,
    /// Destination (at least `layout.used_bytes` long).
    pub buf: SlotBuf,
    /// Queue.
    pub priority: Priority,
    /// Caller's tag, returned in the completion (e.g. the slot index).
    pub tag: u64,
}

/// How a request ended.
#[derive(Debug)]
pub enum Outcome {
    /// All parts were read; `bytes` were transferred (aligned lengths).
    Done {
        /// Bytes read from the file.
        bytes: u64,
    },
    /// Cancelled before it started; the buffer is unchanged.
    Cancelled,
    /// The read failed; the buffer's contents are unspecified.
    Failed(Error),
}

/// A finished request, with its buffer.
#[derive(Debug)]
pub struct Completion {
    /// The expert.
    pub key: ExpertKey,
    /// The request's tag.
    pub tag: u64,
    /// The buffer (filled when `outcome` is `Done`).
    pub buf: SlotBuf,
    /// Priority when it was served (after any promotion).
    pub priority: Priority,
    /// Result.
    pub outcome: Outcome,
    /// Time from submission to completion.
    pub latency: Duration,
}

/// Pool settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoConfig {
    /// I/O threads (= reads in flight), at least 1.
    pub threads: usize,
    /// Device to emulate on top of the real reads.
    pub storage: StorageProfile,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            threads: 4,
            storage: StorageProfile::Real,
        }
    }
}

/// Counters of a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Requests completed with data.
    pub reads: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Prefetches cancelled before they started.
    pub cancelled: u64,
    /// Prefetches promoted to demand while queued.
    pub promoted: u64,
    /// Failed reads.
    pub failed: u64,
    /// Sum over reads of the time an I/O thread spent on them, nanoseconds.
    pub busy_ns: u64,
    /// Wall time during which at least one read was in progress, nanoseconds (the union of
    /// the reads' intervals).
    pub busy_wall_ns: u64,
    /// Time spent in the post-read [`SlotTransform`], nanoseconds (summed over threads).
    pub transform_ns: u64,
}

/// Tracks the union of the reads' busy intervals.
#[derive(Default)]
struct BusyClock {
    active: usize,
    since: Option<Instant>,
    total_ns: u64,
}

impl BusyClock {
    fn start(&mut self, now: Instant) {
        if self.active == 0 {
            self.since = Some(now);
        }
        self.active += 1;
    }

    fn stop(&mut self, now: Instant) {
        self.active = self.active.saturating_sub(1);
        if self.active == 0
            && let Some(t) = self.since.take()
        {
            self.total_ns += super::saturating_nanos(now - t);
        }
    }

    fn now_ns(&self, now: Instant) -> u64 {
        self.total_ns
            + self.since.map_or(0, |t| {
                super::saturating_nanos(now.saturating_duration_since(t))
            })
    }
}

struct Pending {
    req: ReadRequest,
    generation: u64,
    submitted: Instant,
}

struct Queues {
    demand: VecDeque<Pending>,
    prefetch: VecDeque<Pending>,
    shutdown: bool,
}

struct Done {
    items: VecDeque<Completion>,
    stats: IoStats,
}

struct Shared {
    file: Arc<ExpertFile>,
    device: Option<DeviceModel>,
    transform: Option<SlotTransform>,
    /// Runs the staged parts' functions beside the reads of the other parts.
    repack: Option<rayon::ThreadPool>,
    busy: Mutex<BusyClock>,
    queues: Mutex<Queues>,
    work: Condvar,
    done: Mutex<Done>,
    done_cv: Condvar,
    generation: AtomicU64,
    /// Submitted and not yet received.
    outstanding: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on another thread while holding one of these locks leaves consistent data (plain
    // queue operations), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The I/O thread pool. Dropping it stops the threads after their current read; queued requests
/// are discarded.
pub struct IoPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    threads: usize,
}

impl std::fmt::Debug for IoPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoPool")
            .field("file", &self.shared.file.path())
            .field("threads", &self.threads)
            .finish()
    }
}

/// Threads that run staged parts' functions (each I/O thread hands at most one at a time).
const REPACK_THREADS_MAX: usize = 2;

/// Initial capacity of the queues, so steady-state operation does not allocate.
const QUEUE_CAPACITY: usize = 256;

impl IoPool {
    /// Starts `cfg.threads` I/O threads reading `file`.
    pub fn new(file: Arc<ExpertFile>, cfg: IoConfig) -> Result<IoPool> {
        IoPool::with_transform(file, cfg, None)
    }

    /// [`IoPool::new`] with a transformation applied to every slot after its read.
    pub fn with_transform(
        file: Arc<ExpertFile>,
        cfg: IoConfig,
        transform: Option<SlotTransform>,
    ) -> Result<IoPool> {
        let threads = cfg.threads.max(1);
        let in_memory = file.in_memory();
        let repack = match transform.as_ref().and_then(|t| t.staged.as_ref()) {
            Some(_) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads.min(REPACK_THREADS_MAX))
                    .thread_name(|i| format!("repack-{i}"))
                    .build()
                    .map_err(|e| Error::Model(format!("cannot start repack threads: {e}")))?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            file,
            device: cfg.storage.model().inspect(|m| {
                m.set_source_in_memory(in_memory);
            }),
            transform,
            repack,
            busy: Mutex::new(BusyClock::default()),
            queues: Mutex::new(Queues {
                demand: VecDeque::with_capacity(QUEUE_CAPACITY),
                prefetch: VecDeque::with_capacity(QUEUE_CAPACITY),
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Mutex::new(Done {
                items: VecDeque::with_capacity(QUEUE_CAPACITY),
                stats: IoStats::default(),
            }),
            done_cv: Condvar::new(),
            generation: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
        });
        let mut pool = IoPool {
            shared,
            handles: Vec::with_capacity(threads),
            threads,
        };
        for i in 0..threads {
            let sh = Arc::clone(&pool.shared);
            let h = std::thread::Builder::new()
                .name(format!("io-{i}"))
                .spawn(move || io_thread(&sh))
                .map_err(|e| Error::Model(format!("cannot start I/O thread io-{i}: {e}")))?;
            pool.handles.push(h);
        }
        Ok(pool)
    }

    /// Number of I/O threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The file read from.
    pub fn file(&self) -> &ExpertFile {
        &self.shared.file
    }

    /// Queues a read. Returns the generation it was tagged with.
    pub fn submit(&self, req: ReadRequest) -> u64 {
        let generation = self.shared.generation.load(Ordering::Relaxed);
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        let p = Pending {
            req,
            generation,
            submitted: Instant::now(),
        };
        {
            let mut q = lock(&self.shared.queues);
            match p.req.priority {
                Priority::Demand => q.demand.push_back(p),
                Priority::Prefetch => q.prefetch.push_back(p),
            }
        }
        self.shared.work.notify_one();
        generation
    }

    /// The current generation (requests submitted from now on are tagged with it).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Relaxed)
    }

    /// Starts a new generation and returns it; see [`IoPool::cancel_prefetch_before`].
    pub fn next_generation(&self) -> u64 {
        self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Moves a queued prefetch of `key` to the demand queue. Returns whether one was found
    /// (false if it is already being read, done, or was never queued).
    pub fn promote(&self, key: ExpertKey) -> bool {
        let mut q = lock(&self.shared.queues);
        let Some(i) = q.prefetch.iter().position(|p| p.req.key == key) else {
            return false;
        };
        let mut p = q.prefetch.remove(i).expect("index from position");
        p.req.priority = Priority::Demand;
        q.demand.push_back(p);
        drop(q);
        lock(&self.shared.done).stats.promoted += 1;
        true
    }

    /// Cancels the queued prefetches for which `pred(key)` is true; each gets a `Cancelled`
    /// completion. Returns how many were cancelled.
    pub fn cancel_prefetch_where(&self, mut pred: impl FnMut(ExpertKey) -> bool) -> usize {
        let mut q = lock(&self.shared.queues);
        let mut cancelled = Vec::new();
        let mut i = 0;
        while i < q.prefetch.len() {
            if pred(q.prefetch[i].req.key) {
                cancelled.push(q.prefetch.remove(i).expect("index in range"));
            } else {
                i += 1;
            }
        }
        drop(q);
        self.finish_cancelled(cancelled)
    }

    /// Cancels the queued prefetches submitted before generation `generation`.
    pub fn cancel_prefetch_before(&self, generation: u64) -> usize {
        let mut q = lock(&self.shared.queues);
        let mut cancelled = Vec::new();
        let mut i = 0;
        while i < q.prefetch.len() {
            if q.prefetch[i].generation < generation {
                cancelled.push(q.prefetch.remove(i).expect("index in range"));
            } else {
                i += 1;
            }
        }
        drop(q);
        self.finish_cancelled(cancelled)
    }

    fn finish_cancelled(&self, cancelled: Vec<Pending>) -> usize {
        let n = cancelled.len();
        if n == 0 {
            return 0;
        }
        let mut d = lock(&self.shared.done);
        for p in cancelled {
            d.stats.cancelled += 1;
            d.items.push_back(Completion {
                key: p.req.key,
                tag: p.req.tag,
                buf: p.req.buf,
                priority: p.req.priority,
                outcome: Outcome::Cancelled,
                latency: p.submitted.elapsed(),
            });
        }
        drop(d);
        self.shared.done_cv.notify_all();
        n
    }

    /// Requests submitted whose completion has not been received yet.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Ordering::Acquire)
    }

    fn take(&self, d: &mut Done) -> Option<Completion> {
        let c = d.items.pop_front()?;
        self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
        Some(c)
    }

    /// A completion if one is ready.
    pub fn try_recv(&self) -> Option<Completion> {
        let mut d = lock(&self.shared.done);
        self.take(&mut d)
    }

    /// Waits for the next completion; `None` if nothing is outstanding.
    pub fn recv(&self) -> Option<Completion> {
        let mut d = lock(&self.shared.done);
        loop {
            if let Some(c) = self.take(&mut d) {
                return Some(c);
            }
            if self.outstanding() == 0 {
                return None;
            }
            d = self
                .shared
                .done_cv
                .wait(d)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Like [`IoPool::recv`] with a timeout; `None` on timeout or if nothing is outstanding.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Completion> {
        let deadline = Instant::now() + timeout;
        let mut d = lock(&self.shared.done);
        loop {
            if let Some(c) = self.take(&mut d) {
                return Some(c);
            }
            let now = Instant::now();
            if self.outstanding() == 0 || now >= deadline {
                return None;
            }
            d = self
                .shared
                .done_cv
                .wait_timeout(d, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> IoStats {
        let mut s = lock(&self.shared.done).stats;
        s.busy_wall_ns = lock(&self.shared.busy).now_ns(Instant::now());
        s
    }

    /// The storage emulator's counters (`None` for real storage).
    pub fn device_stats(&self) -> Option<DeviceStats> {
        self.shared.device.as_ref().map(DeviceModel::stats)
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        lock(&self.shared.queues).shutdown = true;
        self.shared.work.notify_all();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn io_thread(sh: &Shared) {
    // The staged part's bytes as read (see `SlotTransform::staged`); grown on first use.
    let mut stage: Option<AlignedBuf> = None;
    loop {
        let p = {
            let mut q = lock(&sh.queues);
            loop {
                if q.shutdown {
                    return;
                }
                if let Some(p) = q.demand.pop_front().or_else(|| q.prefetch.pop_front()) {
                    break p;
                }
                q = sh.work.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let t0 = Instant::now();
        lock(&sh.busy).start(t0);
        // The only writer of a loading slot; a poisoned lock just means an earlier fill
        // panicked, and the buffer is overwritten now anyway.
        let mut buf = p.req.buf.write().unwrap_or_else(|p| p.into_inner());
        let (key, layout) = (p.req.key, &p.req.layout);
        let read_span = tracing::trace_span!(
            "io.expert_read",
            layer = key.layer,
            expert = key.expert,
            bytes = layout.data_bytes(),
            prefetch = p.req.priority == Priority::Prefetch
        )
        .entered();
        // When the reads end: the device is no longer busy with this expert, and what is left
        // (a staged part's function still running, the in-slot function) is the repack.
        let mut busy = Duration::ZERO;
        let mut repack_span = None;
        let reads_done = || {
            drop(read_span);
            let t1 = Instant::now();
            lock(&sh.busy).stop(t1);
            busy = t1 - t0;
            if sh.transform.is_some() {
                repack_span = Some(
                    tracing::trace_span!("io.repack", layer = key.layer, expert = key.expert)
                        .entered(),
                );
            }
        };
        let (mut outcome, mut transform_ns) = read_expert(
            sh,
            &p.req,
            p.submitted,
            buf.as_mut_slice(),
            &mut stage,
            reads_done,
        );
        if let (Outcome::Done { .. }, Some(f)) = (
            &outcome,
            sh.transform.as_ref().and_then(|t| t.in_slot.as_ref()),
        ) {
            let t = Instant::now();
            if let Err(e) = f(key, layout, buf.as_mut_slice()) {
                outcome = Outcome::Failed(e);
            }
            transform_ns += super::saturating_nanos(t.elapsed());
        }
        drop(repack_span);
        drop(buf);
        let mut d = lock(&sh.done);
        d.stats.transform_ns += transform_ns;
        match &outcome {
            Outcome::Done { bytes } => {
                d.stats.reads += 1;
                d.stats.bytes += bytes;
            }
            Outcome::Failed(_) => d.stats.failed += 1,
            Outcome::Cancelled => d.stats.cancelled += 1,
        }
        d.stats.busy_ns += super::saturating_nanos(busy);
        d.items.push_back(Completion {
            key: p.req.key,
            tag: p.req.tag,
            buf: p.req.buf,
            priority: p.req.priority,
            outcome,
            latency: p.submitted.elapsed(),
        });
        drop(d);
        sh.done_cv.notify_all();
    }
}

/// Reads the expert's parts into `dst` (its slot). A staged part (see [`SlotTransform`]) is read
/// first, into `stage` (grown as needed); its function then writes its slot range on a repack
/// thread while this thread reads the other parts. Returns the outcome and the staged
/// function's own time (nanoseconds).
fn read_expert(
    sh: &Shared,
    req: &ReadRequest,
    submitted: Instant,
    dst: &mut [u8],
    stage: &mut Option<AlignedBuf>,
    reads_done: impl FnOnce(),
) -> (Outcome, u64) {
    if dst.len() < req.layout.used_bytes {
        reads_done();
        return (
            Outcome::Failed(Error::InvalidInput(format!(
                "{}: slot of {} B cannot hold {} B",
                req.key,
                dst.len(),
                req.layout.used_bytes
            ))),
            0,
        );
    }
    let done = Outcome::Done {
        bytes: req.layout.used_bytes as u64,
    };
    let staged = sh.transform.as_ref().and_then(|t| t.staged.as_ref());
    let Some(staged) = staged.filter(|s| req.layout.parts[s.part as usize].data.len > 0) else {
        let reads = read_parts(sh, req, submitted, None, dst, 0);
        reads_done();
        return match reads {
            Ok(()) => (done, 0),
            Err(e) => (Outcome::Failed(e), 0),
        };
    };
    let sp = &req.layout.parts[staged.part as usize];
    let len = sp.read.len as usize;
    let b = match stage.take() {
        Some(b) if b.len() >= len => stage.insert(b),
        _ => match AlignedBuf::new(len) {
            Ok(b) => stage.insert(b),
            Err(e) => {
                reads_done();
                return (Outcome::Failed(with_context(e, req.key, staged.part)), 0);
            }
        },
    };
    let region = &mut b.as_mut_slice()[..len];
    if let Err(e) = read_part(sh, req.key, staged.part, sp, submitted, region) {
        reads_done();
        return (Outcome::Failed(e), 0);
    }
    let at = (sp.data.offset - sp.read.offset) as usize;
    let src = &region[at..at + sp.data.len as usize];
    let range = sp.slot_range();
    // The other parts' reads must land outside the staged part's slot range to run beside its
    // function; a layout where they do not (none is built so) runs the two in turn.
    let disjoint = Part::ALL.iter().zip(&req.layout.parts).all(|(&part, pl)| {
        part == staged.part
            || pl.data.len == 0
            || pl.buf_offset + pl.read.len as usize <= range.start
            || pl.buf_offset >= range.end
    });
    let run_staged = |out: &mut [u8]| -> (Result<()>, u64) {
        let _span = tracing::trace_span!(
            "io.repack_staged",
            layer = req.key.layer,
            expert = req.key.expert
        )
        .entered();
        let t = Instant::now();
        let r = (staged.apply)(req.key, &req.layout, out, src);
        (r, super::saturating_nanos(t.elapsed()))
    };
    let (reads, (applied, ns)) = match (&sh.repack, disjoint) {
        (Some(pool), true) => {
            let (lo, rest) = dst.split_at_mut(range.start);
            let (mid, hi) = rest.split_at_mut(range.len());
            let mut applied = (Ok(()), 0);
            let reads = pool.in_place_scope(|s| {
                s.spawn(|_| applied = run_staged(mid));
                let reads =
                    read_parts(sh, req, submitted, Some(staged.part), lo, 0).and_then(|()| {
                        read_parts(sh, req, submitted, Some(staged.part), hi, range.end)
                    });
                reads_done();
                // The scope waits here for the staged function.
                reads
            });
            (reads, applied)
        }
        _ => {
            let reads = read_parts(sh, req, submitted, Some(staged.part), dst, 0);
            reads_done();
            let applied = match reads {
                Ok(()) => run_staged(&mut dst[range]),
                Err(_) => (Ok(()), 0),
            };
            (reads, applied)
        }
    };
    match reads.and(applied) {
        Ok(()) => (done, ns),
        Err(e) => (Outcome::Failed(e), ns),
    }
}

/// Reads every part but `skip` whose read lands in `dst`, a piece of the slot starting at slot
/// offset `base` (parts outside the piece are left to another call).
fn read_parts(
    sh: &Shared,
    req: &ReadRequest,
    submitted: Instant,
    skip: Option<Part>,
    dst: &mut [u8],
    base: usize,
) -> Result<()> {
    for (&part, pl) in Part::ALL.iter().zip(&req.layout.parts) {
        if pl.data.len == 0 || Some(part) == skip {
            continue;
        }
        let (start, end) = (pl.buf_offset, pl.buf_offset + pl.read.len as usize);
        if start < base || end > base + dst.len() {
            continue;
        }
        read_part(
            sh,
            req.key,
            part,
            pl,
            submitted,
            &mut dst[start - base..end - base],
        )?;
    }
    Ok(())
}

/// Reads one part's aligned range into `region` (exactly its length), through the emulated
/// device if there is one.
fn read_part(
    sh: &Shared,
    key: ExpertKey,
    part: Part,
    pl: &super::layout::PartPlacement,
    submitted: Instant,
    region: &mut [u8],
) -> Result<()> {
    let res = match &sh.device {
        Some(dev) => dev.emulate(pl.read.len, Some(submitted), || {
            sh.file.read_into(pl.data, region)
        }),
        None => sh.file.read_into(pl.data, region),
    };
    res.map(|_| ()).map_err(|e| with_context(e, key, part))
}

fn with_context(e: Error, key: ExpertKey, part: Part) -> Error {
    match e {
        Error::ReadRange {
            path,
            offset,
            len,
            source,
            ..
        } => Error::ReadRange {
            path,
            offset,
            len,
            context: format!(" ({key} {})", part.name()),
            source,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::file::OpenMode;
    use crate::offload::layout::FileRange;

    fn setup(n: usize) -> (tempfile::TempDir, Arc<ExpertFile>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.bin");
        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let f = ExpertFile::open(&p, OpenMode::Auto).unwrap();
        (dir, Arc::new(f), data)
    }

    fn layout(off: u64, len: u64) -> SlotLayout {
        SlotLayout::new(&[
            FileRange { offset: off, len },
            FileRange {
                offset: off + len,
                len,
            },
            FileRange {
                offset: off + 2 * len,
                len,
            },
        ])
    }

    fn buf(n: usize) -> SlotBuf {
        Arc::new(RwLock::new(AlignedBuf::new(n).unwrap()))
    }

    /// Demand reads of experts `0..n` of layer 0, expert `i` placed by `layout_of(i)` into a
    /// fresh slot and tagged `i`.
    fn submit_demands(pool: &IoPool, n: u32, layout_of: impl Fn(u64) -> SlotLayout) {
        for i in 0..n {
            let l = layout_of(u64::from(i));
            pool.submit(ReadRequest {
                key: ExpertKey::new(0, i),
                layout: l,
                buf: buf(l.used_bytes),
                priority: Priority::Demand,
                tag: u64::from(i),
            });
        }
    }

    #[test]
    fn reads_complete_with_the_right_bytes() {
        let (_d, f, data) = setup(200_000);
        let pool = IoPool::new(f, IoConfig::default()).unwrap();
        submit_demands(&pool, 8, |i| layout(i * 7000 + 13, 5000));
        let mut seen = 0;
        while let Some(c) = pool.recv() {
            assert!(matches!(c.outcome, Outcome::Done { .. }), "{:?}", c.outcome);
            let l = layout(c.tag * 7000 + 13, 5000);
            let b = c.buf.read().unwrap();
            for p in &l.parts {
                let want = &data[p.data.offset as usize..p.data.end() as usize];
                assert_eq!(&b.as_slice()[p.slot_range()], want);
            }
            seen += 1;
        }
        assert_eq!(seen, 8);
        assert_eq!(pool.stats().reads, 8);
        assert_eq!(pool.outstanding(), 0);
    }

    /// A staged part is read aside, not into the slot: its function gets exactly its bytes
    /// (without the alignment around them) and its slot range, and what it wrote there is what
    /// readers get; the other parts are read in place as usual (beside the staged function, on
    /// a repack thread). The in-slot function runs last and sees every part in place. Two
    /// threads and lengths that grow (the staging buffer is reallocated).
    #[test]
    fn a_staged_part_reaches_its_function_and_not_the_slot() {
        let (_d, f, data) = setup(200_000);
        let staged_calls = Arc::new(AtomicUsize::new(0));
        let in_slot_calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&staged_calls);
        let apply = move |_: ExpertKey, l: &SlotLayout, dst: &mut [u8], src: &[u8]| {
            let down = &l.parts[Part::Down as usize];
            if src.len() != down.data.len as usize || dst.len() != src.len() {
                return Err(Error::Model(format!(
                    "staged {} B into {} B",
                    src.len(),
                    dst.len()
                )));
            }
            // The slot's range for the staged part was not written by the read.
            if dst.iter().any(|&b| b != 0) {
                return Err(Error::Model("the staged part reached the slot".into()));
            }
            // Write it reversed, to see that the function's bytes are what readers get.
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
            seen.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        let file_data = data.clone();
        let seen = Arc::clone(&in_slot_calls);
        let in_slot = move |_: ExpertKey, l: &SlotLayout, slot: &mut [u8]| {
            for (k, p) in l.parts.iter().enumerate() {
                let mut want = file_data[p.data.offset as usize..p.data.end() as usize].to_vec();
                if k == Part::Down as usize {
                    want.reverse();
                }
                if slot[p.slot_range()] != want[..] {
                    return Err(Error::Model(format!(
                        "part {k} not in place before in_slot"
                    )));
                }
            }
            seen.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        let t = SlotTransform {
            in_slot: Some(Arc::new(in_slot)),
            staged: Some(StagedPart {
                part: Part::Down,
                apply: Arc::new(apply),
            }),
        };
        let cfg = IoConfig {
            threads: 2,
            ..IoConfig::default()
        };
        let pool = IoPool::with_transform(f, cfg, Some(t)).unwrap();
        let lens = |i: u64| 3000 + 2500 * i;
        submit_demands(&pool, 6, |i| layout(i * 9000 + 13, lens(i)));
        let mut n = 0;
        while let Some(c) = pool.recv() {
            assert!(matches!(c.outcome, Outcome::Done { .. }), "{:?}", c.outcome);
            let l = layout(c.tag * 9000 + 13, lens(c.tag));
            let b = c.buf.read().unwrap();
            for (k, p) in l.parts.iter().enumerate() {
                let mut want = data[p.data.offset as usize..p.data.end() as usize].to_vec();
                if k == Part::Down as usize {
                    want.reverse();
                }
                assert_eq!(&b.as_slice()[p.slot_range()], &want[..], "part {k}");
            }
            n += 1;
        }
        assert_eq!(n, 6);
        assert_eq!(staged_calls.load(Ordering::Relaxed), 6);
        assert_eq!(in_slot_calls.load(Ordering::Relaxed), 6);
        assert_eq!(pool.stats().reads, 6);
    }

    /// A staged function's error fails the read, naming what it said, and the in-slot function
    /// does not run on that slot.
    #[test]
    fn a_staged_function_error_fails_the_read() {
        let (_d, f, _) = setup(100_000);
        let in_slot_calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&in_slot_calls);
        let t = SlotTransform {
            in_slot: Some(Arc::new(
                move |_: ExpertKey, _: &SlotLayout, _: &mut [u8]| {
                    seen.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                },
            )),
            staged: Some(StagedPart {
                part: Part::Down,
                apply: Arc::new(|k: ExpertKey, _: &SlotLayout, _: &mut [u8], _: &[u8]| {
                    Err(Error::Model(format!("{k}: cannot repack")))
                }),
            }),
        };
        let pool = IoPool::with_transform(f, IoConfig::default(), Some(t)).unwrap();
        submit_demands(&pool, 2, |i| layout(i * 9000 + 13, 4000));
        let mut failed = 0;
        while let Some(c) = pool.recv() {
            match c.outcome {
                Outcome::Failed(e) => {
                    assert!(e.to_string().contains("cannot repack"), "{e}");
                    failed += 1;
                }
                o => panic!("expected a failure, got {o:?}"),
            }
        }
        assert_eq!(failed, 2);
        assert_eq!(in_slot_calls.load(Ordering::Relaxed), 0);
        assert_eq!(pool.stats().failed, 2);
    }

    #[test]
    fn queued_prefetches_can_be_cancelled_or_promoted() {
        let (_d, f, _) = setup(100_000);
        // One slow emulated thread keeps the queue populated.
        let slow = StorageProfile::Custom(crate::offload::DeviceSpec {
            latency_ns: 20_000_000,
            bandwidth_bytes_per_s: 1_000_000_000,
            queue_depth: 1,
        });
        let pool = IoPool::new(
            f,
            IoConfig {
                threads: 1,
                storage: slow,
            },
        )
        .unwrap();
        let l = SlotLayout::new(
            &[FileRange {
                offset: 0,
                len: 100,
            }; 3],
        );
        let submit = |e: u32, pr: Priority| {
            pool.submit(ReadRequest {
                key: ExpertKey::new(1, e),
                layout: l,
                buf: buf(l.used_bytes),
                priority: pr,
                tag: u64::from(e),
            })
        };
        submit(0, Priority::Demand);
        // Give the thread time to take request 0.
        std::thread::sleep(Duration::from_millis(5));
        let g0 = submit(1, Priority::Prefetch);
        submit(2, Priority::Prefetch);
        let g1 = pool.next_generation();
        assert_eq!(g1, g0 + 1);
        submit(3, Priority::Prefetch);
        submit(4, Priority::Prefetch);
        assert!(pool.promote(ExpertKey::new(1, 4)));
        assert!(!pool.promote(ExpertKey::new(1, 9)));
        assert_eq!(pool.cancel_prefetch_where(|k| k.expert == 2), 1);
        assert_eq!(pool.cancel_prefetch_before(g1), 1); // expert 1
        let mut order = Vec::new();
        while let Some(c) = pool.recv() {
            order.push((c.key.expert, matches!(c.outcome, Outcome::Cancelled)));
        }
        // Cancellations complete at once; then 0 (in service), the promoted 4, then 3.
        assert_eq!(
            order,
            vec![(2, true), (1, true), (0, false), (4, false), (3, false)]
        );
        let s = pool.stats();
        assert_eq!((s.reads, s.cancelled, s.promoted), (3, 2, 1));
    }

    #[test]
    fn failures_name_the_expert_and_part() {
        let (_d, f, _) = setup(10_000);
        let pool = IoPool::new(f, IoConfig::default()).unwrap();
        let l = layout(0, 4000); // the down part ends at 12,000 > 10,000
        pool.submit(ReadRequest {
            key: ExpertKey::new(3, 7),
            layout: l,
            buf: buf(l.used_bytes),
            priority: Priority::Demand,
            tag: 0,
        });
        let c = pool.recv().unwrap();
        let Outcome::Failed(e) = c.outcome else {
            panic!("expected a failure, got {:?}", c.outcome)
        };
        let msg = e.to_string();
        assert!(
            msg.contains("layer 3 expert 7 down") && msg.contains("8000..12000"),
            "{msg}"
        );
        assert_eq!(pool.stats().failed, 1);
    }
}
