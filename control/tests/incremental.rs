//! The incremental [`Compiler`] returns exactly what a fresh [`compile`]
//! returns: random object sets (every Service type, dual-stack, named and
//! multi-port, policies, topology hints, affinity, conflicts, invalid
//! objects, duplicates), then random sequences of edits (change, add, delete,
//! reorder, node changes), compiled incrementally by one long-lived compiler
//! and from scratch, compared field by field: tables, report and warnings.

use std::collections::BTreeMap;
use std::net::IpAddr;

use edgeplane_control::compile::{compile, CompileOptions, Compiled, Compiler};
use edgeplane_control::manifests::ObjectSet;
use edgeplane_dataplane::tables::Cidr;
use edgeplane_dataplane::testing::tables_content as tables_norm;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const NAMES: usize = 12;

fn pick<'a, T>(r: &mut StdRng, v: &'a [T]) -> &'a T {
    &v[r.gen_range(0..v.len())]
}

fn service(r: &mut StdRng, i: usize) -> Service {
    let ns = *pick(r, &["default", "default", "default", "kube-system", ""]);
    let name = if r.gen_ratio(1, 40) {
        String::new()
    } else {
        format!("svc{i}")
    };
    let type_ = *pick(
        r,
        &[
            "ClusterIP",
            "ClusterIP",
            "NodePort",
            "LoadBalancer",
            "ExternalName",
        ],
    );
    // A small address space so that frontends sometimes collide.
    let v4 = format!("198.18.100.{}", r.gen_range(1..(NAMES as u8 + 4)));
    let v6 = format!("2001:db8:100::{:x}", r.gen_range(1..(NAMES as u16 + 4)));
    let cluster_ips: Vec<String> = match r.gen_range(0..8) {
        0 => vec![v6],
        1 => vec![v4, v6],
        2 => vec![v6, v4],
        3 => vec!["None".into()],
        _ => vec![v4],
    };
    let mut ports = Vec::new();
    let n_ports = if r.gen_ratio(1, 10) {
        0
    } else {
        r.gen_range(1..3)
    };
    for k in 0..n_ports {
        let mut p = json!({"port": 80 + k * 363 + r.gen_range(0..2),
                           "protocol": pick(r, &["TCP", "TCP", "TCP", "TCP", "UDP", "SCTP"]),
                           "targetPort": 8080});
        if r.gen_bool(0.4) {
            p["name"] = json!(pick(r, &["http", "http", "dns", "https"]));
        }
        if type_ != "ClusterIP" && r.gen_bool(0.8) {
            p["nodePort"] = json!(30000 + r.gen_range(0..6));
        }
        ports.push(p);
    }
    let mut spec = json!({"type": type_, "clusterIP": cluster_ips[0],
                          "clusterIPs": cluster_ips, "ports": ports});
    if r.gen_bool(0.2) {
        spec["externalIPs"] = json!([pick(r, &["198.18.7.1", "198.18.7.2", "2001:db8:7::1"])]);
    }
    if r.gen_bool(0.3) {
        spec["externalTrafficPolicy"] = json!("Local");
    }
    if r.gen_bool(0.2) {
        spec["internalTrafficPolicy"] = json!("Local");
    }
    if r.gen_bool(0.2) {
        spec["sessionAffinity"] = json!("ClientIP");
        if r.gen_bool(0.5) {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
        }
    }
    if r.gen_bool(0.15) {
        spec["trafficDistribution"] = json!("PreferClose");
    }
    if r.gen_bool(0.2) {
        spec["loadBalancerSourceRanges"] = json!([pick(r, &["198.18.0.0/16", "2001:db8::/32"])]);
    }
    let mut labels = json!({});
    if r.gen_ratio(1, 20) {
        labels["service.kubernetes.io/service-proxy-name"] = json!("other");
    }
    let mut status = json!({});
    if type_ == "LoadBalancer" {
        status = json!({"loadBalancer": {"ingress": [
            {"ip": pick(r, &["198.18.9.1", "198.18.9.2", "2001:db8:9::1"])}]}});
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec, "status": status}))
    .expect("a valid Service")
}

/// A slice for Service `i`; usually matching `svc` (its namespace, port
/// names and protocols), sometimes not.
fn slice_of(r: &mut StdRng, svc: Option<&Service>, i: usize, k: usize) -> EndpointSlice {
    let mut s = slice(r, i, k);
    if let Some(svc) = svc.filter(|_| r.gen_bool(0.8)) {
        let ns = svc.metadata.namespace.clone().filter(|n| !n.is_empty());
        s.metadata.namespace = Some(ns.unwrap_or_else(|| "default".into()));
        let ports = svc
            .spec
            .as_ref()
            .and_then(|sp| sp.ports.clone())
            .unwrap_or_default();
        s.ports = Some(
            ports
                .iter()
                .map(|p| k8s_openapi::api::discovery::v1::EndpointPort {
                    name: p.name.clone(),
                    protocol: p.protocol.clone(),
                    port: Some(8080 + (p.port % 3)),
                    ..Default::default()
                })
                .collect(),
        );
    }
    s
}

