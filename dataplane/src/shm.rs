//! Flow-state files in shared memory: the one place that maps a file and
//! views its bytes as atomics.
//!
//! The conntrack ([`crate::conntrack`]) and the affinity table
//! ([`crate::affinity`]) are flat arrays of atomics linked by `u32` indices,
//! never pointers. This module lets those arrays live either on the heap
//! (tests, `replay`) or in a file mapping (`MAP_SHARED`) under a state
//! directory (`edgeplane run --tables DIR`, default `/run/edgeplane`, a
//! tmpfs), so that a dataplane that is restarted — even after `kill -9` —
//! re-attaches to the flows its predecessor tracked.
//!
//! # What this module promises
//!
//! * [`Slab<T>`] is a slice of `T` that is either a `Box<[T]>` or a window of
//!   a mapping; it derefs to `&[T]` at the cost of a `Box` deref. A mapped
//!   slab keeps its mapping alive (`Arc`).
//! * Only [`Plain`] types can be viewed in a mapping: `#[repr(C)]` types made
//!   of atomics for which every bit pattern is a valid value. Whatever bytes a
//!   file holds (a crashed writer's half-written record, random garbage),
//!   viewing them is sound; the owners then check the values they read.
//! * A file is bounds-checked before anything is mapped: its size, header
//!   and section table must equal, byte for byte, the layout this binary
//!   computes for the requested capacity ([`Spec`]). The header's offsets are
//!   compared, never followed: a section is mapped at the offset *we*
//!   computed. Anything else is a [`Mismatch`]: the file is replaced by a
//!   fresh one (atomically, by rename; a reader of the old one keeps its
//!   inode) and the caller is told why.
//! * One writer: [`SharedFile::open_rw`] takes `flock(LOCK_EX | LOCK_NB)` on
//!   the file (held as long as the [`SharedFile`] lives; the kernel drops it
//!   when the process dies, also on SIGKILL). A second writer gets
//!   [`ShmError::Busy`] naming the holder's pid. Readers
//!   ([`SharedFile::open_ro`], `edgeplane inspect`) take no lock and map the
//!   file read-only.
//! * Files are created mode 0600 in a directory created mode 0700, with
//!   `O_NOFOLLOW` (a symlink planted at the path is refused), under a
//!   temporary name (`O_EXCL`) and linked into place only once initialised
//!   (`link(2)`, which never replaces: two dataplanes creating at once cannot
//!   both win). A temporary left by a creator that died is removed by the
//!   next one.
//!
//! # File layout
//!
//! ```text
//! offset 0        header (one 4 KiB page; struct Header, native endianness,
//!                 offsets below are bytes from the start of the page):
//!     0  magic            u64   b"EPCONNTR" (conntrack) / b"EPAFFINI" (affinity), LE
//!     8  layout_version   u32   bumped whenever any record or section layout changes
//!    12  header_len       u32   size_of::<Header>()
//!    16  file_len         u64   total file size
//!    24  capacity         u64   records (flows / entries)
//!    32  seed             u64   seed of the index hash
//!    40  clock            u32   1 = times are CLOCK_MONOTONIC (seconds or ns, per table)
//!    44  clean            u32   1 = the last writer closed the file cleanly
//!    48  owner_pid        u32   pid of the writer holding the flock (0: none)
//!    52  creator_pid      u32   pid that created the file
//!    56  boot_id          [u64; 2]  /proc/sys/kernel/random/boot_id when written
//!    72  attaches         u64   how many times a writer re-attached
//!    80  nsections        u32
//!    88  sections         [ { offset u64, count u64, elem_size u32, elem_align u32 }; 8 ]
//!   280  params           [u64; 32]  table-specific (conntrack: its timeouts)
//! offset 4096     section 0, then each further section at the next multiple of 4096
//! ```
//!
//! The magic is written last when a file is created, with release ordering:
//! a reader that sees it sees an initialised table.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

/// Alignment of every section (and size of the header).
pub const PAGE: usize = 4096;
/// The clock the tables' times are read from: `CLOCK_MONOTONIC` (system-wide,
/// same for every process, stops counting only at reboot, hence the boot id).
pub const CLOCK_MONOTONIC: u32 = 1;
/// Sections a file may have.
pub const MAX_SECTIONS: usize = 8;
/// Table-specific header words.
pub const PARAMS: usize = 32;

// ---------------------------------------------------------------------------
// Plain types and slabs
// ---------------------------------------------------------------------------

/// Types that may be viewed in a shared mapping.
///
/// # Safety
/// Implement only for `#[repr(C)]` types with no padding-dependent invariant,
/// no `Drop` and no pointer, whose fields are atomics (or arrays of them), so
/// that (a) every bit pattern, including all zeroes, is a valid value, (b)
/// all access through `&T` is by atomic operations, which another process
/// may perform on the same memory at the same time, and (c) the alignment is
/// at most [`PAGE`].
pub unsafe trait Plain: Sync + Send + Sized {}

