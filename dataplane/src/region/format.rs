//! The byte layout of the table region (layout version 2). Everything is
//! little-endian and addressed by offsets from the start of the file, a slot
//! body or the arena — never by pointers — so any process can map the file
//! at any address. `docs/architecture.md` ("The table region") describes the
//! same layout for someone writing a second reader.
//!
//! ```text
//! 0            header (4096 bytes): identity, layout, active generation,
//!              slot descriptors (at 256), reader slots (at 1024)
//! 4096         slot 0 body   (slot_size bytes)
//! ...          slot n-1 body
//! arena_off    arena         (arena_size bytes): immutable blocks shared by
//!              generations: one *segment* per Service (its frontends,
//!              backends, source ranges and names, with its own CRC) and
//!              the packed Maglev tables
//! ```
//!
//! A slot body is small: a header, the table of the generation's segments
//! (arena offset, length, CRC-32C each) and the node's settings. Publishing
//! a generation in which one Service changed writes one segment (and its
//! Maglev table, if its backends changed) and the slot's segment table; the
//! unchanged segments are referenced, not copied, re-encoded or
//! re-checksummed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edgeplane_packet::Proto;

use crate::tables::{
    Backend, Cidr, EmptyAction, Frontend, FrontendKey, FrontendKind, NodeConfig, Segment,
    ServiceInfo, Tables,
};

/// First 8 bytes of the file.
pub const MAGIC: [u8; 8] = *b"EPTABLES";
/// Bumped on any change of this layout; a mismatch is refused by readers and
/// makes the writer recreate the file.
pub const LAYOUT_VERSION: u32 = 2;
pub const HEADER_SIZE: usize = 4096;

// Header fields (byte offsets).
pub const H_MAGIC: usize = 0;
pub const H_VERSION: usize = 8;
pub const H_HEADER_SIZE: usize = 12;
pub const H_FILE_SIZE: usize = 16;
pub const H_N_SLOTS: usize = 24;
pub const H_N_READERS: usize = 28;
pub const H_SLOT_SIZE: usize = 32;
pub const H_SLOTS_OFF: usize = 40;
pub const H_ARENA_OFF: usize = 48;
pub const H_ARENA_SIZE: usize = 56;
/// `u64`, atomic: `generation << 8 | slot` of the active generation; 0 = none.
pub const H_ACTIVE: usize = 64;
/// `u32`, atomic: pid of the writer holding the region (0 = none).
pub const H_WRITER_PID: usize = 72;
/// `u64`, atomic: publications so far (for `inspect`).
pub const H_PUBLISHES: usize = 80;
/// `u64`, atomic: publications that gave up waiting for a stuck reader.
pub const H_STUCK: usize = 88;

/// Slot descriptors: `n_slots` × 64 bytes from here.
pub const SLOT_DESC_OFF: usize = 256;
pub const SLOT_DESC_SIZE: usize = 64;
pub const MAX_SLOTS: usize = 8;
/// Descriptor fields: `generation` (u64, atomic, 0 = empty or being
/// written), `len` (u64, bytes of the body in use), `crc` (u32, CRC-32C of
/// `body[..len]`).
pub const D_GENERATION: usize = 0;
pub const D_LEN: usize = 8;
pub const D_CRC: usize = 16;

/// Reader slots: `n_readers` × 32 bytes from here.
pub const READER_OFF: usize = 1024;
pub const READER_SIZE: usize = 32;
pub const MAX_READERS: usize = (HEADER_SIZE - READER_OFF) / READER_SIZE;
/// Reader fields: `pid` (u32, atomic, 0 = free), `generation` (u64, atomic,
/// the oldest generation the reader may still read), `heartbeat` (u64,
/// atomic, CLOCK_MONOTONIC milliseconds), `limit` (u64, atomic, the newest
/// generation it may read). The reader protects generations
/// `generation..=limit`.
pub const R_PID: usize = 0;
pub const R_GENERATION: usize = 8;
pub const R_HEARTBEAT: usize = 16;
pub const R_LIMIT: usize = 24;