fn slice(r: &mut StdRng, i: usize, k: usize) -> EndpointSlice {
    let v6 = r.gen_ratio(1, 4);
    let mut eps = Vec::new();
    for _ in 0..r.gen_range(0..6) {
        let a = r.gen_range(1..40u8);
        let addr = if v6 {
            format!("2001:db8:200::{a:x}")
        } else {
            format!("198.18.200.{a}")
        };
        let mut e = json!({"addresses": [addr],
                           "nodeName": pick(r, &["node-a", "node-b", "node-c"])});
        if r.gen_bool(0.7) {
            let ready = r.gen_bool(0.7);
            e["conditions"] = json!({"ready": ready, "serving": ready || r.gen_bool(0.5),
                                     "terminating": !ready && r.gen_bool(0.7)});
        }
        if r.gen_bool(0.3) {
            e["hints"] = json!({"forZones": [{"name": pick(r, &["z1", "z2"])}]});
        }
        eps.push(e);
    }
    let mut ports = Vec::new();
    let n_ports = if r.gen_ratio(1, 10) {
        0
    } else {
        r.gen_range(1..3)
    };
    for _ in 0..n_ports {
        let mut p = json!({"port": pick(r, &[8080, 8443, 53]),
                           "protocol": pick(r, &["TCP", "TCP", "TCP", "TCP", "UDP", "SCTP"])});
        if r.gen_bool(0.4) {
            p["name"] = json!(pick(r, &["http", "http", "dns", "https"]));
        }
        ports.push(p);
    }
    let owner = if r.gen_ratio(1, 30) {
        None
    } else {
        Some(format!("svc{i}"))
    };
    let mut labels = json!({});
    if let Some(o) = owner {
        labels["kubernetes.io/service-name"] = json!(o);
    }
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc{i}-{k}"), "namespace": pick(r, &["default", "default", "default", "kube-system"]),
                     "labels": labels},
        "addressType": if v6 { "IPv6" } else if r.gen_ratio(1, 30) { "FQDN" } else { "IPv4" },
        "ports": ports, "endpoints": eps}))
    .expect("a valid EndpointSlice")
}

fn node(r: &mut StdRng) -> Node {
    let mut addrs = vec![json!({"type": "InternalIP", "address": "198.18.0.10"})];
    if r.gen_bool(0.5) {
        addrs.push(json!({"type": "InternalIP", "address": "2001:db8::10"}));
    }
    if r.gen_bool(0.3) {
        addrs.push(json!({"type": "ExternalIP", "address": "198.18.0.11"}));
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": pick(r, &["z1", "z2"])}},
        "status": {"addresses": addrs}}))
    .expect("a valid Node")
}

fn objects(r: &mut StdRng) -> ObjectSet {
    let mut o = ObjectSet::default();
    for i in 0..r.gen_range(0..NAMES) {
        let svc = service(r, i);
        for k in 0..r.gen_range(0..3) {
            let s = slice_of(r, Some(&svc), i, k);
            o.endpoint_slices.push(s);
        }
        o.services.push(svc);
    }
    if r.gen_bool(0.7) {
        o.nodes.push(node(r));
    }
    o
}

