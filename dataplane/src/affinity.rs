//! `sessionAffinity: ClientIP`: which backend each client was last sent to,
//! per Service port, with kube-proxy's `recent`-module semantics.
//!
//! # What this module promises
//!
//! * An entry maps (client IP, affinity group) → (backend IP, backend port)
//!   and remembers when it was last set. [`Affinity::get`] returns it while
//!   `now - last_set < timeout`; the timeout is the frontend's
//!   `sessionAffinityConfig.clientIP.timeoutSeconds`, passed in by the caller
//!   (kube-proxy's `-m recent --rcheck --seconds N`). Only [`Affinity::set`]
//!   refreshes an entry, and the engine calls it for every new connection
//!   (kube-proxy's `--set` on the DNAT rule), so a client stays pinned for
//!   `timeout` after its last new connection.
//! * Fixed capacity, flat and pointer-free like [`crate::conntrack`]: one
//!   64-byte (one cache line) slot per entry, made of atomics. Every operation
//!   takes `&self`; the type is `Send + Sync`; there is no `unsafe`.
//! * On the heap ([`Affinity::new`]) or in the file `DIR/affinity`
//!   ([`Affinity::open`], magic `EPAFFINI`): header page as in [`crate::shm`],
//!   then section 0 the entries (`[Entry; capacity]`, at 4096) and section 1
//!   the 256 writer stripes. A restarted dataplane re-attaches under the same
//!   rules as the conntrack (layout version, capacity, seed, boot). Recovery:
//!   stripes released; an entry whose writer died inside (odd `seq`) is
//!   cleared — affinity is a preference, and the flows it placed are pinned by
//!   conntrack anyway —, entries older than the longest Kubernetes timeout
//!   (86,400 s) are cleared, times ahead of `now` are pulled back to it, the
//!   count is redone. Times are `CLOCK_MONOTONIC` ns on the live path.
//! * Readers never lock: each slot is a seqlock (odd `seq` = writer inside),
//!   read with the same protocol as conntrack records, so a reader never sees a
//!   backend address paired with another backend's port.
//! * Writers are serialised per key by striped spin flags, so one key never
//!   has two entries.
//! * When a key's probe window (8 consecutive slots from its hash) is full, a
//!   `set` overwrites the least recently set entry there. Affinity is a
//!   preference, not correctness: a lost entry only means the client is placed
//!   by Maglev again (which, hashing the client IP only under affinity, usually
//!   picks the same backend).
//!
//! # Layout
//!
//! ```text
//! Entry (64 B, align 64):
//!   seq: u32     seqlock counter
//!   group: u32   affinity group (one per Service port)
//!   w[0..2]      client address (16 B, IPv4 as IPv4-mapped IPv6)
//!   w[2..4]      backend address
//!   w[4]         flags (live, client v6, backend v6) | backend port << 16
//!   w[5]         last set, ns of the caller's clock
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use std::path::Path;

use crate::hash::{addr16, hash_bytes};
use crate::shm::{Attach, Opened, Repair, SectionSpec, SharedFile, ShmError, Slab, Spec};

/// Name of the file in the state directory.
pub const FILE_NAME: &str = "affinity";
/// Magic of the file (first 8 bytes).
pub const MAGIC: [u8; 8] = *b"EPAFFINI";
/// Version of the file layout: bump it whenever `Entry` or the sections
/// change.
pub const LAYOUT_VERSION: u32 = 1;
/// The longest affinity timeout Kubernetes allows (`timeoutSeconds` <= 86400):
/// entries older than this are dropped at attach.
const MAX_TIMEOUT_NS: u64 = 86_400 * 1_000_000_000;

fn sections(cap: usize) -> Vec<SectionSpec> {
    vec![
        SectionSpec::of::<Entry>(cap),
        SectionSpec::of::<AtomicU32>(STRIPES),
    ]
}

/// Slots a key may live in, starting at its home slot.
const WINDOW: usize = 8;
const STRIPES: usize = 256;

const F_LIVE: u64 = 1;
const F_CLIENT_V6: u64 = 2;
const F_BACKEND_V6: u64 = 4;

const W_CLIENT: usize = 0;
const W_BACKEND: usize = 2;
const W_META: usize = 4;
const W_LAST: usize = 5;
const WORDS: usize = 6;

