//! One validating pass over a frame: Ethernet (+ up to two 802.1Q/802.1ad
//! tags), IPv4 (options, fragments) or IPv6 (extension headers walked,
//! fragments), then TCP, UDP, SCTP, ICMPv4 or ICMPv6.
//!
//! [`parse`] is the checked constructor of the whole stack: it returns the
//! offsets and header fields the engine needs, and guarantees that the byte
//! ranges they name lie inside the frame.
//!
//! # Promises
//! * `l3_off <= l4_off <= l3_end <= frame.len()`, and every offset fits `u16`
//!   (a datagram ending past 65535 is [`ParseError::BadLength`]).
//! * IPv4: version 4, `IHL >= 5`, `IHL*4 <= total length <= available`, header
//!   checksum verified. IPv6: version 6, `40 + payload length <= available`,
//!   extension headers walked (at most [`crate::ipv6::MAX_EXT_HEADERS`]).
//!   Bytes past `l3_end` are Ethernet padding.
//! * Unless `frag` is [`Frag::Later`], the transport header is present:
//!   TCP's full header (data offset `>= 5`, inside the datagram), UDP's 8 bytes
//!   (length field `>= 8` and, unless a first fragment, `<=` the datagram),
//!   SCTP's 12, ICMP's 8. For a later fragment `l4_off` is the payload offset,
//!   ports and flags are 0 and `icmp` is `None`.
//! * ICMP errors: `inner` is the quoted datagram, of the outer family, with
//!   at least its IP header and 4 L4 bytes present (unless the quote is itself
//!   a later fragment: then ports are 0 and `l4_len` is 0); its header
//!   checksum and length field are *not* judged (quotes are truncated).
//!   ICMPv4 is only recognised over IPv4 and ICMPv6 only over IPv6.
//! * L4 checksums are not verified (the dataplane forwards; the endpoint
//!   judges), and unknown protocols parse with ports 0.
//! * Never panics, never allocates, on any input.

use crate::ethernet::{self, ethertype};
use crate::icmp;
use crate::ipv6;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Address family of the network layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

/// Transport protocol, as far as the dataplane cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
    Sctp = 132,
    /// ICMP for IPv4.
    Icmp = 1,
    /// ICMPv6.
    Icmpv6 = 58,
}

/// Fragmentation status of the IP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not a fragment.
    None,
    /// First fragment (offset 0, more-fragments set): the L4 header is present.
    First,
    /// A later fragment: no L4 header in this frame.
    Later,
}

/// What an ICMP/ICMPv6 message is, for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Echo request; `Parsed::sport` and `Parsed::dport` both hold the
    /// identifier.
    EchoRequest,
    /// Echo reply; `Parsed::sport` and `Parsed::dport` both hold the
    /// identifier.
    EchoReply,
    /// An error (v4: destination unreachable 3, time exceeded 11, parameter
    /// problem 12; v6: 1, 2 (packet too big), 3, 4) quoting an original
    /// datagram, summarised in `Parsed::inner`.
    Error,
    /// Any other type: not translated.
    Other,
}

/// The datagram quoted inside an ICMP error, parsed as far as it is present.
/// Offsets are absolute offsets in the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerPacket {
    pub l3_off: u16,
    pub l4_off: u16,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Source port, or the echo identifier for a quoted ICMP echo.
    pub sport: u16,
    /// Destination port, or the echo identifier for a quoted ICMP echo.
    pub dport: u16,
    /// How many bytes of the quoted L4 header are present (ports need 4;
    /// the UDP checksum needs 8, the TCP checksum needs 18).
    pub l4_len: u16,
}

/// Summary of a validated frame. Small and `Copy`; no references into the
/// frame, so the frame can be mutated afterwards with the rewrite helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Number of VLAN tags walked (0..=2).
    pub vlans: u8,
    /// Offset of the IP header.
    pub l3_off: u16,
    /// Offset of the transport header (for `Frag::Later`, of the payload).
    pub l4_off: u16,
    /// End of the IP datagram (from the IP length field): bytes past it are
    /// Ethernet padding and are not part of any checksum.
    pub l3_end: u16,
    pub family: IpFamily,
    /// Final next-header / protocol number.
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Source port; ICMP echo identifier; 0 when not applicable.
    pub sport: u16,
    /// Destination port; ICMP echo identifier; 0 when not applicable.
    pub dport: u16,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10); 0 otherwise.
    pub tcp_flags: u8,
    pub frag: Frag,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// Set for ICMP and ICMPv6.
    pub icmp: Option<IcmpKind>,
    /// For `IcmpKind::Error`: the quoted datagram.
    pub inner: Option<InnerPacket>,
}

impl Parsed {
    /// The transport protocol, if it is one the dataplane knows.
    pub fn l4(&self) -> Option<Proto> {
        match self.proto {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            1 => Some(Proto::Icmp),
            58 => Some(Proto::Icmpv6),
            _ => None,
        }
    }
}

