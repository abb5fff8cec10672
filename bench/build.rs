//! With the `afxdp` feature: compiles `bpf/sink.bpf.c` with clang
//! (`-target bpf`) into `$OUT_DIR/sink.bpf.o`, which `src/pktgen/sink.rs`
//! embeds with `include_bytes!` (the compile step is dataplane's
//! `bpf_build.rs`). Without it (frame generation, the report and the
//! benches): nothing to do.

#[path = "../dataplane/bpf_build.rs"]
mod bpf_build;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../dataplane/bpf_build.rs");
    if std::env::var_os("CARGO_FEATURE_AFXDP").is_none() {
        return;
    }
    bpf_build::compile("sink");
}
