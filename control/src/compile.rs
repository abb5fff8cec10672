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

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap, HashMap as HbMap, HashSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use edgeplane_dataplane::tables::{
    Backend, Cidr, EmptyAction, FrontendKey, FrontendKind, FrontendSpec, MaglevTable, NodeConfig,
    Segment, ServiceInfo, Tables, TablesBuilder,
};
use edgeplane_packet::Proto;

use crate::maglev;
use crate::manifests::{ObjKind, ObjectSet};
use crate::report::{FrontendFacts, FrontendNote, FrontendReport, Report};
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

/// Compiles `objects` into generation `generation` of the tables, from
/// scratch (a fresh [`Compiler`]; keep one [`Compiler`] to reuse work).
pub fn compile(
    objects: &ObjectSet,
    opts: &CompileOptions,
    generation: u64,
) -> Result<Compiled, CompileError> {
    Ok(Compiler::new(opts.clone())?.compile(objects, generation))
}

/// The identity of a Maglev table: the new-flow backends' (IP, port, weight)
/// in frontend order (M and the seed are the compiler's). The same identity
/// [`TablesBuilder`] dedups on.
type MaglevIdent = Vec<(IpAddr, u16, u32)>;

/// A built Maglev table and what the report needs of it.
#[derive(Debug)]
struct MaglevEntry {
    table: MaglevTable,
    /// Slots per new-flow backend.
    slots: Vec<u32>,
    /// The last compile that used it (eviction).
    last_used: AtomicU64,
}

/// An object's identity in the caches: its namespace and name as written
/// (before sanitizing) and, for repeats of one name, the occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObjKey {
    ns: String,
    name: String,
    dup: u32,
}

impl Hash for ObjKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        ObjRef {
            ns: &self.ns,
            name: &self.name,
            dup: self.dup,
        }
        .hash(h)
    }
}

/// Borrowed form of [`ObjKey`] for lookups without allocating.
#[derive(Hash)]
struct ObjRef<'a> {
    ns: &'a str,
    name: &'a str,
    dup: u32,
}

impl Equivalent<ObjKey> for ObjRef<'_> {
    fn equivalent(&self, k: &ObjKey) -> bool {
        self.dup == k.dup && self.ns == k.ns && self.name == k.name
    }
}

/// Equality of everything but `metadata.resourceVersion`.
trait ContentEq {
    fn content_eq(&self, other: &Self) -> bool;
}

fn meta_eq_but_rv(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    // Destructured: a field added to ObjectMeta must be considered here.
    let ObjectMeta {
        annotations,
        creation_timestamp,
        deletion_grace_period_seconds,
        deletion_timestamp,
        finalizers,
        generate_name,
        generation,
        labels,
        managed_fields,
        name,
        namespace,
        owner_references,
        resource_version: _,
        self_link,
        uid,
    } = a;
    *name == b.name
        && *namespace == b.namespace
        && *labels == b.labels
        && *annotations == b.annotations
        && *generation == b.generation
        && *uid == b.uid
        && *creation_timestamp == b.creation_timestamp
        && *deletion_grace_period_seconds == b.deletion_grace_period_seconds
        && *deletion_timestamp == b.deletion_timestamp
        && *finalizers == b.finalizers
        && *generate_name == b.generate_name
        && *managed_fields == b.managed_fields
        && *owner_references == b.owner_references
        && *self_link == b.self_link
}

impl ContentEq for Service {
    fn content_eq(&self, o: &Self) -> bool {
        let Service {
            metadata,
            spec,
            status,
        } = self;
        *spec == o.spec && *status == o.status && meta_eq_but_rv(metadata, &o.metadata)
    }
}

impl ContentEq for EndpointSlice {
    fn content_eq(&self, o: &Self) -> bool {
        let EndpointSlice {
            metadata,
            address_type,
            endpoints,
            ports,
        } = self;
        *address_type == o.address_type
            && *ports == o.ports
            && *endpoints == o.endpoints
            && meta_eq_but_rv(metadata, &o.metadata)
    }
}

/// Cached objects of one kind: a slab (stable indices within a compile)
/// indexed by [`ObjKey`], with the little that every compile checks for
/// every object kept dense beside it ([`SlotMeta`]), so that an unchanged
/// object costs a hash lookup and one cache line.
#[derive(Debug)]
struct Slab<E> {
    items: Vec<Option<E>>,
    meta: Vec<SlotMeta>,
    free: Vec<usize>,
    index: HbMap<ObjKey, usize>,
}

/// Per-slot facts read on every compile.
#[derive(Debug, Clone, Copy, Default)]
struct SlotMeta {
    /// The last compile that saw the object.
    epoch: u64,
    /// Its resourceVersion, when short enough to keep inline.
    rv: InlineRv,
    /// It had sanitizing problems (warnings to repeat).
    warns: bool,
}

/// A resourceVersion of up to 23 bytes, inline (byte 0 is the length; 0 =
/// none or too long, never equal to anything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct InlineRv([u8; 24]);

impl InlineRv {
    fn of(meta: &ObjectMeta) -> InlineRv {
        let mut b = [0u8; 24];
        if let Some(v) = meta.resource_version.as_deref() {
            if !v.is_empty() && v.len() < 24 {
                b[0] = v.len() as u8;
                b[1..=v.len()].copy_from_slice(v.as_bytes());
            }
        }
        InlineRv(b)
    }
    fn is_some(&self) -> bool {
        self.0[0] != 0
    }
}

impl<E> Default for Slab<E> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            meta: Vec::new(),
            free: Vec::new(),
            index: HbMap::new(),
        }
    }
}

impl<E> Slab<E> {
    /// The slot of the next occurrence of (ns, name) in this compile
    /// (`epoch`): an existing entry not yet seen in this compile, or a new
    /// empty slot. The bool is true for a new slot.
    fn slot(&mut self, ns: &str, name: &str, epoch: u64) -> (usize, bool) {
        let mut dup = 0;
        loop {
            match self.index.get(&ObjRef { ns, name, dup }) {
                Some(&i) if self.meta[i].epoch == epoch => dup += 1,
                Some(&i) => return (i, self.items[i].is_none()),
                None => {
                    let i = match self.free.pop() {
                        Some(i) => i,
                        None => {
                            self.items.push(None);
                            self.meta.push(SlotMeta::default());
                            self.items.len() - 1
                        }
                    };
                    self.meta[i] = SlotMeta::default();
                    self.index.insert(
                        ObjKey {
                            ns: ns.to_string(),
                            name: name.to_string(),
                            dup,
                        },
                        i,
                    );
                    return (i, true);
                }
            }
        }
    }