// Slot body: a 64-byte header, then the segment table (16-byte entries),
// then the node's settings (JSON).
pub const BODY_HEADER: usize = 64;
pub const SEG_ENTRY_SIZE: usize = 16;
/// Segment block: a 32-byte header, then frontends, backends, source ranges
/// and the Service ports' names (JSON).
pub const SEG_HEADER: usize = 32;
/// Largest segment block a reader accepts (one Service with 65,535
/// endpoints on many ports fits easily).
pub const MAX_SEGMENT_LEN: u32 = 64 << 20;
pub const FRONTEND_SIZE: usize = 64;
pub const BACKEND_SIZE: usize = 32;
pub const CIDR_SIZE: usize = 20;
/// Largest Maglev table a reader accepts.
pub const MAX_MAGLEV_LEN: u32 = 1 << 20;

/// Sizes and offsets of one region file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub n_slots: usize,
    pub n_readers: usize,
    pub slot_size: usize,
    pub arena_size: usize,
}

impl Layout {
    pub fn slots_off(&self) -> usize {
        HEADER_SIZE
    }
    pub fn slot_off(&self, i: usize) -> usize {
        HEADER_SIZE + i * self.slot_size
    }
    pub fn arena_off(&self) -> usize {
        HEADER_SIZE + self.n_slots * self.slot_size
    }
    pub fn file_size(&self) -> usize {
        self.arena_off() + self.arena_size
    }
    pub fn desc_off(i: usize) -> usize {
        SLOT_DESC_OFF + i * SLOT_DESC_SIZE
    }
    pub fn reader_off(i: usize) -> usize {
        READER_OFF + i * READER_SIZE
    }

    /// Checks sizes a writer is about to create.
    pub fn check(&self) -> Result<(), String> {
        if !(2..=MAX_SLOTS).contains(&self.n_slots) {
            return Err(format!("slots must be 2..={MAX_SLOTS}"));
        }
        if !(1..=MAX_READERS).contains(&self.n_readers) {
            return Err(format!("readers must be 1..={MAX_READERS}"));
        }
        if self.slot_size < 4096 || self.slot_size & 4095 != 0 || self.slot_size > 1 << 32 {
            return Err("slot size must be a multiple of 4096 up to 4 GiB".into());
        }
        if self.arena_size & 4095 != 0 || self.arena_size > u32::MAX as usize {
            return Err("arena size must be a multiple of 4096 below 4 GiB".into());
        }
        Ok(())
    }

    /// Encodes the fixed header fields.
    pub fn header_bytes(&self) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[H_MAGIC..H_MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(&mut h, H_VERSION, LAYOUT_VERSION);
        put_u32(&mut h, H_HEADER_SIZE, HEADER_SIZE as u32);
        put_u64(&mut h, H_FILE_SIZE, self.file_size() as u64);
        put_u32(&mut h, H_N_SLOTS, self.n_slots as u32);
        put_u32(&mut h, H_N_READERS, self.n_readers as u32);
        put_u64(&mut h, H_SLOT_SIZE, self.slot_size as u64);
        put_u64(&mut h, H_SLOTS_OFF, self.slots_off() as u64);
        put_u64(&mut h, H_ARENA_OFF, self.arena_off() as u64);
        put_u64(&mut h, H_ARENA_SIZE, self.arena_size as u64);
        h
    }

