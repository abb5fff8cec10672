//! Zero-copy views over Ethernet frames, in-place rewrite with incremental
//! checksums, and builders for the few frames the dataplane originates
//! (ICMP errors, TCP RST).
//!
//! # Contract
//! * [`parse()`] validates a frame once and returns a small `Copy` summary
//!   ([`Parsed`]) of offsets and header fields. After a successful parse, every
//!   accessor and rewrite helper in this crate that is given the same frame and
//!   that summary is in bounds and cannot panic.
//! * Nothing here allocates, except [`testing`], which the per-packet path
//!   never calls.
//! * No function panics on any input bytes.
//! * No `unsafe`.
//!
//! # Layout
//! * Typed views, one per header, in smoltcp's style (`Packet<T: AsRef<[u8]>>`
//!   with `new_checked` / `new_unchecked`, `field` byte ranges, getters and
//!   setters): [`ethernet`], [`ipv4`], [`ipv6`], [`tcp`], [`udp`], [`sctp`],
//!   [`icmp`].
//! * [`checksum`]: RFC 1071 sums, RFC 1624 incremental updates, pseudo-headers,
//!   SCTP CRC32c.
//! * [`parse()`] and [`rewrite_tuple`] / [`rewrite_icmp_error`]: the per-packet
//!   path.
//! * Builders for frames the dataplane originates, writing into a caller's
//!   buffer without allocating: [`icmp::build_port_unreachable`],
//!   [`tcp::build_rst`], [`icmp::echo_reply_in_place`]. Replies keep the
//!   original frame's VLAN tags.
//! * [`testing`]: an allocating [`testing::FrameBuilder`] for tests, golden
//!   tables and benches.

#![forbid(unsafe_code)]

pub mod checksum;
mod emit;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod parse;
pub mod rewrite;
pub mod sctp;
pub mod tcp;
pub mod testing;
pub mod udp;

pub use parse::{parse, Frag, IcmpKind, InnerPacket, IpFamily, ParseError, Parsed, Proto};
pub use rewrite::{
    rewrite_icmp_error, rewrite_tuple, rewrite_tuple_bytes, rewrite_tuple_v4, RewriteError, Tuple,
};

#[cfg(test)]
mod tests;
