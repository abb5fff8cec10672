//! Crate-level tests: parse cases, an etherparse cross-check of every
//! checksum after rewrite, the builders, and robustness proptests.

mod builders;
mod crosscheck;
mod parse_cases;
mod robustness;

use crate::testing::FrameBuilder;
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use std::net::IpAddr;

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn v4_udp() -> Vec<u8> {
    FrameBuilder::new()
        .ip(ip("10.0.0.1"), ip("10.0.0.2"))
        .udp(5000, 53)
        .payload(b"query")
        .build()
}

/// Verifies, with etherparse as the independent implementation, the IPv4
/// header checksum and the TCP/UDP/ICMP/ICMPv6 checksum of a frame whose L4
/// payload is complete. A zero UDP-over-IPv4 checksum is accepted as "none".
/// Returns the parsed headers for further checks.
pub(crate) fn verify_checksums(frame: &[u8]) -> PacketHeaders<'_> {
    let h = PacketHeaders::from_ethernet_slice(frame).expect("etherparse parses the frame");
    let payload = h.payload.slice();
    match (&h.net, &h.transport) {
        (Some(NetHeaders::Ipv4(ip4, _)), t) => {
            assert_eq!(
                ip4.calc_header_checksum(),
                ip4.header_checksum,
                "IPv4 header checksum"
            );
            match t {
                Some(TransportHeader::Tcp(tcp)) => {
                    assert_eq!(
                        tcp.calc_checksum_ipv4(ip4, payload).unwrap(),
                        tcp.checksum,
                        "TCP/IPv4"
                    )
                }
                Some(TransportHeader::Udp(udp)) if udp.checksum != 0 => assert_eq!(
                    udp.calc_checksum_ipv4(ip4, payload).unwrap(),
                    udp.checksum,
                    "UDP/IPv4"
                ),
                Some(TransportHeader::Icmpv4(icmp)) => {
                    assert_eq!(
                        icmp.icmp_type.calc_checksum(payload),
                        icmp.checksum,
                        "ICMPv4"
                    )
                }
                _ => {}
            }
        }
        (Some(NetHeaders::Ipv6(ip6, _)), t) => match t {
            Some(TransportHeader::Tcp(tcp)) => {
                assert_eq!(
                    tcp.calc_checksum_ipv6(ip6, payload).unwrap(),
                    tcp.checksum,
                    "TCP/IPv6"
                )
            }
            Some(TransportHeader::Udp(udp)) => {
                assert_eq!(
                    udp.calc_checksum_ipv6(ip6, payload).unwrap(),
                    udp.checksum,
                    "UDP/IPv6"
                )
            }
            Some(TransportHeader::Icmpv6(icmp)) => assert_eq!(
                icmp.icmp_type
                    .calc_checksum(ip6.source, ip6.destination, payload)
                    .unwrap(),
                icmp.checksum,
                "ICMPv6"
            ),
            _ => {}
        },
        _ => panic!("no IP header"),
    }
    h
}
