//! Operating edgeplane: Prometheus metrics, kube-proxy-style health
//! endpoints, `healthCheckNodePort` responders and log helpers.
//!
//! Everything here runs on one thread of its own (`edgeplane-ops`, a small
//! tokio runtime serving HTTP with hyper) and reads an [`OpsState`] that the
//! process feeds. It never touches the packet path: workers publish
//! snapshots of their own plain counters every 100 ms (see
//! `dataplane/src/afxdp/worker.rs`), the feeder copies those into the state,
//! and a scrape sums them.
//!
//! Who feeds what (so that one process or the split control/dataplane pair
//! can each feed their part):
//!
//! | feed | called by |
//! |---|---|
//! | [`OpsState::set_dataplane`] (interfaces, flow state, clock) | the process running the workers, once at start |
//! | [`OpsState::update_workers`] (worker snapshots) | the process running the workers, every loop (≤ 100 ms) |
//! | [`OpsState::set_xdp_counters`] | the process that attached the XDP program, every second |
//! | [`OpsState::adopt_tables`] (the tables the workers read) | the process running the workers, on every publication it adopts |
//! | [`OpsState::queued_update`], [`OpsState::synced`], [`OpsState::sync_failed`] | the process compiling and publishing tables |
//! | [`OpsState::set_kube_stats`] | the process watching the Kubernetes API |
//!
//! `edgeplane run` does all of them from its one loop (src/run.rs).

pub mod hcnodeport;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod server;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use prometheus_client::metrics::histogram::Histogram;

use edgeplane_control::kube::KubeStats;
use edgeplane_dataplane::afxdp::WorkerSnapshot;
use edgeplane_dataplane::engine::FlowState;
use edgeplane_dataplane::Tables;

pub use server::serve;

/// Flags of the operations endpoints (flattened into `run`).
#[derive(Debug, Clone, Args)]
pub struct OpsArgs {
    /// Address of the Prometheus metrics endpoint (`/metrics`); `off`
    /// disables it (kube-proxy's `--metrics-bind-address`).
    #[arg(long, default_value = "127.0.0.1:10249", value_parser = parse_addr)]
    pub metrics_addr: OptAddr,
    /// Address of `/healthz` and `/livez` (kube-proxy's
    /// `--healthz-bind-address`); `off` disables them.
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = parse_addr)]
    pub healthz_addr: OptAddr,
    /// `/healthz` turns 503 when a table change has waited this many
    /// seconds without being published (kube-proxy: twice its sync period).
    #[arg(long, default_value_t = 60.0)]
    pub healthz_stale_after: f64,
    /// `/healthz` turns 503 when a worker has not completed a poll loop for
    /// this many seconds (its snapshot stopped changing).
    #[arg(long, default_value_t = 5.0)]
    pub healthz_worker_stall: f64,
    /// Answer `healthCheckNodePort`s of `externalTrafficPolicy: Local`
    /// LoadBalancer Services on the node IPs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub health_check_node_ports: bool,
}

/// A listen address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptAddr(pub Option<SocketAddr>);

fn parse_addr(s: &str) -> Result<OptAddr, String> {
    if s.is_empty() || s == "off" {
        return Ok(OptAddr(None));
    }
    s.parse()
        .map(|a| OptAddr(Some(a)))
        .map_err(|e| format!("{s:?}: {e} (expected IP:PORT or off)"))
}

impl OpsArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<OpsConfig> {
        let secs = |v: f64, flag: &str| {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                anyhow::bail!("{flag} must be a positive number of seconds")
            }
        };
        Ok(OpsConfig {
            metrics_addr: self.metrics_addr.0,
            healthz_addr: self.healthz_addr.0,
            stale_after: secs(self.healthz_stale_after, "--healthz-stale-after")?,
            worker_stall: secs(self.healthz_worker_stall, "--healthz-worker-stall")?,
            health_check_node_ports: self.health_check_node_ports,
        })
    }
}

/// What [`serve`] listens on and how health is judged.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    pub metrics_addr: Option<SocketAddr>,
    pub healthz_addr: Option<SocketAddr>,
    pub stale_after: Duration,
    pub worker_stall: Duration,
    pub health_check_node_ports: bool,
}

