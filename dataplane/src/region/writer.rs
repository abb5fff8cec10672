//! The region's one writer (the control process).

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::format::{self, BlockRef, Layout, SegRef};
use super::{io_err, monotonic_ms, pid_alive, region_path, Map, RegionError, HEARTBEAT_TIMEOUT_MS};
use crate::tables::{Backend, Frontend, MaglevTable, NodeConfig, Segment, Tables};

/// Sizes of a region the writer creates, and its patience.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub slots: usize,
    pub readers: usize,
    /// Bytes per slot: 64 + 16 per Service + the node settings (JSON).
    /// 10,000 Services need 160 KiB; the default holds about 2 million.
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
    /// Segments (Services) written: new or changed.
    pub segments_written: usize,
    /// Segments referenced as they were (unchanged Services).
    pub segments_kept: usize,
    /// Maglev blocks written (new backend sets).
    pub blocks_written: usize,
    /// Maglev tables of written segments found in the arena already.
    pub blocks_reused: usize,
    /// Frontends in the generation.
    pub frontends: usize,
    /// Bytes of the slot body.
    pub body_bytes: usize,
    /// Bytes written into the arena (segments and Maglev blocks).
    pub arena_bytes_written: usize,
    /// Time spent waiting for readers to free a slot.
    pub waited: Duration,
}

/// A Maglev table's identity — its new-flow backends (address, port,
/// weight), M and the hash seed, what the table is a function of (as
/// `TablesBuilder` assumes when it shares tables) — as a 128-bit hash (two
/// independently seeded 64-bit hashes): looking a table up reads only its
/// backends, never the previous entries.
type MaglevId = u128;

/// A Maglev block in the arena.
#[derive(Debug)]
struct Block {
    off: u32,
    bytes: u32,
    width: u8,
    /// Segment blocks referencing it.
    refs: u32,
    id: MaglevId,
    live: bool,
}

/// A segment block in the arena: one Service's records. Immutable; part of
/// every generation from `born` up to (not including) `died`.
#[derive(Debug)]
struct SegBlock {
    at: SegRef,
    born: u64,
    /// `u64::MAX` while in the latest list.
    died: u64,
    /// The Maglev blocks it references (distinct).
    maglev: Vec<u32>,
    /// The segment it encodes (keeps the `Arc`'s address, the key of
    /// `by_ptr`, from being reused); `None` after recovery.
    seg: Option<Arc<Segment>>,
    /// Services, frontends, backends, source ranges.
    counts: [u32; 4],
    live: bool,
}

/// One position of the latest published list.
#[derive(Debug, Clone, Copy)]
struct Cur {
    ptr: usize,
    idx: u32,
    at: SegRef,
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
    /// Maglev blocks (a slab: indices stay valid; freed entries are reused).
    blocks: Vec<Block>,
    free_idx: Vec<u32>,
    /// Segment blocks (a slab).
    segs: Vec<SegBlock>,
    free_seg: Vec<u32>,
    /// Live segment blocks by the address of the `Arc<Segment>` they encode.
    by_ptr: hashbrown::HashMap<usize, u32>,
    /// Live segment blocks by (CRC, length): content identity, for segments
    /// that are equal but not the same `Arc` (tables split into segments,
    /// a Service derived again to the same result).
    by_crc: hashbrown::HashMap<(u32, u32), u32>,
    /// The latest published list, in order, and its totals.
    current: Vec<Cur>,
    totals: [u64; 4],
    /// Segment blocks out of the latest list, freed once no slot holds a
    /// generation in their lifetime.
    retired: Vec<u32>,
    /// The node settings last encoded.
    node_cache: Option<(crate::tables::NodeConfig, Vec<u8>)>,
    /// The serial number of the next segment block written (never 0).
    next_serial: u32,
    /// Free arena ranges: offset → length (coalesced).
    free: BTreeMap<u32, u32>,
    /// Arena bytes known to be allocated in the file (`posix_fallocate`d),
    /// so that a full tmpfs is an error here, not a SIGBUS later.
    committed: usize,
    generation: u64,
}

const BLOCK_ALIGN: u32 = 64;

