//! [`ProfileLayer`]: a `tracing_subscriber::Layer` that records span intervals and events from
//! every thread into per-thread buffers, and [`ProfileHandle`] that collects them.
//!
//! Hot path, per span: at creation one atomic increment and the raw field values (numbers,
//! bools, `&'static` names) in a small `Vec` kept in the span's registry extensions; at enter a
//! timestamp pushed on a thread-local stack; at exit one 40-byte record pushed into the thread's
//! own buffer; at close the span's fields moved (not copied) into that buffer. A buffer sits
//! behind a `Mutex` that only [`ProfileHandle::take`] ever contends, so locking it is one
//! uncontended compare-and-swap. Nothing is formatted except `?`/`%` fields and event messages.
//!
//! A span's intervals are reported by the first [`ProfileHandle::take`] after the span closed
//! (its fields are final then); spans still open stay pending in the handle.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::recording::{EventRecord, FieldValue, Fields, Recording, SpanRecord, ThreadInfo};

/// Distinguishes layers so one thread can feed several (e.g. parallel tests).
static NEXT_LAYER_ID: AtomicU64 = AtomicU64::new(1);
/// Span ids are unique across the process and shared by all profile layers of a registry.
static NEXT_SPAN_UID: AtomicU64 = AtomicU64::new(1);

type RawFields = Vec<(&'static str, FieldValue)>;
type Meta = &'static Metadata<'static>;

/// What the hot path stores; turned into [`Recording`] entries by [`ProfileHandle::take`].
enum Raw {
    Interval {
        uid: u64,
        start_ns: u64,
        end_ns: u64,
    },
    Close(Box<ClosedSpan>),
    Event(Box<RawEvent>),
}

struct ClosedSpan {
    uid: u64,
    parent: Option<u64>,
    meta: Meta,
    fields: RawFields,
}

struct RawEvent {
    meta: Meta,
    ts_ns: u64,
    message: Option<String>,
    fields: RawFields,
}

/// One thread's buffer for one layer.
struct ThreadBuf {
    tid: u32,
    name: String,
    records: Mutex<Vec<Raw>>,
}

/// Intervals whose span has not closed yet, and spans closed in the previous `take` (an
/// interval pushed on one thread can be collected after its span's close on another).
#[derive(Default)]
struct Pending {
    intervals: Vec<(u32, u64, u64, u64)>,
    /// Sorted by uid.
    recently_closed: Vec<SpanInfo>,
}

struct SpanInfo {
    uid: u64,
    parent: Option<u64>,
    meta: Meta,
    fields: Fields,
}

struct Shared {
    layer_id: u64,
    origin: Instant,
    threads: Mutex<Vec<Arc<ThreadBuf>>>,
    pending: Mutex<Pending>,
}

/// A thread's view of one layer: its buffer and its stack of entered spans.
struct Local {
    layer_id: u64,
    buf: Arc<ThreadBuf>,
    /// (span id from the registry, enter time) for spans entered on this thread.
    stack: Vec<(u64, u64)>,
}

thread_local! {
    static LOCALS: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// What a span carries in its registry extensions.
struct SpanState {
    uid: u64,
    parent: Option<u64>,
    fields: RawFields,
    /// Profile layers of this registry that captured the span and have not seen it close.
    n_layers: u32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A `tracing_subscriber::Layer` recording spans and events; see the [module docs](self).
///
/// ```
/// use tracing_subscriber::prelude::*;
/// let (layer, handle) = profiler::ProfileLayer::new();
/// let subscriber = tracing_subscriber::registry().with(layer);
/// tracing::subscriber::with_default(subscriber, || {
///     let _s = tracing::trace_span!("compute.attention", layer = 3u64).entered();
/// });
/// let rec = handle.take();
/// assert_eq!(rec.spans[0].name, "compute.attention");
/// ```
pub struct ProfileLayer {
    shared: Arc<Shared>,
}

/// Collects what a [`ProfileLayer`] recorded; cheap to clone.
#[derive(Clone)]
pub struct ProfileHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ProfileLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileLayer")
            .field("layer_id", &self.shared.layer_id)
            .finish()
    }
}

impl fmt::Debug for ProfileHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProfileHandle")
            .field("layer_id", &self.shared.layer_id)
            .finish()
    }
}

