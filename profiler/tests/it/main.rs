//! Integration tests of the profiler: a synthetic multi-threaded "engine" emits the documented
//! spans and events through a real `tracing` subscriber, and the artefacts are checked.

mod end_to_end;
mod synthetic;
