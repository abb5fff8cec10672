//! `/metrics`: the Prometheus exposition of an [`OpsState`], rendered with
//! `prometheus-client`.
//!
//! Per-packet counters are never shared: every worker counts in its own
//! plain integers and publishes a snapshot every 100 ms; a scrape sums the
//! snapshots here (a custom [`Collector`]). Per-frontend series are bounded
//! by `edgeplane_dataplane::traffic::MAX_COUNTED_FRONTENDS`, per-backend
//! ones by `MAX_COUNTED_BACKEND_SLOTS` (see docs/operations.md,
//! "Cardinality"). The publish-latency histogram is the one metric updated
//! outside a scrape (by the control loop, once per publication).
//!
//! Every metric is listed in [`METRICS`] (name, type, help), which
//! docs/operations.md and deploy/grafana-dashboard.json are checked against.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use edgeplane_dataplane::traffic::VERDICT_NAMES;
use edgeplane_dataplane::{DropReason, Tables};
use edgeplane_packet::Proto;

use super::{Inner, OpsConfig, OpsState};

/// (name as exposed, type, help) of every metric. Counters carry their
/// `_total` suffix here as they do on the wire.
pub const METRICS: &[(&str, &str, &str)] = &[
    ("edgeplane_build_info", "gauge", "Always 1; labels: version."),
    ("edgeplane_packets_total", "counter", "Frames the engine processed, by worker, queue and verdict (tx, reject, pass, drop)."),
    ("edgeplane_bytes_total", "counter", "Bytes of those frames (as received), by worker, queue and verdict."),
    ("edgeplane_interface_rx_packets_total", "counter", "Frames received from AF_XDP, by interface and queue."),
    ("edgeplane_interface_rx_bytes_total", "counter", "Bytes received from AF_XDP, by interface and queue."),
    ("edgeplane_interface_tx_packets_total", "counter", "Frames queued for AF_XDP transmit, by (egress) interface and queue."),
    ("edgeplane_interface_tx_bytes_total", "counter", "Bytes queued for AF_XDP transmit, by interface and queue."),
    ("edgeplane_drops_total", "counter", "Frames dropped, by drop reason name and code (docs/drop-reasons.md)."),
    ("edgeplane_to_kernel_total", "counter", "Frames handed to the kernel through the raw socket, by reason (pass, unresolved_neighbour, no_route, failed)."),
    ("edgeplane_xdp_packets_total", "counter", "Frames the XDP steering program handled, by action (redirect_frontend, redirect_snat, pass, pass_no_socket, ...)."),
    ("edgeplane_tx_ring_full_total", "counter", "Times a TX ring had no room, by worker."),
    ("edgeplane_socket_rx_dropped_total", "counter", "Frames the kernel dropped for the AF_XDP sockets, by worker."),
    ("edgeplane_socket_rx_ring_full_total", "counter", "Frames dropped because an RX ring was full, by worker."),
    ("edgeplane_socket_fill_ring_empty_total", "counter", "Times a fill ring was empty when a frame arrived, by worker."),
    ("edgeplane_worker_polls_total", "counter", "Poll-loop iterations, by worker and state (busy: found frames, idle)."),
    ("edgeplane_worker_busy_ratio", "gauge", "Share of poll iterations that found frames over the last snapshot interval, by worker."),
    ("edgeplane_worker_tables_generation", "gauge", "Tables generation each worker last used."),
    ("edgeplane_frontend_new_flows_total", "counter", "New flows per frontend (service, kind, frontend address)."),
    ("edgeplane_frontend_packets_total", "counter", "Frames of each frontend's flows (both directions)."),
    ("edgeplane_frontend_bytes_total", "counter", "Bytes of each frontend's flows (both directions)."),
    ("edgeplane_frontend_uncounted_packets_total", "counter", "Frames of frontends past the per-frontend cap."),
    ("edgeplane_backend_new_flows_total", "counter", "New flows per backend (service port, backend address)."),
    ("edgeplane_backend_active_flows", "gauge", "Live conntrack flows per backend (service port, backend address), from a conntrack walk at scrape time."),
    ("edgeplane_conntrack_entries", "gauge", "Live conntrack entries."),
    ("edgeplane_conntrack_capacity", "gauge", "Conntrack capacity in flows (--conntrack-size)."),
    ("edgeplane_conntrack_new_flows_total", "counter", "Conntrack inserts that succeeded."),
    ("edgeplane_conntrack_insert_failures_total", "counter", "Conntrack inserts refused because the table was full."),
    ("edgeplane_conntrack_evictions_total", "counter", "Unconfirmed flows evicted to make room for new ones."),
    ("edgeplane_conntrack_expired_total", "counter", "Expired flows freed (sweeps and reclaims)."),
    ("edgeplane_snat_port_evictions_total", "counter", "SNAT ports taken back from half-open (or finished) flows because every port tried was held; also counted in conntrack evictions."),
    ("edgeplane_snat_ports_in_use", "gauge", "SNAT ports held by live flows, by worker (each worker owns a share of --snat-ports)."),
    ("edgeplane_snat_ports_capacity", "gauge", "Size of each worker's share of the SNAT port range."),
    ("edgeplane_services", "gauge", "Service ports in the current tables."),
    ("edgeplane_frontends", "gauge", "Frontends in the current tables."),
    ("edgeplane_backends", "gauge", "Backend slots in the current tables."),
    ("edgeplane_tables_generation", "gauge", "Generation of the last published tables."),
    ("edgeplane_tables_publications_total", "counter", "Table generations published."),
    ("edgeplane_tables_sync_failures_total", "counter", "Picked-up changes that failed to compile or publish (the old tables stay)."),
    ("edgeplane_tables_last_sync_timestamp_seconds", "gauge", "Unix time of the last successful publication (kube-proxy: sync_proxy_rules_last_timestamp_seconds)."),
    ("edgeplane_tables_last_queued_timestamp_seconds", "gauge", "Unix time a change was last picked up (kube-proxy: sync_proxy_rules_last_queued_timestamp_seconds)."),
    ("edgeplane_tables_publish_duration_seconds", "histogram", "From picking up a change to its tables being published (kube-proxy: sync_proxy_rules_duration_seconds)."),
    ("edgeplane_kube_watch_restarts_total", "counter", "Kubernetes watch relists after the first list."),
    ("edgeplane_kube_watch_errors_total", "counter", "Kubernetes watch errors (each followed by a backoff)."),
    ("edgeplane_kube_events_total", "counter", "Kubernetes watch events received."),
    ("edgeplane_health_check_node_ports", "gauge", "healthCheckNodePort responders open."),
    ("edgeplane_health_check_node_port_bind_failures_total", "counter", "healthCheckNodePort listeners that could not be opened."),
    ("edgeplane_healthy", "gauge", "1 when /healthz answers 200."),
];

