//! Maglev properties (balance, minimal disruption, order independence) and
//! order independence of the whole compile.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edgeplane_control::compile::compile;
use edgeplane_control::maglev::{build, shares};
use edgeplane_control::manifests::load_str;
use proptest::prelude::*;

fn backend_set() -> impl Strategy<Value = Vec<(IpAddr, u16, u32)>> {
    prop::collection::btree_set((any::<u32>(), any::<bool>(), 1u16..), 1..=100).prop_map(|s| {
        s.into_iter()
            .map(|(a, v6, port)| {
                let ip = if v6 {
                    IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0,
                        0,
                        0,
                        0,
                        (a >> 16) as u16,
                        a as u16,
                    ))
                } else {
                    IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (a & 0x0001_ffff)))
                };
                (ip, port, 1)
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// With M > 100·N, the largest and smallest shares differ by at most 1% of M.
    #[test]
    fn balance(b in backend_set(), seed in any::<u64>()) {
        let m = 16381;
        prop_assume!(m > 100 * b.len() as u32);
        let s = shares(&build(&b, m, seed), b.len());
        let (lo, hi) = (*s.iter().min().unwrap(), *s.iter().max().unwrap());
        prop_assert!((hi - lo) as f64 <= 0.01 * m as f64, "{lo}..{hi}");
        prop_assert_eq!(s.iter().sum::<u32>(), m);
    }

    /// Removing one of N=100 backends at M=16381 moves its own slots and only
    /// a small part of the other backends' slots: at most 4% in any single
    /// case. Measured over 3,000 random sets (2026-11-23): median 1.34%,
    /// p99 1.61%, p99.9 2.35%, max 2.60%, and one CI run drew 2.69% — the
    /// NSDI population loop has a long tail, so a per-case bound tighter
    /// than that makes a flaky test. The 1.5% bound on the mean is checked
    /// deterministically by `minimal_disruption_on_average`.
    #[test]
    fn minimal_disruption(b in backend_set().prop_filter("100 backends", |b| b.len() >= 100), victim in 0usize..100, seed in any::<u64>()) {
        let m = 16381;
        let b: Vec<_> = b.into_iter().take(100).collect();
        let before = build(&b, m, seed);
        let mut fewer = b.clone();
        let gone = fewer.remove(victim);
        let after = build(&fewer, m, seed);
        let mut others = 0u32;
        let mut moved = 0u32;
        for (x, y) in before.iter().zip(&after) {
            let was = b[*x as usize];
            if was == gone {
                continue;
            }
            others += 1;
            if fewer[*y as usize] != was {
                moved += 1;
            }
        }
        prop_assert!(moved as f64 <= 0.04 * others as f64, "moved {moved} of {others}");
    }

    /// The slot → backend mapping does not depend on the input order.
    #[test]
    fn order_independence(b in backend_set(), seed in any::<u64>(), rot in any::<prop::sample::Index>()) {
        let m = 4093;
        let mut shuffled = b.clone();
        shuffled.reverse();
        let k = rot.index(shuffled.len());
        shuffled.rotate_left(k);
        let t1 = build(&b, m, seed);
        let t2 = build(&shuffled, m, seed);
        for (x, y) in t1.iter().zip(&t2) {
            prop_assert_eq!(b[*x as usize], shuffled[*y as usize]);
        }
    }
}

/// Moved fraction of the other backends' slots when `victim` leaves.
fn disruption(b: &[(IpAddr, u16, u32)], victim: usize, m: u32, seed: u64) -> f64 {
    let before = build(b, m, seed);
    let mut fewer = b.to_vec();
    let gone = fewer.remove(victim);
    let after = build(&fewer, m, seed);
    let (mut others, mut moved) = (0u32, 0u32);
    for (x, y) in before.iter().zip(&after) {
        let was = b[*x as usize];
        if was != gone {
            others += 1;
            moved += u32::from(fewer[*y as usize] != was);
        }
    }
    moved as f64 / others as f64
}

