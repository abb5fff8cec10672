//! One test per compile rule, each on literal YAML.

mod common;
use common::*;

use edgeplane_control::compile::compile;
use edgeplane_control::manifests::{load_path, load_str};
use edgeplane_control::report::render_json;
use edgeplane_dataplane::tables::{EmptyAction, FrontendKind};
use edgeplane_packet::Proto;

const WEB: &str =
    "  clusterIP: 198.18.200.10\n  ports:\n  - {name: http, port: 80, targetPort: http}";

#[test]
fn named_target_port_resolves_per_slice() {
    let y = svc("web", WEB)
        + &slice(
            "web-a",
            "web",
            "IPv4",
            "[{name: http, port: 8080}]",
            "- {addresses: [198.18.2.2]}",
        )
        + &slice(
            "web-b",
            "web",
            "IPv4",
            "[{name: http, port: 9090}]",
            "- {addresses: [198.18.3.2]}",
        );
    let c = compile_yaml(&y);
    let f = fe(&c, "198.18.200.10", 80, "TCP");
    assert_eq!(new_backends(f), ["198.18.2.2:8080", "198.18.3.2:9090"]);
}

#[test]
fn multi_port_matches_slice_ports_by_name_and_protocol() {
    let y = svc(
        "multi",
        "  clusterIP: 198.18.200.10\n  ports:\n  - {name: http, port: 80}\n  - {name: https, port: 443}\n  - {name: dns, port: 53, protocol: UDP}",
    ) + &slice(
        "multi-1",
        "multi",
        "IPv4",
        "[{name: https, port: 9377}, {name: http, port: 9376}, {name: dns, port: 5353, protocol: UDP}, {name: dns, port: 5354, protocol: TCP}]",
        "- {addresses: [198.18.2.2]}",
    );
    let c = compile_yaml(&y);
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 80, "TCP")),
        ["198.18.2.2:9376"]
    );
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 443, "TCP")),
        ["198.18.2.2:9377"]
    );
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 53, "UDP")),
        ["198.18.2.2:5353"]
    );
    assert_eq!(c.report.frontends.len(), 3);
    // One ServiceInfo per Service port.
    assert_eq!(c.tables.services.len(), 3);
}

#[test]
fn dual_stack_gets_one_frontend_per_family_with_its_own_endpoints() {
    let y = svc(
        "web",
        "  type: NodePort\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: 198.18.200.10\n  clusterIPs: [198.18.200.10, \"2001:db8:200::10\"]\n  ports:\n  - {name: http, port: 80, nodePort: 30080}",
    ) + &slice("w4", "web", "IPv4", "[{name: http, port: 8080}]", "- {addresses: [198.18.2.2]}")
        + &slice("w6", "web", "IPv6", "[{name: http, port: 8080}]", "- {addresses: [\"2001:db8:2::2\"]}");
    let c = compile_yaml(&y);
    assert_eq!(c.report.frontends.len(), 4, "{:?}", keys(&c));
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 80, "TCP")),
        ["198.18.2.2:8080"]
    );
    assert_eq!(
        new_backends(fe(&c, "2001:db8:200::10", 80, "TCP")),
        ["2001:db8:2::2:8080"]
    );
    assert_eq!(
        new_backends(fe(&c, "198.18.1.1", 30080, "TCP")),
        ["198.18.2.2:8080"]
    );
    assert_eq!(
        new_backends(fe(&c, "2001:db8:1::1", 30080, "TCP")),
        ["2001:db8:2::2:8080"]
    );

    // Single-stack IPv4: no IPv6 NodePort even though the node has an IPv6 address.
    let y = svc("v4", "  type: NodePort\n  clusterIP: 198.18.200.10\n  ports:\n  - {name: http, port: 80, nodePort: 30080}");
    let c = compile_yaml(&y);
    assert_eq!(
        keys(&c),
        [
            "ClusterIP 198.18.200.10:80/TCP",
            "NodePort 198.18.1.1:30080/TCP"
        ]
    );
}

