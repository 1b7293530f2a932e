//! Integration tests of the `thinker` binary: `chat` with piped stdin, `serve` over real HTTP,
//! `bench` records of an offloaded run.

mod bench;
mod chat;
mod http;
mod perfetto;
mod serve;

/// The fixture models.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/tests/fixtures");
/// The binary under test.
pub const THINKER: &str = env!("CARGO_BIN_EXE_thinker");
