//! What the sink checks on every frame it receives (pure; the AF_XDP loop
//! in `sink.rs` calls [`check`] per frame).
//!
//! A frame is the generator's when it is IPv4/IPv6 TCP/UDP with the
//! [`MAGIC`] at the start of its L4 payload; anything else (ARP, neighbour
//! discovery, the kernel's own traffic) is counted as not ours. A
//! generator frame is correctly translated when its destination (address,
//! port) is one of the backends, its source is the expected SNAT address
//! (when one is given), and — for the frames that are checksummed, every
//! frame or one in N — its IPv4 header checksum and its TCP/UDP checksum
//! verify.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::frame::{fold, sum16, ETH_LEN, MAGIC};

/// What a translated frame must look like.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Allowed (destination address, destination port); empty: any.
    pub backends: HashSet<(IpAddr, u16)>,
    /// Required source address (the SNAT address); `None`: any.
    pub src: Option<IpAddr>,
}

/// The fate of one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a generator frame.
    NotOurs,
    Ok,
    /// Destination is not one of the backends.
    BadDst,
    /// Source is not the expected SNAT address.
    BadSrc,
    BadIpChecksum,
    BadL4Checksum,
    /// A generator frame cut short (lengths disagree).
    Truncated,
}

/// The sink's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkCounts {
    /// Every frame the socket delivered.
    pub frames: u64,
    pub not_ours: u64,
    /// Generator frames correctly translated.
    pub ok: u64,
    pub bad_dst: u64,
    pub bad_src: u64,
    pub bad_ip_checksum: u64,
    pub bad_l4_checksum: u64,
    pub truncated: u64,
    /// Generator frames whose checksums were verified.
    pub checksummed: u64,
}

