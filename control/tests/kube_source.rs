//! The Kubernetes source against the test API server, driven by the real
//! kubectl: it converges to what was applied, compiles to exactly what the
//! manifest source compiles for the same YAML, survives dropped watches,
//! expired history, a stalled watch and a restarted API server, and never
//! publishes a half-synced view.

mod kube_support;
use kube_support::*;

use std::collections::BTreeSet;
use std::time::Duration;

use edgeplane_control::manifests::{load_path, ObjectSet};
use edgeplane_control::report::render_json;
use edgeplane_testapi::resources::{ENDPOINT_SLICES, SERVICES};
use edgeplane_testapi::store::Preconditions;
use edgeplane_testapi::{FieldValidation, TestApi};
use serde_json::json;

/// Applies a directory of examples the way a user would: namespaces first,
/// then `kubectl apply -f DIR`, then the load-balancer status a controller
/// would set (the API server drops `status` on create).
async fn apply_examples(k: &Kubectl, dir: &str) -> ObjectSet {
    let path = repo().join(dir);
    let (set, diags) = load_path(&path).expect("load examples");
    assert!(diags.is_empty(), "{diags:?}");
    let namespaces: BTreeSet<String> = set
        .services
        .iter()
        .filter_map(|s| s.metadata.namespace.clone())
        .filter(|n| n != "default")
        .collect();
    let ns_yaml: String = namespaces
        .iter()
        .map(|n| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {n}\n---\n"))
        .collect();
    if !ns_yaml.is_empty() {
        k.apply_yaml("namespaces.yaml", &ns_yaml).await;
    }
    k.ok(&["apply", "-f", path.to_str().expect("utf-8 path")])
        .await;
    for s in &set.services {
        let Some(status) = &s.status else { continue };
        if status
            .load_balancer
            .as_ref()
            .and_then(|l| l.ingress.as_ref())
            .is_none()
        {
            continue;
        }
        let patch = json!({"status": status}).to_string();
        k.ok(&[
            "patch",
            "service",
            s.metadata.name.as_deref().unwrap_or(""),
            "-n",
            s.metadata.namespace.as_deref().unwrap_or("default"),
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .await;
    }
    set
}

async fn same_compile_as_manifests(dir: &str) {
    if !kubectl_available() {
        return;
    }
    let api = TestApi::start().await.expect("start API server");
    let k = Kubectl::new(&api);
    let manifests = apply_examples(&k, dir).await;
    let want = compile_set(&manifests);
    assert!(!want.report.frontends.is_empty());

    let mut src = start_source(test_config(&api, &k.dir)).await;
    let n_services = manifests.services.len();
    let got = wait_for(&mut src.rx, 10, "every Service", |s| {
        s.services.len() == n_services && s.endpoint_slices.len() == manifests.endpoint_slices.len()
    })
    .await;
    assert_eq!(
        version_keys(&got),
        api_version_keys(&api),
        "exactly the API's objects"
    );
    let got = compile_set(&got);
    assert_eq!(
        render_json(&got),
        render_json(&want),
        "the report of {dir} differs between the manifest and Kubernetes sources"
    );
    assert_eq!(
        tables_fingerprint(&got.tables),
        tables_fingerprint(&want.tables),
        "tables differ for {dir}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_docs_examples_compile_the_same_from_the_api() {
    same_compile_as_manifests("examples/k8s-docs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_examples_compile_the_same_from_the_api() {
    same_compile_as_manifests("examples/demo").await;
}

fn has_backend(s: &ObjectSet, ip: &str) -> bool {
    s.endpoint_slices
        .iter()
        .flat_map(|e| e.endpoints.iter())
        .any(|e| e.addresses.iter().any(|a| a == ip))
}

fn has_frontend(s: &ObjectSet, ip: &str, port: u16) -> bool {
    compile_set(s)
        .report
        .frontends
        .iter()
        .any(|f| f.ip == ip && f.port == port)
}

/// The web Service's IPv4 slice with `n` endpoints 198.18.2.2, .3.2, ...
fn web_v4_slice(n: usize, terminating_first: bool) -> String {
    let eps: String = (0..n)
        .map(|i| {
            let t = terminating_first && i == 0;
            format!(
                "- addresses: [198.18.{}.2]\n  conditions: {{ready: {}, serving: true, terminating: {t}}}\n",
                i + 2,
                !t
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-v4\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- {{name: http, protocol: TCP, port: 8080}}\n- {{name: dns, protocol: UDP, port: 5353}}\nendpoints:\n{eps}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_scale_terminate_delete_and_survives_drops_expiry_stalls_and_restarts() {
    if !kubectl_available() {
        return;
    }
    let mut api = TestApi::start().await.expect("start API server");
    let k = Kubectl::new(&api);
    apply_examples(&k, "examples/demo").await;
    let mut src = start_source(test_config(&api, &k.dir)).await;
    wait_for(&mut src.rx, 10, "the demo", |s| {
        s.services.len() == 2 && s.endpoint_slices.len() == 4 && s.nodes.len() == 1
    })
    .await;
    let first_restarts = src
        .stats
        .watch_restarts
        .load(std::sync::atomic::Ordering::Relaxed);

    // Scale the slice up: a new backend appears.
    k.apply_yaml("web-v4.yaml", &web_v4_slice(4, false)).await;
    let s = wait_for(&mut src.rx, 5, "the fourth endpoint", |s| {
        has_backend(s, "198.18.5.2")
    })
    .await;
    assert_eq!(version_keys(&s), api_version_keys(&api));

    // Mark one terminating: it stays in the slice, compile keeps it for
    // existing flows only.
    k.apply_yaml("web-v4.yaml", &web_v4_slice(4, true)).await;
    let s = wait_for(&mut src.rx, 5, "the terminating endpoint", |s| {
        s.endpoint_slices.iter().any(|e| {
            e.endpoints.iter().any(|ep| {
                ep.addresses[0] == "198.18.2.2"
                    && ep.conditions.as_ref().and_then(|c| c.terminating) == Some(true)
            })
        })
    })
    .await;
    let c = compile_set(&s);
    let web = c
        .report
        .frontends
        .iter()
        .find(|f| f.ip == "198.18.200.10" && f.port == 80)
        .expect("web frontend");
    let b = web
        .backends
        .iter()
        .find(|b| b.ip == "198.18.2.2")
        .expect("terminating backend still listed");
    assert!(!b.new_flows, "a terminating endpoint takes no new flows");

    // Delete the Service: its frontend disappears.
    k.ok(&["delete", "service", "web"]).await;
    let s = wait_for(&mut src.rx, 5, "web deleted", |s| s.services.len() == 1).await;
    assert!(!has_frontend(&s, "198.18.200.10", 80));
    assert!(has_frontend(&s, "198.18.200.11", 80), "web-lb untouched");

    // Drop every watch: the source resumes from its version, no relist.
    api.drop_watches();
    k.apply_yaml("web-v4.yaml", &web_v4_slice(2, false)).await;
    let s = wait_for(&mut src.rx, 5, "2 endpoints after the drop", |s| {
        !has_backend(s, "198.18.5.2") && has_backend(s, "198.18.3.2")
    })
    .await;
    assert_eq!(version_keys(&s), api_version_keys(&api));

    // Stall the watches: a change is not seen, the last snapshot stays;
    // resume and it arrives.
    api.stall_watches(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = src.rx.borrow().clone();
    k.ok(&["delete", "endpointslice", "web-lb-v6"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = src.rx.borrow().clone();
    assert!(
        std::sync::Arc::ptr_eq(
            before.as_ref().expect("published"),
            during.as_ref().expect("published")
        ),
        "nothing is published while the watch is stalled"
    );
    api.stall_watches(false);
    wait_for(&mut src.rx, 5, "the delete after the stall", |s| {
        s.endpoint_slices.len() == 3
    })
    .await;

    // Stop the API server, change things behind its back, expire the
    // history, start it again: the source gets 410, relists, and converges
    // to exactly the API's state.
    api.stop().await;
    // The API is gone: the source notices (health reports it) and keeps its
    // last snapshot: the tables in force stay the last good ones.
    let t_gone = tokio::time::Instant::now();
    while src
        .stats
        .disconnected_since_unix_ms
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(
            t_gone.elapsed() < Duration::from_secs(10),
            "the source did not notice the API server was gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("API server gone: noticed after {:?}", t_gone.elapsed());
    let kept = src.rx.borrow().clone().expect("a snapshot");
    assert!(!kept.services.is_empty(), "the last snapshot is kept");
    let store = api.store().clone();
    store
        .delete(
            ENDPOINT_SLICES,
            "default",
            "web-v4",
            &Preconditions::default(),
            false,
        )
        .expect("delete web-v4");
    store
        .create(
            SERVICES,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "late"},
                   "spec": {"clusterIP": "198.18.200.99", "ports": [{"port": 8443}]}}),
            false,
            FieldValidation::Strict,
        )
        .expect("create late");
    api.expire_history();
    api.resume().await.expect("resume");
    let s = wait_for(&mut src.rx, 10, "the relist after 410", |s| {
        service_names(s) == ["default/late", "default/web-lb"] && s.endpoint_slices.len() == 2
    })
    .await;
    assert_eq!(version_keys(&s), api_version_keys(&api));
    let restarts = src
        .stats
        .watch_restarts
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(restarts > first_restarts, "the 410 forced a relist");
    assert_eq!(
        src.stats
            .disconnected_since_unix_ms
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "connected again after the relist"
    );
    assert!(has_frontend(&s, "198.18.200.99", 8443));

    // A plain restart (history kept): the watches resume.
    api.restart().await.expect("restart");
    k.ok(&["delete", "service", "late"]).await;
    let s = wait_for(&mut src.rx, 10, "late deleted after the restart", |s| {
        service_names(s) == ["default/web-lb"]
    })
    .await;
    assert_eq!(version_keys(&s), api_version_keys(&api));
    assert!(
        src.stats
            .watch_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_published_before_every_type_is_listed() {
    let api = TestApi::start().await.expect("start API server");
    let dir = TempDir::new("initdone");
    let store = api.store();
    store
        .create(
            SERVICES,
            Some("default"),
            json!({"metadata": {"name": "a"}, "spec": {"clusterIP": "198.18.200.1", "ports": [{"port": 80}]}}),
            false,
            FieldValidation::Strict,
        )
        .expect("create");
    // EndpointSlices cannot be listed: Services and Nodes sync, but no
    // snapshot may be published without the slices.
    api.fail_reads("endpointslices", true);
    let mut src = start_source(test_config(&api, &dir)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(src.rx.borrow().is_none(), "published a half-synced view");
    assert!(!src.stats.synced.load(std::sync::atomic::Ordering::Relaxed));
    assert!(
        src.stats
            .watch_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    api.fail_reads("endpointslices", false);
    let s = wait_for(&mut src.rx, 10, "the first snapshot", |_| true).await;
    assert_eq!(service_names(&s), ["default/a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_relist_replaces_the_set_whole() {
    let mut api = TestApi::start().await.expect("start API server");
    let dir = TempDir::new("relist");
    let store = api.store().clone();
    let svc = |name: String, n: usize| {
        json!({"metadata": {"name": name},
               "spec": {"clusterIP": format!("198.18.201.{n}"), "ports": [{"port": 80}]}})
    };
    let old: Vec<String> = (0..10).map(|i| format!("default/old-{i:02}")).collect();
    for i in 0..10 {
        store
            .create(
                SERVICES,
                Some("default"),
                svc(format!("old-{i:02}"), i),
                false,
                FieldValidation::Strict,
            )
            .expect("create");
    }
    let mut config = test_config(&api, &dir);
    config.page_size = 2;
    let mut src = start_source(config).await;
    wait_for(&mut src.rx, 10, "the old set", |s| service_names(s) == old).await;

    api.stop().await;
    for i in 0..10 {
        store
            .delete(
                SERVICES,
                "default",
                &format!("old-{i:02}"),
                &Preconditions::default(),
                false,
            )
            .expect("delete");
        store
            .create(
                SERVICES,
                Some("default"),
                svc(format!("new-{i:02}"), i + 20),
                false,
                FieldValidation::Strict,
            )
            .expect("create");
    }
    let new: Vec<String> = (0..10).map(|i| format!("default/new-{i:02}")).collect();
    api.expire_history();
    api.resume().await.expect("resume");
    // Every snapshot published on the way is the old set or the new set,
    // never a mix or a part (the relist pages 2 Services at a time).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names = src
            .rx
            .borrow_and_update()
            .as_deref()
            .map(service_names)
            .unwrap_or_default();
        assert!(
            names == old || names == new,
            "half-relisted view published: {names:?}"
        );
        if names == new {
            break;
        }
        tokio::time::timeout_at(deadline, src.rx.changed())
            .await
            .expect("relist converges in time")
            .expect("source running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_for_another_proxy_and_headless_ones_get_no_frontends() {
    if !kubectl_available() {
        return;
    }
    let api = TestApi::start().await.expect("start API server");
    let k = Kubectl::new(&api);
    let svc = |name: &str, ip: &str, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  clusterIP: {ip}\n  ports:\n  - {{name: http, port: 80}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080}}\nendpoints:\n- addresses: [198.18.9.9]\n---\n"
        )
    };
    let yaml = svc("mine", "198.18.202.1", "")
        + &svc(
            "theirs",
            "198.18.202.2",
            "service.kubernetes.io/service-proxy-name: other-proxy",
        )
        + &svc(
            "marked-headless",
            "198.18.202.3",
            "service.kubernetes.io/headless: \"\"",
        )
        + &svc("headless", "None", "");
    k.apply_yaml("proxy-name.yaml", &yaml).await;
    let mut src = start_source(test_config(&api, &k.dir)).await;
    let s = wait_for(&mut src.rx, 10, "the four Services", |s| {
        s.services.len() == 4
    })
    .await;
    let c = compile_set(&s);
    let ips: BTreeSet<&str> = c.report.frontends.iter().map(|f| f.ip.as_str()).collect();
    assert_eq!(ips, BTreeSet::from(["198.18.202.1"]));
    let skipped: BTreeSet<String> = c
        .report
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.service, s.reason))
        .collect();
    assert!(
        skipped.contains("default/theirs: labelled service.kubernetes.io/service-proxy-name: handled by another proxy"),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|s| s
                .starts_with("default/marked-headless: labelled service.kubernetes.io/headless")),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|s| s.starts_with("default/headless: headless")),
        "{skipped:?}"
    );
}
