//! The object store: etcd and the watch cache in one.
//!
//! Promises:
//! - One global `resourceVersion` counter, bumped by every write and stamped
//!   on the written object; lists carry the counter's value.
//! - Every write is appended to a bounded history (the watch cache); a watch
//!   from version `v` replays the history after `v`, then follows live
//!   writes. A `v` older than the history is answered with 410 `Expired`.
//! - Writes are serialized by one mutex; each write, its history entry and
//!   its broadcast to live watches happen under it, so a watch that
//!   subscribes under the same mutex sees every event exactly once.
//! - Objects are checked against the typed schema (`k8s-openapi`) and given
//!   the API server's defaults that matter to a proxy (Service type,
//!   protocol, targetPort, clusterIP and nodePort allocation).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use crate::resources::{self, ResourceType, StatusPolicy, RESOURCES};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{rfc3339, ApiError};

/// One stored object and its serialized form (lists and watches send the
/// bytes without serializing again).
#[derive(Debug)]
pub struct Stored {
    pub value: Value,
    pub json: Bytes,
}

impl Stored {
    fn new(value: Value) -> Arc<Stored> {
        let json = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Arc::new(Stored { value, json })
    }

    fn meta(&self, k: &str) -> &str {
        self.value
            .get("metadata")
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One write, as the history and live watches carry it.
#[derive(Debug)]
pub struct WriteEvent {
    pub rv: u64,
    pub resource: usize,
    pub kind: EventType,
    /// The object after the write (for a delete: the last state, stamped
    /// with the delete's version).
    pub obj: Arc<Stored>,
    /// The object before the write (selector transitions need it).
    pub prev: Option<Arc<Stored>>,
    /// When the write was committed (for latency measurements).
    pub at: Instant,
}

/// Which objects a list or watch wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, s: &Stored) -> bool {
        if let Some(ns) = &self.namespace {
            if s.meta("namespace") != ns {
                return false;
            }
        }
        self.labels.matches(&s.value) && self.fields.matches(&s.value)
    }

    /// The watch event a write becomes for this filter, if any: an object
    /// that starts matching is ADDED, one that stops matching is DELETED.
    pub fn translate(&self, ev: &WriteEvent) -> Option<EventType> {
        let now = self.matches(&ev.obj);
        let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        match ev.kind {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => (now || before).then_some(EventType::Deleted),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Arc<Stored>>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

/// Preconditions of a delete (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Number of writes the watch history keeps.
    pub history: usize,
    /// Capacity of the live broadcast; a watch that falls further behind is
    /// closed (the client re-watches from its last version).
    pub live_buffer: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history: 10_000,
            live_buffer: 65_536,
        }
    }
}

/// The beginning of a watch (see [`Store::watch`]).
#[derive(Debug)]
pub struct WatchStart {
    /// Events to send before the live ones.
    pub first: Vec<(EventType, Arc<Stored>)>,
    /// The version those events bring the watcher to.
    pub rv: u64,
    /// Writes after `rv`.
    pub live: broadcast::Receiver<Arc<WriteEvent>>,
}

/// A consistent list result kept for `continue` tokens: (id, items, version).
type ListSnapshot = (u64, Arc<Vec<Arc<Stored>>>, u64);

const MAX_SNAPSHOTS: usize = 32;

struct Inner {
    rv: u64,
    objects: Vec<BTreeMap<(String, String), Arc<Stored>>>,
    history: VecDeque<Arc<WriteEvent>>,
    history_cap: usize,
    /// Watches from a version older than this get 410.
    floor: u64,
    next_uid: u64,
    next_ip: u32,
    next_node_port: u16,
    /// Consistent list snapshots for `continue` tokens: (id, items, version).
    snapshots: VecDeque<ListSnapshot>,
    next_snapshot: u64,
}

/// The object store. Cheap to share (`Arc<Store>`); survives server restarts.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<WriteEvent>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("rv", &self.rv)
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn meta_str<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get("metadata")
        .and_then(|m| m.get(k))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = json!({});
    }
    match v.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// Decodes into the typed schema; returns the typed form re-encoded.
