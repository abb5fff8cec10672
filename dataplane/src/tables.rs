//! The tables the engine reads: frontends, backends and Maglev lookup tables.
//!
//! The control side *builds* these (including the Maglev permutations, see
//! `edgeplane_control::maglev`); the engine only *looks up*. Every table is a
//! flat vector addressed by `u32` offsets, never by pointers, so that the same
//! layout can later be copied into a shared-memory region.
//!
//! Per frontend, the backends live in one contiguous run of [`Tables::backends`]:
//!
//! ```text
//! backends[backend_off .. backend_off + n_new]         new flows may pick these (Maglev indexes them)
//! backends[backend_off + n_new .. backend_off + n_all] existing flows may continue to these
//!                                                      (terminating / not selected), never new flows
//! ```
//!
//! `maglev[maglev_off]` is the frontend's Maglev table: for each of the M
//! slots, an index *relative to `backend_off`* (so `< n_new`). Frontends with
//! identical backend runs share one table. Each table is an immutable
//! [`MaglevTable`] behind an `Arc`, so successive generations built by an
//! incremental compiler share every table whose backends did not change
//! (`MaglevTable::ptr_eq` tells a publisher which ones it need not rewrite),
//! and a generation is assembled without copying M entries per frontend.
//!
//! Tables adopted from the shared-memory region (`crate::region`) keep their
//! Maglev tables in the mapping instead (zero-copy): then
//! [`Frontend::maglev_width`] is 4, 8 or 16 and `maglev_off` is a byte offset
//! into [`Tables::maglev_arena`]. [`Tables::maglev_entry`] reads either form;
//! every entry read is bounds-checked (`.get()`), and an entry `>= n_new`
//! finds no backend (`new_backends(f).get(i)` is `None`), so a corrupt table
//! can misdirect a new flow at worst, never read out of bounds.

use hashbrown::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use edgeplane_packet::Proto;

/// How a frontend was derived from its Service; decides which traffic policy
/// applies (`internalTrafficPolicy` for ClusterIP, `externalTrafficPolicy` for
/// the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalIp,
}

impl FrontendKind {
    pub fn name(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "ExternalIP",
        }
    }
    /// True for traffic governed by `externalTrafficPolicy`.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

/// Lookup key of a frontend: destination (IP, port, protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendKey {
    pub ip: IpAddr,
    pub port: u16,
    /// `Proto::Tcp`, `Proto::Udp` or `Proto::Sctp`.
    pub proto: Proto,
}

/// Hashes the key as one word (IPv4) or two (IPv6) instead of field by
/// field: a new flow's frontend lookup is on the packet path. A function of
/// the fields `Eq` compares, so consistent with it.
impl std::hash::Hash for FrontendKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let rest = u64::from(self.port) << 32 | (self.proto as u64) << 48;
        match self.ip {
            IpAddr::V4(a) => state.write_u64(u64::from(a.to_bits()) | rest),
            IpAddr::V6(a) => {
                state.write_u128(a.to_bits());
                state.write_u64(rest | 1 << 63);
            }
        }
    }
}

/// What to do with a new flow when the frontend has no backend for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmptyAction {
    /// No endpoint at all: answer with ICMP port unreachable (kube-proxy's REJECT).
    Reject,
    /// Traffic policy `Local` and no local endpoint: drop (kube-proxy drops too).
    Drop,
}

