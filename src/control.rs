//! `edgeplane control`: compiles Services, EndpointSlices and Nodes (from
//! manifests, reloaded when they change, or from the Kubernetes API) and
//! publishes each generation into the table region (`DIR/tables`), where the
//! dataplane picks it up. A bad edit keeps the last good tables and says
//! why. It needs no network privilege and touches no interface.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Args;

use edgeplane_control::control_path::ControlPath;
use edgeplane_control::kube::{KubeConfig, KubeSource};
use edgeplane_control::manifests::ObjectSet;
use edgeplane_dataplane::region::{PublishReport, RegionError, WriterOptions};

use crate::cli::TableArgs;
use crate::ops::logging::RateLimit;
use crate::ops::OpsState;

/// Where the tables come from, and the options that shape them.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    #[command(flatten)]
    pub tables: TableArgs,
    /// Read Services, EndpointSlices and this node's Node from the
    /// Kubernetes API with this kubeconfig (instead of --manifests).
    #[arg(long, conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// Read the Kubernetes API with the pod's service account.
    #[arg(long, conflicts_with_all = ["manifests", "kubeconfig"])]
    pub in_cluster: bool,
    /// With a Kubernetes source: how long to wait for the first complete
    /// list before giving up, in seconds.
    #[arg(long, default_value_t = 120)]
    pub sync_timeout: u64,
    /// How often to check the manifests for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub reload_ms: u64,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Directory of the table region (file `tables`; dir 0700, file 0600).
    /// Keep it on a tmpfs.
    #[arg(
        long = "tables",
        visible_alias = "state-dir",
        value_name = "DIR",
        default_value = edgeplane_dataplane::region::DEFAULT_DIR
    )]
    pub tables_dir: PathBuf,
    /// Stop after this many seconds (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
}

/// A cheap fingerprint of the manifests the loader reads (paths, sizes,
/// mtimes of `*.yaml`, `*.yml`, `*.json`; editors' temporary files do not
/// count).
fn fingerprint(path: &Path) -> Vec<(String, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::metadata(&p) else {
            out.push((p.display().to_string(), u64::MAX, None));
            continue;
        };
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        } else if p == path
            || matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        {
            out.push((p.display().to_string(), md.len(), md.modified().ok()));
        }
    }
    out.sort();
    out
}

/// Where the tables come from.
enum Source {
    Manifests {
        seen: Vec<(String, u64, Option<SystemTime>)>,
        last_check: Instant,
    },
    Kube {
        rx: tokio::sync::watch::Receiver<Option<Arc<ObjectSet>>>,
        stats: Arc<edgeplane_control::kube::KubeStats>,
    },
}