/// Why a frame could not be parsed. Each variant maps to one drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): not the dataplane's business.
    #[error("not an IPv4/IPv6 frame")]
    NotIp,
    /// The frame ends inside a header.
    #[error("frame ends inside a header")]
    Truncated,
    /// More VLAN tags than supported.
    #[error("more than two VLAN tags")]
    TooManyVlans,
    /// IP version field disagrees with the EtherType (or, in an ICMP error's
    /// quote, with the outer family).
    #[error("IP version field disagrees with the EtherType")]
    BadIpVersion,
    /// IPv4 IHL < 5 or past the end.
    #[error("IPv4 header length invalid")]
    BadIhl,
    /// IP total/payload length inconsistent with the frame.
    #[error("IP length field inconsistent with the frame")]
    BadLength,
    /// IPv4 header checksum wrong.
    #[error("IPv4 header checksum wrong")]
    BadIpChecksum,
    /// IPv6 extension-header chain too long or running past the end.
    #[error("IPv6 extension-header chain too long or past the end")]
    BadExtHeader,
    /// TCP data offset < 5 or past the end of the datagram.
    #[error("TCP data offset invalid")]
    BadTcpHeader,
    /// UDP length field inconsistent with the datagram.
    #[error("UDP length inconsistent with the datagram")]
    BadUdpLength,
}

/// Most VLAN tags [`parse`] walks; one more is [`ParseError::TooManyVlans`].
pub const MAX_VLANS: u8 = 2;

/// Parses and validates a frame. See the module docs for what a successful
/// parse promises.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    // The common frame takes a straight path of fixed-size reads; anything
    // else (and any frame that fails a check) the general one.
    match parse_v4_fast(frame) {
        Some(p) => Ok(p),
        None => parse_general(frame),
    }
}

/// The frame almost every packet is: untagged Ethernet, IPv4 without
/// options, not a fragment, TCP or UDP. Makes every check [`parse_general`]
/// makes on such a frame (lengths, version, IHL, the header checksum, the
/// TCP data offset or the UDP length) and returns exactly its `Parsed`;
/// `None` for any other frame or any failed check, which the general path
/// then judges (`fast_path_equals_general` checks the equivalence).
#[inline(always)]
fn parse_v4_fast(frame: &[u8]) -> Option<Parsed> {
    const L3: usize = ethernet::HEADER_LEN;
    const L4: usize = L3 + crate::ipv4::HEADER_LEN;
    let head: &[u8; L4] = frame.get(..L4)?.try_into().ok()?;
    // EtherType IPv4, version 4, IHL 5.
    if head[12] != 0x08 || head[13] != 0x00 || head[L3] != 0x45 {
        return None;
    }
    let ip: &[u8; 20] = head[L3..].try_into().ok()?;
    let tl = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let end = L3 + tl;
    // Total length inside the frame and not shorter than the header; the
    // datagram's end fits a u16 offset; no MF flag, no fragment offset.
    if tl < crate::ipv4::HEADER_LEN
        || end > frame.len()
        || end > usize::from(u16::MAX)
        || ip[6] & 0x3f != 0
        || ip[7] != 0
    {
        return None;
    }
    if !crate::checksum::verify(crate::checksum::sum(ip)) {
        return None;
    }
    let seg = frame.get(L4..end)?;
    let proto = ip[9];
    let (sport, dport, tcp_flags) = match proto {
        6 => {
            let h: &[u8; crate::tcp::HEADER_LEN] =
                seg.get(..crate::tcp::HEADER_LEN)?.try_into().ok()?;
            let doff = usize::from(h[12] >> 4) * 4;
            if doff < crate::tcp::HEADER_LEN || doff > seg.len() {
                return None;
            }
            (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                h[13],
            )
        }
        17 => {
            let h: &[u8; crate::udp::HEADER_LEN] =
                seg.get(..crate::udp::HEADER_LEN)?.try_into().ok()?;
            let ulen = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if ulen < crate::udp::HEADER_LEN || ulen > seg.len() {
                return None;
            }
            (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                0,
            )
        }
        _ => return None,
    };
    Some(Parsed {
        vlans: 0,
        l3_off: L3 as u16,
        l4_off: L4 as u16,
        l3_end: end as u16,
        family: IpFamily::V4,
        proto,
        src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
        dst: IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
        sport,
        dport,
        tcp_flags,
        frag: Frag::None,
        ttl: ip[8],
        icmp: None,
        inner: None,
    })
}

