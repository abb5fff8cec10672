#![allow(dead_code)]
use std::net::IpAddr;

use edgeplane_control::compile::{compile, CompileOptions, Compiled};
use edgeplane_control::manifests::{load_str, Diagnostic, ObjectSet};
use edgeplane_control::report::FrontendReport;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn opts(node: &str, ips: &[&str]) -> CompileOptions {
    CompileOptions {
        node_name: node.into(),
        node_ips: ips.iter().map(|s| ip(s)).collect(),
        maglev_m: 251,
        ..CompileOptions::default()
    }
}

pub fn load(yaml: &str) -> ObjectSet {
    let (o, d) = load_str("test.yaml", yaml);
    assert!(
        d.is_empty(),
        "unexpected diagnostics: {:?}",
        d.iter().map(Diagnostic::to_string).collect::<Vec<_>>()
    );
    o
}

/// Compiles for node-a at 198.18.1.1 / 2001:db8:1::1.
pub fn compile_yaml(yaml: &str) -> Compiled {
    compile_with(yaml, &opts("node-a", &["198.18.1.1", "2001:db8:1::1"]))
}

pub fn compile_with(yaml: &str, o: &CompileOptions) -> Compiled {
    compile(&load(yaml), o, 1).unwrap()
}

/// The report entry of a frontend ("TCP" etc.).
pub fn fe<'a>(c: &'a Compiled, addr: &str, port: u16, proto: &str) -> &'a FrontendReport {
    c.report
        .frontends
        .iter()
        .find(|f| f.ip == ip(addr).to_string() && f.port == port && f.protocol == proto)
        .unwrap_or_else(|| panic!("no frontend {addr}:{port}/{proto}; have {:?}", keys(c)))
}

pub fn keys(c: &Compiled) -> Vec<String> {
    c.report
        .frontends
        .iter()
        .map(|f| format!("{} {}:{}/{}", f.kind, f.ip, f.port, f.protocol))
        .collect()
}

/// "ip:port" of the new-flow backends.
pub fn new_backends(f: &FrontendReport) -> Vec<String> {
    f.backends
        .iter()
        .filter(|b| b.new_flows)
        .map(|b| format!("{}:{}", b.ip, b.port))
        .collect()
}

/// "ip:port" of the continue-only backends.
pub fn old_backends(f: &FrontendReport) -> Vec<String> {
    f.backends
        .iter()
        .filter(|b| !b.new_flows)
        .map(|b| format!("{}:{}", b.ip, b.port))
        .collect()
}

/// A Service + one slice, compactly. `extra_spec` is indented YAML for spec.
pub fn svc(name: &str, spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}\n---\n")
}

pub fn slice(name: &str, service: &str, family: &str, ports: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: {family}\nports: {ports}\nendpoints:\n{endpoints}\n---\n"
    )
}
