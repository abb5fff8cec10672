//! `rewrite_tuple` / `rewrite_icmp_error` checked against etherparse: frames
//! are built by etherparse's `PacketBuilder` (or our `FrameBuilder` where
//! etherparse has none), rewritten, and every checksum is recomputed from
//! scratch by etherparse.

use super::{ip, verify_checksums};
use crate::testing::FrameBuilder;
use crate::{parse, rewrite_icmp_error, rewrite_tuple, IcmpKind, RewriteError, Tuple};
use etherparse::PacketBuilder;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const SMAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DMAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tcp,
    Udp,
    EchoRequest,
    EchoReply,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Tcp),
        Just(Kind::Udp),
        Just(Kind::EchoRequest),
        Just(Kind::EchoReply)
    ]
}

/// Builds a frame with etherparse.
fn ether_frame(
    src: IpAddr,
    dst: IpAddr,
    k: Kind,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(SMAC, DMAC);
    let mut out = Vec::new();
    macro_rules! finish {
        ($ipb:expr, $v6:expr) => {
            match k {
                Kind::Tcp => {
                    let b = $ipb
                        .tcp(sport, dport, 0x1234_5678, 1024)
                        .ack(0x9abc_def0)
                        .psh();
                    b.write(&mut out, payload).unwrap()
                }
                Kind::Udp => $ipb.udp(sport, dport).write(&mut out, payload).unwrap(),
                Kind::EchoRequest if $v6 => $ipb
                    .icmpv6_echo_request(sport, 1)
                    .write(&mut out, payload)
                    .unwrap(),
                Kind::EchoReply if $v6 => $ipb
                    .icmpv6_echo_reply(dport, 1)
                    .write(&mut out, payload)
                    .unwrap(),
                Kind::EchoRequest => $ipb
                    .icmpv4_echo_request(sport, 1)
                    .write(&mut out, payload)
                    .unwrap(),
                Kind::EchoReply => $ipb
                    .icmpv4_echo_reply(dport, 1)
                    .write(&mut out, payload)
                    .unwrap(),
            }
        };
    }
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => finish!(eth.ipv4(s.octets(), d.octets(), 64), false),
        (IpAddr::V6(s), IpAddr::V6(d)) => finish!(eth.ipv6(s.octets(), d.octets(), 64), true),
        _ => unreachable!(),
    }
    out
}

fn addr_pair(v6: bool) -> BoxedStrategy<(IpAddr, IpAddr)> {
    if v6 {
        (any::<u128>(), any::<u128>())
            .prop_map(|(a, b)| (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b))))
            .boxed()
    } else {
        (any::<u32>(), any::<u32>())
            .prop_map(|(a, b)| (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b))))
            .boxed()
    }
}

