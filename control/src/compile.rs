//! The one compile path: Kubernetes objects → one [`Tables`] generation.
//!
//! Promises:
//! - [`compile`] is a pure function of (objects, options, generation): no I/O,
//!   no clock; object order does not matter (everything is sorted by name or
//!   by address first).
//! - Frontends, endpoint selection and traffic policies follow kube-proxy
//!   (`pkg/proxy`: `servicechangetracker.go`, `endpointslicecache.go`,
//!   `topology.go` `CategorizeEndpoints`, `iptables/proxier.go`):
//!   * one frontend per Service port × address of the Service's families:
//!     every clusterIP, externalIP, load-balancer ingress IP (type
//!     LoadBalancer, not `ipMode: Proxy`) and node IP × nodePort;
//!   * a Service port's endpoints are the EndpointSlice ports with the same
//!     name and protocol (so named targetPorts resolve per slice), of the
//!     frontend's family, deduplicated by (IP, port);
//!   * new flows go to ready endpoints, else to serving-and-terminating ones;
//!     `Local` policy keeps this node's endpoints only (ClusterIP frontends
//!     obey `internalTrafficPolicy`, all others `externalTrafficPolicy`);
//!     zone hints narrow `Cluster` traffic when asked for and usable;
//!   * no usable endpoint anywhere → [`EmptyAction::Reject`]; usable
//!     endpoints elsewhere but none local under `Local` → [`EmptyAction::Drop`].
//! - Everything the objects get wrong becomes a warning; only invalid
//!   options are errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use edgeplane_dataplane::tables::{
    Backend, Cidr, EmptyAction, FrontendKey, FrontendKind, FrontendSpec, NodeConfig, ServiceInfo,
    Tables, TablesBuilder,
};
use edgeplane_packet::Proto;

use crate::maglev;
use crate::manifests::ObjectSet;
use crate::report::{FrontendNote, Report};
use crate::validate::{self, parse_cidr, parse_protocol, SliceUse};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// Node-level inputs of a compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileOptions {
    /// This node's name: endpoints with this `nodeName` are local.
    pub node_name: String,
    /// This node's addresses; NodePort frontends listen on these. Empty: the
    /// InternalIP/ExternalIP addresses of the Node object named `node_name`.
    pub node_ips: Vec<IpAddr>,
    /// SNAT source for IPv4 (default: the first IPv4 node IP).
    pub snat_v4: Option<Ipv4Addr>,
    /// SNAT source for IPv6 (default: the first IPv6 node IP).
    pub snat_v6: Option<Ipv6Addr>,
    /// Inclusive SNAT source-port range.
    pub snat_ports: (u16, u16),
    /// Seed of the flow and Maglev hashes (equal on every node).
    pub hash_seed: u64,
    /// Maglev table size M; one of [`maglev::SUPPORTED_SIZES`].
    pub maglev_m: u32,
    /// kube-proxy's `--nodeport-addresses`: NodePorts only on node IPs inside
    /// these prefixes. Empty = every node IP.
    pub nodeport_addresses: Vec<Cidr>,
    /// This node's zone for topology hints; `None` = the
    /// `topology.kubernetes.io/zone` label of the Node object `node_name`.
    pub zone: Option<String>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        let node = NodeConfig::default();
        CompileOptions {
            node_name: String::new(),
            node_ips: Vec::new(),
            snat_v4: None,
            snat_v6: None,
            snat_ports: node.snat_ports,
            hash_seed: node.hash_seed,
            maglev_m: maglev::DEFAULT_SIZE,
            nodeport_addresses: Vec::new(),
            zone: None,
        }
    }
}

/// Invalid compile options (object problems are warnings, never errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// `maglev_m` is not a supported prime.
    #[error(transparent)]
    MaglevSize(#[from] maglev::MaglevError),
    /// The SNAT port range is empty or includes port 0.
    #[error("SNAT port range {0}-{1} must satisfy 1 <= lo <= hi")]
    SnatPorts(u16, u16),
}

/// The result of a compile.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The generation for the engine.
    pub tables: Tables,
    /// What was compiled, for humans and tools (see [`crate::report`]).
    pub report: Report,
    /// Object problems and conflicts, one line each, naming the object.
    pub warnings: Vec<String>,
}

/// A traffic policy value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Policy {
    Cluster,
    Local,
}

impl Policy {
    fn parse(v: Option<&str>) -> Policy {
        match v {
            Some("Local") => Policy::Local,
            _ => Policy::Cluster,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Policy::Cluster => "Cluster",
            Policy::Local => "Local",
        }
    }
}

