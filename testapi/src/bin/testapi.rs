//! Runs the test API server in the foreground, for trying kubectl by hand
//! and for the shell fault tests (`tests/netns/kube-faults.sh`):
//!
//! ```sh
//! cargo run -p edgeplane-testapi --bin testapi -- --port 18080 --kubeconfig /tmp/kc
//! KUBECONFIG=/tmp/kc kubectl apply -f examples/demo
//! ```
//!
//! Listens on 127.0.0.1 only. Ctrl-C (SIGINT) or SIGTERM stops it.
//!
//! Signals drive the faults of [`TestApi`]'s in-process hooks on this
//! separate process; each prints one line on stderr once it is done:
//!
//! | signal  | fault | line |
//! |---------|-------|------|
//! | SIGUSR1 | [`TestApi::drop_watches`]: every open watch ends; clients re-watch from their last version (no relist) | `dropped N open watches` |
//! | SIGUSR2 | [`TestApi::expire_history`], then [`TestApi::drop_watches`]: clients re-watching from their version get `410 Expired` and relist | `expired the history at resourceVersion V and dropped N open watches` |
//! | SIGHUP  | toggles [`TestApi::stop`] / [`TestApi::resume`]: stopped, every connection is cut and new ones are refused; started again, the same store is served on the same port | `stopped: N open watches cut, connections refused` / `listening again on URL` |
//!
//! The store survives every fault: only connections and history are lost.

use std::net::SocketAddr;
use std::path::PathBuf;

use edgeplane_testapi::{Config, TestApi};
use tokio::signal::unix::{signal, SignalKind};

fn usage() -> ! {
    eprintln!("usage: testapi [--port N] [--kubeconfig FILE]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut port = 0u16;
    let mut kubeconfig: Option<PathBuf> = None;
    // `TESTAPI_LOG` (a `RUST_LOG`-style filter, default `warn`): `info`
    // logs every watch's start (version, events replayed) and end (why).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESTAPI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
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
    // Installed before the server starts, so a signal sent as soon as the
    // kubeconfig exists is never the default action (which would end us).
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut api =
        TestApi::start_on(Config::default(), SocketAddr::from(([127, 0, 0, 1], port))).await?;
    if let Some(path) = &kubeconfig {
        api.write_kubeconfig(path)?;
        eprintln!("kubeconfig written to {}", path.display());
    }
    eprintln!("test API server listening on {}", api.url());
    let mut stopped = false;
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                let n = api.active_watches();
                api.drop_watches();
                eprintln!("SIGUSR1: dropped {n} open watches");
            }
            _ = usr2.recv() => {
                let n = api.active_watches();
                api.expire_history();
                api.drop_watches();
                eprintln!(
                    "SIGUSR2: expired the history at resourceVersion {} and dropped {n} open watches",
                    api.store().resource_version()
                );
            }
            _ = hup.recv() => {
                if stopped {
                    match api.resume().await {
                        Ok(()) => {
                            stopped = false;
                            eprintln!("SIGHUP: listening again on {}", api.url());
                        }
                        // The port may be taken meanwhile; stay stopped and
                        // say so (the next SIGHUP tries again).
                        Err(e) => eprintln!("SIGHUP: could not listen again on {}: {e}", api.addr()),
                    }
                } else {
                    let n = api.active_watches();
                    api.stop().await;
                    stopped = true;
                    eprintln!("SIGHUP: stopped: {n} open watches cut, connections refused");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    Ok(())
}
