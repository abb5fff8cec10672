//! With the `afxdp` feature: compiles `bpf/sink.bpf.c` with clang
//! (`-target bpf`) into `$OUT_DIR/sink.bpf.o`, which `src/pktgen/sink.rs`
//! embeds with `include_bytes!`. Without it (frame generation, the report and
//! the benches): nothing to do.
//!
//! Headers: the kernel UAPI from linux-libc-dev (plus the multiarch `asm/`
//! directory, which clang does not search for `-target bpf`), and
//! `bpf_helpers.h` from the libbpf that `libbpf-sys` vendors
//! (`DEP_BPF_INCLUDE`, exported because we depend on `libbpf-sys` directly).

use std::env;
use std::path::PathBuf;
use std::process::{exit, Command};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_AFXDP").is_none() {
        return;
    }
    let src = "bpf/sink.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("sink.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let Ok(bpf_include) = env::var("DEP_BPF_INCLUDE") else {
        eprintln!("DEP_BPF_INCLUDE is not set (it comes from libbpf-sys)");
        exit(1);
    };
    let multiarch = match env::var("CARGO_CFG_TARGET_ARCH")
        .unwrap_or_default()
        .as_str()
    {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        other => {
            eprintln!("unsupported target arch {other} for the XDP program");
            exit(1);
        }
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{bpf_include}"))
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("{clang} failed on {src}: {s}");
            exit(1);
        }
        Err(e) => {
            eprintln!("running {clang} (install Debian's clang): {e}");
            exit(1);
        }
    }
}
