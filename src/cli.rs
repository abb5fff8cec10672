//! Command-line surface. Options that take several values are given by
//! repeating the flag (`--node-ip A --node-ip B`).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use edgeplane_control::compile::{CompileOptions, Compiled, Compiler};
use edgeplane_control::manifests;

#[derive(Debug, Parser)]
#[command(
    name = "edgeplane",
    version,
    about = "AF_XDP kube-proxy replacement for bare-metal edge nodes"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile Service/EndpointSlice/Node manifests and print every frontend
    /// with its backends, Maglev shares and traffic policies.
    Compile(CompileArgs),
    /// Run every frame of a pcap through the engine, offline.
    Replay(crate::replay::ReplayArgs),
    /// Run the live dataplane and the control loop in one process: XDP
    /// steering and AF_XDP workers on the given interfaces, tables from the
    /// manifests (reloaded when they change) or the Kubernetes API, passed
    /// through the table region in --tables DIR.
    Run(crate::run::RunArgs),
    /// Benchmark tools: an AF_XDP packet generator (`send`), a sink that
    /// checks translation (`sink`), and the `bench/compare` report.
    Pktgen(edgeplane_bench::pktgen::PktgenArgs),
    /// The control process: compile Services/EndpointSlices/Nodes (manifests
    /// or the Kubernetes API) and publish them into the table region.
    Control(crate::control::ControlArgs),
    /// The dataplane process: serve the interfaces with the tables the
    /// control process publishes into the table region.
    Dataplane(crate::run::DataplaneArgs),
    /// Show the shared state read-only: services, backends, conntrack,
    /// next hops, counters.
    Inspect(crate::inspect::InspectArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Options that shape the tables (shared by `compile`, `replay`, later
/// `control` and `run`).
#[derive(Debug, Clone, Args)]
pub struct TableArgs {
    /// A manifest file or a directory of them (YAML/JSON, multi-document).
    /// Required unless `run` reads the Kubernetes API (`--kubeconfig`,
    /// `--in-cluster`).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// This node's name (for `nodeName` of endpoints, traffic policy `Local`,
    /// and the Node object whose addresses serve NodePorts).
    #[arg(long, visible_alias = "hostname-override", default_value = "")]
    pub node_name: String,
    /// This node's addresses (repeat for several; NodePorts listen on these).
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// Source address for SNAT (repeat for one per family; default: the first
    /// node IP of each family).
    #[arg(long = "snat-ip")]
    pub snat_ips: Vec<IpAddr>,
    /// SNAT source-port range, LO-HI (split evenly between workers).
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    pub snat_ports: (u16, u16),
    /// Maglev table size M (a prime from the supported list).
    #[arg(long, default_value_t = 16381)]
    pub maglev_size: u32,
    /// Seed of the flow and Maglev hashes; equal on every node.
    #[arg(long, default_value_t = edgeplane_dataplane::NodeConfig::default().hash_seed)]
    pub hash_seed: u64,
    /// kube-proxy's `--nodeport-addresses`: NodePorts only on node IPs inside
    /// these prefixes (repeat; default: every node IP).
    #[arg(long = "nodeport-addresses", value_parser = parse_cidr)]
    pub nodeport_addresses: Vec<edgeplane_dataplane::tables::Cidr>,
}

fn parse_cidr(s: &str) -> Result<edgeplane_dataplane::tables::Cidr, String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("expected ADDRESS/PREFIX, got {s:?}"))?;
    let addr: IpAddr = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let prefix_len: u8 = l.parse().map_err(|e| format!("{l:?}: {e}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(format!("prefix length {prefix_len} > {max}"));
    }
    Ok(edgeplane_dataplane::tables::Cidr { addr, prefix_len })
}

impl TableArgs {
    /// Loads the manifests and compiles them, printing diagnostics to stderr.
    pub fn load(&self) -> Result<Compiled> {
        self.load_generation(1)
    }

    /// As [`load`](Self::load), stamping the tables with `generation`.
    pub fn load_generation(&self, generation: u64) -> Result<Compiled> {
        self.load_with(generation, false)
    }

    /// As [`load_generation`](Self::load_generation); with `strict`, a file
    /// that cannot be read or a document that is not valid YAML or does not
    /// decode fails the whole load instead of being skipped with a warning.
    /// The live dataplane loads strictly: publishing the rest of a half-saved
    /// file would delete the Services in its broken part.
    pub fn load_with(&self, generation: u64, strict: bool) -> Result<Compiled> {
        let mut compiler = Compiler::new(self.options()).context("compiling manifests")?;
        self.load_into(&mut compiler, generation, strict)
    }

    /// As [`load_with`](Self::load_with), compiling with `compiler`, which
    /// reuses what its previous compiles computed for unchanged objects (the
    /// live dataplane keeps one for its whole run).
    pub fn load_into(
        &self,
        compiler: &mut Compiler,
        generation: u64,
        strict: bool,
    ) -> Result<Compiled> {
        let objects = self.load_objects(strict)?;
        let compiled = compiler.compile(&objects, generation);
        for w in &compiled.warnings {
            eprintln!("warning: {w}");
        }
        Ok(compiled)
    }

    /// Reads the manifests (see [`load_with`](Self::load_with) for
    /// `strict`), printing diagnostics to stderr; does not compile.
    pub fn load_objects(&self, strict: bool) -> Result<edgeplane_control::ObjectSet> {
        let Some(path) = &self.manifests else {
            bail!("--manifests is required");
        };
        if !path.exists() {
            bail!("manifests path {} does not exist", path.display());
        }
        let (objects, diagnostics) =
            manifests::load_path(path).with_context(|| format!("reading {}", path.display()))?;
        if strict {
            use edgeplane_control::manifests::ManifestError as E;
            if let Some(d) = diagnostics.iter().find(|d| {
                matches!(
                    d.error,
                    E::Io(_) | E::Yaml(_) | E::NotAnObject | E::Decode { .. }
                )
            }) {
                bail!("{d}");
            }
        }
        for d in &diagnostics {
            eprintln!("warning: {d}");
        }
        Ok(objects)
    }
}

impl TableArgs {
    /// The compile options these flags describe.
    pub fn options(&self) -> CompileOptions {
        let mut opts = CompileOptions {
            node_name: self.node_name.clone(),
            node_ips: self.node_ips.clone(),
            snat_ports: self.snat_ports,
            hash_seed: self.hash_seed,
            maglev_m: self.maglev_size,
            nodeport_addresses: self.nodeport_addresses.clone(),
            ..CompileOptions::default()
        };
        for ip in &self.snat_ips {
            match ip {
                IpAddr::V4(v4) => opts.snat_v4 = Some(*v4),
                IpAddr::V6(v6) => opts.snat_v6 = Some(*v6),
            }
        }
        opts
    }
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("expected LO-HI, got {s:?}"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|e| format!("bad port {lo:?}: {e}"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|e| format!("bad port {hi:?}: {e}"))?;
    if lo == 0 || lo > hi {
        return Err(format!("port range {s:?} must be 1..=65535 with LO <= HI"));
    }
    Ok((lo, hi))
}

#[derive(Debug, Args)]
pub struct CompileArgs {
    #[command(flatten)]
    pub tables: TableArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

pub fn compile(a: CompileArgs) -> Result<()> {
    let compiled = a.tables.load()?;
    match a.output {
        Output::Json => {
            let v = edgeplane_control::report::render_json(&compiled);
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => print!("{}", edgeplane_control::report::render_table(&compiled)),
    }
    Ok(())
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}