/// A family, original addresses and new addresses of that family.
fn two_pairs() -> impl Strategy<Value = ((IpAddr, IpAddr), (IpAddr, IpAddr))> {
    any::<bool>().prop_flat_map(|v6| (addr_pair(v6), addr_pair(v6)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// IPv4/IPv6 x TCP/UDP/echo: after rewrite, etherparse agrees with every
    /// checksum, and `parse` reads back the new tuple.
    #[test]
    fn rewrite_keeps_checksums_valid(
        (orig, new) in two_pairs(),
        k in kind(),
        ports in any::<(u16, u16, u16, u16)>(),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut f = ether_frame(orig.0, orig.1, k, ports.0, ports.1, &payload);
        verify_checksums(&f);
        let p = parse(&f).unwrap();
        let t = Tuple { src: new.0, dst: new.1, sport: ports.2, dport: ports.3 };
        rewrite_tuple(&mut f, &p, &t).unwrap();
        verify_checksums(&f);
        let q = parse(&f).unwrap();
        prop_assert_eq!((q.src, q.dst), (new.0, new.1));
        match k {
            Kind::Tcp | Kind::Udp => prop_assert_eq!((q.sport, q.dport), (ports.2, ports.3)),
            Kind::EchoRequest => prop_assert_eq!(q.sport, ports.2),
            Kind::EchoReply => prop_assert_eq!(q.sport, ports.3),
        }
        prop_assert_eq!((q.l3_off, q.l4_off, q.l3_end), (p.l3_off, p.l4_off, p.l3_end));
    }

    /// Frames from our own builder, with VLAN tags and SCTP, rewritten
    /// twice (there and back): valid checksums each time and the original
    /// bytes restored.
    #[test]
    fn rewrite_there_and_back_with_vlans(
        (orig, new) in two_pairs(),
        proto in 0u8..3,
        tags in 0usize..3,
        ports in any::<(u16, u16, u16, u16)>(),
        payload in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let mut b = FrameBuilder::new().ip(orig.0, orig.1).payload(&payload);
        for i in 0..tags {
            b = b.vlan(100 + i as u16);
        }
        b = match proto {
            0 => b.tcp(ports.0, ports.1, 0x18, 7, 9),
            1 => b.udp(ports.0, ports.1),
            _ => b.sctp(ports.0, ports.1, 0xdead_beef),
        };
        let f0 = b.build();
        let mut f = f0.clone();
        let p = parse(&f).unwrap();
        prop_assert_eq!(p.vlans as usize, tags);
        rewrite_tuple(&mut f, &p, &Tuple { src: new.0, dst: new.1, sport: ports.2, dport: ports.3 }).unwrap();
        check_all(&f);
        let q = parse(&f).unwrap();
        rewrite_tuple(&mut f, &q, &Tuple { src: orig.0, dst: orig.1, sport: ports.0, dport: ports.1 }).unwrap();
        check_all(&f);
        // Checksums are one's-complement values: 0x0000/0xffff may swap
        // (never for UDP, where 0 is reserved); everything else is restored.
        let csum_at = usize::from(p.l4_off) + if proto == 0 { 16 } else { 6 };
        for (i, (a, b)) in f.iter().zip(&f0).enumerate() {
            if proto == 0 && (i == csum_at || i == csum_at + 1) {
                continue;
            }
            prop_assert_eq!(a, b, "byte {}", i);
        }
    }
}

/// etherparse for IP/TCP/UDP; the `crc32c` crate directly for SCTP.
fn check_all(f: &[u8]) {
    let p = parse(f).unwrap();
    if p.proto == 132 {
        let sctp = &f[usize::from(p.l4_off)..usize::from(p.l3_end)];
        let mut z = sctp.to_vec();
        z[8..12].fill(0);
        assert_eq!(
            u32::from_le_bytes([sctp[8], sctp[9], sctp[10], sctp[11]]),
            crc32c::crc32c(&z)
        );
        if p.family == crate::IpFamily::V4 {
            let h = etherparse::PacketHeaders::from_ethernet_slice(f).unwrap();
            let Some(etherparse::NetHeaders::Ipv4(ip4, _)) = h.net else {
                panic!()
            };
            assert_eq!(ip4.calc_header_checksum(), ip4.header_checksum);
        }
    } else {
        verify_checksums(f);
    }
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let mut f = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .udp_no_checksum(5000, 53)
        .payload(b"q")
        .build();
    let p = parse(&f).unwrap();
    let t = Tuple {
        src: ip("192.0.2.1"),
        dst: ip("198.18.2.2"),
        sport: 1,
        dport: 5353,
    };
    rewrite_tuple(&mut f, &p, &t).unwrap();
    assert_eq!(&f[40..42], &[0, 0]);
    verify_checksums(&f);
    assert_eq!(parse(&f).unwrap().dport, 5353);
}

/// A UDP checksum that comes out as 0 after the rewrite is sent as 0xffff.
#[test]
fn udp_computed_zero_is_ffff() {
    let f0 = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .udp(5000, 53)
        .payload(b"qq")
        .build();
    let c = u16::from_be_bytes([f0[40], f0[41]]);
    // Pick a new source port that moves the sum onto 0xffff (checksum 0):
    // checksum' = ~(~c + ~old + new) = 0  <=>  new = c + old (one's complement).
    let new_sport = crate::checksum::fold(u32::from(c) + 5000);
    let mut f = f0.clone();
    let p = parse(&f).unwrap();
    let t = Tuple {
        src: p.src,
        dst: p.dst,
        sport: new_sport,
        dport: 53,
    };
    rewrite_tuple(&mut f, &p, &t).unwrap();
    assert_eq!(&f[40..42], &[0xff, 0xff]);
    verify_checksums(&f);
}

#[test]
fn sctp_crc_recomputed() {
    let chunk = [
        1, 0, 0, 20, 0xaa, 0xbb, 0xcc, 0xdd, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1,
    ];
    for (s, d, ns, nd) in [
        ("10.0.0.1", "10.0.0.2", "198.18.0.1", "198.18.2.2"),
        ("fd00::1", "fd00::2", "2001:db8::1", "2001:db8:2::2"),
    ] {
        let mut f = FrameBuilder::new()
            .ip(ip(s), ip(d))
            .sctp(3868, 3868, 0)
            .payload(&chunk)
            .build();
        check_all(&f);
        let p = parse(&f).unwrap();
        assert_eq!(
            (p.sport, p.dport, p.l4(), p.l3_end as usize),
            (3868, 3868, Some(crate::Proto::Sctp), f.len())
        );
        rewrite_tuple(
            &mut f,
            &p,
            &Tuple {
                src: ip(ns),
                dst: ip(nd),
                sport: 40000,
                dport: 3869,
            },
        )
        .unwrap();
        check_all(&f);
        let q = parse(&f).unwrap();
        assert_eq!(
            (q.src, q.dst, q.sport, q.dport),
            (ip(ns), ip(nd), 40000, 3869)
        );
        assert!(
            crate::sctp::Packet::new_checked(&f[usize::from(q.l4_off)..])
                .unwrap()
                .verify_checksum()
        );
    }
}

#[test]
fn family_mismatch_and_later_fragment() {
    let mut f = super::v4_udp();
    let p = parse(&f).unwrap();
    let t6 = Tuple {
        src: ip("fd00::1"),
        dst: ip("fd00::2"),
        sport: 1,
        dport: 2,
    };
    let before = f.clone();
    assert_eq!(
        rewrite_tuple(&mut f, &p, &t6),
        Err(RewriteError::FamilyMismatch)
    );
    assert_eq!(f, before);
    // Later fragment: addresses only.
    f[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    crate::ipv4::Packet::new_unchecked(&mut f[14..]).fill_checksum();
    let p = parse(&f).unwrap();
    let t = Tuple {
        src: ip("192.0.2.1"),
        dst: ip("192.0.2.2"),
        sport: 1,
        dport: 2,
    };
    rewrite_tuple(&mut f, &p, &t).unwrap();
    let q = parse(&f).unwrap();
    assert_eq!((q.src, q.dst), (t.src, t.dst));
    assert_eq!(&f[34..38], &before[34..38], "ports untouched");
}

/// The NAT scenario of an ICMP error: the client's request was DNATed to a
/// backend, the backend answers port unreachable; the engine rewrites the
/// error back to the client's view (outer source = VIP, quote = client ->
/// VIP:port).
#[test]
fn icmp_error_rewrite_v4_and_v6() {
    for (client, vip, backend) in [
        ("198.51.100.7", "198.18.100.10", "198.18.2.2"),
        ("2001:db8:ffff::7", "2001:db8:100::10", "2001:db8:2::2"),
    ] {
        let (client, vip, backend) = (ip(client), ip(vip), ip(backend));
        // What the backend received (after DNAT): client:40000 -> backend:5353.
        let req = FrameBuilder::new()
            .ip(client, backend)
            .udp(40000, 5353)
            .payload(b"dns query")
            .build();
        let rp = parse(&req).unwrap();
        let mut out = [0u8; 1514];
        let n = crate::icmp::build_port_unreachable(&req, &rp, backend, &mut out).unwrap();
        let mut f = out[..n].to_vec();
        verify_checksums(&f);
        let p = parse(&f).unwrap();
        assert_eq!(p.icmp, Some(IcmpKind::Error));
        let inner = p.inner.unwrap();
        assert_eq!(
            (inner.src, inner.dst, inner.sport, inner.dport),
            (client, backend, 40000, 5353)
        );

        let t = Tuple {
            src: client,
            dst: vip,
            sport: 40000,
            dport: 53,
        };
        rewrite_icmp_error(&mut f, &p, Some(vip), client, &t).unwrap();
        // Outer: ICMP checksum (and the IPv4 header) by etherparse.
        verify_checksums(&f);
        let q = parse(&f).unwrap();
        assert_eq!((q.src, q.dst), (vip, client));
        let qi = q.inner.unwrap();
        assert_eq!(
            (qi.src, qi.dst, qi.sport, qi.dport),
            (client, vip, 40000, 53)
        );
        // The quote is the whole original datagram: verify its IP header and
        // UDP checksums independently by wrapping it in an Ethernet header.
        let mut quoted = f[..14].to_vec();
        quoted.extend_from_slice(&f[usize::from(qi.l3_off)..usize::from(q.l3_end)]);
        let h = verify_checksums(&quoted);
        let udp = h.transport.unwrap().udp().unwrap();
        assert_ne!(udp.checksum, 0);
        assert_eq!((udp.source_port, udp.destination_port), (40000, 53));

        // Wrong family or wrong kind of packet.
        let other = if client.is_ipv4() {
            ip("fd00::1")
        } else {
            ip("10.0.0.1")
        };
        assert_eq!(
            rewrite_icmp_error(&mut f, &q, None, other, &t),
            Err(RewriteError::FamilyMismatch)
        );
        let mut r = req.clone();
        assert_eq!(
            rewrite_icmp_error(&mut r, &rp, None, client, &t),
            Err(RewriteError::NotIcmpError)
        );
    }
}

/// A quoted TCP segment (20 bytes present) gets its checksum updated; a
/// quote of only 8 bytes gets ports rewritten and the checksum left alone.
#[test]
fn icmp_error_quoting_tcp() {
    let seg = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.1.1.1"))
        .tcp(40000, 8080, 0x18, 5, 6)
        .payload(b"GET /")
        .build();
    for quote_len in [seg.len() - 14, 28] {
        let mut f = FrameBuilder::new()
            .ip(ip("10.1.1.1"), ip("10.0.0.1"))
            .icmp(3, 4, 1400)
            .payload(&seg[14..14 + quote_len])
            .build();
        let p = parse(&f).unwrap();
        let t = Tuple {
            src: ip("10.0.0.1"),
            dst: ip("198.18.0.10"),
            sport: 40000,
            dport: 80,
        };
        rewrite_icmp_error(&mut f, &p, Some(ip("198.18.0.10")), ip("10.0.0.1"), &t).unwrap();
        verify_checksums(&f);
        let qi = parse(&f).unwrap().inner.unwrap();
        assert_eq!((qi.dst, qi.dport), (ip("198.18.0.10"), 80));
        if quote_len > 28 {
            let mut quoted = f[..14].to_vec();
            quoted.extend_from_slice(&f[usize::from(qi.l3_off)..]);
            verify_checksums(&quoted);
        }
    }
}
