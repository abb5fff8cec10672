//! Small hand-built tables for fuzzing, randomized tests and examples in docs.
//! Not used by the packet path. The Maglev tables here are a plain
//! round-robin fill (a valid table, not a Maglev permutation): the real
//! builder lives on the control side.

use std::net::IpAddr;

use edgeplane_packet::Proto;

use crate::tables::{
    Backend, Cidr, EmptyAction, FrontendKey, FrontendKind, FrontendSpec, NodeConfig, ServiceInfo,
    Tables, TablesBuilder,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal address")
}

/// A ready backend.
pub fn backend(addr: &str, port: u16) -> Backend {
    Backend {
        ip: ip(addr),
        port,
        ready: true,
        serving: true,
        terminating: false,
        local: false,
        weight: 1,
    }
}

/// A frontend description for [`tables_with`].
#[derive(Debug, Clone)]
pub struct Fe {
    pub ip: &'static str,
    pub port: u16,
    pub proto: Proto,
    pub kind: FrontendKind,
    pub backends: Vec<Backend>,
    pub n_new: usize,
    pub empty_action: EmptyAction,
    pub snat: bool,
    pub affinity_timeout: u32,
    pub source_ranges: Vec<Cidr>,
}

impl Fe {
    /// A ClusterIP-like frontend with SNAT and every backend usable.
    pub fn new(ip: &'static str, port: u16, proto: Proto, backends: Vec<Backend>) -> Self {
        let n_new = backends.len();
        Fe {
            ip,
            port,
            proto,
            kind: FrontendKind::ClusterIp,
            backends,
            n_new,
            empty_action: EmptyAction::Reject,
            snat: true,
            affinity_timeout: 0,
            source_ranges: Vec::new(),
        }
    }
}

/// Node 198.18.1.1 / 2001:db8:1::1, SNAT from those addresses on ports 40000-40999.
pub fn node_config() -> NodeConfig {
    NodeConfig {
        node_ips: vec![ip("198.18.1.1"), ip("2001:db8:1::1")],
        snat_v4: Some("198.18.1.1".parse().expect("literal")),
        snat_v6: Some("2001:db8:1::1".parse().expect("literal")),
        snat_ports: (40000, 40999),
        ..NodeConfig::default()
    }
}

/// Builds tables from frontend descriptions (one service per frontend).
pub fn tables_with(node: NodeConfig, generation: u64, fes: &[Fe]) -> Tables {
    let mut b = TablesBuilder::new(node, generation);
    for (i, fe) in fes.iter().enumerate() {
        let svc = b.add_service(ServiceInfo {
            namespace: "test".into(),
            name: format!("svc{i}"),
            port_name: String::new(),
            external_policy: "Cluster".into(),
            internal_policy: "Cluster".into(),
            ..ServiceInfo::default()
        });
        let m = 251u32;
        let n_new = fe.n_new.min(fe.backends.len());
        let maglev: Vec<u16> = if n_new == 0 {
            Vec::new()
        } else {
            (0..m).map(|s| (s as usize % n_new) as u16).collect()
        };
        let spec = FrontendSpec {
            key: FrontendKey {
                ip: ip(fe.ip),
                port: fe.port,
                proto: fe.proto,
            },
            service: svc,
            kind: fe.kind,
            backends: fe.backends.clone(),
            n_new,
            empty_action: fe.empty_action,
            snat: fe.snat,
            affinity_timeout: fe.affinity_timeout,
            affinity_group: svc,
            source_ranges: fe.source_ranges.clone(),
        };
        b.add_frontend(spec, &maglev, m)
            .expect("test tables are consistent");
    }
    b.finish()
}