/// [`parse`] of any frame: every layer walked with its checked view.
pub(crate) fn parse_general(frame: &[u8]) -> Result<Parsed, ParseError> {
    // 1. L2: Ethernet II and up to two VLAN tags.
    let (l3_off, etype, vlans) = parse_l2(frame)?;
    // 2. L3: the IP header (and IPv6 extension headers).
    let ip = match etype {
        ethertype::IPV4 => ipv4_l3(frame, l3_off, false)?,
        ethertype::IPV6 => ipv6_l3(frame, l3_off, false)?,
        _ => return Err(ParseError::NotIp),
    };
    // Offsets are stored as u16: a jumbo IPv4 datagram behind tags could end
    // past 65535.
    let l3_end = u16::try_from(ip.end).map_err(|_| ParseError::BadLength)?;
    let mut p = Parsed {
        vlans,
        l3_off: l3_off as u16,
        l4_off: ip.l4_off as u16,
        l3_end,
        family: ip.family,
        proto: ip.proto,
        src: ip.src,
        dst: ip.dst,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        frag: ip.frag,
        ttl: ip.ttl,
        icmp: None,
        inner: None,
    };
    // 3. L4: nothing to read in a later fragment.
    if ip.frag != Frag::Later {
        parse_l4(frame, &ip, &mut p)?;
    }
    Ok(p)
}

/// What the IP layer yields. Offsets are absolute.
struct L3 {
    family: IpFamily,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4_off: usize,
    end: usize,
    frag: Frag,
    ttl: u8,
}

fn parse_l2(frame: &[u8]) -> Result<(usize, u16, u8), ParseError> {
    let eth = ethernet::Frame::new_checked(frame)?;
    let mut etype = eth.ethertype();
    let mut off = ethernet::HEADER_LEN;
    let mut vlans = 0u8;
    while etype == ethertype::VLAN || etype == ethertype::QINQ {
        if vlans == MAX_VLANS {
            return Err(ParseError::TooManyVlans);
        }
        let tag = ethernet::VlanTag::new_checked(frame.get(off..).unwrap_or(&[]))?;
        etype = tag.ethertype();
        off += ethernet::VLAN_TAG_LEN;
        vlans += 1;
    }
    Ok((off, etype, vlans))
}

/// The IPv4 header at `frame[l3..]`. A `quoted` header (inside an ICMP
/// error) is truncated by nature: its total length only bounds the data, and
/// its checksum is not judged.
fn ipv4_l3(frame: &[u8], l3: usize, quoted: bool) -> Result<L3, ParseError> {
    use crate::ipv4::{Packet, HEADER_LEN};
    let buf = frame.get(l3..).ok_or(ParseError::Truncated)?;
    let (pkt, dgram_len) = if quoted {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let pkt = Packet::new_unchecked(buf);
        if pkt.version() != 4 {
            return Err(ParseError::BadIpVersion);
        }
        let hl = pkt.header_len();
        if hl < HEADER_LEN {
            return Err(ParseError::BadIhl);
        }
        if hl > buf.len() {
            return Err(ParseError::Truncated);
        }
        let tl = usize::from(pkt.total_len());
        if tl < hl {
            return Err(ParseError::BadLength);
        }
        (pkt, tl.min(buf.len()))
    } else {
        let pkt = Packet::new_checked(buf)?;
        if !pkt.verify_checksum() {
            return Err(ParseError::BadIpChecksum);
        }
        let tl = usize::from(pkt.total_len());
        (pkt, tl)
    };
    let frag = if pkt.frag_offset() != 0 {
        Frag::Later
    } else if pkt.more_frags() {
        Frag::First
    } else {
        Frag::None
    };
    Ok(L3 {
        family: IpFamily::V4,
        src: IpAddr::V4(pkt.src_addr()),
        dst: IpAddr::V4(pkt.dst_addr()),
        proto: pkt.protocol(),
        l4_off: l3 + pkt.header_len(),
        end: l3 + dgram_len,
        frag,
        ttl: pkt.ttl(),
    })
}

/// The IPv6 header at `frame[l3..]` and its extension headers. A `quoted`
/// header's payload length only bounds the data.
fn ipv6_l3(frame: &[u8], l3: usize, quoted: bool) -> Result<L3, ParseError> {
    use crate::ipv6::{Packet, HEADER_LEN};
    let buf = frame.get(l3..).ok_or(ParseError::Truncated)?;
    let (pkt, dgram_len) = if quoted {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let pkt = Packet::new_unchecked(buf);
        if pkt.version() != 6 {
            return Err(ParseError::BadIpVersion);
        }
        let len = (HEADER_LEN + usize::from(pkt.payload_len())).min(buf.len());
        (pkt, len)
    } else {
        let pkt = Packet::new_checked(buf)?;
        let len = HEADER_LEN + usize::from(pkt.payload_len());
        (pkt, len)
    };
    let end = l3 + dgram_len;
    let walk = ipv6::walk_ext_headers(frame, pkt.next_header(), l3 + HEADER_LEN, end)?;
    Ok(L3 {
        family: IpFamily::V6,
        src: IpAddr::V6(pkt.src_addr()),
        dst: IpAddr::V6(pkt.dst_addr()),
        proto: walk.proto,
        l4_off: walk.l4_off,
        end,
        frag: walk.frag,
        ttl: pkt.hop_limit(),
    })
}