#[test]
fn externalname_and_headless_get_no_frontends() {
    let y = svc("ext", "  type: ExternalName\n  externalName: db.example.com")
        + &svc("headless", "  clusterIP: None\n  ports: [{name: http, port: 80}]")
        + "apiVersion: v1\nkind: Service\nmetadata: {name: labelled, namespace: default, labels: {service.kubernetes.io/headless: \"\"}}\nspec: {clusterIP: 198.18.200.12, ports: [{port: 80}]}\n---\n"
        + &slice("h", "headless", "IPv4", "[{name: http, port: 80}]", "- {addresses: [198.18.2.2]}");
    let c = compile_yaml(&y);
    assert!(c.report.frontends.is_empty(), "{:?}", keys(&c));
    assert_eq!(c.report.skipped.len(), 3);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn service_proxy_name_label_hands_the_service_to_another_proxy() {
    let y = "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: default, labels: {service.kubernetes.io/service-proxy-name: foo}}\nspec: {clusterIP: 198.18.200.12, ports: [{port: 80}]}\n";
    let c = compile_yaml(y);
    assert!(c.report.frontends.is_empty());
    assert!(c.report.skipped[0].reason.contains("service-proxy-name"));
}

#[test]
fn selectorless_service_uses_its_hand_made_slice() {
    let y = svc(
        "manual",
        "  clusterIP: 198.18.200.10\n  ports:\n  - {name: http, port: 80, targetPort: 9376}",
    ) + &slice(
        "manual-1",
        "manual",
        "IPv4",
        "[{name: http, port: 9376, appProtocol: http}]",
        "- {addresses: [198.18.14.6]}\n- {addresses: [198.18.14.8]}",
    );
    let c = compile_yaml(&y);
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 80, "TCP")),
        ["198.18.14.6:9376", "198.18.14.8:9376"]
    );
}

#[test]
fn slices_of_another_namespace_do_not_match() {
    let y = svc("web", WEB)
        + "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: w, namespace: other, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [198.18.2.2]}]\n";
    let c = compile_yaml(&y);
    let f = fe(&c, "198.18.200.10", 80, "TCP");
    assert!(f.backends.is_empty());
    assert_eq!(f.empty_action, "reject");
}

const LB_LOCAL: &str = "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  clusterIP: 198.18.200.10\n  externalIPs: [198.18.150.1]\n  ports:\n  - {name: http, port: 80, nodePort: 30080}";
const LB_STATUS: &str = "status: {loadBalancer: {ingress: [{ip: 198.18.100.10}]}}\n---\n";

fn lb_local(endpoints: &str) -> String {
    svc("lb", LB_LOCAL).trim_end_matches("---\n").to_string()
        + LB_STATUS
        + &slice(
            "lb-1",
            "lb",
            "IPv4",
            "[{name: http, port: 8080}]",
            endpoints,
        )
}

#[test]
fn external_traffic_policy_local_keeps_local_endpoints_without_snat() {
    let c = compile_yaml(&lb_local(
        "- {addresses: [198.18.2.2], nodeName: node-a}\n- {addresses: [198.18.3.2], nodeName: node-b}",
    ));
    for (ip, port, kind) in [
        ("198.18.100.10", 80, "LoadBalancer"),
        ("198.18.1.1", 30080, "NodePort"),
        ("198.18.150.1", 80, "ExternalIP"),
    ] {
        let f = fe(&c, ip, port, "TCP");
        assert_eq!(f.kind, kind);
        assert_eq!(new_backends(f), ["198.18.2.2:8080"], "{kind}");
        assert_eq!(old_backends(f), ["198.18.3.2:8080"], "{kind}");
        assert!(!f.snat, "{kind}");
        assert_eq!((f.policy.scope, f.policy.mode), ("external", "Local"));
    }
    // The ClusterIP follows internalTrafficPolicy (Cluster): both, with SNAT.
    let f = fe(&c, "198.18.200.10", 80, "TCP");
    assert_eq!(new_backends(f), ["198.18.2.2:8080", "198.18.3.2:8080"]);
    assert!(f.snat);
}

