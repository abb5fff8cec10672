//! "No metric is updated with an atomic shared between workers."
//!
//! The packet path counts in each worker's own plain integers (`Stats`,
//! `TrafficStats`, `WorkerCounters`); the metrics endpoint sums the
//! snapshots the workers publish every 100 ms. A shared atomic counter on
//! that path would bounce one cache line between every core per packet.
//! This test enforces it two ways:
//!
//! 1. the sources of the packet path (engine, traffic counters, worker,
//!    UMEM rings) contain no atomic read-modify-write and no atomic type —
//!    only loads such as the stop flag (comments are ignored);
//! 2. the counter types are `Clone + PartialEq`, which no atomic (nor an
//!    `Arc` of one) is, so a field holding one does not compile.
//!
//! The flow state (conntrack, affinity) is shared by design and lives in
//! other files; its own event counters (insert failures, evictions) are
//! bumped per rare event, not per packet.

use edgeplane_dataplane::engine::Stats;
use edgeplane_dataplane::traffic::TrafficStats;

/// The files of the per-packet path, relative to the workspace root.
const HOT_PATH: &[&str] = &[
    "dataplane/src/engine.rs",
    "dataplane/src/traffic.rs",
    "dataplane/src/afxdp/worker.rs",
    "dataplane/src/afxdp/umem.rs",
];

/// Atomic operations that modify a value (`load` is fine: reading the stop
/// flag once per loop is not a counter).
const FORBIDDEN: &[&str] = &[
    "fetch_add",
    "fetch_sub",
    "fetch_or",
    "fetch_and",
    "fetch_xor",
    "fetch_max",
    "fetch_min",
    "fetch_update",
    "fetch_nand",
    "compare_exchange",
    "AtomicU8",
    "AtomicU16",
    "AtomicU32",
    "AtomicU64",
    "AtomicUsize",
    "AtomicI8",
    "AtomicI16",
    "AtomicI32",
    "AtomicI64",
    "AtomicIsize",
    "AtomicBool",
    "AtomicPtr",
    "AtomicCell",
];

/// Violations in one file's text: (line number, line).
fn violations(src: &str) -> Vec<(usize, String)> {
    src.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let code = line.split("//").next().unwrap_or("");
            FORBIDDEN
                .iter()
                .any(|f| code.contains(f))
                .then(|| (i + 1, line.trim().to_string()))
        })
        .collect()
}

#[test]
fn the_packet_path_has_no_shared_atomic_counter() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut all = Vec::new();
    for f in HOT_PATH {
        let src = std::fs::read_to_string(format!("{root}/{f}")).expect(f);
        assert!(src.contains("fn "), "{f} looks empty");
        for (n, line) in violations(&src) {
            all.push(format!("{f}:{n}: {line}"));
        }
    }
    assert!(
        all.is_empty(),
        "atomics on the packet path (count in the worker's own Stats/TrafficStats/WorkerCounters instead):\n{}",
        all.join("\n")
    );
}

#[test]
fn the_checker_catches_a_shared_counter() {
    let bad = "fn count(&self) {\n    // fetch_add in a comment is fine\n    PACKETS.fetch_add(1, Ordering::Relaxed);\n}\nstatic PACKETS: AtomicU64 = AtomicU64::new(0);\n";
    let v = violations(bad);
    assert_eq!(v.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![3, 5]);
    assert!(violations("let stop = shared.stop.load(Ordering::Relaxed);").is_empty());
}

/// Compiles only for plain-value types (an atomic is neither `Clone` nor
/// `PartialEq`, and neither is an `Arc` of one).
fn plain<T: Clone + PartialEq + Default + Send + 'static>() {}

#[test]
fn the_counter_types_hold_plain_integers() {
    plain::<Stats>();
    plain::<TrafficStats>();
}
