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

/// The function of a [`SlotTransform`]: `(key, layout, slot bytes, staged part's bytes)`.
pub type SlotTransformFn =
    dyn Fn(ExpertKey, &SlotLayout, &mut [u8], Option<&[u8]>) -> Result<()> + Send + Sync;

/// A transformation applied to a slot right after its expert was read, on the I/O thread, before
/// the slot is handed to readers. Used to repack an expert's matrices into the layouts the fast
/// kernels read ([`crate::moe::sparse_down`], the x8 gate). An error fails the read.
///
/// With `staged` set, that part is read into a buffer of the I/O thread instead of into the
/// slot, and `apply` receives its bytes (the matrix's, without the alignment around them): it
/// must write the part's [`slot_range`](super::layout::PartPlacement::slot_range) itself. A
/// repack out of place then needs no copy of the matrix first.
#[derive(Clone)]
pub struct SlotTransform {
    /// The transformation.
    pub apply: Arc<SlotTransformFn>,
    /// The part read aside, if any.
    pub staged: Option<Part>,
}

impl std::fmt::Debug for SlotTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTransform")
            .field("staged", &self.staged)
            .finish_non_exhaustive()
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
        let shared = Arc::new(Shared {
            file,
            device: cfg.storage.model().inspect(|m| {
                m.set_source_in_memory(in_memory);
            }),
            transform,
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
    let staged = sh.transform.as_ref().and_then(|t| t.staged);
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
        let mut outcome = {
            let _span = tracing::trace_span!(
                "io.expert_read",
                layer = p.req.key.layer,
                expert = p.req.key.expert,
                bytes = p.req.layout.data_bytes(),
                prefetch = p.req.priority == Priority::Prefetch
            )
            .entered();
            read_expert(sh, &p.req, p.submitted, staged, &mut stage)
        };
        let t1 = Instant::now();
        lock(&sh.busy).stop(t1);
        let busy = t1 - t0;
        let mut transform_ns = 0;
        if let (Outcome::Done { .. }, Some(f)) = (&outcome, &sh.transform) {
            let _span = tracing::trace_span!(
                "io.repack",
                layer = p.req.key.layer,
                expert = p.req.key.expert
            )
            .entered();
            let mut buf = p.req.buf.write().unwrap_or_else(|p| p.into_inner());
            let staged_bytes = staged.and_then(|part| {
                let pl = &p.req.layout.parts[part as usize];
                let at = (pl.data.offset - pl.read.offset) as usize;
                let s = stage.as_ref()?.as_slice();
                (pl.data.len > 0).then(|| &s[at..at + pl.data.len as usize])
            });
            if let Err(e) = (f.apply)(p.req.key, &p.req.layout, buf.as_mut_slice(), staged_bytes) {
                outcome = Outcome::Failed(e);
            }
            transform_ns = super::saturating_nanos(t1.elapsed());
        }
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

/// Reads the expert's parts into its slot, except `staged`, which goes into `stage` (grown as
/// needed).
fn read_expert(
    sh: &Shared,
    req: &ReadRequest,
    submitted: Instant,
    staged: Option<Part>,
    stage: &mut Option<AlignedBuf>,
) -> Outcome {
    // The only writer of a loading slot; a poisoned lock just means an earlier fill panicked, and
    // the buffer is overwritten now anyway.
    let mut buf = req.buf.write().unwrap_or_else(|p| p.into_inner());
    let dst = buf.as_mut_slice();
    if dst.len() < req.layout.used_bytes {
        return Outcome::Failed(Error::InvalidInput(format!(
            "{}: slot of {} B cannot hold {} B",
            req.key,
            dst.len(),
            req.layout.used_bytes
        )));
    }
    for (part, pl) in Part::ALL.iter().zip(&req.layout.parts) {
        if pl.data.len == 0 {
            continue;
        }
        let len = pl.read.len as usize;
        let region = if staged == Some(*part) {
            let b = match stage.take() {
                Some(b) if b.len() >= len => stage.insert(b),
                _ => match AlignedBuf::new(len) {
                    Ok(b) => stage.insert(b),
                    Err(e) => return Outcome::Failed(with_context(e, req.key, *part)),
                },
            };
            &mut b.as_mut_slice()[..len]
        } else {
            &mut dst[pl.buf_offset..pl.buf_offset + len]
        };
        let res = match &sh.device {
            Some(dev) => dev.emulate(pl.read.len, Some(submitted), || {
                sh.file.read_into(pl.data, region)
            }),
            None => sh.file.read_into(pl.data, region),
        };
        if let Err(e) = res {
            return Outcome::Failed(with_context(e, req.key, *part));
        }
    }
    Outcome::Done {
        bytes: req.layout.used_bytes as u64,
    }
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

    /// A staged part is read aside, not into the slot: the transform gets exactly its bytes
    /// (without the alignment around them) and the slot's range for it is what the transform
    /// wrote there; the other parts are read in place as usual, with two threads and lengths
    /// that grow (the staging buffer is reallocated).
    #[test]
    fn a_staged_part_reaches_the_transform_and_not_the_slot() {
        let (_d, f, data) = setup(200_000);
        let seen_staged = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&seen_staged);
        let apply = move |_: ExpertKey, l: &SlotLayout, slot: &mut [u8], staged: Option<&[u8]>| {
            let down = &l.parts[Part::Down as usize];
            let src = staged.ok_or_else(|| Error::Model("no staged bytes".into()))?;
            if src.len() != down.data.len as usize {
                return Err(Error::Model(format!("staged {} B", src.len())));
            }
            // The slot's range for the staged part was not written by the read.
            if slot[down.slot_range()].iter().any(|&b| b != 0) {
                return Err(Error::Model("the staged part reached the slot".into()));
            }
            // Write it reversed, to see that the transform's bytes are what readers get.
            for (d, s) in slot[down.slot_range()].iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
            seen.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        let t = SlotTransform {
            apply: Arc::new(apply),
            staged: Some(Part::Down),
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
        assert_eq!((n, seen_staged.load(Ordering::Relaxed)), (6, 6));
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
