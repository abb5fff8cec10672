//! `edgeplane pktgen report`: the results of one `bench/compare` run (one
//! JSON object per case and line) → a markdown table, the targets of issue
//! 6 evaluated on them, and an SVG bar chart.
//!
//! Definitions (the same ones docs/benchmarks.md states):
//! * **forwarded pps** = correctly translated frames the sink received ÷
//!   the generator's sending time;
//! * **CPU ms per Mpkt (machine)** = busy CPU time of the whole machine
//!   (`/proc/stat`, all cores) during the case ÷ forwarded Mpkt;
//! * **CPU ms per Mpkt (bench)** = the CPU time of what the benchmark ran
//!   (generator, sink and edgeplane processes, plus the machine's irq and
//!   softirq time, where the kernel's forwarding, XDP and veth work is
//!   accounted) ÷ forwarded Mpkt: the figure other load on a shared machine
//!   does not inflate;
//! * **net CPU ms per Mpkt** = the case's CPU time (bench figure when
//!   measured, else machine) minus the generator's and the sink's own cost,
//!   measured on the direct path in the same run (direct CPU time per frame
//!   sent × the case's frames sent), ÷ forwarded Mpkt;
//! * **generator-bound**: the sink got ≥ 95% of what was sent, so the path
//!   kept up and the figure is the generator's limit, not the path's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Results of `bench/compare`: one JSON object per line.
    #[arg(long)]
    pub results: PathBuf,
    /// Where to write `results.md` and `chart.svg`.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// A file with the machine description (copied into the report).
    #[arg(long)]
    pub machine: Option<PathBuf>,
    /// The command that produced the results (copied into the report).
    #[arg(long, default_value = "")]
    pub command: String,
}

/// One case as `bench/compare` writes it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct CaseResult {
    /// `direct`, `nftables`, `iptables`, `edgeplane-native`, `edgeplane-generic`.
    pub path: String,
    pub services: u32,
    /// `1`, `10000` or `new-per-packet`.
    pub flows: String,
    pub proto: String,
    /// Frames the generator sent.
    pub sent: u64,
    pub gen_elapsed_s: f64,
    /// Correct frames at the sink.
    pub ok: u64,
    /// Mistranslated frames at the sink.
    pub bad: u64,
    /// Busy CPU seconds of the whole machine during the case.
    pub cpu_busy_s: f64,
    /// Generator frames whose checksums the sink verified.
    #[serde(default)]
    pub checksummed: u64,
    /// CPU seconds of what the benchmark ran: generator, sink and edgeplane
    /// processes plus the machine's irq and softirq time (not inflated by
    /// other load on a shared machine).
    #[serde(default)]
    pub cpu_ours_s: Option<f64>,
    #[serde(default)]
    pub note: String,
}

impl CaseResult {
    pub fn pps(&self) -> f64 {
        if self.gen_elapsed_s > 0.0 {
            self.ok as f64 / self.gen_elapsed_s
        } else {
            0.0
        }
    }
    /// Whole-machine CPU milliseconds per forwarded million packets.
    pub fn cpu_ms_per_mpkt(&self) -> Option<f64> {
        (self.ok > 0).then(|| self.cpu_busy_s * 1e3 / (self.ok as f64 / 1e6))
    }
    /// CPU milliseconds of the benchmark's own work per forwarded Mpkt.
    pub fn ours_ms_per_mpkt(&self) -> Option<f64> {
        let ours = self.cpu_ours_s?;
        (self.ok > 0).then(|| ours * 1e3 / (self.ok as f64 / 1e6))
    }
    /// The CPU figure the net cost is computed from: the benchmark's own
    /// time when measured, else the machine's.
    fn cpu_for_net(&self) -> f64 {
        self.cpu_ours_s.unwrap_or(self.cpu_busy_s)
    }
    pub fn generator_bound(&self) -> bool {
        self.sent > 0 && self.ok as f64 >= 0.95 * self.sent as f64
    }
    fn scenario(&self) -> (u32, String, String) {
        (self.services, self.flows.clone(), self.proto.clone())
    }
}

