//! Connection tracking: one fixed-capacity table that holds both directions of
//! every translated flow (after Cilium's `conntrack.h` and Katran's LRU maps).
//!
//! # What this module promises
//!
//! * **Fixed capacity.** [`Conntrack::new`] allocates everything once; no
//!   operation allocates afterwards.
//! * **Heap or shared memory.** [`Conntrack::new`] keeps the arrays on the
//!   heap (tests, replay); [`Conntrack::open`] keeps them in the file
//!   `DIR/conntrack`, mapped shared, so that a dataplane restarted after a
//!   crash or `kill -9` re-attaches to every live flow (see "Shared memory").
//!   The code that works on the table is the same for both.
//! * **One record per flow, two keys.** A record holds the original tuple
//!   (client → frontend) and the translated tuple (what original packets are
//!   rewritten to). It is found by its *original key* and by its *reply key*
//!   (the reverse of the translated tuple: backend → SNAT address or client).
//!   Both keys live in one index, and a key names at most one live record in
//!   either role, so [`Conntrack::lookup`] returns one answer and says which
//!   direction the packet travels ([`Dir`]).
//! * **Flat, pointer-free.** Records, index and free lists are arrays of fixed
//!   size slots made of atomics and linked only by `u32` indices, so that the
//!   table can later be placed in a shared-memory region unchanged.
//! * **Shared by every worker through `&self`.** Readers never take a lock;
//!   they read a record between two loads of its sequence counter (a seqlock)
//!   and retry if a writer was active. No reader ever sees a torn record. There
//!   is no `unsafe` in this module (the mapping is [`crate::shm`]'s).
//! * **Time is a parameter.** Expiry is judged against the `now` (monotonic
//!   nanoseconds) each call passes in; nothing reads a clock.
//! * **A SYN flood cannot push out established flows.** When the table is full,
//!   a new flow may only take the place of an expired record or of an
//!   *evictable* one (not yet confirmed, or TCP already in TIME_WAIT/CLOSE),
//!   never of a confirmed live flow ([`InsertError::Full`] instead).
//!
//! # Layout
//!
//! ```text
//! A record is 11 logical words w[0..11] plus a seqlock counter and the expiry:
//!   w[0..2]  original src address (16 B, IPv4 as IPv4-mapped IPv6)
//!   w[2..4]  original dst address
//!   w[4..6]  translated src address (SNAT address or the client)
//!   w[6..8]  translated dst address (the backend)
//!   w[8]     orig sport | orig dport << 16 | xlat sport << 32 | xlat dport << 48
//!   w[9]     proto | tcp state << 8 | flags << 16 | worker << 24 | frontend << 32
//!   w[10]    validated_gen (while the record is free: the free-list link)
//! stored in two parallel arrays, so that an IPv4 flow is one cache line:
//!
//! records: [Record; capacity]          64 B each (align 64: the hot line)
//!   seq: u32      seqlock counter, odd while a writer is inside (guards both halves)
//!   expires: u32  expiry, whole seconds of the caller's clock (see "Time")
//!   hot[0..7]     w[1], w[3], w[5], w[7] (high halves of the addresses: the
//!                 whole IPv4 address), w[8], w[9], w[10]
//! cold: [Cold; capacity]               32 B each
//!   w[0], w[2], w[4], w[6]  low halves of the addresses: zero for IPv4, so
//!                           written and read only when w[9] flags a tuple as IPv6
//!
//! index: [Bucket; ceil(capacity / 2)]  64 B each = 8 entries of u64 (4 entries per flow: load <= 0.5)
//!   entry = tag (31 bits of the key hash, low bit forced to 1) << 32 | slot << 1 | dir;  0 = empty
//!
//! free lists: 8 shards of a Treiber stack (head = ABA counter << 32 | slot + 1)
//! insert stripes: 1024 spin locks with a version (even free, odd held); writers
//!   take them, a lookup that misses reads the version (see "Concurrency protocol")
//! ```
//!
//! Memory: 64 + 32 B of record + 32 B of index = **128 bytes per flow**, plus a few
//! kilobytes of fixed overhead ([`Conntrack::memory_bytes`]). One million flows
//! take 122 MiB.
//!
//! # Probing
//!
//! A key's hash `h` chooses two buckets: `b1` from the high 32 bits of `h`,
//! `b2` from the high bits of `h * φ`. An entry goes into `b1` while it holds
//! fewer than [`PREFER_FIRST`] entries, else into the less occupied of the two
//! (ties: `b1`): at load 0.5 a bucket holds 4 entries on average, so only a
//! few percent of the keys go elsewhere, and two choices still keep bucket
//! overflow negligible. A lookup scans `b1` then `b2`
//! comparing 32-bit tags, and reads a record only on a tag match (a false match
//! costs one record read and is rejected by the full key comparison). An
//! established-flow hit therefore costs one hash, almost always a single index
//! cache line, and the record's hot line (IPv4) or its hot line and cold half
//! (IPv6). A miss reads both buckets. If both are ever full, the insert frees
//! an expired or evictable record referenced from them, or fails with `Full`.
//!
//! # Concurrency protocol
//!
//! * **Readers** (`lookup`, `for_each`, `contains_key`): `s1 = seq.load(Acquire)`,
//!   retry while odd; load the words `Relaxed`; `fence(Acquire)`;
//!   `s2 = seq.load(Relaxed)`; the copy is valid iff `s1 == s2`. A reader
//!   therefore only waits while a writer is inside a record, which is a handful
//!   of stores (it spins, then yields).
//! * **Record writers** (`update`, `set_validated`, `remove`, eviction, sweep,
//!   insert) take the record by CAS `seq: even s → s + 1` (Acquire), then
//!   `fence(Release)`, store `Relaxed`, and leave with `seq.store(s + 2,
//!   Release)` (or `s` when nothing was written). Eviction and sweep CAS from
//!   the `seq` of the copy they judged, so they free exactly the version they
//!   looked at and skip a record that changed under them.
//! * **A [`Hit`] carries the `seq` it was read at.** [`Conntrack::update`],
//!   [`Conntrack::set_validated`] and [`Conntrack::remove`] use the slot
//!   directly (no second hash); when `seq` moved on they check under the lock
//!   that the slot still holds the same flow, so a stale `Hit` can never touch
//!   a record that was freed and reused for another flow.
//! * **Inserts** are serialised per key by spin flags striped by the key's
//!   first bucket (writers take them; a lookup that misses only reads their
//!   version, below). Both keys'
//!   stripes are taken in ascending order. Under them the insert checks that
//!   neither key is live, then publishes index entries by CAS `0 → entry`. The
//!   new record is written first in a PENDING state (invisible to lookups,
//!   skipped by eviction and sweep) and becomes live only once both keys are
//!   indexed. Two workers inserting the same key therefore never both succeed:
//!   the second gets [`InsertError::Exists`] with the first one's flow. No
//!   record lock is ever held while waiting for a stripe, so there is no
//!   lock-order cycle.
//! * **Stripes are version counters** (even: free, odd: held; each
//!   lock/unlock pair adds 2). An index entry for a key is only ever added
//!   under that key's stripe, so when [`Conntrack::lookup_or_miss`] read an
//!   even version `v`, then found no entry with the key's tag in either
//!   bucket, and the insert later takes the stripe *from* `v` (nobody held
//!   it in between), the key still has no entry: the insert skips that
//!   key's check under the stripe ([`Conntrack::insert_after_miss`]).
//!   Entries removed meanwhile (remove, evict, sweep) cannot make a holder
//!   appear. The version is 32 bits moving by 2: it could only come back
//!   to `v` after 2^31 lock/unlock pairs on one stripe while one worker sits
//!   between its miss and its insert (at most one batch), which this
//!   assumes never happens.
//! * **Freeing** (remove, evict, sweep) happens under the record's lock: clear
//!   both index entries (CAS `entry → 0`), mark the record free, release, then
//!   push the slot on a free list. An index entry therefore only ever points at
//!   a pending or live record.
//!
//! # Eviction
//!
//! A new flow takes a slot from the free lists. When they are empty it looks at
//! the records referenced from its two keys' buckets (its *probe window*,
//! about 8-16 records on a full table) and takes, in this order: an expired
//! record; else the evictable record that expires first (evictable = not
//! assured, i.e. TCP before the handshake completed or UDP/SCTP never answered,
//! or TCP in TIME_WAIT/CLOSE). If the window holds only confirmed live flows it
//! sweeps a few slots from the sweep cursor, and if that frees nothing either,
//! the insert fails with [`InsertError::Full`] (the engine drops with
//! `conntrack_full`).
//!
//! # Time
//!
//! `expires` is a `u32` count of whole seconds of the caller's clock, rounded
//! up: a flow lives between its timeout and its timeout + 1 s after its last
//! refresh (nf_conntrack and Cilium also keep seconds/jiffies). The range is
//! 136 years from `now = 0`, which covers a monotonic clock and Unix-epoch
//! timestamps (pcap replay) alike. To keep the per-packet path free of stores,
//! a packet that changes nothing but the expiry only rewrites it when the
//! expiry moves by at least one second and at least 1/256 of the timeout (an
//! established TCP flow is refreshed at most every ~6 minutes of its 24 hours).
//! The live path passes `CLOCK_MONOTONIC` ([`crate::shm::monotonic_ns`]),
//! which every process shares, so a re-attached table's expiry times keep
//! their meaning; the file header records the clock and the boot.
//!
//! # Shared memory
//!
//! [`Conntrack::open`]`(dir, capacity, seed, timeouts, now)` maps
//! `dir/conntrack` (file mode 0600, directory 0700; [`crate::shm`] describes
//! the header page and how a file is created, checked, locked and replaced):
//!
//! ```text
//! offset 0                     header page: magic "EPCONNTR", LAYOUT_VERSION, capacity,
//!                              seed, clock (1 = CLOCK_MONOTONIC), clean flag, owner and
//!                              creator pid, boot id, section table, params[0..13] = the
//!                              timeouts in Timeouts field order (seconds)
//! 4096                         section 0  records  [Record; capacity]        64 B each
//! next multiple of 4096        section 1  cold     [Cold; capacity]          32 B each
//! next multiple of 4096        section 2  index    [Bucket; ceil(capacity/2), >= 2]  64 B each
//! next multiple of 4096        section 3  stripes  [AtomicU32; 1024]
//! next multiple of 4096        section 4  free     [Shard; 8]                64 B each
//!                                                  (head: u64, used: i64, padding)
//! ```
//!
//! Every word is native-endian (the file never leaves its host) and holds
//! exactly what the heap table holds: the record, entry and free-list
//! formats above, slot numbers as indices into section 0. For one million
//! flows the file is 128,016,384 bytes (122.1 MiB; the 128 MiB budget is
//! 134,217,728).
//!
//! **Attach.** Same layout version, capacity and seed, same clock and boot:
//! the records are kept and recovered (below). Anything else — another
//! version (an upgrade that changed the layout), another `--conntrack-size`
//! or `--hash-seed`, a reboot, a truncated or foreign file — starts empty,
//! replacing the file, and [`Attach::StartedEmpty`] names the reason (both
//! versions for a version change) for the caller to log. Only one process may
//! hold the file for writing (`flock`); a second gets [`ShmError::Busy`] with
//! the holder's pid. [`ConntrackView`] reads a live table without a lock
//! (`edgeplane inspect conntrack`).
//!
//! # Recovery
//!
//! The previous owner may have died anywhere, so every attach (clean or not;
//! the clean flag is only reported) runs, single-threaded before any worker
//! starts:
//!
//! 1. insert stripes: all released;
//! 2. records: an odd `seq` (a writer died inside) is made even. A torn
//!    record is still whole where it matters: key words are written only while
//!    a record is PENDING or free, and meta and expiry are single words. Then
//!    each record is kept if it is LIVE, not PENDING, its meta word is one this
//!    build writes (protocol/state) and it is not expired at `now`; anything
//!    else is freed (an interrupted insert is PENDING and simply vanishes).
//!    Kept records get `validated_gen = 0`, so the first packet re-validates
//!    the backend against the new process's tables (generations restart), and
//!    an expiry beyond `now` + the longest timeout is clamped;
//! 3. free lists: rebuilt from the freed slots (the file's heads and links,
//!    which a crash may have left mid-push, are ignored), `used` recounted;
//! 4. index: cleared, then both keys of every kept record are placed anew, as
//!    an insert would. A key already held by an earlier record (only possible
//!    in a corrupt file) or that finds no entry (both buckets full) frees the
//!    record. Slot numbers in the index are therefore always ours, never read
//!    from the file.
//!
//! Cost: one pass over the records, one over the index, and two placements
//! per live flow (their bucket lines prefetched in groups of 16): about
//! 0.3 s for a full table of one million flows (see
//! docs/benchmarks.md, `conntrack_shm/reattach_1m`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use std::path::Path;

use crate::hash::addr16;
use crate::prefetch::prefetch;
use crate::shm::{
    Attach, HeaderInfo, Opened, Repair, SectionSpec, SharedFile, ShmError, Slab, Spec,
};

/// TCP flag bits, as in the TCP header's flags byte (`Parsed::tcp_flags`).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const PROTO_SCTP: u8 = 132;

const NS_PER_SEC: u64 = 1_000_000_000;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// The identity of a packet's flow as it is on the wire: a 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port. For ICMP echo the engine puts the identifier in `sport` of
    /// the request's key, so that the reply's key is `reversed()` of it.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
}

impl FlowKey {
    /// The same flow seen from the other end (addresses and ports swapped).
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

/// Which way a packet travels relative to the flow's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// Client → frontend: the packet's key is the record's original key.
    Original = 0,
    /// Backend → SNAT address or client: the packet's key is the reverse of
    /// the record's translated tuple.
    Reply = 1,
}

/// TCP connection state, a simplified nf_conntrack machine. Non-TCP flows are
/// always `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    /// Not TCP.
    None = 0,
    /// SYN seen from the client (unconfirmed, evictable).
    SynSent = 1,
    /// SYN+ACK seen from the backend (unconfirmed, evictable).
    SynRecv = 2,
    /// Handshake completed, or a mid-stream pickup (confirmed once the reply
    /// direction has been seen).
    Established = 3,
    /// One side sent FIN (nf's FIN_WAIT, CLOSE_WAIT and LAST_ACK in one state).
    Closing = 4,
    /// Both sides sent FIN. Evictable; a new SYN from the client reopens it.
    TimeWait = 5,
    /// RST seen. Evictable; a new SYN from the client reopens it.
    Close = 6,
}

impl TcpState {
    fn from_u8(v: u8) -> TcpState {
        match v {
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::Closing,
            5 => TcpState::TimeWait,
            6 => TcpState::Close,
            _ => TcpState::None,
        }
    }

    /// The state's name as nf_conntrack spells it, for display.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::Closing => "CLOSING",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
        }
    }
}

/// Idle timeouts in whole seconds. Each default mirrors the Linux sysctl
/// `net.netfilter.<name>` given on the field (kernel defaults, except where
/// kube-proxy sets its own value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP SYN seen, no SYN+ACK yet. `nf_conntrack_tcp_timeout_syn_sent` = 120.
    pub tcp_syn_sent: u32,
    /// SYN+ACK seen, no final ACK yet. `nf_conntrack_tcp_timeout_syn_recv` = 60.
    pub tcp_syn_recv: u32,
    /// Established and confirmed. `nf_conntrack_tcp_timeout_established`:
    /// 86400 as kube-proxy sets it (`--conntrack-tcp-timeout-established=24h`;
    /// the kernel default is 432000, Cilium uses 21600).
    pub tcp_established: u32,
    /// Established after a mid-stream pickup, until the reply direction is
    /// seen. `nf_conntrack_tcp_timeout_unacknowledged` = 300.
    pub tcp_unacknowledged: u32,
    /// One FIN seen. `nf_conntrack_tcp_timeout_fin_wait` = 120 (the longest of
    /// fin_wait 120, close_wait 60 and last_ack 30, which this state merges;
    /// kube-proxy's 1 h close_wait is not followed: half-closed flows that
    /// matter keep sending and are refreshed).
    pub tcp_closing: u32,
    /// Both FINs seen. `nf_conntrack_tcp_timeout_time_wait` = 120.
    pub tcp_time_wait: u32,
    /// RST seen. `nf_conntrack_tcp_timeout_close` = 10.
    pub tcp_close: u32,
    /// UDP, reply direction never seen. `nf_conntrack_udp_timeout` = 30.
    pub udp: u32,
    /// UDP after a reply. `nf_conntrack_udp_timeout_stream` = 120.
    pub udp_stream: u32,
    /// ICMP/ICMPv6 echo. `nf_conntrack_icmp_timeout` / `nf_conntrack_icmpv6_timeout` = 30.
    pub icmp: u32,
    /// SCTP before any reply. SCTP is tracked like UDP (no chunk-level state
    /// machine); 30 s like `nf_conntrack_udp_timeout`.
    pub sctp: u32,
    /// SCTP after a reply. `nf_conntrack_sctp_timeout_established` = 210.
    pub sctp_established: u32,
    /// Any other protocol. `nf_conntrack_generic_timeout` = 600.
    pub generic: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 86_400,
            tcp_unacknowledged: 300,
            tcp_closing: 120,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp: 30,
            udp_stream: 120,
            icmp: 30,
            sctp: 30,
            sctp_established: 210,
            generic: 600,
        }
    }
}

impl Timeouts {
    fn all(&self) -> [u32; 13] {
        [
            self.tcp_syn_sent,
            self.tcp_syn_recv,
            self.tcp_established,
            self.tcp_unacknowledged,
            self.tcp_closing,
            self.tcp_time_wait,
            self.tcp_close,
            self.udp,
            self.udp_stream,
            self.icmp,
            self.sctp,
            self.sctp_established,
            self.generic,
        ]
    }

    /// The longest timeout, seconds.
    fn longest(&self) -> u32 {
        self.all().into_iter().max().unwrap_or(0)
    }

