//! Frame generation for `edgeplane pktgen send`: one template frame per run,
//! patched in place per packet (addresses, source port, sequence number and
//! the checksums, updated from precomputed sums), so a frame costs a few
//! dozen byte writes however large it is.
//!
//! # Frame layout
//!
//! ```text
//! Ethernet | IPv4 (20) or IPv6 (40) | TCP (20) or UDP (8) | "EPG1" | seq (u32) | zero padding
//! ```
//!
//! The 4-byte magic tells the sink which frames are the generator's; the
//! sequence number changes every frame (so every frame's L4 checksum is
//! different and a checksum error cannot hide behind a constant frame).
//!
//! # Flows
//!
//! Flow `f` is the tuple `(src_base + (f / ports) % srcs, 1024 + f % ports)
//! → (dst_base + f % dsts, dst_port)`: consecutive flows spread over the
//! destinations (Services) and over source ports first. [`FlowPattern`]
//! maps the packet counter to a flow: always 0, round-robin over `n`, or a
//! new flow per packet (SYN-flood-like; it wraps after `srcs × ports`
//! tuples).

use std::net::IpAddr;

use serde::Serialize;

/// Marks a generator frame (first bytes of the L4 payload).
pub const MAGIC: [u8; 4] = *b"EPG1";
/// Ethernet header length (no VLAN tag).
pub const ETH_LEN: usize = 14;
/// First source port of the flow space.
pub const SRC_PORT_LO: u16 = 1024;
/// Source ports per source address.
pub const SRC_PORTS: u32 = 65536 - SRC_PORT_LO as u32;

/// What each frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    /// TCP SYN (a connection attempt: conntrack inserts on every new flow).
    Syn,
    /// TCP ACK with data offsets of an established connection.
    Ack,
    /// UDP datagram.
    Udp,
}

impl Proto {
    fn l4_len(self) -> usize {
        match self {
            Proto::Syn | Proto::Ack => 20,
            Proto::Udp => 8,
        }
    }
    fn ip_proto(self) -> u8 {
        match self {
            Proto::Syn | Proto::Ack => 6,
            Proto::Udp => 17,
        }
    }
}

/// How the packet counter maps to flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowPattern {
    /// Every frame on flow 0.
    One,
    /// Round-robin over this many flows.
    Many(u64),
    /// A new flow per frame (wraps after the flow space).
    NewPerPacket,
}

/// Everything that shapes the frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// First source address; flows use `src_count` consecutive ones.
    pub src_base: IpAddr,
    pub src_count: u32,
    /// First destination address (a Service's IP); flows use `dst_count`
    /// consecutive ones.
    pub dst_base: IpAddr,
    pub dst_count: u32,
    pub dst_port: u16,
    pub proto: Proto,
    /// Frame length without FCS; `None`: the larger of 64 and the smallest
    /// frame that holds the headers and the 8-byte payload.
    pub size: Option<usize>,
    pub pattern: FlowPattern,
}

/// A spec that cannot make frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    MixedFamilies,
    SizeTooSmall { size: usize, min: usize },
    SizeTooLarge { size: usize, max: usize },
    ZeroCount(&'static str),
    ZeroFlows,
}

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpecError::MixedFamilies => {
                write!(f, "source and destination addresses must be of one family")
            }
            SpecError::SizeTooSmall { size, min } => write!(
                f,
                "--size {size} is below the smallest frame for these headers ({min} bytes)"
            ),
            SpecError::SizeTooLarge { size, max } => {
                write!(f, "--size {size} is above the largest frame ({max} bytes)")
            }
            SpecError::ZeroCount(what) => write!(f, "{what} must be at least 1"),
            SpecError::ZeroFlows => write!(f, "--flows must be at least 1"),
        }
    }
}

impl std::error::Error for SpecError {}

/// Largest frame the generator builds (one 2048-byte UMEM chunk, no jumbo).
pub const MAX_FRAME: usize = 1514;

/// Sum of big-endian 16-bit words (an odd last byte is the high byte).
pub fn sum16(bytes: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut it = bytes.chunks_exact(2);
    for w in &mut it {
        s = s.wrapping_add(u16::from_be_bytes([w[0], w[1]]) as u32);
    }
    if let [b] = it.remainder() {
        s = s.wrapping_add((*b as u32) << 8);
    }
    s
}

/// Folds a 32-bit one's-complement sum to 16 bits.
pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn addr_bytes(ip: IpAddr) -> ([u8; 16], usize) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