impl SinkCounts {
    /// Generator frames received, good or bad.
    pub fn ours(&self) -> u64 {
        self.frames - self.not_ours
    }
    /// Generator frames that failed a check.
    pub fn bad(&self) -> u64 {
        self.bad_dst + self.bad_src + self.bad_ip_checksum + self.bad_l4_checksum + self.truncated
    }
    pub fn add(&mut self, v: Verdict, checksummed: bool) {
        self.frames += 1;
        if checksummed && v != Verdict::NotOurs {
            self.checksummed += 1;
        }
        match v {
            Verdict::NotOurs => self.not_ours += 1,
            Verdict::Ok => self.ok += 1,
            Verdict::BadDst => self.bad_dst += 1,
            Verdict::BadSrc => self.bad_src += 1,
            Verdict::BadIpChecksum => self.bad_ip_checksum += 1,
            Verdict::BadL4Checksum => self.bad_l4_checksum += 1,
            Verdict::Truncated => self.truncated += 1,
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Checks one frame; `verify_checksums` turns the checksum checks on (the
/// sink samples them when asked to).
pub fn check(f: &[u8], e: &Expect, verify_checksums: bool) -> Verdict {
    if f.len() < ETH_LEN + 20 {
        return Verdict::NotOurs;
    }
    let (src, dst, proto, l4_off, l4_end, pseudo) = match be16(f, 12) {
        0x0800 => {
            let ihl = (f[ETH_LEN] & 0x0f) as usize * 4;
            if f[ETH_LEN] >> 4 != 4 || ihl < 20 || f.len() < ETH_LEN + ihl {
                return Verdict::NotOurs;
            }
            let total = be16(f, ETH_LEN + 2) as usize;
            let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
            let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
            let proto = f[ETH_LEN + 9];
            let l4_off = ETH_LEN + ihl;
            let l4_end = ETH_LEN + total;
            let pseudo = sum16(&f[26..34]) + proto as u32 + total.saturating_sub(ihl) as u32;
            (
                IpAddr::V4(src),
                IpAddr::V4(dst),
                proto,
                l4_off,
                l4_end,
                pseudo,
            )
        }
        0x86dd => {
            if f.len() < ETH_LEN + 40 {
                return Verdict::NotOurs;
            }
            let plen = be16(f, ETH_LEN + 4) as usize;
            let proto = f[ETH_LEN + 6];
            let mut s = [0u8; 16];
            s.copy_from_slice(&f[22..38]);
            let mut d = [0u8; 16];
            d.copy_from_slice(&f[38..54]);
            let pseudo = sum16(&f[22..54]) + proto as u32 + plen as u32;
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                proto,
                ETH_LEN + 40,
                ETH_LEN + 40 + plen,
                pseudo,
            )
        }
        _ => return Verdict::NotOurs,
    };
    let l4_hdr = match proto {
        6 => {
            if f.len() < l4_off + 20 {
                return Verdict::NotOurs;
            }
            (f[l4_off + 12] >> 4) as usize * 4
        }
        17 => 8,
        _ => return Verdict::NotOurs,
    };
    let pay = l4_off + l4_hdr;
    if f.len() < pay + 4 || f[pay..pay + 4] != MAGIC {
        return Verdict::NotOurs;
    }
    if l4_end > f.len() || l4_end < pay + 8 {
        return Verdict::Truncated;
    }
    let dport = be16(f, l4_off + 2);
    if !e.backends.is_empty() && !e.backends.contains(&(dst, dport)) {
        return Verdict::BadDst;
    }
    if let Some(want) = e.src {
        if want != src {
            return Verdict::BadSrc;
        }
    }
    if verify_checksums {
        if src.is_ipv4() {
            let ihl = (f[ETH_LEN] & 0x0f) as usize * 4;
            if fold(sum16(&f[ETH_LEN..ETH_LEN + ihl])) != 0xffff {
                return Verdict::BadIpChecksum;
            }
        }
        let udp_none = proto == 17 && src.is_ipv4() && be16(f, l4_off + 6) == 0;
        if !udp_none && fold(pseudo + sum16(&f[l4_off..l4_end])) != 0xffff {
            return Verdict::BadL4Checksum;
        }
    }
    Verdict::Ok
}

#[cfg(test)]
mod tests {
    use super::super::frame::{FlowPattern, FrameGen, FrameSpec, Proto};
    use super::*;

    fn gen(v6: bool, proto: Proto) -> FrameGen {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (
                "2001:db8:32::1".parse().unwrap(),
                "2001:db8:99::1".parse().unwrap(),
            )
        } else {
            (
                "198.18.32.0".parse().unwrap(),
                "198.19.0.1".parse().unwrap(),
            )
        };
        FrameGen::new(&FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_base: src,
            src_count: 1,
            dst_base: dst,
            dst_count: 2,
            dst_port: 8080,
            proto,
            size: None,
            pattern: FlowPattern::Many(10),
        })
        .unwrap()
    }

    fn expect(g: &FrameGen, src: Option<IpAddr>) -> Expect {
        Expect {
            backends: (0..2).map(|i| (g.tuple(i).2, 8080)).collect(),
            src,
        }
    }

    #[test]
    fn generated_frames_pass_and_each_fault_is_named() {
        for v6 in [false, true] {
            for proto in [Proto::Syn, Proto::Ack, Proto::Udp] {
                let g = gen(v6, proto);
                let mut f = vec![0u8; g.len()];
                g.write(&mut f, 3);
                let src = g.tuple(g.flow(3)).0;
                let e = expect(&g, Some(src));
                assert_eq!(check(&f, &e, true), Verdict::Ok, "v6={v6} {proto:?}");
                assert_eq!(check(&f, &Expect::default(), true), Verdict::Ok);
                // Wrong SNAT source.
                let other: IpAddr = if v6 {
                    "2001:db8::9".parse().unwrap()
                } else {
                    "198.18.9.9".parse().unwrap()
                };
                assert_eq!(check(&f, &expect(&g, Some(other)), true), Verdict::BadSrc);
                // Destination port not a backend's.
                let mut bad = f.clone();
                let l4 = ETH_LEN + if v6 { 40 } else { 20 };
                bad[l4 + 3] ^= 1;
                assert_eq!(check(&bad, &e, true), Verdict::BadDst);
                // A flipped payload bit: the L4 checksum catches it, but
                // only when checked.
                let mut bad = f.clone();
                let last = bad.len() - 1;
                bad[last] ^= 0x40;
                assert_eq!(check(&bad, &e, true), Verdict::BadL4Checksum);
                assert_eq!(check(&bad, &e, false), Verdict::Ok);
                if !v6 {
                    let mut bad = f.clone();
                    bad[ETH_LEN + 8] -= 1; // TTL without checksum update
                    assert_eq!(check(&bad, &e, true), Verdict::BadIpChecksum);
                }
                // Cut short.
                assert_eq!(check(&f[..f.len() - 2], &e, true), Verdict::Truncated);
            }
        }
    }

    #[test]
    fn foreign_frames_are_not_ours() {
        let g = gen(false, Proto::Udp);
        let mut f = vec![0u8; g.len()];
        g.write(&mut f, 0);
        let e = expect(&g, None);
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(check(&arp, &e, true), Verdict::NotOurs);
        let mut nomagic = f.clone();
        nomagic[ETH_LEN + 20 + 8] = b'X';
        assert_eq!(check(&nomagic, &e, true), Verdict::NotOurs);
        assert_eq!(check(&f[..20], &e, true), Verdict::NotOurs);
        let mut counts = SinkCounts::default();
        counts.add(check(&f, &e, true), true);
        counts.add(check(&arp, &e, true), true);
        assert_eq!(
            (
                counts.frames,
                counts.ok,
                counts.not_ours,
                counts.checksummed
            ),
            (2, 1, 1, 1)
        );
        assert_eq!((counts.ours(), counts.bad()), (1, 0));
    }
}