    /// Whether slot `i` (not new) holds `obj` unchanged: the same inline
    /// resourceVersion when `trust_rv`, else equal contents apart from the
    /// resourceVersion (nothing compiled depends on it: an object delivered
    /// again by a relist with a new one is not compiled again; its new
    /// resourceVersion is remembered).
    fn unchanged<K>(&mut self, i: usize, obj: &K, raw: impl Fn(&E) -> &K, trust_rv: bool) -> bool
    where
        K: Metadata<Ty = ObjectMeta> + ContentEq,
    {
        let rv = InlineRv::of(obj.metadata());
        if trust_rv && rv.is_some() && rv == self.meta[i].rv {
            return true;
        }
        let same = self.items[i]
            .as_ref()
            .is_some_and(|e| raw(e).content_eq(obj));
        if same {
            self.meta[i].rv = rv;
        }
        same
    }

    /// Drops the entries not seen in compile `epoch`.
    fn evict(&mut self, epoch: u64) {
        let items = &mut self.items;
        let meta = &mut self.meta;
        let free = &mut self.free;
        self.index.retain(|_, &mut i| {
            let keep = meta[i].epoch == epoch && items[i].is_some();
            if !keep {
                items[i] = None;
                meta[i] = SlotMeta::default();
                free.push(i);
            }
            keep
        });
    }

    fn get(&self, i: usize) -> &E {
        self.items[i].as_ref().expect("slot filled in this compile")
    }
}

/// A Service as last seen, sanitized, and what it compiled to.
#[derive(Debug)]
struct SvcEntry {
    raw: Service,
    version: u64,
    /// Sanitized; `None` when it had a fatal problem.
    sanitized: Option<Service>,
    /// Sanitizing problems, one line each.
    warnings: Vec<String>,
    derived: Option<Arc<Derived>>,
}

/// An EndpointSlice as last seen and sanitized.
#[derive(Debug)]
struct SliceEntry {
    raw: EndpointSlice,
    version: u64,
    /// Sanitized, with the (namespace, Service name) it belongs to; `None`
    /// when unusable.
    used: Option<((String, String), EndpointSlice)>,
    warnings: Vec<String>,
}

impl SvcEntry {
    /// `s` sanitized, its problems as warning lines, not derived yet.
    fn new(s: &Service, version: u64) -> SvcEntry {
        let mut c = s.clone();
        let problems = validate::sanitize_service(&mut c);
        let (ns, name) = svc_id(&c);
        let fatal = problems.iter().any(|p| p.is_fatal());
        SvcEntry {
            raw: s.clone(),
            version,
            sanitized: (!fatal).then_some(c),
            warnings: problems
                .iter()
                .map(|p| format!("Service {ns}/{name}: {p}"))
                .collect(),
            derived: None,
        }
    }
}

impl SliceEntry {
    /// `s` sanitized, with the Service it belongs to when usable, and its
    /// problems as warning lines.
    fn new(s: &EndpointSlice, version: u64) -> SliceEntry {
        let mut c = s.clone();
        let (usage, problems) = validate::sanitize_endpoint_slice(&mut c);
        let ns = c.metadata.namespace.clone().unwrap_or_default();
        let name = c.metadata.name.clone().unwrap_or_default();
        let fatal = problems.iter().any(|p| p.is_fatal());
        let svc = c
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(validate::LABEL_SERVICE_NAME))
            .cloned()
            .unwrap_or_default();
        SliceEntry {
            raw: s.clone(),
            version,
            warnings: problems
                .iter()
                .map(|p| format!("EndpointSlice {ns}/{name}: {p}"))
                .collect(),
            used: (!fatal && usage == SliceUse::Use).then_some(((ns, svc), c)),
        }
    }
}

/// Node-level facts frontends depend on (from the options and the Node).
#[derive(Debug, Clone, PartialEq)]
struct NodeFacts {
    node: NodeConfig,
    nodeport_ips: Vec<IpAddr>,
    zone: Option<String>,
}

/// What one Service compiles to, independent of every other Service: the
/// steps to replay, in order, into a generation (frontend conflicts between
/// Services are resolved at replay).
#[derive(Debug)]
struct Derived {
    /// The inputs: the Service's version, its slices' versions in name order
    /// and the node facts' version.
    svc_version: u64,
    slice_versions: Vec<u64>,
    facts_version: u64,
    skipped: Option<(String, String)>,
    steps: Vec<Step>,
    /// What the Service contributes to a generation when no other Service
    /// takes one of its frontends: its segment.
    segment: Arc<Segment>,
    /// The distinct frontend keys of that segment.
    keys: Vec<FrontendKey>,
}

#[derive(Debug)]
enum Step {
    Warn(String),
    /// A Service port: `add_service`.
    Port(ServiceInfo),
    Front(Box<Front>),
}

/// One frontend candidate of a Service port.
#[derive(Debug)]
struct Front {
    /// `service` and `affinity_group` are set at replay.
    spec: FrontendSpec,
    /// `namespace/name[:port]`.
    display: String,
    /// The "M < 100·N" warning, when it applies.
    m_warning: Option<String>,
    maglev: Option<Arc<MaglevEntry>>,
    report: Arc<FrontendReport>,
}

/// A Service's frontends before their Maglev tables are looked up.
struct Draft {
    svc_version: u64,
    slice_versions: Vec<u64>,
    skipped: Option<(String, String)>,
    steps: Vec<DraftStep>,
}

enum DraftStep {
    Warn(String),
    Port(ServiceInfo),
    Front(Box<DraftFront>),
}

struct DraftFront {
    spec: FrontendSpec,
    display: String,
    m_warning: Option<String>,
    note: FrontendNote,
    ident: MaglevIdent,
}

