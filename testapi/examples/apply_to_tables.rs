//! Change → compiled tables latency of the Kubernetes path at scale
//! (issue 5's benchmark up to the tables; forwarding is the dataplane's).
//!
//! Loads 10,000 Services, each with one EndpointSlice of 10 endpoints, into
//! the test API server, starts the Kubernetes source (node-a) and a consumer
//! thread that does what `edgeplane run` does with each snapshot: compile it
//! with one long-lived [`Compiler`] (resourceVersions trusted). Then makes
//! `CHANGES` (default 100) EndpointSlice changes — endpoint 0 of a Service
//! moves to a new address — and measures, per change, until a compiled
//! generation's frontend for that Service has the new backend:
//!
//! - API write → tables: from the API server's commit of the change (watch
//!   delivery, decode, coalescing, snapshot, compile);
//! - `kubectl apply` → tables: from spawning `kubectl apply -f` (process
//!   start, discovery, GET, PATCH, then the above); skipped without kubectl;
//! - compile: the consumer's compile of each changed snapshot alone.
//!
//! The consumer waits on the snapshot channel; `edgeplane run` polls it
//! every 5 ms, which adds up to 5 ms (2.5 ms on average) to these figures.
//!
//! ```sh
//! cargo run -p edgeplane-testapi --release --example apply_to_tables [-- SERVICES CHANGES]
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeplane_control::compile::{CompileOptions, Compiler};
use edgeplane_control::manifests::ObjectSet;
use edgeplane_packet::Proto;
use edgeplane_testapi::resources::ENDPOINT_SLICES;
use edgeplane_testapi::{FieldValidation, TestApi};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

mod common;

const ENDPOINTS: usize = 10;

fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 128, 0)) + i as u32)
}

/// Endpoint `j` of Service `i`: every (address, port) distinct.
fn endpoint(i: usize, j: usize) -> (Ipv4Addr, u16) {
    let per_block = 65536 / ENDPOINTS;
    let idx = ((i % per_block) * ENDPOINTS + j) as u32;
    (
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + idx),
        8080 + (i / per_block) as u16,
    )
}

/// The address change `k` moves endpoint 0 to (198.18.64.0/18: unused).
fn moved(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + (k % 16384) as u32)
}

/// The endpoint addresses of Service `i`, endpoint 0 moved to `first` if
/// given.
fn addrs(i: usize, first: Option<Ipv4Addr>) -> Vec<String> {
    (0..ENDPOINTS)
        .map(|j| match (j, first) {
            (0, Some(f)) => f.to_string(),
            _ => endpoint(i, j).0.to_string(),
        })
        .collect()
}

fn slice_yaml(i: usize, first: Option<Ipv4Addr>) -> String {
    common::slice_yaml(i, endpoint(i, 0).1, &addrs(i, first), Some("node-b"))
}

fn slice(i: usize, first: Option<Ipv4Addr>) -> Value {
    common::slice(i, endpoint(i, 0).1, &addrs(i, first), Some("node-b"))
}

/// A change the consumer watches for: Service `i` gets backend `addr`.
#[derive(Debug, Clone, Copy)]
struct Expect {
    i: usize,
    addr: IpAddr,
}

/// What the consumer measured.
#[derive(Debug, Default)]
struct Consumer {
    /// Compile time of every snapshot after the first.
    compiles: Vec<Duration>,
    first_compile: Option<Duration>,
}

