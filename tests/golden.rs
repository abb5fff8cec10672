//! The golden packet table: each row is a description, the frames that set up
//! state, the input frame, and the expected verdict with the exact expected
//! output frame. Frames are built by `support::Pkt` (hand-written, sharing no
//! code with `packet/`), and every output's checksums are verified again with
//! `etherparse`. The same rows seed the fuzz corpus and the benches.
//!
//! World: node `node-a` at 198.18.1.1 / 2001:db8:1::1, SNAT from those
//! addresses on ports 40000-40999 (one worker; a new SNAT flow gets its
//! preferred port, computed by `snat()` below). Services:
//! examples/golden/services.yaml.

mod support;

use edgeplane_dataplane::conntrack::FlowKey;
use edgeplane_dataplane::engine::{preferred_snat_port, Decision, Egress};
use edgeplane_dataplane::{DropReason, Engine, Tables, Verdict};
use support::*;

const C4: &str = "198.18.0.100";
const C6: &str = "2001:db8::100";
const N4: &str = "198.18.1.1";
const N6: &str = "2001:db8:1::1";

/// The SNAT port the engine gives the first flow of client packet `p`: its
/// preferred port (a seeded hash of the tuple; see
/// `engine::preferred_snat_port`) in the world's one-worker share
/// 40000-40999. Rows whose flows would collide on a port must not share a
/// case (a test below checks the world's rows do not).
fn snat(p: &Pkt) -> u16 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| golden_tables().node.hash_seed);
    let (sport, dport, proto) = match p.l4 {
        L4::Tcp { sport, dport, .. } => (sport, dport, 6),
        L4::Udp { sport, dport, .. } => (sport, dport, 17),
        L4::Sctp { sport, dport, .. } => (sport, dport, 132),
        _ => panic!("snat() of a packet without ports"),
    };
    let key = FlowKey {
        src: p.src,
        dst: p.dst,
        sport,
        dport,
        proto,
    };
    preferred_snat_port(seed, &key, 40000, 1000)
}

/// What a row expects.
#[derive(Debug)]
enum Expect {
    /// Translated and routed: exactly this frame.
    Tx(Pkt),
    /// Answered back out the same interface: exactly this frame.
    Reflect(Pkt),
    /// An ICMP port unreachable to the sender, quoting the input.
    Unreachable,
    Pass,
    Drop(DropReason),
}

struct Case {
    name: &'static str,
    setup: Vec<Pkt>,
    input: Pkt,
    expect: Expect,
}

fn case(name: &'static str, input: Pkt, expect: Expect) -> Case {
    Case {
        name,
        setup: vec![],
        input,
        expect,
    }
}

fn after(name: &'static str, setup: Vec<Pkt>, input: Pkt, expect: Expect) -> Case {
    Case {
        name,
        setup,
        input,
        expect,
    }
}

fn swap_macs(p: Pkt) -> Pkt {
    let (s, d) = (p.eth_src, p.eth_dst);
    p.macs(d, s)
}

