//! Log helpers: a rate limit for repeated warnings and the summary of what
//! a table publication changed. Nothing here is called per packet.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use edgeplane_dataplane::tables::{Backend, FrontendKey};
use edgeplane_dataplane::Tables;

/// Lets one message through per `every`; counts the ones it held back.
///
/// ```ignore
/// if let Some(suppressed) = limit.allow(Instant::now()) {
///     tracing::warn!(suppressed, "...");
/// }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        RateLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log now, `n` messages were held back since the last one.
    /// `None`: hold this one back.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// What one generation changed relative to the previous one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TablesDiff {
    pub services: usize,
    pub frontends: usize,
    pub backends: usize,
    pub frontends_added: usize,
    pub frontends_removed: usize,
    /// Distinct (frontend, backend address, port) pairs.
    pub backends_added: usize,
    pub backends_removed: usize,
}

type BackendPair = (FrontendKey, IpAddr, u16);

/// Every frontend key and (frontend, backend address, port) pair of `t`:
/// the definition [`diff`] counts by, used whole only when a frontend key
/// occurs twice.
fn sets(t: &Tables) -> (HashSet<FrontendKey>, HashSet<BackendPair>) {
    let fronts = t.frontends.iter().map(|f| f.key).collect();
    let backs = t
        .frontends
        .iter()
        .flat_map(|f| t.all_backends(f).iter().map(move |b| (f.key, b.ip, b.port)))
        .collect();
    (fronts, backs)
}

/// Frontend key → its backends; `None` if a key occurs twice (tables the
/// compiler builds never have that).
fn by_key(t: &Tables) -> Option<HashMap<FrontendKey, &[Backend]>> {
    let mut m = HashMap::with_capacity(t.frontends.len());
    for f in &t.frontends {
        if m.insert(f.key, t.all_backends(f)).is_some() {
            return None;
        }
    }
    Some(m)
}

fn pairs(bs: &[Backend]) -> HashSet<(IpAddr, u16)> {
    bs.iter().map(|b| (b.ip, b.port)).collect()
}

/// Same (address, port) sequence: nothing added or removed.
fn same(a: &[Backend], b: &[Backend]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.ip == y.ip && x.port == y.port)
}