/// One random edit of `o`.
fn edit(r: &mut StdRng, o: &mut ObjectSet) {
    match r.gen_range(0..13) {
        0..=2 if !o.endpoint_slices.is_empty() => {
            // Change one slice (keep its name: an update).
            let j = r.gen_range(0..o.endpoint_slices.len());
            let name = o.endpoint_slices[j].metadata.name.clone();
            let i = r.gen_range(0..NAMES);
            let svc = o.services.get(i % o.services.len().max(1)).cloned();
            let mut s = slice_of(r, svc.as_ref(), i, 0);
            s.metadata.name = name;
            o.endpoint_slices[j] = s;
        }
        3 if !o.services.is_empty() => {
            let j = r.gen_range(0..o.services.len());
            let name = o.services[j].metadata.name.clone();
            let mut s = service(r, 0);
            s.metadata.name = name;
            o.services[j] = s;
        }
        4 => {
            let i = r.gen_range(0..NAMES);
            o.services.push(service(r, i));
        }
        5 => {
            let (i, k) = (r.gen_range(0..NAMES), r.gen_range(0..3));
            let svc = o
                .services
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(&format!("svc{i}")))
                .cloned();
            let s = slice_of(r, svc.as_ref(), i, k);
            o.endpoint_slices.push(s);
        }
        6 if !o.services.is_empty() => {
            let j = r.gen_range(0..o.services.len());
            o.services.remove(j);
        }
        7 if !o.endpoint_slices.is_empty() => {
            let j = r.gen_range(0..o.endpoint_slices.len());
            o.endpoint_slices.remove(j);
        }
        8 => {
            o.services.shuffle(r);
            o.endpoint_slices.shuffle(r);
        }
        9 => {
            o.nodes = if r.gen_bool(0.8) {
                vec![node(r)]
            } else {
                Vec::new()
            };
        }
        10 if !o.services.is_empty() => {
            // A duplicate (the same object twice, as two manifest files may).
            let j = r.gen_range(0..o.services.len());
            let s = o.services[j].clone();
            o.services.push(s);
        }
        11 if o.endpoint_slices.len() >= 2 => {
            // Two slices swap their endpoints and ports: backends (and their
            // Maglev tables) move from one Service to another in one change.
            let a = r.gen_range(0..o.endpoint_slices.len());
            let b = (a + r.gen_range(1..o.endpoint_slices.len())) % o.endpoint_slices.len();
            let (ea, pa) = (
                o.endpoint_slices[a].endpoints.clone(),
                o.endpoint_slices[a].ports.clone(),
            );
            o.endpoint_slices[a].endpoints = o.endpoint_slices[b].endpoints.clone();
            o.endpoint_slices[a].ports = o.endpoint_slices[b].ports.clone();
            o.endpoint_slices[b].endpoints = ea;
            o.endpoint_slices[b].ports = pa;
        }
        _ if !o.endpoint_slices.is_empty() => {
            // Toggle one endpoint's readiness only.
            let j = r.gen_range(0..o.endpoint_slices.len());
            if let Some(e) = o.endpoint_slices[j].endpoints.first_mut() {
                let c = e.conditions.get_or_insert_with(Default::default);
                c.ready = Some(!c.ready.unwrap_or(true));
            }
        }
        _ => {}
    }
}

/// Everything a generation holds, in a comparable form.
fn fingerprint(c: &Compiled) -> String {
    let t = &c.tables;
    let index: BTreeMap<String, u32> = t
        .frontend_index
        .iter()
        .map(|(k, v)| (format!("{k:?}"), *v))
        .collect();
    let ips: std::collections::BTreeSet<IpAddr> = t.frontend_ips.keys().copied().collect();
    format!(
        "gen {}\nnode {:?}\nservices {:?}\nfrontends {:?}\nbackends {:?}\nmaglev {:?}\nranges {:?}\nindex {index:?}\nips {ips:?}\nwarnings {:#?}",
        t.generation,
        t.node,
        t.services,
        t.frontends,
        t.backends,
        t.maglev,
        t.source_ranges,
        c.warnings
    )
}

fn options(r: &mut StdRng) -> CompileOptions {
    CompileOptions {
        node_name: "node-a".into(),
        node_ips: if r.gen_bool(0.5) {
            Vec::new()
        } else {
            vec!["198.18.0.1".parse().expect("literal")]
        },
        maglev_m: *pick(r, &[251, 509]),
        nodeport_addresses: if r.gen_bool(0.2) {
            vec![Cidr {
                addr: "198.18.0.0".parse().expect("literal"),
                prefix_len: 24,
            }]
        } else {
            Vec::new()
        },
        zone: None,
        ..CompileOptions::default()
    }
}

/// What a sequence exercised, to check the generator reaches the cases.
#[derive(Debug, Default)]
struct Coverage {
    with_backends: usize,
    conflicts: usize,
    tables: usize,
    local_or_zone: usize,
}

/// Stamps every object with a resourceVersion derived from its contents, as
/// an API server's (a new one on every change).
fn stamp(o: &mut ObjectSet) {
    use std::hash::{Hash, Hasher};
    fn rv<T: serde::Serialize>(x: &T) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(x).expect("serializable").hash(&mut h);
        h.finish().to_string()
    }
    for s in &mut o.services {
        s.metadata.resource_version = None;
        s.metadata.resource_version = Some(rv(s));
    }
    for s in &mut o.endpoint_slices {
        s.metadata.resource_version = None;
        s.metadata.resource_version = Some(rv(s));
    }
}