/// One endpoint of one Service port and family, after deduplication.
#[derive(Debug, Clone)]
struct Ep {
    ip: IpAddr,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    /// `hints.forZones` names; empty = no hints.
    zone_hints: BTreeSet<String>,
}

impl Ep {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }
    fn backend(&self) -> Backend {
        Backend {
            ip: self.ip,
            port: self.port,
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
            local: self.local,
            weight: 1,
        }
    }
}

/// The outcome of kube-proxy's endpoint categorization for one policy.
#[derive(Debug, Clone)]
struct Selection {
    /// Indices into the endpoint list of the endpoints new flows may use.
    new: Vec<usize>,
    /// Used when `new` is empty.
    empty_action: EmptyAction,
    /// The zone whose hints narrowed the selection, if any.
    topology_zone: Option<String>,
}

/// kube-proxy's `topologyModeFromHints` (same-zone part): hints are used when
/// every ready endpoint has zone hints and at least one is hinted for `zone`.
fn zone_hints_usable(eps: &[Ep], zone: &str) -> bool {
    let mut any_ready = false;
    let mut for_zone = false;
    for ep in eps.iter().filter(|e| e.ready) {
        any_ready = true;
        if ep.zone_hints.is_empty() {
            return false;
        }
        for_zone |= ep.zone_hints.contains(zone);
    }
    any_ready && for_zone && !zone.is_empty()
}

/// kube-proxy's `CategorizeEndpoints`, for one policy.
fn categorize(
    eps: &[Ep],
    policy: Policy,
    topology_requested: bool,
    zone: Option<&str>,
) -> Selection {
    let filter = |pred: &dyn Fn(&Ep) -> bool| -> Vec<usize> {
        eps.iter()
            .enumerate()
            .filter(|(_, e)| pred(e))
            .map(|(i, _)| i)
            .collect()
    };
    match policy {
        Policy::Cluster => {
            let topology_zone = match zone {
                Some(z) if topology_requested && zone_hints_usable(eps, z) => Some(z.to_string()),
                _ => None,
            };
            let mut new = filter(&|e: &Ep| {
                e.ready
                    && topology_zone
                        .as_ref()
                        .is_none_or(|z| e.zone_hints.contains(z))
            });
            if new.is_empty() {
                // No ready endpoint anywhere (topology already fell back when
                // the zone had none): use serving-and-terminating ones.
                new = filter(&|e: &Ep| e.serving_terminating());
            }
            Selection {
                new,
                empty_action: EmptyAction::Reject,
                topology_zone,
            }
        }
        Policy::Local => {
            let any_usable = eps.iter().any(|e| e.ready || e.serving_terminating());
            let mut new = filter(&|e: &Ep| e.local && e.ready);
            if new.is_empty() {
                new = filter(&|e: &Ep| e.local && e.serving_terminating());
            }
            // kube-proxy: no usable endpoint anywhere → REJECT; usable ones
            // elsewhere but none here → DROP.
            let empty_action = if any_usable {
                EmptyAction::Drop
            } else {
                EmptyAction::Reject
            };
            Selection {
                new,
                empty_action,
                topology_zone: None,
            }
        }
    }
}

fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn svc_id(svc: &Service) -> (String, String) {
    (
        svc.metadata.namespace.clone().unwrap_or_default(),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// Why a Service got no frontends.
fn skip_reason(svc: &Service) -> Option<&'static str> {
    let labels = svc.metadata.labels.as_ref();
    let spec = svc.spec.as_ref()?;
    if labels.is_some_and(|l| l.contains_key(validate::LABEL_SERVICE_PROXY_NAME)) {
        return Some("labelled service.kubernetes.io/service-proxy-name: handled by another proxy");
    }
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("type ExternalName (DNS only)");
    }
    if labels.is_some_and(|l| l.contains_key(validate::LABEL_HEADLESS)) {
        return Some("labelled service.kubernetes.io/headless");
    }
    let ips: Vec<&String> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .collect();
    if ips.iter().any(|ip| *ip == "None") {
        return Some("headless (clusterIP: None)");
    }
    if ips.iter().all(|ip| ip.is_empty()) {
        return Some("no clusterIP allocated (manifests must carry the API server's clusterIP)");
    }
    None
}

