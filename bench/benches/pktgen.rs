//! The generator's own per-frame cost, so a comparison knows the generator
//! is not its limit: patching a pre-built UMEM frame (what `pktgen send`
//! does per frame) and writing a whole frame, for each protocol, family and
//! flow pattern, at 64 and 1514 bytes.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgeplane_bench::pktgen::{FlowPattern, FrameGen, FrameSpec, Proto};

fn spec(v6: bool, proto: Proto, pattern: FlowPattern, size: Option<usize>) -> FrameSpec {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            "2001:db8:32::".parse().unwrap(),
            "2001:db8:64::1".parse().unwrap(),
        )
    } else {
        (
            "198.18.32.0".parse().unwrap(),
            "198.18.64.1".parse().unwrap(),
        )
    };
    FrameSpec {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_base: src,
        src_count: 256,
        dst_base: dst,
        dst_count: 10_000,
        dst_port: 80,
        proto,
        size,
        pattern,
    }
}

fn bench(c: &mut Criterion) {
    const BATCH: u64 = 64;
    let mut g = c.benchmark_group("pktgen");
    g.throughput(Throughput::Elements(BATCH));
    let cases = [
        (
            "patch/v4/udp/10k-flows/64B",
            false,
            Proto::Udp,
            FlowPattern::Many(10_000),
            None,
        ),
        (
            "patch/v4/syn/new-per-packet/64B",
            false,
            Proto::Syn,
            FlowPattern::NewPerPacket,
            None,
        ),
        (
            "patch/v4/ack/1-flow/64B",
            false,
            Proto::Ack,
            FlowPattern::One,
            None,
        ),
        (
            "patch/v6/udp/10k-flows/90B",
            true,
            Proto::Udp,
            FlowPattern::Many(10_000),
            None,
        ),
        (
            "patch/v4/udp/10k-flows/1514B",
            false,
            Proto::Udp,
            FlowPattern::Many(10_000),
            Some(1514),
        ),
    ];
    for (name, v6, proto, pattern, size) in cases {
        let gen = FrameGen::new(&spec(v6, proto, pattern, size)).unwrap();
        // A batch of pre-built frames, as in the UMEM.
        let mut frames: Vec<Vec<u8>> = (0..BATCH).map(|_| gen.template().to_vec()).collect();
        let mut seq = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                for f in frames.iter_mut() {
                    gen.patch(black_box(f), seq);
                    seq += 1;
                }
            })
        });
    }
    // Copying the template first (what a generator without pre-built
    // frames would do).
    let gen = FrameGen::new(&spec(
        false,
        Proto::Udp,
        FlowPattern::Many(10_000),
        Some(1514),
    ))
    .unwrap();
    let mut frames: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; 2048]).collect();
    let mut seq = 0u64;
    g.bench_function("write/v4/udp/10k-flows/1514B", |b| {
        b.iter(|| {
            for f in frames.iter_mut() {
                gen.write(black_box(f), seq);
                seq += 1;
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
