//! A `tracing` layer that records the engine's spans and routing events, and the analyses built on
//! them (I/O vs compute overlap, expert reuse, cache hit curves, KV memory, latency histograms).
//!
//! Filled by the `[profiler]` issue; empty for now.
