//! In-place NAT rewrite with incremental checksum updates.
use crate::Parsed;
use std::net::IpAddr;

/// The addresses and ports a packet should carry after translation. For ICMP
/// echo, the identifier is the source port of a request and the destination
/// port of a reply (as in Linux conntrack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// Why a rewrite could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewriteError {
    /// The new addresses are of another family than the packet.
    FamilyMismatch,
    /// The frame has no L4 header to rewrite (later fragment) or it is truncated.
    NoL4Header,
}

/// Rewrites addresses and ports of the outer packet.
pub fn rewrite_tuple(_frame: &mut [u8], _p: &Parsed, _new: &Tuple) -> Result<(), RewriteError> {
    Err(RewriteError::NoL4Header)
}

/// Rewrites an ICMP error: outer destination and the quoted datagram.
pub fn rewrite_icmp_error(
    _frame: &mut [u8],
    _p: &Parsed,
    _outer_src: Option<IpAddr>,
    _outer_dst: IpAddr,
    _inner: &Tuple,
) -> Result<(), RewriteError> {
    Err(RewriteError::NoL4Header)
}
