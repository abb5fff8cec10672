//! `edgeplane inspect`: what the shared state holds, read-only, like
//! `conntrack -L` or `cilium bpf lb list`. Services and backends come from
//! the table region (a consistent copy of the active generation, no reader
//! slot taken, so the writer and the dataplane do not notice); conntrack from
//! the flow-state file (read-only view); next hops and counters from
//! `DIR/stats.json`, which the dataplane rewrites every second (write to a
//! temporary file, then rename: a reader sees the old or the new one).

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use edgeplane_dataplane::afxdp::Dataplane;
use edgeplane_dataplane::engine::Stats;
use edgeplane_dataplane::region::{RegionReader, Snapshot};
use edgeplane_dataplane::tables::{Frontend, Tables};
use edgeplane_dataplane::DropReason;

use crate::cli::Output;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum What {
    /// Service ports and their frontends (active generation).
    Services,
    /// Every frontend's backends with their Maglev shares.
    Backends,
    /// Tracked flows (original and translated tuples, state, expiry).
    Conntrack,
    /// Routes and neighbours the dataplane uses.
    Nexthops,
    /// Counters of the dataplane and of the table region.
    Stats,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(value_enum)]
    pub what: What,
    /// The state directory (as given to control/dataplane/run).
    #[arg(
        long = "tables",
        visible_alias = "state-dir",
        value_name = "DIR",
        default_value = edgeplane_dataplane::region::DEFAULT_DIR
    )]
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The stats file in `dir`.
pub fn stats_path(dir: &Path) -> PathBuf {
    dir.join("stats.json")
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        n => n.to_string(),
    }
}

fn addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn frontend_name(f: &Frontend) -> String {
    format!(
        "{}/{}",
        addr(f.key.ip, f.key.port),
        proto_name(f.key.proto as u8)
    )
}

/// Rewrites `DIR/stats.json` from the running dataplane.
pub fn write_stats(dir: &Path, dp: &Dataplane, reader: &RegionReader) -> Result<()> {
    let snaps = dp.snapshots();
    let mut total = Stats::default();
    for w in &snaps {
        total.merge(&w.engine);
    }
    let drops: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .filter(|r| total.dropped(**r) > 0)
        .map(|r| (r.name().to_string(), json!(total.dropped(*r))))
        .collect();
    let workers: Vec<Value> = snaps
        .iter()
        .map(|w| {
            json!({
                "worker": w.worker,
                "queue": w.queue,
                "cpu": w.cpu,
                "rx_packets": w.engine.rx_packets,
                "tx": w.engine.tx,
                "drop": w.engine.drop,
                "tables_generation": w.tables_generation,
            })
        })
        .collect();
    let nh = dp.nexthops();
    let routes: Vec<Value> = nh
        .route_list()
        .iter()
        .map(|r| {
            let net = Ipv6Addr::from(r.net);
            let (net, len) = match (r.v6, net.to_ipv4_mapped()) {
                (false, Some(v4)) => (IpAddr::V4(v4), r.prefix_len.saturating_sub(96)),
                _ => (IpAddr::V6(net), r.prefix_len),
            };
            json!({
                "prefix": format!("{net}/{len}"),
                "gateway": r.gateway.map(|g| g.to_string()),
                "ifindex": r.oif,
                "metric": r.metric,
            })
        })
        .collect();
    let neigh: Vec<Value> = nh
        .neighbour_list()
        .into_iter()
        .map(|(i, a, m)| {
            json!({
                "ifindex": i,
                "address": a.to_string(),
                "mac": m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            })
        })
        .collect();
    let xdp: serde_json::Map<String, Value> = dp
        .xdp_counters()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let v = json!({
        "pid": std::process::id(),
        "monotonic_ms": edgeplane_dataplane::region::monotonic_ms(),
        "tables": {
            "generation": reader.adopted(),
            "adopted": reader.adopted_count,
            "refused": reader.refused_count,
        },
        "totals": {
            "rx_packets": total.rx_packets,
            "rx_bytes": total.rx_bytes,
            "tx": total.tx,
            "reject": total.reject,
            "pass": total.pass,
            "drop": total.drop,
            "new_flows": total.new_flows,
            "ct_insert_failed": total.ct_insert_failed,
            "backend_gone": total.backend_gone,
            "snat_port_evictions": total.snat_port_evictions,
        },
        "drops": drops,
        "conntrack": { "flows": dp.flows().conntrack.len() },
        "workers": workers,
        "xdp": xdp,
        "nexthops": { "routes": routes, "neighbours": neigh },
    });
    let tmp = dir.join(".stats.json.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    std::fs::rename(&tmp, stats_path(dir))?;
    Ok(())
}

fn snapshot(dir: &Path) -> Result<Snapshot> {
    let r = RegionReader::open_read_only(dir)
        .with_context(|| format!("opening the table region in {}", dir.display()))?;
    r.snapshot().context("reading the active generation")
}

fn services_json(s: &Snapshot) -> Value {
    let t = &s.tables;
    let services: Vec<Value> = t
        .services
        .iter()
        .enumerate()
        .map(|(i, svc)| {
            let fes: Vec<Value> = t
                .frontends
                .iter()
                .filter(|f| f.service as usize == i)
                .map(|f| {
                    json!({
                        "kind": f.kind.name(),
                        "frontend": frontend_name(f),
                        "backends": f.n_all,
                        "new_flow_backends": f.n_new,
                        "maglev_size": f.maglev_len,
                        "snat": f.snat,
                        "affinity_timeout": f.affinity_timeout,
                        "empty_action": f.empty_action,
                    })
                })
                .collect();
            let mut v = serde_json::to_value(svc).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("service".into(), json!(svc.display_name()));
                m.insert("frontends".into(), json!(fes));
            }
            v
        })
        .collect();
    json!({ "generation": s.generation, "services": services })
}

