//! Privileges and exposure of `edgeplane run` (issue 8): without the
//! capabilities it needs it refuses to start, naming them, before touching
//! anything; as root, its state directory is 0700 and the shared conntrack
//! and affinity files 0600, owned by root.
//!
//! Needs root (to become an unprivileged user with `setpriv`, and to run the
//! dataplane in a network namespace): without root these tests say why they
//! did not run, except under CI (`CI` set), where that is a failure.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// One at a time: the second test creates a namespace and runs the dataplane.
static SERIAL: Mutex<()> = Mutex::new(());

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn may_run(what: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} needs root, and CI must run it");
    }
    eprintln!("SKIPPED {what}: needs root (run `sudo scripts/test`)");
    false
}

/// A fresh directory under the temp dir, world-traversable (the
/// unprivileged user must reach the binary copied into it).
fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgeplane-priv-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

const MANIFEST: &str = r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 198.18.200.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["198.18.2.2"], conditions: {ready: true}}
"#;

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn xdp_attached(iface: &str, netns: Option<&str>) -> bool {
    let mut c = Command::new("ip");
    if let Some(ns) = netns {
        c.args(["-n", ns]);
    }
    let out = c.args(["link", "show", iface]).output().expect("ip link");
    String::from_utf8_lossy(&out.stdout).contains("xdp")
}

/// Runs `edgeplane run` (a copy of the binary the unprivileged user can
/// execute) through `setpriv` with `setpriv_args`.
fn run_with(dir: &Path, setpriv_args: &[&str], state: &Path) -> Output {
    let bin = dir.join("edgeplane");
    if !bin.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_edgeplane"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let m = dir.join("m.yaml");
    std::fs::write(&m, MANIFEST).unwrap();
    std::fs::set_permissions(&m, std::fs::Permissions::from_mode(0o644)).unwrap();
    Command::new("setpriv")
        .args(setpriv_args)
        .arg(&bin)
        .args(["run", "--manifests"])
        .arg(&m)
        .args([
            "--node-name",
            "node-a",
            "--node-ip",
            "198.18.1.1",
            "-i",
            "lo",
        ])
        .args(["--xdp-mode", "generic", "--duration", "1", "--tables"])
        .arg(state)
        .output()
        .expect("setpriv (util-linux) runs")
}

/// As user and group 65534 (nobody) with no groups: `edgeplane run` exits
/// non-zero naming CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF, creates no state
/// directory and attaches no XDP program. As root without CAP_NET_RAW alone
/// (bounding set), it names only that one.
#[test]
fn run_refuses_without_capabilities_naming_them() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run("non-root refusal") {
        return;
    }
    let dir = tmpdir("nonroot");
    let state = dir.join("state");
    let lo_before = xdp_attached("lo", None);
    let out = run_with(
        &dir,
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
        &state,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    println!("as nobody (exit {:?}): {}", out.status.code(), err.trim());
    assert!(!out.status.success(), "ran as nobody:\n{}", text(&out));
    for cap in ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF"] {
        assert!(err.contains(cap), "{cap} not named:\n{}", text(&out));
    }
    assert!(
        err.contains("needs privileges"),
        "unclear message:\n{}",
        text(&out)
    );
    assert!(!err.contains("panicked"), "{}", text(&out));
    assert!(
        !state.exists(),
        "the refused run created {}",
        state.display()
    );
    assert_eq!(
        xdp_attached("lo", None),
        lo_before,
        "the refused run changed lo's XDP state"
    );

    // Root, but CAP_NET_RAW taken out of the bounding set: only it is named.
    let out = run_with(&dir, &["--bounding-set=-net_raw"], &state);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("root without CAP_NET_RAW: {}", err.trim());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        err.contains("CAP_NET_RAW") && !err.contains("CAP_NET_ADMIN") && !err.contains("CAP_BPF"),
        "{}",
        text(&out)
    );
    assert!(!state.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Removes the namespace when the test ends, passing or not.
struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// As root in a fresh namespace on a veth: the state directory
/// `edgeplane run` creates is 0700 and its `conntrack` and `affinity` files
/// 0600, all owned by root.
#[test]
fn state_directory_and_files_are_private() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !may_run("state file modes") {
        return;
    }
    let dir = tmpdir("modes");
    let ns = Netns(format!("ep-priv-{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n", &ns.0, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1",
    ]);
    ip(&["-n", &ns.0, "link", "set", "pv0", "up"]);
    ip(&["-n", &ns.0, "link", "set", "pv1", "up"]);
    std::fs::write(dir.join("m.yaml"), MANIFEST).unwrap();
    let state = dir.join("state");
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            env!("CARGO_BIN_EXE_edgeplane"),
            "run",
        ])
        .arg("--manifests")
        .arg(dir.join("m.yaml"))
        .args([
            "--node-name",
            "node-a",
            "--node-ip",
            "198.18.1.1",
            "-i",
            "pv0",
        ])
        .args([
            "--xdp-mode",
            "generic",
            "--workers",
            "1",
            "--frames",
            "1024",
        ])
        .args([
            "--ring-size",
            "512",
            "--conntrack-size",
            "4096",
            "--duration",
            "1",
        ])
        .arg("--tables")
        .arg(&state)
        .output()
        .expect("edgeplane run");
    assert!(out.status.success(), "{}", text(&out));
    let mode = |p: &Path| {
        let m = std::fs::symlink_metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", p.display(), text(&out)));
        (m.permissions().mode() & 0o7777, m.uid())
    };
    let figures = format!(
        "{} {:o}, conntrack {:o}, affinity {:o}",
        state.display(),
        mode(&state).0,
        mode(&state.join("conntrack")).0,
        mode(&state.join("affinity")).0
    );
    println!("modes: {figures}");
    assert_eq!(mode(&state), (0o700, 0), "{figures}");
    assert_eq!(mode(&state.join("conntrack")), (0o600, 0), "{figures}");
    assert_eq!(mode(&state.join("affinity")), (0o600, 0), "{figures}");
    let _ = std::fs::remove_dir_all(&dir);
}
