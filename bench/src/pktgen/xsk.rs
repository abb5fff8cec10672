//! One AF_XDP socket on its own UMEM, for the generator (TX only) and the
//! sink (RX only). The only `unsafe` of `edgeplane pktgen`.
//!
//! # Frame ownership
//!
//! A UMEM frame is, at every moment, in exactly one place: the free list
//! (`free`), the fill ring (counted by `in_fill`), or the TX ring
//! (`in_tx`); frames received on the RX ring are looked at and given
//! straight back to the free list within [`XskPort::recv`]. xsk-rs's ring
//! operations are `unsafe` with one contract — a descriptor given to a ring
//! belongs to this UMEM and is nowhere else at the same time — and the
//! methods below only move a descriptor from the free list to a ring and
//! from a ring back to the free list, so none is ever in two places.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;

use anyhow::{anyhow, Context, Result};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

/// The kernel's counters of the socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct XskStats {
    pub rx_dropped: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty: u64,
    pub tx_ring_empty: u64,
}

/// A socket bound to (interface, queue) with its UMEM and rings.
#[derive(Debug)]
pub struct XskPort {
    // Drop order: rings (and the socket they hold) before the UMEM.
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    umem: Umem,
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    ring: usize,
    in_fill: usize,
    in_tx: usize,
    /// Largest frame a chunk holds.
    pub frame_cap: usize,
    /// `sendto()`/`poll()` calls made.
    pub wakeups: u64,
}

fn qsize(n: u32) -> Result<QueueSize> {
    QueueSize::new(n).map_err(|e| anyhow!("ring size {n}: {e}"))
}

impl XskPort {
    /// Creates a UMEM of `frames` 2048-byte frames and binds a socket to
    /// `iface`/`queue`, without libxdp's default XDP program (the sink loads
    /// its own; the generator needs none). `copy`: bind with `XDP_COPY`.
    pub fn open(iface: &str, queue: u32, frames: u32, ring: u32, copy: bool) -> Result<Self> {
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(2048).map_err(|e| anyhow!("frame size: {e}"))?)
            .fill_queue_size(qsize(ring)?)
            .comp_queue_size(qsize(ring)?)
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        let frame_cap = umem_cfg.mtu() as usize;
        let (umem, descs) = Umem::new(
            umem_cfg,
            NonZeroU32::new(frames).context("--frames must be > 0")?,
            false,
        )
        .map_err(|e| anyhow!("creating UMEM ({frames} frames): {e}"))?;
        let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
        if copy {
            bind |= BindFlags::XDP_COPY;
        }
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(qsize(ring)?)
            .tx_queue_size(qsize(ring)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .xdp_flags(XdpFlags::empty())
            .bind_flags(bind)
            .build();
        let ifname = Interface::new(CString::new(iface)?);
        // SAFETY: one socket per UMEM, bound once to this (interface,
        // queue); INHIBIT_PROG_LOAD is set.
        let (tx, rx, rings) = unsafe { xsk_rs::Socket::new(sock_cfg, &umem, &ifname, queue) }
            .map_err(|e| anyhow!("creating AF_XDP socket on {iface}/{queue}: {e}"))?;
        let (fq, cq) = rings.context("no fill/completion rings returned")?;
        Ok(XskPort {
            tx,
            rx,
            fq,
            cq,
            umem,
            free: descs,
            scratch: vec![FrameDesc::default(); ring as usize],
            ring: ring as usize,
            in_fill: 0,
            in_tx: 0,
            frame_cap,
            wakeups: 0,
        })
    }

    /// The socket fd (for the sink's XSKMAP).
    pub fn fd(&self) -> i32 {
        self.rx.fd().as_raw_fd()
    }

    pub fn stats(&self) -> XskStats {
        match self.rx.fd().xdp_statistics() {
            Ok(s) => XskStats {
                rx_dropped: s.rx_dropped(),
                rx_ring_full: s.rx_ring_full(),
                rx_fill_ring_empty: s.rx_fill_ring_empty_descs(),
                tx_ring_empty: s.tx_ring_empty_descs(),
            },
            Err(_) => XskStats::default(),
        }
    }

