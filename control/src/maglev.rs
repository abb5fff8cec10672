//! Maglev consistent hashing (Eisenbud et al., NSDI '16, §3.4), built on the
//! control side; the engine only indexes the result.
//!
//! Promises:
//! - A table of prime size M maps every slot to one backend: `table[slot]` is an
//!   index into the backend slice *as the caller passed it*.
//! - Each backend's preference list (permutation) depends only on its stable
//!   identity (IP bytes and port) and the seed, never on its position in the
//!   input, and ties are broken in identity order: shuffling the input yields
//!   the same slot → backend mapping.
//! - Unweighted backends get shares that differ by at most one slot; with
//!   weights, shares are proportional to the weights (weighted population
//!   rounds, as in Envoy's and Cilium's weighted Maglev).
//! - Removing one backend moves its own slots and only a small fraction of
//!   the others' (the Maglev disruption bound; see the property tests).

use std::net::IpAddr;

use edgeplane_dataplane::hash::{addr16, hash_bytes};

/// Table sizes M the compiler accepts (primes, roughly doubling).
pub const SUPPORTED_SIZES: &[u32] = &[
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 65537, 131071,
];

/// The default M: good balance up to ~160 backends per frontend.
pub const DEFAULT_SIZE: u32 = 16381;

/// Errors building a Maglev table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// M is not one of [`SUPPORTED_SIZES`].
    #[error("maglev table size {0} is not supported (use one of {SUPPORTED_SIZES:?})")]
    UnsupportedSize(u32),
    /// M is not a prime (the permutation would not visit every slot).
    #[error("maglev table size {0} is not a prime")]
    NotPrime(u32),
    /// More backends than a `u16` index can address.
    #[error("{0} backends exceed the limit of 65535 per table")]
    TooManyBackends(usize),
}

/// Checks that `m` is one of [`SUPPORTED_SIZES`].
pub fn check_size(m: u32) -> Result<(), MaglevError> {
    if SUPPORTED_SIZES.contains(&m) {
        Ok(())
    } else {
        Err(MaglevError::UnsupportedSize(m))
    }
}

/// True when `m` is a prime (trial division; `m` ≤ 2^32 is cheap enough here).
pub fn is_prime(m: u32) -> bool {
    if m < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= m as u64 {
        if (m as u64).checked_rem(d) == Some(0) {
            return false;
        }
        d += 1;
    }
    true
}

/// The two seeds of the permutation hashes, derived from the flow-hash seed
/// so that every node with the same seed builds the same tables.
fn seeds(seed: u64) -> (u64, u64) {
    (
        hash_bytes(seed, b"edgeplane/maglev/offset"),
        hash_bytes(seed, b"edgeplane/maglev/skip"),
    )
}

/// Stable identity of a backend: 16 address bytes (IPv4-mapped) + port.
fn identity(ip: IpAddr, port: u16) -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..16].copy_from_slice(&addr16(ip));
    b[16..].copy_from_slice(&port.to_be_bytes());
    b
}

/// Builds the table; panics when `m` is not a prime or there are more than
/// 65535 backends (see [`try_build`] for the checked form).
///
/// `backends` are `(ip, port, weight)`; weight 0 excludes a backend (unless
/// all are 0, then all count as 1). Returns `m` indices into `backends`, or
/// an empty vector when `backends` is empty.
pub fn build(backends: &[(IpAddr, u16, u32)], m: u32, seed: u64) -> Vec<u16> {
    match try_build(backends, m, seed) {
        Ok(t) => t,
        Err(e) => panic!("maglev::build: {e}"),
    }
}

