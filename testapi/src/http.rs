//! The HTTP layer: routing, content negotiation, list/watch streaming.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::discovery;
use crate::patch::{json_patch, merge_patch, strategic_merge_patch};
use crate::resources::{self, ResourceType, RESOURCES};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{delete_success, ApiError};
use crate::store::{FieldValidation, Filter, Preconditions, Stored};
use crate::table::{table, IncludeObject};
use crate::Ctx;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest accepted request body (kube-apiserver's limit).
const MAX_BODY: usize = 3 * 1024 * 1024;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

fn respond(code: u16, body: Bytes, warnings: &[String]) -> Response<Body> {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json");
    for w in warnings {
        r = r.header("warning", format!("299 - {:?}", w));
    }
    r.body(full(body))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    respond(code, Bytes::from(v.to_string()), &[])
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters of a request.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true") | Some("1"))
    }

    fn field_validation(&self) -> FieldValidation {
        match self.get("fieldValidation") {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        }
    }

    fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }
}

/// A request for a resource collection or item.
#[derive(Debug)]
struct Target {
    r: usize,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    // namespaces/{ns}/{plural}[/{name}[/status]] — but namespaces/{name}
    // alone is the Namespace item.
    if rest.len() >= 3 && rest[0] == "namespaces" {
        let r = resources::find(group, version, rest[2])?;
        if !RESOURCES[r].namespaced {
            return None;
        }
        let status = match rest.get(4) {
            None => false,
            Some(&"status") if rest.len() == 5 => true,
            _ => return None,
        };
        return Some(Target {
            r,
            namespace: Some(rest[1].to_string()),
            name: rest.get(3).map(|s| s.to_string()),
            status,
        });
    }
    let r = resources::find(group, version, rest.first()?)?;
    let status = match rest.get(2) {
        None => false,
        Some(&"status") if rest.len() == 3 => true,
        _ => return None,
    };
    if rest.len() >= 2 && RESOURCES[r].namespaced {
        return None;
    }
    Some(Target {
        r,
        namespace: None,
        name: rest.get(1).map(|s| s.to_string()),
        status,
    })
}

pub async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    ctx.hooks.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = Query::parse(req.uri().query());
    let method = req.method().clone();
    let get = method == Method::GET;
    let found = |v: Option<Value>| match v {
        Some(v) => json_response(200, &v),
        None => error_response(&ApiError::page_not_found(&path)),
    };
    let resp = match segs.as_slice() {
        ["version"] if get => json_response(200, &discovery::version()),
        ["healthz"] | ["livez"] | ["readyz"] if get => respond(200, Bytes::from("ok"), &[]),
        ["api"] if get => json_response(200, &discovery::api_versions(&ctx.addr.to_string())),
        ["api", v] if get => found(discovery::resource_list("", v)),
        ["apis"] if get => json_response(200, &discovery::api_group_list()),
        ["apis", g] if get => found(discovery::api_group(g)),
        ["apis", g, v] if get => found(discovery::resource_list(g, v)),
        ["openapi", "v3"] if get => json_response(200, &discovery::openapi_v3_index()),
        ["openapi", "v3", rest @ ..] if get => found(discovery::openapi_v3_doc(&rest.join("/"))),
        ["api", v, rest @ ..] => resource(ctx.clone(), req, "", v, rest, &query).await,
        ["apis", g, v, rest @ ..] => resource(ctx.clone(), req, g, v, rest, &query).await,
        _ => error_response(&ApiError::page_not_found(&path)),
    };
    Ok(resp)
}

async fn read_body(req: Request<Incoming>) -> Result<(String, Bytes), ApiError> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    Ok((ct, bytes))
}

fn decode(ct: &str, body: &[u8]) -> Result<Value, ApiError> {
    match ct {
        "application/json"
        | ""
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("couldn't decode the body as JSON: {e}"))),
        "application/yaml" | "application/apply-patch+yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("couldn't decode the body as YAML: {e}"))),
        "application/vnd.kubernetes.protobuf" => {
            crate::proto::decode(body).ok_or_else(|| ApiError::unsupported_media_type(ct))
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn include_object(q: &Query) -> IncludeObject {
    match q.get("includeObject") {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    }
}

fn filter(t: &Target, q: &Query) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: t.namespace.clone(),
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        fields: FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    })
}

fn obj_response(code: u16, obj: &Stored, warnings: &[String]) -> Response<Body> {
    respond(code, obj.json.clone(), warnings)
}

