//! Issue 4's control-path benchmark as percentiles: from one EndpointSlice
//! changed to the flip of the table region, through the code
//! `edgeplane control` runs (the Kubernetes source's mirror and snapshot,
//! the long-lived `Compiler`, the region writer), at 10,000 Services × 10
//! endpoints (M = 16381, every Service its own Maglev table). A reader
//! adopts every generation, as the dataplane does (timed apart: it runs in
//! the dataplane process).
//!
//! Prints, in wall and thread-CPU time:
//! * the cold start (first list → first compile → first publication);
//! * `publish_one_slice` over CHANGES (default 300) changes: the watch
//!   event applied to the mirror and the snapshot updated (the source's
//!   part), then compile + publish up to the flip (control's part);
//! * `full_resync_10k` over RESYNCS (default 10) relists: every Service
//!   and EndpointSlice delivered again with a new resourceVersion (same
//!   content), or with `RESYNC_CHANGED=P` P% of the slices also changed.
//!
//! ```sh
//! cargo run -p edgeplane-bench --release --example control_path [-- SERVICES ENDPOINTS CHANGES RESYNCS]
//! ```

use std::time::{Duration, Instant};

use edgeplane_bench::k8s;
use edgeplane_control::control_path::ControlPath;
use edgeplane_dataplane::region::{RegionReader, WriterOptions};

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on Linux.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of the calling thread (leaves out time spent waiting for a core).
fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the process, all threads (the cold compile builds Maglev
/// tables on every core).
fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn line(what: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "  {what:<44} n={:<4} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms",
        v.len(),
        ms(pct(&v, 0.5)),
        ms(pct(&v, 0.99)),
        ms(v.last().copied().unwrap_or_default())
    );
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let n = args.next().unwrap_or(10_000);
    let e = args.next().unwrap_or(10);
    let changes = args.next().unwrap_or(300);
    let resyncs = args.next().unwrap_or(10);
    let changed_pct: usize = std::env::var("RESYNC_CHANGED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("edgeplane-control-path-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let objects = k8s::objects(n, e);
    let mut rv = 10 * n as u64;

    // Cold start: the first list through the mirror, the first compile (every
    // Maglev table built, on every core), the first publication.
    let (w0, c0, p0) = (Instant::now(), thread_cpu(), process_cpu());
    let (mut mirrors, mut slot, mut index) = k8s::first_list(&objects);
    let mut path = ControlPath::open(&dir, WriterOptions::default(), k8s::options(), true)
        .expect("region and compiler");
    let snap = slot.clone().expect("published");
    let (c, r) = path.compile_publish(&snap);
    let (r, st) = (r.expect("first publication"), c.stats);
    drop(snap);
    println!(
        "cold start ({n} Services × {e} endpoints, {} cores): list → first flip wall {:.1} ms, thread CPU {:.1} ms, process CPU (all threads) {:.1} ms; {} Maglev tables built, {} blocks written, generation {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        ms(w0.elapsed()),
        ms(thread_cpu() - c0),
        ms(process_cpu() - p0),
        st.maglev_built,
        r.blocks_written,
        r.generation
    );

    let mut reader = RegionReader::open(&dir).expect("reader");
    let mut held = reader.try_adopt().expect("adopt");
    reader.settle();
    let mut adopt = |reader: &mut RegionReader, cpu: &mut Vec<Duration>| {
        let c = thread_cpu();
        let t = reader
            .try_adopt()
            .expect("adopt")
            .expect("a new generation");
        held = Some(t);
        reader.settle();
        cpu.push(thread_cpu() - c);
    };

    // One EndpointSlice changed at a time.
    let (mut src_w, mut src_c) = (Vec::new(), Vec::new());
    let (mut ctl_w, mut ctl_c) = (Vec::new(), Vec::new());
    let (mut all_w, mut all_c) = (Vec::new(), Vec::new());
    let (mut after_c, mut adopt_c) = (Vec::new(), Vec::new());
    let mut derived = 0;
    for k in 0..changes {
        let i = (k * 7919) % n;
        rv += 1;
        let slice = k8s::slice_for(i, e, Some(k as u32), rv);
        let (w, c) = (Instant::now(), thread_cpu());
        // The source: the watch event, then the snapshot updated in place.
        mirrors.endpoint_slices.apply(slice);
        assert!(mirrors.publish_into(&mut slot, &mut index));
        let snap = slot.clone().expect("published");
        let (w1, c1) = (Instant::now(), thread_cpu());
        // Control: compile and publish, up to the flip.
        let (out, r) = path.compile_publish(&snap);
        let (w2, c2) = (Instant::now(), thread_cpu());
        let (r, st) = (r.expect("publish"), out.stats);
        assert!(out.incremental, "the journal was followed");
        drop(snap);
        after_c.push(thread_cpu() - c2);
        src_w.push(w1 - w);
        src_c.push(c1 - c);
        ctl_w.push(w2 - w1);
        ctl_c.push(c2 - c1);
        all_w.push(w2 - w);
        all_c.push(c2 - c);
        derived += st.services_derived;
        assert_eq!(r.blocks_written, 1, "one Maglev table changed");
        adopt(&mut reader, &mut adopt_c);
    }
    println!("publish_one_slice: {changes} changes ({derived} Services derived in all)");
    line("change → flip, wall", all_w);
    line("change → flip, thread CPU", all_c);
    line("  source (mirror + snapshot), thread CPU", src_c);
    line("  source (mirror + snapshot), wall", src_w);
    line("  control (compile + publish), thread CPU", ctl_c);
    line("  control (compile + publish), wall", ctl_w);
    line("after the flip (snapshot dropped), thread CPU", after_c);
    line("reader adoption (dataplane side), thread CPU", adopt_c);

    // Full resyncs: a relist of everything, new resourceVersions.
    let (mut rs_w, mut rs_c, mut rs_p) = (Vec::new(), Vec::new(), Vec::new());
    let mut rs_adopt = Vec::new();
    for round in 0..resyncs {
        let (services, slices) = k8s::relisted(&objects, e, &mut rv, |i| {
            (changed_pct > 0 && (i * 100 / n.max(1)) < changed_pct)
                .then_some((1_000_000 + round * n + i) as u32)
        });
        let (w, c, p) = (Instant::now(), thread_cpu(), process_cpu());
        mirrors.services.relist(services);
        mirrors.endpoint_slices.relist(slices);
        assert!(mirrors.publish_into(&mut slot, &mut index));
        let snap = slot.clone().expect("published");
        let (cc, r) = path.compile_publish(&snap);
        rs_w.push(w.elapsed());
        rs_c.push(thread_cpu() - c);
        rs_p.push(process_cpu() - p);
        let (r, st) = (r.expect("publish"), cc.stats);
        drop(snap);
        if round == 0 {
            println!(
                "full_resync_10k: {resyncs} relists of {} objects, {changed_pct}% of slices changed: first one derived {} Services, built {} Maglev tables, wrote {} segments and {} Maglev blocks",
                2 * n,
                st.services_derived,
                st.maglev_built,
                r.segments_written,
                r.blocks_written
            );
        }
        adopt(&mut reader, &mut rs_adopt);
    }
    line("relist → flip, wall", rs_w);
    line("relist → flip, thread CPU", rs_c);
    line("relist → flip, process CPU (all threads)", rs_p);
    line("reader adoption, thread CPU", rs_adopt);
    drop(held);
    drop(reader);
    drop(path);
    let _ = std::fs::remove_dir_all(&dir);
}
