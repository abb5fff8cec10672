//! Test support: frame descriptions ([`Pkt`]) built into bytes by hand with a
//! from-scratch checksum (no code shared with `packet/`), and an independent
//! checksum verifier based on `etherparse`.
#![allow(dead_code)]

use std::net::IpAddr;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The transport part of a test frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        data_off_words: Option<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        zero_csum: bool,
        len_override: Option<u16>,
    },
    Sctp {
        sport: u16,
        dport: u16,
        vtag: u32,
    },
    Echo {
        request: bool,
        id: u16,
        seq: u16,
    },
    /// ICMP error quoting `quote` (its IP datagram, truncated to `quote_len`).
    IcmpErr {
        typ: u8,
        code: u8,
        rest: u32,
        quote: Box<Pkt>,
        quote_len: Option<usize>,
    },
    /// Any ICMP type with an 4-byte rest-of-header and the payload.
    Icmp {
        typ: u8,
        code: u8,
        rest: u32,
    },
    /// Raw protocol number, payload only.
    Raw {
        proto: u8,
    },
}

/// A frame description. `bytes()` builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkt {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub ip_id: u16,
    pub df: bool,
    /// IPv4 options (padded to 4 bytes by the builder).
    pub v4_options: Vec<u8>,
    /// IPv6 extension headers before L4: (type, total length in 8-byte units - 1).
    pub v6_ext: Vec<u8>,
    /// (fragment offset in 8-byte units, more fragments).
    pub frag: Option<(u16, bool)>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Pkt {
    fn base(src: &str, dst: &str, l4: L4) -> Pkt {
        Pkt {
            eth_src: CLIENT_MAC,
            eth_dst: NODE_MAC,
            vlans: vec![],
            src: ip(src),
            dst: ip(dst),
            ttl: 63,
            ip_id: 0x1234,
            df: true,
            v4_options: vec![],
            v6_ext: vec![],
            frag: None,
            l4,
            payload: vec![],
        }
    }
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Pkt {
        let seq = 1000;
        let ack = if flags & ACK != 0 { 5000 } else { 0 };
        Pkt::base(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                data_off_words: None,
            },
        )
    }
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        Pkt::base(
            src,
            dst,
            L4::Udp {
                sport,
                dport,
                zero_csum: false,
                len_override: None,
            },
        )
        .payload(b"query")
    }
    pub fn sctp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        // One INIT chunk (type 1, flags 0, length 20).
        let mut chunk = vec![1, 0, 0, 20];
        chunk.extend_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1]);
        Pkt::base(
            src,
            dst,
            L4::Sctp {
                sport,
                dport,
                vtag: 0,
            },
        )
        .payload(&chunk)
    }
    pub fn echo(src: &str, dst: &str, id: u16) -> Pkt {
        Pkt::base(
            src,
            dst,
            L4::Echo {
                request: true,
                id,
                seq: 1,
            },
        )
        .payload(b"pingpingpingping")
    }
    pub fn icmp_err(src: &str, dst: &str, typ: u8, code: u8, rest: u32, quote: Pkt) -> Pkt {
        let mut p = Pkt::base(
            src,
            dst,
            L4::IcmpErr {
                typ,
                code,
                rest,
                quote: Box::new(quote),
                quote_len: None,
            },
        );
        p.df = false;
        p
    }
    pub fn raw(src: &str, dst: &str, proto: u8) -> Pkt {
        Pkt::base(src, dst, L4::Raw { proto }).payload(b"raw payload")
    }

    pub fn payload(mut self, p: &[u8]) -> Pkt {
        self.payload = p.to_vec();
        self
    }
    pub fn vlan(mut self, id: u16) -> Pkt {
        self.vlans.push(id);
        self
    }
    pub fn seq_ack(mut self, s: u32, a: u32) -> Pkt {
        if let L4::Tcp { seq, ack, .. } = &mut self.l4 {
            *seq = s;
            *ack = a;
        }
        self
    }
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Pkt {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }
    /// The same frame with other addresses and ports (what NAT should produce).
    pub fn to(mut self, src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        self.src = ip(src);
        self.dst = ip(dst);
        match &mut self.l4 {
            L4::Tcp {
                sport: s, dport: d, ..
            }
            | L4::Udp {
                sport: s, dport: d, ..
            }
            | L4::Sctp {
                sport: s, dport: d, ..
            } => {
                *s = sport;
                *d = dport;
            }
            L4::Echo { id, request, .. } => *id = if *request { sport } else { dport },
            _ => {}
        }
        self
    }
    pub fn ports(&self) -> (u16, u16) {
        match &self.l4 {
            L4::Tcp { sport, dport, .. }
            | L4::Udp { sport, dport, .. }
            | L4::Sctp { sport, dport, .. } => (*sport, *dport),
            L4::Echo { id, .. } => (*id, *id),
            _ => (0, 0),
        }
    }

    fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Sctp { .. } => 132,
            L4::Echo { .. } | L4::IcmpErr { .. } | L4::Icmp { .. } => {
                if self.src.is_ipv4() {
                    1
                } else {
                    58
                }
            }
            L4::Raw { proto } => *proto,
        }
    }

    /// The L4 header and payload, with a correct checksum.
    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                data_off_words,
            } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                b.push(data_off_words.unwrap_or(5) << 4);
                b.push(*flags);
                b.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
                b.extend_from_slice(&self.payload);
                let c = self.pseudo_sum(b.len()) + sum(&b);
                let c = fold(c);
                b[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp {
                sport,
                dport,
                zero_csum,
                len_override,
            } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                let len = (8 + self.payload.len()) as u16;
                b.extend_from_slice(&len_override.unwrap_or(len).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&self.payload);
                if !(*zero_csum && self.src.is_ipv4()) {
                    let mut c = fold(self.pseudo_sum(b.len()) + sum(&b));
                    if c == 0 {
                        c = 0xffff;
                    }
                    b[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
            L4::Sctp { sport, dport, vtag } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&vtag.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]);
                b.extend_from_slice(&self.payload);
                let crc = crc32c::crc32c(&b);
                b[8..12].copy_from_slice(&crc.to_le_bytes());
            }
            L4::Echo { request, id, seq } => {
                let typ = match (self.src.is_ipv4(), request) {
                    (true, true) => 8,
                    (true, false) => 0,
                    (false, true) => 128,
                    (false, false) => 129,
                };
                b.extend_from_slice(&[typ, 0, 0, 0]);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&self.payload);
                self.icmp_csum(&mut b);
            }
            L4::IcmpErr {
                typ,
                code,
                rest,
                quote,
                quote_len,
            } => {
                b.extend_from_slice(&[*typ, *code, 0, 0]);
                b.extend_from_slice(&rest.to_be_bytes());
                let mut q = quote.ip_bytes();
                if let Some(n) = quote_len {
                    q.truncate(*n);
                }
                b.extend_from_slice(&q);
                self.icmp_csum(&mut b);
            }
            L4::Icmp { typ, code, rest } => {
                b.extend_from_slice(&[*typ, *code, 0, 0]);
                b.extend_from_slice(&rest.to_be_bytes());
                b.extend_from_slice(&self.payload);
                self.icmp_csum(&mut b);
            }
            L4::Raw { .. } => b.extend_from_slice(&self.payload),
        }
        b
    }

    fn icmp_csum(&self, b: &mut [u8]) {
        let c = if self.src.is_ipv4() {
            fold(sum(b))
        } else {
            fold(self.pseudo_sum(b.len()) + sum(b))
        };
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }

    fn pseudo_sum(&self, l4_len: usize) -> u32 {
        let mut s = 0u32;
        s += sum(&addr_bytes(self.src));
        s += sum(&addr_bytes(self.dst));
        s += self.proto() as u32;
        s += l4_len as u32;
        s
    }

    /// The IP datagram (no Ethernet header).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = match self.frag {
            // A later fragment carries a slice of payload, not an L4 header.
            Some((off, _)) if off > 0 => self.payload.clone(),
            _ => self.l4_bytes(),
        };
        let mut b = Vec::new();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut opts = self.v4_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let hl = 20 + opts.len();
                b.push(0x40 | (hl / 4) as u8);
                b.push(0);
                b.extend_from_slice(&((hl + l4.len()) as u16).to_be_bytes());
                b.extend_from_slice(&self.ip_id.to_be_bytes());
                let (off, mf) = self.frag.unwrap_or((0, false));
                let ff = (if self.df { 0x4000 } else { 0 }) | (if mf { 0x2000 } else { 0 }) | off;
                b.extend_from_slice(&ff.to_be_bytes());
                b.push(self.ttl);
                b.push(self.proto());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
                b.extend_from_slice(&opts);
                let c = fold(sum(&b));
                b[10..12].copy_from_slice(&c.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                // Extension headers: each 8 bytes, PadN-filled.
                let mut ext = Vec::new();
                let mut kinds: Vec<u8> = self.v6_ext.clone();
                if let Some((off, mf)) = self.frag {
                    kinds.push(44);
                    let _ = (off, mf);
                }
                for (i, &k) in kinds.iter().enumerate() {
                    let next = kinds.get(i + 1).copied().unwrap_or(self.proto());
                    if k == 44 {
                        let (off, mf) = self.frag.unwrap_or((0, false));
                        ext.push(next);
                        ext.push(0);
                        ext.extend_from_slice(&((off << 3) | mf as u16).to_be_bytes());
                        ext.extend_from_slice(&0xdead_beefu32.to_be_bytes());
                    } else {
                        ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                    }
                }
                let first = kinds.first().copied().unwrap_or(self.proto());
                b.extend_from_slice(&[0x60, 0, 0, 0]);
                b.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                b.push(first);
                b.push(self.ttl);
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
                b.extend_from_slice(&ext);
            }
            _ => panic!("mixed families in test packet"),
        }
        b.extend_from_slice(&l4);
        b
    }

    /// The whole Ethernet frame.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.eth_dst);
        b.extend_from_slice(&self.eth_src);
        for v in &self.vlans {
            b.extend_from_slice(&[0x81, 0x00]);
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(if self.src.is_ipv4() {
            &[0x08, 0x00]
        } else {
            &[0x86, 0xdd]
        });
        b.extend_from_slice(&self.ip_bytes());
        b
    }
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn sum(b: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in b.chunks(2) {
        s += if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]]) as u32
        } else {
            (c[0] as u32) << 8
        };
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Verifies every checksum of a frame with `etherparse` (an implementation
/// independent of `packet/`): IPv4 header, TCP/UDP/ICMPv4/ICMPv6, and SCTP's
/// CRC32c. Panics with a description when one is wrong.
pub fn verify_checksums(frame: &[u8]) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let sp = SlicedPacket::from_ethernet(frame)
        .unwrap_or_else(|e| panic!("etherparse cannot parse output: {e:?}"));
    let net = sp.net.as_ref().expect("no network layer");
    match net {
        NetSlice::Ipv4(v4) => {
            let h = v4.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
        }
        NetSlice::Ipv6(_) => {}
        #[allow(unreachable_patterns)]
        _ => {}
    }
    let (src, dst): (Vec<u8>, Vec<u8>) = match net {
        NetSlice::Ipv4(v4) => (
            v4.header().source().to_vec(),
            v4.header().destination().to_vec(),
        ),
        NetSlice::Ipv6(v6) => (
            v6.header().source().to_vec(),
            v6.header().destination().to_vec(),
        ),
        #[allow(unreachable_patterns)]
        _ => return,
    };
    let is_fragment = match net {
        NetSlice::Ipv4(v4) => v4.payload().fragmented,
        NetSlice::Ipv6(v6) => v6.payload().fragmented,
        #[allow(unreachable_patterns)]
        _ => false,
    };
    if is_fragment {
        return;
    }
    let v4 = src.len() == 4;
    match &sp.transport {
        Some(TransportSlice::Tcp(t)) => {
            let h = t.to_header();
            let c = if v4 {
                h.calc_checksum_ipv4_raw(
                    src[..4].try_into().unwrap(),
                    dst[..4].try_into().unwrap(),
                    t.payload(),
                )
                .unwrap()
            } else {
                h.calc_checksum_ipv6_raw(
                    src[..].try_into().unwrap(),
                    dst[..].try_into().unwrap(),
                    t.payload(),
                )
                .unwrap()
            };
            assert_eq!(h.checksum, c, "TCP checksum");
        }
        Some(TransportSlice::Udp(u)) => {
            let h = u.to_header();
            if v4 && h.checksum == 0 {
                return;
            }
            let c = if v4 {
                h.calc_checksum_ipv4_raw(
                    src[..4].try_into().unwrap(),
                    dst[..4].try_into().unwrap(),
                    u.payload(),
                )
                .unwrap()
            } else {
                h.calc_checksum_ipv6_raw(
                    src[..].try_into().unwrap(),
                    dst[..].try_into().unwrap(),
                    u.payload(),
                )
                .unwrap()
            };
            assert_eq!(h.checksum, c, "UDP checksum");
        }
        Some(TransportSlice::Icmpv4(i)) => {
            let h = i.header();
            let c =
                etherparse::Icmpv4Header::with_checksum(h.icmp_type.clone(), i.payload()).checksum;
            assert_eq!(h.checksum, c, "ICMPv4 checksum");
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let h = i.header();
            let c = etherparse::Icmpv6Header::with_checksum(
                h.icmp_type,
                src[..].try_into().unwrap(),
                dst[..].try_into().unwrap(),
                i.payload(),
            )
            .unwrap()
            .checksum;
            assert_eq!(h.checksum, c, "ICMPv6 checksum");
        }
        None => {
            // SCTP (etherparse does not know it): CRC32c over the packet with
            // the checksum field zeroed, stored little-endian.
            let ip_payload = match net {
                NetSlice::Ipv4(v4) => (v4.payload().ip_number.0, v4.payload().payload),
                NetSlice::Ipv6(v6) => (v6.payload().ip_number.0, v6.payload().payload),
                #[allow(unreachable_patterns)]
                _ => return,
            };
            if ip_payload.0 == 132 && ip_payload.1.len() >= 12 {
                let mut s = ip_payload.1.to_vec();
                let stored = u32::from_le_bytes(s[8..12].try_into().unwrap());
                s[8..12].copy_from_slice(&[0; 4]);
                assert_eq!(stored, crc32c::crc32c(&s), "SCTP CRC32c");
            }
        }
    }
}

/// The golden world: examples/golden/services.yaml compiled for node-a, SNAT
/// ports 40000-40999.
pub fn golden_tables() -> edgeplane_dataplane::Tables {
    compile_fixture(include_str!("../../examples/golden/services.yaml"), 1)
}

/// Compiles manifest text for node-a (198.18.1.1, 2001:db8:1::1).
pub fn compile_fixture(yaml: &str, generation: u64) -> edgeplane_dataplane::Tables {
    use edgeplane_control::compile::{compile, CompileOptions};
    let (objects, diags) = edgeplane_control::manifests::load_str("fixture.yaml", yaml);
    assert!(diags.is_empty(), "fixture diagnostics: {diags:?}");
    let opts = CompileOptions {
        node_name: "node-a".into(),
        node_ips: vec![ip("198.18.1.1"), ip("2001:db8:1::1")],
        snat_ports: (40000, 40999),
        ..CompileOptions::default()
    };
    compile(&objects, &opts, generation)
        .expect("fixture compiles")
        .tables
}