/// Order of the paths in tables and charts.
pub const PATHS: [&str; 5] = [
    "direct",
    "nftables",
    "iptables",
    "edgeplane-native",
    "edgeplane-generic",
];

fn path_rank(p: &str) -> usize {
    PATHS.iter().position(|x| *x == p).unwrap_or(PATHS.len())
}

/// Parses JSON lines (blank lines skipped).
pub fn parse_results(text: &str) -> Result<Vec<CaseResult>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("results line {}", i + 1)))
        .collect()
}

/// Net CPU ms per Mpkt: the case's busy time minus the generator's and
/// sink's share, scaled from the direct case of the same flows/proto.
pub fn net_cpu_ms_per_mpkt(c: &CaseResult, direct: Option<&CaseResult>) -> Option<f64> {
    let d = direct?;
    if c.ok == 0 || d.sent == 0 {
        return None;
    }
    let (cc, dc) = if c.cpu_ours_s.is_some() && d.cpu_ours_s.is_some() {
        (c.cpu_for_net(), d.cpu_for_net())
    } else {
        (c.cpu_busy_s, d.cpu_busy_s)
    };
    let overhead = dc * c.sent as f64 / d.sent as f64;
    Some((cc - overhead).max(0.0) * 1e3 / (c.ok as f64 / 1e6))
}

fn direct_for<'a>(all: &'a [CaseResult], c: &CaseResult) -> Option<&'a CaseResult> {
    // The direct path has no Services: match on flows and protocol.
    all.iter()
        .find(|d| d.path == "direct" && d.flows == c.flows && d.proto == c.proto)
}

fn find<'a>(
    all: &'a [CaseResult],
    path: &str,
    s: &(u32, String, String),
) -> Option<&'a CaseResult> {
    all.iter().find(|c| c.path == path && c.scenario() == *s)
}

/// One target's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetLine {
    pub name: String,
    pub met: bool,
    pub detail: String,
}

/// Evaluates issue 6's targets on every scenario that has the cases.
pub fn targets(all: &[CaseResult]) -> Vec<TargetLine> {
    let mut out = Vec::new();
    let mut scenarios: Vec<_> = all
        .iter()
        .filter(|c| c.path != "direct")
        .map(|c| c.scenario())
        .collect();
    scenarios.sort();
    scenarios.dedup();
    let ep = "edgeplane-native";
    for s in &scenarios {
        let tag = format!("{} Service(s), {} flows, {}", s.0, s.1, s.2);
        let (Some(e), Some(n)) = (find(all, ep, s), find(all, "nftables", s)) else {
            continue;
        };
        if n.pps() == 0.0 || e.pps() == 0.0 {
            out.push(TargetLine {
                name: format!("pps ≥ 2× nftables ({tag})"),
                met: false,
                detail: format!(
                    "not comparable: {} forwarded nothing",
                    if e.pps() == 0.0 { ep } else { "nftables" }
                ),
            });
            continue;
        }
        let ratio = e.pps() / n.pps();
        out.push(TargetLine {
            name: format!("pps ≥ 2× nftables ({tag})"),
            met: ratio >= 2.0,
            detail: format!(
                "{:.2}× ({:.3} vs {:.3} Mpps){}",
                ratio,
                e.pps() / 1e6,
                n.pps() / 1e6,
                if ratio >= 2.0 {
                    String::new()
                } else {
                    format!("; missed by {:.0}%", (1.0 - ratio / 2.0) * 100.0)
                }
            ),
        });
        let (ec, nc) = (
            net_cpu_ms_per_mpkt(e, direct_for(all, e)),
            net_cpu_ms_per_mpkt(n, direct_for(all, n)),
        );
        if let (Some(ec), Some(nc)) = (ec, nc) {
            let r = ec / nc.max(1e-9);
            out.push(TargetLine {
                name: format!("net CPU per Mpkt ≤ ½ nftables ({tag})"),
                met: r <= 0.5,
                detail: format!("{:.2}× ({:.0} vs {:.0} ms/Mpkt)", r, ec, nc),
            });
        }
        if let Some(d) = direct_for(all, e) {
            let r = e.pps() / d.pps().max(1.0);
            out.push(TargetLine {
                name: format!("≥ 90% of direct ({tag})"),
                met: r >= 0.9,
                detail: format!(
                    "{:.0}% ({:.3} vs {:.3} Mpps)",
                    r * 100.0,
                    e.pps() / 1e6,
                    d.pps() / 1e6
                ),
            });
        }
    }
    // Scaling: 10,000 Services against 1, same flows and protocol.
    for s in &scenarios {
        if s.0 == 1 {
            continue;
        }
        let one = (1, s.1.clone(), s.2.clone());
        if let (Some(big), Some(small)) = (find(all, ep, s), find(all, ep, &one)) {
            let drop = 1.0 - big.pps() / small.pps().max(1.0);
            out.push(TargetLine {
                name: format!("{} Services within 10% of 1 ({} flows, {})", s.0, s.1, s.2),
                met: drop < 0.10,
                detail: format!(
                    "{:+.1}% ({:.3} vs {:.3} Mpps)",
                    -drop * 100.0,
                    big.pps() / 1e6,
                    small.pps() / 1e6
                ),
            });
        }
    }
    out
}