async fn resource(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
    group: &str,
    version: &str,
    rest: &[&str],
    q: &Query,
) -> Response<Body> {
    let Some(t) = parse_target(group, version, rest) else {
        return error_response(&ApiError::page_not_found(req.uri().path()));
    };
    match resource_inner(ctx, req, t, q).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn resource_inner(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
    t: Target,
    q: &Query,
) -> Result<Response<Body>, ApiError> {
    let rt = &RESOURCES[t.r];
    let store = &ctx.store;
    let ns = t.namespace.clone().unwrap_or_default();
    let method = req.method().clone();
    if method == Method::GET && ctx.hooks.failing.load(Ordering::Relaxed) & (1 << t.r) != 0 {
        return Err(ApiError::unavailable());
    }
    match (method, t.name.clone()) {
        (Method::GET, None) if t.status => Err(ApiError::method_not_allowed("GET")),
        (Method::GET, None) if q.flag("watch") => watch(ctx.clone(), &t, q),
        (Method::GET, None) => {
            let f = filter(&t, q)?;
            let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok());
            let page = store.list(t.r, &f, limit, q.get("continue"))?;
            if q.get("resourceVersionMatch").is_some_and(|m| m == "Exact")
                && q.get("resourceVersion")
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|v| v != page.resource_version)
            {
                return Err(ApiError::expired("too old resource version"));
            }
            let rv = page.resource_version.to_string();
            if wants_table(&req) {
                let tb = table(
                    rt,
                    &page.items,
                    &rv,
                    page.continue_token.as_deref(),
                    include_object(q),
                );
                return Ok(json_response(200, &tb));
            }
            let mut meta = json!({"resourceVersion": rv});
            if let Some(c) = &page.continue_token {
                meta["continue"] = json!(c);
            }
            if let Some(n) = page.remaining {
                meta["remainingItemCount"] = json!(n);
            }
            let mut out = BytesMut::with_capacity(
                128 + page.items.iter().map(|i| i.json.len() + 1).sum::<usize>(),
            );
            out.put_slice(
                format!(
                    "{{\"kind\":\"{}List\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
                    rt.kind,
                    rt.api_version(),
                    meta
                )
                .as_bytes(),
            );
            for (i, item) in page.items.iter().enumerate() {
                if i > 0 {
                    out.put_u8(b',');
                }
                out.put_slice(&item.json);
            }
            out.put_slice(b"]}");
            Ok(respond(200, out.freeze(), &[]))
        }
        (Method::GET, Some(name)) => {
            let o = store.get(t.r, &ns, &name)?;
            if wants_table(&req) {
                let rv = o
                    .value
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                return Ok(json_response(
                    200,
                    &table(rt, &[o], &rv, None, include_object(q)),
                ));
            }
            Ok(obj_response(200, &o, &[]))
        }
        (Method::POST, None) if !t.status => {
            let (ct, body) = read_body(req).await?;
            let v = decode(&ct, &body)?;
            let ns_arg = rt.namespaced.then_some(ns.as_str());
            let w = store.create(t.r, ns_arg, v, q.dry_run(), q.field_validation())?;
            Ok(obj_response(201, &w.obj, &w.warnings))
        }
        (Method::PUT, Some(name)) => {
            let (ct, body) = read_body(req).await?;
            let v = decode(&ct, &body)?;
            let w = store.update(
                t.r,
                &ns,
                &name,
                v,
                t.status,
                q.dry_run(),
                q.field_validation(),
            )?;
            Ok(obj_response(200, &w.obj, &w.warnings))
        }
        (Method::PATCH, Some(name)) => {
            let (ct, body) = read_body(req).await?;
            let p = decode(&ct, &body)?;
            let server_side_apply = ct == "application/apply-patch+yaml";
            let apply = move |v: &mut Value| -> Result<(), ApiError> {
                match ct.as_str() {
                    "application/merge-patch+json" | "application/apply-patch+yaml" => {
                        merge_patch(v, &p);
                        Ok(())
                    }
                    "application/strategic-merge-patch+json" => strategic_merge_patch(v, &p)
                        .map_err(|e| ApiError::bad_request(e.to_string())),
                    "application/json-patch+json" => {
                        json_patch(v, &p).map_err(|e| ApiError::bad_request(e.to_string()))
                    }
                    other => Err(ApiError::unsupported_media_type(other)),
                }
            };
            let w = store.patch(
                t.r,
                &ns,
                &name,
                &apply,
                server_side_apply,
                t.status,
                q.dry_run(),
                q.field_validation(),
            )?;
            Ok(obj_response(200, &w.obj, &w.warnings))
        }
        (Method::DELETE, Some(name)) if !t.status => {
            let dry = q.dry_run();
            let (_, body) = read_body(req).await?;
            let opts: Value = if body.is_empty() {
                json!({})
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    ApiError::bad_request(format!("couldn't decode DeleteOptions: {e}"))
                })?
            };
            let pre = Preconditions {
                uid: opts
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                resource_version: opts
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
            let dry = dry
                || opts
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|x| x == "All"));
            let (obj, gone) = store.delete(t.r, &ns, &name, &pre, dry)?;
            if gone {
                let uid = obj
                    .value
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                Ok(json_response(200, &delete_success(rt, &name, uid)))
            } else {
                Ok(obj_response(200, &obj, &[]))
            }
        }
        (Method::DELETE, None) if !t.status => {
            let f = filter(&t, q)?;
            let deleted = store.delete_collection(t.r, &f);
            let items: Vec<&Value> = deleted.iter().map(|d| &d.value).collect();
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(),
                        "metadata": {"resourceVersion": store.resource_version().to_string()},
                        "items": items}),
            ))
        }
        (m, _) => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

