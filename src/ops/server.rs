//! The HTTP side: one thread (`edgeplane-ops`) running a current-thread
//! tokio runtime; hyper serves `/metrics`, `/healthz`, `/livez` and the
//! `healthCheckNodePort` responders.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;

use super::{hcnodeport, health, metrics, OpsConfig, OpsState};

/// The running ops server. Dropping it stops the thread (listeners close).
#[derive(Debug)]
pub struct OpsHandle {
    /// Where `/metrics` listens (the bound address, useful with port 0).
    pub metrics_addr: Option<SocketAddr>,
    /// Where `/healthz` and `/livez` listen.
    pub healthz_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for OpsHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds the configured listeners (an error here fails start-up: a port
/// in use is a misconfiguration) and serves them on a thread of their own.
pub fn serve(cfg: OpsConfig, state: Arc<OpsState>) -> Result<OpsHandle> {
    let bind = |a: Option<SocketAddr>, what: &str| -> Result<Option<std::net::TcpListener>> {
        a.map(|a| {
            let l = std::net::TcpListener::bind(a)
                .with_context(|| format!("binding the {what} endpoint to {a}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .transpose()
    };
    let ml = bind(cfg.metrics_addr, "metrics")?;
    let hl = bind(cfg.healthz_addr, "healthz")?;
    let metrics_addr = ml.as_ref().and_then(|l| l.local_addr().ok());
    let healthz_addr = hl.as_ref().and_then(|l| l.local_addr().ok());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("ops runtime")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("edgeplane-ops".into())
        .spawn(move || {
            rt.block_on(async move {
                let registry = Arc::new(metrics::registry(state.clone(), cfg.clone()));
                let ctx = Arc::new(Ctx {
                    state: state.clone(),
                    cfg: cfg.clone(),
                    registry,
                });
                if let Some(l) = ml {
                    spawn_listener(l, ctx.clone(), true);
                }
                if let Some(l) = hl {
                    // Health only: it usually listens on every address.
                    spawn_listener(l, ctx.clone(), false);
                }
                if cfg.health_check_node_ports {
                    tokio::spawn(hcnodeport::run(state, cfg));
                }
                let _ = stop_rx.await;
            });
        })
        .context("spawning the ops thread")?;
    if let Some(a) = metrics_addr {
        tracing::info!(addr = %a, "serving /metrics");
    }
    if let Some(a) = healthz_addr {
        tracing::info!(addr = %a, "serving /healthz and /livez");
    }
    Ok(OpsHandle {
        metrics_addr,
        healthz_addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

struct Ctx {
    state: Arc<OpsState>,
    cfg: OpsConfig,
    registry: Arc<Registry>,
}

/// Serves `/healthz` and `/livez`, and `/metrics` when `metrics` is set.
fn spawn_listener(l: std::net::TcpListener, ctx: Arc<Ctx>, metrics: bool) {
    tokio::spawn(async move {
        let l = match tokio::net::TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("ops listener: {e}");
                return;
            }
        };
        loop {
            let Ok((stream, _)) = l.accept().await else {
                continue;
            };
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(route(&ctx, &req, metrics)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// A response with a body and content type.
pub fn response(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "nosniff".parse() {
        r.headers_mut().insert("X-Content-Type-Options", v);
    }
    r
}

fn route(ctx: &Ctx, req: &Request<Incoming>, metrics: bool) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" if metrics => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::render(&ctx.registry),
        ),
        p @ ("/healthz" | "/livez") => {
            let h = ctx.state.health(&ctx.cfg);
            let body = health::body(&h, SystemTime::now(), (p == "/healthz").then_some(true));
            let status = if h.healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            response(status, "application/json", body)
        }
        _ => response(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 page not found\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_dataplane::afxdp::WorkerSnapshot;
    use edgeplane_dataplane::engine::FlowState;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// `GET path` over a fresh connection: (status, body).
    pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        (status, body)
    }

    fn snap(worker: usize, polls: u64) -> WorkerSnapshot {
        let mut s = WorkerSnapshot {
            worker,
            queue: worker as u32,
            ..WorkerSnapshot::default()
        };
        s.counters.idle_polls = polls;
        s
    }

    #[test]
    fn healthz_turns_503_when_a_worker_stops_polling_and_back() {
        let state = OpsState::new();
        state.set_dataplane(
            vec!["eth0".into()],
            Arc::new(FlowState::new(1024, 1024, 1, Default::default())),
            Arc::new(|| 0),
        );
        state.update_workers(vec![snap(0, 1), snap(1, 1)]);
        let cfg = OpsConfig {
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            healthz_addr: Some("127.0.0.1:0".parse().unwrap()),
            stale_after: Duration::from_secs(60),
            worker_stall: Duration::from_millis(300),
            health_check_node_ports: false,
        };
        let h = serve(cfg, state.clone()).unwrap();
        let (ha, ma) = (h.healthz_addr.unwrap(), h.metrics_addr.unwrap());
        let (code, body) = get(ha, "/healthz");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["nodeEligible"], true);
        assert_eq!(get(ha, "/livez").0, 200);
        // Worker 1 keeps polling, worker 0's counters freeze.
        for i in 2..8 {
            std::thread::sleep(Duration::from_millis(60));
            state.update_workers(vec![snap(0, 1), snap(1, i)]);
        }
        let (code, body) = get(ha, "/healthz");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("worker 0 (queue 0) has not polled"), "{body}");
        assert_eq!(get(ha, "/livez").0, 503);
        let (code, metrics) = get(ma, "/metrics");
        assert_eq!(code, 200);
        assert!(metrics.contains("edgeplane_healthy 0"), "{metrics}");
        // It moves again.
        state.update_workers(vec![snap(0, 2), snap(1, 9)]);
        assert_eq!(get(ha, "/healthz").0, 200);
        assert_eq!(get(ha, "/nothing").0, 404);
        // The health listener (often on every address) does not expose
        // the metrics; the metrics listener also answers health.
        assert_eq!(get(ha, "/metrics").0, 404);
        assert_eq!(get(ma, "/healthz").0, 200);
    }
}
