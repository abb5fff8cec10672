//! Compile latency at scale, as percentiles (criterion gives medians only).
//!
//! Loads `SERVICES` Services × `ENDPOINTS` endpoints (default 10,000 × 10),
//! times one cold compile, then `CHANGES` times (default 200) changes one
//! EndpointSlice (endpoint 0 of a different Service each time moves to a new
//! address) and times the compile of the changed set with one long-lived
//! compiler; prints p50/p99/max.
//!
//! ```sh
//! cargo run -p edgeplane-bench --release --example compile_latency [-- SERVICES ENDPOINTS CHANGES]
//! ```

use std::time::{Duration, Instant};

use edgeplane_bench::k8s;
use edgeplane_control::compile::compile;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(10_000);
    let e = args.next().unwrap_or(10);
    let changes = args.next().unwrap_or(200);
    let opts = k8s::options();
    let mut objects = k8s::objects(n, e);
    let t0 = Instant::now();
    let c = compile(&objects, &opts, 1).expect("compile");
    println!(
        "cold compile of {n} Services × {e} endpoints: {:.1} ms ({} frontends, {} warnings)",
        t0.elapsed().as_secs_f64() * 1e3,
        c.tables.frontends.len(),
        c.warnings.len()
    );
    let mut samples = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = (k * 7919) % n;
        objects.endpoint_slices[i] = k8s::slice_for(i, e, Some(k as u32), (2 * n + k) as u64);
        let t = Instant::now();
        let c = compile(&objects, &opts, 2 + k as u64).expect("compile");
        samples.push(t.elapsed());
        assert_eq!(c.tables.frontends.len(), n);
    }
    samples.sort();
    println!(
        "one EndpointSlice changed, recompile: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        pct(&samples, 0.5).as_secs_f64() * 1e3,
        pct(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}
