//! A million random and mutated frames through the engine: no panic, and every
//! frame is counted under exactly one verdict. Deterministic (fixed seed), so a
//! failure reproduces. The cargo-fuzz targets explore further; this runs in
//! every `scripts/test`.

mod support;

use edgeplane_dataplane::testing::fuzz_tables;
use edgeplane_dataplane::{Engine, Verdict};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::*;

/// Valid frames of every kind the engine handles, to mutate.
fn templates() -> Vec<Vec<u8>> {
    let c4 = "198.18.0.100";
    let c6 = "2001:db8::100";
    let mut t = vec![
        Pkt::tcp(c4, 1000, "198.18.200.10", 80, SYN).bytes(),
        Pkt::tcp(c4, 1000, "198.18.200.10", 80, ACK)
            .payload(b"hello")
            .bytes(),
        Pkt::tcp(c6, 1000, "2001:db8:200::10", 80, SYN)
            .vlan(7)
            .bytes(),
        Pkt::udp(c4, 1000, "198.18.200.10", 53).bytes(),
        Pkt::udp(c6, 1000, "2001:db8:200::10", 53).bytes(),
        Pkt::sctp(c4, 1000, "198.18.200.10", 3868).bytes(),
        Pkt::tcp(c4, 1000, "198.18.1.1", 30080, SYN).bytes(),
        Pkt::tcp(c4, 1000, "198.18.200.11", 80, SYN).bytes(),
        Pkt::tcp(c4, 1000, "198.18.100.12", 443, SYN).bytes(),
        Pkt::echo(c4, "198.18.200.10", 9).bytes(),
        Pkt::echo(c6, "2001:db8:200::10", 9).bytes(),
        Pkt::tcp("198.18.2.2", 8080, "198.18.1.1", 40000, SYN | ACK).bytes(),
        Pkt::icmp_err(
            "198.18.9.1",
            "198.18.1.1",
            3,
            4,
            1400,
            Pkt::tcp("198.18.1.1", 40000, "198.18.2.2", 8080, ACK),
        )
        .bytes(),
        Pkt::icmp_err(
            "198.18.9.1",
            "198.18.1.1",
            3,
            3,
            0,
            Pkt::icmp_err(
                "198.18.1.1",
                "198.18.9.1",
                3,
                3,
                0,
                Pkt::udp("198.18.9.1", 1, "198.18.1.1", 2),
            ),
        )
        .bytes(),
    ];
    let mut ext = Pkt::tcp(c6, 1000, "2001:db8:200::10", 80, SYN);
    ext.v6_ext = vec![0, 60, 60, 43];
    t.push(ext.bytes());
    let mut frag = Pkt::udp(c4, 1000, "198.18.200.10", 53).payload(&[1; 100]);
    frag.frag = Some((0, true));
    t.push(frag.bytes());
    t
}

#[test]
fn a_million_random_and_mutated_frames() {
    const FRAMES: u64 = 1_000_000;
    let tables = fuzz_tables();
    let mut engine = Engine::standalone(4096);
    let mut rng = StdRng::seed_from_u64(0xed9e_91a4e);
    let templates = templates();
    let mut buf = vec![0u8; 2048];
    let mut now = 1_000_000_000u64;
    let (mut tx, mut reject, mut pass, mut drop) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..FRAMES {
        let len = match i % 4 {
            // Pure noise of random length.
            0 => {
                let len = rng.gen_range(0..200);
                rng.fill(&mut buf[..len]);
                len
            }
            // A valid frame with a few bytes flipped.
            1 | 2 => {
                let t = &templates[rng.gen_range(0..templates.len())];
                buf[..t.len()].copy_from_slice(t);
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..t.len());
                    buf[at] = rng.gen();
                }
                t.len()
            }
            // A valid frame cut short or with its ports/addresses varied.
            _ => {
                let t = &templates[rng.gen_range(0..templates.len())];
                buf[..t.len()].copy_from_slice(t);
                if rng.gen_bool(0.5) {
                    rng.gen_range(0..t.len())
                } else {
                    // Vary the bytes where L4 ports live in the plain frames.
                    let at = rng.gen_range(34.min(t.len())..t.len());
                    buf[at] = rng.gen();
                    t.len()
                }
            }
        };
        let d = engine.process(now, &mut buf, len, &tables);
        match d.verdict {
            Verdict::Tx { len: out, .. } | Verdict::Reject { len: out } => {
                assert!(out <= buf.len());
                if matches!(d.verdict, Verdict::Tx { .. }) {
                    tx += 1
                } else {
                    reject += 1
                }
            }
            Verdict::Pass => pass += 1,
            Verdict::Drop(_) => drop += 1,
        }
        now += 1_000_000; // 1 ms per frame: flows expire along the way
    }
    let s = engine.stats();
    assert_eq!(s.rx_packets, FRAMES);
    assert_eq!((s.tx, s.reject, s.pass, s.drop), (tx, reject, pass, drop));
    assert_eq!(
        s.drops.iter().sum::<u64>(),
        drop,
        "every drop has exactly one reason"
    );
    // Mutation must exercise every verdict, or this test is not testing much.
    assert!(
        tx > 0 && reject > 0 && pass > 0 && drop > 0,
        "verdicts: tx {tx} reject {reject} pass {pass} drop {drop}"
    );
    println!("{FRAMES} frames: tx {tx}, reject {reject}, pass {pass}, drop {drop}");
}
