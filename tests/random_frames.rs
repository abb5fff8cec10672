//! Ten million hostile frames through the engine, in named categories (the
//! hardening issue's list: noise, flipped bytes, truncation, bad lengths, bad
//! IHL, IPv6 extension-header chains that run long or past the end, TCP data
//! offsets past the end, ICMP errors quoting ICMP errors, fragments, VLAN
//! stacks). No panic, every frame counted under exactly one verdict, every drop
//! under exactly one reason, and each category reaches the drop reason it is
//! aimed at. Deterministic (fixed seed), so a failure reproduces. The cargo-fuzz
//! targets (run under AddressSanitizer by `scripts/fuzz-smoke`) explore further.

mod support;

use edgeplane_dataplane::testing::fuzz_tables;
use edgeplane_dataplane::{DropReason, Engine, Verdict};
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

/// One hostile category: how to make a frame of it, and the drop reason it
/// must reach at least once (None: any verdict will do).
struct Category {
    name: &'static str,
    aims_at: Option<DropReason>,
    make: fn(&mut StdRng, &[Vec<u8>], &mut [u8]) -> usize,
}

/// Ethernet header length of the untagged templates.
const ETH: usize = 14;

fn pick<'a>(rng: &mut StdRng, t: &'a [Vec<u8>]) -> &'a [u8] {
    &t[rng.gen_range(0..t.len())]
}

fn copy(buf: &mut [u8], t: &[u8]) -> usize {
    buf[..t.len()].copy_from_slice(t);
    t.len()
}

/// Untagged IPv4 templates (fixed offsets for targeted mutation).
fn v4(t: &[Vec<u8>]) -> Vec<Vec<u8>> {
    t.iter()
        .filter(|f| f.len() > ETH + 20 && f[12..14] == [0x08, 0x00])
        .cloned()
        .collect()
}

