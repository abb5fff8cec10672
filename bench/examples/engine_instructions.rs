//! A small, deterministic driver of the engine's batched path, for counting
//! instructions per packet (valgrind's callgrind, `perf stat -e
//! instructions`): unlike wall time on a shared machine, instruction counts
//! repeat exactly from run to run. Same frames and setup as the
//! `engine` criterion bench, on smaller tables so that it runs in seconds
//! under valgrind (instruction counts barely depend on table size; the
//! cache misses the bigger tables add are the criterion bench's business).
//!
//! ```sh
//! cargo build -p edgeplane-bench --release --example engine_instructions
//! valgrind --tool=callgrind --toggle-collect='*Engine::process_batch*' \
//!     target/release/examples/engine_instructions established 2000
//! # instructions per packet = Ir / (2000 × 32)
//! ```
//!
//! Modes (`MODE BATCHES`, batches of 32 frames; `MODE-single` runs the same
//! frames one at a time through `Engine::process`, counted with
//! `--toggle-collect='*Engine::process*'`):
//! * `established`: ACKs of 64 established TCP flows (`engine/established_tcp_hot`);
//! * `udp`: datagrams of 64 UDP flows set up beforehand;
//! * `new`: SYNs of flows never seen, the clock advancing 200 µs per SYN and
//!   a housekeeping sweep of 256 slots after each batch (`engine/new_tcp`;
//!   add `--toggle-collect='*Engine::housekeeping*'` to count the sweep too).

use edgeplane_bench::{
    client, reply_to, service_ip, tables, tcp_frame, udp_frame, BatchBufs, FramePool, ACK, SYN,
};
use edgeplane_dataplane::Engine;

const SERVICES: usize = 100;
const BACKENDS: usize = 10;
const M: u32 = 16381;
const NOW: u64 = 1_000_000_000_000;
const BATCH: usize = 32;
const FLOWS: usize = 64;
const NEW_FLOW_DT: u64 = 200_000;
const SWEEP_PER_BATCH: usize = 256;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "established".into());
    // `MODE-single`: the same frames one at a time through `Engine::process`.
    let (mode, single) = match mode.strip_suffix("-single") {
        Some(m) => (m.to_string(), true),
        None => (mode, false),
    };
    let batches: usize = args
        .next()
        .map(|s| s.parse().expect("BATCHES: a number"))
        .unwrap_or(1000);
    let t = tables(SERVICES, BACKENDS, M);
    let mut engine = Engine::standalone(1 << 16);
    let mut bb = BatchBufs::new(BATCH);
    let tx = match mode.as_str() {
        "established" => {
            let syns: Vec<Vec<u8>> = (0..FLOWS)
                .map(|k| {
                    let (ip, port) = client(k);
                    tcp_frame(ip, port, service_ip(k % SERVICES), 80, SYN)
                })
                .collect();
            let acks: Vec<Vec<u8>> = (0..FLOWS)
                .map(|k| {
                    let (ip, port) = client(k);
                    tcp_frame(ip, port, service_ip(k % SERVICES), 80, ACK)
                })
                .collect();
            for (s, a) in syns.chunks(BATCH).zip(acks.chunks(BATCH)) {
                assert_eq!(
                    bb.run(&mut engine, NOW, &t, s.iter().map(|f| &f[..])),
                    BATCH
                );
                let synacks: Vec<Vec<u8>> = (0..BATCH)
                    .map(|j| reply_to(bb.frame(j), SYN | ACK))
                    .collect();
                assert_eq!(
                    bb.run(&mut engine, NOW, &t, synacks.iter().map(|f| &f[..])),
                    BATCH
                );
                assert_eq!(
                    bb.run(&mut engine, NOW, &t, a.iter().map(|f| &f[..])),
                    BATCH
                );
            }
            run_cycled(&mut engine, &mut bb, &t, &acks, batches, single)
        }
        "udp" => {
            let frames: Vec<Vec<u8>> = (0..FLOWS)
                .map(|k| {
                    let (ip, port) = client(k);
                    udp_frame(ip, port, service_ip(k % SERVICES), 53)
                })
                .collect();
            for c in frames.chunks(BATCH) {
                assert_eq!(
                    bb.run(&mut engine, NOW, &t, c.iter().map(|f| &f[..])),
                    BATCH
                );
            }
            run_cycled(&mut engine, &mut bb, &t, &frames, batches, single)
        }
        "new" => syn_pool_run(
            &mut engine,
            &mut bb,
            &t,
            1 << 18,
            batches,
            single,
            NEW_FLOW_DT,
        ),
        "churn" => {
            // Long-run check, not for counting: SYNs of a pool whose flows
            // come back after their entries expired (1 ms per SYN, a pool of
            // 262,144: back after 262 s, the SYN timeout is 120 s).
            let cap: usize = std::env::var("CHURN_CAP").map_or(1 << 19, |v| v.parse().unwrap());
            let pool_n: usize = std::env::var("CHURN_POOL").map_or(1 << 18, |v| v.parse().unwrap());
            let dt: u64 = std::env::var("CHURN_DT").map_or(1_000_000, |v| v.parse().unwrap());
            let mut engine = Engine::standalone(cap);
            let tx = syn_pool_run(&mut engine, &mut bb, &t, pool_n, batches, single, dt);
            println!(
                "churn: {} in use, {:?}",
                engine.flow_state().conntrack.len(),
                engine.flow_state().conntrack.stats()
            );
            tx
        }
        m => panic!("unknown mode {m:?} (established, udp, new, churn)"),
    };
    assert_eq!(tx, batches * BATCH, "every frame is transmitted");
    assert_eq!(engine.stats().drop, 0);
    println!("{mode}: {} packets", batches * BATCH);
}