/// One affinity entry; see the module docs for the layout.
#[repr(C, align(64))]
pub(crate) struct Entry {
    /// Seqlock counter: odd while a writer is inside.
    seq: AtomicU32,
    /// Affinity group of the key.
    group: AtomicU32,
    /// The entry's words.
    w: [AtomicU64; WORDS],
}

/// A consistent copy of an entry.
#[derive(Clone, Copy)]
struct Snap {
    seq: u32,
    group: u32,
    w: [u64; WORDS],
}

impl Snap {
    fn live(&self) -> bool {
        self.w[W_META] & F_LIVE != 0
    }
    fn is(&self, client: &[u64; 2], v6: bool, group: u32) -> bool {
        self.live()
            && self.group == group
            && self.w[W_CLIENT] == client[0]
            && self.w[W_CLIENT + 1] == client[1]
            && (self.w[W_META] & F_CLIENT_V6 != 0) == v6
    }
    fn backend(&self) -> (IpAddr, u16) {
        let v6 = self.w[W_META] & F_BACKEND_V6 != 0;
        let ip = words_addr([self.w[W_BACKEND], self.w[W_BACKEND + 1]], v6);
        (ip, (self.w[W_META] >> 16) as u16)
    }
}

fn addr_words(ip: IpAddr) -> [u64; 2] {
    let b = addr16(ip);
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
}

fn words_addr(w: [u64; 2], v6: bool) -> IpAddr {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&w[0].to_le_bytes());
    b[8..].copy_from_slice(&w[1].to_le_bytes());
    let a = Ipv6Addr::from(b);
    match (v6, a.to_ipv4_mapped()) {
        (false, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(a),
    }
}

fn backoff(spins: &mut u32) {
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
    *spins = spins.saturating_add(1);
}

/// The `sessionAffinity: ClientIP` table. See the module docs.
pub struct Affinity {
    /// The slots.
    entries: Slab<Entry>,
    /// Writer serialisation, striped by a key's home slot. 0 = free.
    stripes: Slab<AtomicU32>,
    /// Live entries.
    used: AtomicUsize,
    /// Where the next `sweep` starts.
    sweep_cursor: AtomicUsize,
    /// Seed of the slot hash.
    seed: u64,
    /// The file the slots live in (`None`: on the heap).
    file: Option<SharedFile>,
}

impl Drop for Affinity {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            f.mark_clean();
        }
    }
}

impl fmt::Debug for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Affinity")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

impl Affinity {
    /// A table of `capacity` entries (at least 1).
    pub fn new(capacity: usize, seed: u64) -> Affinity {
        let n = capacity.max(1);
        let entries: Box<[Entry]> = (0..n)
            .map(|_| Entry {
                seq: AtomicU32::new(0),
                group: AtomicU32::new(0),
                w: Default::default(),
            })
            .collect();
        let stripes: Box<[AtomicU32]> = (0..STRIPES).map(|_| AtomicU32::new(0)).collect();
        Affinity {
            entries: Slab::from_box(entries),
            stripes: Slab::from_box(stripes),
            used: AtomicUsize::new(0),
            sweep_cursor: AtomicUsize::new(0),
            seed,
            file: None,
        }
    }

