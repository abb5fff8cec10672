//! Shared setup for the benches: large synthetic tables and frame templates.
//! Not used on any packet path.

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
