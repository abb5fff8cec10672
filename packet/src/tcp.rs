//! TCP headers (RFC 9293) and the RST builder.
//!
//! [`Packet::new_checked`] validates: at least 20 bytes, data offset `>= 5`
//! and the header (options included) inside the buffer. After it succeeds no
//! accessor panics. [`Packet::new_unchecked`] is for buffers the caller
//! built; accessors then panic on a short buffer.

use crate::checksum;
use crate::emit;
use crate::parse::{Frag, Parsed};
use crate::ParseError;
use core::ops::Range;

/// Header field byte ranges.
pub mod field {
    use super::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset in the high 4 bits.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// Bits of the flags byte.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

fn be16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

fn be32(b: &[u8], r: Range<usize>) -> u32 {
    u32::from_be_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
}

/// A read/write view of a TCP segment at the start of a buffer.
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
    /// [`ParseError::Truncated`] (< 20 bytes), [`ParseError::BadTcpHeader`]
    /// (data offset < 5 or header past the buffer).
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let p = Packet { buffer };
        let hl = p.header_len();
        if hl < HEADER_LEN || hl > p.buffer.as_ref().len() {
            return Err(ParseError::BadTcpHeader);
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

    pub fn seq_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ_NUM)
    }

    pub fn ack_number(&self) -> u32 {
        be32(self.buffer.as_ref(), field::ACK_NUM)
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flags byte (see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn window_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::WIN_SIZE)
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn urgent_at(&self) -> u16 {
        be16(self.buffer.as_ref(), field::URGENT)
    }

    /// Everything after the header (the buffer is the segment: the caller
    /// slices off Ethernet padding).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_seq_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::SEQ_NUM].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_ack_number(&mut self, v: u32) {
        self.buffer.as_mut()[field::ACK_NUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the header length in bytes (a multiple of 4, 20..=60); the
    /// reserved bits are cleared.
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    pub fn set_window_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::WIN_SIZE].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_urgent_at(&mut self, v: u16) {
        self.buffer.as_mut()[field::URGENT].copy_from_slice(&v.to_be_bytes());
    }

    /// Computes and stores the checksum over the whole buffer (which must be
    /// exactly the segment) given the pseudo-header sum
    /// ([`checksum::pseudo_header_v4`] / [`checksum::pseudo_header_v6`]).
    pub fn fill_checksum(&mut self, pseudo_header: u32) {
        self.set_checksum(0);
        let s = checksum::add(pseudo_header, checksum::sum(self.buffer.as_ref()));
        self.set_checksum(checksum::finish(s));
    }
}

/// Builds into `out` the TCP RST that answers the segment `orig` (parsed as
/// `p`), per RFC 9293 §3.10.7.1: if the segment carried ACK, the RST has
/// `seq = SEG.ACK` and no ACK flag; otherwise `seq = 0`, ACK set and
/// `ack = SEG.SEQ + SEG.LEN` (data length, +1 for SYN, +1 for FIN).
///
/// The frame has swapped MAC addresses, the original's VLAN tags copied
/// verbatim (the reply leaves on the VLAN the segment came from), swapped
/// addresses and ports, TTL / hop limit 64, IPv4 DF set and ID 0, a 20-byte
/// TCP header with window 0, and correct checksums.
///
/// Returns the frame length, or `None` if `p` is not a TCP segment with its
/// header in `orig` (including later fragments), if the segment is itself a
/// RST (never answer a RST), or if `out` is too small. Never panics, never
/// allocates.
pub fn build_rst(orig: &[u8], p: &Parsed, out: &mut [u8]) -> Option<usize> {
    if p.proto != 6 || p.frag == Frag::Later {
        return None;
    }
    let seg = orig.get(usize::from(p.l4_off)..usize::from(p.l3_end))?;
    let tcp = Packet::new_checked(seg).ok()?;
    let fl = tcp.flags();
    if fl & flags::RST != 0 {
        return None;
    }
    let (seq, ack, rst_flags) = if fl & flags::ACK != 0 {
        (tcp.ack_number(), 0, flags::RST)
    } else {
        let mut len = seg.len().checked_sub(tcp.header_len())? as u32;
        if fl & flags::SYN != 0 {
            len += 1;
        }
        if fl & flags::FIN != 0 {
            len += 1;
        }
        (
            0,
            tcp.seq_number().wrapping_add(len),
            flags::RST | flags::ACK,
        )
    };

    let l3 = emit::l2_reply(orig, p, out)?;
    let l4 = emit::ip_header(out, l3, p.dst, p.src, 6, HEADER_LEN, true)?;
    let end = l4.checked_add(HEADER_LEN)?;
    let seg_out = out.get_mut(l4..end)?;
    seg_out.fill(0);
    let mut r = Packet::new_unchecked(seg_out);
    r.set_src_port(tcp.dst_port());
    r.set_dst_port(tcp.src_port());
    r.set_seq_number(seq);
    r.set_ack_number(ack);
    r.set_header_len(HEADER_LEN);
    r.set_flags(rst_flags);
    r.fill_checksum(emit::pseudo_header(p.dst, p.src, 6, HEADER_LEN)?);
    Some(end)
}

