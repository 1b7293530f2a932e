//! The data a [`ProfileLayer`](crate::ProfileLayer) records: spans as enter/exit intervals,
//! events as timestamped field sets, and the threads they ran on.
//!
//! A [`Recording`] is plain data (serde-serialisable) so analyses are pure functions over it and
//! tests can build one by hand with [`RecordingBuilder`].

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Span and event names the engine emits (see `docs/spans.md`).
pub mod names {
    /// One forward step (a prefill chunk or one decode token); marks token boundaries.
    pub const FORWARD: &str = "forward";
    /// Embedding lookup.
    pub const COMPUTE_EMBED: &str = "compute.embed";
    /// Router logits and top-k for one layer.
    pub const COMPUTE_ROUTER: &str = "compute.router";
    /// Attention block of one layer.
    pub const COMPUTE_ATTENTION: &str = "compute.attention";
    /// FFN norm and all selected experts of one layer.
    pub const COMPUTE_EXPERTS: &str = "compute.experts";
    /// One expert's FFN (nested inside `compute.experts`).
    pub const COMPUTE_EXPERT: &str = "compute.expert";
    /// Final norm and LM head.
    pub const COMPUTE_LM_HEAD: &str = "compute.lm_head";
    /// Prefix shared by all compute spans.
    pub const COMPUTE_PREFIX: &str = "compute.";
    /// One positioned read of an expert's slab (I/O thread, or compute thread when synchronous).
    pub const IO_EXPERT_READ: &str = "io.expert_read";
    /// The compute thread blocked waiting for an expert read.
    pub const IO_WAIT: &str = "io.wait";
    /// An expert repacked in its cache slot after its read (I/O thread).
    pub const IO_REPACK: &str = "io.repack";
    /// K/V written into the cache.
    pub const KV_APPEND: &str = "kv.append";
    /// A global layer's KV cache grew its allocation.
    pub const KV_GROW: &str = "kv.grow";
    /// Target of routing events.
    pub const TARGET_ROUTING: &str = "engine::routing";
    /// Target of MoE events (sparsity, cache lookups).
    pub const TARGET_MOE: &str = "engine::moe";
    /// Target of KV allocation events.
    pub const TARGET_KV: &str = "engine::kv";
    /// Message of a routing event.
    pub const EVENT_ROUTE: &str = "route";
    /// Message of a ReGLU sparsity event.
    pub const EVENT_SPARSITY: &str = "sparsity";
    /// Message of an expert-cache lookup event.
    pub const EVENT_CACHE: &str = "cache";
    /// Message of a KV allocation event.
    pub const EVENT_KV_BYTES: &str = "kv_bytes";
}

/// One recorded field value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// A boolean.
    Bool(bool),
    /// A non-negative integer.
    U64(u64),
    /// A signed integer.
    I64(i64),
    /// A float.
    F64(f64),
    /// A string (also what `?`/`%` fields are formatted into, off the hot path).
    Str(String),
}

impl FieldValue {
    /// The value as an unsigned integer, if it is one (a non-negative `I64` counts).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            FieldValue::U64(v) => Some(v),
            FieldValue::I64(v) => u64::try_from(v).ok(),
            FieldValue::Str(ref s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            FieldValue::U64(v) => Some(v as f64),
            FieldValue::I64(v) => Some(v as f64),
            FieldValue::F64(v) => Some(v),
            FieldValue::Str(ref s) => s.trim().parse().ok(),
            FieldValue::Bool(_) => None,
        }
    }

    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(v) => Some(v),
            FieldValue::Str(ref s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

macro_rules! from_int {
    ($($t:ty => $variant:ident as $as:ty),*) => {$(
        impl From<$t> for FieldValue {
            fn from(v: $t) -> Self {
                FieldValue::$variant(v as $as)
            }
        }
    )*};
}
from_int!(u64 => U64 as u64, u32 => U64 as u64, usize => U64 as u64, i64 => I64 as i64, i32 => I64 as i64, f64 => F64 as f64, f32 => F64 as f64);

impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue::Bool(v)
    }
}

impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue::Str(v.to_owned())
    }
}

impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue::Str(v)
    }
}