    /// Decodes and checks the header of a file of `file_len` bytes.
    pub fn from_header(h: &[u8], file_len: usize) -> Result<Layout, String> {
        if h.len() < 64 || file_len < HEADER_SIZE {
            return Err(format!("file too short ({file_len} bytes)"));
        }
        if h[..8] != MAGIC {
            return Err("bad magic (not an edgeplane table region)".into());
        }
        let v = get_u32(h, H_VERSION);
        if v != LAYOUT_VERSION {
            return Err(format!(
                "layout version {v}, this build reads {LAYOUT_VERSION}"
            ));
        }
        if get_u32(h, H_HEADER_SIZE) as usize != HEADER_SIZE {
            return Err("bad header size".into());
        }
        let l = Layout {
            n_slots: get_u32(h, H_N_SLOTS) as usize,
            n_readers: get_u32(h, H_N_READERS) as usize,
            slot_size: get_u64(h, H_SLOT_SIZE) as usize,
            arena_size: get_u64(h, H_ARENA_SIZE) as usize,
        };
        l.check()?;
        if get_u64(h, H_SLOTS_OFF) as usize != l.slots_off()
            || get_u64(h, H_ARENA_OFF) as usize != l.arena_off()
            || get_u64(h, H_FILE_SIZE) as usize != l.file_size()
        {
            return Err("inconsistent offsets in the header".into());
        }
        if l.file_size() != file_len {
            return Err(format!(
                "file is {file_len} bytes, the header says {}",
                l.file_size()
            ));
        }
        Ok(l)
    }
}

/// The packed size in bytes of a Maglev table of `len` entries.
pub fn packed_bytes(len: u32, width: u8) -> usize {
    (len as usize * width as usize).div_ceil(8)
}

/// The narrowest width (4, 8 or 16 bits) that holds entries `< n`.
pub fn width_for(n: usize) -> u8 {
    if n <= 16 {
        4
    } else if n <= 256 {
        8
    } else {
        16
    }
}

/// Packs `entries` with `width` bits each into `out`
/// (`packed_bytes(entries.len(), width)` bytes).
pub fn pack(entries: &[u16], width: u8, out: &mut [u8]) {
    match width {
        4 => {
            out.fill(0);
            for (i, &e) in entries.iter().enumerate() {
                out[i / 2] |= ((e & 0xf) as u8) << ((i & 1) * 4);
            }
        }
        8 => {
            for (o, &e) in out.iter_mut().zip(entries) {
                *o = e as u8;
            }
        }
        _ => {
            for (o, &e) in out.chunks_exact_mut(2).zip(entries) {
                o.copy_from_slice(&e.to_le_bytes());
            }
        }
    }
}

/// Entry `i` of a packed table.
pub fn packed_get(bytes: &[u8], width: u8, i: usize) -> Option<u16> {
    match width {
        4 => bytes
            .get(i / 2)
            .map(|&b| ((b >> ((i & 1) * 4)) & 0xf) as u16),
        8 => bytes.get(i).map(|&b| b as u16),
        _ => bytes
            .get(2 * i..2 * i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]])),
    }
}

pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
/// Reads a field of a record whose bounds were checked (panics otherwise:
/// only used on slices the caller sized).
pub fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
pub fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
pub fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn put_ip(b: &mut [u8], off: usize, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            b[off..off + 4].copy_from_slice(&a.octets());
            b[off + 16] = 4;
        }
        IpAddr::V6(a) => {
            b[off..off + 16].copy_from_slice(&a.octets());
            b[off + 16] = 6;
        }
    }
}

fn get_ip(b: &[u8], off: usize) -> Result<IpAddr, String> {
    let raw: [u8; 16] = b[off..off + 16].try_into().expect("16 bytes");
    match b[off + 16] {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(raw))),
        f => Err(format!("bad address family {f}")),
    }
}

/// Where a frontend's Maglev table is in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockRef {
    /// Byte offset into the arena.
    pub off: u32,
    /// 4, 8 or 16; 0 when the frontend has no table.
    pub width: u8,
}

fn kind_code(k: FrontendKind) -> u8 {
    match k {
        FrontendKind::ClusterIp => 0,
        FrontendKind::NodePort => 1,
        FrontendKind::LoadBalancer => 2,
        FrontendKind::ExternalIp => 3,
    }
}

fn kind_of(c: u8) -> Result<FrontendKind, String> {
    Ok(match c {
        0 => FrontendKind::ClusterIp,
        1 => FrontendKind::NodePort,
        2 => FrontendKind::LoadBalancer,
        3 => FrontendKind::ExternalIp,
        _ => return Err(format!("bad frontend kind {c}")),
    })
}

