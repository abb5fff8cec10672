//! Behaviour that spans several packets or several table generations: spread,
//! session affinity, cross-node consistency, endpoint changes, conntrack and
//! SNAT exhaustion, and the NAT round trip as a property.

mod support;

use std::collections::HashMap;
use std::net::IpAddr;

use edgeplane_dataplane::engine::Decision;
use edgeplane_dataplane::{DropReason, Engine, Tables, Verdict};
use proptest::prelude::*;
use support::*;

const GOLDEN: &str = include_str!("../examples/golden/services.yaml");
const SEC: u64 = 1_000_000_000;

fn send(e: &mut Engine, t: &Tables, now: u64, p: &Pkt) -> (Decision, Vec<u8>) {
    let frame = p.bytes();
    let mut buf = vec![0u8; 2048];
    buf[..frame.len()].copy_from_slice(&frame);
    let d = e.process(now, &mut buf, frame.len(), t);
    let out = match d.verdict {
        Verdict::Tx { len, .. } | Verdict::Reject { len } => buf[..len].to_vec(),
        _ => vec![],
    };
    (d, out)
}

/// The (src, sport) the engine rewrote an original-direction frame to.
fn snat_of(out: &[u8]) -> (IpAddr, u16) {
    let p = edgeplane_packet::parse(out).expect("output parses");
    (p.src, p.sport)
}

fn client(i: usize) -> String {
    format!("198.18.{}.{}", 10 + i / 250, 1 + i % 250)
}