/// The clock of the flow state (ns, the workers' time base).
pub type FlowClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// One worker as the ops side sees it.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub snap: WorkerSnapshot,
    /// When its poll counters last moved.
    pub last_progress: Instant,
    /// Busy iterations / all iterations over the last feed interval.
    pub busy_ratio: f64,
}

/// The data-plane side of the state.
#[derive(Clone)]
pub struct DataplaneInfo {
    pub interfaces: Vec<String>,
    pub flows: Arc<FlowState>,
    pub clock: FlowClock,
}

impl std::fmt::Debug for DataplaneInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataplaneInfo")
            .field("interfaces", &self.interfaces)
            .finish_non_exhaustive()
    }
}

/// Everything the ops endpoints report, fed by the process (see the module
/// doc for who feeds what). Cheap to clone (vectors of snapshots, `Arc`s):
/// a scrape clones it and renders without holding the lock.
#[derive(Debug, Default, Clone)]
pub struct Inner {
    pub dataplane: Option<DataplaneInfo>,
    pub workers: Vec<WorkerView>,
    /// When `update_workers` was last called.
    pub workers_fed_at: Option<Instant>,
    /// The tables the workers read.
    pub tables: Option<Arc<Tables>>,
    /// Health of table publication (kube-proxy's `QueuedUpdate`/`Updated`).
    pub health: health::SyncHealth,
    /// Generation of the last published tables.
    pub generation: u64,
    pub last_sync: Option<SystemTime>,
    pub last_queued: Option<SystemTime>,
    pub publications: u64,
    pub sync_failures: u64,
    pub kube: Option<Arc<KubeStats>>,
    /// Open `healthCheckNodePort` responders (set by the server).
    pub hc_ports_open: usize,
    pub hc_bind_failures: u64,
    /// The XDP steering program's counters (name, value), summed over CPUs.
    pub xdp: Vec<(&'static str, u64)>,
}

/// The shared state behind the ops endpoints.
#[derive(Debug)]
pub struct OpsState {
    inner: Mutex<Inner>,
    /// Time from a change being picked up to its tables being published
    /// (compile + publish), seconds.
    pub publish_duration: Histogram,
    /// Bumped on every table adoption, so the responders re-derive.
    tables_changed: tokio::sync::Notify,
}

impl Default for OpsState {
    fn default() -> Self {
        OpsState {
            inner: Mutex::new(Inner::default()),
            publish_duration: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16),
            ),
            tables_changed: tokio::sync::Notify::new(),
        }
    }
}

impl OpsState {
    pub fn new() -> Arc<Self> {
        Arc::new(OpsState::default())
    }

    /// The state, locked (never held across I/O).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The process running the workers: its interfaces and flow state.
    pub fn set_dataplane(&self, interfaces: Vec<String>, flows: Arc<FlowState>, clock: FlowClock) {
        self.lock().dataplane = Some(DataplaneInfo {
            interfaces,
            flows,
            clock,
        });
    }

    /// The workers' latest snapshots; a worker whose poll counters moved
    /// since the last call counts as progressing.
    pub fn update_workers(&self, snaps: Vec<WorkerSnapshot>) {
        self.update_workers_at(snaps, Instant::now());
    }

    /// [`update_workers`](Self::update_workers) at a given instant (tests).
    pub fn update_workers_at(&self, snaps: Vec<WorkerSnapshot>, now: Instant) {
        let mut g = self.lock();
        let old = std::mem::take(&mut g.workers);
        g.workers = snaps
            .into_iter()
            .map(|snap| {
                let prev = old.iter().find(|v| v.snap.worker == snap.worker);
                let polls = |s: &WorkerSnapshot| (s.counters.busy_polls, s.counters.idle_polls);
                match prev {
                    Some(p) if polls(&p.snap) == polls(&snap) => WorkerView {
                        last_progress: p.last_progress,
                        busy_ratio: p.busy_ratio,
                        snap,
                    },
                    Some(p) => {
                        let db = snap
                            .counters
                            .busy_polls
                            .saturating_sub(p.snap.counters.busy_polls);
                        let di = snap
                            .counters
                            .idle_polls
                            .saturating_sub(p.snap.counters.idle_polls);
                        WorkerView {
                            last_progress: now,
                            busy_ratio: db as f64 / (db + di).max(1) as f64,
                            snap,
                        }
                    }
                    None => WorkerView {
                        last_progress: now,
                        busy_ratio: 0.0,
                        snap,
                    },
                }
            })
            .collect();
        g.workers_fed_at = Some(now);
    }