// SAFETY: atomics of plain integers: any bits are a valid value.
unsafe impl Plain for AtomicU32 {}
// SAFETY: as above.
unsafe impl Plain for AtomicU64 {}

/// A fixed-size slice of `T` on the heap or in a mapping. Derefs to `[T]`.
pub struct Slab<T: Plain> {
    ptr: NonNull<T>,
    len: usize,
    owner: Owner,
}

enum Owner {
    /// `ptr`/`len` came from `Box::<[T]>::into_raw`.
    Heap,
    /// `ptr`/`len` lie inside this mapping.
    Mapped(#[allow(dead_code)] Arc<Mapping>),
}

// SAFETY: a Slab hands out only `&[T]`; `T: Plain` is `Sync + Send`, and the
// memory is owned (heap) or kept alive by the `Arc` (mapping).
unsafe impl<T: Plain> Send for Slab<T> {}
// SAFETY: as above.
unsafe impl<T: Plain> Sync for Slab<T> {}

impl<T: Plain> Slab<T> {
    /// A heap slab.
    pub fn from_box(b: Box<[T]>) -> Slab<T> {
        let len = b.len();
        let raw = Box::into_raw(b) as *mut T;
        Slab {
            // SAFETY: Box::into_raw never returns null.
            ptr: unsafe { NonNull::new_unchecked(raw) },
            len,
            owner: Owner::Heap,
        }
    }

    /// Whether the slab lives in a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self.owner, Owner::Mapped(_))
    }
}

impl<T: Plain> Deref for Slab<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` is aligned and valid for `len` elements for as long
        // as `self` lives (heap: owned; mapped: checked in `Mapping::slab`,
        // mapping kept alive by the Arc). `T: Plain` makes any bytes a valid
        // `T`, and all mutation goes through atomics.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Plain> Drop for Slab<T> {
    fn drop(&mut self) {
        if let Owner::Heap = self.owner {
            let raw = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
            // SAFETY: `raw` came from Box::into_raw in `from_box` and is
            // dropped once, here.
            drop(unsafe { Box::from_raw(raw) });
        }
    }
}

impl<T: Plain> std::fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slab")
            .field("len", &self.len)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// A whole file mapped `MAP_SHARED`, read-write or read-only.
#[derive(Debug)]
pub struct Mapping {
    map: MmapRaw,
    writable: bool,
}

impl Mapping {
    fn new(file: &File, len: usize, writable: bool) -> io::Result<Arc<Mapping>> {
        let mut o = MmapOptions::new();
        o.len(len);
        let map = if writable {
            o.map_raw(file)?
        } else {
            o.map_raw_read_only(file)?
        };
        Ok(Arc::new(Mapping { map, writable }))
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True for an empty mapping (never: files are at least a page).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Views `count` elements of `T` at byte `offset`. Fails (never panics)
    /// when they would not lie inside the mapping or `offset` is not aligned
    /// for `T`.
    ///
    /// A read-only mapping must only be read: a store through the slab
    /// faults (SIGSEGV). Only the read-only views ([`crate::conntrack::ConntrackView`])
    /// use one, and they only load.
    pub fn slab<T: Plain>(self: &Arc<Self>, offset: usize, count: usize) -> io::Result<Slab<T>> {
        let bytes = count
            .checked_mul(std::mem::size_of::<T>())
            .and_then(|b| b.checked_add(offset));
        let base = self.map.as_mut_ptr();
        let aligned = (base as usize)
            .wrapping_add(offset)
            .is_multiple_of(std::mem::align_of::<T>());
        if count == 0 || !aligned || bytes.is_none_or(|end| end > self.map.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "section of {count} x {} B at {offset} does not fit a {} B mapping",
                    std::mem::size_of::<T>(),
                    self.map.len()
                ),
            ));
        }
        // SAFETY: offset + count * size_of::<T>() <= len (checked above), so
        // the pointer stays inside the mapping; it is non-null (mmap never
        // returns address 0 for a non-fixed mapping) and aligned (checked).
        let ptr = unsafe { base.add(offset) } as *mut T;
        Ok(Slab {
            ptr: NonNull::new(ptr).ok_or_else(|| io::Error::other("null mapping"))?,
            len: count,
            owner: Owner::Mapped(self.clone()),
        })
    }

    /// Whether stores are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }
}

// The flow tables' element types. Their definitions (and the layout
// comments) live in their modules; the promise that they may be viewed in a
// mapping is made here, next to the code that does it.
// SAFETY: repr(C, align(64)); two AtomicU32 and seven AtomicU64, no padding
// invariant: any bits are a valid (possibly nonsensical) record, which
// `Conntrack` recovery and readers check by value.
unsafe impl Plain for crate::conntrack::Record {}
// SAFETY: repr(C, align(32)); four AtomicU64.
unsafe impl Plain for crate::conntrack::Cold {}
// SAFETY: repr(C, align(64)); eight AtomicU64.
unsafe impl Plain for crate::conntrack::Bucket {}
// SAFETY: repr(C, align(64)); AtomicU64 and AtomicI64.
unsafe impl Plain for crate::conntrack::Shard {}
// SAFETY: repr(C, align(64)); two AtomicU32 and six AtomicU64.
unsafe impl Plain for crate::affinity::Entry {}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock every process of the
/// node shares (unlike an `Instant` epoch, which is per process), so a
/// restarted dataplane judges the expiry its predecessor wrote on the same
/// scale. The live path passes this as the engine's `now`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// What recovery found and did when a writer re-attached to a file whose
/// previous owner may have died mid-write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repair {
    /// Records kept (live flows / entries, now indexed again).
    pub kept: usize,
    /// Records whose seqlock was odd (a writer died inside): released.
    pub torn: usize,
    /// Inserts that never completed (PENDING): freed.
    pub pending: usize,
    /// Records already expired: freed.
    pub expired: usize,
    /// Records whose fields make no sense (bad state, protocol): freed.
    pub invalid: usize,
    /// Records whose key another kept record already holds: freed.
    pub duplicates: usize,
    /// Records that found no index entry (both buckets full): freed.
    pub unplaced: usize,
    /// Expiry times further ahead than the longest timeout: clamped.
    pub clamped: usize,
    /// Writer spin flags found held: released.
    pub stripes_held: usize,
    /// Time the recovery took, in microseconds.
    pub micros: u64,
}

/// How a table came to be when a dataplane opened its state directory:
/// the caller logs it (a replaced file at `warn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// No file: a new, empty table.
    Created { path: PathBuf },
    /// The previous owner's table, recovered; its live records carry on.
    Reattached {
        path: PathBuf,
        /// The previous owner closed it cleanly (else it died holding it).
        clean: bool,
        previous_pid: u32,
        repair: Repair,
    },
    /// An existing file this build cannot use; replaced by an empty table.
    StartedEmpty { path: PathBuf, reason: Mismatch },
}

