//! Engine benches (issue 2). One frame per iteration through
//! `Engine::process`, including the 64-byte copy that restores the template
//! (the engine rewrites in place).
//!
//! * `engine/established_tcp`, `engine/udp`: packets of live flows, with
//!   1,000,000 live conntrack entries and 10,000 Services loaded.
//! * `engine/new_tcp`: SYNs of never-seen flows, same load.
//! * `engine/lookup_scaling/{1,10000}`: the first packet of a flow with 1 vs
//!   10,000 Services.
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use edgeplane_bench::{client, service_ip, tables, tcp_frame, udp_frame, ACK, SYN};
use edgeplane_dataplane::{Engine, Tables, Verdict};

const SERVICES: usize = 10_000;
const BACKENDS: usize = 10;
const LIVE_FLOWS: usize = 1_000_000;
const M: u32 = 16381;
const NOW: u64 = 1_000_000_000_000;

fn forward(engine: &mut Engine, t: &Tables, frame: &[u8], buf: &mut [u8]) -> Verdict {
    buf[..frame.len()].copy_from_slice(frame);
    engine.process(NOW, buf, frame.len(), t).verdict
}

/// An engine with `LIVE_FLOWS` established TCP flows over the 10,000 Services.
fn loaded(t: &Tables) -> Engine {
    let mut engine = Engine::standalone(2 * LIVE_FLOWS);
    let mut buf = vec![0u8; 2048];
    for k in 0..LIVE_FLOWS {
        let (ip, port) = client(k);
        let syn = tcp_frame(ip, port, service_ip(k % SERVICES), 80, SYN);
        let v = forward(&mut engine, t, &syn, &mut buf);
        assert!(matches!(v, Verdict::Tx { .. }), "setup flow {k}: {v:?}");
    }
    engine
}

fn benches(c: &mut Criterion) {
    let big = tables(SERVICES, BACKENDS, M);
    let mut engine = loaded(&big);
    let mut buf = vec![0u8; 2048];
    let mut g = c.benchmark_group("engine");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));

    // Established TCP: cycle through 65,536 of the live flows, so the working
    // set is far larger than the caches, as on a busy edge node.
    let est: Vec<Vec<u8>> = (0..65_536)
        .map(|i| {
            let k = (i * 15) % LIVE_FLOWS;
            let (ip, port) = client(k);
            tcp_frame(ip, port, service_ip(k % SERVICES), 80, ACK)
        })
        .collect();
    let mut i = 0;
    g.bench_function("established_tcp", |b| {
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(forward(&mut engine, &big, &est[i], &mut buf))
        })
    });

    // UDP: 65,536 flows set up once, then their datagrams.
    let udp: Vec<Vec<u8>> = (0..65_536)
        .map(|k| {
            let (ip, port) = client(k);
            udp_frame(ip, port, service_ip(k % SERVICES), 53)
        })
        .collect();
    for f in &udp {
        forward(&mut engine, &big, f, &mut buf);
    }
    g.bench_function("udp", |b| {
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(forward(&mut engine, &big, &udp[i], &mut buf))
        })
    });

    // New TCP flows: a never-seen (client, port) every iteration.
    let mut next = LIVE_FLOWS;
    g.bench_function("new_tcp", |b| {
        b.iter_batched_ref(
            || {
                next += 1;
                let (ip, port) = client(next);
                tcp_frame(
                    ip,
                    port.wrapping_add(20_000),
                    service_ip(next % SERVICES),
                    80,
                    SYN,
                )
            },
            |f| black_box(forward(&mut engine, &big, f, &mut buf)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    drop(engine);

    // First packet with 1 Service vs 10,000.
    let mut g = c.benchmark_group("engine/lookup_scaling");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let one = tables(1, BACKENDS, M);
    for (name, t, services) in [("1", &one, 1usize), ("10000", &big, SERVICES)] {
        // A table small enough that it fills and evicts unconfirmed flows in
        // steady state, for both sizes alike.
        let mut engine = Engine::standalone(1 << 18);
        let mut n = 0usize;
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    n += 1;
                    let (ip, port) = client(n);
                    tcp_frame(ip, port, service_ip(n % services), 80, SYN)
                },
                |f| black_box(forward(&mut engine, t, f, &mut buf)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(name = engine; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(engine);
