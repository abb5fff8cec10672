//! SCTP common header (RFC 9260 §3.1) and its CRC32c checksum.
//!
//! [`Packet::new_checked`] validates that the buffer holds the 12-byte common
//! header; after it succeeds no accessor panics. The buffer is the whole SCTP
//! packet (common header + chunks, Ethernet padding excluded) because the
//! checksum covers all of it. [`Packet::new_unchecked`] is for buffers the
//! caller built; accessors then panic on a short buffer.
//!
//! The checksum is CRC32c computed with the field zeroed and stored in
//! little-endian byte order (RFC 9260 appendix A; Linux stores
//! `cpu_to_le32(crc)`); [`Packet::checksum`] returns it decoded that way, so it
//! compares equal to [`crate::checksum::sctp_crc32c`].

use crate::checksum;
use crate::ParseError;
use core::ops::Range;

/// Header field byte ranges.
pub mod field {
    use super::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const VERIFICATION_TAG: Range<usize> = 4..8;
    pub const CHECKSUM: Range<usize> = 8..12;
}

/// Length of the common header.
pub const HEADER_LEN: usize = 12;

/// A read/write view of an SCTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer; [`ParseError::Truncated`] if shorter than 12 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn dst_port(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    pub fn verification_tag(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    /// The stored CRC32c, decoded little-endian.
    pub fn checksum(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_le_bytes([b[8], b[9], b[10], b[11]])
    }

    /// Whether the stored CRC32c matches the packet.
    pub fn verify_checksum(&self) -> bool {
        checksum::sctp_crc32c(self.buffer.as_ref()) == Some(self.checksum())
    }

    /// The chunks.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_verification_tag(&mut self, v: u32) {
        self.buffer.as_mut()[field::VERIFICATION_TAG].copy_from_slice(&v.to_be_bytes());
    }

    /// Stores a CRC32c value (little-endian on the wire).
    pub fn set_checksum(&mut self, crc: u32) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&crc.to_le_bytes());
    }

    /// Recomputes and stores the CRC32c over the whole buffer.
    pub fn fill_checksum(&mut self) {
        if let Some(crc) = checksum::sctp_crc32c(self.buffer.as_ref()) {
            self.set_checksum(crc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3868 -> 3868, verification tag 0xdeadbeef, checksum field zero, one
    /// 4-byte chunk header (type 1, flags 0, length 4).
    static PACKET: [u8; 16] = [
        0x0f, 0x1c, 0x0f, 0x1c, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 1, 0, 0, 4,
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.src_port(), 3868);
        assert_eq!(p.dst_port(), 3868);
        assert_eq!(p.verification_tag(), 0xdead_beef);
        assert_eq!(p.checksum(), 0);
        assert_eq!(p.payload(), &[1, 0, 0, 4]);
        assert!(!p.verify_checksum());
        assert_eq!(
            Packet::new_checked(&PACKET[..11]).unwrap_err(),
            ParseError::Truncated
        );
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 16];
        buf[12..].copy_from_slice(&[1, 0, 0, 4]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(3868);
        p.set_dst_port(3868);
        p.set_verification_tag(0xdead_beef);
        assert_eq!(buf, PACKET);
    }

    /// An all-zero 32-byte packet has RFC 3720's CRC 0x8a9136aa, stored as
    /// aa 36 91 8a.
    #[test]
    fn checksum_byte_order() {
        let mut buf = [0u8; 32];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.fill_checksum();
        assert_eq!(p.checksum(), 0x8a91_36aa);
        assert!(p.verify_checksum());
        assert_eq!(&buf[8..12], &[0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn fill_checksum_matches_crc32c_crate() {
        let mut buf = PACKET;
        Packet::new_unchecked(&mut buf[..]).fill_checksum();
        let mut zeroed = buf;
        zeroed[8..12].fill(0);
        assert_eq!(
            u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]),
            crc32c::crc32c(&zeroed)
        );
        assert!(Packet::new_checked(&buf[..]).unwrap().verify_checksum());
    }
}