#[test]
fn external_traffic_policy_local_without_local_endpoint_drops() {
    let c = compile_yaml(&lb_local("- {addresses: [198.18.3.2], nodeName: node-b}"));
    let f = fe(&c, "198.18.100.10", 80, "TCP");
    assert!(new_backends(f).is_empty());
    assert_eq!(f.empty_action, "drop");
    let (_, t) = c
        .tables
        .frontend(common::ip("198.18.100.10"), 80, Proto::Tcp)
        .unwrap();
    assert_eq!(t.empty_action, EmptyAction::Drop);
    assert_eq!((t.n_new, t.n_all, t.maglev_len), (0, 1, 0));
    // No endpoint anywhere: kube-proxy rejects, whatever the policy.
    let c = compile_yaml(&lb_local("  []"));
    assert_eq!(fe(&c, "198.18.100.10", 80, "TCP").empty_action, "reject");
    assert_eq!(fe(&c, "198.18.200.10", 80, "TCP").empty_action, "reject");
}

#[test]
fn internal_traffic_policy_local_applies_to_cluster_ip_only() {
    let y = svc("itp", "  type: NodePort\n  internalTrafficPolicy: Local\n  clusterIP: 198.18.200.10\n  ports:\n  - {name: http, port: 80, nodePort: 30080}")
        + &slice("itp-1", "itp", "IPv4", "[{name: http, port: 8080}]", "- {addresses: [198.18.3.2], nodeName: node-b}");
    let c = compile_yaml(&y);
    let f = fe(&c, "198.18.200.10", 80, "TCP");
    assert_eq!(f.empty_action, "drop");
    assert!(new_backends(f).is_empty());
    assert_eq!((f.policy.scope, f.policy.mode), ("internal", "Local"));
    assert!(f.snat);
    assert_eq!(
        new_backends(fe(&c, "198.18.1.1", 30080, "TCP")),
        ["198.18.3.2:8080"]
    );
}

#[test]
fn ready_endpoints_first_then_serving_terminating_fallback() {
    let eps = "- {addresses: [198.18.2.2], conditions: {ready: false, serving: true, terminating: true}}\n- {addresses: [198.18.2.3], conditions: {ready: false, serving: false, terminating: true}}\n- {addresses: [198.18.2.4], conditions: {ready: false}}";
    let c = compile_yaml(
        &(svc("web", WEB) + &slice("w", "web", "IPv4", "[{name: http, port: 8080}]", eps)),
    );
    let f = fe(&c, "198.18.200.10", 80, "TCP");
    assert_eq!(new_backends(f), ["198.18.2.2:8080"]);
    assert_eq!(old_backends(f), ["198.18.2.3:8080", "198.18.2.4:8080"]);
    // Nothing ready and nothing serving: reject, everything continue-only.
    let eps = "- {addresses: [198.18.2.3], conditions: {ready: false, serving: false, terminating: true}}";
    let c = compile_yaml(
        &(svc("web", WEB) + &slice("w", "web", "IPv4", "[{name: http, port: 8080}]", eps)),
    );
    let f = fe(&c, "198.18.200.10", 80, "TCP");
    assert_eq!(f.empty_action, "reject");
    assert_eq!(old_backends(f), ["198.18.2.3:8080"]);
}

#[test]
fn local_policy_falls_back_among_local_endpoints_only() {
    // A ready remote endpoint does not stop the local fallback to a
    // serving-terminating local one.
    let c = compile_yaml(&lb_local(
        "- {addresses: [198.18.2.2], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}\n- {addresses: [198.18.3.2], nodeName: node-b}",
    ));
    let f = fe(&c, "198.18.100.10", 80, "TCP");
    assert_eq!(new_backends(f), ["198.18.2.2:8080"]);
    // ClusterIP (Cluster policy): the ready one only.
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 80, "TCP")),
        ["198.18.3.2:8080"]
    );
}