fn check_sequence(seed: u64, steps: usize, cov: &mut Coverage) -> Result<(), TestCaseError> {
    let mut r = StdRng::seed_from_u64(seed);
    let opts = options(&mut r);
    let mut o = objects(&mut r);
    let mut compiler = Compiler::new(opts.clone()).expect("valid options");
    // Half the sequences as the Kubernetes source runs: resourceVersions
    // trusted (and stamped as an API server would).
    let trust = r.gen_bool(0.5);
    compiler.trust_resource_version(trust);
    for step in 0..steps {
        let generation = step as u64 + 1;
        if trust {
            stamp(&mut o);
        }
        let inc = compiler.compile(&o, generation);
        let fresh = compile(&o, &opts, generation).expect("valid options");
        prop_assert_eq!(
            fingerprint(&inc),
            fingerprint(&fresh),
            "seed {} step {}",
            seed,
            step
        );
        prop_assert_eq!(&inc.report, &fresh.report, "seed {} step {}", seed, step);
        cov.with_backends += inc.tables.frontends.iter().filter(|f| f.n_new > 0).count();
        cov.tables += inc.tables.maglev.len();
        cov.conflicts += inc
            .warnings
            .iter()
            .filter(|w| w.contains("already taken"))
            .count();
        cov.local_or_zone += inc
            .report
            .frontends
            .iter()
            .filter(|f| f.policy.mode == "Local" || f.topology_zone.is_some())
            .count();
        for _ in 0..r.gen_range(1..4) {
            edit(&mut r, &mut o);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random object sets and random edit sequences: incremental == fresh.
    #[test]
    fn incremental_equals_fresh(seed in any::<u64>()) {
        check_sequence(seed, 25, &mut Coverage::default())?;
    }
}

/// The generator reaches what the property is about: frontends with
/// backends (and so Maglev tables), frontend conflicts between Services,
/// `Local` policies and topology zones.
#[test]
fn generator_covers_the_interesting_cases() {
    let mut cov = Coverage::default();
    for seed in 0..16 {
        check_sequence(seed, 10, &mut cov).expect("incremental == fresh");
    }
    assert!(cov.with_backends > 200, "{cov:?}");
    assert!(cov.tables > 100, "{cov:?}");
    assert!(cov.conflicts > 10, "{cov:?}");
    assert!(cov.local_or_zone > 20, "{cov:?}");
}

/// The same Services compiled twice share every Maglev table; one changed
/// slice rebuilds one table and derives one Service again.
#[test]
fn unchanged_tables_are_shared_and_not_rebuilt() {
    let mk = |addrs: &[&str]| -> Value {
        let eps: Vec<Value> = addrs
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
               "endpoints": eps})
    };
    let svc = |name: &str, ip: &str| -> Service {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}}))
        .expect("valid")
    };
    let mut other: EndpointSlice =
        serde_json::from_value(mk(&["198.18.2.1", "198.18.2.2"])).expect("valid");
    other.metadata.name = Some("db-1".into());
    other
        .metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert("kubernetes.io/service-name".into(), "db".into());
    let mut o = ObjectSet {
        services: vec![svc("web", "198.18.100.1"), svc("db", "198.18.100.2")],
        endpoint_slices: vec![
            serde_json::from_value(mk(&["198.18.1.1", "198.18.1.2"])).expect("valid"),
            other,
        ],
        nodes: Vec::new(),
        journal: Default::default(),
    };
    let opts = CompileOptions {
        node_name: "node-a".into(),
        maglev_m: 251,
        ..CompileOptions::default()
    };
    let mut c = Compiler::new(opts).expect("valid");
    let (first, s1) = c.compile_with_stats(&o, 1);
    assert_eq!((s1.services_derived, s1.maglev_built), (2, 2));
    let (second, s2) = c.compile_with_stats(&o, 2);
    assert_eq!(
        (s2.services_derived, s2.services_reused, s2.maglev_built),
        (0, 2, 0)
    );
    assert_eq!(first.tables.maglev.len(), 2);
    for (a, b) in first.tables.maglev.iter().zip(&second.tables.maglev) {
        assert!(a.ptr_eq(b));
    }
    o.endpoint_slices[0] =
        serde_json::from_value(mk(&["198.18.1.1", "198.18.1.3"])).expect("valid");
    let (third, s3) = c.compile_with_stats(&o, 3);
    assert_eq!(
        (s3.services_derived, s3.services_reused, s3.maglev_built),
        (1, 1, 1)
    );
    assert_eq!(s3.maglev_cached, 2, "the old table of web is evicted");
    let db = |c: &Compiled| {
        let (_, f) = c
            .tables
            .frontend(
                "198.18.100.2".parse().expect("literal"),
                80,
                edgeplane_packet::Proto::Tcp,
            )
            .expect("db frontend");
        c.tables.maglev[f.maglev_off as usize].clone()
    };
    assert!(db(&first).ptr_eq(&db(&third)));
    let web = |c: &Compiled| {
        let (_, f) = c
            .tables
            .frontend(
                "198.18.100.1".parse().expect("literal"),
                80,
                edgeplane_packet::Proto::Tcp,
            )
            .expect("web frontend");
        c.tables.maglev[f.maglev_off as usize].clone()
    };
    assert!(!web(&first).ptr_eq(&web(&third)));
}

