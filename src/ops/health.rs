//! `/healthz` and `/livez`, judged as kube-proxy judges them
//! (`pkg/proxy/healthcheck/proxier_health.go`): healthy while no picked-up
//! change has waited longer than the stale bound to be published — plus,
//! for a dataplane, while every worker is polling.
//!
//! The answer has kube-proxy's JSON shape
//! (`{"lastUpdated": "...","currentTime": "...", "nodeEligible": true}`,
//! `lastUpdated` = `currentTime` when healthy), with a `reason` added when
//! unhealthy.

use std::time::{Duration, Instant, SystemTime};

use super::{Inner, OpsConfig};

/// The publication half of health: kube-proxy's `oldestPendingQueued`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncHealth {
    /// The oldest change picked up and not yet published.
    pub oldest_pending: Option<Instant>,
    /// The last successful publication.
    pub last_updated: Option<Instant>,
}

impl SyncHealth {
    /// A change was picked up (keeps the oldest one).
    pub fn queued(&mut self, now: Instant) {
        self.oldest_pending.get_or_insert(now);
    }
    /// Everything picked up so far is published.
    pub fn synced(&mut self, now: Instant) {
        self.oldest_pending = None;
        self.last_updated = Some(now);
    }
    /// `None` when fresh, else how long the oldest change has waited.
    pub fn stale(&self, now: Instant, bound: Duration) -> Option<Duration> {
        let waited = now.saturating_duration_since(self.oldest_pending?);
        (waited >= bound).then_some(waited)
    }
}

/// The verdict of a health check.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub healthy: bool,
    /// Why not (empty when healthy).
    pub reasons: Vec<String>,
    /// When tables were last published, as wall time (kube-proxy's
    /// `lastUpdated`).
    pub last_updated: Option<SystemTime>,
    /// How long the Kubernetes API has been unreachable, once that is at
    /// least the staleness bound. Reported, but *not* a reason for 503: the
    /// tables in force are the last good ones and forwarding goes on, and an
    /// API outage would otherwise fail every node's load-balancer health
    /// check at once (kube-proxy does not fail `/healthz` for it either).
    pub source_stale: Option<Duration>,
}

/// Judges `s` at `now`.
pub fn evaluate(s: &Inner, cfg: &OpsConfig, now: Instant) -> Health {
    let mut reasons = Vec::new();
    if let Some(waited) = s.health.stale(now, cfg.stale_after) {
        reasons.push(format!(
            "a table change has waited {:.1} s to be published (bound {:.1} s)",
            waited.as_secs_f64(),
            cfg.stale_after.as_secs_f64()
        ));
    }
    if s.dataplane.is_some() {
        match s.workers_fed_at {
            None => reasons.push("no worker has reported yet".to_string()),
            Some(at) if now.saturating_duration_since(at) >= cfg.worker_stall => {
                reasons.push(format!(
                    "worker snapshots not refreshed for {:.1} s",
                    now.saturating_duration_since(at).as_secs_f64()
                ))
            }
            Some(_) => {}
        }
        for w in &s.workers {
            if w.snap.exited {
                reasons.push(format!(
                    "worker {} (queue {}) stopped",
                    w.snap.worker, w.snap.queue
                ));
                continue;
            }
            let idle = now.saturating_duration_since(w.last_progress);
            if idle >= cfg.worker_stall {
                reasons.push(format!(
                    "worker {} (queue {}) has not polled for {:.1} s",
                    w.snap.worker,
                    w.snap.queue,
                    idle.as_secs_f64()
                ));
            }
        }
    }
    let source_stale = s.kube.as_ref().and_then(|k| {
        let since = k
            .disconnected_since_unix_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let since = SystemTime::UNIX_EPOCH + Duration::from_millis(since);
        let gone = SystemTime::now().duration_since(since).ok()?;
        (since > SystemTime::UNIX_EPOCH && gone >= cfg.stale_after).then_some(gone)
    });
    Health {
        healthy: reasons.is_empty(),
        reasons,
        last_updated: s.last_sync,
        source_stale,
    }
}

