//! Per-frontend and per-backend traffic counters of one engine (one worker).
//!
//! Plain integers in vectors indexed by the frontend index and the backend
//! slot (`Frontend::backend_off + i`) of the table generation they were last
//! rebased on: counting a packet is one bounds-checked index, no hash, no
//! atomic. The metrics endpoint sums the workers' copies when scraped.
//!
//! Indices change between generations, so when the engine first sees a new
//! generation it [`rebases`](TrafficStats::rebase) the counters: each
//! frontend's counts move to the frontend with the same (IP, port, protocol)
//! in the new tables, each backend's to the same (address, port) under that
//! frontend, and counts of frontends or backends that disappeared are
//! dropped (their series end). That is O(frontends + backends) once per
//! generation, never per packet.
//!
//! Cardinality is bounded: only the first [`MAX_COUNTED_FRONTENDS`]
//! frontends and the first [`MAX_COUNTED_BACKEND_SLOTS`] backend slots of a
//! generation are counted; traffic of frontends past the cap lands in
//! [`TrafficStats::uncounted`]. Per backend only *new flows* are counted:
//! the backend of an established flow's packet is known by address, and
//! finding its slot would cost a search per packet (active flows per backend
//! come from a conntrack walk at scrape time instead).

use std::net::IpAddr;

use crate::tables::{FrontendKey, Tables};

/// Frontends counted individually per generation.
pub const MAX_COUNTED_FRONTENDS: usize = 4096;
/// Backend slots (sum of every frontend's backend run) counted per generation.
pub const MAX_COUNTED_BACKEND_SLOTS: usize = 16384;

/// Counts of one frontend (both directions of its flows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrontendCounters {
    /// Flows created (conntrack inserts that succeeded).
    pub new_flows: u64,
    /// Frames of the frontend's flows, both directions, whatever the verdict.
    pub packets: u64,
    /// Bytes of those frames (as received).
    pub bytes: u64,
}

impl FrontendCounters {
    fn add(&mut self, o: &FrontendCounters) {
        self.new_flows += o.new_flows;
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

/// One counted backend slot: which backend it is, and its new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSlot {
    /// Index of the frontend whose run holds the slot.
    pub frontend: u32,
    pub ip: IpAddr,
    pub port: u16,
    pub new_flows: u64,
}

impl BackendSlot {
    /// A slot no frontend's run covers (`frontend == u32::MAX`).
    pub const UNUSED: BackendSlot = BackendSlot {
        frontend: u32::MAX,
        ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        port: 0,
        new_flows: 0,
    };
}

/// Bytes by verdict, index order of [`VERDICT_NAMES`].
pub const VERDICT_NAMES: [&str; 4] = ["tx", "reject", "pass", "drop"];

/// One engine's traffic counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficStats {
    /// The generation the indices refer to; `None` before the first frame.
    pub generation: Option<u64>,
    /// Frontend keys, parallel to `frontends` (to rebase and to label).
    pub keys: Vec<FrontendKey>,
    /// Indexed by frontend index (`< MAX_COUNTED_FRONTENDS`).
    pub frontends: Vec<FrontendCounters>,
    /// Indexed by backend slot (`< MAX_COUNTED_BACKEND_SLOTS`).
    pub backends: Vec<BackendSlot>,
    /// Frontends past the cap, together.
    pub uncounted: FrontendCounters,
    /// New flows to backend slots past the cap.
    pub uncounted_backend_new_flows: u64,
    /// Bytes per verdict (as received), see [`VERDICT_NAMES`].
    pub verdict_bytes: [u64; 4],
}

impl TrafficStats {
    /// True when the counters' indices refer to `t`.
    #[inline]
    pub fn is_current(&self, t: &Tables) -> bool {
        self.generation == Some(t.generation)
    }

    /// Re-indexes the counters for `t` (see the module doc).
    pub fn rebase(&mut self, t: &Tables) {
        let nf = t.frontends.len().min(MAX_COUNTED_FRONTENDS);
        let keys: Vec<FrontendKey> = t.frontends[..nf].iter().map(|f| f.key).collect();
        let mut frontends = vec![FrontendCounters::default(); nf];
        for (k, c) in self.keys.iter().zip(&self.frontends) {
            match t.frontend_index.get(k).map(|&i| i as usize) {
                Some(i) if i < nf => frontends[i].add(c),
                Some(_) => self.uncounted.add(c),
                None => {}
            }
        }
        let nb = t.backends.len().min(MAX_COUNTED_BACKEND_SLOTS);
        let mut backends = vec![BackendSlot::UNUSED; nb];
        for (fi, f) in t.frontends.iter().enumerate() {
            let off = f.backend_off as usize;
            for (j, b) in t.all_backends(f).iter().enumerate() {
                if let Some(s) = backends.get_mut(off + j) {
                    *s = BackendSlot {
                        frontend: fi as u32,
                        ip: b.ip,
                        port: b.port,
                        new_flows: 0,
                    };
                }
            }
        }
        // Carry each old slot's count to the same backend of the same
        // frontend in `t`.
        for old in &self.backends {
            if old.new_flows == 0 || old.frontend == u32::MAX {
                continue;
            }
            let Some(key) = self.keys.get(old.frontend as usize) else {
                continue;
            };
            let Some((_, f)) = t.frontend(key.ip, key.port, key.proto) else {
                continue;
            };
            let off = f.backend_off as usize;
            if let Some(j) = t
                .all_backends(f)
                .iter()
                .position(|b| (b.ip, b.port) == (old.ip, old.port))
            {
                match backends.get_mut(off + j) {
                    Some(s) => s.new_flows += old.new_flows,
                    None => self.uncounted_backend_new_flows += old.new_flows,
                }
            }
        }
        self.keys = keys;
        self.frontends = frontends;
        self.backends = backends;
        self.generation = Some(t.generation);
    }

