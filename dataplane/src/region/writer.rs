//! The region's one writer (the control process).

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{self, BlockRef, Layout};
use super::{io_err, monotonic_ms, pid_alive, region_path, Map, RegionError, HEARTBEAT_TIMEOUT_MS};
use crate::tables::{Frontend, Tables};

/// Sizes of a region the writer creates, and its patience.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub slots: usize,
    pub readers: usize,
    /// Bytes per slot (frontends 64 B, backends 32 B, source ranges 20 B
    /// each, plus the metadata JSON). 10,000 Services × 10 endpoints need
    /// about 5 MiB.
    pub slot_size: usize,
    /// Bytes of Maglev arena (sparse: only pages in use take memory).
    pub arena_size: usize,
    /// How long a publication waits for readers to leave a slot before it
    /// fails with [`RegionError::ReadersStuck`].
    pub stuck_wait: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            slots: 4,
            readers: 96,
            slot_size: 32 << 20,
            arena_size: 1 << 30,
            stuck_wait: Duration::from_millis(500),
        }
    }
}

/// What one publication did.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    pub generation: u64,
    pub slot: usize,
    /// Maglev blocks written (new or changed backend sets).
    pub blocks_written: usize,
    /// Maglev blocks kept from earlier generations.
    pub blocks_reused: usize,
    /// Bytes of the slot body.
    pub body_bytes: usize,
    /// Time spent waiting for readers to free a slot.
    pub waited: Duration,
}

/// A Maglev table's identity — its new-flow backends (address, port,
/// weight), M and the hash seed, what the table is a function of (as
/// `TablesBuilder` assumes when it shares tables) — as a 128-bit hash (two
/// independently seeded 64-bit hashes): looking a table up reads only its
/// backends, never the previous entries.
type MaglevId = u128;

#[derive(Debug)]
struct Block {
    off: u32,
    bytes: u32,
    width: u8,
    /// Slots referencing this block.
    refs: u32,
    id: MaglevId,
    /// The publication attempt that last counted a reference to it.
    stamp: u64,
    live: bool,
}

/// The writer. One per region (the header records its pid).
#[derive(Debug)]
pub struct RegionWriter {
    pub(super) map: Arc<Map>,
    path: PathBuf,
    pub(super) layout: Layout,
    opts: WriterOptions,
    by_id: hashbrown::HashMap<MaglevId, u32>,
    hashers: [hashbrown::DefaultHashBuilder; 2],
    /// The last metadata blob and what it encodes (re-encoded only on change).
    meta_cache: Option<(
        crate::tables::NodeConfig,
        Vec<crate::tables::ServiceInfo>,
        Vec<u8>,
    )>,
    /// Blocks (a slab: indices stay valid; freed entries are reused).
    blocks: Vec<Block>,
    free_idx: Vec<u32>,
    /// Distinct blocks (slab indices) each slot references.
    slot_blocks: Vec<Vec<u32>>,
    /// Publication attempts so far (block stamps).
    epoch: u64,
    /// Free arena ranges: offset → length (coalesced).
    free: BTreeMap<u32, u32>,
    /// Arena bytes known to be allocated in the file (`posix_fallocate`d),
    /// so that a full tmpfs is an error here, not a SIGBUS later.
    committed: usize,
    generation: u64,
}

const BLOCK_ALIGN: u32 = 64;

/// A live reader: (pid, oldest protected generation).
type ReaderPin = (u32, u64);

fn fallocate(file: &std::fs::File, off: usize, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open fd.
    let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), off as i64, len as i64) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r))
    }
}

