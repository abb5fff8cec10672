//! The shared table region's reading side on arbitrary bytes: a slot body
//! and a Maglev arena (seeded with the writer's own encoding) are validated
//! and decoded as the dataplane does when it adopts a generation; tables
//! that pass are used by the engine, which reads the Maglev tables in place
//! in the untrusted arena. No panic, no out-of-bounds read (cargo-fuzz runs
//! this under AddressSanitizer).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgeplane_dataplane::testing::region_fuzz_one(data);
});