/// A frame from the backend side (addresses given), arriving at the node.
fn from_backend(p: Pkt) -> Pkt {
    p.macs([0x02, 0, 0, 0, 0, 0x03], NODE_MAC)
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // ---- TCP to a ClusterIP ------------------------------------------------
    let syn4 = Pkt::tcp(C4, 12345, "198.18.200.10", 80, SYN);
    let syn6 = Pkt::tcp(C6, 12345, "2001:db8:200::10", 80, SYN);
    v.push(case(
        "tcp4 SYN to ClusterIP: DNAT to the backend, SNAT to the node",
        syn4.clone(),
        Expect::Tx(syn4.clone().to(N4, snat(&syn4), "198.18.2.2", 8080)),
    ));
    v.push(case(
        "tcp6 SYN to ClusterIP",
        syn6.clone(),
        Expect::Tx(syn6.clone().to(N6, snat(&syn6), "2001:db8:2::2", 8080)),
    ));
    v.push(case(
        "tcp4 SYN with an 802.1Q tag keeps the tag",
        syn4.clone().vlan(100),
        Expect::Tx(
            syn4.clone()
                .vlan(100)
                .to(N4, snat(&syn4), "198.18.2.2", 8080),
        ),
    ));
    v.push(case(
        "tcp6 SYN with two VLAN tags (QinQ)",
        syn6.clone().vlan(10).vlan(20),
        Expect::Tx(
            syn6.clone()
                .vlan(10)
                .vlan(20)
                .to(N6, snat(&syn6), "2001:db8:2::2", 8080),
        ),
    ));
    let mut opt4 = syn4.clone();
    opt4.v4_options = vec![0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL
    v.push(case(
        "tcp4 SYN with IPv4 options",
        opt4.clone(),
        Expect::Tx(opt4.clone().to(N4, snat(&opt4), "198.18.2.2", 8080)),
    ));
    let mut ext6 = syn6.clone();
    ext6.v6_ext = vec![0, 60]; // hop-by-hop, destination options
    v.push(case(
        "tcp6 SYN behind hop-by-hop and destination-options headers",
        ext6.clone(),
        Expect::Tx(ext6.clone().to(N6, snat(&ext6), "2001:db8:2::2", 8080)),
    ));
    let data4 =
        Pkt::tcp(C4, 12345, "198.18.200.10", 80, ACK | PSH).payload(b"GET / HTTP/1.1\r\n\r\n");
    let data6 =
        Pkt::tcp(C6, 12345, "2001:db8:200::10", 80, ACK | PSH).payload(b"GET / HTTP/1.1\r\n\r\n");
    v.push(after(
        "tcp4 data of an established flow keeps its SNAT port",
        vec![syn4.clone()],
        data4.clone(),
        Expect::Tx(data4.clone().to(N4, snat(&data4), "198.18.2.2", 8080)),
    ));
    v.push(after(
        "tcp6 data of an established flow",
        vec![syn6.clone()],
        data6.clone(),
        Expect::Tx(data6.clone().to(N6, snat(&data6), "2001:db8:2::2", 8080)),
    ));
    let synack4 = from_backend(Pkt::tcp("198.18.2.2", 8080, N4, snat(&syn4), SYN | ACK));
    let synack6 = from_backend(Pkt::tcp("2001:db8:2::2", 8080, N6, snat(&syn6), SYN | ACK));
    v.push(after(
        "tcp4 SYN-ACK from the backend is reverse-translated to the client",
        vec![syn4.clone()],
        synack4.clone(),
        Expect::Tx(synack4.clone().to("198.18.200.10", 80, C4, 12345)),
    ));
    v.push(after(
        "tcp6 SYN-ACK reverse-translated",
        vec![syn6.clone()],
        synack6.clone(),
        Expect::Tx(synack6.clone().to("2001:db8:200::10", 80, C6, 12345)),
    ));
    let fin4 = Pkt::tcp(C4, 12345, "198.18.200.10", 80, FIN | ACK);
    v.push(after(
        "tcp4 FIN of a tracked flow is translated",
        vec![syn4.clone()],
        fin4.clone(),
        Expect::Tx(fin4.clone().to(N4, snat(&fin4), "198.18.2.2", 8080)),
    ));
    let rst6 = Pkt::tcp(C6, 12345, "2001:db8:200::10", 80, RST | ACK);
    v.push(after(
        "tcp6 RST of a tracked flow is translated",
        vec![syn6.clone()],
        rst6.clone(),
        Expect::Tx(rst6.clone().to(N6, snat(&rst6), "2001:db8:2::2", 8080)),
    ));
    let stray4 = Pkt::tcp(C4, 23456, "198.18.200.10", 80, ACK).seq_ack(777, 888);
    v.push(case(
        "tcp4 ACK of an unknown flow to a SNAT frontend is picked up on its preferred SNAT port",
        stray4.clone(),
        Expect::Tx(stray4.clone().to(N4, snat(&stray4), "198.18.2.2", 8080)),
    ));
    let stray6 = Pkt::tcp(C6, 23456, "2001:db8:200::10", 80, ACK).seq_ack(777, 888);
    v.push(case(
        "tcp6 ACK of an unknown flow is picked up on its preferred SNAT port",
        stray6.clone(),
        Expect::Tx(stray6.clone().to(N6, snat(&stray6), "2001:db8:2::2", 8080)),
    ));
    v.push(case(
        "tcp4 RST of an unknown flow is dropped",
        Pkt::tcp(C4, 23456, "198.18.200.10", 80, RST),
        Expect::Drop(DropReason::TcpNoSyn),
    ));
    let second4 = Pkt::tcp(C4, 12346, "198.18.200.10", 80, SYN);
    v.push(after(
        "tcp4 second flow gets its own preferred SNAT port",
        vec![syn4.clone()],
        second4.clone(),
        Expect::Tx(second4.clone().to(N4, snat(&second4), "198.18.2.2", 8080)),
    ));

    // ---- UDP ---------------------------------------------------------------
    let udp4 = Pkt::udp(C4, 5000, "198.18.200.10", 53);
    let udp6 = Pkt::udp(C6, 5000, "2001:db8:200::10", 53);
    v.push(case(
        "udp4 to ClusterIP: named targetPort resolves to 5353",
        udp4.clone(),
        Expect::Tx(udp4.clone().to(N4, snat(&udp4), "198.18.2.2", 5353)),
    ));
    v.push(case(
        "udp6 to ClusterIP",
        udp6.clone(),
        Expect::Tx(udp6.clone().to(N6, snat(&udp6), "2001:db8:2::2", 5353)),
    ));
    let mut z4 = udp4.clone();
    z4.l4 = L4::Udp {
        sport: 5000,
        dport: 53,
        zero_csum: true,
        len_override: None,
    };
    v.push(case(
        "udp4 zero checksum stays zero",
        z4.clone(),
        Expect::Tx(z4.clone().to(N4, snat(&z4), "198.18.2.2", 5353)),
    ));
    let ureply4 = from_backend(Pkt::udp("198.18.2.2", 5353, N4, snat(&udp4)).payload(b"answer"));
    let ureply6 = from_backend(Pkt::udp("2001:db8:2::2", 5353, N6, snat(&udp6)).payload(b"answer"));
    v.push(after(
        "udp4 reply reverse-translated",
        vec![udp4.clone()],
        ureply4.clone(),
        Expect::Tx(ureply4.clone().to("198.18.200.10", 53, C4, 5000)),
    ));
    v.push(after(
        "udp6 reply reverse-translated",
        vec![udp6.clone()],
        ureply6.clone(),
        Expect::Tx(ureply6.clone().to("2001:db8:200::10", 53, C6, 5000)),
    ));
    v.push(after(
        "udp4 second datagram of a flow",
        vec![udp4.clone()],
        udp4.clone().payload(b"again"),
        Expect::Tx(
            udp4.clone()
                .payload(b"again")
                .to(N4, snat(&udp4), "198.18.2.2", 5353),
        ),
    ));

    // ---- SCTP --------------------------------------------------------------
    let sctp4 = Pkt::sctp(C4, 3868, "198.18.200.10", 3868);
    let sctp6 = Pkt::sctp(C6, 3868, "2001:db8:200::10", 3868);
    v.push(case(
        "sctp4 INIT translated, CRC32c kept valid",
        sctp4.clone(),
        Expect::Tx(sctp4.clone().to(N4, snat(&sctp4), "198.18.2.2", 3868)),
    ));
    v.push(case(
        "sctp6 INIT translated",
        sctp6.clone(),
        Expect::Tx(sctp6.clone().to(N6, snat(&sctp6), "2001:db8:2::2", 3868)),
    ));
    let sreply4 = from_backend(Pkt::sctp("198.18.2.2", 3868, N4, snat(&sctp4)));
    v.push(after(
        "sctp4 reply reverse-translated",
        vec![sctp4.clone()],
        sreply4.clone(),
        Expect::Tx(sreply4.clone().to("198.18.200.10", 3868, C4, 3868)),
    ));

    // ---- NodePort, LoadBalancer, externalIPs ---------------------------------
    let np4 = Pkt::tcp(C4, 40001, N4, 30080, SYN);
    let np6 = Pkt::tcp(C6, 40001, N6, 30080, SYN);
    v.push(case(
        "tcp4 NodePort on the node IP",
        np4.clone(),
        Expect::Tx(np4.clone().to(N4, snat(&np4), "198.18.2.2", 8080)),
    ));
    v.push(case(
        "tcp6 NodePort on the node IP",
        np6.clone(),
        Expect::Tx(np6.clone().to(N6, snat(&np6), "2001:db8:2::2", 8080)),
    ));
    let npu4 = Pkt::udp(C4, 5000, N4, 30053);
    v.push(case(
        "udp4 NodePort",
        npu4.clone(),
        Expect::Tx(npu4.clone().to(N4, snat(&npu4), "198.18.2.2", 5353)),
    ));
    let nps6 = Pkt::sctp(C6, 3868, N6, 30868);
    v.push(case(
        "sctp6 NodePort",
        nps6.clone(),
        Expect::Tx(nps6.clone().to(N6, snat(&nps6), "2001:db8:2::2", 3868)),
    ));
    v.push(case(
        "tcp4 to the node's SSH port stays with the kernel",
        Pkt::tcp(C4, 40001, N4, 22, SYN),
        Expect::Pass,
    ));
    v.push(case(
        "tcp6 to the node's SSH port stays with the kernel",
        Pkt::tcp(C6, 40001, N6, 22, SYN),
        Expect::Pass,
    ));
    v.push(case(
        "udp4 to an unused node port stays with the kernel",
        Pkt::udp(C4, 5000, N4, 30999),
        Expect::Pass,
    ));
    let lb4 = Pkt::tcp(C4, 12345, "198.18.100.10", 80, SYN);
    let lb6 = Pkt::tcp(C6, 12345, "2001:db8:100::10", 80, SYN);
    v.push(case(
        "tcp4 to the LoadBalancer IP",
        lb4.clone(),
        Expect::Tx(lb4.clone().to(N4, snat(&lb4), "198.18.2.2", 8080)),
    ));
    v.push(case(
        "tcp6 to the LoadBalancer IP",
        lb6.clone(),
        Expect::Tx(lb6.clone().to(N6, snat(&lb6), "2001:db8:2::2", 8080)),
    ));
    let lbu6 = Pkt::udp(C6, 5000, "2001:db8:100::10", 53);
    v.push(case(
        "udp6 to the LoadBalancer IP",
        lbu6.clone(),
        Expect::Tx(lbu6.clone().to(N6, snat(&lbu6), "2001:db8:2::2", 5353)),
    ));
    let ext4 = Pkt::tcp(C4, 12345, "198.18.150.10", 80, SYN);
    v.push(case(
        "tcp4 to an externalIP",
        ext4.clone(),
        Expect::Tx(ext4.clone().to(N4, snat(&ext4), "198.18.2.2", 8080)),
    ));
    v.push(case(
        "tcp4 to the LoadBalancer IP on an undeclared port is dropped",
        Pkt::tcp(C4, 12345, "198.18.100.10", 8443, SYN),
        Expect::Drop(DropReason::UnknownServicePort),
    ));
    v.push(case(
        "tcp6 to the LoadBalancer IP on an undeclared port is dropped",
        Pkt::tcp(C6, 12345, "2001:db8:100::10", 8443, SYN),
        Expect::Drop(DropReason::UnknownServicePort),
    ));
    v.push(case(
        "udp4 to the ClusterIP on the TCP-only port is dropped",
        Pkt::udp(C4, 5000, "198.18.200.10", 80),
        Expect::Drop(DropReason::UnknownServicePort),
    ));
    v.push(case(
        "tcp4 to an unrelated address stays with the kernel",
        Pkt::tcp(C4, 1, "198.18.50.50", 80, SYN),
        Expect::Pass,
    ));

    // ---- No endpoints: REJECT ------------------------------------------------
    v.push(case(
        "tcp4 SYN to a Service with no endpoints: ICMP port unreachable",
        Pkt::tcp(C4, 12345, "198.18.200.11", 80, SYN),
        Expect::Unreachable,
    ));
    v.push(case(
        "tcp6 SYN to a Service with no endpoints: ICMPv6 port unreachable",
        Pkt::tcp(C6, 12345, "2001:db8:200::11", 80, SYN),
        Expect::Unreachable,
    ));
    v.push(case(
        "udp4 to a Service with no endpoints: ICMP port unreachable",
        Pkt::udp(C4, 5000, "198.18.200.11", 53).payload(&[7u8; 900]),
        Expect::Unreachable,
    ));
    v.push(case(
        "udp6 to a Service with no endpoints: ICMPv6 port unreachable",
        Pkt::udp(C6, 5000, "2001:db8:200::11", 53).payload(&[7u8; 1400]),
        Expect::Unreachable,
    ));

    // ---- Traffic policies ------------------------------------------------------
    v.push(case(
        "tcp4 eTP=Local without a local endpoint is dropped",
        Pkt::tcp(C4, 12345, "198.18.100.11", 80, SYN),
        Expect::Drop(DropReason::NoLocalEndpoints),
    ));
    v.push(case(
        "tcp6 eTP=Local without a local endpoint is dropped",
        Pkt::tcp(C6, 12345, "2001:db8:100::11", 80, SYN),
        Expect::Drop(DropReason::NoLocalEndpoints),
    ));
    v.push(case(
        "tcp4 eTP=Local NodePort without a local endpoint is dropped",
        Pkt::tcp(C4, 12345, N4, 30090, SYN),
        Expect::Drop(DropReason::NoLocalEndpoints),
    ));
    let in4 = Pkt::tcp(C4, 12345, "198.18.200.13", 80, SYN);
    v.push(case(
        "tcp4 same Service via its ClusterIP (iTP=Cluster) works",
        in4.clone(),
        Expect::Tx(in4.clone().to(N4, snat(&in4), "198.18.3.2", 8080)),
    ));
    let lh4 = Pkt::tcp(C4, 12345, "198.18.100.12", 80, SYN);
    let lh6 = Pkt::tcp(C6, 12345, "2001:db8:100::12", 80, SYN);
    v.push(case(
        "tcp4 eTP=Local with a local endpoint: DNAT only, client IP preserved",
        lh4.clone(),
        Expect::Tx(lh4.clone().to(C4, 12345, "198.18.5.2", 8080)),
    ));
    v.push(case(
        "tcp6 eTP=Local with a local endpoint: client IP preserved",
        lh6.clone(),
        Expect::Tx(lh6.clone().to(C6, 12345, "2001:db8:5::2", 8080)),
    ));
    let lhr4 = from_backend(Pkt::tcp("198.18.5.2", 8080, C4, 12345, SYN | ACK));
    v.push(after(
        "tcp4 eTP=Local reply gets the LoadBalancer IP back",
        vec![lh4.clone()],
        lhr4.clone(),
        Expect::Tx(lhr4.clone().to("198.18.100.12", 80, C4, 12345)),
    ));
    // Hairpin: the chosen endpoint is the client itself. kube-proxy marks
    // that for masquerade (`-s <endpoint> -j KUBE-MARK-MASQ` in every SEP
    // chain) even under eTP=Local, or the endpoint would answer itself
    // directly from its own address and the client would drop the reply.
    let hp4 = from_backend(Pkt::tcp("198.18.5.2", 33000, "198.18.100.12", 80, SYN));
    v.push(case(
        "tcp4 hairpin (endpoint to its own Service, eTP=Local) is SNATed",
        hp4.clone(),
        Expect::Tx(hp4.clone().to(N4, snat(&hp4), "198.18.5.2", 8080)),
    ));
    let hpr4 = from_backend(Pkt::tcp("198.18.5.2", 8080, N4, snat(&hp4), SYN | ACK));
    v.push(after(
        "tcp4 hairpin reply returns from the Service address",
        vec![hp4.clone()],
        hpr4.clone(),
        Expect::Tx(hpr4.clone().to("198.18.100.12", 80, "198.18.5.2", 33000)),
    ));
    v.push(case(
        "tcp4 iTP=Local without a local endpoint is dropped",
        Pkt::tcp(C4, 12345, "198.18.200.14", 80, SYN),
        Expect::Drop(DropReason::NoLocalEndpoints),
    ));

    // ---- Endpoint conditions ------------------------------------------------
    let roll = Pkt::tcp(C4, 12345, "198.18.200.15", 80, SYN);
    v.push(case(
        "new flow avoids the terminating endpoint while a ready one exists",
        roll.clone(),
        Expect::Tx(roll.clone().to(N4, snat(&roll), "198.18.6.2", 8080)),
    ));
    let drain = Pkt::tcp(C4, 12345, "198.18.200.16", 80, SYN);
    v.push(case(
        "only serving-terminating endpoints: they take new flows",
        drain.clone(),
        Expect::Tx(drain.clone().to(N4, snat(&drain), "198.18.7.2", 8080)),
    ));

    // ---- loadBalancerSourceRanges ---------------------------------------------
    let ok4 = Pkt::tcp(C4, 12345, "198.18.100.13", 80, SYN);
    v.push(case(
        "tcp4 from an allowed source range",
        ok4.clone(),
        Expect::Tx(ok4.clone().to(N4, snat(&ok4), "198.18.2.2", 8080)),
    ));
    v.push(case(
        "tcp4 from outside loadBalancerSourceRanges is dropped",
        Pkt::tcp("198.19.0.5", 12345, "198.18.100.13", 80, SYN),
        Expect::Drop(DropReason::SourceRangeDenied),
    ));
    v.push(case(
        "tcp6 from outside loadBalancerSourceRanges is dropped",
        Pkt::tcp("2001:db8:1:2::5", 12345, "2001:db8:100::13", 80, SYN),
        Expect::Drop(DropReason::SourceRangeDenied),
    ));
    let ok6 = Pkt::tcp(C6, 12345, "2001:db8:100::13", 80, SYN);
    v.push(case(
        "tcp6 from an allowed source range",
        ok6.clone(),
        Expect::Tx(ok6.clone().to(N6, snat(&ok6), "2001:db8:2::2", 8080)),
    ));
    let viaclusterip = Pkt::tcp("198.19.0.5", 12345, "198.18.200.17", 80, SYN);
    v.push(case(
        "source ranges do not apply to the ClusterIP",
        viaclusterip.clone(),
        Expect::Tx(
            viaclusterip
                .clone()
                .to(N4, snat(&viaclusterip), "198.18.2.2", 8080),
        ),
    ));

    // ---- ICMP --------------------------------------------------------------
    let ping4 = Pkt::echo(C4, "198.18.200.10", 77);
    let ping6 = Pkt::echo(C6, "2001:db8:200::10", 77);
    let mut pong4 = swap_macs(ping4.clone()).to("198.18.200.10", 77, C4, 77);
    pong4.l4 = L4::Echo {
        request: false,
        id: 77,
        seq: 1,
    };
    pong4.ttl = 64; // a fresh answer starts with a full TTL
    let mut pong6 = swap_macs(ping6.clone()).to("2001:db8:200::10", 77, C6, 77);
    pong6.l4 = L4::Echo {
        request: false,
        id: 77,
        seq: 1,
    };
    pong6.ttl = 64;
    v.push(case(
        "ping4 to a ClusterIP is answered by the dataplane",
        ping4,
        Expect::Reflect(pong4),
    ));
    v.push(case(
        "ping6 to a ClusterIP is answered by the dataplane",
        ping6,
        Expect::Reflect(pong6),
    ));
    v.push(case(
        "ping4 to the node stays with the kernel",
        Pkt::echo(C4, N4, 5),
        Expect::Pass,
    ));
    v.push(case(
        "ping6 to the node stays with the kernel",
        Pkt::echo(C6, N6, 5),
        Expect::Pass,
    ));
    // Fragmentation needed from a router between the node and the backend,
    // about a packet of a tracked flow: goes back to the client, translated.
    let big4 = Pkt::tcp(N4, snat(&syn4), "198.18.2.2", 8080, ACK).payload(&[1u8; 64]);
    let fragneeded4 = from_backend(Pkt::icmp_err("198.18.9.1", N4, 3, 4, 1400, big4));
    let quoted_client4 = Pkt::tcp(C4, 12345, "198.18.200.10", 80, ACK).payload(&[1u8; 64]);
    let mut want4 = from_backend(Pkt::icmp_err("198.18.9.1", C4, 3, 4, 1400, quoted_client4));
    want4.ip_id = fragneeded4.ip_id;
    v.push(after(
        "icmp4 fragmentation-needed about a NATed flow reaches the client translated (PMTU)",
        vec![syn4.clone()],
        fragneeded4,
        Expect::Tx(want4),
    ));
    let big6 = Pkt::tcp(N6, snat(&syn6), "2001:db8:2::2", 8080, ACK).payload(&[1u8; 64]);
    let ptb6 = from_backend(Pkt::icmp_err("2001:db8:9::1", N6, 2, 0, 1280, big6));
    let quoted_client6 = Pkt::tcp(C6, 12345, "2001:db8:200::10", 80, ACK).payload(&[1u8; 64]);
    let want6 = from_backend(Pkt::icmp_err(
        "2001:db8:9::1",
        C6,
        2,
        0,
        1280,
        quoted_client6,
    ));
    v.push(after(
        "icmp6 packet-too-big about a NATed flow reaches the client translated (PMTU)",
        vec![syn6.clone()],
        ptb6,
        Expect::Tx(want6),
    ));
    // The backend itself says port unreachable for a UDP flow: its address is
    // replaced by the Service IP.
    let q4 = Pkt::udp(N4, snat(&udp4), "198.18.2.2", 5353);
    let unreach4 = from_backend(Pkt::icmp_err("198.18.2.2", N4, 3, 3, 0, q4));
    let want_u4 = from_backend(Pkt::icmp_err(
        "198.18.200.10",
        C4,
        3,
        3,
        0,
        Pkt::udp(C4, 5000, "198.18.200.10", 53),
    ));
    v.push(after(
        "icmp4 port unreachable from the backend itself is translated to come from the Service IP",
        vec![udp4.clone()],
        unreach4,
        Expect::Tx(want_u4),
    ));
    let q6 = Pkt::udp(N6, snat(&udp6), "2001:db8:2::2", 5353);
    let unreach6 = from_backend(Pkt::icmp_err("2001:db8:2::2", N6, 1, 4, 0, q6));
    let want_u6 = from_backend(Pkt::icmp_err(
        "2001:db8:200::10",
        C6,
        1,
        4,
        0,
        Pkt::udp(C6, 5000, "2001:db8:200::10", 53),
    ));
    v.push(after(
        "icmp6 port unreachable from the backend itself is translated",
        vec![udp6.clone()],
        unreach6,
        Expect::Tx(want_u6),
    ));
    let untracked = Pkt::icmp_err(
        "198.18.9.1",
        N4,
        3,
        4,
        1400,
        Pkt::tcp(N4, 22, "198.18.50.50", 40000, ACK),
    );
    v.push(case(
        "icmp4 error about the node's own traffic stays with the kernel",
        untracked,
        Expect::Pass,
    ));
    let mut ts = Pkt::echo(C4, "198.18.200.10", 1);
    ts.l4 = L4::Icmp {
        typ: 13,
        code: 0,
        rest: 0,
    };
    v.push(case(
        "icmp4 timestamp request to a Service IP is dropped",
        ts,
        Expect::Drop(DropReason::UnsupportedIcmp),
    ));

    // ---- Fragments -------------------------------------------------------------
    let mut f1 = Pkt::udp(C4, 5000, "198.18.200.10", 53).payload(&[9u8; 64]);
    f1.df = false;
    f1.frag = Some((0, true));
    v.push(case(
        "udp4 first fragment to a Service is dropped",
        f1.clone(),
        Expect::Drop(DropReason::Fragment),
    ));
    let mut f2 = f1.clone();
    f2.frag = Some((9, false));
    v.push(case(
        "ipv4 later fragment to a Service is dropped",
        f2.clone(),
        Expect::Drop(DropReason::Fragment),
    ));
    let mut f6 = Pkt::udp(C6, 5000, "2001:db8:200::10", 53).payload(&[9u8; 64]);
    f6.frag = Some((0, true));
    v.push(case(
        "udp6 fragment to a Service is dropped",
        f6,
        Expect::Drop(DropReason::Fragment),
    ));
    let mut fo = f2.clone();
    fo.dst = ip("198.18.50.50");
    v.push(case(
        "ipv4 fragment to another host stays with the kernel",
        fo,
        Expect::Pass,
    ));

    // ---- Other protocols ------------------------------------------------------
    v.push(case(
        "GRE to a Service IP is dropped",
        Pkt::raw(C4, "198.18.200.10", 47),
        Expect::Drop(DropReason::UnsupportedProtocol),
    ));
    v.push(case(
        "GRE to the node stays with the kernel",
        Pkt::raw(C4, N4, 47),
        Expect::Pass,
    ));
    v
}

/// Malformed frames: (description, bytes, expected verdict).
fn malformed() -> Vec<(&'static str, Vec<u8>, Verdict)> {
    let good4 = Pkt::tcp(C4, 12345, "198.18.200.10", 80, SYN).bytes();
    let good6 = Pkt::tcp(C6, 12345, "2001:db8:200::10", 80, SYN).bytes();
    let mut v = Vec::new();
    v.push((
        "frame shorter than an Ethernet header",
        good4[..10].to_vec(),
        Verdict::Drop(DropReason::Truncated),
    ));
    v.push((
        "IPv4 header cut short",
        good4[..30].to_vec(),
        Verdict::Drop(DropReason::Truncated),
    ));
    let mut ihl = good4.clone();
    ihl[14] = 0x43;
    v.push((
        "IPv4 IHL of 3 words",
        ihl,
        Verdict::Drop(DropReason::BadIhl),
    ));
    let mut csum = good4.clone();
    csum[14 + 10] ^= 0xff;
    v.push((
        "IPv4 header checksum wrong",
        csum,
        Verdict::Drop(DropReason::BadIpChecksum),
    ));
    let mut vers = good4.clone();
    vers[14] = 0x65;
    v.push((
        "IPv6 version under an IPv4 EtherType",
        vers,
        Verdict::Drop(DropReason::BadIpVersion),
    ));
    let mut len = good4.clone();
    len[16] = 0x05; // total length 1280+ > frame
    let c = {
        let mut h = len[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        let mut s = 0u32;
        for w in h.chunks(2) {
            s += u16::from_be_bytes([w[0], w[1]]) as u32;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    };
    len[24..26].copy_from_slice(&c.to_be_bytes());
    v.push((
        "IPv4 total length past the frame",
        len,
        Verdict::Drop(DropReason::BadLength),
    ));
    let mut doff = Pkt::tcp(C4, 12345, "198.18.200.10", 80, SYN);
    doff.l4 = L4::Tcp {
        sport: 12345,
        dport: 80,
        flags: SYN,
        seq: 1,
        ack: 0,
        data_off_words: Some(15),
    };
    v.push((
        "TCP data offset past the datagram",
        doff.bytes(),
        Verdict::Drop(DropReason::BadTcpHeader),
    ));
    let mut ulen = Pkt::udp(C4, 5000, "198.18.200.10", 53);
    ulen.l4 = L4::Udp {
        sport: 5000,
        dport: 53,
        zero_csum: false,
        len_override: Some(400),
    };
    v.push((
        "UDP length past the datagram",
        ulen.bytes(),
        Verdict::Drop(DropReason::BadUdpLength),
    ));
    let mut ext = good6.clone();
    ext[14 + 6] = 0; // next header: hop-by-hop, but what follows is TCP
    ext[14 + 40 + 1] = 0xff; // its length runs far past the end
    v.push((
        "IPv6 extension header running past the end",
        ext,
        Verdict::Drop(DropReason::BadExtHeader),
    ));
    let three = Pkt::tcp(C6, 1, "2001:db8:200::10", 80, SYN)
        .vlan(1)
        .vlan(2)
        .vlan(3)
        .bytes();
    v.push((
        "three VLAN tags",
        three,
        Verdict::Drop(DropReason::TooManyVlans),
    ));
    let mut arp = good4.clone();
    arp[12] = 0x08;
    arp[13] = 0x06;
    v.push(("ARP goes to the kernel", arp, Verdict::Pass));
    v
}

fn tables() -> Tables {
    support::golden_tables()
}

fn run(engine: &mut Engine, t: &Tables, now: u64, frame: &[u8]) -> (Decision, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    buf[..frame.len()].copy_from_slice(frame);
    let d = engine.process(now, &mut buf, frame.len(), t);
    let out = match d.verdict {
        Verdict::Tx { len, .. } | Verdict::Reject { len } => buf[..len].to_vec(),
        _ => Vec::new(),
    };
    (d, out)
}

fn check_case(c: &Case, t: &Tables) {
    let mut engine = Engine::standalone(1024);
    let mut now = 1_000_000_000u64;
    for (i, s) in c.setup.iter().enumerate() {
        let (d, _) = run(&mut engine, t, now, &s.bytes());
        assert!(
            matches!(d.verdict, Verdict::Tx { .. }),
            "{}: setup frame {i} was not forwarded: {d:?}",
            c.name
        );
        now += 1_000_000;
    }
    let input = c.input.bytes();
    let (d, out) = run(&mut engine, t, now, &input);
    match &c.expect {
        Expect::Tx(want) | Expect::Reflect(want) => {
            let egress = if matches!(c.expect, Expect::Tx(_)) {
                Egress::Route
            } else {
                Egress::Reflect
            };
            assert_eq!(
                d.verdict,
                Verdict::Tx {
                    len: want.bytes().len(),
                    egress
                },
                "{}: verdict",
                c.name
            );
            verify_checksums(&out);
            if out != want.bytes() {
                panic!(
                    "{}: output differs\n got: {:02x?}\nwant: {:02x?}",
                    c.name,
                    out,
                    want.bytes()
                );
            }
        }
        Expect::Unreachable => {
            assert!(
                matches!(d.verdict, Verdict::Reject { .. }),
                "{}: verdict {d:?}",
                c.name
            );
            verify_checksums(&out);
            check_unreachable(c.name, &c.input, &input, &out);
        }
        Expect::Pass => assert_eq!(d.verdict, Verdict::Pass, "{}", c.name),
        Expect::Drop(r) => assert_eq!(d.verdict, Verdict::Drop(*r), "{}", c.name),
    }
}

fn check_unreachable(name: &str, orig: &Pkt, orig_bytes: &[u8], out: &[u8]) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let sp = SlicedPacket::from_ethernet(out).unwrap();
    let (src, dst, payload): (std::net::IpAddr, std::net::IpAddr, &[u8]) =
        match sp.net.as_ref().unwrap() {
            NetSlice::Ipv4(v4) => (
                v4.header().source_addr().into(),
                v4.header().destination_addr().into(),
                v4.payload().payload,
            ),
            NetSlice::Ipv6(v6) => (
                v6.header().source_addr().into(),
                v6.header().destination_addr().into(),
                v6.payload().payload,
            ),
            #[allow(unreachable_patterns)]
            _ => panic!("{name}: no IP"),
        };
    assert_eq!(src, orig.dst, "{name}: the error comes from the Service IP");
    assert_eq!(dst, orig.src, "{name}: the error goes to the client");
    assert_eq!(&out[..6], &orig.eth_src, "{name}: back to the sender's MAC");
    let (typ, code) = match sp.transport {
        Some(TransportSlice::Icmpv4(i)) => (i.type_u8(), i.code_u8()),
        Some(TransportSlice::Icmpv6(i)) => (i.type_u8(), i.code_u8()),
        _ => panic!("{name}: not ICMP"),
    };
    if orig.src.is_ipv4() {
        assert_eq!((typ, code), (3, 3), "{name}: ICMP port unreachable");
        assert!(
            out.len() - 14 <= 576,
            "{name}: IPv4 ICMP error longer than 576 bytes"
        );
    } else {
        assert_eq!((typ, code), (1, 4), "{name}: ICMPv6 port unreachable");
        assert!(
            out.len() - 14 <= 1280,
            "{name}: ICMPv6 error longer than 1280 bytes"
        );
    }
    // The quote is a prefix of the original IP datagram.
    let quote = &payload[8..];
    let orig_ip = &orig_bytes[14..];
    assert!(quote.len() >= 28, "{name}: quote too short");
    assert_eq!(
        quote,
        &orig_ip[..quote.len()],
        "{name}: quote is the original datagram"
    );
}

#[test]
fn golden_table() {
    let t = tables();
    let cases = cases();
    let names: std::collections::HashSet<_> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    let mut failed = Vec::new();
    for c in &cases {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_case(c, &t))).is_err() {
            failed.push(c.name);
        }
    }
    assert!(
        failed.is_empty(),
        "{} golden rows failed: {failed:#?}",
        failed.len()
    );
    let bad = malformed();
    for (name, frame, want) in &bad {
        let mut engine = Engine::standalone(64);
        let (d, _) = run(&mut engine, &t, 1, frame);
        assert_eq!(d.verdict, *want, "{name}");
    }
    let total = cases.len() + bad.len();
    assert!(
        total >= 60,
        "the golden table has {total} rows; the issue asks for at least 60"
    );
    println!("golden table: {total} rows");
}

