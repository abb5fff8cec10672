//! `parse` on literal frames and on one frame per error.

use super::{ip, v4_udp};
use crate::testing::{FrameBuilder, TCP_ACK, TCP_SYN};
use crate::{parse, Frag, IcmpKind, InnerPacket, IpFamily, ParseError, Parsed};

/// 02:..:01 -> 02:..:02, IPv4 10.0.0.1:5000 -> 10.0.0.2:53 UDP "query",
/// then 4 bytes of Ethernet padding.
static V4_UDP_PADDED: [u8; 51] = [
    0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00, // Ethernet
    0x45, 0x00, 0x00, 0x21, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x26, 0xca, // IPv4...
    10, 0, 0, 1, 10, 0, 0, 2, // ...addresses
    0x13, 0x88, 0x00, 0x35, 0x00, 0x0d, 0x00, 0x00, // UDP (checksum not judged)
    b'q', b'u', b'e', b'r', b'y', 0, 0, 0, 0,
];

#[test]
fn literal_v4_udp_with_padding() {
    let p = parse(&V4_UDP_PADDED).unwrap();
    assert_eq!(
        p,
        Parsed {
            vlans: 0,
            l3_off: 14,
            l4_off: 34,
            l3_end: 47,
            family: IpFamily::V4,
            proto: 17,
            src: ip("10.0.0.1"),
            dst: ip("10.0.0.2"),
            sport: 5000,
            dport: 53,
            tcp_flags: 0,
            frag: Frag::None,
            ttl: 64,
            icmp: None,
            inner: None,
        }
    );
}

/// IPv6 2001:db8::1 -> 2001:db8::2 behind two tags (802.1ad 10, 802.1Q 20),
/// a Destination Options header, then TCP 40000 -> 443 SYN.
#[test]
fn literal_v6_qinq_tcp_with_ext_header() {
    let mut f = vec![
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20, 0x86, 0xdd,
    ];
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 28, 60, 33]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&[
        0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    let p = parse(&f).unwrap();
    assert_eq!((p.vlans, p.l3_off, p.l4_off, p.l3_end), (2, 22, 70, 90));
    assert_eq!(
        (p.family, p.proto, p.sport, p.dport, p.tcp_flags),
        (IpFamily::V6, 6, 40000, 443, TCP_SYN)
    );
    assert_eq!(
        (p.src, p.dst, p.ttl, p.frag),
        (ip("2001:db8::1"), ip("2001:db8::2"), 33, Frag::None)
    );
    // A third tag is too many.
    let mut g = f[..12].to_vec();
    g.extend_from_slice(&[0x81, 0x00, 0, 5]);
    g.extend_from_slice(&f[12..]);
    assert_eq!(parse(&g), Err(ParseError::TooManyVlans));
}

#[test]
fn not_ip_and_truncated() {
    let mut arp = V4_UDP_PADDED;
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(parse(&arp), Err(ParseError::NotIp));
    assert_eq!(parse(&V4_UDP_PADDED[..13]), Err(ParseError::Truncated));
    assert_eq!(parse(&V4_UDP_PADDED[..33]), Err(ParseError::Truncated));
    assert_eq!(parse(&[]), Err(ParseError::Truncated));
    let tagged = FrameBuilder::new()
        .vlan(7)
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .udp(1, 2)
        .build();
    assert_eq!(parse(&tagged[..16]), Err(ParseError::Truncated));
    // UDP header cut: the IP length says the datagram is shorter.
    let f = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .raw(17)
        .payload(&[0, 1, 0, 2])
        .build();
    assert_eq!(parse(&f), Err(ParseError::Truncated));
}

/// Recomputes the IPv4 header checksum of a test frame after a mutation.
fn fix_ip_csum(f: &mut [u8], l3: usize) {
    let mut p = crate::ipv4::Packet::new_unchecked(&mut f[l3..]);
    p.fill_checksum();
}