/// One frontend: (IP, port, protocol) of a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub key: FrontendKey,
    /// Index into [`Tables::services`].
    pub service: u32,
    pub kind: FrontendKind,
    /// Start of this frontend's run in [`Tables::backends`].
    pub backend_off: u32,
    /// Backends new flows may choose (the Maglev table indexes these).
    pub n_new: u32,
    /// All backends existing flows may continue to (`n_new <= n_all`).
    pub n_all: u32,
    /// Where the Maglev table is: the index of the table in
    /// [`Tables::maglev`] when `maglev_width` is 0 (0 and unused when
    /// `n_new == 0`), else a byte offset into [`Tables::maglev_arena`].
    pub maglev_off: u32,
    /// M, a prime; 0 when `n_new == 0`.
    pub maglev_len: u32,
    /// 0: the table is in [`Tables::maglev`] (`u16` entries). 4, 8 or 16:
    /// it is in [`Tables::maglev_arena`], packed with this many bits per
    /// entry (4 bits: two entries per byte, low nibble first; 16 bits:
    /// little-endian).
    pub maglev_width: u8,
    /// Used when `n_new == 0`.
    pub empty_action: EmptyAction,
    /// Source NAT to the node's SNAT address (false for
    /// `externalTrafficPolicy: Local`, which preserves the client address).
    pub snat: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 = no affinity.
    pub affinity_timeout: u32,
    /// Affinity is shared by all frontends of one Service port (as kube-proxy
    /// keys its `recent` lists by service port): this is that group's id.
    pub affinity_group: u32,
    /// `loadBalancerSourceRanges` (LoadBalancer frontends only): range into
    /// [`Tables::source_ranges`]; empty = allow all.
    pub source_range_off: u32,
    pub source_range_len: u32,
}

/// One backend (endpoint address + target port) as seen from one frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    /// Endpoint conditions, for display.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName` equals this node.
    pub local: bool,
    /// Maglev weight (1 by default).
    pub weight: u32,
}

/// A Service port, for display and metrics. Not on the packet path: the
/// shared-memory region stores it as JSON, so a new field needs no layout
/// change (give it a `Default`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    /// `externalTrafficPolicy` / `internalTrafficPolicy` as written ("Cluster"/"Local").
    pub external_policy: String,
    pub internal_policy: String,
    /// `spec.healthCheckNodePort` of a LoadBalancer Service with
    /// `externalTrafficPolicy: Local` (0: none). The node answers on it
    /// whether it has a local endpoint (see `src/ops/hcnodeport.rs`).
    pub health_check_node_port: u16,
}

impl ServiceInfo {
    /// `namespace/name:port` as kube-proxy names a service port.
    pub fn display_name(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

/// Node-wide settings that shape translation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// This node's addresses (NodePort frontends are on these; traffic to them
    /// that is not a frontend goes to the kernel).
    pub node_ips: Vec<IpAddr>,
    /// Source address for SNAT of IPv4 flows (defaults to the first IPv4 node IP).
    pub snat_v4: Option<Ipv4Addr>,
    /// Source address for SNAT of IPv6 flows.
    pub snat_v6: Option<Ipv6Addr>,
    /// Inclusive SNAT port range, split evenly between workers. It must not
    /// overlap the kernel's ephemeral range (`net.ipv4.ip_local_port_range`,
    /// 32768–60999 by default): the XDP program steers every reply to a port
    /// of this range to the workers, so an overlap would steal the replies of
    /// the node's own connections. `edgeplane run` refuses an overlap.
    pub snat_ports: (u16, u16),
    /// Seed of the flow hash; must be equal on all nodes so that every node
    /// picks the same backend for the same flow.
    pub hash_seed: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_ips: Vec::new(),
            snat_v4: None,
            snat_v6: None,
            snat_ports: (61000, 65535),
            hash_seed: 0x6564_6765_706c_616e, // "edgeplan"
        }
    }
}

/// An IP prefix (for `loadBalancerSourceRanges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let bits = self.prefix_len.min(32) as u32;
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let bits = self.prefix_len.min(128) as u32;
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// One Service's part of a generation, self-contained: its ports
/// ([`ServiceInfo`]), frontends, backends, source ranges and Maglev tables,
/// with every index relative to the segment (`service` and
/// `affinity_group` into `services`, `backend_off` into `backends`,
/// `source_range_off` into `source_ranges`, `maglev_off` into `maglev`,
/// `maglev_width` 0). A generation is the node's settings and a list of
/// segments; the incremental compiler keeps an unchanged Service's segment
/// (the same `Arc`) across generations, and the region writer reuses its
/// block without looking inside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segment {
    pub services: Vec<ServiceInfo>,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    pub source_ranges: Vec<Cidr>,
    pub maglev: Vec<MaglevTable>,
}

impl Segment {
    /// All of `t` as one segment (its indices are already relative to it;
    /// Maglev tables must be in [`Tables::maglev`], as a
    /// [`TablesBuilder`] makes them).
    pub fn from_tables(t: Tables) -> Segment {
        Segment {
            services: t.services,
            frontends: t.frontends,
            backends: t.backends,
            source_ranges: t.source_ranges,
            maglev: t.maglev,
        }
    }

