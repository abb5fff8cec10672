//! Readers of the region: the dataplane (adopts generations, zero-copy
//! Maglev) and `inspect` (read-only copies).

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::format::{self, Layout};
use super::{io_err, monotonic_ms, pid_alive, region_path, Map, RegionError, HEARTBEAT_TIMEOUT_MS};
use crate::tables::{MaglevArena, Tables};

/// Copies slot `slot`'s body (its descriptor's `len` bytes) and checks its
/// CRC.
pub(crate) fn read_body(map: &Map, l: &Layout, slot: usize) -> Result<Vec<u8>, String> {
    let d = Layout::desc_off(slot);
    let len = map.u64_at(d + format::D_LEN).load(Ordering::Acquire) as usize;
    let crc = map.u64_at(d + format::D_CRC).load(Ordering::Acquire) as u32;
    if len > l.slot_size {
        return Err(format!("body length {len} > slot size {}", l.slot_size));
    }
    let body = map
        .read(l.slot_off(slot), len)
        .ok_or_else(|| "body past the end of the file".to_string())?;
    let got = crc32c::crc32c(&body);
    if got != crc {
        return Err(format!("CRC {got:08x}, descriptor says {crc:08x}"));
    }
    Ok(body)
}

/// Copies slot `slot`'s body and the segments it lists and validates them
/// as generation `gen` (lengths, CRCs, every index and offset). Does not
/// check that the slot still holds `gen` afterwards: callers do (seqlock)
/// or hold a pin.
pub(crate) fn read_slot(
    map: &Map,
    l: &Layout,
    slot: usize,
    gen: u64,
    cache: Option<&mut format::SegmentCache>,
) -> Result<Tables, String> {
    let body = read_body(map, l, slot)?;
    let base = l.arena_off();
    format::decode_generation(
        &body,
        gen,
        l.arena_size,
        |off, len, buf| map.read_into(base + off, len, buf),
        cache,
    )
}

/// A reader's own quiescent-state slots in the header (one per worker).
/// Dropping it frees them.
#[derive(Debug)]
pub struct ReaderPins {
    pub(super) map: Arc<Map>,
    pub(super) slots: Vec<usize>,
}

impl ReaderPins {
    /// Pins: reader `i` may still read generations `>= generation`.
    #[inline]
    pub fn record(&self, i: usize, generation: u64) {
        if let Some(&r) = self.slots.get(i) {
            self.map
                .u64_at(Layout::reader_off(r) + format::R_GENERATION)
                .store(generation, Ordering::SeqCst);
        }
    }

    /// Reader `i` may read generations up to `limit` (see the module doc).
    #[inline]
    pub fn set_limit(&self, i: usize, limit: u64) {
        if let Some(&r) = self.slots.get(i) {
            self.map
                .u64_at(Layout::reader_off(r) + format::R_LIMIT)
                .store(limit, Ordering::SeqCst);
        }
    }

    /// [`set_limit`](Self::set_limit) for all.
    pub fn set_limit_all(&self, limit: u64) {
        for i in 0..self.slots.len() {
            self.set_limit(i, limit);
        }
    }