/// The markdown table (sorted by scenario, then path).
pub fn table(all: &[CaseResult]) -> String {
    let mut rows: Vec<&CaseResult> = all.iter().collect();
    rows.sort_by(|a, b| {
        (a.services, &a.flows, &a.proto, path_rank(&a.path))
            .partial_cmp(&(b.services, &b.flows, &b.proto, path_rank(&b.path)))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut s = String::new();
    s.push_str("| path | Services | flows | proto | sent Mpps | forwarded Mpps | % of direct | CPU ms/Mpkt (machine) | CPU ms/Mpkt (bench) | net CPU ms/Mpkt | bad frames | checksummed | notes |\n");
    s.push_str("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for c in rows {
        let d = direct_for(all, c);
        let pct = d
            .map(|d| format!("{:.0}%", 100.0 * c.pps() / d.pps().max(1.0)))
            .unwrap_or_else(|| "–".into());
        let cpu = c
            .cpu_ms_per_mpkt()
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "–".into());
        let ours = c
            .ours_ms_per_mpkt()
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "–".into());
        let net = if c.path == "direct" {
            "–".into()
        } else {
            net_cpu_ms_per_mpkt(c, d)
                .map(|v| format!("{v:.0}"))
                .unwrap_or_else(|| "–".into())
        };
        let mut notes = Vec::new();
        if c.generator_bound() {
            notes.push("generator-bound".to_string());
        }
        if c.ok == 0 {
            notes.push("NOTHING FORWARDED".to_string());
        }
        if !c.note.is_empty() {
            notes.push(c.note.clone());
        }
        let services = if c.path == "direct" {
            "–".to_string()
        } else {
            c.services.to_string()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {} | {} |",
            c.path,
            services,
            c.flows,
            c.proto,
            c.sent as f64 / c.gen_elapsed_s.max(1e-9) / 1e6,
            c.pps() / 1e6,
            pct,
            cpu,
            ours,
            net,
            c.bad,
            c.checksummed,
            notes.join("; ")
        );
    }
    s
}