fn is_icmp_of(family: IpFamily, proto: u8) -> bool {
    matches!((family, proto), (IpFamily::V4, 1) | (IpFamily::V6, 58))
}

fn be16_at(b: &[u8], off: usize) -> u16 {
    match b.get(off..off + 2) {
        Some(w) => u16::from_be_bytes([w[0], w[1]]),
        None => 0,
    }
}

/// The transport header of the outer datagram (not a later fragment).
fn parse_l4(frame: &[u8], ip: &L3, p: &mut Parsed) -> Result<(), ParseError> {
    let seg = frame.get(ip.l4_off..ip.end).ok_or(ParseError::Truncated)?;
    match ip.proto {
        6 => {
            let t = crate::tcp::Packet::new_checked(seg)?;
            p.sport = t.src_port();
            p.dport = t.dst_port();
            p.tcp_flags = t.flags();
        }
        17 => {
            // A first fragment's UDP length counts the reassembled datagram,
            // so only the lower bound applies to it.
            let u = if ip.frag == Frag::First {
                if seg.len() < crate::udp::HEADER_LEN {
                    return Err(ParseError::Truncated);
                }
                let u = crate::udp::Packet::new_unchecked(seg);
                if usize::from(u.len()) < crate::udp::HEADER_LEN {
                    return Err(ParseError::BadUdpLength);
                }
                u
            } else {
                crate::udp::Packet::new_checked(seg)?
            };
            p.sport = u.src_port();
            p.dport = u.dst_port();
        }
        132 => {
            let s = crate::sctp::Packet::new_checked(seg)?;
            p.sport = s.src_port();
            p.dport = s.dst_port();
        }
        proto if is_icmp_of(ip.family, proto) => {
            let m = icmp::Packet::new_checked(seg)?;
            let kind = icmp::kind(ip.family, m.msg_type());
            p.icmp = Some(kind);
            match kind {
                IcmpKind::EchoRequest | IcmpKind::EchoReply => {
                    p.sport = m.echo_ident();
                    p.dport = m.echo_ident();
                }
                IcmpKind::Error => {
                    p.inner = Some(parse_inner(
                        frame,
                        ip.l4_off + icmp::HEADER_LEN,
                        ip.end,
                        ip.family,
                    )?);
                }
                IcmpKind::Other => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// The datagram quoted by an ICMP error, from `off` to `end` (the end of the
/// outer datagram). Never recurses into a quoted ICMP error.
fn parse_inner(
    frame: &[u8],
    off: usize,
    end: usize,
    family: IpFamily,
) -> Result<InnerPacket, ParseError> {
    // Bound everything by the outer datagram, not by the frame's padding.
    let bounded = frame.get(..end).ok_or(ParseError::Truncated)?;
    let ip = match family {
        IpFamily::V4 => ipv4_l3(bounded, off, true)?,
        IpFamily::V6 => ipv6_l3(bounded, off, true)?,
    };
    let mut inner = InnerPacket {
        l3_off: off as u16,
        l4_off: ip.l4_off as u16,
        proto: ip.proto,
        src: ip.src,
        dst: ip.dst,
        sport: 0,
        dport: 0,
        l4_len: 0,
    };
    if ip.frag == Frag::Later {
        return Ok(inner);
    }
    let l4 = bounded
        .get(ip.l4_off..ip.end)
        .ok_or(ParseError::Truncated)?;
    if l4.len() < 4 {
        return Err(ParseError::Truncated);
    }
    inner.l4_len = u16::try_from(l4.len()).unwrap_or(u16::MAX);
    match ip.proto {
        6 | 17 | 132 => {
            inner.sport = be16_at(l4, 0);
            inner.dport = be16_at(l4, 2);
        }
        proto if is_icmp_of(family, proto) => {
            let echo = matches!(
                icmp::kind(family, l4[0]),
                IcmpKind::EchoRequest | IcmpKind::EchoReply
            );
            if echo && l4.len() >= 6 {
                inner.sport = be16_at(l4, 4);
                inner.dport = inner.sport;
            }
        }
        _ => {}
    }
    Ok(inner)
}

/// Reads an IPv4 or IPv6 address at `off`.
pub(crate) fn addr_at(b: &[u8], off: usize, family: IpFamily) -> Option<IpAddr> {
    match family {
        IpFamily::V4 => {
            let a: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(a)))
        }
        IpFamily::V6 => {
            let a: [u8; 16] = b.get(off..off.checked_add(16)?)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
    }
}
