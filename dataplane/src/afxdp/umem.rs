//! One worker's UMEM and its AF_XDP sockets: one socket per interface, all
//! on the same queue id and sharing the UMEM (`XDP_SHARED_UMEM`), so a frame
//! received on one interface can be transmitted on another without a copy.
//!
//! # Frame ownership (the ledger)
//!
//! Every UMEM frame is, at every moment, in exactly one place:
//!
//! * `free`: owned by userspace, idle (the free list);
//! * *in kernel for RX* on port `p`: produced to `p`'s fill ring and not yet
//!   consumed from `p`'s RX ring — counted by `ports[p].in_rx`;
//! * *in flight*: consumed from an RX ring, being processed by the engine
//!   (only between [`WorkerUmem::rx_batch`] and [`WorkerUmem::finish_batch`])
//!   — `in_flight`;
//! * *in kernel for TX* on port `p`: produced to `p`'s TX ring and not yet
//!   returned on `p`'s completion ring — `ports[p].in_tx`.
//!
//! `free + Σ in_rx + in_flight + Σ in_tx == total` ([`Ledger::check`]) is
//! debug-asserted after every transition and tested below; a frame moves
//! only through the methods here, so none can leak.
//!
//! # Unsafe
//!
//! xsk-rs marks every ring operation `unsafe` with one contract: a frame
//! descriptor given to a ring must belong to this UMEM and must not be
//! anywhere else at the same time. The ledger is how this module keeps it;
//! each `unsafe` block names the transition it performs. [`frame_buf`] is
//! the one place a frame's memory becomes a slice. This file, `steer.rs`
//! (BPF fds) and `kernel.rs` (raw sockets) are the only `unsafe` of the
//! live path.
//!
//! # Memory ordering
//!
//! The rings' producer/consumer indices are read and written by libxdp's
//! inline functions (`xsk_ring_prod__reserve/submit`,
//! `xsk_ring_cons__peek/release`): the consumer loads the producer index with
//! acquire and publishes its own with release (`smp_load_acquire` /
//! `smp_store_release` in libxdp's xsk.h), matching net/xdp/xsk_queue.h on
//! the kernel side, so a descriptor is visible once peeked and our writes
//! are visible to the kernel once submitted.

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;

use anyhow::{anyhow, bail, Context, Result};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

/// Most interfaces one worker serves (and the XDP program's `MAX_IFACES`).
pub const MAX_PORTS: usize = 8;

/// Frame accounting; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ledger {
    pub total: usize,
    pub free: usize,
    pub in_rx: usize,
    pub in_flight: usize,
    pub in_tx: usize,
}

impl Ledger {
    /// True when every frame is accounted for exactly once.
    pub fn check(&self) -> bool {
        self.free + self.in_rx + self.in_flight + self.in_tx == self.total
    }
}

/// Ring and UMEM sizes of one worker.
#[derive(Debug, Clone, Copy)]
pub struct UmemConfigArgs {
    /// Frames per port (the UMEM has `ports × frames_per_port` frames).
    pub frames_per_port: u32,
    pub frame_size: u32,
    pub ring_size: u32,
    /// Generic (SKB) mode: sockets must be bound with `XDP_COPY`.
    pub copy_mode: bool,
}

/// One interface's socket on this worker's queue.
#[derive(Debug)]
pub struct Port {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    in_rx: usize,
    in_tx: usize,
}

/// The kernel's counters of one socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Frames the kernel dropped for this socket (any reason).
    pub rx_dropped: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
}

impl Port {
    /// The socket fd (for the XSKMAP).
    pub fn fd(&self) -> i32 {
        self.rx.fd().as_raw_fd()
    }

    /// The kernel's counters for this socket (one getsockopt; call it off
    /// the per-packet path).
    pub fn kernel_stats(&self) -> SocketStats {
        match self.rx.fd().xdp_statistics() {
            Ok(s) => SocketStats {
                rx_dropped: s.rx_dropped(),
                rx_ring_full: s.rx_ring_full(),
                rx_fill_ring_empty: s.rx_fill_ring_empty_descs(),
                rx_invalid_descs: s.rx_invalid_descs(),
                tx_invalid_descs: s.tx_invalid_descs(),
            },
            Err(_) => SocketStats::default(),
        }
    }
}

/// The sockets, their rings, the shared UMEM and the free list.
#[derive(Debug)]
pub struct WorkerUmem {
    // Drop order: sockets (rings) before the UMEM.
    pub ports: Vec<Port>,
    umem: Umem,
    free: Vec<FrameDesc>,
    /// Scratch for completion-ring reads (allocated once).
    comp: Vec<FrameDesc>,
    ring_size: usize,
    /// Usable bytes from a frame's data start to the end of its chunk.
    pub frame_cap: usize,
    total: usize,
    in_flight: usize,
    /// TX descriptors the TX ring could not take (freed, counted).
    pub tx_ring_full: u64,
    /// Wakeup syscalls issued (sendto for TX, poll for fill and idle RX).
    pub wakeups: u64,
}