/// The tables the engine fuzz target and the randomized tests use: TCP, UDP
/// and SCTP frontends in both families, a NodePort, a Service with no
/// endpoints (reject), one with no local endpoints (drop), one with session
/// affinity and one with source ranges.
pub fn fuzz_tables() -> Tables {
    let three = |p| {
        vec![
            backend("198.18.2.2", p),
            backend("198.18.3.2", p),
            backend("198.18.4.2", p),
        ]
    };
    let three6 = |p| {
        vec![
            backend("2001:db8:2::2", p),
            backend("2001:db8:3::2", p),
            backend("2001:db8:4::2", p),
        ]
    };
    let mut np = Fe::new("198.18.1.1", 30080, Proto::Tcp, three(8080));
    np.kind = FrontendKind::NodePort;
    let mut local = Fe::new("198.18.100.11", 80, Proto::Tcp, three(8080));
    local.kind = FrontendKind::LoadBalancer;
    local.n_new = 0;
    local.empty_action = EmptyAction::Drop;
    let mut aff = Fe::new("198.18.200.12", 80, Proto::Tcp, three(8080));
    aff.affinity_timeout = 10800;
    let mut ranged = Fe::new("198.18.100.12", 443, Proto::Tcp, three(8443));
    ranged.kind = FrontendKind::LoadBalancer;
    ranged.source_ranges = vec![Cidr {
        addr: ip("198.18.0.0"),
        prefix_len: 24,
    }];
    let fes = vec![
        Fe::new("198.18.200.10", 80, Proto::Tcp, three(8080)),
        Fe::new("198.18.200.10", 53, Proto::Udp, three(5353)),
        Fe::new("198.18.200.10", 3868, Proto::Sctp, three(3868)),
        Fe::new("2001:db8:200::10", 80, Proto::Tcp, three6(8080)),
        Fe::new("2001:db8:200::10", 53, Proto::Udp, three6(5353)),
        np,
        Fe::new("198.18.200.11", 80, Proto::Tcp, Vec::new()),
        local,
        aff,
        ranged,
    ];
    tables_with(node_config(), 1, &fes)
}

/// The input format of the `region` fuzz target, made from `t`: the slot
/// body's length (u32 LE), the slot body exactly as the region writer
/// encodes it, then the arena: `t`'s Maglev tables packed at the widths the
/// writer would choose and one segment block per Service, as the writer
/// lays them out. The seed corpus is this, for [`fuzz_tables`].
pub fn region_fuzz_input(t: &Tables) -> Vec<u8> {
    use crate::region::format::{
        body_len, encode_body_into, encode_node, encode_segment, pack, packed_bytes, width_for,
        BlockRef, SegRef,
    };
    let mut arena = Vec::new();
    let mut refs = Vec::new();
    let segs = t.to_segments();
    let mut totals = [0u32; 4];
    for s in &segs {
        let mut blocks = vec![BlockRef::default(); s.maglev.len()];
        for f in &s.frontends {
            let k = f.maglev_off as usize;
            if f.maglev_len == 0 || blocks[k].width != 0 {
                continue;
            }
            let width = width_for(f.n_new as usize);
            let off = arena.len();
            arena.resize(off + packed_bytes(f.maglev_len, width), 0);
            pack(s.maglev[k].entries(), width, &mut arena[off..]);
            blocks[k] = BlockRef {
                off: off as u32,
                width,
            };
        }
        let bytes = encode_segment(s, &blocks);
        refs.push(SegRef {
            off: arena.len() as u32,
            len: bytes.len() as u32,
            crc: crc32c::crc32c(&bytes),
            serial: 0,
        });
        arena.extend_from_slice(&bytes);
        for (v, n) in totals.iter_mut().zip([
            s.services.len(),
            s.frontends.len(),
            s.backends.len(),
            s.source_ranges.len(),
        ]) {
            *v += n as u32;
        }
    }
    let node = encode_node(&t.node);
    let mut body = vec![0u8; body_len(refs.len(), node.len())];
    encode_body_into(&mut body, t.generation, refs.into_iter(), &node, totals);
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&arena);
    out
}