impl Attach {
    /// Records carried over (0 unless re-attached).
    pub fn kept(&self) -> usize {
        match self {
            Attach::Reattached { repair, .. } => repair.kept,
            _ => 0,
        }
    }
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attach::Created { path } => write!(f, "created {}", path.display()),
            Attach::Reattached {
                path,
                clean,
                previous_pid,
                repair: r,
            } => write!(
                f,
                "re-attached {} (previous owner pid {previous_pid} {}): kept {} in {} us; freed torn {} pending {} expired {} invalid {} duplicate {} unplaced {}; clamped {}, stripes held {}",
                path.display(),
                if *clean { "exited cleanly" } else { "died" },
                r.kept,
                r.micros,
                r.torn,
                r.pending,
                r.expired,
                r.invalid,
                r.duplicates,
                r.unplaced,
                r.clamped,
                r.stripes_held
            ),
            Attach::StartedEmpty { path, reason } => {
                write!(f, "started empty: {} not usable ({reason})", path.display())
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------

/// One entry of the section table.
#[repr(C)]
#[derive(Debug)]
pub struct SectionHdr {
    pub offset: AtomicU64,
    pub count: AtomicU64,
    pub elem_size: AtomicU32,
    pub elem_align: AtomicU32,
}

/// The header page. See the module docs for the byte offsets.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    pub magic: AtomicU64,
    pub layout_version: AtomicU32,
    pub header_len: AtomicU32,
    pub file_len: AtomicU64,
    pub capacity: AtomicU64,
    pub seed: AtomicU64,
    pub clock: AtomicU32,
    pub clean: AtomicU32,
    pub owner_pid: AtomicU32,
    pub creator_pid: AtomicU32,
    pub boot_id: [AtomicU64; 2],
    pub attaches: AtomicU64,
    pub nsections: AtomicU32,
    _pad: AtomicU32,
    pub sections: [SectionHdr; MAX_SECTIONS],
    pub params: [AtomicU64; PARAMS],
}

// SAFETY: repr(C), atomics only.
unsafe impl Plain for Header {}
// SAFETY: repr(C), atomics only.
unsafe impl Plain for SectionHdr {}

const _: () = assert!(std::mem::size_of::<Header>() <= PAGE);
const _: () = assert!(std::mem::offset_of!(Header, sections) == 88);
const _: () = assert!(std::mem::offset_of!(Header, params) == 280);
const _: () = assert!(std::mem::size_of::<Header>() == 536);

/// The header as plain values, decoded from bytes (validation, `inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInfo {
    pub magic: [u8; 8],
    pub layout_version: u32,
    pub header_len: u32,
    pub file_len: u64,
    pub capacity: u64,
    pub seed: u64,
    pub clock: u32,
    pub clean: bool,
    pub owner_pid: u32,
    pub creator_pid: u32,
    pub boot_id: [u64; 2],
    pub attaches: u64,
    pub sections: Vec<(u64, u64, u32, u32)>,
    pub params: [u64; PARAMS],
}

