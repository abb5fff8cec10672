//! Shared helpers of the `kube_*` tests: a temporary directory, the real
//! `kubectl` binary pointed at a test API server, and waiting for snapshots.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgeplane_control::compile::{compile, CompileOptions, Compiled};
use edgeplane_control::kube::{BackoffConfig, KubeConfig, KubeSource, KubeStats};
use edgeplane_control::manifests::ObjectSet;
use edgeplane_dataplane::tables::Tables;
use edgeplane_testapi::TestApi;
use tokio::sync::watch;

/// The workspace root (examples live there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("control/ has a parent")
        .to_path_buf()
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "edgeplane-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether the real kubectl is installed; tests that need it print why
/// they skip when it is not.
pub fn kubectl_available() -> bool {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: kubectl is not on PATH (install it to run the kubectl tests)");
    }
    found
}

/// kubectl against one test API server.
#[derive(Debug)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub dir: TempDir,
}

impl Kubectl {
    pub fn new(api: &TestApi) -> Kubectl {
        let dir = TempDir::new("kubectl");
        let kubeconfig = dir.path("kubeconfig");
        api.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
        Kubectl { kubeconfig, dir }
    }

    /// Runs kubectl; returns its output whatever the exit status.
    pub async fn output(&self, args: &[&str]) -> Output {
        tokio::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            // Discovery cache in the temp dir, never in $HOME.
            .env("KUBECACHEDIR", self.dir.path("cache"))
            .env("HOME", &self.dir.0)
            .output()
            .await
            .expect("run kubectl")
    }

    /// Runs kubectl, panics with its stderr unless it succeeds; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let o = self.output(args).await;
        assert!(
            o.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Writes `yaml` to a file and `kubectl apply -f`s it.
    pub async fn apply_yaml(&self, name: &str, yaml: &str) -> String {
        let p = self.dir.path(name);
        std::fs::write(&p, yaml).expect("write yaml");
        self.ok(&["apply", "-f", p.to_str().expect("utf-8 path")])
            .await
    }
}

/// Source settings for tests: short backoff so restarts converge quickly.
pub fn test_config(api: &TestApi, dir: &TempDir) -> KubeConfig {
    let kubeconfig = dir.path("source-kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("write kubeconfig");
    KubeConfig {
        kubeconfig: Some(kubeconfig),
        backoff: BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(400),
            reset_after: Duration::from_secs(5),
        },
        ..KubeConfig::new("node-a")
    }
}

/// A running source and its snapshot channel.
pub struct Running {
    pub rx: watch::Receiver<Option<Arc<ObjectSet>>>,
    pub stats: Arc<KubeStats>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start_source(config: KubeConfig) -> Running {
    let source = KubeSource::connect(config).await.expect("client config");
    let stats = source.stats();
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        if let Err(e) = source.run(tx).await {
            panic!("source ended: {e}");
        }
    });
    Running { rx, stats, task }
}

/// Waits until the published snapshot satisfies `pred`; panics after `secs`
/// with `what` and the last snapshot's summary.
pub async fn wait_for(
    rx: &mut watch::Receiver<Option<Arc<ObjectSet>>>,
    secs: u64,
    what: &str,
    pred: impl Fn(&ObjectSet) -> bool,
) -> Arc<ObjectSet> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = rx.borrow_and_update().clone() {
            if pred(&s) {
                return s;
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("source stopped while waiting for {what}"),
            Err(_) => {
                let last = rx.borrow().clone();
                panic!(
                    "timed out waiting for {what}; last snapshot: {}",
                    summary(last.as_deref())
                );
            }
        }
    }
}

pub fn summary(s: Option<&ObjectSet>) -> String {
    match s {
        None => "none published".into(),
        Some(s) => format!(
            "services {:?}, slices {:?}, nodes {}",
            s.services
                .iter()
                .map(|x| x.metadata.name.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
            s.endpoint_slices
                .iter()
                .map(|x| x.metadata.name.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
            s.nodes.len()
        ),
    }
}

pub fn opts() -> CompileOptions {
    CompileOptions {
        node_name: "node-a".into(),
        maglev_m: 251,
        ..CompileOptions::default()
    }
}

pub fn compile_set(s: &ObjectSet) -> Compiled {
    compile(s, &opts(), 1).expect("compile")
}

/// Everything in a generation that decides forwarding, comparable.
pub fn tables_fingerprint(t: &Tables) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        t.node, t.services, t.frontends, t.backends, t.maglev, t.source_ranges
    )
}

/// Names (ns/name) of a snapshot's Services.
pub fn service_names(s: &ObjectSet) -> Vec<String> {
    let mut v: Vec<String> = s
        .services
        .iter()
        .map(|x| {
            format!(
                "{}/{}",
                x.metadata.namespace.clone().unwrap_or_default(),
                x.metadata.name.clone().unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

/// (kind, ns/name, resourceVersion) of every object, sorted: two sets with
/// equal keys hold the same versions of the same objects.
pub fn version_keys(s: &ObjectSet) -> Vec<String> {
    let mut v = Vec::new();
    let mut add = |kind: &str, m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        v.push(format!(
            "{kind} {}/{} @{}",
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
            m.resource_version.clone().unwrap_or_default()
        ))
    };
    s.services.iter().for_each(|o| add("Service", &o.metadata));
    s.endpoint_slices
        .iter()
        .for_each(|o| add("EndpointSlice", &o.metadata));
    s.nodes.iter().for_each(|o| add("Node", &o.metadata));
    v.sort();
    v
}

/// The API server's own state, in the same form as [`version_keys`], read
/// straight from its store (node restricted to node-a like the source).
pub fn api_version_keys(api: &TestApi) -> Vec<String> {
    use edgeplane_testapi::resources::{ENDPOINT_SLICES, NODES, SERVICES};
    use edgeplane_testapi::store::Filter;
    let mut v = Vec::new();
    for (r, kind) in [
        (SERVICES, "Service"),
        (ENDPOINT_SLICES, "EndpointSlice"),
        (NODES, "Node"),
    ] {
        let page = api
            .store()
            .list(r, &Filter::default(), None, None)
            .expect("list");
        for o in page.items {
            let m = &o.value["metadata"];
            let name = m["name"].as_str().unwrap_or("");
            if kind == "Node" && name != "node-a" {
                continue;
            }
            v.push(format!(
                "{kind} {}/{} @{}",
                m["namespace"].as_str().unwrap_or(""),
                name,
                m["resourceVersion"].as_str().unwrap_or("")
            ));
        }
    }
    v.sort();
    v
}
