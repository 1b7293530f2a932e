//! `thinker`: the command-line front end. Argument parsing and wiring only; the work happens in
//! the library crates.

fn main() {
    println!("thinker {}", env!("CARGO_PKG_VERSION"));
}