impl ProfileLayer {
    /// A new layer and the handle that collects its records. Time 0 of the recording is now.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> (ProfileLayer, ProfileHandle) {
        let shared = Arc::new(Shared {
            layer_id: NEXT_LAYER_ID.fetch_add(1, Ordering::Relaxed),
            origin: Instant::now(),
            threads: Mutex::new(Vec::new()),
            pending: Mutex::new(Pending::default()),
        });
        (
            ProfileLayer {
                shared: Arc::clone(&shared),
            },
            ProfileHandle { shared },
        )
    }

    fn now_ns(&self) -> u64 {
        saturating_nanos(self.shared.origin.elapsed())
    }

    /// Runs `f` on this thread's `Local` for this layer, registering the thread on first use.
    /// Does nothing if the thread-local is gone (thread exiting) or re-entered.
    fn with_local(&self, f: impl FnOnce(&mut Local)) {
        let _ = LOCALS.try_with(|cell| {
            let Ok(mut locals) = cell.try_borrow_mut() else {
                return;
            };
            let id = self.shared.layer_id;
            let idx = match locals.iter().position(|l| l.layer_id == id) {
                Some(i) => i,
                None => {
                    // Drop entries of layers that no longer exist (only we hold their buffer).
                    locals.retain(|l| Arc::strong_count(&l.buf) > 1);
                    locals.push(Local {
                        layer_id: id,
                        buf: self.register_thread(),
                        stack: Vec::new(),
                    });
                    locals.len() - 1
                }
            };
            f(&mut locals[idx]);
        });
    }

    fn register_thread(&self) -> Arc<ThreadBuf> {
        let mut threads = lock(&self.shared.threads);
        let tid = threads.len() as u32;
        let name = std::thread::current()
            .name()
            .map_or_else(|| format!("thread-{tid}"), str::to_owned);
        let buf = Arc::new(ThreadBuf {
            tid,
            name,
            records: Mutex::new(Vec::new()),
        });
        threads.push(Arc::clone(&buf));
        buf
    }

    fn push(&self, raw: Raw) {
        self.with_local(|l| lock(&l.buf.records).push(raw));
    }
}

impl<S> tracing_subscriber::Layer<S> for ProfileLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(state) = span.extensions_mut().get_mut::<SpanState>() {
            // Another ProfileLayer of the same registry already captured it.
            state.n_layers += 1;
            return;
        }
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<SpanState>().map(|s| s.uid));
        let mut fields = Vec::with_capacity(attrs.fields().len());
        attrs.record(&mut Visitor {
            fields: &mut fields,
            message: None,
        });
        span.extensions_mut().insert(SpanState {
            uid: NEXT_SPAN_UID.fetch_add(1, Ordering::Relaxed),
            parent,
            fields,
            n_layers: 1,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        let Some(state) = ext.get_mut::<SpanState>() else {
            return;
        };
        let mut fields = Vec::new();
        values.record(&mut Visitor {
            fields: &mut fields,
            message: None,
        });
        for (k, v) in fields {
            match state.fields.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => state.fields.push((k, v)),
            }
        }
    }

    fn on_enter(&self, id: &Id, _ctx: Context<'_, S>) {
        let now = self.now_ns();
        let key = id.into_u64();
        self.with_local(|l| l.stack.push((key, now)));
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let end_ns = self.now_ns();
        let Some(uid) = ctx
            .span(id)
            .and_then(|s| s.extensions().get::<SpanState>().map(|s| s.uid))
        else {
            return;
        };
        let key = id.into_u64();
        self.with_local(|l| {
            let Some(pos) = l.stack.iter().rposition(|&(k, _)| k == key) else {
                return;
            };
            let (_, start_ns) = l.stack.remove(pos);
            lock(&l.buf.records).push(Raw::Interval {
                uid,
                start_ns,
                end_ns,
            });
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let meta = span.metadata();
        let mut ext = span.extensions_mut();
        // With several profile layers on one registry, the last one to see the close moves the
        // fields out; the others copy them.
        let closed = match ext.get_mut::<SpanState>() {
            None => return,
            Some(state) if state.n_layers > 1 => {
                state.n_layers -= 1;
                ClosedSpan {
                    uid: state.uid,
                    parent: state.parent,
                    meta,
                    fields: state.fields.clone(),
                }
            }
            Some(_) => {
                let Some(state) = ext.remove::<SpanState>() else {
                    return;
                };
                ClosedSpan {
                    uid: state.uid,
                    parent: state.parent,
                    meta,
                    fields: state.fields,
                }
            }
        };
        drop(ext);
        self.push(Raw::Close(Box::new(closed)));
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let ts_ns = self.now_ns();
        let mut fields = Vec::with_capacity(event.fields().count());
        let mut message = None;
        event.record(&mut Visitor {
            fields: &mut fields,
            message: Some(&mut message),
        });
        self.push(Raw::Event(Box::new(RawEvent {
            meta: event.metadata(),
            ts_ns,
            message,
            fields,
        })));
    }
}

/// Collects field values without formatting numbers, bools or strings.
struct Visitor<'a> {
    fields: &'a mut RawFields,
    /// Where an event's `message` goes (spans have none).
    message: Option<&'a mut Option<String>>,
}