    /// The segment of `t` holding its services `range` and their frontends
    /// (a copy; Maglev tables read from wherever `t` holds them).
    fn of(t: &Tables, range: std::ops::Range<usize>, frontends: &[u32]) -> Segment {
        let mut s = Segment {
            services: t.services[range.clone()].to_vec(),
            ..Segment::default()
        };
        let mut seen: std::collections::HashMap<(u8, u32, u32), u32> = Default::default();
        for &fi in frontends {
            let f = &t.frontends[fi as usize];
            let mut nf = f.clone();
            nf.service -= range.start as u32;
            nf.affinity_group = if range.contains(&(f.affinity_group as usize)) {
                f.affinity_group - range.start as u32
            } else {
                nf.service
            };
            nf.backend_off = s.backends.len() as u32;
            s.backends.extend_from_slice(t.all_backends(f));
            nf.source_range_off = s.source_ranges.len() as u32;
            s.source_ranges.extend_from_slice(t.source_ranges(f));
            nf.maglev_width = 0;
            if f.n_new == 0 || f.maglev_len == 0 {
                nf.maglev_off = 0;
                nf.maglev_len = 0;
            } else {
                let key = (f.maglev_width, f.maglev_off, f.maglev_len);
                nf.maglev_off = match seen.get(&key) {
                    Some(&o) => o,
                    None => {
                        let o = s.maglev.len() as u32;
                        s.maglev.push(if f.maglev_width == 0 {
                            t.maglev[f.maglev_off as usize].clone()
                        } else {
                            MaglevTable::new(t.maglev_entries(f))
                        });
                        seen.insert(key, o);
                        o
                    }
                };
            }
            s.frontends.push(nf);
        }
        s
    }
}

/// One immutable generation of the engine's tables.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// Bumped on every publication; conntrack entries re-validate their
    /// backend lazily when they see a newer generation.
    pub generation: u64,
    pub node: NodeConfig,
    pub services: Vec<ServiceInfo>,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    /// The distinct Maglev tables built in memory, indexed by
    /// [`Frontend::maglev_off`] (when `maglev_width` is 0).
    pub maglev: Vec<MaglevTable>,
    /// Packed Maglev tables kept in a shared-memory mapping (see
    /// [`Frontend::maglev_width`]); `None` for tables built in memory.
    pub maglev_arena: Option<MaglevArena>,
    pub source_ranges: Vec<Cidr>,
    /// (IP, port, proto) -> index into `frontends`.
    pub frontend_index: HashMap<FrontendKey, u32>,
    /// Every IP that carries at least one frontend. Traffic to such an IP on
    /// an undeclared port is dropped (unless the IP is a node IP, where it
    /// belongs to the kernel).
    pub frontend_ips: HashMap<IpAddr, ()>,
}

impl Tables {
    /// Finds the frontend for a destination.
    #[inline]
    pub fn frontend(&self, ip: IpAddr, port: u16, proto: Proto) -> Option<(u32, &Frontend)> {
        let idx = *self.frontend_index.get(&FrontendKey { ip, port, proto })?;
        self.frontends.get(idx as usize).map(|f| (idx, f))
    }

    /// True when `ip` carries a frontend.
    #[inline]
    pub fn is_frontend_ip(&self, ip: IpAddr) -> bool {
        self.frontend_ips.contains_key(&ip)
    }

    /// True when `ip` is one of this node's addresses.
    #[inline]
    pub fn is_node_ip(&self, ip: IpAddr) -> bool {
        self.node.node_ips.contains(&ip)
    }

    /// The backends new flows of `f` may choose.
    #[inline]
    pub fn new_backends(&self, f: &Frontend) -> &[Backend] {
        let off = f.backend_off as usize;
        self.backends
            .get(off..off + f.n_new as usize)
            .unwrap_or(&[])
    }

    /// All backends existing flows of `f` may continue to.
    #[inline]
    pub fn all_backends(&self, f: &Frontend) -> &[Backend] {
        let off = f.backend_off as usize;
        self.backends
            .get(off..off + f.n_all as usize)
            .unwrap_or(&[])
    }

