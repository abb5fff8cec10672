//! The XDP steering program (`bpf/steer.bpf.c`): load, attach, fill its maps
//! from a [`Tables`] generation, detach.
//!
//! Ownership: [`Steering`] owns the loaded object; [`Attachment`] is the
//! guard that keeps the program on an interface and detaches it on drop
//! (normal exit, `?` errors, panics that unwind, and SIGINT/SIGTERM, which
//! the main loop turns into a normal exit). A SIGKILLed process leaves the
//! program attached; [`Steering::attach`] finds it by name at the next start
//! and replaces it atomically (no instant without a program, when the mode
//! allows). A program of any other name is left alone (error).
//!
//! While no socket is in the XSKMAP (the dataplane died or is restarting),
//! the program drops Service traffic on the queues the dataplane serves
//! ([`Steering::set_served`], counter `drop_no_socket`) instead of passing
//! it to a kernel that would reset its connections; see docs/afxdp.md.
//!
//! Map contents follow the tables: [`Steering::sync`] diffs the keys a new
//! generation needs against the keys in the maps, inserts the new ones, then
//! deletes the stale ones. Between the two steps a frame can only be
//! redirected too often (the engine then answers `Pass` and the frame goes
//! to the kernel), never passed when it should have been redirected.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use anyhow::{bail, Context, Result};
use libbpf_rs::query::ProgInfoIter;
use libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder, Xdp, XdpFlags};

use crate::Tables;

/// The compiled program, embedded at build time (see build.rs).
static STEER_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// Name of the XDP function; the kernel truncates program names to 15 bytes.
const PROG_NAME: &str = "edgeplane_steer";

/// `MAX_QUEUES_PER_IF` of the C side: XSKMAP key = slot × this + queue.
pub const MAX_QUEUES_PER_IF: u32 = 64;

/// Indices of the program's per-CPU `counters` map (enum steer_counter).
pub const COUNTER_NAMES: [&str; 10] = [
    "redirect_frontend",
    "redirect_snat",
    "redirect_nosnat_reply",
    "redirect_icmp",
    "redirect_fragment",
    "pass",
    "pass_unparsed",
    "pass_no_socket",
    "drop_no_socket",
    "drop_syn_shed",
];

/// XDP attach mode (`--xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic.
    Auto,
    /// Driver mode (`XDP_FLAGS_DRV_MODE`); fails if unsupported.
    Native,
    /// Generic/SKB mode (`XDP_FLAGS_SKB_MODE`): works everywhere, copies.
    Generic,
}

/// 16-byte map encoding of an address: IPv4 is IPv4-mapped, as in the C side.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `struct ep_key` of the C side: addr[16], port (network order), proto, pad.
fn ep_key(ip: IpAddr, port: u16, proto: u8) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&addr16(ip));
    k[16..18].copy_from_slice(&port.to_be_bytes());
    k[18] = proto;
    k
}

/// The loaded (not yet attached) program and its maps.
#[derive(Debug)]
pub struct Steering {
    obj: Object,
    /// Keys currently in each lookup map (what `sync` diffs against).
    present: Present,
}

#[derive(Debug, Default)]
struct Present {
    frontends: HashSet<[u8; 20]>,
    nosnat: HashSet<[u8; 20]>,
    snat: HashSet<[u8; 16]>,
    vips: HashSet<[u8; 16]>,
}

/// What one [`Steering::sync`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub frontends: usize,
    pub nosnat_backends: usize,
    pub snat_addrs: usize,
    pub vips: usize,
    pub added: usize,
    pub removed: usize,
}

/// Keeps the program attached to one interface; detaches on drop.
#[derive(Debug)]
pub struct Attachment {
    prog_fd: RawFd,
    ifindex: i32,
    /// `XdpFlags` bits (the libbpf-rs type is neither Copy nor Debug).
    flags: u32,
    /// The mode that was actually used.
    pub mode: XdpMode,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        // SAFETY: the fd belongs to `Steering::obj`, which the caller keeps
        // alive at least as long as the attachment (declared after it in
        // `main`, so dropped before it). It is only used to build the opts.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.prog_fd) };
        match Xdp::new(fd).detach(self.ifindex, XdpFlags::from_bits_retain(self.flags)) {
            Ok(()) => tracing::info!(ifindex = self.ifindex, "detached XDP program"),
            Err(e) => tracing::warn!(ifindex = self.ifindex, "detaching XDP program: {e}"),
        }
    }
}

impl Steering {
    /// Loads `steer.bpf.o` into the kernel (maps created empty).
    pub fn load() -> Result<Self> {
        let open = ObjectBuilder::default()
            .open_memory(STEER_OBJ)
            .context("opening steer.bpf.o")?;
        let obj = open.load().context("loading steer.bpf.o (verifier)")?;
        Ok(Steering {
            obj,
            present: Present::default(),
        })
    }

