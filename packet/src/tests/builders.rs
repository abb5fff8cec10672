//! `build_rst`, `build_rst_to`, `build_port_unreachable` and
//! `echo_reply_in_place`.

use super::{ip, verify_checksums};
use crate::icmp::{build_port_unreachable, echo_reply_in_place};
use crate::tcp::{build_rst, build_rst_to, RstTo};
use crate::testing::{FrameBuilder, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use crate::{parse, IcmpKind};

fn rst_for(flags: u8, seq: u32, ack: u32, payload: &[u8], v6: bool) -> Vec<u8> {
    let (s, d) = if v6 {
        ("fd00::1", "fd00::2")
    } else {
        ("10.0.0.1", "10.0.0.2")
    };
    let orig = FrameBuilder::new()
        .vlan(42)
        .ip(ip(s), ip(d))
        .tcp(40000, 80, flags, seq, ack)
        .payload(payload)
        .build();
    let p = parse(&orig).unwrap();
    let mut out = [0u8; 128];
    let n = build_rst(&orig, &p, &mut out).unwrap();
    let rst = out[..n].to_vec();
    verify_checksums(&rst);
    let r = parse(&rst).unwrap();
    assert_eq!((r.src, r.dst, r.sport, r.dport), (p.dst, p.src, 80, 40000));
    assert_eq!(r.vlans, 1, "VLAN tag kept");
    assert_eq!(&rst[0..6], &orig[6..12]);
    assert_eq!(&rst[6..12], &orig[0..6]);
    assert_eq!(&rst[12..18], &orig[12..18]);
    assert_eq!(r.ttl, 64);
    rst
}

fn seq_ack_flags(rst: &[u8]) -> (u32, u32, u8) {
    let p = parse(rst).unwrap();
    let t = crate::tcp::Packet::new_checked(&rst[usize::from(p.l4_off)..]).unwrap();
    (t.seq_number(), t.ack_number(), t.flags())
}

#[test]
fn rst_rfc9293_rules() {
    for v6 in [false, true] {
        // ACK set: seq = SEG.ACK, no ACK.
        let r = rst_for(TCP_ACK | TCP_PSH, 1000, 5000, b"data", v6);
        assert_eq!(seq_ack_flags(&r), (5000, 0, TCP_RST));
        // SYN: seq 0, ack = SEG.SEQ + 1.
        let r = rst_for(TCP_SYN, 1000, 0, b"", v6);
        assert_eq!(seq_ack_flags(&r), (0, 1001, TCP_RST | TCP_ACK));
        // Data + FIN without ACK, wrapping: ack = seq + len + 1.
        let r = rst_for(TCP_FIN, u32::MAX - 1, 0, b"abc", v6);
        assert_eq!(seq_ack_flags(&r), (0, 2, TCP_RST | TCP_ACK));
    }
    // Never answer a RST; not TCP; too small.
    let orig = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .tcp(1, 2, TCP_RST, 0, 0)
        .build();
    assert_eq!(
        build_rst(&orig, &parse(&orig).unwrap(), &mut [0; 128]),
        None
    );
    let orig = super::v4_udp();
    assert_eq!(
        build_rst(&orig, &parse(&orig).unwrap(), &mut [0; 128]),
        None
    );
    let orig = FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .tcp(1, 2, TCP_SYN, 0, 0)
        .build();
    assert_eq!(build_rst(&orig, &parse(&orig).unwrap(), &mut [0; 53]), None);
    assert_eq!(
        build_rst(&orig, &parse(&orig).unwrap(), &mut [0; 54]),
        Some(54)
    );
}

#[test]
fn port_unreachable_v4_limits_quote_to_576() {
    let big = vec![0xab; 1400];
    let orig = FrameBuilder::new()
        .vlan(5)
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .udp(5000, 53)
        .payload(&big)
        .build();
    let p = parse(&orig).unwrap();
    let mut out = [0u8; 2000];
    let n = build_port_unreachable(&orig, &p, ip("10.0.0.2"), &mut out).unwrap();
    let f = &out[..n];
    verify_checksums(f);
    let q = parse(f).unwrap();
    assert_eq!(usize::from(q.l3_end - q.l3_off), 576);
    assert_eq!(
        (q.src, q.dst, q.ttl, q.vlans),
        (ip("10.0.0.2"), ip("10.0.0.1"), 64, 1)
    );
    assert_eq!(&f[q.l4_off as usize..q.l4_off as usize + 2], &[3, 3]);
    assert_eq!(&f[22..24], &[0, 0], "IPv4 ID 0");
    assert_eq!(&f[24..26], &[0, 0], "DF clear");
    let inner = q.inner.unwrap();
    assert_eq!(
        (inner.src, inner.dst, inner.sport, inner.dport),
        (p.src, p.dst, 5000, 53)
    );
    assert_eq!(&f[usize::from(inner.l3_off)..], &orig[18..18 + 548]);

    // A small buffer truncates the quote; below IP header + 8 it fails.
    let mut small = [0u8; 18 + 20 + 8 + 20 + 8];
    let n = build_port_unreachable(&orig, &p, ip("10.0.0.2"), &mut small).unwrap();
    assert_eq!(n, small.len());
    verify_checksums(&small);
    assert_eq!(
        build_port_unreachable(&orig, &p, ip("10.0.0.2"), &mut small[..n - 1]),
        None
    );
    // Wrong family of source.
    assert_eq!(
        build_port_unreachable(&orig, &p, ip("fd00::2"), &mut out),
        None
    );
}

#[test]
fn port_unreachable_v6_limits_quote_to_1280() {
    let big = vec![0xcd; 1400];
    let orig = FrameBuilder::new()
        .ip(ip("fd00::1"), ip("fd00::2"))
        .udp(5000, 53)
        .payload(&big)
        .build();
    let p = parse(&orig).unwrap();
    let mut out = [0u8; 2000];
    let n = build_port_unreachable(&orig, &p, ip("fd00::2"), &mut out).unwrap();
    let f = &out[..n];
    verify_checksums(f);
    let q = parse(f).unwrap();
    assert_eq!(usize::from(q.l3_end - q.l3_off), 1280);
    assert_eq!(&f[q.l4_off as usize..q.l4_off as usize + 2], &[1, 4]);
    assert_eq!(q.icmp, Some(IcmpKind::Error));
    // A short datagram is quoted whole.
    let orig = FrameBuilder::new()
        .ip(ip("fd00::1"), ip("fd00::2"))
        .udp(5000, 53)
        .payload(b"x")
        .build();
    let p = parse(&orig).unwrap();
    let n = build_port_unreachable(&orig, &p, ip("fd00::2"), &mut out).unwrap();
    assert_eq!(n, 14 + 40 + 8 + orig.len() - 14);
    // Never an error about an error.
    assert_eq!(
        build_port_unreachable(
            &out[..n],
            &parse(&out[..n]).unwrap(),
            ip("fd00::2"),
            &mut [0; 2000]
        ),
        None
    );
}

#[test]
fn echo_reply_in_place_v4_v6() {
    for (s, d) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
        let mut f = FrameBuilder::new()
            .vlan(3)
            .ip(ip(s), ip(d))
            .ttl(17)
            .icmp_echo_request(77, 3)
            .payload(b"abcdefgh")
            .build();
        let orig = f.clone();
        let p = parse(&f).unwrap();
        assert!(echo_reply_in_place(&mut f, &p));
        verify_checksums(&f);
        let q = parse(&f).unwrap();
        assert_eq!(
            (q.src, q.dst, q.icmp, q.sport, q.ttl),
            (ip(d), ip(s), Some(IcmpKind::EchoReply), 77, 64)
        );
        assert_eq!(&f[0..6], &orig[6..12]);
        assert_eq!(&f[f.len() - 8..], b"abcdefgh");
        // Now a reply: refused, untouched.
        let before = f.clone();
        assert!(!echo_reply_in_place(&mut f, &q));
        assert_eq!(f, before);
    }
}

