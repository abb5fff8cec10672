//! Test-frame builder for this crate's unit tests. (The workspace's golden
//! table builds its frames with `tests/support`, which deliberately shares no
//! code with this crate, so that its byte comparisons check this crate's
//! checksums against an independent implementation.) **Not for the packet path**: it allocates (`Vec<u8>`) and panics on
//! a contradictory description (see [`FrameBuilder::build`]).
//!
//! ```
//! use edgeplane_packet::testing::{FrameBuilder, TCP_SYN};
//! let frame = FrameBuilder::new()
//!     .vlan(100)
//!     .ip("198.18.0.1".parse().unwrap(), "198.18.100.10".parse().unwrap())
//!     .tcp(40000, 80, TCP_SYN, 1000, 0)
//!     .payload(b"hello")
//!     .build();
//! let p = edgeplane_packet::parse(&frame).unwrap();
//! assert_eq!((p.vlans, p.sport, p.dport), (1, 40000, 80));
//! ```
//!
//! Every checksum is valid: IPv4 header, TCP/UDP/ICMPv6 with the
//! pseudo-header, ICMPv4, SCTP CRC32c. Frames have no Ethernet padding.

use crate::checksum;
use crate::ethernet::ethertype;
use std::net::IpAddr;

pub const TCP_FIN: u8 = crate::tcp::flags::FIN;
pub const TCP_SYN: u8 = crate::tcp::flags::SYN;
pub const TCP_RST: u8 = crate::tcp::flags::RST;
pub const TCP_PSH: u8 = crate::tcp::flags::PSH;
pub const TCP_ACK: u8 = crate::tcp::flags::ACK;

/// Default source MAC of built frames.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Default destination MAC of built frames.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Debug, Clone, PartialEq, Eq)]
enum L4 {
    Raw(u8),
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
        zero_checksum: bool,
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
    Icmp {
        msg_type: u8,
        code: u8,
        rest: u32,
    },
}

