//! The real `kubectl` against the test API server, unmodified: apply (create
//! and three-way patch), get (tables, JSON, selectors), patch of the status
//! subresource, delete (with its wait), and the API's error answers.

mod kube_support;
use kube_support::*;

use edgeplane_testapi::TestApi;
use serde_json::Value;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("kubectl printed invalid JSON ({e}): {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_patch_delete_work_unmodified() {
    if !kubectl_available() {
        return;
    }
    let api = TestApi::start().await.expect("start test API server");
    let k = Kubectl::new(&api);
    let demo = repo().join("examples/demo");
    let demo = demo.to_str().expect("utf-8 path");

    // Create.
    let out = k.ok(&["apply", "-f", demo]).await;
    assert!(out.contains("service/web created"), "{out}");
    assert!(
        out.contains("endpointslice.discovery.k8s.io/web-v4 created"),
        "{out}"
    );
    assert!(out.contains("node/node-a created"), "{out}");

    // Get: the table kubectl prints, and the objects as JSON.
    let table = k.ok(&["get", "services"]).await;
    assert!(table.starts_with("NAME"), "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("web "))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        row.get(..5),
        Some(
            &[
                "web",
                "NodePort",
                "198.18.200.10",
                "<none>",
                "80:30080/TCP,53:30053/UDP"
            ][..]
        ),
        "{table}"
    );
    let svc = json(&k.ok(&["get", "service", "web", "-o", "json"]).await);
    assert_eq!(svc["spec"]["clusterIP"], "198.18.200.10");
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
    let rv1: u64 = svc["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("numeric resourceVersion");
    assert!(
        svc["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    // Label selectors, all namespaces.
    let slices = json(
        &k.ok(&[
            "get",
            "endpointslices",
            "-A",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ])
        .await,
    );
    let names: Vec<&str> = slices["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["web-v4", "web-v6"]);

    // Re-apply unchanged: nothing written.
    let out = k.ok(&["apply", "-f", demo]).await;
    assert!(out.contains("service/web unchanged"), "{out}");

    // Apply a change: a three-way strategic merge patch. Removing a Service
    // port exercises `$setElementOrder` and `$patch: delete` on the merge
    // list `spec.ports`.
    let web =
        std::fs::read_to_string(repo().join("examples/demo/web.yaml")).expect("read web.yaml");
    let no_dns = web.replace(
        "  - name: dns\n    protocol: UDP\n    port: 53\n    targetPort: dns\n    nodePort: 30053\n",
        "",
    );
    assert_ne!(
        no_dns, web,
        "examples/demo/web.yaml changed shape; update this test"
    );
    let out = k.apply_yaml("web.yaml", &no_dns).await;
    assert!(out.contains("service/web configured"), "{out}");
    let svc = json(&k.ok(&["get", "service", "web", "-o", "json"]).await);
    let ports = svc["spec"]["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["name"], "http");
    assert_eq!(ports[0]["nodePort"], 30080, "kept through the patch");
    let rv2: u64 = svc["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("numeric resourceVersion");
    assert!(rv2 > rv1);

    // The status subresource (how a load-balancer controller sets ingress).
    k.ok(&[
        "patch",
        "service",
        "web-lb",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"ip":"198.18.100.10"}]}}}"#,
    ])
    .await;
    let lb = json(&k.ok(&["get", "service", "web-lb", "-o", "json"]).await);
    assert_eq!(
        lb["status"]["loadBalancer"]["ingress"][0]["ip"],
        "198.18.100.10"
    );

    // Errors: create of an existing object, get of a missing one, an object
    // in a namespace that does not exist, a field the schema does not know.
    let o = k
        .output(&["create", "-f", &format!("{demo}/web.yaml")])
        .await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("AlreadyExists") && err.contains("already exists"),
        "{err}"
    );
    let o = k.output(&["get", "service", "nope"]).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("(NotFound): services \"nope\" not found"),
        "{err}"
    );
    let o = k
        .output(&["apply", "-n", "missing", "-f", &format!("{demo}/web.yaml")])
        .await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("namespaces \"missing\" not found"), "{err}");
    let bogus = no_dns.replace("  type: NodePort\n", "  type: NodePort\n  bogusField: 1\n");
    std::fs::write(k.dir.path("bogus.yaml"), &bogus).expect("write");
    let o = k
        .output(&[
            "apply",
            "-f",
            k.dir.path("bogus.yaml").to_str().expect("utf-8"),
        ])
        .await;
    assert!(
        !o.status.success(),
        "strict field validation rejects unknown fields"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown field \"spec.bogusField\""), "{err}");

    // Namespaces: create, use, delete (takes its objects along).
    k.ok(&["create", "namespace", "team"]).await;
    k.ok(&["apply", "-n", "team", "-f", &format!("{demo}/web.yaml")])
        .await;
    assert!(k.ok(&["get", "svc", "-n", "team"]).await.contains("web"));
    k.ok(&["delete", "namespace", "team"]).await;
    let o = k.ok(&["get", "svc", "-n", "team", "-o", "json"]).await;
    assert_eq!(json(&o)["items"].as_array().map(Vec::len), Some(0));

    // Delete everything the directory declares; kubectl waits for it to go.
    let out = k.ok(&["delete", "-f", demo]).await;
    assert!(out.contains("service \"web\" deleted"), "{out}");
    let left = json(
        &k.ok(&["get", "services,endpointslices", "-o", "json"])
            .await,
    );
    assert_eq!(left["items"].as_array().map(Vec::len), Some(0), "{left}");
    assert!(api.requests() > 0);
}

/// deploy/ applies cleanly (strict field validation against the typed
/// schemas), and its RBAC grants read access to exactly what the source
/// watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_manifests_apply_and_grant_only_reads() {
    if !kubectl_available() {
        return;
    }
    let api = TestApi::start().await.expect("start test API server");
    let k = Kubectl::new(&api);
    let deploy = repo().join("deploy/edgeplane.yaml");
    let out = k
        .ok(&["apply", "-f", deploy.to_str().expect("utf-8 path")])
        .await;
    for what in [
        "serviceaccount/edgeplane created",
        "clusterrole.rbac.authorization.k8s.io/edgeplane created",
        "clusterrolebinding.rbac.authorization.k8s.io/edgeplane created",
        "daemonset.apps/edgeplane created",
    ] {
        assert!(out.contains(what), "{what} missing from: {out}");
    }
    let role = json(
        &k.ok(&["get", "clusterrole", "edgeplane", "-o", "json"])
            .await,
    );
    let mut grants = Vec::new();
    for rule in role["rules"].as_array().expect("rules") {
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .expect("verbs")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(verbs, ["get", "list", "watch"], "{rule}");
        for g in rule["apiGroups"].as_array().expect("groups") {
            for r in rule["resources"].as_array().expect("resources") {
                grants.push(format!(
                    "{}/{}",
                    g.as_str().unwrap_or("?"),
                    r.as_str().unwrap_or("?")
                ));
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        ["/nodes", "/services", "discovery.k8s.io/endpointslices"]
    );
    let ds = json(
        &k.ok(&[
            "get",
            "daemonset",
            "edgeplane",
            "-n",
            "kube-system",
            "-o",
            "json",
        ])
        .await,
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["serviceAccountName"], "edgeplane");
    let c = &pod["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], 10256);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        caps,
        [
            "NET_ADMIN",
            "NET_RAW",
            "BPF",
            "PERFMON",
            "SYS_RESOURCE",
            "IPC_LOCK"
        ]
    );
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(mounts, ["/run/edgeplane", "/sys/fs/bpf"]);
}
