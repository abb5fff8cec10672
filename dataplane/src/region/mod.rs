//! The table region: the engine's tables in one shared-memory file
//! (`DIR/tables`, default DIR `/run/edgeplane`), written by the control
//! process and read by the dataplane, each able to restart without the other.
//!
//! * [`format`]: the byte layout (header, slots, arena), encode and validate.
//! * [`RegionWriter`]: the one writer. Each Service's records (ports,
//!   frontends, backends, source ranges) are a *segment* and each Maglev
//!   table a block in the *arena*, a heap of immutable blocks shared by
//!   generations (an unchanged Service keeps its segment and table); it
//!   fills a spare *slot* with the next generation's segment table and node
//!   settings, then flips the active generation with one atomic store. A
//!   publication costs what changed, not the number of Services.
//! * [`RegionReader`]: a reader. It adopts a generation by copying its slot
//!   and the segments it lists, validating every CRC, index and offset once
//!   and decoding it into
//!   [`Tables`](crate::Tables), whose Maglev tables stay in the mapping
//!   (zero-copy). [`ReaderPins`] are the quiescent-state slots the workers
//!   update once per batch.
//!
//! # Publication protocol (RCU with quiescent states, as DPDK's `rte_rcu_qsbr`)
//!
//! Every reader owns a reader slot in the header holding a range of
//! generations it may still read: `generation` (its *pin*, the oldest) and
//! `limit` (the newest). The writer reuses a slot holding generation `g` only
//! when it is not the active slot and no live reader's range contains `g`; a
//! block is freed only when no slot references it. Hence whatever a
//! reader protects stays intact until it moves its range on.
//!
//! * Writer: pick a reusable slot (bounded wait, see below); set its
//!   descriptor's generation to 0; free the retired blocks no slot's
//!   generation needs any more; write new blocks and the body; store length
//!   and CRC; store the generation (Release); store
//!   `active = generation << 8 | slot` (SeqCst).
//! * Adoption: load `active` = `g`; store `limit = g` (SeqCst); load `active`
//!   again (SeqCst) and retry if it changed. The writer only reuses
//!   non-active slots and scans the ranges after its flip (SeqCst), so it
//!   sees the limit before it could reuse `g`'s slot. Copy and validate the
//!   slot, then check its descriptor still says `g` (seqlock; read-only
//!   readers such as `inspect` rely on this alone). A refused (corrupt)
//!   generation is released at once (`limit` back to the adopted one), so
//!   corrupt slots never block the writer.
//! * The pin stays at the previously adopted generation until the new tables
//!   are in place, then moves (`settle`).
//! * Workers (one reader slot each) record, once per loop iteration, the
//!   generation of the tables they are about to use as their pin; their
//!   limit is set by the adopter to each generation it hands them, before
//!   they can load it.
//!
//! A reader is *live* while its process exists (`/proc/PID`) or its
//! heartbeat is under 2 s old (processes in another PID namespace); a dead
//! reader's pin is ignored and its slot reclaimed. When no slot is reusable
//! within [`WriterOptions::stuck_wait`], the publication fails with
//! [`RegionError::ReadersStuck`] naming the pinning readers, and the
//! header's stuck counter is bumped; the writer never blocks forever.
//!
//! # Untrusted input
//!
//! A reader treats the file as untrusted: a slot whose CRC, lengths, indices
//! or Maglev block bounds do not check out is refused with
//! [`RegionError::Corrupt`] (the caller keeps its previous generation). The
//! Maglev entries themselves are read through bounds-checked `.get()` at use
//! (see [`Tables::maglev_entry`](crate::Tables::maglev_entry)).

pub mod format;
mod reader;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};

pub use reader::{ReaderPins, RegionReader, Snapshot};
pub use writer::{PublishReport, RegionWriter, WriterOptions};

/// Default directory of the region (and of the dataplane's other state).
pub const DEFAULT_DIR: &str = "/run/edgeplane";

/// The region file in `dir`.
pub fn region_path(dir: &Path) -> PathBuf {
    dir.join("tables")
}