fn shares(t: &Tables, f: &Frontend) -> Vec<u32> {
    let mut n = vec![0u32; f.n_new as usize];
    for e in t.maglev_entries(f) {
        if let Some(c) = n.get_mut(e as usize) {
            *c += 1;
        }
    }
    n
}

fn backends_json(s: &Snapshot) -> Value {
    let t = &s.tables;
    let fes: Vec<Value> = t
        .frontends
        .iter()
        .map(|f| {
            let sh = shares(t, f);
            let bs: Vec<Value> = t
                .all_backends(f)
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let slots = sh.get(i).copied().unwrap_or(0);
                    json!({
                        "address": addr(b.ip, b.port),
                        "ready": b.ready,
                        "serving": b.serving,
                        "terminating": b.terminating,
                        "local": b.local,
                        "weight": b.weight,
                        "new_flows": i < f.n_new as usize,
                        "maglev_slots": slots,
                        "share": if f.maglev_len > 0 { slots as f64 / f.maglev_len as f64 } else { 0.0 },
                    })
                })
                .collect();
            json!({
                "frontend": frontend_name(f),
                "service": t.services.get(f.service as usize).map(|s| s.display_name()),
                "backends": bs,
            })
        })
        .collect();
    json!({ "generation": s.generation, "frontends": fes })
}

fn conntrack_json(dir: &Path) -> Result<Value> {
    let v = edgeplane_dataplane::conntrack::ConntrackView::open(dir)
        .with_context(|| format!("opening the conntrack in {}", dir.display()))?;
    let now = edgeplane_dataplane::shm::monotonic_ns();
    let mut flows = Vec::new();
    let walk = v.for_each(now, |fl| {
        flows.push(json!({
            "proto": proto_name(fl.orig.proto),
            "orig": format!("{} -> {}", addr(fl.orig.src, fl.orig.sport), addr(fl.orig.dst, fl.orig.dport)),
            "xlat": format!("{} -> {}", addr(fl.xlat.src, fl.xlat.sport), addr(fl.xlat.dst, fl.xlat.dport)),
            "state": format!("{:?}", fl.state),
            "assured": fl.assured,
            "expires_in_s": fl.expires.saturating_sub(now) / 1_000_000_000,
            "worker": fl.worker,
        }));
    });
    Ok(json!({
        "capacity": v.capacity(),
        "flows": flows,
        "busy_skipped": walk.busy,
    }))
}