/// A name that is `&'static str` when captured live (no allocation) and owned when read back.
pub type Name = Cow<'static, str>;

/// A span's or event's fields in recording order (serialised as a JSON object). Field sets are
/// tiny, so lookups scan; if a name repeats, the last value wins.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields(pub Vec<(Name, FieldValue)>);

impl Fields {
    /// The value of a field.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether a field is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets a field (replacing an earlier value).
    pub fn insert(&mut self, key: impl Into<Name>, value: FieldValue) {
        let key = key.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    /// Fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<Name>> FromIterator<(K, FieldValue)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, FieldValue)>>(iter: I) -> Self {
        Fields(iter.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

impl Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k.as_ref(), v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of field names to values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Fields, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some((k, val)) = a.next_entry::<String, FieldValue>()? {
                    v.push((Cow::Owned(k), val));
                }
                Ok(Fields(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// A thread that recorded at least one span or event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadInfo {
    /// Small stable id (0, 1, 2, … in order of first record); the `tid` of the Chrome trace.
    pub tid: u32,
    /// The OS thread's name (`std::thread::Thread::name`), or `thread-<tid>` if it has none.
    pub name: String,
}

/// One enter→exit interval of a span on one thread. A span entered twice yields two records
/// with the same `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// Unique id of the span (shared by all its intervals).
    pub id: u64,
    /// Id of the parent span, if any.
    pub parent: Option<u64>,
    /// Span name (`compute.attention`, …).
    pub name: Name,
    /// `tracing` target (`engine::model`, …).
    pub target: Name,
    /// Thread the interval ran on ([`ThreadInfo::tid`]).
    pub tid: u32,
    /// Enter time, nanoseconds since the recording's origin.
    pub start_ns: u64,
    /// Exit time, nanoseconds since the recording's origin.
    pub end_ns: u64,
    /// Fields recorded at creation or later with `Span::record`.
    pub fields: Fields,
}

impl SpanRecord {
    /// Duration of the interval in nanoseconds.
    pub fn dur_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// A field as an unsigned integer.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(FieldValue::as_u64)
    }

    /// A field as a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(FieldValue::as_str)
    }
}

/// One `tracing` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The event's message (`route`, `sparsity`, …), or its callsite name if it has none.
    pub name: Name,
    /// `tracing` target (`engine::routing`, …).
    pub target: Name,
    /// Thread it was emitted on.
    pub tid: u32,
    /// Time, nanoseconds since the recording's origin.
    pub ts_ns: u64,
    /// Fields other than the message.
    pub fields: Fields,
}

impl EventRecord {
    /// A field as an unsigned integer.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(FieldValue::as_u64)
    }

    /// A field as a float.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(FieldValue::as_f64)
    }

    /// A field as a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(FieldValue::as_str)
    }

    /// A field as a boolean.
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.fields.get(key).and_then(FieldValue::as_bool)
    }
}

/// Everything recorded between two [`ProfileHandle::take`](crate::ProfileHandle::take) calls.
///
/// Spans are sorted by start time (longer first on ties, so parents precede children), events
/// by time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    /// Threads that recorded anything, by `tid`.
    pub threads: Vec<ThreadInfo>,
    /// Span intervals.
    pub spans: Vec<SpanRecord>,
    /// Events.
    pub events: Vec<EventRecord>,
}

impl Recording {
    /// Spans with the given name.
    pub fn spans_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a SpanRecord> + 'a {
        self.spans.iter().filter(move |s| s.name == name)
    }

    /// Events with the given target and message.
    pub fn events_named<'a>(
        &'a self,
        target: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a EventRecord> + 'a {
        self.events
            .iter()
            .filter(move |e| e.target == target && e.name == name)
    }

    /// `forward` spans in time order: the model's steps.
    pub fn forward_steps(&self) -> Vec<&SpanRecord> {
        let mut v: Vec<&SpanRecord> = self.spans_named(names::FORWARD).collect();
        v.sort_by_key(|s| (s.start_ns, s.end_ns));
        v
    }

    /// The latest span end or event time (0 when empty).
    pub fn end_ns(&self) -> u64 {
        let s = self.spans.iter().map(|s| s.end_ns).max().unwrap_or(0);
        let e = self.events.iter().map(|e| e.ts_ns).max().unwrap_or(0);
        s.max(e)
    }

    /// The earliest span start or event time (0 when empty).
    pub fn start_ns(&self) -> u64 {
        let s = self.spans.iter().map(|s| s.start_ns).min();
        let e = self.events.iter().map(|e| e.ts_ns).min();
        match (s, e) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        }
    }

    /// Sorts spans and events into the documented order.
    pub fn sort(&mut self) {
        self.spans
            .sort_unstable_by_key(|s| (s.start_ns, std::cmp::Reverse(s.end_ns), s.id, s.tid));
        self.events.sort_by_key(|e| e.ts_ns);
        self.threads.sort_by_key(|t| t.tid);
    }
}