#[test]
fn terminating_endpoints_are_continue_only_while_others_are_ready() {
    let eps = "- {addresses: [198.18.6.3], conditions: {ready: false, serving: true, terminating: true}}\n- {addresses: [198.18.6.2], conditions: {ready: true, serving: true, terminating: false}}";
    let c = compile_yaml(
        &(svc("web", WEB) + &slice("w", "web", "IPv4", "[{name: http, port: 8080}]", eps)),
    );
    let (_, f) = c
        .tables
        .frontend(common::ip("198.18.200.10"), 80, Proto::Tcp)
        .unwrap();
    assert_eq!((f.n_new, f.n_all), (1, 2));
    let all = c.tables.all_backends(f);
    assert_eq!(all[0].ip, common::ip("198.18.6.2"));
    assert!(all[1].terminating && all[1].serving && !all[1].ready);
    assert!(c.tables.maglev_table(f).iter().all(|&e| e == 0));
}

#[test]
fn condition_defaults_follow_the_api() {
    // ready nil = true; serving nil = ready; terminating nil = false.
    let eps =
        "- {addresses: [198.18.2.2]}\n- {addresses: [198.18.2.3], conditions: {ready: false}}";
    let c = compile_yaml(
        &(svc("web", WEB) + &slice("w", "web", "IPv4", "[{name: http, port: 8080}]", eps)),
    );
    let f = fe(&c, "198.18.200.10", 80, "TCP");
    let b = &f.backends;
    assert!(b[0].ready && b[0].serving && !b[0].terminating && b[0].new_flows);
    assert!(!b[1].ready && !b[1].serving && !b[1].terminating && !b[1].new_flows);
}

#[test]
fn endpoints_are_deduplicated_across_slices() {
    let y = svc("web", WEB)
        + &slice(
            "w1",
            "web",
            "IPv4",
            "[{name: http, port: 8080}]",
            "- {addresses: [198.18.2.2]}\n- {addresses: [198.18.2.3]}",
        )
        + &slice(
            "w2",
            "web",
            "IPv4",
            "[{name: http, port: 8080}]",
            "- {addresses: [198.18.2.2], nodeName: node-a}",
        );
    let c = compile_yaml(&y);
    let f = fe(&c, "198.18.200.10", 80, "TCP");
    assert_eq!(new_backends(f), ["198.18.2.2:8080", "198.18.2.3:8080"]);
    assert!(f.backends[0].local, "the local copy is favoured");
}

fn topo(annotation: &str, extra_spec: &str, eps: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default, annotations: {{{annotation}}}}}\nspec:\n  clusterIP: 198.18.200.10\n{extra_spec}  ports:\n  - {{name: http, port: 80}}\n---\n"
    ) + &slice("w", "web", "IPv4", "[{name: http, port: 8080}]", eps)
}

const HINTED: &str = "- {addresses: [198.18.2.2], zone: zone-a, hints: {forZones: [{name: zone-a}]}}\n- {addresses: [198.18.3.2], zone: zone-b, hints: {forZones: [{name: zone-b}]}}\n- {addresses: [198.18.4.2], zone: zone-b, hints: {forZones: [{name: zone-b}]}}";

fn zone_opts(zone: &str) -> edgeplane_control::CompileOptions {
    let mut o = opts("node-a", &["198.18.1.1"]);
    o.zone = Some(zone.into());
    o
}

#[test]
fn zone_hints_narrow_cluster_traffic_when_requested() {
    for (ann, spec) in [
        ("service.kubernetes.io/topology-mode: Auto", ""),
        ("service.kubernetes.io/topology-aware-hints: auto", ""),
        ("", "  trafficDistribution: PreferClose\n"),
    ] {
        let c = compile_with(&topo(ann, spec, HINTED), &zone_opts("zone-a"));
        let f = fe(&c, "198.18.200.10", 80, "TCP");
        assert_eq!(new_backends(f), ["198.18.2.2:8080"], "{ann}{spec}");
        assert_eq!(old_backends(f), ["198.18.3.2:8080", "198.18.4.2:8080"]);
        assert_eq!(f.topology_zone.as_deref(), Some("zone-a"));
        let c = compile_with(&topo(ann, spec, HINTED), &zone_opts("zone-b"));
        assert_eq!(
            new_backends(fe(&c, "198.18.200.10", 80, "TCP")),
            ["198.18.3.2:8080", "198.18.4.2:8080"]
        );
    }
}