    /// The Maglev table of `f` (relative backend indices) when it is held
    /// in [`Tables::maglev`]; empty for a table in the arena (use
    /// [`maglev_entry`](Self::maglev_entry) or
    /// [`maglev_entries`](Self::maglev_entries)).
    #[inline]
    pub fn maglev_table(&self, f: &Frontend) -> &[u16] {
        if f.maglev_width != 0 || f.maglev_len == 0 {
            return &[];
        }
        self.maglev
            .get(f.maglev_off as usize)
            .map(MaglevTable::entries)
            .unwrap_or(&[])
    }

    /// Entry `slot` (`< maglev_len`) of `f`'s Maglev table, wherever it is
    /// held; `None` when out of bounds. One predictable branch on the width.
    #[inline]
    pub fn maglev_entry(&self, f: &Frontend, slot: usize) -> Option<u16> {
        let off = f.maglev_off as usize;
        match f.maglev_width {
            0 => self.maglev.get(off)?.entries().get(slot).copied(),
            w => {
                let a = self.maglev_arena.as_ref()?.bytes();
                match w {
                    4 => a
                        .get(off + slot / 2)
                        .map(|&b| ((b >> ((slot & 1) * 4)) & 0xf) as u16),
                    8 => a.get(off + slot).map(|&b| b as u16),
                    _ => a
                        .get(off + 2 * slot..off + 2 * slot + 2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]])),
                }
            }
        }
    }

    /// A byte of entry `slot` (for a prefetch), wherever it is held.
    #[inline]
    pub fn maglev_entry_byte(&self, f: &Frontend, slot: usize) -> Option<&u8> {
        let off = f.maglev_off as usize;
        match f.maglev_width {
            0 => self
                .maglev
                .get(off)?
                .entries()
                .get(slot)
                .map(|e| &bytemuck_u16(e)[0]),
            w => self
                .maglev_arena
                .as_ref()?
                .bytes()
                .get(off + slot * w as usize / 8),
        }
    }

    /// `f`'s whole Maglev table as `u16` (a copy; for display and tests).
    pub fn maglev_entries(&self, f: &Frontend) -> Vec<u16> {
        (0..f.maglev_len as usize)
            .map_while(|s| self.maglev_entry(f, s))
            .collect()
    }

    /// A copy whose Maglev tables are all in [`Tables::maglev`] (no
    /// arena), deduplicated as [`TablesBuilder`] does.
    pub fn to_owned_maglev(&self) -> Tables {
        let mut t = self.clone();
        t.maglev_arena = None;
        t.maglev.clear();
        let mut seen: std::collections::HashMap<(u8, u32, u32), u32> = Default::default();
        for (i, f) in self.frontends.iter().enumerate() {
            let nf = &mut t.frontends[i];
            nf.maglev_width = 0;
            if f.maglev_len == 0 {
                nf.maglev_off = 0;
                continue;
            }
            let key = (f.maglev_width, f.maglev_off, f.maglev_len);
            nf.maglev_off = match seen.get(&key) {
                Some(&o) => o,
                None => {
                    let o = t.maglev.len() as u32;
                    t.maglev.push(MaglevTable::new(self.maglev_entries(f)));
                    seen.insert(key, o);
                    o
                }
            };
        }
        t
    }

    /// The generation made of `segments` in order (indices rebased; Maglev
    /// tables shared, not copied).
    pub fn from_segments(
        node: NodeConfig,
        generation: u64,
        segments: &[std::sync::Arc<Segment>],
    ) -> Tables {
        let mut t = Tables {
            generation,
            node,
            ..Tables::default()
        };
        for s in segments {
            let (sb, bb, rb, mb) = (
                t.services.len() as u32,
                t.backends.len() as u32,
                t.source_ranges.len() as u32,
                t.maglev.len() as u32,
            );
            t.services.extend_from_slice(&s.services);
            t.backends.extend_from_slice(&s.backends);
            t.source_ranges.extend_from_slice(&s.source_ranges);
            t.maglev.extend_from_slice(&s.maglev);
            for f in &s.frontends {
                let mut f = f.clone();
                f.service += sb;
                f.affinity_group += sb;
                f.backend_off += bb;
                f.source_range_off += rb;
                if f.maglev_len != 0 {
                    f.maglev_off += mb;
                }
                t.frontend_index.insert(f.key, t.frontends.len() as u32);
                t.frontend_ips.insert(f.key.ip, ());
                t.frontends.push(f);
            }
        }
        t
    }

    /// `self` split into segments, one per Service (namespace/name): its
    /// consecutive ports and their frontends. For publishing tables that
    /// were not compiled as segments (tests, tools); a frontend whose
    /// affinity group is another Service's keeps its own port as group.
    pub fn to_segments(&self) -> Vec<std::sync::Arc<Segment>> {
        let mut by_service: Vec<Vec<u32>> = vec![Vec::new(); self.services.len()];
        for (i, f) in self.frontends.iter().enumerate() {
            if let Some(v) = by_service.get_mut(f.service as usize) {
                v.push(i as u32);
            }
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start < self.services.len() {
            let s0 = &self.services[start];
            let mut end = start + 1;
            while end < self.services.len()
                && self.services[end].namespace == s0.namespace
                && self.services[end].name == s0.name
            {
                end += 1;
            }
            let fes: Vec<u32> = by_service[start..end].concat();
            out.push(std::sync::Arc::new(Segment::of(self, start..end, &fes)));
            start = end;
        }
        out
    }

    /// `loadBalancerSourceRanges` of `f`.
    #[inline]
    pub fn source_ranges(&self, f: &Frontend) -> &[Cidr] {
        let off = f.source_range_off as usize;
        self.source_ranges
            .get(off..off + f.source_range_len as usize)
            .unwrap_or(&[])
    }

    /// The SNAT address for a family.
    pub fn snat_addr(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.node.snat_v6.map(IpAddr::V6)
        } else {
            self.node.snat_v4.map(IpAddr::V4)
        }
    }
}

