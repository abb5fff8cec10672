//! The live dataplane: `edgeplane dataplane` reads its tables from the
//! table region (`DIR/tables`, written by `edgeplane control`) and serves
//! the interfaces; `edgeplane run` is both in one process.
//!
//! `run` runs the control loop on a thread of its own and the dataplane on
//! the main thread, and the two talk only through the region, exactly as
//! the two processes do: one code path for both forms, so everything the
//! restart tests prove of the protocol holds for `run`. Threads rather than
//! two processes because `run` is the one-command form (one pid to
//! supervise, one log, one set of privileges); when the control side must
//! restart or upgrade independently, run the two commands.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use edgeplane_dataplane::afxdp::{
    check_snat_ports, Dataplane, DataplaneConfig, WorkerSnapshot, XdpMode,
};
use edgeplane_dataplane::conntrack::ConntrackStats;
use edgeplane_dataplane::engine::Stats;
use edgeplane_dataplane::region::{RegionError, RegionReader};
use edgeplane_dataplane::DropReason;

use crate::control::{Control, SourceArgs};
use crate::ops::logging::RateLimit;
use crate::ops::OpsState;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Mode {
    /// Native (driver) XDP if the driver supports it, else generic.
    Auto,
    /// Driver mode only (fails where unsupported).
    Native,
    /// Generic (SKB) mode: works on every interface, copies frames.
    Generic,
}

/// Options of the I/O: interfaces, queues, CPUs, XDP, conntrack capacity.
#[derive(Debug, Clone, Args)]
pub struct IoArgs {
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
    /// SYN shedding: while a queue's worker is saturated and the kernel
    /// drops its frames (a SYN flood), the XDP program lets through at most
    /// 1 in N new TCP connections to Services on that queue, so that
    /// established flows lose nothing; N adapts up to this value (a power
    /// of two). 1 turns shedding off.
    #[arg(long, default_value_t = 64)]
    pub syn_shed_max: u32,
    /// Log a one-line summary of the counters every N seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub stats_interval: u64,
}

/// `--tables DIR`: the table region, the conntrack and affinity files and
/// the dataplane's stats file.
#[derive(Debug, Clone, Args)]
pub struct StateDir {
    /// Directory of the shared-memory state (mode 0700): the table region
    /// `tables`, the flow state `conntrack` and `affinity` (mode 0600), and
    /// `stats.json` (for `inspect`). A restarted dataplane re-attaches to
    /// the tables and flows there, so established connections survive a
    /// restart, even after `kill -9`. Keep it on a tmpfs.
    #[arg(
        id = "state_dir",
        long = "tables",
        visible_alias = "state-dir",
        value_name = "DIR",
        default_value = edgeplane_dataplane::region::DEFAULT_DIR
    )]
    pub state_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct DataplaneArgs {
    #[command(flatten)]
    pub io: IoArgs,
    #[command(flatten)]
    pub dir: StateDir,
    /// How long to wait for a first generation in the table region, in
    /// seconds.
    #[arg(long, default_value_t = 120)]
    pub wait_tables: u64,
    /// Stop after this many seconds (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    #[command(flatten)]
    pub ops: crate::ops::OpsArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub io: IoArgs,
    #[command(flatten)]
    pub dir: StateDir,
    /// Stop after this many seconds (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    #[command(flatten)]
    pub ops: crate::ops::OpsArgs,
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

/// Capabilities the dataplane needs that the effective set `cap_eff` (the
/// `CapEff` mask of /proc/self/status) lacks.
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
fn check_privileges(what: &str) -> Result<()> {
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
            "edgeplane {what} needs privileges it does not have: {}. Run it as root or grant these capabilities (see deploy/edgeplane.yaml).",
            missing.join(", ")
        );
    }
    Ok(())
}

fn check_io(io: &IoArgs) -> Result<Vec<usize>> {
    if io.batch == 0 || io.batch > 64 {
        bail!("--batch must be 1..=64");
    }
    parse_cpus(&io.cpus)
}

fn signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    Ok(stop)
}

/// `edgeplane dataplane`.
pub fn dataplane(a: DataplaneArgs) -> Result<()> {
    let cpus = check_io(&a.io)?;
    let ops_cfg = a.ops.config()?;
    check_privileges("dataplane")?;
    let stop = signals()?;
    let deadline = (a.duration > 0).then(|| Instant::now() + Duration::from_secs(a.duration));
    // Alone, the dataplane counts a generation as synced when it adopts it
    // (it cannot see changes still queued in the control process).
    let ops = Ops {
        cfg: ops_cfg,
        state: OpsState::new(),
        feeds_sync: true,
    };
    serve(
        &a.io,
        cpus,
        &a.dir.state_dir,
        a.wait_tables,
        &stop,
        deadline,
        ops,
    )
}