#[test]
fn zone_hints_fall_back_to_all_endpoints() {
    let all = ["198.18.2.2:8080", "198.18.3.2:8080", "198.18.4.2:8080"];
    let ann = "service.kubernetes.io/topology-mode: Auto";
    // Not requested by the Service.
    let c = compile_with(&topo("", "", HINTED), &zone_opts("zone-a"));
    assert_eq!(new_backends(fe(&c, "198.18.200.10", 80, "TCP")), all);
    // Disabled.
    let c = compile_with(
        &topo("service.kubernetes.io/topology-mode: Disabled", "", HINTED),
        &zone_opts("zone-a"),
    );
    assert_eq!(new_backends(fe(&c, "198.18.200.10", 80, "TCP")), all);
    // No endpoint hinted for this zone.
    let c = compile_with(&topo(ann, "", HINTED), &zone_opts("zone-c"));
    let f = fe(&c, "198.18.200.10", 80, "TCP");
    assert_eq!(new_backends(f), all);
    assert_eq!(f.topology_zone, None);
    // One ready endpoint without hints.
    let partial = HINTED.replace(
        "{addresses: [198.18.4.2], zone: zone-b, hints: {forZones: [{name: zone-b}]}}",
        "{addresses: [198.18.4.2], zone: zone-b}",
    );
    let c = compile_with(&topo(ann, "", &partial), &zone_opts("zone-a"));
    assert_eq!(new_backends(fe(&c, "198.18.200.10", 80, "TCP")), all);
    // A not-ready endpoint without hints does not matter.
    let with_unready =
        format!("{HINTED}\n- {{addresses: [198.18.5.2], conditions: {{ready: false}}}}");
    let c = compile_with(&topo(ann, "", &with_unready), &zone_opts("zone-a"));
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 80, "TCP")),
        ["198.18.2.2:8080"]
    );
    // The node has no zone.
    let c = compile_with(&topo(ann, "", HINTED), &opts("node-a", &["198.18.1.1"]));
    assert_eq!(new_backends(fe(&c, "198.18.200.10", 80, "TCP")), all);
    // The zone's endpoints are not ready: topology falls back (hints are
    // only consulted over ready endpoints, and zone-a has none).
    let unready_a = HINTED.replace(
        "{addresses: [198.18.2.2], zone",
        "{addresses: [198.18.2.2], conditions: {ready: false}, zone",
    );
    let c = compile_with(&topo(ann, "", &unready_a), &zone_opts("zone-a"));
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 80, "TCP")),
        ["198.18.3.2:8080", "198.18.4.2:8080"]
    );
}

#[test]
fn zone_comes_from_the_node_object_and_hints_skip_local_policy() {
    let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}\n---\n";
    let ann = "service.kubernetes.io/topology-mode: Auto";
    let c = compile_with(
        &(node.to_string() + &topo(ann, "", HINTED)),
        &opts("node-a", &["198.18.1.1"]),
    );
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 80, "TCP")),
        ["198.18.2.2:8080"]
    );
    // internalTrafficPolicy Local ignores hints: only nodeName counts.
    let eps = HINTED.replace(
        "{addresses: [198.18.3.2], zone",
        "{addresses: [198.18.3.2], nodeName: node-a, zone",
    );
    let c = compile_with(
        &(node.to_string() + &topo(ann, "  internalTrafficPolicy: Local\n", &eps)),
        &opts("node-a", &["198.18.1.1"]),
    );
    assert_eq!(
        new_backends(fe(&c, "198.18.200.10", 80, "TCP")),
        ["198.18.3.2:8080"]
    );
}