/// Go's `time.Time.String()` without the monotonic part, as kube-proxy
/// prints it: `2006-01-02 15:04:05.999999999 +0000 UTC`.
pub fn go_time(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, dd) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{dd:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let ns = d.subsec_nanos();
    if ns != 0 {
        let frac = format!("{ns:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The body of `/healthz` (`node_eligible: Some`) or `/livez` (`None`).
pub fn body(h: &Health, now: SystemTime, node_eligible: Option<bool>) -> String {
    let current = go_time(now);
    let last = if h.healthy {
        current.clone()
    } else {
        h.last_updated
            .map(go_time)
            .unwrap_or_else(|| go_time(SystemTime::UNIX_EPOCH))
    };
    let mut v = serde_json::json!({
        "lastUpdated": last,
        "currentTime": current,
    });
    if let Some(e) = node_eligible {
        v["nodeEligible"] = e.into();
    }
    if !h.healthy {
        v["reason"] = h.reasons.join("; ").into();
    }
    if let Some(gone) = h.source_stale {
        v["sourceStale"] = format!(
            "Kubernetes API unreachable for {:.0} s; forwarding on the last good tables",
            gone.as_secs_f64()
        )
        .into();
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{DataplaneInfo, WorkerView};
    use edgeplane_dataplane::afxdp::WorkerSnapshot;
    use edgeplane_dataplane::engine::FlowState;
    use std::sync::Arc;

    fn cfg() -> OpsConfig {
        OpsConfig {
            metrics_addr: None,
            healthz_addr: None,
            stale_after: Duration::from_secs(10),
            worker_stall: Duration::from_secs(2),
            health_check_node_ports: false,
        }
    }

    #[test]
    fn publication_goes_stale_only_after_the_bound() {
        let t0 = Instant::now();
        let mut s = Inner::default();
        assert!(evaluate(&s, &cfg(), t0).healthy, "healthy while starting");
        s.health.queued(t0);
        assert!(evaluate(&s, &cfg(), t0 + Duration::from_secs(9)).healthy);
        // A second change does not reset the clock of the first.
        s.health.queued(t0 + Duration::from_secs(5));
        let h = evaluate(&s, &cfg(), t0 + Duration::from_secs(10));
        assert!(!h.healthy);
        assert!(h.reasons[0].contains("waited 10.0 s"), "{:?}", h.reasons);
        s.health.synced(t0 + Duration::from_secs(11));
        assert!(evaluate(&s, &cfg(), t0 + Duration::from_secs(100)).healthy);
    }

    #[test]
    fn a_worker_that_stops_polling_or_exits_is_unhealthy() {
        let t0 = Instant::now();
        let mut s = Inner {
            dataplane: Some(DataplaneInfo {
                interfaces: vec!["eth0".into()],
                flows: Arc::new(FlowState::new(1024, 1024, 1, Default::default())),
                clock: Arc::new(|| 0),
            }),
            ..Inner::default()
        };
        let h = evaluate(&s, &cfg(), t0);
        assert!(!h.healthy && h.reasons[0].contains("no worker"));
        let view = |w: usize, progress: Instant, exited: bool| WorkerView {
            snap: WorkerSnapshot {
                worker: w,
                queue: w as u32,
                exited,
                ..WorkerSnapshot::default()
            },
            last_progress: progress,
            busy_ratio: 0.0,
        };
        s.workers = vec![view(0, t0, false), view(1, t0, false)];
        s.workers_fed_at = Some(t0);
        assert!(evaluate(&s, &cfg(), t0 + Duration::from_secs(1)).healthy);
        s.workers[1].last_progress = t0 - Duration::from_secs(3);
        let h = evaluate(&s, &cfg(), t0 + Duration::from_secs(1));
        assert_eq!(
            h.reasons,
            vec!["worker 1 (queue 1) has not polled for 4.0 s"]
        );
        s.workers[1] = view(1, t0, true);
        let h = evaluate(&s, &cfg(), t0);
        assert_eq!(h.reasons, vec!["worker 1 (queue 1) stopped"]);
        // The feeder itself stalled.
        s.workers[1] = view(1, t0 + Duration::from_secs(5), false);
        s.workers[0].last_progress = t0 + Duration::from_secs(5);
        let h = evaluate(&s, &cfg(), t0 + Duration::from_secs(5));
        assert!(h.reasons[0].contains("not refreshed"), "{:?}", h.reasons);
    }

    #[test]
    fn bodies_have_kube_proxys_shape() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_000_000, 120_000_000);
        assert_eq!(go_time(t), "2026-11-18 11:06:40.12 +0000 UTC");
        assert_eq!(
            go_time(SystemTime::UNIX_EPOCH),
            "1970-01-01 00:00:00 +0000 UTC"
        );
        let ok = Health {
            healthy: true,
            reasons: vec![],
            last_updated: None,
            source_stale: None,
        };
        let v: serde_json::Value = serde_json::from_str(&body(&ok, t, Some(true))).unwrap();
        assert_eq!(v["lastUpdated"], v["currentTime"]);
        assert_eq!(v["nodeEligible"], true);
        assert!(v.get("reason").is_none());
        let bad = Health {
            healthy: false,
            reasons: vec!["a".into(), "b".into()],
            last_updated: Some(SystemTime::UNIX_EPOCH),
            source_stale: None,
        };
        let v: serde_json::Value = serde_json::from_str(&body(&bad, t, None)).unwrap();
        assert_eq!(v["lastUpdated"], "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(v["reason"], "a; b");
        assert!(v.get("nodeEligible").is_none());
        assert!(v.get("sourceStale").is_none());
        // An unreachable API is reported, and stays healthy (200).
        let gone = Health {
            source_stale: Some(Duration::from_secs(61)),
            ..ok
        };
        let v: serde_json::Value = serde_json::from_str(&body(&gone, t, Some(true))).unwrap();
        assert!(v["sourceStale"]
            .as_str()
            .unwrap()
            .contains("unreachable for 61 s"));
        assert!(v.get("reason").is_none());
    }
}