/// Over 32 deterministic removals (N=100, M=16381), at most 1.5% of the
/// other backends' slots move on average.
#[test]
fn minimal_disruption_on_average() {
    let mut sum = 0.0;
    for t in 0..32u32 {
        let b: Vec<(IpAddr, u16, u32)> = (0..100u32)
            .map(|i| {
                (
                    IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i * 7919 + t * 1031)),
                    8080,
                    1,
                )
            })
            .collect();
        sum += disruption(&b, (t as usize * 37) % 100, 16381, t as u64);
    }
    let mean = sum / 32.0;
    assert!(mean <= 0.015, "mean disruption {:.3}%", mean * 100.0);
}

fn demo_yaml(order: &[usize], slice_order: &[usize]) -> String {
    let services = [
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {type: NodePort, clusterIPs: [198.18.200.1, \"2001:db8:200::1\"], ports: [{name: http, port: 80, nodePort: 30080}, {name: dns, port: 53, protocol: UDP}]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 198.18.200.2, sessionAffinity: ClientIP, ports: [{name: http, port: 80}]}\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec: {clusterIP: 198.18.200.1, ports: [{name: http, port: 80}]}\n",
    ];
    let mut eps4: Vec<String> = (1..=12)
        .map(|i| {
            format!(
                "  - {{addresses: [198.18.2.{i}], nodeName: node-{}}}\n",
                i % 3
            )
        })
        .collect();
    let mut slices = vec![
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a6, labels: {kubernetes.io/service-name: a}}\naddressType: IPv6\nports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]\nendpoints:\n  - {addresses: [\"2001:db8:2::1\"]}\n  - {addresses: [\"2001:db8:2::2\"], conditions: {ready: false, serving: true, terminating: true}}\n".to_string(),
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: b1, labels: {kubernetes.io/service-name: b}}\naddressType: IPv4\nports: [{name: http, port: 9000}]\nendpoints:\n  - {addresses: [198.18.3.1]}\n  - {addresses: [198.18.3.2]}\n".to_string(),
    ];
    eps4.rotate_left(slice_order.first().copied().unwrap_or(0) % 12);
    let (x, y) = eps4.split_at(5);
    slices.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: a4-1, labels: {{kubernetes.io/service-name: a}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n{}", x.concat()));
    slices.push(format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: a4-2, labels: {{kubernetes.io/service-name: a}}}}\naddressType: IPv4\nports: [{{name: dns, port: 5353, protocol: UDP}}, {{name: http, port: 8080}}]\nendpoints:\n{}", y.concat()));
    let mut docs: Vec<String> = order.iter().map(|&i| services[i % 3].to_string()).collect();
    for &i in slice_order {
        docs.push(slices[i % slices.len()].clone());
    }
    docs.join("---\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Shuffled Services, EndpointSlices and endpoints compile to identical tables.
    #[test]
    fn compile_is_order_independent(order in Just(vec![0usize, 1, 2]).prop_shuffle(), slices in Just(vec![0usize, 1, 2, 3]).prop_shuffle()) {
        let o = common::opts("node-1", &["198.18.1.1", "2001:db8:1::1"]);
        let base = compile(&load_str("a", &demo_yaml(&[0, 1, 2], &[0, 1, 2, 3])).0, &o, 1).unwrap();
        let other = compile(&load_str("b", &demo_yaml(&order, &slices)).0, &o, 1).unwrap();
        prop_assert_eq!(&base.tables.frontends, &other.tables.frontends);
        prop_assert_eq!(&base.tables.backends, &other.tables.backends);
        prop_assert_eq!(&base.tables.maglev, &other.tables.maglev);
        prop_assert_eq!(&base.tables.services, &other.tables.services);
        prop_assert_eq!(&base.warnings, &other.warnings);
        prop_assert_eq!(&base.report, &other.report);
    }
}
