//! Log helpers: a rate limit for repeated warnings and the summary of what
//! a table publication changed. Nothing here is called per packet.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use edgeplane_dataplane::tables::FrontendKey;
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

fn sets(t: &Tables) -> (HashSet<FrontendKey>, HashSet<BackendPair>) {
    let fronts = t.frontends.iter().map(|f| f.key).collect();
    let backs = t
        .frontends
        .iter()
        .flat_map(|f| t.all_backends(f).iter().map(move |b| (f.key, b.ip, b.port)))
        .collect();
    (fronts, backs)
}

/// Compares two generations (`old` = `None`: everything is new).
pub fn diff(old: Option<&Tables>, new: &Tables) -> TablesDiff {
    let (nf, nb) = sets(new);
    let (of, ob) = old.map(sets).unwrap_or_default();
    TablesDiff {
        services: new.services.len(),
        frontends: new.frontends.len(),
        backends: new.backends.len(),
        frontends_added: nf.difference(&of).count(),
        frontends_removed: of.difference(&nf).count(),
        backends_added: nb.difference(&ob).count(),
        backends_removed: ob.difference(&nb).count(),
    }
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
}
