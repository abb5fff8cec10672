//! In-place NAT rewrite with incremental checksum updates.
//!
//! # Promises
//! * [`rewrite_tuple`] and [`rewrite_icmp_error`] never panic and never
//!   allocate, whatever `frame` and `p` hold. Before writing anything they
//!   check that the offsets in `p` are ordered and inside `frame`, that the IP
//!   version at `p.l3_off` is `p.family`'s and that the header bytes they will
//!   touch are inside the datagram; if not, they return an error and leave
//!   the frame untouched. With a `p` that [`crate::parse()`] returned for this
//!   very frame, they only fail for the reasons documented on each function.
//! * Checksums stay valid: every checksum that was valid before the rewrite
//!   is valid after it (RFC 1624 incremental updates; SCTP's CRC32c and the
//!   outer ICMP checksum of an error are recomputed).
//! * A frame rewritten by [`rewrite_tuple`] still parses, to the same offsets.

use crate::checksum;
use crate::parse::{Frag, IcmpKind, IpFamily, Parsed};
use std::net::{IpAddr, Ipv4Addr};

/// The addresses and ports a packet should carry after translation. For ICMP
/// echo, the identifier is the source port of a request and the destination
/// port of a reply (as in Linux conntrack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// Why a rewrite could not be done. The frame is left untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The new addresses are of another family than the packet.
    #[error("new addresses are of another family than the packet")]
    FamilyMismatch,
    /// The frame has no L4 header to rewrite (later fragment) or it is
    /// truncated, or `p` does not describe this frame. Also: an SCTP first
    /// fragment (its CRC32c covers the whole reassembled packet).
    #[error("no L4 header to rewrite, or the summary does not match the frame")]
    NoL4Header,
    /// [`rewrite_icmp_error`] was given something other than an unfragmented
    /// ICMP error with a parsed quote (`p.icmp != Some(IcmpKind::Error)`,
    /// `p.inner == None`, or `p.frag != Frag::None`).
    #[error("not an unfragmented ICMP error with a parsed quote")]
    NotIcmpError,
}

fn family_of(ip: &IpAddr) -> IpFamily {
    match ip {
        IpAddr::V4(_) => IpFamily::V4,
        IpAddr::V6(_) => IpFamily::V6,
    }
}

/// An address's bytes without allocation.
#[derive(Clone, Copy)]
struct Addr {
    b: [u8; 16],
    len: usize,
}

impl Addr {
    fn of(ip: &IpAddr) -> Addr {
        let mut b = [0; 16];
        match ip {
            IpAddr::V4(a) => {
                b[..4].copy_from_slice(&a.octets());
                Addr { b, len: 4 }
            }
            IpAddr::V6(a) => Addr {
                b: a.octets(),
                len: 16,
            },
        }
    }

    fn read(frame: &[u8], off: usize, len: usize) -> Option<Addr> {
        let src = frame.get(off..off.checked_add(len)?)?;
        let mut b = [0; 16];
        b.get_mut(..len)?.copy_from_slice(src);
        Some(Addr { b, len })
    }

    fn bytes(&self) -> &[u8] {
        &self.b[..self.len]
    }
}

/// Where the addresses are in an IP header of a family.
struct Layout {
    src: usize,
    dst: usize,
    alen: usize,
    hdr_min: usize,
    version: u8,
}

fn layout(f: IpFamily) -> Layout {
    match f {
        IpFamily::V4 => Layout {
            src: 12,
            dst: 16,
            alen: 4,
            hdr_min: 20,
            version: 4,
        },
        IpFamily::V6 => Layout {
            src: 8,
            dst: 24,
            alen: 16,
            hdr_min: 40,
            version: 6,
        },
    }
}

fn read16(frame: &[u8], off: usize) -> Option<u16> {
    let w = frame.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([w[0], w[1]]))
}

fn write16(frame: &mut [u8], off: usize, v: u16) -> Option<()> {
    frame
        .get_mut(off..off.checked_add(2)?)?
        .copy_from_slice(&v.to_be_bytes());
    Some(())
}

/// Old and new addresses of one rewrite, for pseudo-header updates.
struct AddrChange {
    old_src: Addr,
    old_dst: Addr,
    new_src: Addr,
    new_dst: Addr,
}

