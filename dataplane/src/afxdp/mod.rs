//! The live AF_XDP path (feature `afxdp`): the XDP steering program, one
//! poll-mode worker per queue, next hops from rtnetlink, and the handle that
//! starts, updates and stops them.
//!
//! ```text
//!            ┌────────── XDP steer (per interface) ──────────┐
//!  NIC rx q ─┤ frontend / SNAT reply / VIP ICMP → XSKMAP[slot,q] ├─→ worker q ─→ TX ring (egress if)
//!            └ anything else → XDP_PASS (kernel) ─────────────┘        │
//!                                                     unknown MAC / Pass → raw socket → kernel
//! ```
//!
//! Worker `q` serves queue `q` of every interface, with one socket per
//! interface on one UMEM (`XDP_SHARED_UMEM`), so a frame received on one
//! interface leaves on another without a copy. Workers share the flow state
//! (conntrack, affinity): a reply can arrive on another queue than its
//! request. They read the current [`Tables`] and [`NextHops`] through
//! `ArcSwap` — one lock-free load per batch.

pub mod kernel;
pub mod nexthop;
pub mod steer;
pub mod umem;
pub mod worker;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;

use crate::conntrack::Timeouts;
use crate::engine::FlowState;
use crate::region::{ReaderPins, RegionReader};
use crate::shm::Attach;
use crate::Tables;
pub use nexthop::{Hop, MirrorStats, NextHops};
pub use steer::{Attachment, Steering, SyncReport, XdpMode};
pub use umem::{Ledger, SocketStats, UmemConfigArgs};
pub use worker::{WorkerCounters, WorkerSnapshot};

/// What the workers read and the control side writes.
#[derive(Debug)]
pub struct Shared {
    pub tables: ArcSwap<Tables>,
    pub nexthops: Arc<ArcSwap<NextHops>>,
    pub flows: Arc<FlowState>,
    pub stop: Arc<AtomicBool>,
    /// The workers' quiescent-state slots in the table region (worker `i`
    /// records the generation it is about to use at the top of every loop
    /// iteration); `None` when the tables do not come from a region.
    pub pins: Option<Arc<ReaderPins>>,
}

/// The clock of the live path.
pub mod clock {
    /// Every worker's `now`: `CLOCK_MONOTONIC` in ns. System-wide, so the
    /// expiry times a dataplane writes into its shared-memory conntrack mean
    /// the same to the dataplane that re-attaches after a restart (a
    /// per-process `Instant` epoch would not). The files record this clock in
    /// their header.
    #[inline]
    pub fn monotonic_ns() -> u64 {
        crate::shm::monotonic_ns()
    }
}

/// How to run the dataplane.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// Interfaces to serve (at most [`umem::MAX_PORTS`]).
    pub interfaces: Vec<String>,
    /// Workers = queues served per interface (queue ids `0..workers`).
    /// 0: as many as the first interface has RX queues.
    pub workers: usize,
    /// CPUs to pin worker `i` to (`cpus[i % len]`); empty: no pinning.
    pub cpus: Vec<usize>,
    pub xdp_mode: XdpMode,
    pub frames_per_port: u32,
    pub frame_size: u32,
    pub ring_size: u32,
    pub batch: usize,
    /// Conntrack capacity in flows (128 bytes each).
    pub conntrack_size: usize,
    /// Session-affinity table capacity.
    pub affinity_size: usize,
    pub timeouts: Timeouts,
    /// 0: busy-poll (production); else the longest idle sleep, in µs.
    pub idle_sleep_us: u64,
    /// Where the conntrack and affinity files live (re-attached after a
    /// restart); `None`: on the heap, lost at exit.
    pub state_dir: Option<PathBuf>,
    /// SYN shedding under overload ([`crate::shed`]): admit at most 1 in
    /// this many new TCP connections to Services on a saturated queue
    /// (rounded down to a power of two; 1 turns shedding off).
    pub syn_shed_max: u32,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            interfaces: Vec::new(),
            workers: 0,
            cpus: Vec::new(),
            xdp_mode: XdpMode::Auto,
            frames_per_port: 4096,
            frame_size: 2048,
            ring_size: 2048,
            batch: 64,
            conntrack_size: 1 << 20,
            affinity_size: 1 << 16,
            timeouts: Timeouts::default(),
            idle_sleep_us: 0,
            state_dir: None,
            syn_shed_max: 64,
        }
    }
}

/// One interface's identity.
#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub rx_queues: usize,
}

