//! `cargo run -p edgeplane-control --example compile -- PATH [NODE_NAME] [NODE_IP...]`:
//! compiles manifests and prints the report table, without the main binary.

use std::net::IpAddr;
use std::path::PathBuf;

use edgeplane_control::{compile, load_path, render_table, CompileOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .expect("usage: compile PATH [NODE_NAME] [NODE_IP...]"),
    );
    let node_name = args.next().unwrap_or_default();
    let node_ips: Vec<IpAddr> = args.map(|a| a.parse().expect("node IP")).collect();
    let (objects, diagnostics) = load_path(&path).expect("reading manifests");
    for d in &diagnostics {
        eprintln!("warning: {d}");
    }
    let opts = CompileOptions {
        node_name,
        node_ips,
        ..CompileOptions::default()
    };
    let compiled = compile(&objects, &opts, 1).expect("compile");
    for w in &compiled.warnings {
        eprintln!("warning: {w}");
    }
    print!("{}", render_table(&compiled));
}