impl HeaderInfo {
    /// Decodes a header page; `None` when `b` is shorter than the header.
    fn parse(b: &[u8]) -> Option<HeaderInfo> {
        use std::mem::offset_of;
        if b.len() < std::mem::size_of::<Header>() {
            return None;
        }
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let n = (u32_at(offset_of!(Header, nsections)) as usize).min(MAX_SECTIONS);
        let sections = (0..n)
            .map(|i| {
                let o = offset_of!(Header, sections) + i * std::mem::size_of::<SectionHdr>();
                (u64_at(o), u64_at(o + 8), u32_at(o + 16), u32_at(o + 20))
            })
            .collect();
        let mut params = [0u64; PARAMS];
        for (i, p) in params.iter_mut().enumerate() {
            *p = u64_at(offset_of!(Header, params) + 8 * i);
        }
        Some(HeaderInfo {
            magic: u64_at(0).to_le_bytes(),
            layout_version: u32_at(offset_of!(Header, layout_version)),
            header_len: u32_at(offset_of!(Header, header_len)),
            file_len: u64_at(offset_of!(Header, file_len)),
            capacity: u64_at(offset_of!(Header, capacity)),
            seed: u64_at(offset_of!(Header, seed)),
            clock: u32_at(offset_of!(Header, clock)),
            clean: u32_at(offset_of!(Header, clean)) == 1,
            owner_pid: u32_at(offset_of!(Header, owner_pid)),
            creator_pid: u32_at(offset_of!(Header, creator_pid)),
            boot_id: [
                u64_at(offset_of!(Header, boot_id)),
                u64_at(offset_of!(Header, boot_id) + 8),
            ],
            attaches: u64_at(offset_of!(Header, attaches)),
            sections,
            params,
        })
    }
}

// ---------------------------------------------------------------------------
// Specs, layouts and outcomes
// ---------------------------------------------------------------------------

/// One array of a table file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionSpec {
    pub elem_size: usize,
    pub elem_align: usize,
    pub count: usize,
}

impl SectionSpec {
    /// A section of `count` elements of `T`.
    pub fn of<T: Plain>(count: usize) -> SectionSpec {
        SectionSpec {
            elem_size: std::mem::size_of::<T>(),
            elem_align: std::mem::align_of::<T>(),
            count,
        }
    }
}

/// What a table file must look like for this binary and configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// 8 ASCII bytes naming the table.
    pub magic: [u8; 8],
    pub layout_version: u32,
    pub capacity: u64,
    pub seed: u64,
    pub sections: Vec<SectionSpec>,
    /// Table-specific header words written at creation (informational).
    pub params: Vec<u64>,
}

impl Spec {
    /// Byte offset of every section, and the file size.
    pub fn layout(&self) -> Option<(Vec<usize>, usize)> {
        if self.sections.is_empty() || self.sections.len() > MAX_SECTIONS {
            return None;
        }
        let mut off = PAGE;
        let mut offsets = Vec::new();
        for s in &self.sections {
            if s.elem_align == 0 || s.elem_align > PAGE || s.count == 0 {
                return None;
            }
            offsets.push(off);
            let bytes = s.elem_size.checked_mul(s.count)?;
            off = off.checked_add(bytes)?.checked_next_multiple_of(PAGE)?;
        }
        Some((offsets, off))
    }
}

/// Why an existing file was not re-attached (it was replaced by an empty one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    /// Shorter than the header, or the magic is not this table's.
    #[error("not a {expected} file (magic {found:?}, {size} bytes)")]
    NotOurs {
        expected: String,
        found: [u8; 8],
        size: u64,
    },
    /// Written by a build with another layout.
    #[error("layout version {found}, this build uses {expected}")]
    LayoutVersion { found: u32, expected: u32 },
    #[error("capacity {found}, configured {expected}")]
    Capacity { found: u64, expected: u64 },
    #[error("hash seed {found:#x}, configured {expected:#x}")]
    Seed { found: u64, expected: u64 },
    /// Times were taken from another clock.
    #[error("clock id {found}, this build uses {expected}")]
    Clock { found: u32, expected: u32 },
    /// Written before a reboot: its CLOCK_MONOTONIC times mean nothing now.
    #[error("written in another boot (boot id differs)")]
    OtherBoot,
    /// Header or size inconsistent with the layout of its own capacity.
    #[error("corrupt: {0}")]
    Corrupt(String),
}

/// How a writer came to own its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// There was no file: a new, empty one.
    Created,
    /// An existing, compatible file: the caller recovers and keeps its
    /// records.
    Attached {
        /// The previous owner closed it cleanly (else it died holding it).
        clean: bool,
        /// The previous owner's pid.
        previous_pid: u32,
    },
    /// An existing file that could not be used, replaced by an empty one.
    Replaced(Mismatch),
}