impl Iface {
    /// Reads an interface's index, MAC and RX queue count from sysfs.
    pub fn lookup(name: &str) -> Result<Self> {
        let base = format!("/sys/class/net/{name}");
        let ifindex = std::fs::read_to_string(format!("{base}/ifindex"))
            .with_context(|| format!("no interface {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("ifindex of {name}"))?;
        let mac_s = std::fs::read_to_string(format!("{base}/address"))
            .with_context(|| format!("MAC of {name}"))?;
        let mac = kernel::parse_mac(mac_s.trim()).with_context(|| format!("MAC of {name}"))?;
        let rx_queues = std::fs::read_dir(format!("{base}/queues"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                    .count()
            })
            .unwrap_or(1)
            .max(1);
        Ok(Iface {
            name: name.to_string(),
            ifindex,
            mac,
            rx_queues,
        })
    }
}

/// A running dataplane. Dropping it (or [`Dataplane::shutdown`]) stops the
/// workers and detaches the XDP program.
#[derive(Debug)]
pub struct Dataplane {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<Result<()>>>,
    snapshots: Vec<Arc<Mutex<WorkerSnapshot>>>,
    mirror: Option<JoinHandle<()>>,
    pub mirror_stats: Arc<MirrorStats>,
    pub ifaces: Vec<Iface>,
    pub mode: XdpMode,
    pub queues: usize,
    /// How the conntrack and affinity tables came to be (empty when they
    /// are on the heap).
    pub flow_attach: Vec<Attach>,
    // Drop order: sockets (workers) first, then attachments, then the object.
    // Held for their `Drop` (detach).
    _attachments: Vec<Attachment>,
    steering: Steering,
    /// Per worker: its queue's SYN shedding and the counters last seen.
    shed: Vec<(crate::shed::SynShed, Option<WorkerCounters>)>,
}

/// A change of a queue's SYN shedding level ([`Dataplane::shed_syn_floods`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedChange {
    pub queue: u32,
    /// Admit 1 in this many SYNs to Services, before and now.
    pub from: u32,
    pub to: u32,
    /// Frames the kernel dropped for the queue's sockets in the interval.
    pub dropped: u64,
}

/// Checks that the SNAT port range does not overlap the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`): the XDP program steers every
/// reply to a SNAT port to the workers, so an overlap would steal replies to
/// the node's own connections.
pub fn check_snat_ports(snat: (u16, u16)) -> Result<()> {
    let Ok(s) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return Ok(());
    };
    let mut it = s.split_whitespace().filter_map(|x| x.parse::<u16>().ok());
    let (Some(lo), Some(hi)) = (it.next(), it.next()) else {
        return Ok(());
    };
    if snat.0 <= hi && lo <= snat.1 {
        bail!(
            "--snat-ports {}-{} overlaps the kernel's ephemeral ports {lo}-{hi} \
             (net.ipv4.ip_local_port_range); replies to the node's own connections \
             would be stolen. Choose a range outside it (default 61000-65535) or \
             narrow ip_local_port_range.",
            snat.0,
            snat.1
        );
    }
    Ok(())
}

impl Dataplane {
    /// Loads and attaches the XDP program, starts the next-hop mirror and
    /// the workers, and returns once every socket is in the XSKMAP.
    pub fn start(cfg: &DataplaneConfig, tables: Tables) -> Result<Self> {
        Self::start_with_region(cfg, tables, None)
    }

