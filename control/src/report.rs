//! What a compile produced, for people (`render_table`) and tools (`render_json`).
//!
//! Promises: one entry per frontend in table order, each with its Service
//! port, kind, address, the traffic policy in force, affinity, SNAT, the
//! empty action and every backend: new-flow backends with their Maglev share
//! (slots and percent of M), then continue-only backends (share 0,
//! `new_flows: false`). The JSON field names are stable:
//!
//! ```json
//! {"generation": 1,
//!  "frontends": [{"service": "default/web:http", "kind": "ClusterIP",
//!     "ip": "198.18.200.10", "port": 80, "protocol": "TCP",
//!     "policy": {"scope": "internal", "mode": "Cluster"}, "topology_zone": null,
//!     "session_affinity": {"mode": "None", "timeout_seconds": 0},
//!     "snat": true, "empty_action": "reject", "source_ranges": [], "maglev_size": 16381,
//!     "backends": [{"ip": "198.18.2.2", "port": 8080, "slots": 5461, "share": 33.34,
//!        "ready": true, "serving": true, "terminating": false, "local": false,
//!        "new_flows": true}]}],
//!  "skipped": [{"service": "default/db", "reason": "headless (clusterIP: None)"}]}
//! ```

use std::fmt::Write as _;
use std::sync::Arc;

use edgeplane_dataplane::tables::{Backend, Cidr, EmptyAction, FrontendKey, FrontendKind, Tables};
use edgeplane_packet::Proto;

use crate::compile::{fmt_addr, Compiled, Policy};

/// Per-frontend facts the tables do not hold (recorded by the compiler in
/// frontend order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendNote {
    /// The policy in force for this frontend (internal for ClusterIP, external otherwise).
    pub policy: Policy,
    /// Zone whose hints narrowed the new-flow backends, if any.
    pub topology_zone: Option<String>,
}

/// The traffic policy in force for a frontend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyReport {
    /// `internal` (internalTrafficPolicy) or `external` (externalTrafficPolicy).
    pub scope: &'static str,
    /// `Cluster` or `Local`.
    pub mode: &'static str,
}

/// Session affinity of a frontend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AffinityReport {
    /// `None` or `ClientIP`.
    pub mode: &'static str,
    pub timeout_seconds: u32,
}

/// One backend of a frontend.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BackendReport {
    pub ip: String,
    pub port: u16,
    /// Maglev slots (0 for continue-only backends).
    pub slots: u32,
    /// Percent of the Maglev table, rounded to 2 decimals.
    pub share: f64,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub local: bool,
    /// False: only flows that already use it continue to it.
    pub new_flows: bool,
}