/// The registry of one process: the state's collector plus the histogram.
pub fn registry(state: Arc<OpsState>, cfg: OpsConfig) -> Registry {
    let mut r = Registry::default();
    r.register(
        "edgeplane_tables_publish_duration_seconds",
        "From picking up a change to its tables being published (kube-proxy: sync_proxy_rules_duration_seconds)",
        state.publish_duration.clone(),
    );
    r.register_collector(Box::new(StateCollector { state, cfg }));
    r
}

/// Renders the registry as exposition text.
pub fn render(r: &Registry) -> String {
    let mut s = String::new();
    if prometheus_client::encoding::text::encode(&mut s, r).is_err() {
        s.clear();
        let _ = writeln!(s, "# encoding failed");
    }
    s
}

#[derive(Debug)]
struct StateCollector {
    state: Arc<OpsState>,
    cfg: OpsConfig,
}

type Labels = Vec<(&'static str, String)>;

/// Collects one family's samples, then encodes them.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

impl Family {
    fn new(name: &'static str, kind: MetricType) -> Self {
        let help = METRICS
            .iter()
            .find(|(n, _, _)| n.strip_suffix("_total").unwrap_or(n) == name || *n == name)
            .map(|(_, _, h)| *h)
            .unwrap_or("");
        Family {
            name,
            help: help.trim_end_matches('.'),
            kind,
            samples: Vec::new(),
        }
    }
    fn add(&mut self, labels: Labels, v: impl Into<f64>) {
        self.samples.push((labels, v.into()));
    }
    fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = enc.encode_descriptor(self.name, self.help, None, self.kind)?;
        fn one(kind: &MetricType, m: MetricEncoder<'_>, v: f64) -> Result<(), std::fmt::Error> {
            match kind {
                MetricType::Counter => ConstCounter::new(v as u64).encode(m),
                _ => ConstGauge::new(v).encode(m),
            }
        }
        // An unlabelled metric is written `name value`, not `name{} value`.
        if let [(labels, v)] = self.samples.as_slice() {
            if labels.is_empty() {
                return one(&self.kind, m, *v);
            }
        }
        let mut m = m;
        for (labels, v) in &self.samples {
            one(&self.kind, m.encode_family(labels)?, *v)?;
        }
        Ok(())
    }
}