impl Visit for Visitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), FieldValue::F64(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), FieldValue::I64(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.name(), FieldValue::U64(value)));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value)
            .map_or_else(|_| FieldValue::Str(value.to_string()), FieldValue::I64);
        self.fields.push((field.name(), v));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value)
            .map_or_else(|_| FieldValue::Str(value.to_string()), FieldValue::U64);
        self.fields.push((field.name(), v));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), FieldValue::Bool(value)));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message"
            && let Some(m) = self.message.as_mut()
        {
            **m = Some(value.to_owned());
            return;
        }
        self.fields
            .push((field.name(), FieldValue::Str(value.to_owned())));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let s = format!("{value:?}");
        if field.name() == "message"
            && let Some(m) = self.message.as_mut()
        {
            **m = Some(s);
            return;
        }
        self.fields.push((field.name(), FieldValue::Str(s)));
    }
}

fn to_fields(raw: RawFields) -> Fields {
    Fields(
        raw.into_iter()
            .map(|(k, v)| (Cow::Borrowed(k), v))
            .collect(),
    )
}

impl ProfileHandle {
    /// Drains everything recorded so far on all threads into a [`Recording`].
    ///
    /// Intervals of spans that have not closed yet stay pending until a later `take`. Threads
    /// keep their `tid` across calls.
    pub fn take(&self) -> Recording {
        let bufs: Vec<Arc<ThreadBuf>> = lock(&self.shared.threads).clone();
        let mut threads = Vec::with_capacity(bufs.len());
        let mut per_thread = Vec::with_capacity(bufs.len());
        for b in &bufs {
            threads.push(ThreadInfo {
                tid: b.tid,
                name: b.name.clone(),
            });
            per_thread.push((b.tid, std::mem::take(&mut *lock(&b.records))));
        }

        let mut pending = lock(&self.shared.pending);
        let mut closed: Vec<SpanInfo> = Vec::new();
        let mut intervals = std::mem::take(&mut pending.intervals);
        let mut events = Vec::new();
        for (tid, raws) in per_thread {
            for raw in raws {
                match raw {
                    Raw::Interval {
                        uid,
                        start_ns,
                        end_ns,
                    } => intervals.push((tid, uid, start_ns, end_ns)),
                    Raw::Close(c) => closed.push(SpanInfo {
                        uid: c.uid,
                        parent: c.parent,
                        meta: c.meta,
                        fields: to_fields(c.fields),
                    }),
                    Raw::Event(e) => events.push(EventRecord {
                        name: e.message.map_or(Cow::Borrowed(e.meta.name()), Cow::Owned),
                        target: Cow::Borrowed(e.meta.target()),
                        tid,
                        ts_ns: e.ts_ns,
                        fields: to_fields(e.fields),
                    }),
                }
            }
        }
        // Join intervals to their span's info by uid (sorted vectors: no hashing of millions).
        closed.sort_unstable_by_key(|c| c.uid);
        intervals.sort_unstable_by_key(|i| i.1);
        let find = |v: &[SpanInfo], uid: u64| -> Option<usize> {
            let i = v.partition_point(|c| c.uid < uid);
            (i < v.len() && v[i].uid == uid).then_some(i)
        };
        let mut spans = Vec::with_capacity(intervals.len());
        for (tid, uid, start_ns, end_ns) in intervals {
            let info = match find(&closed, uid) {
                Some(i) => Some(&closed[i]),
                None => find(&pending.recently_closed, uid).map(|i| &pending.recently_closed[i]),
            };
            let Some(info) = info else {
                pending.intervals.push((tid, uid, start_ns, end_ns));
                continue;
            };
            spans.push(SpanRecord {
                id: uid,
                parent: info.parent,
                name: Cow::Borrowed(info.meta.name()),
                target: Cow::Borrowed(info.meta.target()),
                tid,
                start_ns,
                end_ns,
                fields: info.fields.clone(),
            });
        }
        pending.recently_closed = closed;
        drop(pending);

        let mut rec = Recording {
            threads,
            spans,
            events,
        };
        rec.sort();
        rec
    }

    /// Nanoseconds elapsed since the recording's origin (time 0 of its timestamps).
    pub fn now_ns(&self) -> u64 {
        saturating_nanos(self.shared.origin.elapsed())
    }
}

