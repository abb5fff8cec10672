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