fn proto_of(c: u8) -> Result<Proto, String> {
    Ok(match c {
        6 => Proto::Tcp,
        17 => Proto::Udp,
        132 => Proto::Sctp,
        _ => return Err(format!("bad frontend protocol {c}")),
    })
}

/// Where a segment block is in the arena, and its CRC-32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegRef {
    /// Byte offset into the arena.
    pub off: u32,
    /// Bytes of the block.
    pub len: u32,
    /// CRC-32C of the block's `len` bytes.
    pub crc: u32,
    /// The writer's number for the block (1, 2, ...; never two blocks with
    /// the same offset and number until 2^32 blocks were written): with the
    /// offset, length and CRC, what a reader may key its cache of decoded
    /// segments by. 0: do not cache.
    pub serial: u32,
}

/// The node's settings as stored in a slot body (JSON).
pub fn encode_node(node: &NodeConfig) -> Vec<u8> {
    serde_json::to_vec(node).expect("node settings serialize")
}

/// The size of a body with `n_segs` segments and a node blob of `node_len`.
pub fn body_len(n_segs: usize, node_len: usize) -> usize {
    BODY_HEADER + n_segs * SEG_ENTRY_SIZE + node_len
}

/// Encodes a slot body into `b` (exactly [`body_len`] bytes). `totals`:
/// services, frontends, backends and source ranges over all segments.
pub fn encode_body_into(
    b: &mut [u8],
    generation: u64,
    segs: impl ExactSizeIterator<Item = SegRef>,
    node: &[u8],
    totals: [u32; 4],
) {
    let n = segs.len();
    let seg_off = BODY_HEADER;
    let node_off = seg_off + n * SEG_ENTRY_SIZE;
    assert_eq!(b.len(), node_off + node.len());
    b[..BODY_HEADER].fill(0);
    put_u64(b, 0, generation);
    put_u32(b, 8, n as u32);
    put_u32(b, 12, seg_off as u32);
    put_u32(b, 16, node.len() as u32);
    put_u32(b, 20, node_off as u32);
    for (k, v) in totals.iter().enumerate() {
        put_u32(b, 24 + 4 * k, *v);
    }
    for (i, r) in segs.enumerate() {
        let e = &mut b[seg_off + i * SEG_ENTRY_SIZE..seg_off + (i + 1) * SEG_ENTRY_SIZE];
        put_u32(e, 0, r.off);
        put_u32(e, 4, r.len);
        put_u32(e, 8, r.crc);
        put_u32(e, 12, r.serial);
    }
    b[node_off..].copy_from_slice(node);
}

