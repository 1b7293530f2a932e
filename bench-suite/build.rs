//! Records the version of the compiler building this crate (`BENCH_RUSTC_VERSION`), so that a
//! record names the rustc that built the binary without running one: a `rustc --version`
//! child maps the compiler's libraries (~190 MiB), and under a memory-budget run that page cache
//! is charged to the measured cgroup.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=BENCH_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