    /// The table kept in the file `dir/affinity`, with the same attach rules
    /// as [`crate::conntrack::Conntrack::open`]: a compatible file (layout
    /// version, capacity, seed, boot) is re-attached and recovered; anything
    /// else starts empty and says why. `now` is `CLOCK_MONOTONIC` ns.
    pub fn open(
        dir: &Path,
        capacity: usize,
        seed: u64,
        now: u64,
    ) -> Result<(Affinity, Attach), ShmError> {
        let n = capacity.clamp(1, u32::MAX as usize);
        let spec = Spec {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            capacity: n as u64,
            seed,
            sections: sections(n),
            params: Vec::new(),
        };
        let (mut file, opened) = SharedFile::open_rw(dir, FILE_NAME, &spec)?;
        let path = file.path().to_path_buf();
        let mut a = Affinity {
            entries: file.section(0, n)?,
            stripes: file.section(1, STRIPES)?,
            used: AtomicUsize::new(0),
            sweep_cursor: AtomicUsize::new(0),
            seed,
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
                repair: a.recover(now),
            },
            Opened::Created => {
                file.commit(MAGIC)?;
                Attach::Created { path }
            }
            Opened::Replaced(reason) => {
                file.commit(MAGIC)?;
                Attach::StartedEmpty { path, reason }
            }
        };
        a.file = Some(file);
        Ok((a, attach))
    }

    /// After attaching: release dead writers' locks and stripes, clear torn
    /// entries (affinity is a preference: a lost entry only means Maglev
    /// places the client again) and entries past the longest timeout, pull
    /// times from the future back to `now`, recount.
    fn recover(&mut self, now: u64) -> Repair {
        let t0 = std::time::Instant::now();
        let mut rep = Repair::default();
        for s in self.stripes.iter() {
            if s.swap(0, Ordering::Relaxed) != 0 {
                rep.stripes_held += 1;
            }
        }
        let mut used = 0;
        for e in self.entries.iter() {
            let s = e.seq.load(Ordering::Relaxed);
            let torn = s & 1 != 0;
            let s = s | 1;
            e.seq.store(s, Ordering::Relaxed);
            fence(Ordering::Release);
            let meta = e.w[W_META].load(Ordering::Relaxed);
            let last = e.w[W_LAST].load(Ordering::Relaxed);
            if meta & F_LIVE != 0 {
                if torn {
                    rep.torn += 1;
                    e.w[W_META].store(0, Ordering::Relaxed);
                } else if meta & !(F_LIVE | F_CLIENT_V6 | F_BACKEND_V6 | 0xffff << 16) != 0 {
                    rep.invalid += 1;
                    e.w[W_META].store(0, Ordering::Relaxed);
                } else if now.saturating_sub(last) >= MAX_TIMEOUT_NS {
                    rep.expired += 1;
                    e.w[W_META].store(0, Ordering::Relaxed);
                } else {
                    if last > now {
                        e.w[W_LAST].store(now, Ordering::Relaxed);
                        rep.clamped += 1;
                    }
                    used += 1;
                }
            } else if torn {
                rep.torn += 1;
            }
            e.seq.store(s.wrapping_add(1), Ordering::Release);
        }
        self.used.store(used, Ordering::Relaxed);
        rep.kept = used;
        rep.micros = t0.elapsed().as_micros() as u64;
        rep
    }

    /// The number of slots.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Live entries, including those past every timeout that no
    /// [`sweep`](Self::sweep) or overwrite has removed yet. Exact when no other
    /// thread is writing.
    pub fn len(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// True when there is no live entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory the table occupies (fixed at construction).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Affinity>()
            + std::mem::size_of_val::<[Entry]>(&self.entries)
            + std::mem::size_of_val::<[AtomicU32]>(&self.stripes)
    }

    /// The backend `client` was last sent to within `group`, if that was set
    /// less than `timeout_ns` before `now`. Does not refresh the entry.
    pub fn get(
        &self,
        client: IpAddr,
        group: u32,
        now: u64,
        timeout_ns: u64,
    ) -> Option<(IpAddr, u16)> {
        let (cw, v6) = (addr_words(client), client.is_ipv6());
        let home = self.home(&cw, v6, group);
        for i in self.window(home) {
            let s = self.read(i);
            if s.is(&cw, v6, group) {
                return (now.saturating_sub(s.w[W_LAST]) < timeout_ns).then(|| s.backend());
            }
        }
        None
    }

    /// Pins `client` within `group` to (`backend`, `port`) as of `now`: creates
    /// or overwrites the entry and refreshes its time. When the key's window is
    /// full, the least recently set entry there is replaced.
    pub fn set(&self, client: IpAddr, group: u32, backend: IpAddr, port: u16, now: u64) {
        let (cw, v6) = (addr_words(client), client.is_ipv6());
        let home = self.home(&cw, v6, group);
        let _g = self.lock_stripe(home % STRIPES);
        let mut meta = F_LIVE | (port as u64) << 16;
        if v6 {
            meta |= F_CLIENT_V6;
        }
        if backend.is_ipv6() {
            meta |= F_BACKEND_V6;
        }
        let bw = addr_words(backend);
        // A racing writer of another key may take our victim; try again then.
        for _ in 0..16 {
            let mut existing = None;
            let mut victim: Option<(usize, Snap)> = None;
            for i in self.window(home) {
                let s = self.read(i);
                if s.is(&cw, v6, group) {
                    existing = Some((i, s));
                    break;
                }
                let better = match &victim {
                    None => true,
                    Some((_, v)) => v.live() && (!s.live() || s.w[W_LAST] < v.w[W_LAST]),
                };
                if better {
                    victim = Some((i, s));
                }
            }
            let (i, s, fresh) = match (existing, victim) {
                (Some((i, s)), _) => (i, s, false),
                (None, Some((i, s))) => (i, s, !s.live()),
                (None, None) => return,
            };
            let e = &self.entries[i];
            if e.seq
                .compare_exchange(s.seq, s.seq | 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            fence(Ordering::Release);
            e.group.store(group, Ordering::Relaxed);
            e.w[W_CLIENT].store(cw[0], Ordering::Relaxed);
            e.w[W_CLIENT + 1].store(cw[1], Ordering::Relaxed);
            e.w[W_BACKEND].store(bw[0], Ordering::Relaxed);
            e.w[W_BACKEND + 1].store(bw[1], Ordering::Relaxed);
            e.w[W_META].store(meta, Ordering::Relaxed);
            // Never move an existing entry's time backwards (workers' clocks differ slightly).
            let last = if fresh || !s.is(&cw, v6, group) {
                now
            } else {
                now.max(s.w[W_LAST])
            };
            e.w[W_LAST].store(last, Ordering::Relaxed);
            e.seq.store(s.seq.wrapping_add(2), Ordering::Release);
            if fresh {
                self.used.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    }

    /// Forgets `client`'s entry within `group`. Returns whether one existed.
    pub fn remove(&self, client: IpAddr, group: u32) -> bool {
        let (cw, v6) = (addr_words(client), client.is_ipv6());
        let home = self.home(&cw, v6, group);
        let _g = self.lock_stripe(home % STRIPES);
        for i in self.window(home) {
            loop {
                let s = self.read(i);
                if !s.is(&cw, v6, group) {
                    break;
                }
                if self.try_clear(i, &s) {
                    return true;
                }
            }
        }
        false
    }

    /// Walks up to `budget` slots from a shared cursor and removes entries set
    /// `max_idle_ns` or longer before `now` (pass the largest affinity timeout
    /// in use; kube's maximum is 86400 s). Returns how many it removed.
    pub fn sweep(&self, now: u64, max_idle_ns: u64, budget: usize) -> usize {
        let n = budget.min(self.entries.len());
        if n == 0 {
            return 0;
        }
        let start = self.sweep_cursor.fetch_add(n, Ordering::Relaxed) % self.entries.len();
        let mut freed = 0;
        for k in 0..n {
            let i = (start + k) % self.entries.len();
            let s = self.read(i);
            if s.live() && now.saturating_sub(s.w[W_LAST]) >= max_idle_ns && self.try_clear(i, &s) {
                freed += 1;
            }
        }
        freed
    }

    fn home(&self, cw: &[u64; 2], v6: bool, group: u32) -> usize {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&cw[0].to_le_bytes());
        b[8..16].copy_from_slice(&cw[1].to_le_bytes());
        b[16..20].copy_from_slice(&group.to_le_bytes());
        b[20] = v6 as u8;
        let h = hash_bytes(self.seed, &b);
        (((h >> 32) * self.entries.len() as u64) >> 32) as usize
    }

    fn window(&self, home: usize) -> impl Iterator<Item = usize> {
        let n = self.entries.len();
        (0..WINDOW.min(n)).map(move |k| (home + k) % n)
    }

    /// Seqlock read (same protocol as conntrack records).
    fn read(&self, i: usize) -> Snap {
        let e = &self.entries[i];
        let mut spins = 0;
        loop {
            let s1 = e.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let group = e.group.load(Ordering::Relaxed);
                let w: [u64; WORDS] = std::array::from_fn(|k| e.w[k].load(Ordering::Relaxed));
                fence(Ordering::Acquire);
                if e.seq.load(Ordering::Relaxed) == s1 {
                    return Snap { seq: s1, group, w };
                }
            }
            backoff(&mut spins);
        }
    }

    /// Marks the entry free if it is still exactly `s`.
    fn try_clear(&self, i: usize, s: &Snap) -> bool {
        let e = &self.entries[i];
        if e.seq
            .compare_exchange(s.seq, s.seq | 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        fence(Ordering::Release);
        e.w[W_META].store(0, Ordering::Relaxed);
        e.seq.store(s.seq.wrapping_add(2), Ordering::Release);
        self.used.fetch_sub(1, Ordering::Relaxed);
        true
    }

    fn lock_stripe(&self, i: usize) -> StripeGuard<'_> {
        let mut spins = 0;
        while self.stripes[i]
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            backoff(&mut spins);
        }
        StripeGuard(&self.stripes[i])
    }
}

