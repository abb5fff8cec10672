//! `healthCheckNodePort` responders, as kube-proxy's
//! `pkg/proxy/healthcheck/service_health.go` answers them: for every
//! LoadBalancer Service with `externalTrafficPolicy: Local`, an HTTP server
//! on its `spec.healthCheckNodePort` (on the node IPs) that answers
//!
//! ```json
//! {"service":{"namespace":"ns","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}
//! ```
//!
//! with 200 when this node has a local endpoint for new flows and the proxy
//! is healthy, 503 otherwise. Load balancers (cloud, MetalLB-style) probe
//! it to send traffic only to nodes with local endpoints.
//!
//! Responders open and close as Services come and go: [`desired`] derives
//! the set from the tables the workers read, [`run`] reconciles listeners
//! with it on every table adoption. A count change needs no rebind: the
//! handlers read the current set.
//!
//! The node IPs are not frontends for these ports, so the XDP steering
//! program passes their traffic to the kernel, where these sockets get it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use hyper_util::rt::TokioIo;

use edgeplane_dataplane::Tables;

use super::logging::RateLimit;
use super::server::response;
use super::{OpsConfig, OpsState};

/// One Service's health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcService {
    pub namespace: String,
    pub name: String,
    /// Distinct local endpoint addresses new flows may use.
    pub local_endpoints: usize,
}

/// The responders the tables call for: port → Service.
pub fn desired(t: &Tables) -> BTreeMap<u16, HcService> {
    let mut out: BTreeMap<u16, (HcService, Vec<IpAddr>)> = BTreeMap::new();
    for (si, s) in t.services.iter().enumerate() {
        if s.health_check_node_port == 0 {
            continue;
        }
        let e = out.entry(s.health_check_node_port).or_insert_with(|| {
            (
                HcService {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    local_endpoints: 0,
                },
                Vec::new(),
            )
        });
        for f in t
            .frontends
            .iter()
            .filter(|f| f.service as usize == si && f.kind.is_external())
        {
            for b in t.new_backends(f).iter().filter(|b| b.local) {
                if !e.1.contains(&b.ip) {
                    e.1.push(b.ip);
                }
            }
        }
    }
    out.into_iter()
        .map(|(p, (mut s, ips))| {
            s.local_endpoints = ips.len();
            (p, s)
        })
        .collect()
}

