//! A Kubernetes API server for tests: enough of kube-apiserver's wire
//! protocol that `kubectl apply/get/delete/patch` and kube-rs watchers work
//! against it unmodified, on `127.0.0.1:0`, in-process.
//!
//! It is a dev-only crate: nothing in the shipped binary links it.
//!
//! Promises (see docs/kubernetes.md for the list of deviations):
//! - Serves Namespaces, Nodes, Services, Endpoints, Pods, ConfigMaps
//!   (`v1`) and EndpointSlices (`discovery.k8s.io/v1`): get, list (with
//!   `labelSelector`, `fieldSelector`, `limit`/`continue`), watch, create,
//!   update, patch (merge, strategic merge, JSON patch, apply), delete and
//!   deletecollection, with kube-apiserver's `Status` answers (404
//!   NotFound, 409 AlreadyExists/Conflict, 410 Expired, 422 Invalid).
//! - One global `resourceVersion`, stamped on every write and list; watches
//!   replay a bounded history after the requested version, send `BOOKMARK`s
//!   when asked and end at `timeoutSeconds`.
//! - Discovery (`/api`, `/apis`, `/version`, `/openapi/v3`) as kubectl needs.
//! - Test hooks: [`TestApi::drop_watches`], [`TestApi::expire_history`],
//!   [`TestApi::stall_watches`], [`TestApi::stop`]/[`TestApi::restart`]
//!   (same port, same store, every connection cut). The `testapi` binary
//!   drives the same hooks with signals (see `src/bin/testapi.rs`).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod discovery;
mod http;
pub mod patch;
mod proto;
pub mod resources;
pub mod selector;
pub mod status;
pub mod store;
mod table;

pub use status::ApiError;
pub use store::{FieldValidation, Store, StoreConfig};

/// Settings of a test API server.
#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreConfig,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Watch length when the client gives no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: StoreConfig::default(),
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// Shared switches the test hooks flip.
#[derive(Debug)]
pub(crate) struct Hooks {
    /// Bumped by [`TestApi::drop_watches`]: every open watch ends.
    pub drop_epoch: watch::Sender<u64>,
    /// While true, open watches send nothing (and keep the connection).
    pub stall: watch::Sender<bool>,
    pub requests: AtomicU64,
    pub active_watches: AtomicUsize,
    /// Bit `i` set: reads (list, watch, get) of `RESOURCES[i]` answer 503.
    pub failing: AtomicU64,
}

/// Per-server-instance context of the request handlers.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub store: Arc<Store>,
    pub hooks: Arc<Hooks>,
    pub config: Config,
    pub addr: SocketAddr,
    /// Becomes true when this instance stops.
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Debug)]
struct Running {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A running (or stopped) test API server.
#[derive(Debug)]
pub struct TestApi {
    store: Arc<Store>,
    hooks: Arc<Hooks>,
    config: Config,
    addr: SocketAddr,
    running: Option<Running>,
}

impl TestApi {
    /// Starts a server with default settings on `127.0.0.1:0`.
    pub async fn start() -> io::Result<TestApi> {
        TestApi::start_with(Config::default()).await
    }

    /// Starts a server on `127.0.0.1:0`.
    pub async fn start_with(config: Config) -> io::Result<TestApi> {
        TestApi::start_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `addr` (use a loopback address).
    pub async fn start_on(config: Config, addr: SocketAddr) -> io::Result<TestApi> {
        let store = Store::new(config.store.clone());
        let hooks = Arc::new(Hooks {
            drop_epoch: watch::channel(0).0,
            stall: watch::channel(false).0,
            requests: AtomicU64::new(0),
            active_watches: AtomicUsize::new(0),
            failing: AtomicU64::new(0),
        });
        let mut api = TestApi {
            store,
            hooks,
            config,
            addr,
            running: None,
        };
        api.listen().await?;
        Ok(api)
    }

    async fn listen(&mut self) -> io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            store: self.store.clone(),
            hooks: self.hooks.clone(),
            config: self.config.clone(),
            addr: self.addr,
            shutdown: shutdown_rx.clone(),
        });
        let task = tokio::spawn(accept_loop(listener, ctx, shutdown_rx));
        self.running = Some(Running { shutdown, task });
        Ok(())
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The object store (direct reads and writes, bypassing HTTP).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// A kubeconfig for this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testapi\n  cluster:\n    server: {}\ncontexts:\n- name: testapi\n  context:\n    cluster: testapi\n    user: testapi\n    namespace: default\ncurrent-context: testapi\nusers:\n- name: testapi\n  user: {{}}\n",
            self.url()
        )
    }

    /// Writes [`TestApi::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Ends every open watch stream now (clients re-watch from their last
    /// version).
    pub fn drop_watches(&self) {
        self.hooks.drop_epoch.send_modify(|e| *e += 1);
    }

    /// Stalls (true) or resumes (false) every open watch: while stalled a
    /// watch sends nothing but stays open.
    pub fn stall_watches(&self, stalled: bool) {
        self.hooks.stall.send_replace(stalled);
    }

    /// Forgets the watch history (see [`Store::expire_history`]).
    pub fn expire_history(&self) {
        self.store.expire_history();
    }

    /// Makes reads (list, watch, get) of the resource `plural` (`services`,
    /// `endpointslices`, `nodes`, ...) fail with 503 ServiceUnavailable, or
    /// work again. Unknown names are ignored.
    pub fn fail_reads(&self, plural: &str, fail: bool) {
        if let Some(i) = resources::RESOURCES.iter().position(|r| r.plural == plural) {
            if fail {
                self.hooks.failing.fetch_or(1 << i, Ordering::Relaxed);
            } else {
                self.hooks.failing.fetch_and(!(1 << i), Ordering::Relaxed);
            }
        }
    }

    /// Number of watch streams open now.
    pub fn active_watches(&self) -> usize {
        self.hooks.active_watches.load(Ordering::Relaxed)
    }

    /// Number of HTTP requests served so far.
    pub fn requests(&self) -> u64 {
        self.hooks.requests.load(Ordering::Relaxed)
    }

    /// Stops listening and cuts every connection (watches included). The
    /// store is kept; [`TestApi::resume`] serves it again on the same port.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown.send(true);
            let _ = r.task.await;
        }
    }

    /// Listens again on the same address after [`TestApi::stop`].
    pub async fn resume(&mut self) -> io::Result<()> {
        if self.running.is_none() {
            self.listen().await?;
        }
        Ok(())
    }

    /// [`TestApi::stop`] then [`TestApi::resume`].
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        self.resume().await
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown.send(true);
            r.task.abort();
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!("testapi accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc_ctx = ctx.clone();
            let service = service_fn(move |req| http::handle(svc_ctx.clone(), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!("testapi connection: {e}");
                    }
                }
                // Dropping the connection closes the socket mid-stream.
                _ = crate::stopped(&mut conn_shutdown) => {}
            }
        });
    }
}