fn categories() -> Vec<Category> {
    vec![
        Category {
            name: "noise",
            aims_at: None,
            make: |rng, _, buf| {
                let len = rng.gen_range(0..200);
                rng.fill(&mut buf[..len]);
                len
            },
        },
        Category {
            name: "flipped bytes",
            aims_at: None,
            make: |rng, t, buf| {
                let len = copy(buf, pick(rng, t));
                for _ in 0..rng.gen_range(1..4) {
                    buf[rng.gen_range(0..len)] = rng.gen();
                }
                len
            },
        },
        Category {
            name: "truncated",
            aims_at: Some(DropReason::Truncated),
            make: |rng, t, buf| {
                let len = copy(buf, pick(rng, t));
                rng.gen_range(0..len)
            },
        },
        Category {
            name: "bad IPv4 total length",
            aims_at: Some(DropReason::BadLength),
            make: |rng, t, buf| {
                let v4 = v4(t);
                let len = copy(buf, pick(rng, &v4));
                let bogus: u16 = rng.gen();
                buf[ETH + 2..ETH + 4].copy_from_slice(&bogus.to_be_bytes());
                len
            },
        },
        Category {
            name: "bad IHL",
            aims_at: Some(DropReason::BadIhl),
            make: |rng, t, buf| {
                let v4 = v4(t);
                let len = copy(buf, pick(rng, &v4));
                buf[ETH] = 0x40 | rng.gen_range(0..5u8);
                len
            },
        },
        Category {
            name: "IPv6 extension chains (long, looping, past the end)",
            aims_at: Some(DropReason::BadExtHeader),
            make: |rng, _, buf| {
                // 1..=64 extension headers (hop-by-hop, routing, destination
                // options), each claiming a random length, so chains run
                // long, repeat ("loop") and overrun the frame.
                let n = rng.gen_range(1..=64usize);
                let mut p = Pkt::tcp("2001:db8::100", 1000, "2001:db8:200::10", 80, SYN);
                p.v6_ext = (0..n).map(|_| [0u8, 43, 60][rng.gen_range(0..3)]).collect();
                let mut f = p.bytes();
                if rng.gen_bool(0.7) {
                    // Give one header a length running past the end.
                    let k = rng.gen_range(0..n);
                    let at = ETH + 40 + 8 * k + 1;
                    if at < f.len() {
                        f[at] = rng.gen();
                    }
                }
                let len = f.len().min(buf.len());
                buf[..len].copy_from_slice(&f[..len]);
                len
            },
        },
        Category {
            name: "TCP data offset past the end",
            aims_at: Some(DropReason::BadTcpHeader),
            make: |rng, _, buf| {
                let mut p = Pkt::tcp("198.18.0.100", 1000, "198.18.200.10", 80, SYN);
                if let L4::Tcp { data_off_words, .. } = &mut p.l4 {
                    *data_off_words = Some(if rng.gen_bool(0.5) {
                        rng.gen_range(6..16)
                    } else {
                        rng.gen_range(0..5)
                    });
                }
                copy(buf, &p.bytes())
            },
        },
        Category {
            name: "ICMP errors quoting ICMP errors",
            aims_at: None,
            make: |rng, _, buf| {
                let mut inner = Pkt::udp("198.18.9.1", 1, "198.18.1.1", 2);
                for _ in 0..rng.gen_range(1..5) {
                    inner = Pkt::icmp_err(
                        "198.18.9.1",
                        "198.18.1.1",
                        [3u8, 11, 12][rng.gen_range(0..3)],
                        rng.gen_range(0..5),
                        rng.gen(),
                        inner,
                    );
                }
                let len = copy(buf, &inner.bytes());
                if rng.gen_bool(0.5) {
                    buf[rng.gen_range(ETH..len)] = rng.gen();
                }
                len
            },
        },
        Category {
            name: "fragments",
            aims_at: Some(DropReason::Fragment),
            make: |rng, _, buf| {
                let (src, dst) = if rng.gen_bool(0.5) {
                    ("198.18.0.100", "198.18.200.10")
                } else {
                    ("2001:db8::100", "2001:db8:200::10")
                };
                let mut p = Pkt::udp(src, rng.gen(), dst, 53).payload(&[7; 64]);
                p.frag = Some((rng.gen_range(0..8192), rng.gen()));
                copy(buf, &p.bytes())
            },
        },
        Category {
            name: "VLAN stacks",
            aims_at: Some(DropReason::TooManyVlans),
            make: |rng, _, buf| {
                let mut p = Pkt::tcp("198.18.0.100", rng.gen(), "198.18.200.10", 80, SYN);
                for _ in 0..rng.gen_range(0..6) {
                    p = p.vlan(rng.gen_range(0..4096));
                }
                let len = copy(buf, &p.bytes());
                if rng.gen_bool(0.3) {
                    // 802.1ad outer tag instead of 802.1Q.
                    buf[12..14].copy_from_slice(&[0x88, 0xa8]);
                }
                len
            },
        },
    ]
}

#[test]
fn ten_million_hostile_frames() {
    const PER_CATEGORY: u64 = 1_000_000;
    let tables = fuzz_tables();
    let mut engine = Engine::standalone(4096);
    let mut rng = StdRng::seed_from_u64(0xed9e_91a4e);
    let templates = templates();
    let mut buf = vec![0u8; 4096];
    let mut now = 1_000_000_000u64;
    let (mut tx, mut reject, mut pass, mut drop) = (0u64, 0u64, 0u64, 0u64);
    let cats = categories();
    let mut total = 0u64;
    for c in &cats {
        let before = engine.stats().clone();
        for _ in 0..PER_CATEGORY {
            let len = (c.make)(&mut rng, &templates, &mut buf);
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
        total += PER_CATEGORY;
        let s = engine.stats();
        let dropped = s.drop - before.drop;
        if let Some(r) = c.aims_at {
            let hit = s.dropped(r) - before.dropped(r);
            assert!(hit > 0, "category {:?} never reached {}", c.name, r.name());
            println!(
                "{:<52} {PER_CATEGORY} frames: {dropped} dropped, {hit} as {}",
                c.name,
                r.name()
            );
        } else {
            println!("{:<52} {PER_CATEGORY} frames: {dropped} dropped", c.name);
        }
    }
    let s = engine.stats();
    assert_eq!(s.rx_packets, total);
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
    println!("{total} frames: tx {tx}, reject {reject}, pass {pass}, drop {drop}");
}
