//! Zero-copy views over Ethernet frames, in-place rewrite with incremental
//! checksums, and builders for the few frames the dataplane originates
//! (ICMP errors, TCP RST).
//!
//! # Contract
//! * [`parse()`] validates a frame once and returns a small `Copy` summary
//!   ([`Parsed`]) of offsets and header fields. After a successful parse, every
//!   accessor and rewrite helper in this crate that is given the same frame and
//!   that summary is in bounds and cannot panic.
//! * Nothing here allocates, except the `Repr`/builder helpers marked as such,
//!   which the per-packet path never calls.
//! * No function panics on any input bytes.

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod parse;
pub mod rewrite;
pub mod sctp;
pub mod tcp;
pub mod udp;

pub use parse::{parse, Frag, IcmpKind, InnerPacket, IpFamily, ParseError, Parsed, Proto};
pub use rewrite::{rewrite_icmp_error, rewrite_tuple, RewriteError, Tuple};