    /// As [`start`](Self::start), for `tables` adopted from `region`: every
    /// worker gets a reader slot there and records its quiescent state.
    pub fn start_with_region(
        cfg: &DataplaneConfig,
        tables: Tables,
        region: Option<&RegionReader>,
    ) -> Result<Self> {
        if cfg.interfaces.is_empty() || cfg.interfaces.len() > umem::MAX_PORTS {
            bail!("give 1 to {} interfaces", umem::MAX_PORTS);
        }
        let ifaces = cfg
            .interfaces
            .iter()
            .map(|n| Iface::lookup(n))
            .collect::<Result<Vec<_>>>()?;
        let queues = if cfg.workers == 0 {
            ifaces[0].rx_queues
        } else {
            cfg.workers
        };
        if queues == 0 || queues > steer::MAX_QUEUES_PER_IF as usize || queues > 255 {
            bail!("workers must be 1..={}", steer::MAX_QUEUES_PER_IF);
        }
        // The flow state first: a second dataplane on the same state
        // directory stops here, before it touches the first one's XDP
        // program.
        let seed = tables.node.hash_seed;
        let (flows, flow_attach) = match &cfg.state_dir {
            Some(dir) => {
                let t0 = std::time::Instant::now();
                let (f, a) = FlowState::open(
                    dir,
                    cfg.conntrack_size,
                    cfg.affinity_size,
                    seed,
                    cfg.timeouts,
                    clock::monotonic_ns(),
                )
                .with_context(|| format!("opening the flow state in {}", dir.display()))?;
                for (what, at) in ["conntrack", "affinity"].iter().zip(&a) {
                    match at {
                        Attach::StartedEmpty { .. } => tracing::warn!(table = what, "{at}"),
                        _ => tracing::info!(table = what, kept = at.kept(), "{at}"),
                    }
                }
                tracing::info!(
                    flows = a[0].kept(),
                    affinity = a[1].kept(),
                    ms = t0.elapsed().as_millis() as u64,
                    bytes = f.conntrack.memory_bytes(),
                    "flow state ready"
                );
                (f, a.to_vec())
            }
            None => (
                FlowState::new(cfg.conntrack_size, cfg.affinity_size, seed, cfg.timeouts),
                Vec::new(),
            ),
        };
        for i in &ifaces {
            if i.rx_queues > queues {
                tracing::warn!(
                    iface = %i.name,
                    rx_queues = i.rx_queues,
                    workers = queues,
                    "more RX queues than workers: Service frames on the unserved queues go to the kernel untranslated (use --workers or ethtool -L)"
                );
            }
        }

        let mut steering = Steering::load()?;
        let rep = steering.sync(&tables)?;
        tracing::info!(
            frontends = rep.frontends,
            nosnat_backends = rep.nosnat_backends,
            snat_addrs = rep.snat_addrs,
            vips = rep.vips,
            "XDP maps filled"
        );
        for (slot, i) in ifaces.iter().enumerate() {
            steering.set_slot(i.ifindex, slot as u32)?;
        }
        // Before attaching: from the moment the program is in place, Service
        // frames are held until the workers' sockets are in the XSKMAP.
        steering.set_served(queues as u32)?;
        let mut attachments = Vec::new();
        for i in &ifaces {
            let a = steering.attach(i.ifindex as i32, cfg.xdp_mode)?;
            tracing::info!(iface = %i.name, ifindex = i.ifindex, mode = ?a.mode, "XDP program attached");
            attachments.push(a);
        }
        // One mode for all: a generic attachment anywhere means copy mode.
        let mode = if attachments.iter().any(|a| a.mode == XdpMode::Generic) {
            XdpMode::Generic
        } else {
            XdpMode::Native
        };

        let stop = Arc::new(AtomicBool::new(false));
        let nexthops = Arc::new(ArcSwap::from_pointee(NextHops::default()));
        let mirror_stats = Arc::new(MirrorStats::default());
        let mirror = nexthop::spawn_mirror(nexthops.clone(), stop.clone(), mirror_stats.clone())?;
        let pins = match region {
            Some(r) => {
                let p = r
                    .claim_pins(queues)
                    .context("claiming reader slots in the table region")?;
                p.set_limit_all(tables.generation);
                Some(p)
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            pins,
            tables: ArcSwap::from_pointee(tables),
            nexthops,
            flows: Arc::new(flows),
            stop: stop.clone(),
        });

        let mut dp = Dataplane {
            shared: shared.clone(),
            workers: Vec::new(),
            snapshots: Vec::new(),
            mirror: Some(mirror),
            mirror_stats,
            ifaces: ifaces.clone(),
            mode,
            queues,
            flow_attach,
            _attachments: attachments,
            steering,
            shed: (0..queues)
                .map(|_| (crate::shed::SynShed::new(cfg.syn_shed_max), None))
                .collect(),
        };
        let iface_ids: Vec<_> = ifaces
            .iter()
            .map(|i| (i.name.clone(), i.ifindex, i.mac))
            .collect();
        for q in 0..queues {
            let wc = worker::WorkerConfig {
                index: q,
                workers: queues,
                queue: q as u32,
                cpu: (!cfg.cpus.is_empty()).then(|| cfg.cpus[q % cfg.cpus.len()]),
                ifaces: iface_ids.clone(),
                umem: UmemConfigArgs {
                    frames_per_port: cfg.frames_per_port,
                    frame_size: cfg.frame_size,
                    ring_size: cfg.ring_size,
                    copy_mode: mode == XdpMode::Generic,
                },
                batch: cfg.batch,
                idle_sleep_us: cfg.idle_sleep_us,
            };
            let snap = Arc::new(Mutex::new(WorkerSnapshot::default()));
            let (tx, rx) = mpsc::channel();
            let sh = shared.clone();
            let sn = snap.clone();
            let th = std::thread::Builder::new()
                .name(format!("edgeplane-w{q}"))
                .spawn(move || worker::run(wc, sh, sn, tx))
                .context("spawning a worker")?;
            dp.workers.push(th);
            dp.snapshots.push(snap);
            let fds = rx
                .recv_timeout(Duration::from_secs(10))
                .context("worker did not start")?
                .with_context(|| format!("worker for queue {q}"))?;
            for (slot, fd) in fds.iter().enumerate() {
                dp.steering.set_socket(slot as u32, q as u32, *fd)?;
            }
        }
        tracing::info!(
            interfaces = ?cfg.interfaces,
            queues,
            mode = ?mode,
            conntrack = cfg.conntrack_size,
            "AF_XDP workers running"
        );
        Ok(dp)
    }

