//! Expert offloading: storage emulation timing, I/O pool throughput, the prefetcher's
//! correctness (bytes identical to the file and to in-memory weights), eviction under pressure,
//! speculation, and faults.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use engine::Error;
use engine::model::weights::TensorBytes;
use engine::model::{ComputeMode, ExpertWeights, Matrix, Model, ModelOptions};
use engine::moe::{ExpertSource, MoeScratch, Routes, moe_forward};
use engine::offload::io::{Outcome, ReadRequest};
use engine::offload::{
    AlignedBuf, CacheConfig, CacheScope, Capacity, DeviceSpec, ExpertFile, ExpertKey, ExpertLayout,
    FileRange, HotSet, IoConfig, IoPool, OpenMode, PolicyKind, PrefetchConfig, Prefetcher,
    Priority, SlotLayout, StorageProfile,
};

use crate::common::fixture;

/// Emulated time must match the profile's prediction within this fraction.
const EMULATION_TOLERANCE: f64 = 0.10;

/// A directory on tmpfs when available, so real reads come from memory and emulation dominates.
fn fast_tmpdir() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir()
        && let Ok(d) = tempfile::tempdir_in("/dev/shm")
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

fn byte_at(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn write_pattern(dir: &Path, len: u64) -> PathBuf {
    let p = dir.join("experts.bin");
    let data: Vec<u8> = (0..len).map(byte_at).collect();
    std::fs::write(&p, data).unwrap();
    p
}

/// Timing runs per check: the machine's cores are shared, and a run that loses the CPU for a
/// while is slow for reasons unrelated to the emulator, so the best of a few runs is judged.
const TIMING_ATTEMPTS: usize = 3;

/// Runs `run` until its time is within [`EMULATION_TOLERANCE`] of `predicted` (at most
/// [`TIMING_ATTEMPTS`] times) and returns the closest time; fails if none was close.
fn within(what: &str, predicted: Duration, mut run: impl FnMut() -> Duration) -> Duration {
    let p = predicted.as_secs_f64();
    let mut best = Duration::MAX;
    for _ in 0..TIMING_ATTEMPTS {
        let measured = run();
        let m = measured.as_secs_f64();
        eprintln!(
            "{what}: measured {m:.4} s, predicted {p:.4} s ({:+.1}%)",
            100.0 * (m - p) / p
        );
        if (m - p).abs() < (best.as_secs_f64() - p).abs() {
            best = measured;
        }
        if (m - p).abs() / p <= EMULATION_TOLERANCE {
            return measured;
        }
    }
    panic!("{what}: best of {TIMING_ATTEMPTS} runs {best:?} vs predicted {predicted:?}");
}

#[test]
fn emulated_profiles_take_the_predicted_time_one_request_at_a_time() {
    let dir = fast_tmpdir();
    let path = write_pattern(dir.path(), 8 << 20);
    let file = ExpertFile::open(&path, OpenMode::Buffered).unwrap();
    let mut buf = AlignedBuf::new(512 << 10).unwrap();
    // (profile, request bytes, requests): 0.15-0.2 s each.
    let cases = [
        (StorageProfile::SdCard, 256 << 10, 40u64),
        (StorageProfile::Emmc, 256 << 10, 128),
        (StorageProfile::SataSsd, 256 << 10, 300),
        (StorageProfile::NvmeGen3, 4096, 3000),
        (StorageProfile::NvmeGen4, 4096, 3000),
    ];
    for (profile, n, m) in cases {
        let spec = profile.spec().unwrap();
        let predicted = spec.request_time(n) * m as u32;
        within(&format!("{profile}: {m} x {n} B at QD1"), predicted, || {
            let dev = profile.model().unwrap();
            let t0 = Instant::now();
            for i in 0..m {
                let off = (i * n) % ((8 << 20) - n);
                let r = FileRange {
                    offset: off,
                    len: n,
                };
                let got = dev.emulate(r.covering().len, None, || {
                    file.read(r, &mut buf).map(|b| b[0])
                });
                assert_eq!(got.unwrap(), byte_at(off));
            }
            let dt = t0.elapsed();
            eprintln!("  {:?}", dev.stats());
            dt
        });
    }
}

fn single_part(offset: u64, len: u64) -> SlotLayout {
    SlotLayout::new(&[
        FileRange { offset, len },
        FileRange { offset, len: 0 },
        FileRange { offset, len: 0 },
    ])
}

/// Runs `m` reads of `n` bytes through a pool and returns the elapsed time.
fn pool_run(
    file: &Arc<ExpertFile>,
    storage: StorageProfile,
    threads: usize,
    n: u64,
    m: u64,
) -> Duration {
    let pool = IoPool::new(Arc::clone(file), IoConfig { threads, storage }).unwrap();
    let bufs: Vec<_> = (0..threads * 4)
        .map(|_| Arc::new(RwLock::new(AlignedBuf::new(n as usize + 8192).unwrap())))
        .collect();
    let t0 = Instant::now();
    let mut submitted = 0u64;
    let mut free = bufs;
    let mut done = 0u64;
    while done < m {
        while submitted < m
            && let Some(b) = free.pop()
        {
            let off = (submitted * n) % ((8 << 20) - n);
            pool.submit(ReadRequest {
                key: ExpertKey::new(0, submitted as u32),
                layout: single_part(off, n),
                buf: b,
                priority: Priority::Demand,
                tag: off,
            });
            submitted += 1;
        }
        let c = pool.recv().unwrap();
        assert!(matches!(c.outcome, Outcome::Done { .. }), "{:?}", c.outcome);
        assert_eq!(
            c.buf.read().unwrap().as_slice()[0],
            byte_at(c.tag / 4096 * 4096)
        );
        free.push(c.buf);
        done += 1;
    }
    t0.elapsed()
}

#[test]
fn concurrent_reads_overlap_latency_and_share_bandwidth_as_modelled() {
    let dir = fast_tmpdir();
    let path = write_pattern(dir.path(), 8 << 20);
    let file = Arc::new(ExpertFile::open(&path, OpenMode::Buffered).unwrap());
    let profile = StorageProfile::SdCard;
    let spec = profile.spec().unwrap();
    let (n, m) = (64 << 10, 100u64);
    // QD1: m × (latency + transfer).
    let qd1 = within(
        "sd-card, 1 I/O thread",
        spec.request_time(n) * m as u32,
        || pool_run(&file, profile, 1, n, m),
    );
    // 4 threads: latencies hide behind other requests' transfers (3 × 819 us > 615 us), so the
    // device streams at full bandwidth after the first latency.
    let predicted = Duration::from_nanos(spec.latency_ns) + spec.transfer_time(n) * m as u32;
    let qd4 = within("sd-card, 4 I/O threads", predicted, || {
        pool_run(&file, profile, 4, n, m)
    });
    let speedup = qd1.as_secs_f64() / qd4.as_secs_f64();
    eprintln!("4 I/O threads vs sequential: {speedup:.2}x");
    assert!(speedup > 1.5, "{speedup}");
}

#[test]
fn io_pool_beats_sequential_reads_on_a_latency_bound_device() {
    let dir = fast_tmpdir();
    let path = write_pattern(dir.path(), 8 << 20);
    let file = Arc::new(ExpertFile::open(&path, OpenMode::Buffered).unwrap());
    // A device with 2 ms per request and ample bandwidth: concurrency is everything.
    let dev = StorageProfile::Custom(DeviceSpec {
        latency_ns: 2_000_000,
        bandwidth_bytes_per_s: 4_000_000_000,
        queue_depth: 32,
    });
    let (n, m) = (64 << 10, 32u64);
    let t0 = Instant::now();
    let model = dev.model().unwrap();
    let mut buf = AlignedBuf::new(n as usize + 8192).unwrap();
    for i in 0..m {
        let r = FileRange {
            offset: i * n,
            len: n,
        };
        model
            .emulate(n, None, || file.read(r, &mut buf).map(|_| ()))
            .unwrap();
    }
    let sequential = t0.elapsed();
    let pooled = pool_run(&file, dev, 4, n, m);
    let speedup = sequential.as_secs_f64() / pooled.as_secs_f64();
    eprintln!("sequential {sequential:?}, 4 threads {pooled:?}: {speedup:.2}x");
    // Ideal is 4x; a loaded 2-core machine delays thread wake-ups, so only a clear win is required.
    assert!(speedup > 2.0, "{speedup}");
}

/// A synthetic model file: `layers × experts` experts of three parts of `part` bytes each,
/// stacked per layer and part like a GGUF, starting at an unaligned offset.
fn synthetic(dir: &Path, layers: u32, experts: u32, part: u64) -> (PathBuf, ExpertLayout) {
    const BASE: u64 = 1234;
    let stacked = part * u64::from(experts);
    let len = BASE + 3 * u64::from(layers) * stacked + 100;
    let path = write_pattern(dir, len);
    let layout = ExpertLayout::from_stacked(layers, experts, |l, p| {
        Ok(FileRange {
            offset: BASE + (u64::from(l) * 3 + p as u64) * stacked,
            len: stacked,
        })
    })
    .unwrap();
    (path, layout)
}

fn prefetcher(
    path: &Path,
    layout: &ExpertLayout,
    slots: usize,
    policy: PolicyKind,
    storage: StorageProfile,
) -> Prefetcher {
    let file = Arc::new(ExpertFile::open(path, OpenMode::Auto).unwrap());
    let cfg = PrefetchConfig {
        io: IoConfig {
            threads: 3,
            storage,
        },
        cache: CacheConfig {
            capacity: Capacity::Slots(slots),
            scope: CacheScope::Global,
            policy,
            hot: None,
        },
    };
    Prefetcher::new(file, layout.clone(), &cfg).unwrap()
}

fn check_bytes(g: &engine::offload::ExpertGuard<'_>, layout: &ExpertLayout) {
    let r = layout.ranges(g.key()).unwrap();
    for (bytes, range) in [g.gate(), g.up(), g.down()].into_iter().zip(r) {
        assert_eq!(bytes.len() as u64, range.len);
        let ok = bytes
            .iter()
            .enumerate()
            .all(|(i, &b)| b == byte_at(range.offset + i as u64));
        assert!(ok, "{}: bytes differ from the file", g.key());
    }
}

#[test]
fn prefetcher_serves_exact_bytes_under_eviction_pressure_with_every_policy() {
    let dir = fast_tmpdir();
    let (path, layout) = synthetic(dir.path(), 4, 8, 10_000);
    for policy in PolicyKind::ALL {
        let p = prefetcher(&path, &layout, 6, policy, StorageProfile::Real);
        // 30 "tokens", 4 layers, top-2 with reuse.
        for t in 0..30u32 {
            for l in 0..4u32 {
                let mut ex = vec![(t + l) % 8, (t / 3 + 2 * l) % 8];
                ex.dedup();
                p.request(l, &ex, Priority::Demand).unwrap();
                for &e in &ex {
                    let g = p.wait(l, e).unwrap();
                    assert_eq!(g.key(), ExpertKey::new(l, e));
                    check_bytes(&g, &layout);
                }
            }
        }
        let s = p.stats();
        eprintln!("{policy}: {}", s.cache);
        assert_eq!(s.cache.accesses(), 30 * 4 * 2 - dup_count());
        assert!(s.cache.hits > 0 && s.cache.misses > 0 && s.cache.evictions > 0);
        assert_eq!(s.io.reads, s.cache.misses);
    }
}

/// Tokens where the two experts of a layer coincide (counted once).
fn dup_count() -> u64 {
    let mut n = 0;
    for t in 0..30u32 {
        for l in 0..4u32 {
            if (t + l) % 8 == (t / 3 + 2 * l) % 8 {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn more_experts_than_slots_are_read_in_turn_as_guards_are_dropped() {
    let dir = fast_tmpdir();
    let (path, layout) = synthetic(dir.path(), 2, 8, 5000);
    let p = prefetcher(&path, &layout, 3, PolicyKind::Lru, StorageProfile::Real);
    let all: Vec<u32> = (0..8).collect();
    p.request(1, &all, Priority::Demand).unwrap();
    let mut seen = Vec::new();
    for _ in 0..8 {
        let rest: Vec<u32> = all.iter().copied().filter(|e| !seen.contains(e)).collect();
        let g = p.wait_any(1, &rest).unwrap();
        check_bytes(&g, &layout);
        seen.push(g.expert());
    }
    seen.sort_unstable();
    assert_eq!(seen, all);
    assert!(p.stats().wait.deferred >= 5);
    // Holding every slot and asking for a fourth expert is an error, not a hang.
    let _a = p.wait(0, 0).unwrap();
    let _b = p.wait(0, 1).unwrap();
    let _c = p.wait(0, 2).unwrap();
    let e = p.wait(0, 3).unwrap_err().to_string();
    assert!(e.contains("pinned"), "{e}");
}

#[test]
fn speculative_prefetches_are_cancelled_or_promoted() {
    let dir = fast_tmpdir();
    let (path, layout) = synthetic(dir.path(), 2, 8, 20_000);
    // A slow device keeps the prefetch queue from draining before we cancel.
    let slow = StorageProfile::Custom(DeviceSpec {
        latency_ns: 5_000_000,
        bandwidth_bytes_per_s: 1_000_000_000,
        queue_depth: 32,
    });
    let p = prefetcher(&path, &layout, 8, PolicyKind::Lrfu, slow);
    p.request(1, &[0, 1, 2, 3, 4, 5, 6, 7], Priority::Prefetch)
        .unwrap();
    // The router chose 6 and 7: drop the rest of the speculation, demand these.
    let cancelled = p.cancel_prefetch(1, &[6, 7]);
    assert!(cancelled >= 3, "{cancelled}");
    p.request(1, &[6, 7], Priority::Demand).unwrap();
    for e in [7, 6] {
        check_bytes(&p.wait(1, e).unwrap(), &layout);
    }
    let s = p.stats();
    assert_eq!(s.cache.misses, 0, "both were prefetched");
    assert_eq!(
        s.cache.inflight_hits + s.cache.prefetch_hits + s.cache.hits,
        2
    );
    assert!(s.io.reads <= 8 - cancelled as u64);
}

#[test]
fn hot_set_is_loaded_up_front_and_survives_pressure() {
    let dir = fast_tmpdir();
    let (path, layout) = synthetic(dir.path(), 2, 8, 5000);
    let file = Arc::new(ExpertFile::open(&path, OpenMode::Auto).unwrap());
    let hot = HotSet::from_keys([ExpertKey::new(0, 3), ExpertKey::new(1, 5)]);
    let cfg = PrefetchConfig {
        io: IoConfig::default(),
        cache: CacheConfig {
            capacity: Capacity::Slots(4),
            hot: Some(hot),
            ..CacheConfig::default()
        },
    };
    let p = Prefetcher::new(file, layout.clone(), &cfg).unwrap();
    p.warm_hot_set().unwrap();
    for e in 0..8 {
        p.request(0, &[e], Priority::Demand).unwrap();
        drop(p.wait(0, e).unwrap());
    }
    p.reset_cache_stats();
    p.request(0, &[3], Priority::Demand).unwrap();
    p.request(1, &[5], Priority::Demand).unwrap();
    check_bytes(&p.wait(0, 3).unwrap(), &layout);
    check_bytes(&p.wait(1, 5).unwrap(), &layout);
    // Hot experts never miss; one may still be arriving from the warm-up (an in-flight hit).
    let s = p.stats();
    assert_eq!(s.cache.misses, 0);
    assert_eq!(
        s.cache.hits + s.cache.prefetch_hits + s.cache.inflight_hits,
        2
    );
}

#[test]
fn a_truncated_model_file_stops_with_an_error_naming_the_range() {
    let dir = fast_tmpdir();
    let (path, layout) = synthetic(dir.path(), 2, 4, 30_000);
    let p = prefetcher(&path, &layout, 4, PolicyKind::Lru, StorageProfile::Real);
    check_bytes(&p.wait(0, 0).unwrap(), &layout);
    // Cut the file in the middle of layer 1.
    let cut = layout.ranges(ExpertKey::new(1, 2)).unwrap()[0].offset + 100;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    p.request(1, &[2], Priority::Demand).unwrap();
    let e = p.wait(1, 2).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::ReadRange { .. }), "{msg}");
    assert!(
        msg.contains("experts.bin") && msg.contains("layer 1 expert 2"),
        "{msg}"
    );
    // Sticky: later calls fail too, even for cached experts.
    assert!(p.wait(0, 0).is_err());
    assert!(p.request(0, &[1], Priority::Demand).is_err());
    // A file already too short for the layout is refused up front.
    let file = Arc::new(ExpertFile::open(&path, OpenMode::Auto).unwrap());
    let e = Prefetcher::new(file, layout, &PrefetchConfig::default()).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn a_removed_model_file_stops_with_an_error() {
    let dir = fast_tmpdir();
    let (path, layout) = synthetic(dir.path(), 1, 4, 8192);
    let p = prefetcher(&path, &layout, 2, PolicyKind::Lru, StorageProfile::Real);
    check_bytes(&p.wait(0, 0).unwrap(), &layout);
    std::fs::remove_file(&path).unwrap();
    let e = p.wait(0, 3).unwrap_err().to_string();
    assert!(e.contains("removed") && e.contains("experts.bin"), "{e}");
}

fn owned(m: &Matrix, bytes: &[u8]) -> Matrix {
    Matrix::new(
        m.name.clone(),
        m.ty,
        m.rows,
        m.cols,
        TensorBytes::owned(bytes.to_vec()),
    )
    .unwrap()
}

#[test]
fn offloaded_expert_bytes_give_bit_identical_moe_outputs() {
    let model = Model::load(
        &fixture("tiny-t1"),
        &ModelOptions {
            mode: ComputeMode::Exact,
            threads: 1,
            offload: None,
        },
    )
    .unwrap();
    let (layout, path) = ExpertLayout::from_weights(&model.weights).unwrap();
    assert!(path.ends_with("model.safetensors"));
    let file = Arc::new(ExpertFile::open(&path, OpenMode::Auto).unwrap());
    eprintln!("expert file: {file}");
    let n_exp = layout.n_experts();
    let cfg = PrefetchConfig {
        io: IoConfig::default(),
        cache: CacheConfig {
            capacity: Capacity::Slots(3),
            ..CacheConfig::default()
        },
    };
    let p = Prefetcher::new(file, layout.clone(), &cfg).unwrap();
    let c = &model.config;
    let k = c.n_experts_used;
    let n_tokens = 5;
    let y: Vec<f32> = (0..n_tokens * c.hidden)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
        .collect();
    for l in 0..layout.n_layers() {
        let ids: Vec<u32> = (0..n_tokens * k)
            .map(|i| ((i * 3 + l as usize) % n_exp as usize) as u32)
            .collect();
        let routes = Routes {
            k,
            weights: (0..ids.len()).map(|i| 0.1 + (i % 4) as f32 * 0.2).collect(),
            ids,
        };
        let lw = &model.weights.layers[l as usize];
        // In memory.
        let mut s = MoeScratch::default();
        let mut want = vec![0f32; n_tokens * c.hidden];
        moe_forward(
            ExpertSource::Resident {
                layer: l as usize,
                experts: &lw.experts,
            },
            &routes,
            &y,
            c.hidden,
            ComputeMode::Exact,
            &mut s,
            &mut want,
        )
        .unwrap();
        // Offloaded: experts rebuilt from the guards' bytes.
        let mut distinct = routes.ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut rebuilt: Vec<ExpertWeights> = lw.experts.clone();
        for &e in &distinct {
            let g = p.wait(l, e).unwrap();
            let m = &lw.experts[e as usize];
            assert_eq!(g.gate(), m.gate.bytes());
            assert_eq!(g.up(), m.up.bytes());
            assert_eq!(g.down(), m.down.bytes());
            rebuilt[e as usize] = ExpertWeights {
                gate: owned(&m.gate, g.gate()),
                up: owned(&m.up, g.up()),
                down: owned(&m.down, g.down()),
                down_transposed: m.down_transposed,
                down_planes: None,
            };
        }
        let mut got = vec![0f32; n_tokens * c.hidden];
        moe_forward(
            ExpertSource::Resident {
                layer: l as usize,
                experts: &rebuilt,
            },
            &routes,
            &y,
            c.hidden,
            ComputeMode::Exact,
            &mut s,
            &mut got,
        )
        .unwrap();
        let same = want
            .iter()
            .zip(&got)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "layer {l}: offloaded MoE output differs");
    }
}

#[test]
fn gguf_expert_ranges_match_the_loaded_q4_0_weights_byte_for_byte() {
    let path = fixture("tiny-t1-gguf/tiny-t1-Q4_0.gguf");
    let model = Model::load(
        &path,
        &ModelOptions {
            mode: ComputeMode::Exact,
            threads: 1,
            offload: None,
        },
    )
    .unwrap();
    let g = model.gguf.as_ref().unwrap();
    let layout = ExpertLayout::from_gguf(g, model.config.n_layers as u32).unwrap();
    let (from_weights, wpath) = ExpertLayout::from_weights(&model.weights).unwrap();
    assert_eq!(wpath, path);
    for i in 0..layout.n_keys() {
        let key = layout.key_at(i);
        assert_eq!(
            layout.ranges(key).unwrap(),
            from_weights.ranges(key).unwrap(),
            "{key}"
        );
    }
    let file = Arc::new(ExpertFile::open(&path, OpenMode::Auto).unwrap());
    let cfg = PrefetchConfig {
        io: IoConfig::default(),
        cache: CacheConfig {
            capacity: Capacity::Slots(4),
            policy: PolicyKind::Lfu,
            ..CacheConfig::default()
        },
    };
    let p = Prefetcher::new(file, layout.clone(), &cfg).unwrap();
    for l in 0..layout.n_layers() {
        let all: Vec<u32> = (0..layout.n_experts()).collect();
        p.request(l, &all, Priority::Demand).unwrap();
        for _ in 0..all.len() {
            let g = p.wait_any(l, &all).unwrap();
            let w = &model.weights.layers[l as usize].experts[g.expert() as usize];
            assert_eq!(g.gate(), w.gate.bytes());
            assert_eq!(g.up(), w.up.bytes());
            assert_eq!(g.down(), w.down.bytes());
            drop(g);
        }
    }
}
