//! Compile latency at scale, as percentiles (criterion gives medians only).
//!
//! Loads `SERVICES` Services × `ENDPOINTS` endpoints (default 10,000 × 10),
//! times cold compiles (a fresh compiler each), then `CHANGES` times (default
//! 200) changes one EndpointSlice (endpoint 0 of a different Service each
//! time moves to a new address) and times the compile of the changed set
//! with one long-lived [`Compiler`]; prints p50/p99/max.
//!
//! ```sh
//! cargo run -p edgeplane-bench --release --example compile_latency [-- SERVICES ENDPOINTS CHANGES]
//! ```

use std::time::{Duration, Instant};

use edgeplane_bench::k8s;
use edgeplane_control::compile::{compile, Compiler};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
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
    let mut cold = Vec::new();
    // COLD_RUNS=0 skips them (to profile the incremental path alone).
    let runs: usize = std::env::var("COLD_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for _ in 0..runs {
        let t0 = Instant::now();
        let c = compile(&objects, &opts, 1).expect("compile");
        cold.push(t0.elapsed());
        assert_eq!(c.tables.frontends.len(), n);
    }
    cold.sort();
    if !cold.is_empty() {
        println!(
            "cold compile of {n} Services × {e} endpoints (fresh compiler, {runs} runs): min {:.1} ms, median {:.1} ms",
            cold[0].as_secs_f64() * 1e3,
            cold[cold.len() / 2].as_secs_f64() * 1e3
        );
    }
    let mut compiler = Compiler::new(opts).expect("options");
    // As the Kubernetes source does: objects from the API change their
    // resourceVersion on every write. TRUST_RV=0 compares contents instead.
    compiler.trust_resource_version(std::env::var("TRUST_RV").map_or(true, |v| v != "0"));
    let t0 = Instant::now();
    compiler.compile(&objects, 1);
    println!(
        "first compile of the long-lived compiler: {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let t0 = Instant::now();
    let (_, st) = compiler.compile_with_stats(&objects, 2);
    println!(
        "recompile, nothing changed: {:.2} ms ({st:?})",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let mut samples = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = (k * 7919) % n;
        objects.endpoint_slices[i] = k8s::slice_for(i, e, Some(k as u32), (2 * n + k) as u64);
        let t = Instant::now();
        let (c, st) = compiler.compile_with_stats(&objects, 3 + k as u64);
        samples.push(t.elapsed());
        assert_eq!(c.tables.frontends.len(), n);
        assert_eq!((st.services_derived, st.maglev_built), (1, 1));
    }
    samples.sort();
    println!(
        "one EndpointSlice changed, incremental compile: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        pct(&samples, 0.5).as_secs_f64() * 1e3,
        pct(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}
