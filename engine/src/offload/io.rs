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
//!
//! A [`SlotTransform`] (the fast mode's repacks) runs its functions on a small pool of repack
//! threads (`repack-0`, `repack-1`) beside the read of the expert's remaining part; the I/O
//! thread's `io.repack` span is the wait left after its reads, each function an
//! `io.repack_part` span.

use std::collections::VecDeque;
use std::ops::Range;
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

/// The function of an [`InPlacePart`]: `(key, layout, the part's slot range)`.
pub type InPlaceFn = dyn Fn(ExpertKey, &SlotLayout, &mut [u8]) -> Result<()> + Send + Sync;

/// The function of a [`StagedPart`]: `(key, layout, the part's slot range, its bytes as read)`.
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

/// A part read into the slot and then rewritten there by its function (given exactly the part's
/// slot range).
#[derive(Clone)]
pub struct InPlacePart {
    /// The part.
    pub part: Part,
    /// Rewrites the part's slot range in place.
    pub apply: Arc<InPlaceFn>,
}

/// A transformation applied to a slot right after its expert was read, on the I/O threads,
/// before the slot is handed to readers. Used to repack an expert's matrices into the layouts
/// the fast kernels read ([`crate::moe::sparse_down`], the x8 gate). An error fails the read.
///
/// The staged part is read first, then the in-place part; their functions then run on the repack
/// threads while the I/O thread reads the remaining parts into the slot (every one writes its
/// own range of the slot), so the repacks' time hides behind the rest of the read.
#[derive(Clone, Default)]
pub struct SlotTransform {
    /// The part read aside, if any.
    pub staged: Option<StagedPart>,
    /// The part rewritten in place, if any (another part than the staged one).
    pub in_place: Option<InPlacePart>,
}

impl std::fmt::Debug for SlotTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTransform")
            .field("staged", &self.staged.as_ref().map(|s| s.part))
            .field("in_place", &self.in_place.as_ref().map(|s| s.part))
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
    /// Runs the transform's functions beside the reads of the other parts.
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

/// Threads that run the transform's functions (each I/O thread hands them two per read).
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
        if let Some(SlotTransform {
            staged: Some(s),
            in_place: Some(p),
        }) = &transform
            && s.part == p.part
        {
            return Err(Error::InvalidInput(format!(
                "a slot transform cannot both stage and rewrite in place the {} part",
                s.part.name()
            )));
        }
        let repack = match &transform {
            Some(t) if t.staged.is_some() || t.in_place.is_some() => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads.min(REPACK_THREADS_MAX))
                    .thread_name(|i| format!("repack-{i}"))
                    .build()
                    .map_err(|e| Error::Model(format!("cannot start repack threads: {e}")))?,
            ),
            _ => None,
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
        // (the transform's functions still running) is the repack.
        let mut busy = Duration::ZERO;
        let mut repack_span = None;
        let reads_over = std::cell::Cell::new(false);
        let reads_done = || {
            reads_over.set(true);
            drop(read_span);
            busy = stop_busy(sh, t0);
            if sh.transform.is_some() {
                repack_span = Some(
                    tracing::trace_span!("io.repack", layer = key.layer, expert = key.expert)
                        .entered(),
                );
            }
        };
        // A panic in a read or a transform function (a bug) fails this read instead of ending
        // the thread, which would leave its request, and whoever waits for it, unanswered.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_expert(
                sh,
                &p.req,
                p.submitted,
                buf.as_mut_slice(),
                &mut stage,
                reads_done,
            )
        }));
        let (outcome, transform_ns) = run.unwrap_or_else(|panic| {
            if !reads_over.get() {
                busy = stop_busy(sh, t0);
            }
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            let e = Error::Model(format!("{key}: reading the expert panicked: {msg}"));
            (Outcome::Failed(e), 0)
        });
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

/// Ends a read's busy interval, started at `t0`, and returns its length.
fn stop_busy(sh: &Shared, t0: Instant) -> Duration {
    let t1 = Instant::now();
    lock(&sh.busy).stop(t1);
    t1 - t0
}