/// The input frames of the table, for seeding the fuzz corpus and the benches.
#[test]
fn golden_inputs_are_in_the_fuzz_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/engine");
    let want: Vec<Vec<u8>> = cases().iter().map(|c| c.input.bytes()).collect();
    if std::env::var_os("EDGEPLANE_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, f) in want.iter().enumerate() {
            std::fs::write(dir.join(format!("golden-{i:03}")), f).unwrap();
        }
        for (i, (_, f, _)) in malformed().iter().enumerate() {
            std::fs::write(dir.join(format!("malformed-{i:03}")), f).unwrap();
        }
        write_example_pcap();
    }
    let present: std::collections::HashSet<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let missing = want.iter().filter(|f| !present.contains(*f)).count();
    assert_eq!(
        missing, 0,
        "{missing} golden inputs are not in fuzz/corpus/engine: run EDGEPLANE_WRITE_CORPUS=1 cargo test --test golden"
    );
}

/// examples/golden/inputs.pcap: every row's setup and input frames in order,
/// 10 ms apart, for trying `edgeplane replay` (see examples/README.md).
fn write_example_pcap() {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/golden/inputs.pcap");
    let mut w =
        PcapWriter::with_header(std::fs::File::create(path).unwrap(), PcapHeader::default())
            .unwrap();
    let mut t = std::time::Duration::from_secs(1_800_000_000);
    for c in cases() {
        for f in c.setup.iter().chain(std::iter::once(&c.input)) {
            let b = f.bytes();
            w.write_packet(&PcapPacket::new(t, b.len() as u32, &b))
                .unwrap();
            t += std::time::Duration::from_millis(10);
        }
    }
}
