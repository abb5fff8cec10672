//! Checks on single Kubernetes objects, shared by every source.
//!
//! Promises: each `sanitize_*` function inspects one object, removes the
//! parts that cannot be used (a port with an unknown protocol, an address
//! that does not parse), fills in the API server's defaults (a port without
//! `protocol` is TCP, an object without namespace is in `default`), and
//! returns one [`Problem`] per cause. A problem that makes the whole object
//! unusable is *fatal* ([`Problem::is_fatal`]); the caller then ignores the
//! object. A sanitized object yields no problems when sanitized again, so the
//! manifest loader and the compiler can both run these without reporting
//! anything twice.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use edgeplane_dataplane::tables::Cidr;
use edgeplane_packet::Proto;

/// Label naming the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label handing a Service to another proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking a Service headless.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Node label with the node's zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Topology annotations (current and pre-1.27 names).
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
pub const ANNOTATION_TOPOLOGY_HINTS: &str = "service.kubernetes.io/topology-aware-hints";

/// One reason an object (or part of it) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// `metadata.name` is missing or empty (fatal).
    #[error("metadata.name is missing")]
    MissingName,
    /// A Service or EndpointSlice port has a protocol other than TCP/UDP/SCTP; the port is ignored.
    #[error(
        "port {port}: unknown protocol {protocol:?} (expected TCP, UDP or SCTP); port ignored"
    )]
    UnknownProtocol { port: String, protocol: String },
    /// A port number outside 1..=65535; the port is ignored.
    #[error("port {port}: {field} {value} is out of range 1..=65535; port ignored")]
    PortOutOfRange {
        port: String,
        field: &'static str,
        value: i32,
    },
    /// `clusterIP`/`clusterIPs` holds something that is neither an address nor `None` (fatal).
    #[error("clusterIP {0:?} is not an IP address or \"None\"; Service ignored")]
    BadClusterIp(String),
    /// An `externalIPs` entry does not parse; that address is ignored.
    #[error("externalIPs entry {0:?} is not an IP address; ignored")]
    BadExternalIp(String),
    /// A `status.loadBalancer.ingress[].ip` does not parse; that address is ignored.
    #[error("status.loadBalancer.ingress ip {0:?} is not an IP address; ignored")]
    BadIngressIp(String),
    /// A `loadBalancerSourceRanges` entry does not parse. Fatal: dropping one
    /// range could open the load balancer wider than intended.
    #[error(
        "loadBalancerSourceRanges entry {0:?} is not a CIDR; Service ignored (failing closed)"
    )]
    BadSourceRange(String),
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` outside 1..=86400; the default (10800) is used.
    #[error(
        "sessionAffinityConfig.clientIP.timeoutSeconds {0} is out of range 1..=86400; using 10800"
    )]
    BadAffinityTimeout(i32),
    /// An EndpointSlice without the `kubernetes.io/service-name` label (fatal).
    #[error("EndpointSlice has no kubernetes.io/service-name label; ignored")]
    MissingServiceNameLabel,
    /// An EndpointSlice `addressType` other than IPv4, IPv6 or FQDN (fatal).
    #[error("unknown addressType {0:?}; EndpointSlice ignored")]
    UnknownAddressType(String),
    /// An endpoint address that does not parse or is of the wrong family; the endpoint is ignored.
    #[error("endpoint address {address:?} is not an {family} address; endpoint ignored")]
    BadEndpointAddress {
        address: String,
        family: &'static str,
    },
}

impl Problem {
    /// True when the whole object must be ignored.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Problem::MissingName
                | Problem::BadClusterIp(_)
                | Problem::BadSourceRange(_)
                | Problem::MissingServiceNameLabel
                | Problem::UnknownAddressType(_)
        )
    }
}

/// Parses a Kubernetes protocol name.
pub fn parse_protocol(p: &str) -> Option<Proto> {
    match p {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        "SCTP" => Some(Proto::Sctp),
        _ => None,
    }
}

/// Parses `a.b.c.d/n` or `x::/n` (a bare address is a host prefix).
pub fn parse_cidr(s: &str) -> Option<Cidr> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix_len = len.unwrap_or(max);
    (prefix_len <= max).then_some(Cidr { addr, prefix_len })
}

fn port_label(name: Option<&String>, port: i32) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("{n:?}"),
        _ => port.to_string(),
    }
}

/// Sanitizes a Service in place; see the module docs.
pub fn sanitize_service(svc: &mut Service) -> Vec<Problem> {
    let mut problems = Vec::new();
    if svc.metadata.name.as_deref().unwrap_or("").is_empty() {
        problems.push(Problem::MissingName);
    }
    if svc.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        svc.metadata.namespace = Some("default".into());
    }
    let Some(spec) = svc.spec.as_mut() else {
        return problems;
    };
    if let Some(ports) = spec.ports.as_mut() {
        ports.retain_mut(|p| {
            let label = port_label(p.name.as_ref(), p.port);
            let proto = p.protocol.get_or_insert_with(|| "TCP".into());
            if parse_protocol(proto).is_none() {
                problems.push(Problem::UnknownProtocol {
                    port: label,
                    protocol: proto.clone(),
                });
                return false;
            }
            if !(1..=65535).contains(&p.port) {
                problems.push(Problem::PortOutOfRange {
                    port: label,
                    field: "port",
                    value: p.port,
                });
                return false;
            }
            if let Some(np) = p.node_port {
                if !(1..=65535).contains(&np) {
                    problems.push(Problem::PortOutOfRange {
                        port: label,
                        field: "nodePort",
                        value: np,
                    });
                    return false;
                }
            }
            true
        });
    }
    let cluster_ips: Vec<&String> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .collect();
    for ip in cluster_ips {
        if !ip.is_empty() && ip != "None" && ip.parse::<IpAddr>().is_err() {
            problems.push(Problem::BadClusterIp(ip.clone()));
            break;
        }
    }
    if let Some(ext) = spec.external_ips.as_mut() {
        ext.retain(|ip| {
            let ok = ip.parse::<IpAddr>().is_ok();
            if !ok {
                problems.push(Problem::BadExternalIp(ip.clone()));
            }
            ok
        });
    }
    for r in spec.load_balancer_source_ranges.iter().flatten() {
        if parse_cidr(r).is_none() {
            problems.push(Problem::BadSourceRange(r.clone()));
        }
    }
    if let Some(t) = spec
        .session_affinity_config
        .as_mut()
        .and_then(|c| c.client_ip.as_mut())
        .and_then(|c| c.timeout_seconds.as_mut())
    {
        if !(1..=86400).contains(t) {
            problems.push(Problem::BadAffinityTimeout(*t));
            *t = 10800;
        }
    }
    if let Some(ingress) = svc
        .status
        .as_mut()
        .and_then(|s| s.load_balancer.as_mut())
        .and_then(|lb| lb.ingress.as_mut())
    {
        for ing in ingress.iter_mut() {
            if let Some(ip) = &ing.ip {
                if ip.parse::<IpAddr>().is_err() {
                    problems.push(Problem::BadIngressIp(ip.clone()));
                    ing.ip = None;
                }
            }
        }
    }
    problems
}

/// What to do with an EndpointSlice after sanitizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceUse {
    /// IPv4 or IPv6 slice: use it.
    Use,
    /// `addressType: FQDN`: not proxied (kube-proxy ignores these too).
    IgnoreFqdn,
}

/// Sanitizes an EndpointSlice in place; see the module docs.
pub fn sanitize_endpoint_slice(slice: &mut EndpointSlice) -> (SliceUse, Vec<Problem>) {
    let mut problems = Vec::new();
    if slice.metadata.name.as_deref().unwrap_or("").is_empty() {
        problems.push(Problem::MissingName);
    }
    if slice.metadata.namespace.as_deref().unwrap_or("").is_empty() {
        slice.metadata.namespace = Some("default".into());
    }
    let has_label = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .is_some_and(|v| !v.is_empty());
    let family: &'static str = match slice.address_type.as_str() {
        "IPv4" => "IPv4",
        "IPv6" => "IPv6",
        "FQDN" => return (SliceUse::IgnoreFqdn, problems),
        other => {
            problems.push(Problem::UnknownAddressType(other.to_string()));
            return (SliceUse::Use, problems);
        }
    };
    if !has_label {
        problems.push(Problem::MissingServiceNameLabel);
    }
    if let Some(ports) = slice.ports.as_mut() {
        ports.retain_mut(|p| {
            let label = port_label(p.name.as_ref(), p.port.unwrap_or(0));
            let proto = p.protocol.get_or_insert_with(|| "TCP".into());
            if parse_protocol(proto).is_none() {
                problems.push(Problem::UnknownProtocol {
                    port: label,
                    protocol: proto.clone(),
                });
                return false;
            }
            match p.port {
                // kube-proxy skips slice ports without a number, silently.
                None => true,
                Some(v) if (1..=65535).contains(&v) => true,
                Some(v) => {
                    problems.push(Problem::PortOutOfRange {
                        port: label,
                        field: "port",
                        value: v,
                    });
                    false
                }
            }
        });
    }
    slice.endpoints.retain(|ep| {
        // kube-proxy uses only the first address of an endpoint.
        let Some(first) = ep.addresses.first() else {
            return false;
        };
        let ok = match first.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => family == "IPv4",
            Ok(IpAddr::V6(_)) => family == "IPv6",
            Err(_) => false,
        };
        if !ok {
            problems.push(Problem::BadEndpointAddress {
                address: first.clone(),
                family,
            });
        }
        ok
    });
    (SliceUse::Use, problems)
}

/// Sanitizes a Node; see the module docs.
pub fn sanitize_node(node: &mut Node) -> Vec<Problem> {
    if node.metadata.name.as_deref().unwrap_or("").is_empty() {
        vec![Problem::MissingName]
    } else {
        Vec::new()
    }
}
