//! `edgeplane run`: the live dataplane in one process. Tables come from the
//! manifests, which are re-read when they change (a bad edit keeps the last
//! good tables and says why), or from the Kubernetes API (`--kubeconfig`,
//! `--in-cluster`), through the same compile path.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use edgeplane_dataplane::afxdp::{
    check_snat_ports, Dataplane, DataplaneConfig, WorkerSnapshot, XdpMode,
};
use edgeplane_dataplane::conntrack::ConntrackStats;
use edgeplane_dataplane::engine::Stats;
use edgeplane_dataplane::DropReason;

use edgeplane_control::compile::{compile, Compiled};
use edgeplane_control::kube::{KubeConfig, KubeSource};
use edgeplane_control::manifests::ObjectSet;

use crate::cli::TableArgs;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    /// Native (driver) XDP if the driver supports it, else generic.
    Auto,
    /// Driver mode only (fails where unsupported).
    Native,
    /// Generic (SKB) mode: works on every interface, copies frames.
    Generic,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub tables: TableArgs,
    /// Read Services, EndpointSlices and this node's Node from the
    /// Kubernetes API with this kubeconfig (instead of --manifests).
    #[arg(long, conflicts_with = "manifests")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Read the Kubernetes API with the pod's service account.
    #[arg(long, conflicts_with_all = ["manifests", "kubeconfig"])]
    pub in_cluster: bool,
    /// With a Kubernetes source: how long to wait for the first complete
    /// list before giving up, in seconds.
    #[arg(long, default_value_t = 120)]
    pub sync_timeout: u64,
    /// Interface to serve (repeat for several, at most 8).
    #[arg(long = "interface", short = 'i', required = true)]
    pub interfaces: Vec<String>,
    /// Workers, one per queue id (queues 0..N of every interface).
    /// 0: as many as the first interface has RX queues.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// CPUs to pin the workers to, e.g. `2,3` or `2-5` (worker i gets the
    /// i-th, wrapping). Empty: not pinned.
    #[arg(long, default_value = "")]
    pub cpus: String,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub xdp_mode: Mode,
    /// Idle behaviour: 0 busy-polls (lowest latency, one core per worker at
    /// 100%); N > 0 sleeps when idle, backing off up to N microseconds.
    #[arg(long, default_value_t = 0)]
    pub idle_sleep_us: u64,
    /// Conntrack capacity in flows (128 bytes each; shared by all workers).
    #[arg(long, default_value_t = 1 << 20)]
    pub conntrack_size: usize,
    /// Session-affinity table capacity (entries).
    #[arg(long, default_value_t = 1 << 16)]
    pub affinity_size: usize,
    /// Directory of the shared-memory state (mode 0700; files `conntrack`
    /// and `affinity`, mode 0600). A restarted dataplane re-attaches to the
    /// flows tracked there, so established connections survive a restart,
    /// even after `kill -9`. Keep it on a tmpfs.
    #[arg(
        id = "state_dir",
        long = "tables",
        visible_alias = "state-dir",
        value_name = "DIR",
        default_value = "/run/edgeplane"
    )]
    pub state_dir: std::path::PathBuf,
    /// UMEM frames per interface and worker.
    #[arg(long, default_value_t = 4096)]
    pub frames: u32,
    /// UMEM frame size in bytes (2048 or 4096).
    #[arg(long, default_value_t = 2048)]
    pub frame_size: u32,
    /// Size of each fill, completion, RX and TX ring.
    #[arg(long, default_value_t = 2048)]
    pub ring_size: u32,
    /// Largest RX batch (1..=64).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// How often to check the manifests for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub reload_ms: u64,
    /// Log a one-line summary of the counters every N seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub stats_interval: u64,
    /// Stop after this many seconds (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
}

fn parse_cpus(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a
                    .trim()
                    .parse()
                    .with_context(|| format!("--cpus {part:?}"))?;
                let b: usize = b
                    .trim()
                    .parse()
                    .with_context(|| format!("--cpus {part:?}"))?;
                if a > b || b - a > 1024 {
                    bail!("bad CPU range {part:?} in --cpus");
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().with_context(|| format!("--cpus {part:?}"))?),
        }
    }
    Ok(out)
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

fn continue_stats(a: &RunArgs, dp: &Dataplane, last: &mut Instant) {
    if a.stats_interval > 0 && last.elapsed() >= Duration::from_secs(a.stats_interval) {
        *last = Instant::now();
        let ct = &dp.flows().conntrack;
        tracing::info!("{}", summary(&dp.snapshots(), ct.len(), ct.stats()).1);
    }
}