fn topology_requested(svc: &Service) -> bool {
    let ann = svc.metadata.annotations.as_ref();
    let hinted = [
        validate::ANNOTATION_TOPOLOGY_MODE,
        validate::ANNOTATION_TOPOLOGY_HINTS,
    ]
    .iter()
    .filter_map(|k| ann.and_then(|a| a.get(*k)))
    .any(|v| !v.is_empty() && v != "disabled" && v != "Disabled");
    let distribution = svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref())
        .is_some_and(|d| d == "PreferClose" || d == "PreferSameZone");
    hinted || distribution
}

/// Endpoints of (namespace, service, port name, protocol, family), deduplicated
/// by (IP, port): slices in name order, the first occurrence wins unless a
/// later one is local (as kube-proxy's `endpointslicecache` favours local).
fn endpoints_for(
    slices: &[&EndpointSlice],
    port_name: &str,
    proto: Proto,
    family: &str,
    node_name: &str,
) -> Vec<Ep> {
    let mut by_key: BTreeMap<(IpAddr, u16), Ep> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        for sp in slice.ports.iter().flatten() {
            if sp.name.as_deref().unwrap_or("") != port_name
                || sp
                    .protocol
                    .as_deref()
                    .and_then(parse_protocol)
                    .unwrap_or(Proto::Tcp)
                    != proto
            {
                continue;
            }
            let Some(port) = sp
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
            else {
                continue;
            };
            for ep in &slice.endpoints {
                let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                    continue;
                };
                if family_of(ip) != family {
                    continue;
                }
                let c = ep.conditions.as_ref();
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let local = !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name);
                let zone_hints = ep
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z.iter().map(|z| z.name.clone()).collect())
                    .unwrap_or_default();
                let e = Ep {
                    ip,
                    port,
                    ready,
                    serving,
                    terminating,
                    local,
                    zone_hints,
                };
                match by_key.get(&(ip, port)) {
                    Some(prev) if prev.local || !local => {}
                    _ => {
                        by_key.insert((ip, port), e);
                    }
                }
            }
        }
    }
    by_key.into_values().collect()
}