#[test]
fn session_affinity_timeout_and_group() {
    let y = svc("s", "  type: NodePort\n  clusterIP: 198.18.200.10\n  sessionAffinity: ClientIP\n  ports:\n  - {name: http, port: 80, nodePort: 30080}\n  - {name: alt, port: 81, nodePort: 30081}")
        + &svc("t", "  clusterIP: 198.18.200.11\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  ports:\n  - {name: http, port: 80}")
        + &svc("u", "  clusterIP: 198.18.200.12\n  ports:\n  - {name: http, port: 80}");
    let c = compile_yaml(&y);
    let t = &c.tables;
    let f = |a: &str, p: u16| t.frontend(common::ip(a), p, Proto::Tcp).unwrap().1.clone();
    let (c80, n80, c81) = (
        f("198.18.200.10", 80),
        f("198.18.1.1", 30080),
        f("198.18.200.10", 81),
    );
    assert_eq!(c80.affinity_timeout, 10800);
    assert_eq!(c80.affinity_group, n80.affinity_group);
    assert_eq!(c80.affinity_group, c80.service);
    assert_ne!(c80.affinity_group, c81.affinity_group);
    assert_eq!(f("198.18.200.11", 80).affinity_timeout, 60);
    assert_eq!(f("198.18.200.12", 80).affinity_timeout, 0);
    assert_eq!(
        fe(&c, "198.18.200.11", 80, "TCP").session_affinity.mode,
        "ClientIP"
    );
}

#[test]
fn load_balancer_source_ranges_apply_to_lb_frontends_of_their_family() {
    let y = svc("lb", "  type: LoadBalancer\n  clusterIPs: [198.18.200.10, \"2001:db8:200::10\"]\n  loadBalancerSourceRanges: [198.18.0.0/24, \"2001:db8::/64\"]\n  ports:\n  - {name: http, port: 80, nodePort: 30080}")
        .trim_end_matches("---\n")
        .to_string()
        + "status: {loadBalancer: {ingress: [{ip: 198.18.100.10}, {ip: \"2001:db8:100::10\"}, {ip: 198.18.100.11, ipMode: Proxy}]}}\n";
    let c = compile_yaml(&y);
    assert_eq!(
        fe(&c, "198.18.100.10", 80, "TCP").source_ranges,
        ["198.18.0.0/24"]
    );
    assert_eq!(
        fe(&c, "2001:db8:100::10", 80, "TCP").source_ranges,
        ["2001:db8::/64"]
    );
    assert!(fe(&c, "198.18.1.1", 30080, "TCP").source_ranges.is_empty());
    assert!(fe(&c, "198.18.200.10", 80, "TCP").source_ranges.is_empty());
    // ipMode: Proxy addresses are the load balancer's own business.
    assert!(!keys(&c).iter().any(|k| k.contains("198.18.100.11")));
}

#[test]
fn load_balancer_only_for_type_load_balancer_and_nodeport_addresses_filter() {
    let y = svc("np", "  type: NodePort\n  clusterIP: 198.18.200.10\n  ports:\n  - {name: http, port: 80, nodePort: 30080}")
        .trim_end_matches("---\n")
        .to_string()
        + "status: {loadBalancer: {ingress: [{ip: 198.18.100.10}]}}\n";
    let mut o = opts("node-a", &["198.18.1.1", "198.18.9.1"]);
    o.nodeport_addresses = vec![edgeplane_control::validate::parse_cidr("198.18.9.0/24").unwrap()];
    let c = compile_with(&y, &o);
    assert_eq!(
        keys(&c),
        [
            "ClusterIP 198.18.200.10:80/TCP",
            "NodePort 198.18.9.1:30080/TCP"
        ]
    );
    assert_eq!(c.tables.node.snat_v4, Some("198.18.1.1".parse().unwrap()));
}