/// Compares two generations (`old` = `None`: everything is new).
///
/// Counts as if every frontend key and every (frontend, backend address,
/// port) pair of both generations were put in sets, but looks each
/// frontend up once and builds small sets only for frontends whose backend
/// list changed: at 10,000 Services x 10 endpoints with one slice changed
/// that is 20,000 hashed keys instead of 220,000 hashed pairs (about 100 ms
/// on a loaded core, measured by `bench/kube-latency`).
pub fn diff(old: Option<&Tables>, new: &Tables) -> TablesDiff {
    let mut d = TablesDiff {
        services: new.services.len(),
        frontends: new.frontends.len(),
        backends: new.backends.len(),
        ..TablesDiff::default()
    };
    let (Some(nm), Some(om)) = (by_key(new), old.map_or(Some(HashMap::new()), by_key)) else {
        let (nf, nb) = sets(new);
        let (of, ob) = old.map(sets).unwrap_or_default();
        d.frontends_added = nf.difference(&of).count();
        d.frontends_removed = of.difference(&nf).count();
        d.backends_added = nb.difference(&ob).count();
        d.backends_removed = ob.difference(&nb).count();
        return d;
    };
    for (k, nb) in &nm {
        match om.get(k) {
            None => {
                d.frontends_added += 1;
                d.backends_added += pairs(nb).len();
            }
            Some(ob) if same(ob, nb) => {}
            Some(ob) => {
                let (o, n) = (pairs(ob), pairs(nb));
                d.backends_added += n.difference(&o).count();
                d.backends_removed += o.difference(&n).count();
            }
        }
    }
    for (k, ob) in &om {
        if !nm.contains_key(k) {
            d.frontends_removed += 1;
            d.backends_removed += pairs(ob).len();
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeplane_dataplane::testing::{backend, node_config, tables_with, Fe};
    use edgeplane_packet::Proto;

    #[test]
    fn rate_limit_lets_one_through_per_interval_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(Duration::from_secs(10));
        assert_eq!(r.allow(t0), Some(0));
        assert_eq!(r.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(9)), None);
        assert_eq!(r.allow(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(r.allow(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn diff_counts_frontends_and_backends_added_and_removed() {
        let fe = |port: u16, backs: &[&str]| {
            let bs = backs.iter().map(|a| backend(a, 8080)).collect();
            Fe::new("198.18.100.1", port, Proto::Tcp, bs)
        };
        let a = tables_with(
            node_config(),
            1,
            &[
                fe(80, &["198.18.2.2", "198.18.2.3"]),
                fe(443, &["198.18.2.2"]),
            ],
        );
        let b = tables_with(
            node_config(),
            2,
            &[
                fe(80, &["198.18.2.3", "198.18.2.4", "198.18.2.5"]),
                fe(8080, &["198.18.2.2"]),
            ],
        );
        let d = diff(Some(&a), &b);
        assert_eq!(
            (
                d.frontends_added,
                d.frontends_removed,
                d.backends_added,
                d.backends_removed
            ),
            (1, 1, 3, 2)
        );
        assert_eq!((d.frontends, d.backends), (2, 4));
        let first = diff(None, &a);
        assert_eq!((first.frontends_added, first.backends_added), (2, 3));
    }

    /// The per-frontend diff counts exactly what whole sets of keys and
    /// (frontend, address, port) pairs count: reordered and repeated
    /// backends, frontends that come and go, both address families.
    #[test]
    fn diff_matches_whole_sets() {
        fn by_sets(old: Option<&Tables>, new: &Tables) -> (usize, usize, usize, usize) {
            let (nf, nb) = sets(new);
            let (of, ob) = old.map(sets).unwrap_or_default();
            (
                nf.difference(&of).count(),
                of.difference(&nf).count(),
                nb.difference(&ob).count(),
                ob.difference(&nb).count(),
            )
        }
        const ADDRS: [&str; 5] = [
            "198.18.2.2",
            "198.18.2.3",
            "198.18.2.4",
            "2001:db8:2::2",
            "198.18.2.5",
        ];
        const VIPS: [&str; 3] = ["198.18.100.1", "198.18.100.2", "2001:db8:100::1"];
        // A small deterministic generator (no dependency for one test).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n) as usize
        };
        let mut gen = |g: u64| {
            let mut fes = Vec::new();
            for (v, vip) in VIPS.iter().enumerate() {
                for port in [80u16, 443] {
                    if next(4) == 0 {
                        continue; // this frontend absent in this generation
                    }
                    let bs = (0..next(5))
                        .map(|_| backend(ADDRS[next(5)], 8080 + next(2) as u16))
                        .collect();
                    let proto = if v == 1 { Proto::Udp } else { Proto::Tcp };
                    fes.push(Fe::new(vip, port, proto, bs));
                }
            }
            tables_with(node_config(), g, &fes)
        };
        let mut prev = gen(1);
        assert_eq!(
            {
                let d = diff(None, &prev);
                (
                    d.frontends_added,
                    d.frontends_removed,
                    d.backends_added,
                    d.backends_removed,
                )
            },
            by_sets(None, &prev)
        );
        for g in 2..400 {
            let t = gen(g);
            let d = diff(Some(&prev), &t);
            assert_eq!(
                (
                    d.frontends_added,
                    d.frontends_removed,
                    d.backends_added,
                    d.backends_removed
                ),
                by_sets(Some(&prev), &t),
                "generation {g}"
            );
            let same = diff(Some(&t), &t);
            assert_eq!(
                (
                    same.frontends_added,
                    same.backends_added,
                    same.backends_removed
                ),
                (0, 0, 0)
            );
            prev = t;
        }
        // Reordered backends: nothing added or removed.
        let fe = |backs: &[&str]| {
            let bs = backs.iter().map(|a| backend(a, 8080)).collect();
            Fe::new("198.18.100.1", 80, Proto::Tcp, bs)
        };
        let a = tables_with(node_config(), 1, &[fe(&["198.18.2.2", "198.18.2.3"])]);
        let b = tables_with(
            node_config(),
            2,
            &[fe(&["198.18.2.3", "198.18.2.2", "198.18.2.3"])],
        );
        let d = diff(Some(&a), &b);
        assert_eq!((d.backends_added, d.backends_removed), (0, 0));
    }
}