/// `d` in nanoseconds, saturating at `u64::MAX`.
fn saturating_nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    fn with_profile(f: impl FnOnce()) -> Recording {
        let (layer, handle) = ProfileLayer::new();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, f);
        handle.take()
    }

    #[test]
    fn nested_spans_are_recorded_with_fields_parent_and_nesting() {
        let rec = with_profile(|| {
            let fwd =
                tracing::trace_span!("forward", token = 7u64, n_tokens = 1u64, phase = "decode");
            let _f = fwd.enter();
            let _a = tracing::trace_span!("compute.attention", layer = 2u64).entered();
        });
        assert_eq!(rec.spans.len(), 2);
        let fwd = &rec.spans[0];
        let att = &rec.spans[1];
        assert_eq!(fwd.name, "forward");
        assert_eq!(fwd.u64("token"), Some(7));
        assert_eq!(fwd.str("phase"), Some("decode"));
        assert_eq!(att.name, "compute.attention");
        assert_eq!(att.u64("layer"), Some(2));
        assert_eq!(att.parent, Some(fwd.id));
        assert!(fwd.start_ns <= att.start_ns && att.end_ns <= fwd.end_ns);
        assert_eq!(rec.threads.len(), 1);
    }

    #[test]
    fn events_keep_message_as_name_and_fields() {
        let rec = with_profile(|| {
            let experts = "3,7";
            tracing::trace!(target: "engine::routing", token = 4u64, layer = 1u64, experts = %experts, weights = "0.51,0.49", "route");
        });
        assert_eq!(rec.events.len(), 1);
        let e = &rec.events[0];
        assert_eq!(e.name, "route");
        assert_eq!(e.target, "engine::routing");
        assert_eq!(e.str("experts"), Some("3,7"));
        assert_eq!(e.str("weights"), Some("0.51,0.49"));
        assert_eq!(e.u64("token"), Some(4));
        assert!(!e.fields.contains_key("message"));
    }

    #[test]
    fn later_recorded_fields_are_kept() {
        let rec = with_profile(|| {
            let s = tracing::trace_span!(
                "io.expert_read",
                layer = 0u64,
                bytes = tracing::field::Empty
            );
            let _g = s.enter();
            s.record("bytes", 4096u64);
        });
        assert_eq!(rec.spans[0].u64("bytes"), Some(4096));
    }

    #[test]
    fn each_thread_gets_its_own_tid_and_name() {
        let (layer, handle) = ProfileLayer::new();
        let subscriber = tracing_subscriber::registry().with(layer);
        let dispatch = tracing::Dispatch::new(subscriber);
        let d2 = dispatch.clone();
        tracing::dispatcher::with_default(&dispatch, || {
            let _s = tracing::trace_span!("compute.router", layer = 0u64).entered();
        });
        std::thread::Builder::new()
            .name("io-0".into())
            .spawn(move || {
                tracing::dispatcher::with_default(&d2, || {
                    for _ in 0..3 {
                        let _s = tracing::trace_span!("io.expert_read", bytes = 10u64).entered();
                    }
                });
            })
            .expect("spawn")
            .join()
            .expect("join");
        let rec = handle.take();
        assert_eq!(rec.threads.len(), 2);
        let io = rec
            .threads
            .iter()
            .find(|t| t.name == "io-0")
            .expect("io thread");
        let reads: Vec<_> = rec.spans_named("io.expert_read").collect();
        assert_eq!(reads.len(), 3);
        assert!(reads.iter().all(|s| s.tid == io.tid));
        let router = rec.spans_named("compute.router").next().expect("router");
        assert_ne!(router.tid, io.tid);
    }

    #[test]
    fn open_spans_are_reported_after_they_close() {
        let (layer, handle) = ProfileLayer::new();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let s = tracing::trace_span!("forward", token = 1u64);
            {
                let _g = s.enter();
            }
            assert!(handle.take().spans.is_empty(), "still open");
            {
                let _g = s.enter();
            }
            drop(s);
            let rec = handle.take();
            assert_eq!(rec.spans.len(), 2);
            assert!(rec.spans.iter().all(|x| x.u64("token") == Some(1)));
            assert_eq!(rec.spans[0].id, rec.spans[1].id);
            assert!(handle.take().spans.is_empty(), "drained");
        });
    }

    #[test]
    fn two_layers_on_one_thread_record_independently() {
        let (l1, h1) = ProfileLayer::new();
        let (l2, h2) = ProfileLayer::new();
        let subscriber = tracing_subscriber::registry().with(l1).with(l2);
        tracing::subscriber::with_default(subscriber, || {
            let _s = tracing::trace_span!("kv.append", layer = 0u64).entered();
        });
        let (r1, r2) = (h1.take(), h2.take());
        assert_eq!(r1.spans.len(), 1);
        assert_eq!(r2.spans.len(), 1);
        assert_eq!(r1.spans[0].id, r2.spans[0].id);
    }
}
