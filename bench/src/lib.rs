//! Shared setup for the benches (large synthetic tables and frame
//! templates; not used on any packet path), and `edgeplane pktgen`: the
//! AF_XDP packet generator, the sink and the comparison report
//! ([`pktgen`]).

pub mod pktgen;

use std::net::{IpAddr, Ipv4Addr};

use edgeplane_dataplane::tables::{Backend, EmptyAction, FrontendKey, FrontendKind, FrontendSpec};
use edgeplane_dataplane::testing::node_config;
use edgeplane_dataplane::{ServiceInfo, Tables, TablesBuilder};
use edgeplane_packet::Proto;
use etherparse::PacketBuilder;

/// ClusterIP of Service `i`: 198.18.128.0 + i (i < 32768).
pub fn service_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + i as u32)
}

/// `n_services` Services, each with a TCP port 80 and a UDP port 53 frontend
/// and `n_backends` distinct ready backends, Maglev tables of size `m` built
/// by the control side's builder.
pub fn tables(n_services: usize, n_backends: usize, m: u32) -> Tables {
    let mut node = node_config();
    // The whole port space: the benches open millions of flows.
    node.snat_ports = (1024, 65535);
    let seed = node.hash_seed;
    let mut b = TablesBuilder::new(node, 1);
    for i in 0..n_services {
        let backends: Vec<Backend> = (0..n_backends)
            .map(|j| {
                let k = (i * n_backends + j) as u32;
                Backend {
                    ip: IpAddr::V4(Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(198, 19, 0, 0)) + (k % 65536),
                    )),
                    port: 8080 + (k / 65536) as u16,
                    ready: true,
                    serving: true,
                    terminating: false,
                    local: false,
                    weight: 1,
                }
            })
            .collect();
        let ident: Vec<(IpAddr, u16, u32)> = backends.iter().map(|b| (b.ip, b.port, 1)).collect();
        let maglev = edgeplane_control::maglev::build(&ident, m, seed);
        for (port, proto) in [(80u16, Proto::Tcp), (53, Proto::Udp)] {
            let svc = b.add_service(ServiceInfo {
                namespace: "bench".into(),
                name: format!("svc{i}"),
                port_name: String::new(),
                external_policy: "Cluster".into(),
                internal_policy: "Cluster".into(),
            });
            let spec = FrontendSpec {
                key: FrontendKey {
                    ip: IpAddr::V4(service_ip(i)),
                    port,
                    proto,
                },
                service: svc,
                kind: FrontendKind::ClusterIp,
                backends: backends.clone(),
                n_new: backends.len(),
                empty_action: EmptyAction::Reject,
                snat: true,
                affinity_timeout: 0,
                affinity_group: svc,
                source_ranges: Vec::new(),
            };
            b.add_frontend(spec, &maglev, m)
                .expect("bench tables are consistent");
        }
    }
    b.finish()
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// An Ethernet/IPv4/TCP frame with a 16-byte payload (non-SYN) or none (SYN).
pub fn tcp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(
        src.octets(),
        dst.octets(),
        64,
    );
    let mut t = b.tcp(sport, dport, 1000, 65535);
    if flags & SYN != 0 {
        t = t.syn();
    }
    if flags & ACK != 0 {
        t = t.ack(5000);
    }
    let payload: &[u8] = if flags & SYN != 0 {
        &[]
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(t.size(payload.len()));
    t.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// An Ethernet/IPv4/UDP frame with a 32-byte payload.
pub fn udp_frame(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let payload = [0x5au8; 32];
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, &payload).expect("writing to a Vec");
    out
}

/// Client `k` of a population: address in 198.18.0.0/16, source port from 1024.
pub fn client(k: usize) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (k % 65536) as u32),
        1024 + (k / 65536) as u16,
    )
}

/// The reply a backend sends to the translated frame `fwd` (SYN+ACK for a
/// SYN): addresses and ports swapped, as it arrives at the node.
pub fn reply_to(fwd: &[u8], flags: u8) -> Vec<u8> {
    let p = edgeplane_packet::parse(fwd).expect("a translated frame parses");
    match (p.src, p.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => tcp_frame(dst, p.dport, src, p.sport, flags),
        _ => panic!("bench flows are IPv4"),
    }
}

/// Frame buffers for [`Engine::process_batch`] and the decisions it returns,
/// allocated once. Each `run` copies the templates into the buffers (the
/// engine rewrites in place) and processes them as one batch.
#[derive(Debug)]
pub struct BatchBufs {
    bufs: Vec<u8>,
    pub out: Vec<edgeplane_dataplane::engine::Decision>,
}

/// Size of each frame buffer (an AF_XDP chunk).
pub const FRAME_BUF: usize = 2048;

impl BatchBufs {
    /// Buffers for batches of up to `batch` (at most 64) frames.
    pub fn new(batch: usize) -> Self {
        assert!(batch <= 64, "batches of at most 64 frames");
        BatchBufs {
            bufs: vec![0; batch * FRAME_BUF],
            out: vec![
                edgeplane_dataplane::engine::Decision {
                    verdict: edgeplane_dataplane::Verdict::Pass,
                    frontend: None,
                    backend: None,
                };
                batch
            ],
        }
    }

    /// Processes `frames` (at most the batch size) as one batch; returns how
    /// many were transmitted.
    #[inline]
    pub fn run<'f>(
        &mut self,
        engine: &mut edgeplane_dataplane::Engine,
        now: u64,
        t: &Tables,
        frames: impl IntoIterator<Item = &'f [u8]>,
    ) -> usize {
        let mut refs: [(&mut [u8], usize); 64] = std::array::from_fn(|_| (&mut [][..], 0));
        let mut n = 0;
        for ((slot, buf), f) in refs
            .iter_mut()
            .zip(self.bufs.chunks_exact_mut(FRAME_BUF))
            .zip(frames)
        {
            buf[..f.len()].copy_from_slice(f);
            *slot = (buf, f.len());
            n += 1;
        }
        let n = engine.process_batch(now, &mut refs[..n], t, &mut self.out[..n]);
        self.out[..n]
            .iter()
            .filter(|d| matches!(d.verdict, edgeplane_dataplane::Verdict::Tx { .. }))
            .count()
    }

    /// The buffer of frame `i` after the last `run`.
    pub fn frame(&self, i: usize) -> &[u8] {
        &self.bufs[i * FRAME_BUF..(i + 1) * FRAME_BUF]
    }
}

/// A flat pool of frames of at most 64 bytes each (no per-frame allocation),
/// for benches that need more distinct flows than fit in a `Vec<Vec<u8>>`.
#[derive(Debug)]
pub struct FramePool {
    data: Vec<u8>,
    lens: Vec<u8>,
}

impl FramePool {
    pub const STRIDE: usize = 64;

    pub fn new(n: usize, mut frame: impl FnMut(usize) -> Vec<u8>) -> Self {
        let mut data = vec![0u8; n * Self::STRIDE];
        let mut lens = Vec::with_capacity(n);
        for (i, slot) in data.chunks_exact_mut(Self::STRIDE).enumerate() {
            let f = frame(i);
            assert!(f.len() <= Self::STRIDE, "pool frames are at most 64 bytes");
            slot[..f.len()].copy_from_slice(&f);
            lens.push(f.len() as u8);
        }
        FramePool { data, lens }
    }

    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    #[inline]
    pub fn get(&self, i: usize) -> &[u8] {
        let off = i * Self::STRIDE;
        &self.data[off..off + self.lens[i] as usize]
    }
}