    /// The XDP program's counters (the process that attached it).
    pub fn set_xdp_counters(&self, counters: Vec<(&'static str, u64)>) {
        self.lock().xdp = counters;
    }

    /// The process running the workers adopted these tables.
    pub fn adopt_tables(&self, tables: Arc<Tables>) {
        {
            let mut g = self.lock();
            g.generation = g.generation.max(tables.generation);
            g.tables = Some(tables);
        }
        self.tables_changed.notify_one();
    }

    /// A change was picked up and waits to be compiled and published
    /// (kube-proxy's `QueuedUpdate`).
    pub fn queued_update(&self) {
        let mut g = self.lock();
        g.health.queued(Instant::now());
        g.last_queued = Some(SystemTime::now());
    }

    /// Tables of `generation` were published; the change took `took` from
    /// being picked up (kube-proxy's `Updated`).
    pub fn synced(&self, generation: u64, took: Duration) {
        self.publish_duration.observe(took.as_secs_f64());
        let mut g = self.lock();
        g.health.synced(Instant::now());
        g.generation = g.generation.max(generation);
        g.last_sync = Some(SystemTime::now());
        g.publications += 1;
    }

    /// A picked-up change could not be compiled or published; it stays
    /// queued (health goes stale after `--healthz-stale-after`).
    pub fn sync_failed(&self) {
        self.lock().sync_failures += 1;
    }

    /// The Kubernetes source's counters.
    pub fn set_kube_stats(&self, stats: Arc<KubeStats>) {
        self.lock().kube = Some(stats);
    }

    /// Health now, per `cfg`.
    pub fn health(&self, cfg: &OpsConfig) -> health::Health {
        let g = self.lock();
        health::evaluate(&g, cfg, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        ops: OpsArgs,
    }

    #[test]
    fn flags_parse_addresses_off_and_bounds() {
        let t = T::try_parse_from(["t"]).unwrap();
        let c = t.ops.config().unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:10249".parse().unwrap()));
        assert_eq!(c.healthz_addr, Some("0.0.0.0:10256".parse().unwrap()));
        assert_eq!(c.stale_after, Duration::from_secs(60));
        assert!(c.health_check_node_ports);
        let t = T::try_parse_from([
            "t",
            "--metrics-addr",
            "off",
            "--healthz-addr",
            "[::1]:9",
            "--healthz-stale-after",
            "0.5",
            "--health-check-node-ports",
            "false",
        ])
        .unwrap();
        let c = t.ops.config().unwrap();
        assert_eq!(c.metrics_addr, None);
        assert_eq!(c.healthz_addr, Some("[::1]:9".parse().unwrap()));
        assert_eq!(c.stale_after, Duration::from_millis(500));
        assert!(!c.health_check_node_ports);
        assert!(T::try_parse_from(["t", "--metrics-addr", "nowhere"]).is_err());
        let t = T::try_parse_from(["t", "--healthz-stale-after", "0"]).unwrap();
        assert!(t.ops.config().is_err());
        let t = T::try_parse_from(["t", "--healthz-worker-stall", "NaN"]).unwrap();
        assert!(t.ops.config().is_err());
    }

    #[test]
    fn busy_ratio_and_progress_come_from_poll_counter_deltas() {
        let s = OpsState::default();
        let snap = |busy, idle| {
            let mut w = WorkerSnapshot::default();
            w.counters.busy_polls = busy;
            w.counters.idle_polls = idle;
            w
        };
        let t0 = Instant::now();
        s.update_workers_at(vec![snap(10, 10)], t0);
        s.update_workers_at(vec![snap(40, 20)], t0 + Duration::from_millis(100));
        {
            let g = s.lock();
            assert!((g.workers[0].busy_ratio - 0.75).abs() < 1e-9);
            assert_eq!(g.workers[0].last_progress, t0 + Duration::from_millis(100));
        }
        // No movement: the ratio and the progress time stay.
        s.update_workers_at(vec![snap(40, 20)], t0 + Duration::from_millis(200));
        let g = s.lock();
        assert!((g.workers[0].busy_ratio - 0.75).abs() < 1e-9);
        assert_eq!(g.workers[0].last_progress, t0 + Duration::from_millis(100));
        assert_eq!(g.workers_fed_at, Some(t0 + Duration::from_millis(200)));
    }
}
