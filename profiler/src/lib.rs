//! A `tracing` layer that records the engine's spans and routing events, and the analyses built on
//! them (I/O vs compute overlap, expert reuse, cache hit curves, KV memory, latency histograms).
//!
//! Capture with [`ProfileLayer`], collect a [`Recording`] with [`ProfileHandle::take`], analyse
//! it with the pure functions of [`overlap`], [`routing`], [`cache`], [`latency`], [`kv`] and
//! [`sparsity`] (or all at once with [`analyze`]), and write the artefacts with
//! [`artefacts::write_artefacts`]. Span and event names are in `docs/spans.md` and
//! [`recording::names`].

pub mod artefacts;
pub mod cache;
pub mod error;
mod intervals;
pub mod kv;
pub mod latency;
pub mod layer;
pub mod metrics;
pub mod overlap;
pub mod recording;
pub mod routing;
pub mod sparsity;
pub mod stalls;
pub mod summary;

pub use artefacts::{Artefacts, write_artefacts};
pub use error::{Error, Result};
pub use layer::{ProfileHandle, ProfileLayer};
pub use metrics::{AnalysisConfig, Metrics, analyze, analyze_with_trace};
pub use recording::{
    EventRecord, FieldValue, Fields, Recording, RecordingBuilder, SpanRecord, ThreadInfo,
};
pub use routing::RoutingTrace;
pub use summary::Summary;
