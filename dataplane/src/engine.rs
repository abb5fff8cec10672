//! The packet pipeline: parse → fragments → conntrack → frontend → backend →
//! SNAT port → conntrack insert → rewrite.
//!
//! [`Engine::process`] decides the fate of one frame. It reads no clock (the
//! caller passes `now`), owns no socket and spawns no thread; its only state is
//! the flow state it shares with the other workers (conntrack, affinity, both
//! `&self`, lock-free) and its own per-worker counters.
//!
//! Each stage below is a small function with an early return; the numbered
//! comments in [`Engine::decide`] are the pipeline as documented in
//! docs/architecture.md.

use std::net::IpAddr;
use std::sync::Arc;

use edgeplane_packet::{self as packet, Frag, IcmpKind, ParseError, Parsed, Proto, Tuple};

use crate::affinity::Affinity;
use crate::conntrack::{
    Conntrack, Dir, Flow, FlowKey, Hit, InsertError, Miss, Probe, TcpState, Timeouts,
};
use crate::hash::{client_hash, flow_hash};
use crate::prefetch::prefetch;
use crate::shm::{Attach, ShmError};
use crate::tables::{EmptyAction, Frontend, Tables};
use crate::traffic::TrafficStats;
use crate::DropReason;

/// Where a transmitted frame should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// Route on the (new) destination address: look up the next hop.
    Route,
    /// Send back out of the interface it came in on, to the MAC it came from
    /// (the engine already swapped the Ethernet addresses): generated answers
    /// such as ICMP errors, TCP RSTs and echo replies.
    Reflect,
}

/// The fate of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The frame was translated in place; transmit its first `len` bytes.
    Tx { len: usize, egress: Egress },
    /// The frame was replaced by an answer to its sender (ICMP port
    /// unreachable, TCP RST); transmit the first `len` bytes back out.
    Reject { len: usize },
    /// Not addressed to a Service: hand it to the kernel untouched.
    Pass,
    /// Dropped, with the reason.
    Drop(DropReason),
}

impl Verdict {
    /// The stable lower-case name used in `replay` output and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Tx { .. } => "tx",
            Verdict::Reject { .. } => "reject",
            Verdict::Pass => "pass",
            Verdict::Drop(_) => "drop",
        }
    }
}

/// A verdict plus what it concerned, for callers that report per frame
/// (`replay`, tests). Cheap to produce: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Index of the frontend in the tables the frame was processed with.
    pub frontend: Option<u32>,
    /// The backend (address, port) the flow is translated to or from.
    pub backend: Option<(IpAddr, u16)>,
}

impl Decision {
    fn new(verdict: Verdict) -> Self {
        Decision {
            verdict,
            frontend: None,
            backend: None,
        }
    }
}

/// Per-worker counters. Plain integers: each worker owns its `Stats`; the
/// metrics endpoint sums them when scraped. No shared atomic is touched per
/// packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx: u64,
    pub reject: u64,
    pub pass: u64,
    pub drop: u64,
    /// Drops by [`DropReason`] code.
    pub drops: [u64; DropReason::COUNT],
    /// Flows created (conntrack inserts that succeeded).
    pub new_flows: u64,
    /// Conntrack inserts that failed because the table was full.
    pub ct_insert_failed: u64,
    /// Flows whose backend disappeared (UDP re-balanced, TCP reset).
    pub backend_gone: u64,
    /// SNAT ports taken from an evictable (half-open or finished) flow
    /// because every port tried was held (also counted in conntrack's
    /// evictions).
    pub snat_port_evictions: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            rx_packets: 0,
            rx_bytes: 0,
            tx: 0,
            reject: 0,
            pass: 0,
            drop: 0,
            drops: [0; DropReason::COUNT],
            new_flows: 0,
            ct_insert_failed: 0,
            backend_gone: 0,
            snat_port_evictions: 0,
        }
    }
}

impl Stats {
    /// Adds another worker's counters into these.
    pub fn merge(&mut self, o: &Stats) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx += o.tx;
        self.reject += o.reject;
        self.pass += o.pass;
        self.drop += o.drop;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        self.new_flows += o.new_flows;
        self.ct_insert_failed += o.ct_insert_failed;
        self.backend_gone += o.backend_gone;
        self.snat_port_evictions += o.snat_port_evictions;
    }

    /// The count for one drop reason.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r.code() as usize]
    }
}

/// Static configuration of one engine (one worker).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This worker's index, `0..workers`.
    pub worker: u8,
    /// How many workers share the SNAT port range.
    pub workers: u8,
    /// How many SNAT ports to probe before declaring the range exhausted.
    pub snat_probe: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            worker: 0,
            workers: 1,
            snat_probe: 128,
        }
    }
}

/// The flow state shared by all workers of one dataplane.
#[derive(Debug)]
pub struct FlowState {
    pub conntrack: Conntrack,
    pub affinity: Affinity,
}

impl FlowState {
    /// Allocates the conntrack (capacity in flows) and affinity tables.
    pub fn new(
        ct_capacity: usize,
        affinity_capacity: usize,
        seed: u64,
        timeouts: Timeouts,
    ) -> Self {
        FlowState {
            conntrack: Conntrack::new(ct_capacity, seed, timeouts),
            affinity: Affinity::new(affinity_capacity, seed ^ 0x5a5a_5a5a),
        }
    }

    /// The flow state kept in files under `dir` (`conntrack`, `affinity`),
    /// re-attached from a previous dataplane when compatible (see
    /// [`Conntrack::open`]). `now`: `CLOCK_MONOTONIC` ns, the clock the
    /// caller must then pass to the engine. Returns how each table came to be
    /// (conntrack, affinity), for the caller to log.
    pub fn open(
        dir: &std::path::Path,
        ct_capacity: usize,
        affinity_capacity: usize,
        seed: u64,
        timeouts: Timeouts,
        now: u64,
    ) -> Result<(Self, [Attach; 2]), ShmError> {
        let (conntrack, ca) = Conntrack::open(dir, ct_capacity, seed, timeouts, now)?;
        let (affinity, aa) = Affinity::open(dir, affinity_capacity, seed ^ 0x5a5a_5a5a, now)?;
        Ok((
            FlowState {
                conntrack,
                affinity,
            },
            [ca, aa],
        ))
    }
}

