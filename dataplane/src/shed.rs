//! SYN shedding: what the dataplane does when a queue's worker cannot keep
//! up (a SYN flood). Sans-IO: counters in, a level out; the live path
//! (`afxdp::Dataplane::shed_syn_floods`) feeds it every 100 ms and writes the
//! level into the XDP program's `shed` map.
//!
//! Why: when a worker is saturated, its RX ring fills and the kernel drops
//! frames at random (`rx_dropped`): established connections lose packets as
//! often as the flood does, and TCP's retransmission backoff can stall one
//! for many seconds. Shedding moves those drops to where they cost least:
//! the XDP program drops SYNs to frontends (new connections, which the
//! client retries) before they reach the worker, so the worker keeps up with
//! everything else. A legitimate SYN gets through about as often as it did
//! when the kernel dropped at random (the worker's capacity is the same);
//! established flows no longer lose packets.
//!
//! Rules (per queue, one observation per interval):
//! - the kernel dropped frames for the queue's sockets: the level doubles
//!   (admit 1 in 2, 4, ... up to `max`);
//! - no drops and the worker idle for at least a quarter of its polls: after
//!   [`SynShed::QUIET_INTERVALS`] such intervals in a row the level halves
//!   (back to 1 = admit all);
//! - no drops but busy (saturated without dropping): the level holds.

/// The shedding state of one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynShed {
    /// Admit 1 in `level` SYNs (a power of two; 1 = all).
    level: u32,
    /// The largest level (a power of two; 1 disables shedding).
    max: u32,
    /// Consecutive intervals with room to spare.
    quiet: u32,
}

impl SynShed {
    /// Intervals with room to spare before the level halves.
    pub const QUIET_INTERVALS: u32 = 5;

    /// `max`: the largest level, rounded down to a power of two (0 and 1
    /// turn shedding off).
    pub fn new(max: u32) -> SynShed {
        let max = match max {
            0 | 1 => 1,
            m => 1 << (31 - m.leading_zeros()),
        };
        SynShed {
            level: 1,
            max,
            quiet: 0,
        }
    }

    /// Admit 1 SYN in this many.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// One interval: frames the kernel dropped for the queue, poll
    /// iterations that found frames / found none. Returns the new level
    /// when it changed.
    pub fn observe(&mut self, dropped: u64, busy_polls: u64, idle_polls: u64) -> Option<u32> {
        let before = self.level;
        if dropped > 0 {
            self.quiet = 0;
            self.level = (self.level * 2).min(self.max);
        } else if idle_polls > 0 && idle_polls * 4 >= busy_polls + idle_polls {
            self.quiet += 1;
            if self.quiet >= Self::QUIET_INTERVALS && self.level > 1 {
                self.level /= 2;
                self.quiet = 0;
            }
        } else {
            self.quiet = 0;
        }
        (self.level != before).then_some(self.level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_double_the_level_up_to_the_max() {
        let mut s = SynShed::new(100); // rounded down to 64
        let levels: Vec<Option<u32>> = (0..8).map(|_| s.observe(10, 100, 0)).collect();
        assert_eq!(
            levels,
            [
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(32),
                Some(64),
                None,
                None
            ]
        );
        assert_eq!(s.level(), 64);
    }

    #[test]
    fn room_to_spare_halves_it_after_quiet_intervals() {
        let mut s = SynShed::new(64);
        s.observe(1, 10, 0);
        s.observe(1, 10, 0);
        assert_eq!(s.level(), 4);
        // Idle a quarter of the time: four quiet intervals change nothing,
        // the fifth halves.
        for _ in 0..SynShed::QUIET_INTERVALS - 1 {
            assert_eq!(s.observe(0, 75, 25), None);
        }
        assert_eq!(s.observe(0, 75, 25), Some(2));
        for _ in 0..SynShed::QUIET_INTERVALS - 1 {
            assert_eq!(s.observe(0, 10, 90), None);
        }
        assert_eq!(s.observe(0, 10, 90), Some(1));
        assert_eq!(s.observe(0, 0, 100), None);
        assert_eq!(s.level(), 1);
    }

    #[test]
    fn saturated_without_drops_holds_and_restarts_the_quiet_count() {
        let mut s = SynShed::new(64);
        s.observe(5, 10, 0);
        assert_eq!(s.level(), 2);
        for _ in 0..SynShed::QUIET_INTERVALS - 1 {
            s.observe(0, 50, 50);
        }
        // Busy (less than a quarter idle): holds, and the quiet run restarts.
        assert_eq!(s.observe(0, 99, 1), None);
        for _ in 0..SynShed::QUIET_INTERVALS - 1 {
            assert_eq!(s.observe(0, 50, 50), None);
        }
        assert_eq!(s.observe(0, 50, 50), Some(1));
        // A worker that did not poll at all is not "idle".
        let mut t = SynShed::new(64);
        t.observe(1, 1, 0);
        for _ in 0..20 {
            assert_eq!(t.observe(0, 0, 0), None);
        }
        assert_eq!(t.level(), 2);
    }

    #[test]
    fn max_one_turns_shedding_off() {
        for max in [0, 1] {
            let mut s = SynShed::new(max);
            for _ in 0..10 {
                assert_eq!(s.observe(1000, 100, 0), None);
            }
            assert_eq!(s.level(), 1);
        }
        assert_eq!(SynShed::new(3).max, 2);
    }
}
