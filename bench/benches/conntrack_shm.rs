//! Conntrack in shared memory (issue 4): what a restarted dataplane pays to
//! re-attach to its predecessor's table.
//!
//! * `conntrack_shm/reattach_1m`: `Conntrack::open` of a 1,000,000-flow file
//!   that holds 1,000,000 live established TCP flows (the table full; the
//!   worst case; recovery runs in full whether or not the previous writer
//!   exited cleanly, so a crash costs the same): checks the header, maps the file,
//!   releases locks, frees what is not live, rebuilds the free lists and the
//!   whole index (two keys per flow) from the records. The file lives on a
//!   tmpfs (`/dev/shm`), as `/run/edgeplane` does in production. Only the
//!   `open` is timed, not the unmap of the previous iteration.
//! * `conntrack_shm/create_1m`: the same `open` when there is no file:
//!   create, size, initialise the free lists.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use edgeplane_dataplane::conntrack::{tcp_flags, Conntrack, Flow, FlowKey, Timeouts};

const FLOWS: usize = 1_000_000;
const S: u64 = 1_000_000_000;

fn dir(name: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("ep-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn flow(i: usize) -> Flow {
    let c = [198u8, 18, (i >> 16) as u8, (i >> 8) as u8];
    let key = |src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16| FlowKey {
        src: src.into(),
        dst: dst.into(),
        sport,
        dport,
        proto: 6,
    };
    Flow::new(
        key(c, 1024 + (i & 0xff) as u16 * 7, [198, 19, 0, 10], 80),
        key(
            [198, 19, 1, (i / 60_000) as u8],
            (i % 60_000) as u16 + 1024,
            [198, 19, 2, 2 + (i % 3) as u8],
            8080,
        ),
        0,
        0,
        1,
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("conntrack_shm");
    g.sample_size(10).measurement_time(Duration::from_secs(20));

    let d = dir("reattach");
    {
        let (t, _) = Conntrack::open(&d, FLOWS, 7, Timeouts::default(), S).unwrap();
        use tcp_flags::{ACK, SYN};
        let mut n = 0;
        for i in 0..FLOWS {
            let f = flow(i);
            if let Ok(h) = t.insert(f, S, SYN) {
                let r = t.lookup(&f.reply_key(), S).unwrap();
                t.update(&r, S, SYN | ACK);
                t.update(&h, S, ACK);
                n += 1;
            }
        }
        eprintln!(
            "conntrack_shm: {n} of {FLOWS} flows live, file {} bytes",
            std::fs::metadata(d.join("conntrack")).unwrap().len()
        );
    }
    g.bench_function("reattach_1m", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t0 = Instant::now();
                let (t, a) = Conntrack::open(&d, FLOWS, 7, Timeouts::default(), 2 * S).unwrap();
                total += t0.elapsed();
                assert!(a.kept() > FLOWS * 99 / 100, "{a}");
                drop(t);
            }
            total
        })
    });
    let _ = std::fs::remove_dir_all(&d);

    g.bench_function("create_1m", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = dir("create");
                let t0 = Instant::now();
                let (t, _) = Conntrack::open(&d, FLOWS, 7, Timeouts::default(), S).unwrap();
                total += t0.elapsed();
                drop(t);
                let _ = std::fs::remove_dir_all(&d);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