    /// Counts one frame of a frontend's flow.
    #[inline]
    pub fn frame(&mut self, frontend: u32, len: usize) {
        let c = match self.frontends.get_mut(frontend as usize) {
            Some(c) => c,
            None => &mut self.uncounted,
        };
        c.packets += 1;
        c.bytes += len as u64;
    }

    /// Counts a new flow of `frontend` to backend slot `slot`.
    #[inline]
    pub fn new_flow(&mut self, frontend: u32, slot: usize) {
        match self.frontends.get_mut(frontend as usize) {
            Some(c) => c.new_flows += 1,
            None => self.uncounted.new_flows += 1,
        }
        match self.backends.get_mut(slot) {
            Some(b) => b.new_flows += 1,
            None => self.uncounted_backend_new_flows += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{
        Backend, EmptyAction, FrontendKind, FrontendSpec, NodeConfig, ServiceInfo,
    };
    use crate::TablesBuilder;
    use edgeplane_packet::Proto;

    fn backend(last: u8) -> Backend {
        Backend {
            ip: IpAddr::from([198, 18, 2, last]),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            local: false,
            weight: 1,
        }
    }

    fn tables(gen: u64, fronts: &[(u16, &[u8])]) -> Tables {
        let mut b = TablesBuilder::new(NodeConfig::default(), gen);
        let s = b.add_service(ServiceInfo {
            namespace: "default".into(),
            name: "web".into(),
            port_name: String::new(),
            external_policy: "Cluster".into(),
            internal_policy: "Cluster".into(),
            health_check_node_port: 0,
        });
        for (port, bs) in fronts {
            let backends: Vec<Backend> = bs.iter().map(|&l| backend(l)).collect();
            let n = backends.len();
            let maglev: Vec<u16> = (0..7).map(|i| (i % n) as u16).collect();
            b.add_frontend(
                FrontendSpec {
                    key: FrontendKey {
                        ip: IpAddr::from([198, 18, 100, 1]),
                        port: *port,
                        proto: Proto::Tcp,
                    },
                    service: s,
                    kind: FrontendKind::ClusterIp,
                    backends,
                    n_new: n,
                    empty_action: EmptyAction::Reject,
                    snat: true,
                    affinity_timeout: 0,
                    affinity_group: 0,
                    source_ranges: vec![],
                },
                &maglev,
                7,
            )
            .unwrap();
        }
        b.finish()
    }

    #[test]
    fn counts_follow_frontends_and_backends_across_generations() {
        let t1 = tables(1, &[(80, &[2, 3]), (443, &[4])]);
        let mut s = TrafficStats::default();
        assert!(!s.is_current(&t1));
        s.rebase(&t1);
        s.frame(0, 100);
        s.frame(1, 50);
        s.new_flow(0, 1); // port 80 → .3
        s.new_flow(1, 2); // port 443 → .4
                          // Generation 2: port 80 disappears, 443 moves to index 0 and gains
                          // a backend before .4.
        let t2 = tables(2, &[(443, &[3, 4]), (8080, &[2])]);
        s.rebase(&t2);
        assert!(s.is_current(&t2));
        assert_eq!(
            s.frontends[0],
            FrontendCounters {
                new_flows: 1,
                packets: 1,
                bytes: 50
            }
        );
        assert_eq!(s.frontends[1], FrontendCounters::default());
        assert_eq!(s.backends.len(), 3);
        assert_eq!(
            (s.backends[1].ip, s.backends[1].new_flows),
            (backend(4).ip, 1)
        );
        assert_eq!(s.backends[0].new_flows, 0);
        assert_eq!(s.backends[2].frontend, 1);
    }

    #[test]
    fn frontends_past_the_cap_are_counted_together() {
        let mut s = TrafficStats::default();
        s.rebase(&tables(1, &[(80, &[2])]));
        s.frame(5, 10);
        s.new_flow(5, 99);
        assert_eq!(s.uncounted.packets, 1);
        assert_eq!(s.uncounted.new_flows, 1);
        assert_eq!(s.uncounted_backend_new_flows, 1);
    }
}