    /// The header words of a conntrack file (in field order).
    fn to_params(self) -> Vec<u64> {
        self.all().iter().map(|&t| t as u64).collect()
    }

    /// The timeouts a conntrack file's header records.
    fn from_params(p: &[u64]) -> Timeouts {
        let g = |i: usize| p.get(i).map_or(0, |&v| v.min(u32::MAX as u64) as u32);
        Timeouts {
            tcp_syn_sent: g(0),
            tcp_syn_recv: g(1),
            tcp_established: g(2),
            tcp_unacknowledged: g(3),
            tcp_closing: g(4),
            tcp_time_wait: g(5),
            tcp_close: g(6),
            udp: g(7),
            udp_stream: g(8),
            icmp: g(9),
            sctp: g(10),
            sctp_established: g(11),
            generic: g(12),
        }
    }
}

/// A consistent copy of one flow record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The original tuple: client → frontend, as the first packet arrived.
    pub orig: FlowKey,
    /// What original-direction packets are rewritten to: src = SNAT address
    /// and port (or the client, without SNAT), dst = backend. Its `proto` is
    /// `orig.proto`. Replies arrive with key `xlat.reversed()`.
    pub xlat: FlowKey,
    /// Index of the frontend in the tables the flow was created with.
    pub frontend: u32,
    /// TCP state (`None` for other protocols). Ignored by `insert`.
    pub state: TcpState,
    /// Confirmed: TCP handshake completed (or a reply to a mid-stream pickup),
    /// UDP/SCTP/ICMP reply seen. Only unconfirmed flows are evicted for new
    /// ones. Ignored by `insert`.
    pub assured: bool,
    /// Table generation at which the backend was last found valid.
    pub validated_gen: u64,
    /// The worker that created the flow (owner of its SNAT port).
    pub worker: u8,
    /// When the flow expires unless refreshed, in ns of the caller's clock (a
    /// whole second). Ignored by `insert`.
    pub expires: u64,
}

impl Flow {
    /// A flow to [`Conntrack::insert`]; `state`, `assured` and `expires` are
    /// computed by the insert.
    pub fn new(
        orig: FlowKey,
        xlat: FlowKey,
        frontend: u32,
        worker: u8,
        validated_gen: u64,
    ) -> Flow {
        Flow {
            orig,
            xlat,
            frontend,
            state: TcpState::None,
            assured: false,
            validated_gen,
            worker,
            expires: 0,
        }
    }

    /// The key reply packets carry: `xlat.reversed()` with `orig.proto`.
    #[inline]
    pub fn reply_key(&self) -> FlowKey {
        FlowKey {
            proto: self.orig.proto,
            ..self.xlat.reversed()
        }
    }
}

/// A found (or just inserted) flow: where it lives, which direction the
/// looked-up key matched, and a copy of the record.
///
/// The copy is kept in the record's raw form (no address is decoded on the
/// per-packet path): [`flow`](Hit::flow) decodes all of it; the accessors
/// below read single fields, and [`rewrite`](Hit::rewrite) gives the tuple a
/// packet of this direction is translated to, in wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Record index; stable for the flow's lifetime.
    pub slot: u32,
    /// The direction the key matched.
    pub dir: Dir,
    /// The record's sequence number when it was read (lets `update` skip the
    /// identity check when nothing changed since).
    seq: u32,
    /// The record's expiry (whole seconds) when it was read.
    exp: u32,
    /// The record's words when it was read.
    w: [u64; WORDS],
}

/// The addresses and ports a packet is translated to, in wire form: the
/// address bytes of its family ([`addrs`](Rewrite::addrs)) and host-order
/// ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    src: [u8; 16],
    dst: [u8; 16],
    v6: bool,
    pub sport: u16,
    pub dport: u16,
}

impl Rewrite {
    /// Source and destination address bytes: 4 each for IPv4, 16 for IPv6.
    #[inline]
    pub fn addrs(&self) -> (&[u8], &[u8]) {
        if self.v6 {
            (&self.src, &self.dst)
        } else {
            (&self.src[12..], &self.dst[12..])
        }
    }
}

#[inline]
fn words_bytes(w: [u64; 2]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&w[0].to_le_bytes());
    b[8..].copy_from_slice(&w[1].to_le_bytes());
    b
}

impl Hit {
    /// The whole record, decoded.
    pub fn flow(&self) -> Flow {
        flow_of(&self.w, self.exp)
    }

    /// [`Flow::frontend`].
    #[inline]
    pub fn frontend(&self) -> u32 {
        (self.w[W_META] >> 32) as u32
    }

    /// [`Flow::validated_gen`].
    #[inline]
    pub fn validated_gen(&self) -> u64 {
        self.w[W_GEN]
    }

    /// [`Flow::state`].
    #[inline]
    pub fn state(&self) -> TcpState {
        Meta::unpack(self.w[W_META]).state
    }

    /// May be evicted for a new flow (unconfirmed, or a TCP flow that is
    /// over), as the record was when read.
    #[inline]
    pub fn evictable(&self) -> bool {
        Meta::unpack(self.w[W_META]).evictable()
    }

    /// The backend: `flow().xlat.dst` and `.dport`.
    #[inline]
    pub fn backend(&self) -> (IpAddr, u16) {
        let v6 = flags_of(self.w[W_META]) & F_XLAT_V6 != 0;
        let ip = words_addr([self.w[W_XLAT_DST], self.w[W_XLAT_DST + 1]], v6);
        (ip, (self.w[W_PORTS] >> 48) as u16)
    }

    /// What a packet travelling in `self.dir` is rewritten to: `xlat` for an
    /// original-direction packet, the reverse of `orig` for a reply.
    #[inline]
    pub fn rewrite(&self) -> Rewrite {
        self.rewrite_as(self.dir)
    }

    /// [`rewrite_as`](Self::rewrite_as) for a tuple that is IPv4: (source
    /// address, destination address, source port, destination port); `None`
    /// when the tuple is IPv6.
    #[inline]
    pub fn rewrite_v4(&self, dir: Dir) -> Option<(Ipv4Addr, Ipv4Addr, u16, u16)> {
        let (w, p, f) = (&self.w, self.w[W_PORTS], flags_of(self.w[W_META]));
        // The IPv4 address of an IPv4-mapped pair: bytes 12..16, the high
        // half of its second word (little-endian).
        let v4 = |i: usize| Ipv4Addr::from(((w[i + 1] >> 32) as u32).to_le_bytes());
        match dir {
            Dir::Original if f & F_XLAT_V6 == 0 => Some((
                v4(W_XLAT_SRC),
                v4(W_XLAT_DST),
                (p >> 32) as u16,
                (p >> 48) as u16,
            )),
            Dir::Reply if f & F_ORIG_V6 == 0 => {
                Some((v4(W_ORIG_DST), v4(W_ORIG_SRC), (p >> 16) as u16, p as u16))
            }
            _ => None,
        }
    }

    /// What a packet travelling in `dir` is rewritten to.
    #[inline]
    pub fn rewrite_as(&self, dir: Dir) -> Rewrite {
        let (w, p, f) = (&self.w, self.w[W_PORTS], flags_of(self.w[W_META]));
        let pair = |i: usize| words_bytes([w[i], w[i + 1]]);
        match dir {
            Dir::Original => Rewrite {
                src: pair(W_XLAT_SRC),
                dst: pair(W_XLAT_DST),
                v6: f & F_XLAT_V6 != 0,
                sport: (p >> 32) as u16,
                dport: (p >> 48) as u16,
            },
            Dir::Reply => Rewrite {
                src: pair(W_ORIG_DST),
                dst: pair(W_ORIG_SRC),
                v6: f & F_ORIG_V6 != 0,
                sport: (p >> 16) as u16,
                dport: p as u16,
            },
        }
    }
}

/// A key hashed once, for the batch path: [`Conntrack::probe`] hashes it,
/// [`Conntrack::prefetch_index`] and [`Conntrack::prefetch_records`] start
/// loading the cache lines a lookup of it will touch, and
/// [`Conntrack::lookup_probe`] looks it up. Prefetching is only a hint: a
/// `lookup_probe` gives exactly the answer `lookup` of the same key gives at
/// that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    key: RawKey,
    h: u64,
    /// The first entry of the first bucket whose tag matched when
    /// [`Conntrack::prefetch_records`] scanned it (0: none, or not scanned),
    /// and its position: `lookup_probe` checks it first, without a scan.
    cand: u64,
    cand_at: u8,
    /// `prefetch_records` found no entry with the key's tag in the first
    /// bucket while the key's insert stripe was free at version `ver` (read
    /// before a scan that found none): while the stripe stays at `ver`, the
    /// key has no entry there, and a lookup scans the second bucket only.
    clean1: bool,
    ver: u32,
}

/// A lookup that found nothing ([`Conntrack::lookup_or_miss`]), kept for
/// the insert of the same key ([`Conntrack::insert_after_miss`]): the key,
/// hashed, and whether the insert may skip checking the key again under its
/// insert stripe (see "Concurrency protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Miss {
    probe: Probe,
    /// The version of the key's insert stripe read before the scan, when
    /// the stripe was free then and neither of the key's buckets held an
    /// entry with the key's tag (no holder at all, expired or not).
    clean_at: Option<u32>,
}

/// Why an insert did not create a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The probe window holds only confirmed live flows and no free slot could
    /// be found: drop the packet (`DropReason::ConntrackFull`).
    #[error("conntrack table full")]
    Full,
    /// The original key is already tracked (usually another worker inserted
    /// the same flow first): continue with this existing flow. `dir` says which
    /// key of the existing record matched (normally `Original`).
    #[error("flow already tracked")]
    Exists(Hit),
    /// The reply key is already held by another live flow (SNAT port taken, or
    /// two frontends reaching one backend from the same client port without
    /// SNAT): pick another SNAT port, or drop.
    #[error("reply key held by another flow")]
    ReplyTaken(Hit),
}

/// Table-wide counters of rare events (never touched by the established-flow
/// path). Read with [`Conntrack::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConntrackStats {
    /// Inserts that failed with [`InsertError::Full`].
    pub insert_failures: u64,
    /// Live unconfirmed (or TIME_WAIT/CLOSE) flows evicted for new ones.
    pub evictions: u64,
    /// Expired records reclaimed by inserts (probe window or conflict check).
    pub reclaimed: u64,
    /// Expired records freed by [`Conntrack::sweep`] (including the small
    /// sweeps a full insert runs).
    pub swept: u64,
    /// Records freed by [`Conntrack::remove`].
    pub removed: u64,
}

// ---------------------------------------------------------------------------
// Record layout
// ---------------------------------------------------------------------------

const W_ORIG_SRC: usize = 0;
const W_ORIG_DST: usize = 2;
const W_XLAT_SRC: usize = 4;
const W_XLAT_DST: usize = 6;
const W_PORTS: usize = 8;
const W_META: usize = 9;
/// `validated_gen`; while the record is free, the free-list link (next slot + 1).
const W_GEN: usize = 10;
const WORDS: usize = 11;
/// Words that identify a flow (addresses and ports).
const KEY_WORDS: usize = 9;

/// Record is a live flow (visible to lookups).
const F_LIVE: u8 = 1 << 0;
/// Record is being inserted: allocated, maybe indexed, not yet visible.
const F_PENDING: u8 = 1 << 1;
/// Confirmed (see [`Flow::assured`]).
const F_ASSURED: u8 = 1 << 2;
/// A reply-direction packet has been seen.
const F_REPLIED: u8 = 1 << 3;
/// FIN seen in the original direction.
const F_FIN_ORIG: u8 = 1 << 4;
/// FIN seen in the reply direction.
const F_FIN_REPLY: u8 = 1 << 5;
/// The original tuple is IPv6 (else IPv4, stored IPv4-mapped).
const F_ORIG_V6: u8 = 1 << 6;
/// The translated tuple is IPv6.
const F_XLAT_V6: u8 = 1 << 7;

/// Physical home of the logical words `w[0..11]`: the *hot* line (the
/// [`Record`]) holds the high halves of the four addresses, the ports, the
/// meta word and the generation; the *cold* half ([`Cold`], a parallel array)
/// holds the low halves of the addresses, which are zero for IPv4 (stored
/// IPv4-mapped). A lookup of an IPv4 flow therefore reads one cache line.
const H_PORTS: usize = 4;
const H_META: usize = 5;
const H_GEN: usize = 6;
const HOT_WORDS: usize = 7;

/// The hot line of one flow record (64 bytes, one cache line). See the
/// module docs for the word layout.
#[repr(C, align(64))]
pub(crate) struct Record {
    /// Seqlock counter: odd while a writer is inside. Guards the cold half
    /// too.
    seq: AtomicU32,
    /// Expiry in whole seconds of the caller's clock.
    expires: AtomicU32,
    /// `w[1], w[3], w[5], w[7], w[8], w[9], w[10]`.
    hot: [AtomicU64; HOT_WORDS],
}

impl Record {
    fn new() -> Record {
        Record {
            seq: AtomicU32::new(0),
            expires: AtomicU32::new(0),
            hot: Default::default(),
        }
    }
}

/// The cold half of a record: `w[0], w[2], w[4], w[6]` (the low 8 bytes of
/// each address). Only written and read when the record's meta word says a
/// tuple is IPv6; for an IPv4 record these words are logically zero and their
/// memory is never touched.
#[repr(C, align(32))]
#[derive(Default)]
pub(crate) struct Cold([AtomicU64; 4]);

/// Meta flags that say the cold half is in use.
const F_ANY_V6: u8 = F_ORIG_V6 | F_XLAT_V6;

/// Eight index entries, one cache line.
#[repr(C, align(64))]
#[derive(Default)]
pub(crate) struct Bucket([AtomicU64; 8]);

/// One free-list shard, on its own cache line.
#[repr(C, align(64))]
pub(crate) struct Shard {
    /// ABA counter << 32 | (top slot + 1); low half 0 = empty.
    head: AtomicU64,
    /// Slots popped from this shard minus slots pushed to it; the sum over
    /// shards is the number of allocated records.
    used: AtomicI64,
}

/// Rare-event counters, on their own cache line.
#[repr(C, align(64))]
#[derive(Default)]
struct Counters {
    insert_failures: AtomicU64,
    evictions: AtomicU64,
    reclaimed: AtomicU64,
    swept: AtomicU64,
    removed: AtomicU64,
}

/// An entry goes into its key's first bucket while that holds fewer than
/// this many entries (see "Probing"). Simulated at 2^17 buckets: 99.7% of the
/// keys land in their first bucket at load 0.25 (half the capacity in use)
/// and 95% at load 0.5 (full), with no insert finding both buckets full.
/// Always the first bucket unless full: 99.98% and 99.1%, but 0.03% of the
/// inserts into a full table find both full. Plain two-choice: 73% and 69%.
const PREFER_FIRST: usize = 6;

const FREE_SHARDS: usize = 8;
const STRIPES: usize = 1024;
/// Slots a full insert sweeps before giving up.
const MINI_SWEEP: usize = 32;

/// Name of the file in the state directory.
pub const FILE_NAME: &str = "conntrack";
/// Magic of the file (first 8 bytes).
pub const MAGIC: [u8; 8] = *b"EPCONNTR";
/// Version of the file layout: bump it whenever `Record`, `Cold`, `Bucket`,
/// `Shard`, the index entry, the meta word or the section list changes. A
/// file of another version is not attached (the table starts empty).
pub const LAYOUT_VERSION: u32 = 1;

/// A placeholder key (recovery's scratch array).
const NO_KEY: FlowKey = FlowKey {
    src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    sport: 0,
    dport: 0,
    proto: 0,
};

/// Index buckets of a table of `cap` flows (load <= 0.5).
fn bucket_count(cap: usize) -> usize {
    cap.div_ceil(2).max(2)
}

/// The file's sections: records, cold halves, index, stripes, free lists.
fn sections(cap: usize) -> Vec<SectionSpec> {
    vec![
        SectionSpec::of::<Record>(cap),
        SectionSpec::of::<Cold>(cap),
        SectionSpec::of::<Bucket>(bucket_count(cap)),
        SectionSpec::of::<AtomicU32>(STRIPES),
        SectionSpec::of::<Shard>(FREE_SHARDS),
    ]
}

/// Whether a live record's meta word is one this build writes.
fn meta_valid(meta: u64) -> bool {
    let (proto, state) = (meta as u8, (meta >> 8) as u8);
    if proto == PROTO_TCP {
        state <= TcpState::Close as u8
    } else {
        state == TcpState::None as u8
    }
}

/// The decoded `w[9]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    proto: u8,
    state: TcpState,
    flags: u8,
    worker: u8,
    frontend: u32,
}

impl Meta {
    #[inline]
    fn pack(self) -> u64 {
        self.proto as u64
            | (self.state as u64) << 8
            | (self.flags as u64) << 16
            | (self.worker as u64) << 24
            | (self.frontend as u64) << 32
    }
    #[inline]
    fn unpack(w: u64) -> Meta {
        Meta {
            proto: w as u8,
            state: TcpState::from_u8((w >> 8) as u8),
            flags: (w >> 16) as u8,
            worker: (w >> 24) as u8,
            frontend: (w >> 32) as u32,
        }
    }
    /// May be evicted for a new flow: unconfirmed, or a TCP flow that is over.
    #[inline]
    fn evictable(&self) -> bool {
        self.flags & F_ASSURED == 0
            || (self.proto == PROTO_TCP
                && matches!(self.state, TcpState::TimeWait | TcpState::Close))
    }
}

#[inline]
fn flags_of(meta_word: u64) -> u8 {
    (meta_word >> 16) as u8
}

/// A key in the form the index hashes and compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawKey {
    src: [u64; 2],
    dst: [u64; 2],
    /// sport | dport << 16
    ports: u32,
    proto: u8,
    v6: bool,
}