/// Reads the expert's parts into `dst` (its slot) and applies the transform (see
/// [`SlotTransform`]), calling `reads_done` once the reads are over (before waiting for the
/// transform). Returns the outcome and the transform functions' own time (nanoseconds).
fn read_expert(
    sh: &Shared,
    req: &ReadRequest,
    submitted: Instant,
    dst: &mut [u8],
    stage: &mut Option<AlignedBuf>,
    reads_done: impl FnOnce(),
) -> (Outcome, u64) {
    let mut reads_done = Some(reads_done);
    let mut finish = || {
        if let Some(f) = reads_done.take() {
            f();
        }
    };
    let mut ns = 0;
    let r = fill_slot(sh, req, submitted, dst, stage, &mut finish, &mut ns);
    finish();
    match r {
        Ok(()) => (
            Outcome::Done {
                bytes: req.layout.used_bytes as u64,
            },
            ns,
        ),
        Err(e) => (Outcome::Failed(e), ns),
    }
}

/// A transform function bound to its bytes, run on the slot range it writes.
type Job<'a> = Box<dyn FnOnce(&mut [u8]) -> (Result<()>, u64) + Send + 'a>;

/// [`read_expert`]'s work.
fn fill_slot(
    sh: &Shared,
    req: &ReadRequest,
    submitted: Instant,
    dst: &mut [u8],
    stage: &mut Option<AlignedBuf>,
    reads_done: &mut dyn FnMut(),
    transform_ns: &mut u64,
) -> Result<()> {
    let (key, l) = (req.key, &req.layout);
    if dst.len() < l.used_bytes {
        return Err(Error::InvalidInput(format!(
            "{key}: slot of {} B cannot hold {} B",
            dst.len(),
            l.used_bytes
        )));
    }
    let live = |p: Part| l.parts[p as usize].data.len > 0;
    let t = sh.transform.as_ref();
    let staged = t.and_then(|t| t.staged.as_ref()).filter(|s| live(s.part));
    let in_place = t.and_then(|t| t.in_place.as_ref()).filter(|s| live(s.part));
    let timed = |part: Part, f: &dyn Fn(&mut [u8]) -> Result<()>, out: &mut [u8]| {
        let _span = tracing::trace_span!(
            "io.repack_part",
            layer = key.layer,
            expert = key.expert,
            part = part.name()
        )
        .entered();
        let t = Instant::now();
        let r = f(out);
        (r, super::saturating_nanos(t.elapsed()))
    };
    // The staged part first, into the stage buffer; then the in-place part, into the slot.
    let mut jobs: Vec<(Range<usize>, Job<'_>)> = Vec::with_capacity(2);
    if let Some(s) = staged {
        let pl = &l.parts[s.part as usize];
        let len = pl.read.len as usize;
        let b = match stage.take() {
            Some(b) if b.len() >= len => stage.insert(b),
            old => {
                // The old buffer goes first: never two at once.
                drop(old);
                stage.insert(AlignedBuf::new(len).map_err(|e| with_context(e, key, s.part))?)
            }
        };
        let region = &mut b.as_mut_slice()[..len];
        read_part(sh, key, s.part, pl, submitted, region)?;
        let at = (pl.data.offset - pl.read.offset) as usize;
        let src = &region[at..at + pl.data.len as usize];
        let job: Job<'_> =
            Box::new(move |out: &mut [u8]| timed(s.part, &|o| (s.apply)(key, l, o, src), out));
        jobs.push((pl.slot_range(), job));
    }
    if let Some(p) = in_place {
        let pl = &l.parts[p.part as usize];
        read_part(
            sh,
            key,
            p.part,
            pl,
            submitted,
            &mut dst[pl.read_slot_range()],
        )?;
        let job: Job<'_> =
            Box::new(move |out: &mut [u8]| timed(p.part, &|o| (p.apply)(key, l, o), out));
        jobs.push((pl.slot_range(), job));
    }
    let skip = [staged.map(|s| s.part), in_place.map(|p| p.part)];
    let ranges: Vec<Range<usize>> = jobs.iter().map(|(r, _)| r.clone()).collect();
    // The remaining reads must land outside the ranges the functions write to run beside them;
    // a layout where they do not (none is built so) runs them in turn.
    let beside = Part::ALL.iter().zip(&l.parts).all(|(&part, pl)| {
        let read = pl.read_slot_range();
        skip.contains(&Some(part))
            || pl.data.len == 0
            || ranges
                .iter()
                .all(|r| read.end <= r.start || read.start >= r.end)
    });
    let split = if beside {
        split_out(dst, &ranges)
    } else {
        None
    };
    match (&sh.repack, split) {
        (Some(pool), Some((pieces, outs))) if !jobs.is_empty() => {
            let mut results: Vec<(Result<()>, u64)> = jobs.iter().map(|_| (Ok(()), 0)).collect();
            let reads = pool.in_place_scope(|sc| {
                for (((_, job), out), res) in jobs.into_iter().zip(outs).zip(results.iter_mut()) {
                    sc.spawn(move |_| *res = job(out));
                }
                let reads = pieces.into_iter().try_fold(0u8, |read, (base, piece)| {
                    Ok::<u8, Error>(read | read_parts(sh, req, submitted, &skip, piece, base)?)
                });
                reads_done();
                // The scope waits here for the functions.
                reads
            });
            *transform_ns += results.iter().map(|r| r.1).sum::<u64>();
            check_all_read(req, &skip, reads?)?;
            results.into_iter().try_for_each(|r| r.0)
        }
        _ => {
            let read = read_parts(sh, req, submitted, &skip, dst, 0)?;
            reads_done();
            check_all_read(req, &skip, read)?;
            for (range, job) in jobs {
                let (r, ns) = job(&mut dst[range]);
                *transform_ns += ns;
                r?;
            }
            Ok(())
        }
    }
}

/// Splits `buf` around `ranges` (disjoint, inside `buf`, in any order): the pieces between them
/// with their offsets in `buf`, and the ranges' slices in the order given. `None` when ranges
/// overlap or leave `buf`.
#[allow(clippy::type_complexity)]
fn split_out<'a>(
    buf: &'a mut [u8],
    ranges: &[Range<usize>],
) -> Option<(Vec<(usize, &'a mut [u8])>, Vec<&'a mut [u8]>)> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    let mut pieces = Vec::with_capacity(ranges.len() + 1);
    let mut outs: Vec<Option<&'a mut [u8]>> = ranges.iter().map(|_| None).collect();
    let (mut rest, mut at) = (buf, 0usize);
    for i in order {
        let r = &ranges[i];
        if r.start < at || r.end < r.start || r.end - at > rest.len() {
            return None;
        }
        let (before, tail) = rest.split_at_mut(r.start - at);
        let (out, tail) = tail.split_at_mut(r.len());
        pieces.push((at, before));
        outs[i] = Some(out);
        (rest, at) = (tail, r.end);
    }
    pieces.push((at, rest));
    Some((pieces, outs.into_iter().collect::<Option<Vec<_>>>()?))
}

