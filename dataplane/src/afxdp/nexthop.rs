//! Next hops: where a translated frame goes (egress interface, destination
//! MAC), from the kernel's routes and neighbours.
//!
//! [`NextHops`] is an immutable snapshot: the main routing table's unicast
//! routes (longest prefix first, then lowest metric) and the neighbour
//! entries that have a link-layer address. The workers read the current
//! snapshot lock-free through an `ArcSwap` once per batch.
//!
//! [`spawn_mirror`] keeps it current: a thread with a small tokio runtime
//! dumps routes and neighbours over rtnetlink, subscribes to
//! `RTNLGRP_NEIGH`, `RTNLGRP_IPV4_ROUTE` and `RTNLGRP_IPV6_ROUTE`, and after
//! any notification dumps again (at most every few milliseconds) and
//! publishes a new snapshot. A frame whose next hop has no neighbour entry
//! goes to the kernel (raw socket, see `kernel.rs`), which resolves it; the
//! resulting `RTM_NEWNEIGH` brings the MAC here, and the flow's later frames
//! take the AF_XDP path.
//!
//! Not mirrored: policy routing (ip rules, tables other than main),
//! multipath routes (the first next hop is used), and routes through
//! interfaces edgeplane does not serve (such frames go to the kernel).

// hashbrown (foldhash): the neighbour map is read for every routed frame;
// SipHash (std's default, DoS-resistant) buys nothing for keys only the
// kernel writes.
use hashbrown::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use futures_util::stream::{StreamExt, TryStreamExt};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use rtnetlink::{new_connection, new_multicast_connection, MulticastGroup, RouteMessageBuilder};

/// `RT_TABLE_MAIN`.
const MAIN_TABLE: u32 = 254;

/// One unicast route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix, IPv4 as IPv4-mapped IPv6 (prefix length + 96).
    pub net: u128,
    pub prefix_len: u8,
    pub v6: bool,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub metric: u32,
}

/// Where a frame to some destination goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Out of `ifindex` to `mac`.
    Resolved { ifindex: u32, mac: [u8; 6] },
    /// A route exists, the next hop's MAC is not known (yet).
    Unresolved { ifindex: u32, via: IpAddr },
    /// No route.
    NoRoute,
}

/// An immutable snapshot of routes and neighbours.
#[derive(Debug, Default, Clone)]
pub struct NextHops {
    /// Longest prefix first, then lowest metric.
    routes: Vec<Route>,
    neigh: HashMap<(u32, IpAddr), [u8; 6]>,
    /// Monotonic snapshot number (0 = empty, before the first dump).
    pub generation: u64,
}

fn key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(a.to_ipv6_mapped()), false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

impl NextHops {
    /// Builds a snapshot from routes and neighbours (tests and the mirror).
    pub fn new(
        mut routes: Vec<Route>,
        neigh: HashMap<(u32, IpAddr), [u8; 6]>,
        generation: u64,
    ) -> Self {
        routes.sort_by(|a, b| {
            b.prefix_len
                .cmp(&a.prefix_len)
                .then(a.metric.cmp(&b.metric))
        });
        NextHops {
            routes,
            neigh,
            generation,
        }
    }

    pub fn routes(&self) -> usize {
        self.routes.len()
    }

    pub fn neighbours(&self) -> usize {
        self.neigh.len()
    }

    /// Every route, in lookup order (for `inspect nexthops`).
    pub fn route_list(&self) -> &[Route] {
        &self.routes
    }

    /// Every neighbour: (ifindex, address, MAC).
    pub fn neighbour_list(&self) -> Vec<(u32, IpAddr, [u8; 6])> {
        let mut v: Vec<_> = self.neigh.iter().map(|(&(i, a), &m)| (i, a, m)).collect();
        v.sort();
        v
    }