/// Compiles `objects` into generation `generation` of the tables.
pub fn compile(
    objects: &ObjectSet,
    opts: &CompileOptions,
    generation: u64,
) -> Result<Compiled, CompileError> {
    maglev::check_size(opts.maglev_m)?;
    if opts.snat_ports.0 == 0 || opts.snat_ports.0 > opts.snat_ports.1 {
        return Err(CompileError::SnatPorts(
            opts.snat_ports.0,
            opts.snat_ports.1,
        ));
    }
    let mut warnings = Vec::new();

    // Sanitize clones (a no-op, without warnings, for objects that came
    // through the manifest loader) and sort everything by name.
    let mut services: Vec<Service> = Vec::new();
    for s in &objects.services {
        let mut s = s.clone();
        let problems = validate::sanitize_service(&mut s);
        let (ns, name) = svc_id(&s);
        let fatal = problems.iter().any(|p| p.is_fatal());
        warnings.extend(problems.iter().map(|p| format!("Service {ns}/{name}: {p}")));
        if !fatal {
            services.push(s);
        }
    }
    services.sort_by_key(svc_id);
    let mut slices_by_service: HashMap<(String, String), Vec<EndpointSlice>> = HashMap::new();
    for s in &objects.endpoint_slices {
        let mut s = s.clone();
        let (usage, problems) = validate::sanitize_endpoint_slice(&mut s);
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        let name = s.metadata.name.clone().unwrap_or_default();
        let fatal = problems.iter().any(|p| p.is_fatal());
        warnings.extend(
            problems
                .iter()
                .map(|p| format!("EndpointSlice {ns}/{name}: {p}")),
        );
        if fatal || usage != SliceUse::Use {
            continue;
        }
        let svc = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(validate::LABEL_SERVICE_NAME))
            .cloned()
            .unwrap_or_default();
        slices_by_service.entry((ns, svc)).or_default().push(s);
    }
    for v in slices_by_service.values_mut() {
        v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    }

    // Node facts: addresses and zone, from the options or the Node object.
    let node_obj = objects.nodes.iter().find(|n| {
        !opts.node_name.is_empty() && n.metadata.name.as_deref() == Some(&*opts.node_name)
    });
    let mut node_ips = opts.node_ips.clone();
    if node_ips.is_empty() {
        if let Some(addrs) = node_obj
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref())
        {
            node_ips = addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect();
        }
    }
    let zone = opts.zone.clone().or_else(|| {
        node_obj
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(validate::LABEL_ZONE))
            .cloned()
    });
    let nodeport_ips: Vec<IpAddr> = node_ips
        .iter()
        .copied()
        .filter(|ip| {
            opts.nodeport_addresses.is_empty()
                || opts.nodeport_addresses.iter().any(|c| c.contains(*ip))
        })
        .collect();
    let node = NodeConfig {
        snat_v4: opts.snat_v4.or_else(|| {
            node_ips.iter().find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                _ => None,
            })
        }),
        snat_v6: opts.snat_v6.or_else(|| {
            node_ips.iter().find_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                _ => None,
            })
        }),
        node_ips: node_ips.clone(),
        snat_ports: opts.snat_ports,
        hash_seed: opts.hash_seed,
    };

    let mut builder = TablesBuilder::new(node, generation);
    let mut notes: Vec<FrontendNote> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let mut owners: HashMap<FrontendKey, String> = HashMap::new();
    let mut maglev_cache: HashMap<Vec<(IpAddr, u16, u32)>, Vec<u16>> = HashMap::new();
    let m = opts.maglev_m;
    let empty: Vec<EndpointSlice> = Vec::new();

    for svc in &services {
        let (ns, name) = svc_id(svc);
        let display = format!("{ns}/{name}");
        if let Some(reason) = skip_reason(svc) {
            let shown: &str = &display;
            tracing::debug!(service = shown, reason, "no frontends");
            skipped.push((display, reason.to_string()));
            continue;
        }
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        let is_lb = type_ == "LoadBalancer";
        let has_nodeports = is_lb || type_ == "NodePort";
        let etp = Policy::parse(spec.external_traffic_policy.as_deref());
        let itp = Policy::parse(spec.internal_traffic_policy.as_deref());
        let topo = topology_requested(svc);
        let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map(|t| t as u32)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        } else {
            0
        };

        // One clusterIP per family (the first of each); it decides which
        // families this Service has, exactly as kube-proxy's per-family proxiers.
        let mut cluster_ips: Vec<IpAddr> = Vec::new();
        let listed: Vec<&String> = match spec.cluster_ips.as_ref().filter(|v| !v.is_empty()) {
            Some(v) => v.iter().collect(),
            None => spec.cluster_ip.iter().collect(),
        };
        for ip in listed.iter().filter_map(|s| s.parse::<IpAddr>().ok()) {
            if !cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4()) {
                cluster_ips.push(ip);
            }
        }
        let has_family = |ip: &IpAddr| cluster_ips.iter().any(|c| c.is_ipv4() == ip.is_ipv4());
        let external_ips: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect();
        let lb_ips: Vec<IpAddr> = if is_lb {
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
                .collect()
        } else {
            Vec::new()
        };
        for ip in external_ips
            .iter()
            .chain(&lb_ips)
            .filter(|ip| !has_family(ip))
        {
            warnings.push(format!(
                "Service {display}: {ip} has no clusterIP of its family ({}); not served (as kube-proxy)",
                family_of(*ip)
            ));
        }
        let source_ranges: Vec<Cidr> = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .filter_map(|r| parse_cidr(r))
            .collect();
        let slices: Vec<&EndpointSlice> = slices_by_service
            .get(&(ns.clone(), name.clone()))
            .unwrap_or(&empty)
            .iter()
            .collect();

        for port in spec.ports.iter().flatten() {
            let proto = port
                .protocol
                .as_deref()
                .and_then(parse_protocol)
                .unwrap_or(Proto::Tcp);
            let port_name = port.name.clone().unwrap_or_default();
            let service_idx = builder.add_service(ServiceInfo {
                namespace: ns.clone(),
                name: name.clone(),
                port_name: port_name.clone(),
                external_policy: etp.name().to_string(),
                internal_policy: itp.name().to_string(),
                // Allocated (and answered) only for LoadBalancer Services
                // with externalTrafficPolicy: Local, as kube-proxy does.
                health_check_node_port: match spec.health_check_node_port {
                    Some(p) if is_lb && etp.name() == "Local" => u16::try_from(p).unwrap_or(0),
                    _ => 0,
                },
            });
            let svc_port_display = if port_name.is_empty() {
                display.clone()
            } else {
                format!("{display}:{port_name}")
            };
            let mut warned_m = false;
            for &cip in &cluster_ips {
                let family = family_of(cip);
                let eps = endpoints_for(&slices, &port_name, proto, family, &opts.node_name);
                let internal = categorize(&eps, itp, topo, zone.as_deref());
                let external = categorize(&eps, etp, topo, zone.as_deref());
                let same_family = |ip: &&IpAddr| ip.is_ipv4() == cip.is_ipv4();
                let mut fronts: Vec<(IpAddr, u16, FrontendKind)> =
                    vec![(cip, port.port as u16, FrontendKind::ClusterIp)];
                fronts.extend(
                    external_ips
                        .iter()
                        .filter(same_family)
                        .map(|ip| (*ip, port.port as u16, FrontendKind::ExternalIp)),
                );
                fronts.extend(
                    lb_ips
                        .iter()
                        .filter(same_family)
                        .map(|ip| (*ip, port.port as u16, FrontendKind::LoadBalancer)),
                );
                if let Some(np) = port.node_port.filter(|_| has_nodeports) {
                    fronts.extend(
                        nodeport_ips
                            .iter()
                            .filter(same_family)
                            .map(|ip| (*ip, np as u16, FrontendKind::NodePort)),
                    );
                }
                for (ip, fport, kind) in fronts {
                    let key = FrontendKey {
                        ip,
                        port: fport,
                        proto,
                    };
                    let (sel, policy) = if kind.is_external() {
                        (&external, etp)
                    } else {
                        (&internal, itp)
                    };
                    if let Some(owner) = owners.get(&key) {
                        warnings.push(format!(
                            "Service {svc_port_display}: {} frontend {}/{:?} is already taken by {owner}; ignored",
                            kind.name(),
                            fmt_addr(ip, fport),
                            proto
                        ));
                        continue;
                    }
                    let mut backends: Vec<Backend> =
                        sel.new.iter().map(|&i| eps[i].backend()).collect();
                    let n_new = backends.len();
                    backends.extend(
                        eps.iter()
                            .enumerate()
                            .filter(|(i, _)| !sel.new.contains(i))
                            .map(|(_, e)| e.backend()),
                    );
                    if backends.len() > u16::MAX as usize {
                        warnings.push(format!("Service {svc_port_display}: {} endpoints exceed 65535; frontend {} ignored", backends.len(), fmt_addr(ip, fport)));
                        continue;
                    }
                    let ident: Vec<(IpAddr, u16, u32)> = backends[..n_new]
                        .iter()
                        .map(|b| (b.ip, b.port, b.weight))
                        .collect();
                    if n_new > 0 && (m as u64) < 100 * n_new as u64 && !warned_m {
                        warned_m = true;
                        warnings.push(format!(
                            "Service {svc_port_display}: {n_new} backends with Maglev M={m} (< 100·N): consider a larger --maglev-size"
                        ));
                    }
                    let table = maglev_cache
                        .entry(ident.clone())
                        .or_insert_with(|| {
                            if ident.is_empty() {
                                Vec::new()
                            } else {
                                maglev::build(&ident, m, opts.hash_seed)
                            }
                        })
                        .clone();
                    let external_local = kind.is_external() && etp == Policy::Local;
                    let spec = FrontendSpec {
                        key,
                        service: service_idx,
                        kind,
                        backends,
                        n_new,
                        empty_action: sel.empty_action,
                        snat: !external_local,
                        affinity_timeout,
                        affinity_group: service_idx,
                        source_ranges: if kind == FrontendKind::LoadBalancer {
                            source_ranges
                                .iter()
                                .copied()
                                .filter(|c| c.addr.is_ipv4() == ip.is_ipv4())
                                .collect()
                        } else {
                            Vec::new()
                        },
                    };
                    match builder.add_frontend(spec, &table, m) {
                        Ok(_) => {
                            owners.insert(
                                key,
                                format!("Service {svc_port_display} ({})", kind.name()),
                            );
                            notes.push(FrontendNote {
                                policy,
                                topology_zone: sel.topology_zone.clone(),
                            });
                        }
                        Err(e) => warnings.push(format!(
                            "Service {svc_port_display}: frontend {}: {e}",
                            fmt_addr(ip, fport)
                        )),
                    }
                }
            }
        }
        if spec
            .load_balancer_source_ranges
            .as_ref()
            .is_some_and(|r| !r.is_empty())
        {
            for ip in lb_ips.iter().filter(|ip| has_family(ip)) {
                if !source_ranges
                    .iter()
                    .any(|c| c.addr.is_ipv4() == ip.is_ipv4())
                {
                    warnings.push(format!(
                        "Service {display}: no loadBalancerSourceRanges of {}'s family; it admits every source (as kube-proxy)",
                        ip
                    ));
                }
            }
        }
    }
    let tables = builder.finish();
    let report = Report::new(&tables, &notes, skipped);
    Ok(Compiled {
        tables,
        report,
        warnings,
    })
}

/// `ip:port`, with brackets for IPv6.
pub fn fmt_addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}
