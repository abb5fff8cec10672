//! `edgeplane replay`: every frame of a pcap through the engine, in order, with
//! `now` from the frame's timestamp. The engine is the live path's engine.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;
use serde_json::json;

use edgeplane_dataplane::engine::Decision;
use edgeplane_dataplane::{Engine, Tables, Verdict};

use crate::cli::TableArgs;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub tables: TableArgs,
    /// Input capture (pcap, Ethernet link type).
    #[arg(long)]
    pub input: PathBuf,
    /// Output capture: every frame the engine sends.
    #[arg(long)]
    pub output: PathBuf,
    /// One JSON line per input frame.
    #[arg(long)]
    pub verdicts: Option<PathBuf>,
    /// Conntrack capacity in flows.
    #[arg(long, default_value_t = 65536)]
    pub conntrack_size: usize,
}

/// Frame buffers are this large (as a UMEM frame), or the frame's size if larger.
const FRAME_BUF: usize = 2048;

pub fn replay(a: ReplayArgs) -> Result<()> {
    let compiled = a.tables.load()?;
    let tables = &compiled.tables;
    let input = File::open(&a.input).with_context(|| format!("opening {}", a.input.display()))?;
    let mut reader = PcapReader::new(BufReader::new(input)).with_context(|| {
        format!(
            "{} is not a pcap file (pcapng is not supported; convert with `tcpdump -r in -w out`)",
            a.input.display()
        )
    })?;
    let link = reader.header().datalink;
    if link != DataLink::ETHERNET {
        bail!(
            "{}: link type {link:?} is not Ethernet (capture on an interface, not `-i any`)",
            a.input.display()
        );
    }
    let out =
        File::create(&a.output).with_context(|| format!("creating {}", a.output.display()))?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        snaplen: 65535,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(BufWriter::new(out), header)?;
    let mut verdicts = match &a.verdicts {
        Some(p) => Some(BufWriter::new(
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };

    let mut engine = Engine::standalone(a.conntrack_size);
    let mut written = 0usize;
    let mut index = 0usize;
    let mut buf = vec![0u8; FRAME_BUF];
    while let Some(pkt) = reader.next_packet() {
        let pkt = pkt.with_context(|| format!("{}: frame {index}", a.input.display()))?;
        let len = pkt.data.len();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf[..len].copy_from_slice(&pkt.data);
        let now = pkt.timestamp.as_nanos() as u64;
        let d = engine.process(now, &mut buf, len, tables);
        let sent = match d.verdict {
            Verdict::Tx { len, .. } | Verdict::Reject { len } => Some(len),
            Verdict::Pass | Verdict::Drop(_) => None,
        };
        let output = match sent {
            Some(n) => {
                writer.write_packet(&PcapPacket::new(pkt.timestamp, n as u32, &buf[..n]))?;
                written += 1;
                Some(written - 1)
            }
            None => None,
        };
        if let Some(w) = verdicts.as_mut() {
            writeln!(w, "{}", verdict_line(index, &d, output, tables))?;
        }
        index += 1;
    }
    if let Some(mut w) = verdicts {
        w.flush()?;
    }
    writer.into_writer().flush()?;
    let s = engine.stats();
    eprintln!(
        "replayed {index} frames: {} tx, {} reject, {} pass, {} drop; {written} frames written to {}",
        s.tx,
        s.reject,
        s.pass,
        s.drop,
        a.output.display()
    );
    Ok(())
}

/// `198.18.0.1:80` or `[2001:db8::1]:80`.
pub fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn verdict_line(
    index: usize,
    d: &Decision,
    output: Option<usize>,
    t: &Tables,
) -> serde_json::Value {
    let reason = match d.verdict {
        Verdict::Drop(r) => Some(r.name()),
        _ => None,
    };
    let (frontend, service) = match d.frontend.and_then(|i| t.frontends.get(i as usize)) {
        Some(f) => (
            Some(format!(
                "{}/{}",
                endpoint(f.key.ip, f.key.port),
                proto_name(f.key.proto as u8)
            )),
            t.services.get(f.service as usize).map(|s| s.display_name()),
        ),
        None => (None, None),
    };
    json!({
        "index": index,
        "verdict": d.verdict.name(),
        "reason": reason,
        "frontend": frontend,
        "service": service,
        "backend": d.backend.map(|(ip, port)| endpoint(ip, port)),
        "output": output,
    })
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "other",
    }
}
