//! UDP headers (RFC 768).
//!
//! [`Packet::new_checked`] validates: at least 8 bytes, and the length field
//! `>= 8` and `<=` the buffer. After it succeeds no accessor panics and
//! [`Packet::payload`] ends where the length field says. (The parser does not
//! apply the upper bound to a first IP fragment, whose length field counts
//! the whole reassembled datagram; it uses [`Packet::new_unchecked`] after
//! checking the 8 header bytes.) [`Packet::new_unchecked`] is for buffers the
//! caller built; accessors then panic on a short buffer.

use crate::checksum;
use crate::ParseError;
use core::ops::Range;

/// Header field byte ranges.
pub mod field {
    use super::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Header length.
pub const HEADER_LEN: usize = 8;

fn be16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

/// A read/write view of a UDP datagram at the start of a buffer.
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
    /// [`ParseError::Truncated`] (< 8 bytes), [`ParseError::BadUdpLength`].
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let p = Packet { buffer };
        let len = usize::from(p.len());
        if len < HEADER_LEN || len > p.buffer.as_ref().len() {
            return Err(ParseError::BadUdpLength);
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field (header + payload).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The checksum field; 0 means "no checksum" over IPv4.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Computes and stores the checksum over the first `len()` bytes given the
    /// pseudo-header sum; a computed 0 is stored as 0xffff (RFC 768).
    pub fn fill_checksum(&mut self, pseudo_header: u32) {
        self.set_checksum(0);
        let len = usize::from(self.len());
        let s = checksum::add(pseudo_header, checksum::sum(&self.buffer.as_ref()[..len]));
        let c = checksum::finish(s);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1234 -> 53, length 12, checksum 0x1234, payload "abcd", 2 padding bytes.
    static DATAGRAM: [u8; 14] = [
        0x04, 0xd2, 0x00, 0x35, 0x00, 0x0c, 0x12, 0x34, b'a', b'b', b'c', b'd', 0, 0,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.src_port(), 1234);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 12);
        assert_eq!(p.checksum(), 0x1234);
        assert_eq!(p.payload(), b"abcd");
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 14];
        buf[8..12].copy_from_slice(b"abcd");
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(1234);
        p.set_dst_port(53);
        p.set_len(12);
        p.set_checksum(0x1234);
        assert_eq!(buf, DATAGRAM);
    }

    #[test]
    fn checked_errors() {
        assert_eq!(
            Packet::new_checked(&DATAGRAM[..7]).unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            Packet::new_checked(&DATAGRAM[..11]).unwrap_err(),
            ParseError::BadUdpLength
        );
        let mut b = DATAGRAM;
        b[5] = 7;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            ParseError::BadUdpLength
        );
    }

    #[test]
    fn fill_checksum_verifies() {
        let mut b = DATAGRAM;
        let ph = checksum::pseudo_header_v4(&[10, 0, 0, 1], &[10, 0, 0, 2], 17, 12);
        Packet::new_unchecked(&mut b[..]).fill_checksum(ph);
        assert!(checksum::verify(checksum::add(ph, checksum::sum(&b[..12]))));
    }
}