/// Checked form of [`build`].
pub fn try_build(
    backends: &[(IpAddr, u16, u32)],
    m: u32,
    seed: u64,
) -> Result<Vec<u16>, MaglevError> {
    if !is_prime(m) {
        return Err(MaglevError::NotPrime(m));
    }
    if backends.len() > u16::MAX as usize {
        return Err(MaglevError::TooManyBackends(backends.len()));
    }
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    // Identity order, so that the result does not depend on the input order.
    let mut order: Vec<u16> = (0..backends.len() as u16).collect();
    order.sort_by(|&a, &b| {
        let (ia, pa, _) = backends[a as usize];
        let (ib, pb, _) = backends[b as usize];
        (ia, pa).cmp(&(ib, pb))
    });
    let all_zero = backends.iter().all(|b| b.2 == 0);
    let weight = |i: u16| {
        if all_zero {
            1
        } else {
            backends[i as usize].2 as u64
        }
    };
    order.retain(|&i| weight(i) > 0);

    let (s_off, s_skip) = seeds(seed);
    let n = order.len();
    let mm = m as u64;
    // Per backend (in identity order): next slot to try and its skip.
    let mut pos = Vec::with_capacity(n);
    let mut skip = Vec::with_capacity(n);
    for &i in &order {
        let (ip, port, _) = backends[i as usize];
        let id = identity(ip, port);
        pos.push((hash_bytes(s_off, &id) % mm) as u32);
        skip.push(if m == 1 {
            0
        } else {
            (hash_bytes(s_skip, &id) % (mm - 1) + 1) as u32
        });
    }

    let mut f = Filler::new(m, pos, skip);
    let mut filled = 0u32;
    let uniform = order.iter().all(|&i| weight(i) == weight(order[0]));

    if uniform {
        'outer: loop {
            for (k, &who) in order.iter().enumerate() {
                f.claim(k, who);
                filled += 1;
                if filled == m {
                    break 'outer;
                }
            }
        }
    } else {
        // Weighted rounds: in round t a backend takes a turn while
        // t * w >= target, and each turn raises its target by w_max; a backend
        // of weight w_max takes a turn every round, one of w_max/3 every third.
        let w_max = order.iter().map(|&i| weight(i)).max().unwrap_or(1);
        let mut target = vec![0u64; n];
        let mut round = 0u64;
        'wouter: loop {
            round += 1;
            for (k, &who) in order.iter().enumerate() {
                if round * weight(who) < target[k] {
                    continue;
                }
                target[k] += w_max;
                f.claim(k, who);
                filled += 1;
                if filled == m {
                    break 'wouter;
                }
            }
        }
    }
    Ok(f.table)
}

/// The population state: the table, each backend's next slot and skip, and,
/// for the last few empty slots, the tail state.
///
/// Filling the last slots by probing is what costs: with E of M slots
/// empty, a claim probes M/E slots on average, so the last 1% of the slots
/// take over half of all probes. When at most `tail_at` slots are empty the
/// filler switches to an exact shortcut: backend k's next claim is the empty
/// slot that comes first in its permutation, i.e. the one with the smallest
/// rank `((s - o_k) * skip_k^-1) mod M` from the slot `o_k` it had reached
/// (every slot of lower rank is already taken). Ranks of the remaining empty
/// slots are computed once per backend; a claim is then a minimum search.
/// The result is identical to probing (`tests::tail_matches_probing`).
struct Filler {
    table: Vec<u16>,
    m: u32,
    pos: Vec<u32>,
    skip: Vec<u32>,
    empty: u32,
    tail_at: u32,
    /// Tail state: the empty slots, and per backend their ranks (`n` rows
    /// of `stride`, the first `slots.len()` of each row valid).
    tail: Option<(Vec<u32>, Vec<u32>, usize)>,
}

const EMPTY: u16 = u16::MAX;

impl Filler {
    fn new(m: u32, pos: Vec<u32>, skip: Vec<u32>) -> Filler {
        let n = pos.len().max(1) as u32;
        // Ranks cost n per empty slot: worth it while n * E stays small.
        let tail_at = (m / 16).min(4096 / n);
        Filler {
            table: vec![EMPTY; m as usize],
            m,
            pos,
            skip,
            empty: m,
            tail_at: if tail_at >= 8 { tail_at } else { 0 },
            tail: None,
        }
    }

