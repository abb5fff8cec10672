//! Shared pieces of the frame builders (`tcp::build_rst`,
//! `icmp::build_port_unreachable`): every function writes with checked
//! slicing and returns `None` instead of panicking.

use crate::checksum;
use crate::{ipv4, ipv6, Parsed};
use std::net::IpAddr;

/// TTL / hop limit of frames the dataplane originates.
pub(crate) const TTL: u8 = 64;

/// Copies the original frame's L2 header (MACs and any VLAN tags, up to
/// `p.l3_off`) into `out` with the MAC addresses swapped. Returns the L3
/// offset in `out`.
pub(crate) fn l2_reply(orig: &[u8], p: &Parsed, out: &mut [u8]) -> Option<usize> {
    let l3 = usize::from(p.l3_off);
    if l3 < crate::ethernet::HEADER_LEN {
        return None;
    }
    let src = orig.get(..l3)?;
    let dst = out.get_mut(..l3)?;
    dst.copy_from_slice(src);
    dst[0..6].copy_from_slice(&src[6..12]);
    dst[6..12].copy_from_slice(&src[0..6]);
    Some(l3)
}

/// Writes an IP header at `out[l3..]` for a datagram carrying `l4_len` bytes
/// of protocol `proto`: TTL 64, IPv4 ID 0 and DF as given, checksum filled.
/// Returns the L4 offset, or `None` if the families differ, the length does
/// not fit the length field, or `out` is too small.
pub(crate) fn ip_header(
    out: &mut [u8],
    l3: usize,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4_len: usize,
    df: bool,
) -> Option<usize> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let end = l3.checked_add(ipv4::HEADER_LEN)?;
            let total = u16::try_from(ipv4::HEADER_LEN.checked_add(l4_len)?).ok()?;
            let hdr = out.get_mut(l3..end)?;
            hdr.fill(0);
            let mut ip = ipv4::Packet::new_unchecked(hdr);
            ip.set_version_and_header_len(ipv4::HEADER_LEN);
            ip.set_total_len(total);
            ip.set_flags_and_offset(if df { ipv4::FLAG_DF } else { 0 });
            ip.set_ttl(TTL);
            ip.set_protocol(proto);
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
            ip.fill_checksum();
            Some(end)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let end = l3.checked_add(ipv6::HEADER_LEN)?;
            let plen = u16::try_from(l4_len).ok()?;
            let hdr = out.get_mut(l3..end)?;
            let mut ip = ipv6::Packet::new_unchecked(hdr);
            ip.set_version_tc_flow(0, 0);
            ip.set_payload_len(plen);
            ip.set_next_header(proto);
            ip.set_hop_limit(TTL);
            ip.set_src_addr(s);
            ip.set_dst_addr(d);
            Some(end)
        }
        _ => None,
    }
}

/// Pseudo-header sum for `src`/`dst` (same family), `None` on a family mix
/// or an IPv4 length over 65535.
pub(crate) fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Option<u32> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(checksum::pseudo_header_v4(
            &s.octets(),
            &d.octets(),
            proto,
            u16::try_from(len).ok()?,
        )),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(checksum::pseudo_header_v6(
            &s.octets(),
            &d.octets(),
            proto,
            u32::try_from(len).ok()?,
        )),
        _ => None,
    }
}