/// One worker's engine.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    state: Arc<FlowState>,
    stats: Stats,
    /// Per-frontend / per-backend counters (see `traffic.rs`).
    traffic: TrafficStats,
    /// Scratch for frames the engine originates (ICMP errors); generated
    /// answers are built here and copied over the input frame.
    scratch: Box<[u8; 2048]>,
    /// Per-frame scratch of the batch path (taken while a chunk runs).
    pre: Option<Box<[Pre; BATCH_CHUNK]>>,
}

const NS: u64 = 1_000_000_000;

/// Salt that keeps the SNAT port choice independent of the Maglev slot
/// (both hash the same tuple).
const SNAT_SALT: u64 = 0x736e_6174_706f_7274; // "snatport"

/// Conntrack is at least ⅞ full: half-open flows are being evicted for new
/// ones, so a flow's state may be lost before its handshake completes.
#[inline]
fn under_pressure(ct: &Conntrack) -> bool {
    let cap = ct.capacity();
    ct.len() >= cap - cap / 8
}

/// The SNAT port a new flow tries first: its original tuple (client address
/// and port, frontend address and port, protocol), hashed with the node's
/// hash seed into the worker's share `first .. first + count`.
///
/// Deterministic, like a SYN cookie: a flow whose state was lost — evicted
/// while half-open under a SYN flood, or a dataplane restarted without its
/// conntrack — gets the same port again when its next segment is picked up,
/// so the backend still recognises the connection. A port held by another
/// live flow makes the allocation move on to the next one, so a flow's port
/// is its preferred one unless that one was taken when it started.
pub fn preferred_snat_port(seed: u64, orig: &FlowKey, first: u16, count: u32) -> u16 {
    if count == 0 {
        return first;
    }
    let h = flow_hash(
        seed ^ SNAT_SALT,
        orig.src,
        orig.dst,
        orig.sport,
        orig.dport,
        orig.proto,
    );
    (first as u32 + ((h >> 17) % count as u64) as u32) as u16
}

impl Engine {
    pub fn new(cfg: EngineConfig, state: Arc<FlowState>) -> Self {
        Engine {
            cfg,
            state,
            stats: Stats::default(),
            traffic: TrafficStats::default(),
            scratch: Box::new([0; 2048]),
            pre: Some(Box::new([Pre::EMPTY; BATCH_CHUNK])),
        }
    }