/// Turns a frame descriptor into a slice over its whole data area (up to the
/// end of its chunk), so the engine can read the frame and write a longer
/// generated answer in place.
///
/// # Safety
///
/// `desc` must be a frame of `umem` that is *in flight* (consumed from an RX
/// ring, not in any fill or TX ring), and no other live slice may cover the
/// same frame. Distinct in-flight descriptors never overlap (aligned
/// chunks), so one slice per descriptor of a batch is sound.
// `&Umem` in, `&mut [u8]` out: exclusivity comes from the ledger (the frame
// is in flight and sliced once), not from the borrow checker.
#[allow(clippy::mut_from_ref)]
pub unsafe fn frame_buf<'u>(umem: &'u Umem, desc: &FrameDesc, cap: usize) -> &'u mut [u8] {
    let mut d = *desc;
    // SAFETY: per the contract, the frame is ours and belongs to `umem`.
    let mut data = unsafe { umem.data_mut(&mut d) };
    let ptr = data.contents_mut().as_mut_ptr();
    // SAFETY: `ptr` is the frame's data start in the UMEM mmap; `cap` bytes
    // stay inside its chunk (xsk-rs's `mtu`); exclusivity per the contract.
    unsafe { std::slice::from_raw_parts_mut(ptr, cap) }
}

fn qsize(n: u32) -> Result<QueueSize> {
    QueueSize::new(n).map_err(|e| anyhow!("ring size {n}: {e}"))
}