/// Deriving Services and building Maglev tables on several threads gives
/// exactly the single-threaded result (150 Services, 150 tables: both
/// parallel paths run).
#[test]
fn threads_do_not_change_the_result() {
    let mut o = ObjectSet::default();
    for i in 0..150u32 {
        o.services.push(
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("s{i}"), "namespace": "default"},
                "spec": {"type": "NodePort", "clusterIP": format!("198.18.{}.{}", 100 + i / 200, 1 + i % 200),
                         "ports": [{"name": "http", "port": 80, "nodePort": 30000 + i}]}}))
            .expect("valid"),
        );
        let eps: Vec<Value> = (0..1 + i % 7)
            .map(|j| {
                json!({"addresses": [format!("198.19.{}.{}", i, 1 + j)],
                            "conditions": {"ready": j % 3 != 2},
                            "nodeName": if j % 2 == 0 { "node-a" } else { "node-b" }})
            })
            .collect();
        o.endpoint_slices.push(
            serde_json::from_value(
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("s{i}-1"), "namespace": "default",
                             "labels": {"kubernetes.io/service-name": format!("s{i}")}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
                "endpoints": eps}),
            )
            .expect("valid"),
        );
    }
    let opts = CompileOptions {
        node_name: "node-a".into(),
        node_ips: vec!["198.18.0.1".parse().expect("literal")],
        maglev_m: 251,
        ..CompileOptions::default()
    };
    let mut one = Compiler::new(opts.clone()).expect("valid");
    one.set_threads(1);
    let mut four = Compiler::new(opts).expect("valid");
    four.set_threads(4);
    let (a, b) = (one.compile(&o, 1), four.compile(&o, 1));
    assert_eq!(a.tables.frontends.len(), 300);
    assert!(a.tables.maglev.len() >= 100);
    assert_eq!(fingerprint(&a), fingerprint(&b));
    assert_eq!(a.report, b.report);
}

/// (namespace, name) → the object as JSON, last one wins (as the mirror).
fn by_key<
    K: serde::Serialize
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    v: &[K],
) -> BTreeMap<(String, String), String> {
    v.iter()
        .map(|o| {
            let m = o.metadata();
            (
                (
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default(),
                ),
                serde_json::to_string(o).expect("serializable"),
            )
        })
        .collect()
}

/// Feeds the difference between `before` and `now` to `m` as watch events.
fn feed<K>(m: &mut edgeplane_control::kube::mirror::Mirror<K>, before: &[K], now: &[K])
where
    K: Clone
        + serde::Serialize
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
{
    let (b, n) = (by_key(before), by_key(now));
    let mut latest: BTreeMap<(String, String), &K> = BTreeMap::new();
    for o in now {
        let md = o.metadata();
        latest.insert(
            (
                md.namespace.clone().unwrap_or_default(),
                md.name.clone().unwrap_or_default(),
            ),
            o,
        );
    }
    for (k, o) in &latest {
        if b.get(k) != n.get(k) {
            m.apply((*o).clone());
        }
    }
    for o in before {
        let md = o.metadata();
        let k = (
            md.namespace.clone().unwrap_or_default(),
            md.name.clone().unwrap_or_default(),
        );
        if !n.contains_key(&k) {
            m.delete(o.clone());
        }
    }
}

