//! Issue 4's control-path benchmarks, through the code `edgeplane control`
//! runs: the Kubernetes source's mirror and snapshot
//! (`kube::mirror::Mirrors`), one long-lived `Compiler` following the
//! snapshot's journal, and the region writer (`ControlPath`), region file on
//! tmpfs. 10,000 ClusterIP Services × 10 endpoints, one EndpointSlice each,
//! every Service its own Maglev table (M = 16381). A reader adopts every
//! generation outside the timed part, as the dataplane does.
//!
//! * `control/publish_one_slice`: one EndpointSlice changes (endpoint 0 of
//!   another Service moves, new resourceVersion): the watch event applied to
//!   the mirror, the snapshot updated, compiled, published — up to the flip.
//!   Target: p99 ≤ 10 ms (percentiles: `cargo run -p edgeplane-bench
//!   --release --example control_path`).
//! * `control/full_resync_10k`: a relist: every Service and EndpointSlice
//!   delivered again with a new resourceVersion and the same content, up to
//!   the flip. Target: ≤ 1 s.
//!
//! The cold start (first list, every Maglev table built) is printed once.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edgeplane_bench::k8s;
use edgeplane_control::control_path::ControlPath;
use edgeplane_dataplane::region::{RegionReader, WriterOptions};

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

fn control_path(c: &mut Criterion) {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("edgeplane-bench-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let objects = k8s::objects(SERVICES, ENDPOINTS);
    let t0 = Instant::now();
    let (mut mirrors, mut slot, mut index) = k8s::first_list(&objects);
    let mut path = ControlPath::open(&dir, WriterOptions::default(), k8s::options(), true)
        .expect("region and compiler");
    let snap = slot.clone().expect("published");
    path.compile_publish(&snap).1.expect("first publication");
    drop(snap);
    eprintln!(
        "control_path: cold start (list → first flip) {:?}",
        t0.elapsed()
    );
    let mut reader = RegionReader::open(&dir).expect("reader");
    let mut held = reader.try_adopt().expect("adopt");
    reader.settle();

    let mut rv = 10 * SERVICES as u64;
    let mut k = 0usize;
    let mut g = c.benchmark_group("control");
    g.sample_size(100);
    g.bench_function("publish_one_slice", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                k += 1;
                rv += 1;
                let i = (k * 7919) % SERVICES;
                let slice = k8s::slice_for(i, ENDPOINTS, Some(k as u32), rv);
                let t = Instant::now();
                mirrors.endpoint_slices.apply(slice);
                mirrors.publish_into(&mut slot, &mut index);
                let snap = slot.clone().expect("published");
                let (out, r) = path.compile_publish(black_box(&snap));
                total += t.elapsed();
                assert!(out.incremental && r.expect("publish").segments_written == 1);
                drop(snap);
                held = reader.try_adopt().expect("adopt");
                reader.settle();
            }
            total
        })
    });
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("full_resync_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (services, slices) = k8s::relisted(&objects, ENDPOINTS, &mut rv, |_| None);
                let t = Instant::now();
                mirrors.services.relist(services);
                mirrors.endpoint_slices.relist(slices);
                mirrors.publish_into(&mut slot, &mut index);
                let snap = slot.clone().expect("published");
                let (_, r) = path.compile_publish(black_box(&snap));
                total += t.elapsed();
                r.expect("publish");
                drop(snap);
                held = reader.try_adopt().expect("adopt");
                reader.settle();
            }
            total
        })
    });
    g.finish();
    drop(held);
    drop(reader);
    drop(path);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, control_path);
criterion_main!(benches);