#[test]
fn rst_to_speaks_for_the_sender_to_a_third_party() {
    for (backend, node, vip, client) in [
        ("198.18.2.2", "198.18.1.1", "198.18.200.10", "198.18.0.100"),
        (
            "2001:db8:2::2",
            "2001:db8:1::1",
            "2001:db8:200::10",
            "2001:db8::100",
        ),
    ] {
        // A backend's data segment to the node's SNAT port...
        let orig = FrameBuilder::new()
            .vlan(7)
            .ip(ip(backend), ip(node))
            .tcp(8080, 40123, TCP_ACK | TCP_PSH, 7777, 1234)
            .payload(b"late answer")
            .build();
        let p = parse(&orig).unwrap();
        let to = RstTo {
            src: ip(vip),
            dst: ip(client),
            sport: 80,
            dport: 5000,
        };
        let mut out = [0u8; 128];
        let n = build_rst_to(&orig, &p, to, &mut out).unwrap();
        // ...becomes the Service's RST to the client, with the segment's seq.
        let rst = &out[..n];
        verify_checksums(rst);
        let r = parse(rst).unwrap();
        assert_eq!(
            (r.src, r.dst, r.sport, r.dport),
            (ip(vip), ip(client), 80, 5000)
        );
        assert_eq!(seq_ack_flags(rst), (7777, 0, TCP_RST));
        assert_eq!(r.vlans, 1, "VLAN tag kept");
        assert_eq!(
            usize::from(r.l3_end) - usize::from(r.l4_off),
            20,
            "no payload"
        );
        // Mixed families, not TCP, too small: refused.
        let mixed = RstTo {
            dst: ip("2001:db8::1"),
            ..to
        };
        let mixed = if r.src.is_ipv4() {
            mixed
        } else {
            RstTo {
                dst: ip("198.18.0.1"),
                ..to
            }
        };
        assert_eq!(build_rst_to(&orig, &p, mixed, &mut [0; 128]), None);
        assert_eq!(build_rst_to(&orig, &p, to, &mut [0; 40]), None);
    }
    let udp = super::v4_udp();
    let to = RstTo {
        src: ip("198.18.200.10"),
        dst: ip("198.18.0.100"),
        sport: 80,
        dport: 5000,
    };
    assert_eq!(
        build_rst_to(&udp, &parse(&udp).unwrap(), to, &mut [0; 128]),
        None
    );
}
