//! `edgeplane pktgen`: an AF_XDP packet generator (`send`), a sink that
//! counts and checks what arrives (`sink`), and the comparison report
//! (`report`, the table and chart `bench/compare` writes).
//!
//! * [`frame`] builds the frames (pure; benched in `benches/pktgen.rs`);
//! * [`check`] decides whether a received frame was translated correctly
//!   (pure);
//! * [`report`] turns the harness's results into a markdown table and an
//!   SVG chart (pure);
//! * `send`, `sink` and `xsk` (feature `afxdp`) are the live AF_XDP loops.
//!   `xsk.rs` holds their only `unsafe`.

pub mod check;
pub mod frame;
pub mod report;
#[cfg(feature = "afxdp")]
mod send;
#[cfg(feature = "afxdp")]
mod sink;
#[cfg(feature = "afxdp")]
mod xsk;

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

pub use frame::{FlowPattern, FrameGen, FrameSpec, Proto};

/// `edgeplane pktgen ...`
#[derive(Debug, Args)]
pub struct PktgenArgs {
    #[command(subcommand)]
    pub command: PktgenCommand,
}

#[derive(Debug, Subcommand)]
pub enum PktgenCommand {
    /// Transmit generated frames on an interface with AF_XDP (flat out or at
    /// --rate), printing the rate each second and a summary.
    Send(SendArgs),
    /// Receive on an interface with AF_XDP (our own XDP program redirects
    /// TCP/UDP frames to the socket), count the generator's frames and
    /// check each was translated correctly, then drop them.
    Sink(SinkArgs),
    /// Turn `bench/compare` results (JSON lines) into a markdown table and
    /// an SVG chart.
    Report(report::ReportArgs),
}

/// Flow patterns on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flows {
    /// One flow.
    One,
    /// Round-robin over --flow-count flows.
    Many,
    /// A new flow (source port/address) for every frame: SYN-flood-like.
    NewPerPacket,
}

/// XDP attach mode for the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkXdpMode {
    /// Native (driver) XDP.
    Native,
    /// Generic (SKB) XDP.
    Generic,
}

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    /// Interface to transmit on (queue 0).
    #[arg(long, short = 'i')]
    pub interface: String,
    /// Destination MAC (the next hop: the node's or the sink's interface).
    #[arg(long, value_parser = parse_mac)]
    pub dst_mac: [u8; 6],
    /// Source MAC (default: the interface's).
    #[arg(long, value_parser = parse_mac)]
    pub src_mac: Option<[u8; 6]>,
    /// First source address; flows use --src-count consecutive addresses.
    #[arg(long)]
    pub src_ip: IpAddr,
    #[arg(long, default_value_t = 256)]
    pub src_count: u32,
    /// First destination address (a Service IP); flows spread over
    /// --dst-count consecutive addresses.
    #[arg(long)]
    pub dst_ip: IpAddr,
    #[arg(long, default_value_t = 1)]
    pub dst_count: u32,
    #[arg(long, default_value_t = 80)]
    pub dst_port: u16,
    /// What each frame is.
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    pub proto: Proto,
    #[arg(long, value_enum, default_value_t = Flows::Many)]
    pub flows: Flows,
    /// Flows for `--flows many`.
    #[arg(long, default_value_t = 10_000)]
    pub flow_count: u64,
    /// Frame size in bytes without FCS (default: 64, or the smallest frame
    /// that holds the headers if larger).
    #[arg(long)]
    pub size: Option<usize>,
    /// Frames per second (0: as fast as the socket takes them).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Stop after this many seconds (fractions allowed).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Frames per TX batch (one sendto each).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// UMEM frames.
    #[arg(long, default_value_t = 4096)]
    pub frames: u32,
    /// TX/completion ring size.
    #[arg(long, default_value_t = 2048)]
    pub ring_size: u32,
    /// Bind with XDP_COPY (needed where the driver has no zero-copy; veth).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub copy: bool,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No per-second lines.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Interface to receive on (queue 0).
    #[arg(long, short = 'i')]
    pub interface: String,
    #[arg(long, value_enum, default_value_t = SinkXdpMode::Native)]
    pub xdp_mode: SinkXdpMode,
    /// File of allowed destinations, one `ADDRESS PORT` per line (the
    /// Services' backends); without it any destination passes.
    #[arg(long)]
    pub backends: Option<PathBuf>,
    /// Required source address of every generator frame (the SNAT address).
    #[arg(long)]
    pub expect_src: Option<IpAddr>,
    /// Verify the checksums of one generator frame in N (1: every frame).
    #[arg(long, default_value_t = 1)]
    pub check_every: u64,
    /// Stop after this many seconds (or at SIGINT/SIGTERM).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 4096)]
    pub frames: u32,
    #[arg(long, default_value_t = 2048)]
    pub ring_size: u32,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(format!("expected a MAC like 02:00:00:00:00:01, got {s:?}"));
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC byte {p:?} in {s:?}"))?;
    }
    Ok(m)
}

