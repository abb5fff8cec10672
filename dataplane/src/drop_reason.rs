//! Every drop has a stable numeric code with a name (after Cilium's
//! `drop_reasons.h`). Metrics, logs, `replay` output and docs/drop-reasons.md
//! all use these codes and names. Codes are never renumbered or reused.

use edgeplane_packet::ParseError;

/// Why the engine dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DropReason {
    /// The frame ends inside a header.
    Truncated = 1,
    /// More than two VLAN tags.
    TooManyVlans = 2,
    /// IP version field disagrees with the EtherType.
    BadIpVersion = 3,
    /// IPv4 header length field invalid.
    BadIhl = 4,
    /// IP length field inconsistent with the frame.
    BadLength = 5,
    /// IPv4 header checksum wrong.
    BadIpChecksum = 6,
    /// IPv6 extension-header chain too long or past the end.
    BadExtHeader = 7,
    /// TCP data offset invalid.
    BadTcpHeader = 8,
    /// UDP length inconsistent with the datagram.
    BadUdpLength = 9,
    /// A non-first IP fragment addressed to a frontend: without the L4 header
    /// the flow cannot be identified (fragment reassembly is not supported).
    Fragment = 10,
    /// Addressed to a frontend IP on a port/protocol no Service declares.
    UnknownServicePort = 11,
    /// `externalTrafficPolicy: Local` / `internalTrafficPolicy: Local` and this
    /// node has no usable local endpoint (kube-proxy drops these too).
    NoLocalEndpoints = 12,
    /// Every SNAT port of this worker's range is in use by a live flow.
    SnatPortsExhausted = 13,
    /// The conntrack table is full of confirmed flows in this flow's probe
    /// window; the new flow cannot be NATed without state.
    ConntrackFull = 14,
    /// A packet in the reply direction (to the SNAT address and port range)
    /// with no conntrack entry.
    NoConntrackEntry = 15,
    /// An ICMP error that quotes no tracked flow, or an ICMP type that is not
    /// translated, addressed to a frontend or SNAT address.
    UnsupportedIcmp = 16,
    /// A transport protocol the dataplane does not translate, addressed to a
    /// frontend IP.
    UnsupportedProtocol = 17,
    /// The frame is too large for the output buffer after translation.
    FrameTooLarge = 18,
    /// The source address is not in the Service's `loadBalancerSourceRanges`.
    SourceRangeDenied = 19,
    /// The flow's backend was removed and the flow is UDP/SCTP: its state was
    /// dropped (kube-proxy's stale-UDP cleanup).
    BackendGone = 20,
    /// A non-SYN TCP segment of an unknown flow (no conntrack entry): the
    /// backend would only answer it with a RST.
    TcpNoSyn = 21,
}

impl DropReason {
    /// Every reason, in code order.
    pub const ALL: [DropReason; 21] = [
        DropReason::Truncated,
        DropReason::TooManyVlans,
        DropReason::BadIpVersion,
        DropReason::BadIhl,
        DropReason::BadLength,
        DropReason::BadIpChecksum,
        DropReason::BadExtHeader,
        DropReason::BadTcpHeader,
        DropReason::BadUdpLength,
        DropReason::Fragment,
        DropReason::UnknownServicePort,
        DropReason::NoLocalEndpoints,
        DropReason::SnatPortsExhausted,
        DropReason::ConntrackFull,
        DropReason::NoConntrackEntry,
        DropReason::UnsupportedIcmp,
        DropReason::UnsupportedProtocol,
        DropReason::FrameTooLarge,
        DropReason::SourceRangeDenied,
        DropReason::BackendGone,
        DropReason::TcpNoSyn,
    ];
    /// One past the largest code: size of per-reason counter arrays.
    pub const COUNT: usize = 22;

    /// The stable numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The stable snake_case name used in metrics, logs and JSON.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::TooManyVlans => "too_many_vlans",
            DropReason::BadIpVersion => "bad_ip_version",
            DropReason::BadIhl => "bad_ihl",
            DropReason::BadLength => "bad_length",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::BadExtHeader => "bad_ext_header",
            DropReason::BadTcpHeader => "bad_tcp_header",
            DropReason::BadUdpLength => "bad_udp_length",
            DropReason::Fragment => "fragment",
            DropReason::UnknownServicePort => "unknown_service_port",
            DropReason::NoLocalEndpoints => "no_local_endpoints",
            DropReason::SnatPortsExhausted => "snat_ports_exhausted",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::NoConntrackEntry => "no_conntrack_entry",
            DropReason::UnsupportedIcmp => "unsupported_icmp",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::FrameTooLarge => "frame_too_large",
            DropReason::SourceRangeDenied => "source_range_denied",
            DropReason::BackendGone => "backend_gone",
            DropReason::TcpNoSyn => "tcp_no_syn",
        }
    }

    /// Looks a reason up by its code.
    pub fn from_code(code: u8) -> Option<DropReason> {
        DropReason::ALL.iter().copied().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<ParseError> for DropReason {
    fn from(e: ParseError) -> Self {
        match e {
            // NotIp never becomes a drop: the engine passes such frames.
            ParseError::NotIp | ParseError::Truncated => DropReason::Truncated,
            ParseError::TooManyVlans => DropReason::TooManyVlans,
            ParseError::BadIpVersion => DropReason::BadIpVersion,
            ParseError::BadIhl => DropReason::BadIhl,
            ParseError::BadLength => DropReason::BadLength,
            ParseError::BadIpChecksum => DropReason::BadIpChecksum,
            ParseError::BadExtHeader => DropReason::BadExtHeader,
            ParseError::BadTcpHeader => DropReason::BadTcpHeader,
            ParseError::BadUdpLength => DropReason::BadUdpLength,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in DropReason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert!((r.code() as usize) < DropReason::COUNT);
            assert_eq!(DropReason::from_code(r.code()), Some(r));
        }
        assert_eq!(DropReason::from_code(0), None);
    }
}

#[cfg(test)]
mod doc_tests {
    use super::DropReason;

    /// docs/drop-reasons.md lists every code with its name, in order.
    #[test]
    fn docs_list_every_reason() {
        let doc = include_str!("../../docs/drop-reasons.md");
        let rows: Vec<(u8, String)> = doc
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells.get(1)?.parse::<u8>().ok()?;
                Some((code, cells.get(2)?.trim_matches('`').to_string()))
            })
            .collect();
        let want: Vec<(u8, String)> = DropReason::ALL
            .iter()
            .map(|r| (r.code(), r.name().to_string()))
            .collect();
        assert_eq!(rows, want, "docs/drop-reasons.md is out of date");
    }
}