/// Status and body of one answer.
pub fn answer(s: &HcService, proxy_healthy: bool) -> (StatusCode, String) {
    // kube-proxy's field order.
    let q = |v: &str| serde_json::Value::from(v).to_string();
    let body = format!(
        r#"{{"service":{{"namespace":{},"name":{}}},"localEndpoints":{},"serviceProxyHealthy":{}}}"#,
        q(&s.namespace),
        q(&s.name),
        s.local_endpoints,
        proxy_healthy
    );
    let status = if s.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// The addresses responders listen on: the node IPs, or every address
/// when none is configured.
fn listen_ips(t: &Tables) -> Vec<IpAddr> {
    if t.node.node_ips.is_empty() {
        vec![
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ]
    } else {
        t.node.node_ips.clone()
    }
}

type Current = Arc<Mutex<BTreeMap<u16, HcService>>>;

/// Reconciles responders with the tables, forever (on the ops runtime).
pub async fn run(state: Arc<OpsState>, cfg: OpsConfig) {
    let current: Current = Arc::default();
    let mut open: BTreeMap<(IpAddr, u16), tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut warn = RateLimit::new(Duration::from_secs(30));
    loop {
        let tables = state.lock().tables.clone();
        if let Some(t) = tables {
            let want = desired(&t);
            *current.lock().unwrap_or_else(|e| e.into_inner()) = want.clone();
            let ips = listen_ips(&t);
            // Close responders whose Service (or node IP) went away.
            open.retain(|(ip, port), task| {
                let keep = want.contains_key(port) && ips.contains(ip);
                if !keep {
                    task.abort();
                    tracing::info!(port, %ip, "healthCheckNodePort responder closed");
                }
                keep
            });
            let mut failures = 0;
            for (&port, s) in &want {
                for &ip in &ips {
                    if open.contains_key(&(ip, port)) {
                        continue;
                    }
                    match bind(SocketAddr::new(ip, port)) {
                        Ok(l) => {
                            tracing::info!(port, %ip, service = %format!("{}/{}", s.namespace, s.name), "healthCheckNodePort responder open");
                            let task = tokio::spawn(serve(
                                l,
                                port,
                                current.clone(),
                                state.clone(),
                                cfg.clone(),
                            ));
                            open.insert((ip, port), task);
                        }
                        Err(e) => {
                            failures += 1;
                            if let Some(suppressed) = warn.allow(Instant::now()) {
                                tracing::warn!(port, %ip, suppressed, "cannot open healthCheckNodePort responder: {e}");
                            }
                        }
                    }
                }
            }
            let mut g = state.lock();
            g.hc_ports_open = open.len();
            g.hc_bind_failures += failures;
        }
        // Wait for new tables; retry failed binds now and then.
        let _ = tokio::time::timeout(Duration::from_secs(5), state.tables_changed.notified()).await;
    }
}

fn bind(a: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = match a {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    s.set_reuseaddr(true)?;
    s.bind(a)?;
    s.listen(128)
}

async fn serve(
    l: tokio::net::TcpListener,
    port: u16,
    current: Current,
    state: Arc<OpsState>,
    cfg: OpsConfig,
) {
    loop {
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        let (current, state, cfg) = (current.clone(), state.clone(), cfg.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req| {
                let s = current
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&port)
                    .cloned();
                let healthy = state.health(&cfg).healthy;
                async move {
                    let r = match s {
                        Some(s) => {
                            let (status, body) = answer(&s, healthy);
                            let mut r = response(status, "application/json", body);
                            if let Ok(v) = "1".parse() {
                                r.headers_mut()
                                    .insert("X-Load-Balancing-Endpoint-Weight", v);
                            }
                            r
                        }
                        None => response(StatusCode::NOT_FOUND, "text/plain", String::new()),
                    };
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_control::compile::{compile, CompileOptions};
    use edgeplane_control::manifests;

    const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  clusterIP: 198.18.100.10
  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30080}, {name: alt, port: 81, targetPort: 8081, nodePort: 30081}]
  selector: {app: web}
status: {loadBalancer: {ingress: [{ip: 198.18.200.10}]}}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec:
  type: LoadBalancer
  healthCheckNodePort: 32001
  clusterIP: 198.18.100.11
  ports: [{port: 80, targetPort: 8080, nodePort: 30090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: alt, port: 8081, protocol: TCP}]
endpoints:
- {addresses: [198.18.2.2], nodeName: LOCAL, conditions: {ready: true}}
- {addresses: [198.18.2.3], nodeName: other, conditions: {ready: true}}
- {addresses: [198.18.2.4], nodeName: LOCAL, conditions: {ready: false}}
"#;

    fn tables_for(node: &str) -> Tables {
        tables_with(node, "198.18.0.1", 32000, MANIFEST)
    }

    fn tables_with(node: &str, node_ip: &str, hc_port: u16, manifest: &str) -> Tables {
        let dir = std::env::temp_dir().join(format!(
            "ep-hc-{}-{node}-{hc_port}-{}",
            std::process::id(),
            manifest.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.yaml");
        let text = manifest
            .replace("LOCAL", "node-a")
            .replace("32000", &hc_port.to_string());
        std::fs::write(&path, text).unwrap();
        let (objects, _) = manifests::load_path(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let opts = CompileOptions {
            node_name: node.into(),
            node_ips: vec![node_ip.parse().unwrap()],
            ..CompileOptions::default()
        };
        compile(&objects, &opts, 1).unwrap().tables
    }

    /// `GET /` on 127.0.0.1:port: `Some((status, body))`, `None` if refused.
    fn probe(port: u16) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.get(9..12)?.parse().ok()?;
        Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
    }

    /// Polls until `want` holds (responders reconcile asynchronously).
    fn until(port: u16, want: impl Fn(&Option<(u16, String)>) -> bool) -> Option<(u16, String)> {
        let mut last = None;
        for _ in 0..100 {
            last = probe(port);
            if want(&last) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        last
    }

    #[test]
    fn responders_open_flip_and_close_as_tables_change() {
        // A free port for the health check.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let state = OpsState::new();
        let cfg = OpsConfig {
            metrics_addr: None,
            healthz_addr: None,
            stale_after: Duration::from_secs(60),
            worker_stall: Duration::from_secs(60),
            health_check_node_ports: true,
        };
        let _h = crate::ops::serve(cfg, state.clone()).unwrap();
        let local = || tables_with("node-a", "127.0.0.1", port, MANIFEST);
        state.adopt_tables(Arc::new(local()));
        let r = until(port, |r| matches!(r, Some((200, _))));
        let (code, body) = r.expect("the responder answers");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""localEndpoints":1"#), "{body}");
        assert_eq!(state.lock().hc_ports_open, 1);
        // The local endpoint goes away: 503, same listener.
        state.adopt_tables(Arc::new(tables_with("node-b", "127.0.0.1", port, MANIFEST)));
        let r = until(port, |r| matches!(r, Some((503, _))));
        assert!(
            matches!(&r, Some((503, b)) if b.contains(r#""localEndpoints":0"#)),
            "{r:?}"
        );
        state.adopt_tables(Arc::new(local()));
        assert!(matches!(
            until(port, |r| matches!(r, Some((200, _)))),
            Some((200, _))
        ));
        // The Service goes away: the port closes.
        let without: String = MANIFEST
            .split("---")
            .skip(1)
            .collect::<Vec<_>>()
            .join("---");
        state.adopt_tables(Arc::new(tables_with("node-a", "127.0.0.1", port, &without)));
        let r = until(port, |r| r.is_none());
        assert!(r.is_none(), "still answering: {r:?}");
        assert_eq!(state.lock().hc_ports_open, 0);
    }

    #[test]
    fn one_responder_per_local_service_with_its_local_endpoint_count() {
        let t = tables_for("node-a");
        let d = desired(&t);
        // Only the Local Service gets one (kube-proxy allocates none for
        // Cluster, and ignores a stray field); both its ports share it.
        assert_eq!(d.keys().copied().collect::<Vec<_>>(), vec![32000]);
        assert_eq!(
            d[&32000],
            HcService {
                namespace: "shop".into(),
                name: "web".into(),
                local_endpoints: 1
            }
        );
        let (status, body) = answer(&d[&32000], true);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"service":{"namespace":"shop","name":"web"},"localEndpoints":1,"serviceProxyHealthy":true}"#
        );
        assert_eq!(answer(&d[&32000], false).0, StatusCode::SERVICE_UNAVAILABLE);
        // Another node: no local endpoint → 503 with a count of 0.
        let d = desired(&tables_for("node-b"));
        let (status, body) = answer(&d[&32000], true);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(r#""localEndpoints":0"#));
    }
}
