//! The whole engine on arbitrary frames: each input is split into frames that
//! are processed in order against a small fixed set of tables, so conntrack
//! hits, replies and ICMP errors are reached too. No panic; every frame gets
//! exactly one verdict.
#![no_main]
use edgeplane_dataplane::engine::Engine;
use edgeplane_dataplane::testing::fuzz_tables;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static TABLES: OnceLock<edgeplane_dataplane::Tables> = OnceLock::new();
    let tables = TABLES.get_or_init(fuzz_tables);
    let mut engine = Engine::standalone(64);
    let mut buf = vec![0u8; 2048];
    let mut now = 1_000_000_000u64;
    // Frames are separated by the 4-byte marker "EPFZ".
    let mut frames = 0u64;
    for chunk in split_marker(data) {
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        let _ = engine.process(now, &mut buf, n, tables);
        now += 7_000_000_000;
        frames += 1;
    }
    let s = engine.stats();
    assert_eq!(s.rx_packets, frames);
    assert_eq!(s.tx + s.reject + s.pass + s.drop, frames);
});

fn split_marker(d: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 4 <= d.len() {
        if &d[i..i + 4] == b"EPFZ" {
            out.push(&d[start..i]);
            i += 4;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&d[start..]);
    out
}