/// Fluent description of a test frame. Defaults: MACs [`SRC_MAC`] →
/// [`DST_MAC`], no VLAN tag, TTL 64, IPv4 ID 0 with DF set, raw protocol 253
/// (RFC 3692 experimentation) with an empty payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlans: Vec<(u16, u16)>,
    addrs: Option<(IpAddr, IpAddr)>,
    ttl: u8,
    ip_id: u16,
    df: bool,
    l4: L4,
    payload: Vec<u8>,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameBuilder {
    pub fn new() -> Self {
        FrameBuilder {
            src_mac: SRC_MAC,
            dst_mac: DST_MAC,
            vlans: Vec::new(),
            addrs: None,
            ttl: 64,
            ip_id: 0,
            df: true,
            l4: L4::Raw(253),
            payload: Vec::new(),
        }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds an 802.1Q tag (TPID 0x8100) with this TCI; tags are emitted in
    /// call order, outermost first.
    pub fn vlan(mut self, tci: u16) -> Self {
        self.vlans.push((ethertype::VLAN, tci));
        self
    }

    /// Adds an 802.1ad service tag (TPID 0x88a8) with this TCI.
    pub fn qinq(mut self, tci: u16) -> Self {
        self.vlans.push((ethertype::QINQ, tci));
        self
    }

    /// Source and destination addresses (both of one family).
    pub fn ip(mut self, src: IpAddr, dst: IpAddr) -> Self {
        self.addrs = Some((src, dst));
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// IPv4 identification and Don't Fragment flag.
    pub fn ipv4_id(mut self, id: u16, dont_frag: bool) -> Self {
        self.ip_id = id;
        self.df = dont_frag;
        self
    }

    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Self {
        self.l4 = L4::Tcp {
            sport,
            dport,
            flags,
            seq,
            ack,
        };
        self
    }

    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = L4::Udp {
            sport,
            dport,
            zero_checksum: false,
        };
        self
    }

    /// UDP with checksum 0 ("none"; only meaningful over IPv4).
    pub fn udp_no_checksum(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = L4::Udp {
            sport,
            dport,
            zero_checksum: true,
        };
        self
    }

    /// SCTP common header; the payload is the chunks.
    pub fn sctp(mut self, sport: u16, dport: u16, vtag: u32) -> Self {
        self.l4 = L4::Sctp { sport, dport, vtag };
        self
    }

    /// ICMP echo request (type 8 or 128 by family).
    pub fn icmp_echo_request(mut self, id: u16, seq: u16) -> Self {
        self.l4 = L4::Echo {
            request: true,
            id,
            seq,
        };
        self
    }

    /// ICMP echo reply (type 0 or 129 by family).
    pub fn icmp_echo_reply(mut self, id: u16, seq: u16) -> Self {
        self.l4 = L4::Echo {
            request: false,
            id,
            seq,
        };
        self
    }

    /// Any ICMP (v4 or v6 by family) message: type, code, the 4 type-specific
    /// bytes; the payload follows (for an error: the quoted datagram, e.g.
    /// `&frame[14..]` of another built frame).
    pub fn icmp(mut self, msg_type: u8, code: u8, rest: u32) -> Self {
        self.l4 = L4::Icmp {
            msg_type,
            code,
            rest,
        };
        self
    }

    /// A protocol the builder knows nothing about: the payload follows the IP
    /// header directly.
    pub fn raw(mut self, proto: u8) -> Self {
        self.l4 = L4::Raw(proto);
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Builds the frame.
    ///
    /// # Panics
    /// If no addresses were given, if they are of different families, or if
    /// the datagram exceeds 65535 bytes.
    pub fn build(&self) -> Vec<u8> {
        let (src, dst) = self.addrs.expect("FrameBuilder: call .ip(src, dst)");
        let v6 = match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => false,
            (IpAddr::V6(_), IpAddr::V6(_)) => true,
            _ => panic!("FrameBuilder: mixed address families"),
        };
        let (proto, mut l4) = self.l4_bytes(v6);
        let l4_len = l4.len();
        // Checksums that need the pseudo-header.
        let ph = |proto: u8| match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                checksum::pseudo_header_v4(&s.octets(), &d.octets(), proto, l4_len as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                checksum::pseudo_header_v6(&s.octets(), &d.octets(), proto, l4_len as u32)
            }
            _ => unreachable!(),
        };
        let csum_at = match &self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp {
                zero_checksum: false,
                ..
            } => Some(6),
            L4::Echo { .. } | L4::Icmp { .. } => Some(2),
            _ => None,
        };
        if let Some(at) = csum_at {
            let pseudo = if proto == 1 { 0 } else { ph(proto) };
            let mut c = checksum::finish(checksum::add(pseudo, checksum::sum(&l4)));
            if proto == 17 && c == 0 {
                c = 0xffff;
            }
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        if let L4::Sctp { .. } = self.l4 {
            let crc = checksum::sctp_crc32c(&l4).expect("12-byte header");
            l4[8..12].copy_from_slice(&crc.to_le_bytes());
        }

        let mut f = Vec::with_capacity(14 + 4 * self.vlans.len() + 40 + l4_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ethertype::IPV4.to_be_bytes());
                let total = u16::try_from(20 + l4_len).expect("datagram too long");
                let mut h = [0u8; 20];
                h[0] = 0x45;
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
                if self.df {
                    h[6] = 0x40;
                }
                h[8] = self.ttl;
                h[9] = proto;
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let c = checksum::finish(checksum::sum(&h));
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ethertype::IPV6.to_be_bytes());
                let plen = u16::try_from(l4_len).expect("datagram too long");
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&plen.to_be_bytes());
                f.push(proto);
                f.push(self.ttl);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => unreachable!(),
        }
        f.extend_from_slice(&l4);
        f
    }

    /// The transport header + payload with checksum fields zeroed.
    fn l4_bytes(&self, v6: bool) -> (u8, Vec<u8>) {
        let mut b = Vec::with_capacity(20 + self.payload.len());
        let proto = match self.l4 {
            L4::Raw(proto) => proto,
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
            } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                b.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
                6
            }
            L4::Udp { sport, dport, .. } => {
                let len = u16::try_from(8 + self.payload.len()).expect("datagram too long");
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                17
            }
            L4::Sctp { sport, dport, vtag } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&vtag.to_be_bytes());
                b.extend_from_slice(&[0; 4]);
                132
            }
            L4::Echo { request, id, seq } => {
                let t = match (v6, request) {
                    (false, true) => 8,
                    (false, false) => 0,
                    (true, true) => 128,
                    (true, false) => 129,
                };
                b.extend_from_slice(&[t, 0, 0, 0]);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                if v6 {
                    58
                } else {
                    1
                }
            }
            L4::Icmp {
                msg_type,
                code,
                rest,
            } => {
                b.extend_from_slice(&[msg_type, code, 0, 0]);
                b.extend_from_slice(&rest.to_be_bytes());
                if v6 {
                    58
                } else {
                    1
                }
            }
        };
        b.extend_from_slice(&self.payload);
        (proto, b)
    }
}
