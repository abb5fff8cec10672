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

/// CPU time of the calling thread: unlike wall time, it does not count the
/// time the thread waited for a core, which on a shared machine is most of
/// the noise. (Cache contention still shows.)
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is
    // always supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the whole process (all threads).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `thread_cpu`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

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
    let mut cold_cpu = Vec::new();
    for _ in 0..runs {
        let (t0, c0) = (Instant::now(), process_cpu());
        let c = compile(&objects, &opts, 1).expect("compile");
        cold.push(t0.elapsed());
        cold_cpu.push(process_cpu().saturating_sub(c0));
        assert_eq!(c.tables.frontends.len(), n);
    }
    cold.sort();
    cold_cpu.sort();
    if !cold.is_empty() {
        println!(
            "cold compile of {n} Services × {e} endpoints (fresh compiler, {runs} runs, {} threads): wall min {:.1} ms, median {:.1} ms; CPU (all threads) median {:.1} ms",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            cold[0].as_secs_f64() * 1e3,
            cold[cold.len() / 2].as_secs_f64() * 1e3,
            cold_cpu[cold_cpu.len() / 2].as_secs_f64() * 1e3
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
    let mut cpu = Vec::with_capacity(changes);
    for k in 0..changes {
        let i = (k * 7919) % n;
        objects.endpoint_slices[i] = k8s::slice_for(i, e, Some(k as u32), (2 * n + k) as u64);
        let (t, c0) = (Instant::now(), thread_cpu());
        let (c, st) = compiler.compile_with_stats(&objects, 3 + k as u64);
        samples.push(t.elapsed());
        cpu.push(thread_cpu().saturating_sub(c0));
        assert_eq!(c.tables.frontends.len(), n);
        assert_eq!((st.services_derived, st.maglev_built), (1, 1));
    }
    for (what, mut v) in [("wall", samples), ("thread CPU", cpu)] {
        v.sort();
        println!(
            "one EndpointSlice changed, incremental compile ({what}): n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
            v.len(),
            pct(&v, 0.5).as_secs_f64() * 1e3,
            pct(&v, 0.99).as_secs_f64() * 1e3,
            v.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    }
}