fn counter(name: &'static str) -> Family {
    Family::new(name, MetricType::Counter)
}
fn gauge(name: &'static str) -> Family {
    Family::new(name, MetricType::Gauge)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let health = self.state.health(&self.cfg);
        // Render from a copy: the conntrack walk must not hold the lock the
        // run loop feeds through.
        let g = self.state.lock().clone();
        for f in families(&g, health.healthy) {
            f.encode(&mut enc)?;
        }
        Ok(())
    }
}

fn secs(t: Option<SystemTime>) -> f64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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

fn addr_port(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

fn service_of(t: &Tables, frontend: u32) -> String {
    t.frontends
        .get(frontend as usize)
        .and_then(|f| t.services.get(f.service as usize))
        .map(|s| s.display_name())
        .unwrap_or_default()
}

/// Every family, from the state (the lock is held by the caller).
fn families(g: &Inner, healthy: bool) -> Vec<Family> {
    let mut out = Vec::new();
    let mut build = gauge("edgeplane_build_info");
    build.add(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1);
    out.push(build);

    // --- per worker / interface ------------------------------------------
    let ifname = |p: usize| {
        g.dataplane
            .as_ref()
            .and_then(|d| d.interfaces.get(p).cloned())
            .unwrap_or_else(|| format!("port{p}"))
    };
    let nports = g.dataplane.as_ref().map_or(0, |d| d.interfaces.len());
    let (mut pk, mut by) = (counter("edgeplane_packets"), counter("edgeplane_bytes"));
    let (mut irp, mut irb, mut itp, mut itb) = (
        counter("edgeplane_interface_rx_packets"),
        counter("edgeplane_interface_rx_bytes"),
        counter("edgeplane_interface_tx_packets"),
        counter("edgeplane_interface_tx_bytes"),
    );
    let mut drops = [0u64; DropReason::COUNT];
    let mut kern = [0u64; 4];
    let (mut ringfull, mut sdrop, mut sfull, mut sempty) = (
        counter("edgeplane_tx_ring_full"),
        counter("edgeplane_socket_rx_dropped"),
        counter("edgeplane_socket_rx_ring_full"),
        counter("edgeplane_socket_fill_ring_empty"),
    );
    let (mut polls, mut busy, mut wgen) = (
        counter("edgeplane_worker_polls"),
        gauge("edgeplane_worker_busy_ratio"),
        gauge("edgeplane_worker_tables_generation"),
    );
    let mut new_flows = 0u64;
    let mut snat_evictions = 0u64;
    for w in &g.workers {
        let s = &w.snap;
        let wl = || -> Labels {
            vec![
                ("worker", s.worker.to_string()),
                ("queue", s.queue.to_string()),
            ]
        };
        let e = &s.engine;
        for (i, (n, v)) in [e.tx, e.reject, e.pass, e.drop]
            .into_iter()
            .zip(VERDICT_NAMES)
            .enumerate()
        {
            let mut l = wl();
            l.push(("verdict", v.to_string()));
            pk.add(l.clone(), n as f64);
            by.add(l, s.traffic.verdict_bytes[i] as f64);
        }
        for (a, b) in drops.iter_mut().zip(e.drops.iter()) {
            *a += b;
        }
        new_flows += e.new_flows;
        snat_evictions += e.snat_port_evictions;
        let c = &s.counters;
        for p in 0..nports.min(c.rx.len()) {
            let l = vec![("interface", ifname(p)), ("queue", s.queue.to_string())];
            irp.add(l.clone(), c.rx[p] as f64);
            irb.add(l.clone(), c.rx_bytes[p] as f64);
            itp.add(l.clone(), c.tx[p] as f64);
            itb.add(l, c.tx_bytes[p] as f64);
        }
        kern[0] += c.to_kernel_pass;
        kern[1] += c.to_kernel_unresolved;
        kern[2] += c.to_kernel_route;
        kern[3] += c.to_kernel_failed;
        ringfull.add(wl(), c.tx_ring_full as f64);
        sdrop.add(wl(), c.socket.rx_dropped as f64);
        sfull.add(wl(), c.socket.rx_ring_full as f64);
        sempty.add(wl(), c.socket.rx_fill_ring_empty as f64);
        for (st, n) in [("busy", c.busy_polls), ("idle", c.idle_polls)] {
            let mut l = wl();
            l.push(("state", st.to_string()));
            polls.add(l, n as f64);
        }
        busy.add(wl(), w.busy_ratio);
        wgen.add(wl(), s.tables_generation as f64);
    }
    out.extend([pk, by, irp, irb, itp, itb]);
    let mut dr = counter("edgeplane_drops");
    for r in DropReason::ALL {
        dr.add(
            vec![
                ("reason", r.name().to_string()),
                ("code", r.code().to_string()),
            ],
            drops[r.code() as usize] as f64,
        );
    }
    out.push(dr);
    let mut tk = counter("edgeplane_to_kernel");
    for (n, name) in kern
        .into_iter()
        .zip(["pass", "unresolved_neighbour", "no_route", "failed"])
    {
        tk.add(vec![("reason", name.to_string())], n as f64);
    }
    let mut xdp = counter("edgeplane_xdp_packets");
    for (name, v) in &g.xdp {
        xdp.add(vec![("action", name.to_string())], *v as f64);
    }
    out.extend([tk, xdp, ringfull, sdrop, sfull, sempty, polls, busy, wgen]);

    // --- per frontend / backend -----------------------------------------
    out.extend(traffic_families(g));

    // --- conntrack and SNAT ---------------------------------------------
    let (mut ce, mut cc, mut cn, mut cf, mut cv, mut cx) = (
        gauge("edgeplane_conntrack_entries"),
        gauge("edgeplane_conntrack_capacity"),
        counter("edgeplane_conntrack_new_flows"),
        counter("edgeplane_conntrack_insert_failures"),
        counter("edgeplane_conntrack_evictions"),
        counter("edgeplane_conntrack_expired"),
    );
    let mut spe = counter("edgeplane_snat_port_evictions");
    spe.add(vec![], snat_evictions as f64);
    let (mut sp, mut sc, mut baf) = (
        gauge("edgeplane_snat_ports_in_use"),
        gauge("edgeplane_snat_ports_capacity"),
        gauge("edgeplane_backend_active_flows"),
    );
    if let Some(d) = &g.dataplane {
        let ct = &d.flows.conntrack;
        let st = ct.stats();
        ce.add(vec![], ct.len() as f64);
        cc.add(vec![], ct.capacity() as f64);
        cn.add(vec![], new_flows as f64);
        cf.add(vec![], st.insert_failures as f64);
        cv.add(vec![], st.evictions as f64);
        cx.add(vec![], (st.swept + st.reclaimed) as f64);
        // One walk of the table: SNAT ports per owning worker, live flows
        // per backend of the current tables.
        let nworkers = g.workers.len().max(1);
        let mut ports = vec![0u64; nworkers];
        let mut per_backend: BTreeMap<(String, String), u64> = BTreeMap::new();
        let tables = g.tables.as_deref();
        ct.for_each((d.clock)(), |f| {
            if f.xlat.src != f.orig.src || f.xlat.sport != f.orig.sport {
                if let Some(p) = ports.get_mut(f.worker as usize) {
                    *p += 1;
                }
            }
            if let Some(t) = tables {
                let proto = match f.orig.proto {
                    6 => Proto::Tcp,
                    17 => Proto::Udp,
                    132 => Proto::Sctp,
                    _ => return,
                };
                if let Some((fi, _)) = t.frontend(f.orig.dst, f.orig.dport, proto) {
                    if per_backend.len() < edgeplane_dataplane::traffic::MAX_COUNTED_BACKEND_SLOTS {
                        *per_backend
                            .entry((service_of(t, fi), addr_port(f.xlat.dst, f.xlat.dport)))
                            .or_default() += 1;
                    }
                }
            }
        });
        let share = g.tables.as_ref().map(|t| {
            let (lo, hi) = t.node.snat_ports;
            (hi.max(lo) - hi.min(lo)) as u64 + 1
        });
        for (w, n) in ports.iter().enumerate() {
            sp.add(vec![("worker", w.to_string())], *n as f64);
            if let Some(total) = share {
                let chunk = total / nworkers as u64;
                let mine = if w + 1 == nworkers {
                    total - chunk * (nworkers as u64 - 1)
                } else {
                    chunk
                };
                sc.add(vec![("worker", w.to_string())], mine as f64);
            }
        }
        for ((svc, b), n) in per_backend {
            baf.add(vec![("service", svc), ("backend", b)], n as f64);
        }
    }
    out.extend([ce, cc, cn, cf, cv, cx, spe, sp, sc, baf]);

    // --- tables and control loop ------------------------------------------
    let (mut ns, mut nf, mut nb) = (
        gauge("edgeplane_services"),
        gauge("edgeplane_frontends"),
        gauge("edgeplane_backends"),
    );
    if let Some(t) = &g.tables {
        ns.add(vec![], t.services.len() as f64);
        nf.add(vec![], t.frontends.len() as f64);
        nb.add(vec![], t.backends.len() as f64);
    }
    let mut gen = gauge("edgeplane_tables_generation");
    gen.add(vec![], g.generation as f64);
    let mut pubs = counter("edgeplane_tables_publications");
    pubs.add(vec![], g.publications as f64);
    let mut fails = counter("edgeplane_tables_sync_failures");
    fails.add(vec![], g.sync_failures as f64);
    let mut ls = gauge("edgeplane_tables_last_sync_timestamp_seconds");
    ls.add(vec![], secs(g.last_sync));
    let mut lq = gauge("edgeplane_tables_last_queued_timestamp_seconds");
    lq.add(vec![], secs(g.last_queued));
    out.extend([ns, nf, nb, gen, pubs, fails, ls, lq]);
    let (mut kr, mut ke, mut kv) = (
        counter("edgeplane_kube_watch_restarts"),
        counter("edgeplane_kube_watch_errors"),
        counter("edgeplane_kube_events"),
    );
    if let Some(k) = &g.kube {
        let (restarts, errors, events, _) = k.counts();
        kr.add(vec![], restarts as f64);
        ke.add(vec![], errors as f64);
        kv.add(vec![], events as f64);
    }
    out.extend([kr, ke, kv]);
    let mut hc = gauge("edgeplane_health_check_node_ports");
    hc.add(vec![], g.hc_ports_open as f64);
    let mut hcf = counter("edgeplane_health_check_node_port_bind_failures");
    hcf.add(vec![], g.hc_bind_failures as f64);
    let mut up = gauge("edgeplane_healthy");
    up.add(vec![], if healthy { 1.0 } else { 0.0 });
    out.extend([hc, hcf, up]);
    out
}

/// Per-frontend and per-backend families: the workers' counters summed by
/// frontend key / (service, backend), labelled with the current tables.
fn traffic_families(g: &Inner) -> Vec<Family> {
    let (mut fnew, mut fpk, mut fby, mut unc, mut bnew) = (
        counter("edgeplane_frontend_new_flows"),
        counter("edgeplane_frontend_packets"),
        counter("edgeplane_frontend_bytes"),
        counter("edgeplane_frontend_uncounted_packets"),
        counter("edgeplane_backend_new_flows"),
    );
    // Key: (service, kind, frontend) → (new, packets, bytes).
    let mut fronts: BTreeMap<(String, &'static str, String), [u64; 3]> = BTreeMap::new();
    let mut backs: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut uncounted = 0u64;
    if let Some(t) = &g.tables {
        for w in &g.workers {
            let tr = &w.snap.traffic;
            uncounted += tr.uncounted.packets;
            for (k, c) in tr.keys.iter().zip(&tr.frontends) {
                // Label with the current tables; a worker that has not yet
                // seen them keeps its counts under the same key.
                let Some((fi, f)) = t.frontend(k.ip, k.port, k.proto) else {
                    continue;
                };
                let e = fronts
                    .entry((
                        service_of(t, fi),
                        f.kind.name(),
                        format!("{}/{}", addr_port(k.ip, k.port), proto_name(k.proto)),
                    ))
                    .or_default();
                e[0] += c.new_flows;
                e[1] += c.packets;
                e[2] += c.bytes;
            }
            for b in &tr.backends {
                if b.new_flows == 0 {
                    continue;
                }
                let Some(k) = tr.keys.get(b.frontend as usize) else {
                    continue;
                };
                let Some((fi, _)) = t.frontend(k.ip, k.port, k.proto) else {
                    continue;
                };
                *backs
                    .entry((service_of(t, fi), addr_port(b.ip, b.port)))
                    .or_default() += b.new_flows;
            }
        }
        // Every backend of the current tables has a series (0 until used),
        // so that rate() works from the first flow.
        for (fi, f) in t.frontends.iter().enumerate() {
            for b in t.all_backends(f) {
                backs
                    .entry((service_of(t, fi as u32), addr_port(b.ip, b.port)))
                    .or_default();
            }
        }
    }
    for ((svc, kind, fe), [n, p, b]) in fronts {
        let l: Labels = vec![
            ("service", svc),
            ("kind", kind.to_string()),
            ("frontend", fe),
        ];
        fnew.add(l.clone(), n as f64);
        fpk.add(l.clone(), p as f64);
        fby.add(l, b as f64);
    }
    unc.add(vec![], uncounted as f64);
    for ((svc, b), n) in backs {
        bnew.add(vec![("service", svc), ("backend", b)], n as f64);
    }
    vec![fnew, fpk, fby, unc, bnew]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ops::{OpsConfig, OpsState};
    use edgeplane_dataplane::afxdp::WorkerSnapshot;
    use edgeplane_dataplane::testing::fuzz_tables;
    use edgeplane_dataplane::Engine;
    use std::collections::HashSet;
    use std::time::Duration;

    fn udp(sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 18, 0, 100], dst, 64)
            .udp(sport, dport)
            .write(&mut out, b"hello")
            .unwrap();
        out
    }

    /// A state fed as `run` feeds it, after one worker processed 3 new UDP
    /// flows to a frontend and 1 frame to an undeclared port of it.
    pub(crate) fn scraped() -> (String, Arc<OpsState>) {
        let tables = Arc::new(fuzz_tables());
        let mut engine = Engine::standalone(4096);
        let now = 5_000_000_000;
        let mut len_tx = 0;
        for sport in [1000, 1001, 1002] {
            let mut f = udp(sport, [198, 18, 200, 10], 53);
            let n = f.len();
            f.resize(2048, 0);
            engine.process(now, &mut f, n, &tables);
            len_tx += n as u64;
        }
        let mut f = udp(999, [198, 18, 200, 10], 54);
        let n = f.len();
        f.resize(2048, 0);
        engine.process(now, &mut f, n, &tables);
        assert_eq!(engine.traffic().verdict_bytes[0], len_tx);

        let state = OpsState::new();
        state.set_dataplane(
            vec!["eth0".into()],
            engine.flow_state().clone(),
            Arc::new(move || now),
        );
        state.adopt_tables(tables);
        state.set_kube_stats(Arc::default());
        state.set_xdp_counters(vec![("redirect_frontend", 4), ("pass", 1)]);
        state.queued_update();
        state.synced(1, Duration::from_millis(3));
        let mut snap = WorkerSnapshot {
            engine: engine.stats().clone(),
            traffic: engine.traffic().clone(),
            ..WorkerSnapshot::default()
        };
        snap.counters.rx[0] = 4;
        snap.counters.busy_polls = 1;
        state.update_workers(vec![snap]);
        let cfg = OpsConfig {
            metrics_addr: None,
            healthz_addr: None,
            stale_after: Duration::from_secs(60),
            worker_stall: Duration::from_secs(60),
            health_check_node_ports: false,
        };
        let r = registry(state.clone(), cfg);
        (render(&r), state)
    }

    /// Strict checks the lenient parser does not make: every line is a
    /// comment or `name{labels} value`, and the text ends with `# EOF`.
    fn strictly_valid(text: &str) {
        assert!(text.ends_with("# EOF\n"), "no # EOF");
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect(line);
            value.parse::<f64>().expect(line);
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
            if name_end < series.len() {
                assert!(series.ends_with('}'), "{line}");
            }
        }
    }

    fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        s.samples
            .iter()
            .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    pub(crate) fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
    }

    #[test]
    fn scrape_sums_worker_counters_and_parses() {
        let (text, _state) = scraped();
        strictly_valid(&text);
        let s = parse(&text);
        assert_eq!(
            value(&s, "edgeplane_packets_total", &[("verdict", "tx")]),
            3.0
        );
        assert_eq!(
            value(&s, "edgeplane_packets_total", &[("verdict", "drop")]),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "edgeplane_drops_total",
                &[("reason", "unknown_service_port"), ("code", "11")]
            ),
            1.0
        );
        assert_eq!(value(&s, "edgeplane_drops_total", &[]), 1.0);
        assert_eq!(
            value(
                &s,
                "edgeplane_interface_rx_packets_total",
                &[("interface", "eth0")]
            ),
            4.0
        );
        let fe = [("frontend", "198.18.200.10:53/UDP"), ("kind", "ClusterIP")];
        assert_eq!(value(&s, "edgeplane_frontend_new_flows_total", &fe), 3.0);
        assert_eq!(value(&s, "edgeplane_frontend_packets_total", &fe), 3.0);
        assert_eq!(
            value(
                &s,
                "edgeplane_backend_new_flows_total",
                &[("service", "test/svc1")]
            ),
            3.0
        );
        assert_eq!(
            value(
                &s,
                "edgeplane_backend_active_flows",
                &[("service", "test/svc1")]
            ),
            3.0
        );
        assert_eq!(value(&s, "edgeplane_conntrack_entries", &[]), 3.0);
        assert!(value(&s, "edgeplane_conntrack_capacity", &[]) >= 4096.0);
        assert_eq!(
            value(&s, "edgeplane_snat_ports_in_use", &[("worker", "0")]),
            3.0
        );
        assert_eq!(
            value(&s, "edgeplane_snat_ports_capacity", &[("worker", "0")]),
            1000.0
        );
        assert_eq!(value(&s, "edgeplane_tables_generation", &[]), 1.0);
        assert_eq!(value(&s, "edgeplane_healthy", &[]), 1.0);
        assert!(value(&s, "edgeplane_tables_last_sync_timestamp_seconds", &[]) > 1.7e9);
        assert!(
            text.contains("edgeplane_tables_publish_duration_seconds_count 1"),
            "{text}"
        );
    }

    /// Every sample name a scrape can carry, from [`METRICS`].
    fn exposed_names(text: &str) -> HashSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l[..l.find(['{', ' ']).unwrap_or(l.len())].to_string())
            .collect()
    }

    #[test]
    fn every_listed_metric_is_exposed_and_every_exposed_one_listed() {
        let (text, _) = scraped();
        let exposed = exposed_names(&text);
        for (name, kind, _) in METRICS {
            let probe = if *kind == "histogram" {
                format!("{name}_count")
            } else {
                name.to_string()
            };
            assert!(
                exposed.contains(&probe),
                "{name} listed but not in a scrape"
            );
        }
        for e in &exposed {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| e.strip_suffix(s))
                .filter(|b| METRICS.iter().any(|(n, k, _)| n == b && *k == "histogram"))
                .unwrap_or(e);
            assert!(
                METRICS.iter().any(|(n, _, _)| *n == base),
                "{e} exposed but not listed in METRICS"
            );
        }
    }

    /// Metric names a PromQL expression mentions (identifiers that start
    /// with `edgeplane_`).
    pub(crate) fn promql_metrics(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let b = expr.as_bytes();
        let mut i = 0;
        while let Some(p) = expr[i..].find("edgeplane_") {
            let start = i + p;
            let mut end = start;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            out.push(expr[start..end].to_string());
            i = end;
        }
        out
    }

    #[test]
    fn the_grafana_dashboard_queries_only_metrics_a_scrape_has() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json"))
                .expect("deploy/grafana-dashboard.json is valid JSON");
        let (text, _) = scraped();
        let exposed = exposed_names(&text);
        let mut exprs = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, x) in m {
                        if k == "expr" {
                            if let Some(s) = x.as_str() {
                                out.push(s.to_string());
                            }
                        }
                        walk(x, out);
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        walk(&dash, &mut exprs);
        assert!(
            exprs.len() >= 10,
            "the dashboard has {} queries",
            exprs.len()
        );
        let mut used = HashSet::new();
        for e in &exprs {
            for m in promql_metrics(e) {
                assert!(
                    exposed.contains(&m),
                    "dashboard queries {m}, which no scrape has: {e}"
                );
                used.insert(m);
            }
        }
        // The headline families all have a panel.
        for m in [
            "edgeplane_packets_total",
            "edgeplane_drops_total",
            "edgeplane_conntrack_entries",
            "edgeplane_backend_new_flows_total",
            "edgeplane_tables_publish_duration_seconds_bucket",
            "edgeplane_worker_busy_ratio",
            "edgeplane_snat_ports_in_use",
        ] {
            assert!(used.contains(m), "no panel shows {m}");
        }
    }

    #[test]
    fn docs_list_every_metric_and_no_other() {
        let doc = include_str!("../../docs/operations.md");
        for (name, _, _) in METRICS {
            assert!(
                doc.contains(&format!("| `{name}` |")),
                "{name} is not in the metrics table of docs/operations.md"
            );
        }
        for m in promql_metrics(doc) {
            if m.ends_with('_') {
                continue; // a prefix, e.g. `edgeplane_frontend_*`
            }
            assert!(
                METRICS.iter().any(|(n, _, _)| *n == m),
                "docs/operations.md mentions {m}, which is not exposed"
            );
        }
    }
}
