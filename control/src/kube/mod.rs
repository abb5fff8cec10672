//! The Kubernetes source: Services, EndpointSlices and this node's Node,
//! watched with kube-runtime, published as whole [`ObjectSet`] snapshots for
//! the one compile path ([`crate::compile`]).
//!
//! Promises:
//! - Three kube-runtime watchers (`Service` v1, `EndpointSlice`
//!   discovery.k8s.io/v1, `Node` v1 restricted to `metadata.name=<node>`),
//!   each listing in pages, then watching with bookmarks.
//! - Nothing is published before all three have completed their first list
//!   (`InitDone`); after a relist (410 Expired, a restarted API server) the
//!   type's objects are replaced whole at its `InitDone` ([`mirror`]).
//! - Bursts are coalesced: a snapshot is published [`KubeConfig::debounce`]
//!   after the last change, never later than [`KubeConfig::max_delay`] after
//!   the first unpublished one.
//! - Publication is copy-on-write ([`mirror::Mirrors::publish_into`]): when
//!   the consumer has dropped the previous snapshot, only the changed
//!   objects are copied into it (a published `Arc` someone holds is never
//!   changed). Objects in a snapshot are in no particular order.
//! - Errors never end the source: each watcher retries with exponential
//!   backoff (kube-runtime's default: 0.8 s doubling to 30 s, reset after
//!   120 s without errors); consumers keep the last published snapshot.
//! - Filtering (`service.kubernetes.io/service-proxy-name`, headless,
//!   ExternalName) is left to [`crate::compile`], which applies it to every
//!   source alike and lists the skipped Services in its report; this source
//!   passes the API's objects through unchanged except for dropping
//!   `metadata.managedFields` (never read, often most of an object's size).

pub mod mirror;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::manifests::ObjectSet;
use mirror::{Change, Coalescer, Mirrors, PublishIndex};

/// Exponential backoff between a watcher's failed attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// After this long without an error the delay starts over at `initial`.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    /// kube-runtime's `DefaultBackoff` (client-go's values).
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(800),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(120),
        }
    }
}

/// How to reach the API server and what to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// `--kubeconfig FILE`; with neither this nor `in_cluster`, the usual
    /// inference (`$KUBECONFIG`, `~/.kube/config`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// `--in-cluster`: the pod's service account and `KUBERNETES_SERVICE_*`.
    pub in_cluster: bool,
    /// `--node-name`: the Node object to watch (empty: every Node).
    pub node_name: String,
    /// Publish this long after the last change of a burst.
    pub debounce: Duration,
    /// ... but never later than this after the first unpublished change.
    pub max_delay: Duration,
    pub backoff: BackoffConfig,
    /// Objects per list page.
    pub page_size: u32,
}

impl KubeConfig {
    /// Defaults for `node_name`: inferred client config, 5 ms debounce,
    /// 50 ms cap, kube-runtime's backoff, 500 objects per page.
    pub fn new(node_name: impl Into<String>) -> KubeConfig {
        KubeConfig {
            kubeconfig: None,
            in_cluster: false,
            node_name: node_name.into(),
            debounce: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            backoff: BackoffConfig::default(),
            page_size: 500,
        }
    }
}

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// `--kubeconfig` could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// `--in-cluster` without a usable service account environment.
    #[error("in-cluster config: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// No kubeconfig found and not in a cluster.
    #[error("no Kubernetes client config: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the config.
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    /// Every watcher stream ended (not expected: they retry forever).
    #[error("the watch streams ended")]
    StreamsEnded,
}

/// Counters of the source, readable at any time (metrics come later).
#[derive(Debug, Default)]
pub struct KubeStats {
    /// Relists after the first list, all three types together (410
    /// Expired, a restarted API server, a failed watch start).
    pub watch_restarts: AtomicU64,
    /// Errors the watchers reported (each followed by a backoff delay).
    pub watch_errors: AtomicU64,
    /// Watch events received.
    pub events: AtomicU64,
    /// Snapshots published.
    pub publications: AtomicU64,
    /// Unix time (ms) of the last publication; 0 = none yet.
    pub last_publish_unix_ms: AtomicU64,
    /// Whether the first full list of all three types completed.
    pub synced: AtomicBool,
    /// Unix time (ms) since which the API has been unreachable (a watch
    /// error with no event since); 0 while connected. The last published
    /// snapshot stays in force meanwhile.
    pub disconnected_since_unix_ms: AtomicU64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl KubeStats {
    /// Snapshot of the counters (watch restarts, errors, events, publications).
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.watch_restarts.load(Ordering::Relaxed),
            self.watch_errors.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed),
            self.publications.load(Ordering::Relaxed),
        )
    }
}

/// kube-runtime's exponential backoff, with our parameters.
#[derive(Debug, Clone)]
struct Exponential {
    cfg: BackoffConfig,
    next: Duration,
}

impl Iterator for Exponential {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.cfg.max);
        Some(d)
    }
}

impl Backoff for Exponential {
    fn reset(&mut self) {
        self.next = self.cfg.initial;
    }
}

fn backoff(cfg: BackoffConfig) -> ResetTimerBackoff<Exponential> {
    ResetTimerBackoff::new(
        Exponential {
            cfg,
            next: cfg.initial,
        },
        cfg.reset_after,
    )
}