fn stats_json(dir: &Path) -> Result<Value> {
    let path = stats_path(dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is the dataplane running?)", path.display()))?;
    let mut v: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Ok(s) = snapshot(dir) {
        v["region"] = json!({
            "active_generation": s.generation,
            "active_slot": s.slot,
            "publishes": s.publishes,
            "stuck_readers_events": s.stuck,
            "writer_pid": s.writer_pid,
            "readers": s.readers.iter().map(|(pid, g, hb)| json!({"pid": pid, "generation": g, "heartbeat_age_ms": hb})).collect::<Vec<_>>(),
        });
    }
    Ok(v)
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let v = match a.what {
        What::Services => services_json(&snapshot(&a.dir)?),
        What::Backends => backends_json(&snapshot(&a.dir)?),
        What::Conntrack => conntrack_json(&a.dir)?,
        What::Nexthops => stats_json(&a.dir)?["nexthops"].take(),
        What::Stats => {
            let mut v = stats_json(&a.dir)?;
            if let Value::Object(m) = &mut v {
                m.remove("nexthops");
            }
            v
        }
    };
    match a.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        Output::Table => print!("{}", table(a.what, &v)),
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A plain-text rendering of the JSON (the JSON is the reference).
fn table(what: What, v: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let arr = |k: &str| v[k].as_array().unwrap_or(&empty).clone();
    match what {
        What::Services => {
            out += &format!("generation {}\n", s(&v["generation"]));
            for svc in arr("services") {
                out += &format!(
                    "{}  external={} internal={}\n",
                    s(&svc["service"]),
                    s(&svc["external_policy"]),
                    s(&svc["internal_policy"])
                );
                for f in svc["frontends"].as_array().unwrap_or(&empty) {
                    out += &format!(
                        "  {:<12} {:<32} backends {}/{} maglev {}\n",
                        s(&f["kind"]),
                        s(&f["frontend"]),
                        s(&f["new_flow_backends"]),
                        s(&f["backends"]),
                        s(&f["maglev_size"])
                    );
                }
            }
        }
        What::Backends => {
            out += &format!("generation {}\n", s(&v["generation"]));
            for f in arr("frontends") {
                out += &format!("{}  ({})\n", s(&f["frontend"]), s(&f["service"]));
                for b in f["backends"].as_array().unwrap_or(&empty) {
                    out += &format!(
                        "  {:<28} ready={} serving={} terminating={} local={} new_flows={} slots={} share={:.3}\n",
                        s(&b["address"]),
                        s(&b["ready"]),
                        s(&b["serving"]),
                        s(&b["terminating"]),
                        s(&b["local"]),
                        s(&b["new_flows"]),
                        s(&b["maglev_slots"]),
                        b["share"].as_f64().unwrap_or(0.0)
                    );
                }
            }
        }
        What::Conntrack => {
            for f in arr("flows") {
                out += &format!(
                    "{:<6} {:<52} {:<52} {:<12} assured={} expires={}s worker={}\n",
                    s(&f["proto"]),
                    s(&f["orig"]),
                    s(&f["xlat"]),
                    s(&f["state"]),
                    s(&f["assured"]),
                    s(&f["expires_in_s"]),
                    s(&f["worker"])
                );
            }
            out += &format!(
                "{} flows (capacity {})\n",
                arr("flows").len(),
                s(&v["capacity"])
            );
        }
        What::Nexthops => {
            out += "routes\n";
            for r in arr("routes") {
                out += &format!(
                    "  {:<24} via {:<20} ifindex {} metric {}\n",
                    s(&r["prefix"]),
                    s(&r["gateway"]),
                    s(&r["ifindex"]),
                    s(&r["metric"])
                );
            }
            out += "neighbours\n";
            for n in arr("neighbours") {
                out += &format!(
                    "  {:<24} {} ifindex {}\n",
                    s(&n["address"]),
                    s(&n["mac"]),
                    s(&n["ifindex"])
                );
            }
        }
        What::Stats => {
            fn flat(prefix: &str, v: &Value, out: &mut String) {
                match v {
                    Value::Object(m) => {
                        for (k, x) in m {
                            let p = if prefix.is_empty() {
                                k.clone()
                            } else {
                                format!("{prefix}.{k}")
                            };
                            flat(&p, x, out);
                        }
                    }
                    Value::Array(a) => {
                        for (i, x) in a.iter().enumerate() {
                            flat(&format!("{prefix}[{i}]"), x, out);
                        }
                    }
                    x => *out += &format!("{prefix} {}\n", s(x)),
                }
            }
            flat("", v, &mut out);
        }
    }
    out
}