fn aligned(bytes: u32) -> u32 {
    bytes.div_ceil(BLOCK_ALIGN) * BLOCK_ALIGN
}
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
            blocks: Vec::new(),
            free_idx: Vec::new(),
            segs: Vec::new(),
            free_seg: Vec::new(),
            by_ptr: Default::default(),
            by_crc: Default::default(),
            current: Vec::new(),
            totals: [0; 4],
            retired: Vec::new(),
            node_cache: None,
            next_serial: 1,
            free: BTreeMap::new(),
            committed: 0,
            generation: 0,
        };
        w.recover(&file);
        Ok(w)
    }

    /// Rebuilds the block maps and free list from the valid slots; slots
    /// that do not validate (a writer killed mid-write) become free. The
    /// recovered segments are retired at once (this writer holds none of
    /// their `Arc`s: its first publication writes or finds by content every
    /// segment); their Maglev blocks stay reusable by identity.
    fn recover(&mut self, file: &std::fs::File) {
        let l = self.layout;
        let active = self.map.u64_at(format::H_ACTIVE).load(Ordering::SeqCst);
        let mut max_gen = active >> 8;
        let mut used: Vec<(u32, u32)> = Vec::new();
        let mut seg_by_off: HashMap<u32, u32> = HashMap::new();
        let mut mg_by_off: HashMap<u32, u32> = HashMap::new();
        for s in 0..l.n_slots {
            let d = Layout::desc_off(s);
            let g = self
                .map
                .u64_at(d + format::D_GENERATION)
                .load(Ordering::Acquire);
            if g == 0 {
                continue;
            }
            match self.recover_slot(s, g) {
                Ok(segments) => {
                    max_gen = max_gen.max(g);
                    for (at, t) in segments {
                        if let Some(&i) = seg_by_off.get(&at.off) {
                            let b = &mut self.segs[i as usize];
                            b.born = b.born.min(g);
                            b.died = b.died.max(g + 1);
                            continue;
                        }
                        let mut maglev = Vec::new();
                        for f in &t.frontends {
                            if f.maglev_width == 0 {
                                continue;
                            }
                            let off = f.maglev_off;
                            let i = match mg_by_off.get(&off) {
                                Some(&i) => i,
                                None => {
                                    let bytes =
                                        format::packed_bytes(f.maglev_len, f.maglev_width) as u32;
                                    let id = self.ident(&t, f, t.node.hash_seed);
                                    let i = self.blocks.len() as u32;
                                    self.by_id.insert(id, i);
                                    mg_by_off.insert(off, i);
                                    self.blocks.push(Block {
                                        off,
                                        bytes,
                                        width: f.maglev_width,
                                        refs: 0,
                                        id,
                                        live: true,
                                    });
                                    used.push((off, aligned(bytes)));
                                    i
                                }
                            };
                            if !maglev.contains(&i) {
                                maglev.push(i);
                                self.blocks[i as usize].refs += 1;
                            }
                        }
                        self.next_serial = self.next_serial.max(at.serial.wrapping_add(1)).max(1);
                        let i = self.segs.len() as u32;
                        seg_by_off.insert(at.off, i);
                        self.by_crc.insert((at.crc, at.len), i);
                        used.push((at.off, aligned(at.len)));
                        self.segs.push(SegBlock {
                            at,
                            born: g,
                            died: g + 1,
                            maglev,
                            seg: None,
                            counts: [
                                t.services.len() as u32,
                                t.frontends.len() as u32,
                                t.backends.len() as u32,
                                t.source_ranges.len() as u32,
                            ],
                            live: true,
                        });
                        self.retired.push(i);
                    }
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

    /// The segments of slot `s` holding generation `g`, each validated and
    /// decoded on its own (with the generation's node settings).
    fn recover_slot(&self, s: usize, g: u64) -> Result<Vec<(SegRef, Tables)>, String> {
        let l = self.layout;
        let body = super::reader::read_body(&self.map, &l, s)?;
        let b = format::decode_body(&body, g)?;
        let mut out = Vec::with_capacity(b.segments.len());
        for (i, at) in b.segments.iter().enumerate() {
            let mut t = Tables {
                node: b.node.clone(),
                ..Tables::default()
            };
            let buf = (at.off as usize)
                .checked_add(at.len as usize)
                .filter(|&e| e <= l.arena_size)
                .and_then(|_| {
                    self.map
                        .read(l.arena_off() + at.off as usize, at.len as usize)
                })
                .ok_or_else(|| format!("segment {i} past the arena"))?;
            if crc32c::crc32c(&buf) != at.crc {
                return Err(format!("segment {i}: bad CRC"));
            }
            format::decode_segment_into(&buf, &mut t, l.arena_size)
                .map_err(|e| format!("segment {i}: {e}"))?;
            out.push((*at, t));
        }
        Ok(out)
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

    /// Bytes of the arena in blocks now (Maglev tables and segments).
    pub fn arena_used(&self) -> usize {
        let mg: usize = self
            .blocks
            .iter()
            .filter(|b| b.live)
            .map(|b| aligned(b.bytes) as usize)
            .sum();
        let seg: usize = self
            .segs
            .iter()
            .filter(|b| b.live)
            .map(|b| aligned(b.at.len) as usize)
            .sum();
        mg + seg
    }

    /// Bytes of the arena in Maglev blocks now.
    pub fn maglev_bytes(&self) -> usize {
        self.blocks
            .iter()
            .filter(|b| b.live)
            .map(|b| aligned(b.bytes) as usize)
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
    /// ignored: the region numbers generations), split into one segment per
    /// Service. Unchanged Services are found by content (their segments
    /// are encoded and checksummed, then referenced): use
    /// [`publish_segments`](Self::publish_segments) with the compiler's
    /// shared segments to skip even that. On error the active generation
    /// is unchanged.
    pub fn publish(&mut self, t: &Tables) -> Result<PublishReport, RegionError> {
        let segs = t.to_segments();
        self.publish_segments(&t.node, &segs)
    }

    /// Publishes the generation made of `segments` in order (one per
    /// Service, see [`Segment`]) with the node settings `node`. A segment
    /// that is the same `Arc` as one published before costs a pointer
    /// comparison (same position) or a hash lookup; only the others are
    /// encoded, and written unless an equal block is live. On error the
    /// active generation is unchanged.
    pub fn publish_segments(
        &mut self,
        node: &NodeConfig,
        segments: &[Arc<Segment>],
    ) -> Result<PublishReport, RegionError> {
        let t0 = Instant::now();
        self.reclaim();
        let slot = self.pick_slot()?;
        let waited = t0.elapsed();
        let l = self.layout;
        let d = Layout::desc_off(slot);
        let gen = self.generation + 1;
        // 1. Invalidate the slot (no reader holds it: `pick_slot`), then
        //    free the blocks no slot needs any more.
        self.map
            .u64_at(d + format::D_GENERATION)
            .store(0, Ordering::SeqCst);
        self.free_retired();
        let mut rep = PublishReport {
            generation: gen,
            slot,
            waited,
            ..Default::default()
        };
        // 2. The list: same `Arc` at the same position (the common case:
        //    a pointer comparison), else a known `Arc`, else by content.
        let mut list: Vec<Cur> = Vec::with_capacity(segments.len());
        let mut totals = self.totals;
        let mut dropped: Vec<u32> = Vec::new();
        let mut written: Vec<u32> = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            let ptr = Arc::as_ptr(s) as usize;
            let old = self.current.get(i).copied();
            if let Some(c) = old {
                // The block still keeps this `Arc` (so the address is not a
                // new segment's that happens to reuse it).
                let pinned = self.segs[c.idx as usize]
                    .seg
                    .as_ref()
                    .is_some_and(|p| Arc::as_ptr(p) as usize == ptr);
                if c.ptr == ptr && pinned {
                    list.push(c);
                    continue;
                }
                dropped.push(c.idx);
                let k = self.segs[c.idx as usize].counts;
                for (t, v) in totals.iter_mut().zip(k) {
                    *t -= v as u64;
                }
            }
            let idx = match self.segment_for(s, node.hash_seed, gen, &mut rep) {
                Ok(x) => x,
                Err(e) => {
                    self.undo(written);
                    return Err(e);
                }
            };
            if self.segs[idx as usize].born == gen && !written.contains(&idx) {
                written.push(idx);
            }
            let b = &self.segs[idx as usize];
            for (t, v) in totals.iter_mut().zip(b.counts) {
                *t += v as u64;
            }
            list.push(Cur { ptr, idx, at: b.at });
        }
        for c in self.current.iter().skip(segments.len()) {
            dropped.push(c.idx);
            let k = self.segs[c.idx as usize].counts;
            for (t, v) in totals.iter_mut().zip(k) {
                *t -= v as u64;
            }
        }
        rep.segments_kept = segments.len() - rep.segments_written;
        // 3. The body: header, segment table, node settings.
        let node_blob = self.node_for(node);
        let len = format::body_len(list.len(), node_blob.len());
        if len > l.slot_size || totals.iter().any(|&t| t > u32::MAX as u64) {
            self.undo(written);
            return Err(RegionError::SlotTooSmall {
                need: len,
                size: l.slot_size,
            });
        }
        rep.body_bytes = len;
        rep.frontends = totals[1] as usize;
        // SAFETY: the slot is the writer's alone from its invalidation to
        // the descriptor's generation store below: no reader is protected
        // on it (`pick_slot`), and unprotected copies (`inspect`) are
        // checked by the seqlock and refused when torn.
        let body = unsafe { self.map.slice_mut(l.slot_off(slot), len) };
        format::encode_body_into(
            body,
            gen,
            list.iter().map(|c| c.at),
            &node_blob,
            totals.map(|t| t as u32),
        );
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
        // 5. Segments that left the list retire (freed once no slot holds
        //    a generation they are part of).
        if !dropped.is_empty() {
            let mut gone: hashbrown::HashSet<u32> = dropped.into_iter().collect();
            for c in &list {
                if gone.remove(&c.idx) && gone.is_empty() {
                    break;
                }
            }
            for i in gone {
                self.retire(i, gen);
            }
        }
        self.current = list;
        self.totals = totals;
        Ok(rep)
    }

    /// The live segment block for `s`: by its `Arc`, by content, or new.
    fn segment_for(
        &mut self,
        s: &Arc<Segment>,
        seed: u64,
        gen: u64,
        rep: &mut PublishReport,
    ) -> Result<u32, RegionError> {
        let ptr = Arc::as_ptr(s) as usize;
        if let Some(&i) = self.by_ptr.get(&ptr) {
            return Ok(i);
        }
        // Its Maglev tables (by identity), then its bytes.
        let mut refs = vec![BlockRef::default(); s.maglev.len()];
        let mut mg: Vec<u32> = Vec::new();
        for f in &s.frontends {
            if f.n_new == 0 || f.maglev_len == 0 {
                continue;
            }
            let k = f.maglev_off as usize;
            if refs.get(k).is_none_or(|r| r.width != 0) {
                continue;
            }
            let (i, b) = match self.block_for(s, f, seed, rep) {
                Ok(x) => x,
                Err(e) => {
                    for i in mg {
                        self.drop_if_unused(i);
                    }
                    return Err(e);
                }
            };
            refs[k] = b;
            if !mg.contains(&i) {
                mg.push(i);
            }
        }
        let bytes = format::encode_segment(s, &refs);
        let crc = crc32c::crc32c(&bytes);
        if let Some(&i) = self.by_crc.get(&(crc, bytes.len() as u32)) {
            let at = self.segs[i as usize].at;
            let same = self.segs[i as usize].live
                && self
                    .map
                    .read(self.layout.arena_off() + at.off as usize, at.len as usize)
                    .is_some_and(|v| v == bytes);
            if same {
                // Adopt the new `Arc` as this block's key (and take it back
                // from retirement: a recovered block).
                let b = &mut self.segs[i as usize];
                if b.died != u64::MAX {
                    b.died = u64::MAX;
                    self.retired.retain(|&x| x != i);
                }
                let b = &mut self.segs[i as usize];
                if let Some(old) = b.seg.replace(s.clone()) {
                    self.by_ptr.remove(&(Arc::as_ptr(&old) as usize));
                }
                self.by_ptr.insert(ptr, i);
                return Ok(i);
            }
        }
        let off = match self.alloc(bytes.len()) {
            Ok(o) => o,
            Err(e) => {
                for i in mg {
                    self.drop_if_unused(i);
                }
                return Err(e);
            }
        };
        self.map
            .write(self.layout.arena_off() + off as usize, &bytes);
        rep.segments_written += 1;
        rep.arena_bytes_written += bytes.len();
        for &i in &mg {
            self.blocks[i as usize].refs += 1;
        }
        let at = SegRef {
            off,
            len: bytes.len() as u32,
            crc,
            serial: self.next_serial,
        };
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        let b = SegBlock {
            at,
            born: gen,
            died: u64::MAX,
            maglev: mg,
            seg: Some(s.clone()),
            counts: [
                s.services.len() as u32,
                s.frontends.len() as u32,
                s.backends.len() as u32,
                s.source_ranges.len() as u32,
            ],
            live: true,
        };
        let i = match self.free_seg.pop() {
            Some(i) => {
                self.segs[i as usize] = b;
                i
            }
            None => {
                self.segs.push(b);
                (self.segs.len() - 1) as u32
            }
        };
        self.by_ptr.insert(ptr, i);
        self.by_crc.insert((crc, at.len), i);
        Ok(i)
    }

    /// Takes back the segments a failed publication wrote (never part of
    /// a generation).
    fn undo(&mut self, written: Vec<u32>) {
        for i in written {
            if !self.current.iter().any(|c| c.idx == i) {
                self.retire(i, self.segs[i as usize].born);
            }
        }
        self.free_retired();
    }

    /// Segment block `i` leaves the latest list at generation `gen`.
    fn retire(&mut self, i: u32, gen: u64) {
        let b = &mut self.segs[i as usize];
        b.died = gen;
        let key = (b.at.crc, b.at.len);
        if let Some(s) = b.seg.take() {
            let p = Arc::as_ptr(&s) as usize;
            if self.by_ptr.get(&p) == Some(&i) {
                self.by_ptr.remove(&p);
            }
        }
        if self.by_crc.get(&key) == Some(&i) {
            self.by_crc.remove(&key);
        }
        self.retired.push(i);
    }

    /// Frees the retired segment blocks no slot needs: none holds a
    /// generation in `born..died`.
    fn free_retired(&mut self) {
        if self.retired.is_empty() {
            return;
        }
        let gens: Vec<u64> = (0..self.layout.n_slots)
            .map(|s| {
                self.map
                    .u64_at(Layout::desc_off(s) + format::D_GENERATION)
                    .load(Ordering::Acquire)
            })
            .filter(|&g| g != 0)
            .collect();
        let segs = &self.segs;
        let (keep, free): (Vec<u32>, Vec<u32>) = self.retired.iter().partition(|&&i| {
            let b = &segs[i as usize];
            gens.iter().any(|&g| b.born <= g && g < b.died)
        });
        self.retired = keep;
        for i in free {
            let b = &mut self.segs[i as usize];
            b.live = false;
            let key = (b.at.crc, b.at.len);
            let (off, len) = (b.at.off, aligned(b.at.len));
            // A recovered block is findable by content while retired.
            if self.by_crc.get(&key) == Some(&i) {
                self.by_crc.remove(&key);
            }
            let b = &mut self.segs[i as usize];
            for m in std::mem::take(&mut b.maglev) {
                self.unref(m);
            }
            self.free_seg.push(i);
            self.release(off, len);
        }
    }

    /// The block holding `f`'s Maglev table (`f` of segment `s`): an
    /// existing one with the same identity, or a new one (with no
    /// references yet). A Maglev table is a function of its identity
    /// (backends, M, seed); the writer relies on that as `TablesBuilder`
    /// does, without reading the (cold) entries back.
    fn block_for(
        &mut self,
        s: &Segment,
        f: &Frontend,
        seed: u64,
        rep: &mut PublishReport,
    ) -> Result<(u32, BlockRef), RegionError> {
        let id = self.ident_of(&s.backends, f, seed);
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
        let entries: &[u16] = s
            .maglev
            .get(f.maglev_off as usize)
            .map(MaglevTable::entries)
            .unwrap_or(&[]);
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
        format::pack(entries, width, &mut buf);
        self.map.write(self.layout.arena_off() + off as usize, &buf);
        rep.blocks_written += 1;
        rep.arena_bytes_written += bytes;
        let blk = Block {
            off,
            bytes: bytes as u32,
            width,
            refs: 0,
            id,
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
        Ok((i, BlockRef { off, width }))
    }

    /// The identity of `f`'s Maglev table (see [`MaglevId`]), `f`'s backend
    /// run being in `backends`.
    fn ident_of(&self, backends: &[Backend], f: &Frontend, seed: u64) -> MaglevId {
        use std::hash::{BuildHasher, Hash, Hasher};
        let off = f.backend_off as usize;
        let run = backends.get(off..off + f.n_new as usize).unwrap_or(&[]);
        let [mut a, mut b] = [
            self.hashers[0].build_hasher(),
            self.hashers[1].build_hasher(),
        ];
        for h in [&mut a, &mut b] {
            for be in run {
                be.ip.hash(h);
                be.port.hash(h);
                be.weight.hash(h);
            }
            f.maglev_len.hash(h);
            seed.hash(h);
        }
        (a.finish() as u128) << 64 | b.finish() as u128
    }

    /// The identity of `f`'s table in decoded tables `t`.
    fn ident(&self, t: &Tables, f: &Frontend, seed: u64) -> MaglevId {
        self.ident_of(&t.backends, f, seed)
    }

    /// The node settings blob, re-encoded only when they changed.
    fn node_for(&mut self, node: &NodeConfig) -> Vec<u8> {
        if let Some((n, blob)) = &self.node_cache {
            if n == node {
                return blob.clone();
            }
        }
        let blob = format::encode_node(node);
        self.node_cache = Some((node.clone(), blob.clone()));
        blob
    }

    /// Frees Maglev block `i` if no segment references it (one a failed
    /// publication created).
    fn drop_if_unused(&mut self, i: u32) {
        if self.blocks[i as usize].refs == 0 {
            self.blocks[i as usize].refs = 1;
            self.unref(i);
        }
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

    /// Empties every slot no reader protects (other than the active one),
    /// so that the blocks only they referenced are freed and the arena holds
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
