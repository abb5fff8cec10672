//! With the `afxdp` feature: compiles `bpf/steer.bpf.c` with clang
//! (`-target bpf`) into `$OUT_DIR/steer.bpf.o`, which `src/afxdp/steer.rs`
//! embeds with `include_bytes!` (see `bpf_build.rs`, shared with bench/).
//! Without it (the sans-IO engine alone, the fuzz targets): nothing to do.

#[path = "bpf_build.rs"]
mod bpf_build;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=bpf_build.rs");
    if std::env::var_os("CARGO_FEATURE_AFXDP").is_none() {
        return;
    }
    bpf_build::compile("steer");
}