/// The bytes of a segment block for `s`, whose Maglev table `i` (the
/// index in [`Segment::maglev`] its frontends' `maglev_off` holds) is at
/// `blocks[i]` in the arena.
pub fn encode_segment(s: &Segment, blocks: &[BlockRef]) -> Vec<u8> {
    let meta = serde_json::to_vec(&s.services).expect("service names serialize");
    let fe_off = SEG_HEADER;
    let be_off = fe_off + s.frontends.len() * FRONTEND_SIZE;
    let sr_off = be_off + s.backends.len() * BACKEND_SIZE;
    let meta_off = sr_off + s.source_ranges.len() * CIDR_SIZE;
    let mut b = vec![0u8; meta_off + meta.len()];
    put_u32(&mut b, 0, s.services.len() as u32);
    put_u32(&mut b, 4, s.frontends.len() as u32);
    put_u32(&mut b, 8, s.backends.len() as u32);
    put_u32(&mut b, 12, s.source_ranges.len() as u32);
    put_u32(&mut b, 16, meta.len() as u32);
    for (i, f) in s.frontends.iter().enumerate() {
        let blk = if f.n_new == 0 || f.maglev_len == 0 {
            BlockRef::default()
        } else {
            blocks
                .get(f.maglev_off as usize)
                .copied()
                .unwrap_or_default()
        };
        let r = &mut b[fe_off + i * FRONTEND_SIZE..fe_off + (i + 1) * FRONTEND_SIZE];
        put_ip(r, 0, f.key.ip);
        r[17] = f.key.proto as u8;
        put_u16(r, 18, f.key.port);
        put_u32(r, 20, f.service);
        r[24] = kind_code(f.kind);
        r[25] = match f.empty_action {
            EmptyAction::Reject => 0,
            EmptyAction::Drop => 1,
        };
        r[26] = f.snat as u8;
        r[27] = blk.width;
        put_u32(r, 28, f.backend_off);
        put_u32(r, 32, f.n_new);
        put_u32(r, 36, f.n_all);
        put_u32(r, 40, blk.off);
        put_u32(r, 44, if blk.width == 0 { 0 } else { f.maglev_len });
        put_u32(r, 48, f.affinity_timeout);
        put_u32(r, 52, f.affinity_group);
        put_u32(r, 56, f.source_range_off);
        put_u32(r, 60, f.source_range_len);
    }
    for (i, be) in s.backends.iter().enumerate() {
        let r = &mut b[be_off + i * BACKEND_SIZE..be_off + (i + 1) * BACKEND_SIZE];
        put_ip(r, 0, be.ip);
        r[17] = be.ready as u8
            | (be.serving as u8) << 1
            | (be.terminating as u8) << 2
            | (be.local as u8) << 3;
        put_u16(r, 18, be.port);
        put_u32(r, 20, be.weight);
    }
    for (i, c) in s.source_ranges.iter().enumerate() {
        let r = &mut b[sr_off + i * CIDR_SIZE..sr_off + (i + 1) * CIDR_SIZE];
        put_ip(r, 0, c.addr);
        r[17] = c.prefix_len;
    }
    b[meta_off..].copy_from_slice(&meta);
    b
}

/// A decoded slot body: the generation's settings and segment table.
#[derive(Debug, Clone)]
pub struct Body {
    pub node: NodeConfig,
    pub segments: Vec<SegRef>,
    /// Services, frontends, backends and source ranges over all segments
    /// (as the writer says: checked against the segments when decoded).
    pub totals: [u32; 4],
}

/// Decodes and checks a slot body (the segment table's entries are checked
/// against the arena when each segment is read).
pub fn decode_body(b: &[u8], generation: u64) -> Result<Body, String> {
    if b.len() < BODY_HEADER {
        return Err(format!("body of {} bytes is too short", b.len()));
    }
    let g = get_u64(b, 0);
    if g != generation {
        return Err(format!(
            "body is generation {g}, its descriptor says {generation}"
        ));
    }
    let n = get_u32(b, 8) as usize;
    let seg_off = get_u32(b, 12) as usize;
    let node_len = get_u32(b, 16) as usize;
    let node_off = get_u32(b, 20) as usize;
    n.checked_mul(SEG_ENTRY_SIZE)
        .and_then(|x| x.checked_add(seg_off))
        .filter(|&e| seg_off >= BODY_HEADER && e <= b.len())
        .ok_or_else(|| format!("segment table: {n} entries at {seg_off} run past the body"))?;
    let node_end = node_off
        .checked_add(node_len)
        .filter(|&e| node_off >= BODY_HEADER && e <= b.len())
        .ok_or_else(|| format!("node settings at {node_off}+{node_len} run past the body"))?;
    let node: NodeConfig = serde_json::from_slice(&b[node_off..node_end])
        .map_err(|e| format!("node settings: {e}"))?;
    let segments = (0..n)
        .map(|i| {
            let e = &b[seg_off + i * SEG_ENTRY_SIZE..seg_off + (i + 1) * SEG_ENTRY_SIZE];
            SegRef {
                off: get_u32(e, 0),
                len: get_u32(e, 4),
                crc: get_u32(e, 8),
                serial: get_u32(e, 12),
            }
        })
        .collect();
    let totals = [
        get_u32(b, 24),
        get_u32(b, 28),
        get_u32(b, 32),
        get_u32(b, 36),
    ];
    Ok(Body {
        node,
        segments,
        totals,
    })
}

