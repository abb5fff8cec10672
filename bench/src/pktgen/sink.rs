//! `edgeplane pktgen sink`: receive with AF_XDP, check, drop.
//!
//! Loads `bpf/sink.bpf.c` (TCP/UDP frames → the socket in its XSKMAP, the
//! rest → the kernel), attaches it to the interface, binds one socket to
//! queue 0, and loops: fill ring top-up, RX batch, [`check`] per frame,
//! frames straight back to the free list. Idle: `poll()` (the sink does not
//! busy-poll, so its CPU cost follows the frames it gets).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::{MapCore, MapFlags, ObjectBuilder, Xdp, XdpFlags};
use serde::Serialize;

use super::check::{check, Expect, SinkCounts, Verdict};
use super::xsk::{own_cpu_s, XskPort, XskStats};
use super::{SinkArgs, SinkXdpMode};

static SINK_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sink.bpf.o"));

/// What `sink` reports at the end (`--json`).
#[derive(Debug, Serialize)]
pub struct SinkSummary {
    pub interface: String,
    pub counts: SinkCounts,
    /// Seconds from the first to the last generator frame.
    pub active_s: f64,
    /// Correct frames per second over `active_s`.
    pub ok_pps: f64,
    pub check_every: u64,
    pub socket: XskStats,
    /// CPU seconds (user + system) the sink process used.
    pub cpu_s: f64,
}

/// Detaches the program on drop.
struct Attached<'a> {
    xdp: Xdp<'a>,
    ifindex: i32,
    flags: XdpFlags,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let flags = XdpFlags::from_bits_retain(self.flags.bits());
        if let Err(e) = self.xdp.detach(self.ifindex, flags) {
            eprintln!(
                "pktgen sink: detaching XDP from ifindex {}: {e}",
                self.ifindex
            );
        }
    }
}

pub fn run(a: &SinkArgs) -> Result<()> {
    if !(a.duration > 0.0 && a.duration <= 3600.0) {
        bail!("--duration must be in (0, 3600] seconds");
    }
    let check_every = a.check_every.max(1);
    let expect = Expect {
        backends: match &a.backends {
            Some(p) => super::parse_backends(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            None => Default::default(),
        },
        src: a.expect_src,
    };
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let ifindex: i32 = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", a.interface))
        .with_context(|| format!("no interface {}", a.interface))?
        .trim()
        .parse()
        .context("ifindex")?;
    let obj = ObjectBuilder::default()
        .open_memory(SINK_OBJ)
        .context("opening sink.bpf.o")?
        .load()
        .context("loading sink.bpf.o (verifier)")?;
    let prog = obj
        .progs()
        .find(|p| p.name() == "pktgen_sink")
        .context("program pktgen_sink not in object")?;
    let prog_fd = prog.as_fd().as_raw_fd();
    // SAFETY: the fd belongs to `obj`, which outlives the attachment
    // (declared before it, so dropped after it).
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(prog_fd) };
    let (flags, copy) = match a.xdp_mode {
        SinkXdpMode::Native => (XdpFlags::DRV_MODE, false),
        SinkXdpMode::Generic => (XdpFlags::SKB_MODE, true),
    };
    let xdp = Xdp::new(bfd);
    xdp.attach(ifindex, XdpFlags::from_bits_retain(flags.bits()))
        .with_context(|| {
            format!(
                "attaching the sink program to {} ({:?})",
                a.interface, a.xdp_mode
            )
        })?;
    let _attached = Attached {
        xdp,
        ifindex,
        flags,
    };

    let mut port = XskPort::open(&a.interface, 0, a.frames, a.ring_size, copy)?;
    let xsks = obj
        .maps()
        .find(|m| m.name() == "xsks")
        .context("map xsks not in object")?;
    xsks.update(
        &0u32.to_ne_bytes(),
        &(port.fd() as u32).to_ne_bytes(),
        MapFlags::ANY,
    )
    .context("xsks update")?;
    port.top_up_fill()?;
    println!(
        "pktgen sink: ready on {} ({:?} XDP)",
        a.interface, a.xdp_mode
    );

    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let mut c = SinkCounts::default();
    let (mut first, mut last) = (None::<Instant>, start);
    let (mut last_line, mut last_ok) = (start, 0u64);
    let mut second = 0;
    let mut n_ours = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        port.top_up_fill()?;
        let before = c.ours();
        let n = port.recv(64, |f| {
            let verify = n_ours.is_multiple_of(check_every);
            let v = check(f, &expect, verify);
            if v != Verdict::NotOurs {
                n_ours += 1;
            }
            c.add(v, verify);
        });
        if c.ours() > before {
            first.get_or_insert(now);
            last = now;
        }
        if n == 0 {
            port.poll_rx(100)?;
        }
        if !a.quiet && now.duration_since(last_line) >= Duration::from_secs(1) {
            second += 1;
            let dt = now.duration_since(last_line).as_secs_f64();
            println!(
                "pktgen sink: {second:>3} s  ok {:>10}  {:>8.3} Mpps  bad {}  not ours {}",
                c.ok - last_ok,
                (c.ok - last_ok) as f64 / dt / 1e6,
                c.bad(),
                c.not_ours
            );
            last_line = now;
            last_ok = c.ok;
        }
    }
    let active = first
        .map(|f| last.duration_since(f).as_secs_f64())
        .unwrap_or(0.0);
    let summary = SinkSummary {
        interface: a.interface.clone(),
        counts: c,
        active_s: active,
        ok_pps: if active > 0.0 {
            c.ok as f64 / active
        } else {
            0.0
        },
        check_every,
        socket: port.stats(),
        cpu_s: own_cpu_s(),
    };
    println!(
        "pktgen sink: done  ok {}  bad {} (dst {}, src {}, ip csum {}, l4 csum {}, truncated {})  not ours {}  checksummed {}  socket drops {}",
        c.ok,
        c.bad(),
        c.bad_dst,
        c.bad_src,
        c.bad_ip_checksum,
        c.bad_l4_checksum,
        c.truncated,
        c.not_ours,
        c.checksummed,
        summary.socket.rx_dropped + summary.socket.rx_ring_full
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    drop(port);
    Ok(())
}