impl AddrChange {
    fn read(
        frame: &[u8],
        l3: usize,
        lay: &Layout,
        src: &IpAddr,
        dst: &IpAddr,
    ) -> Option<AddrChange> {
        Some(AddrChange {
            old_src: Addr::read(frame, l3.checked_add(lay.src)?, lay.alen)?,
            old_dst: Addr::read(frame, l3.checked_add(lay.dst)?, lay.alen)?,
            new_src: Addr::of(src),
            new_dst: Addr::of(dst),
        })
    }

    /// Applies the address change to a checksum that covers them (the IPv4
    /// header, or a pseudo-header).
    fn update(&self, hc: u16) -> u16 {
        let hc = checksum::update_bytes(hc, self.old_src.bytes(), self.new_src.bytes());
        checksum::update_bytes(hc, self.old_dst.bytes(), self.new_dst.bytes())
    }

    /// Writes the new addresses into the IP header at `l3`; for IPv4 also
    /// updates the header checksum. Bounds were checked by the caller; a
    /// failed write here is impossible but reported rather than panicking.
    fn write(&self, frame: &mut [u8], l3: usize, lay: &Layout, family: IpFamily) -> Option<()> {
        let s = l3.checked_add(lay.src)?;
        let d = l3.checked_add(lay.dst)?;
        frame
            .get_mut(s..s + lay.alen)?
            .copy_from_slice(self.new_src.bytes());
        frame
            .get_mut(d..d + lay.alen)?
            .copy_from_slice(self.new_dst.bytes());
        if family == IpFamily::V4 {
            let hc = read16(frame, l3 + 10)?;
            write16(frame, l3 + 10, self.update(hc))?;
        }
        Some(())
    }
}

/// The transport work one rewrite does, decided (and bounds-checked) before
/// any byte is written.
enum L4Action {
    /// Addresses only (later fragment, unknown protocol, ICMPv4 non-echo).
    None,
    Tcp,
    Udp,
    Sctp,
    /// ICMP(v6) echo: new identifier; `pseudo` for ICMPv6.
    Echo {
        id: u16,
        pseudo: bool,
    },
    /// ICMPv6 non-echo: only the pseudo-header changes.
    Icmp6Pseudo,
}

/// Rewrites the outer packet's addresses and ports (or ICMP echo identifier)
/// to `new`, in place, updating the IPv4 header checksum and the L4 checksum
/// incrementally:
///
/// * TCP, UDP: pseudo-header addresses and ports. A UDP-over-IPv4 checksum of
///   0 ("none") stays 0; a computed UDP checksum of 0 is written as 0xffff.
/// * SCTP: ports, then CRC32c recomputed over `l4_off..l3_end`.
/// * ICMPv4 echo: identifier := `new.sport` for a request, `new.dport` for a
///   reply; checksum updated (no pseudo-header). Other ICMPv4: addresses only.
/// * ICMPv6 echo: the same identifier rule, checksum updated for the
///   pseudo-header too. Other ICMPv6: pseudo-header update only.
/// * Unknown protocols and [`Frag::Later`]: addresses (and the IPv4 header
///   checksum) only; `Ok`.
///
/// Errors (frame untouched): [`RewriteError::FamilyMismatch`] if `new`'s
/// addresses are not of `p.family`; [`RewriteError::NoL4Header`] if `p` does
/// not match the frame, or for an SCTP first fragment.
#[inline]
pub fn rewrite_tuple(frame: &mut [u8], p: &Parsed, new: &Tuple) -> Result<(), RewriteError> {
    match (p.family, new.src, new.dst) {
        (IpFamily::V4, IpAddr::V4(s), IpAddr::V4(d)) => {
            rewrite_addrs(frame, p, &s.octets(), &d.octets(), new.sport, new.dport)
        }
        (IpFamily::V6, IpAddr::V6(s), IpAddr::V6(d)) => {
            rewrite_addrs(frame, p, &s.octets(), &d.octets(), new.sport, new.dport)
        }
        _ => Err(RewriteError::FamilyMismatch),
    }
}