    /// Publishes a new tables generation: the workers see it at their next
    /// batch, then the XDP maps follow (new keys, then stale ones removed).
    pub fn publish(&mut self, tables: Tables) -> Result<SyncReport> {
        let tables = Arc::new(tables);
        if let Some(p) = &self.shared.pins {
            // The workers may read this generation from now on.
            p.set_limit_all(tables.generation);
        }
        self.shared.tables.store(tables.clone());
        self.steering.sync(&tables)
    }

    /// The tables the workers currently read.
    pub fn tables(&self) -> Arc<Tables> {
        self.shared.tables.load_full()
    }

    /// The next hops the workers currently read.
    pub fn nexthops(&self) -> Arc<NextHops> {
        self.shared.nexthops.load_full()
    }

    /// The workers' clock (ns on the time base of conntrack timestamps), for
    /// readers of the flow state such as the metrics' conntrack walk.
    pub fn clock(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        clock::monotonic_ns
    }

    /// The flow state shared by the workers.
    pub fn flows(&self) -> &Arc<FlowState> {
        &self.shared.flows
    }

    /// Every worker's last snapshot (at most 100 ms old).
    pub fn snapshots(&self) -> Vec<WorkerSnapshot> {
        self.snapshots
            .iter()
            .map(|s| s.lock().map(|g| g.clone()).unwrap_or_default())
            .collect()
    }

    /// True while every worker thread is running.
    pub fn healthy(&self) -> bool {
        self.workers.iter().all(|w| !w.is_finished())
    }

    /// One interval of SYN shedding (call it every ~100 ms with fresh
    /// [`snapshots`](Self::snapshots)): feeds each queue's controller with
    /// its worker's counters since the last call and writes changed levels
    /// into the XDP program. Returns the changes.
    pub fn shed_syn_floods(&mut self, snaps: &[WorkerSnapshot]) -> Vec<ShedChange> {
        let mut changes = Vec::new();
        for w in snaps {
            let Some((shed, last)) = self.shed.get_mut(w.worker) else {
                continue;
            };
            let now = &w.counters;
            let Some(prev) = last.replace(now.clone()) else {
                continue;
            };
            let dropped = now.socket.rx_dropped.saturating_sub(prev.socket.rx_dropped);
            let from = shed.level();
            let busy = now.busy_polls.saturating_sub(prev.busy_polls);
            let idle = now.idle_polls.saturating_sub(prev.idle_polls);
            if let Some(to) = shed.observe(dropped, busy, idle) {
                if let Err(e) = self.steering.set_shed(w.queue, to) {
                    tracing::warn!(queue = w.queue, "SYN shedding level not set: {e:#}");
                }
                changes.push(ShedChange {
                    queue: w.queue,
                    from,
                    to,
                    dropped,
                });
            }
        }
        changes
    }

    /// The XDP program's own counters (summed over CPUs).
    pub fn xdp_counters(&self) -> Result<Vec<(&'static str, u64)>> {
        self.steering.counters()
    }

    /// The address a family's SNAT uses, for logs.
    pub fn snat_addr(&self, v6: bool) -> Option<IpAddr> {
        self.shared.tables.load().snat_addr(v6)
    }

    /// Stops the workers, drains their TX, detaches the program. Returns
    /// the final snapshots; an error if a worker failed.
    pub fn shutdown(mut self) -> Result<Vec<WorkerSnapshot>> {
        self.stop_threads()
    }

    /// Stops the workers (their sockets leave the XSKMAP, so the program
    /// passes everything to the kernel) but keeps the program attached and
    /// its counters readable until the handle is dropped.
    pub fn shutdown_keep_program(&mut self) -> Result<Vec<WorkerSnapshot>> {
        self.stop_threads()
    }

    fn stop_threads(&mut self) -> Result<Vec<WorkerSnapshot>> {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut first_err = None;
        for (q, w) in self.workers.drain(..).enumerate() {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(worker = q, "worker failed: {e:#}");
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    tracing::error!(worker = q, "worker panicked");
                    first_err.get_or_insert(anyhow::anyhow!("worker {q} panicked"));
                }
            }
        }
        for q in 0..self.queues {
            for slot in 0..self.ifaces.len() {
                let _ = self.steering.clear_socket(slot as u32, q as u32);
            }
        }
        if let Some(m) = self.mirror.take() {
            let _ = m.join();
        }
        let snaps = self.snapshots();
        match first_err {
            Some(e) => Err(e),
            None => Ok(snaps),
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            let _ = self.stop_threads();
        }
        // Then the fields: the attachments detach, the object unloads.
    }
}
