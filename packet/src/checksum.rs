//! Internet checksum (RFC 1071) arithmetic, RFC 1624 incremental updates,
//! pseudo-header sums, and the SCTP CRC32c.
//!
//! # Conventions
//! * A *sum* is a one's-complement sum of big-endian 16-bit words kept in a
//!   `u32`. Every function here returns sums already folded to 16 bits
//!   (`<= 0xffff`), so a handful of them can be added with [`add`] without any
//!   risk of overflow.
//! * A *checksum* is the 16-bit value stored on the wire: `!fold(sum)`
//!   ([`finish`]).
//! * A received header verifies when the sum over it (checksum field included)
//!   folds to `0xffff` ([`verify`]).
//!
//! Nothing here allocates or panics.

/// One's-complement sum of `data`, read as big-endian 16-bit words; an odd
/// trailing byte is padded with a zero byte (RFC 1071). Folded to 16 bits.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // Big-endian 32-bit chunks: a chunk `w0 << 16 | w1` is congruent to
    // `w0 + w1` modulo 0xffff (2^16 ≡ 1), and the fold below keeps exactly
    // that residue (a nonzero sum folds to the unique value in 1..=0xffff of
    // its class, zero stays zero), so this is the RFC 1071 word sum, with a
    // quarter of the additions. A u64 accumulator cannot overflow for any
    // slice that fits in memory (each step adds less than 2^32).
    let mut acc: u64 = 0;
    let mut quads = data.chunks_exact(4);
    for q in &mut quads {
        acc += u64::from(u32::from_be_bytes([q[0], q[1], q[2], q[3]]));
    }
    match quads.remainder() {
        [a, b, c] => acc += u64::from(u16::from_be_bytes([*a, *b])) + (u64::from(*c) << 8),
        [a, b] => acc += u64::from(u16::from_be_bytes([*a, *b])),
        [a] => acc += u64::from(*a) << 8,
        _ => {}
    }
    fold64(acc)
}

fn fold64(mut acc: u64) -> u32 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// Adds two sums (one's-complement addition), folded to 16 bits.
pub fn add(a: u32, b: u32) -> u32 {
    fold64(u64::from(a) + u64::from(b))
}

/// Folds a sum to 16 bits (end-around carry).
pub fn fold(sum: u32) -> u16 {
    fold64(u64::from(sum)) as u16
}

/// The checksum field value for a sum computed with the field zeroed.
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Whether a sum taken over data that includes its checksum field verifies.
pub fn verify(sum: u32) -> bool {
    fold(sum) == 0xffff
}

/// RFC 1624 (eqn. 3) incremental update of checksum `hc` when one 16-bit word
/// of the covered data changes from `old` to `new`:
/// `HC' = ~(~HC + ~m + m')`.
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!hc) + u32::from(!old) + u32::from(new);
    !fold(s)
}

/// RFC 1624 incremental update of checksum `hc` when the covered bytes `old`
/// are replaced by `new` (same length, starting at an even offset of the
/// covered data). If the lengths differ, only the common prefix is accounted
/// for; callers pass equal lengths. Fixed-size fields are better served by
/// [`delta`] and [`apply`].
pub fn update_bytes(hc: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut s = u64::from(!hc);
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        let ow = u16::from_be_bytes([o[0], o.get(1).copied().unwrap_or(0)]);
        let nw = u16::from_be_bytes([n[0], n.get(1).copied().unwrap_or(0)]);
        s += u64::from(!ow) + u64::from(nw);
    }
    !(fold64(s) as u16)
}