/// A compiler that remembers its previous compile and redoes only what
/// changed: objects equal to last time are not sanitized again, a Service
/// whose object, EndpointSlices and node facts are unchanged is not derived
/// again, and a Maglev table whose backend run is unchanged is not rebuilt
/// (tables not used by the latest compile are dropped). Missing tables are
/// built on all cores.
///
/// Promise: `compile` returns exactly what [`compile`] (a fresh compiler)
/// returns for the same objects, options and generation — tables, report
/// and warnings (`control/tests/incremental.rs` checks this on random
/// sequences of edits). Successive generations share the `Arc`s of
/// unchanged Maglev tables ([`MaglevTable::ptr_eq`]).
pub struct Compiler {
    opts: CompileOptions,
    epoch: u64,
    next_version: u64,
    services: Slab<SvcEntry>,
    slices: Slab<SliceEntry>,
    facts: Option<(NodeFacts, u64)>,
    maglev: HashMap<MaglevIdent, Arc<MaglevEntry>>,
    threads: usize,
    trust_resource_version: bool,
    /// Services in compile order as of the last compile, while still valid.
    order: Option<Vec<usize>>,
    /// Sizes of the last generation (to reserve the next one's vectors).
    sizes: (usize, usize, usize),
    /// The journal position (lineage, seq) of the objects last compiled,
    /// when the next compile may follow the journal.
    seen: Option<(u64, u64)>,
    /// Usable slices by Service (namespace, name): slab indices in name
    /// order, as of the last compile.
    groups: HashMap<(String, String), Vec<usize>>,
    /// The last generation as segments, one per Service in compile order.
    segments: Vec<Arc<Segment>>,
    /// Position in `segments` by Service slab index (`usize::MAX`: none).
    seg_pos: Vec<usize>,
    /// How many Services claim each frontend key.
    claims: HashMap<FrontendKey, u32>,
    /// Service slab index by (namespace, name) as sanitized (the key slices
    /// name their Service by).
    svc_by_key: HashMap<(String, String), usize>,
    /// The node settings of the last generation.
    node: NodeConfig,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("opts", &self.opts)
            .field("epoch", &self.epoch)
            .field("services", &self.services.index.len())
            .field("endpoint_slices", &self.slices.index.len())
            .field("maglev_tables", &self.maglev.len())
            .finish()
    }
}

/// Statistics of the last compile, for logs and benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Services derived again (changed, or their slices or the node changed).
    pub services_derived: usize,
    /// Services reused as they were.
    pub services_reused: usize,
    /// Maglev tables built.
    pub maglev_built: usize,
    /// Maglev tables in the cache after eviction.
    pub maglev_cached: usize,
}