    /// A single-worker engine with its own flow state (tests, replay).
    pub fn standalone(ct_capacity: usize) -> Self {
        let state = Arc::new(FlowState::new(
            ct_capacity,
            ct_capacity.max(1024),
            0x1234_5678,
            Timeouts::default(),
        ));
        Engine::new(EngineConfig::default(), state)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Per-frontend and per-backend counters, indexed for the tables
    /// generation in [`TrafficStats::generation`].
    pub fn traffic(&self) -> &TrafficStats {
        &self.traffic
    }

    pub fn flow_state(&self) -> &Arc<FlowState> {
        &self.state
    }

    /// This worker's share of the SNAT port range: (first port, count).
    pub fn snat_share(&self, tables: &Tables) -> (u16, u32) {
        let (lo, hi) = tables.node.snat_ports;
        let (lo, hi) = (lo.min(hi) as u32, lo.max(hi) as u32);
        let total = hi - lo + 1;
        let workers = self.cfg.workers.max(1) as u32;
        let w = (self.cfg.worker as u32).min(workers - 1);
        let chunk = total / workers;
        if chunk == 0 {
            // Fewer ports than workers: worker 0 gets them all.
            return if w == 0 {
                (lo as u16, total)
            } else {
                (lo as u16, 0)
            };
        }
        let first = lo + w * chunk;
        let count = if w == workers - 1 {
            total - w * chunk
        } else {
            chunk
        };
        (first as u16, count)
    }

    /// Processes one frame in place. `buf` is the whole frame buffer (its
    /// length is the capacity available for generated answers); the frame is
    /// `buf[..len]`.
    ///
    /// For a stream of frames prefer [`process_batch`](Self::process_batch):
    /// same decisions, but it overlaps the cache misses of a whole batch.
    pub fn process(&mut self, now: u64, buf: &mut [u8], len: usize, tables: &Tables) -> Decision {
        let len = len.min(buf.len());
        if !self.traffic.is_current(tables) {
            self.traffic.rebase(tables);
        }
        let d = match packet::parse(&buf[..len]) {
            Ok(p) => self.decide(now, buf, len, tables, &p, Hints::NONE),
            Err(e) => parse_failed(e),
        };
        self.count(len, &d);
        d
    }

    /// Processes a batch: `frames[i]` is (buffer, frame length); the decision
    /// for frame `i` is written to `out[i]`. Processes `min(frames, out)`
    /// entries and returns that count.
    ///
    /// This is the hot entry point (the AF_XDP workers call it with each RX
    /// batch). Its decisions, rewrites and counters are exactly those of
    /// calling [`process`](Self::process) on each frame in order: every frame
    /// still goes through the whole pipeline, in order. What differs is memory
    /// access: frames are handled in chunks of [`BATCH_CHUNK`], and before
    /// any frame of a chunk is decided, the engine parses all of them, hashes
    /// their flow keys and *prefetches* the cache lines their decisions will
    /// touch (conntrack buckets, then the matching records; for frames that
    /// look like new flows, the Maglev slot and the SNAT reply key's buckets).
    /// At a million flows each of those is a DRAM miss; prefetched together,
    /// the misses of a chunk overlap instead of being paid one after another
    /// (the `rte_hash_lookup_bulk` approach). Prefetches are hints: the real
    /// lookups still run in order, so two frames of one flow in a batch are
    /// handled exactly as one after the other.
    pub fn process_batch(
        &mut self,
        now: u64,
        frames: &mut [(&mut [u8], usize)],
        tables: &Tables,
        out: &mut [Decision],
    ) -> usize {
        let n = frames.len().min(out.len());
        if !self.traffic.is_current(tables) {
            // Once per table generation, not per packet.
            self.traffic.rebase(tables);
        }
        for (fr, o) in frames[..n]
            .chunks_mut(BATCH_CHUNK)
            .zip(out[..n].chunks_mut(BATCH_CHUNK))
        {
            self.process_chunk(now, fr, tables, o);
        }
        n
    }

    /// [`process_batch`](Self::process_batch) of at most [`BATCH_CHUNK`]
    /// frames (`out.len() == frames.len()`).
    fn process_chunk(
        &mut self,
        now: u64,
        frames: &mut [(&mut [u8], usize)],
        t: &Tables,
        out: &mut [Decision],
    ) {
        // The per-frame scratch lives in the engine (allocated once), so a
        // chunk does not start by blanking a fresh one: stage 1 writes every
        // field of each frame's entry.
        let mut scratch = self
            .pre
            .take()
            .unwrap_or_else(|| Box::new([Pre::EMPTY; BATCH_CHUNK]));
        let pre = &mut scratch[..frames.len()];
        let ct = &self.state.conntrack;
        // Stage 1: parse every frame, hash its flow key, prefetch the
        // conntrack bucket a tracked key is found in. Parsing is a pure
        // function of the frame's own bytes, and frames are separate buffers,
        // so parsing early gives the result parsing in order would.
        for ((buf, len), pr) in frames.iter_mut().zip(pre.iter_mut()) {
            let len = (*len).min(buf.len());
            let parsed = packet::parse(&buf[..len]);
            let mut probe = None;
            if let Ok(p) = &parsed {
                if p.frag == Frag::None
                    && matches!(p.l4(), Some(Proto::Tcp | Proto::Udp | Proto::Sctp))
                {
                    let pb = ct.probe(&flow_key(p));
                    ct.prefetch_index(&pb);
                    probe = Some(pb);
                }
            }
            *pr = Pre {
                parsed,
                probe,
                front: None,
                maglev_slot: None,
                snat: None,
            };
        }
        // Stage 2: the buckets are (mostly) in cache now. Tracked-looking
        // frames: prefetch their records. Others probably start a flow:
        // prefetch their second bucket (`prefetch_records` does) and the
        // Maglev slot they will read.
        for pr in pre.iter_mut() {
            let (Ok(p), Some(probe)) = (&pr.parsed, &mut pr.probe) else {
                continue;
            };
            if ct.prefetch_records(probe) {
                continue;
            }
            // The lookup is a pure function of the frame and the tables, so
            // stage 4 reuses its result.
            let front = t.frontend(p.dst, p.dport, proto_of(p));
            pr.front = Some(front.map(|(i, _)| i));
            if let Some((_, f)) = front {
                if f.affinity_timeout == 0 && f.n_new > 0 {
                    let m = f.maglev_len as u64;
                    if m > 0 {
                        let h =
                            flow_hash(t.node.hash_seed, p.src, p.dst, p.sport, p.dport, p.proto);
                        let slot = (h % m) as usize;
                        if let Some(e) = t.maglev_entry_byte(f, slot) {
                            prefetch(e);
                        }
                        pr.maglev_slot = Some(slot);
                    }
                }
            }
        }
        // Stage 3: new-flow candidates: the backend is now known, and with it
        // the reply key of the flow's preferred SNAT port (the first one
        // `alloc_port` tries). Prefetch that key's buckets.
        let (first, count) = self.snat_share(t);
        for pr in pre.iter_mut() {
            let (Ok(p), Some(slot), Some(Some(fi))) = (&pr.parsed, pr.maglev_slot, pr.front) else {
                continue;
            };
            let Some(f) = t.frontends.get(fi as usize) else {
                continue;
            };
            let bi = t.maglev_entry(f, slot).map_or(usize::MAX, usize::from);
            let (Some(b), Some(snat), true) = (
                t.new_backends(f).get(bi),
                t.snat_addr(p.dst.is_ipv6()),
                f.snat && count > 0,
            ) else {
                continue;
            };
            let orig = FlowKey {
                src: p.src,
                dst: p.dst,
                sport: p.sport,
                dport: p.dport,
                proto: p.proto,
            };
            let port = preferred_snat_port(t.node.hash_seed, &orig, first, count);
            let reply = FlowKey {
                src: b.ip,
                dst: snat,
                sport: b.port,
                dport: port,
                proto: p.proto,
            };
            // A free port's key is a miss: both buckets are read.
            let probe = ct.probe(&reply);
            ct.prefetch_buckets(&probe);
            pr.snat = Some((port, probe));
        }
        // Stage 4: the pipeline, frame by frame, in order.
        for (((buf, len), pr), o) in frames.iter_mut().zip(pre.iter()).zip(out.iter_mut()) {
            let len = (*len).min(buf.len());
            let d = match &pr.parsed {
                Ok(p) => {
                    let hints = Hints {
                        probe: pr.probe.as_ref(),
                        // An index `t.frontend` returned: always in range.
                        front: pr
                            .front
                            .map(|fi| fi.and_then(|i| t.frontends.get(i as usize).map(|f| (i, f)))),
                        maglev_slot: pr.maglev_slot,
                        snat: pr.snat.as_ref(),
                    };
                    self.decide(now, buf, len, t, p, hints)
                }
                Err(e) => parse_failed(*e),
            };
            self.count(len, &d);
            *o = d;
        }
        self.pre = Some(scratch);
    }

    /// Counts one processed frame.
    #[inline]
    fn count(&mut self, len: usize, d: &Decision) {
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += len as u64;
        let v = match d.verdict {
            Verdict::Tx { .. } => {
                self.stats.tx += 1;
                0
            }
            Verdict::Reject { .. } => {
                self.stats.reject += 1;
                1
            }
            Verdict::Pass => {
                self.stats.pass += 1;
                2
            }
            Verdict::Drop(r) => {
                self.stats.drop += 1;
                self.stats.drops[r.code() as usize] += 1;
                3
            }
        };
        self.traffic.verdict_bytes[v] += len as u64;
        if let Some(f) = d.frontend {
            self.traffic.frame(f, len);
        }
    }

    /// Housekeeping a worker runs between batches: frees up to `budget`
    /// expired conntrack entries. Returns how many were freed.
    pub fn housekeeping(&mut self, now: u64, budget: usize) -> usize {
        self.state.conntrack.sweep(now, budget)
    }

    /// The pipeline after stage 1 (`p` is `packet::parse(&buf[..len])`).
    /// `hints` carries what the batch path already computed for `p` (see
    /// [`Hints`]); [`Hints::NONE`] on the one-frame path.
    fn decide(
        &mut self,
        now: u64,
        buf: &mut [u8],
        len: usize,
        t: &Tables,
        p: &Parsed,
        hints: Hints<'_, '_>,
    ) -> Decision {
        // 1. Parse and validate once (done by the caller, see `parse_failed`);
        //    everything after indexes by offsets.
        // 2. Fragments: without reassembly a fragment cannot be matched to a
        //    flow; ours are dropped (counted), everyone else's go to the kernel.
        if p.frag != Frag::None {
            return Decision::new(if self.is_ours(p, t) {
                Verdict::Drop(DropReason::Fragment)
            } else {
                Verdict::Pass
            });
        }
        match p.l4() {
            Some(Proto::Tcp | Proto::Udp | Proto::Sctp) => {
                self.l4_packet(now, buf, len, p, t, hints)
            }
            Some(Proto::Icmp | Proto::Icmpv6) => self.icmp_packet(now, buf, len, p, t),
            None => Decision::new(if self.is_ours(p, t) && !t.is_node_ip(p.dst) {
                Verdict::Drop(DropReason::UnsupportedProtocol)
            } else {
                Verdict::Pass
            }),
        }
    }

    /// Addressed to a frontend IP or to a dedicated SNAT address.
    fn is_ours(&self, p: &Parsed, t: &Tables) -> bool {
        t.is_frontend_ip(p.dst) || (self.is_snat_addr(p.dst, t) && !t.is_node_ip(p.dst))
    }

    fn is_snat_addr(&self, ip: IpAddr, t: &Tables) -> bool {
        t.snat_addr(ip.is_ipv6()) == Some(ip)
    }

    fn l4_packet(
        &mut self,
        now: u64,
        buf: &mut [u8],
        len: usize,
        p: &Parsed,
        t: &Tables,
        hints: Hints<'_, '_>,
    ) -> Decision {
        let key = flow_key(p);
        // 3. Conntrack: a known flow in either direction.
        let ct = &self.state.conntrack;
        let found = match hints.probe {
            Some(probe) => ct.lookup_or_miss(probe, now),
            None => ct.lookup_or_miss(&ct.probe(&key), now),
        };
        // A miss is handed on to the insert (no second hash, and no second
        // check while nobody else inserted near the key).
        let miss = match found {
            Ok(hit) => {
                // `None`: the flow's backend is gone, or the flow ended under
                // us; the packet starts over as a new flow.
                if let Some(d) = self.established(now, buf, len, p, t, &hit) {
                    return d;
                }
                None
            }
            Err(miss) => Some(miss),
        };
        // 4. Frontend: a new flow to a Service.
        let front = match hints.front {
            Some(front) => front,
            None => t.frontend(p.dst, p.dport, proto_of(p)),
        };
        let Some((fidx, f)) = front else {
            return Decision::new(self.not_a_frontend(p, t));
        };
        self.new_flow(now, buf, len, p, t, fidx, f, key, miss, hints)
    }

    /// Not a frontend and not a known flow.
    fn not_a_frontend(&self, p: &Parsed, t: &Tables) -> Verdict {
        if t.is_node_ip(p.dst) {
            // The node's own services (SSH, kubelet, ...) and replies to the
            // node's own connections.
            return Verdict::Pass;
        }
        if t.is_frontend_ip(p.dst) {
            // A Service IP on a port no Service declares.
            return Verdict::Drop(DropReason::UnknownServicePort);
        }
        if self.is_snat_addr(p.dst, t) {
            // A dedicated SNAT address: only our flows' replies belong here.
            return Verdict::Drop(DropReason::NoConntrackEntry);
        }
        Verdict::Pass
    }

    /// A packet of a tracked flow. Returns `None` when the flow's backend was
    /// removed and the packet must be treated as the start of a new flow.
    fn established(
        &mut self,
        now: u64,
        buf: &mut [u8],
        len: usize,
        p: &Parsed,
        t: &Tables,
        hit: &Hit,
    ) -> Option<Decision> {
        let ct = &self.state.conntrack;
        let backend = hit.backend();
        // 3-. A new connection on the tuple of one that is over (port reuse):
        //     forget the old flow and balance the new one afresh, with a new
        //     SNAT port — as nf_conntrack does (`nf_ct_kill` + `NF_REPEAT`).
        //     Keeping the old entry would send it to the old backend even
        //     when that backend is now terminating.
        if hit.dir == Dir::Original
            && p.proto == Proto::Tcp as u8
            && is_syn(p.tcp_flags)
            && matches!(hit.state(), TcpState::TimeWait | TcpState::Close)
        {
            ct.remove(hit);
            return None;
        }
        // Valid in the generation the flow was last validated against.
        let mut frontend = hit.frontend();
        // 3a. A new table generation: is the backend still an endpoint of its
        //     frontend? Checked once per flow per generation.
        if hit.validated_gen() != t.generation {
            let flow = hit.flow();
            let found = t.frontend(flow.orig.dst, flow.orig.dport, proto_of(p));
            let alive = found
                .map(|(_, f)| t.all_backends(f).iter().any(|b| (b.ip, b.port) == backend))
                .unwrap_or(false);
            if !alive {
                ct.remove(hit);
                self.stats.backend_gone += 1;
                return self.backend_gone(buf, len, p, hit);
            }
            if let Some((fidx, _)) = found {
                // The frontend's index may differ in this generation: store
                // it with the generation, so later packets need no lookup.
                ct.revalidate(hit, t.generation, fidx);
                frontend = fidx;
            }
        }
        // 3b. Advance the flow's state (TCP flags, timeouts). `None`: the
        //     flow ended under us (another worker removed or replaced it).
        ct.update(hit, now, p.tcp_flags)?;
        // 3c. Rewrite: originals go to the backend, replies back to the client
        //     (`Hit::rewrite` picks the tuple by direction, in wire form).
        let verdict = rewrite(buf, len, p, hit, hit.dir);
        Some(Decision {
            verdict,
            frontend: Some(frontend),
            backend: Some(backend),
        })
    }

    /// The flow's backend disappeared. UDP and SCTP: the state is gone (the
    /// stale-UDP blackhole fix) and an original-direction packet is balanced
    /// anew. TCP: a SYN starts over; any other segment is answered with a RST
    /// so the client learns at once that its connection is over (a new
    /// backend would have no socket for it and the old one is gone). When the
    /// first segment after the change comes from the removed backend, it is
    /// turned into that RST to the client (with the segment's sequence
    /// number, which is what the client expects next): a client waiting for
    /// an answer would otherwise hang until its own timeout.
    fn backend_gone(
        &mut self,
        buf: &mut [u8],
        len: usize,
        p: &Parsed,
        hit: &Hit,
    ) -> Option<Decision> {
        if hit.dir == Dir::Reply {
            if p.proto == Proto::Tcp as u8 && p.tcp_flags & TCP_RST == 0 {
                if let Some(v) = self.reset_client(buf, len, p, hit) {
                    return Some(Decision {
                        verdict: v,
                        frontend: Some(hit.frontend()),
                        backend: Some(hit.backend()),
                    });
                }
            }
            return Some(Decision::new(Verdict::Drop(DropReason::BackendGone)));
        }
        if p.proto != Proto::Tcp as u8 || is_syn(p.tcp_flags) {
            return None;
        }
        if p.tcp_flags & TCP_RST != 0 {
            return Some(Decision::new(Verdict::Drop(DropReason::BackendGone)));
        }
        Some(Decision::new(self.answer_rst(buf, len, p)))
    }

    #[allow(clippy::too_many_arguments)]
    fn new_flow(
        &mut self,
        now: u64,
        buf: &mut [u8],
        len: usize,
        p: &Parsed,
        t: &Tables,
        fidx: u32,
        f: &Frontend,
        orig: FlowKey,
        orig_miss: Option<Miss>,
        hints: Hints<'_, '_>,
    ) -> Decision {
        let with = |verdict| Decision {
            verdict,
            frontend: Some(fidx),
            backend: None,
        };
        // 4a. loadBalancerSourceRanges.
        let ranges = t.source_ranges(f);
        if !ranges.is_empty() && !ranges.iter().any(|c| c.contains(p.src)) {
            return with(Verdict::Drop(DropReason::SourceRangeDenied));
        }
        // 4b. TCP opens with a SYN. A RST for an unknown flow is noise. Any
        //     other segment is picked up mid-stream (nf_conntrack's
        //     `tcp_loose`): Maglev picks the same backend again and, with
        //     SNAT, the flow's preferred port is the one it had (step 7), so
        //     a flow whose state was lost — evicted while half-open under a
        //     SYN flood, say — carries on. If the backend does not know the
        //     connection it answers with a RST, which goes back to the client.
        let pickup = p.proto == Proto::Tcp as u8 && !is_syn(p.tcp_flags);
        if pickup && p.tcp_flags & TCP_RST != 0 {
            return with(Verdict::Drop(DropReason::TcpNoSyn));
        }
        // 5. No backend for new flows: REJECT or DROP, as kube-proxy.
        if f.n_new == 0 {
            return with(match f.empty_action {
                EmptyAction::Reject => self.answer_unreachable(buf, len, p),
                EmptyAction::Drop => Verdict::Drop(DropReason::NoLocalEndpoints),
            });
        }
        // 6. Backend: session affinity, else Maglev on the flow hash.
        let backends = t.new_backends(f);
        let seed = t.node.hash_seed;
        let mut chosen = None;
        if f.affinity_timeout > 0 {
            if let Some((ip, port)) = self.state.affinity.get(
                p.src,
                f.affinity_group,
                now,
                f.affinity_timeout as u64 * NS,
            ) {
                chosen = backends.iter().position(|b| b.ip == ip && b.port == port);
            }
        }
        let bi = match chosen {
            Some(i) => i,
            None => {
                let m = f.maglev_len as u64;
                if m == 0 {
                    return with(Verdict::Drop(DropReason::NoLocalEndpoints));
                }
                // The batch path computed the slot already (stage 2).
                let slot = match hints.maglev_slot {
                    Some(slot) => slot,
                    None => {
                        let h = if f.affinity_timeout > 0 {
                            client_hash(seed, p.src)
                        } else {
                            flow_hash(seed, p.src, p.dst, p.sport, p.dport, p.proto)
                        };
                        (h % m) as usize
                    }
                };
                // Bounds-checked read (the table may be in shared memory); a
                // bad entry finds no backend below.
                t.maglev_entry(f, slot).map_or(usize::MAX, usize::from)
            }
        };
        let Some(b) = backends.get(bi) else {
            return with(Verdict::Drop(DropReason::NoLocalEndpoints));
        };
        if f.affinity_timeout > 0 {
            self.state
                .affinity
                .set(p.src, f.affinity_group, b.ip, b.port, now);
        }
        // 7. Source NAT: a port from this worker's share whose reply key is
        //    free, starting at the flow's preferred port. Hairpin (the client
        //    is the chosen endpoint) is always SNATed, as kube-proxy
        //    masquerades it: without, the endpoint would answer itself from
        //    its own address, never through us.
        let snat = f.snat || p.src == b.ip;
        let mut reply_miss = None;
        let (src, sport) = match (snat, t.snat_addr(p.dst.is_ipv6())) {
            (true, Some(snat)) => {
                match self.alloc_port(now, t, snat, (b.ip, b.port), &orig, !pickup, hints.snat) {
                    Some((port, miss)) => {
                        reply_miss = miss;
                        (snat, port)
                    }
                    // A picked-up segment without a port: reset the client, as
                    // no backend could make sense of it.
                    None if pickup => return with(self.answer_rst(buf, len, p)),
                    None => return with(Verdict::Drop(DropReason::SnatPortsExhausted)),
                }
            }
            _ => (p.src, p.sport),
        };
        let xlat = FlowKey {
            src,
            dst: b.ip,
            sport,
            dport: b.port,
            proto: p.proto,
        };
        // 8. Conntrack insert. A full table of confirmed flows refuses: a NAT
        //    cannot translate the replies of a flow it does not remember.
        let flow = Flow::new(orig, xlat, fidx, self.cfg.worker, t.generation);
        let hit = match self.state.conntrack.insert_after_miss(
            flow,
            now,
            p.tcp_flags,
            orig_miss.as_ref(),
            reply_miss.as_ref(),
        ) {
            Ok(hit) => {
                self.stats.new_flows += 1;
                self.traffic.new_flow(fidx, f.backend_off as usize + bi);
                hit
            }
            // Another worker won the race for the same flow: use its entry.
            Err(InsertError::Exists(hit)) => hit,
            // The reply key is held by another live flow (no SNAT: the same
            // client port reaches this backend through another frontend).
            Err(InsertError::ReplyTaken(_)) => {
                self.stats.ct_insert_failed += 1;
                return with(Verdict::Drop(DropReason::SnatPortsExhausted));
            }
            Err(InsertError::Full) => {
                self.stats.ct_insert_failed += 1;
                return with(Verdict::Drop(DropReason::ConntrackFull));
            }
        };
        // 9. Rewrite in place to the flow's translated tuple.
        let verdict = rewrite(buf, len, p, &hit, Dir::Original);
        Decision {
            verdict,
            frontend: Some(fidx),
            backend: Some((b.ip, b.port)),
        }
    }

    /// Picks a SNAT port whose reply key (backend → snat:port) is unused:
    /// the flow's preferred port ([`preferred_snat_port`]) or the next free
    /// one after it, up to `snat_probe` tries. A live confirmed flow's port
    /// is never taken. Half-open (or finished) flows give theirs up:
    /// - under conntrack pressure (⅞ full, as under a SYN flood), the holder
    ///   of the flow's *preferred* port is evicted for it, so that a flow
    ///   lands on the same port every time it is (re)created: the SYN, its
    ///   retransmission, and the pickup of its ACK after its half-open entry
    ///   was evicted all reach the backend on one port;
    /// - otherwise, when every port tried is held and `may_evict` (a SYN, not
    ///   a picked-up segment), the first evictable holder among them.
    ///
    /// With the port, the lookup miss of its reply key when the port was free
    /// (for the insert).
    #[allow(clippy::too_many_arguments)]
    fn alloc_port(
        &mut self,
        now: u64,
        t: &Tables,
        snat: IpAddr,
        (bip, bport): (IpAddr, u16),
        orig: &FlowKey,
        may_evict: bool,
        hint: Option<&(u16, Probe)>,
    ) -> Option<(u16, Option<Miss>)> {
        let (first, count) = self.snat_share(t);
        if count == 0 {
            return None;
        }
        let ct = &self.state.conntrack;
        let preferred = match hint {
            Some(&(port, _)) => port,
            None => preferred_snat_port(t.node.hash_seed, orig, first, count),
        };
        let start = (preferred - first) as u32;
        let tries = count.min(self.cfg.snat_probe.max(1));
        let mut victim = None;
        for i in 0..tries {
            let port = (first as u32 + (start + i) % count) as u16;
            let reply = FlowKey {
                src: bip,
                dst: snat,
                sport: bport,
                dport: port,
                proto: orig.proto,
            };
            // The batch path hashed the preferred port's reply key already.
            let found = match hint {
                Some((_, probe)) if i == 0 => ct.lookup_or_miss(probe, now),
                _ => ct.lookup_or_miss(&ct.probe(&reply), now),
            };
            let hit = match found {
                Ok(hit) => hit,
                Err(miss) => return Some((port, Some(miss))),
            };
            if !hit.evictable() {
                continue;
            }
            if i == 0 && under_pressure(ct) {
                if ct.evict(&hit) {
                    self.stats.snat_port_evictions += 1;
                    return Some((port, None));
                }
            } else if may_evict && victim.is_none() {
                victim = Some((hit, port));
            }
        }
        let (hit, port) = victim?;
        if ct.evict(&hit) {
            self.stats.snat_port_evictions += 1;
            Some((port, None))
        } else {
            None
        }
    }

    fn icmp_packet(
        &mut self,
        now: u64,
        buf: &mut [u8],
        len: usize,
        p: &Parsed,
        t: &Tables,
    ) -> Decision {
        match p.icmp {
            // Echo to a Service IP (not a node IP) is answered here, as Cilium
            // and IPVS answer pings to VIPs; pings to the node go to the kernel.
            Some(IcmpKind::EchoRequest) if t.is_frontend_ip(p.dst) && !t.is_node_ip(p.dst) => {
                if packet::icmp::echo_reply_in_place(&mut buf[..len], p) {
                    Decision::new(Verdict::Tx {
                        len,
                        egress: Egress::Reflect,
                    })
                } else {
                    Decision::new(Verdict::Drop(DropReason::UnsupportedIcmp))
                }
            }
            Some(IcmpKind::Error) => self.icmp_error(now, buf, len, p, t),
            _ => Decision::new(if self.is_ours(p, t) && !t.is_node_ip(p.dst) {
                Verdict::Drop(DropReason::UnsupportedIcmp)
            } else {
                Verdict::Pass
            }),
        }
    }

    /// An ICMP error about a tracked flow (e.g. fragmentation needed from a
    /// router between us and the backend) is translated like the flow's
    /// packets, so path-MTU discovery works through the NAT.
    fn icmp_error(
        &mut self,
        now: u64,
        buf: &mut [u8],
        len: usize,
        p: &Parsed,
        t: &Tables,
    ) -> Decision {
        let Some(inner) = p.inner else {
            return Decision::new(Verdict::Pass);
        };
        // The quoted datagram is one we sent; its reverse is a key we track.
        let quoted = FlowKey {
            src: inner.dst,
            dst: inner.src,
            sport: inner.dport,
            dport: inner.sport,
            proto: inner.proto,
        };
        let Some(hit) = self.state.conntrack.lookup(&quoted, now) else {
            return Decision::new(if self.is_ours(p, t) && !t.is_node_ip(p.dst) {
                Verdict::Drop(DropReason::UnsupportedIcmp)
            } else {
                Verdict::Pass
            });
        };
        let flow = &hit.flow();
        let backend = Some((flow.xlat.dst, flow.xlat.dport));
        let (outer_src, outer_dst, inner_new) = match hit.dir {
            // About a packet we sent towards the backend: the error goes back
            // to the client, quoting the client's original packet.
            Dir::Reply => {
                let src = (p.src == flow.xlat.dst).then_some(flow.orig.dst);
                let q = Tuple {
                    src: flow.orig.src,
                    dst: flow.orig.dst,
                    sport: flow.orig.sport,
                    dport: flow.orig.dport,
                };
                (src, flow.orig.src, q)
            }
            // About a reply we sent to the client: the error goes on to the
            // backend, quoting the backend's reply as the backend sent it.
            Dir::Original => {
                let src = (flow.xlat.src != flow.orig.src).then_some(flow.xlat.src);
                let q = Tuple {
                    src: flow.xlat.dst,
                    dst: flow.xlat.src,
                    sport: flow.xlat.dport,
                    dport: flow.xlat.sport,
                };
                (src, flow.xlat.dst, q)
            }
        };
        let verdict = match packet::rewrite_icmp_error(
            &mut buf[..len],
            p,
            outer_src,
            outer_dst,
            &inner_new,
        ) {
            Ok(()) => Verdict::Tx {
                len,
                egress: Egress::Route,
            },
            Err(_) => Verdict::Drop(DropReason::UnsupportedIcmp),
        };
        let frontend = t
            .frontend(flow.orig.dst, flow.orig.dport, proto_from(flow.orig.proto))
            .map(|(i, _)| i);
        Decision {
            verdict,
            frontend,
            backend,
        }
    }

    /// Builds a frame the engine originates with `build` (which reads the
    /// input frame and writes into the scratch buffer) and copies it over
    /// the input. Its length, or `None` if it could not be built or does not
    /// fit the input's buffer.
    fn generate(
        &mut self,
        buf: &mut [u8],
        len: usize,
        build: impl FnOnce(&[u8], &mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        let cap = buf.len().min(self.scratch.len());
        let n = build(&buf[..len], &mut self.scratch[..cap])?;
        buf.get_mut(..n)?.copy_from_slice(self.scratch.get(..n)?);
        Some(n)
    }

    /// Replaces the frame with an ICMP port unreachable to its sender.
    fn answer_unreachable(&mut self, buf: &mut [u8], len: usize, p: &Parsed) -> Verdict {
        match self.generate(buf, len, |f, out| {
            packet::icmp::build_port_unreachable(f, p, p.dst, out)
        }) {
            Some(n) => Verdict::Reject { len: n },
            None => Verdict::Drop(DropReason::FrameTooLarge),
        }
    }

    /// Replaces the removed backend's segment `p` with a RST from the
    /// Service to the flow's client (see `backend_gone`), routed like a
    /// translated reply. `None` if it cannot be built.
    fn reset_client(
        &mut self,
        buf: &mut [u8],
        len: usize,
        p: &Parsed,
        hit: &Hit,
    ) -> Option<Verdict> {
        let flow = hit.flow();
        let to = packet::tcp::RstTo {
            src: flow.orig.dst,
            dst: flow.orig.src,
            sport: flow.orig.dport,
            dport: flow.orig.sport,
        };
        let n = self.generate(buf, len, |f, out| packet::tcp::build_rst_to(f, p, to, out))?;
        Some(Verdict::Tx {
            len: n,
            egress: Egress::Route,
        })
    }

    /// Replaces the frame with a TCP RST to its sender.
    fn answer_rst(&mut self, buf: &mut [u8], len: usize, p: &Parsed) -> Verdict {
        match self.generate(buf, len, |f, out| packet::tcp::build_rst(f, p, out)) {
            Some(n) => Verdict::Reject { len: n },
            None => Verdict::Drop(DropReason::FrameTooLarge),
        }
    }
}

/// Frames per prefetch round of [`Engine::process_batch`]: enough misses in
/// flight to cover DRAM latency, few enough that the prefetched lines are
/// still in L1/L2 when their frame is decided.
pub const BATCH_CHUNK: usize = 32;

/// Per-frame scratch of [`Engine::process_batch`].
#[derive(Debug, Clone, Copy)]
struct Pre {
    parsed: Result<Parsed, ParseError>,
    /// Conntrack probe of the flow key (unfragmented TCP/UDP/SCTP).
    probe: Option<Probe>,
    /// `Some(t.frontend(..))` (its index) when stage 2 looked the frontend
    /// up.
    front: Option<Option<u32>>,
    /// Probably a new flow: the Maglev slot of that frontend (prefetched).
    maglev_slot: Option<usize>,
    /// Stage 3: the flow's preferred SNAT port and the probe of the reply
    /// key it gives (buckets prefetched).
    snat: Option<(u16, Probe)>,
}

/// What the batch path already knows about a frame when it is decided: its
/// conntrack probe (hashed, buckets prefetched) and, for a probable new flow,
/// the frontend lookup's result. Both equal what the pipeline would compute.
#[derive(Clone, Copy)]
struct Hints<'p, 't> {
    probe: Option<&'p Probe>,
    front: Option<Option<(u32, &'t Frontend)>>,
    /// The Maglev slot of the flow hash in `front`'s table (set only for a
    /// frontend without session affinity).
    maglev_slot: Option<usize>,
    /// The preferred SNAT port ([`preferred_snat_port`] of the frame's key in
    /// this worker's share) and the probe of the reply key it gives with the
    /// backend of `maglev_slot` (set only for a SNAT frontend).
    snat: Option<&'p (u16, Probe)>,
}

impl Hints<'_, '_> {
    const NONE: Hints<'static, 'static> = Hints {
        probe: None,
        front: None,
        maglev_slot: None,
        snat: None,
    };
}

impl Pre {
    const EMPTY: Pre = Pre {
        parsed: Err(ParseError::NotIp),
        probe: None,
        front: None,
        maglev_slot: None,
        snat: None,
    };
}

/// Rewrites the frame to the translation of `hit` for a packet travelling in
/// `dir` (see [`Hit::rewrite_as`]).
#[inline]
fn rewrite(buf: &mut [u8], len: usize, p: &Parsed, hit: &Hit, dir: Dir) -> Verdict {
    let done = match hit.rewrite_v4(dir) {
        Some((src, dst, sport, dport)) => {
            packet::rewrite_tuple_v4(&mut buf[..len], p, src, dst, sport, dport)
        }
        None => {
            let new = hit.rewrite_as(dir);
            let (src, dst) = new.addrs();
            packet::rewrite_tuple_bytes(&mut buf[..len], p, src, dst, new.sport, new.dport)
        }
    };
    match done {
        Ok(()) => Verdict::Tx {
            len,
            egress: Egress::Route,
        },
        Err(_) => Verdict::Drop(DropReason::Truncated),
    }
}

/// The decision for a frame `packet::parse` rejected.
#[inline]
fn parse_failed(e: ParseError) -> Decision {
    match e {
        ParseError::NotIp => Decision::new(Verdict::Pass),
        e => Decision::new(Verdict::Drop(e.into())),
    }
}

/// The conntrack key of a parsed frame: its 5-tuple as on the wire.
#[inline]
fn flow_key(p: &Parsed) -> FlowKey {
    FlowKey {
        src: p.src,
        dst: p.dst,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
    }
}

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// A connection-opening SYN (no ACK).
#[inline]
fn is_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
}

#[inline]
fn proto_of(p: &Parsed) -> Proto {
    proto_from(p.proto)
}

#[inline]
fn proto_from(n: u8) -> Proto {
    match n {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        132 => Proto::Sctp,
        1 => Proto::Icmp,
        _ => Proto::Icmpv6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fuzz_tables;
    use etherparse::PacketBuilder;

    const SEC: u64 = 1_000_000_000;

    fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, syn: bool, ack: bool) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(src, dst, 64);
        let mut t = b.tcp(sport, dport, 1000, 65535);
        if syn {
            t = t.syn();
        }
        if ack {
            t = t.ack(1);
        }
        let mut out = Vec::new();
        t.write(&mut out, &[]).unwrap();
        out
    }

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .udp(sport, dport);
        let mut out = Vec::new();
        b.write(&mut out, &[1, 2, 3, 4]).unwrap();
        out
    }

