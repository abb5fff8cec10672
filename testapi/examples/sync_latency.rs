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
use edgeplane_control::kube::{KubeConfig, KubeSource};
use edgeplane_control::manifests::ObjectSet;
use edgeplane_testapi::resources::{ENDPOINT_SLICES, NODES, SERVICES};
use edgeplane_testapi::{FieldValidation, TestApi};
use serde_json::{json, Value};
use tokio::sync::watch;

fn cluster_ip(i: usize) -> String {
    format!("198.18.{}.{}", 128 + i / 250, 1 + i % 250)
}

/// Endpoint `n` (0..3) of Service `i`: 198.19.0.1 upwards (below 198.19.250.0,
/// which the changes use).
fn endpoint_ip(i: usize, n: usize) -> String {
    let idx = i * 3 + n;
    format!("198.19.{}.{}", idx / 250, 1 + idx % 250)
}

fn service(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("svc-{i:05}"), "namespace": "default"},
           "spec": {"clusterIP": cluster_ip(i), "selector": {"app": format!("a{i}")},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn slice_yaml(i: usize, addrs: &[String]) -> String {
    let eps: String = addrs
        .iter()
        .map(|a| format!("- addresses: [{a}]\n  conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i:05}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: svc-{i:05}\naddressType: IPv4\nports:\n- {{name: http, protocol: TCP, port: 8080}}\nendpoints:\n{eps}"
    )
}

fn slice(i: usize, addrs: &[String]) -> Value {
    serde_yaml::from_str(&slice_yaml(i, addrs)).unwrap_or(Value::Null)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    if v.is_empty() {
        println!("{name}: no samples");
        return;
    }
    println!(
        "{name}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        pct(&v, 0.5).as_secs_f64() * 1e3,
        pct(&v, 0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
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
    let mut args = std::env::args().skip(1);
    let n_services: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n_changes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);

    let api = TestApi::start().await?;
    let store = api.store().clone();
    let load = Instant::now();
    store.create(
        NODES,
        None,
        json!({"metadata": {"name": "node-a"},
               "status": {"addresses": [{"type": "InternalIP", "address": "198.18.1.1"}]}}),
        false,
        FieldValidation::Ignore,
    )?;
    for i in 0..n_services {
        store.create(
            SERVICES,
            Some("default"),
            service(i),
            false,
            FieldValidation::Ignore,
        )?;
        let addrs: Vec<String> = (0..3).map(|n| endpoint_ip(i, n)).collect();
        store.create(
            ENDPOINT_SLICES,
            Some("default"),
            slice(i, &addrs),
            false,
            FieldValidation::Ignore,
        )?;
    }
    println!(
        "loaded {n_services} Services + {n_services} EndpointSlices in {:.1} s",
        load.elapsed().as_secs_f64()
    );

    let dir = std::env::temp_dir().join(format!("edgeplane-sync-latency-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let config = KubeConfig {
        kubeconfig: Some(kubeconfig.clone()),
        ..KubeConfig::new("node-a")
    };
    let source = KubeSource::connect(config).await?;
    let stats = source.stats();
    let (tx, mut rx) = watch::channel(None);
    let t0 = Instant::now();
    let task = tokio::spawn(source.run(tx));
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

    let kubectl = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut via_kubectl = Vec::new();
    let mut write_to_pub = Vec::new();
    if kubectl {
        for k in 0..n_changes {
            let i = (k * 97) % n_services;
            let mut addrs: Vec<String> = (0..3).map(|n| endpoint_ip(i, n)).collect();
            let new = format!("198.19.250.{}", 1 + k % 250);
            addrs.push(new.clone());
            let file = dir.join("slice.yaml");
            std::fs::write(&file, slice_yaml(i, &addrs))?;
            let start = Instant::now();
            let out = tokio::process::Command::new("kubectl")
                .arg("apply")
                .arg("-f")
                .arg(&file)
                .env("KUBECONFIG", &kubeconfig)
                .env("KUBECACHEDIR", dir.join("cache"))
                .output()
                .await?;
            if !out.status.success() {
                anyhow::bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
            }
            let (published, rv) = wait_for_addr(&mut rx, &format!("svc-{i:05}-1"), &new).await;
            via_kubectl.push(published - start);
            if let Some(at) = store.committed_at(rv) {
                write_to_pub.push(published.saturating_duration_since(at));
            }
        }
    } else {
        println!("kubectl not on PATH: skipping the kubectl apply figures");
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
        let rv: u64 = w.obj.value["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (published, _) = wait_for_addr(&mut rx, &name, &new).await;
        if let Some(at) = store.committed_at(rv) {
            direct.push(published.saturating_duration_since(at));
        }
    }
    println!("{n_services} Services, {n_changes} EndpointSlice changes each:");
    report("  kubectl apply → snapshot published", via_kubectl);
    report("  API write (kubectl) → snapshot published", write_to_pub);
    report("  API write (direct) → snapshot published", direct);
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
        report(
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
        report("  compile (snapshot → tables)", times);
    }
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
