//! Change → snapshot latency of the Kubernetes source at scale.
//!
//! Loads 10,000 Services, each with one EndpointSlice of 3 endpoints, into
//! the test API server, starts the Kubernetes source (node-a), waits for the
//! first snapshot, then makes 100 EndpointSlice changes (a new endpoint
//! each) and measures, per change, until the published snapshot contains it:
//!
//! - `kubectl apply` → published: from spawning `kubectl apply -f` (process
//!   start, discovery, GET, PATCH) to the snapshot (skipped without kubectl);
//! - write → published: from the API server's commit of the change to the
//!   snapshot (watch delivery, decode, coalescing, snapshot build);
//! - direct writes (no kubectl): 100 more changes written straight into the
//!   store, the same write → published figure without kubectl's load.
//!
//! Also times one compile of the final snapshot (the next step to tables).
//!
//! ```sh
//! cargo run -p edgeplane-testapi --release --example sync_latency [-- SERVICES CHANGES]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeplane_control::compile::{compile, CompileOptions};
use edgeplane_control::manifests::ObjectSet;
use edgeplane_testapi::resources::ENDPOINT_SLICES;
use edgeplane_testapi::{FieldValidation, TestApi};
use serde_json::Value;
use tokio::sync::watch;

mod common;

fn cluster_ip(i: usize) -> String {
    format!("198.18.{}.{}", 128 + i / 250, 1 + i % 250)
}

/// Endpoint `n` (0..3) of Service `i`: 198.19.0.1 upwards (below 198.19.250.0,
/// which the changes use).
fn endpoint_ip(i: usize, n: usize) -> String {
    let idx = i * 3 + n;
    format!("198.19.{}.{}", idx / 250, 1 + idx % 250)
}

fn slice_yaml(i: usize, addrs: &[String]) -> String {
    common::slice_yaml(i, 8080, addrs, None)
}

fn slice(i: usize, addrs: &[String]) -> Value {
    common::slice(i, 8080, addrs, None)
}

fn contains(s: &ObjectSet, name: &str, addr: &str) -> Option<String> {
    s.endpoint_slices
        .iter()
        .find(|e| e.metadata.name.as_deref() == Some(name))
        .filter(|e| {
            e.endpoints
                .iter()
                .any(|ep| ep.addresses.iter().any(|a| a == addr))
        })
        .and_then(|e| e.metadata.resource_version.clone())
}

async fn wait_for_addr(
    rx: &mut watch::Receiver<Option<Arc<ObjectSet>>>,
    name: &str,
    addr: &str,
) -> (Instant, u64) {
    loop {
        if let Some(s) = rx.borrow_and_update().clone() {
            if let Some(rv) = contains(&s, name, addr) {
                return (Instant::now(), rv.parse().unwrap_or(0));
            }
        }
        if tokio::time::timeout(Duration::from_secs(30), rx.changed())
            .await
            .is_err()
        {
            eprintln!("timed out waiting for {name} to contain {addr}");
            std::process::exit(1);
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (n_services, n_changes) = common::args();
    let api = TestApi::start().await?;
    let store = api.store().clone();
    common::load(&store, n_services, |i| {
        let addrs: Vec<String> = (0..3).map(|n| endpoint_ip(i, n)).collect();
        (common::service(i, &cluster_ip(i)), slice(i, &addrs))
    })?;

    let t0 = Instant::now();
    let common::Running {
        mut rx,
        stats,
        task,
        dir,
        kubeconfig,
    } = common::start_source(&api, "sync-latency").await?;
    loop {
        if rx
            .borrow_and_update()
            .as_ref()
            .is_some_and(|s| s.services.len() == n_services)
        {
            break;
        }
        rx.changed().await?;
    }
    println!(
        "initial list → first snapshot: {:.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );

    let kubectl = common::have_kubectl();
    let mut via_kubectl = Vec::new();
    let mut write_to_pub = Vec::new();
    if kubectl {
        for k in 0..n_changes {
            let i = (k * 97) % n_services;
            let mut addrs: Vec<String> = (0..3).map(|n| endpoint_ip(i, n)).collect();
            let new = format!("198.19.250.{}", 1 + k % 250);
            addrs.push(new.clone());
            let start = common::kubectl_apply(&dir, &kubeconfig, &slice_yaml(i, &addrs)).await?;
            let (published, rv) = wait_for_addr(&mut rx, &format!("svc-{i:05}-1"), &new).await;
            via_kubectl.push(published - start);
            if let Some(at) = store.committed_at(rv) {
                write_to_pub.push(published.saturating_duration_since(at));
            }
        }
    }
    let mut direct = Vec::new();
    for k in 0..n_changes {
        let i = (k * 89 + 13) % n_services;
        let mut addrs: Vec<String> = (0..3).map(|n| endpoint_ip(i, n)).collect();
        let new = format!("198.19.251.{}", 1 + k % 250);
        addrs.push(new.clone());
        let name = format!("svc-{i:05}-1");
        let mut v = slice(i, &addrs);
        v["metadata"]["resourceVersion"] = Value::Null;
        let w = store.update(
            ENDPOINT_SLICES,
            "default",
            &name,
            v,
            false,
            false,
            FieldValidation::Ignore,
        )?;
        let rv = common::written_rv(&w.obj.value);
        let (published, _) = wait_for_addr(&mut rx, &name, &new).await;
        if let Some(at) = store.committed_at(rv) {
            direct.push(published.saturating_duration_since(at));
        }
    }
    println!("{n_services} Services, {n_changes} EndpointSlice changes each:");
    common::report("  kubectl apply → snapshot published", via_kubectl);
    common::report("  API write (kubectl) → snapshot published", write_to_pub);
    common::report("  API write (direct) → snapshot published", direct);
    let (restarts, errors, events, pubs) = stats.counts();
    println!("  source: {events} events, {pubs} publications, {restarts} relists, {errors} errors");

    let snapshot = rx.borrow().clone();
    if let Some(s) = snapshot {
        let opts = CompileOptions {
            node_name: "node-a".into(),
            ..CompileOptions::default()
        };
        let mut clones = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let copy = ObjectSet::clone(&s);
            clones.push(t.elapsed());
            drop(copy);
        }
        common::report(
            "  full snapshot copy (paid when a consumer still holds the previous one)",
            clones,
        );
        let mut times = Vec::new();
        for g in 0..3 {
            let t = Instant::now();
            let c = compile(&s, &opts, g)?;
            times.push(t.elapsed());
            if g == 0 {
                println!(
                    "  compile of the snapshot: {} frontends, M = {}",
                    c.report.frontends.len(),
                    opts.maglev_m
                );
            }
        }
        common::report("  compile (snapshot → tables)", times);
    }
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