/// `base + i` (wrapping within the family).
pub fn nth_addr(base: IpAddr, i: u32) -> IpAddr {
    match base {
        IpAddr::V4(a) => IpAddr::V4(u32::from(a).wrapping_add(i).into()),
        IpAddr::V6(a) => IpAddr::V6(u128::from(a).wrapping_add(i as u128).into()),
    }
}

/// The template and what is needed to patch it per packet.
#[derive(Debug, Clone)]
pub struct FrameGen {
    template: Vec<u8>,
    v6: bool,
    /// Offset of the source address; the destination follows it.
    src_off: usize,
    addr_len: usize,
    l4_off: usize,
    l4_csum_off: usize,
    seq_off: usize,
    /// IPv4 header sum with both addresses zero (IPv6: unused).
    ip_base: u32,
    /// L4 sum (pseudo-header without addresses, header, payload) with the
    /// addresses, source port, checksum and sequence zero.
    l4_base: u32,
    udp: bool,
    spec: FrameSpec,
}

impl FrameGen {
    pub fn new(spec: &FrameSpec) -> Result<Self, SpecError> {
        let v6 = spec.src_base.is_ipv6();
        if v6 != spec.dst_base.is_ipv6() {
            return Err(SpecError::MixedFamilies);
        }
        if spec.src_count == 0 {
            return Err(SpecError::ZeroCount("--src-count"));
        }
        if spec.dst_count == 0 {
            return Err(SpecError::ZeroCount("--dst-count"));
        }
        if spec.pattern == FlowPattern::Many(0) {
            return Err(SpecError::ZeroFlows);
        }
        let ip_len = if v6 { 40 } else { 20 };
        let l4_off = ETH_LEN + ip_len;
        let l4_len = spec.proto.l4_len();
        let min = l4_off + l4_len + 8;
        let size = spec.size.unwrap_or(min.max(64));
        if size < min {
            return Err(SpecError::SizeTooSmall { size, min });
        }
        if size > MAX_FRAME {
            return Err(SpecError::SizeTooLarge {
                size,
                max: MAX_FRAME,
            });
        }
        let mut t = vec![0u8; size];
        t[0..6].copy_from_slice(&spec.dst_mac);
        t[6..12].copy_from_slice(&spec.src_mac);
        let seg_len = size - l4_off;
        let proto = spec.proto.ip_proto();
        let (src_off, addr_len) = if v6 {
            t[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            t[14] = 0x60;
            t[18..20].copy_from_slice(&(seg_len as u16).to_be_bytes());
            t[20] = proto;
            t[21] = 64;
            (22, 16)
        } else {
            t[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            t[14] = 0x45;
            t[16..18].copy_from_slice(&((size - ETH_LEN) as u16).to_be_bytes());
            t[20] = 0x40; // DF
            t[22] = 64;
            t[23] = proto;
            (26, 4)
        };
        let l4 = l4_off;
        t[l4 + 2..l4 + 4].copy_from_slice(&spec.dst_port.to_be_bytes());
        let l4_csum_off;
        match spec.proto {
            Proto::Syn | Proto::Ack => {
                let (flags, seq, ack) = if spec.proto == Proto::Syn {
                    (0x02u8, 0x1000_0000u32, 0u32)
                } else {
                    (0x10u8, 0x1000_0001u32, 0x2000_0001u32)
                };
                t[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
                t[l4 + 8..l4 + 12].copy_from_slice(&ack.to_be_bytes());
                t[l4 + 12] = 5 << 4;
                t[l4 + 13] = flags;
                t[l4 + 14..l4 + 16].copy_from_slice(&64240u16.to_be_bytes());
                l4_csum_off = l4 + 16;
            }
            Proto::Udp => {
                t[l4 + 4..l4 + 6].copy_from_slice(&(seg_len as u16).to_be_bytes());
                l4_csum_off = l4 + 6;
            }
        }
        let pay = l4 + l4_len;
        t[pay..pay + 4].copy_from_slice(&MAGIC);
        let seq_off = pay + 4;
        let ip_base = if v6 { 0 } else { sum16(&t[ETH_LEN..l4_off]) };
        // Pseudo-header without the addresses: protocol and length.
        let l4_base = sum16(&t[l4..]) + proto as u32 + seg_len as u32;
        Ok(FrameGen {
            template: t,
            v6,
            src_off,
            addr_len,
            l4_off,
            l4_csum_off,
            seq_off,
            ip_base,
            l4_base,
            udp: spec.proto == Proto::Udp,
            spec: spec.clone(),
        })
    }

    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        self.template.len()
    }

    /// Always false (a frame has headers); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.template.is_empty()
    }

    pub fn spec(&self) -> &FrameSpec {
        &self.spec
    }

    /// The template (addresses, source port, sequence and checksums zero).
    pub fn template(&self) -> &[u8] {
        &self.template
    }

    /// The flow of packet number `seq`.
    pub fn flow(&self, seq: u64) -> u64 {
        match self.spec.pattern {
            FlowPattern::One => 0,
            FlowPattern::Many(n) => seq % n,
            FlowPattern::NewPerPacket => seq % self.flow_space(),
        }
    }

    /// Distinct tuples: source addresses × source ports.
    pub fn flow_space(&self) -> u64 {
        self.spec.src_count as u64 * SRC_PORTS as u64
    }

    /// Flow `f`'s (source address, source port, destination address).
    pub fn tuple(&self, f: u64) -> (IpAddr, u16, IpAddr) {
        let ports = SRC_PORTS as u64;
        let src_i = ((f / ports) % self.spec.src_count as u64) as u32;
        let sport = SRC_PORT_LO + (f % ports) as u16;
        let dst_i = (f % self.spec.dst_count as u64) as u32;
        (
            nth_addr(self.spec.src_base, src_i),
            sport,
            nth_addr(self.spec.dst_base, dst_i),
        )
    }

    /// Copies the template into `buf` and patches it for packet `seq`.
    /// Returns the frame length. `buf` must hold [`len`](Self::len) bytes.
    pub fn write(&self, buf: &mut [u8], seq: u64) -> usize {
        let n = self.template.len();
        buf[..n].copy_from_slice(&self.template);
        self.patch(buf, seq);
        n
    }

    /// Patches a buffer that already holds the template (as every UMEM
    /// frame of the generator does) for packet `seq`: addresses, source
    /// port, sequence number, checksums.
    #[inline]
    pub fn patch(&self, buf: &mut [u8], seq: u64) {
        let (src, sport, dst) = self.tuple(self.flow(seq));
        let (s, _) = addr_bytes(src);
        let (d, _) = addr_bytes(dst);
        let al = self.addr_len;
        let so = self.src_off;
        buf[so..so + al].copy_from_slice(&s[..al]);
        buf[so + al..so + 2 * al].copy_from_slice(&d[..al]);
        let addr_sum = sum16(&s[..al]) + sum16(&d[..al]);
        if !self.v6 {
            let c = !fold(self.ip_base + addr_sum);
            buf[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
        }
        let l4 = self.l4_off;
        buf[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        let seq32 = seq as u32;
        buf[self.seq_off..self.seq_off + 4].copy_from_slice(&seq32.to_be_bytes());
        let sum = self.l4_base + addr_sum + sport as u32 + (seq32 >> 16) + (seq32 & 0xffff);
        let mut c = !fold(sum);
        if self.udp && c == 0 {
            c = 0xffff;
        }
        buf[self.l4_csum_off..self.l4_csum_off + 2].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn spec(v6: bool, proto: Proto, pattern: FlowPattern, size: Option<usize>) -> FrameSpec {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (
                "2001:db8:32::1".parse().unwrap(),
                "2001:db8:64::1".parse().unwrap(),
            )
        } else {
            (
                "198.18.32.0".parse().unwrap(),
                "198.18.64.1".parse().unwrap(),
            )
        };
        FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_base: src,
            src_count: 4,
            dst_base: dst,
            dst_count: 3,
            dst_port: 80,
            proto,
            size,
            pattern,
        }
    }

    /// Every combination parses with etherparse, with checksums that
    /// etherparse recomputes to the same values, and the expected tuple.
    #[test]
    fn frames_parse_with_valid_checksums() {
        for v6 in [false, true] {
            for proto in [Proto::Syn, Proto::Ack, Proto::Udp] {
                for size in [None, Some(200), Some(1514)] {
                    let g =
                        FrameGen::new(&spec(v6, proto, FlowPattern::NewPerPacket, size)).unwrap();
                    let mut buf = vec![0u8; 2048];
                    for seq in [0u64, 1, 2, 70_000, 0xffff_ffff, 0x1_2345_6789] {
                        let n = g.write(&mut buf, seq);
                        let f = &buf[..n];
                        let p = SlicedPacket::from_ethernet(f).unwrap();
                        let (src, sport, dst) = g.tuple(g.flow(seq));
                        let (psrc, pdst, payload_ok) = match p.net.unwrap() {
                            NetSlice::Ipv4(ip) => {
                                let h = ip.header();
                                let hdr = h.to_header();
                                assert_eq!(hdr.header_checksum, hdr.calc_header_checksum());
                                (
                                    IpAddr::V4(h.source_addr()),
                                    IpAddr::V4(h.destination_addr()),
                                    true,
                                )
                            }
                            NetSlice::Ipv6(ip) => (
                                IpAddr::V6(ip.header().source_addr()),
                                IpAddr::V6(ip.header().destination_addr()),
                                true,
                            ),
                        };
                        assert!(payload_ok);
                        assert_eq!((psrc, pdst), (src, dst));
                        let l4_payload: &[u8] = match p.transport.unwrap() {
                            TransportSlice::Tcp(t) => {
                                assert_eq!(t.source_port(), sport);
                                assert_eq!(t.destination_port(), 80);
                                assert_eq!(t.syn(), proto == Proto::Syn);
                                assert_eq!(t.ack(), proto == Proto::Ack);
                                let want = match (psrc, pdst) {
                                    (IpAddr::V4(s), IpAddr::V4(d)) => t
                                        .to_header()
                                        .calc_checksum_ipv4_raw(s.octets(), d.octets(), t.payload())
                                        .unwrap(),
                                    (IpAddr::V6(s), IpAddr::V6(d)) => t
                                        .to_header()
                                        .calc_checksum_ipv6_raw(s.octets(), d.octets(), t.payload())
                                        .unwrap(),
                                    _ => unreachable!(),
                                };
                                assert_eq!(t.checksum(), want, "v6={v6} {proto:?} seq {seq}");
                                t.payload()
                            }
                            TransportSlice::Udp(u) => {
                                assert_eq!(u.source_port(), sport);
                                let want = match (psrc, pdst) {
                                    (IpAddr::V4(s), IpAddr::V4(d)) => u
                                        .to_header()
                                        .calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload())
                                        .unwrap(),
                                    (IpAddr::V6(s), IpAddr::V6(d)) => u
                                        .to_header()
                                        .calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload())
                                        .unwrap(),
                                    _ => unreachable!(),
                                };
                                assert_eq!(u.checksum(), want, "v6={v6} udp seq {seq}");
                                u.payload()
                            }
                            _ => panic!("no transport"),
                        };
                        assert_eq!(&l4_payload[..4], &MAGIC);
                        assert_eq!(&l4_payload[4..8], &(seq as u32).to_be_bytes());
                        let min = ETH_LEN + if v6 { 40 } else { 20 } + proto.l4_len() + 8;
                        assert_eq!(n, size.unwrap_or(min.max(64)));
                    }
                }
            }
        }
    }