    /// Backend `k` (entry value `who`) takes its next free slot.
    #[inline]
    fn claim(&mut self, k: usize, who: u16) {
        if self.empty <= self.tail_at && self.tail.is_none() {
            self.start_tail();
        }
        self.empty -= 1;
        if let Some((slots, ranks, stride)) = self.tail.as_mut() {
            let len = slots.len();
            let row = &ranks[k * *stride..k * *stride + len];
            let min = row.iter().copied().min().unwrap_or(0);
            let j = row.iter().position(|&r| r == min).unwrap_or(0);
            let s = slots[j];
            self.table[s as usize] = who;
            slots.swap_remove(j);
            let n = self.pos.len();
            for b in 0..n {
                ranks[b * *stride + j] = ranks[b * *stride + len - 1];
            }
            return;
        }
        let (m, step) = (self.m, self.skip[k]);
        let mut c = self.pos[k];
        loop {
            let next = {
                let s = c + step;
                if s >= m {
                    s - m
                } else {
                    s
                }
            };
            // c < m always (offset % m, then modular steps).
            if self.table[c as usize] == EMPTY {
                self.table[c as usize] = who;
                self.pos[k] = next;
                return;
            }
            c = next;
        }
    }

    fn start_tail(&mut self) {
        let m = self.m as u64;
        let slots: Vec<u32> = (0..self.m)
            .filter(|&s| self.table[s as usize] == EMPTY)
            .collect();
        let stride = slots.len();
        // Barrett reduction by m for products below 2^34.
        let mu = (u64::MAX / m) as u128;
        let reduce = |x: u64| {
            let q = ((x as u128 * mu) >> 64) as u64;
            let mut r = x - q * m;
            while r >= m {
                r -= m;
            }
            r as u32
        };
        let mut ranks = vec![0u32; self.pos.len() * stride];
        for (k, (&o, &sk)) in self.pos.iter().zip(&self.skip).enumerate() {
            let inv = mod_inverse(sk as u64, m);
            let row = &mut ranks[k * stride..(k + 1) * stride];
            for (r, &s) in row.iter_mut().zip(&slots) {
                let d = (s as u64 + m - o as u64) % m;
                *r = reduce(d * inv);
            }
        }
        self.tail = Some((slots, ranks, stride));
    }
}

/// `a^-1 mod m` for a prime `m` and `0 < a < m` (extended Euclid).
fn mod_inverse(a: u64, m: u64) -> u64 {
    let (mut r0, mut r1) = (m as i64, a as i64);
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    t0.rem_euclid(m as i64) as u64
}