/// Compiles every snapshot with one compiler, as `edgeplane run` does, and
/// reports when an expected backend appears in a compiled generation.
fn consume(
    mut rx: watch::Receiver<Option<Arc<ObjectSet>>>,
    expect: Arc<Mutex<Option<Expect>>>,
    seen: mpsc::UnboundedSender<Instant>,
    out: Arc<Mutex<Consumer>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("consumer runtime: {e}");
            return;
        }
    };
    let opts = CompileOptions {
        node_name: "node-a".into(),
        ..CompileOptions::default()
    };
    let Ok(mut compiler) = Compiler::new(opts) else {
        return;
    };
    compiler.trust_resource_version(true);
    let mut generation = 0u64;
    rt.block_on(async {
        loop {
            let Some(snap) = rx.borrow_and_update().clone() else {
                if rx.changed().await.is_err() {
                    return;
                }
                continue;
            };
            generation += 1;
            let t = Instant::now();
            let c = compiler.compile(&snap, generation);
            let took = t.elapsed();
            // Drop the snapshot at once so the source can update it in place.
            drop(snap);
            let done = Instant::now();
            if let Ok(mut o) = out.lock() {
                if generation == 1 {
                    o.first_compile = Some(took);
                } else {
                    o.compiles.push(took);
                }
            }
            let want = expect.lock().ok().and_then(|e| *e);
            if let Some(w) = want {
                let ip = IpAddr::V4(cluster_ip(w.i));
                let hit = c
                    .tables
                    .frontend(ip, 80, Proto::Tcp)
                    .is_some_and(|(_, f)| c.tables.new_backends(f).iter().any(|b| b.ip == w.addr));
                if hit {
                    if let Ok(mut e) = expect.lock() {
                        *e = None;
                    }
                    let _ = seen.send(done);
                }
            }
            drop(c);
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The time the consumer saw the expected change in a compiled generation.
async fn wait(seen_rx: &mut mpsc::UnboundedReceiver<Instant>) -> anyhow::Result<Instant> {
    match tokio::time::timeout(Duration::from_secs(30), seen_rx.recv()).await {
        Ok(Some(at)) => Ok(at),
        _ => Err(anyhow::anyhow!(
            "the change did not reach the tables within 30 s"
        )),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (n_services, n_changes) = common::args();
    let api = TestApi::start().await?;
    let store = api.store().clone();
    common::load(&store, n_services, |i| {
        (
            common::service(i, &cluster_ip(i).to_string()),
            slice(i, None),
        )
    })?;
    let t0 = Instant::now();
    let common::Running {
        rx,
        stats,
        task,
        dir,
        kubeconfig,
    } = common::start_source(&api, "apply-tables").await?;

    let expect: Arc<Mutex<Option<Expect>>> = Arc::new(Mutex::new(None));
    let consumer = Arc::new(Mutex::new(Consumer::default()));
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let thread = {
        let (rx, expect, consumer) = (rx.clone(), expect.clone(), consumer.clone());
        std::thread::spawn(move || consume(rx, expect, seen_tx, consumer))
    };
    // The first generation: wait until the consumer compiled a full snapshot.
    loop {
        if consumer.lock().ok().and_then(|c| c.first_compile).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "initial list → first tables: {:.0} ms (first compile {:.0} ms)",
        t0.elapsed().as_secs_f64() * 1e3,
        consumer
            .lock()
            .ok()
            .and_then(|c| c.first_compile)
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    );
    if let Ok(mut c) = consumer.lock() {
        c.compiles.clear();
    }

    // Direct API writes.
    let mut direct = Vec::new();
    for k in 0..n_changes {
        let i = (k * 89 + 13) % n_services;
        let addr = moved(k);
        *expect.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(Expect {
            i,
            addr: IpAddr::V4(addr),
        });
        let name = format!("svc-{i:05}-1");
        let w = store.update(
            ENDPOINT_SLICES,
            "default",
            &name,
            slice(i, Some(addr)),
            false,
            false,
            FieldValidation::Ignore,
        )?;
        let rv = common::written_rv(&w.obj.value);
        let at = wait(&mut seen_rx).await?;
        if let Some(committed) = store.committed_at(rv) {
            direct.push(at.saturating_duration_since(committed));
        }
    }
    let compiles = consumer
        .lock()
        .map(|mut c| std::mem::take(&mut c.compiles))
        .unwrap_or_default();

    // kubectl apply.
    let kubectl = common::have_kubectl();
    let mut via_kubectl = Vec::new();
    if kubectl {
        for k in 0..n_changes {
            let i = (k * 97 + 5) % n_services;
            let addr = moved(8192 + k);
            *expect.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(Expect {
                i,
                addr: IpAddr::V4(addr),
            });
            let start =
                common::kubectl_apply(&dir, &kubeconfig, &slice_yaml(i, Some(addr))).await?;
            let at = wait(&mut seen_rx).await?;
            via_kubectl.push(at.saturating_duration_since(start));
        }
    }

    println!(
        "{n_services} Services × {ENDPOINTS} endpoints, {n_changes} EndpointSlice changes each:"
    );
    common::report("  API write → compiled tables", direct);
    common::report("  compile of a changed snapshot (in the above)", compiles);
    common::report("  kubectl apply → compiled tables", via_kubectl);
    let (restarts, errors, events, pubs) = stats.counts();
    println!("  source: {events} events, {pubs} publications, {restarts} relists, {errors} errors");
    task.abort();
    let _ = task.await;
    let _ = thread.join();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