fn summary(snaps: &[WorkerSnapshot], conntrack: usize, ct: ConntrackStats) -> (Stats, String) {
    let mut s = Stats::default();
    let (mut kr, mut ku, mut kp, mut kf, mut full, mut wake) = (0, 0, 0, 0, 0, 0);
    let (mut kdrop, mut kfull, mut kempty) = (0, 0, 0);
    for w in snaps {
        kdrop += w.counters.socket.rx_dropped;
        kfull += w.counters.socket.rx_ring_full;
        kempty += w.counters.socket.rx_fill_ring_empty;
        s.merge(&w.engine);
        kr += w.counters.to_kernel_route;
        ku += w.counters.to_kernel_unresolved;
        kp += w.counters.to_kernel_pass;
        kf += w.counters.to_kernel_failed;
        full += w.counters.tx_ring_full;
        wake += w.counters.wakeups;
    }
    let line = format!(
        "rx {} tx {} reject {} pass {} drop {} | to kernel: unresolved {ku} no-route {kr} pass {kp} failed {kf} | tx_ring_full {full} wakeups {wake} | socket rx_dropped {kdrop} rx_ring_full {kfull} fill_empty {kempty} | conntrack {conntrack} insert_failures {} evictions {} reclaimed {} swept {}",
        s.rx_packets,
        s.tx,
        s.reject,
        s.pass,
        s.drop,
        ct.insert_failures,
        ct.evictions,
        ct.reclaimed,
        ct.swept,
    );
    (s, line)
}

/// Capabilities `run` needs that the effective set `cap_eff` (the `CapEff`
/// mask of /proc/self/status) lacks.
fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    const NET_ADMIN: u32 = 12;
    const NET_RAW: u32 = 13;
    const SYS_ADMIN: u32 = 21;
    const BPF: u32 = 39;
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    let mut out = Vec::new();
    if !has(NET_ADMIN) {
        out.push("CAP_NET_ADMIN (attach XDP, netlink)");
    }
    if !has(NET_RAW) {
        out.push("CAP_NET_RAW (AF_XDP and raw sockets)");
    }
    if !has(BPF) && !has(SYS_ADMIN) {
        out.push("CAP_BPF (load the XDP program)");
    }
    out
}