/// Builds a [`Recording`] by hand, for tests and for tools that import traces.
#[derive(Debug, Default)]
pub struct RecordingBuilder {
    rec: Recording,
    next_id: u64,
}

impl RecordingBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a thread and returns its `tid`.
    pub fn thread(&mut self, name: &str) -> u32 {
        let tid = self.rec.threads.len() as u32;
        self.rec.threads.push(ThreadInfo {
            tid,
            name: name.to_owned(),
        });
        tid
    }

    /// Adds a span interval `[start_ns, end_ns]` on `tid` with the given fields; returns its id.
    pub fn span(
        &mut self,
        tid: u32,
        name: &str,
        start_ns: u64,
        end_ns: u64,
        fields: &[(&str, FieldValue)],
    ) -> u64 {
        self.next_id += 1;
        self.rec.spans.push(SpanRecord {
            id: self.next_id,
            parent: None,
            name: Cow::Owned(name.to_owned()),
            target: Cow::Borrowed("test"),
            tid,
            start_ns,
            end_ns,
            fields: to_fields(fields),
        });
        self.next_id
    }

    /// Adds an event.
    pub fn event(
        &mut self,
        tid: u32,
        target: &str,
        name: &str,
        ts_ns: u64,
        fields: &[(&str, FieldValue)],
    ) -> &mut Self {
        self.rec.events.push(EventRecord {
            name: Cow::Owned(name.to_owned()),
            target: Cow::Owned(target.to_owned()),
            tid,
            ts_ns,
            fields: to_fields(fields),
        });
        self
    }

    /// The finished, sorted recording.
    pub fn build(mut self) -> Recording {
        self.rec.sort();
        self.rec
    }
}

fn to_fields(fields: &[(&str, FieldValue)]) -> Fields {
    fields
        .iter()
        .map(|(k, v)| (Cow::Owned((*k).to_owned()), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_values_convert_between_numeric_kinds() {
        assert_eq!(FieldValue::I64(5).as_u64(), Some(5));
        assert_eq!(FieldValue::I64(-5).as_u64(), None);
        assert_eq!(FieldValue::from("17").as_u64(), Some(17));
        assert_eq!(FieldValue::U64(3).as_f64(), Some(3.0));
        assert_eq!(FieldValue::from("true").as_bool(), Some(true));
        assert_eq!(FieldValue::Bool(true).as_u64(), None);
    }

    #[test]
    fn recording_round_trips_through_json() {
        let mut b = RecordingBuilder::new();
        let t = b.thread("main");
        b.span(
            t,
            "forward",
            10,
            20,
            &[("token", 3u64.into()), ("phase", "decode".into())],
        );
        b.event(
            t,
            names::TARGET_ROUTING,
            "route",
            15,
            &[("weights", "0.5,0.5".into())],
        );
        let rec = b.build();
        let json = serde_json::to_string(&rec).expect("serialises");
        let back: Recording = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, rec);
    }

    #[test]
    fn sort_puts_parents_before_children_at_equal_start() {
        let mut b = RecordingBuilder::new();
        let t = b.thread("main");
        b.span(t, "child", 0, 5, &[]);
        b.span(t, "parent", 0, 10, &[]);
        let rec = b.build();
        assert_eq!(rec.spans[0].name, "parent");
        assert_eq!(rec.start_ns(), 0);
        assert_eq!(rec.end_ns(), 10);
    }
}