#[inline]
fn addr_words(ip: IpAddr) -> [u64; 2] {
    match ip {
        // IPv4-mapped (`addr16`): bytes 0..10 zero, 10..12 0xff, 12..16 the
        // address; read as two little-endian words.
        IpAddr::V4(a) => [
            0,
            0xffff_0000 | (u32::from_le_bytes(a.octets()) as u64) << 32,
        ],
        IpAddr::V6(_) => {
            let b = addr16(ip);
            let mut lo = [0u8; 8];
            let mut hi = [0u8; 8];
            lo.copy_from_slice(&b[..8]);
            hi.copy_from_slice(&b[8..]);
            [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
        }
    }
}

#[inline]
fn words_addr(w: [u64; 2], v6: bool) -> IpAddr {
    if !v6 && w[0] == 0 && w[1] as u32 == 0xffff_0000 {
        // IPv4-mapped: the IPv4 octets are bytes 12..16, the high half of w[1].
        return IpAddr::V4(Ipv4Addr::from(((w[1] >> 32) as u32).to_le_bytes()));
    }
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&w[0].to_le_bytes());
    b[8..].copy_from_slice(&w[1].to_le_bytes());
    IpAddr::V6(Ipv6Addr::from(b))
}

impl RawKey {
    #[inline]
    fn new(k: &FlowKey) -> RawKey {
        RawKey {
            src: addr_words(k.src),
            dst: addr_words(k.dst),
            ports: k.sport as u32 | (k.dport as u32) << 16,
            proto: k.proto,
            v6: k.src.is_ipv6(),
        }
    }

    /// The index hash: three independent multiply-folds (addresses, then
    /// ports and protocol) combined by a fourth, on the words as they are;
    /// local to this table (not the cross-node flow hash).
    #[inline]
    fn hash(&self, seed: u64) -> u64 {
        const P0: u64 = 0xa076_1d64_78bd_642f;
        const P1: u64 = 0xe703_7ed1_a0b4_28db;
        const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
        let a = mum(self.src[0] ^ seed ^ P0, self.src[1] ^ P1);
        let b = mum(self.dst[0] ^ seed ^ P1, self.dst[1] ^ P2);
        let rest = self.ports as u64 | (self.proto as u64) << 32 | (self.v6 as u64) << 40;
        mum(a ^ rest ^ P2, b ^ seed ^ P0)
    }
}

#[inline(always)]
fn mum(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// The key words (`w[0..9]`) and family flags of a flow.
fn key_words(f: &Flow) -> ([u64; KEY_WORDS], u8) {
    let mut w = [0u64; KEY_WORDS];
    w[W_ORIG_SRC..W_ORIG_SRC + 2].copy_from_slice(&addr_words(f.orig.src));
    w[W_ORIG_DST..W_ORIG_DST + 2].copy_from_slice(&addr_words(f.orig.dst));
    w[W_XLAT_SRC..W_XLAT_SRC + 2].copy_from_slice(&addr_words(f.xlat.src));
    w[W_XLAT_DST..W_XLAT_DST + 2].copy_from_slice(&addr_words(f.xlat.dst));
    w[W_PORTS] = f.orig.sport as u64
        | (f.orig.dport as u64) << 16
        | (f.xlat.sport as u64) << 32
        | (f.xlat.dport as u64) << 48;
    let mut fam = 0;
    if f.orig.src.is_ipv6() {
        fam |= F_ORIG_V6;
    }
    if f.xlat.src.is_ipv6() {
        fam |= F_XLAT_V6;
    }
    (w, fam)
}

/// A consistent copy of a record.
#[derive(Clone, Copy)]
struct Snap {
    seq: u32,
    exp: u32,
    w: [u64; WORDS],
}

impl Snap {
    #[inline]
    fn meta(&self) -> Meta {
        Meta::unpack(self.w[W_META])
    }
    #[inline]
    fn flags(&self) -> u8 {
        flags_of(self.w[W_META])
    }
    #[inline]
    fn live(&self) -> bool {
        self.flags() & F_LIVE != 0
    }
    #[inline]
    fn expired(&self, now_s: u64) -> bool {
        now_s >= self.exp as u64
    }
    #[inline]
    fn orig_key(&self) -> RawKey {
        RawKey {
            src: [self.w[W_ORIG_SRC], self.w[W_ORIG_SRC + 1]],
            dst: [self.w[W_ORIG_DST], self.w[W_ORIG_DST + 1]],
            ports: self.w[W_PORTS] as u32,
            proto: self.w[W_META] as u8,
            v6: self.flags() & F_ORIG_V6 != 0,
        }
    }
    #[inline]
    fn reply_key(&self) -> RawKey {
        let p = self.w[W_PORTS];
        let (xsport, xdport) = ((p >> 32) as u16, (p >> 48) as u16);
        RawKey {
            src: [self.w[W_XLAT_DST], self.w[W_XLAT_DST + 1]],
            dst: [self.w[W_XLAT_SRC], self.w[W_XLAT_SRC + 1]],
            ports: xdport as u32 | (xsport as u32) << 16,
            proto: self.w[W_META] as u8,
            v6: self.flags() & F_XLAT_V6 != 0,
        }
    }
    #[inline]
    fn key(&self, dir: Dir) -> RawKey {
        match dir {
            Dir::Original => self.orig_key(),
            Dir::Reply => self.reply_key(),
        }
    }
    #[inline]
    fn flow(&self) -> Flow {
        flow_of(&self.w, self.exp)
    }
    #[inline]
    fn hit(&self, slot: usize, dir: Dir) -> Hit {
        Hit {
            slot: slot as u32,
            dir,
            seq: self.seq,
            exp: self.exp,
            w: self.w,
        }
    }
}

/// Decodes a record's words.
fn flow_of(w: &[u64; WORDS], exp: u32) -> Flow {
    {
        let m = Meta::unpack(w[W_META]);
        let p = w[W_PORTS];
        let ov6 = m.flags & F_ORIG_V6 != 0;
        let xv6 = m.flags & F_XLAT_V6 != 0;
        let pair = |i: usize| [w[i], w[i + 1]];
        Flow {
            orig: FlowKey {
                src: words_addr(pair(W_ORIG_SRC), ov6),
                dst: words_addr(pair(W_ORIG_DST), ov6),
                sport: p as u16,
                dport: (p >> 16) as u16,
                proto: m.proto,
            },
            xlat: FlowKey {
                src: words_addr(pair(W_XLAT_SRC), xv6),
                dst: words_addr(pair(W_XLAT_DST), xv6),
                sport: (p >> 32) as u16,
                dport: (p >> 48) as u16,
                proto: m.proto,
            },
            frontend: m.frontend,
            state: m.state,
            assured: m.flags & F_ASSURED != 0,
            validated_gen: w[W_GEN],
            worker: m.worker,
            expires: exp as u64 * NS_PER_SEC,
        }
    }
}

/// Bit i set when entry i of `bucket` carries `tag`.
#[inline]
fn tag_mask(bucket: &[AtomicU64; 8], tag: u32) -> u32 {
    let mut m = 0u32;
    for (i, e) in bucket.iter().enumerate() {
        m |= (((e.load(Ordering::Acquire) >> 32) as u32 == tag) as u32) << i;
    }
    m
}

#[inline]
fn tag_of(h: u64) -> u32 {
    (h as u32) | 1
}

#[inline]
fn entry(tag: u32, slot: usize, dir: Dir) -> u64 {
    (tag as u64) << 32 | (slot as u64) << 1 | dir as u64
}

#[inline]
fn entry_slot(v: u64) -> usize {
    ((v as u32) >> 1) as usize
}

#[inline]
fn entry_dir(v: u64) -> Dir {
    if v & 1 == 0 {
        Dir::Original
    } else {
        Dir::Reply
    }
}

/// Expiry (whole seconds, rounded up) of a flow refreshed at `now` ns.
#[inline]
fn expiry(now: u64, timeout_s: u32) -> u32 {
    (now.div_ceil(NS_PER_SEC) + timeout_s as u64).min(u32::MAX as u64) as u32
}

/// Whether a refresh from `old` to `new` is worth a store (see "Time").
#[inline]
fn refresh_due(old: u32, new: u32, timeout_s: u32) -> bool {
    new > old && new - old >= (timeout_s >> 8).max(1)
}

#[inline]
fn backoff(spins: &mut u32) {
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    *spins = spins.saturating_add(1);
}

/// The TCP/UDP state machine: `m` after a packet with `tcp` flags travelling
/// in `dir`. Pure; expiry is derived from the result.
fn step(mut m: Meta, dir: Dir, tcp: u8) -> Meta {
    use tcp_flags::{ACK, FIN, RST, SYN};
    if dir == Dir::Reply {
        m.flags |= F_REPLIED;
    }
    if m.proto != PROTO_TCP {
        // UDP, SCTP, ICMP: confirmed by the first reply.
        if m.flags & F_REPLIED != 0 {
            m.flags |= F_ASSURED;
        }
        return m;
    }
    let (syn, ack, fin, rst) = (
        tcp & SYN != 0,
        tcp & ACK != 0,
        tcp & FIN != 0,
        tcp & RST != 0,
    );
    if rst {
        m.state = TcpState::Close;
        return m;
    }
    match dir {
        Dir::Original if syn && !ack => match m.state {
            // Port reuse: a new connection on the same tuple.
            TcpState::TimeWait | TcpState::Close => {
                m.state = TcpState::SynSent;
                m.flags &= !(F_ASSURED | F_REPLIED | F_FIN_ORIG | F_FIN_REPLY);
            }
            TcpState::None => m.state = TcpState::SynSent,
            _ => {} // retransmitted or stray SYN
        },
        Dir::Original if fin => {
            m.flags |= F_FIN_ORIG;
            m.state = closing(m);
        }
        Dir::Original => {
            if ack && m.state == TcpState::SynRecv {
                m.state = TcpState::Established;
                m.flags |= F_ASSURED;
            }
        }
        Dir::Reply if syn => {
            if m.state == TcpState::SynSent {
                m.state = TcpState::SynRecv;
            }
        }
        Dir::Reply if fin => {
            m.flags |= F_FIN_REPLY;
            m.state = closing(m);
        }
        Dir::Reply => {
            // A reply confirms a mid-stream pickup (no-op when assured).
            if m.state == TcpState::Established {
                m.flags |= F_ASSURED;
            }
        }
    }
    m
}

/// Whether [`step`] leaves `m` as it is for a packet with `tcp` flags
/// travelling in either direction, decided from a few bits: a confirmed flow whose reply
/// direction has been seen, and, for TCP, an established one and a segment
/// without SYN, FIN or RST. (`step` itself is the definition; `false` only
/// means "ask `step`".)
#[inline(always)]
fn steady(m: &Meta, tcp: u8) -> bool {
    use tcp_flags::{FIN, RST, SYN};
    let confirmed = m.flags & (F_ASSURED | F_REPLIED) == F_ASSURED | F_REPLIED;
    confirmed
        && (m.proto != PROTO_TCP
            || (m.state == TcpState::Established && tcp & (SYN | FIN | RST) == 0))
}

/// The state after a FIN (the FIN bit already set in `m.flags`).
fn closing(m: Meta) -> TcpState {
    match m.state {
        TcpState::SynRecv | TcpState::Established | TcpState::Closing => {
            if m.flags & (F_FIN_ORIG | F_FIN_REPLY) == F_FIN_ORIG | F_FIN_REPLY {
                TcpState::TimeWait
            } else {
                TcpState::Closing
            }
        }
        s => s,
    }
}

/// The state of a new flow whose first packet carried `tcp` flags.
fn initial(proto: u8, tcp: u8) -> (TcpState, u8) {
    use tcp_flags::{ACK, RST, SYN};
    if proto != PROTO_TCP {
        return (TcpState::None, 0);
    }
    if tcp & (SYN | ACK | RST) == SYN {
        return (TcpState::SynSent, 0);
    }
    // Mid-stream pickup (nf_conntrack's tcp_loose): established, unconfirmed;
    // a FIN or RST on the first packet still counts.
    let m = Meta {
        proto,
        state: TcpState::Established,
        flags: 0,
        worker: 0,
        frontend: 0,
    };
    let m = step(m, Dir::Original, tcp & !SYN);
    (m.state, m.flags)
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

/// The connection-tracking table. See the module docs.
pub struct Conntrack {
    /// One record per flow (its hot line); a flow's slot is its index here.
    records: Slab<Record>,
    /// The cold halves of the records, same index.
    cold: Slab<Cold>,
    /// The index over both keys of every record.
    buckets: Slab<Bucket>,
    /// Insert serialisation, striped by a key's first bucket. 0 = free.
    stripes: Slab<AtomicU32>,
    /// Free slots, sharded to spread contention; slot `s` is returned to shard
    /// `s % FREE_SHARDS`.
    free: Slab<Shard>,
    /// Where the next `sweep` starts.
    sweep_cursor: AtomicUsize,
    counters: Counters,
    /// Seed of the index hash.
    seed: u64,
    timeouts: Timeouts,
    /// The file the arrays live in (`None`: on the heap); holds the writer's
    /// lock.
    file: Option<SharedFile>,
}

impl Drop for Conntrack {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            f.mark_clean();
        }
    }
}

impl fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conntrack")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("stats", &self.stats())
            .finish()
    }
}

/// Holds one or two insert stripes; releases them on drop.
struct StripeGuard<'a> {
    stripes: &'a [AtomicU32],
    a: usize,
    b: usize,
    /// The (even) versions the stripes were taken from.
    va: u32,
    vb: u32,
}

impl StripeGuard<'_> {
    /// Whether stripe `i` (one of the held ones) was taken from version `v`,
    /// i.e. nobody held it since `v` was read.
    #[inline]
    fn taken_from(&self, i: usize, v: u32) -> bool {
        (i == self.a && self.va == v) || (i == self.b && self.vb == v)
    }
}

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        if self.b != self.a {
            self.stripes[self.b].store(self.vb.wrapping_add(2), Ordering::Release);
        }
        self.stripes[self.a].store(self.va.wrapping_add(2), Ordering::Release);
    }
}

impl Conntrack {
    /// Largest supported capacity (slots are 31-bit in index entries).
    pub const MAX_CAPACITY: usize = (u32::MAX >> 1) as usize;

    /// A table for `capacity_flows` flows (at least 1). `seed` keys the index
    /// hash (any value; a random one per process hardens against collisions
    /// chosen by clients).
    ///
    /// # Panics
    /// When `capacity_flows > Conntrack::MAX_CAPACITY`.
    pub fn new(capacity_flows: usize, seed: u64, timeouts: Timeouts) -> Conntrack {
        assert!(
            capacity_flows <= Self::MAX_CAPACITY,
            "conntrack capacity too large"
        );
        let cap = capacity_flows.max(1);
        let records: Box<[Record]> = (0..cap).map(|_| Record::new()).collect();
        let cold: Box<[Cold]> = (0..cap).map(|_| Cold::default()).collect();
        let buckets: Box<[Bucket]> = (0..bucket_count(cap)).map(|_| Bucket::default()).collect();
        let stripes: Box<[AtomicU32]> = (0..STRIPES).map(|_| AtomicU32::new(0)).collect();
        let free: Box<[Shard]> = (0..FREE_SHARDS)
            .map(|_| Shard {
                head: AtomicU64::new(0),
                used: AtomicI64::new(0),
            })
            .collect();
        let t = Conntrack {
            records: Slab::from_box(records),
            cold: Slab::from_box(cold),
            buckets: Slab::from_box(buckets),
            stripes: Slab::from_box(stripes),
            free: Slab::from_box(free),
            sweep_cursor: AtomicUsize::new(0),
            counters: Counters::default(),
            seed,
            timeouts,
            file: None,
        };
        t.init_free_lists();
        t
    }

    /// Every slot free: shard s holds s, s + FREE_SHARDS, ... in ascending
    /// order. Only on a table nobody else uses yet.
    fn init_free_lists(&self) {
        let mut heads = [0u64; FREE_SHARDS];
        for slot in (0..self.records.len()).rev() {
            let sh = slot % FREE_SHARDS;
            self.records[slot].hot[H_GEN].store(heads[sh], Ordering::Relaxed);
            heads[sh] = slot as u64 + 1;
        }
        for (sh, h) in self.free.iter().zip(heads) {
            sh.head.store(h, Ordering::Relaxed);
            sh.used.store(0, Ordering::Relaxed);
        }
    }

    /// The table kept in the file `dir/conntrack` (see "Shared memory"):
    /// re-attaches to the flows a previous dataplane left there when the file
    /// is compatible (same layout version, capacity and seed, same boot),
    /// after recovering what a crash may have left half-written; otherwise
    /// starts empty, replacing the file, and says why in the returned
    /// [`Attach`]. `now` is `CLOCK_MONOTONIC` ns ([`crate::shm::monotonic_ns`]):
    /// records already expired are freed.
    ///
    /// Errors: another process holds the file ([`ShmError::Busy`], naming
    /// it), or the directory or file cannot be used.
    pub fn open(
        dir: &Path,
        capacity_flows: usize,
        seed: u64,
        timeouts: Timeouts,
        now: u64,
    ) -> Result<(Conntrack, Attach), ShmError> {
        let cap = capacity_flows.clamp(1, Self::MAX_CAPACITY);
        let spec = Spec {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            capacity: cap as u64,
            seed,
            sections: sections(cap),
            params: timeouts.to_params(),
        };
        let (mut file, opened) = SharedFile::open_rw(dir, FILE_NAME, &spec)?;
        let path = file.path().to_path_buf();
        let mut t = Conntrack {
            records: file.section(0, cap)?,
            cold: file.section(1, cap)?,
            buckets: file.section(2, bucket_count(cap))?,
            stripes: file.section(3, STRIPES)?,
            free: file.section(4, FREE_SHARDS)?,
            sweep_cursor: AtomicUsize::new(0),
            counters: Counters::default(),
            seed,
            timeouts,
            file: None,
        };
        let attach = match opened {
            Opened::Attached {
                clean,
                previous_pid,
            } => Attach::Reattached {
                path,
                clean,
                previous_pid,
                repair: t.recover(now / NS_PER_SEC),
            },
            Opened::Created => {
                t.init_free_lists();
                file.commit(MAGIC)?;
                Attach::Created { path }
            }
            Opened::Replaced(reason) => {
                t.init_free_lists();
                file.commit(MAGIC)?;
                Attach::StartedEmpty { path, reason }
            }
        };
        t.file = Some(file);
        Ok((t, attach))
    }