/// One case of the `region` fuzz target: the slot body and the arena in
/// `data` (see [`region_fuzz_input`]) are validated and decoded as the
/// dataplane does when it adopts a generation (and the first bytes also as a
/// region header). Tables that pass are then used: a SYN to each of the
/// first 64 frontends goes through the engine, which reads the Maglev
/// tables in place in the (untrusted) arena. Returns the number of frames
/// forwarded, or `None` when the body was refused. Never panics.
pub fn region_fuzz_one(data: &[u8]) -> Option<u64> {
    use crate::engine::Engine;
    use crate::region::format::{decode_generation, get_u64, Layout};
    use crate::tables::MaglevArena;
    let _ = Layout::from_header(&data[..data.len().min(64)], data.len());
    let len = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let rest = &data[4..];
    let (body, arena) = rest.split_at(len.min(rest.len()));
    let generation = if body.len() >= 8 { get_u64(body, 0) } else { 0 };
    let mut t = decode_generation(
        body,
        generation,
        arena.len(),
        |off, len, buf| match off.checked_add(len).and_then(|end| arena.get(off..end)) {
            Some(b) => {
                buf.clear();
                buf.extend_from_slice(b);
                true
            }
            None => false,
        },
        None,
    )
    .ok()?;
    t.maglev_arena = Some(MaglevArena::from_vec(arena.to_vec()));
    let mut engine = Engine::standalone(256);
    let mut buf = [0u8; 2048];
    let keys: Vec<FrontendKey> = t.frontends.iter().take(64).map(|f| f.key).collect();
    for (i, key) in keys.into_iter().enumerate() {
        let n = syn_to(&mut buf, key, 1024 + i as u16);
        let _ = engine.process(1_000_000_000 + i as u64, &mut buf, n, &t);
    }
    Some(engine.stats().tx)
}

/// A TCP SYN (or a UDP datagram, for UDP/SCTP frontends: SCTP's CRC would
/// need computing) from a 198.18/2001:db8 client to `key`, with a valid
/// IPv4 header checksum. Returns its length.
fn syn_to(buf: &mut [u8; 2048], key: FrontendKey, sport: u16) -> usize {
    buf[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    let tcp = key.proto == Proto::Tcp;
    let l4_len = if tcp { 20 } else { 8 };
    let l3 = match key.ip {
        IpAddr::V4(d) => {
            buf[12..14].copy_from_slice(&[0x08, 0x00]);
            let h = &mut buf[14..34];
            h.copy_from_slice(&[0; 20]);
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            h[8] = 64;
            h[9] = if tcp { 6 } else { 17 };
            h[12..16].copy_from_slice(&[198, 18, 0, 100]);
            h[16..20].copy_from_slice(&d.octets());
            let mut sum: u32 = h
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            34
        }
        IpAddr::V6(d) => {
            buf[12..14].copy_from_slice(&[0x86, 0xdd]);
            let h = &mut buf[14..54];
            h.copy_from_slice(&[0; 40]);
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            h[6] = if tcp { 6 } else { 17 };
            h[7] = 64;
            h[8..24].copy_from_slice(
                &"2001:db8::100"
                    .parse::<std::net::Ipv6Addr>()
                    .expect("literal")
                    .octets(),
            );
            h[24..40].copy_from_slice(&d.octets());
            54
        }
    };
    let l4 = &mut buf[l3..l3 + l4_len];
    l4.fill(0);
    l4[..2].copy_from_slice(&sport.to_be_bytes());
    l4[2..4].copy_from_slice(&key.port.to_be_bytes());
    if tcp {
        l4[12] = 5 << 4;
        l4[13] = 0x02; // SYN
        l4[14..16].copy_from_slice(&[0xfa, 0xf0]);
    } else {
        l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    l3 + l4_len
}

/// Everything observable of a generation, as text to compare: node, Services,
/// backends, source ranges, each frontend with its Maglev table expanded, and
/// the frontend index. Offsets and widths of the Maglev storage are left out
/// (they are representation: shared or copied tables give the same text).
pub fn tables_content(t: &Tables) -> String {
    let mut s = format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n",
        t.node, t.services, t.backends, t.source_ranges
    );
    for f in &t.frontends {
        let mut g = f.clone();
        g.maglev_off = 0;
        g.maglev_width = 0;
        s += &format!("{g:?} {:?}\n", t.maglev_entries(f));
    }
    let mut idx: Vec<_> = t
        .frontend_index
        .iter()
        .map(|(k, v)| format!("{k:?}={v}"))
        .collect();
    idx.sort();
    s += &idx.join(",");
    s
}