/// Errors that stop a table file from being opened at all.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// Another process holds the file for writing.
    #[error("{path} is in use by another dataplane (pid {pid}); stop it first, or give this one another --tables directory")]
    Busy { path: PathBuf, pid: u32 },
    /// The state directory or file is not usable.
    #[error("{path}: {reason}")]
    Unusable { path: PathBuf, reason: String },
    /// A read-only open found no usable file.
    #[error("{path}: {0}", path = .1.display())]
    Invalid(Mismatch, PathBuf),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ShmError + '_ {
    move |err| ShmError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`) as two words; zero
/// when unreadable (then the boot check is skipped).
pub fn boot_id() -> [u64; 2] {
    let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
        return [0, 0];
    };
    let hex: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    if hex.len() != 32 {
        return [0, 0];
    }
    let a = u64::from_str_radix(&hex[..16], 16).unwrap_or(0);
    let b = u64::from_str_radix(&hex[16..], 16).unwrap_or(0);
    [a, b]
}

// ---------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------

/// An open table file: its mapping, its header, and (for a writer) the lock.
#[derive(Debug)]
pub struct SharedFile {
    path: PathBuf,
    /// Holds the flock (writers); kept open for the mapping's life.
    file: File,
    map: Arc<Mapping>,
    offsets: Vec<usize>,
    info: HeaderInfo,
    /// A created file not yet linked into place: (temporary path, whether
    /// it replaces an existing file).
    pending: Option<(PathBuf, bool)>,
    /// The replaced file, locked until the new one is in place.
    _old: Option<File>,
}

impl SharedFile {
    /// Opens `dir/name` for writing, as [`Spec`] says it must be: re-attaches
    /// a compatible file, replaces an incompatible one, creates a missing one
    /// (and `dir`, mode 0700). A created or replaced file is zeroed; the
    /// caller initialises its sections, then calls [`commit`](Self::commit).
    pub fn open_rw(dir: &Path, name: &str, spec: &Spec) -> Result<(SharedFile, Opened), ShmError> {
        let Some((offsets, total)) = spec.layout() else {
            return Err(ShmError::Unusable {
                path: dir.join(name),
                reason: "table too large for a file".into(),
            });
        };
        ensure_dir(dir)?;
        let path = dir.join(name);
        for _ in 0..4 {
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc_o_nofollow())
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match Self::create(&path, spec, &offsets, total, None)? {
                        Some(f) => return Ok((f, Opened::Created)),
                        None => continue, // someone else created it meanwhile
                    }
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            check_regular(&file, &path)?;
            lock_or_busy(&file, &path)?;
            // The path may have been replaced between our open and our lock.
            if !same_inode(&file, &path) {
                continue;
            }
            match validate(&file, spec, &offsets, total) {
                Ok(info) => {
                    let map = Mapping::new(&file, total, true).map_err(io_err(&path))?;
                    let f = SharedFile {
                        path,
                        file,
                        map,
                        offsets,
                        info: info.clone(),
                        pending: None,
                        _old: None,
                    };
                    let h = f.header();
                    h.owner_pid.store(std::process::id(), Ordering::Relaxed);
                    h.clean.store(0, Ordering::Relaxed);
                    h.attaches.fetch_add(1, Ordering::Relaxed);
                    return Ok((
                        f,
                        Opened::Attached {
                            clean: info.clean,
                            previous_pid: info.owner_pid,
                        },
                    ));
                }
                Err(why) => {
                    if let Some(f) = Self::create(&path, spec, &offsets, total, Some(file))? {
                        return Ok((f, Opened::Replaced(why)));
                    }
                }
            }
        }
        Err(ShmError::Unusable {
            path,
            reason: "the file keeps changing under us (another process replacing it?)".into(),
        })
    }

    /// Creates a zeroed file under a temporary name, locked, header written
    /// but for the magic. `None` when `path` appeared meanwhile (retry).
    fn create(
        path: &Path,
        spec: &Spec,
        offsets: &[usize],
        total: usize,
        old: Option<File>,
    ) -> Result<Option<SharedFile>, ShmError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        remove_stale_temporaries(path, &name);
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp); // a leftover of this pid's predecessor
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        lock_or_busy(&file, &tmp)?;
        file.set_len(total as u64).map_err(io_err(&tmp))?;
        let map = Mapping::new(&file, total, true).map_err(io_err(&tmp))?;
        let f = SharedFile {
            path: path.to_path_buf(),
            file,
            map,
            offsets: offsets.to_vec(),
            info: HeaderInfo {
                magic: spec.magic,
                layout_version: spec.layout_version,
                header_len: std::mem::size_of::<Header>() as u32,
                file_len: total as u64,
                capacity: spec.capacity,
                seed: spec.seed,
                clock: CLOCK_MONOTONIC,
                clean: false,
                owner_pid: std::process::id(),
                creator_pid: std::process::id(),
                boot_id: boot_id(),
                attaches: 0,
                sections: Vec::new(),
                params: [0; PARAMS],
            },
            pending: Some((tmp, old.is_some())),
            _old: old,
        };
        let h = f.header();
        h.layout_version
            .store(spec.layout_version, Ordering::Relaxed);
        h.header_len
            .store(std::mem::size_of::<Header>() as u32, Ordering::Relaxed);
        h.file_len.store(total as u64, Ordering::Relaxed);
        h.capacity.store(spec.capacity, Ordering::Relaxed);
        h.seed.store(spec.seed, Ordering::Relaxed);
        h.clock.store(CLOCK_MONOTONIC, Ordering::Relaxed);
        h.owner_pid.store(std::process::id(), Ordering::Relaxed);
        h.creator_pid.store(std::process::id(), Ordering::Relaxed);
        let b = boot_id();
        h.boot_id[0].store(b[0], Ordering::Relaxed);
        h.boot_id[1].store(b[1], Ordering::Relaxed);
        h.nsections
            .store(spec.sections.len() as u32, Ordering::Relaxed);
        for (i, (s, off)) in spec.sections.iter().zip(offsets).enumerate() {
            let e = &h.sections[i];
            e.offset.store(*off as u64, Ordering::Relaxed);
            e.count.store(s.count as u64, Ordering::Relaxed);
            e.elem_size.store(s.elem_size as u32, Ordering::Relaxed);
            e.elem_align.store(s.elem_align as u32, Ordering::Relaxed);
        }
        for (p, v) in h.params.iter().zip(&spec.params) {
            p.store(*v, Ordering::Relaxed);
        }
        Ok(Some(f))
    }

    /// Publishes a created file: writes the magic (release: a reader that
    /// sees it sees the initialised sections) and links the file into place.
    /// A no-op for an attached file. Fails with [`ShmError::Busy`] when
    /// another process created the file first (only possible when there was
    /// none).
    pub fn commit(&mut self, magic: [u8; 8]) -> Result<(), ShmError> {
        let Some((tmp, replace)) = self.pending.take() else {
            return Ok(());
        };
        self.header()
            .magic
            .store(u64::from_le_bytes(magic), Ordering::Release);
        let r = if replace {
            std::fs::rename(&tmp, &self.path)
        } else {
            // link(2) never replaces an existing file.
            std::fs::hard_link(&tmp, &self.path).and_then(|()| std::fs::remove_file(&tmp))
        };
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            if e.kind() == io::ErrorKind::AlreadyExists {
                let pid = read_owner_pid(&self.path);
                return Err(ShmError::Busy {
                    path: self.path.clone(),
                    pid,
                });
            }
            return Err(io_err(&self.path)(e));
        }
        self._old = None;
        Ok(())
    }

    /// Opens `path` read-only for inspection: no lock, the header checked
    /// against the layout of its own capacity and `sections(capacity)`.
    pub fn open_ro(
        path: &Path,
        magic: [u8; 8],
        layout_version: u32,
        sections: impl Fn(u64) -> Option<Vec<SectionSpec>>,
    ) -> Result<SharedFile, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc_o_nofollow())
            .open(path)
            .map_err(io_err(path))?;
        check_regular(&file, path)?;
        let info = read_header(&file)
            .map_err(io_err(path))?
            .ok_or_else(|| ShmError::Invalid(not_ours(magic, [0; 8], 0), path.to_path_buf()))?;
        let spec = Spec {
            magic,
            layout_version,
            capacity: info.capacity,
            seed: info.seed,
            sections: sections(info.capacity).ok_or_else(|| {
                ShmError::Invalid(
                    Mismatch::Corrupt(format!("capacity {}", info.capacity)),
                    path.to_path_buf(),
                )
            })?,
            params: Vec::new(),
        };
        let (offsets, total) = spec.layout().ok_or_else(|| {
            ShmError::Invalid(Mismatch::Corrupt("layout".into()), path.to_path_buf())
        })?;
        let info = validate(&file, &spec, &offsets, total)
            .map_err(|m| ShmError::Invalid(m, path.to_path_buf()))?;
        let map = Mapping::new(&file, total, false).map_err(io_err(path))?;
        Ok(SharedFile {
            path: path.to_path_buf(),
            file,
            map,
            offsets,
            info,
            pending: None,
            _old: None,
        })
    }

    /// The header in the mapping.
    pub fn header(&self) -> &Header {
        // The header always fits: files are at least one page.
        let p = self.map.map.as_mut_ptr() as *const Header;
        // SAFETY: the mapping is at least PAGE >= size_of::<Header>() bytes
        // (checked before mapping), page-aligned, and kept alive by `self`;
        // Header is Plain.
        unsafe { &*p }
    }

    /// The header as it was when the file was opened.
    pub fn info(&self) -> &HeaderInfo {
        &self.info
    }

    /// Section `i` as a slab of `count` elements.
    pub fn section<T: Plain>(&self, i: usize, count: usize) -> Result<Slab<T>, ShmError> {
        let off = *self.offsets.get(i).ok_or_else(|| ShmError::Unusable {
            path: self.path.clone(),
            reason: format!("no section {i}"),
        })?;
        self.map.slab(off, count).map_err(io_err(&self.path))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the file (and of the mapping).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Never true (a file is at least a page).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Marks the file closed cleanly (the writer is going away).
    pub fn mark_clean(&self) {
        if self.map.writable() && self.pending.is_none() {
            let h = self.header();
            h.owner_pid.store(0, Ordering::Relaxed);
            h.clean.store(1, Ordering::Release);
        }
    }

    /// The open file (a writer's holds the `flock`).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for SharedFile {
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.pending.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Removes `.NAME.PID.tmp` files next to `path` whose creator is gone (it
/// died between creating and linking a file: up to a whole table of tmpfs).
fn remove_stale_temporaries(path: &Path, name: &str) {
    let Some(dir) = path.parent() else {
        return;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for e in rd.flatten() {
        let f = e.file_name();
        let Some(pid) = f
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn libc_o_nofollow() -> i32 {
    libc::O_NOFOLLOW | libc::O_CLOEXEC
}

fn ensure_dir(dir: &Path) -> Result<(), ShmError> {
    let unusable = |reason: String| ShmError::Unusable {
        path: dir.to_path_buf(),
        reason,
    };
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(unusable("exists and is not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir)),
        Err(e) => Err(io_err(dir)(e)),
    }
}

fn check_regular(file: &File, path: &Path) -> Result<(), ShmError> {
    let m = file.metadata().map_err(io_err(path))?;
    if !m.is_file() {
        return Err(ShmError::Unusable {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    Ok(())
}

fn same_inode(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn lock_or_busy(file: &File, path: &Path) -> Result<(), ShmError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(ShmError::Busy {
            path: path.to_path_buf(),
            pid: read_header(file)
                .ok()
                .flatten()
                .map(|h| h.owner_pid)
                .unwrap_or(0),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(path)(e)),
    }
}

fn read_owner_pid(path: &Path) -> u32 {
    File::open(path)
        .ok()
        .and_then(|f| read_header(&f).ok().flatten())
        .map(|h| h.owner_pid)
        .unwrap_or(0)
}

/// The header page of `file` (`None` when the file is shorter than that).
fn read_header(file: &File) -> io::Result<Option<HeaderInfo>> {
    let mut b = vec![0u8; PAGE];
    let mut got = 0;
    while got < PAGE {
        match file.read_at(&mut b[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(HeaderInfo::parse(&b[..got]))
}

fn not_ours(expected: [u8; 8], found: [u8; 8], size: u64) -> Mismatch {
    Mismatch::NotOurs {
        expected: String::from_utf8_lossy(&expected).into_owned(),
        found,
        size,
    }
}

/// Checks an existing file against what this build expects (all from
/// `pread`; nothing is mapped before this passes).
fn validate(
    file: &File,
    spec: &Spec,
    offsets: &[usize],
    total: usize,
) -> Result<HeaderInfo, Mismatch> {
    let size = file
        .metadata()
        .map_err(|e| Mismatch::Corrupt(e.to_string()))?
        .len();
    let h = match read_header(file) {
        Ok(Some(h)) if size >= PAGE as u64 => h,
        Ok(_) => return Err(not_ours(spec.magic, [0; 8], size)),
        Err(e) => return Err(Mismatch::Corrupt(e.to_string())),
    };
    if h.magic != spec.magic {
        return Err(not_ours(spec.magic, h.magic, size));
    }
    if h.layout_version != spec.layout_version {
        return Err(Mismatch::LayoutVersion {
            found: h.layout_version,
            expected: spec.layout_version,
        });
    }
    if h.capacity != spec.capacity {
        return Err(Mismatch::Capacity {
            found: h.capacity,
            expected: spec.capacity,
        });
    }
    if h.seed != spec.seed {
        return Err(Mismatch::Seed {
            found: h.seed,
            expected: spec.seed,
        });
    }
    if h.clock != CLOCK_MONOTONIC {
        return Err(Mismatch::Clock {
            found: h.clock,
            expected: CLOCK_MONOTONIC,
        });
    }
    let here = boot_id();
    if here != [0, 0] && h.boot_id != here {
        return Err(Mismatch::OtherBoot);
    }
    if h.header_len as usize != std::mem::size_of::<Header>() {
        return Err(Mismatch::Corrupt(format!("header length {}", h.header_len)));
    }
    if h.file_len != total as u64 || size != total as u64 {
        return Err(Mismatch::Corrupt(format!(
            "size {size} (header says {}), layout needs {total}",
            h.file_len
        )));
    }
    let want: Vec<(u64, u64, u32, u32)> = spec
        .sections
        .iter()
        .zip(offsets)
        .map(|(s, o)| {
            (
                *o as u64,
                s.count as u64,
                s.elem_size as u32,
                s.elem_align as u32,
            )
        })
        .collect();
    if h.sections != want {
        return Err(Mismatch::Corrupt(format!(
            "section table {:?}, layout needs {want:?}",
            h.sections
        )));
    }
    Ok(h)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn spec(cap: usize) -> Spec {
        Spec {
            magic: *b"EPTESTTB",
            layout_version: 3,
            capacity: cap as u64,
            seed: 7,
            sections: vec![
                SectionSpec::of::<AtomicU64>(cap),
                SectionSpec::of::<AtomicU32>(5),
            ],
            params: vec![1, 2],
        }
    }

    #[test]
    fn create_attach_replace() {
        let d = tempdir();
        let (mut f, o) = SharedFile::open_rw(d.path(), "t", &spec(1000)).unwrap();
        assert_eq!(o, Opened::Created);
        assert_eq!(f.len(), PAGE + 8192 + PAGE);
        let s: Slab<AtomicU64> = f.section(0, 1000).unwrap();
        s[999].store(42, Ordering::Relaxed);
        f.commit(*b"EPTESTTB").unwrap();
        let mode = std::fs::metadata(d.path().join("t")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::metadata(d.path()).unwrap().mode() & 0o777,
            0o700,
            "created directory"
        );
        // Second writer: busy, naming us.
        match SharedFile::open_rw(d.path(), "t", &spec(1000)) {
            Err(ShmError::Busy { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("{other:?}"),
        }
        f.mark_clean();
        drop(s);
        drop(f);
        let (f, o) = SharedFile::open_rw(d.path(), "t", &spec(1000)).unwrap();
        assert_eq!(
            o,
            Opened::Attached {
                clean: true,
                previous_pid: 0
            }
        );
        let s: Slab<AtomicU64> = f.section(0, 1000).unwrap();
        assert_eq!(s[999].load(Ordering::Relaxed), 42);
        assert_eq!(f.info().params[..2], [1, 2]);
        drop((s, f));
        // Another capacity: replaced, empty.
        let (mut f, o) = SharedFile::open_rw(d.path(), "t", &spec(2000)).unwrap();
        assert_eq!(
            o,
            Opened::Replaced(Mismatch::Capacity {
                found: 1000,
                expected: 2000
            })
        );
        f.commit(*b"EPTESTTB").unwrap();
        let s: Slab<AtomicU64> = f.section(0, 2000).unwrap();
        assert_eq!(s[999].load(Ordering::Relaxed), 0);
        // Out-of-bounds sections are refused.
        assert!(f.section::<AtomicU64>(0, 1_000_000).is_err());
        assert!(f.section::<AtomicU64>(7, 1).is_err());
    }

    #[test]
    fn garbage_and_truncated_files_are_replaced() {
        use rand::{Rng, SeedableRng};
        let d = tempdir();
        std::fs::create_dir_all(d.path()).unwrap();
        let p = d.path().join("t");
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for len in [
            0usize,
            7,
            100,
            PAGE - 1,
            PAGE,
            PAGE + 5000,
            3 * PAGE,
            5 * PAGE,
        ] {
            for magic_ok in [false, true] {
                let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                if magic_ok && len >= 16 {
                    b[..8].copy_from_slice(b"EPTESTTB");
                    b[8..12].copy_from_slice(&3u32.to_ne_bytes());
                }
                std::fs::write(&p, &b).unwrap();
                let (mut f, o) = SharedFile::open_rw(d.path(), "t", &spec(1000)).unwrap();
                assert!(matches!(o, Opened::Replaced(_)), "{len}: {o:?}");
                f.commit(*b"EPTESTTB").unwrap();
                assert_eq!(std::fs::metadata(&p).unwrap().len() as usize, f.len());
                drop(f);
                // A read-only open of garbage is an error, not a panic.
                std::fs::write(&p, &b).unwrap();
                assert!(SharedFile::open_ro(&p, *b"EPTESTTB", 3, |c| Some(
                    spec(c as usize).sections
                ))
                .is_err());
            }
        }
    }

    #[test]
    fn dead_creators_temporaries_are_removed() {
        let d = tempdir();
        std::fs::create_dir_all(d.path()).unwrap();
        // pid_max is at most 2^22: this pid cannot be alive.
        let stale = d.path().join(".t.4294967.tmp");
        std::fs::write(&stale, b"half-made").unwrap();
        let mine = d.path().join(format!(".t.{}.tmp", std::process::id()));
        let (mut f, _) = SharedFile::open_rw(d.path(), "t", &spec(10)).unwrap();
        assert!(!stale.exists());
        assert!(mine.exists(), "ours until committed");
        f.commit(*b"EPTESTTB").unwrap();
        assert!(!mine.exists());
    }

    #[test]
    fn symlinks_are_refused() {
        let d = tempdir();
        std::fs::create_dir_all(d.path()).unwrap();
        std::os::unix::fs::symlink("/dev/null", d.path().join("t")).unwrap();
        assert!(SharedFile::open_rw(d.path(), "t", &spec(10)).is_err());
    }

    /// A fresh directory under the system temp dir (not yet created: the
    /// opener creates it), removed on drop.
    pub(crate) struct TempDir(PathBuf, PathBuf);
    impl TempDir {
        pub(crate) fn path(&self) -> &Path {
            &self.1
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    pub(crate) fn tempdir() -> TempDir {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ep-shm-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p.clone(), p.join("state"))
    }
}
