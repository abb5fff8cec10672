//! IPv4 headers (RFC 791).
//!
//! [`Packet::new_checked`] validates, once, everything the accessors rely on:
//! at least 20 bytes, version 4, `IHL >= 5` and the header inside the buffer,
//! `header_len <= total_len <= buffer length`. After it succeeds no accessor
//! panics, and [`Packet::payload`] is the datagram payload without any
//! Ethernet padding. It does **not** verify the header checksum (see
//! [`Packet::verify_checksum`]): ICMP quotes legitimately carry headers whose
//! checksum the dataplane must not judge.
//!
//! [`Packet::new_unchecked`] is for buffers the caller built; accessors panic
//! if the buffer is shorter than the fields they read.

use crate::checksum;
use crate::ParseError;
use core::ops::Range;
use std::net::Ipv4Addr;

/// Header field byte ranges.
pub mod field {
    use super::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// Don't Fragment flag in the flags/offset word.
pub const FLAG_DF: u16 = 0x4000;
/// More Fragments flag in the flags/offset word.
pub const FLAG_MF: u16 = 0x2000;

fn be16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

/// A read/write view of an IPv4 datagram at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer after the checks listed in the module docs. Errors:
    /// [`ParseError::Truncated`] (< 20 bytes), [`ParseError::BadIpVersion`],
    /// [`ParseError::BadIhl`] (IHL < 5 or header past the buffer),
    /// [`ParseError::BadLength`] (total length < header or > buffer).
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let p = Packet { buffer };
        if p.version() != 4 {
            return Err(ParseError::BadIpVersion);
        }
        let hl = p.header_len();
        if hl < HEADER_LEN || hl > p.buffer.as_ref().len() {
            return Err(ParseError::BadIhl);
        }
        let tl = usize::from(p.total_len());
        if tl < hl || tl > p.buffer.as_ref().len() {
            return Err(ParseError::BadLength);
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Total length of the datagram (header + payload).
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in 8-byte units (the raw 13-bit field).
    pub fn frag_offset(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLG_OFF) & 0x1fff
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Whether the header checksum (over `header_len` bytes) verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(checksum::sum(&self.buffer.as_ref()[..self.header_len()]))
    }

    /// The options bytes (between the fixed header and the payload).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: from the end of the header to `total_len` (Ethernet
    /// padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 4 and the header length in bytes (must be a multiple of 4).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }

    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    pub fn set_total_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_ident(&mut self, v: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the whole flags/fragment-offset word.
    pub fn set_flags_and_offset(&mut self, v: u16) {
        self.buffer.as_mut()[field::FLG_OFF].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    pub fn set_protocol(&mut self, v: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Computes and stores the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::finish(checksum::sum(&self.buffer.as_ref()[..hl]));
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 192.168.0.1 -> 192.168.0.199, UDP, DF, TTL 64, total length 28, then
    /// 8 bytes of payload and 2 bytes of Ethernet padding.
    static DATAGRAM: [u8; 30] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xa6, 0x84, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert!(p.verify_checksum());
        assert_eq!(p.options(), &[] as &[u8]);
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 30];
        buf[20..28].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_version_and_header_len(20);
        p.set_dscp_ecn(0);
        p.set_total_len(28);
        p.set_ident(0x1234);
        p.set_flags_and_offset(FLAG_DF);
        p.set_ttl(64);
        p.set_protocol(17);
        p.set_src_addr(Ipv4Addr::new(192, 168, 0, 1));
        p.set_dst_addr(Ipv4Addr::new(192, 168, 0, 199));
        p.fill_checksum();
        assert_eq!(buf, DATAGRAM);
    }

    #[test]
    fn checked_errors() {
        assert_eq!(
            Packet::new_checked(&DATAGRAM[..19]).unwrap_err(),
            ParseError::Truncated
        );
        let mut b = DATAGRAM;
        b[0] = 0x65;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            ParseError::BadIpVersion
        );
        b[0] = 0x44;
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), ParseError::BadIhl);
        b[0] = 0x4f; // 60-byte header in a 30-byte buffer
        assert_eq!(Packet::new_checked(&b[..]).unwrap_err(), ParseError::BadIhl);
        b[0] = 0x45;
        b[3] = 31;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            ParseError::BadLength
        );
        b[3] = 19;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            ParseError::BadLength
        );
    }
}
