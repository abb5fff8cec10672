//! Engine benches (issue 2). Every bench loads the same state first:
//! 10,000 Services (a TCP port 80 and a UDP port 53 frontend each, 10
//! backends, Maglev M = 16381) and 1,000,000 live, *established* TCP flows
//! (SYN, the backend's SYN+ACK, the client's ACK) in a 2,000,000-flow
//! conntrack.
//!
//! Times are **per packet**. The batched benches run frames through
//! [`Engine::process_batch`] in batches of [`BATCH`] (as the AF_XDP workers
//! do: RX batch → `process_batch` → TX batch) and report the batch's time
//! divided by its size; the `_single` variants call [`Engine::process`] once
//! per frame. Both include copying each frame's template into its buffer (the
//! engine rewrites in place).
//!
//! * `engine/established_tcp[_single]`: ACKs of live flows, cycling through
//!   65,536 of the 1M flows (a working set far larger than the caches).
//! * `engine/established_tcp_hot`: the same with only 64 flows, all in cache:
//!   what the path costs without DRAM misses.
//! * `engine/udp[_single]`: datagrams of 65,536 UDP flows set up beforehand.
//! * `engine/new_tcp[_single]`: SYNs of flows the table does not hold, each
//!   going through the whole new-flow path (frontend, Maglev, SNAT port,
//!   conntrack insert, rewrite). Steady state, not a flood: the clock advances
//!   [`NEW_FLOW_DT`] per SYN (5,000 new flows/s on this worker); SYNs are never
//!   answered, so their flows expire after 120 s (`tcp_syn_sent`), about
//!   600,000 of them are tracked besides the 1M established flows, and the
//!   table never fills. The worker's housekeeping (a sweep of
//!   [`SWEEP_PER_BATCH`] slots per batch, which returns expired flows to the
//!   free list) runs inside the timed loop and is included. The SYNs come
//!   from a pool of 1,048,576 distinct flows: a flow comes back only after
//!   its previous entry expired, so every SYN is a new flow.
//! * `engine/lookup_scaling[_batch]/{1,10000}`: the same first-packet path
//!   with 1 vs 10,000 Services loaded (no established flows, a 262,144-flow
//!   conntrack, a new flow every millisecond of simulated time so that it
//!   never fills), to show what the size of the Service tables costs.
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgeplane_bench::{
    client, reply_to, service_ip, tables, tcp_frame, udp_frame, BatchBufs, FramePool, ACK, SYN,
};
use edgeplane_dataplane::{Engine, Tables, Verdict};

const SERVICES: usize = 10_000;
const BACKENDS: usize = 10;
const LIVE_FLOWS: usize = 1_000_000;
const M: u32 = 16381;
const NOW: u64 = 1_000_000_000_000;
/// Frames per `process_batch` call.
const BATCH: usize = 32;
/// Simulated time between two new flows in `new_tcp` (5,000 flows/s).
const NEW_FLOW_DT: u64 = 200_000;
/// Conntrack slots the worker's housekeeping sweeps after each batch.
const SWEEP_PER_BATCH: usize = 256;
/// Distinct SYNs in the new-flow pools.
const SYN_POOL: usize = 1 << 20;

fn forward(engine: &mut Engine, t: &Tables, now: u64, frame: &[u8], buf: &mut [u8]) -> Verdict {
    buf[..frame.len()].copy_from_slice(frame);
    engine.process(now, buf, frame.len(), t).verdict
}

/// An engine with `LIVE_FLOWS` established TCP flows over the 10,000 Services
/// (three-way handshake through the engine), and the clients' ACK frames.
fn loaded(t: &Tables) -> (Engine, Vec<Vec<u8>>) {
    let mut engine = Engine::standalone(2 * LIVE_FLOWS);
    let mut bb = BatchBufs::new(BATCH);
    let mut acks = Vec::with_capacity(LIVE_FLOWS);
    let ks: Vec<usize> = (0..LIVE_FLOWS).collect();
    for chunk in ks.chunks(BATCH) {
        let syns: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&k| {
                let (ip, port) = client(k);
                tcp_frame(ip, port, service_ip(k % SERVICES), 80, SYN)
            })
            .collect();
        let tx = bb.run(&mut engine, NOW, t, syns.iter().map(|f| &f[..]));
        assert_eq!(tx, chunk.len(), "setup SYNs {chunk:?}");
        let synacks: Vec<Vec<u8>> = (0..chunk.len())
            .map(|j| reply_to(bb.frame(j), SYN | ACK))
            .collect();
        let tx = bb.run(&mut engine, NOW, t, synacks.iter().map(|f| &f[..]));
        assert_eq!(tx, chunk.len(), "setup SYN+ACKs");
        let chunk_acks: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&k| {
                let (ip, port) = client(k);
                tcp_frame(ip, port, service_ip(k % SERVICES), 80, ACK)
            })
            .collect();
        let tx = bb.run(&mut engine, NOW, t, chunk_acks.iter().map(|f| &f[..]));
        assert_eq!(tx, chunk.len(), "setup ACKs");
        acks.extend(chunk_acks);
    }
    (engine, acks)
}

/// SYNs of `SYN_POOL` distinct flows never seen by the setup.
fn syn_pool(services: usize) -> FramePool {
    FramePool::new(SYN_POOL, |i| {
        let k = LIVE_FLOWS + i;
        let (ip, port) = client(k);
        tcp_frame(
            ip,
            port.wrapping_add(20_000),
            service_ip(k % services),
            80,
            SYN,
        )
    })
}