    /// Writes `template` into every free frame (the generator's pre-built
    /// frames: a send then only patches a few fields).
    pub fn write_template(&mut self, template: &[u8]) -> Result<()> {
        if template.len() > self.frame_cap {
            anyhow::bail!(
                "frame of {} bytes does not fit a {}-byte UMEM chunk",
                template.len(),
                self.frame_cap
            );
        }
        for d in self.free.iter_mut() {
            // SAFETY: a free frame of this UMEM (no ring holds it).
            let mut data = unsafe { self.umem.data_mut(d) };
            data.cursor().set_pos(template.len());
            data.contents_mut().copy_from_slice(template);
        }
        Ok(())
    }

    /// Completion ring → free list.
    pub fn reap(&mut self) -> usize {
        // SAFETY: completion descriptors are frames of this UMEM that left
        // on our TX ring (in_tx → free).
        let n = unsafe { self.cq.consume(&mut self.scratch) };
        self.free.extend_from_slice(&self.scratch[..n]);
        self.in_tx -= n;
        n
    }

    /// Takes up to `n` free frames, lets `fill` patch each (its buffer holds
    /// `len` bytes, the template's length), and puts them on the TX ring.
    /// Returns how many were queued.
    pub fn send(&mut self, n: usize, len: usize, mut fill: impl FnMut(&mut [u8])) -> usize {
        let n = n
            .min(self.free.len())
            .min(self.ring - self.in_tx.min(self.ring));
        if n == 0 {
            return 0;
        }
        let start = self.free.len() - n;
        for d in &mut self.free[start..] {
            // SAFETY: a free frame of this UMEM, not in any ring.
            let mut data = unsafe { self.umem.data_mut(d) };
            data.cursor().set_pos(len);
            fill(data.contents_mut());
        }
        // SAFETY: free frames of this UMEM, each given once (free → in_tx);
        // produce() takes all or none.
        let queued = unsafe { self.tx.produce(&self.free[start..]) };
        if queued == n {
            self.free.truncate(start);
            self.in_tx += n;
            n
        } else {
            0
        }
    }

    /// Asks the kernel to transmit what the TX ring holds (`sendto()`),
    /// when it wants to be asked.
    pub fn kick(&mut self) -> Result<()> {
        if self.in_tx > 0 && self.tx.needs_wakeup() {
            self.wakeups += 1;
            self.tx.wakeup().context("sendto on the AF_XDP socket")?;
        }
        Ok(())
    }

    /// Frames still on the TX ring or in the kernel.
    pub fn in_tx(&self) -> usize {
        self.in_tx
    }

    /// Free list → fill ring, as much as fits.
    pub fn top_up_fill(&mut self) -> Result<()> {
        let n = (self.ring - self.in_fill.min(self.ring)).min(self.free.len());
        if n > 0 {
            let start = self.free.len() - n;
            // SAFETY: free frames of this UMEM (free → in_fill); all or none.
            let done = unsafe { self.fq.produce(&self.free[start..]) };
            if done == n {
                self.free.truncate(start);
                self.in_fill += n;
            }
        }
        if self.fq.needs_wakeup() {
            self.wakeups += 1;
            let fd = self.rx.fd_mut();
            self.fq.wakeup(fd, 0)?;
        }
        Ok(())
    }

    /// Reads up to `max` received frames, shows each to `look`, and
    /// returns them to the free list. Returns how many were read.
    pub fn recv(&mut self, max: usize, mut look: impl FnMut(&[u8])) -> usize {
        let max = max.min(self.scratch.len());
        // SAFETY: the descriptors the kernel writes are frames of this UMEM
        // it took from our fill ring (in_fill → here → free).
        let n = unsafe { self.rx.consume(&mut self.scratch[..max]) };
        for d in &self.scratch[..n] {
            // SAFETY: the frame was just consumed from the RX ring: no ring
            // holds it until it goes back to the free list below.
            let data = unsafe { self.umem.data(d) };
            look(data.contents());
        }
        self.in_fill -= n;
        self.free.extend_from_slice(&self.scratch[..n]);
        n
    }

    /// Waits up to `timeout_ms` for RX.
    pub fn poll_rx(&mut self, timeout_ms: i32) -> Result<bool> {
        self.wakeups += 1;
        Ok(self.rx.poll(timeout_ms)?)
    }
}

/// User + system CPU seconds this process has used (`getrusage`).
pub fn own_cpu_s() -> f64 {
    // SAFETY: an all-zero `rusage` is a valid value for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