/// One Maglev lookup table: M slots, each an index into the new-flow
/// backends of the frontends that use it. Immutable and cheap to clone (an
/// `Arc`); its largest entry is computed once, so adding it to a generation
/// checks it in O(1).
#[derive(Debug, Clone, Eq)]
pub struct MaglevTable {
    entries: Arc<[u16]>,
    max: u16,
}

impl MaglevTable {
    /// Wraps `entries` (computes the largest entry once).
    pub fn new(entries: impl Into<Arc<[u16]>>) -> MaglevTable {
        let entries = entries.into();
        let max = entries.iter().copied().max().unwrap_or(0);
        MaglevTable { entries, max }
    }

    /// The slots.
    #[inline]
    pub fn entries(&self) -> &[u16] {
        &self.entries
    }

    /// M.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The largest entry (0 for an empty table).
    pub fn max_entry(&self) -> u16 {
        self.max
    }

    /// True when both are the same shared table (not merely equal).
    pub fn ptr_eq(&self, other: &MaglevTable) -> bool {
        Arc::ptr_eq(&self.entries, &other.entries)
    }
}

impl PartialEq for MaglevTable {
    fn eq(&self, other: &MaglevTable) -> bool {
        self.ptr_eq(other) || self.entries == other.entries
    }
}

/// Assembles a [`Tables`] generation. Used by the control side; the Maglev
/// table itself is computed by the caller.
#[derive(Debug, Default)]
pub struct TablesBuilder {
    t: Tables,
    /// Dedup of identical Maglev tables: (backend run, M) -> maglev_idx.
    maglev_dedup: std::collections::HashMap<MaglevIdentity, u32>,
    /// Dedup of shared tables ([`TablesBuilder::add_frontend_shared`]): the
    /// table's address -> maglev_idx.
    shared_dedup: HashMap<usize, u32>,
}

/// The identity of a Maglev table: its backends (IP, port, weight) and M.
type MaglevIdentity = (Vec<(IpAddr, u16, u32)>, u32);

/// A Maglev table of `len` entries whose largest is `max` must have M
/// entries, each below `n_new`.
fn check_maglev(len: usize, max: Option<u16>, n_new: usize, m: u32) -> Result<(), TablesError> {
    if len != m as usize {
        return Err(TablesError::MaglevSize {
            got: len,
            expected: m,
        });
    }
    match max {
        Some(bad) if bad as usize >= n_new => Err(TablesError::MaglevIndex {
            entry: bad,
            n: n_new,
        }),
        _ => Ok(()),
    }
}