/// Decoded segments a reader keeps between adoptions, keyed by
/// (offset, length, CRC, serial) of their blocks (see [`SegRef::serial`]).
pub type SegmentCache = std::collections::HashMap<(u32, u32, u32, u32), std::sync::Arc<Tables>>;

/// Decodes the generation `generation` from its slot body `body`, reading
/// each segment with `read(off, len, buf)` (copy `len` arena bytes at `off`
/// into `buf`; false when out of bounds). Every index and offset is checked
/// here, once: segment bounds and CRC, frontend → service, backend run,
/// source ranges and Maglev block (within `arena_size` bytes), no duplicate
/// frontend. The tables have no arena attached yet (`maglev_width` of each
/// frontend says where its table is).
///
/// With a `cache`, a segment decoded (and validated) by an earlier call
/// under the same key is not read again; afterwards the cache holds this
/// generation's segments only.
pub fn decode_generation(
    body: &[u8],
    generation: u64,
    arena_size: usize,
    mut read: impl FnMut(usize, usize, &mut Vec<u8>) -> bool,
    mut cache: Option<&mut SegmentCache>,
) -> Result<Tables, String> {
    let b = decode_body(body, generation)?;
    let [n_svc, n_fe, n_be, n_sr] = b.totals.map(|v| v as usize);
    // The totals only size allocations: bounded by what the arena can hold.
    let cap = |n: usize, size: usize| n.min(arena_size / size);
    let mut t = Tables {
        generation,
        node: b.node,
        ..Tables::default()
    };
    t.services.reserve(cap(n_svc, 2));
    t.frontends.reserve(cap(n_fe, FRONTEND_SIZE));
    t.backends.reserve(cap(n_be, BACKEND_SIZE));
    t.source_ranges.reserve(cap(n_sr, CIDR_SIZE));
    t.frontend_index.reserve(cap(n_fe, FRONTEND_SIZE));
    let mut next = SegmentCache::new();
    let mut buf = Vec::new();
    for (i, r) in b.segments.iter().enumerate() {
        let key = (r.off, r.len, r.crc, r.serial);
        let cached = match (&cache, r.serial) {
            (Some(c), s) if s != 0 => c.get(&key).cloned(),
            _ => None,
        };
        let seg = match cached {
            Some(seg) => seg,
            None => {
                if r.len as usize > arena_size || r.off as usize > arena_size - r.len as usize {
                    return Err(format!(
                        "segment {i}: {}+{} past the arena ({arena_size} bytes)",
                        r.off, r.len
                    ));
                }
                if r.len > MAX_SEGMENT_LEN {
                    return Err(format!("segment {i}: {} bytes", r.len));
                }
                if !read(r.off as usize, r.len as usize, &mut buf) {
                    return Err(format!("segment {i}: unreadable"));
                }
                let got = crc32c::crc32c(&buf);
                if got != r.crc {
                    return Err(format!(
                        "segment {i}: CRC {got:08x}, the segment table says {:08x}",
                        r.crc
                    ));
                }
                let mut one = Tables::default();
                decode_segment_into(&buf, &mut one, arena_size)
                    .map_err(|e| format!("segment {i}: {e}"))?;
                std::sync::Arc::new(one)
            }
        };
        append_segment(&mut t, &seg).map_err(|e| format!("segment {i}: {e}"))?;
        if cache.is_some() && r.serial != 0 {
            next.insert(key, seg);
        }
    }
    let got = [
        t.services.len(),
        t.frontends.len(),
        t.backends.len(),
        t.source_ranges.len(),
    ];
    if got != [n_svc, n_fe, n_be, n_sr] {
        return Err(format!(
            "segments hold {got:?} (services, frontends, backends, source ranges), the body says {:?}",
            b.totals
        ));
    }
    if let Some(c) = cache.as_mut() {
        **c = next;
    }
    Ok(t)
}