    fn prog_fd(&self) -> Result<RawFd> {
        for p in self.obj.progs() {
            if p.name() == PROG_NAME {
                return Ok(p.as_fd().as_raw_fd());
            }
        }
        bail!("program {PROG_NAME} not in object")
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        self.obj
            .maps()
            .find(|m| m.name() == name)
            .with_context(|| format!("map {name} not in object"))
    }

    /// Attaches to `ifindex`, first removing a stale edgeplane program left
    /// by a crashed run (in either mode). Refuses to replace a foreign one.
    pub fn attach(&self, ifindex: i32, mode: XdpMode) -> Result<Attachment> {
        let fd = self.prog_fd()?;
        // SAFETY: fd is owned by self.obj, alive for this call.
        let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let xdp = Xdp::new(bfd);
        // A stale program in a mode we may use is replaced in one step
        // (attach without UPDATE_IF_NOEXIST); in another mode it must go
        // first (the kernel refuses two modes at once).
        let mut replace: Option<XdpMode> = None;
        for bits in [XdpFlags::SKB_MODE.bits(), XdpFlags::DRV_MODE.bits()] {
            let m = || XdpFlags::from_bits_retain(bits);
            let id = xdp.query_id(ifindex, m()).unwrap_or(0);
            if id == 0 {
                continue;
            }
            let name = ProgInfoIter::default()
                .find(|p| p.id == id)
                .map(|p| p.name.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name == PROG_NAME {
                let stale = if bits == XdpFlags::SKB_MODE.bits() {
                    XdpMode::Generic
                } else {
                    XdpMode::Native
                };
                tracing::warn!(ifindex, id, mode = ?stale, "replacing stale {name} left by an earlier run");
                if mode == XdpMode::Auto || mode == stale {
                    replace = Some(stale);
                } else {
                    xdp.detach(ifindex, m())
                        .context("detaching stale program")?;
                }
            } else {
                bail!("ifindex {ifindex} already has XDP program {name:?} (id {id}); not replacing it");
            }
        }
        let try_mode = |m: XdpMode| -> Result<Attachment> {
            let mode_bits = match m {
                XdpMode::Native => XdpFlags::DRV_MODE.bits(),
                _ => XdpFlags::SKB_MODE.bits(),
            };
            let flags = if replace == Some(m) {
                XdpFlags::from_bits_retain(mode_bits)
            } else {
                XdpFlags::from_bits_retain(mode_bits) | XdpFlags::UPDATE_IF_NOEXIST
            };
            xdp.attach(ifindex, flags)
                .with_context(|| format!("attaching in {m:?} mode"))?;
            Ok(Attachment {
                prog_fd: fd,
                ifindex,
                flags: mode_bits,
                mode: m,
            })
        };
        match (mode, replace) {
            (XdpMode::Auto, Some(stale)) => try_mode(stale),
            (XdpMode::Auto, None) => try_mode(XdpMode::Native).or_else(|e| {
                tracing::info!(
                    ifindex,
                    "native XDP failed ({e:#}); falling back to generic"
                );
                try_mode(XdpMode::Generic)
            }),
            (m, _) => try_mode(m),
        }
    }

    /// Tells the program how many queues per interface the dataplane serves
    /// (queue ids `0..queues`): Service frames on those queues are held
    /// (dropped) while their socket is missing. Set before attaching.
    pub fn set_served(&self, queues: u32) -> Result<()> {
        self.map("served")?
            .update(&0u32.to_ne_bytes(), &queues.to_ne_bytes(), MapFlags::ANY)
            .context("served update")
    }

    /// Sets the SYN shedding level of rx queue `queue`: a SYN to a frontend
    /// is let through with probability 1/`admit_one_in` (rounded down to a
    /// power of two; 0 and 1 let every SYN through).
    pub fn set_shed(&self, queue: u32, admit_one_in: u32) -> Result<()> {
        if queue >= MAX_QUEUES_PER_IF {
            bail!("queue {queue} is beyond the {MAX_QUEUES_PER_IF} queues the XDP program serves");
        }
        let n = match admit_one_in {
            0 | 1 => 1,
            n => 1u32 << (31 - n.leading_zeros()),
        };
        self.map("shed")?
            .update(&queue.to_ne_bytes(), &n.to_ne_bytes(), MapFlags::ANY)
            .context("shed update")
    }

    /// Runs the program once on `frame` (`BPF_PROG_TEST_RUN`, rx queue 0,
    /// the loopback interface) and returns its XDP action. For tests.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<u32> {
        let prog = self
            .obj
            .progs_mut()
            .find(|p| p.name() == PROG_NAME)
            .with_context(|| format!("program {PROG_NAME} not in object"))?;
        let input = libbpf_rs::ProgramInput {
            data_in: Some(frame),
            ..Default::default()
        };
        let out = prog.test_run(input).context("BPF_PROG_TEST_RUN")?;
        Ok(out.return_value)
    }

