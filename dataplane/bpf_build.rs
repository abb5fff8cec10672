//! Shared by the build scripts of `dataplane` (the XDP steering program) and
//! `bench` (the pktgen sink's program), each of which includes this file
//! with `#[path]`: compiles one BPF C source with clang (`-target bpf`) into
//! `$OUT_DIR/<name>.bpf.o`, for `include_bytes!`.
//!
//! Headers: the kernel UAPI from linux-libc-dev (plus the multiarch `asm/`
//! directory, which clang does not search for `-target bpf`), and
//! `bpf_helpers.h` from the libbpf that `libbpf-sys` vendors
//! (`DEP_BPF_INCLUDE`, exported because the including crate depends on
//! `libbpf-sys` directly).

use std::env;
use std::path::PathBuf;
use std::process::{exit, Command};

/// Compiles `bpf/<name>.bpf.c` to `$OUT_DIR/<name>.bpf.o`, or exits the build
/// script with a message naming what is missing.
pub fn compile(name: &str) {
    let src = format!("bpf/{name}.bpf.c");
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join(format!("{name}.bpf.o"));
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
            eprintln!("unsupported target arch {other} for the BPF program {src}");
            exit(1);
        }
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{bpf_include}"))
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", &src, "-o"])
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
