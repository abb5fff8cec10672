//! One poll-mode worker: one queue id, one socket per interface on a shared
//! UMEM, one engine.
//!
//! Per iteration:
//!  1. completion rings → free list; a `sendto()` for TX rings that still
//!     hold unsent frames; free list → fill rings (a `poll()` wakeup only
//!     where the kernel asked for one);
//!  2. for each interface: RX ring → up to `batch` frames; the current
//!     tables and next hops are loaded once (lock-free `ArcSwap` loads);
//!     `Engine::process_batch` on the frames in place;
//!  3. per verdict: `Tx(Route)` → next hop (egress interface and MAC) →
//!     that interface's TX list; `Tx(Reflect)`/`Reject` → back out of the
//!     ingress interface; `Pass`, or a next hop that is unknown or not ours →
//!     the kernel (raw socket); `Drop` → free;
//!  4. TX lists → TX rings, one `sendto()` per ring that asked for it.
//!
//! No allocation, lock or syscall per packet on the fast path: the batch
//! arrays live on the stack, the counters are the worker's own (published
//! to a snapshot every 100 ms, never a shared atomic per packet), and the
//! only syscalls are ring wakeups. Idle: busy-poll by default, or an
//! adaptive sleep (`idle_sleep_us`) that doubles from 1 µs up to the limit.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use xsk_rs::FrameDesc;

use super::kernel::{self, KernelTx};
use super::nexthop::Hop;
use super::umem::{frame_buf, Ledger, SocketStats, UmemConfigArgs, WorkerUmem, MAX_PORTS};
use super::Shared;
use crate::engine::{Decision, EngineConfig, Stats};
use crate::{Egress, Engine, Verdict};

/// Largest RX batch.
pub const MAX_BATCH: usize = 64;

/// Counters of one worker besides the engine's own.
#[derive(Debug, Clone, Default)]
pub struct WorkerCounters {
    /// Frames received, per port (index = interface order).
    pub rx: [u64; MAX_PORTS],
    /// Frames queued for TX, per port.
    pub tx: [u64; MAX_PORTS],
    /// Bytes of those frames, per port.
    pub rx_bytes: [u64; MAX_PORTS],
    pub tx_bytes: [u64; MAX_PORTS],
    /// Translated frames whose next hop had no MAC yet (sent by the kernel).
    pub to_kernel_unresolved: u64,
    /// Translated frames with no route, or a route through an interface
    /// edgeplane does not serve (sent by the kernel).
    pub to_kernel_route: u64,
    /// `Pass` verdicts handed to the kernel.
    pub to_kernel_pass: u64,
    /// Raw-socket sends that failed.
    pub to_kernel_failed: u64,
    pub tx_ring_full: u64,
    pub wakeups: u64,
    /// The kernel's socket counters, summed over this worker's sockets.
    pub socket: SocketStats,
    /// Poll iterations that found frames / found none.
    pub busy_polls: u64,
    pub idle_polls: u64,
}

/// What a worker publishes every 100 ms and at exit.
#[derive(Debug, Clone, Default)]
pub struct WorkerSnapshot {
    pub worker: usize,
    pub queue: u32,
    pub cpu: Option<usize>,
    pub engine: Stats,
    /// Per-frontend / per-backend counters (`crate::traffic`).
    pub traffic: crate::traffic::TrafficStats,
    pub counters: WorkerCounters,
    pub ledger: Ledger,
    /// Tables generation last used (its quiescent state, for issue 4).
    pub tables_generation: u64,
    /// Set once the loop ended.
    pub exited: bool,
}

/// Static configuration of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub index: usize,
    pub workers: usize,
    pub queue: u32,
    pub cpu: Option<usize>,
    /// (name, ifindex, MAC) of every interface, in slot order.
    pub ifaces: Vec<(String, u32, [u8; 6])>,
    pub umem: UmemConfigArgs,
    pub batch: usize,
    pub idle_sleep_us: u64,
}