/// The Kubernetes source's path: objects through the mirror (watch events,
/// sometimes a relist), snapshots with a journal, one long-lived compiler
/// following it ([`Compiler::compile_segments`]): the segments make the same
/// generation as a fresh compile of the same snapshot. Returns how many
/// compiles followed the journal.
fn check_journal(seed: u64, steps: usize) -> Result<usize, TestCaseError> {
    use edgeplane_control::kube::mirror::{Mirrors, PublishIndex};
    let mut r = StdRng::seed_from_u64(seed);
    let opts = options(&mut r);
    let mut o = objects(&mut r);
    let mut compiler = Compiler::new(opts.clone()).expect("valid options");
    let trust = r.gen_bool(0.5);
    compiler.trust_resource_version(trust);
    let mut ms = Mirrors::default();
    ms.services.relist(o.services.clone());
    ms.endpoint_slices.relist(o.endpoint_slices.clone());
    ms.nodes.relist(o.nodes.clone());
    let mut slot = None;
    let mut index = PublishIndex::default();
    let mut before = ObjectSet::default();
    let mut followed = 0;
    for step in 0..steps {
        let generation = step as u64 + 1;
        if trust {
            stamp(&mut o);
        }
        if step > 0 {
            if r.gen_ratio(1, 10) {
                ms.services.relist(o.services.clone());
                ms.endpoint_slices.relist(o.endpoint_slices.clone());
            } else {
                feed(&mut ms.services, &before.services, &o.services);
                feed(
                    &mut ms.endpoint_slices,
                    &before.endpoint_slices,
                    &o.endpoint_slices,
                );
                feed(&mut ms.nodes, &before.nodes, &o.nodes);
            }
        }
        before = o.clone();
        prop_assert!(ms.publish_into(&mut slot, &mut index));
        let snap = slot.clone().expect("published");
        let out = compiler.compile_segments(&snap, generation);
        followed += out.incremental as usize;
        let (node, segs) = compiler.segments();
        let got = edgeplane_dataplane::Tables::from_segments(node.clone(), generation, segs);
        let fresh = compile(&snap, &opts, generation).expect("valid options");
        prop_assert_eq!(
            tables_norm(&got),
            tables_norm(&fresh.tables),
            "seed {} step {}",
            seed,
            step
        );
        drop(snap);
        for _ in 0..r.gen_range(1..3) {
            edit(&mut r, &mut o);
        }
    }
    Ok(followed)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Following the journal gives what a fresh compile gives.
    #[test]
    fn journal_segments_equal_fresh(seed in any::<u64>()) {
        check_journal(seed, 25)?;
    }
}

/// The journal path is taken (most compiles are not full ones).
#[test]
fn the_journal_is_followed() {
    let mut followed = 0;
    for seed in 0..16 {
        followed += check_journal(seed, 20).expect("journal == fresh");
    }
    assert!(followed > 16 * 20 / 4, "{followed} of {} compiles", 16 * 20);
}

/// A control path (objects from an API server) publishing into a fresh
/// region under the temp dir, for node-a at `node_ip` with Maglev size `m`.
fn control_path_in_temp(
    tag: &str,
    node_ip: &str,
    m: u32,
) -> (
    std::path::PathBuf,
    CompileOptions,
    edgeplane_control::control_path::ControlPath,
) {
    let dir = std::env::temp_dir().join(format!("edgeplane-{tag}-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = CompileOptions {
        node_name: "node-a".into(),
        node_ips: vec![node_ip.parse().expect("an address")],
        maglev_m: m,
        ..CompileOptions::default()
    };
    let wopts = edgeplane_dataplane::region::WriterOptions {
        slot_size: 1 << 20,
        arena_size: 64 << 20,
        ..Default::default()
    };
    let path = edgeplane_control::control_path::ControlPath::open(&dir, wopts, opts.clone(), true)
        .expect("region");
    (dir, opts, path)
}

/// The control path end to end at small scale: one EndpointSlice changed
/// through the mirror is compiled by following the journal (one Service
/// derived) and published as one new segment; a relist with new
/// resourceVersions and the same content derives and writes nothing; a
/// reader sees exactly what a fresh compile makes.
#[test]
fn control_path_publishes_only_what_changed() {
    use edgeplane_control::kube::mirror::{Mirrors, PublishIndex};
    use edgeplane_dataplane::region::RegionReader;
    let slice = |i: usize, last: u8, rv: u64| -> EndpointSlice {
        serde_json::from_value(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc{i}-1"), "namespace": "default",
                         "resourceVersion": rv.to_string(),
                         "labels": {"kubernetes.io/service-name": format!("svc{i}")}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [format!("198.18.{}.1", 10 + i)]},
                          {"addresses": [format!("198.18.{}.{last}", 10 + i)]}]}),
        )
        .expect("valid")
    };
    let svc = |i: usize, rv: u64| -> Service {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc{i}"), "namespace": "default",
                         "resourceVersion": rv.to_string()},
            "spec": {"clusterIP": format!("198.18.100.{}", 1 + i),
                     "ports": [{"name": "http", "port": 80}]}}))
        .expect("valid")
    };
    let n = 20;
    let (dir, opts, mut path) = control_path_in_temp("cp", "198.18.0.1", 251);
    let mut ms = Mirrors::default();
    ms.services.relist((0..n).map(|i| svc(i, 1 + i as u64)));
    ms.endpoint_slices
        .relist((0..n).map(|i| slice(i, 2, 100 + i as u64)));
    ms.nodes.relist(Vec::new());
    let (mut slot, mut index) = (None, PublishIndex::default());
    assert!(ms.publish_into(&mut slot, &mut index));
    let snap = slot.clone().expect("published");
    let (c, r) = path.compile_publish(&snap);
    let r = r.expect("first publication");
    assert!(!c.incremental);
    assert_eq!((r.segments_written, r.frontends), (n, n));
    drop(snap);
    let mut reader = RegionReader::open(&dir).expect("reader");
    reader.try_adopt().expect("adopt").expect("generation 1");
    reader.settle();
    // One slice changes.
    ms.endpoint_slices.apply(slice(7, 3, 1000));
    assert!(ms.publish_into(&mut slot, &mut index));
    let snap = slot.clone().expect("published");
    let (c, r) = path.compile_publish(&snap);
    let r = r.expect("publish");
    assert!(c.incremental, "the journal was followed");
    assert_eq!((c.stats.services_derived, c.stats.maglev_built), (1, 1));
    assert_eq!(
        (r.segments_written, r.segments_kept, r.blocks_written),
        (1, n - 1, 1)
    );
    let got = reader.try_adopt().expect("adopt").expect("generation 2");
    reader.settle();
    let fresh = compile(&snap, &opts, 2).expect("valid");
    assert_eq!(tables_norm(&got), tables_norm(&fresh.tables));
    drop(snap);
    // A relist: everything again, new resourceVersions, same content.
    ms.services.relist((0..n).map(|i| svc(i, 2000 + i as u64)));
    ms.endpoint_slices
        .relist((0..n).map(|i| slice(i, if i == 7 { 3 } else { 2 }, 3000 + i as u64)));
    assert!(ms.publish_into(&mut slot, &mut index));
    let snap = slot.clone().expect("published");
    let (c, r) = path.compile_publish(&snap);
    let r = r.expect("publish");
    assert!(!c.incremental, "a relist starts a new journal lineage");
    assert_eq!((c.stats.services_derived, c.stats.maglev_built), (0, 0));
    assert_eq!((r.segments_written, r.blocks_written), (0, 0));
    let got = reader.try_adopt().expect("adopt").expect("generation 3");
    assert_eq!(tables_norm(&got), tables_norm(&fresh.tables));
    drop(reader);
    drop(path);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The event sequence of `tests/netns/kube-faults.sh` (a CI failure): after