/// Refuses to start, with a clear message, without the privileges.
fn check_privileges() -> Result<()> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Ok(());
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return Ok(());
    };
    let missing = missing_caps(eff);
    if !missing.is_empty() {
        bail!(
            "edgeplane run needs privileges it does not have: {}. Run it as root or grant these capabilities (see deploy/edgeplane.yaml).",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Where the tables come from.
enum Source {
    Manifests {
        seen: Vec<(String, u64, Option<SystemTime>)>,
    },
    Kube {
        rx: tokio::sync::watch::Receiver<Option<Arc<ObjectSet>>>,
    },
}

/// Starts the Kubernetes source on its own thread (a small tokio runtime)
/// and waits for its first complete snapshot.
fn start_kube(a: &RunArgs, stop: &AtomicBool) -> Result<(Source, Arc<ObjectSet>)> {
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
            return Ok((Source::Kube { rx }, s));
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

fn compile_snapshot(a: &RunArgs, objects: &ObjectSet, generation: u64) -> Result<Compiled> {
    let c = compile(objects, &a.tables.options(), generation).context("compiling")?;
    for w in &c.warnings {
        tracing::warn!("{w}");
    }
    Ok(c)
}

pub fn run(a: RunArgs) -> Result<()> {
    if a.batch == 0 || a.batch > 64 {
        bail!("--batch must be 1..=64");
    }
    let cpus = parse_cpus(&a.cpus)?;
    check_privileges()?;
    check_snat_ports(a.tables.snat_ports)?;
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let kube = a.kubeconfig.is_some() || a.in_cluster;
    let (mut source, compiled) = if kube {
        let (src, snap) = start_kube(&a, &stop)?;
        let c = compile_snapshot(&a, &snap, 1)?;
        (src, c)
    } else {
        let Some(path) = &a.tables.manifests else {
            bail!("give --manifests PATH, --kubeconfig FILE or --in-cluster");
        };
        let seen = fingerprint(path);
        (Source::Manifests { seen }, a.tables.load_with(1, true)?)
    };

    let cfg = DataplaneConfig {
        interfaces: a.interfaces.clone(),
        workers: a.workers,
        cpus,
        xdp_mode: match a.xdp_mode {
            Mode::Auto => XdpMode::Auto,
            Mode::Native => XdpMode::Native,
            Mode::Generic => XdpMode::Generic,
        },
        frames_per_port: a.frames,
        frame_size: a.frame_size,
        ring_size: a.ring_size,
        batch: a.batch,
        conntrack_size: a.conntrack_size,
        affinity_size: a.affinity_size,
        idle_sleep_us: a.idle_sleep_us,
        state_dir: Some(a.state_dir.clone()),
        ..DataplaneConfig::default()
    };
    let frontends = compiled.tables.frontends.len();
    let mut dp = Dataplane::start(&cfg, compiled.tables).context("starting the dataplane")?;
    let nh = dp.nexthops();
    tracing::info!(
        interfaces = ?a.interfaces,
        queues = dp.queues,
        xdp_mode = ?dp.mode,
        frontends,
        conntrack = a.conntrack_size,
        routes = nh.routes(),
        neighbours = nh.neighbours(),
        "edgeplane running"
    );

    let started = Instant::now();
    let deadline = (a.duration > 0).then(|| started + Duration::from_secs(a.duration));
    let mut generation = 1u64;
    let mut last_check = Instant::now();
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(if kube { 5 } else { 50 }));
        if !dp.healthy() {
            tracing::error!("a worker stopped; shutting down");
            break;
        }
        let next = match &mut source {
            Source::Manifests { seen } => {
                if last_check.elapsed() < Duration::from_millis(a.reload_ms) {
                    continue_stats(&a, &dp, &mut last_stats);
                    continue;
                }
                last_check = Instant::now();
                let path = a.tables.manifests.as_deref().unwrap_or(Path::new("."));
                let now = fingerprint(path);
                if now == *seen {
                    None
                } else {
                    *seen = now;
                    Some(a.tables.load_with(generation + 1, true).map_err(|e| {
                        anyhow::anyhow!("manifests changed but do not compile; keeping generation {generation}: {e:#}")
                    }))
                }
            }
            Source::Kube { rx } => {
                if rx.has_changed().unwrap_or(false) {
                    // Compile, then drop the snapshot at once so the source
                    // can update it in place next time.
                    let snap = rx.borrow_and_update().clone();
                    snap.map(|s| {
                        compile_snapshot(&a, &s, generation + 1).map_err(|e| {
                            anyhow::anyhow!("API objects do not compile; keeping generation {generation}: {e:#}")
                        })
                    })
                } else {
                    None
                }
            }
        };
        match next {
            Some(Ok(c)) => {
                generation += 1;
                let n = c.tables.frontends.len();
                let t0 = Instant::now();
                match dp.publish(c.tables) {
                    Ok(r) => tracing::info!(
                        generation,
                        frontends = n,
                        xdp_keys_added = r.added,
                        xdp_keys_removed = r.removed,
                        publish_us = t0.elapsed().as_micros() as u64,
                        "tables published"
                    ),
                    Err(e) => tracing::error!(generation, "XDP map update failed: {e:#}"),
                }
            }
            Some(Err(e)) => tracing::error!("{e:#}"),
            None => {}
        }
        continue_stats(&a, &dp, &mut last_stats);
    }
    let conntrack = dp.flows().conntrack.len();
    let ct_stats = dp.flows().conntrack.stats();
    let snaps = dp.shutdown_keep_program()?;
    // The workers have stopped: these counters are final.
    let xdp = dp.xdp_counters().unwrap_or_default();
    drop(dp);
    // The final report, as stderr lines that tests and operators can grep.
    let (s, line) = summary(&snaps, conntrack, ct_stats);
    eprintln!("stats: {line}");
    for w in &snaps {
        let l = w.ledger;
        eprintln!(
            "worker {} queue {}: frames total {} free {} in_rx {} in_flight {} in_tx {} balanced {}",
            w.worker,
            w.queue,
            l.total,
            l.free,
            l.in_rx,
            l.in_flight,
            l.in_tx,
            l.check()
        );
    }
    for r in DropReason::ALL {
        let n = s.dropped(r);
        if n > 0 {
            eprintln!("drop {}: {n}", r.name());
        }
    }
    for (name, v) in xdp {
        eprintln!("xdp {name}: {v}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{missing_caps, parse_cpus};

    #[test]
    fn capabilities_are_checked() {
        assert!(missing_caps(u64::MAX).is_empty());
        assert_eq!(missing_caps(0).len(), 3);
        // NET_ADMIN + NET_RAW + SYS_ADMIN (older kernels without CAP_BPF).
        assert!(missing_caps((1 << 12) | (1 << 13) | (1 << 21)).is_empty());
        assert_eq!(
            missing_caps((1 << 12) | (1 << 39)),
            vec!["CAP_NET_RAW (AF_XDP and raw sockets)"]
        );
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpus("2,4-6").unwrap(), vec![2, 4, 5, 6]);
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("x").is_err());
    }
}