/// Starts the Kubernetes source on its own thread (a small tokio runtime)
/// and waits for its first complete snapshot.
fn start_kube(a: &SourceArgs, stop: &AtomicBool) -> Result<(Source, Arc<ObjectSet>)> {
    if a.tables.node_name.is_empty() {
        bail!("--node-name is required with a Kubernetes source (it selects this node's Node and local endpoints)");
    }
    let mut cfg = KubeConfig::new(a.tables.node_name.clone());
    cfg.kubeconfig = a.kubeconfig.clone();
    cfg.in_cluster = a.in_cluster;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let source = rt
        .block_on(KubeSource::connect(cfg))
        .context("connecting to the Kubernetes API")?;
    let stats = source.stats();
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    std::thread::Builder::new()
        .name("edgeplane-kube".into())
        .spawn(move || {
            if let Err(e) = rt.block_on(source.run(tx)) {
                tracing::error!("Kubernetes source stopped: {e}");
            }
        })
        .context("spawning the Kubernetes source")?;
    let deadline = Instant::now() + Duration::from_secs(a.sync_timeout);
    loop {
        let first = rx.borrow_and_update().clone();
        if let Some(s) = first {
            return Ok((Source::Kube { rx, stats }, s));
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted while waiting for the first sync");
        }
        if Instant::now() >= deadline {
            bail!(
                "no complete list of Services, EndpointSlices and Nodes from the API within {} s (watch restarts {})",
                a.sync_timeout,
                stats.watch_restarts.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The control loop's state: a source and the control path (one long-lived
/// compiler and the region writer, `edgeplane_control::control_path`).
pub struct Control {
    args: SourceArgs,
    source: Source,
    /// Each reload or API change recompiles only what changed (API
    /// objects: by the source's journal and resourceVersions) and publishes
    /// only the segments of the Services that changed.
    path: ControlPath,
    /// Operations state to feed (queued changes, publications, the
    /// Kubernetes source's counters), when this process serves it.
    ops: Option<Arc<OpsState>>,
    /// When the change being compiled/published was first seen.
    queued_at: Option<Instant>,
    errors: RateLimit,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("generation", &self.generation())
            .finish()
    }
}

impl Control {
    /// Opens the region, starts the source and publishes the first
    /// generation (an error if it does not compile: the region keeps what
    /// it had, so a running dataplane is not affected).
    pub fn start(
        args: &SourceArgs,
        dir: &Path,
        stop: &AtomicBool,
        ops: Option<Arc<OpsState>>,
    ) -> Result<Self> {
        let kube = args.kubeconfig.is_some() || args.in_cluster;
        let path = ControlPath::open(dir, WriterOptions::default(), args.tables.options(), kube)
            .with_context(|| format!("opening the table region in {}", dir.display()))?;
        tracing::info!(
            path = %path.writer().path().display(),
            generation = path.writer().generation(),
            "table region open"
        );
        let (source, objects) = if kube {
            let (src, snap) = start_kube(args, stop)?;
            (src, snap)
        } else {
            let Some(mpath) = &args.tables.manifests else {
                bail!("give --manifests PATH, --kubeconfig FILE or --in-cluster");
            };
            let seen = fingerprint(mpath);
            (
                Source::Manifests {
                    seen,
                    last_check: Instant::now(),
                },
                Arc::new(args.tables.load_objects(true)?),
            )
        };
        if let (Some(ops), Source::Kube { stats, .. }) = (&ops, &source) {
            ops.set_kube_stats(stats.clone());
        }
        let mut c = Control {
            args: args.clone(),
            source,
            path,
            ops,
            queued_at: Some(Instant::now()),
            errors: RateLimit::new(Duration::from_secs(30)),
        };
        c.compile_publish(&objects, Instant::now())?;
        Ok(c)
    }

    /// The last generation published.
    pub fn generation(&self) -> u64 {
        self.path.writer().generation()
    }

    /// Compiles `objects` and publishes the generation; a publication that
    /// fails stays pending (retried at the next poll).
    fn compile_publish(&mut self, objects: &ObjectSet, changed: Instant) -> Result<()> {
        let (c, r) = self.path.compile_publish(objects);
        tracing::debug!(
            incremental = c.incremental,
            services_derived = c.stats.services_derived,
            maglev_built = c.stats.maglev_built,
            "compiled"
        );
        self.published(r, changed)
    }

    fn published(
        &mut self,
        r: std::result::Result<PublishReport, RegionError>,
        changed: Instant,
    ) -> Result<()> {
        match r {
            Ok(r) => {
                tracing::info!(
                    generation = r.generation,
                    frontends = r.frontends,
                    segments_written = r.segments_written,
                    segments_kept = r.segments_kept,
                    maglev_blocks_written = r.blocks_written,
                    slot_bytes = r.body_bytes,
                    waited_us = r.waited.as_micros() as u64,
                    publish_us = changed.elapsed().as_micros() as u64,
                    "tables published"
                );
                if let Some(ops) = &self.ops {
                    let took = self.queued_at.take().unwrap_or(changed).elapsed();
                    ops.synced(r.generation, took);
                }
                Ok(())
            }
            Err(e) => {
                if let Some(ops) = &self.ops {
                    ops.sync_failed();
                }
                Err(e).context("publishing into the table region (will retry)")
            }
        }
    }

    /// One step: publish what is pending, or look for a change and publish
    /// it. Errors are logged; the last good generation stays active.
    pub fn poll(&mut self) {
        if self.path.pending() {
            let r = self.path.publish_pending();
            if let Err(e) = self.published(r, Instant::now()) {
                tracing::error!("{e:#}");
            }
            return;
        }
        let generation = self.generation();
        let t0 = Instant::now();
        let next: Result<Arc<ObjectSet>> = match &mut self.source {
            Source::Manifests { seen, last_check } => {
                if last_check.elapsed() < Duration::from_millis(self.args.reload_ms) {
                    return;
                }
                *last_check = Instant::now();
                let path = self
                    .args
                    .tables
                    .manifests
                    .as_deref()
                    .unwrap_or(Path::new("."));
                let now = fingerprint(path);
                if now == *seen {
                    return;
                }
                *seen = now;
                if let Some(ops) = &self.ops {
                    ops.queued_update();
                }
                self.queued_at.get_or_insert_with(Instant::now);
                self.args.tables.load_objects(true).map(Arc::new).map_err(|e| {
                    anyhow::anyhow!("manifests changed but do not compile; keeping generation {generation}: {e:#}")
                })
            }
            Source::Kube { rx, .. } => {
                if !rx.has_changed().unwrap_or(false) {
                    return;
                }
                if let Some(ops) = &self.ops {
                    ops.queued_update();
                }
                self.queued_at.get_or_insert_with(Instant::now);
                let snap = rx.borrow_and_update().clone();
                let Some(s) = snap else { return };
                Ok(s)
            }
        };
        match next {
            Ok(objects) => {
                let r = self.compile_publish(&objects, t0);
                // Drop the snapshot at once so the source can update it in
                // place next time.
                drop(objects);
                if let Err(e) = r {
                    tracing::error!("{e:#}");
                }
            }
            Err(e) => {
                // The change stays queued (health turns stale if it lasts).
                if let Some(ops) = &self.ops {
                    ops.sync_failed();
                }
                if let Some(suppressed) = self.errors.allow(Instant::now()) {
                    tracing::error!(suppressed, "{e:#}");
                }
            }
        }
    }

    /// How long to sleep between polls.
    pub fn tick(&self) -> Duration {
        match self.source {
            Source::Kube { .. } => Duration::from_millis(5),
            Source::Manifests { .. } => Duration::from_millis(20),
        }
    }

    /// Runs [`poll`](Self::poll) until `stop` or `deadline`.
    pub fn run_until(&mut self, stop: &AtomicBool, deadline: Option<Instant>) {
        while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
            std::thread::sleep(self.tick());
            self.poll();
        }
    }
}

pub fn control(a: ControlArgs) -> Result<()> {
    edgeplane_dataplane::afxdp::check_snat_ports(a.source.tables.snat_ports)?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let mut c = Control::start(&a.source, &a.tables_dir, &stop, None)?;
    let deadline = (a.duration > 0).then(|| Instant::now() + Duration::from_secs(a.duration));
    c.run_until(&stop, deadline);
    tracing::info!(generation = c.generation(), "control stopped");
    Ok(())
}
