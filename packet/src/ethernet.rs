//! Ethernet II frames and 802.1Q / 802.1ad VLAN tags.
//!
//! [`Frame::new_checked`] accepts any buffer of at least [`HEADER_LEN`] bytes;
//! after it succeeds no accessor panics. [`Frame::new_unchecked`] is for
//! buffers the caller sized itself (builders); on a shorter buffer the
//! accessors panic. The same holds for [`VlanTag`] and [`VLAN_TAG_LEN`].

use crate::ParseError;
use core::ops::{Range, RangeFrom};

/// Header field byte ranges.
pub mod field {
    use super::*;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
    /// Within a VLAN tag (which starts where the EtherType would be, i.e.
    /// after the TPID): the tag control information...
    pub const VLAN_TCI: Range<usize> = 0..2;
    /// ...and the EtherType of what follows the tag.
    pub const VLAN_ETHERTYPE: Range<usize> = 2..4;
}

/// Length of the Ethernet II header without tags.
pub const HEADER_LEN: usize = 14;
/// Length of one VLAN tag (TCI + inner EtherType; its TPID takes the place of
/// the outer EtherType).
pub const VLAN_TAG_LEN: usize = 4;

/// EtherType values the dataplane looks at.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad service VLAN tag (QinQ outer tag).
    pub const QINQ: u16 = 0x88a8;
}

/// A MAC address.
pub type Address = [u8; 6];

fn be16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

/// A read/write view of an Ethernet II header at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checks. Accessors panic if it is shorter than
    /// [`HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        Frame { buffer }
    }

    /// Wraps a buffer, failing with [`ParseError::Truncated`] if it is shorter
    /// than [`HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        Ok(Frame { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> Address {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        a
    }

    pub fn src_addr(&self) -> Address {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        a
    }

    /// The outer EtherType (a TPID if the frame is tagged).
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// Everything after the untagged header (tags included, if any).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst_addr(&mut self, a: Address) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&a);
    }

    pub fn set_src_addr(&mut self, a: Address) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&a);
    }

    pub fn set_ethertype(&mut self, t: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&t.to_be_bytes());
    }

    /// Swaps source and destination MAC addresses (for replies).
    pub fn swap_addrs(&mut self) {
        let (d, s) = (self.dst_addr(), self.src_addr());
        self.set_dst_addr(s);
        self.set_src_addr(d);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A read/write view of a VLAN tag's TCI and inner EtherType (the 4 bytes
/// after a 0x8100/0x88a8 TPID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Wraps a buffer without checks; accessors panic if it is shorter than
    /// [`VLAN_TAG_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        VlanTag { buffer }
    }

    /// Wraps a buffer, failing with [`ParseError::Truncated`] if it is shorter
    /// than [`VLAN_TAG_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < VLAN_TAG_LEN {
            return Err(ParseError::Truncated);
        }
        Ok(VlanTag { buffer })
    }

    /// The 12-bit VLAN identifier.
    pub fn vid(&self) -> u16 {
        be16(self.buffer.as_ref(), field::VLAN_TCI) & 0x0fff
    }

    /// The 3-bit priority code point.
    pub fn pcp(&self) -> u8 {
        (self.buffer.as_ref()[field::VLAN_TCI.start] >> 5) & 0x7
    }

    /// EtherType of what follows the tag.
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), field::VLAN_ETHERTYPE)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    /// Sets the whole TCI (PCP, DEI and VID).
    pub fn set_tci(&mut self, tci: u16) {
        self.buffer.as_mut()[field::VLAN_TCI].copy_from_slice(&tci.to_be_bytes());
    }

    pub fn set_ethertype(&mut self, t: u16) {
        self.buffer.as_mut()[field::VLAN_ETHERTYPE].copy_from_slice(&t.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FRAME: [u8; 22] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src
        0x81, 0x00, // TPID
        0x20, 0x64, // PCP 1, VID 100
        0x08, 0x00, // IPv4
        0xaa, 0xbb, 0xcc, 0xdd,
    ];

    #[test]
    fn deconstruct() {
        let f = Frame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.src_addr(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.ethertype(), ethertype::VLAN);
        let tag = VlanTag::new_checked(f.payload()).unwrap();
        assert_eq!(tag.vid(), 100);
        assert_eq!(tag.pcp(), 1);
        assert_eq!(tag.ethertype(), ethertype::IPV4);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 22];
        buf[18..].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        let mut f = Frame::new_unchecked(&mut buf[..]);
        f.set_dst_addr([2, 0, 0, 0, 0, 1]);
        f.set_src_addr([2, 0, 0, 0, 0, 2]);
        f.swap_addrs();
        f.set_ethertype(ethertype::VLAN);
        let mut tag = VlanTag::new_unchecked(&mut f.payload_mut()[..4]);
        tag.set_tci(0x2064);
        tag.set_ethertype(ethertype::IPV4);
        assert_eq!(buf, FRAME);
    }

    #[test]
    fn too_short() {
        assert_eq!(
            Frame::new_checked(&FRAME[..13]).unwrap_err(),
            ParseError::Truncated
        );
        assert_eq!(
            VlanTag::new_checked(&FRAME[..3]).unwrap_err(),
            ParseError::Truncated
        );
    }
}