impl Compiler {
    /// A compiler for these options (checked here, once).
    pub fn new(opts: CompileOptions) -> Result<Compiler, CompileError> {
        maglev::check_size(opts.maglev_m)?;
        if opts.snat_ports.0 == 0 || opts.snat_ports.0 > opts.snat_ports.1 {
            return Err(CompileError::SnatPorts(
                opts.snat_ports.0,
                opts.snat_ports.1,
            ));
        }
        Ok(Compiler {
            opts,
            epoch: 0,
            next_version: 0,
            services: Slab::default(),
            slices: Slab::default(),
            facts: None,
            maglev: HashMap::new(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            trust_resource_version: false,
            order: None,
            sizes: (0, 0, 0),
            seen: None,
            groups: HashMap::new(),
            segments: Vec::new(),
            seg_pos: Vec::new(),
            claims: HashMap::new(),
            svc_by_key: HashMap::new(),
            node: NodeConfig::default(),
        })
    }

    /// The options every compile uses.
    pub fn options(&self) -> &CompileOptions {
        &self.opts
    }

    /// Builds Maglev tables on at most `n` threads (default: every core).
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    /// Takes an object whose `metadata.resourceVersion` equals that of the
    /// object last seen under its name as unchanged, without comparing
    /// contents. Right for objects read from the Kubernetes API, where the
    /// resourceVersion is etcd's revision of the write (no two writes, even
    /// of different objects, share one); wrong for hand-made manifests (an
    /// edit may keep a copied resourceVersion), hence off by default: then
    /// every object is compared in full.
    pub fn trust_resource_version(&mut self, on: bool) {
        self.trust_resource_version = on;
    }

    /// Compiles `objects` into generation `generation`, reusing what the
    /// previous call computed for unchanged objects.
    pub fn compile(&mut self, objects: &ObjectSet, generation: u64) -> Compiled {
        self.compile_with_stats(objects, generation).0
    }

    /// [`Compiler::compile`], also saying how much was reused.
    pub fn compile_with_stats(
        &mut self,
        objects: &ObjectSet,
        generation: u64,
    ) -> (Compiled, CompileStats) {
        self.epoch += 1;
        let epoch = self.epoch;
        let mut stats = CompileStats::default();
        let mut warnings = Vec::new();
        let trust = self.trust_resource_version;
        // The cached order stays valid while the set of Services and their
        // usability do not change.
        let mut order_valid = self.order.is_some();

        // Sanitize what changed (a no-op, without warnings, for objects that
        // came through the manifest loader), in input order.
        let mut svc_slots: Vec<usize> = Vec::with_capacity(objects.services.len());
        for s in &objects.services {
            let (i, new) = self.services.slot(
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.metadata.name.as_deref().unwrap_or(""),
                epoch,
            );
            if new || !self.services.unchanged(i, s, |e| &e.raw, trust) {
                self.next_version += 1;
                let e = SvcEntry::new(s, self.next_version);
                let slot = &mut self.services.items[i];
                // A Service appeared or changed usability.
                if slot
                    .as_ref()
                    .is_none_or(|old| old.sanitized.is_some() != e.sanitized.is_some())
                {
                    order_valid = false;
                }
                self.services.meta[i].rv = InlineRv::of(&s.metadata);
                self.services.meta[i].warns = !e.warnings.is_empty();
                *slot = Some(e);
            }
            self.services.meta[i].epoch = epoch;
            if self.services.meta[i].warns {
                warnings.extend(self.services.get(i).warnings.iter().cloned());
            }
            svc_slots.push(i);
        }
        let mut slice_slots: Vec<usize> = Vec::with_capacity(objects.endpoint_slices.len());
        for s in &objects.endpoint_slices {
            let (i, new) = self.slices.slot(
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.metadata.name.as_deref().unwrap_or(""),
                epoch,
            );
            if new || !self.slices.unchanged(i, s, |e| &e.raw, trust) {
                self.next_version += 1;
                let e = SliceEntry::new(s, self.next_version);
                self.slices.meta[i].rv = InlineRv::of(&s.metadata);
                self.slices.meta[i].warns = !e.warnings.is_empty();
                self.slices.items[i] = Some(e);
            }
            self.slices.meta[i].epoch = epoch;
            if self.slices.meta[i].warns {
                warnings.extend(self.slices.get(i).warnings.iter().cloned());
            }
            slice_slots.push(i);
        }

        // Slices by Service, in name order (input order among equal names).
        let slices = &self.slices;
        let mut by_service: HashMap<(&str, &str), Vec<usize>> =
            HashMap::with_capacity(self.services.index.len());
        for &i in &slice_slots {
            if let Some(((ns, svc), _)) = &slices.get(i).used {
                by_service.entry((ns, svc)).or_default().push(i);
            }
        }
        let slice_name = |i: usize| {
            slices
                .get(i)
                .used
                .as_ref()
                .and_then(|(_, s)| s.metadata.name.as_deref())
        };
        for v in by_service.values_mut() {
            if v.len() > 1 {
                v.sort_by(|&a, &b| slice_name(a).cmp(&slice_name(b)));
            }
        }

        // Services by (namespace, name), input order among equal names. The
        // last order is reused when no Service appeared, disappeared or
        // changed usability, and no two share a name (then input order,
        // which may have changed, breaks the tie).
        let services = &mut self.services;
        if svc_slots.len() != services.index.len() {
            order_valid = false; // some will be evicted
        }
        let order: Vec<usize> = match self.order.take() {
            Some(o) if order_valid => o,
            _ => {
                let mut order: Vec<usize> = svc_slots
                    .iter()
                    .copied()
                    .filter(|&i| services.get(i).sanitized.is_some())
                    .collect();
                let id = |i: usize| {
                    let m = &services
                        .get(i)
                        .sanitized
                        .as_ref()
                        .expect("filtered")
                        .metadata;
                    (
                        m.namespace.as_deref().unwrap_or(""),
                        m.name.as_deref().unwrap_or(""),
                    )
                };
                order.sort_by(|&a, &b| id(a).cmp(&id(b)));
                order_valid = order.windows(2).all(|w| id(w[0]) != id(w[1]));
                order
            }
        };

        // Node facts: addresses and zone, from the options or the Node object.
        let facts = node_facts(objects, &self.opts);
        let facts_version = match &self.facts {
            Some((f, v)) if *f == facts => *v,
            _ => {
                self.next_version += 1;
                self.facts = Some((facts.clone(), self.next_version));
                self.next_version
            }
        };

        // Derive the Services whose inputs changed.
        let m = self.opts.maglev_m;
        let empty: Vec<usize> = Vec::new();
        // (slot, Service, its slices, their versions, its version)
        type Todo<'a> = (usize, &'a Service, Vec<&'a EndpointSlice>, Vec<u64>, u64);
        let mut todo: Vec<Todo<'_>> = Vec::new();
        for &i in &order {
            let e = services.get(i);
            let svc = e.sanitized.as_ref().expect("filtered");
            let group = by_service
                .get(&(
                    svc.metadata.namespace.as_deref().unwrap_or(""),
                    svc.metadata.name.as_deref().unwrap_or(""),
                ))
                .unwrap_or(&empty);
            let fresh = e.derived.as_ref().is_some_and(|d| {
                d.svc_version == e.version
                    && d.facts_version == facts_version
                    && d.slice_versions.len() == group.len()
                    && d.slice_versions
                        .iter()
                        .zip(group)
                        .all(|(&v, &j)| slices.get(j).version == v)
            });
            if fresh {
                stats.services_reused += 1;
                continue;
            }
            stats.services_derived += 1;
            let slice_refs: Vec<&EndpointSlice> = group
                .iter()
                .filter_map(|&j| slices.get(j).used.as_ref().map(|(_, s)| s))
                .collect();
            let versions = group.iter().map(|&j| slices.get(j).version).collect();
            todo.push((i, svc, slice_refs, versions, e.version));
        }
        let opts = &self.opts;
        let drafts: Vec<(usize, Draft)> = par_map(&todo, self.threads, |(i, svc, sl, vs, v)| {
            let mut draft = derive(svc, sl, &facts, opts);
            draft.svc_version = *v;
            draft.slice_versions = vs.clone();
            (*i, draft)
        });
        drop(todo);

        // Build the Maglev tables nobody has yet, on every core.
        stats.maglev_built = build_missing(
            &mut self.maglev,
            &drafts,
            m,
            self.opts.hash_seed,
            self.threads,
        );

        // Finish the drafts: attach tables, build the frontends' reports.
        for (i, d) in drafts {
            let derived = finish(d, facts_version, &self.maglev, m);
            if let Some(e) = services.items[i].as_mut() {
                e.derived = Some(Arc::new(derived));
            }
        }

        // Replay every Service, in order, into the generation.
        let mut builder = TablesBuilder::new(facts.node.clone(), generation);
        builder.reserve(self.sizes.0, self.sizes.1, self.sizes.2);
        let mut reports: Vec<Arc<FrontendReport>> = Vec::new();
        let mut skipped: Vec<(String, String)> = Vec::new();
        let services_ro: &Slab<SvcEntry> = services;
        // The frontend each added frontend came from, by frontend index.
        let mut owners: Vec<&Front> = Vec::with_capacity(self.sizes.1);
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(order.len());
        let mut seg_pos = vec![usize::MAX; services_ro.items.len()];
        let mut claims: HashMap<FrontendKey, u32> = HashMap::with_capacity(self.sizes.1);
        for &si in &order {
            let Some(d) = services_ro.get(si).derived.as_deref() else {
                continue;
            };
            if let Some(s) = &d.skipped {
                skipped.push(s.clone());
            }
            let mut service_idx = 0;
            let mut warned_m = false;
            // Frontends of this Service start here; keys taken below this
            // index are another Service's.
            let first_frontend = owners.len();
            let mut taken: HashSet<FrontendKey> = HashSet::new();
            for k in &d.keys {
                *claims.entry(*k).or_insert(0) += 1;
            }
            for st in &d.steps {
                match st {
                    Step::Warn(w) => warnings.push(w.clone()),
                    Step::Port(info) => {
                        service_idx = builder.add_service(info.clone());
                        warned_m = false;
                    }
                    Step::Front(f) => {
                        let key = f.spec.key;
                        if let Some(mg) = &f.maglev {
                            mg.last_used.store(epoch, Ordering::Relaxed);
                        }
                        if let Some((at, owner)) = builder
                            .frontend_index_of(&key)
                            .and_then(|i| owners.get(i as usize).map(|o| (i as usize, o)))
                        {
                            if at < first_frontend {
                                taken.insert(key);
                            }
                            warnings.push(format!(
                                "Service {}: {} frontend {}/{:?} is already taken by Service {} ({}); ignored",
                                f.display,
                                f.spec.kind.name(),
                                fmt_addr(key.ip, key.port),
                                key.proto,
                                owner.display,
                                owner.spec.kind.name()
                            ));
                            continue;
                        }
                        if f.spec.backends.len() > u16::MAX as usize {
                            warnings.push(format!(
                                "Service {}: {} endpoints exceed 65535; frontend {} ignored",
                                f.display,
                                f.spec.backends.len(),
                                fmt_addr(key.ip, key.port)
                            ));
                            continue;
                        }
                        if let Some(w) = &f.m_warning {
                            if !warned_m {
                                warned_m = true;
                                warnings.push(w.clone());
                            }
                        }
                        match builder.add_frontend_shared(
                            &f.spec,
                            service_idx,
                            service_idx,
                            f.maglev.as_ref().map(|e| &e.table),
                            m,
                        ) {
                            Ok(_) => {
                                owners.push(f);
                                reports.push(f.report.clone());
                            }
                            Err(e) => warnings.push(format!(
                                "Service {}: frontend {}: {e}",
                                f.display,
                                fmt_addr(key.ip, key.port)
                            )),
                        }
                    }
                }
            }
            seg_pos[si] = segments.len();
            segments.push(if taken.is_empty() {
                d.segment.clone()
            } else {
                Arc::new(build_segment(&d.steps, m, &taken).0)
            });
        }
        drop(owners);
        self.groups = by_service
            .iter()
            .map(|(&(ns, name), v)| ((ns.to_string(), name.to_string()), v.clone()))
            .collect();
        drop(by_service);
        let tables = builder.finish();
        self.sizes = (
            tables.services.len(),
            tables.frontends.len(),
            tables.backends.len(),
        );
        self.svc_by_key = order
            .iter()
            .filter_map(|&i| {
                let m = &services_ro.get(i).sanitized.as_ref()?.metadata;
                Some((
                    (
                        m.namespace.clone().unwrap_or_default(),
                        m.name.clone().unwrap_or_default(),
                    ),
                    i,
                ))
            })
            .collect();
        self.segments = segments;
        self.seg_pos = seg_pos;
        self.claims = claims;
        self.node = tables.node.clone();
        self.seen = (order_valid && objects.journal.lineage != 0)
            .then_some((objects.journal.lineage, objects.journal.seq));
        if order_valid {
            self.order = Some(order);
        }
        let report = Report::from_parts(tables.generation, reports, skipped);

        // Forget what this compile did not use.
        if svc_slots.len() != self.services.index.len() {
            self.services.evict(epoch);
        }
        if slice_slots.len() != self.slices.index.len() {
            self.slices.evict(epoch);
        }
        self.maglev
            .retain(|_, e| e.last_used.load(Ordering::Relaxed) == epoch);
        stats.maglev_cached = self.maglev.len();
        (
            Compiled {
                tables,
                report,
                warnings,
            },
            stats,
        )
    }
}

/// What [`Compiler::compile_segments`] did.
#[derive(Debug, Clone, Default)]
pub struct SegmentsCompiled {
    pub stats: CompileStats,
    /// True when the objects' journal was followed (only the changed
    /// objects visited); false when every object was compiled again.
    pub incremental: bool,
    /// Warnings about the objects and Services compiled again (all
    /// warnings, after a full compile).
    pub warnings: Vec<String>,
}

/// One object to sanitize again, from the journal.
enum JournalStep<'a> {
    Service(usize, &'a Service),
    Slice(&'a str, &'a str, Option<&'a EndpointSlice>),
}

impl Compiler {
    /// Compiles `objects` into generation `generation` as segments, one per
    /// Service ([`segments`](Self::segments)): the form the region writer
    /// publishes without looking at unchanged Services. When `objects`
    /// carries a journal (the Kubernetes source's snapshots) that continues
    /// the one of the previous compile, only the journaled objects are
    /// visited and only the Services they touch derived again: the cost is
    /// proportional to the change, not to the number of Services. Otherwise
    /// (manifests, a relist, a Node change, a Service added, removed or
    /// made (un)usable, a frontend two Services claim) it is a full
    /// [`compile_with_stats`](Self::compile_with_stats).
    ///
    /// Promise: [`Tables::from_segments`] of the result equals what
    /// [`compile`] returns for the same objects (`control/tests/incremental.rs`).
    pub fn compile_segments(&mut self, objects: &ObjectSet, generation: u64) -> SegmentsCompiled {
        if let Some(r) = self.follow_journal(objects) {
            return r;
        }
        let (c, stats) = self.compile_with_stats(objects, generation);
        SegmentsCompiled {
            stats,
            incremental: false,
            warnings: c.warnings,
        }
    }

    /// The last compiled generation: the node settings and one segment per
    /// Service in order (`Tables::from_segments` makes it a [`Tables`]).
    pub fn segments(&self) -> (&NodeConfig, &[Arc<Segment>]) {
        (&self.node, &self.segments)
    }

    /// The journal path of [`compile_segments`](Self::compile_segments);
    /// `None` when it does not apply (then nothing was changed).
    fn follow_journal(&mut self, objects: &ObjectSet) -> Option<SegmentsCompiled> {
        let (lineage, seq) = self.seen?;
        let j = &objects.journal;
        if j.lineage != lineage || self.order.is_none() {
            return None;
        }
        // The last entry of each key says where the object is now.
        let mut last: HashMap<(ObjKind, &str, &str), Option<usize>> = HashMap::new();
        for e in j.since(seq)? {
            if e.kind == ObjKind::Node {
                return None;
            }
            last.insert((e.kind, &e.namespace, &e.name), e.pos);
        }
        let trust = self.trust_resource_version;
        // 1. Check: every changed object is where the journal says, no
        //    Service appears, disappears or changes usability.
        let mut steps: Vec<JournalStep<'_>> = Vec::with_capacity(last.len());
        for (&(kind, ns, name), &pos) in &last {
            match kind {
                ObjKind::Service => {
                    let s = objects.services.get(pos?)?;
                    if s.metadata.namespace.as_deref().unwrap_or("") != ns
                        || s.metadata.name.as_deref().unwrap_or("") != name
                    {
                        return None;
                    }
                    let &i = self.services.index.get(&ObjRef { ns, name, dup: 0 })?;
                    if self.services.unchanged(i, s, |e| &e.raw, trust) {
                        continue;
                    }
                    let mut c = s.clone();
                    let fatal = validate::sanitize_service(&mut c)
                        .iter()
                        .any(|p| p.is_fatal());
                    if self.services.get(i).sanitized.is_some() == fatal {
                        return None;
                    }
                    steps.push(JournalStep::Service(i, s));
                }
                ObjKind::EndpointSlice => {
                    let s = match pos {
                        Some(p) => {
                            let s = objects.endpoint_slices.get(p)?;
                            if s.metadata.namespace.as_deref().unwrap_or("") != ns
                                || s.metadata.name.as_deref().unwrap_or("") != name
                            {
                                return None;
                            }
                            Some(s)
                        }
                        None => None,
                    };
                    steps.push(JournalStep::Slice(ns, name, s));
                }
                ObjKind::Node => return None,
            }
        }
        // 2. Apply: sanitize what changed, regroup slices, note the Services
        //    to derive again.
        let epoch = self.epoch;
        let mut warnings = Vec::new();
        // Sorted: Services are derived in name order, the same on every run.
        let mut dirty: std::collections::BTreeSet<(String, String)> = Default::default();
        for st in steps {
            match st {
                JournalStep::Service(i, s) => {
                    // Usable or not, as before (step 1 checked it).
                    self.next_version += 1;
                    let mut e = SvcEntry::new(s, self.next_version);
                    self.services.meta[i].rv = InlineRv::of(&s.metadata);
                    self.services.meta[i].warns = !e.warnings.is_empty();
                    self.services.meta[i].epoch = epoch;
                    warnings.extend(e.warnings.iter().cloned());
                    e.derived = self.services.items[i]
                        .as_mut()
                        .and_then(|old| old.derived.take());
                    let key = e.sanitized.as_ref().map(svc_id);
                    self.services.items[i] = Some(e);
                    if let Some(key) = key {
                        dirty.insert(key);
                    }
                }
                JournalStep::Slice(ns, name, obj) => {
                    let found = self.slices.index.get(&ObjRef { ns, name, dup: 0 }).copied();
                    if let (Some(i), Some(o)) = (found, obj) {
                        if self.slices.unchanged(i, o, |e| &e.raw, trust) {
                            continue;
                        }
                    }
                    // Out of its old group.
                    if let Some(i) = found {
                        if let Some((key, _)) = &self.slices.get(i).used {
                            if let Some(g) = self.groups.get_mut(key) {
                                g.retain(|&x| x != i);
                            }
                            dirty.insert(key.clone());
                        }
                    }
                    let Some(o) = obj else {
                        if let Some(i) = found {
                            self.slices.items[i] = None;
                            self.slices.meta[i] = SlotMeta::default();
                            self.slices.free.push(i);
                            self.slices.index.remove(&ObjRef { ns, name, dup: 0 });
                        }
                        continue;
                    };
                    let i = match found {
                        Some(i) => i,
                        None => {
                            let (i, _) = self.slices.slot(ns, name, epoch);
                            i
                        }
                    };
                    self.next_version += 1;
                    let e = SliceEntry::new(o, self.next_version);
                    self.slices.meta[i].rv = InlineRv::of(&o.metadata);
                    self.slices.meta[i].warns = !e.warnings.is_empty();
                    self.slices.meta[i].epoch = epoch;
                    warnings.extend(e.warnings.iter().cloned());
                    if let Some((key, _)) = &e.used {
                        self.groups.entry(key.clone()).or_default().push(i);
                        dirty.insert(key.clone());
                    }
                    self.slices.items[i] = Some(e);
                    // Name order within the group (input order among equal
                    // names cannot arise: one object per name).
                    if let Some((key, _)) =
                        &self.slices.items[i].as_ref().and_then(|e| e.used.as_ref())
                    {
                        let slices = &self.slices;
                        if let Some(g) = self.groups.get_mut(key) {
                            g.sort_by(|&a, &b| {
                                let n = |x: usize| {
                                    slices
                                        .get(x)
                                        .used
                                        .as_ref()
                                        .and_then(|(_, s)| s.metadata.name.as_deref())
                                };
                                n(a).cmp(&n(b))
                            });
                        }
                    }
                }
            }
        }
        // 3. Derive the dirty Services again.
        let facts_version = self.facts.as_ref().map(|(_, v)| *v)?;
        let facts = self.facts.as_ref().map(|(f, _)| f.clone())?;
        let empty: Vec<usize> = Vec::new();
        let mut stats = CompileStats::default();
        let mut todo: Vec<(usize, Draft)> = Vec::new();
        for key in &dirty {
            let Some(&i) = self.svc_by_key.get(key) else {
                continue; // slices of a Service we do not have
            };
            let e = self.services.get(i);
            let Some(svc) = e.sanitized.as_ref() else {
                continue;
            };
            let group = self.groups.get(key).unwrap_or(&empty);
            let slices: Vec<&EndpointSlice> = group
                .iter()
                .filter_map(|&j| self.slices.get(j).used.as_ref().map(|(_, s)| s))
                .collect();
            let mut draft = derive(svc, &slices, &facts, &self.opts);
            draft.svc_version = e.version;
            draft.slice_versions = group.iter().map(|&j| self.slices.get(j).version).collect();
            todo.push((i, draft));
        }
        stats.services_derived = todo.len();
        stats.services_reused = self.segments.len().saturating_sub(todo.len());
        let m = self.opts.maglev_m;
        stats.maglev_built = build_missing(
            &mut self.maglev,
            &todo,
            m,
            self.opts.hash_seed,
            self.threads,
        );
        let mut contested = false;
        let mut replaced: Vec<Arc<Derived>> = Vec::with_capacity(todo.len());
        for (i, d) in todo {
            let derived = finish(d, facts_version, &self.maglev, m);
            for st in &derived.steps {
                match st {
                    Step::Warn(w) => warnings.push(w.clone()),
                    Step::Front(f) => {
                        if let Some(w) = &f.m_warning {
                            if !warnings.contains(w) {
                                warnings.push(w.clone());
                            }
                        }
                    }
                    Step::Port(_) => {}
                }
            }
            let Some(entry) = self.services.items[i].as_mut() else {
                continue;
            };
            let old = entry.derived.replace(Arc::new(derived));
            let new = entry.derived.as_ref().expect("just set");
            // Frontend keys another Service also claims: the replay decides
            // who gets them, so redo the whole generation.
            if let Some(old) = &old {
                for k in &old.keys {
                    if let Some(c) = self.claims.get_mut(k) {
                        contested |= *c >= 2;
                        *c -= 1;
                        if *c == 0 {
                            self.claims.remove(k);
                        }
                    }
                }
            }
            for k in &new.keys {
                let c = self.claims.entry(*k).or_insert(0);
                *c += 1;
                contested |= *c >= 2;
            }
            match self.seg_pos.get(i) {
                Some(&p) if p < self.segments.len() => self.segments[p] = new.segment.clone(),
                _ => contested = true,
            }
            replaced.extend(old);
        }
        // Maglev tables only the old derivations used leave the cache. Only
        // now, once every new derivation holds its tables: an old table may
        // be one a Service derived later in this loop picks up (the same
        // backends moved from one Service to another).
        for old in replaced {
            if let Ok(old) = Arc::try_unwrap(old) {
                for st in old.steps {
                    if let Step::Front(f) = st {
                        if let Some(e) = f.maglev {
                            if Arc::strong_count(&e) == 2 {
                                let n_new = f.spec.n_new.min(f.spec.backends.len());
                                let ident: MaglevIdent = f.spec.backends[..n_new]
                                    .iter()
                                    .map(|b| (b.ip, b.port, b.weight))
                                    .collect();
                                self.maglev.remove(&ident);
                            }
                        }
                    }
                }
            }
        }
        stats.maglev_cached = self.maglev.len();
        if contested {
            // Not the journal's fault: the state is consistent, the
            // replay is what must run.
            self.seen = None;
            return None;
        }
        self.seen = Some((lineage, j.seq));
        Some(SegmentsCompiled {
            stats,
            incremental: true,
            warnings,
        })
    }
}

/// Builds (on `threads` cores) the Maglev tables the drafts need that the
/// cache lacks, and adds them to it; returns how many were built.
fn build_missing(
    cache: &mut HashMap<MaglevIdent, Arc<MaglevEntry>>,
    drafts: &[(usize, Draft)],
    m: u32,
    seed: u64,
    threads: usize,
) -> usize {
    let mut missing: Vec<&MaglevIdent> = Vec::new();
    let mut seen: HashSet<&MaglevIdent> = HashSet::new();
    for (_, d) in drafts {
        for st in &d.steps {
            if let DraftStep::Front(f) = st {
                if !f.ident.is_empty() && !cache.contains_key(&f.ident) && seen.insert(&f.ident) {
                    missing.push(&f.ident);
                }
            }
        }
    }
    let built = build_tables(&missing, m, seed, threads);
    let n = built.len();
    for (ident, entry) in missing.into_iter().zip(built) {
        cache.insert(ident.clone(), Arc::new(entry));
    }
    n
}

/// Attaches Maglev tables (from the cache, which holds every table the draft
/// needs) and builds the frontends' reports.
fn finish(
    d: Draft,
    facts_version: u64,
    cache: &HashMap<MaglevIdent, Arc<MaglevEntry>>,
    m: u32,
) -> Derived {
    let steps: Vec<Step> = d
        .steps
        .into_iter()
        .map(|st| match st {
            DraftStep::Warn(w) => Step::Warn(w),
            DraftStep::Port(p) => Step::Port(p),
            DraftStep::Front(f) => {
                let maglev = (!f.ident.is_empty())
                    .then(|| cache.get(&f.ident).cloned())
                    .flatten();
                let n_new = f.spec.n_new.min(f.spec.backends.len());
                let report = FrontendReport::new(
                    f.display.clone(),
                    FrontendFacts {
                        key: f.spec.key,
                        kind: f.spec.kind,
                        note: Some(&f.note),
                        affinity_timeout: f.spec.affinity_timeout,
                        snat: f.spec.snat,
                        empty_action: f.spec.empty_action,
                        source_ranges: &f.spec.source_ranges,
                        maglev_size: if n_new == 0 { 0 } else { m },
                        backends: &f.spec.backends,
                        n_new,
                        slots: maglev.as_ref().map(|e| &e.slots[..]).unwrap_or(&[]),
                    },
                );
                Step::Front(Box::new(Front {
                    spec: f.spec,
                    display: f.display,
                    m_warning: f.m_warning,
                    maglev,
                    report: Arc::new(report),
                }))
            }
        })
        .collect();
    let (segment, keys) = build_segment(&steps, m, &HashSet::new());
    Derived {
        svc_version: d.svc_version,
        slice_versions: d.slice_versions,
        facts_version,
        skipped: d.skipped,
        steps,
        segment: Arc::new(segment),
        keys,
    }
}

/// A Service's segment from its steps, as the replay adds them, leaving out
/// the frontends whose keys are in `taken` (another Service has them).
fn build_segment(
    steps: &[Step],
    m: u32,
    taken: &HashSet<FrontendKey>,
) -> (Segment, Vec<FrontendKey>) {
    let mut b = TablesBuilder::new(NodeConfig::default(), 0);
    let mut keys = Vec::new();
    let mut service_idx = 0;
    for st in steps {
        match st {
            Step::Warn(_) => {}
            Step::Port(info) => service_idx = b.add_service(info.clone()),
            Step::Front(f) => {
                let key = f.spec.key;
                if taken.contains(&key)
                    || b.frontend_index_of(&key).is_some()
                    || f.spec.backends.len() > u16::MAX as usize
                {
                    continue;
                }
                if b.add_frontend_shared(
                    &f.spec,
                    service_idx,
                    service_idx,
                    f.maglev.as_ref().map(|e| &e.table),
                    m,
                )
                .is_ok()
                {
                    keys.push(key);
                }
            }
        }
    }
    (Segment::from_tables(b.finish()), keys)
}

/// Builds the tables of `idents` on up to `threads` threads (each table is
/// a pure function of its identity, so the split does not matter).
fn build_tables(idents: &[&MaglevIdent], m: u32, seed: u64, threads: usize) -> Vec<MaglevEntry> {
    par_map(idents, threads, |ident| {
        let entries = maglev::build(ident, m, seed);
        let slots = maglev::shares(&entries, ident.len());
        MaglevEntry {
            table: MaglevTable::new(entries),
            slots,
            last_used: AtomicU64::new(0),
        }
    })
}

/// `items.iter().map(f)` on up to `threads` scoped threads (in chunks taken
/// from a shared counter), results in input order: deterministic whatever
/// the split. Small inputs stay on the calling thread.
fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const CHUNK: usize = 16;
    let threads = threads.min(items.len() / (2 * CHUNK)).max(1);
    if threads == 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let parts: Vec<Vec<(usize, R)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
                        if start >= items.len() {
                            break;
                        }
                        for (k, item) in items[start..].iter().take(CHUNK).enumerate() {
                            out.push((start + k, f(item)));
                        }
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut slots: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in parts.into_iter().flatten() {
        slots[i] = Some(r);
    }
    slots
        .into_iter()
        .map(|r| r.expect("every item was mapped"))
        .collect()
}

/// Node facts: addresses and zone, from the options or the Node object.
fn node_facts(objects: &ObjectSet, opts: &CompileOptions) -> NodeFacts {
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
    NodeFacts {
        node,
        nodeport_ips,
        zone,
    }
}

/// What one (sanitized) Service compiles to, given its slices (in name
/// order) and the node facts: kube-proxy's rules, independent of every
/// other Service.
fn derive(
    svc: &Service,
    slices: &[&EndpointSlice],
    facts: &NodeFacts,
    opts: &CompileOptions,
) -> Draft {
    let mut steps: Vec<DraftStep> = Vec::new();
    let mut draft = Draft {
        svc_version: 0,
        slice_versions: Vec::new(),
        skipped: None,
        steps: Vec::new(),
    };
    let (ns, name) = svc_id(svc);
    let display = format!("{ns}/{name}");
    if let Some(reason) = skip_reason(svc) {
        let shown: &str = &display;
        tracing::debug!(service = shown, reason, "no frontends");
        draft.skipped = Some((display, reason.to_string()));
        return draft;
    }
    let Some(spec) = svc.spec.as_ref() else {
        return draft;
    };
    let zone = facts.zone.as_deref();
    let m = opts.maglev_m;
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
        steps.push(DraftStep::Warn(format!(
            "Service {display}: {ip} has no clusterIP of its family ({}); not served (as kube-proxy)",
            family_of(*ip)
        )));
    }
    let source_ranges: Vec<Cidr> = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| parse_cidr(r))
        .collect();

    for port in spec.ports.iter().flatten() {
        let proto = port
            .protocol
            .as_deref()
            .and_then(parse_protocol)
            .unwrap_or(Proto::Tcp);
        let port_name = port.name.clone().unwrap_or_default();
        steps.push(DraftStep::Port(ServiceInfo {
            namespace: ns.clone(),
            name: name.clone(),
            port_name: port_name.clone(),
            external_policy: etp.name().to_string(),
            internal_policy: itp.name().to_string(),
            // Allocated (and answered) only for LoadBalancer Services with
            // externalTrafficPolicy: Local, as kube-proxy does.
            health_check_node_port: match spec.health_check_node_port {
                Some(p) if is_lb && etp == Policy::Local => u16::try_from(p).unwrap_or(0),
                _ => 0,
            },
        }));
        let svc_port_display = if port_name.is_empty() {
            display.clone()
        } else {
            format!("{display}:{port_name}")
        };
        for &cip in &cluster_ips {
            let family = family_of(cip);
            let eps = endpoints_for(slices, &port_name, proto, family, &opts.node_name);
            let internal = categorize(&eps, itp, topo, zone);
            let external = categorize(&eps, etp, topo, zone);
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
                    facts
                        .nodeport_ips
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
                let mut backends: Vec<Backend> =
                    sel.new.iter().map(|&i| eps[i].backend()).collect();
                let n_new = backends.len();
                backends.extend(
                    eps.iter()
                        .enumerate()
                        .filter(|(i, _)| !sel.new.contains(i))
                        .map(|(_, e)| e.backend()),
                );
                let ident: MaglevIdent = if backends.len() > u16::MAX as usize {
                    // Never added (replay warns); no table either.
                    Vec::new()
                } else {
                    backends[..n_new]
                        .iter()
                        .map(|b| (b.ip, b.port, b.weight))
                        .collect()
                };
                let m_warning = (n_new > 0 && (m as u64) < 100 * n_new as u64).then(|| {
                    format!(
                        "Service {svc_port_display}: {n_new} backends with Maglev M={m} (< 100·N): consider a larger --maglev-size"
                    )
                });
                let external_local = kind.is_external() && etp == Policy::Local;
                let spec = FrontendSpec {
                    key,
                    service: 0,
                    kind,
                    backends,
                    n_new,
                    empty_action: sel.empty_action,
                    snat: !external_local,
                    affinity_timeout,
                    affinity_group: 0,
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
                steps.push(DraftStep::Front(Box::new(DraftFront {
                    spec,
                    display: svc_port_display.clone(),
                    m_warning,
                    note: FrontendNote {
                        policy,
                        topology_zone: sel.topology_zone.clone(),
                    },
                    ident,
                })));
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
                steps.push(DraftStep::Warn(format!(
                    "Service {display}: no loadBalancerSourceRanges of {}'s family; it admits every source (as kube-proxy)",
                    ip
                )));
            }
        }
    }
    draft.steps = steps;
    draft
}

/// `ip:port`, with brackets for IPv6.
pub fn fmt_addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}