/// Runs one worker until `shared.stop` is set. Sends the socket fds (one per
/// interface, in order) on `ready` once bound, or the error if it could not
/// bind; the caller puts them in the XSKMAP.
pub fn run(
    cfg: WorkerConfig,
    shared: Arc<Shared>,
    snapshot: Arc<Mutex<WorkerSnapshot>>,
    ready: Sender<Result<Vec<i32>>>,
) -> Result<()> {
    if let Some(cpu) = cfg.cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            tracing::warn!(
                worker = cfg.index,
                cpu,
                "could not pin the worker to its CPU"
            );
        }
    }
    let mut io = match WorkerUmem::new(&cfg.ifaces, cfg.queue, cfg.umem) {
        Ok(io) => io,
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            anyhow::bail!(msg);
        }
    };
    let mut ktx = match KernelTx::new() {
        Ok(k) => k,
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = ready.send(Err(e));
            anyhow::bail!(msg);
        }
    };
    let fds = io.ports.iter().map(|p| p.fd()).collect();
    let _ = ready.send(Ok(fds));

    let mut engine = Engine::new(
        EngineConfig {
            worker: cfg.index as u8,
            workers: cfg.workers as u8,
            ..EngineConfig::default()
        },
        shared.flows.clone(),
    );
    let batch = cfg.batch.clamp(1, MAX_BATCH);
    let nports = io.ports.len();
    let mut c = WorkerCounters::default();
    let mut rx = [FrameDesc::default(); MAX_BATCH];
    let mut tx = [[FrameDesc::default(); MAX_BATCH]; MAX_PORTS];
    let mut ntx = [0usize; MAX_PORTS];
    let mut done = [FrameDesc::default(); MAX_BATCH];
    let mut decisions = [Decision {
        verdict: Verdict::Pass,
        frontend: None,
        backend: None,
    }; MAX_BATCH];
    let mut last_publish = Instant::now();
    let mut backoff_us = 0u64;
    let mut generation = 0u64;

    let mut pinned = u64::MAX;
    let mut iterations = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        // Quiescent state: no tables are held here. Record the generation
        // this iteration starts from (any loaded below is the same or newer).
        if let Some(p) = &shared.pins {
            let g = shared.tables.load().generation;
            if g != pinned {
                p.record(cfg.index, g);
                pinned = g;
            }
            iterations = iterations.wrapping_add(1);
            if iterations & 255 == 0 {
                p.heartbeat(cfg.index);
            }
        }
        io.reap_completions();
        io.kick_pending_tx()?;
        io.top_up_fill()?;
        let mut got = 0;
        for p in 0..nports {
            let n = io.rx_batch(p, &mut rx[..batch]);
            if n == 0 {
                continue;
            }
            got += n;
            c.rx[p] += n as u64;
            let now = super::clock::monotonic_ns();
            let tables = shared.tables.load();
            let hops = shared.nexthops.load();
            generation = tables.generation;
            let cap = io.frame_cap;
            let umem = io.umem().clone();
            let mut frames: [(&mut [u8], usize); MAX_BATCH] =
                std::array::from_fn(|_| (&mut [][..], 0));
            for i in 0..n {
                // SAFETY: rx[..n] were just consumed from RX (in flight),
                // are distinct frames, and each becomes exactly one slice.
                frames[i] = (
                    unsafe { frame_buf(&umem, &rx[i], cap) },
                    rx[i].lengths().data(),
                );
                c.rx_bytes[p] += frames[i].1 as u64;
            }
            engine.process_batch(now, &mut frames[..n], &tables, &mut decisions[..n]);

            ntx[..nports].fill(0);
            let mut nd = 0;
            for i in 0..n {
                let buf = &mut *frames[i].0;
                let out = match decisions[i].verdict {
                    Verdict::Tx {
                        len,
                        egress: Egress::Route,
                    } => {
                        let hop = kernel::dst_ip(&buf[..len])
                            .map(|d| hops.lookup(d))
                            .unwrap_or(Hop::NoRoute);
                        let port = match hop {
                            Hop::Resolved { ifindex, mac } => {
                                match io.ports.iter().position(|q| q.ifindex == ifindex) {
                                    Some(j) => {
                                        buf[0..6].copy_from_slice(&mac);
                                        buf[6..12].copy_from_slice(&io.ports[j].mac);
                                        Some(j)
                                    }
                                    None => {
                                        c.to_kernel_route += 1;
                                        None
                                    }
                                }
                            }
                            Hop::Unresolved { .. } => {
                                c.to_kernel_unresolved += 1;
                                None
                            }
                            Hop::NoRoute => {
                                c.to_kernel_route += 1;
                                None
                            }
                        };
                        if port.is_none() {
                            // The kernel routes it and resolves the neighbour;
                            // the flow's next frames take the AF_XDP path.
                            if !ktx.send(&buf[..len]) {
                                c.to_kernel_failed += 1;
                            }
                        }
                        port.map(|j| (j, len))
                    }
                    // The engine swapped the MACs: back out where it came in.
                    Verdict::Tx {
                        len,
                        egress: Egress::Reflect,
                    }
                    | Verdict::Reject { len } => Some((p, len)),
                    Verdict::Pass => {
                        c.to_kernel_pass += 1;
                        if !ktx.send(&buf[..frames[i].1]) {
                            c.to_kernel_failed += 1;
                        }
                        None
                    }
                    Verdict::Drop(_) => None,
                };
                match out {
                    Some((j, len)) => {
                        let mut d = rx[i];
                        io.set_len(&mut d, len);
                        tx[j][ntx[j]] = d;
                        ntx[j] += 1;
                        c.tx[j] += 1;
                        c.tx_bytes[j] += len as u64;
                    }
                    None => {
                        done[nd] = rx[i];
                        nd += 1;
                    }
                }
            }
            let lists: [&[FrameDesc]; MAX_PORTS] = std::array::from_fn(|j| &tx[j][..ntx[j]]);
            io.finish_batch(&lists[..nports], &done[..nd])?;
        }

        if got > 0 {
            c.busy_polls += 1;
            backoff_us = 0;
            engine.housekeeping(super::clock::monotonic_ns(), 16);
        } else {
            c.idle_polls += 1;
            // Idle: free expired flows with a larger budget, then back off.
            engine.housekeeping(super::clock::monotonic_ns(), 256);
            if cfg.idle_sleep_us > 0 {
                backoff_us = (backoff_us * 2).clamp(1, cfg.idle_sleep_us);
                std::thread::sleep(Duration::from_micros(backoff_us));
            } else {
                std::hint::spin_loop();
            }
        }
        if last_publish.elapsed() >= Duration::from_millis(100) {
            last_publish = Instant::now();
            publish(&snapshot, &cfg, &engine, &c, &io, generation, false);
        }
    }

    // Drain: give the kernel up to 100 ms to complete queued TX.
    let until = Instant::now() + Duration::from_millis(100);
    while io.in_tx() > 0 && Instant::now() < until {
        io.reap_completions();
        std::thread::sleep(Duration::from_millis(1));
    }
    publish(&snapshot, &cfg, &engine, &c, &io, generation, true);
    Ok(())
}

fn publish(
    snapshot: &Mutex<WorkerSnapshot>,
    cfg: &WorkerConfig,
    engine: &Engine,
    c: &WorkerCounters,
    io: &WorkerUmem,
    generation: u64,
    exited: bool,
) {
    let mut c = c.clone();
    c.tx_ring_full = io.tx_ring_full;
    c.wakeups = io.wakeups;
    for p in &io.ports {
        let k = p.kernel_stats();
        c.socket.rx_dropped += k.rx_dropped;
        c.socket.rx_ring_full += k.rx_ring_full;
        c.socket.rx_fill_ring_empty += k.rx_fill_ring_empty;
        c.socket.rx_invalid_descs += k.rx_invalid_descs;
        c.socket.tx_invalid_descs += k.tx_invalid_descs;
    }
    // A reader holding the lock only delays this copy; the packet path
    // never takes it.
    if let Ok(mut s) = snapshot.lock() {
        *s = WorkerSnapshot {
            worker: cfg.index,
            queue: cfg.queue,
            cpu: cfg.cpu,
            engine: engine.stats().clone(),
            traffic: engine.traffic().clone(),
            counters: c,
            ledger: io.ledger(),
            tables_generation: generation,
            exited,
        };
    }
}