/// the API server's return the Services watcher reconnected before the
/// EndpointSlices one, so a new NodePort Service arrived alone (a full
/// compile) and its slice with another slice's change in the next snapshot
/// (the journal). Every generation must equal a fresh compile.
#[test]
fn kube_faults_event_sequence() {
    use edgeplane_control::kube::mirror::{Mirrors, PublishIndex};
    use edgeplane_dataplane::region::RegionReader;
    // Objects as the script's YAML makes them, each write a new version.
    let rv = std::cell::Cell::new(0u64);
    let next_rv = || {
        rv.set(rv.get() + 1);
        rv.get().to_string()
    };
    // (name, Service, port name, port, protocol, endpoints: "ADDR" or
    // "ADDR:terminating")
    let slice = |name: &str, svc: &str, pname: &str, port: u16, proto: &str, eps: &[&str]| {
        let endpoints: Vec<Value> = eps
            .iter()
            .map(|e| {
                let (a, term) = e
                    .strip_suffix(":terminating")
                    .map_or((*e, false), |a| (a, true));
                json!({"addresses": [a],
                       "conditions": {"ready": !term, "serving": true, "terminating": term}})
            })
            .collect();
        serde_json::from_value::<EndpointSlice>(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": next_rv(),
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": pname, "port": port, "protocol": proto}],
            "endpoints": endpoints}))
        .expect("valid slice")
    };
    // (name, ClusterIP, port name, port, protocol, targetPort, NodePort)
    let service = |name: &str,
                   ip: &str,
                   pname: &str,
                   port: u16,
                   proto: &str,
                   target: u16,
                   np: Option<u16>| {
        let mut p = json!({"name": pname, "port": port, "protocol": proto, "targetPort": target});
        if let Some(np) = np {
            p["nodePort"] = json!(np);
        }
        serde_json::from_value::<Service>(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "resourceVersion": next_rv()},
            "spec": {"type": if np.is_some() { "NodePort" } else { "ClusterIP" }, "clusterIP": ip,
                     "selector": {"app": name}, "ports": [p]}}))
        .expect("valid service")
    };
    let churn = |eps: &[&str]| slice("churn-1", "churn", "echo", 8080, "TCP", eps);
    let term = |eps: &[&str]| slice("term-1", "term", "who", 9090, "TCP", eps);
    let node: Node = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "resourceVersion": "1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.1.1"}]}}))
    .expect("valid node");
    let (dir, opts, mut path) = control_path_in_temp("kf", "198.18.1.1", 16381);
    let mut reader: Option<RegionReader> = None;
    let (mut slot, mut index) = (None, PublishIndex::default());
    let mut generation = 0u64;
    let mut step = |ms: &mut Mirrors, what: &str| {
        assert!(ms.publish_into(&mut slot, &mut index), "{what}: published");
        let snap = slot.clone().expect("published");
        let (_, r) = path.compile_publish(&snap);
        r.expect("publish");
        generation += 1;
        let rd = reader.get_or_insert_with(|| RegionReader::open(&dir).expect("reader"));
        let got = rd.try_adopt().expect("adopt").expect("a new generation");
        rd.settle();
        let fresh = compile(&snap, &opts, generation).expect("valid");
        let brief = |t: &edgeplane_dataplane::Tables| -> String {
            let mut s: Vec<String> = t
                .frontends
                .iter()
                .map(|f| format!("{:?} {:?}/{}", f.key, f.kind, f.n_new))
                .collect();
            s.sort();
            s.join("\n")
        };
        let (node, segs) = path.compiler().segments();
        let compiled = edgeplane_dataplane::Tables::from_segments(node.clone(), generation, segs);
        assert!(
            tables_norm(&compiled) == tables_norm(&fresh.tables),
            "{what}: compiled\n{}\nfresh\n{}",
            brief(&compiled),
            brief(&fresh.tables)
        );
        assert!(
            tables_norm(&got) == tables_norm(&fresh.tables),
            "{what}: published\n{}\nfresh\n{}",
            brief(&got),
            brief(&fresh.tables)
        );
    };
    let mut ms = Mirrors::default();
    // The base objects, listed.
    ms.nodes.relist(vec![node.clone()]);
    let two = ["198.18.2.2", "198.18.2.3"];
    ms.services.relist(vec![
        service("web", "198.18.200.10", "echo", 80, "TCP", 8080, Some(30080)),
        service("dns", "198.18.200.11", "dns", 53, "UDP", 5353, None),
        service("term", "198.18.200.12", "who", 80, "TCP", 9090, None),
        service("churn", "198.18.200.13", "echo", 80, "TCP", 8080, None),
    ]);
    ms.endpoint_slices.relist(vec![
        slice("web-1", "web", "echo", 8080, "TCP", &two),
        slice("dns-1", "dns", "dns", 5353, "UDP", &two),
        term(&two),
        churn(&["198.18.2.2"]),
    ]);
    step(&mut ms, "initial list");
    ms.endpoint_slices
        .apply(term(&["198.18.2.2", "198.18.2.3:terminating"]));
    step(&mut ms, "terminating");
    ms.endpoint_slices
        .apply(churn(&["198.18.2.2", "198.18.2.3", "198.18.2.4"]));
    step(&mut ms, "c1");
    // 410: everything listed again.
    let slices_now: Vec<EndpointSlice> = ms.endpoint_slices.objects().cloned().collect();
    let svcs_now: Vec<Service> = ms.services.objects().cloned().collect();
    ms.services.relist(svcs_now);
    ms.endpoint_slices.relist(slices_now);
    ms.nodes.relist(vec![node.clone()]);
    step(&mut ms, "relist");
    ms.endpoint_slices.apply(churn(&["198.18.2.3"]));
    let extra1 = service("extra-1", "198.18.200.14", "echo", 81, "TCP", 8080, None);
    ms.services.apply(extra1.clone());
    let extra1_slice = slice("extra-1", "extra-1", "echo", 8080, "TCP", &["198.18.2.4"]);
    ms.endpoint_slices.apply(extra1_slice.clone());
    step(&mut ms, "c2");
    ms.services.delete(extra1);
    step(&mut ms, "delete service extra-1");
    ms.endpoint_slices.delete(extra1_slice);
    step(&mut ms, "delete slice extra-1");
    ms.endpoint_slices
        .apply(churn(&["198.18.2.4", "198.18.2.2"]));
    step(&mut ms, "c3");
    // After the outage: the Services watcher first...
    let extra2 = service(
        "extra-2",
        "198.18.200.15",
        "echo",
        82,
        "TCP",
        8080,
        Some(30082),
    );
    ms.services.apply(extra2);
    step(&mut ms, "c4: the new Service alone");
    // ... then the EndpointSlices watcher: churn's old backends move to extra-2.
    ms.endpoint_slices.apply(churn(&["198.18.2.3"]));
    let extra2_slice = slice(
        "extra-2",
        "extra-2",
        "echo",
        8080,
        "TCP",
        &["198.18.2.2", "198.18.2.4"],
    );
    ms.endpoint_slices.apply(extra2_slice);
    step(&mut ms, "c4: the slices");
    drop(reader);
    drop(path);
    let _ = std::fs::remove_dir_all(&dir);
}