    #[test]
    fn patch_over_template_equals_write() {
        let g = FrameGen::new(&spec(false, Proto::Udp, FlowPattern::Many(10), None)).unwrap();
        let mut a = g.template().to_vec();
        let mut b = vec![0u8; g.len()];
        for seq in 0..50 {
            g.patch(&mut a, seq);
            g.write(&mut b, seq);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn flow_patterns() {
        let one = FrameGen::new(&spec(false, Proto::Syn, FlowPattern::One, None)).unwrap();
        assert!((0..100).all(|s| one.flow(s) == 0));
        let many = FrameGen::new(&spec(false, Proto::Syn, FlowPattern::Many(7), None)).unwrap();
        let set: std::collections::HashSet<_> =
            (0..100).map(|s| many.tuple(many.flow(s))).collect();
        assert_eq!(set.len(), 7);
        let new = FrameGen::new(&spec(false, Proto::Syn, FlowPattern::NewPerPacket, None)).unwrap();
        let set: std::collections::HashSet<_> =
            (0..200_000).map(|s| new.tuple(new.flow(s))).collect();
        assert_eq!(set.len(), 200_000);
        // Destinations spread over all Services.
        let dsts: std::collections::HashSet<_> = (0..3).map(|s| new.tuple(s).2).collect();
        assert_eq!(dsts.len(), 3);
    }

    #[test]
    fn bad_specs_are_errors() {
        let mut s = spec(false, Proto::Syn, FlowPattern::One, Some(40));
        assert_eq!(
            FrameGen::new(&s).unwrap_err(),
            SpecError::SizeTooSmall { size: 40, min: 62 }
        );
        s.size = Some(9000);
        assert!(matches!(
            FrameGen::new(&s),
            Err(SpecError::SizeTooLarge { .. })
        ));
        s.size = None;
        s.dst_base = "2001:db8::1".parse().unwrap();
        assert_eq!(FrameGen::new(&s).unwrap_err(), SpecError::MixedFamilies);
        let mut s = spec(false, Proto::Udp, FlowPattern::Many(0), None);
        assert_eq!(FrameGen::new(&s).unwrap_err(), SpecError::ZeroFlows);
        s.pattern = FlowPattern::One;
        s.dst_count = 0;
        assert!(matches!(FrameGen::new(&s), Err(SpecError::ZeroCount(_))));
    }
}
