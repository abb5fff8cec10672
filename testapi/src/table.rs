//! `meta.k8s.io/v1` `Table` answers, as `kubectl get` asks for them, with
//! the columns kube-apiserver prints for each kind.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::resources::ResourceType;
use crate::status::{age, parse_rfc3339};
use crate::store::Stored;

/// `includeObject=`: what each row carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

fn col(name: &str, ty: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": name, "priority": priority})
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn or_none(x: String) -> String {
    if x.is_empty() {
        "<none>".into()
    } else {
        x
    }
}

fn age_of(v: &Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match parse_rfc3339(s(v, "/metadata/creationTimestamp")) {
        Some(t) => age(now.saturating_sub(t)),
        None => "<unknown>".into(),
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

fn columns(kind: &str) -> Vec<Value> {
    match kind {
        "Service" => vec![
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            col("Age", "string", 0),
            col("Selector", "string", 1),
        ],
        "EndpointSlice" => vec![
            col("Name", "string", 0),
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            col("Age", "string", 0),
        ],
        "Node" => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
        ],
        "Namespace" => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Age", "string", 0),
        ],
        _ => vec![col("Name", "string", 0), col("Age", "string", 0)],
    }
}

fn cells(kind: &str, v: &Value) -> Vec<String> {
    let name = s(v, "/metadata/name").to_string();
    match kind {
        "Service" => {
            let ty = s(v, "/spec/type").to_string();
            let mut ext: Vec<String> = arr(v, "/spec/externalIPs")
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            ext.extend(
                arr(v, "/status/loadBalancer/ingress")
                    .iter()
                    .filter_map(|i| i.get("ip").or(i.get("hostname")).and_then(Value::as_str))
                    .map(str::to_string),
            );
            let ext = if ty == "ExternalName" {
                s(v, "/spec/externalName").to_string()
            } else if ext.is_empty() && ty == "LoadBalancer" {
                "<pending>".into()
            } else {
                or_none(ext.join(","))
            };
            let ports = join(arr(v, "/spec/ports").iter().map(|p| {
                let port = p.get("port").map(Value::to_string).unwrap_or_default();
                let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                match p.get("nodePort").and_then(Value::as_i64) {
                    Some(np) => format!("{port}:{np}/{proto}"),
                    None => format!("{port}/{proto}"),
                }
            }));
            let selector = v
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    join(
                        m.iter()
                            .map(|(k, x)| format!("{k}={}", x.as_str().unwrap_or(""))),
                    )
                })
                .unwrap_or_default();
            let cluster_ip = s(v, "/spec/clusterIP");
            vec![
                name,
                ty,
                or_none(cluster_ip.to_string()),
                ext,
                or_none(ports),
                age_of(v),
                or_none(selector),
            ]
        }
        "EndpointSlice" => {
            let ports = join(
                arr(v, "/ports")
                    .iter()
                    .filter_map(|p| p.get("port").map(Value::to_string)),
            );
            let eps: Vec<String> = arr(v, "/endpoints")
                .iter()
                .flat_map(|e| arr(e, "/addresses").iter())
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                or_none(eps.join(","))
            };
            vec![
                name,
                s(v, "/addressType").to_string(),
                or_none(ports),
                shown,
                age_of(v),
            ]
        }
        "Node" => {
            let ready = arr(v, "/status/conditions")
                .iter()
                .find(|c| s(c, "/type") == "Ready")
                .map(|c| {
                    if s(c, "/status") == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let internal = arr(v, "/status/addresses")
                .iter()
                .find(|a| s(a, "/type") == "InternalIP")
                .map(|a| s(a, "/address").to_string())
                .unwrap_or_default();
            vec![
                name,
                ready.to_string(),
                "<none>".into(),
                age_of(v),
                s(v, "/status/nodeInfo/kubeletVersion").to_string(),
                or_none(internal),
            ]
        }
        "Namespace" => vec![name, s(v, "/status/phase").to_string(), age_of(v)],
        _ => vec![name, age_of(v)],
    }
}

/// Renders objects as a `Table`.
pub fn table(
    rt: &ResourceType,
    items: &[Arc<Stored>],
    rv: &str,
    continue_token: Option<&str>,
    include: IncludeObject,
) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(rt.kind, &o.value)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Object => row["object"] = o.value.clone(),
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.value.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
            }
            row
        })
        .collect();
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns(rt.kind),
        "rows": rows,
    })
}
