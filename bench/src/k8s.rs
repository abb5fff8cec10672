//! Synthetic Kubernetes objects at scale for the control-side benches:
//! `n` ClusterIP Services, each with one EndpointSlice of `e` ready endpoints.
//! Every Service has its own endpoints (so its own Maglev table), as in a
//! cluster where every Service selects its own pods.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use edgeplane_control::manifests::ObjectSet;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Endpoints per address block: endpoint `j` of Service `i` is
/// 198.19.0.0 + (i % BLOCK) * e + j, target port 8080 + i / BLOCK, so every
/// (address, port) is distinct for up to 65,536 / e × 50 Services.
const ADDRS: u32 = 65536;

/// ClusterIP of Service `i`: 198.18.128.0 + i (i < 32768).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + i as u32)
}

/// Name of Service `i`.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Service `i` (port "http" 80/TCP → 8080).
pub fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(i)),
            namespace: Some("default".into()),
            resource_version: Some(format!("{}", 1 + i)),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip(i).to_string()),
            cluster_ips: Some(vec![cluster_ip(i).to_string()]),
            selector: Some(BTreeMap::from([("app".to_string(), service_name(i))])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::Int(8080)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The (address, port) of endpoint `j` of Service `i` with `e` endpoints per
/// Service.
pub fn endpoint(i: usize, j: usize, e: usize) -> (Ipv4Addr, u16) {
    let per_block = (ADDRS as usize / e.max(1)).max(1);
    let base = u32::from(Ipv4Addr::new(198, 19, 0, 0));
    let idx = ((i % per_block) * e + j) as u32;
    (Ipv4Addr::from(base + idx), 8080 + (i / per_block) as u16)
}

/// The EndpointSlice of Service `i` with the given endpoint addresses.
pub fn slice(i: usize, port: u16, addrs: &[Ipv4Addr], resource_version: u64) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-1", service_name(i))),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                service_name(i),
            )])),
            resource_version: Some(resource_version.to_string()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(port as i32),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
        endpoints: addrs
            .iter()
            .map(|a| Endpoint {
                addresses: vec![a.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some("node-b".into()),
                ..Endpoint::default()
            })
            .collect(),
    }
}

/// The slice of Service `i` with `e` endpoints. `change` `Some(v)` replaces
/// endpoint 0 with 198.18.64.0 + v % 16384 (a pod rescheduled elsewhere),
/// so that successive changes give new endpoint sets.
pub fn slice_for(i: usize, e: usize, change: Option<u32>, resource_version: u64) -> EndpointSlice {
    let mut eps: Vec<(Ipv4Addr, u16)> = (0..e).map(|j| endpoint(i, j, e)).collect();
    if let (Some(v), Some(first)) = (change, eps.first_mut()) {
        first.0 = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + v % 16384);
    }
    let addrs: Vec<Ipv4Addr> = eps.iter().map(|p| p.0).collect();
    slice(
        i,
        eps.first().map(|p| p.1).unwrap_or(8080),
        &addrs,
        resource_version,
    )
}

/// The Kubernetes source's state after its first list of `objects`: the
/// mirrors, the published snapshot and its index.
pub fn first_list(
    objects: &ObjectSet,
) -> (
    edgeplane_control::kube::mirror::Mirrors,
    Option<std::sync::Arc<ObjectSet>>,
    edgeplane_control::kube::mirror::PublishIndex,
) {
    let mut mirrors = edgeplane_control::kube::mirror::Mirrors::default();
    mirrors.services.relist(objects.services.iter().cloned());
    mirrors
        .endpoint_slices
        .relist(objects.endpoint_slices.iter().cloned());
    mirrors.nodes.relist(Vec::new());
    let mut slot = None;
    let mut index = Default::default();
    assert!(
        mirrors.publish_into(&mut slot, &mut index),
        "all three types listed"
    );
    (mirrors, slot, index)
}

/// What a full relist of [`objects`]`(n, e)` returns: the same Services and
/// slices with new resourceVersions (from `*rv + 1` on), slice `i` changed
/// as [`slice_for`] does when `change(i)` is `Some`.
pub fn relisted(
    objects: &ObjectSet,
    e: usize,
    rv: &mut u64,
    change: impl Fn(usize) -> Option<u32>,
) -> (Vec<Service>, Vec<EndpointSlice>) {
    let services = objects
        .services
        .iter()
        .map(|s| {
            let mut s = s.clone();
            *rv += 1;
            s.metadata.resource_version = Some(rv.to_string());
            s
        })
        .collect();
    let slices = (0..objects.services.len())
        .map(|i| {
            *rv += 1;
            slice_for(i, e, change(i), *rv)
        })
        .collect();
    (services, slices)
}

/// `n` Services with `e` endpoints each.
pub fn objects(n: usize, e: usize) -> ObjectSet {
    ObjectSet {
        services: (0..n).map(service).collect(),
        endpoint_slices: (0..n)
            .map(|i| slice_for(i, e, None, (n + 1 + i) as u64))
            .collect(),
        nodes: Vec::new(),
        journal: Default::default(),
    }
}

/// Compile options for these objects: node-a, one node IP.
pub fn options() -> edgeplane_control::CompileOptions {
    edgeplane_control::CompileOptions {
        node_name: "node-a".into(),
        node_ips: vec![std::net::IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))],
        ..edgeplane_control::CompileOptions::default()
    }
}