#[test]
fn duplicate_frontend_first_service_by_name_wins() {
    let y = svc(
        "b",
        "  clusterIP: 198.18.200.10\n  ports: [{name: http, port: 80}]",
    ) + &svc(
        "a",
        "  clusterIP: 198.18.200.10\n  ports: [{name: http, port: 80}]",
    ) + &slice(
        "a",
        "a",
        "IPv4",
        "[{name: http, port: 1}]",
        "- {addresses: [198.18.2.1]}",
    ) + &slice(
        "b",
        "b",
        "IPv4",
        "[{name: http, port: 2}]",
        "- {addresses: [198.18.2.2]}",
    );
    let c = compile_yaml(&y);
    assert_eq!(c.report.frontends.len(), 1);
    assert_eq!(fe(&c, "198.18.200.10", 80, "TCP").service, "default/a:http");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("default/b:http") && c.warnings[0].contains("default/a:http"),
        "{}",
        c.warnings[0]
    );
}

#[test]
fn bad_yaml_keeps_other_objects_and_names_file_and_object() {
    let text = svc("good", WEB)
        + "apiVersion: v1\nkind: Service\nmetadata: {name: broken\n  bad: [\n---\n"
        + &svc("wrong-proto", "  clusterIP: 198.18.200.11\n  ports:\n  - {name: icmp, port: 1, protocol: ICMP}\n  - {name: http, port: 80}")
        + &svc("bad-ip", "  clusterIP: 198.18.300.1\n  ports: [{port: 80}]")
        + "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: orphan}\naddressType: IPv4\nendpoints: []\n---\n"
        + "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: fqdn, labels: {kubernetes.io/service-name: good}}\naddressType: FQDN\nendpoints: [{addresses: [db.example.com]}]\n---\n"
        + "apiVersion: v1\nkind: Service\nmetadata: {name: typed, namespace: ns1}\nspec: {ports: 7}\n";
    let (o, d) = load_str("dir/file.yaml", &text);
    let msgs: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert_eq!(msgs.len(), 5, "{msgs:#?}");
    assert!(
        msgs[0].starts_with("dir/file.yaml:")
            && msgs[0].contains("document 2")
            && msgs[0].contains("invalid YAML"),
        "{}",
        msgs[0]
    );
    assert!(
        msgs[1].contains("Service default/wrong-proto") && msgs[1].contains("ICMP"),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].contains("Service default/bad-ip") && msgs[2].contains("198.18.300.1"),
        "{}",
        msgs[2]
    );
    assert!(
        msgs[3].contains("EndpointSlice default/orphan")
            && msgs[3].contains("kubernetes.io/service-name"),
        "{}",
        msgs[3]
    );
    assert!(
        msgs[4].contains("Service ns1/typed") && msgs[4].contains("document 7"),
        "{}",
        msgs[4]
    );
    // Line numbers point at the document's first line.
    assert!(
        msgs[1].contains(&format!(
            ":{}:",
            text.lines()
                .position(|l| l.contains("wrong-proto"))
                .unwrap()
                - 1
        )),
        "{}",
        msgs[1]
    );
    // good and wrong-proto (minus its ICMP port) are kept; the FQDN slice silently ignored.
    let names: Vec<_> = o
        .services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["good", "wrong-proto"]);
    assert!(o.endpoint_slices.is_empty());
    let c = compile(&o, &opts("node-a", &["198.18.1.1"]), 1).unwrap();
    assert!(
        c.warnings.is_empty(),
        "sanitized objects warn only once: {:?}",
        c.warnings
    );
    assert_eq!(
        keys(&c),
        [
            "ClusterIP 198.18.200.10:80/TCP",
            "ClusterIP 198.18.200.11:80/TCP"
        ]
    );
}

#[test]
fn objects_from_other_sources_are_checked_by_compile_too() {
    let (mut o, _) = load_str("x", &svc("web", WEB));
    o.services[0].spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("ICMP".into());
    let c = compile(&o, &opts("node-a", &[]), 1).unwrap();
    assert!(c.report.frontends.is_empty());
    assert!(c.warnings[0].contains("Service default/web") && c.warnings[0].contains("ICMP"));
}