/// Errors of the region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a usable table region: {why}")]
    Layout { path: String, why: String },
    #[error("generation {generation} refused: {what}")]
    Corrupt { generation: u64, what: String },
    #[error("no slot free after {waited_ms} ms: readers {pinned:?} (pid, pinned generation) have not moved on")]
    ReadersStuck {
        waited_ms: u64,
        pinned: Vec<(u32, u64)>,
    },
    #[error("the table region is in use by another control (pid {0}): one writer at a time")]
    AnotherWriter(u32),
    #[error("all {0} reader slots are in use")]
    NoReaderSlot(usize),
    #[error("the Maglev arena is full ({need} bytes needed, {size} in the arena)")]
    ArenaFull { need: usize, size: usize },
    #[error("generation needs {need} bytes, a slot holds {size}")]
    SlotTooSmall { need: usize, size: usize },
    #[error("tables invalid: {0}")]
    Tables(String),
}

fn io_err(path: &Path, source: std::io::Error) -> RegionError {
    RegionError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// CLOCK_MONOTONIC in milliseconds (the same clock in every process).
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// True when a process `pid` exists in our PID namespace.
fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// How long a reader whose process we cannot see counts as live after its
/// last heartbeat.
const HEARTBEAT_TIMEOUT_MS: u64 = 2000;

/// A mapping of the region file, shared by the writer, readers and the
/// tables that point into its arena.
///
/// All access goes through raw pointers: other processes write this memory
/// concurrently, so no `&[u8]` over a mutable part is ever formed except for
/// the arena blocks the protocol keeps immutable. Control words are atomics.
#[derive(Debug)]
pub(crate) struct Map {
    raw: memmap2::MmapRaw,
    writable: bool,
}

impl Map {
    fn len(&self) -> usize {
        self.raw.len()
    }

    fn ptr(&self) -> *mut u8 {
        self.raw.as_mut_ptr()
    }

    /// The atomic `u64` at `off` (8-aligned, in bounds: offsets come from a
    /// validated [`format::Layout`]; a bad one is a bug, hence the assert).
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off & 7 == 0 && off + 8 <= self.len());
        // SAFETY: in bounds and aligned (checked above; the mapping is
        // page-aligned); the mapping lives as long as `self`; every access
        // to this word is atomic.
        unsafe { &*(self.ptr().add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off & 3 == 0 && off + 4 <= self.len());
        // SAFETY: as for `u64_at`.
        unsafe { &*(self.ptr().add(off) as *const AtomicU32) }
    }

    /// Copies `len` bytes at `off` (bounds-checked).
    fn read(&self, off: usize, len: usize) -> Option<Vec<u8>> {
        if off.checked_add(len)? > self.len() {
            return None;
        }
        let mut v = vec![0u8; len];
        // SAFETY: in bounds (checked); `v` is a distinct allocation. The
        // source may be written concurrently by a buggy writer: the copy is
        // then garbage, which the seqlock check or validation refuses.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr().add(off), v.as_mut_ptr(), len) };
        Some(v)
    }

    /// Copies `len` bytes at `off` into `buf` (resized to `len`); false
    /// when out of bounds.
    fn read_into(&self, off: usize, len: usize, buf: &mut Vec<u8>) -> bool {
        if off.checked_add(len).is_none_or(|e| e > self.len()) {
            return false;
        }
        buf.clear();
        buf.reserve(len);
        // SAFETY: in bounds (checked); `buf` is a distinct allocation with
        // room for `len` bytes, all written before `set_len`. A concurrent
        // writer makes the copy garbage, which the CRC refuses.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr().add(off), buf.as_mut_ptr(), len);
            buf.set_len(len);
        }
        true
    }

    /// The bytes at `off..off + len` as a mutable slice (bounds-checked by
    /// assert, writer only).
    ///
    /// # Safety
    /// Nobody else may access these bytes while the slice lives except by
    /// copies that are validated afterwards (the publication protocol).
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(self.writable && off + len <= self.len());
        // SAFETY: in bounds, writable, exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr().add(off), len) }
    }

    /// Writes `data` at `off` (writer only, bounds-checked by assert: the
    /// writer computes offsets from its own layout).
    fn write(&self, off: usize, data: &[u8]) {
        assert!(self.writable && off + data.len() <= self.len());
        // SAFETY: in bounds, writable mapping; the protocol guarantees no
        // reader reads these bytes now (a spare slot or a free block).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr().add(off), data.len()) };
    }
}

#[cfg(test)]
mod tests;