/// [`rewrite_tuple`] with the new addresses as bytes: 4 for an IPv4 packet,
/// 16 for IPv6 (another length is [`RewriteError::FamilyMismatch`]). For
/// callers that keep addresses in wire form (the conntrack), so that the
/// per-packet path converts nothing.
#[inline]
pub fn rewrite_tuple_bytes(
    frame: &mut [u8],
    p: &Parsed,
    src: &[u8],
    dst: &[u8],
    sport: u16,
    dport: u16,
) -> Result<(), RewriteError> {
    match p.family {
        IpFamily::V4 => match (<&[u8; 4]>::try_from(src), <&[u8; 4]>::try_from(dst)) {
            (Ok(s), Ok(d)) => rewrite_addrs(frame, p, s, d, sport, dport),
            _ => Err(RewriteError::FamilyMismatch),
        },
        IpFamily::V6 => match (<&[u8; 16]>::try_from(src), <&[u8; 16]>::try_from(dst)) {
            (Ok(s), Ok(d)) => rewrite_addrs(frame, p, s, d, sport, dport),
            _ => Err(RewriteError::FamilyMismatch),
        },
    }
}

/// [`rewrite_tuple_bytes`] of an IPv4 packet, with the new addresses as
/// [`Ipv4Addr`]s: the same checks, writes and errors. TCP and UDP (the per-packet
/// case) take a straight path that sums each 4-byte field's change as two
/// 16-bit words read at once; everything else goes through the general code.
/// `rewrite_v4_equals_general` checks that the bytes come out identical.
#[inline]
pub fn rewrite_tuple_v4(
    frame: &mut [u8],
    p: &Parsed,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Result<(), RewriteError> {
    if p.family != IpFamily::V4 {
        return Err(RewriteError::FamilyMismatch);
    }
    let tcp = p.proto == 6;
    if p.frag == Frag::Later || !(tcp || p.proto == 17) {
        return rewrite_addrs(frame, p, &src.octets(), &dst.octets(), sport, dport);
    }
    let (l3, l4, end) = (
        usize::from(p.l3_off),
        usize::from(p.l4_off),
        usize::from(p.l3_end),
    );
    if l3 + crate::ipv4::HEADER_LEN > l4 || l4 > end || end > frame.len() {
        return Err(RewriteError::NoL4Header);
    }
    let dg = &mut frame[l3..end];
    let l4 = l4 - l3;
    if dg[0] >> 4 != 4 {
        return Err(RewriteError::NoL4Header);
    }
    let need = if tcp {
        crate::tcp::HEADER_LEN
    } else {
        crate::udp::HEADER_LEN
    };
    if l4 + need > dg.len() {
        return Err(RewriteError::NoL4Header);
    }
    let (ip, seg) = dg.split_at_mut(l4);
    let Some(ip) = ip.first_chunk_mut::<{ crate::ipv4::HEADER_LEN }>() else {
        return Err(RewriteError::NoL4Header);
    };
    let Some(th) = seg.first_chunk_mut::<{ crate::udp::HEADER_LEN }>() else {
        return Err(RewriteError::NoL4Header);
    };
    // Σ(!old + new) over the 16-bit words of a 4-byte field: `checksum::delta`.
    let delta4 = |old: u32, new: u32| -> u32 {
        let o = !old;
        (o >> 16) + (o & 0xffff) + (new >> 16) + (new & 0xffff)
    };
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let (src, dst) = (src.to_bits(), dst.to_bits());
    let addr_delta = delta4(be32(&ip[12..16]), src) + delta4(be32(&ip[16..20]), dst);
    let new_ports = u32::from(sport) << 16 | u32::from(dport);
    let port_delta = delta4(be32(&th[..4]), new_ports);
    th[..4].copy_from_slice(&new_ports.to_be_bytes());
    // TCP's checksum at 16 (inside the 20 bytes checked above), UDP's at 6.
    let csum = if tcp { 16 } else { 6 };
    let seg = &mut seg[csum..csum + 2];
    let hc = u16::from_be_bytes([seg[0], seg[1]]);
    // UDP over IPv4: a zero checksum means "none" and stays zero.
    if tcp || hc != 0 {
        let hc = checksum::apply(hc, port_delta + addr_delta);
        seg.copy_from_slice(&(if hc == 0 { 0xffff } else { hc }).to_be_bytes());
    }
    ip[12..16].copy_from_slice(&src.to_be_bytes());
    ip[16..20].copy_from_slice(&dst.to_be_bytes());
    let hc = checksum::apply(u16::from_be_bytes([ip[10], ip[11]]), addr_delta);
    ip[10..12].copy_from_slice(&hc.to_be_bytes());
    Ok(())
}

/// The body of [`rewrite_tuple`] for addresses of `N` bytes (4: IPv4, 16:
/// IPv6; the caller matched `N` with `p.family`).
///
/// All checks come first; then the checksum arithmetic works on fixed-size
/// fields: the address change is summed once ([`checksum::delta`]) and
/// applied to the IPv4 header checksum and to the transport checksum's
/// pseudo-header alike, the port change to the transport checksum only.
#[inline(always)]
fn rewrite_addrs<const N: usize>(
    frame: &mut [u8],
    p: &Parsed,
    src: &[u8; N],
    dst: &[u8; N],
    sport: u16,
    dport: u16,
) -> Result<(), RewriteError> {
    let lay = layout(p.family);
    if lay.alen != N {
        return Err(RewriteError::FamilyMismatch);
    }
    let (l3, l4, end) = (
        usize::from(p.l3_off),
        usize::from(p.l4_off),
        usize::from(p.l3_end),
    );
    if l3 + lay.hdr_min > l4 || l4 > end || end > frame.len() {
        return Err(RewriteError::NoL4Header);
    }
    // The datagram; from here on offsets are relative to its start.
    let dg = &mut frame[l3..end];
    let l4 = l4 - l3;
    if dg[0] >> 4 != lay.version {
        return Err(RewriteError::NoL4Header);
    }

    // 1. Decide the transport work and check its bounds before writing.
    let (action, need) = if p.frag == Frag::Later {
        (L4Action::None, 0)
    } else {
        match (p.proto, p.family) {
            (6, _) => (L4Action::Tcp, crate::tcp::HEADER_LEN),
            (17, _) => (L4Action::Udp, crate::udp::HEADER_LEN),
            (132, _) if p.frag == Frag::First => return Err(RewriteError::NoL4Header),
            (132, _) => (L4Action::Sctp, crate::sctp::HEADER_LEN),
            (1, IpFamily::V4) | (58, IpFamily::V6) => {
                let pseudo = p.family == IpFamily::V6;
                let action = match p.icmp {
                    Some(IcmpKind::EchoRequest) => L4Action::Echo { id: sport, pseudo },
                    Some(IcmpKind::EchoReply) => L4Action::Echo { id: dport, pseudo },
                    _ if pseudo => L4Action::Icmp6Pseudo,
                    _ => L4Action::None,
                };
                (action, crate::icmp::HEADER_LEN)
            }
            _ => (L4Action::None, 0),
        }
    };
    if l4 + need > dg.len() {
        return Err(RewriteError::NoL4Header);
    }

    // 2. The address change, once, for the IPv4 header and the pseudo-header.
    //    Both address fields lie in the fixed header (`lay.hdr_min <= l4`).
    let (sa, da) = (lay.src, lay.dst);
    let old_src: [u8; N] = field(dg, sa);
    let old_dst: [u8; N] = field(dg, da);
    let addr_delta = checksum::delta(&old_src, src) + checksum::delta(&old_dst, dst);

    // 3. Transport header and checksum (bounds checked in step 1).
    match action {
        L4Action::None => {}
        L4Action::Tcp => set_ports(dg, l4, l4 + 16, sport, dport, addr_delta, false),
        L4Action::Udp => {
            let zero_is_none = p.family == IpFamily::V4;
            set_ports(dg, l4, l4 + 6, sport, dport, addr_delta, zero_is_none);
        }
        L4Action::Sctp => {
            put16(dg, l4, sport);
            put16(dg, l4 + 2, dport);
            // `need` covered the 12-byte common header.
            if let Some(crc) = checksum::sctp_crc32c(&dg[l4..]) {
                dg[l4 + 8..l4 + 12].copy_from_slice(&crc.to_le_bytes());
            }
        }
        L4Action::Echo { id, pseudo } => {
            let mut d = checksum::delta16(get16(dg, l4 + 4), id);
            if pseudo {
                d += addr_delta;
            }
            let hc = checksum::apply(get16(dg, l4 + 2), d);
            put16(dg, l4 + 4, id);
            put16(dg, l4 + 2, hc);
        }
        L4Action::Icmp6Pseudo => {
            let hc = checksum::apply(get16(dg, l4 + 2), addr_delta);
            put16(dg, l4 + 2, hc);
        }
    }

    // 4. Addresses and the IPv4 header checksum.
    dg[sa..sa + N].copy_from_slice(src);
    dg[da..da + N].copy_from_slice(dst);
    if p.family == IpFamily::V4 {
        let hc = checksum::apply(get16(dg, 10), addr_delta);
        put16(dg, 10, hc);
    }
    Ok(())
}

/// The `N` bytes at `off` (the caller checked the bounds).
#[inline(always)]
fn field<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

/// The big-endian word at `off` (the caller checked the bounds).
#[inline(always)]
fn get16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// Stores a big-endian word at `off` (the caller checked the bounds).
#[inline(always)]
fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes ports at `l4` and updates the checksum at `csum` for them and for
/// `addr_delta` (the pseudo-header's address change), like [`rewrite_ports`]
/// (same rules for zero checksums), on a header whose bounds were checked.
#[inline(always)]
fn set_ports(
    dg: &mut [u8],
    l4: usize,
    csum: usize,
    sport: u16,
    dport: u16,
    addr_delta: u32,
    zero_is_none: bool,
) {
    let old: [u8; 4] = field(dg, l4);
    let mut new = [0u8; 4];
    new[..2].copy_from_slice(&sport.to_be_bytes());
    new[2..].copy_from_slice(&dport.to_be_bytes());
    dg[l4..l4 + 4].copy_from_slice(&new);
    let hc = get16(dg, csum);
    if zero_is_none && hc == 0 {
        return;
    }
    let hc = checksum::apply(hc, checksum::delta(&old, &new) + addr_delta);
    put16(dg, csum, if hc == 0 { 0xffff } else { hc });
}

/// Writes ports at `l4` and updates the checksum at `csum_off` for the port
/// change and, if given, the pseudo-header address change. With
/// `zero_is_none` (UDP over IPv4) a zero checksum stays zero; for UDP a
/// computed zero is written as 0xffff (harmless for TCP, where both mean the
/// same).
fn rewrite_ports(
    frame: &mut [u8],
    l4: usize,
    csum_off: usize,
    sport: u16,
    dport: u16,
    change: Option<&AddrChange>,
    zero_is_none: bool,
) -> Option<()> {
    let old_sport = read16(frame, l4)?;
    let old_dport = read16(frame, l4 + 2)?;
    let hc = read16(frame, csum_off)?;
    write16(frame, l4, sport)?;
    write16(frame, l4 + 2, dport)?;
    if zero_is_none && hc == 0 {
        return Some(());
    }
    let mut hc = checksum::update16(hc, old_sport, sport);
    hc = checksum::update16(hc, old_dport, dport);
    if let Some(c) = change {
        hc = c.update(hc);
    }
    write16(frame, csum_off, if hc == 0 { 0xffff } else { hc })
}

/// Rewrites an ICMP error parsed by [`crate::parse()`] (`p.icmp ==
/// Some(IcmpKind::Error)`), in place:
///
/// 1. The quoted datagram's source/destination addresses become
///    `inner.src`/`inner.dst` and its ports `inner.sport`/`inner.dport` (for
///    a quoted echo, the identifier follows [`Tuple`]'s rule: `sport` for a
///    request, `dport` for a reply). The quoted IPv4 header checksum is
///    updated; the quoted L4 checksum is updated when the quote holds it
///    (UDP: 8 bytes and nonzero; TCP: 18 bytes; ICMP(v6): 4 bytes). A quoted
///    SCTP CRC32c is left alone (it covers chunks the quote lacks).
/// 2. The outer destination becomes `outer_dst` and, if given, the source
///    `outer_src`; the outer IPv4 header checksum is updated.
/// 3. The outer ICMP checksum is recomputed over the whole message up to
///    `l3_end` (ICMPv6 with the pseudo-header).
///
/// Errors (frame untouched): [`RewriteError::NotIcmpError`] if `p` is not an
/// unfragmented ICMP error with a quote; [`RewriteError::FamilyMismatch`] if
/// any address is not of `p.family`; [`RewriteError::NoL4Header`] if `p` does
/// not match the frame.
pub fn rewrite_icmp_error(
    frame: &mut [u8],
    p: &Parsed,
    outer_src: Option<IpAddr>,
    outer_dst: IpAddr,
    inner: &Tuple,
) -> Result<(), RewriteError> {
    let q = match p.inner {
        Some(q) if p.icmp == Some(IcmpKind::Error) && p.frag == Frag::None => q,
        _ => return Err(RewriteError::NotIcmpError),
    };
    let fam = p.family;
    let all_same = [
        Some(outer_dst),
        outer_src,
        Some(inner.src),
        Some(inner.dst),
        Some(q.src),
    ]
    .iter()
    .flatten()
    .all(|a| family_of(a) == fam);
    if !all_same {
        return Err(RewriteError::FamilyMismatch);
    }
    let lay = layout(fam);
    let (l3, l4, end) = (
        usize::from(p.l3_off),
        usize::from(p.l4_off),
        usize::from(p.l3_end),
    );
    let (ql3, ql4) = (usize::from(q.l3_off), usize::from(q.l4_off));
    let ok = l3 + lay.hdr_min <= l4
        && l4 + crate::icmp::HEADER_LEN <= ql3
        && ql3 + lay.hdr_min <= ql4
        && ql4 <= end
        && end <= frame.len()
        && frame[l3] >> 4 == lay.version
        && frame[ql3] >> 4 == lay.version;
    if !ok {
        return Err(RewriteError::NoL4Header);
    }
    let qlen = usize::from(q.l4_len).min(end - ql4);
    let outer_src = match outer_src {
        Some(a) => a,
        None => crate::parse::addr_at(frame, l3 + lay.src, fam).ok_or(RewriteError::NoL4Header)?,
    };
    let outer = AddrChange::read(frame, l3, &lay, &outer_src, &outer_dst)
        .ok_or(RewriteError::NoL4Header)?;
    let quoted = AddrChange::read(frame, ql3, &lay, &inner.src, &inner.dst)
        .ok_or(RewriteError::NoL4Header)?;

    let done = (|| {
        // 1. The quoted transport header, then the quoted IP header.
        match q.proto {
            6 | 17 | 132 if qlen >= 4 => {
                if q.proto == 6 && qlen >= 18 {
                    rewrite_ports(
                        frame,
                        ql4,
                        ql4 + 16,
                        inner.sport,
                        inner.dport,
                        Some(&quoted),
                        false,
                    )?;
                } else if q.proto == 17 && qlen >= 8 {
                    // A zero quoted UDP checksum means "none" (IPv4) or is
                    // already invalid (IPv6): leave it.
                    rewrite_ports(
                        frame,
                        ql4,
                        ql4 + 6,
                        inner.sport,
                        inner.dport,
                        Some(&quoted),
                        true,
                    )?;
                } else {
                    write16(frame, ql4, inner.sport)?;
                    write16(frame, ql4 + 2, inner.dport)?;
                }
            }
            1 | 58 if qlen >= 4 && (q.proto == 58) == (fam == IpFamily::V6) => {
                let mut hc = read16(frame, ql4 + 2)?;
                let kind = crate::icmp::kind(fam, frame[ql4]);
                if qlen >= 6 && matches!(kind, IcmpKind::EchoRequest | IcmpKind::EchoReply) {
                    let id = if kind == IcmpKind::EchoRequest {
                        inner.sport
                    } else {
                        inner.dport
                    };
                    hc = checksum::update16(hc, read16(frame, ql4 + 4)?, id);
                    write16(frame, ql4 + 4, id)?;
                }
                if fam == IpFamily::V6 {
                    hc = quoted.update(hc);
                }
                write16(frame, ql4 + 2, hc)?;
            }
            _ => {}
        }
        quoted.write(frame, ql3, &lay, fam)?;
        // 2. The outer IP header.
        outer.write(frame, l3, &lay, fam)?;
        // 3. The outer ICMP checksum, from scratch.
        write16(frame, l4 + 2, 0)?;
        let msg = frame.get(l4..end)?;
        let mut s = checksum::sum(msg);
        if fam == IpFamily::V6 {
            let (IpAddr::V6(src), IpAddr::V6(dst)) = (outer_src, outer_dst) else {
                return None;
            };
            s = checksum::add(
                s,
                checksum::pseudo_header_v6(&src.octets(), &dst.octets(), 58, msg.len() as u32),
            );
        }
        write16(frame, l4 + 2, checksum::finish(s))
    })();
    done.ok_or(RewriteError::NoL4Header)
}
