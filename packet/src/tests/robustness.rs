//! No panic on any input: `parse` on arbitrary and mutated bytes, and the
//! rewrite helpers and builders on whatever `parse` accepted, or on a summary
//! of another frame.

use super::ip;
use crate::icmp::{build_port_unreachable, echo_reply_in_place};
use crate::tcp::build_rst;
use crate::testing::{FrameBuilder, TCP_ACK};
use crate::{parse, rewrite_icmp_error, rewrite_tuple, rewrite_tuple_v4, IpFamily, Parsed, Tuple};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Valid frames of every shape, as mutation seeds.
fn seeds() -> Vec<Vec<u8>> {
    let v4 = (ip("10.0.0.1"), ip("10.0.0.2"));
    let v6 = (ip("fd00::1"), ip("fd00::2"));
    let mut out = Vec::new();
    for (s, d) in [v4, v6] {
        let b = || FrameBuilder::new().ip(s, d).payload(b"payload!");
        let udp = b().udp(5000, 53).build();
        out.push(b().tcp(1, 2, TCP_ACK, 3, 4).build());
        out.push(b().vlan(1).qinq(2).udp(5000, 53).build());
        out.push(b().sctp(3868, 3868, 1).build());
        out.push(b().icmp_echo_request(9, 1).build());
        out.push(b().icmp_echo_reply(9, 1).build());
        out.push(b().raw(47).build());
        let err_type = if s.is_ipv4() { 3 } else { 1 };
        let err = FrameBuilder::new()
            .ip(d, s)
            .icmp(err_type, 3, 0)
            .payload(&udp[14..])
            .build();
        out.push(
            FrameBuilder::new()
                .ip(d, s)
                .icmp(err_type, 3, 0)
                .payload(&err[14..])
                .build(),
        );
        out.push(err);
        // A first fragment (MF set).
        let mut frag = udp.clone();
        if s.is_ipv4() {
            frag[20] |= 0x20;
            crate::ipv4::Packet::new_unchecked(&mut frag[14..]).fill_checksum();
            out.push(frag);
        }
        out.push(udp);
    }
    // IPv6 with Hop-by-Hop, Fragment (first) and Destination Options headers.
    let mut f = vec![
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60, 0, 0, 0, 0, 36, 0, 64,
    ];
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[
        44, 0, 1, 4, 0, 0, 0, 0, 60, 0, 0, 1, 0, 0, 0, 7, 17, 0, 1, 4, 0, 0, 0, 0,
    ]);
    f.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0x00, 0x0c, 0x12, 0x34, 1, 2, 3, 4]);
    out.push(f);
    out
}

fn tuple_of(family: IpFamily, a: u128, b: u128, sport: u16, dport: u16) -> Tuple {
    let (src, dst) = match family {
        IpFamily::V4 => (
            IpAddr::V4(Ipv4Addr::from(a as u32)),
            IpAddr::V4(Ipv4Addr::from(b as u32)),
        ),
        IpFamily::V6 => (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b))),
    };
    Tuple {
        src,
        dst,
        sport,
        dport,
    }
}