impl WorkerUmem {
    /// Creates the UMEM and one socket per interface on `queue`, without
    /// libxdp's default program (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`): our
    /// steering program puts the sockets in its XSKMAP.
    pub fn new(ifaces: &[(String, u32, [u8; 6])], queue: u32, c: UmemConfigArgs) -> Result<Self> {
        if ifaces.is_empty() || ifaces.len() > MAX_PORTS {
            bail!("1 to {MAX_PORTS} interfaces per worker");
        }
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(c.frame_size).map_err(|e| anyhow!("frame size: {e}"))?)
            .fill_queue_size(qsize(c.ring_size)?)
            .comp_queue_size(qsize(c.ring_size)?)
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        let frame_cap = umem_cfg.mtu() as usize;
        let frames = c.frames_per_port.saturating_mul(ifaces.len() as u32);
        let (umem, descs) = Umem::new(
            umem_cfg,
            NonZeroU32::new(frames).context("frames must be > 0")?,
            false,
        )
        .map_err(|e| anyhow!("creating UMEM ({frames} frames): {e}"))?;
        let mut bind = BindFlags::XDP_USE_NEED_WAKEUP;
        if c.copy_mode {
            bind |= BindFlags::XDP_COPY;
        }
        let mut ports = Vec::with_capacity(ifaces.len());
        for (name, ifindex, mac) in ifaces {
            let sock_cfg = SocketConfig::builder()
                .rx_queue_size(qsize(c.ring_size)?)
                .tx_queue_size(qsize(c.ring_size)?)
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .xdp_flags(XdpFlags::empty())
                .bind_flags(bind)
                .build();
            let ifname = Interface::new(std::ffi::CString::new(name.as_str())?);
            // SAFETY: INHIBIT_PROG_LOAD is set (xsk-rs's condition for a
            // shared UMEM), and each (interface, queue) pair is bound once.
            let (tx, rx, rings) =
                unsafe { xsk_rs::Socket::new(sock_cfg, &umem, &ifname, queue) }
                    .map_err(|e| anyhow!("creating AF_XDP socket on {name}/{queue}: {e}"))?;
            let (fq, cq) = rings.context("no fill/completion rings returned")?;
            ports.push(Port {
                name: name.clone(),
                ifindex: *ifindex,
                mac: *mac,
                tx,
                rx,
                fq,
                cq,
                in_rx: 0,
                in_tx: 0,
            });
        }
        let total = descs.len();
        let ring_size = c.ring_size as usize;
        Ok(WorkerUmem {
            ports,
            umem,
            free: descs,
            comp: vec![FrameDesc::default(); ring_size],
            ring_size,
            frame_cap,
            total,
            in_flight: 0,
            tx_ring_full: 0,
            wakeups: 0,
        })
    }

    pub fn umem(&self) -> &Umem {
        &self.umem
    }

    pub fn ledger(&self) -> Ledger {
        Ledger {
            total: self.total,
            free: self.free.len(),
            in_rx: self.ports.iter().map(|p| p.in_rx).sum(),
            in_flight: self.in_flight,
            in_tx: self.ports.iter().map(|p| p.in_tx).sum(),
        }
    }

    fn debug_check(&self) {
        debug_assert!(self.ledger().check(), "{:?}", self.ledger());
    }

    /// Completion rings → free list.
    pub fn reap_completions(&mut self) -> usize {
        let mut total = 0;
        for p in &mut self.ports {
            // SAFETY: completion descriptors are frames of this UMEM that
            // went out on this port's TX ring (in_tx → free).
            let n = unsafe { p.cq.consume(&mut self.comp) };
            self.free.extend_from_slice(&self.comp[..n]);
            p.in_tx -= n;
            total += n;
        }
        self.debug_check();
        total
    }

    /// Kicks every TX ring that still holds frames the kernel has not sent
    /// and asked for a wakeup. In copy (generic) mode the kernel transmits
    /// only inside `sendto()` and at most 32 frames per call, so frames
    /// left in the ring would otherwise wait for the port's next batch —
    /// seconds on a quiet port (as xdpsock's `complete_tx_l2fwd` does).
    pub fn kick_pending_tx(&mut self) -> Result<()> {
        for p in &mut self.ports {
            if p.in_tx > 0 && p.tx.needs_wakeup() {
                self.wakeups += 1;
                p.tx.wakeup()?;
            }
        }
        Ok(())
    }

    /// Free list → fill rings, as much as fits, sharing the free frames
    /// between ports. Wakes the kernel (one poll) only where it asked for it.
    pub fn top_up_fill(&mut self) -> Result<usize> {
        let mut done_total = 0;
        let nports = self.ports.len();
        for i in 0..nports {
            // Each port's fair share of what is still free (a full port's
            // share goes to the next ones), at most its ring's room: the
            // fill ring holds at most `ring_size` frames not yet returned
            // on RX.
            let p = &mut self.ports[i];
            let room = self.ring_size.saturating_sub(p.in_rx);
            let share = self.free.len() / (nports - i);
            let n = room.min(share);
            if n == 0 {
                continue;
            }
            let start = self.free.len() - n;
            // SAFETY: free frames of this UMEM (free → in_rx on port i).
            // produce() is all or nothing; `n` fits by the bound above.
            let done = unsafe { p.fq.produce(&self.free[start..]) };
            if done == n {
                self.free.truncate(start);
                p.in_rx += n;
                done_total += n;
            }
            if p.fq.needs_wakeup() {
                self.wakeups += 1;
                let fd = p.rx.fd_mut();
                p.fq.wakeup(fd, 0)?;
            }
        }
        self.debug_check();
        Ok(done_total)
    }

    /// Reads up to `out.len()` received frames from port `p` (in_rx →
    /// in_flight).
    pub fn rx_batch(&mut self, p: usize, out: &mut [FrameDesc]) -> usize {
        let port = &mut self.ports[p];
        // SAFETY: the descriptors written are frames of this UMEM that the
        // kernel hands back to us.
        let n = unsafe { port.rx.consume(out) };
        port.in_rx -= n;
        self.in_flight += n;
        self.debug_check();
        n
    }

    /// Blocks up to `timeout_ms` for RX on port `p` (the idle path).
    pub fn poll_rx(&mut self, p: usize, timeout_ms: i32) -> Result<bool> {
        self.wakeups += 1;
        Ok(self.ports[p].rx.poll(timeout_ms)?)
    }

    /// Sets an in-flight frame's length before it goes on TX.
    pub fn set_len(&self, desc: &mut FrameDesc, len: usize) {
        // SAFETY: the frame is in flight (ours); only its length changes.
        let mut data = unsafe { self.umem.data_mut(desc) };
        data.cursor().set_pos(len);
    }

    /// Ends a batch: `tx[p]` frames go on port `p`'s TX ring (in_flight →
    /// in_tx; any the ring cannot take → free, counted), `done` frames
    /// (dropped or handed to the kernel) → free. One TX wakeup (sendto) per
    /// port that queued something and asked for it.
    pub fn finish_batch(&mut self, tx: &[&[FrameDesc]], done: &[FrameDesc]) -> Result<()> {
        for (p, list) in tx.iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let port = &mut self.ports[p];
            // SAFETY: in-flight frames of this UMEM, each given once.
            let queued = unsafe { port.tx.produce(list) };
            if queued < list.len() {
                self.tx_ring_full += (list.len() - queued) as u64;
                self.free.extend_from_slice(&list[queued..]);
            }
            port.in_tx += queued;
            self.in_flight -= list.len();
            if queued > 0 && port.tx.needs_wakeup() {
                self.wakeups += 1;
                port.tx.wakeup()?;
            }
        }
        self.free.extend_from_slice(done);
        self.in_flight -= done.len();
        self.debug_check();
        debug_assert_eq!(self.in_flight, 0, "frames left in flight");
        Ok(())
    }

    /// TX frames still owned by the kernel (for the shutdown drain).
    pub fn in_tx(&self) -> usize {
        self.ports.iter().map(|p| p.in_tx).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::Ledger;

    #[test]
    fn ledger_balances_through_a_cycle() {
        let mut l = Ledger {
            total: 8,
            free: 8,
            ..Ledger::default()
        };
        // fill 6, receive 4, send 3, drop 1, complete 3
        l.free -= 6;
        l.in_rx += 6;
        assert!(l.check());
        l.in_rx -= 4;
        l.in_flight += 4;
        assert!(l.check());
        l.in_flight -= 4;
        l.in_tx += 3;
        l.free += 1;
        assert!(l.check());
        l.in_tx -= 3;
        l.free += 3;
        assert!(l.check());
        l.free -= 1; // a leak
        assert!(!l.check());
    }
}
