//! ICMPv4 (RFC 792) and ICMPv6 (RFC 4443) messages, the port-unreachable
//! builder and in-place echo replies.
//!
//! Both versions share the layout of the first 8 bytes (type, code,
//! checksum, 4 bytes of type-specific data), so one view serves both; the
//! type numbers differ ([`v4`], [`v6`]). The ICMPv4 checksum covers the
//! message only; the ICMPv6 checksum also covers the IPv6 pseudo-header.
//!
//! [`Packet::new_checked`] validates that the buffer holds the 8-byte header;
//! after it succeeds no accessor panics. The buffer is the whole message
//! (Ethernet padding excluded), since the checksum covers all of it.
//! [`Packet::new_unchecked`] is for buffers the caller built; accessors then
//! panic on a short buffer.

use crate::checksum;
use crate::emit;
use crate::parse::{Frag, IcmpKind, IpFamily, Parsed};
use crate::ParseError;
use core::ops::{Range, RangeFrom};
use std::net::IpAddr;

/// Header field byte ranges.
pub mod field {
    use super::{Range, RangeFrom};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    /// Echo identifier.
    pub const ECHO_IDENT: Range<usize> = 4..6;
    /// Echo sequence number.
    pub const ECHO_SEQNO: Range<usize> = 6..8;
    /// The 4 type-specific bytes (unused / MTU / pointer for errors).
    pub const REST: Range<usize> = 4..8;
    /// Echo data, or the quoted datagram of an error.
    pub const DATA: RangeFrom<usize> = 8..;
}

/// Header length (type, code, checksum and the 4 type-specific bytes).
pub const HEADER_LEN: usize = 8;

/// ICMPv4 types.
pub mod v4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAM_PROBLEM: u8 = 12;
    /// Destination unreachable code: port unreachable.
    pub const CODE_PORT_UNREACHABLE: u8 = 3;
    /// Largest IP datagram an ICMPv4 error may be (RFC 1812 §4.3.2.3).
    pub const MAX_ERROR_LEN: usize = 576;
}

/// ICMPv6 types.
pub mod v6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAM_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    /// Destination unreachable code: port unreachable.
    pub const CODE_PORT_UNREACHABLE: u8 = 4;
    /// Largest IPv6 packet an ICMPv6 error may be (RFC 4443 §2.4 (c)).
    pub const MAX_ERROR_LEN: usize = 1280;
}

/// Classifies an ICMP type of the given family.
pub fn kind(family: IpFamily, msg_type: u8) -> IcmpKind {
    match (family, msg_type) {
        (IpFamily::V4, v4::ECHO_REQUEST) | (IpFamily::V6, v6::ECHO_REQUEST) => {
            IcmpKind::EchoRequest
        }
        (IpFamily::V4, v4::ECHO_REPLY) | (IpFamily::V6, v6::ECHO_REPLY) => IcmpKind::EchoReply,
        (IpFamily::V4, v4::DEST_UNREACHABLE | v4::TIME_EXCEEDED | v4::PARAM_PROBLEM)
        | (IpFamily::V6, v6::DEST_UNREACHABLE..=v6::PARAM_PROBLEM) => IcmpKind::Error,
        _ => IcmpKind::Other,
    }
}

