//! Runs the test API server in the foreground, for trying kubectl by hand:
//!
//! ```sh
//! cargo run -p edgeplane-testapi --bin testapi -- --port 18080 --kubeconfig /tmp/kc
//! KUBECONFIG=/tmp/kc kubectl apply -f examples/demo
//! ```
//!
//! Listens on 127.0.0.1 only. Ctrl-C stops it.

use std::net::SocketAddr;
use std::path::PathBuf;

use edgeplane_testapi::{Config, TestApi};

fn usage() -> ! {
    eprintln!("usage: testapi [--port N] [--kubeconfig FILE]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut port = 0u16;
    let mut kubeconfig: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--kubeconfig" => {
                kubeconfig = Some(args.next().map(PathBuf::from).unwrap_or_else(|| usage()))
            }
            _ => usage(),
        }
    }
    let api =
        TestApi::start_on(Config::default(), SocketAddr::from(([127, 0, 0, 1], port))).await?;
    if let Some(path) = &kubeconfig {
        api.write_kubeconfig(path)?;
        eprintln!("kubeconfig written to {}", path.display());
    }
    eprintln!("test API server listening on {}", api.url());
    let _ = tokio::signal::ctrl_c().await;
    Ok(())
}