/// Appends a decoded segment (indices relative to it, as
/// [`decode_segment_into`] makes them into empty tables) to `t`, rebasing
/// its indices; refuses a frontend key `t` already has.
fn append_segment(t: &mut Tables, s: &Tables) -> Result<(), String> {
    let (sb, bb, rb) = (t.services.len(), t.backends.len(), t.source_ranges.len());
    if sb + s.services.len() > u32::MAX as usize
        || bb + s.backends.len() > u32::MAX as usize
        || rb + s.source_ranges.len() > u32::MAX as usize
        || t.frontends.len() + s.frontends.len() > u32::MAX as usize
    {
        return Err("more than 2^32 records".into());
    }
    t.services.extend_from_slice(&s.services);
    t.backends.extend_from_slice(&s.backends);
    t.source_ranges.extend_from_slice(&s.source_ranges);
    for (i, f) in s.frontends.iter().enumerate() {
        let mut f = f.clone();
        f.service += sb as u32;
        f.affinity_group += sb as u32;
        f.backend_off += bb as u32;
        f.source_range_off += rb as u32;
        let idx = t.frontends.len() as u32;
        if t.frontend_index.insert(f.key, idx).is_some() {
            return Err(format!("frontend {i}: duplicate key {:?}", f.key));
        }
        t.frontend_ips.insert(f.key.ip, ());
        t.frontends.push(f);
    }
    Ok(())
}