    /// The route for `dst`: the longest matching prefix, lowest metric (a
    /// linear scan over routes sorted that way: an edge node has a handful
    /// of routes; a full table would want an LPM trie).
    pub fn route(&self, dst: IpAddr) -> Option<&Route> {
        let (k, v6) = key(dst);
        self.routes
            .iter()
            .find(|r| r.v6 == v6 && (k & mask(r.prefix_len)) == r.net)
    }

    /// Egress interface and MAC for a frame to `dst`.
    pub fn lookup(&self, dst: IpAddr) -> Hop {
        let Some(r) = self.route(dst) else {
            return Hop::NoRoute;
        };
        let via = r.gateway.unwrap_or(dst);
        match self.neigh.get(&(r.oif, via)) {
            Some(mac) => Hop::Resolved {
                ifindex: r.oif,
                mac: *mac,
            },
            None => Hop::Unresolved {
                ifindex: r.oif,
                via,
            },
        }
    }
}

fn route_from(msg: &RouteMessage) -> Option<Route> {
    let h = &msg.header;
    if h.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(h.table);
    let (mut dst, mut gateway, mut oif, mut metric) = (None, None, None, 0);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(hops) => {
                // The first next hop of a multipath route.
                if let Some(nh) = hops.first() {
                    oif = oif.or(Some(nh.interface_index));
                    for a in &nh.attributes {
                        match a {
                            RouteAttribute::Gateway(RouteAddress::Inet(g)) => {
                                gateway = gateway.or(Some(IpAddr::V4(*g)))
                            }
                            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                                gateway = gateway.or(Some(IpAddr::V6(*g)))
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if table != MAIN_TABLE {
        return None;
    }
    let v6 = match msg.header.address_family {
        netlink_packet_route::AddressFamily::Inet => false,
        netlink_packet_route::AddressFamily::Inet6 => true,
        _ => return None,
    };
    let dst = dst.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let prefix_len = h.destination_prefix_length + if v6 { 0 } else { 96 };
    let (k, _) = key(dst);
    Some(Route {
        net: k & mask(prefix_len),
        prefix_len,
        v6,
        gateway,
        oif: oif?,
        metric,
    })
}

fn neigh_from(msg: &NeighbourMessage) -> Option<((u32, IpAddr), [u8; 6])> {
    match msg.header.state {
        NeighbourState::Reachable
        | NeighbourState::Stale
        | NeighbourState::Delay
        | NeighbourState::Probe
        | NeighbourState::Permanent
        | NeighbourState::Noarp => {}
        _ => return None,
    }
    let (mut ip, mut mac) = (None, None);
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLocalAddress(b) if b.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(b);
                if m != [0; 6] {
                    mac = Some(m);
                }
            }
            _ => {}
        }
    }
    Some(((msg.header.ifindex, ip?), mac?))
}

/// Counters of the mirror (for logs and metrics).
#[derive(Debug, Default)]
pub struct MirrorStats {
    pub dumps: AtomicU64,
    pub notifications: AtomicU64,
    pub errors: AtomicU64,
}

async fn dump(handle: &rtnetlink::Handle, generation: u64) -> Result<NextHops> {
    let mut routes = Vec::new();
    for msg in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let mut s = handle.route().get(msg).execute();
        while let Some(m) = s.try_next().await.context("route dump")? {
            if let Some(r) = route_from(&m) {
                routes.push(r);
            }
        }
    }
    let mut neigh = HashMap::new();
    let mut s = handle.neighbours().get().execute();
    while let Some(m) = s.try_next().await.context("neighbour dump")? {
        if let Some((k, mac)) = neigh_from(&m) {
            neigh.insert(k, mac);
        }
    }
    Ok(NextHops::new(routes, neigh, generation))
}