/// SYNs of new flows from a pool of `pool_n` clients, `BATCH` per batch,
/// the clock moving `dt` per SYN, housekeeping after each batch.
fn syn_pool_run(
    engine: &mut Engine,
    bb: &mut BatchBufs,
    t: &edgeplane_dataplane::Tables,
    pool_n: usize,
    batches: usize,
    single: bool,
    dt: u64,
) -> usize {
    let pool = FramePool::new(pool_n, |i| {
        let (ip, port) = client(1_000_000 + i);
        tcp_frame(
            ip,
            port.wrapping_add(20_000),
            service_ip(i % SERVICES),
            80,
            SYN,
        )
    });
    let mut clock = NOW;
    let mut tx = 0;
    for n in 0..batches {
        let frames = (n * BATCH..(n + 1) * BATCH).map(|k| pool.get(k % pool.len()));
        if single {
            tx += frames.map(|f| one(engine, t, clock, f)).sum::<usize>();
        } else {
            tx += bb.run(engine, clock, t, frames);
        }
        clock += BATCH as u64 * dt;
        engine.housekeeping(clock, SWEEP_PER_BATCH);
    }
    tx
}

fn run_cycled(
    engine: &mut Engine,
    bb: &mut BatchBufs,
    t: &edgeplane_dataplane::Tables,
    frames: &[Vec<u8>],
    batches: usize,
    single: bool,
) -> usize {
    let mut tx = 0;
    let mut i = 0;
    for _ in 0..batches {
        let batch = frames[i..i + BATCH].iter().map(|f| &f[..]);
        if single {
            tx += batch.map(|f| one(engine, t, NOW, f)).sum::<usize>();
        } else {
            tx += bb.run(engine, NOW, t, batch);
        }
        i = (i + BATCH) % frames.len();
    }
    tx
}

/// One frame through `Engine::process`; 1 if transmitted.
fn one(engine: &mut Engine, t: &edgeplane_dataplane::Tables, now: u64, f: &[u8]) -> usize {
    let mut buf = [0u8; 2048];
    buf[..f.len()].copy_from_slice(f);
    let d = engine.process(now, &mut buf, f.len(), t);
    matches!(d.verdict, edgeplane_dataplane::Verdict::Tx { .. }) as usize
}