fn typed_roundtrip(rt: &ResourceType, v: &Value) -> Result<Option<Value>, String> {
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as disc;
    fn rt_<T: serde::de::DeserializeOwned + serde::Serialize>(
        v: &Value,
    ) -> Result<Option<Value>, String> {
        let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(t).map(Some).map_err(|e| e.to_string())
    }
    match rt.kind {
        "Service" => rt_::<core::Service>(v),
        "Node" => rt_::<core::Node>(v),
        "Namespace" => rt_::<core::Namespace>(v),
        "Pod" => rt_::<core::Pod>(v),
        "ConfigMap" => rt_::<core::ConfigMap>(v),
        "Endpoints" => rt_::<core::Endpoints>(v),
        "EndpointSlice" => rt_::<disc::EndpointSlice>(v),
        "ServiceAccount" => rt_::<core::ServiceAccount>(v),
        "DaemonSet" => rt_::<k8s_openapi::api::apps::v1::DaemonSet>(v),
        "ClusterRole" => rt_::<k8s_openapi::api::rbac::v1::ClusterRole>(v),
        "ClusterRoleBinding" => rt_::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(v),
        _ => Ok(None),
    }
}

/// Fields of `input` the typed form dropped: unknown fields.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None if !v.is_null() => out.push(p),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            for (n, (iv, tv)) in i.iter().zip(t).enumerate() {
                unknown_fields(iv, tv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// What a create/update should do about unknown fields (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// A write's outcome: the stored object and any warnings for the client.
#[derive(Debug)]
pub struct Written {
    pub obj: Arc<Stored>,
    pub warnings: Vec<String>,
}

impl Store {
    pub fn new(config: StoreConfig) -> Arc<Store> {
        let (live, _) = broadcast::channel(config.live_buffer.max(16));
        let store = Arc::new(Store {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: vec![BTreeMap::new(); RESOURCES.len()],
                history: VecDeque::new(),
                history_cap: config.history.max(1),
                floor: 0,
                next_uid: 1,
                next_ip: 10,
                next_node_port: 30000,
                snapshots: VecDeque::new(),
                next_snapshot: 1,
            }),
            live,
        });
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = store.create(
                resources::NAMESPACES,
                None,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                false,
                FieldValidation::Ignore,
            );
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written
        // (each write is one insert/remove); keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// When the write with version `rv` was committed, while it is in history.
    pub fn committed_at(&self, rv: u64) -> Option<Instant> {
        let g = self.lock();
        let i = g.history.partition_point(|e| e.rv < rv);
        g.history.get(i).filter(|e| e.rv == rv).map(|e| e.at)
    }

    /// Forgets the watch history: every watch that resumes from a version
    /// older than now gets 410 Expired (as after an etcd compaction). The
    /// version is bumped once so that clients already at the newest version
    /// are expired too.
    pub fn expire_history(&self) {
        let mut g = self.lock();
        g.rv += 1;
        g.history.clear();
        g.floor = g.rv;
        g.snapshots.clear();
    }

    /// Changes how many writes the history keeps.
    pub fn set_history_capacity(&self, n: usize) {
        let mut g = self.lock();
        g.history_cap = n.max(1);
        while g.history.len() > g.history_cap {
            if let Some(e) = g.history.pop_front() {
                g.floor = e.rv;
            }
        }
    }

    /// Number of stored objects of a resource type (all namespaces).
    pub fn count(&self, resource: usize) -> usize {
        self.lock().objects.get(resource).map_or(0, BTreeMap::len)
    }

    pub fn get(&self, r: usize, ns: &str, name: &str) -> Result<Arc<Stored>, ApiError> {
        let rt = &RESOURCES[r];
        self.lock().objects[r]
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))
    }

    /// Lists matching objects in (namespace, name) order, `limit` at a time.
    pub fn list(
        &self,
        r: usize,
        filter: &Filter,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let mut g = self.lock();
        let (id, items, rv, offset) = match continue_token.filter(|t| !t.is_empty()) {
            Some(tok) => {
                let expired = || {
                    ApiError::expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.")
                };
                let mut parts = tok.split('-').map(str::parse::<u64>);
                let (Some(Ok(id)), Some(Ok(offset))) = (parts.next(), parts.next()) else {
                    return Err(ApiError::bad_request(format!(
                        "continue key is not valid: {tok:?}"
                    )));
                };
                let (_, items, rv) = g
                    .snapshots
                    .iter()
                    .find(|s| s.0 == id)
                    .cloned()
                    .ok_or_else(expired)?;
                (id, items, rv, usize::try_from(offset).unwrap_or(usize::MAX))
            }
            None => {
                let items: Vec<Arc<Stored>> = g.objects[r]
                    .values()
                    .filter(|s| filter.matches(s))
                    .cloned()
                    .collect();
                (0, Arc::new(items), g.rv, 0)
            }
        };
        let end = match limit.filter(|l| *l > 0) {
            Some(l) => offset.saturating_add(l).min(items.len()),
            None => items.len(),
        };
        let page: Vec<Arc<Stored>> = items.get(offset.min(end)..end).unwrap_or(&[]).to_vec();
        let (continue_token, remaining) = if end < items.len() {
            let id = if id == 0 {
                let id = g.next_snapshot;
                g.next_snapshot += 1;
                g.snapshots.push_back((id, items.clone(), rv));
                if g.snapshots.len() > MAX_SNAPSHOTS {
                    g.snapshots.pop_front();
                }
                id
            } else {
                id
            };
            (Some(format!("{id}-{end}")), Some(items.len() - end))
        } else {
            (None, None)
        };
        Ok(ListPage {
            items: page,
            resource_version: rv,
            continue_token,
            remaining,
        })
    }

    /// Subscribes to writes after version `since` (replayed from history),
    /// or, for `None`, to the current state as synthetic ADDED events
    /// followed by the live writes. Returns the events to send first, the
    /// version they bring the watcher to, and the live receiver.
    pub fn watch(
        &self,
        r: usize,
        filter: &Filter,
        since: Option<u64>,
    ) -> Result<WatchStart, ApiError> {
        let g = self.lock();
        let rx = self.live.subscribe();
        let mut first = Vec::new();
        match since {
            None => {
                for s in g.objects[r].values().filter(|s| filter.matches(s)) {
                    first.push((EventType::Added, s.clone()));
                }
            }
            Some(v) => {
                if v < g.floor {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {v} ({})",
                        g.floor
                    )));
                }
                let start = g.history.partition_point(|e| e.rv <= v);
                for e in g.history.range(start..).filter(|e| e.resource == r) {
                    if let Some(t) = filter.translate(e) {
                        first.push((t, e.obj.clone()));
                    }
                }
            }
        }
        Ok(WatchStart {
            first,
            rv: g.rv,
            live: rx,
        })
    }

    fn commit(
        &self,
        g: &mut Inner,
        r: usize,
        kind: EventType,
        mut value: Value,
        prev: Option<Arc<Stored>>,
    ) -> Arc<Stored> {
        g.rv += 1;
        let rv = g.rv;
        meta_mut(&mut value).insert("resourceVersion".into(), json!(rv.to_string()));
        let obj = Stored::new(value);
        let key = (
            obj.meta("namespace").to_string(),
            obj.meta("name").to_string(),
        );
        match kind {
            EventType::Deleted => {
                g.objects[r].remove(&key);
            }
            _ => {
                g.objects[r].insert(key, obj.clone());
            }
        }
        let ev = Arc::new(WriteEvent {
            rv,
            resource: r,
            kind,
            obj: obj.clone(),
            prev,
            at: Instant::now(),
        });
        g.history.push_back(ev.clone());
        while g.history.len() > g.history_cap {
            if let Some(e) = g.history.pop_front() {
                g.floor = e.rv;
            }
        }
        // No receivers is not an error.
        let _ = self.live.send(ev);
        obj
    }

    /// Checks and completes an incoming object for resource `r` in `ns`.
    fn admit(
        &self,
        g: &mut Inner,
        r: usize,
        ns: Option<&str>,
        mut v: Value,
        old: Option<&Stored>,
        validation: FieldValidation,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let rt = &RESOURCES[r];
        if !v.is_object() {
            return Err(ApiError::bad_request("the object is not a JSON object"));
        }
        let api_version = rt.api_version();
        for (field, want) in [("apiVersion", api_version.as_str()), ("kind", rt.kind)] {
            match v.get(field).and_then(Value::as_str) {
                None | Some("") => v[field] = json!(want),
                Some(got) if got != want => {
                    return Err(ApiError::bad_request(format!(
                        "the API version in the data ({}) does not match the expected API version ({api_version}) or kind {}",
                        v.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                        rt.kind
                    )));
                }
                Some(_) => {}
            }
        }
        // Namespace: from the path; the body must agree.
        let body_ns = meta_str(&v, "namespace").to_string();
        if rt.namespaced {
            let ns = ns.unwrap_or("default");
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta_mut(&mut v).insert("namespace".into(), json!(ns));
            if !g.objects[resources::NAMESPACES].contains_key(&(String::new(), ns.to_string())) {
                return Err(ApiError::not_found(&RESOURCES[resources::NAMESPACES], ns));
            }
        } else {
            meta_mut(&mut v).remove("namespace");
        }
        if meta_str(&v, "name").is_empty() {
            let gen = meta_str(&v, "generateName").to_string();
            if gen.is_empty() || old.is_some() {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            let suffix = format!("{:05x}", (g.next_uid * 2_654_435_761) % 0xfffff);
            meta_mut(&mut v).insert("name".into(), json!(format!("{gen}{suffix}")));
        }
        let name = meta_str(&v, "name").to_string();
        // Server-owned metadata.
        let now = rfc3339(now_unix());
        match old {
            Some(o) => {
                for k in ["uid", "creationTimestamp", "deletionTimestamp"] {
                    match o.value.get("metadata").and_then(|m| m.get(k)) {
                        Some(x) => {
                            meta_mut(&mut v).insert(k.into(), x.clone());
                        }
                        None => {
                            meta_mut(&mut v).remove(k);
                        }
                    }
                }
                if rt.status != StatusPolicy::Plain {
                    match o.value.get("status") {
                        Some(s) => v["status"] = s.clone(),
                        None => {
                            if let Some(m) = v.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                let gen = o
                    .value
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let spec_changed = o.value.get("spec") != v.get("spec");
                meta_mut(&mut v).insert(
                    "generation".into(),
                    json!(if spec_changed { gen + 1 } else { gen }),
                );
            }
            None => {
                let uid = format!("00000000-0000-4000-8000-{:012x}", g.next_uid);
                g.next_uid += 1;
                let m = meta_mut(&mut v);
                m.insert("uid".into(), json!(uid));
                m.insert("creationTimestamp".into(), json!(now));
                m.insert("generation".into(), json!(1));
                m.remove("deletionTimestamp");
                if rt.status == StatusPolicy::ClearOnCreate {
                    v["status"] = json!({});
                }
            }
        }
        match rt.kind {
            "Service" => self.service_defaults(g, rt, &name, &mut v, old)?,
            "Namespace" => v["status"] = json!({"phase": "Active"}),
            _ => {}
        }
        // The typed schema: type errors are 400, unknown fields per `fieldValidation`.
        let mut warnings = Vec::new();
        match typed_roundtrip(rt, &v) {
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    rt.kind, rt.version, rt.kind
                )))
            }
            Ok(Some(typed)) if validation != FieldValidation::Ignore => {
                let mut unknown = Vec::new();
                unknown_fields(&v, &typed, "", &mut unknown);
                if !unknown.is_empty() {
                    if validation == FieldValidation::Strict {
                        return Err(ApiError::bad_request(format!(
                            "strict decoding error: {}",
                            unknown
                                .iter()
                                .map(|f| format!("unknown field \"{f}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                    warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
                }
            }
            Ok(_) => {}
        }
        Ok((v, warnings))
    }

    /// The Service defaults and allocations kube-apiserver applies.
    fn service_defaults(
        &self,
        g: &mut Inner,
        rt: &ResourceType,
        name: &str,
        v: &mut Value,
        old: Option<&Stored>,
    ) -> Result<(), ApiError> {
        if !v.get("spec").is_some_and(Value::is_object) {
            v["spec"] = json!({});
        }
        let old_spec = old.and_then(|o| o.value.get("spec")).cloned();
        let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let ty = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        spec.insert("type".into(), json!(ty));
        spec.entry("sessionAffinity").or_insert(json!("None"));
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert(json!("TCP"));
                if ty != "ExternalName" {
                    if let Some(port) = p.get("port").cloned() {
                        p.entry("targetPort").or_insert(port);
                    }
                }
            }
        }
        if ty == "ExternalName" {
            return Ok(());
        }
        spec.entry("internalTrafficPolicy")
            .or_insert(json!("Cluster"));
        // clusterIP(s): kept from the stored object, immutable, else allocated.
        let given: Vec<String> = match spec.get("clusterIPs").and_then(Value::as_array) {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(|s| vec![s.to_string()])
                .unwrap_or_default(),
        };
        let old_ips: Vec<String> = old_spec
            .as_ref()
            .and_then(|s| s.get("clusterIPs"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let ips = if given.is_empty() && !old_ips.is_empty() {
            old_ips.clone()
        } else if !old_ips.is_empty() && given != old_ips {
            return Err(ApiError::invalid(
                rt,
                name,
                &format!(
                    "spec.clusterIPs[0]: Invalid value: {:?}: may not change once set",
                    given
                ),
            ));
        } else if given.is_empty() {
            let families: Vec<String> = spec
                .get("ipFamilies")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .filter(|f: &Vec<String>| !f.is_empty())
                .unwrap_or_else(|| vec!["IPv4".to_string()]);
            let n = g.next_ip;
            g.next_ip += 1;
            families
                .iter()
                .map(|f| {
                    if f == "IPv6" {
                        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, n as u16))
                            .to_string()
                    } else {
                        IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n))
                            .to_string()
                    }
                })
                .collect()
        } else {
            given
        };
        if ips.first().map(String::as_str) != Some("None") {
            let families: Vec<Value> = ips
                .iter()
                .map(|ip| match ip.parse::<IpAddr>() {
                    Ok(IpAddr::V6(_)) => json!("IPv6"),
                    _ => json!("IPv4"),
                })
                .collect();
            spec.insert("ipFamilies".into(), Value::Array(families));
        }
        spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        spec.insert("clusterIP".into(), json!(ips[0]));
        spec.insert("clusterIPs".into(), json!(ips));
        // nodePorts for NodePort and LoadBalancer: kept, else allocated.
        if ty == "NodePort" || ty == "LoadBalancer" {
            spec.entry("externalTrafficPolicy")
                .or_insert(json!("Cluster"));
            let used: BTreeSet<i64> = g.objects[resources::SERVICES]
                .values()
                .flat_map(|s| {
                    s.value
                        .pointer("/spec/ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
                        .collect::<Vec<_>>()
                })
                .collect();
            if let Some(Value::Array(ports)) = spec.get_mut("ports") {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    if p.get("nodePort").and_then(Value::as_i64).is_some() {
                        continue;
                    }
                    let reuse = old_spec
                        .as_ref()
                        .and_then(|s| s.get("ports"))
                        .and_then(Value::as_array)
                        .and_then(|a| {
                            a.iter().find(|o| {
                                o.get("port") == p.get("port")
                                    && o.get("protocol") == p.get("protocol")
                            })
                        })
                        .and_then(|o| o.get("nodePort").and_then(Value::as_i64));
                    let np = match reuse {
                        Some(np) => np,
                        None => {
                            let mut np = g.next_node_port;
                            for _ in 0..2768 {
                                if !used.contains(&i64::from(np)) {
                                    break;
                                }
                                np = if np >= 32767 { 30000 } else { np + 1 };
                            }
                            g.next_node_port = if np >= 32767 { 30000 } else { np + 1 };
                            i64::from(np)
                        }
                    };
                    p.insert("nodePort".into(), json!(np));
                }
            }
        }
        Ok(())
    }

    /// POST: creates an object; 409 AlreadyExists if the name is taken.
    pub fn create(
        &self,
        r: usize,
        ns: Option<&str>,
        obj: Value,
        dry_run: bool,
        validation: FieldValidation,
    ) -> Result<Written, ApiError> {
        let mut g = self.lock();
        let (mut v, warnings) = self.admit(&mut g, r, ns, obj, None, validation)?;
        let key = (
            meta_str(&v, "namespace").to_string(),
            meta_str(&v, "name").to_string(),
        );
        if g.objects[r].contains_key(&key) {
            return Err(ApiError::already_exists(&RESOURCES[r], &key.1));
        }
        if dry_run {
            meta_mut(&mut v).remove("resourceVersion");
            return Ok(Written {
                obj: Stored::new(v),
                warnings,
            });
        }
        let obj = self.commit(&mut g, r, EventType::Added, v, None);
        Ok(Written { obj, warnings })
    }

    /// PUT (and the end of PATCH): replaces an object. A non-empty
    /// `metadata.resourceVersion` must equal the stored one (409 Conflict).
    /// `status_only` is the `/status` subresource: only `status` changes.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        r: usize,
        ns: &str,
        name: &str,
        obj: Value,
        status_only: bool,
        dry_run: bool,
        validation: FieldValidation,
    ) -> Result<Written, ApiError> {
        let mut g = self.lock();
        self.update_locked(&mut g, r, ns, name, obj, status_only, dry_run, validation)
    }

    #[allow(clippy::too_many_arguments)]
    fn update_locked(
        &self,
        g: &mut Inner,
        r: usize,
        ns: &str,
        name: &str,
        mut obj: Value,
        status_only: bool,
        dry_run: bool,
        validation: FieldValidation,
    ) -> Result<Written, ApiError> {
        let rt = &RESOURCES[r];
        let key = (ns.to_string(), name.to_string());
        let Some(old) = g.objects[r].get(&key).cloned() else {
            return Err(ApiError::not_found(rt, name));
        };
        let body_name = meta_str(&obj, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let rv = meta_str(&obj, "resourceVersion").to_string();
        if !rv.is_empty() && rv != old.meta("resourceVersion") {
            return Err(ApiError::conflict(
                rt,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if status_only {
            let status = obj.get("status").cloned();
            obj = old.value.clone();
            match status {
                Some(s) => obj["status"] = s,
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        meta_mut(&mut obj).insert("name".into(), json!(name));
        let ns_arg = rt.namespaced.then_some(ns);
        let (mut v, warnings) = if status_only {
            (obj, Vec::new())
        } else {
            self.admit(g, r, ns_arg, obj, Some(&old), validation)?
        };
        // Finalizers emptied on an object being deleted: now it goes.
        let deleting = v.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers = v
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if dry_run {
            meta_mut(&mut v).insert("resourceVersion".into(), json!(old.meta("resourceVersion")));
            return Ok(Written {
                obj: Stored::new(v),
                warnings,
            });
        }
        let mut unchanged = v.clone();
        meta_mut(&mut unchanged)
            .insert("resourceVersion".into(), json!(old.meta("resourceVersion")));
        if unchanged == old.value {
            // A no-op write does not bump the version (as the real server).
            return Ok(Written { obj: old, warnings });
        }
        let kind = if deleting && !finalizers {
            EventType::Deleted
        } else {
            EventType::Modified
        };
        let obj = self.commit(g, r, kind, v, Some(old));
        Ok(Written { obj, warnings })
    }

    /// PATCH: `apply` turns the stored object into the patched one. With
    /// `create` (server-side apply), a missing object is created from
    /// `apply(empty)`.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        r: usize,
        ns: &str,
        name: &str,
        apply: &dyn Fn(&mut Value) -> Result<(), ApiError>,
        create: bool,
        status_only: bool,
        dry_run: bool,
        validation: FieldValidation,
    ) -> Result<Written, ApiError> {
        let rt = &RESOURCES[r];
        let mut g = self.lock();
        let key = (ns.to_string(), name.to_string());
        let Some(old) = g.objects[r].get(&key).cloned() else {
            if !create {
                return Err(ApiError::not_found(rt, name));
            }
            let mut v = json!({"metadata": {"name": name}});
            apply(&mut v)?;
            let (mut v, warnings) =
                self.admit(&mut g, r, rt.namespaced.then_some(ns), v, None, validation)?;
            if dry_run {
                meta_mut(&mut v).remove("resourceVersion");
                return Ok(Written {
                    obj: Stored::new(v),
                    warnings,
                });
            }
            let obj = self.commit(&mut g, r, EventType::Added, v, None);
            return Ok(Written { obj, warnings });
        };
        let mut v = old.value.clone();
        apply(&mut v)?;
        self.update_locked(&mut g, r, ns, name, v, status_only, dry_run, validation)
    }

    /// DELETE: removes an object now, or marks it deleted while it has
    /// finalizers. Returns the deleted (or marked) object.
    pub fn delete(
        &self,
        r: usize,
        ns: &str,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
    ) -> Result<(Arc<Stored>, bool), ApiError> {
        let rt = &RESOURCES[r];
        let mut g = self.lock();
        let key = (ns.to_string(), name.to_string());
        let Some(old) = g.objects[r].get(&key).cloned() else {
            return Err(ApiError::not_found(rt, name));
        };
        if pre.uid.as_deref().is_some_and(|u| u != old.meta("uid")) {
            return Err(ApiError::conflict(
                rt,
                name,
                "Precondition failed: UID in precondition does not match the UID in record. The object might have been deleted and then recreated",
            ));
        }
        if pre
            .resource_version
            .as_deref()
            .is_some_and(|v| v != old.meta("resourceVersion"))
        {
            return Err(ApiError::conflict(
                rt,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if dry_run {
            return Ok((old, true));
        }
        let finalizers = old
            .value
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        if finalizers {
            if old.value.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((old, false));
            }
            let mut v = old.value.clone();
            let m = meta_mut(&mut v);
            m.insert("deletionTimestamp".into(), json!(rfc3339(now_unix())));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            let obj = self.commit(&mut g, r, EventType::Modified, v, Some(old));
            return Ok((obj, false));
        }
        let v = old.value.clone();
        let obj = self.commit(&mut g, r, EventType::Deleted, v, Some(old.clone()));
        if r == resources::NAMESPACES {
            // The namespace controller's job, done at once: delete the contents.
            for (i, rt) in RESOURCES.iter().enumerate() {
                if !rt.namespaced {
                    continue;
                }
                let keys: Vec<_> = g.objects[i]
                    .range((name.to_string(), String::new())..)
                    .take_while(|(k, _)| k.0 == name)
                    .map(|(_, s)| s.clone())
                    .collect();
                for s in keys {
                    let v = s.value.clone();
                    self.commit(&mut g, i, EventType::Deleted, v, Some(s));
                }
            }
        }
        Ok((obj, true))
    }

    /// DELETE on a collection: deletes every matching object.
    pub fn delete_collection(&self, r: usize, filter: &Filter) -> Vec<Arc<Stored>> {
        let keys: Vec<(String, String)> = {
            let g = self.lock();
            g.objects[r]
                .iter()
                .filter(|(_, s)| filter.matches(s))
                .map(|(k, _)| k.clone())
                .collect()
        };
        keys.iter()
            .filter_map(|(ns, name)| {
                self.delete(r, ns, name, &Preconditions::default(), false)
                    .ok()
                    .map(|(o, _)| o)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ENDPOINT_SLICES, SERVICES};

    fn svc(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"app": name}},
               "spec": {"ports": [{"port": 80}]}})
    }

    #[test]
    fn writes_bump_one_global_version_and_stamp_it() {
        let s = Store::new(StoreConfig::default());
        let v0 = s.resource_version();
        let a = s
            .create(
                SERVICES,
                Some("default"),
                svc("a"),
                false,
                FieldValidation::Strict,
            )
            .unwrap();
        assert_eq!(a.obj.meta("resourceVersion"), (v0 + 1).to_string());
        let spec = &a.obj.value["spec"];
        assert_eq!(spec["clusterIP"], "10.96.0.10");
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        let e = s
            .create(
                SERVICES,
                Some("default"),
                svc("a"),
                false,
                FieldValidation::Strict,
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "AlreadyExists"));
        let e = s
            .create(
                SERVICES,
                Some("nope"),
                svc("b"),
                false,
                FieldValidation::Strict,
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason), (404, "NotFound"));
        assert_eq!(s.resource_version(), v0 + 1);
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let s = Store::new(StoreConfig::default());
        let a = s
            .create(
                SERVICES,
                Some("default"),
                svc("a"),
                false,
                FieldValidation::Strict,
            )
            .unwrap();
        let mut stale = a.obj.value.clone();
        stale["metadata"]["labels"]["x"] = json!("1");
        s.update(
            SERVICES,
            "default",
            "a",
            stale.clone(),
            false,
            false,
            FieldValidation::Strict,
        )
        .unwrap();
        let e = s
            .update(
                SERVICES,
                "default",
                "a",
                stale,
                false,
                false,
                FieldValidation::Strict,
            )
            .unwrap_err();
        assert_eq!((e.code, e.reason), (409, "Conflict"));
    }

    #[test]
    fn watch_replays_history_and_expires() {
        let s = Store::new(StoreConfig {
            history: 3,
            ..StoreConfig::default()
        });
        let start = s.resource_version();
        for n in ["a", "b"] {
            s.create(
                SERVICES,
                Some("default"),
                svc(n),
                false,
                FieldValidation::Ignore,
            )
            .unwrap();
        }
        let f = Filter {
            labels: LabelSelector::parse("app=b").unwrap(),
            ..Filter::default()
        };
        let ev = s.watch(SERVICES, &f, Some(start)).unwrap().first;
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].1.meta("name"), "b");
        for n in ["c", "d", "e"] {
            s.create(
                SERVICES,
                Some("default"),
                svc(n),
                false,
                FieldValidation::Ignore,
            )
            .unwrap();
        }
        let e = s.watch(SERVICES, &f, Some(start)).unwrap_err();
        assert_eq!((e.code, e.reason), (410, "Expired"));
        let now = s.resource_version();
        assert!(s.watch(SERVICES, &f, Some(now)).is_ok());
        s.expire_history();
        assert_eq!(s.watch(SERVICES, &f, Some(now)).unwrap_err().code, 410);
        assert!(s.watch(ENDPOINT_SLICES, &f, None).unwrap().first.is_empty());
    }

    #[test]
    fn relabel_out_of_selector_is_a_delete_for_the_watch() {
        let s = Store::new(StoreConfig::default());
        s.create(
            SERVICES,
            Some("default"),
            svc("a"),
            false,
            FieldValidation::Ignore,
        )
        .unwrap();
        let from = s.resource_version();
        s.patch(
            SERVICES,
            "default",
            "a",
            &|v| {
                v["metadata"]["labels"]["app"] = json!("other");
                Ok(())
            },
            false,
            false,
            false,
            FieldValidation::Ignore,
        )
        .unwrap();
        let f = Filter {
            labels: LabelSelector::parse("app=a").unwrap(),
            ..Filter::default()
        };
        let ev = s.watch(SERVICES, &f, Some(from)).unwrap().first;
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, EventType::Deleted);
    }

    #[test]
    fn list_pages_are_one_consistent_snapshot() {
        let s = Store::new(StoreConfig::default());
        for n in ["a", "b", "c"] {
            s.create(
                SERVICES,
                Some("default"),
                svc(n),
                false,
                FieldValidation::Ignore,
            )
            .unwrap();
        }
        let f = Filter::default();
        let p1 = s.list(SERVICES, &f, Some(2), None).unwrap();
        assert_eq!(p1.items.len(), 2);
        assert_eq!(p1.remaining, Some(1));
        s.create(
            SERVICES,
            Some("default"),
            svc("d"),
            false,
            FieldValidation::Ignore,
        )
        .unwrap();
        let p2 = s
            .list(SERVICES, &f, Some(2), p1.continue_token.as_deref())
            .unwrap();
        assert_eq!(p2.items.len(), 1, "d is after the snapshot");
        assert_eq!(p2.resource_version, p1.resource_version);
        assert!(p2.continue_token.is_none());
        assert_eq!(
            s.list(SERVICES, &f, Some(9), Some("99-1"))
                .unwrap_err()
                .code,
            410
        );
    }

    #[test]
    fn strict_validation_and_type_errors() {
        let s = Store::new(StoreConfig::default());
        let mut bad = svc("a");
        bad["spec"]["bogus"] = json!(1);
        let e = s
            .create(
                SERVICES,
                Some("default"),
                bad.clone(),
                false,
                FieldValidation::Strict,
            )
            .unwrap_err();
        assert!(e.message.contains("unknown field \"spec.bogus\""), "{e}");
        let w = s
            .create(SERVICES, Some("default"), bad, false, FieldValidation::Warn)
            .unwrap();
        assert_eq!(w.warnings, ["unknown field \"spec.bogus\""]);
        let mut t = svc("b");
        t["spec"]["ports"] = json!("80");
        let e = s
            .create(SERVICES, Some("default"), t, false, FieldValidation::Ignore)
            .unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn namespace_delete_takes_its_objects() {
        let s = Store::new(StoreConfig::default());
        s.create(
            resources::NAMESPACES,
            None,
            json!({"metadata": {"name": "x"}}),
            false,
            FieldValidation::Ignore,
        )
        .unwrap();
        s.create(
            SERVICES,
            Some("x"),
            svc("a"),
            false,
            FieldValidation::Ignore,
        )
        .unwrap();
        s.delete(
            resources::NAMESPACES,
            "",
            "x",
            &Preconditions::default(),
            false,
        )
        .unwrap();
        assert_eq!(s.count(SERVICES), 0);
    }
}
