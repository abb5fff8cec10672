//! What the latency examples share: the synthetic Services and
//! EndpointSlices (`svc-NNNNN` with one slice `svc-NNNNN-1` each), loading
//! them into the store, starting the Kubernetes source on it, `kubectl
//! apply`, and percentile reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeplane_control::kube::{KubeConfig, KubeSource, KubeStats};
use edgeplane_control::manifests::ObjectSet;
use edgeplane_testapi::resources::{ENDPOINT_SLICES, NODES, SERVICES};
use edgeplane_testapi::store::Store;
use edgeplane_testapi::{FieldValidation, TestApi};
use serde_json::{json, Value};
use tokio::sync::watch;

/// `(SERVICES, CHANGES)` from the command line (defaults 10,000 and 100).
pub fn args() -> (usize, usize) {
    let mut args = std::env::args().skip(1);
    let n_services = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n_changes = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    (n_services, n_changes)
}

/// Service `i` (`svc-NNNNN`, one port `http` 80 → 8080).
pub fn service(i: usize, cluster_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": format!("svc-{i:05}"), "namespace": "default"},
           "spec": {"clusterIP": cluster_ip, "selector": {"app": format!("a{i}")},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

/// The slice of Service `i` as YAML (what `kubectl apply` gets): ready
/// endpoints at `addrs` (on `node`, if given), port `http` = `port`.
pub fn slice_yaml(i: usize, port: u16, addrs: &[String], node: Option<&str>) -> String {
    let node = node
        .map(|n| format!("  nodeName: {n}\n"))
        .unwrap_or_default();
    let eps: String = addrs
        .iter()
        .map(|a| format!("- addresses: [\"{a}\"]\n  conditions: {{ready: true}}\n{node}"))
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{i:05}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: svc-{i:05}\naddressType: IPv4\nports:\n- {{name: http, protocol: TCP, port: {port}}}\nendpoints:\n{eps}"
    )
}

/// [`slice_yaml`] as a JSON value (for direct store writes).
pub fn slice(i: usize, port: u16, addrs: &[String], node: Option<&str>) -> Value {
    serde_yaml::from_str(&slice_yaml(i, port, addrs, node)).unwrap_or(Value::Null)
}

/// Writes node-a and `n` Services with their slices (`objects(i)`) straight
/// into the store; prints how long it took.
pub fn load(
    store: &Store,
    n: usize,
    mut objects: impl FnMut(usize) -> (Value, Value),
) -> anyhow::Result<()> {
    let t = Instant::now();
    store.create(
        NODES,
        None,
        json!({"metadata": {"name": "node-a"},
               "status": {"addresses": [{"type": "InternalIP", "address": "198.18.1.1"}]}}),
        false,
        FieldValidation::Ignore,
    )?;
    for i in 0..n {
        let (svc, slice) = objects(i);
        store.create(
            SERVICES,
            Some("default"),
            svc,
            false,
            FieldValidation::Ignore,
        )?;
        store.create(
            ENDPOINT_SLICES,
            Some("default"),
            slice,
            false,
            FieldValidation::Ignore,
        )?;
    }
    println!(
        "loaded {n} Services + {n} EndpointSlices in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The resourceVersion a write committed.
pub fn written_rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The Kubernetes source of node-a on `api`, running: its snapshots, its
/// counters, the task, and a temp dir holding the kubeconfig.
pub struct Running {
    pub rx: watch::Receiver<Option<Arc<ObjectSet>>>,
    pub stats: Arc<KubeStats>,
    pub task: tokio::task::JoinHandle<Result<(), edgeplane_control::kube::KubeError>>,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

/// Starts the source (`tag` names the temp dir).
pub async fn start_source(api: &TestApi, tag: &str) -> anyhow::Result<Running> {
    let dir = std::env::temp_dir().join(format!("edgeplane-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig)?;
    let config = KubeConfig {
        kubeconfig: Some(kubeconfig.clone()),
        ..KubeConfig::new("node-a")
    };
    let source = KubeSource::connect(config).await?;
    let stats = source.stats();
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(source.run(tx));
    Ok(Running {
        rx,
        stats,
        task,
        dir,
        kubeconfig,
    })
}

/// Whether `kubectl` is on PATH (the kubectl figures are skipped without).
pub fn have_kubectl() -> bool {
    let ok = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("kubectl not on PATH: skipping the kubectl apply figures");
    }
    ok
}

/// Writes `yaml` to a file in `dir` and `kubectl apply`s it; returns when
/// kubectl started.
pub async fn kubectl_apply(dir: &Path, kubeconfig: &Path, yaml: &str) -> anyhow::Result<Instant> {
    let file = dir.join("slice.yaml");
    std::fs::write(&file, yaml)?;
    let start = Instant::now();
    let out = tokio::process::Command::new("kubectl")
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", dir.join("cache"))
        .output()
        .await?;
    if !out.status.success() {
        anyhow::bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(start)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Prints `name: n=… p50=… p99=… max=…`.
pub fn report(name: &str, mut v: Vec<Duration>) {
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
