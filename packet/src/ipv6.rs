//! IPv6 headers (RFC 8200) and the extension-header walk.
//!
//! [`Packet::new_checked`] validates: at least 40 bytes, version 6, and
//! `40 + payload_len <= buffer length`. After it succeeds no accessor panics
//! and [`Packet::payload`] excludes Ethernet padding. [`Packet::new_unchecked`]
//! is for buffers the caller built; accessors then panic on a short buffer.
//!
//! [`walk_ext_headers`] follows the extension-header chain (Hop-by-Hop,
//! Routing, Destination Options, Fragment, AH) up to [`MAX_EXT_HEADERS`]
//! headers, without panicking on any input.

use crate::parse::Frag;
use crate::ParseError;
use core::ops::Range;
use std::net::Ipv6Addr;

/// Header field byte ranges.
pub mod field {
    use super::Range;
    /// Version (4 bits), traffic class (8), flow label (20).
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;

    /// Fragment extension header: next header.
    pub const FRAG_NXT_HDR: usize = 0;
    /// Fragment extension header: offset (13 bits, 8-byte units), M flag (bit 0).
    pub const FRAG_OFF_M: Range<usize> = 2..4;
    /// Fragment extension header: identification.
    pub const FRAG_IDENT: Range<usize> = 4..8;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Length of the Fragment extension header.
pub const FRAG_HEADER_LEN: usize = 8;
/// The most extension headers [`walk_ext_headers`] follows.
pub const MAX_EXT_HEADERS: usize = 8;

/// Next-header values of the extension headers that are walked or terminate
/// the walk.
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DEST_OPTS: u8 = 60;
}

/// A read/write view of an IPv6 packet at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after the checks in the module docs. Errors:
    /// [`ParseError::Truncated`] (< 40 bytes), [`ParseError::BadIpVersion`],
    /// [`ParseError::BadLength`] (payload past the buffer).
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let p = Packet { buffer };
        if p.version() != 6 {
            return Err(ParseError::BadIpVersion);
        }
        if HEADER_LEN + usize::from(p.payload_len()) > p.buffer.as_ref().len() {
            return Err(ParseError::BadLength);
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn word0(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn version(&self) -> u8 {
        (self.word0() >> 28) as u8
    }

    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    pub fn flow_label(&self) -> u32 {
        self.word0() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[field::LENGTH.start], b[field::LENGTH.start + 1]])
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC_ADDR]);
        Ipv6Addr::from(a)
    }

    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST_ADDR]);
        Ipv6Addr::from(a)
    }

    /// The payload (extension headers included), padding excluded.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 6, traffic class and flow label.
    pub fn set_version_tc_flow(&mut self, traffic_class: u8, flow_label: u32) {
        let w = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow_label & 0x000f_ffff);
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = v;
    }

    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }
}

/// Where the extension-header chain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtWalk {
    /// The first next-header value that is not a walked extension header
    /// (the upper-layer protocol, ESP 50, No Next Header 59, or, for a later
    /// fragment, the Fragment header's next header).
    pub proto: u8,
    /// Absolute offset where that protocol's bytes start.
    pub l4_off: usize,
    pub frag: Frag,
}