/// Writes the grouped bar chart (forwarded Mpps per scenario and path).
pub fn chart(all: &[CaseResult], path: &Path, title: &str) -> Result<()> {
    use plotters::prelude::*;
    // Scenarios on the x axis; the direct path is drawn in every group of
    // its flows/proto.
    let mut groups: Vec<(u32, String, String)> = all
        .iter()
        .filter(|c| c.path != "direct")
        .map(|c| c.scenario())
        .collect();
    groups.sort();
    groups.dedup();
    if groups.is_empty() {
        groups = all.iter().map(|c| c.scenario()).collect();
        groups.dedup();
    }
    let paths: Vec<&str> = PATHS
        .iter()
        .copied()
        .filter(|p| all.iter().any(|c| c.path == *p))
        .collect();
    let value = |p: &str, g: &(u32, String, String)| -> f64 {
        let c = if p == "direct" {
            all.iter()
                .find(|c| c.path == "direct" && c.flows == g.1 && c.proto == g.2)
        } else {
            find(all, p, g)
        };
        c.map(|c| c.pps() / 1e6).unwrap_or(0.0)
    };
    let ymax = groups
        .iter()
        .flat_map(|g| paths.iter().map(move |p| (p, g)))
        .map(|(p, g)| value(p, g))
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.15;
    let width = (220 * groups.len() as u32).max(640) + 120;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let ng = groups.len() as f64;
    let lo = -0.1 * ymax;
    let mut ch = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(10)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..ng, lo..ymax)?;
    ch.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("forwarded Mpps")
        .y_label_formatter(&|v| {
            if *v < 0.0 {
                String::new()
            } else {
                format!("{v:.2}")
            }
        })
        .draw()?;
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(230, 159, 0),
        RGBColor(213, 94, 0),
        RGBColor(0, 114, 178),
        RGBColor(86, 180, 233),
    ];
    let w = 0.8 / paths.len() as f64;
    for (pi, p) in paths.iter().enumerate() {
        let color = colors[path_rank(p).min(colors.len() - 1)];
        let bars: Vec<_> = groups
            .iter()
            .enumerate()
            .map(|(gi, g)| {
                let x0 = gi as f64 + 0.1 + pi as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.92, value(p, g))], color.filled())
            })
            .collect();
        ch.draw_series(bars)?
            .label(*p)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    for (gi, g) in groups.iter().enumerate() {
        let label = format!("{} svc, {} flows, {}", g.0, g.1, g.2);
        ch.draw_series(std::iter::once(Text::new(
            label,
            (gi as f64 + 0.08, lo * 0.45),
            ("sans-serif", 12),
        )))?;
    }
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The whole report (markdown).
pub fn render(all: &[CaseResult], machine: &str, command: &str) -> String {
    let mut s = String::new();
    if !machine.trim().is_empty() {
        s.push_str("Machine:\n\n```text\n");
        s.push_str(machine.trim_end());
        s.push_str("\n```\n\n");
    }
    if !command.is_empty() {
        let _ = writeln!(s, "Command: `{command}`\n");
    }
    s.push_str(&table(all));
    let t = targets(all);
    if !t.is_empty() {
        s.push_str("\nTargets (issue 6):\n\n");
        for l in t {
            let _ = writeln!(
                s,
                "- {} {}: {}",
                if l.met { "MET   " } else { "MISSED" },
                l.name,
                l.detail
            );
        }
    }
    s
}