/// `edgeplane run`: the control loop on a thread, the dataplane here.
pub fn run(a: RunArgs) -> Result<()> {
    let cpus = check_io(&a.io)?;
    let ops_cfg = a.ops.config()?;
    check_privileges("run")?;
    check_snat_ports(a.source.tables.snat_ports)?;
    let stop = signals()?;
    let deadline = (a.duration > 0).then(|| Instant::now() + Duration::from_secs(a.duration));
    let dir = &a.dir.state_dir;
    // One operations state: the control thread feeds queued changes and
    // publications, the dataplane its workers and adopted tables.
    let state = OpsState::new();
    let mut control = Control::start(&a.source, dir, &stop, Some(state.clone()))?;
    let control_stop = Arc::new(AtomicBool::new(false));
    let cs = control_stop.clone();
    let th = std::thread::Builder::new()
        .name("edgeplane-control".into())
        .spawn(move || control.run_until(&cs, None))
        .context("spawning the control thread")?;
    let ops = Ops {
        cfg: ops_cfg,
        state,
        feeds_sync: false,
    };
    let res = serve(&a.io, cpus, dir, 10, &stop, deadline, ops);
    control_stop.store(true, Ordering::Relaxed);
    let _ = th.join();
    res
}

/// Opens the region, waiting up to `wait_s` for the file and a first
/// generation; returns the reader and the adopted tables.
fn open_region(
    dir: &Path,
    wait_s: u64,
    stop: &AtomicBool,
) -> Result<(RegionReader, edgeplane_dataplane::Tables)> {
    let deadline = Instant::now() + Duration::from_secs(wait_s);
    let mut said = false;
    let mut last_err;
    loop {
        match RegionReader::open(dir) {
            Ok(mut r) => match r.try_adopt() {
                Ok(Some(t)) => return Ok((r, t)),
                Ok(None) => last_err = "no generation published yet".into(),
                Err(e) => {
                    tracing::error!("{e}; waiting for a good one");
                    last_err = e.to_string();
                }
            },
            Err(RegionError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                last_err = format!("{} does not exist", dir.join("tables").display());
            }
            Err(e) => return Err(e).context("opening the table region"),
        }
        if !said {
            tracing::info!(dir = %dir.display(), "waiting for tables from edgeplane control ({last_err})");
            said = true;
        }
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted while waiting for tables");
        }
        if Instant::now() >= deadline {
            bail!(
                "no usable tables in {} within {wait_s} s ({last_err}); is `edgeplane control --tables {}` running?",
                dir.display(),
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line per change of a queue's SYN shedding: a warning when it
/// starts, info when it ends (each at most every 30 s, with the number held
/// back), debug while it adapts.
fn log_shed(c: edgeplane_dataplane::afxdp::ShedChange, limits: &mut [RateLimit; 2]) {
    let now = Instant::now();
    match (c.from, c.to) {
        (1, to) => {
            if let Some(suppressed) = limits[0].allow(now) {
                tracing::warn!(
                    queue = c.queue,
                    dropped = c.dropped,
                    admit_one_in = to,
                    suppressed,
                    "worker saturated (the kernel dropped frames for its queue): shedding new TCP connections to Services in XDP so established flows keep their packets"
                )
            }
        }
        (_, 1) => {
            if let Some(suppressed) = limits[1].allow(now) {
                tracing::info!(
                    queue = c.queue,
                    suppressed,
                    "SYN shedding ended: the worker has room again"
                )
            }
        }
        (_, to) => tracing::debug!(
            queue = c.queue,
            dropped = c.dropped,
            admit_one_in = to,
            "SYN shedding level"
        ),
    }
}

/// The operations endpoints the dataplane loop serves and feeds.
struct Ops {
    cfg: crate::ops::OpsConfig,
    state: Arc<OpsState>,
    /// Count each adopted generation as a sync (`dataplane` alone; under
    /// `run` the control thread reports its publications).
    feeds_sync: bool,
}

/// The dataplane loop: adopt generations from the region (polled every
/// millisecond), keep the XDP maps in step, write `stats.json` every second,
/// feed the metrics and health state.
fn serve(
    io: &IoArgs,
    cpus: Vec<usize>,
    dir: &Path,
    wait_s: u64,
    stop: &AtomicBool,
    deadline: Option<Instant>,
    ops: Ops,
) -> Result<()> {
    let (mut reader, tables) = open_region(dir, wait_s, stop)?;
    let cfg = DataplaneConfig {
        interfaces: io.interfaces.clone(),
        workers: io.workers,
        cpus,
        xdp_mode: match io.xdp_mode {
            Mode::Auto => XdpMode::Auto,
            Mode::Native => XdpMode::Native,
            Mode::Generic => XdpMode::Generic,
        },
        frames_per_port: io.frames,
        frame_size: io.frame_size,
        ring_size: io.ring_size,
        batch: io.batch,
        conntrack_size: io.conntrack_size,
        affinity_size: io.affinity_size,
        idle_sleep_us: io.idle_sleep_us,
        syn_shed_max: io.syn_shed_max,
        state_dir: Some(dir.to_path_buf()),
        ..DataplaneConfig::default()
    };
    let t_start = Instant::now();
    let sizes = crate::ops::logging::diff(None, &tables);
    let maglev_tables = tables.maglev.len();
    let generation = tables.generation;
    let mut dp = Dataplane::start_with_region(&cfg, tables, Some(&reader))
        .context("starting the dataplane")?;
    reader.settle();
    let st = &ops.state;
    st.set_dataplane(
        io.interfaces.clone(),
        dp.flows().clone(),
        Arc::new(dp.clock()),
    );
    st.adopt_tables(dp.tables());
    if ops.feeds_sync {
        st.synced(generation, t_start.elapsed());
    }
    st.update_workers(dp.snapshots());
    let ops_server = crate::ops::serve(ops.cfg.clone(), st.clone())?;
    let nh = dp.nexthops();
    tracing::info!(
        interfaces = ?io.interfaces,
        queues = dp.queues,
        xdp_mode = ?dp.mode,
        services = sizes.services,
        frontends = sizes.frontends,
        backends = sizes.backends,
        maglev_tables,
        generation,
        conntrack = io.conntrack_size,
        affinity = io.affinity_size,
        routes = nh.routes(),
        neighbours = nh.neighbours(),
        metrics = ?ops_server.metrics_addr,
        healthz = ?ops_server.healthz_addr,
        "edgeplane running"
    );
    let mut last_feed = Instant::now();
    let mut last_xdp = Instant::now();
    let mut refusals = RateLimit::new(Duration::from_secs(30));
    let mut shed_logs = [0, 1].map(|_| RateLimit::new(Duration::from_secs(30)));

    let mut last_stats = Instant::now();
    let mut last_file = Instant::now() - Duration::from_secs(2);
    let mut result = Ok(());
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(1));
        if last_feed.elapsed() >= Duration::from_millis(100) {
            last_feed = Instant::now();
            let snaps = dp.snapshots();
            for c in dp.shed_syn_floods(&snaps) {
                log_shed(c, &mut shed_logs);
            }
            st.update_workers(snaps);
            if last_xdp.elapsed() >= Duration::from_secs(1) {
                last_xdp = Instant::now();
                if let Ok(x) = dp.xdp_counters() {
                    st.set_xdp_counters(x);
                }
            }
        }
        if !dp.healthy() {
            tracing::error!("a worker stopped; shutting down");
            break;
        }
        match reader.try_adopt() {
            Ok(Some(t)) => {
                let generation = t.generation;
                let old = dp.tables();
                let t0 = Instant::now();
                let published = dp.publish(t);
                let took = t0.elapsed();
                // The log line's diff hashes every frontend and backend of
                // both generations (about 100 ms at 10,000 Services x 10
                // endpoints on a loaded core): only after the hand-over, so
                // it never delays forwarding on the new tables.
                let d = crate::ops::logging::diff(Some(&old), &dp.tables());
                drop(old);
                match published {
                    Ok(r) => tracing::info!(
                        generation,
                        frontends = d.frontends,
                        services = d.services,
                        backends = d.backends,
                        frontends_added = d.frontends_added,
                        frontends_removed = d.frontends_removed,
                        backends_added = d.backends_added,
                        backends_removed = d.backends_removed,
                        xdp_keys_added = r.added,
                        xdp_keys_removed = r.removed,
                        publish_us = took.as_micros() as u64,
                        diff_us = (t0.elapsed() - took).as_micros() as u64,
                        "tables adopted"
                    ),
                    Err(e) => {
                        // The workers have the new tables; the XDP maps lag.
                        if ops.feeds_sync {
                            st.sync_failed();
                        }
                        tracing::error!(generation, "XDP map update failed: {e:#}")
                    }
                }
                st.adopt_tables(dp.tables());
                if ops.feeds_sync {
                    st.synced(generation, took);
                }
                reader.settle();
            }
            Ok(None) => {}
            Err(e) => {
                if ops.feeds_sync {
                    st.sync_failed();
                }
                if let Some(suppressed) = refusals.allow(Instant::now()) {
                    tracing::error!(
                        refused = reader.refused_count,
                        suppressed,
                        "{e}; keeping generation {}",
                        reader.adopted()
                    )
                }
            }
        }
        if last_file.elapsed() >= Duration::from_secs(1) {
            last_file = Instant::now();
            if reader.replaced() {
                result = Err(anyhow::anyhow!(
                    "{} was replaced (a control with another region layout recreated it); restart the dataplane to follow it (flows are kept)",
                    reader.path().display()
                ));
                break;
            }
            if let Err(e) = crate::inspect::write_stats(dir, &dp, &reader) {
                tracing::warn!("writing {}: {e:#}", dir.join("stats.json").display());
            }
        }
        if io.stats_interval > 0 && last_stats.elapsed() >= Duration::from_secs(io.stats_interval) {
            last_stats = Instant::now();
            let ct = &dp.flows().conntrack;
            tracing::info!("{}", summary(&dp.snapshots(), ct.len(), ct.stats()).1);
        }
    }
    let conntrack = dp.flows().conntrack.len();
    let ct_stats = dp.flows().conntrack.stats();
    drop(ops_server);
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
    result
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