    /// Whether the table lives in a file mapping.
    pub fn is_shared(&self) -> bool {
        self.file.is_some()
    }

    /// Recovery after attaching to a file whose previous owner may have died
    /// anywhere (see "Recovery"). Runs before any other thread uses the
    /// table; writes through the record locks all the same, so that a
    /// read-only inspector never sees a torn record.
    fn recover(&self, now_s: u64) -> Repair {
        let t0 = std::time::Instant::now();
        let mut rep = Repair::default();
        // 1. Spin flags: nobody holds them now.
        for s in self.stripes.iter() {
            // Versions: odd = held.
            if s.swap(0, Ordering::Relaxed) & 1 != 0 {
                rep.stripes_held += 1;
            }
        }
        // 2. The index is rebuilt from the records.
        for b in self.buckets.iter() {
            for e in &b.0 {
                e.store(0, Ordering::Relaxed);
            }
        }
        // 3. Records: release dead writers' locks, free what is not a live
        //    flow, rebuild the free lists (same order as a new table).
        let horizon = now_s + self.timeouts.longest() as u64 + 1;
        let mut heads = [0u64; FREE_SHARDS];
        let mut used = [0i64; FREE_SHARDS];
        for slot in (0..self.records.len()).rev() {
            let r = &self.records[slot];
            let s = r.seq.load(Ordering::Relaxed);
            if s & 1 != 0 {
                // A writer died inside. Key words are only written while the
                // record is PENDING or free, so a LIVE record's key is whole;
                // its meta and expiry are each one atomic word.
                r.seq.store(s.wrapping_add(1), Ordering::Release);
                rep.torn += 1;
            }
            let s = self.lock(slot);
            let meta = r.hot[H_META].load(Ordering::Relaxed);
            let flags = flags_of(meta);
            let exp = r.expires.load(Ordering::Relaxed);
            let keep = if flags & F_PENDING != 0 {
                rep.pending += 1;
                false
            } else if flags & F_LIVE == 0 {
                false
            } else if !meta_valid(meta) {
                rep.invalid += 1;
                false
            } else if now_s >= exp as u64 {
                rep.expired += 1;
                false
            } else {
                true
            };
            if keep {
                if exp as u64 > horizon {
                    r.expires.store(horizon as u32, Ordering::Relaxed);
                    rep.clamped += 1;
                }
                // Generations are per process: make the first packet
                // revalidate the backend against the new tables.
                r.hot[H_GEN].store(0, Ordering::Relaxed);
                used[slot % FREE_SHARDS] += 1;
            } else {
                let sh = slot % FREE_SHARDS;
                r.hot[H_META].store(0, Ordering::Relaxed);
                r.hot[H_GEN].store(heads[sh], Ordering::Relaxed);
                heads[sh] = slot as u64 + 1;
            }
            self.unlock(slot, s.wrapping_add(2));
        }
        for (i, sh) in self.free.iter().enumerate() {
            sh.head.store(heads[i], Ordering::Relaxed);
            sh.used.store(used[i], Ordering::Relaxed);
        }
        // 4. Index every kept record under both keys; a key already held by
        //    another record (only in a corrupt file) frees the later one.
        let drop_record = |slot: usize| {
            let s = self.lock(slot);
            self.records[slot].hot[H_META].store(0, Ordering::Relaxed);
            self.unlock(slot, s.wrapping_add(2));
            self.push(slot);
        };
        //    In groups: hash a group's keys and prefetch their buckets
        //    (random lines all over the index) before placing any, so that
        //    the misses overlap instead of coming one after another.
        const GROUP: usize = 16;
        let cap = self.records.len();
        let blank = RawKey::new(&NO_KEY);
        let mut group = [(0usize, blank, 0u64, blank, 0u64); GROUP];
        let mut next = 0;
        while next < cap {
            let mut k = 0;
            while k < GROUP && next < cap {
                let slot = next;
                next += 1;
                if flags_of(self.records[slot].hot[H_META].load(Ordering::Relaxed)) & F_LIVE == 0 {
                    continue;
                }
                let snap = self.read(slot);
                let (ok, rk) = (snap.orig_key(), snap.reply_key());
                let (oh, rh) = (ok.hash(self.seed), rk.hash(self.seed));
                for b in self.buckets_of(oh).into_iter().chain(self.buckets_of(rh)) {
                    prefetch(&self.buckets[b]);
                }
                group[k] = (slot, ok, oh, rk, rh);
                k += 1;
            }
            for &(slot, ok, oh, rk, rh) in &group[..k] {
                let two = rk != ok;
                if self.find(&ok, oh, now_s).is_some()
                    || (two && self.find(&rk, rh, now_s).is_some())
                {
                    rep.duplicates += 1;
                    drop_record(slot);
                    continue;
                }
                if !self.place(oh, slot, Dir::Original, now_s) {
                    rep.unplaced += 1;
                    drop_record(slot);
                    continue;
                }
                if two && !self.place(rh, slot, Dir::Reply, now_s) {
                    self.unplace(oh, slot, Dir::Original);
                    rep.unplaced += 1;
                    drop_record(slot);
                }
            }
        }
        rep.kept = self.len();
        rep.micros = t0.elapsed().as_micros() as u64;
        rep
    }