/// A read/write view of an ICMP or ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps a buffer; [`ParseError::Truncated`] if shorter than 8 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, ParseError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        Ok(Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// Echo identifier (meaningful for echo request/reply).
    pub fn echo_ident(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }

    /// Echo sequence number (meaningful for echo request/reply).
    pub fn echo_seq_no(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }

    /// The 4 type-specific bytes as one word.
    pub fn rest_of_header(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    /// Echo data or the quoted datagram.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA]
    }

    /// Whether the checksum verifies, given the pseudo-header sum (0 for
    /// ICMPv4).
    pub fn verify_checksum(&self, pseudo_header: u32) -> bool {
        checksum::verify(checksum::add(
            pseudo_header,
            checksum::sum(self.buffer.as_ref()),
        ))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_echo_ident(&mut self, v: u16) {
        self.buffer.as_mut()[field::ECHO_IDENT].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_echo_seq_no(&mut self, v: u16) {
        self.buffer.as_mut()[field::ECHO_SEQNO].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_rest_of_header(&mut self, v: u32) {
        self.buffer.as_mut()[field::REST].copy_from_slice(&v.to_be_bytes());
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::DATA]
    }

    /// Computes and stores the checksum over the whole buffer given the
    /// pseudo-header sum (0 for ICMPv4).
    pub fn fill_checksum(&mut self, pseudo_header: u32) {
        self.set_checksum(0);
        let s = checksum::add(pseudo_header, checksum::sum(self.buffer.as_ref()));
        self.set_checksum(checksum::finish(s));
    }
}

/// Builds into `out` an ICMP port unreachable (v4 type 3 code 3, v6 type 1
/// code 4) answering the datagram in `orig` (parsed as `p`), from `src`.
///
/// * Ethernet: MAC addresses swapped; **the original's VLAN tags are kept**
///   (copied verbatim), so the error leaves on the VLAN the datagram came
///   from. `tcp::build_rst` does the same and `echo_reply_in_place` keeps
///   them by construction.
/// * IP: source `src`, destination the original source, TTL / hop limit 64,
///   IPv4 ID 0 and DF clear, correct header checksum.
/// * ICMP: the original datagram quoted from its IP header (Ethernet padding
///   excluded), as much as keeps the IP datagram within 576 bytes (IPv4,
///   RFC 1812) or 1280 bytes (IPv6, RFC 4443) and fits in `out`; correct
///   checksum (ICMPv6 with the pseudo-header).
///
/// Returns the frame length, or `None` if `out` cannot hold at least the
/// original's IP header (options / extension headers included) plus 8 bytes
/// of it, if `src` is of the other family, or if `p` is an ICMP error (never
/// answer an error with an error, RFC 1122 §3.2.2) or a later fragment
/// (RFC 1122: only about fragment zero). The caller decides about
/// broadcast/multicast destinations. Never panics, never allocates.
pub fn build_port_unreachable(
    orig: &[u8],
    p: &Parsed,
    src: IpAddr,
    out: &mut [u8],
) -> Option<usize> {
    if p.icmp == Some(IcmpKind::Error) || p.frag == Frag::Later {
        return None;
    }
    let dgram = orig.get(usize::from(p.l3_off)..usize::from(p.l3_end))?;
    let (ip_len, max_total, msg_type, code, proto) = match p.family {
        IpFamily::V4 => (
            20,
            v4::MAX_ERROR_LEN,
            v4::DEST_UNREACHABLE,
            v4::CODE_PORT_UNREACHABLE,
            1,
        ),
        IpFamily::V6 => (
            40,
            v6::MAX_ERROR_LEN,
            v6::DEST_UNREACHABLE,
            v6::CODE_PORT_UNREACHABLE,
            58,
        ),
    };
    let l3 = emit::l2_reply(orig, p, out)?;
    let l4 = l3.checked_add(ip_len)?;
    let room = out.len().checked_sub(l4.checked_add(HEADER_LEN)?)?;
    let quote_len = dgram.len().min(max_total - ip_len - HEADER_LEN).min(room);
    let min_quote = dgram
        .len()
        .min(usize::from(p.l4_off.saturating_sub(p.l3_off)) + 8);
    if quote_len < min_quote {
        return None;
    }
    let msg_len = HEADER_LEN + quote_len;
    emit::ip_header(out, l3, src, p.src, proto, msg_len, false)?;
    let end = l4.checked_add(msg_len)?;
    let msg = out.get_mut(l4..end)?;
    msg[..HEADER_LEN].fill(0);
    msg[HEADER_LEN..].copy_from_slice(dgram.get(..quote_len)?);
    let mut m = Packet::new_unchecked(msg);
    m.set_msg_type(msg_type);
    m.set_msg_code(code);
    let ph = match p.family {
        IpFamily::V4 => 0,
        IpFamily::V6 => emit::pseudo_header(src, p.src, proto, msg_len)?,
    };
    m.fill_checksum(ph);
    Some(end)
}

/// Turns the echo request in `frame` (parsed as `p`) into its echo reply, in
/// place: MAC addresses swapped (VLAN tags stay), IP addresses swapped, TTL /
/// hop limit reset to 64, type 0 (v4) / 129 (v6); the IPv4 header checksum
/// and the ICMP checksum are updated incrementally (swapping addresses
/// changes neither sum, so only the TTL and the type word count).
///
/// Returns `false`, leaving the frame untouched, if `p` is not an unfragmented
/// echo request or does not match the frame. Never panics.
pub fn echo_reply_in_place(frame: &mut [u8], p: &Parsed) -> bool {
    if p.icmp != Some(IcmpKind::EchoRequest) || p.frag != Frag::None {
        return false;
    }
    let (l3, l4, end) = (
        usize::from(p.l3_off),
        usize::from(p.l4_off),
        usize::from(p.l3_end),
    );
    let (ip_len, want_ver, req, rep) = match p.family {
        IpFamily::V4 => (20, 4, v4::ECHO_REQUEST, v4::ECHO_REPLY),
        IpFamily::V6 => (40, 6, v6::ECHO_REQUEST, v6::ECHO_REPLY),
    };
    if l3 < crate::ethernet::HEADER_LEN
        || l3 + ip_len > l4
        || l4 + HEADER_LEN > end
        || end > frame.len()
    {
        return false;
    }
    if frame[l3] >> 4 != want_ver || frame[l4] != req {
        return false;
    }
    crate::ethernet::Frame::new_unchecked(&mut frame[..l3]).swap_addrs();
    let (a, b) = match p.family {
        IpFamily::V4 => (12, 16),
        IpFamily::V6 => (8, 24),
    };
    let alen = b - a;
    for i in 0..alen {
        frame.swap(l3 + a + i, l3 + b + i);
    }
    match p.family {
        IpFamily::V4 => {
            let old = u16::from_be_bytes([frame[l3 + 8], frame[l3 + 9]]);
            frame[l3 + 8] = emit::TTL;
            let new = u16::from_be_bytes([frame[l3 + 8], frame[l3 + 9]]);
            let hc = u16::from_be_bytes([frame[l3 + 10], frame[l3 + 11]]);
            frame[l3 + 10..l3 + 12]
                .copy_from_slice(&checksum::update16(hc, old, new).to_be_bytes());
        }
        IpFamily::V6 => frame[l3 + 7] = emit::TTL,
    }
    let mut m = Packet::new_unchecked(&mut frame[l4..end]);
    let code = u16::from(m.msg_code());
    let hc = checksum::update16(
        m.checksum(),
        u16::from(req) << 8 | code,
        u16::from(rep) << 8 | code,
    );
    m.set_msg_type(rep);
    m.set_checksum(hc);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echo request, id 0x1234, seq 1, data "ping", checksum for ICMPv4.
    static ECHO: [u8; 12] = [
        0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x00, 0x01, b'p', b'i', b'n', b'g',
    ];

    fn echo_with_checksum() -> [u8; 12] {
        let mut b = ECHO;
        let c = checksum::finish(checksum::sum(&b));
        b[2..4].copy_from_slice(&c.to_be_bytes());
        b
    }

    #[test]
    fn deconstruct() {
        let b = echo_with_checksum();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.msg_type(), v4::ECHO_REQUEST);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.echo_ident(), 0x1234);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.rest_of_header(), 0x1234_0001);
        assert_eq!(p.data(), b"ping");
        assert!(p.verify_checksum(0));
        assert_eq!(
            Packet::new_checked(&b[..7]).unwrap_err(),
            ParseError::Truncated
        );
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 12];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_msg_type(8);
        p.set_msg_code(0);
        p.set_echo_ident(0x1234);
        p.set_echo_seq_no(1);
        p.data_mut().copy_from_slice(b"ping");
        p.fill_checksum(0);
        assert_eq!(buf, echo_with_checksum());
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_rest_of_header(0x1234_0001);
        assert_eq!(p.echo_ident(), 0x1234);
    }

    #[test]
    fn kinds() {
        assert_eq!(kind(IpFamily::V4, 8), IcmpKind::EchoRequest);
        assert_eq!(kind(IpFamily::V4, 0), IcmpKind::EchoReply);
        assert_eq!(kind(IpFamily::V4, 11), IcmpKind::Error);
        assert_eq!(kind(IpFamily::V4, 5), IcmpKind::Other);
        assert_eq!(kind(IpFamily::V6, 2), IcmpKind::Error);
        assert_eq!(kind(IpFamily::V6, 129), IcmpKind::EchoReply);
        assert_eq!(kind(IpFamily::V6, 135), IcmpKind::Other);
        assert_eq!(kind(IpFamily::V6, 0), IcmpKind::Other);
    }
}