/// Walks the extension headers of a packet in `buf` starting at `off` (the
/// end of the fixed header) with first next-header `nh`; every header must
/// end at or before `end` (the end of the datagram). Stops at the first
/// non-extension header, at ESP/No Next Header, or after a Fragment header
/// with a nonzero offset (the rest is not this fragment's business).
/// A fragment header with offset 0 and M set gives [`Frag::First`]; offset 0
/// and M clear (an atomic fragment, RFC 6946) gives [`Frag::None`].
///
/// Errors with [`ParseError::BadExtHeader`] if more than [`MAX_EXT_HEADERS`]
/// headers are chained or a header runs past `end`.
pub fn walk_ext_headers(
    buf: &[u8],
    mut nh: u8,
    mut off: usize,
    end: usize,
) -> Result<ExtWalk, ParseError> {
    use next_header::*;
    let end = end.min(buf.len());
    let mut frag = Frag::None;
    let mut seen = 0;
    loop {
        let len = match nh {
            HOP_BY_HOP | ROUTING | DEST_OPTS | AH | FRAGMENT => {
                if seen == MAX_EXT_HEADERS {
                    return Err(ParseError::BadExtHeader);
                }
                seen += 1;
                let two = off
                    .checked_add(2)
                    .filter(|&e| e <= end)
                    .and_then(|e| buf.get(off..e))
                    .ok_or(ParseError::BadExtHeader)?;
                match nh {
                    AH => (usize::from(two[1]) + 2) * 4,
                    FRAGMENT => FRAG_HEADER_LEN,
                    _ => (usize::from(two[1]) + 1) * 8,
                }
            }
            _ => {
                return Ok(ExtWalk {
                    proto: nh,
                    l4_off: off,
                    frag,
                })
            }
        };
        let next = off
            .checked_add(len)
            .filter(|&e| e <= end)
            .ok_or(ParseError::BadExtHeader)?;
        let hdr = buf.get(off..next).ok_or(ParseError::BadExtHeader)?;
        let this = nh;
        nh = hdr[0];
        off = next;
        if this == FRAGMENT {
            let w = u16::from_be_bytes([
                hdr[field::FRAG_OFF_M.start],
                hdr[field::FRAG_OFF_M.start + 1],
            ]);
            if w >> 3 != 0 {
                return Ok(ExtWalk {
                    proto: nh,
                    l4_off: off,
                    frag: Frag::Later,
                });
            }
            if w & 1 != 0 {
                frag = Frag::First;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2001:db8::1 -> 2001:db8::2, hop limit 64, flow label 0x12345, traffic
    /// class 0, a Hop-by-Hop header (8 bytes, PadN) then a Fragment header
    /// (offset 0, M set) then UDP (8 bytes), then 2 bytes of padding.
    static PACKET: [u8; 66] = [
        0x60, 0x01, 0x23, 0x45, 0x00, 0x18, 0x00, 0x40, // ver/tc/flow, len 24, HbH, hop 64
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, // src
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, // dst
        44, 0, 1, 4, 0, 0, 0, 0, // HbH: next Fragment, len 0, PadN(4)
        17, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef, // Frag: next UDP, offset 0, M
        0x04, 0xd2, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00, // UDP
        0, 0,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 24);
        assert_eq!(p.next_header(), 0);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload().len(), 24);
        let w = walk_ext_headers(&PACKET, p.next_header(), HEADER_LEN, 64).unwrap();
        assert_eq!(
            w,
            ExtWalk {
                proto: 17,
                l4_off: 56,
                frag: Frag::First
            }
        );
    }

    #[test]
    fn construct() {
        let mut buf = PACKET;
        buf[..40].fill(0);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_tc_flow(0, 0x12345);
        p.set_payload_len(24);
        p.set_next_header(0);
        p.set_hop_limit(64);
        p.set_src_addr("2001:db8::1".parse().unwrap());
        p.set_dst_addr("2001:db8::2".parse().unwrap());
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn walk_errors_and_later_fragment() {
        let mut b = PACKET;
        // Later fragment: offset 1.
        b[50..52].copy_from_slice(&[0x00, 0x08]);
        let w = walk_ext_headers(&b, 0, 40, 64).unwrap();
        assert_eq!(
            w,
            ExtWalk {
                proto: 17,
                l4_off: 56,
                frag: Frag::Later
            }
        );
        // HbH length past the end.
        b[41] = 5;
        assert_eq!(
            walk_ext_headers(&b, 0, 40, 64).unwrap_err(),
            ParseError::BadExtHeader
        );
        // A chain of 9 Destination Options headers of 8 bytes each.
        let mut long = [0u8; 40 + 9 * 8 + 8];
        for i in 0..9 {
            long[40 + i * 8] = if i == 8 { 17 } else { 60 };
        }
        assert_eq!(
            walk_ext_headers(&long, 60, 40, long.len()).unwrap_err(),
            ParseError::BadExtHeader
        );
        // 8 of them are fine.
        long[40 + 7 * 8] = 17;
        let w = walk_ext_headers(&long, 60, 40, long.len()).unwrap();
        assert_eq!(w.l4_off, 40 + 64);
        // AH: (len + 2) * 4.
        let mut ah = [0u8; 40 + 16];
        ah[40] = 6;
        ah[41] = 2;
        assert_eq!(walk_ext_headers(&ah, 51, 40, 56).unwrap().l4_off, 56);
        assert_eq!(
            walk_ext_headers(&ah, 51, 40, 55).unwrap_err(),
            ParseError::BadExtHeader
        );
        // ESP terminates.
        assert_eq!(walk_ext_headers(&ah, 50, 40, 56).unwrap().proto, 50);
        assert_eq!(
            Packet::new_checked(&PACKET[..39]).unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            Packet::new_checked(&PACKET[..63]).unwrap_err(),
            ParseError::BadLength
        );
    }
}