fn event_line(kind: &str, obj: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(obj.len() + 32);
    b.put_slice(b"{\"type\":\"");
    b.put_slice(kind.as_bytes());
    b.put_slice(b"\",\"object\":");
    b.put_slice(obj);
    b.put_slice(b"}\n");
    b.freeze()
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta});
    event_line("BOOKMARK", obj.to_string().as_bytes())
}

/// Starts a watch: an HTTP 200 chunked stream of newline-delimited events.
/// A version older than the history becomes one `ERROR` event carrying the
/// 410 `Expired` Status, then the end of the stream (as kube-apiserver's
/// watch cache answers).
fn watch(ctx: Arc<Ctx>, t: &Target, q: &Query) -> Result<Response<Body>, ApiError> {
    let rt = &RESOURCES[t.r];
    let f = filter(t, q)?;
    let rv_param = q.get("resourceVersion").unwrap_or("");
    let since = match rv_param {
        "" | "0" => None,
        v => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let bookmarks = q.flag("allowWatchBookmarks");
    let initial_events = q.flag("sendInitialEvents");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(ctx.config.default_watch_timeout);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let start = ctx.store.watch(t.r, &f, since);
    let r = t.r;
    let ctx2 = ctx.clone();
    let plural = rt.plural;
    let fut = async move {
        let ctx = ctx2;
        let crate::store::WatchStart {
            first,
            mut rv,
            mut live,
        } = match start {
            Ok(s) => s,
            Err(e) => {
                let _ = tx
                    .send(event_line("ERROR", e.to_status().to_string().as_bytes()))
                    .await;
                return (0u64, "answered with an ERROR event (410 Expired)");
            }
        };
        ctx.hooks.active_watches.fetch_add(1, Ordering::Relaxed);
        let _guard = ActiveGuard(ctx.clone());
        tracing::info!(resource = plural, since = ?since, replayed = first.len(), rv, "watch started");
        let mut sent: u64 = first.len() as u64;
        for (kind, obj) in first {
            if tx.send(event_line(kind.name(), &obj.json)).await.is_err() {
                return (0u64, "client gone");
            }
        }
        if initial_events && since.is_none() {
            let _ = tx.send(bookmark(rt, rv, true)).await;
        }
        let mut drop_rx = ctx.hooks.drop_epoch.subscribe();
        let mut stall_rx = ctx.hooks.stall.subscribe();
        let mut shutdown = ctx.shutdown.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(ctx.config.bookmark_interval);
        tick.tick().await;
        loop {
            if *stall_rx.borrow_and_update() {
                // Stalled: hold everything back, keep the connection open.
                tokio::select! {
                    _ = stall_rx.changed() => continue,
                    _ = drop_rx.changed() => return (sent, "dropped (fault hook)"),
                    _ = crate::stopped(&mut shutdown) => return (sent, "server stopped"),
                    _ = tx.closed() => return (sent, "client gone"),
                }
            }
            let line = tokio::select! {
                ev = live.recv() => match ev {
                    Ok(e) => {
                        // A write made after `stop` returned must never reach
                        // a client: `select!` may pick this branch over the
                        // shutdown one when both are ready.
                        if *shutdown.borrow() {
                            return (sent, "server stopped");
                        }
                        if e.rv <= rv {
                            continue;
                        }
                        rv = e.rv;
                        if e.resource != r {
                            continue;
                        }
                        match f.translate(&e) {
                            Some(kind) => event_line(kind.name(), &e.obj.json),
                            None => continue,
                        }
                    }
                    // Fell behind the live buffer, or the store is gone:
                    // end the stream; the client resumes from its version.
                    Err(broadcast::error::RecvError::Lagged(_)) => return (sent, "fell behind the live buffer"),
                    Err(broadcast::error::RecvError::Closed) => return (sent, "store gone"),
                },
                _ = tick.tick(), if bookmarks => bookmark(rt, rv, false),
                _ = tokio::time::sleep_until(deadline) => {
                    if bookmarks {
                        let _ = tx.send(bookmark(rt, rv, false)).await;
                    }
                    return (sent, "timeoutSeconds reached");
                }
                _ = stall_rx.changed() => continue,
                _ = drop_rx.changed() => return (sent, "dropped (fault hook)"),
                _ = crate::stopped(&mut shutdown) => return (sent, "server stopped"),
                _ = tx.closed() => return (sent, "client gone"),
            };
            if tx.send(line).await.is_err() {
                return (sent, "client gone");
            }
            sent += 1;
        }
    };
    tokio::spawn(async move {
        let (sent, why) = fut.await;
        tracing::info!(resource = plural, since = ?since, sent, "watch ended: {why}");
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let body = StreamBody::new(stream).boxed_unsync();
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| Response::new(full(Bytes::new()))))
}

struct ActiveGuard(Arc<Ctx>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.hooks.active_watches.fetch_sub(1, Ordering::Relaxed);
    }
}