#[test]
fn ipv4_errors() {
    let good = v4_udp();
    let mut f = good.clone();
    f[14] = 0x65;
    assert_eq!(parse(&f), Err(ParseError::BadIpVersion));
    let mut f = good.clone();
    f[14] = 0x44;
    fix_ip_csum(&mut f, 14);
    assert_eq!(parse(&f), Err(ParseError::BadIhl));
    let mut f = good.clone();
    f[16..18].copy_from_slice(&200u16.to_be_bytes());
    fix_ip_csum(&mut f, 14);
    assert_eq!(parse(&f), Err(ParseError::BadLength));
    let mut f = good.clone();
    f[24] ^= 1;
    assert_eq!(parse(&f), Err(ParseError::BadIpChecksum));
    let mut f = good.clone();
    f[38..40].copy_from_slice(&7u16.to_be_bytes());
    assert_eq!(parse(&f), Err(ParseError::BadUdpLength));
    f[38..40].copy_from_slice(&14u16.to_be_bytes());
    assert_eq!(parse(&f), Err(ParseError::BadUdpLength));
    let mut f = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .tcp(1, 2, TCP_SYN, 0, 0)
        .build();
    f[46] = 0x40;
    assert_eq!(parse(&f), Err(ParseError::BadTcpHeader));
    f[46] = 0x60;
    assert_eq!(parse(&f), Err(ParseError::BadTcpHeader));
    // Version 4 behind EtherType IPv6.
    let mut f = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .udp(1, 2)
        .payload(&[0; 32])
        .build();
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(parse(&f), Err(ParseError::BadIpVersion));
}

#[test]
fn ipv4_options_and_fragments() {
    // IHL 6: one 4-byte option (NOP x4).
    let base = v4_udp();
    let mut f = base[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 1]);
    f.extend_from_slice(&base[34..]);
    f[14] = 0x46;
    let tl = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tl.to_be_bytes());
    fix_ip_csum(&mut f, 14);
    let p = parse(&f).unwrap();
    assert_eq!((p.l4_off, p.sport, p.dport), (38, 5000, 53));

    // First fragment: MF set; the UDP length may exceed the fragment.
    let mut f = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .udp(5000, 53)
        .payload(&[0; 64])
        .build();
    f[20] = 0x20; // MF
    f[38..40].copy_from_slice(&1000u16.to_be_bytes());
    fix_ip_csum(&mut f, 14);
    let p = parse(&f).unwrap();
    assert_eq!((p.frag, p.sport, p.dport), (Frag::First, 5000, 53));
    // Later fragment: no L4 parse.
    f[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    fix_ip_csum(&mut f, 14);
    let p = parse(&f).unwrap();
    assert_eq!(
        (p.frag, p.sport, p.dport, p.l4_off, p.icmp),
        (Frag::Later, 0, 0, 34, None)
    );
}