    /// Numbers an interface for the XSKMAP (`ifslots`).
    pub fn set_slot(&self, ifindex: u32, slot: u32) -> Result<()> {
        self.map("ifslots")?
            .update(&ifindex.to_ne_bytes(), &slot.to_ne_bytes(), MapFlags::ANY)
            .context("ifslots update")
    }

    /// Binds an AF_XDP socket to (interface slot, queue) in the XSKMAP.
    pub fn set_socket(&self, slot: u32, queue: u32, xsk_fd: RawFd) -> Result<()> {
        if queue >= MAX_QUEUES_PER_IF {
            bail!("queue {queue} is beyond the {MAX_QUEUES_PER_IF} queues per interface the XDP program serves");
        }
        let key = slot * MAX_QUEUES_PER_IF + queue;
        self.map("xsks")?
            .update(
                &key.to_ne_bytes(),
                &(xsk_fd as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .context("xsks update")
    }

    /// Removes a socket from the XSKMAP (frames of that queue then go to
    /// the kernel).
    pub fn clear_socket(&self, slot: u32, queue: u32) -> Result<()> {
        let key = slot * MAX_QUEUES_PER_IF + queue;
        self.map("xsks")?
            .delete(&key.to_ne_bytes())
            .context("xsks delete")
    }

    /// Brings the lookup maps in step with a tables generation: inserts the
    /// keys it needs that are missing, then deletes the keys it no longer
    /// needs.
    pub fn sync(&mut self, t: &Tables) -> Result<SyncReport> {
        let mut want = Present::default();
        for f in &t.frontends {
            want.frontends
                .insert(ep_key(f.key.ip, f.key.port, f.key.proto as u8));
            if !f.snat {
                for b in t.all_backends(f) {
                    want.nosnat.insert(ep_key(b.ip, b.port, f.key.proto as u8));
                }
            }
        }
        for v6 in [false, true] {
            if let Some(a) = t.snat_addr(v6) {
                want.snat.insert(addr16(a));
            }
        }
        for ip in t.frontend_ips.keys() {
            if !t.is_node_ip(*ip) {
                want.vips.insert(addr16(*ip));
            }
        }
        let one = 1u32.to_ne_bytes();
        let (lo, hi) = t.node.snat_ports;
        let mut range = [0u8; 4];
        range[..2].copy_from_slice(&lo.to_ne_bytes());
        range[2..].copy_from_slice(&hi.to_ne_bytes());
        let mut rep = SyncReport {
            frontends: want.frontends.len(),
            nosnat_backends: want.nosnat.len(),
            snat_addrs: want.snat.len(),
            vips: want.vips.len(),
            ..SyncReport::default()
        };
        // Inserts first (the SNAT range is rewritten every time: it may
        // have changed with the same address).
        rep.added +=
            self.insert_new("frontends", &want.frontends, &self.present.frontends, &one)?;
        rep.added +=
            self.insert_new("nosnat_backends", &want.nosnat, &self.present.nosnat, &one)?;
        rep.added += self.insert_new("snat", &want.snat, &HashSet::new(), &range)?;
        rep.added += self.insert_new("vips", &want.vips, &self.present.vips, &one)?;
        // Then deletes.
        rep.removed += self.delete_stale("frontends", &want.frontends, &self.present.frontends)?;
        rep.removed += self.delete_stale("nosnat_backends", &want.nosnat, &self.present.nosnat)?;
        rep.removed += self.delete_stale("snat", &want.snat, &self.present.snat)?;
        rep.removed += self.delete_stale("vips", &want.vips, &self.present.vips)?;
        self.present = want;
        Ok(rep)
    }

    fn insert_new<K: AsRef<[u8]> + Eq + std::hash::Hash>(
        &self,
        map: &str,
        want: &HashSet<K>,
        present: &HashSet<K>,
        value: &[u8],
    ) -> Result<usize> {
        let m = self.map(map)?;
        let mut n = 0;
        for k in want.difference(present) {
            m.update(k.as_ref(), value, MapFlags::ANY)
                .with_context(|| format!("{map} update (map full?)"))?;
            n += 1;
        }
        Ok(n)
    }

    fn delete_stale<K: AsRef<[u8]> + Eq + std::hash::Hash>(
        &self,
        map: &str,
        want: &HashSet<K>,
        present: &HashSet<K>,
    ) -> Result<usize> {
        let m = self.map(map)?;
        let mut n = 0;
        for k in present.difference(want) {
            // A key already gone is not an error worth failing a sync for.
            if m.delete(k.as_ref()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>> {
        let m = self.map("counters")?;
        let mut out = Vec::new();
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            let per_cpu = m
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)?
                .unwrap_or_default();
            let sum = per_cpu
                .iter()
                .map(|v| u64::from_ne_bytes(v[..8].try_into().unwrap_or([0; 8])))
                .sum();
            out.push((*name, sum));
        }
        Ok(out)
    }
}