impl SendArgs {
    /// The frame spec these options describe.
    pub fn spec(&self, src_mac: [u8; 6]) -> FrameSpec {
        FrameSpec {
            src_mac,
            dst_mac: self.dst_mac,
            src_base: self.src_ip,
            src_count: self.src_count,
            dst_base: self.dst_ip,
            dst_count: self.dst_count,
            dst_port: self.dst_port,
            proto: self.proto,
            size: self.size,
            pattern: match self.flows {
                Flows::One => FlowPattern::One,
                Flows::Many => FlowPattern::Many(self.flow_count),
                Flows::NewPerPacket => FlowPattern::NewPerPacket,
            },
        }
    }
}

/// Reads a backends file: `ADDRESS PORT` (or `ADDRESS:PORT`, `[V6]:PORT`)
/// per line; blank lines and `#` comments are skipped.
pub fn parse_backends(text: &str) -> Result<std::collections::HashSet<(IpAddr, u16)>, String> {
    let mut out = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || format!("line {}: expected `ADDRESS PORT`, got {line:?}", n + 1);
        let (a, p) = match line.split_once(char::is_whitespace) {
            Some((a, p)) => (a.trim(), p.trim()),
            None => {
                let sa: std::net::SocketAddr = line.parse().map_err(|_| bad())?;
                out.insert((sa.ip(), sa.port()));
                continue;
            }
        };
        let ip: IpAddr = a.parse().map_err(|_| bad())?;
        let port: u16 = p.parse().map_err(|_| bad())?;
        out.insert((ip, port));
    }
    Ok(out)
}

/// Runs a `pktgen` subcommand.
pub fn run(args: PktgenArgs) -> anyhow::Result<()> {
    match args.command {
        PktgenCommand::Report(a) => report::run(&a),
        #[cfg(feature = "afxdp")]
        PktgenCommand::Send(a) => send::run(&a),
        #[cfg(feature = "afxdp")]
        PktgenCommand::Sink(a) => sink::run(&a),
        #[cfg(not(feature = "afxdp"))]
        PktgenCommand::Send(_) | PktgenCommand::Sink(_) => {
            anyhow::bail!("built without the `afxdp` feature of edgeplane-bench")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_backends_parse() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Ok([2, 0, 10, 255, 0, 1]));
        assert!(parse_mac("02:00:0a:ff:00").is_err());
        assert!(parse_mac("02:00:0a:ff:00:zz").is_err());
        let b =
            parse_backends("# x\n198.19.0.1 8080\n198.19.0.2:8081\n[2001:db8::1]:80\n\n").unwrap();
        assert_eq!(b.len(), 3);
        assert!(b.contains(&("198.19.0.2".parse().unwrap(), 8081)));
        assert!(parse_backends("198.19.0.1").unwrap_err().contains("line 1"));
    }
}
