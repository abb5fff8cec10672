//! Maglev table build time (control side): M = 65537, N = 1000 backends.
//! Target: ≤ 1.8 ms on one core.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};

fn backends(n: u32) -> Vec<(IpAddr, u16, u32)> {
    (0..n)
        .map(|i| {
            (
                IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i)),
                8080,
                1,
            )
        })
        .collect()
}

fn maglev(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev");
    let b = backends(1000);
    let seed = edgeplane_dataplane::NodeConfig::default().hash_seed;
    g.bench_function("build_65537_n1000", |bench| {
        bench.iter(|| {
            edgeplane_control::maglev::build(black_box(&b), black_box(65537), black_box(seed))
        })
    });
    let b100 = backends(100);
    g.bench_function("build_16381_n100", |bench| {
        bench.iter(|| {
            edgeplane_control::maglev::build(black_box(&b100), black_box(16381), black_box(seed))
        })
    });
    g.finish();
}

criterion_group!(benches, maglev);
criterion_main!(benches);
