//! Measures this machine's disk for expert offloading: sequential and random reads of 256 KiB
//! and of one expert matrix (663,552 B, SmallThinker-4B Q4_0), with `O_DIRECT` and with buffered
//! reads (`POSIX_FADV_RANDOM` + `DONTNEED`, the fallback), one request at a time and through the
//! I/O pool. Not part of CI.
//!
//! ```text
//! cargo run --release -p engine --example disk_bench -- [DIR] [SIZE_MiB]
//! ```
//! Writes a temporary file of SIZE_MiB (default 1024) under DIR (default `/work/tmp-offload`),
//! drops the page cache before each cold measurement (`/proc/sys/vm/drop_caches`, needs root;
//! a warning is printed otherwise), and deletes the file at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use engine::offload::io::{Outcome, ReadRequest};
use engine::offload::{
    AlignedBuf, ExpertFile, ExpertKey, FileRange, IoConfig, IoPool, OpenMode, Priority, SlotLayout,
    StorageProfile,
};

/// One expert matrix of SmallThinker-4B in Q4_0 (768 rows x 1536 columns).
const EXPERT_MATRIX: u64 = 663_552;
/// Bytes read per measurement at most.
const READ_CAP: u64 = 512 << 20;
/// Time per measurement at most.
const TIME_CAP: Duration = Duration::from_secs(3);

fn drop_caches() {
    // Flush dirty pages, then ask the kernel to drop clean page-cache pages.
    let _ = std::process::Command::new("sync").status();
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "1") {
        eprintln!("warning: cannot drop caches ({e}); 'cold' numbers may be cached");
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn write_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut chunk = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        for w in chunk.chunks_mut(8) {
            w.copy_from_slice(&rng.next().to_le_bytes()[..w.len()]);
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

#[derive(Clone, Copy)]
enum Pattern {
    Sequential,
    Random,
}

/// Request offsets. Each call uses a new seed and a new sequential start, so repeated
/// measurements do not re-read the same blocks (the VM host may cache them).
fn offsets(p: Pattern, size: u64, req: u64, n: u64) -> Vec<u64> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (call + 1).wrapping_mul(0x9E37_79B9));
    let start = rng.next() % size / 4096 * 4096;
    (0..n)
        .map(|i| match p {
            Pattern::Sequential => (start + i * req) % (size - req),
            // Unaligned like tensor data (32-byte aligned), anywhere in the file.
            Pattern::Random => rng.next() % (size - req) / 32 * 32,
        })
        .collect()
}

/// One request at a time; returns (MB/s, mean latency).
fn qd1(file: &ExpertFile, p: Pattern, size: u64, req: u64) -> (f64, Duration) {
    let n = (READ_CAP / req).max(1);
    let offs = offsets(p, size, req, n);
    let mut buf = AlignedBuf::new(req as usize + 8192).expect("buffer");
    drop_caches();
    let t0 = Instant::now();
    let mut done = 0u64;
    for &o in &offs {
        file.read(
            FileRange {
                offset: o,
                len: req,
            },
            &mut buf,
        )
        .expect("read");
        done += 1;
        if t0.elapsed() > TIME_CAP {
            break;
        }
    }
    let dt = t0.elapsed();
    (
        (done * req) as f64 / dt.as_secs_f64() / 1e6,
        dt / done as u32,
    )
}

/// Through the I/O pool with `threads` reads in flight.
fn pooled(file: &Arc<ExpertFile>, p: Pattern, size: u64, req: u64, threads: usize) -> f64 {
    let pool = IoPool::new(
        Arc::clone(file),
        IoConfig {
            threads,
            storage: StorageProfile::Real,
        },
    )
    .expect("pool");
    let n = (READ_CAP / req).max(1);
    let offs = offsets(p, size, req, n);
    let mut free: Vec<_> = (0..threads * 2)
        .map(|_| {
            Arc::new(RwLock::new(
                AlignedBuf::new(req as usize + 8192).expect("buffer"),
            ))
        })
        .collect();
    drop_caches();
    let t0 = Instant::now();
    let (mut next, mut done) = (0usize, 0u64);
    while done < n {
        while next < offs.len()
            && t0.elapsed() < TIME_CAP
            && let Some(b) = free.pop()
        {
            let o = offs[next];
            let empty = FileRange { offset: o, len: 0 };
            pool.submit(ReadRequest {
                key: ExpertKey::new(0, next as u32),
                layout: SlotLayout::new(&[
                    FileRange {
                        offset: o,
                        len: req,
                    },
                    empty,
                    empty,
                ]),
                buf: b,
                priority: Priority::Demand,
                tag: 0,
            });
            next += 1;
        }
        let Some(c) = pool.recv() else { break };
        assert!(matches!(c.outcome, Outcome::Done { .. }), "{:?}", c.outcome);
        free.push(c.buf);
        done += 1;
    }
    (done * req) as f64 / t0.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/work/tmp-offload", String::as_str));
    let size_mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let size = size_mib << 20;
    std::fs::create_dir_all(&dir).expect("create dir");
    let path = dir.join("disk_bench.bin");
    eprintln!("writing {size_mib} MiB to {} ...", path.display());
    write_file(&path, size).expect("write test file");

    let direct = Arc::new(ExpertFile::open(&path, OpenMode::Direct).expect("O_DIRECT open"));
    let buffered = Arc::new(ExpertFile::open(&path, OpenMode::Buffered).expect("open"));
    println!("file: {} MiB on {}", size_mib, dir.display());
    println!(
        "{:<10} {:<8} {:>9} {:>12} {:>14}",
        "mode", "pattern", "request", "QD1 MB/s", "QD1 latency"
    );
    for (name, f) in [("O_DIRECT", &direct), ("buffered", &buffered)] {
        for (pname, p) in [("seq", Pattern::Sequential), ("random", Pattern::Random)] {
            for req in [256 << 10, EXPERT_MATRIX] {
                let (mbs, lat) = qd1(f, p, size, req);
                println!(
                    "{name:<10} {pname:<8} {req:>9} {mbs:>12.0} {:>11.0} us",
                    lat.as_secs_f64() * 1e6
                );
            }
        }
    }
    println!("\nI/O pool, random reads of one expert matrix ({EXPERT_MATRIX} B):");
    for (name, f) in [("O_DIRECT", &direct), ("buffered", &buffered)] {
        for threads in [1, 2, 4, 8] {
            let mbs = pooled(f, Pattern::Random, size, EXPERT_MATRIX, threads);
            println!("{name:<10} {threads} threads {mbs:>10.0} MB/s");
        }
    }
    drop((direct, buffered));
    std::fs::remove_file(&path).expect("remove test file");
    let _ = std::fs::remove_dir(&dir);
}