/// golden.yaml with every line containing `needle` replaced by `with`.
fn edit(needle: &str, with: &str) -> String {
    GOLDEN
        .lines()
        .map(|l| {
            if l.contains(needle) {
                with.to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn new_flows_spread_evenly_over_three_backends() {
    let mut t = golden_tables();
    // 1000 flows per backend: more than the fixture's 1000-port SNAT range holds.
    t.node.snat_ports = (20000, 29999);
    let mut e = Engine::standalone(8192);
    let mut per: HashMap<IpAddr, u32> = HashMap::new();
    let n = 3000;
    for i in 0..n {
        let (d, _) = send(
            &mut e,
            &t,
            SEC,
            &Pkt::tcp(
                &client(i % 1000),
                20000 + (i / 1000) as u16,
                "198.18.200.19",
                80,
                SYN,
            ),
        );
        *per.entry(d.backend.expect("forwarded").0).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    for (b, c) in &per {
        let even = n as f64 / 3.0;
        assert!(
            (*c as f64 - even).abs() <= 0.15 * even,
            "backend {b} got {c} of {n} flows"
        );
    }
}

#[test]
fn every_node_picks_the_same_backend_for_a_flow() {
    // Two nodes compile the same objects (in a different order) with the same
    // seed: Maglev tables and flow hashes agree, so a flow re-routed to
    // another node by an ECMP change lands on the same backend.
    let t1 = golden_tables();
    let reversed: Vec<&str> = GOLDEN
        .split("\n---\n")
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let t2 = compile_fixture(&reversed.join("\n---\n"), 1);
    let (mut a, mut b) = (Engine::standalone(4096), Engine::standalone(4096));
    for i in 0..500 {
        let p = Pkt::tcp(&client(i), 33000 + i as u16, "198.18.200.19", 80, SYN);
        assert_eq!(
            send(&mut a, &t1, SEC, &p).0.backend,
            send(&mut b, &t2, SEC, &p).0.backend
        );
    }
}

#[test]
fn client_ip_affinity_sticks_and_expires() {
    let t = golden_tables();
    let mut e = Engine::standalone(8192);
    let mut chosen = Vec::new();
    for c in 0..30 {
        let first = send(
            &mut e,
            &t,
            SEC,
            &Pkt::tcp(&client(c), 1000, "198.18.200.18", 80, SYN),
        )
        .0
        .backend
        .unwrap();
        for port in 1001..1020 {
            let d = send(
                &mut e,
                &t,
                2 * SEC,
                &Pkt::tcp(&client(c), port, "198.18.200.18", 80, SYN),
            )
            .0;
            assert_eq!(
                d.backend.unwrap(),
                first,
                "client {c} moved to another backend"
            );
        }
        chosen.push(first);
    }
    chosen.sort();
    chosen.dedup();
    assert!(
        chosen.len() > 1,
        "all clients on one backend: affinity must not collapse the spread"
    );
}

#[test]
fn a_flow_keeps_its_backend_and_port_across_unrelated_table_changes() {
    let t1 = golden_tables();
    let mut e = Engine::standalone(1024);
    let syn = Pkt::tcp(C4, 5555, "198.18.200.19", 80, SYN);
    let (d1, o1) = send(&mut e, &t1, SEC, &syn);
    // Generation 2: an unrelated Service loses its endpoint.
    let t2 = compile_fixture(&edit("198.18.7.2", ""), 2);
    let (d2, o2) = send(
        &mut e,
        &t2,
        2 * SEC,
        &Pkt::tcp(C4, 5555, "198.18.200.19", 80, ACK),
    );
    assert_eq!(d1.backend, d2.backend);
    assert_eq!(snat_of(&o1), snat_of(&o2));
}

const C4: &str = "198.18.0.100";

/// The backend line of the `spread` Service for `ip`.
fn spread_line(ip: &str) -> String {
    format!("- {{addresses: [{ip}], conditions: {{ready: true}}, nodeName: node-b}}")
}

#[test]
fn udp_flow_to_a_removed_backend_is_rebalanced_at_once() {
    let t1 = golden_tables();
    let mut e = Engine::standalone(1024);
    let q = Pkt::udp(C4, 5353, "198.18.200.19", 53);
    let (d1, o1) = send(&mut e, &t1, SEC, &q);
    let (gone, _) = d1.backend.unwrap();
    let t2 = compile_fixture(&edit(&spread_line(&gone.to_string()), ""), 2);
    // A late reply from the removed backend is dropped...
    let (snat, sport) = snat_of(&o1);
    let late = Pkt::udp(&gone.to_string(), 5353, &snat.to_string(), sport);
    assert_eq!(
        send(&mut e, &t2, 2 * SEC, &late).0.verdict,
        Verdict::Drop(DropReason::BackendGone)
    );
    // ...and the client's next datagram goes to a live backend, not into a blackhole.
    let (d2, _) = send(&mut e, &t2, 3 * SEC, &q);
    assert!(matches!(d2.verdict, Verdict::Tx { .. }));
    assert_ne!(d2.backend.unwrap().0, gone);
    assert_eq!(e.stats().backend_gone, 1);
}

#[test]
fn tcp_flow_to_a_removed_backend_is_reset_and_a_new_syn_is_rebalanced() {
    let t1 = golden_tables();
    let mut e = Engine::standalone(1024);
    let (d1, _) = send(
        &mut e,
        &t1,
        SEC,
        &Pkt::tcp(C4, 6000, "198.18.200.19", 80, SYN),
    );
    let (gone, _) = d1.backend.unwrap();
    let t2 = compile_fixture(&edit(&spread_line(&gone.to_string()), ""), 2);
    let data = Pkt::tcp(C4, 6000, "198.18.200.19", 80, ACK | PSH)
        .seq_ack(2000, 3000)
        .payload(b"more");
    let (d2, out) = send(&mut e, &t2, 2 * SEC, &data);
    assert!(matches!(d2.verdict, Verdict::Reject { .. }), "{d2:?}");
    let rst = edgeplane_packet::parse(&out).unwrap();
    assert_eq!(
        (rst.src, rst.dst, rst.sport, rst.dport),
        (ip("198.18.200.19"), ip(C4), 80, 6000)
    );
    assert_eq!(rst.tcp_flags & RST, RST);
    verify_checksums(&out);
    // The client reconnects from the same port: a fresh flow on a live backend.
    let (d3, _) = send(
        &mut e,
        &t2,
        3 * SEC,
        &Pkt::tcp(C4, 6000, "198.18.200.19", 80, SYN),
    );
    assert!(matches!(d3.verdict, Verdict::Tx { .. }));
    assert_ne!(d3.backend.unwrap().0, gone);
}

#[test]
fn a_removed_backends_late_answer_becomes_a_rst_to_the_client() {
    let t1 = golden_tables();
    let mut e = Engine::standalone(1024);
    let (d1, out) = send(
        &mut e,
        &t1,
        SEC,
        &Pkt::tcp(C4, 6100, "198.18.200.19", 80, SYN),
    );
    let (gone, bport) = d1.backend.unwrap();
    let (snat, sport) = snat_of(&out);
    let t2 = compile_fixture(&edit(&spread_line(&gone.to_string()), ""), 2);
    // The first segment after the change is the removed backend's answer:
    // the client is waiting for it and would hang if it were only dropped.
    let late = Pkt::tcp(
        &gone.to_string(),
        bport,
        &snat.to_string(),
        sport,
        ACK | PSH,
    )
    .seq_ack(9000, 2001)
    .payload(b"late");
    let (d2, out) = send(&mut e, &t2, 2 * SEC, &late);
    assert!(
        matches!(
            d2.verdict,
            Verdict::Tx {
                egress: edgeplane_dataplane::engine::Egress::Route,
                ..
            }
        ),
        "{d2:?}"
    );
    verify_checksums(&out);
    let rst = edgeplane_packet::parse(&out).unwrap();
    assert_eq!(
        (rst.src, rst.dst, rst.sport, rst.dport),
        (ip("198.18.200.19"), ip(C4), 80, 6100),
        "from the Service to the client"
    );
    assert_eq!(rst.tcp_flags, RST);
    let tcp = &out[usize::from(rst.l4_off)..];
    assert_eq!(
        u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
        9000,
        "the segment's seq"
    );
    assert_eq!(e.stats().backend_gone, 1);
    // The flow is gone: a late RST from the backend is not answered.
    let late_rst = Pkt::tcp(&gone.to_string(), bport, &snat.to_string(), sport, RST);
    assert!(!matches!(
        send(&mut e, &t2, 2 * SEC, &late_rst).0.verdict,
        Verdict::Tx { .. }
    ));
}

#[test]
fn a_terminating_backend_keeps_its_flows_but_gets_no_new_ones() {
    let t1 = golden_tables();
    let mut e = Engine::standalone(8192);
    let (d1, _) = send(
        &mut e,
        &t1,
        SEC,
        &Pkt::tcp(C4, 7000, "198.18.200.19", 80, SYN),
    );
    let (draining, _) = d1.backend.unwrap();
    let term = format!(
        "- {{addresses: [{draining}], conditions: {{ready: false, serving: true, terminating: true}}, nodeName: node-b}}"
    );
    let t2 = compile_fixture(&edit(&spread_line(&draining.to_string()), &term), 2);
    let (d2, _) = send(
        &mut e,
        &t2,
        2 * SEC,
        &Pkt::tcp(C4, 7000, "198.18.200.19", 80, ACK),
    );
    assert_eq!(
        d2.backend.unwrap().0,
        draining,
        "the open connection finishes on its backend"
    );
    for i in 0..300 {
        let (d, _) = send(
            &mut e,
            &t2,
            3 * SEC,
            &Pkt::tcp(&client(i), 8000, "198.18.200.19", 80, SYN),
        );
        assert_ne!(
            d.backend.unwrap().0,
            draining,
            "a new flow went to a terminating endpoint"
        );
    }
}

#[test]
fn a_syn_flood_does_not_evict_established_flows() {
    let t = golden_tables();
    let mut e = Engine::standalone(64);
    let mut now = SEC;
    let mut est = Vec::new();
    // 32 established flows: SYN, SYN-ACK, ACK.
    for i in 0..32 {
        let c = client(i);
        let (d, out) = send(
            &mut e,
            &t,
            now,
            &Pkt::tcp(&c, 9000, "198.18.200.19", 80, SYN),
        );
        let (b, bport) = d.backend.unwrap();
        let (snat, sport) = snat_of(&out);
        let synack = Pkt::tcp(&b.to_string(), bport, &snat.to_string(), sport, SYN | ACK);
        assert!(matches!(
            send(&mut e, &t, now, &synack).0.verdict,
            Verdict::Tx { .. }
        ));
        assert!(matches!(
            send(
                &mut e,
                &t,
                now,
                &Pkt::tcp(&c, 9000, "198.18.200.19", 80, ACK)
            )
            .0
            .verdict,
            Verdict::Tx { .. }
        ));
        est.push((c, sport));
    }
    // 20,000 spoofed SYNs from never-answering sources.
    let (mut full, mut fwd) = (0, 0);
    for i in 0..20_000usize {
        now += 1_000;
        let src = format!("198.19.{}.{}", i / 250 % 250, 1 + i % 250);
        match send(
            &mut e,
            &t,
            now,
            &Pkt::tcp(&src, 1024 + (i % 60000) as u16, "198.18.200.19", 80, SYN),
        )
        .0
        .verdict
        {
            Verdict::Drop(DropReason::ConntrackFull) => full += 1,
            Verdict::Tx { .. } => fwd += 1,
            v => panic!("unexpected verdict under flood: {v:?}"),
        }
    }
    // Every established flow still translates, on its own port.
    for (c, sport) in &est {
        let (d, out) = send(
            &mut e,
            &t,
            now,
            &Pkt::tcp(c, 9000, "198.18.200.19", 80, ACK | PSH).payload(b"x"),
        );
        assert!(
            matches!(d.verdict, Verdict::Tx { .. }),
            "established flow from {c} lost: {d:?}"
        );
        assert_eq!(snat_of(&out).1, *sport);
    }
    // A new legitimate connection still gets in (it evicts a flood entry).
    let (d, _) = send(
        &mut e,
        &t,
        now,
        &Pkt::tcp("198.18.0.7", 4242, "198.18.200.19", 80, SYN),
    );
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    let ct = e.flow_state().conntrack.stats();
    println!(
        "SYN flood: {fwd} forwarded (evicting unconfirmed), {full} refused, {} evictions",
        ct.evictions
    );
    assert!(ct.evictions > 0);
    assert!(e.flow_state().conntrack.len() <= 64);
}

/// Opens a TCP flow (SYN, the backend's SYN-ACK, ACK): confirmed. Returns
/// its SNAT port.
fn handshake(e: &mut Engine, t: &Tables, now: u64, c: &str, sport: u16, vip: &str) -> u16 {
    let (d, out) = send(e, t, now, &Pkt::tcp(c, sport, vip, 80, SYN));
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    let (b, bport) = d.backend.unwrap();
    let (snat, port) = snat_of(&out);
    let synack = Pkt::tcp(&b.to_string(), bport, &snat.to_string(), port, SYN | ACK);
    assert!(matches!(
        send(e, t, now, &synack).0.verdict,
        Verdict::Tx { .. }
    ));
    let ack = Pkt::tcp(c, sport, vip, 80, ACK);
    assert!(matches!(
        send(e, t, now, &ack).0.verdict,
        Verdict::Tx { .. }
    ));
    port
}

#[test]
fn snat_port_exhaustion_drops_new_flows_and_never_reuses_a_live_port() {
    let mut t = golden_tables();
    t.node.snat_ports = (40000, 40003);
    let mut e = Engine::standalone(1024);
    // `draining` has a single backend, so every flow competes for its 4
    // ports. Four confirmed (handshake complete) flows take all of them.
    let mut by_client = Vec::new();
    for i in 0..4 {
        by_client.push(handshake(
            &mut e,
            &t,
            SEC,
            &client(i),
            5000,
            "198.18.200.16",
        ));
    }
    let mut ports = by_client.clone();
    ports.sort();
    assert_eq!(ports, vec![40000, 40001, 40002, 40003]);
    let (d, _) = send(
        &mut e,
        &t,
        SEC,
        &Pkt::tcp(&client(9), 5000, "198.18.200.16", 80, SYN),
    );
    assert_eq!(d.verdict, Verdict::Drop(DropReason::SnatPortsExhausted));
    assert_eq!(e.stats().dropped(DropReason::SnatPortsExhausted), 1);
    assert_eq!(e.stats().snat_port_evictions, 0);
    // Live flows keep their ports.
    for (i, port) in by_client.iter().enumerate() {
        let (_, out) = send(
            &mut e,
            &t,
            2 * SEC,
            &Pkt::tcp(&client(i), 5000, "198.18.200.16", 80, ACK),
        );
        assert_eq!(snat_of(&out).1, *port);
    }
    // Once a flow is over (reset: CLOSE, evictable), its port comes back.
    let (d, _) = send(
        &mut e,
        &t,
        3 * SEC,
        &Pkt::tcp(&client(0), 5000, "198.18.200.16", 80, RST | ACK),
    );
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    let (d, out) = send(
        &mut e,
        &t,
        3 * SEC,
        &Pkt::tcp(&client(9), 5000, "198.18.200.16", 80, SYN),
    );
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    assert_eq!(snat_of(&out).1, by_client[0]);
}

#[test]
fn under_pressure_a_flow_takes_its_preferred_port_back_from_a_half_open_holder() {
    use edgeplane_dataplane::conntrack::FlowKey;
    use edgeplane_dataplane::engine::preferred_snat_port;
    let t = golden_tables();
    let (first, count) = (40000u16, 1000u32); // the golden world's one share
    let seed = t.node.hash_seed;
    let vip = "198.18.200.16"; // `draining`: one backend, 198.18.7.2:8080
    let key = |src: &str, sport: u16| FlowKey {
        src: src.parse().unwrap(),
        dst: vip.parse().unwrap(),
        sport,
        dport: 80,
        proto: 6,
    };
    let legit = ("198.18.0.77", 41000u16);
    let want = preferred_snat_port(seed, &key(legit.0, legit.1), first, count);
    // A flood tuple whose preferred port is the same.
    let rival = (1024u16..)
        .find(|&p| preferred_snat_port(seed, &key("198.19.9.9", p), first, count) == want)
        .unwrap();
    let mut e = Engine::standalone(64);
    // The legitimate SYN gets its preferred port.
    let (d, out) = send(&mut e, &t, SEC, &Pkt::tcp(legit.0, legit.1, vip, 80, SYN));
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    assert_eq!(snat_of(&out).1, want);
    // A flood fills the table (pressure) and evicts the legitimate entry.
    for i in 0..2_000usize {
        let src = format!("198.19.{}.{}", i / 250 % 250, 1 + i % 250);
        send(
            &mut e,
            &t,
            SEC + i as u64,
            &Pkt::tcp(&src, 1024 + i as u16, vip, 80, SYN),
        );
    }
    let lost = key(legit.0, legit.1);
    e.flow_state().conntrack.remove_key(&lost, 2 * SEC);
    // The rival takes the free port (it is its preferred one as well).
    let (d, out) = send(
        &mut e,
        &t,
        2 * SEC,
        &Pkt::tcp("198.19.9.9", rival, vip, 80, SYN),
    );
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    assert_eq!(snat_of(&out).1, want);
    assert!(
        e.flow_state().conntrack.len() >= 56,
        "the table is under pressure"
    );
    // The legitimate client's ACK is picked up on its own port, taken back
    // from the half-open rival, so the backend sees the connection it knows.
    let before = e.stats().snat_port_evictions;
    let (d, out) = send(
        &mut e,
        &t,
        2 * SEC,
        &Pkt::tcp(legit.0, legit.1, vip, 80, ACK),
    );
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    assert_eq!(snat_of(&out).1, want);
    assert_eq!(e.stats().snat_port_evictions, before + 1);
}

#[test]
fn a_segment_picked_up_without_a_free_snat_port_is_reset() {
    let mut t = golden_tables();
    t.node.snat_ports = (40000, 40003);
    let mut e = Engine::standalone(1024);
    for i in 0..4 {
        handshake(&mut e, &t, SEC, &client(i), 5000, "198.18.200.16");
    }
    // A mid-stream segment of an unknown flow: no port to pick it up on
    // (picked-up segments never take a port from another flow).
    let stray = Pkt::tcp(&client(9), 5000, "198.18.200.16", 80, ACK).seq_ack(777, 888);
    let (d, out) = send(&mut e, &t, SEC, &stray);
    assert!(matches!(d.verdict, Verdict::Reject { .. }), "{d:?}");
    let p = edgeplane_packet::parse(&out).unwrap();
    assert_eq!((p.dst.to_string(), p.dport, p.sport), (client(9), 5000, 80));
    assert_ne!(p.tcp_flags & RST, 0, "a RST");
    let tcp = &out[14 + 20..];
    assert_eq!(
        u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
        888,
        "seq = the segment's ack"
    );
    assert_eq!(e.stats().snat_port_evictions, 0);
}

#[test]
fn half_open_flows_give_up_their_snat_ports_to_new_ones() {
    let mut t = golden_tables();
    t.node.snat_ports = (40000, 40003);
    let mut e = Engine::standalone(1024);
    // Four half-open flows (a SYN each, never answered) hold the 4 ports.
    let mut held = Vec::new();
    for i in 0..4 {
        let (d, out) = send(
            &mut e,
            &t,
            SEC,
            &Pkt::tcp(&client(i), 5000, "198.18.200.16", 80, SYN),
        );
        assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
        held.push(snat_of(&out).1);
    }
    // A fifth takes a port from one of them instead of being dropped.
    let (d, out) = send(
        &mut e,
        &t,
        SEC,
        &Pkt::tcp(&client(9), 5000, "198.18.200.16", 80, SYN),
    );
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    let port = snat_of(&out).1;
    assert!(held.contains(&port));
    assert_eq!(e.stats().snat_port_evictions, 1);
    assert_eq!(e.stats().dropped(DropReason::SnatPortsExhausted), 0);
    assert_eq!(e.flow_state().conntrack.stats().evictions, 1);
    // The fifth flow is now the port's only holder: its replies translate.
    let synack = Pkt::tcp("198.18.7.2", 8080, "198.18.1.1", port, SYN | ACK);
    let (d, out) = send(&mut e, &t, SEC, &synack);
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    let p = edgeplane_packet::parse(&out).unwrap();
    assert_eq!((p.dst.to_string(), p.dport), (client(9), 5000));
}

#[test]
fn a_half_open_flow_evicted_under_a_flood_is_picked_up_on_its_own_port() {
    let t = golden_tables();
    // A tiny table: the flood's half-open flows evict each other and the
    // legitimate one before its handshake completes.
    let mut e = Engine::standalone(64);
    let vip = "198.18.200.19";
    let legit = Pkt::tcp("198.18.0.77", 41000, vip, 80, SYN);
    let (d, out) = send(&mut e, &t, SEC, &legit);
    assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
    let backend = d.backend.unwrap();
    let (snat, port) = snat_of(&out);
    for i in 0..5_000usize {
        let src = format!("198.19.{}.{}", i / 250 % 250, 1 + i % 250);
        send(
            &mut e,
            &t,
            SEC + i as u64,
            &Pkt::tcp(&src, 1024 + i as u16, vip, 80, SYN),
        );
    }
    // The legitimate flow's entry is gone: its SYN-ACK finds nothing and,
    // addressed to the node's IP (the SNAT address), goes to the kernel.
    let synack = Pkt::tcp(
        &backend.0.to_string(),
        backend.1,
        &snat.to_string(),
        port,
        SYN | ACK,
    );
    let (d, _) = send(&mut e, &t, 2 * SEC, &synack);
    assert_eq!(d.verdict, Verdict::Pass);
    // The client's retransmitted SYN and its ACK go out on the same port to
    // the same backend, so the backend's half-open connection completes.
    for flags in [SYN, ACK] {
        let (d, out) = send(
            &mut e,
            &t,
            3 * SEC,
            &Pkt::tcp("198.18.0.77", 41000, vip, 80, flags).seq_ack(1, 1),
        );
        assert!(matches!(d.verdict, Verdict::Tx { .. }), "{flags:#x}: {d:?}");
        assert_eq!(d.backend, Some(backend));
        assert_eq!(snat_of(&out), (snat, port), "{flags:#x}");
        // Lose the state again before the next segment.
        let key = edgeplane_dataplane::conntrack::FlowKey {
            src: "198.18.0.77".parse().unwrap(),
            dst: vip.parse().unwrap(),
            sport: 41000,
            dport: 80,
            proto: 6,
        };
        assert!(e.flow_state().conntrack.remove_key(&key, 3 * SEC));
    }
}

#[test]
fn batch_entry_point_matches_one_at_a_time() {
    let t = golden_tables();
    let frames: Vec<Vec<u8>> = (0..64)
        .map(|i| Pkt::tcp(&client(i), 1234, "198.18.200.19", 80, SYN).bytes())
        .collect();
    let mut one = Engine::standalone(1024);
    let singles: Vec<Decision> = frames
        .iter()
        .map(|f| {
            let mut b = vec![0u8; 2048];
            b[..f.len()].copy_from_slice(f);
            one.process(SEC, &mut b, f.len(), &t)
        })
        .collect();
    let mut batch = Engine::standalone(1024);
    let mut bufs: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut b = vec![0u8; 2048];
            b[..f.len()].copy_from_slice(f);
            b
        })
        .collect();
    let mut refs: Vec<(&mut [u8], usize)> = bufs
        .iter_mut()
        .zip(&frames)
        .map(|(b, f)| (b.as_mut_slice(), f.len()))
        .collect();
    let mut out = vec![
        Decision {
            verdict: Verdict::Pass,
            frontend: None,
            backend: None
        };
        64
    ];
    assert_eq!(batch.process_batch(SEC, &mut refs, &t, &mut out), 64);
    assert_eq!(out, singles);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// A request and its reply through the NAT restore both tuples exactly,
    /// for TCP, UDP and SCTP, IPv4 and IPv6, every frontend kind.
    #[test]
    fn nat_round_trip(c in 1u32..60000, sport in 1024u16..65535, which in 0usize..8) {
        let t = golden_tables();
        let mut e = Engine::standalone(1024);
        let (client, vip, vport, proto): (String, &str, u16, u8) = match which {
            0 => (format!("198.18.{}.{}", 10 + c / 250 % 200, 1 + c % 250), "198.18.200.10", 80, 6),
            1 => (format!("198.18.{}.{}", 10 + c / 250 % 200, 1 + c % 250), "198.18.100.10", 53, 17),
            2 => (format!("198.18.{}.{}", 10 + c / 250 % 200, 1 + c % 250), "198.18.1.1", 30868, 132),
            3 => (format!("198.18.{}.{}", 10 + c / 250 % 200, 1 + c % 250), "198.18.150.10", 80, 6),
            4 => (format!("2001:db8::{:x}", c), "2001:db8:200::10", 53, 17),
            5 => (format!("2001:db8::{:x}", c), "2001:db8:100::10", 80, 6),
            6 => (format!("2001:db8::{:x}", c), "2001:db8:1::1", 30080, 6),
            _ => (format!("198.18.{}.{}", 10 + c / 250 % 200, 1 + c % 250), "198.18.100.12", 80, 6),
        };
        let req = match proto {
            6 => Pkt::tcp(&client, sport, vip, vport, SYN),
            17 => Pkt::udp(&client, sport, vip, vport),
            _ => Pkt::sctp(&client, sport, vip, vport),
        };
        let (d, out) = send(&mut e, &t, SEC, &req);
        prop_assert!(matches!(d.verdict, Verdict::Tx { .. }), "{:?}", d);
        verify_checksums(&out);
        let fwd = edgeplane_packet::parse(&out).unwrap();
        let (b, bport) = d.backend.unwrap();
        prop_assert_eq!((fwd.dst, fwd.dport), (b, bport));
        // The backend answers the translated source.
        let src = fwd.dst.to_string();
        let dst = fwd.src.to_string();
        let reply = match proto {
            6 => Pkt::tcp(&src, fwd.dport, &dst, fwd.sport, SYN | ACK),
            17 => Pkt::udp(&src, fwd.dport, &dst, fwd.sport),
            _ => Pkt::sctp(&src, fwd.dport, &dst, fwd.sport),
        };
        let (d2, back) = send(&mut e, &t, SEC + 1, &reply);
        prop_assert!(matches!(d2.verdict, Verdict::Tx { .. }), "{:?}", d2);
        verify_checksums(&back);
        let r = edgeplane_packet::parse(&back).unwrap();
        prop_assert_eq!((r.src, r.sport, r.dst, r.dport), (ip(vip), vport, ip(&client), sport));
    }
}

#[test]
fn workers_share_conntrack_and_never_collide_on_snat_ports() {
    use edgeplane_dataplane::conntrack::Timeouts;
    use edgeplane_dataplane::engine::{EngineConfig, FlowState};
    use std::sync::Arc;
    let t = golden_tables(); // SNAT ports 40000-40999
    let state = Arc::new(FlowState::new(4096, 4096, 7, Timeouts::default()));
    let mut workers: Vec<Engine> = (0..2u8)
        .map(|w| {
            Engine::new(
                EngineConfig {
                    worker: w,
                    workers: 2,
                    ..EngineConfig::default()
                },
                state.clone(),
            )
        })
        .collect();
    let mut ports = [Vec::new(), Vec::new()];
    for i in 0..400 {
        let w = i % 2;
        let (d, out) = send(
            &mut workers[w],
            &t,
            SEC,
            &Pkt::tcp(&client(i), 3000, "198.18.200.16", 80, SYN),
        );
        assert!(matches!(d.verdict, Verdict::Tx { .. }), "{d:?}");
        let (snat, sport) = snat_of(&out);
        ports[w].push(sport);
        // The reply arrives on the other worker's queue and is still translated.
        let reply = Pkt::tcp("198.18.7.2", 8080, &snat.to_string(), sport, SYN | ACK);
        let (r, back) = send(&mut workers[1 - w], &t, SEC, &reply);
        assert!(matches!(r.verdict, Verdict::Tx { .. }), "{r:?}");
        let b = edgeplane_packet::parse(&back).unwrap();
        assert_eq!((b.dst, b.dport), (ip(&client(i)), 3000));
    }
    assert!(
        ports[0].iter().all(|p| (40000..40500).contains(p)),
        "worker 0 left its share"
    );
    assert!(
        ports[1].iter().all(|p| (40500..41000).contains(p)),
        "worker 1 left its share"
    );
}