    /// The reply a backend sends to a translated frame.
    fn reply(fwd: &[u8], syn: bool) -> Vec<u8> {
        let p = packet::parse(fwd).unwrap();
        let (IpAddr::V4(s), IpAddr::V4(d)) = (p.src, p.dst) else {
            unreachable!()
        };
        if p.proto == 6 {
            tcp(d.octets(), p.dport, s.octets(), p.sport, syn, true)
        } else {
            udp(d.octets(), p.dport, s.octets(), p.sport)
        }
    }

    /// `process_batch` over mixed batches (new flows, the same flow twice in
    /// one batch, replies, established packets, unknown ports, non-IP and
    /// truncated frames, batches longer than a chunk) decides, rewrites and
    /// counts exactly as `process` one frame at a time.
    #[test]
    fn batch_equals_one_at_a_time_on_mixed_traffic() {
        let t = fuzz_tables();
        let vip = [198, 18, 200, 10];
        let mut one = Engine::standalone(4096);
        let mut batch = Engine::standalone(4096);
        let mut replies: Vec<Vec<u8>> = Vec::new();
        for round in 0..4u16 {
            let mut frames: Vec<Vec<u8>> = Vec::new();
            for i in 0..40u16 {
                let c = [198, 18, 7, (i % 50) as u8 + 1];
                let port = 2000 + round * 100 + i;
                let syn = tcp(c, port, vip, 80, true, false);
                frames.push(syn.clone());
                if i % 7 == 0 {
                    frames.push(syn); // retransmission in the same batch
                }
                if i % 5 == 0 {
                    frames.push(udp(c, port, vip, 53));
                }
                if i % 11 == 0 {
                    frames.push(tcp(c, port, vip, 81, true, false)); // no such port
                    frames.push(tcp(c, port + 1, vip, 80, false, true)); // no SYN
                    frames.push(vec![0xff; 14]); // not IP
                    frames.push(frames[0][..30].to_vec()); // truncated
                }
                // Established packets of earlier rounds' flows.
                if round > 0 {
                    let c2 = [198, 18, 7, (i % 50) as u8 + 1];
                    frames.push(tcp(c2, 2000 + (round - 1) * 100 + i, vip, 80, false, true));
                }
            }
            frames.append(&mut replies);
            let mut bufs: Vec<Vec<u8>> = frames
                .iter()
                .map(|f| {
                    let mut b = vec![0u8; 2048];
                    b[..f.len()].copy_from_slice(f);
                    b
                })
                .collect();
            let now = SEC * (1 + round as u64);
            let singles: Vec<(Decision, Vec<u8>)> = frames
                .iter()
                .map(|f| {
                    let mut b = vec![0u8; 2048];
                    b[..f.len()].copy_from_slice(f);
                    let d = one.process(now, &mut b, f.len(), &t);
                    (d, b)
                })
                .collect();
            let mut refs: Vec<(&mut [u8], usize)> = bufs
                .iter_mut()
                .zip(&frames)
                .map(|(b, f)| (b.as_mut_slice(), f.len()))
                .collect();
            let mut out = vec![Decision::new(Verdict::Pass); frames.len()];
            assert!(frames.len() > 2 * BATCH_CHUNK);
            assert_eq!(
                batch.process_batch(now, &mut refs, &t, &mut out),
                frames.len()
            );
            for (i, ((d, b), (o, bb))) in singles.iter().zip(out.iter().zip(&bufs)).enumerate() {
                assert_eq!(d, o, "round {round} frame {i}");
                assert_eq!(b, bb, "round {round} frame {i} bytes");
                if matches!(d.verdict, Verdict::Tx { .. }) && d.backend.is_some() && i % 3 == 0 {
                    let p = packet::parse(b).unwrap();
                    replies.push(reply(b, p.tcp_flags & TCP_SYN != 0));
                }
            }
            assert_eq!(one.stats(), batch.stats());
        }
        assert!(one.stats().tx > 100 && one.stats().drop > 0 && one.stats().pass > 0);
    }
}