/// One watcher event, tagged with its type.
/// Boxed: the three event types differ a lot in size.
enum Msg {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
    Node(Box<Event<Node>>),
    Error(String),
}

/// The Kubernetes source (see the module doc).
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    config: KubeConfig,
    stats: Arc<KubeStats>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl KubeSource {
    /// Builds the client from `config` (kubeconfig file, in-cluster, or
    /// inferred). Does not contact the API server yet.
    pub async fn connect(config: KubeConfig) -> Result<KubeSource, KubeError> {
        let client_config = if let Some(path) = &config.kubeconfig {
            let kc = Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
        } else if config.in_cluster {
            kube::Config::incluster()?
        } else {
            kube::Config::infer().await?
        };
        let client = Client::try_from(client_config)?;
        Ok(KubeSource::with_client(client, config))
    }

    /// Uses an existing client (the connection fields of `config` are ignored).
    pub fn with_client(client: Client, config: KubeConfig) -> KubeSource {
        KubeSource {
            client,
            config,
            stats: Arc::new(KubeStats::default()),
        }
    }

    /// The source's counters.
    pub fn stats(&self) -> Arc<KubeStats> {
        self.stats.clone()
    }

    fn watch<K>(
        &self,
        cfg: watcher::Config,
    ) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
    where
        K: kube::Resource<DynamicType = ()>
            + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + 'static,
    {
        let api: Api<K> = Api::all(self.client.clone());
        watcher(api, cfg)
            .map(|r| {
                r.map(|e| {
                    e.modify(|o| {
                        o.metadata_mut().managed_fields = None;
                    })
                })
            })
            .backoff(backoff(self.config.backoff))
    }

    /// Runs until every receiver of `tx` is gone, publishing a new snapshot
    /// after each (coalesced) change once all three types are listed.
    /// `tx` holds `None` until the first publication.
    pub async fn run(self, tx: watch::Sender<Option<Arc<ObjectSet>>>) -> Result<(), KubeError> {
        let base = watcher::Config::default().page_size(self.config.page_size);
        let node_cfg = if self.config.node_name.is_empty() {
            base.clone()
        } else {
            base.clone()
                .fields(&format!("metadata.name={}", self.config.node_name))
        };
        fn tag<K, F: Fn(Box<Event<K>>) -> Msg>(r: Result<Event<K>, watcher::Error>, f: F) -> Msg {
            match r {
                Ok(e) => f(Box::new(e)),
                Err(e) => Msg::Error(e.to_string()),
            }
        }
        let services = self
            .watch::<Service>(base.clone())
            .map(|r| tag(r, Msg::Service));
        let slices = self
            .watch::<EndpointSlice>(base.clone())
            .map(|r| tag(r, Msg::Slice));
        let nodes = self.watch::<Node>(node_cfg).map(|r| tag(r, Msg::Node));
        let mut events = std::pin::pin!(futures::stream::select(
            futures::stream::select(services, slices),
            nodes,
        ));

        let stats = self.stats.clone();
        let mut mirrors = Mirrors::default();
        let mut index = PublishIndex::default();
        let mut coalescer = Coalescer::new(self.config.debounce, self.config.max_delay);
        loop {
            let deadline = coalescer.deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = events.next() => {
                    let Some(msg) = msg else { return Err(KubeError::StreamsEnded) };
                    let change = match msg {
                        Msg::Service(e) => mirrors.services.handle(*e),
                        Msg::Slice(e) => mirrors.endpoint_slices.handle(*e),
                        Msg::Node(e) => mirrors.nodes.handle(*e),
                        Msg::Error(e) => {
                            stats.watch_errors.fetch_add(1, Ordering::Relaxed);
                            let _ = stats.disconnected_since_unix_ms.compare_exchange(
                                0,
                                unix_ms().max(1),
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                            tracing::warn!(error = %e, "Kubernetes watch failed; retrying with backoff");
                            Change::None
                        }
                    };
                    stats.events.fetch_add(1, Ordering::Relaxed);
                    if !matches!(change, Change::None) {
                        // Heard from the API again.
                        stats.disconnected_since_unix_ms.store(0, Ordering::Relaxed);
                    }
                    match change {
                        Change::None => {}
                        Change::Changed | Change::Listed { relist: false } => coalescer.note(Instant::now()),
                        Change::Listed { relist: true } => {
                            stats.watch_restarts.fetch_add(1, Ordering::Relaxed);
                            coalescer.note(Instant::now());
                        }
                    }
                }
                _ = sleep => {
                    coalescer.clear();
                    let mut published = false;
                    // In place when consumers have let go of the previous
                    // snapshot: only the changed objects are copied.
                    tx.send_if_modified(|slot| {
                        published = mirrors.publish_into(slot, &mut index);
                        published
                    });
                    if published {
                        tracing::debug!(
                            services = mirrors.services.len(),
                            endpoint_slices = mirrors.endpoint_slices.len(),
                            nodes = mirrors.nodes.len(),
                            "published Kubernetes snapshot"
                        );
                        stats.synced.store(true, Ordering::Relaxed);
                        stats.publications.fetch_add(1, Ordering::Relaxed);
                        let now_ms = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                            .unwrap_or(0);
                        stats.last_publish_unix_ms.store(now_ms, Ordering::Relaxed);
                    }
                }
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}