    /// The maximum number of flows.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.records.len()
    }

    /// Records in use: live flows, plus expired ones not yet reclaimed by
    /// [`sweep`](Self::sweep) or an insert, plus inserts in progress. Exact
    /// when no other thread is writing; otherwise a momentary approximation.
    pub fn len(&self) -> usize {
        let n: i64 = self
            .free
            .iter()
            .map(|s| s.used.load(Ordering::Relaxed))
            .sum();
        n.max(0) as usize
    }

    /// True when no record is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the table occupies (fixed at construction).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Conntrack>()
            + std::mem::size_of_val::<[Record]>(&self.records)
            + std::mem::size_of_val::<[Cold]>(&self.cold)
            + std::mem::size_of_val::<[Bucket]>(&self.buckets)
            + std::mem::size_of_val::<[AtomicU32]>(&self.stripes)
            + std::mem::size_of_val::<[Shard]>(&self.free)
    }

    /// The timeouts the table was built with.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The rare-event counters.
    pub fn stats(&self) -> ConntrackStats {
        let c = &self.counters;
        ConntrackStats {
            insert_failures: c.insert_failures.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            reclaimed: c.reclaimed.load(Ordering::Relaxed),
            swept: c.swept.load(Ordering::Relaxed),
            removed: c.removed.load(Ordering::Relaxed),
        }
    }

    /// Finds the live, unexpired flow that `key` belongs to, in either
    /// direction. Lock-free; one hash.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, now: u64) -> Option<Hit> {
        let k = RawKey::new(key);
        self.find(&k, k.hash(self.seed), now / NS_PER_SEC)
    }

    /// True when a live, unexpired flow holds `key` in either direction. Used
    /// to probe SNAT ports: a port is free when no flow holds its reply key.
    #[inline]
    pub fn contains_key(&self, key: &FlowKey, now: u64) -> bool {
        self.lookup(key, now).is_some()
    }

    /// Same as [`contains_key`](Self::contains_key) (named for SNAT probing).
    #[inline]
    pub fn contains_reply_key(&self, key: &FlowKey, now: u64) -> bool {
        self.contains_key(key, now)
    }

    /// Hashes `key` for [`lookup_probe`](Self::lookup_probe) and the
    /// prefetches (batch path; see [`Probe`]).
    #[inline]
    pub fn probe(&self, key: &FlowKey) -> Probe {
        let key = RawKey::new(key);
        Probe {
            key,
            h: key.hash(self.seed),
            cand: 0,
            cand_at: 0,
            clean1: false,
            ver: 0,
        }
    }

    /// Starts loading the index bucket a tracked key of `p` is found in
    /// (almost always its first one: see "Probing"). No wait, no effect on
    /// results.
    #[inline]
    pub fn prefetch_index(&self, p: &Probe) {
        prefetch(&self.buckets[self.buckets_of(p.h)[0]]);
    }

    /// Starts loading both index buckets of `p`: what a lookup that misses
    /// reads (new flows, free SNAT ports).
    #[inline]
    pub fn prefetch_buckets(&self, p: &Probe) {
        for b in self.buckets_of(p.h) {
            prefetch(&self.buckets[b]);
        }
    }

    /// Starts loading the records whose entries in the first bucket of `p`
    /// carry its tag (reads that bucket, so call it some time after
    /// [`prefetch_index`](Self::prefetch_index)). Returns whether any entry
    /// does; when none does, the key is (almost surely) not tracked, i.e. the
    /// packet probably starts a new flow, and the second bucket, which the
    /// lookup will then scan, is prefetched. A hint only. Remembers the first
    /// matching entry in `p`, which [`lookup_probe`](Self::lookup_probe)
    /// then checks before any scan.
    #[inline]
    pub fn prefetch_records(&self, p: &mut Probe) -> bool {
        let [b1, b2] = self.buckets_of(p.h);
        let bucket = &self.buckets[b1].0;
        let tag = tag_of(p.h);
        let mut m = tag_mask(bucket, tag);
        if m == 0 {
            // The stripe's version is read only here, on a miss, and the
            // bucket scanned again after it (see `Probe::clean1`): a tracked
            // packet never touches the stripes, whose lines the inserts of a
            // flood keep writing on other cores.
            let ver = self.stripes[b1 % STRIPES].load(Ordering::Acquire);
            m = tag_mask(bucket, tag);
            if m == 0 {
                p.clean1 = ver & 1 == 0;
                p.ver = ver;
                prefetch(&self.buckets[b2]);
                return false;
            }
        }
        let at = m.trailing_zeros() as usize;
        p.cand = bucket[at].load(Ordering::Relaxed);
        p.cand_at = at as u8;
        while m != 0 {
            let v = bucket[m.trailing_zeros() as usize].load(Ordering::Relaxed);
            m &= m - 1;
            self.prefetch_record(entry_slot(v), p.key.v6);
        }
        true
    }

    /// Starts loading the hot line of the record in `slot` and, for an IPv6
    /// key, its cold half.
    #[inline]
    fn prefetch_record(&self, slot: usize, v6: bool) {
        if let Some(r) = self.records.get(slot) {
            prefetch(r);
        }
        if v6 {
            if let Some(c) = self.cold.get(slot) {
                prefetch(c);
            }
        }
    }

    /// [`lookup`](Self::lookup) of a key hashed by [`probe`](Self::probe).
    ///
    /// When [`prefetch_records`](Self::prefetch_records) remembered a
    /// candidate entry and that entry is still in place and names a live,
    /// unexpired record holding the key, that record is the answer without
    /// a scan: a key names at most one live record (inserts check it under
    /// the key's stripe and reclaim expired holders first), so a scan would
    /// return the same one. Anything else scans as `lookup` does.
    #[inline(always)]
    pub fn lookup_probe(&self, p: &Probe, now: u64) -> Option<Hit> {
        let now_s = now / NS_PER_SEC;
        if let Some(hit) = self.find_remembered(p, now_s) {
            return Some(hit);
        }
        self.find(&p.key, p.h, now_s)
    }

    /// The record of the entry `prefetch_records` remembered in `p`, if the
    /// entry is still in place and the record is live, unexpired and holds
    /// the key (see [`lookup_probe`](Self::lookup_probe)).
    #[inline(always)]
    fn find_remembered(&self, p: &Probe, now_s: u64) -> Option<Hit> {
        if p.cand == 0 {
            return None;
        }
        let b1 = self.buckets_of(p.h)[0];
        let v = self.buckets[b1].0[p.cand_at as usize & 7].load(Ordering::Acquire);
        if v != p.cand {
            return None;
        }
        let (slot, dir) = (entry_slot(v), entry_dir(v));
        if slot >= self.records.len() {
            return None;
        }
        let snap = self.read_inlined(slot);
        (snap.live() && snap.key(dir) == p.key && !snap.expired(now_s)).then(|| snap.hit(slot, dir))
    }

    /// [`lookup_probe`](Self::lookup_probe), and on a miss what the insert
    /// of the same key can use ([`insert_after_miss`](Self::insert_after_miss)).
    #[inline(always)]
    pub fn lookup_or_miss(&self, p: &Probe, now: u64) -> Result<Hit, Miss> {
        let now_s = now / NS_PER_SEC;
        if let Some(hit) = self.find_remembered(p, now_s) {
            return Ok(hit);
        }
        self.find_or_miss(p, now_s)
    }

    /// The scan of [`lookup_or_miss`](Self::lookup_or_miss).
    #[inline(never)]
    fn find_or_miss(&self, p: &Probe, now_s: u64) -> Result<Hit, Miss> {
        // Before the scan (see "Concurrency protocol").
        let [b1, b2] = self.buckets_of(p.h);
        let ver = self.stripes[b1 % STRIPES].load(Ordering::Acquire);
        let found = if p.clean1 && ver == p.ver {
            // Nobody took the key's stripe since `prefetch_records` found no
            // entry with its tag in the first bucket: none holds the key
            // there now either (entries for a key are only added under its
            // stripe), so only the second bucket can.
            self.scan_bucket(&p.key, tag_of(p.h), b2, now_s)
        } else {
            self.find_seen(&p.key, p.h, now_s)
        };
        match found {
            (Some(hit), _) => Ok(hit),
            (None, seen) => Err(Miss {
                probe: *p,
                clean_at: (!seen && ver & 1 == 0).then_some(ver),
            }),
        }
    }

    /// Tracks a new flow. `flow.orig`, `xlat`, `frontend`, `worker` and
    /// `validated_gen` are stored; the state, `assured` and the expiry follow
    /// from the protocol and `first_tcp_flags` (the flags of the packet that
    /// creates the flow: a SYN opens SYN_SENT, anything else is a mid-stream
    /// pickup in ESTABLISHED, unconfirmed). Returns the new record as a `Hit`
    /// in the original direction.
    pub fn insert(&self, flow: Flow, now: u64, first_tcp_flags: u8) -> Result<Hit, InsertError> {
        self.insert_after_miss(flow, now, first_tcp_flags, None, None)
    }

    /// [`insert`](Self::insert) of a flow whose original key (`orig`) and
    /// reply key (`reply`) were just looked up and missed: same result, but
    /// the keys are not hashed again, and a key whose stripe nobody took
    /// since its clean miss is not checked again under the stripe (see
    /// "Concurrency protocol"). A `Miss` of another key is ignored.
    pub fn insert_after_miss(
        &self,
        flow: Flow,
        now: u64,
        first_tcp_flags: u8,
        orig: Option<&Miss>,
        reply: Option<&Miss>,
    ) -> Result<Hit, InsertError> {
        let now_s = now / NS_PER_SEC;
        let proto = flow.orig.proto;
        let okey = RawKey::new(&flow.orig);
        let rkey = RawKey::new(&flow.reply_key());
        let orig = orig.filter(|m| m.probe.key == okey);
        let reply = reply.filter(|m| m.probe.key == rkey);
        let oh = orig.map_or_else(|| okey.hash(self.seed), |m| m.probe.h);
        let rh = reply.map_or_else(|| rkey.hash(self.seed), |m| m.probe.h);
        let index_reply = rkey != okey;

        // 1.-2. A slot. From the free list when it has one: then a key that
        //    is already tracked is found by the checks under the stripes
        //    (step 5) and the slot goes straight back, with the same result
        //    and no second pair of lookups on the common path. Without a free
        //    slot, eviction would free a record for nothing if a key were
        //    tracked, so check first (lock-free; the common race: another
        //    worker got here first), then take an expired or evictable record
        //    from the window, else run a small sweep.
        let slot = match self.pop(flow.worker) {
            Some(slot) => slot,
            None => {
                if let Some(hit) = self.find(&okey, oh, now_s) {
                    return Err(InsertError::Exists(hit));
                }
                if let Some(hit) = self.find(&rkey, rh, now_s) {
                    // The same flow may have been published between the two finds.
                    return Err(match self.find(&okey, oh, now_s) {
                        Some(same) => InsertError::Exists(same),
                        None => InsertError::ReplyTaken(hit),
                    });
                }
                let Some(slot) = self.alloc(flow.worker, [oh, rh], now_s) else {
                    self.counters
                        .insert_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(InsertError::Full);
                };
                slot
            }
        };

        // 3. Write the record, PENDING (invisible to lookups, skipped by eviction).
        let (state, st_flags) = initial(proto, first_tcp_flags);
        let (kw, fam) = key_words(&flow);
        let mut meta = Meta {
            proto,
            state,
            flags: st_flags | fam | F_PENDING,
            worker: flow.worker,
            frontend: flow.frontend,
        };
        let exp = expiry(now, self.timeout_secs(&meta));
        {
            let r = &self.records[slot];
            let s = self.lock(slot);
            self.store_key_words(slot, &kw, fam);
            r.hot[H_META].store(meta.pack(), Ordering::Relaxed);
            r.hot[H_GEN].store(flow.validated_gen, Ordering::Relaxed);
            r.expires.store(exp, Ordering::Relaxed);
            self.unlock(slot, s.wrapping_add(2));
        }

        // 4. Serialise with other inserts of either key.
        let guard = self.lock_stripes(oh, rh);

        // 5. Neither key may be live (expired holders are reclaimed). A key
        //    whose clean miss is still current has no entry at all.
        let unchanged = |m: Option<&Miss>, h: u64| {
            m.and_then(|m| m.clean_at)
                .is_some_and(|v| guard.taken_from(self.stripe_of(h), v))
        };
        if !unchanged(orig, oh) {
            if let Some(hit) = self.find_reclaim(&okey, oh, now_s) {
                self.release_pending(slot);
                return Err(InsertError::Exists(hit));
            }
        }
        if index_reply && !unchanged(reply, rh) {
            if let Some(hit) = self.find_reclaim(&rkey, rh, now_s) {
                self.release_pending(slot);
                return Err(InsertError::ReplyTaken(hit));
            }
        }

        // 6. Index both keys (under their stripes: the version check of
        // `insert_after_miss` relies on it).
        debug_assert!(self.stripe_held(oh) && (!index_reply || self.stripe_held(rh)));
        if !self.place(oh, slot, Dir::Original, now_s) {
            self.release_pending(slot);
            self.counters
                .insert_failures
                .fetch_add(1, Ordering::Relaxed);
            return Err(InsertError::Full);
        }
        if index_reply && !self.place(rh, slot, Dir::Reply, now_s) {
            self.unplace(oh, slot, Dir::Original);
            self.release_pending(slot);
            self.counters
                .insert_failures
                .fetch_add(1, Ordering::Relaxed);
            return Err(InsertError::Full);
        }

        // 7. Publish.
        meta.flags = (meta.flags & !F_PENDING) | F_LIVE;
        let r = &self.records[slot];
        let s = self.lock(slot);
        r.hot[H_META].store(meta.pack(), Ordering::Relaxed);
        let seq = s.wrapping_add(2);
        self.unlock(slot, seq);

        let mut w = [0u64; WORDS];
        w[..KEY_WORDS].copy_from_slice(&kw);
        w[W_META] = meta.pack();
        w[W_GEN] = flow.validated_gen;
        Ok(Snap { seq, exp, w }.hit(slot, Dir::Original))
    }

    /// Advances the flow of `hit` for a packet travelling in `hit.dir` with
    /// `tcp_flags` (0 for non-TCP): TCP state, confirmation on a reply, expiry.
    /// Uses `hit.slot` directly (no hashing). Returns the new TCP state, or
    /// `None` when the flow was removed or replaced since `hit` was read (treat
    /// like a lookup miss). Stores nothing when nothing changes but the expiry
    /// by less than a second or 1/256 of the timeout.
    #[inline]
    pub fn update(&self, hit: &Hit, now: u64, tcp_flags: u8) -> Option<TcpState> {
        let slot = hit.slot as usize;
        let r = self.records.get(slot)?;
        let old = Meta::unpack(hit.w[W_META]);
        let old_exp = hit.exp;
        // Most packets of a flow change nothing but (maybe) the expiry.
        let new = if steady(&old, tcp_flags) {
            old
        } else {
            step(old, hit.dir, tcp_flags)
        };
        let t = self.timeout_secs(&new);
        let exp = expiry(now, t);
        if new == old && !refresh_due(old_exp, exp, t) {
            return Some(new.state);
        }
        self.update_slow(r, slot, hit, now, tcp_flags)
    }

    #[cold]
    fn update_slow(
        &self,
        r: &Record,
        slot: usize,
        hit: &Hit,
        now: u64,
        tcp_flags: u8,
    ) -> Option<TcpState> {
        let s = self.lock(slot);
        if s != hit.seq && !self.same_flow_locked(slot, hit) {
            self.unlock(slot, s);
            return None;
        }
        let cur = Meta::unpack(r.hot[H_META].load(Ordering::Relaxed));
        let cur_exp = r.expires.load(Ordering::Relaxed);
        let new = step(cur, hit.dir, tcp_flags);
        let t = self.timeout_secs(&new);
        let exp = expiry(now, t);
        let mut changed = false;
        if new != cur {
            r.hot[H_META].store(new.pack(), Ordering::Relaxed);
            changed = true;
        }
        // A state change may shorten the timeout (RST), so store any new value then.
        if (changed && exp != cur_exp) || refresh_due(cur_exp, exp, t) {
            r.expires.store(exp, Ordering::Relaxed);
            changed = true;
        }
        self.unlock(slot, if changed { s.wrapping_add(2) } else { s });
        Some(new.state)
    }

    /// Records that the flow of `hit` was found valid against table generation
    /// `gen`. Returns false when the flow is gone (the slot is not touched).
    pub fn set_validated(&self, hit: &Hit, gen: u64) -> bool {
        let slot = hit.slot as usize;
        let Some(r) = self.records.get(slot) else {
            return false;
        };
        let s = self.lock(slot);
        if s != hit.seq && !self.same_flow_locked(slot, hit) {
            self.unlock(slot, s);
            return false;
        }
        r.hot[H_GEN].store(gen, Ordering::Relaxed);
        self.unlock(slot, s.wrapping_add(2));
        true
    }

    /// Like [`set_validated`](Self::set_validated), and also stores the
    /// flow's frontend index in generation `gen` (frontend indices are only
    /// meaningful within one generation: with `validated_gen == gen`,
    /// [`Flow::frontend`] is valid for that generation's tables). Returns false
    /// when the flow is gone (the slot is not touched).
    pub fn revalidate(&self, hit: &Hit, gen: u64, frontend: u32) -> bool {
        let slot = hit.slot as usize;
        let Some(r) = self.records.get(slot) else {
            return false;
        };
        let s = self.lock(slot);
        if s != hit.seq && !self.same_flow_locked(slot, hit) {
            self.unlock(slot, s);
            return false;
        }
        let meta = r.hot[H_META].load(Ordering::Relaxed);
        r.hot[H_META].store(
            (meta & 0xffff_ffff) | (frontend as u64) << 32,
            Ordering::Relaxed,
        );
        r.hot[H_GEN].store(gen, Ordering::Relaxed);
        self.unlock(slot, s.wrapping_add(2));
        true
    }

    /// Deletes the flow of `hit` at once (both keys). Returns false when it was
    /// already gone or replaced (then nothing is touched).
    pub fn remove(&self, hit: &Hit) -> bool {
        let slot = hit.slot as usize;
        if slot >= self.records.len() {
            return false;
        }
        let s = self.lock(slot);
        if s != hit.seq && !self.same_flow_locked(slot, hit) {
            self.unlock(slot, s);
            return false;
        }
        let snap = self.copy_locked(slot, s);
        self.free_locked(slot, &snap);
        self.push(slot);
        self.counters.removed.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Evicts the flow of `hit` for a new one, if it is still exactly as read
    /// (same sequence number) and evictable; counted under `evictions`.
    /// Returns whether it was freed. Used by SNAT port allocation: a port held
    /// by a half-open flow is taken back as the flow's table slot would be.
    pub fn evict(&self, hit: &Hit) -> bool {
        let slot = hit.slot as usize;
        if slot >= self.records.len() || !hit.evictable() {
            return false;
        }
        let snap = Snap {
            seq: hit.seq,
            exp: hit.exp,
            w: hit.w,
        };
        if !self.try_free(slot, &snap) {
            return false;
        }
        self.push(slot);
        self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Looks `key` up and removes its flow. Returns whether one was removed.
    pub fn remove_key(&self, key: &FlowKey, now: u64) -> bool {
        match self.lookup(key, now) {
            Some(hit) => self.remove(&hit),
            None => false,
        }
    }

    /// Walks up to `budget` slots from a shared cursor and frees the expired
    /// records among them (their keys and SNAT ports become free). Returns how
    /// many it freed. Concurrent sweepers walk disjoint ranges; a `budget` of
    /// `capacity()` covers the whole table once.
    pub fn sweep(&self, now: u64, budget: usize) -> usize {
        let freed = self.sweep_secs(now / NS_PER_SEC, budget);
        if freed > 0 {
            self.counters
                .swept
                .fetch_add(freed as u64, Ordering::Relaxed);
        }
        freed
    }

    /// Like `for_each`, but gives up on a record whose lock stays held (a
    /// writer that died inside, seen from a read-only view) after `spins`
    /// attempts. Returns how many records were skipped so.
    fn for_each_bounded(&self, now: u64, spins: u32, mut f: impl FnMut(&Flow)) -> usize {
        let now_s = now / NS_PER_SEC;
        let mut skipped = 0;
        for (slot, r) in self.records.iter().enumerate() {
            if flags_of(r.hot[H_META].load(Ordering::Relaxed)) & F_LIVE == 0 {
                continue;
            }
            match self.try_read(slot, spins) {
                Some(snap) if snap.live() && !snap.expired(now_s) => f(&snap.flow()),
                Some(_) => {}
                None => skipped += 1,
            }
        }
        skipped
    }

    /// Calls `f` with a consistent copy of every live, unexpired flow. Flows
    /// inserted or removed during the walk may or may not be seen.
    pub fn for_each(&self, now: u64, mut f: impl FnMut(&Flow)) {
        let now_s = now / NS_PER_SEC;
        for (slot, r) in self.records.iter().enumerate() {
            if flags_of(r.hot[H_META].load(Ordering::Relaxed)) & F_LIVE == 0 {
                continue;
            }
            let snap = self.read(slot);
            if snap.live() && !snap.expired(now_s) {
                f(&snap.flow());
            }
        }
    }

    // -- internals ----------------------------------------------------------

    fn timeout_secs(&self, m: &Meta) -> u32 {
        let t = &self.timeouts;
        let assured = m.flags & F_ASSURED != 0;
        match m.proto {
            PROTO_TCP => match m.state {
                TcpState::SynSent => t.tcp_syn_sent,
                TcpState::SynRecv => t.tcp_syn_recv,
                TcpState::Established if assured => t.tcp_established,
                TcpState::Established | TcpState::None => t.tcp_unacknowledged,
                TcpState::Closing => t.tcp_closing,
                TcpState::TimeWait => t.tcp_time_wait,
                TcpState::Close => t.tcp_close,
            },
            PROTO_UDP if assured => t.udp_stream,
            PROTO_UDP => t.udp,
            PROTO_SCTP if assured => t.sctp_established,
            PROTO_SCTP => t.sctp,
            PROTO_ICMP | PROTO_ICMPV6 => t.icmp,
            _ => t.generic,
        }
    }

    /// The two buckets of a hash.
    #[inline]
    fn buckets_of(&self, h: u64) -> [usize; 2] {
        let n = self.buckets.len() as u64;
        let b1 = (((h >> 32) * n) >> 32) as usize;
        let h2 = h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        let mut b2 = ((h2 * n) >> 32) as usize;
        if b2 == b1 {
            b2 = (b1 + 1) % n as usize;
        }
        [b1, b2]
    }

    /// Seqlock read that gives up after `spins` failed attempts.
    fn try_read(&self, slot: usize, spins: u32) -> Option<Snap> {
        let r = &self.records[slot];
        let mut n = 0;
        while n < spins {
            let s1 = r.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let exp = r.expires.load(Ordering::Relaxed);
                let w = self.load_words(slot);
                fence(Ordering::Acquire);
                if r.seq.load(Ordering::Relaxed) == s1 {
                    return Some(Snap { seq: s1, exp, w });
                }
            }
            backoff(&mut n);
        }
        None
    }

    /// Seqlock read of a record (see the module docs).
    #[inline]
    fn read(&self, slot: usize) -> Snap {
        self.read_inlined(slot)
    }

    /// [`read`](Self::read), always inlined: for the one call on the
    /// established-flow path (`lookup_probe`'s remembered entry).
    #[inline(always)]
    fn read_inlined(&self, slot: usize) -> Snap {
        let r = &self.records[slot];
        let mut spins = 0;
        loop {
            let s1 = r.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let exp = r.expires.load(Ordering::Relaxed);
                let w = self.load_words(slot);
                fence(Ordering::Acquire);
                if r.seq.load(Ordering::Relaxed) == s1 {
                    return Snap { seq: s1, exp, w };
                }
            }
            backoff(&mut spins);
        }
    }

    /// The logical words of the record in `slot` (relaxed loads; the caller
    /// validates with the seqlock or holds the lock). The cold half is read
    /// only when the meta word says a tuple is IPv6; otherwise its words are
    /// zero, as IPv4-mapped addresses have them.
    #[inline]
    fn load_words(&self, slot: usize) -> [u64; WORDS] {
        let h = &self.records[slot].hot;
        let mut w = [0u64; WORDS];
        w[W_ORIG_SRC + 1] = h[0].load(Ordering::Relaxed);
        w[W_ORIG_DST + 1] = h[1].load(Ordering::Relaxed);
        w[W_XLAT_SRC + 1] = h[2].load(Ordering::Relaxed);
        w[W_XLAT_DST + 1] = h[3].load(Ordering::Relaxed);
        w[W_PORTS] = h[H_PORTS].load(Ordering::Relaxed);
        w[W_META] = h[H_META].load(Ordering::Relaxed);
        w[W_GEN] = h[H_GEN].load(Ordering::Relaxed);
        if flags_of(w[W_META]) & F_ANY_V6 != 0 {
            let c = &self.cold[slot].0;
            w[W_ORIG_SRC] = c[0].load(Ordering::Relaxed);
            w[W_ORIG_DST] = c[1].load(Ordering::Relaxed);
            w[W_XLAT_SRC] = c[2].load(Ordering::Relaxed);
            w[W_XLAT_DST] = c[3].load(Ordering::Relaxed);
        }
        w
    }

    /// Under the record lock: stores the key words of a flow whose family
    /// flags are `fam` (the cold half only when a tuple is IPv6).
    fn store_key_words(&self, slot: usize, kw: &[u64; KEY_WORDS], fam: u8) {
        let h = &self.records[slot].hot;
        h[0].store(kw[W_ORIG_SRC + 1], Ordering::Relaxed);
        h[1].store(kw[W_ORIG_DST + 1], Ordering::Relaxed);
        h[2].store(kw[W_XLAT_SRC + 1], Ordering::Relaxed);
        h[3].store(kw[W_XLAT_DST + 1], Ordering::Relaxed);
        h[H_PORTS].store(kw[W_PORTS], Ordering::Relaxed);
        if fam & F_ANY_V6 != 0 {
            let c = &self.cold[slot].0;
            c[0].store(kw[W_ORIG_SRC], Ordering::Relaxed);
            c[1].store(kw[W_ORIG_DST], Ordering::Relaxed);
            c[2].store(kw[W_XLAT_SRC], Ordering::Relaxed);
            c[3].store(kw[W_XLAT_DST], Ordering::Relaxed);
        }
    }

    /// Takes a record's write lock; returns the (even) sequence it had.
    #[inline]
    fn lock(&self, slot: usize) -> u32 {
        let r = &self.records[slot];
        let mut spins = 0;
        loop {
            let s = r.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && r.seq
                    .compare_exchange_weak(s, s | 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                fence(Ordering::Release);
                return s;
            }
            backoff(&mut spins);
        }
    }

    /// Takes a record's write lock only if it is still at sequence `s`.
    #[inline]
    fn try_lock_at(&self, slot: usize, s: u32) -> bool {
        let ok = self.records[slot]
            .seq
            .compare_exchange(s, s | 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if ok {
            fence(Ordering::Release);
        }
        ok
    }

    /// Releases a record's write lock with sequence `s` (the locked value + 1
    /// when something was written, the value before locking otherwise).
    #[inline]
    fn unlock(&self, slot: usize, s: u32) {
        self.records[slot].seq.store(s, Ordering::Release);
    }

    /// Under the record lock: does `slot` still hold the live flow of `hit`?
    fn same_flow_locked(&self, slot: usize, hit: &Hit) -> bool {
        let cur = self.load_words(slot);
        let (m, old) = (Meta::unpack(cur[W_META]), Meta::unpack(hit.w[W_META]));
        m.flags & F_LIVE != 0
            && m.proto == old.proto
            && m.flags & F_ANY_V6 == old.flags & F_ANY_V6
            && cur[..KEY_WORDS] == hit.w[..KEY_WORDS]
    }

    /// Under the record lock (taken at even `s`): the record's contents.
    fn copy_locked(&self, slot: usize, s: u32) -> Snap {
        let r = &self.records[slot];
        Snap {
            seq: s,
            exp: r.expires.load(Ordering::Relaxed),
            w: self.load_words(slot),
        }
    }

    /// Under the record lock (taken at `snap.seq`): un-index and free the
    /// record, then release the lock. The caller pushes the slot or reuses it.
    fn free_locked(&self, slot: usize, snap: &Snap) {
        let ok = snap.orig_key();
        let rk = snap.reply_key();
        self.unplace(ok.hash(self.seed), slot, Dir::Original);
        if rk != ok {
            self.unplace(rk.hash(self.seed), slot, Dir::Reply);
        }
        self.records[slot].hot[H_META].store(0, Ordering::Relaxed);
        self.unlock(slot, snap.seq.wrapping_add(2));
    }

    /// Frees the record if it is still exactly `snap`.
    fn try_free(&self, slot: usize, snap: &Snap) -> bool {
        if !self.try_lock_at(slot, snap.seq) {
            return false;
        }
        self.free_locked(slot, snap);
        true
    }

    /// Returns an unpublished (PENDING) record to the free list.
    fn release_pending(&self, slot: usize) {
        let s = self.lock(slot);
        self.records[slot].hot[H_META].store(0, Ordering::Relaxed);
        self.unlock(slot, s.wrapping_add(2));
        self.push(slot);
    }

    /// Lock-free lookup by raw key.
    #[inline]
    fn find(&self, key: &RawKey, h: u64, now_s: u64) -> Option<Hit> {
        self.find_seen(key, h, now_s).0
    }

    /// [`find`](Self::find), and whether any entry of the two buckets
    /// carried the key's tag.
    #[inline(never)]
    fn find_seen(&self, key: &RawKey, h: u64, now_s: u64) -> (Option<Hit>, bool) {
        let tag = tag_of(h);
        let mut seen = false;
        for b in self.buckets_of(h) {
            let (hit, s) = self.scan_bucket(key, tag, b, now_s);
            if hit.is_some() {
                return (hit, true);
            }
            seen |= s;
        }
        (None, seen)
    }

    /// The live, unexpired record bucket `b` names for `key` (tag `tag`), and
    /// whether any entry of the bucket carried the tag.
    #[inline(always)]
    fn scan_bucket(&self, key: &RawKey, tag: u32, b: usize, now_s: u64) -> (Option<Hit>, bool) {
        let bucket = &self.buckets[b].0;
        // Branch-free tag match over the line; usually one bit or none.
        let mut m = tag_mask(bucket, tag);
        let seen = m != 0;
        while m != 0 {
            let v = bucket[m.trailing_zeros() as usize].load(Ordering::Acquire);
            m &= m - 1;
            if (v >> 32) as u32 != tag {
                continue; // changed since the scan
            }
            let (slot, dir) = (entry_slot(v), entry_dir(v));
            let snap = self.read(slot);
            if snap.live() && snap.key(dir) == *key && !snap.expired(now_s) {
                return (Some(snap.hit(slot, dir)), true);
            }
        }
        (None, seen)
    }

    /// Like `find`, but frees expired records holding `key` (insert, under the
    /// key's stripe).
    fn find_reclaim(&self, key: &RawKey, h: u64, now_s: u64) -> Option<Hit> {
        let tag = tag_of(h);
        for b in self.buckets_of(h) {
            let bucket = &self.buckets[b].0;
            let mut m = tag_mask(bucket, tag);
            while m != 0 {
                let v = bucket[m.trailing_zeros() as usize].load(Ordering::Acquire);
                m &= m - 1;
                if (v >> 32) as u32 != tag {
                    continue;
                }
                let (slot, dir) = (entry_slot(v), entry_dir(v));
                loop {
                    let snap = self.read(slot);
                    if !snap.live() || snap.key(dir) != *key {
                        break;
                    }
                    if !snap.expired(now_s) {
                        return Some(snap.hit(slot, dir));
                    }
                    if self.try_free(slot, &snap) {
                        self.push(slot);
                        self.counters.reclaimed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    // Changed under us (refreshed?): judge it again.
                }
            }
        }
        None
    }

    /// Adds the index entry of (`slot`, `dir`) for hash `h`; frees an expired
    /// or evictable record from the two buckets when both are full.
    /// Whether the insert stripe of the key hashed `h` is held (odd).
    fn stripe_held(&self, h: u64) -> bool {
        self.stripes[self.buckets_of(h)[0] % STRIPES].load(Ordering::Relaxed) & 1 == 1
    }

    fn place(&self, h: u64, slot: usize, dir: Dir, now_s: u64) -> bool {
        let v = entry(tag_of(h), slot, dir);
        let [b1, b2] = self.buckets_of(h);
        // The common case in one pass over the first bucket: it has room to
        // spare (the rule below picks it first), so take its first free entry.
        {
            let bucket = &self.buckets[b1].0;
            // Bit i set when entry i is in use (branch-free, like `tag_mask`).
            let mut occ = 0u32;
            for (i, e) in bucket.iter().enumerate() {
                occ |= ((e.load(Ordering::Relaxed) != 0) as u32) << i;
            }
            // Fewer than PREFER_FIRST (6) of 8 in use: at least 3 free
            // (three lowest-bit clears leave a bit; no popcnt needed).
            const _: () = assert!(PREFER_FIRST == 6);
            let free = !occ & 0xff;
            let f2 = free & free.wrapping_sub(1);
            if f2 & f2.wrapping_sub(1) != 0 {
                let i = free.trailing_zeros() as usize;
                if bucket[i & 7]
                    .compare_exchange(0, v, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
                {
                    return true;
                }
            }
        }
        for _ in 0..4 {
            let used = |b: usize| {
                self.buckets[b]
                    .0
                    .iter()
                    .filter(|e| e.load(Ordering::Relaxed) != 0)
                    .count()
            };
            // The first bucket while it has room to spare, so that lookups of
            // tracked keys almost always read a single index line; past that,
            // the less occupied one (ties: the first), which keeps both-full
            // buckets as rare as plain two-choice hashing does.
            let u1 = used(b1);
            let order = if u1 < PREFER_FIRST || u1 <= used(b2) {
                [b1, b2]
            } else {
                [b2, b1]
            };
            for b in order {
                for e in &self.buckets[b].0 {
                    if e.load(Ordering::Relaxed) == 0
                        && e.compare_exchange(0, v, Ordering::Release, Ordering::Relaxed)
                            .is_ok()
                    {
                        return true;
                    }
                }
            }
            match self.evict_from(&[b1, b2], now_s, slot) {
                Some(victim) => self.push(victim),
                None => return false,
            }
        }
        false
    }

    /// Removes the index entry of (`slot`, `dir`) for hash `h`, if present.
    fn unplace(&self, h: u64, slot: usize, dir: Dir) {
        let v = entry(tag_of(h), slot, dir);
        for b in self.buckets_of(h) {
            for e in &self.buckets[b].0 {
                if e.load(Ordering::Relaxed) == v {
                    let _ = e.compare_exchange(v, 0, Ordering::Release, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// A slot for a new record, owned by the caller.
    fn alloc(&self, worker: u8, hashes: [u64; 2], now_s: u64) -> Option<usize> {
        let [o1, o2] = self.buckets_of(hashes[0]);
        let [r1, r2] = self.buckets_of(hashes[1]);
        let window = [o1, o2, r1, r2];
        for _ in 0..4 {
            if let Some(s) = self.pop(worker) {
                return Some(s);
            }
            if let Some(s) = self.evict_from(&window, now_s, usize::MAX) {
                return Some(s);
            }
            if self.sweep_secs(now_s, MINI_SWEEP) > 0 {
                continue;
            }
            return None;
        }
        None
    }

    /// Frees the best victim referenced from `buckets` (an expired record, else
    /// the evictable one expiring first; never `exclude`) and returns its slot,
    /// not pushed. `None` when every referenced record is confirmed and live.
    fn evict_from(&self, buckets: &[usize], now_s: u64, exclude: usize) -> Option<usize> {
        // The window's records are scattered over the table: start loading
        // all of them before judging the first, so their misses overlap.
        for &b in buckets {
            for e in &self.buckets[b].0 {
                let v = e.load(Ordering::Relaxed);
                if v != 0 {
                    self.prefetch_record(entry_slot(v), true);
                }
            }
        }
        for _ in 0..4 {
            // (expired first, then earliest expiry), slot, copy
            let mut best: Option<((bool, u32), usize, Snap)> = None;
            for &b in buckets {
                for e in &self.buckets[b].0 {
                    let v = e.load(Ordering::Acquire);
                    if v == 0 || entry_slot(v) == exclude {
                        continue;
                    }
                    let slot = entry_slot(v);
                    let snap = self.read(slot);
                    if !snap.live() {
                        continue;
                    }
                    let expired = snap.expired(now_s);
                    if !expired && !snap.meta().evictable() {
                        continue;
                    }
                    let rank = (!expired, snap.exp);
                    if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
                        best = Some((rank, slot, snap));
                    }
                }
            }
            let ((not_expired, _), slot, snap) = best?;
            if self.try_free(slot, &snap) {
                let c = if not_expired {
                    &self.counters.evictions
                } else {
                    &self.counters.reclaimed
                };
                c.fetch_add(1, Ordering::Relaxed);
                return Some(slot);
            }
        }
        None
    }

    fn sweep_secs(&self, now_s: u64, budget: usize) -> usize {
        let cap = self.records.len();
        let n = budget.min(cap);
        if n == 0 {
            return 0;
        }
        let start = self.sweep_cursor.fetch_add(n, Ordering::Relaxed) % cap;
        let mut freed = 0;
        // In groups: first find the expired records of a group and prefetch
        // the index buckets their keys live in (random lines all over the
        // index), then free them; the un-indexing then hits cache instead of
        // paying one DRAM miss after another.
        const GROUP: usize = 16;
        let mut found: [(usize, Option<Snap>); GROUP] = [(0, None); GROUP];
        let mut i = 0;
        while i < n {
            let end = (i + GROUP).min(n);
            let mut k = 0;
            for j in i..end {
                let slot = (start + j) % cap;
                let r = &self.records[slot];
                // Unsynchronised pre-filter; the decision is made on a seqlock copy.
                if flags_of(r.hot[H_META].load(Ordering::Relaxed)) & F_LIVE == 0
                    || now_s < r.expires.load(Ordering::Relaxed) as u64
                {
                    continue;
                }
                let snap = self.read(slot);
                if snap.live() && snap.expired(now_s) {
                    for key in [snap.orig_key(), snap.reply_key()] {
                        for b in self.buckets_of(key.hash(self.seed)) {
                            prefetch(&self.buckets[b]);
                        }
                    }
                    found[k] = (slot, Some(snap));
                    k += 1;
                }
            }
            for (slot, snap) in &found[..k] {
                if let Some(snap) = snap {
                    if self.try_free(*slot, snap) {
                        self.push(*slot);
                        freed += 1;
                    }
                }
            }
            i = end;
        }
        freed
    }

    /// The insert stripe of a key with hash `h`.
    #[inline]
    fn stripe_of(&self, h: u64) -> usize {
        self.buckets_of(h)[0] % STRIPES
    }

    /// Takes the insert stripes of both keys, in ascending order.
    fn lock_stripes(&self, h1: u64, h2: u64) -> StripeGuard<'_> {
        let s1 = self.stripe_of(h1);
        let s2 = self.stripe_of(h2);
        let (a, b) = (s1.min(s2), s1.max(s2));
        let va = self.lock_stripe(a);
        let vb = if b != a { self.lock_stripe(b) } else { va };
        StripeGuard {
            stripes: &self.stripes,
            a,
            b,
            va,
            vb,
        }
    }

    /// Takes stripe `i` (even version `v` → `v + 1`); returns `v`.
    fn lock_stripe(&self, i: usize) -> u32 {
        let st = &self.stripes[i];
        let mut spins = 0;
        loop {
            let v = st.load(Ordering::Relaxed);
            if v & 1 == 0
                && st
                    .compare_exchange_weak(v, v | 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return v;
            }
            backoff(&mut spins);
        }
    }

    fn pop(&self, worker: u8) -> Option<usize> {
        let n = self.free.len();
        let start = worker as usize % n;
        (0..n).find_map(|i| self.pop_shard(&self.free[(start + i) % n]))
    }

    fn pop_shard(&self, sh: &Shard) -> Option<usize> {
        let mut h = sh.head.load(Ordering::Acquire);
        loop {
            let top = h as u32;
            if top == 0 {
                return None;
            }
            let slot = (top - 1) as usize;
            // May be stale if `slot` was popped meanwhile; the ABA counter
            // makes the CAS fail then.
            let next = self.records[slot].hot[H_GEN].load(Ordering::Relaxed) as u32;
            let new = ((h >> 32).wrapping_add(1) << 32) | next as u64;
            match sh
                .head
                .compare_exchange_weak(h, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    sh.used.fetch_add(1, Ordering::Relaxed);
                    // The next pop reads the new top's link: start loading
                    // it now rather than miss on it then.
                    if next != 0 {
                        self.prefetch_record(next as usize - 1, false);
                    }
                    return Some(slot);
                }
                Err(cur) => h = cur,
            }
        }
    }

    fn push(&self, slot: usize) {
        let sh = &self.free[slot % self.free.len()];
        let mut h = sh.head.load(Ordering::Relaxed);
        loop {
            self.records[slot].hot[H_GEN].store(h as u32 as u64, Ordering::Relaxed);
            let new = ((h >> 32).wrapping_add(1) << 32) | (slot as u64 + 1);
            match sh
                .head
                .compare_exchange_weak(h, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => {
                    sh.used.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                Err(cur) => h = cur,
            }
        }
    }
}

/// A read-only view of another process's conntrack file, for
/// `edgeplane inspect conntrack` (like `conntrack -L`): mapped read-only,
/// no lock taken, no effect on forwarding. Records are read with the
/// seqlock protocol; one whose lock stays held (its writer died inside) is
/// skipped and counted rather than waited for.
#[derive(Debug)]
pub struct ConntrackView {
    ct: Conntrack,
}

/// What [`ConntrackView::for_each`] walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ViewWalk {
    /// Live, unexpired flows passed to the callback.
    pub flows: usize,
    /// Records skipped because a writer held them throughout.
    pub busy: usize,
}

impl ConntrackView {
    /// Opens `path`: a state directory (its `conntrack` file) or the file
    /// itself. The file is checked like a writer checks it (magic, layout
    /// version, section table equal to the layout of the capacity its header
    /// states, size); a file this build cannot read is an error.
    pub fn open(path: &Path) -> Result<ConntrackView, ShmError> {
        let file = if path.is_dir() {
            path.join(FILE_NAME)
        } else {
            path.to_path_buf()
        };
        let f = SharedFile::open_ro(&file, MAGIC, LAYOUT_VERSION, |cap| {
            (cap >= 1 && cap <= Conntrack::MAX_CAPACITY as u64).then(|| sections(cap as usize))
        })?;
        let cap = f.info().capacity as usize;
        let ct = Conntrack {
            records: f.section(0, cap)?,
            cold: f.section(1, cap)?,
            buckets: f.section(2, bucket_count(cap))?,
            stripes: f.section(3, STRIPES)?,
            free: f.section(4, FREE_SHARDS)?,
            sweep_cursor: AtomicUsize::new(0),
            counters: Counters::default(),
            seed: f.info().seed,
            timeouts: Timeouts::from_params(&f.info().params),
            file: Some(f),
        };
        Ok(ConntrackView { ct })
    }

    /// The file's header as it was at open (capacity, seed, owner pid, ...).
    pub fn info(&self) -> &HeaderInfo {
        self.ct
            .file
            .as_ref()
            .map(|f| f.info())
            .expect("a view has a file")
    }

    /// The timeouts the file was created with.
    pub fn timeouts(&self) -> &Timeouts {
        &self.ct.timeouts
    }

    /// The table's capacity in flows.
    pub fn capacity(&self) -> usize {
        self.ct.capacity()
    }

    /// Records in use as the writer counts them (live flows, expired ones not
    /// yet swept, inserts in progress).
    pub fn len(&self) -> usize {
        self.ct.len()
    }

    /// True when no record is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the file.
    pub fn file_bytes(&self) -> usize {
        self.ct.file.as_ref().map_or(0, |f| f.len())
    }

    /// Calls `f` with a consistent copy of every live flow not expired at
    /// `now` (`CLOCK_MONOTONIC` ns: [`crate::shm::monotonic_ns`]).
    pub fn for_each(&self, now: u64, mut f: impl FnMut(&Flow)) -> ViewWalk {
        let mut flows = 0;
        let busy = self.ct.for_each_bounded(now, 1000, |fl| {
            flows += 1;
            f(fl)
        });
        ViewWalk { flows, busy }
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::{ACK, FIN, RST, SYN};
    use super::*;

    const S: u64 = NS_PER_SEC;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(src: &str, sport: u16, dst: &str, dport: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: ip(src),
            dst: ip(dst),
            sport,
            dport,
            proto,
        }
    }

    /// client:sport -> 10.96.0.10:80 translated to 192.168.0.1:sport' -> 10.0.0.2:8080.
    fn flow(client_port: u16, proto: u8) -> Flow {
        Flow::new(
            key("198.18.0.1", client_port, "10.96.0.10", 80, proto),
            key(
                "192.168.0.1",
                40000 + (client_port % 20000),
                "10.0.0.2",
                8080,
                proto,
            ),
            3,
            1,
            7,
        )
    }

    fn ct(cap: usize) -> Conntrack {
        Conntrack::new(cap, 0x1234, Timeouts::default())
    }

    // -- shared memory ------------------------------------------------------

    use crate::shm::tests::tempdir;
    use crate::shm::Mismatch;

    fn open(dir: &Path, cap: usize, now: u64) -> (Conntrack, Attach) {
        Conntrack::open(dir, cap, 0x1234, Timeouts::default(), now).unwrap()
    }

    /// Drops the table as SIGKILL would: no clean-shutdown mark.
    fn crash(mut t: Conntrack) {
        let f = t.file.take();
        drop(t);
        drop(f);
    }

    fn v6flow(p: u16) -> Flow {
        Flow::new(
            key("2001:db8::1", p, "2001:db8:200::10", 443, PROTO_TCP),
            key("2001:db8:1::1", 61000 + p, "2001:db8:2::2", 8443, PROTO_TCP),
            9,
            0,
            5,
        )
    }

    #[test]
    fn reattach_keeps_flows() {
        let d = tempdir();
        let (t, a) = open(d.path(), 1000, 10 * S);
        assert!(matches!(a, Attach::Created { .. }), "{a}");
        assert!(t.is_shared());
        let flows: Vec<Flow> = (0..300).map(|p| flow(p, PROTO_TCP)).collect();
        for f in &flows {
            established(&t, f, 10 * S);
        }
        let u = flow(7, PROTO_UDP);
        t.insert(u, 10 * S, 0).unwrap();
        established(&t, &v6flow(1), 10 * S);
        assert_eq!(t.len(), 302);
        drop(t); // clean shutdown
        let (t, a) = open(d.path(), 1000, 20 * S);
        match &a {
            Attach::Reattached {
                clean,
                previous_pid,
                repair,
                ..
            } => {
                assert!(*clean);
                assert_eq!(*previous_pid, 0);
                assert_eq!(repair.kept, 302);
                assert_eq!((repair.torn, repair.pending, repair.expired), (0, 0, 0));
            }
            other => panic!("{other}"),
        }
        assert_eq!(t.len(), 302);
        for f in flows.iter().chain([&u, &v6flow(1)]) {
            let o = t.lookup(&f.orig, 20 * S).expect("original key");
            let r = t.lookup(&f.reply_key(), 20 * S).expect("reply key");
            assert_eq!((o.slot, o.dir, r.dir), (r.slot, Dir::Original, Dir::Reply));
            assert_eq!((o.flow().orig, o.flow().xlat), (f.orig, f.xlat));
            // Revalidated against the new process's tables on first use.
            assert_eq!(o.flow().validated_gen, 0);
        }
        assert_eq!(
            t.lookup(&flows[0].orig, 20 * S).unwrap().flow().state,
            TcpState::Established
        );
        // The table still works: new flows, removals, the free lists.
        for p in 1000..1600 {
            let _ = t.insert(flow(p, PROTO_UDP), 20 * S, 0);
        }
        assert_eq!(t.len(), 902);
        assert!(t.remove_key(&flows[1].orig, 20 * S));
        assert_eq!(t.len(), 901);
        // Expired flows do not come back: the UDP flow (unreplied, 30 s).
        drop(t);
        let (t, a) = open(d.path(), 1000, 45 * S);
        assert!(t.lookup(&u.orig, 45 * S).is_none());
        assert!(t.lookup(&flows[2].orig, 45 * S).is_some());
        if let Attach::Reattached { repair, .. } = a {
            assert!(repair.expired >= 1, "{repair:?}");
        }
    }

    #[test]
    fn crash_repair() {
        let d = tempdir();
        let (t, _) = open(d.path(), 256, 0);
        let flows: Vec<Flow> = (0..100).map(|p| flow(p, PROTO_TCP)).collect();
        for f in &flows {
            established(&t, f, 0);
        }
        let torn = t.lookup(&flows[10].orig, 0).unwrap().slot as usize;
        let pending = t.lookup(&flows[20].orig, 0).unwrap().slot as usize;
        // A writer dies inside record `torn` (odd seq), an insert dies
        // before publishing `pending`, another holds a stripe, and a free
        // list head points at garbage.
        let r = &t.records[torn];
        r.seq.fetch_add(1, Ordering::Relaxed);
        let r = &t.records[pending];
        let m = r.hot[H_META].load(Ordering::Relaxed);
        let flags = (flags_of(m) & !F_LIVE) | F_PENDING;
        r.hot[H_META].store(
            (m & !(0xff << 16)) | (flags as u64) << 16,
            Ordering::Relaxed,
        );
        t.stripes[5].store(1, Ordering::Relaxed);
        t.free[3]
            .head
            .store(0xdead_beef_dead_beef, Ordering::Relaxed);
        t.buckets[0].0[0].store(u64::MAX, Ordering::Relaxed);
        crash(t);
        let (t, a) = open(d.path(), 256, S);
        let Attach::Reattached { clean, repair, .. } = a else {
            panic!("{a}")
        };
        assert!(!clean);
        assert_eq!(
            (
                repair.torn,
                repair.pending,
                repair.stripes_held,
                repair.kept
            ),
            (1, 1, 1, 99)
        );
        // The torn record was a live flow with a whole key: kept.
        assert!(t.lookup(&flows[10].orig, S).is_some());
        assert!(t.lookup(&flows[20].orig, S).is_none());
        assert_eq!(t.len(), 99);
        // Every other slot is allocatable again, the stripes work; the
        // confirmed flows are not evicted for unconfirmed ones.
        for p in 1000..1400 {
            t.insert(flow(p, PROTO_UDP), S, 0).unwrap();
        }
        assert_eq!(t.len(), 256);
        for f in flows.iter().filter(|f| f.orig != flows[20].orig) {
            assert!(t.lookup(&f.orig, S).is_some());
        }
    }

    #[test]
    fn mismatch_starts_empty() {
        let d = tempdir();
        let (t, _) = open(d.path(), 100, 0);
        t.insert(flow(1, PROTO_TCP), 0, SYN).unwrap();
        drop(t);
        let (t, a) = open(d.path(), 200, 0);
        match &a {
            Attach::StartedEmpty { reason, .. } => assert_eq!(
                *reason,
                Mismatch::Capacity {
                    found: 100,
                    expected: 200
                }
            ),
            other => panic!("{other}"),
        }
        assert!(t.is_empty());
        drop(t);
        let (t, a) = Conntrack::open(d.path(), 200, 99, Timeouts::default(), 0).unwrap();
        assert!(
            matches!(
                &a,
                Attach::StartedEmpty {
                    reason: Mismatch::Seed { .. },
                    ..
                }
            ),
            "{a}"
        );
        t.insert(flow(1, PROTO_TCP), 0, SYN).unwrap();
        drop(t);
        // An older build's layout.
        let p = d.path().join(FILE_NAME);
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, &7u32.to_ne_bytes(), 8).unwrap();
        let (t, a) = Conntrack::open(d.path(), 200, 99, Timeouts::default(), 0).unwrap();
        match &a {
            Attach::StartedEmpty { reason, .. } => {
                assert_eq!(
                    *reason,
                    Mismatch::LayoutVersion {
                        found: 7,
                        expected: LAYOUT_VERSION
                    }
                );
                assert!(a
                    .to_string()
                    .contains("layout version 7, this build uses 1"));
            }
            other => panic!("{other}"),
        }
        assert!(t.is_empty());
    }

    #[test]
    fn garbage_files_never_panic() {
        use rand::{Rng, SeedableRng};
        let d = tempdir();
        let (t, _) = open(d.path(), 512, 0);
        let bytes = t.file.as_ref().unwrap().len();
        drop(t);
        let p = d.path().join(FILE_NAME);
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        // Random or truncated files: refused, replaced, never a panic.
        for len in [0, 1, 4095, 4096, 8192, bytes - 1, bytes, bytes + 1] {
            let b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            std::fs::write(&p, &b).unwrap();
            let (t, a) = open(d.path(), 512, 0);
            assert!(matches!(a, Attach::StartedEmpty { .. }), "{len}: {a}");
            assert!(t.is_empty());
            drop(t);
            std::fs::write(&p, &b).unwrap();
            assert!(ConntrackView::open(d.path()).is_err());
        }
        // A valid header over random sections: recovered, usable.
        for round in 0..4 {
            let (t, _) = open(d.path(), 512, 0);
            drop(t);
            let mut b = std::fs::read(&p).unwrap();
            for x in &mut b[crate::shm::PAGE..] {
                *x = rng.gen();
            }
            if round == 3 {
                // Mostly live-looking records: every flag byte LIVE.
                for r in 0..512 {
                    let o = crate::shm::PAGE + r * 64 + 8 + H_META * 8 + 2;
                    b[o] = F_LIVE | (b[o] & (F_ORIG_V6 | F_XLAT_V6));
                    b[o - 2] = PROTO_UDP;
                    b[o - 1] = 0;
                }
            }
            std::fs::write(&p, &b).unwrap();
            let (t, a) = open(d.path(), 512, 0);
            assert!(matches!(a, Attach::Reattached { .. }), "{a}");
            assert!(t.len() <= 512);
            let mut seen = 0;
            t.for_each(0, |_| seen += 1);
            assert!(seen <= t.len());
            for p in 0..600 {
                let _ = t.insert(flow(p, PROTO_UDP), 0, 0);
                let _ = t.lookup(&flow(p, PROTO_UDP).orig, 0);
            }
            t.sweep(u64::MAX / 2, 512);
            let v = ConntrackView::open(d.path()).unwrap();
            v.for_each(0, |_| {});
        }
    }

    #[test]
    fn one_writer_at_a_time() {
        let d = tempdir();
        let (t, _) = open(d.path(), 64, 0);
        match Conntrack::open(d.path(), 64, 0x1234, Timeouts::default(), 0) {
            Err(ShmError::Busy { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("{:?}", other.map(|(_, a)| a)),
        }
        let e = Conntrack::open(d.path(), 64, 0x1234, Timeouts::default(), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(t);
        assert!(Conntrack::open(d.path(), 64, 0x1234, Timeouts::default(), 0).is_ok());
    }

    #[test]
    fn read_only_view() {
        let d = tempdir();
        let (t, _) = open(d.path(), 128, 0);
        let flows: Vec<Flow> = (0..40).map(|p| flow(p, PROTO_TCP)).collect();
        for f in &flows {
            established(&t, f, 0);
        }
        established(&t, &v6flow(3), 0);
        let v = ConntrackView::open(&d.path().join(FILE_NAME)).unwrap();
        assert_eq!((v.capacity(), v.len()), (128, 41));
        assert_eq!(v.info().owner_pid, std::process::id());
        assert_eq!(v.info().seed, 0x1234);
        assert_eq!(v.timeouts(), &Timeouts::default());
        assert_eq!(v.file_bytes(), t.file.as_ref().unwrap().len());
        let mut got = Vec::new();
        let w = v.for_each(S, |f| got.push(*f));
        assert_eq!(w, ViewWalk { flows: 41, busy: 0 });
        let mut want = Vec::new();
        t.for_each(S, |f| want.push(*f));
        assert_eq!(got, want);
        assert!(got.iter().any(|f| f.orig == v6flow(3).orig));
        // The writer goes on; the view sees it.
        t.remove_key(&flows[0].orig, S);
        assert_eq!(v.for_each(S, |_| {}).flows, 40);
        // A record whose writer died inside is skipped, not waited for.
        let slot = t.lookup(&flows[1].orig, S).unwrap().slot as usize;
        t.records[slot].seq.fetch_add(1, Ordering::Relaxed);
        assert_eq!(v.for_each(S, |_| {}), ViewWalk { flows: 39, busy: 1 });
        // Expired flows are not listed.
        assert_eq!(v.for_each(200_000 * S, |_| {}).flows, 0);
        // A directory without a file is a clear error.
        let e = ConntrackView::open(&d.path().join("nope")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn file_size_for_a_million_flows() {
        let d = tempdir();
        let (t, _) = open(d.path(), 1_000_000, 0);
        let bytes = t.file.as_ref().unwrap().len();
        assert!(bytes <= 128 << 20, "{bytes}");
        assert!(bytes <= t.memory_bytes() + 6 * crate::shm::PAGE, "{bytes}");
    }

    #[test]
    fn layout_is_128_bytes_per_flow() {
        assert_eq!(std::mem::size_of::<Record>(), 64);
        assert_eq!(std::mem::size_of::<Cold>(), 32);
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        let t = ct(1_000_000);
        let per_flow = (t.memory_bytes() as f64) / 1e6;
        assert!(per_flow <= 128.1, "{per_flow} bytes per flow");
        assert!(t.memory_bytes() <= 128 << 20);
        assert!(std::mem::size_of::<Hit>() <= 120);
        fn sync<T: Send + Sync>() {}
        sync::<Conntrack>();
    }

    #[test]
    fn lookup_both_directions() {
        let t = ct(64);
        let f = flow(1000, PROTO_TCP);
        let hit = t.insert(f, S, SYN).unwrap();
        assert_eq!(hit.dir, Dir::Original);
        assert_eq!(hit.flow().orig, f.orig);
        assert_eq!(hit.flow().xlat, f.xlat);
        assert_eq!(
            (
                hit.flow().frontend,
                hit.flow().worker,
                hit.flow().validated_gen
            ),
            (3, 1, 7)
        );
        assert_eq!(hit.flow().state, TcpState::SynSent);
        let o = t.lookup(&f.orig, S).unwrap();
        assert_eq!(
            (o.slot, o.dir, o.flow()),
            (hit.slot, Dir::Original, hit.flow())
        );
        let r = t.lookup(&f.reply_key(), S).unwrap();
        assert_eq!((r.slot, r.dir), (hit.slot, Dir::Reply));
        assert!(t.lookup(&f.orig.reversed(), S).is_none());
        assert!(t.contains_reply_key(&f.reply_key(), S));
        assert_eq!(t.len(), 1);
    }

    /// A probe whose remembered candidate went stale (the flow removed, its
    /// slot reused by another flow, the key inserted again elsewhere, the
    /// flow expired) still answers exactly as `lookup`.
    #[test]
    fn probe_candidate_goes_stale() {
        let t = ct(64);
        let f = flow(1000, PROTO_TCP);
        let hit = t.insert(f, S, SYN).unwrap();
        let mut p = t.probe(&f.orig);
        assert!(t.prefetch_records(&mut p));
        assert_eq!(t.lookup_probe(&p, S), t.lookup(&f.orig, S));
        assert!(t.remove(&hit));
        assert_eq!(t.lookup_probe(&p, S), None);
        // Another flow takes the slot, then the key comes back.
        let g = flow(2000, PROTO_TCP);
        t.insert(g, S, SYN).unwrap();
        assert_eq!(t.lookup_probe(&p, S), None);
        let again = t.insert(f, S, SYN).unwrap();
        assert_eq!(t.lookup_probe(&p, S), Some(again));
        assert_eq!(t.lookup_probe(&p, S), t.lookup(&f.orig, S));
        // Expired: no answer either way.
        let late = S + 1_000 * NS_PER_SEC;
        assert_eq!(t.lookup_probe(&p, late), None);
        assert_eq!(t.lookup(&f.orig, late), None);
    }

    /// `rewrite_v4` is `rewrite_as` for IPv4 tuples, `None` for IPv6 ones.
    #[test]
    fn rewrite_v4_is_rewrite_as() {
        let t = ct(64);
        let f = flow(1000, PROTO_TCP);
        let hit = t.insert(f, S, SYN).unwrap();
        for dir in [Dir::Original, Dir::Reply] {
            let r = hit.rewrite_as(dir);
            let (s, d) = r.addrs();
            let (s4, d4, sp, dp) = hit.rewrite_v4(dir).unwrap();
            assert_eq!(
                (&s4.octets()[..], &d4.octets()[..], sp, dp),
                (s, d, r.sport, r.dport)
            );
        }
        let g = Flow::new(
            key("2001:db8::1", 1000, "2001:db8:1::10", 80, PROTO_TCP),
            key("2001:db8::9", 40000, "2001:db8:2::2", 8080, PROTO_TCP),
            3,
            1,
            7,
        );
        let h6 = t.insert(g, S, SYN).unwrap();
        assert_eq!(h6.rewrite_v4(Dir::Original), None);
        assert_eq!(h6.rewrite_v4(Dir::Reply), None);
    }

    /// `steady` never claims "unchanged" where `step` changes something:
    /// every protocol, state, flag byte, direction and TCP flag byte.
    #[test]
    fn steady_agrees_with_step() {
        let mut claimed = 0;
        for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP, PROTO_ICMP] {
            for state in 0..=6u8 {
                for flags in 0..=255u8 {
                    let m = Meta {
                        proto,
                        state: TcpState::from_u8(state),
                        flags,
                        worker: 2,
                        frontend: 9,
                    };
                    for dir in [Dir::Original, Dir::Reply] {
                        for tcp in 0..=255u8 {
                            if steady(&m, tcp) {
                                claimed += 1;
                                assert_eq!(step(m, dir, tcp), m, "{m:?} {dir:?} {tcp:#x}");
                            }
                        }
                    }
                }
            }
        }
        assert!(claimed > 0);
    }

    /// The insert after a lookup miss: a clean miss skips the checks under
    /// the stripes only while nobody inserted under them; a stale miss, a
    /// miss that saw an (expired) holder, or a miss of another key gives
    /// what `insert` gives.
    #[test]
    fn insert_after_miss_is_insert() {
        let t = ct(64);
        let miss = |k: &FlowKey, now| t.lookup_or_miss(&t.probe(k), now).unwrap_err();
        // Clean misses.
        let f = flow(1000, PROTO_TCP);
        let (mo, mr) = (miss(&f.orig, S), miss(&f.reply_key(), S));
        assert!(mo.clean_at.is_some() && mr.clean_at.is_some());
        let hit = t
            .insert_after_miss(f, S, SYN, Some(&mo), Some(&mr))
            .unwrap();
        assert_eq!(t.lookup(&f.orig, S), Some(hit));
        assert_eq!(t.lookup(&f.reply_key(), S).map(|h| h.slot), Some(hit.slot));
        // The same (now stale) misses again: the key is found under the stripe.
        match t.insert_after_miss(f, S, SYN, Some(&mo), Some(&mr)) {
            Err(InsertError::Exists(h)) => assert_eq!(h.slot, hit.slot),
            r => panic!("{r:?}"),
        }
        // Another flow, same reply key, stale reply miss: ReplyTaken.
        let mut g = flow(1001, PROTO_TCP);
        g.xlat = f.xlat;
        match t.insert_after_miss(g, S, SYN, Some(&miss(&g.orig, S)), Some(&mr)) {
            Err(InsertError::ReplyTaken(h)) => assert_eq!(h.slot, hit.slot),
            r => panic!("{r:?}"),
        }
        // An expired holder: the miss saw it, the insert reclaims it.
        let late = S + 1_000 * NS_PER_SEC;
        let mo = miss(&f.orig, late);
        assert_eq!(mo.clean_at, None);
        let again = t
            .insert_after_miss(f, late, SYN, Some(&mo), Some(&miss(&f.reply_key(), late)))
            .unwrap();
        assert_eq!(t.stats().reclaimed, 1);
        assert_eq!(t.lookup(&f.orig, late), Some(again));
        // A miss of another key is ignored.
        let h = flow(1002, PROTO_TCP);
        let other = miss(&flow(1003, PROTO_TCP).orig, late);
        let hh = t
            .insert_after_miss(h, late, SYN, Some(&other), None)
            .unwrap();
        assert_eq!(t.lookup(&h.orig, late), Some(hh));
        assert_eq!(t.len(), 2);
    }

    /// A probe whose first bucket held no entry with its tag scans only the
    /// second one while the key's stripe is unchanged, and everything when
    /// an insert took the stripe since.
    #[test]
    fn probe_with_clean_first_bucket() {
        let t = ct(64);
        let f = flow(1000, PROTO_TCP);
        let mut p = t.probe(&f.orig);
        assert!(!t.prefetch_records(&mut p));
        assert!(p.clean1);
        let m = t.lookup_or_miss(&p, S).unwrap_err();
        assert_eq!(m.clean_at, Some(p.ver));
        // The key is inserted after the probe's scan: found all the same.
        let hit = t.insert(f, S, SYN).unwrap();
        assert_ne!(t.stripes[t.stripe_of(p.h)].load(Ordering::Relaxed), p.ver);
        assert_eq!(t.lookup_or_miss(&p, S), Ok(hit));
        assert_eq!(t.lookup_probe(&p, S), Some(hit));
    }

    #[test]
    fn probe_lookup_and_revalidate() {
        let t = ct(64);
        let f = flow(1000, PROTO_TCP);
        let hit = t.insert(f, S, SYN).unwrap();
        for k in [f.orig, f.reply_key(), f.orig.reversed()] {
            let mut p = t.probe(&k);
            t.prefetch_index(&p);
            assert_eq!(t.prefetch_records(&mut p), t.lookup(&k, S).is_some());
            assert_eq!(t.lookup_probe(&p, S), t.lookup(&k, S));
        }
        assert!(t.revalidate(&hit, 9, 42));
        let h = t.lookup(&f.orig, S).unwrap();
        assert_eq!((h.flow().validated_gen, h.flow().frontend), (9, 42));
        assert_eq!((h.flow().state, h.flow().worker), (TcpState::SynSent, 1));
        assert!(t.remove(&h));
        assert!(!t.revalidate(&h, 10, 1));
    }

    #[test]
    fn ipv6_roundtrip() {
        let t = ct(16);
        let f = Flow::new(
            key("2001:db8::1", 5000, "fd00::10", 443, PROTO_TCP),
            key("2001:db8::ffff", 41000, "fd00:1::2", 8443, PROTO_TCP),
            9,
            0,
            1,
        );
        t.insert(f, 0, SYN).unwrap();
        let h = t.lookup(&f.reply_key(), 0).unwrap();
        assert_eq!(h.flow().orig, f.orig);
        assert_eq!(h.flow().xlat, f.xlat);
        // An IPv4-mapped IPv6 address is not the IPv4 address.
        let mapped = key(
            "::ffff:198.18.0.1",
            1000,
            "::ffff:10.96.0.10",
            80,
            PROTO_TCP,
        );
        let t2 = ct(16);
        t2.insert(flow(1000, PROTO_TCP), 0, SYN).unwrap();
        assert!(t2.lookup(&mapped, 0).is_none());
    }

    #[test]
    fn duplicate_insert_and_reply_clash() {
        let t = ct(64);
        let f = flow(1000, PROTO_UDP);
        let a = t.insert(f, 0, 0).unwrap();
        match t.insert(f, 0, 0) {
            Err(InsertError::Exists(h)) => assert_eq!(h.slot, a.slot),
            other => panic!("{other:?}"),
        }
        // Another client, same translated tuple: reply key taken.
        let mut g = f;
        g.orig.sport = 1001;
        match t.insert(g, 0, 0) {
            Err(InsertError::ReplyTaken(h)) => assert_eq!((h.slot, h.dir), (a.slot, Dir::Reply)),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn udp_unreplied_30s_assured_120s() {
        let t = ct(64);
        let f = flow(1000, PROTO_UDP);
        let h = t.insert(f, 0, 0).unwrap();
        assert!(!h.flow().assured);
        assert_eq!(h.flow().expires, 30 * S);
        assert!(t.lookup(&f.orig, 30 * S - 1).is_some());
        assert!(t.lookup(&f.orig, 30 * S).is_none());

        let u = flow(1001, PROTO_UDP);
        t.insert(u, 0, 0).unwrap();
        let r = t.lookup(&u.reply_key(), 10 * S).unwrap();
        assert_eq!(t.update(&r, 10 * S, 0), Some(TcpState::None));
        let h = t.lookup(&u.orig, 10 * S).unwrap();
        assert!(h.flow().assured);
        assert_eq!(h.flow().expires, 130 * S);
        assert!(t.lookup(&u.orig, 129 * S).is_some());
        assert!(t.lookup(&u.orig, 130 * S).is_none());
    }

    #[test]
    fn icmp_and_sctp_and_generic_timeouts() {
        let t = ct(64);
        let i = t.insert(flow(1, PROTO_ICMP), 0, 0).unwrap();
        assert_eq!(i.flow().expires, 30 * S);
        let s = t.insert(flow(2, PROTO_SCTP), 0, 0).unwrap();
        assert_eq!(s.flow().expires, 30 * S);
        let r = t.lookup(&flow(2, PROTO_SCTP).reply_key(), S).unwrap();
        t.update(&r, S, 0);
        assert_eq!(
            t.lookup(&flow(2, PROTO_SCTP).orig, S)
                .unwrap()
                .flow()
                .expires,
            211 * S
        );
        let g = t.insert(flow(3, 47), 0, 0).unwrap();
        assert_eq!(g.flow().expires, 600 * S);
    }

    /// Drives one packet through lookup + update and returns the new state.
    fn pkt(t: &Conntrack, f: &Flow, dir: Dir, now: u64, flags: u8) -> TcpState {
        let k = if dir == Dir::Original {
            f.orig
        } else {
            f.reply_key()
        };
        let h = t.lookup(&k, now).expect("tracked");
        assert_eq!(h.dir, dir);
        t.update(&h, now, flags).expect("still there")
    }

    fn exp_of(t: &Conntrack, f: &Flow, now: u64) -> u64 {
        t.lookup(&f.orig, now).unwrap().flow().expires
    }

    #[test]
    fn tcp_handshake_established_and_fin_fin_time_wait() {
        let t = ct(64);
        let f = flow(2000, PROTO_TCP);
        let h = t.insert(f, 0, SYN).unwrap();
        assert_eq!(
            (h.flow().state, h.flow().expires),
            (TcpState::SynSent, 120 * S)
        );
        assert_eq!(pkt(&t, &f, Dir::Reply, S, SYN | ACK), TcpState::SynRecv);
        assert_eq!(exp_of(&t, &f, S), 61 * S);
        assert!(!t.lookup(&f.orig, S).unwrap().flow().assured);
        assert_eq!(
            pkt(&t, &f, Dir::Original, 2 * S, ACK),
            TcpState::Established
        );
        let h = t.lookup(&f.orig, 2 * S).unwrap();
        assert!(h.flow().assured);
        assert_eq!(h.flow().expires, (2 + 86_400) * S);
        assert_eq!(pkt(&t, &f, Dir::Reply, 3 * S, ACK), TcpState::Established);
        assert_eq!(
            pkt(&t, &f, Dir::Original, 4 * S, FIN | ACK),
            TcpState::Closing
        );
        assert_eq!(exp_of(&t, &f, 4 * S), 124 * S);
        assert_eq!(pkt(&t, &f, Dir::Reply, 5 * S, ACK), TcpState::Closing);
        assert_eq!(
            pkt(&t, &f, Dir::Reply, 6 * S, FIN | ACK),
            TcpState::TimeWait
        );
        assert_eq!(exp_of(&t, &f, 6 * S), 126 * S);
        // The last ACK refreshes TIME_WAIT (as in nf_conntrack).
        assert_eq!(pkt(&t, &f, Dir::Original, 7 * S, ACK), TcpState::TimeWait);
        assert!(t.lookup(&f.orig, 127 * S - 1).is_some());
        assert!(t.lookup(&f.orig, 127 * S).is_none());
    }

    #[test]
    fn tcp_rst_is_short_and_syn_reopens() {
        let t = ct(64);
        let f = flow(3000, PROTO_TCP);
        t.insert(f, 0, SYN).unwrap();
        pkt(&t, &f, Dir::Reply, 0, SYN | ACK);
        pkt(&t, &f, Dir::Original, 0, ACK);
        assert_eq!(pkt(&t, &f, Dir::Reply, 100 * S, RST), TcpState::Close);
        assert_eq!(exp_of(&t, &f, 100 * S), 110 * S);
        // Port reuse: a new SYN from the client reopens the record, unconfirmed.
        assert_eq!(pkt(&t, &f, Dir::Original, 105 * S, SYN), TcpState::SynSent);
        let h = t.lookup(&f.orig, 105 * S).unwrap();
        assert!(!h.flow().assured);
        assert_eq!(h.flow().expires, 225 * S);
        // ... and from TIME_WAIT too.
        pkt(&t, &f, Dir::Reply, 106 * S, SYN | ACK);
        pkt(&t, &f, Dir::Original, 106 * S, ACK);
        pkt(&t, &f, Dir::Original, 107 * S, FIN);
        assert_eq!(
            pkt(&t, &f, Dir::Reply, 107 * S, FIN | ACK),
            TcpState::TimeWait
        );
        assert_eq!(pkt(&t, &f, Dir::Original, 108 * S, SYN), TcpState::SynSent);
        // A SYN on an established flow changes nothing.
        pkt(&t, &f, Dir::Reply, 108 * S, SYN | ACK);
        pkt(&t, &f, Dir::Original, 108 * S, ACK);
        assert_eq!(
            pkt(&t, &f, Dir::Original, 109 * S, SYN),
            TcpState::Established
        );
        // RST expires after 10 s.
        pkt(&t, &f, Dir::Original, 110 * S, RST);
        assert!(t.lookup(&f.orig, 119 * S).is_some());
        assert!(t.lookup(&f.orig, 120 * S).is_none());
    }

    #[test]
    fn tcp_midstream_pickup_confirmed_by_reply() {
        let t = ct(64);
        let f = flow(4000, PROTO_TCP);
        let h = t.insert(f, 0, ACK).unwrap();
        assert_eq!(
            (h.flow().state, h.flow().assured, h.flow().expires),
            (TcpState::Established, false, 300 * S)
        );
        assert_eq!(pkt(&t, &f, Dir::Reply, S, ACK), TcpState::Established);
        let h = t.lookup(&f.orig, S).unwrap();
        assert!(h.flow().assured);
        assert_eq!(h.flow().expires, (1 + 86_400) * S);
    }

    #[test]
    fn established_refresh_is_rate_limited() {
        let t = ct(64);
        let f = flow(4500, PROTO_TCP);
        t.insert(f, 0, SYN).unwrap();
        pkt(&t, &f, Dir::Reply, 0, SYN | ACK);
        pkt(&t, &f, Dir::Original, 0, ACK);
        let h = t.lookup(&f.orig, 0).unwrap();
        // 86400 >> 8 = 337 s: earlier refreshes store nothing.
        assert_eq!(t.update(&h, 100 * S, ACK), Some(TcpState::Established));
        let h2 = t.lookup(&f.orig, 100 * S).unwrap();
        assert_eq!((h2.seq, h2.flow().expires), (h.seq, 86_400 * S));
        t.update(&h2, 400 * S, ACK);
        assert_eq!(exp_of(&t, &f, 400 * S), (400 + 86_400) * S);
    }

    #[test]
    fn remove_and_stale_hits() {
        let t = ct(8);
        let f = flow(5000, PROTO_UDP);
        let h = t.insert(f, 0, 0).unwrap();
        assert!(t.remove(&h));
        assert!(t.lookup(&f.orig, 0).is_none());
        assert!(t.lookup(&f.reply_key(), 0).is_none());
        assert_eq!(t.len(), 0);
        assert!(!t.remove(&h));
        assert_eq!(
            t.update(&h, 0, 0),
            Some(TcpState::None),
            "no-op refresh stores nothing"
        );
        assert_eq!(
            t.update(&h, 40 * S, 0),
            None,
            "a refresh on a gone flow is refused"
        );
        assert!(!t.set_validated(&h, 9));
        // Reuse the slot for another flow: the stale hit must not touch it.
        let g = flow(5001, PROTO_UDP);
        let hg = t.insert(g, 0, 0).unwrap();
        assert!(!t.remove(&h));
        assert!(!t.set_validated(&h, 99));
        assert_eq!(t.update(&h, 40 * S, 0), None);
        let now = t.lookup(&g.orig, 0).unwrap();
        assert_eq!(now.flow(), hg.flow());
        assert!(t.set_validated(&now, 42));
        assert_eq!(t.lookup(&g.orig, 0).unwrap().flow().validated_gen, 42);
        assert_eq!(t.stats().removed, 1);
        assert!(t.remove_key(&g.reply_key(), 0));
        assert!(t.is_empty());
    }

    #[test]
    fn sweep_returns_counts_to_zero() {
        let t = ct(1000);
        for p in 0..500 {
            t.insert(flow(p, PROTO_UDP), 0, 0).unwrap();
        }
        assert_eq!(t.len(), 500);
        assert_eq!(t.sweep(10 * S, 1000), 0);
        let mut seen = 0;
        t.for_each(10 * S, |_| seen += 1);
        assert_eq!(seen, 500);
        // Expired but not swept: invisible, still counted.
        assert!(t.lookup(&flow(1, PROTO_UDP).orig, 30 * S).is_none());
        assert!(!t.contains_reply_key(&flow(1, PROTO_UDP).reply_key(), 30 * S));
        let mut freed = 0;
        for _ in 0..10 {
            freed += t.sweep(30 * S, 100);
        }
        assert_eq!(freed, 500);
        assert_eq!(t.len(), 0);
        assert_eq!(t.stats().swept, 500);
        // Every slot is usable again.
        for p in 0..1000 {
            t.insert(flow(p, PROTO_UDP), 40 * S, 0).unwrap();
        }
        assert_eq!(t.len(), 1000);
    }

    #[test]
    fn expired_key_is_reclaimed_by_insert() {
        let t = ct(8);
        let f = flow(6000, PROTO_UDP);
        let a = t.insert(f, 0, 0).unwrap();
        let b = t.insert(f, 31 * S, 0).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.stats().reclaimed, 1);
        assert_eq!(b.flow().expires, 61 * S);
        assert!(t.update(&a, 31 * S, 0).is_none() || a.slot == b.slot);
    }

    fn established(t: &Conntrack, f: &Flow, now: u64) {
        t.insert(*f, now, SYN).unwrap();
        pkt(t, f, Dir::Reply, now, SYN | ACK);
        pkt(t, f, Dir::Original, now, ACK);
    }

    #[test]
    fn full_of_established_refuses_syn_flood() {
        let t = ct(64);
        let flows: Vec<Flow> = (0..64).map(|p| flow(p, PROTO_TCP)).collect();
        for f in &flows {
            established(&t, f, 0);
        }
        assert_eq!(t.len(), 64);
        for p in 100..400 {
            assert_eq!(t.insert(flow(p, PROTO_TCP), S, SYN), Err(InsertError::Full));
        }
        for f in &flows {
            assert_eq!(
                t.lookup(&f.orig, S).unwrap().flow().state,
                TcpState::Established
            );
        }
        let st = t.stats();
        assert_eq!((st.insert_failures, st.evictions), (300, 0));
        // Once they expire, the space comes back without a sweep.
        t.insert(flow(500, PROTO_TCP), 86_402 * S, SYN).unwrap();
    }

    #[test]
    fn full_of_unconfirmed_evicts_the_oldest_in_window() {
        let t = ct(64);
        for p in 0..64u16 {
            // Older flows expire earlier.
            t.insert(flow(p, PROTO_TCP), p as u64 * S, SYN).unwrap();
        }
        let now = 100 * S;
        let mut before = Vec::new();
        t.for_each(now, |f| before.push(*f));
        let f = flow(1000, PROTO_TCP);
        t.insert(f, now, SYN).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(t.stats().evictions, 1);
        let mut after = Vec::new();
        t.for_each(now, |f| after.push(f.orig));
        let gone: Vec<&Flow> = before.iter().filter(|b| !after.contains(&b.orig)).collect();
        assert_eq!(gone.len(), 1);
        // The victim was the oldest among the records in the new flow's window.
        let k = RawKey::new(&f.orig);
        let r = RawKey::new(&f.reply_key());
        let mut window = t.buckets_of(k.hash(t.seed)).to_vec();
        window.extend(t.buckets_of(r.hash(t.seed)));
        let mut referenced = Vec::new();
        for b in window {
            for e in &t.buckets[b].0 {
                let v = e.load(Ordering::Relaxed);
                if v != 0 && entry_slot(v) != t.lookup(&f.orig, now).unwrap().slot as usize {
                    referenced.push(t.read(entry_slot(v)).flow());
                }
            }
        }
        let oldest_left = referenced.iter().map(|f| f.expires).min().unwrap();
        assert!(gone[0].expires <= oldest_left);
    }

    #[test]
    fn time_wait_is_evictable_assured_udp_is_not() {
        let t = ct(16);
        for p in 0..16 {
            let f = flow(p, PROTO_UDP);
            t.insert(f, 0, 0).unwrap();
            pkt(&t, &f, Dir::Reply, 0, 0);
        }
        assert_eq!(t.insert(flow(100, PROTO_UDP), S, 0), Err(InsertError::Full));
        let t = ct(16);
        for p in 0..16 {
            let f = flow(p, PROTO_TCP);
            established(&t, &f, 0);
            pkt(&t, &f, Dir::Original, 0, FIN);
            pkt(&t, &f, Dir::Reply, 0, FIN | ACK);
        }
        t.insert(flow(100, PROTO_TCP), S, SYN).unwrap();
        assert_eq!(t.stats().evictions, 1);
    }

    #[test]
    fn capacity_one() {
        let t = ct(0);
        assert_eq!(t.capacity(), 1);
        let h = t.insert(flow(1, PROTO_UDP), 0, 0).unwrap();
        t.insert(flow(2, PROTO_UDP), 0, 0).unwrap(); // evicts the unreplied one
        assert!(t.lookup(&flow(1, PROTO_UDP).orig, 0).is_none());
        assert!(!t.remove(&h));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn step_ignores_reply_syn_outside_syn_sent_and_non_tcp_flags() {
        let m = Meta {
            proto: PROTO_TCP,
            state: TcpState::Established,
            flags: F_ASSURED,
            worker: 0,
            frontend: 0,
        };
        assert_eq!(step(m, Dir::Reply, SYN | ACK).state, TcpState::Established);
        let u = Meta {
            proto: PROTO_UDP,
            state: TcpState::None,
            flags: 0,
            worker: 0,
            frontend: 0,
        };
        assert_eq!(step(u, Dir::Original, RST).state, TcpState::None);
        assert_eq!(initial(PROTO_TCP, SYN | ACK), (TcpState::Established, 0));
        assert_eq!(initial(PROTO_TCP, RST).0, TcpState::Close);
        assert_eq!(initial(PROTO_TCP, FIN | ACK).0, TcpState::Closing);
    }
}