/// The change of a checksummed field from `old` to `new` (`N` even, at an
/// even offset of the covered data), as an unfolded one's-complement sum
/// `Σ(!old_i + new_i)` over its 16-bit words, ready for [`apply`]. Deltas of
/// several fields can be added together first (each is below `N * 2^16`), so
/// an address change is computed once and applied to both the IPv4 header
/// checksum and the transport checksum.
#[inline(always)]
pub fn delta<const N: usize>(old: &[u8; N], new: &[u8; N]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i + 1 < N {
        s += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        s += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    s
}

/// [`delta`] of one 16-bit word.
#[inline(always)]
pub fn delta16(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// RFC 1624 (eqn. 3) applied to a summed delta: `HC' = ~(~HC + delta)`.
///
/// Gives exactly the value that applying the delta's words one after another
/// with [`update16`] / [`update_bytes`] gives: each step keeps the running
/// sum's residue modulo 0xffff, folded to the unique value in `1..=0xffff`
/// of its class unless every term so far was zero, and so does one fold of
/// the whole sum. `delta` must be below `2^31` (any sum of a few deltas is).
#[inline(always)]
pub fn apply(hc: u16, delta: u32) -> u16 {
    let s = u32::from(!hc) + delta;
    // Two end-around carries bring any value below 2^31 to 16 bits.
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Incremental update for a 32-bit field (e.g. two adjacent 16-bit words).
pub fn update32(hc: u16, old: u32, new: u32) -> u16 {
    update_bytes(hc, &old.to_be_bytes(), &new.to_be_bytes())
}

/// Sum of the IPv4 pseudo-header (RFC 793/768): source, destination, zero,
/// protocol, and the upper-layer length.
pub fn pseudo_header_v4(src: &[u8; 4], dst: &[u8; 4], proto: u8, len: u16) -> u32 {
    let s = add(sum(src), sum(dst));
    add(s, u32::from(proto) + u32::from(len))
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1): source, destination, 32-bit
/// upper-layer length, three zero bytes and the next header.
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, len: u32) -> u32 {
    let s = add(sum(src), sum(dst));
    let s = add(s, (len >> 16) + (len & 0xffff));
    add(s, u32::from(next_header))
}

/// Offset of the checksum field in the SCTP common header.
const SCTP_CHECKSUM: core::ops::Range<usize> = 8..12;

/// CRC32c (Castagnoli) of an SCTP packet (common header + chunks), computed
/// as if the checksum field (bytes 8..12) were zero (RFC 9260 §6.8,
/// appendix A). Returns `None` if `sctp` is shorter than the 12-byte common
/// header.
///
/// The value is the standard CRC-32C; on the wire it is stored in
/// **little-endian** byte order (`crc.to_le_bytes()`), which is what RFC 9260
/// appendix A's bit-reflected description amounts to; see
/// [`crate::sctp::Packet::set_checksum`].
pub fn sctp_crc32c(sctp: &[u8]) -> Option<u32> {
    let head = sctp.get(..SCTP_CHECKSUM.start)?;
    let tail = sctp.get(SCTP_CHECKSUM.end..)?;
    let crc = crc32c::crc32c(head);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    Some(crc32c::crc32c_append(crc, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to 0xddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(finish(sum(&data)), !0xddf2);
    }

    #[test]
    fn odd_length_is_zero_padded() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(sum(&[]), 0);
    }

    /// A real IPv4 header (Wikipedia's example) verifies, and its checksum is
    /// what `finish` computes with the field zeroed.
    #[test]
    fn ipv4_header_checksum() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert!(verify(sum(&h)));
        h[10] = 0;
        h[11] = 0;
        assert_eq!(finish(sum(&h)), 0xb861);
    }

    #[test]
    fn incremental_matches_full() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let new_src = [10, 1, 2, 3];
        let hc = update_bytes(0xb861, &h[12..16], &new_src);
        h[12..16].copy_from_slice(&new_src);
        let ttl_old = u16::from_be_bytes([h[8], h[9]]);
        h[8] = 0x3f;
        let hc = update16(hc, ttl_old, u16::from_be_bytes([h[8], h[9]]));
        h[10..12].copy_from_slice(&hc.to_be_bytes());
        assert!(verify(sum(&h)));
        h[10] = 0;
        h[11] = 0;
        let full = finish(sum(&h));
        // 0x0000 and 0xffff are the same one's-complement value.
        assert!(full == hc || (full == 0 && hc == 0xffff) || (full == 0xffff && hc == 0));
    }

    #[test]
    fn pseudo_headers() {
        // v4: 192.168.0.1 -> 192.168.0.199, UDP, length 8.
        let s = pseudo_header_v4(&[192, 168, 0, 1], &[192, 168, 0, 199], 17, 8);
        assert_eq!(s, fold(0xc0a8 + 0x0001 + 0xc0a8 + 0x00c7 + 17 + 8) as u32);
        let mut a = [0u8; 16];
        a[15] = 1;
        let s6 = pseudo_header_v6(&a, &a, 58, 0x0001_0002);
        assert_eq!(s6, 1 + 1 + 1 + 2 + 58);
    }

    /// RFC 3720 appendix B.4: the CRC32c of 32 zero bytes is 0x8a9136aa and is
    /// transmitted as the bytes aa 36 91 8a, i.e. little-endian, as in SCTP.
    #[test]
    fn crc32c_known_vectors() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(0x8a91_36aau32.to_le_bytes(), [0xaa, 0x36, 0x91, 0x8a]);
        // The checksum field is treated as zero whatever it holds.
        let mut pkt = [0u8; 32];
        assert_eq!(sctp_crc32c(&pkt), Some(0x8a91_36aa));
        pkt[8..12].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(sctp_crc32c(&pkt), Some(0x8a91_36aa));
        assert_eq!(sctp_crc32c(&pkt[..11]), None);
    }
}
