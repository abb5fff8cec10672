//! The `edgeplane` binary as a user runs it: `compile`, `replay`, `control`/`inspect`
//! and the parts of `pktgen` that need no privileges.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;
use support::*;

fn edgeplane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeplane"))
        .args(args)
        .output()
        .expect("run edgeplane")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("edgeplane-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn compile_prints_every_frontend_of_the_demo_as_json() {
    let demo = root().join("examples/demo");
    let out = edgeplane(&[
        "compile",
        "--manifests",
        demo.to_str().unwrap(),
        "--node-name",
        "node-a",
        "--node-ip",
        "198.18.1.1",
        "--node-ip",
        "2001:db8:1::1",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fes = v["frontends"].as_array().unwrap();
    let lb = fes
        .iter()
        .find(|f| f["ip"] == "198.18.100.10" && f["port"] == 80 && f["protocol"] == "TCP")
        .expect("the LoadBalancer frontend");
    assert_eq!(lb["kind"], "LoadBalancer");
    let backends = lb["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3);
    let share: f64 = backends.iter().map(|b| b["share"].as_f64().unwrap()).sum();
    assert!((share - 100.0).abs() < 0.1, "shares add up to {share}");
    assert!(fes
        .iter()
        .any(|f| f["kind"] == "NodePort" && f["ip"] == "2001:db8:1::1"));
}

#[test]
fn compile_table_output_names_policies() {
    let out = edgeplane(&[
        "compile",
        "--manifests",
        root()
            .join("examples/golden/services.yaml")
            .to_str()
            .unwrap(),
        "--node-name",
        "node-a",
        "--node-ip",
        "198.18.1.1",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("198.18.100.11:80"), "{text}");
    assert!(text.contains("external=Local"), "{text}");
}

#[test]
fn a_bad_manifest_is_named_and_the_rest_still_compiles() {
    let dir = tmpdir("bad");
    std::fs::copy(root().join("examples/demo/web.yaml"), dir.join("good.yaml")).unwrap();
    std::fs::write(
        dir.join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: oops, namespace: default}\nspec:\n  ports: [{port: 80, protocol: FTP}]\n  clusterIP: 198.18.200.99\n---\nkind: [unclosed\n",
    )
    .unwrap();
    let out = edgeplane(&[
        "compile",
        "--manifests",
        dir.to_str().unwrap(),
        "--node-name",
        "node-a",
        "--node-ip",
        "198.18.1.1",
        "--output",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("broken.yaml"),
        "the error names the file: {stderr}"
    );
    assert!(
        stderr.contains("oops"),
        "the error names the object: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["ip"] == "198.18.200.10"),
        "good Service compiled"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn compile_refuses_a_missing_path_clearly() {
    let out = edgeplane(&[
        "compile",
        "--manifests",
        "/nonexistent/edgeplane",
        "--node-ip",
        "198.18.1.1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

fn write_pcap(path: &Path, frames: &[Vec<u8>], link: DataLink) {
    let f = std::fs::File::create(path).unwrap();
    let header = PcapHeader {
        datalink: link,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(f, header).unwrap();
    for (i, fr) in frames.iter().enumerate() {
        let ts = Duration::from_millis(1_700_000_000_000 + i as u64 * 10);
        w.write_packet(&PcapPacket::new(ts, fr.len() as u32, fr))
            .unwrap();
    }
}

#[test]
fn replay_writes_outputs_and_one_verdict_line_per_frame() {
    let dir = tmpdir("replay");
    let c = "198.18.0.100";
    // The first flow's SNAT port: its preferred one in 40000-40999 (one
    // worker), with the default hash seed.
    let key = edgeplane_dataplane::conntrack::FlowKey {
        src: c.parse().unwrap(),
        dst: "198.18.200.10".parse().unwrap(),
        sport: 1111,
        dport: 80,
        proto: 6,
    };
    let seed = edgeplane_dataplane::NodeConfig::default().hash_seed;
    let port = edgeplane_dataplane::engine::preferred_snat_port(seed, &key, 40000, 1000);
    let frames = vec![
        Pkt::tcp(c, 1111, "198.18.200.10", 80, SYN).bytes(), // tx
        Pkt::tcp("198.18.2.2", 8080, "198.18.1.1", port, SYN | ACK).bytes(), // tx (reply)
        Pkt::tcp(c, 1112, "198.18.200.11", 80, SYN).bytes(), // reject
        Pkt::tcp(c, 1113, "198.18.1.1", 22, SYN).bytes(),    // pass
        Pkt::tcp(c, 1114, "198.18.100.11", 80, SYN).bytes(), // drop no_local_endpoints
        vec![0u8; 9],                                        // drop truncated
    ];
    let input = dir.join("in.pcap");
    write_pcap(&input, &frames, DataLink::ETHERNET);
    let (output, verdicts) = (dir.join("out.pcap"), dir.join("v.jsonl"));
    let out = edgeplane(&[
        "replay",
        "--manifests",
        root()
            .join("examples/golden/services.yaml")
            .to_str()
            .unwrap(),
        "--node-name",
        "node-a",
        "--node-ip",
        "198.18.1.1",
        "--node-ip",
        "2001:db8:1::1",
        "--snat-ports",
        "40000-40999",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--verdicts",
        verdicts.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&verdicts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(u64, &str, Option<&str>, Option<u64>)> = lines
        .iter()
        .map(|l| {
            (
                l["index"].as_u64().unwrap(),
                l["verdict"].as_str().unwrap(),
                l["reason"].as_str(),
                l["output"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, "tx", None, Some(0)),
            (1, "tx", None, Some(1)),
            (2, "reject", None, Some(2)),
            (3, "pass", None, None),
            (4, "drop", Some("no_local_endpoints"), None),
            (5, "drop", Some("truncated"), None),
        ]
    );
    assert_eq!(lines[0]["frontend"], "198.18.200.10:80/TCP");
    assert_eq!(lines[0]["service"], "default/web:http");
    assert_eq!(lines[0]["backend"], "198.18.2.2:8080");
    // The output capture holds exactly the sent frames, each well formed.
    let mut r = PcapReader::new(std::fs::File::open(&output).unwrap()).unwrap();
    let mut n = 0;
    while let Some(p) = r.next_packet() {
        verify_checksums(&p.unwrap().data);
        n += 1;
    }
    assert_eq!(n, 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn replay_refuses_a_non_ethernet_capture() {
    let dir = tmpdir("sll");
    let input = dir.join("in.pcap");
    write_pcap(&input, &[vec![0u8; 40]], DataLink::LINUX_SLL);
    let out = edgeplane(&[
        "replay",
        "--manifests",
        root().join("examples/demo").to_str().unwrap(),
        "--node-ip",
        "198.18.1.1",
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.join("o.pcap").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not Ethernet"));
    let _ = std::fs::remove_dir_all(dir);
}

/// `edgeplane control` publishes the demo into a table region in a temp
/// dir; `edgeplane inspect` reads it back: every frontend of `compile` is
/// there with the same backends and the same Maglev slot counts (the region
/// round-trips real compiled tables).
#[test]
fn control_publishes_and_inspect_reads_the_region() {
    let demo = root().join("examples/demo");
    let dir = tmpdir("region");
    let state = dir.join("state");
    let common = [
        "--manifests",
        demo.to_str().unwrap(),
        "--node-name",
        "node-a",
        "--node-ip",
        "198.18.1.1",
        "--node-ip",
        "2001:db8:1::1",
    ];
    let mut args = vec!["control"];
    args.extend(common);
    args.extend(["--tables", state.to_str().unwrap(), "--duration", "1"]);
    let out = edgeplane(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut args = vec!["compile"];
    args.extend(common);
    args.extend(["--output", "json"]);
    let compiled: serde_json::Value = serde_json::from_slice(&edgeplane(&args).stdout).unwrap();

    let out = edgeplane(&[
        "inspect",
        "backends",
        "--tables",
        state.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspected["generation"], 1);
    let fes = inspected["frontends"].as_array().unwrap();
    let cfes = compiled["frontends"].as_array().unwrap();
    assert_eq!(fes.len(), cfes.len());
    for cf in cfes {
        let ip: std::net::IpAddr = cf["ip"].as_str().unwrap().parse().unwrap();
        let addr = match ip {
            std::net::IpAddr::V4(a) => format!("{a}:{}", cf["port"]),
            std::net::IpAddr::V6(a) => format!("[{a}]:{}", cf["port"]),
        };
        let name = format!("{addr}/{}", cf["protocol"].as_str().unwrap());
        let f = fes
            .iter()
            .find(|f| f["frontend"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} missing from inspect"));
        let got: Vec<(String, u64)> = f["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["address"].as_str().unwrap().to_string(),
                    b["maglev_slots"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, u64)> = cf["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let ip: std::net::IpAddr = b["ip"].as_str().unwrap().parse().unwrap();
                let a = match ip {
                    std::net::IpAddr::V4(a) => format!("{a}:{}", b["port"]),
                    std::net::IpAddr::V6(a) => format!("[{a}]:{}", b["port"]),
                };
                (a, b["slots"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(got, want, "{name}");
    }
    // The table form and the services view work too.
    for what in ["services", "backends"] {
        let out = edgeplane(&["inspect", what, "--tables", state.to_str().unwrap()]);
        assert!(out.status.success() && out.stdout.starts_with(b"generation 1"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a region, `inspect` says what is missing (no panic).
#[test]
fn inspect_without_a_region_fails_clearly() {
    let dir = tmpdir("noregion");
    for what in ["services", "conntrack", "stats"] {
        let out = edgeplane(&["inspect", what, "--tables", dir.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.starts_with("error: "), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pktgen_send_refuses_a_frame_too_small_before_touching_the_interface() {
    let out = edgeplane(&[
        "pktgen",
        "send",
        "-i",
        "no-such-if0",
        "--src-mac",
        "02:00:00:00:00:01",
        "--dst-mac",
        "02:00:00:00:00:02",
        "--src-ip",
        "198.18.32.0",
        "--dst-ip",
        "198.18.64.1",
        "--proto",
        "syn",
        "--size",
        "40",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--size 40 is below the smallest frame"),
        "{err}"
    );
    let out = edgeplane(&[
        "pktgen",
        "send",
        "-i",
        "x",
        "--dst-mac",
        "02:00:00",
        "--src-ip",
        "198.18.32.0",
        "--dst-ip",
        "198.18.64.1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected a MAC"));
}

#[test]
fn pktgen_report_writes_the_table_and_the_chart() {
    let dir = tmpdir("report");
    let results = dir.join("results.jsonl");
    let line = |path: &str, svcs: u32, ok: u64| {
        format!(
            "{{\"path\":\"{path}\",\"services\":{svcs},\"flows\":\"10000\",\"proto\":\"udp\",\"sent\":1000000,\"gen_elapsed_s\":1.0,\"ok\":{ok},\"bad\":0,\"cpu_busy_s\":2.0,\"cpu_ours_s\":1.0}}\n"
        )
    };
    let text = [
        line("direct", 0, 1_000_000),
        line("nftables", 1, 400_000),
        line("edgeplane-native", 1, 950_000),
    ]
    .concat();
    std::fs::write(&results, text).unwrap();
    let out_dir = dir.join("out");
    let out = edgeplane(&[
        "pktgen",
        "report",
        "--results",
        results.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
        "--command",
        "sudo bench/compare",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    assert!(
        md.contains("| edgeplane-native | 1 | 10000 | udp |"),
        "{md}"
    );
    assert!(md.contains("MET    pps ≥ 2× nftables"), "{md}");
    assert!(md.contains("MET    ≥ 90% of direct"), "{md}");
    let svg = std::fs::read_to_string(out_dir.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
    // Garbage in: a clear error.
    std::fs::write(&results, "not json\n").unwrap();
    let out = edgeplane(&[
        "pktgen",
        "report",
        "--results",
        results.to_str().unwrap(),
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("results line 1"));
    let _ = std::fs::remove_dir_all(dir);
}