/// Per-packet time of `frames` (cycled) through `process_batch`.
fn bench_batched(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    engine: &mut Engine,
    t: &Tables,
    frames: &[Vec<u8>],
) {
    let mut bb = BatchBufs::new(BATCH);
    let mut i = 0usize;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                i = (i + BATCH) % frames.len();
                let batch = frames[i..i + BATCH].iter().map(|f| &f[..]);
                black_box(bb.run(engine, NOW, t, batch));
            }
            start.elapsed() / BATCH as u32
        })
    });
}

/// Per-packet time of `frames` (cycled) through `process`, one at a time.
fn bench_single(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    engine: &mut Engine,
    t: &Tables,
    frames: &[Vec<u8>],
) {
    let mut buf = vec![0u8; 2048];
    let mut i = 0usize;
    g.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            black_box(forward(engine, t, NOW, &frames[i], &mut buf))
        })
    });
}

/// New flows: per-packet time of SYNs from `pool` with the clock advancing
/// `dt` per SYN and housekeeping after every batch (see the module docs).
#[allow(clippy::too_many_arguments)]
fn bench_new_flows(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    engine: &mut Engine,
    t: &Tables,
    pool: &FramePool,
    clock: &mut u64,
    dt: u64,
    batched: bool,
) {
    let mut bb = BatchBufs::new(BATCH);
    let mut buf = vec![0u8; 2048];
    let mut n = 0usize;
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                if batched {
                    let frames = (n..n + BATCH).map(|k| pool.get(k % pool.len()));
                    let tx = bb.run(engine, *clock, t, frames);
                    debug_assert_eq!(tx, BATCH);
                    black_box(tx);
                } else {
                    for k in n..n + BATCH {
                        let f = pool.get(k % pool.len());
                        black_box(forward(
                            engine,
                            t,
                            *clock + (k - n) as u64 * dt,
                            f,
                            &mut buf,
                        ));
                    }
                }
                n += BATCH;
                *clock += BATCH as u64 * dt;
                engine.housekeeping(*clock, SWEEP_PER_BATCH);
            }
            start.elapsed() / BATCH as u32
        })
    });
}

fn benches(c: &mut Criterion) {
    let big = tables(SERVICES, BACKENDS, M);
    let (mut engine, acks) = loaded(&big);
    let mut g = c.benchmark_group("engine");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements(1));

    // Established TCP: cycle through 65,536 of the live flows, so the working
    // set is far larger than the caches, as on a busy edge node.
    let est: Vec<Vec<u8>> = (0..65_536)
        .map(|i| acks[(i * 15) % LIVE_FLOWS].clone())
        .collect();
    drop(acks);
    bench_batched(&mut g, "established_tcp", &mut engine, &big, &est);
    bench_single(&mut g, "established_tcp_single", &mut engine, &big, &est);
    // The same path with a cache-resident working set (64 flows): the
    // compute part of the cost, without the DRAM misses.
    bench_batched(&mut g, "established_tcp_hot", &mut engine, &big, &est[..64]);

    // UDP: 65,536 flows set up once, then their datagrams.
    let udp: Vec<Vec<u8>> = (0..65_536)
        .map(|k| {
            let (ip, port) = client(k);
            udp_frame(ip, port, service_ip(k % SERVICES), 53)
        })
        .collect();
    let mut buf = vec![0u8; 2048];
    for f in &udp {
        forward(&mut engine, &big, NOW, f, &mut buf);
    }
    bench_batched(&mut g, "udp", &mut engine, &big, &udp);
    bench_single(&mut g, "udp_single", &mut engine, &big, &udp);

    // New TCP flows (steady state; see the module docs).
    let pool = syn_pool(SERVICES);
    let mut clock = NOW;
    for (name, batched) in [("new_tcp", true), ("new_tcp_single", false)] {
        bench_new_flows(
            &mut g,
            name,
            &mut engine,
            &big,
            &pool,
            &mut clock,
            NEW_FLOW_DT,
            batched,
        );
    }
    let st = engine.flow_state().conntrack.stats();
    eprintln!(
        "new_tcp: conntrack {} records in use, {:?}; engine {:?}",
        engine.flow_state().conntrack.len(),
        st,
        engine.stats().drops.iter().sum::<u64>()
    );
    g.finish();
    drop(engine);
    drop(pool);

    // First packet with 1 Service vs 10,000.
    let one = tables(1, BACKENDS, M);
    for (group, batched) in [
        ("engine/lookup_scaling", false),
        ("engine/lookup_scaling_batch", true),
    ] {
        let mut g = c.benchmark_group(group);
        g.measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1))
            .throughput(Throughput::Elements(1));
        for (name, t, services) in [("1", &one, 1usize), ("10000", &big, SERVICES)] {
            let mut engine = Engine::standalone(1 << 18);
            let pool = syn_pool(services);
            let mut clock = NOW;
            bench_new_flows(
                &mut g,
                name,
                &mut engine,
                t,
                &pool,
                &mut clock,
                1_000_000,
                batched,
            );
            assert_eq!(engine.stats().drop, 0, "{group}/{name}: drops");
        }
        g.finish();
    }
}

criterion_group!(name = engine; config = Criterion::default().sample_size(30); targets = benches);
criterion_main!(engine);