impl RegionWriter {
    /// Opens `DIR/tables`, creating the directory (0700) and the file (0600)
    /// when missing, or recreating the file when its layout is not this
    /// build's (readers of the old file notice the new inode). An existing
    /// region's state is recovered from its valid slots; the next
    /// generation continues its numbering.
    pub fn open(dir: &Path, opts: WriterOptions) -> Result<Self, RegionError> {
        let want = Layout {
            n_slots: opts.slots,
            n_readers: opts.readers,
            slot_size: opts.slot_size,
            arena_size: opts.arena_size,
        };
        want.check().map_err(RegionError::Tables)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err(dir, e))?;
        let path = region_path(dir);
        let existing = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => {
                let len = f.metadata().map_err(|e| io_err(&path, e))?.len() as usize;
                let mut h = [0u8; 64];
                use std::os::unix::fs::FileExt;
                let ok = f.read_exact_at(&mut h, 0).is_ok();
                match Layout::from_header(&h, len) {
                    Ok(l) if ok => Some((f, l)),
                    Ok(_) | Err(_) => {
                        let why = Layout::from_header(&h, len)
                            .err()
                            .unwrap_or_else(|| "unreadable header".into());
                        tracing_warn(&format!(
                            "{}: {why}; creating a new region (readers start over)",
                            path.display()
                        ));
                        None
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&path, e)),
        };
        let (file, layout) = match existing {
            Some(x) => x,
            None => {
                let tmp = dir.join(format!(".tables.{}.tmp", std::process::id()));
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| io_err(&tmp, e))?;
                f.set_len(want.file_size() as u64)
                    .map_err(|e| io_err(&tmp, e))?;
                fallocate(&f, 0, format::HEADER_SIZE).map_err(|e| io_err(&tmp, e))?;
                use std::os::unix::fs::FileExt;
                f.write_all_at(&want.header_bytes(), 0)
                    .map_err(|e| io_err(&tmp, e))?;
                std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
                (f, want)
            }
        };
        // Its length equals the layout's (checked or set above); all access
        // is through `Map`'s raw-pointer accessors.
        let raw = memmap2::MmapOptions::new()
            .map_raw(&file)
            .map_err(|e| io_err(&path, e))?;
        let map = Arc::new(Map {
            raw,
            writable: true,
        });
        // Take the writer lock: a live other writer keeps it.
        let me = std::process::id();
        let lock = map.u32_at(format::H_WRITER_PID);
        loop {
            let cur = lock.load(Ordering::SeqCst);
            if cur != 0 && cur != me && pid_alive(cur) {
                return Err(RegionError::AnotherWriter(cur));
            }
            if lock
                .compare_exchange(cur, me, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                break;
            }
        }
        let mut w = RegionWriter {
            map,
            path,
            layout,
            opts,
            by_id: Default::default(),
            hashers: Default::default(),
            meta_cache: None,
            blocks: Vec::new(),
            free_idx: Vec::new(),
            slot_blocks: vec![Vec::new(); layout.n_slots],
            epoch: 0,
            free: BTreeMap::new(),
            committed: 0,
            generation: 0,
        };
        w.recover(&file);
        Ok(w)
    }

    /// Rebuilds the block map and free list from the valid slots; slots
    /// that do not validate (a writer killed mid-write) become free.
    fn recover(&mut self, file: &std::fs::File) {
        let l = self.layout;
        let active = self.map.u64_at(format::H_ACTIVE).load(Ordering::SeqCst);
        let mut max_gen = active >> 8;
        let mut used: Vec<(u32, u32)> = Vec::new();
        let mut by_off: HashMap<u32, u32> = HashMap::new();
        for s in 0..l.n_slots {
            let d = Layout::desc_off(s);
            let g = self
                .map
                .u64_at(d + format::D_GENERATION)
                .load(Ordering::Acquire);
            if g == 0 {
                continue;
            }
            let t = super::reader::read_slot(&self.map, &l, s, g);
            match t {
                Ok(t) => {
                    max_gen = max_gen.max(g);
                    let mut mine = Vec::new();
                    self.epoch += 1;
                    for f in &t.frontends {
                        if f.maglev_width == 0 {
                            continue;
                        }
                        let off = f.maglev_off;
                        if let Some(&i) = by_off.get(&off) {
                            let b = &mut self.blocks[i as usize];
                            if b.stamp != self.epoch {
                                b.stamp = self.epoch;
                                b.refs += 1;
                                mine.push(i);
                            }
                            continue;
                        }
                        let bytes = format::packed_bytes(f.maglev_len, f.maglev_width) as u32;
                        let id = self.ident(&t, f);
                        let i = self.blocks.len() as u32;
                        self.by_id.insert(id, i);
                        by_off.insert(off, i);
                        self.blocks.push(Block {
                            off,
                            bytes,
                            width: f.maglev_width,
                            refs: 1,
                            id,
                            stamp: self.epoch,
                            live: true,
                        });
                        used.push((off, bytes.div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN));
                        mine.push(i);
                    }
                    self.slot_blocks[s] = mine;
                }
                Err(e) => {
                    tracing_warn(&format!("slot {s} (generation {g}) dropped: {e}"));
                    if (active & 0xff) as usize != s || active >> 8 != g {
                        self.map
                            .u64_at(d + format::D_GENERATION)
                            .store(0, Ordering::Release);
                    }
                }
            }
        }
        // Free list = the arena minus the used blocks.
        used.sort_unstable();
        let mut at = 0u32;
        let end = l.arena_size as u64;
        for (off, len) in used {
            if off > at {
                self.free.insert(at, off - at);
            }
            at = at.max(off.saturating_add(len));
        }
        if (at as u64) < end {
            self.free.insert(at, (end - at as u64) as u32);
        }
        self.committed = at as usize;
        let _ = file;
        self.generation = max_gen;
    }

    /// The last generation published (or recovered).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Bytes of the arena in Maglev blocks now.
    pub fn arena_used(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.live)
            .map(|b| b.bytes.div_ceil(BLOCK_ALIGN) as usize * BLOCK_ALIGN as usize)
            .sum()
    }

    /// Bytes of the file actually allocated (`st_blocks`), i.e. the
    /// region's memory on tmpfs.
    pub fn resident_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    }

    /// Publishes `t` as the next generation (its `generation` field is
    /// ignored: the region numbers generations). On error the active
    /// generation is unchanged.
    pub fn publish(&mut self, t: &Tables) -> Result<PublishReport, RegionError> {
        let t0 = Instant::now();
        self.reclaim();
        let slot = self.pick_slot()?;
        let waited = t0.elapsed();
        let l = self.layout;
        let d = Layout::desc_off(slot);
        let gen = self.generation + 1;
        // 1. Invalidate the slot, then release its blocks (no reader holds
        //    it: `pick_slot`).
        self.map
            .u64_at(d + format::D_GENERATION)
            .store(0, Ordering::SeqCst);
        for i in std::mem::take(&mut self.slot_blocks[slot]) {
            self.unref(i);
        }
        // 2. Maglev blocks: reuse by identity, else write a new one.
        let mut rep = PublishReport {
            generation: gen,
            slot,
            waited,
            ..Default::default()
        };
        self.epoch += 1;
        let epoch = self.epoch;
        let mut refs: Vec<u32> = Vec::new();
        // Frontends of one Service port (TCP/UDP, ClusterIP/NodePort) are
        // adjacent and share their table: a one-entry cache catches them.
        let mut last: Option<((u8, u32, u32), BlockRef)> = None;
        let mut out = Vec::with_capacity(t.frontends.len());
        for f in &t.frontends {
            if f.n_new == 0 || f.maglev_len == 0 {
                out.push(BlockRef::default());
                continue;
            }
            let hk = (f.maglev_width, f.maglev_off, f.maglev_len);
            if let Some((k, b)) = last {
                if k == hk {
                    out.push(b);
                    continue;
                }
            }
            let (i, b) = match self.block_for(t, f, &mut rep) {
                Ok(x) => x,
                Err(e) => {
                    // Keep the references taken so far owned by this
                    // (invalid) slot; they are released when it is reused.
                    self.slot_blocks[slot] = refs;
                    return Err(e);
                }
            };
            let blk = &mut self.blocks[i as usize];
            if blk.stamp != epoch {
                blk.stamp = epoch;
                blk.refs += 1;
                refs.push(i);
            }
            last = Some((hk, b));
            out.push(b);
        }
        self.slot_blocks[slot] = refs;
        // 3. The body, encoded in place.
        let meta = self.meta_for(t);
        let len = format::body_len(t, meta.len());
        if len > l.slot_size {
            return Err(RegionError::SlotTooSmall {
                need: len,
                size: l.slot_size,
            });
        }
        rep.body_bytes = len;
        // SAFETY: the slot is the writer's alone from its invalidation to
        // the descriptor's generation store below: no reader is protected
        // on it (`pick_slot`), and unprotected copies (`inspect`) are
        // checked by the seqlock and refused when torn.
        let body = unsafe { self.map.slice_mut(l.slot_off(slot), len) };
        format::encode_body_into(body, t, gen, &out, &meta);
        let crc = crc32c::crc32c(body);
        self.map
            .u64_at(d + format::D_LEN)
            .store(len as u64, Ordering::Relaxed);
        self.map
            .u64_at(d + format::D_CRC)
            .store(crc as u64, Ordering::Relaxed);
        self.map
            .u64_at(d + format::D_GENERATION)
            .store(gen, Ordering::Release);
        // 4. Flip.
        self.map
            .u64_at(format::H_ACTIVE)
            .store(gen << 8 | slot as u64, Ordering::SeqCst);
        self.map
            .u64_at(format::H_PUBLISHES)
            .fetch_add(1, Ordering::Relaxed);
        self.generation = gen;
        Ok(rep)
    }

    /// The block holding `f`'s Maglev table: an existing one with the same
    /// identity, or a new one. A Maglev table is a function of its identity
    /// (backends, M, seed); the writer relies on that as `TablesBuilder`
    /// does, without reading the (cold) entries back.
    fn block_for(
        &mut self,
        t: &Tables,
        f: &Frontend,
        rep: &mut PublishReport,
    ) -> Result<(u32, BlockRef), RegionError> {
        let id = self.ident(t, f);
        if let Some(&i) = self.by_id.get(&id) {
            let b = &self.blocks[i as usize];
            rep.blocks_reused += 1;
            return Ok((
                i,
                BlockRef {
                    off: b.off,
                    width: b.width,
                },
            ));
        }
        let entries: Vec<u16> = if f.maglev_width == 0 {
            t.maglev_table(f).to_vec()
        } else {
            t.maglev_entries(f)
        };
        if entries.len() != f.maglev_len as usize {
            return Err(RegionError::Tables(format!(
                "frontend {:?}: Maglev table of {} entries, expected {}",
                f.key,
                entries.len(),
                f.maglev_len
            )));
        }
        let max = entries.iter().copied().max().unwrap_or(0) as usize;
        let width = format::width_for((f.n_new as usize).max(max + 1));
        let bytes = format::packed_bytes(f.maglev_len, width);
        let off = self.alloc(bytes)?;
        let mut buf = vec![0u8; bytes];
        format::pack(&entries, width, &mut buf);
        self.map.write(self.layout.arena_off() + off as usize, &buf);
        let blk = Block {
            off,
            bytes: bytes as u32,
            width,
            refs: 0,
            id,
            stamp: 0,
            live: true,
        };
        let i = match self.free_idx.pop() {
            Some(i) => {
                self.blocks[i as usize] = blk;
                i
            }
            None => {
                self.blocks.push(blk);
                (self.blocks.len() - 1) as u32
            }
        };
        self.by_id.insert(id, i);
        rep.blocks_written += 1;
        Ok((i, BlockRef { off, width }))
    }

    /// The identity of `f`'s Maglev table (see [`MaglevId`]).
    fn ident(&self, t: &Tables, f: &Frontend) -> MaglevId {
        use std::hash::{BuildHasher, Hash, Hasher};
        let [mut a, mut b] = [
            self.hashers[0].build_hasher(),
            self.hashers[1].build_hasher(),
        ];
        for h in [&mut a, &mut b] {
            for be in t.new_backends(f) {
                be.ip.hash(h);
                be.port.hash(h);
                be.weight.hash(h);
            }
            f.maglev_len.hash(h);
            t.node.hash_seed.hash(h);
        }
        (a.finish() as u128) << 64 | b.finish() as u128
    }

    /// The metadata blob for `t`, re-encoded only when it changed.
    fn meta_for(&mut self, t: &Tables) -> Vec<u8> {
        if let Some((node, services, blob)) = &self.meta_cache {
            if *node == t.node && *services == t.services {
                return blob.clone();
            }
        }
        let blob = format::encode_meta(t);
        self.meta_cache = Some((t.node.clone(), t.services.clone(), blob.clone()));
        blob
    }

    fn unref(&mut self, i: u32) {
        let Some(b) = self.blocks.get_mut(i as usize) else {
            return;
        };
        if !b.live {
            return;
        }
        b.refs = b.refs.saturating_sub(1);
        if b.refs > 0 {
            return;
        }
        b.live = false;
        let (id, off, len) = (b.id, b.off, b.bytes.div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN);
        if self.by_id.get(&id) == Some(&i) {
            self.by_id.remove(&id);
        }
        self.free_idx.push(i);
        self.release(off, len);
    }

    /// First-fit allocation of `bytes` (rounded to 64) in the arena.
    fn alloc(&mut self, bytes: usize) -> Result<u32, RegionError> {
        let need = (bytes as u32).div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN;
        let Some((&off, &len)) = self.free.iter().find(|(_, &len)| len >= need) else {
            return Err(RegionError::ArenaFull {
                need: bytes,
                size: self.layout.arena_size,
            });
        };
        self.free.remove(&off);
        if len > need {
            self.free.insert(off + need, len - need);
        }
        let end = (off + need) as usize;
        if end > self.committed {
            // Allocate file pages in 4 MiB steps: ENOSPC here instead of a
            // SIGBUS on a full tmpfs.
            let to = (end.div_ceil(4 << 20) * (4 << 20)).min(self.layout.arena_size);
            let file = OpenOptions::new()
                .write(true)
                .open(&self.path)
                .map_err(|e| io_err(&self.path, e))?;
            fallocate(
                &file,
                self.layout.arena_off() + self.committed,
                to - self.committed,
            )
            .map_err(|e| io_err(&self.path, e))?;
            self.committed = to;
        }
        Ok(off)
    }

    fn release(&mut self, mut off: u32, mut len: u32) {
        if let Some((&p, &pl)) = self.free.range(..off).next_back() {
            if p + pl == off {
                self.free.remove(&p);
                off = p;
                len += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(off + len)) {
            self.free.remove(&(off + len));
            len += nl;
        }
        self.free.insert(off, len);
    }

    /// Empties every slot no reader protects (other than the active one)
    /// and frees the blocks only they referenced, so that the arena holds
    /// little more than the generations in use (after a full resync: the
    /// active set and the new one, not one per slot).
    fn reclaim(&mut self) {
        let active = self.map.u64_at(format::H_ACTIVE).load(Ordering::SeqCst);
        if active == 0 {
            return;
        }
        let active_slot = (active & 0xff) as usize;
        fence(Ordering::SeqCst);
        let (ranges, _) = self.live_pins();
        for s in 0..self.layout.n_slots {
            if s == active_slot {
                continue;
            }
            let gen_w = self.map.u64_at(Layout::desc_off(s) + format::D_GENERATION);
            let g = gen_w.load(Ordering::Acquire);
            if g == 0 || ranges.iter().any(|&(lo, hi)| lo <= g && g <= hi) {
                continue;
            }
            gen_w.store(0, Ordering::SeqCst);
            for i in std::mem::take(&mut self.slot_blocks[s]) {
                self.unref(i);
            }
        }
    }

    /// A slot to write: empty, or not active and older than every live
    /// reader's pin. Waits up to `stuck_wait`, then fails.
    fn pick_slot(&mut self) -> Result<usize, RegionError> {
        let l = self.layout;
        let start = Instant::now();
        let mut nap = Duration::from_micros(20);
        loop {
            let active = self.map.u64_at(format::H_ACTIVE).load(Ordering::SeqCst);
            let active_slot = if active == 0 {
                usize::MAX
            } else {
                (active & 0xff) as usize
            };
            fence(Ordering::SeqCst);
            let (ranges, pinned) = self.live_pins();
            let mut best: Option<(u64, usize)> = None;
            for s in 0..l.n_slots {
                if s == active_slot {
                    continue;
                }
                let g = self
                    .map
                    .u64_at(Layout::desc_off(s) + format::D_GENERATION)
                    .load(Ordering::Acquire);
                let free = g == 0 || !ranges.iter().any(|&(lo, hi)| lo <= g && g <= hi);
                if free && best.is_none_or(|(bg, _)| g < bg) {
                    best = Some((g, s));
                }
            }
            if let Some((_, s)) = best {
                return Ok(s);
            }
            if start.elapsed() >= self.opts.stuck_wait {
                self.map
                    .u64_at(format::H_STUCK)
                    .fetch_add(1, Ordering::Relaxed);
                return Err(RegionError::ReadersStuck {
                    waited_ms: start.elapsed().as_millis() as u64,
                    pinned,
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(5));
        }
    }

    /// The generation ranges live readers protect, and every live
    /// (pid, oldest protected generation). Dead readers' slots are reclaimed.
    fn live_pins(&self) -> (Vec<(u64, u64)>, Vec<ReaderPin>) {
        let now = monotonic_ms();
        let mut ranges = Vec::new();
        let mut all = Vec::new();
        for r in 0..self.layout.n_readers {
            let off = Layout::reader_off(r);
            let pid_w = self.map.u32_at(off + format::R_PID);
            let pid = pid_w.load(Ordering::SeqCst);
            if pid == 0 {
                continue;
            }
            let hb = self
                .map
                .u64_at(off + format::R_HEARTBEAT)
                .load(Ordering::SeqCst);
            if !pid_alive(pid) && now.saturating_sub(hb) > HEARTBEAT_TIMEOUT_MS {
                let _ = pid_w.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
                continue;
            }
            let lo = self
                .map
                .u64_at(off + format::R_GENERATION)
                .load(Ordering::SeqCst);
            let hi = self
                .map
                .u64_at(off + format::R_LIMIT)
                .load(Ordering::SeqCst);
            ranges.push((lo, hi));
            all.push((pid, lo));
        }
        (ranges, all)
    }
}

impl Drop for RegionWriter {
    fn drop(&mut self) {
        let me = std::process::id();
        let _ = self.map.u32_at(format::H_WRITER_PID).compare_exchange(
            me,
            0,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

fn tracing_warn(msg: &str) {
    tracing::warn!("{msg}");
}