    /// Says reader `i` is alive (needed only when the writer cannot see
    /// the reader's pid, e.g. another PID namespace).
    pub fn heartbeat(&self, i: usize) {
        if let Some(&r) = self.slots.get(i) {
            self.map
                .u64_at(Layout::reader_off(r) + format::R_HEARTBEAT)
                .store(monotonic_ms(), Ordering::Relaxed);
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

impl Drop for ReaderPins {
    fn drop(&mut self) {
        for &r in &self.slots {
            self.map
                .u32_at(Layout::reader_off(r) + format::R_PID)
                .store(0, Ordering::SeqCst);
        }
    }
}

/// Claims `n` free reader slots (pin 0: protects every generation until
/// the first `record`).
fn claim(map: &Arc<Map>, l: &Layout, n: usize) -> Result<ReaderPins, RegionError> {
    let me = std::process::id();
    let mut pins = ReaderPins {
        map: map.clone(),
        slots: Vec::new(),
    };
    let now = monotonic_ms();
    for r in 0..l.n_readers {
        if pins.slots.len() == n {
            break;
        }
        let off = Layout::reader_off(r);
        let pid_w = map.u32_at(off + format::R_PID);
        let cur = pid_w.load(Ordering::SeqCst);
        let hb = map.u64_at(off + format::R_HEARTBEAT).load(Ordering::SeqCst);
        let dead = cur == 0 || (!pid_alive(cur) && now.saturating_sub(hb) > HEARTBEAT_TIMEOUT_MS);
        if !dead {
            continue;
        }
        // Pin 0 and a fresh heartbeat first, so the slot protects everything
        // as soon as the pid makes it live.
        map.u64_at(off + format::R_GENERATION)
            .store(0, Ordering::SeqCst);
        map.u64_at(off + format::R_LIMIT)
            .store(u64::MAX, Ordering::SeqCst);
        map.u64_at(off + format::R_HEARTBEAT)
            .store(now, Ordering::SeqCst);
        if pid_w
            .compare_exchange(cur, me, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            pins.slots.push(r);
        }
    }
    if pins.slots.len() < n {
        return Err(RegionError::NoReaderSlot(l.n_readers));
    }
    Ok(pins)
}

/// A consistent copy of the active generation, for tools.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub generation: u64,
    pub slot: usize,
    /// Owned tables (Maglev tables copied into a private arena).
    pub tables: Tables,
    pub publishes: u64,
    pub stuck: u64,
    pub writer_pid: u32,
    /// Live or not: (pid, pinned generation, heartbeat age in ms).
    pub readers: Vec<(u32, u64, u64)>,
    pub layout: Layout,
}

/// A reader of one region file.
#[derive(Debug)]
pub struct RegionReader {
    pub(super) map: Arc<Map>,
    path: PathBuf,
    pub(super) layout: Layout,
    ino: u64,
    /// The adopter's own pin (writable readers only).
    pin: Option<ReaderPins>,
    adopted: u64,
    refused_gen: u64,
    /// The adopted generation's segments, decoded.
    cache: format::SegmentCache,
    /// Generations adopted / refused (corrupt) so far.
    pub adopted_count: u64,
    pub refused_count: u64,
}

impl RegionReader {
    /// Opens `DIR/tables` to adopt generations: maps it read-write (for the
    /// reader slots) and claims one reader slot.
    pub fn open(dir: &Path) -> Result<Self, RegionError> {
        let mut r = Self::map(dir, true)?;
        r.pin = Some(claim(&r.map, &r.layout, 1)?);
        Ok(r)
    }

    /// Opens `DIR/tables` read-only (for `inspect`): no reader slot, no
    /// effect on the writer or the dataplane.
    pub fn open_read_only(dir: &Path) -> Result<Self, RegionError> {
        Self::map(dir, false)
    }

    fn map(dir: &Path, writable: bool) -> Result<Self, RegionError> {
        let path = region_path(dir);
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let md = file.metadata().map_err(|e| io_err(&path, e))?;
        let len = md.len() as usize;
        let mut h = [0u8; 64];
        use std::os::unix::fs::FileExt;
        if len >= h.len() {
            file.read_exact_at(&mut h, 0)
                .map_err(|e| io_err(&path, e))?;
        }
        let layout = Layout::from_header(&h, len).map_err(|why| RegionError::Layout {
            path: path.display().to_string(),
            why,
        })?;
        // The file is mapped whole (its length checked against the header);
        // all access is through `Map`'s raw-pointer accessors.
        let raw = if writable {
            memmap2::MmapOptions::new().map_raw(&file)
        } else {
            memmap2::MmapOptions::new().map_raw_read_only(&file)
        }
        .map_err(|e| io_err(&path, e))?;
        if raw.len() != len {
            return Err(RegionError::Layout {
                path: path.display().to_string(),
                why: "file changed size while mapping".into(),
            });
        }
        Ok(RegionReader {
            map: Arc::new(Map { raw, writable }),
            path,
            layout,
            ino: md.ino(),
            pin: None,
            adopted: 0,
            refused_gen: 0,
            cache: Default::default(),
            adopted_count: 0,
            refused_count: 0,
        })
    }

    /// The active (generation, slot); generation 0 when none was published.
    pub fn active(&self) -> (u64, usize) {
        let a = self.map.u64_at(format::H_ACTIVE).load(Ordering::SeqCst);
        (a >> 8, (a & 0xff) as usize)
    }

    /// The generation last adopted (0: none).
    pub fn adopted(&self) -> u64 {
        self.adopted
    }

    /// True when `DIR/tables` is now another file (the writer recreated
    /// it): reopen to follow it.
    pub fn replaced(&self) -> bool {
        std::fs::metadata(&self.path).map_or(true, |m| m.ino() != self.ino)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Claims `n` more reader slots (one per worker).
    pub fn claim_pins(&self, n: usize) -> Result<Arc<ReaderPins>, RegionError> {
        if !self.map.writable {
            return Err(RegionError::NoReaderSlot(0));
        }
        claim(&self.map, &self.layout, n).map(Arc::new)
    }

    /// Adopts the active generation if it is newer than the last one:
    /// validated tables whose Maglev tables stay in the mapping. `Ok(None)`:
    /// nothing new (or the new one was refused before). A corrupt generation
    /// is refused once with [`RegionError::Corrupt`]; keep the previous
    /// tables. Call [`settle`](Self::settle) once the old tables are out of
    /// use.
    pub fn try_adopt(&mut self) -> Result<Option<Tables>, RegionError> {
        if let Some(p) = &self.pin {
            p.heartbeat(0);
        }
        for _ in 0..100 {
            let (gen, slot) = self.active();
            if gen == 0 || gen == self.adopted || gen == self.refused_gen {
                return Ok(None);
            }
            if gen < self.adopted {
                // Generations never go back in one file.
                return self.refuse(gen, "older than the adopted generation".into());
            }
            if slot >= self.layout.n_slots {
                return self.refuse(gen, format!("active slot {slot} out of range"));
            }
            if let Some(p) = &self.pin {
                // Protect `gen` (limit), then check it is still active: the
                // writer scans limits only after flipping away from it.
                p.set_limit(0, gen);
                if self.active().0 != gen {
                    continue;
                }
            }
            // Segments adopted before (validated then, immutable while
            // referenced) are not read and decoded again.
            let res = read_slot(&self.map, &self.layout, slot, gen, Some(&mut self.cache));
            // Still the same generation in that slot? (Without a pin, e.g.
            // read-only, a writer may have reused it meanwhile.)
            fence(Ordering::Acquire);
            let now = self
                .map
                .u64_at(Layout::desc_off(slot) + format::D_GENERATION)
                .load(Ordering::Acquire);
            if now != gen {
                continue;
            }
            return match res {
                Ok(mut t) => {
                    let base = self.layout.arena_off();
                    // SAFETY: `base..base + arena_size` is inside the mapping
                    // (validated layout), which `self.map` keeps alive; the
                    // blocks this generation references are immutable while
                    // our pins allow it (the protocol in `region`).
                    t.maglev_arena = Some(unsafe {
                        MaglevArena::new(
                            self.map.ptr().add(base),
                            self.layout.arena_size,
                            self.map.clone(),
                        )
                    });
                    self.adopted = gen;
                    self.adopted_count += 1;
                    Ok(Some(t))
                }
                Err(what) => self.refuse(gen, what),
            };
        }
        Ok(None)
    }

    fn refuse(&mut self, gen: u64, what: String) -> Result<Option<Tables>, RegionError> {
        if let Some(p) = &self.pin {
            // Done with `gen`: stop protecting it (the writer may reuse it).
            p.set_limit(0, self.adopted);
        }
        self.refused_gen = gen;
        self.refused_count += 1;
        Err(RegionError::Corrupt {
            generation: gen,
            what,
        })
    }

    /// Moves this reader's own pin to the adopted generation: call once no
    /// tables older than it are in use by this reader.
    pub fn settle(&self) {
        if let Some(p) = &self.pin {
            p.record(0, self.adopted);
        }
    }

    /// A consistent, owned copy of the active generation (seqlock: the
    /// slot's generation is the same before and after the copy).
    pub fn snapshot(&self) -> Result<Snapshot, RegionError> {
        let mut last_err = None;
        for _ in 0..100 {
            let (gen, slot) = self.active();
            if gen == 0 {
                return Err(RegionError::Corrupt {
                    generation: 0,
                    what: "nothing published yet".into(),
                });
            }
            if slot >= self.layout.n_slots {
                return Err(RegionError::Corrupt {
                    generation: gen,
                    what: format!("active slot {slot} out of range"),
                });
            }
            let d = Layout::desc_off(slot) + format::D_GENERATION;
            let res = read_slot(&self.map, &self.layout, slot, gen, None).and_then(|t| self.own(t));
            fence(Ordering::Acquire);
            if self.map.u64_at(d).load(Ordering::Acquire) != gen {
                continue;
            }
            match res {
                Ok(tables) => {
                    let now = monotonic_ms();
                    let readers = (0..self.layout.n_readers)
                        .filter_map(|r| {
                            let off = Layout::reader_off(r);
                            let pid = self.map.u32_at(off + format::R_PID).load(Ordering::SeqCst);
                            (pid != 0).then(|| {
                                (
                                    pid,
                                    self.map
                                        .u64_at(off + format::R_GENERATION)
                                        .load(Ordering::SeqCst),
                                    now.saturating_sub(
                                        self.map
                                            .u64_at(off + format::R_HEARTBEAT)
                                            .load(Ordering::SeqCst),
                                    ),
                                )
                            })
                        })
                        .collect();
                    return Ok(Snapshot {
                        generation: gen,
                        slot,
                        tables,
                        publishes: self.map.u64_at(format::H_PUBLISHES).load(Ordering::Relaxed),
                        stuck: self.map.u64_at(format::H_STUCK).load(Ordering::Relaxed),
                        writer_pid: self
                            .map
                            .u32_at(format::H_WRITER_PID)
                            .load(Ordering::Relaxed),
                        readers,
                        layout: self.layout,
                    });
                }
                Err(what) => {
                    last_err = Some(RegionError::Corrupt {
                        generation: gen,
                        what,
                    })
                }
            }
        }
        Err(last_err.unwrap_or(RegionError::Corrupt {
            generation: 0,
            what: "the writer kept replacing the active generation".into(),
        }))
    }

    /// Copies the Maglev blocks `t` references into its own tables.
    fn own(&self, t: Tables) -> Result<Tables, String> {
        let base = self.layout.arena_off();
        let mut arena = Vec::new();
        let mut seen = std::collections::HashMap::new();
        let mut t = t;
        for f in t.frontends.iter_mut() {
            if f.maglev_width == 0 {
                continue;
            }
            let len = format::packed_bytes(f.maglev_len, f.maglev_width);
            let off = *match seen.entry(f.maglev_off) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let bytes = self
                        .map
                        .read(base + f.maglev_off as usize, len)
                        .ok_or("Maglev block past the end")?;
                    let at = arena.len() as u32;
                    arena.extend_from_slice(&bytes);
                    v.insert(at)
                }
            };
            f.maglev_off = off;
        }
        t.maglev_arena = Some(MaglevArena::from_vec(arena));
        Ok(t.to_owned_maglev())
    }
}