/// Errors assembling tables.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TablesError {
    #[error("duplicate frontend {0:?}")]
    DuplicateFrontend(FrontendKey),
    #[error("maglev table has {got} entries, expected {expected}")]
    MaglevSize { got: usize, expected: u32 },
    #[error("maglev entry {entry} out of range for {n} backends")]
    MaglevIndex { entry: u16, n: usize },
    #[error("too many backends for one frontend ({0}; the limit is 65535)")]
    TooManyBackends(usize),
}

/// Everything needed to add one frontend.
#[derive(Debug, Clone)]
pub struct FrontendSpec {
    pub key: FrontendKey,
    pub service: u32,
    pub kind: FrontendKind,
    /// New-flow backends first, then continue-only backends.
    pub backends: Vec<Backend>,
    pub n_new: usize,
    pub empty_action: EmptyAction,
    pub snat: bool,
    pub affinity_timeout: u32,
    pub affinity_group: u32,
    pub source_ranges: Vec<Cidr>,
}

impl TablesBuilder {
    pub fn new(node: NodeConfig, generation: u64) -> Self {
        TablesBuilder {
            t: Tables {
                generation,
                node,
                ..Tables::default()
            },
            maglev_dedup: Default::default(),
            shared_dedup: Default::default(),
        }
    }

    /// Reserves room for this many more Service ports, frontends and
    /// backends (a hint; avoids regrowing large vectors).
    pub fn reserve(&mut self, services: usize, frontends: usize, backends: usize) {
        self.t.services.reserve(services);
        self.t.frontends.reserve(frontends);
        self.t.backends.reserve(backends);
        self.t.frontend_index.reserve(frontends);
        self.t.frontend_ips.reserve(frontends);
    }

    /// The index of the frontend added with `key`, if any.
    pub fn frontend_index_of(&self, key: &FrontendKey) -> Option<u32> {
        self.t.frontend_index.get(key).copied()
    }

    /// Adds a Service port; returns its index for [`FrontendSpec::service`].
    pub fn add_service(&mut self, info: ServiceInfo) -> u32 {
        self.t.services.push(info);
        (self.t.services.len() - 1) as u32
    }

    /// Adds a frontend. `maglev` is the table over `spec.backends[..n_new]`
    /// (empty when `n_new == 0`); `m` its size. Identical tables (same backend
    /// run and M) are stored once.
    pub fn add_frontend(
        &mut self,
        spec: FrontendSpec,
        maglev: &[u16],
        m: u32,
    ) -> Result<u32, TablesError> {
        self.check(&spec.key, &spec.backends)?;
        let n_new = spec.n_new.min(spec.backends.len());
        let maglev_idx = if n_new == 0 {
            0
        } else {
            check_maglev(maglev.len(), maglev.iter().copied().max(), n_new, m)?;
            let ident: Vec<(IpAddr, u16, u32)> = spec.backends[..n_new]
                .iter()
                .map(|b| (b.ip, b.port, b.weight))
                .collect();
            match self.maglev_dedup.get(&(ident.clone(), m)) {
                Some(&idx) => idx,
                None => {
                    let idx = self.t.maglev.len() as u32;
                    self.t.maglev.push(MaglevTable::new(maglev));
                    self.maglev_dedup.insert((ident, m), idx);
                    idx
                }
            }
        };
        Ok(self.push(
            &spec,
            spec.service,
            spec.affinity_group,
            n_new,
            maglev_idx,
            m,
        ))
    }