/// Decodes and checks one segment block, appending its Service ports,
/// frontends, backends and source ranges to `t` (indices rebased).
pub fn decode_segment_into(b: &[u8], t: &mut Tables, arena_size: usize) -> Result<(), String> {
    if b.len() < SEG_HEADER {
        return Err(format!("{} bytes is too short", b.len()));
    }
    let n_svc = get_u32(b, 0) as usize;
    let n_fe = get_u32(b, 4) as usize;
    let n_be = get_u32(b, 8) as usize;
    let n_sr = get_u32(b, 12) as usize;
    let meta_len = get_u32(b, 16) as usize;
    let fe_off = SEG_HEADER;
    let need = [
        (n_fe, FRONTEND_SIZE),
        (n_be, BACKEND_SIZE),
        (n_sr, CIDR_SIZE),
        (meta_len, 1),
    ]
    .iter()
    .try_fold(SEG_HEADER, |acc, &(n, size)| {
        n.checked_mul(size).and_then(|x| x.checked_add(acc))
    });
    if need != Some(b.len()) {
        return Err(format!(
            "{n_fe} frontends, {n_be} backends, {n_sr} source ranges and {meta_len} bytes of names do not make {} bytes",
            b.len()
        ));
    }
    let be_off = fe_off + n_fe * FRONTEND_SIZE;
    let sr_off = be_off + n_be * BACKEND_SIZE;
    let meta_off = sr_off + n_sr * CIDR_SIZE;
    let services: Vec<ServiceInfo> =
        serde_json::from_slice(&b[meta_off..]).map_err(|e| format!("service names: {e}"))?;
    if services.len() != n_svc {
        return Err(format!(
            "{} service names, the header says {n_svc}",
            services.len()
        ));
    }
    let (svc_base, be_base, sr_base) = (t.services.len(), t.backends.len(), t.source_ranges.len());
    if svc_base + n_svc > u32::MAX as usize
        || be_base + n_be > u32::MAX as usize
        || sr_base + n_sr > u32::MAX as usize
    {
        return Err("more than 2^32 records".into());
    }
    for i in 0..n_be {
        let r = &b[be_off + i * BACKEND_SIZE..be_off + (i + 1) * BACKEND_SIZE];
        let flags = r[17];
        t.backends.push(Backend {
            ip: get_ip(r, 0).map_err(|e| format!("backend {i}: {e}"))?,
            port: get_u16(r, 18),
            ready: flags & 1 != 0,
            serving: flags & 2 != 0,
            terminating: flags & 4 != 0,
            local: flags & 8 != 0,
            weight: get_u32(r, 20),
        });
    }
    for i in 0..n_sr {
        let r = &b[sr_off + i * CIDR_SIZE..sr_off + (i + 1) * CIDR_SIZE];
        let addr = get_ip(r, 0).map_err(|e| format!("source range {i}: {e}"))?;
        let prefix_len = r[17];
        if prefix_len > if addr.is_ipv4() { 32 } else { 128 } {
            return Err(format!("source range {i}: prefix length {prefix_len}"));
        }
        t.source_ranges.push(Cidr { addr, prefix_len });
    }
    t.services.extend(services);
    for i in 0..n_fe {
        let r = &b[fe_off + i * FRONTEND_SIZE..fe_off + (i + 1) * FRONTEND_SIZE];
        let bad = |what: String| format!("frontend {i}: {what}");
        let key = FrontendKey {
            ip: get_ip(r, 0).map_err(bad)?,
            proto: proto_of(r[17]).map_err(bad)?,
            port: get_u16(r, 18),
        };
        let mut f = Frontend {
            key,
            service: get_u32(r, 20),
            kind: kind_of(r[24]).map_err(bad)?,
            empty_action: match r[25] {
                0 => EmptyAction::Reject,
                1 => EmptyAction::Drop,
                c => return Err(bad(format!("bad empty action {c}"))),
            },
            snat: match r[26] {
                0 => false,
                1 => true,
                c => return Err(bad(format!("bad snat flag {c}"))),
            },
            maglev_width: r[27],
            backend_off: get_u32(r, 28),
            n_new: get_u32(r, 32),
            n_all: get_u32(r, 36),
            maglev_off: get_u32(r, 40),
            maglev_len: get_u32(r, 44),
            affinity_timeout: get_u32(r, 48),
            affinity_group: get_u32(r, 52),
            source_range_off: get_u32(r, 56),
            source_range_len: get_u32(r, 60),
        };
        if f.service as usize >= n_svc {
            return Err(bad(format!("service {} of {n_svc}", f.service)));
        }
        if f.affinity_group as usize >= n_svc {
            return Err(bad(format!(
                "affinity group {} of {n_svc}",
                f.affinity_group
            )));
        }
        if f.n_new > f.n_all || f.n_all > u16::MAX as u32 + 1 {
            return Err(bad(format!("n_new {} n_all {}", f.n_new, f.n_all)));
        }
        if f.backend_off as u64 + f.n_all as u64 > n_be as u64 {
            return Err(bad(format!(
                "backends {}+{} past {n_be}",
                f.backend_off, f.n_all
            )));
        }
        if f.source_range_off as u64 + f.source_range_len as u64 > n_sr as u64 {
            return Err(bad(format!(
                "source ranges {}+{} past {n_sr}",
                f.source_range_off, f.source_range_len
            )));
        }
        match (f.n_new, f.maglev_width) {
            (0, 0) if f.maglev_len == 0 => {}
            (0, _) | (_, 0) => {
                return Err(bad(format!(
                    "{} new-flow backends but Maglev width {} length {}",
                    f.n_new, f.maglev_width, f.maglev_len
                )))
            }
            (n, w @ (4 | 8 | 16)) => {
                if (n as usize) > 1 << w {
                    return Err(bad(format!("{n} backends do not fit {w}-bit entries")));
                }
                if f.maglev_len == 0 || f.maglev_len > MAX_MAGLEV_LEN {
                    return Err(bad(format!("Maglev length {}", f.maglev_len)));
                }
                let end = f.maglev_off as usize + packed_bytes(f.maglev_len, w);
                if end > arena_size {
                    return Err(bad(format!(
                        "Maglev block {}..{end} past the arena ({arena_size} bytes)",
                        f.maglev_off
                    )));
                }
            }
            (_, w) => return Err(bad(format!("bad Maglev width {w}"))),
        }
        f.service += svc_base as u32;
        f.affinity_group += svc_base as u32;
        f.backend_off += be_base as u32;
        f.source_range_off += sr_base as u32;
        let idx = t.frontends.len() as u32;
        if t.frontend_index.insert(key, idx).is_some() {
            return Err(bad(format!("duplicate key {key:?}")));
        }
        t.frontend_ips.insert(key.ip, ());
        t.frontends.push(f);
    }
    Ok(())
}