#[test]
fn ipv6_fragments_and_terminators() {
    let mk = |nh: u8, ext: &[u8], l4: &[u8]| {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        let plen = (ext.len() + l4.len()) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&plen.to_be_bytes());
        f.extend_from_slice(&[nh, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(ext);
        f.extend_from_slice(l4);
        f
    };
    let udp = [0x13, 0x88, 0x00, 0x35, 0x03, 0xe8, 0, 0];
    let f = mk(44, &[17, 0, 0x00, 0x01, 0, 0, 0, 1], &udp);
    let p = parse(&f).unwrap();
    assert_eq!(
        (p.frag, p.proto, p.l4_off, p.sport, p.dport),
        (Frag::First, 17, 62, 5000, 53)
    );
    let f = mk(44, &[17, 0, 0x00, 0x08, 0, 0, 0, 1], &udp);
    let p = parse(&f).unwrap();
    assert_eq!(
        (p.frag, p.proto, p.l4_off, p.sport),
        (Frag::Later, 17, 62, 0)
    );
    let p = parse(&mk(50, &[], &[0; 16])).unwrap();
    assert_eq!((p.proto, p.l4_off, p.sport), (50, 54, 0));
    let p = parse(&mk(59, &[], &[])).unwrap();
    assert_eq!(p.proto, 59);
    assert_eq!(
        parse(&mk(0, &[17, 3, 0, 0, 0, 0, 0, 0], &udp)),
        Err(ParseError::BadExtHeader)
    );
    let mut f = mk(17, &[], &udp);
    f[18..20].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(parse(&f), Err(ParseError::BadLength));
}

#[test]
fn icmp_echo_and_other() {
    let f = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .icmp_echo_request(0x4242, 1)
        .build();
    let p = parse(&f).unwrap();
    assert_eq!(
        (p.icmp, p.sport, p.dport, p.proto),
        (Some(IcmpKind::EchoRequest), 0x4242, 0x4242, 1)
    );
    let f = FrameBuilder::new()
        .ip(ip("fd00::1"), ip("fd00::2"))
        .icmp_echo_reply(7, 1)
        .build();
    let p = parse(&f).unwrap();
    assert_eq!(
        (p.icmp, p.sport, p.dport, p.proto),
        (Some(IcmpKind::EchoReply), 7, 7, 58)
    );
    let f = FrameBuilder::new()
        .ip(ip("fd00::1"), ip("fd00::2"))
        .icmp(135, 0, 0)
        .payload(&[0; 16])
        .build();
    assert_eq!(parse(&f).unwrap().icmp, Some(IcmpKind::Other));
    // ICMPv4's number over IPv6 is just an unknown protocol.
    let f = FrameBuilder::new()
        .ip(ip("fd00::1"), ip("fd00::2"))
        .raw(1)
        .payload(&[8, 0, 0, 0])
        .build();
    let p = parse(&f).unwrap();
    assert_eq!((p.icmp, p.sport), (None, 0));
    let f = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .raw(47)
        .payload(b"gre")
        .build();
    let p = parse(&f).unwrap();
    assert_eq!((p.proto, p.l4(), p.sport, p.dport), (47, None, 0, 0));
}

#[test]
fn icmp_errors() {
    let orig = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .tcp(40000, 80, TCP_ACK, 1, 2)
        .build();
    let f = FrameBuilder::new()
        .ip(ip("10.0.0.9"), ip("10.0.0.1"))
        .icmp(11, 0, 0)
        .payload(&orig[14..])
        .build();
    let p = parse(&f).unwrap();
    assert_eq!(p.icmp, Some(IcmpKind::Error));
    assert_eq!((p.sport, p.dport), (0, 0));
    assert_eq!(
        p.inner,
        Some(InnerPacket {
            l3_off: 42,
            l4_off: 62,
            proto: 6,
            src: ip("10.0.0.1"),
            dst: ip("10.0.0.2"),
            sport: 40000,
            dport: 80,
            l4_len: 20,
        })
    );
    // Quote of IP header + 8 bytes (RFC 792 minimum).
    let f = FrameBuilder::new()
        .ip(ip("10.0.0.9"), ip("10.0.0.1"))
        .icmp(3, 3, 0)
        .payload(&orig[14..42])
        .build();
    assert_eq!(parse(&f).unwrap().inner.unwrap().l4_len, 8);
    // Quote too short for the ports.
    let f = FrameBuilder::new()
        .ip(ip("10.0.0.9"), ip("10.0.0.1"))
        .icmp(3, 3, 0)
        .payload(&orig[14..37])
        .build();
    assert_eq!(parse(&f), Err(ParseError::Truncated));
    // Quote of the other family.
    let v6 = FrameBuilder::new()
        .ip(ip("fd00::1"), ip("fd00::2"))
        .udp(1, 2)
        .build();
    let f = FrameBuilder::new()
        .ip(ip("10.0.0.9"), ip("10.0.0.1"))
        .icmp(3, 3, 0)
        .payload(&v6[14..])
        .build();
    assert_eq!(parse(&f), Err(ParseError::BadIpVersion));
    // ICMPv6 packet too big quoting UDP.
    let f = FrameBuilder::new()
        .ip(ip("fd00::9"), ip("fd00::1"))
        .icmp(2, 0, 1280)
        .payload(&v6[14..])
        .build();
    let inner = parse(&f).unwrap().inner.unwrap();
    assert_eq!(
        (
            inner.proto,
            inner.sport,
            inner.dport,
            inner.l4_len,
            inner.l3_off
        ),
        (17, 1, 2, 8, 62)
    );
    // Quoted echo: the identifier.
    let echo = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .icmp_echo_request(99, 1)
        .build();
    let f = FrameBuilder::new()
        .ip(ip("10.0.0.9"), ip("10.0.0.1"))
        .icmp(3, 1, 0)
        .payload(&echo[14..])
        .build();
    let inner = parse(&f).unwrap().inner.unwrap();
    assert_eq!((inner.proto, inner.sport, inner.dport), (1, 99, 99));
    // An error quoting an error: no recursion, ports 0.
    let g = FrameBuilder::new()
        .ip(ip("10.0.0.8"), ip("10.0.0.9"))
        .icmp(3, 3, 0)
        .payload(&f[14..])
        .build();
    let inner = parse(&g).unwrap().inner.unwrap();
    assert_eq!(
        (inner.proto, inner.sport, inner.dport, inner.src),
        (1, 0, 0, ip("10.0.0.9"))
    );
}