/// Reads every part not in `skip` whose read lands in `dst`, a piece of the slot starting at
/// slot offset `base` (parts outside the piece are left to another call). Returns the parts it
/// read, as bits `1 << part`.
fn read_parts(
    sh: &Shared,
    req: &ReadRequest,
    submitted: Instant,
    skip: &[Option<Part>],
    dst: &mut [u8],
    base: usize,
) -> Result<u8> {
    let mut read = 0u8;
    for (&part, pl) in Part::ALL.iter().zip(&req.layout.parts) {
        if pl.data.len == 0 || skip.contains(&Some(part)) {
            continue;
        }
        let r = pl.read_slot_range();
        if r.start < base || r.end > base + dst.len() {
            continue;
        }
        let region = &mut dst[r.start - base..r.end - base];
        read_part(sh, req.key, part, pl, submitted, region)?;
        read |= 1 << part as u8;
    }
    Ok(read)
}

/// An error naming the first part with data that is neither in `skip` nor in `read` (bits
/// `1 << part`): its read never landed in the slot.
fn check_all_read(req: &ReadRequest, skip: &[Option<Part>], read: u8) -> Result<()> {
    let missed = Part::ALL.iter().zip(&req.layout.parts).find(|(part, pl)| {
        pl.data.len > 0 && !skip.contains(&Some(**part)) && read & (1 << **part as u8) == 0
    });
    match missed {
        Some((&part, pl)) => Err(Error::InvalidInput(format!(
            "{}: {} read of {} B at slot offset {} does not fit the slot",
            req.key,
            part.name(),
            pl.read.len,
            pl.buf_offset
        ))),
        None => Ok(()),
    }
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
    /// readers get. The in-place part's function gets its slot range after its read. The other
    /// part is read in place as usual (beside the two functions, which run on the repack
    /// threads). Two threads and lengths that grow (the staging buffer is reallocated).
    #[test]
    fn staged_and_in_place_parts_reach_their_functions() {
        let (_d, f, data) = setup(200_000);
        let staged_calls = Arc::new(AtomicUsize::new(0));
        let in_place_calls = Arc::new(AtomicUsize::new(0));
        // Calls made elsewhere than on a repack thread (the functions must run beside the read).
        let elsewhere = Arc::new(AtomicUsize::new(0));
        let on_repack_thread = {
            let elsewhere = Arc::clone(&elsewhere);
            move || {
                let name = std::thread::current().name().map(str::to_owned);
                if !name.is_some_and(|n| n.starts_with("repack-")) {
                    elsewhere.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        let seen = Arc::clone(&staged_calls);
        let check = on_repack_thread.clone();
        let apply = move |_: ExpertKey, l: &SlotLayout, dst: &mut [u8], src: &[u8]| {
            check();
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
        let seen = Arc::clone(&in_place_calls);
        let in_place = move |_: ExpertKey, l: &SlotLayout, dst: &mut [u8]| {
            on_repack_thread();
            let g = &l.parts[Part::Gate as usize];
            if dst[..] != file_data[g.data.offset as usize..g.data.end() as usize] {
                return Err(Error::Model(
                    "the gate was not read before its function".into(),
                ));
            }
            dst.reverse();
            seen.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        let t = SlotTransform {
            staged: Some(StagedPart {
                part: Part::Down,
                apply: Arc::new(apply),
            }),
            in_place: Some(InPlacePart {
                part: Part::Gate,
                apply: Arc::new(in_place),
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
                if k != Part::Up as usize {
                    want.reverse();
                }
                assert_eq!(&b.as_slice()[p.slot_range()], &want[..], "part {k}");
            }
            n += 1;
        }
        assert_eq!(n, 6);
        assert_eq!(staged_calls.load(Ordering::Relaxed), 6);
        assert_eq!(in_place_calls.load(Ordering::Relaxed), 6);
        assert_eq!(
            elsewhere.load(Ordering::Relaxed),
            0,
            "a function ran off the repack threads"
        );
        assert_eq!(pool.stats().reads, 6);
    }

    /// A transform that would stage a part and rewrite the same part in place is refused.
    #[test]
    fn a_transform_staging_and_rewriting_one_part_is_refused() {
        let (_d, f, _) = setup(10_000);
        let t = SlotTransform {
            staged: Some(StagedPart {
                part: Part::Gate,
                apply: Arc::new(|_: ExpertKey, _: &SlotLayout, _: &mut [u8], _: &[u8]| Ok(())),
            }),
            in_place: Some(InPlacePart {
                part: Part::Gate,
                apply: Arc::new(|_: ExpertKey, _: &SlotLayout, _: &mut [u8]| Ok(())),
            }),
        };
        let err = IoPool::with_transform(f, IoConfig::default(), Some(t)).unwrap_err();
        assert!(err.to_string().contains("the gate part"), "{err}");
    }

    /// A part with data that no read placed in the slot is an error naming it.
    #[test]
    fn a_part_left_unread_is_an_error_naming_it() {
        let l = layout(13, 4000);
        let req = ReadRequest {
            key: ExpertKey::new(2, 5),
            layout: l,
            buf: buf(l.used_bytes),
            priority: Priority::Demand,
            tag: 0,
        };
        let all = (1 << Part::Gate as u8) | (1 << Part::Up as u8) | (1 << Part::Down as u8);
        assert!(check_all_read(&req, &[], all).is_ok());
        assert!(check_all_read(&req, &[Some(Part::Down)], all & !(1 << Part::Down as u8)).is_ok());
        let err = check_all_read(&req, &[], all & !(1 << Part::Up as u8)).unwrap_err();
        assert!(err.to_string().contains("up read"), "{err}");
    }

    /// An error of either function fails the read, naming what it said.
    #[test]
    fn a_transform_function_error_fails_the_read() {
        for failing in [Part::Down, Part::Gate] {
            let (_d, f, _) = setup(100_000);
            let fail = move |k: ExpertKey, p: Part| -> Result<()> {
                if p == failing {
                    Err(Error::Model(format!("{k}: cannot repack {}", p.name())))
                } else {
                    Ok(())
                }
            };
            let t = SlotTransform {
                staged: Some(StagedPart {
                    part: Part::Down,
                    apply: Arc::new(
                        move |k: ExpertKey, _: &SlotLayout, _: &mut [u8], _: &[u8]| {
                            fail(k, Part::Down)
                        },
                    ),
                }),
                in_place: Some(InPlacePart {
                    part: Part::Gate,
                    apply: Arc::new(move |k: ExpertKey, _: &SlotLayout, _: &mut [u8]| {
                        fail(k, Part::Gate)
                    }),
                }),
            };
            let pool = IoPool::with_transform(f, IoConfig::default(), Some(t)).unwrap();
            submit_demands(&pool, 2, |i| layout(i * 9000 + 13, 4000));
            let mut failed = 0;
            while let Some(c) = pool.recv() {
                match c.outcome {
                    Outcome::Failed(e) => {
                        let want = format!("cannot repack {}", failing.name());
                        assert!(e.to_string().contains(&want), "{e}");
                        failed += 1;
                    }
                    o => panic!("expected a failure, got {o:?}"),
                }
            }
            assert_eq!(failed, 2);
            assert_eq!(pool.stats().failed, 2);
        }
    }

    /// A panicking transform function fails its read with an error saying so, and the pool goes
    /// on serving the next requests.
    #[test]
    fn a_panic_in_a_transform_fails_the_read_and_the_pool_goes_on() {
        let (_d, f, _) = setup(100_000);
        let t = SlotTransform {
            staged: None,
            in_place: Some(InPlacePart {
                part: Part::Gate,
                apply: Arc::new(|k: ExpertKey, _: &SlotLayout, _: &mut [u8]| {
                    if k.expert == 0 {
                        panic!("bug in a repack");
                    }
                    Ok(())
                }),
            }),
        };
        let cfg = IoConfig {
            threads: 1,
            ..IoConfig::default()
        };
        let pool = IoPool::with_transform(f, cfg, Some(t)).unwrap();
        submit_demands(&pool, 3, |i| layout(i * 9000 + 13, 4000));
        let mut outcomes = Vec::new();
        while let Some(c) = pool.recv() {
            outcomes.push((c.key.expert, c.outcome));
        }
        outcomes.sort_by_key(|o| o.0);
        assert_eq!(outcomes.len(), 3);
        match &outcomes[0].1 {
            Outcome::Failed(e) => {
                assert!(e.to_string().contains("panicked: bug in a repack"), "{e}")
            }
            o => panic!("expected a failure, got {o:?}"),
        }
        assert!(
            outcomes[1..]
                .iter()
                .all(|o| matches!(o.1, Outcome::Done { .. }))
        );
        let st = pool.stats();
        assert_eq!((st.failed, st.reads), (1, 2));
        // The busy clock was stopped for every request, the failed one included.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(pool.stats().busy_wall_ns, st.busy_wall_ns);
    }

    /// `split_out` hands out the ranges in the order given and the pieces around them.
    #[test]
    fn split_out_cuts_around_the_ranges() {
        let mut buf: Vec<u8> = (0..20).collect();
        let (pieces, outs) = split_out(&mut buf, &[12..15, 2..5]).unwrap();
        let pieces: Vec<(usize, Vec<u8>)> =
            pieces.into_iter().map(|(a, p)| (a, p.to_vec())).collect();
        assert_eq!(
            pieces,
            vec![
                (0, vec![0, 1]),
                (5, (5..12).collect()),
                (15, (15..20).collect())
            ]
        );
        assert_eq!(outs[0].to_vec(), vec![12, 13, 14]);
        assert_eq!(outs[1].to_vec(), vec![2, 3, 4]);
        assert!(split_out(&mut buf, &[2..6, 5..8]).is_none(), "overlap");
        assert!(split_out(&mut buf, &[0..1, 15..21]).is_none(), "outside");
        let (pieces, outs) = split_out(&mut buf, &[]).unwrap();
        assert_eq!((pieces.len(), pieces[0].1.len(), outs.len()), (1, 20, 0));
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