pub fn run(a: &ReportArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.results)
        .with_context(|| format!("reading {}", a.results.display()))?;
    let all = parse_results(&text)?;
    if all.is_empty() {
        anyhow::bail!("{} holds no results", a.results.display());
    }
    let machine = match &a.machine {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => String::new(),
    };
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let md = render(&all, &machine, &a.command);
    std::fs::write(a.out_dir.join("results.md"), &md)?;
    let mut by_path: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &all {
        *by_path.entry(c.path.as_str()).or_default() += 1;
    }
    chart(
        &all,
        &a.out_dir.join("chart.svg"),
        "edgeplane vs kube-proxy rulesets: forwarded packets per second (veth, one run)",
    )?;
    print!("{md}");
    println!(
        "\nwrote {} and {}",
        a.out_dir.join("results.md").display(),
        a.out_dir.join("chart.svg").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(path: &str, services: u32, flows: &str, sent: u64, ok: u64, cpu: f64) -> CaseResult {
        CaseResult {
            path: path.into(),
            services,
            flows: flows.into(),
            proto: "udp".into(),
            sent,
            gen_elapsed_s: 1.0,
            ok,
            bad: 0,
            cpu_busy_s: cpu,
            checksummed: ok,
            cpu_ours_s: None,
            note: String::new(),
        }
    }

    fn sample() -> Vec<CaseResult> {
        vec![
            case("direct", 0, "1", 2_000_000, 2_000_000, 2.0),
            case("nftables", 1, "1", 1_000_000, 1_000_000, 2.0),
            case("edgeplane-native", 1, "1", 2_000_000, 1_900_000, 2.0),
            case("edgeplane-native", 10000, "1", 2_000_000, 1_800_000, 2.0),
        ]
    }

    #[test]
    fn figures_follow_the_definitions() {
        let all = sample();
        let d = &all[0];
        assert_eq!(d.pps(), 2e6);
        assert_eq!(d.cpu_ms_per_mpkt(), Some(1000.0));
        assert!(d.generator_bound());
        // nft: 2 s busy, minus direct's 1 µs/frame × 1e6 frames = 1 s, over 1 Mpkt.
        assert_eq!(net_cpu_ms_per_mpkt(&all[1], Some(d)), Some(1000.0));
        // edgeplane: 2 s − 2 s = 0.
        assert_eq!(net_cpu_ms_per_mpkt(&all[2], Some(d)), Some(0.0));
        assert_eq!(net_cpu_ms_per_mpkt(&all[2], None), None);
        // With the bench's own CPU time measured, that is used instead.
        let (mut d2, mut n2) = (all[0].clone(), all[1].clone());
        d2.cpu_ours_s = Some(1.0);
        n2.cpu_ours_s = Some(0.75);
        assert_eq!(n2.ours_ms_per_mpkt(), Some(750.0));
        assert_eq!(net_cpu_ms_per_mpkt(&n2, Some(&d2)), Some(250.0));
        // Only one side measured: both use the machine figure.
        assert_eq!(net_cpu_ms_per_mpkt(&n2, Some(d)), Some(1000.0));
    }

    #[test]
    fn targets_are_evaluated_with_margins() {
        let t = targets(&sample());
        let get = |prefix: &str, svc: &str| {
            t.iter()
                .find(|l| l.name.starts_with(prefix) && l.name.contains(svc))
                .unwrap_or_else(|| panic!("no target {prefix} {svc}: {t:?}"))
                .clone()
        };
        let pps = get("pps ≥ 2×", "1 Service(s)");
        assert!(!pps.met, "{pps:?}"); // 1.9×
        assert!(
            pps.detail.contains("1.90×") && pps.detail.contains("missed by 5%"),
            "{}",
            pps.detail
        );
        assert!(get("net CPU", "1 Service(s)").met);
        assert!(get("≥ 90% of direct", "1 Service(s)").met); // 95%
        let scale = get("10000 Services within 10%", "");
        assert!(!scale.met || scale.detail.contains("-5.3%"), "{scale:?}");
        assert!(scale.met); // −5.3%
    }

    #[test]
    fn a_path_that_forwarded_nothing_is_not_a_ratio() {
        let mut all = sample();
        all[1].ok = 0;
        let t = targets(&all);
        let l = t.iter().find(|l| l.name.starts_with("pps ≥ 2×")).unwrap();
        assert!(
            !l.met && l.detail.contains("nftables forwarded nothing"),
            "{l:?}"
        );
        assert!(table(&all).contains("NOTHING FORWARDED"));
    }

    #[test]
    fn table_and_chart_render() {
        let all = sample();
        let md = render(&all, "kernel 6.18", "sudo bench/compare");
        assert!(md.contains("| direct | – | 1 | udp |"), "{md}");
        assert!(md.contains("generator-bound"));
        assert!(md.contains("Command: `sudo bench/compare`"));
        let dir = std::env::temp_dir().join(format!("ep-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("chart.svg");
        chart(&all, &p, "test").unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("edgeplane-native"),
            "{svg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_results_are_errors() {
        assert!(parse_results("{\"path\": 3}").is_err());
        let ok = parse_results(
            "\n{\"path\":\"direct\",\"services\":0,\"flows\":\"1\",\"proto\":\"udp\",\"sent\":1,\"gen_elapsed_s\":1,\"ok\":1,\"bad\":0,\"cpu_busy_s\":1}\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 1);
    }
}