/// Slots per backend: `counts[i]` = entries of `table` equal to `i`.
pub fn shares(table: &[u16], n: usize) -> Vec<u32> {
    let mut counts = vec![0u32; n];
    for &e in table {
        if let Some(c) = counts.get_mut(e as usize) {
            *c += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn backends(n: u32) -> Vec<(IpAddr, u16, u32)> {
        (0..n)
            .map(|i| (IpAddr::V4(Ipv4Addr::from(0xc612_0200 + i)), 8080, 1))
            .collect()
    }

    #[test]
    fn supported_sizes_are_prime() {
        for &m in SUPPORTED_SIZES {
            assert!(is_prime(m), "{m}");
            assert!(check_size(m).is_ok());
        }
        assert_eq!(check_size(1000), Err(MaglevError::UnsupportedSize(1000)));
        assert_eq!(
            try_build(&backends(3), 1000, 0),
            Err(MaglevError::NotPrime(1000))
        );
    }

    #[test]
    fn fills_every_slot_evenly() {
        let t = build(&backends(3), 251, 7);
        assert_eq!(t.len(), 251);
        let s = shares(&t, 3);
        assert_eq!(s.iter().sum::<u32>(), 251);
        assert!(
            s.iter().max().unwrap() - s.iter().min().unwrap() <= 1,
            "{s:?}"
        );
    }

    #[test]
    fn empty_and_single() {
        assert!(build(&[], 251, 0).is_empty());
        assert!(build(&backends(1), 251, 0).iter().all(|&e| e == 0));
    }

    #[test]
    fn input_order_does_not_matter() {
        let b = backends(10);
        let mut r = b.clone();
        r.reverse();
        let t1 = build(&b, 1021, 3);
        let t2 = build(&r, 1021, 3);
        for (x, y) in t1.iter().zip(&t2) {
            assert_eq!(b[*x as usize].0, r[*y as usize].0);
        }
    }

    #[test]
    fn weights_are_proportional() {
        let mut b = backends(3);
        b[0].2 = 2;
        b[1].2 = 1;
        b[2].2 = 0;
        let s = shares(&build(&b, 4093, 1), 3);
        assert_eq!(s[2], 0);
        let ratio = s[0] as f64 / s[1] as f64;
        assert!((ratio - 2.0).abs() < 0.01, "{s:?}");
    }

    /// The original population loop (probing to the end), as the reference
    /// the tail shortcut must match slot for slot.
    fn reference(backends: &[(IpAddr, u16, u32)], m: u32, seed: u64) -> Vec<u16> {
        let mut order: Vec<u16> = (0..backends.len() as u16).collect();
        order.sort_by_key(|&i| (backends[i as usize].0, backends[i as usize].1));
        let all_zero = backends.iter().all(|b| b.2 == 0);
        let weight = |i: u16| {
            if all_zero {
                1
            } else {
                backends[i as usize].2 as u64
            }
        };
        order.retain(|&i| weight(i) > 0);
        let (s_off, s_skip) = seeds(seed);
        let mm = m as u64;
        let mut pos: Vec<u32> = Vec::new();
        let mut skip: Vec<u32> = Vec::new();
        for &i in &order {
            let id = identity(backends[i as usize].0, backends[i as usize].1);
            pos.push((hash_bytes(s_off, &id) % mm) as u32);
            skip.push((hash_bytes(s_skip, &id) % (mm - 1) + 1) as u32);
        }
        let mut table = vec![u16::MAX; m as usize];
        let mut filled = 0;
        let w_max = order.iter().map(|&i| weight(i)).max().unwrap_or(1);
        let mut target = vec![0u64; order.len()];
        let mut round = 0u64;
        while filled < m {
            round += 1;
            for (k, &who) in order.iter().enumerate() {
                if filled == m || round * weight(who) < target[k] {
                    continue;
                }
                target[k] += w_max;
                let mut c = pos[k];
                while table[c as usize] != u16::MAX {
                    c = (c + skip[k]) % m;
                }
                table[c as usize] = who;
                pos[k] = (c + skip[k]) % m;
                filled += 1;
            }
        }
        table
    }

    #[test]
    fn tail_matches_probing() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for case in 0..60 {
            let n = 1 + (next() % if case % 3 == 0 { 300 } else { 40 }) as u32;
            let m = SUPPORTED_SIZES[(next() % 7) as usize];
            let mut b = backends(n);
            if case % 4 == 1 {
                for x in b.iter_mut() {
                    x.2 = (next() % 4) as u32;
                }
            }
            let seed = next();
            assert_eq!(
                build(&b, m, seed),
                reference(&b, m, seed),
                "case {case}: n={n} m={m}"
            );
        }
    }

    #[test]
    fn modular_inverse() {
        for &m in &SUPPORTED_SIZES[..4] {
            for a in [1u64, 2, 3, 17, m as u64 - 1] {
                assert_eq!(a * mod_inverse(a, m as u64) % m as u64, 1);
            }
        }
    }

    #[test]
    fn seed_changes_the_table() {
        let b = backends(5);
        assert_ne!(build(&b, 1021, 1), build(&b, 1021, 2));
    }
}