    /// Adds a frontend whose Maglev table is already built and shared (the
    /// incremental compiler's path): no copy of the table, an O(1) check of
    /// it, and frontends passing the same `Arc` share one entry of
    /// [`Tables::maglev`]. `service` and `affinity_group` replace the spec's
    /// (a cached spec is reused at different positions). `maglev` may be
    /// `None` only when the spec has no new-flow backend.
    pub fn add_frontend_shared(
        &mut self,
        spec: &FrontendSpec,
        service: u32,
        affinity_group: u32,
        maglev: Option<&MaglevTable>,
        m: u32,
    ) -> Result<u32, TablesError> {
        self.check(&spec.key, &spec.backends)?;
        let n_new = spec.n_new.min(spec.backends.len());
        let maglev_idx = if n_new == 0 {
            0
        } else {
            let Some(table) = maglev else {
                return Err(TablesError::MaglevSize {
                    got: 0,
                    expected: m,
                });
            };
            check_maglev(table.len(), Some(table.max_entry()), n_new, m)?;
            let addr = Arc::as_ptr(&table.entries) as *const u16 as usize;
            *self.shared_dedup.entry(addr).or_insert_with(|| {
                self.t.maglev.push(table.clone());
                (self.t.maglev.len() - 1) as u32
            })
        };
        Ok(self.push(spec, service, affinity_group, n_new, maglev_idx, m))
    }

    fn check(&self, key: &FrontendKey, backends: &[Backend]) -> Result<(), TablesError> {
        if self.t.frontend_index.contains_key(key) {
            return Err(TablesError::DuplicateFrontend(*key));
        }
        if backends.len() > u16::MAX as usize {
            return Err(TablesError::TooManyBackends(backends.len()));
        }
        Ok(())
    }

    fn push(
        &mut self,
        spec: &FrontendSpec,
        service: u32,
        affinity_group: u32,
        n_new: usize,
        maglev_idx: u32,
        m: u32,
    ) -> u32 {
        let backend_off = self.t.backends.len() as u32;
        self.t.backends.extend_from_slice(&spec.backends);
        let source_range_off = self.t.source_ranges.len() as u32;
        self.t.source_ranges.extend_from_slice(&spec.source_ranges);
        let idx = self.t.frontends.len() as u32;
        self.t.frontends.push(Frontend {
            key: spec.key,
            service,
            kind: spec.kind,
            backend_off,
            n_new: n_new as u32,
            n_all: spec.backends.len() as u32,
            maglev_off: maglev_idx,
            maglev_len: if n_new == 0 { 0 } else { m },
            maglev_width: 0,
            empty_action: spec.empty_action,
            snat: spec.snat,
            affinity_timeout: spec.affinity_timeout,
            affinity_group,
            source_range_off,
            source_range_len: spec.source_ranges.len() as u32,
        });
        self.t.frontend_index.insert(spec.key, idx);
        self.t.frontend_ips.insert(spec.key.ip, ());
        idx
    }

    pub fn finish(self) -> Tables {
        self.t
    }
}

/// Packed Maglev tables in memory the tables do not own (a shared-memory
/// mapping), kept alive by a reference count.
#[derive(Clone)]
pub struct MaglevArena {
    ptr: *const u8,
    len: usize,
    _keep: std::sync::Arc<dyn Send + Sync>,
}

// SAFETY: the arena is only read through `bytes()`; the memory is kept
// alive by `_keep` (which is `Send + Sync`) and never written while a
// generation that references it may be read (the region's publication
// protocol, see `crate::region`).
unsafe impl Send for MaglevArena {}
// SAFETY: as for `Send`: shared reads only.
unsafe impl Sync for MaglevArena {}

impl MaglevArena {
    /// An arena over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay mapped and readable while `keep` lives,
    /// and the bytes any adopted generation references must not change while
    /// it may be read.
    pub unsafe fn new(ptr: *const u8, len: usize, keep: std::sync::Arc<dyn Send + Sync>) -> Self {
        MaglevArena {
            ptr,
            len,
            _keep: keep,
        }
    }

    /// An arena over owned bytes (tests, tools).
    pub fn from_vec(v: Vec<u8>) -> Self {
        let v = std::sync::Arc::new(v);
        // SAFETY: the vector is kept alive by the Arc and never mutated.
        unsafe { MaglevArena::new(v.as_ptr(), v.len(), v.clone()) }
    }

    #[inline]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `new`'s contract: mapped, readable and alive while `self` is.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::fmt::Debug for MaglevArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MaglevArena({} bytes)", self.len)
    }
}

/// The bytes of a `u16` (for a prefetch address).
#[inline]
fn bytemuck_u16(e: &u16) -> &[u8; 2] {
    // SAFETY: a `u16` is 2 initialized bytes; `[u8; 2]` has alignment 1.
    unsafe { &*(e as *const u16 as *const [u8; 2]) }
}