/// Holds one writer stripe; releases it on drop.
struct StripeGuard<'a>(&'a AtomicU32);

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    const S: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reattach_keeps_entries_and_repairs() {
        use crate::shm::tests::tempdir;
        let d = tempdir();
        let (a, at) = Affinity::open(d.path(), 256, 5, 100 * S).unwrap();
        assert!(matches!(at, Attach::Created { .. }), "{at}");
        for i in 0..50u8 {
            a.set(
                IpAddr::from([198, 18, 0, i]),
                1,
                ip("10.0.0.2"),
                8080,
                100 * S,
            );
        }
        a.set(ip("2001:db8::1"), 2, ip("fd00::2"), 443, 100 * S);
        // A writer dies inside one entry; a stripe stays held.
        let home = a.home(&addr_words(ip("198.18.0.7")), false, 1);
        let i = a
            .window(home)
            .find(|&i| a.read(i).is(&addr_words(ip("198.18.0.7")), false, 1))
            .unwrap();
        a.entries[i].seq.fetch_add(1, Ordering::Relaxed);
        a.stripes[3].store(1, Ordering::Relaxed);
        let f = {
            let mut a = a;
            a.file.take()
        };
        drop(f);
        let (a, at) = Affinity::open(d.path(), 256, 5, 200 * S).unwrap();
        let Attach::Reattached { clean, repair, .. } = at else {
            panic!("{at}")
        };
        assert!(!clean);
        assert_eq!((repair.kept, repair.torn, repair.stripes_held), (50, 1, 1));
        assert_eq!(a.len(), 50);
        assert_eq!(
            a.get(ip("198.18.0.3"), 1, 200 * S, 1000 * S),
            Some((ip("10.0.0.2"), 8080))
        );
        assert_eq!(a.get(ip("198.18.0.7"), 1, 200 * S, 1000 * S), None);
        assert_eq!(
            a.get(ip("2001:db8::1"), 2, 200 * S, 1000 * S),
            Some((ip("fd00::2"), 443))
        );
        a.set(ip("198.18.0.7"), 1, ip("10.0.0.3"), 8080, 200 * S);
        drop(a);
        // Another capacity: empty.
        let (a, at) = Affinity::open(d.path(), 512, 5, 200 * S).unwrap();
        assert!(matches!(at, Attach::StartedEmpty { .. }), "{at}");
        assert!(a.is_empty());
    }

    #[test]
    fn entry_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
        fn sync<T: Send + Sync>() {}
        sync::<Affinity>();
    }

    #[test]
    fn set_get_timeout_and_refresh() {
        let a = Affinity::new(1024, 1);
        let c = ip("198.18.0.1");
        assert_eq!(a.get(c, 1, 0, 10 * S), None);
        a.set(c, 1, ip("10.0.0.2"), 8080, 0);
        assert_eq!(a.get(c, 1, 9 * S, 10 * S), Some((ip("10.0.0.2"), 8080)));
        assert_eq!(a.get(c, 1, 10 * S, 10 * S), None, "timeout passed");
        assert_eq!(a.get(c, 2, S, 10 * S), None, "groups are separate");
        assert_eq!(a.get(ip("198.18.0.2"), 1, S, 10 * S), None);
        // get does not refresh; set does.
        a.set(c, 1, ip("10.0.0.2"), 8080, 8 * S);
        assert_eq!(a.get(c, 1, 17 * S, 10 * S), Some((ip("10.0.0.2"), 8080)));
        // Re-pinning to another backend overwrites in place.
        a.set(c, 1, ip("10.0.0.3"), 8081, 18 * S);
        assert_eq!(a.get(c, 1, 18 * S, 10 * S), Some((ip("10.0.0.3"), 8081)));
        assert_eq!(a.len(), 1);
        // A lagging worker's clock does not move the entry back in time.
        a.set(c, 1, ip("10.0.0.3"), 8081, 17 * S);
        assert_eq!(
            a.get(c, 1, 27 * S + 1, 10 * S),
            Some((ip("10.0.0.3"), 8081))
        );
        assert!(a.remove(c, 1));
        assert!(!a.remove(c, 1));
        assert_eq!(a.get(c, 1, 18 * S, 10 * S), None);
        assert!(a.is_empty());
    }

    #[test]
    fn ipv6_and_mapped_are_distinct() {
        let a = Affinity::new(64, 1);
        a.set(ip("2001:db8::1"), 5, ip("fd00::2"), 443, 0);
        assert_eq!(
            a.get(ip("2001:db8::1"), 5, 0, S),
            Some((ip("fd00::2"), 443))
        );
        a.set(ip("198.18.0.1"), 5, ip("10.0.0.1"), 80, 0);
        assert_eq!(a.get(ip("::ffff:198.18.0.1"), 5, 0, S), None);
    }

    #[test]
    fn full_window_replaces_least_recently_set() {
        let a = Affinity::new(8, 1); // one window = the whole table
        for i in 0..8u8 {
            a.set(
                IpAddr::from([198, 18, 0, i]),
                0,
                ip("10.0.0.1"),
                80,
                i as u64 * S,
            );
        }
        assert_eq!(a.len(), 8);
        a.set(ip("198.18.1.1"), 0, ip("10.0.0.9"), 90, 100 * S);
        assert_eq!(a.len(), 8);
        assert_eq!(
            a.get(ip("198.18.0.0"), 0, 100 * S, 1000 * S),
            None,
            "oldest replaced"
        );
        for i in 1..8u8 {
            assert!(a
                .get(IpAddr::from([198, 18, 0, i]), 0, 100 * S, 1000 * S)
                .is_some());
        }
        assert_eq!(
            a.get(ip("198.18.1.1"), 0, 100 * S, 1000 * S),
            Some((ip("10.0.0.9"), 90))
        );
    }

    #[test]
    fn sweep_removes_idle_entries() {
        let a = Affinity::new(256, 3);
        for i in 0..100u8 {
            a.set(
                IpAddr::from([198, 18, 0, i]),
                0,
                ip("10.0.0.1"),
                80,
                i as u64 * S,
            );
        }
        assert_eq!(a.len(), 100);
        assert_eq!(a.sweep(150 * S, 100 * S, 256), 51);
        assert_eq!(a.len(), 49);
        assert_eq!(a.sweep(1000 * S, 100 * S, 256), 49);
        assert!(a.is_empty());
    }

    #[test]
    fn concurrent_readers_never_see_a_torn_backend() {
        // The backend port is always derived from the backend address.
        let a = Arc::new(Affinity::new(64, 9));
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<IpAddr> = (0..16u8).map(|i| IpAddr::from([198, 18, 0, i])).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut hs = Vec::new();
        for w in 0..2u64 {
            let (a, clients) = (a.clone(), clients.clone());
            hs.push(std::thread::spawn(move || {
                let mut n = w;
                while std::time::Instant::now() < deadline {
                    for c in &clients {
                        let b = (n % 250) as u8;
                        a.set(*c, 0, IpAddr::from([10, 0, 1, b]), 1000 + b as u16, n);
                        n += 1;
                    }
                }
            }));
        }
        for _ in 0..2 {
            let (a, clients, stop) = (a.clone(), clients.clone(), stop.clone());
            hs.push(std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for c in &clients {
                        if let Some((IpAddr::V4(b), port)) = a.get(*c, 0, 0, u64::MAX) {
                            assert_eq!(port, 1000 + b.octets()[3] as u16, "torn entry");
                            seen += 1;
                        }
                    }
                }
                assert!(seen > 0);
            }));
        }
        for h in hs.drain(..2) {
            h.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(a.len(), 16, "one entry per client");
    }
}