/// One frontend.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FrontendReport {
    /// `namespace/name:port` (kube-proxy's service port name).
    pub service: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalIP`.
    pub kind: &'static str,
    pub ip: String,
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: &'static str,
    pub policy: PolicyReport,
    pub topology_zone: Option<String>,
    pub session_affinity: AffinityReport,
    pub snat: bool,
    /// What new flows get when no backend takes them: `reject` or `drop`.
    pub empty_action: &'static str,
    pub source_ranges: Vec<String>,
    /// M (0 when there is no new-flow backend).
    pub maglev_size: u32,
    pub backends: Vec<BackendReport>,
}

/// A Service that got no frontends, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedService {
    pub service: String,
    pub reason: String,
}

/// Everything `edgeplane compile` prints.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    pub generation: u64,
    /// Shared (`Arc`): an incremental compile reuses the entries of unchanged
    /// Services instead of rebuilding them.
    pub frontends: Vec<Arc<FrontendReport>>,
    pub skipped: Vec<SkippedService>,
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
        Proto::Sctp => "SCTP",
        Proto::Icmp => "ICMP",
        Proto::Icmpv6 => "ICMPv6",
    }
}

/// The facts of one frontend a [`FrontendReport`] is made of (from a
/// generation's tables, or from the compiler before it assembles one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrontendFacts<'a> {
    pub key: FrontendKey,
    pub kind: FrontendKind,
    pub note: Option<&'a FrontendNote>,
    pub affinity_timeout: u32,
    pub snat: bool,
    pub empty_action: EmptyAction,
    pub source_ranges: &'a [Cidr],
    /// M (0 when there is no new-flow backend).
    pub maglev_size: u32,
    /// New-flow backends first.
    pub backends: &'a [Backend],
    pub n_new: usize,
    /// Maglev slots of each new-flow backend.
    pub slots: &'a [u32],
}

impl FrontendReport {
    pub(crate) fn new(service: String, f: FrontendFacts<'_>) -> FrontendReport {
        let mode = f.note.map(|n| n.policy).unwrap_or(Policy::Cluster);
        let m = f.maglev_size.max(1) as f64;
        let backends = f
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let slots = f.slots.get(j).copied().unwrap_or(0);
                BackendReport {
                    ip: b.ip.to_string(),
                    port: b.port,
                    slots,
                    share: (slots as f64 * 10000.0 / m).round() / 100.0,
                    ready: b.ready,
                    serving: b.serving,
                    terminating: b.terminating,
                    local: b.local,
                    new_flows: j < f.n_new,
                }
            })
            .collect();
        FrontendReport {
            service,
            kind: f.kind.name(),
            ip: f.key.ip.to_string(),
            port: f.key.port,
            protocol: proto_name(f.key.proto),
            policy: PolicyReport {
                scope: if f.kind.is_external() {
                    "external"
                } else {
                    "internal"
                },
                mode: mode.name(),
            },
            topology_zone: f.note.and_then(|n| n.topology_zone.clone()),
            session_affinity: AffinityReport {
                mode: if f.affinity_timeout > 0 {
                    "ClientIP"
                } else {
                    "None"
                },
                timeout_seconds: f.affinity_timeout,
            },
            snat: f.snat,
            empty_action: match f.empty_action {
                EmptyAction::Reject => "reject",
                EmptyAction::Drop => "drop",
            },
            source_ranges: f
                .source_ranges
                .iter()
                .map(|c| format!("{}/{}", c.addr, c.prefix_len))
                .collect(),
            maglev_size: f.maglev_size,
            backends,
        }
    }
}

impl Report {
    /// Builds the report from the tables and the compiler's notes (one per frontend).
    pub fn new(tables: &Tables, notes: &[FrontendNote], skipped: Vec<(String, String)>) -> Report {
        let frontends = tables
            .frontends
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let info = tables.services.get(f.service as usize);
                let slots = crate::maglev::shares(tables.maglev_table(f), f.n_new as usize);
                Arc::new(FrontendReport::new(
                    info.map(|s| s.display_name()).unwrap_or_default(),
                    FrontendFacts {
                        key: f.key,
                        kind: f.kind,
                        note: notes.get(i),
                        affinity_timeout: f.affinity_timeout,
                        snat: f.snat,
                        empty_action: f.empty_action,
                        source_ranges: tables.source_ranges(f),
                        maglev_size: f.maglev_len,
                        backends: tables.all_backends(f),
                        n_new: f.n_new as usize,
                        slots: &slots,
                    },
                ))
            })
            .collect();
        Report::from_parts(tables.generation, frontends, skipped)
    }

    pub(crate) fn from_parts(
        generation: u64,
        frontends: Vec<Arc<FrontendReport>>,
        skipped: Vec<(String, String)>,
    ) -> Report {
        let skipped = skipped
            .into_iter()
            .map(|(service, reason)| SkippedService { service, reason })
            .collect();
        Report {
            generation,
            frontends,
            skipped,
        }
    }
}

/// The report as JSON (see the module docs for the shape).
pub fn render_json(c: &Compiled) -> serde_json::Value {
    serde_json::to_value(&c.report).unwrap_or(serde_json::Value::Null)
}

/// The report as aligned text: one line per frontend, its backends indented below.
pub fn render_table(c: &Compiled) -> String {
    let r = &c.report;
    let rows: Vec<[String; 7]> = r
        .frontends
        .iter()
        .map(|f| {
            let ip: std::net::IpAddr = f.ip.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            let mut policy = format!("{}={}", f.policy.scope, f.policy.mode);
            if let Some(z) = &f.topology_zone {
                let _ = write!(policy, " zone={z}");
            }
            let affinity = if f.session_affinity.timeout_seconds > 0 {
                format!("ClientIP/{}s", f.session_affinity.timeout_seconds)
            } else {
                "-".into()
            };
            let mut extra = Vec::new();
            if !f.backends.first().is_some_and(|b| b.new_flows) {
                extra.push(format!("empty={}", f.empty_action));
            }
            if !f.snat {
                extra.push("no-snat".into());
            }
            if !f.source_ranges.is_empty() {
                extra.push(format!("from={}", f.source_ranges.join(",")));
            }
            [
                fmt_addr(ip, f.port),
                f.protocol.to_string(),
                f.kind.to_string(),
                f.service.clone(),
                policy,
                affinity,
                extra.join(" "),
            ]
        })
        .collect();
    let header = [
        "FRONTEND", "PROTO", "KIND", "SERVICE", "POLICY", "AFFINITY", "NOTES",
    ];
    let mut w = header.map(str::len);
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            w[i] = w[i].max(cell.len());
        }
    }
    let line = |cells: &[&str]| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{:<width$}  ", c, width = w[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "generation {}: {} frontends",
        r.generation,
        r.frontends.len()
    );
    out.push_str(&line(&header));
    for (f, row) in r.frontends.iter().zip(&rows) {
        out.push_str(&line(&row.iter().map(String::as_str).collect::<Vec<_>>()));
        let bw = f
            .backends
            .iter()
            .map(|b| {
                fmt_addr(
                    b.ip.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
                    b.port,
                )
                .len()
            })
            .max()
            .unwrap_or(0);
        if !f.backends.first().is_some_and(|b| b.new_flows) {
            let _ = writeln!(
                out,
                "    (no usable endpoint: new flows are {})",
                if f.empty_action == "drop" {
                    "dropped"
                } else {
                    "rejected"
                }
            );
        }
        for b in &f.backends {
            let addr = fmt_addr(
                b.ip.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
                b.port,
            );
            let mut state = Vec::new();
            if b.ready {
                state.push("ready");
            } else if b.serving {
                state.push("serving");
            } else {
                state.push("not-ready");
            }
            if b.terminating {
                state.push("terminating");
            }
            if b.local {
                state.push("local");
            }
            if b.new_flows {
                let _ = writeln!(
                    out,
                    "    {addr:<bw$}  {:>6} slots {:>6.2}%  {}",
                    b.slots,
                    b.share,
                    state.join(",")
                );
            } else {
                let _ = writeln!(
                    out,
                    "    {addr:<bw$}  {:>26}  {} (existing flows only)",
                    "-",
                    state.join(",")
                );
            }
        }
    }
    for s in &r.skipped {
        let _ = writeln!(out, "skipped {}: {}", s.service, s.reason);
    }
    out
}
