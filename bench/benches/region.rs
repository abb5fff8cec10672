//! Publication into the table region alone (the writer's part of issue 4's
//! control path; the whole path, from the changed EndpointSlice through the
//! compiler to the flip, is `benches/control_path.rs`), 10,000 Services ×
//! 10 endpoints (a TCP and a UDP port each: 20,000 frontends, 10,000 Maglev
//! tables of M = 16381) as 10,000 segments, region file on tmpfs
//! (/dev/shm, as /run is).
//!
//! * `region/publish_one_segment`: one Service's segment is replaced (its
//!   first backend's port changes, its Maglev table is rebuilt with
//!   `control::maglev::build` — included), the generation published, up to
//!   the flip: one segment and one Maglev block written.
//! * `region/publish_all_10k`: every segment is new (new `Arc`s and a new
//!   hash seed): all 10,000 segments and Maglev blocks encoded and written.
//!
//! Region memory must stay ≤ 256 MiB.
//! Besides criterion's estimates, a plain loop prints the one-slice p50/p99
//! and the region's memory (`st_blocks` of the file) to stderr.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edgeplane_dataplane::region::{RegionReader, RegionWriter, WriterOptions};
use edgeplane_dataplane::{NodeConfig, Segment};
use std::sync::Arc;

const SERVICES: usize = 10_000;
const M: u32 = 16381;

fn dir() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("edgeplane-bench-region-{}", std::process::id()))
}

/// Segment `i` (Service `i`: frontends 0 and 1 of the segment) gets
/// endpoint set number `k`: its first backend's port changes and its Maglev
/// table is rebuilt.
fn change_service(segs: &mut [Arc<Segment>], seed: u64, i: usize, k: u32) {
    let port = 10_000 + (k % 50_000) as u16;
    let mut s = (*segs[i]).clone();
    for f in 0..2 {
        let off = s.frontends[f].backend_off as usize;
        s.backends[off].port = port;
    }
    let f = s.frontends[0].clone();
    let off = f.backend_off as usize;
    let ident: Vec<(IpAddr, u16, u32)> = s.backends[off..off + f.n_new as usize]
        .iter()
        .map(|b| (b.ip, b.port, b.weight))
        .collect();
    let table = edgeplane_control::maglev::build(&ident, M, seed);
    // Frontends 0 and 1 share this table (same backend run).
    s.maglev[f.maglev_off as usize] = edgeplane_dataplane::tables::MaglevTable::new(table);
    segs[i] = Arc::new(s);
}

/// CPU time of this thread (excludes time waiting for a CPU on a loaded
/// machine).
fn thread_cpu() -> Duration {
    let mut ts = Timespec::default();
    // SAFETY: a valid out-parameter for clock_gettime.
    unsafe {
        clock_gettime(3 /* CLOCK_THREAD_CPUTIME_ID */, &mut ts)
    };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[repr(C)]
#[derive(Default)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn region(c: &mut Criterion) {
    let t0 = Instant::now();
    let t = edgeplane_bench::tables(SERVICES, 10, M);
    let mut segs = t.to_segments();
    let mut node = t.node.clone();
    let seed = node.hash_seed;
    eprintln!(
        "region: built {} frontends, {} Maglev entries, {} segments in {:?}",
        t.frontends.len(),
        t.maglev.iter().map(|m| m.len()).sum::<usize>(),
        segs.len(),
        t0.elapsed()
    );
    drop(t);
    let d = dir();
    let _ = std::fs::remove_dir_all(&d);
    let mut w = RegionWriter::open(&d, WriterOptions::default()).expect("region");
    let t1 = Instant::now();
    let r = w.publish_segments(&node, &segs).expect("first publication");
    eprintln!(
        "region: first publication {:?} ({} segments, {} Maglev blocks, slot {} bytes); arena in use {:.1} MiB (Maglev {:.1} MiB); file resident {:.1} MiB",
        t1.elapsed(),
        r.segments_written,
        r.blocks_written,
        r.body_bytes,
        mib(w.arena_used() as u64),
        mib(w.maglev_bytes() as u64),
        mib(w.resident_bytes())
    );

    // One-segment publications, each timed: p50 / p99 / max.
    let mut k = 0u32;
    let mut one = |segs: &mut Vec<Arc<Segment>>, w: &mut RegionWriter, node: &NodeConfig| {
        k += 1;
        let i = (k as usize * 7919) % SERVICES;
        change_service(segs, seed, i, k);
        let r = w.publish_segments(node, segs).expect("publish");
        debug_assert_eq!((r.segments_written, r.blocks_written), (1, 1));
        r
    };
    // A reader that adopts each generation, as the dataplane does (its
    // cost is timed separately: it runs in the dataplane process).
    let mut reader = RegionReader::open(&d).expect("reader");
    let mut held = reader.try_adopt().expect("adopt");
    reader.settle();
    let (mut wall, mut cpu, mut adopt) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..300 {
        let (s, c) = (Instant::now(), thread_cpu());
        one(&mut segs, &mut w, &node);
        cpu.push(thread_cpu() - c);
        wall.push(s.elapsed());
        let c = thread_cpu();
        let new = reader
            .try_adopt()
            .expect("adopt")
            .expect("a new generation");
        held = Some(new);
        reader.settle();
        adopt.push(thread_cpu() - c);
    }
    eprintln!(
        "region: publish_one_segment over 300: wall p50 {:?} p99 {:?}; thread CPU p50 {:?} p99 {:?}; reader adoption (CPU) p50 {:?} p99 {:?}; file resident {:.1} MiB",
        pct(&mut wall, 50),
        pct(&mut wall, 99),
        pct(&mut cpu, 50),
        pct(&mut cpu, 99),
        pct(&mut adopt, 50),
        pct(&mut adopt, 99),
        mib(w.resident_bytes())
    );

    let mut g = c.benchmark_group("region");
    g.sample_size(50);
    g.bench_function("publish_one_segment", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                black_box(one(&mut segs, &mut w, &node));
                total += t.elapsed();
                // Keep a reader moving (untimed: the dataplane's part), so
                // slots are reused as in production.
                held = reader.try_adopt().expect("adopt");
                reader.settle();
            }
            total
        })
    });
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    let mut n = 0u64;
    let mut full_cpu = Vec::new();
    g.bench_function("publish_all_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                node.hash_seed = seed.wrapping_add(n);
                for s in segs.iter_mut() {
                    *s = Arc::new((**s).clone());
                }
                let (t, c) = (Instant::now(), thread_cpu());
                let r = w.publish_segments(&node, &segs).expect("publish");
                full_cpu.push(thread_cpu() - c);
                total += t.elapsed();
                assert_eq!((r.segments_written, r.blocks_written), (SERVICES, SERVICES));
                held = reader.try_adopt().expect("adopt");
                reader.settle();
            }
            total
        })
    });
    if !full_cpu.is_empty() {
        eprintln!(
            "region: publish_all_10k thread CPU p50 {:?} max {:?}",
            pct(&mut full_cpu, 50),
            pct(&mut full_cpu, 100)
        );
    }
    g.finish();
    drop(held);
    drop(reader);
    eprintln!(
        "region: after full rewrites: arena in use {:.1} MiB; file resident {:.1} MiB (slots {} × {} MiB max, arena {} MiB max, sparse)",
        mib(w.arena_used() as u64),
        mib(w.resident_bytes()),
        w.layout().n_slots,
        w.layout().slot_size >> 20,
        w.layout().arena_size >> 20
    );
    drop(w);
    let _ = std::fs::remove_dir_all(&d);
}

criterion_group!(benches, region);
criterion_main!(benches);
