//! `edgeplane pktgen send`: the AF_XDP transmit loop.
//!
//! Every UMEM frame holds the template from the start; a send takes free
//! frames, patches them for the next packet numbers ([`FrameGen::patch`]),
//! queues them on the TX ring and kicks the kernel (`sendto()`). With
//! `--rate`, a token bucket limits the frames queued to `rate × elapsed`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::frame::FrameGen;
use super::xsk::{own_cpu_s, XskPort, XskStats};
use super::SendArgs;

/// What `send` reports at the end (`--json`).
#[derive(Debug, Serialize)]
pub struct SendSummary {
    pub interface: String,
    pub proto: super::Proto,
    pub pattern: super::FlowPattern,
    pub frame_len: usize,
    /// Frames the kernel took from the TX ring (completions).
    pub sent: u64,
    /// Seconds from the first send to the last completion.
    pub elapsed_s: f64,
    pub pps: f64,
    /// Offered rate (0: flat out).
    pub rate: u64,
    pub wakeups: u64,
    pub socket: XskStats,
    /// CPU seconds (user + system) the generator process used.
    pub cpu_s: f64,
}

fn iface_mac(name: &str) -> Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
        .with_context(|| format!("no interface {name}"))?;
    super::parse_mac(s.trim()).map_err(anyhow::Error::msg)
}

pub fn run(a: &SendArgs) -> Result<()> {
    if !(a.duration > 0.0 && a.duration <= 3600.0) {
        bail!("--duration must be in (0, 3600] seconds");
    }
    if a.batch == 0 || a.batch > 1024 {
        bail!("--batch must be 1..=1024");
    }
    let src_mac = match a.src_mac {
        Some(m) => m,
        None => iface_mac(&a.interface)?,
    };
    let gen = FrameGen::new(&a.spec(src_mac))?;
    let len = gen.len();
    let mut port = XskPort::open(&a.interface, 0, a.frames, a.ring_size, a.copy)?;
    port.write_template(gen.template())?;

    let duration = Duration::from_secs_f64(a.duration);
    let start = Instant::now();
    let end = start + duration;
    let (mut seq, mut completed) = (0u64, 0u64);
    let (mut last_line, mut last_completed) = (start, 0u64);
    let mut second = 0;
    loop {
        completed += port.reap() as u64;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let budget = if a.rate > 0 {
            let allowed = (a.rate as f64 * (now - start).as_secs_f64()) as u64;
            allowed.saturating_sub(seq).min(a.batch as u64) as usize
        } else {
            a.batch
        };
        if budget > 0 {
            let mut s = seq;
            let n = port.send(budget, len, |buf| {
                gen.patch(buf, s);
                s += 1;
            });
            seq += n as u64;
        } else {
            std::hint::spin_loop();
        }
        port.kick()?;
        if !a.quiet && now.duration_since(last_line) >= Duration::from_secs(1) {
            second += 1;
            let dt = now.duration_since(last_line).as_secs_f64();
            println!(
                "pktgen send: {second:>3} s  sent {:>10}  {:>8.3} Mpps",
                completed - last_completed,
                (completed - last_completed) as f64 / dt / 1e6
            );
            last_line = now;
            last_completed = completed;
        }
    }
    // Let the kernel finish what is queued (bounded).
    let drain_until = Instant::now() + Duration::from_millis(500);
    while port.in_tx() > 0 && Instant::now() < drain_until {
        port.kick()?;
        completed += port.reap() as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let summary = SendSummary {
        interface: a.interface.clone(),
        proto: a.proto,
        pattern: gen.spec().pattern,
        frame_len: len,
        sent: completed,
        elapsed_s: elapsed,
        pps: completed as f64 / elapsed,
        rate: a.rate,
        wakeups: port.wakeups,
        socket: port.stats(),
        cpu_s: own_cpu_s(),
    };
    println!(
        "pktgen send: done  sent {} frames of {} bytes in {:.2} s = {:.3} Mpps",
        summary.sent,
        len,
        elapsed,
        summary.pps / 1e6
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