/// The tuple of a RST sent on behalf of a segment's sender
/// ([`build_rst_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RstTo {
    pub src: core::net::IpAddr,
    pub dst: core::net::IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// Builds into `out` a RST (no ACK) from `to.src:to.sport` to
/// `to.dst:to.dport` with the sequence number of the segment `orig`, on its Ethernet
/// header (addresses swapped, VLAN tags kept; a routed frame gets its
/// addresses from the next hop anyway). Unlike [`build_rst`], which answers
/// a segment, this speaks for the segment's sender to a third party: the
/// engine uses it to tell a client at once that its connection is over when
/// the removed backend's next segment arrives (that segment's `seq` is
/// what the client expects next).
///
/// Returns the frame length, or `None` if `p` is not a TCP segment with its
/// header in `orig`, if the addresses are not of one family, or if `out` is
/// too small. Never panics, never allocates.
pub fn build_rst_to(orig: &[u8], p: &Parsed, to: RstTo, out: &mut [u8]) -> Option<usize> {
    if p.proto != 6 || p.frag == Frag::Later || to.src.is_ipv4() != to.dst.is_ipv4() {
        return None;
    }
    let seg = orig.get(usize::from(p.l4_off)..usize::from(p.l3_end))?;
    let seq = Packet::new_checked(seg).ok()?.seq_number();
    let l3 = emit::l2_reply(orig, p, out)?;
    let l4 = emit::ip_header(out, l3, to.src, to.dst, 6, HEADER_LEN, true)?;
    let end = l4.checked_add(HEADER_LEN)?;
    let seg_out = out.get_mut(l4..end)?;
    seg_out.fill(0);
    let mut r = Packet::new_unchecked(seg_out);
    r.set_src_port(to.sport);
    r.set_dst_port(to.dport);
    r.set_seq_number(seq);
    r.set_header_len(HEADER_LEN);
    r.set_flags(flags::RST);
    r.fill_checksum(emit::pseudo_header(to.src, to.dst, 6, HEADER_LEN)?);
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1234 -> 80, seq 1, ack 2, SYN|ACK, window 8192, checksum 0xabcd,
    /// one NOP-padded MSS option (data offset 6), payload "hi".
    static SEGMENT: [u8; 26] = [
        0x04, 0xd2, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x60, 0x12, 0x20,
        0x00, 0xab, 0xcd, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, b'h', b'i',
    ];

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!(p.src_port(), 1234);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 1);
        assert_eq!(p.ack_number(), 2);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), flags::SYN | flags::ACK);
        assert_eq!(p.window_len(), 8192);
        assert_eq!(p.checksum(), 0xabcd);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.payload(), b"hi");
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 26];
        buf[20..].copy_from_slice(&[0x02, 0x04, 0x05, 0xb4, b'h', b'i']);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_src_port(1234);
        p.set_dst_port(80);
        p.set_seq_number(1);
        p.set_ack_number(2);
        p.set_header_len(24);
        p.set_flags(flags::SYN | flags::ACK);
        p.set_window_len(8192);
        p.set_checksum(0xabcd);
        p.set_urgent_at(0);
        assert_eq!(buf, SEGMENT);
    }

    #[test]
    fn checked_errors() {
        assert_eq!(
            Packet::new_checked(&SEGMENT[..19]).unwrap_err(),
            ParseError::Truncated
        );
        let mut b = SEGMENT;
        b[12] = 0x40;
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            ParseError::BadTcpHeader
        );
        b[12] = 0x70; // 28 bytes > 26
        assert_eq!(
            Packet::new_checked(&b[..]).unwrap_err(),
            ParseError::BadTcpHeader
        );
    }

    #[test]
    fn fill_checksum_verifies() {
        let mut b = SEGMENT;
        let ph = checksum::pseudo_header_v4(&[10, 0, 0, 1], &[10, 0, 0, 2], 6, 26);
        Packet::new_unchecked(&mut b[..]).fill_checksum(ph);
        assert!(checksum::verify(checksum::add(ph, checksum::sum(&b))));
    }
}