/// Everything that takes a parsed frame, on that frame; the fuzz target's
/// invariants.
fn exercise(frame: &[u8], p: &Parsed, t: &Tuple) {
    assert!(p.l3_off <= p.l4_off && p.l4_off <= p.l3_end && usize::from(p.l3_end) <= frame.len());
    let mut f = frame.to_vec();
    if rewrite_tuple(&mut f, p, t).is_ok() {
        let q = parse(&f).expect("a rewritten frame still parses");
        assert_eq!(
            (q.l3_off, q.l4_off, q.l3_end),
            (p.l3_off, p.l4_off, p.l3_end)
        );
    }
    let mut g = frame.to_vec();
    let _ = rewrite_icmp_error(&mut g, p, Some(t.dst), t.src, t);
    let mut out = [0u8; 1600];
    let _ = build_rst(frame, p, &mut out);
    let _ = build_port_unreachable(frame, p, t.src, &mut out);
    let _ = build_port_unreachable(frame, p, t.src, &mut out[..60]);
    let _ = echo_reply_in_place(&mut frame.to_vec(), p);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(p) = parse(&data) {
            exercise(&data, &p, &tuple_of(p.family, 1, 2, 3, 4));
        }
    }

    /// Arbitrary bytes after a plausible Ethernet + IP version prefix, so the
    /// deeper layers get exercised too.
    #[test]
    fn parse_arbitrary_ip(v6 in any::<bool>(), tail in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        f.extend_from_slice(if v6 { &[0x86, 0xdd, 0x60] } else { &[0x08, 0x00, 0x45] });
        f.extend_from_slice(&tail);
        if let Ok(p) = parse(&f) {
            exercise(&f, &p, &tuple_of(p.family, 5, 6, 7, 8));
        }
    }

    #[test]
    fn parse_mutated_frames(
        seed in 0usize..32,
        muts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
        addrs in any::<(u128, u128, u16, u16)>(),
    ) {
        let seeds = seeds();
        let mut f = seeds[seed % seeds.len()].clone();
        for (i, v) in muts {
            let i = i.index(f.len());
            f[i] = v;
        }
        if do_cut {
            f.truncate(cut.index(f.len() + 1));
        }
        if let Ok(p) = parse(&f) {
            let t = tuple_of(p.family, addrs.0, addrs.1, addrs.2, addrs.3);
            exercise(&f, &p, &t);
        }
    }

    /// The straight path for common IPv4 frames gives exactly what the
    /// general path gives (result or error), on mutated and cut frames of
    /// every shape, mutations aimed at the headers the fast path reads.
    #[test]
    fn fast_path_equals_general(
        seed in 0usize..64,
        muts in proptest::collection::vec((12usize..60, 0u8..8, any::<Option<u8>>()), 0..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
        fix_checksum in any::<bool>(),
    ) {
        let seeds = seeds();
        // Half the cases start from the frames the fast path takes (IPv4
        // TCP and UDP, untagged: seeds 0 and the last IPv4 one).
        let fast = [0, seeds.iter().rposition(|f| f[12..14] == [0x08, 0x00]).unwrap_or(0)];
        let pick = if seed % 2 == 0 { fast[seed / 2 % 2] } else { seed / 2 };
        let mut f = seeds[pick % seeds.len()].clone();
        // Header bytes: one bit flipped (a near-valid field) or replaced.
        for (i, bit, v) in muts {
            if i < f.len() {
                f[i] = v.unwrap_or(f[i] ^ (1 << bit));
            }
        }
        if fix_checksum && f.len() >= 34 && f[14] >> 4 == 4 {
            // Keep the header checksum valid so the checks behind it are reached.
            let hl = (usize::from(f[14] & 0x0f) * 4).min(f.len() - 14);
            f[24] = 0;
            f[25] = 0;
            let c = crate::checksum::finish(crate::checksum::sum(&f[14..14 + hl]));
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        if do_cut {
            f.truncate(cut.index(f.len() + 1));
        }
        prop_assert_eq!(parse(&f), crate::parse::parse_general(&f));
    }

    /// The IPv4 straight path of the rewrite writes exactly what the general
    /// one writes (and fails alike), zero UDP checksums included, also with
    /// a summary of another frame.
    #[test]
    fn rewrite_v4_equals_general(
        seed in 0usize..32,
        other in 0usize..32,
        muts in proptest::collection::vec((0usize..64, any::<u8>()), 0..3),
        csum in proptest::option::of(prop_oneof![Just(0u16), Just(0xffff), any::<u16>()]),
        addrs in any::<(u32, u32, u16, u16)>(),
        mismatched in any::<bool>(),
    ) {
        let seeds = seeds();
        let mut f = seeds[seed % seeds.len()].clone();
        for (i, v) in muts {
            if i < f.len() {
                f[i] = v;
            }
        }
        let summary = if mismatched { parse(&seeds[other % seeds.len()]) } else { parse(&f) };
        if let Ok(p) = summary {
            if let Some(c) = csum {
                let off = usize::from(p.l4_off) + if p.proto == 6 { 16 } else { 6 };
                if matches!(p.proto, 6 | 17) && off + 2 <= f.len() {
                    f[off..off + 2].copy_from_slice(&c.to_be_bytes());
                }
            }
            let (src, dst) = (Ipv4Addr::from(addrs.0), Ipv4Addr::from(addrs.1));
            let t = Tuple {
                src: IpAddr::V4(src),
                dst: IpAddr::V4(dst),
                sport: addrs.2,
                dport: addrs.3,
            };
            let (mut a, mut b) = (f.clone(), f.clone());
            let ra = rewrite_tuple_v4(&mut a, &p, src, dst, addrs.2, addrs.3);
            let rb = rewrite_tuple(&mut b, &p, &t);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(a, b);
        }
    }

    /// A summary applied to a different frame: the helpers must notice or at
    /// least not panic.
    #[test]
    fn mismatched_summary(a in 0usize..32, b in 0usize..32, cut in any::<prop::sample::Index>()) {
        let seeds = seeds();
        let fa = &seeds[a % seeds.len()];
        let mut fb = seeds[b % seeds.len()].clone();
        fb.truncate(cut.index(fb.len() + 1));
        let p = parse(fa).unwrap();
        for fam in [IpFamily::V4, IpFamily::V6] {
            let t = tuple_of(fam, 1, 2, 3, 4);
            let _ = rewrite_tuple(&mut fb.clone(), &p, &t);
            let _ = rewrite_icmp_error(&mut fb.clone(), &p, None, t.dst, &t);
            let mut out = [0u8; 1600];
            let _ = build_rst(&fb, &p, &mut out);
            let _ = build_port_unreachable(&fb, &p, t.src, &mut out);
            let _ = echo_reply_in_place(&mut fb.clone(), &p);
        }
    }
}

#[test]
fn seeds_parse() {
    for s in seeds() {
        parse(&s).unwrap();
    }
}