/// Starts the rtnetlink mirror thread. It publishes a first snapshot before
/// this returns (or returns the error), then keeps `out` current until
/// `stop` is set.
pub fn spawn_mirror(
    out: Arc<ArcSwap<NextHops>>,
    stop: Arc<AtomicBool>,
    stats: Arc<MirrorStats>,
) -> Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime for rtnetlink")?;
    // The subscription first, then the dump: a change between the two is
    // seen as a notification and causes another dump.
    let (first, handle, messages) = rt.block_on(async {
        let (mconn, _mh, messages) = new_multicast_connection(&[
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ])
        .context("rtnetlink multicast socket")?;
        tokio::spawn(mconn);
        let (conn, handle, _) = new_connection().context("rtnetlink socket")?;
        tokio::spawn(conn);
        let first = dump(&handle, 1).await?;
        anyhow::Ok((first, handle, messages))
    })?;
    stats.dumps.fetch_add(1, Ordering::Relaxed);
    out.store(Arc::new(first));
    let th = std::thread::Builder::new()
        .name("edgeplane-nexthop".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut messages = messages;
                let mut generation = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    // Wait for a notification (or wake up to check `stop`).
                    match tokio::time::timeout(Duration::from_millis(200), messages.next()).await {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            tracing::warn!("rtnetlink notifications ended; next hops are frozen");
                            return;
                        }
                        Err(_) => continue,
                    }
                    stats.notifications.fetch_add(1, Ordering::Relaxed);
                    // Coalesce a burst: drain what is queued for up to 2 ms.
                    let until = tokio::time::Instant::now() + Duration::from_millis(2);
                    while let Ok(Some(_)) = tokio::time::timeout_at(until, messages.next()).await {
                        stats.notifications.fetch_add(1, Ordering::Relaxed);
                    }
                    generation += 1;
                    match dump(&handle, generation).await {
                        Ok(nh) => {
                            stats.dumps.fetch_add(1, Ordering::Relaxed);
                            out.store(Arc::new(nh));
                        }
                        Err(e) => {
                            stats.errors.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("next-hop dump failed, keeping the last one: {e:#}");
                        }
                    }
                }
            })
        })
        .context("spawning the next-hop thread")?;
    Ok(th)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn r(net: &str, len: u8, gw: Option<&str>, oif: u32, metric: u32) -> Route {
        let ip: IpAddr = net.parse().unwrap();
        let (k, v6) = key(ip);
        let len = len + if v6 { 0 } else { 96 };
        Route {
            net: k & mask(len),
            prefix_len: len,
            v6,
            gateway: gw.map(|g| g.parse().unwrap()),
            oif,
            metric,
        }
    }

    #[test]
    fn longest_prefix_then_metric_then_neighbour() {
        let mac_gw = [2, 0, 0, 0, 0, 1];
        let mac_b = [2, 0, 0, 0, 0, 2];
        let mut neigh = HashMap::new();
        neigh.insert((3, v4("198.18.0.254")), mac_gw);
        neigh.insert((4, v4("198.18.2.2")), mac_b);
        let nh = NextHops::new(
            vec![
                r("0.0.0.0", 0, Some("198.18.0.254"), 3, 0),
                r("198.18.2.0", 24, None, 4, 100),
                r("198.18.2.0", 24, None, 5, 200),
                r("2001:db8:2::", 64, None, 4, 0),
            ],
            neigh,
            1,
        );
        assert_eq!(
            nh.lookup(v4("198.18.2.2")),
            Hop::Resolved {
                ifindex: 4,
                mac: mac_b
            }
        );
        assert_eq!(
            nh.lookup(v4("198.18.2.3")),
            Hop::Unresolved {
                ifindex: 4,
                via: v4("198.18.2.3")
            }
        );
        // Default route: the gateway's MAC.
        assert_eq!(
            nh.lookup(v4("198.19.9.9")),
            Hop::Resolved {
                ifindex: 3,
                mac: mac_gw
            }
        );
        assert_eq!(
            nh.lookup("2001:db8:2::7".parse().unwrap()),
            Hop::Unresolved {
                ifindex: 4,
                via: "2001:db8:2::7".parse().unwrap()
            }
        );
        // No IPv6 default route.
        assert_eq!(nh.lookup("2001:db8:9::1".parse().unwrap()), Hop::NoRoute);
    }
}