#[test]
fn invalid_options_are_errors() {
    let o = edgeplane_control::CompileOptions {
        maglev_m: 1000,
        ..Default::default()
    };
    assert!(compile(&Default::default(), &o, 1).is_err());
    let o = edgeplane_control::CompileOptions {
        snat_ports: (2, 1),
        ..Default::default()
    };
    assert!(compile(&Default::default(), &o, 1).is_err());
}

#[test]
fn small_maglev_size_warns() {
    let eps: String = (1..=3)
        .map(|i| format!("- {{addresses: [198.18.2.{i}]}}\n"))
        .collect();
    let c = compile_yaml(
        &(svc("web", WEB) + &slice("w", "web", "IPv4", "[{name: http, port: 8080}]", &eps)),
    );
    assert!(
        c.warnings.iter().any(|w| w.contains("M=251")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn frontend_tables_are_consistent() {
    let c = compile_yaml(&lb_local(
        "- {addresses: [198.18.2.2], nodeName: node-a}\n- {addresses: [198.18.3.2]}",
    ));
    for f in &c.tables.frontends {
        let fk = f.kind;
        assert!(f.n_new <= f.n_all);
        if f.n_new > 0 {
            assert_eq!(f.maglev_len, 251);
            assert!(c
                .tables
                .maglev_table(f)
                .iter()
                .all(|&e| (e as u32) < f.n_new));
        }
        assert_eq!(f.snat, !(fk.is_external() && fk != FrontendKind::ClusterIp));
    }
}

#[test]
fn report_json_has_stable_fields() {
    let c = compile_yaml(&lb_local(
        "- {addresses: [198.18.2.2], nodeName: node-a}\n- {addresses: [198.18.3.2]}",
    ));
    let v = render_json(&c);
    let f = &v["frontends"][0];
    for k in [
        "service",
        "kind",
        "ip",
        "port",
        "protocol",
        "policy",
        "session_affinity",
        "backends",
        "empty_action",
        "snat",
    ] {
        assert!(!f[k].is_null(), "missing {k} in {f}");
    }
    let b = &f["backends"][0];
    for k in [
        "ip",
        "port",
        "share",
        "slots",
        "ready",
        "serving",
        "terminating",
        "local",
        "new_flows",
    ] {
        assert!(!b[k].is_null(), "missing {k} in {b}");
    }
    assert_eq!(f["kind"], "ClusterIP");
    assert_eq!(f["policy"]["scope"], "internal");
    let text = edgeplane_control::render_table(&c);
    assert!(
        text.contains("198.18.100.10:80") && text.contains("existing flows only"),
        "{text}"
    );
}

#[test]
fn examples_load_cleanly() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for dir in ["demo", "k8s-docs"] {
        let (o, d) = load_path(&root.join(dir)).unwrap();
        assert!(
            d.is_empty(),
            "{dir}: {:?}",
            d.iter().map(|d| d.to_string()).collect::<Vec<_>>()
        );
        let c = compile(&o, &opts("node-a", &[]), 1).unwrap();
        assert!(!c.report.frontends.is_empty());
        assert!(
            c.warnings.iter().all(|w| w.contains("M=251")),
            "{dir}: {:?}",
            c.warnings
        );
    }
    let (o, _) = load_path(&root.join("demo")).unwrap();
    let c = compile(&o, &opts("node-a", &[]), 1).unwrap();
    // Node IPs come from the Node object when none are given.
    assert!(
        keys(&c).contains(&"NodePort 2001:db8:1::1:30080/TCP".to_string()),
        "{:?}",
        keys(&c)
    );
    assert!(keys(&c).contains(&"LoadBalancer 198.18.100.10:80/TCP".to_string()));
    assert!(load_path(&root.join("does-not-exist")).is_err());
}
