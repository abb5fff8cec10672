//! Control-side compile at scale (issues 4 and 5): 10,000 ClusterIP
//! Services × 10 endpoints (one EndpointSlice each, every Service its own
//! endpoints and so its own Maglev table, M = 16381).
//!
//! - `control/compile_one_slice_10k`: one long-lived [`Compiler`]; each
//!   iteration changes one EndpointSlice (endpoint 0 of another Service moves
//!   to a new address, with a new resourceVersion, as the API server would
//!   send it) and compiles the whole set into a new generation. Target: well
//!   under 10 ms (p99: `cargo run -p edgeplane-bench --release --example
//!   compile_latency`).
//! - `control/compile_nochange_10k`: the same with nothing changed.
//! - `control/compile_full_10k`: a cold compile (fresh compiler: every
//!   Maglev table built, on every core). Target: ≤ 1 s.
//! - `control/maglev_build_16381_n10`, `_n100`: one Maglev table.
//!
//! The returned generation is dropped outside the timed part.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use edgeplane_bench::k8s;
use edgeplane_control::compile::{compile, Compiler};

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

fn compile_benches(c: &mut Criterion) {
    let opts = k8s::options();
    let mut objects = k8s::objects(SERVICES, ENDPOINTS);
    let mut g = c.benchmark_group("control");

    let mut compiler = Compiler::new(opts.clone()).expect("valid options");
    compiler.trust_resource_version(true);
    compiler.compile(&objects, 1);
    let mut generation = 1u64;
    g.sample_size(50);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("compile_one_slice_10k", |b| {
        b.iter_with_large_drop(|| {
            generation += 1;
            let i = (generation as usize * 7919) % SERVICES;
            objects.endpoint_slices[i] = k8s::slice_for(
                i,
                ENDPOINTS,
                Some(generation as u32),
                1_000_000 + generation,
            );
            compiler.compile(black_box(&objects), generation)
        })
    });
    g.bench_function("compile_nochange_10k", |b| {
        b.iter_with_large_drop(|| {
            generation += 1;
            compiler.compile(black_box(&objects), generation)
        })
    });
    drop(compiler);

    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.bench_function("compile_full_10k", |b| {
        b.iter_with_large_drop(|| compile(black_box(&objects), &opts, 1).expect("valid options"))
    });

    g.sample_size(100);
    g.measurement_time(Duration::from_secs(5));
    let seed = opts.hash_seed;
    for n in [10usize, 100] {
        let backends: Vec<_> = (0..n)
            .map(|j| {
                let (ip, port) = k8s::endpoint(0, j, n);
                (std::net::IpAddr::V4(ip), port, 1u32)
            })
            .collect();
        g.bench_function(format!("maglev_build_16381_n{n}"), |b| {
            b.iter(|| edgeplane_control::maglev::build(black_box(&backends), 16381, seed))
        });
    }
    g.finish();
}

criterion_group!(benches, compile_benches);
criterion_main!(benches);
