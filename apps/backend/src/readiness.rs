//! Whether this instance should receive traffic: not while draining, and not while its
//! Redis subscription is deaf.
//!
//! A TCP connection can look healthy while the subscription behind it delivers nothing
//! (a proxy dropped it, the server was restarted and the client has not noticed yet).
//! So each instance publishes a probe to a channel only it subscribes to, every
//! [`PROBE_INTERVAL`]; the instance is ready only while the probe keeps coming back.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// How often the probe is published.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long without a returning probe before the instance reports itself not ready.
pub const PROBE_STALE_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Readiness {
    draining: AtomicBool,
    /// Whether the subscription probe applies (Redis mode).
    probed: bool,
    started: Instant,
    /// When a probe last came back, in milliseconds since `started`.
    probe_returned_at: AtomicU64,
    /// The last probe's round trip, in microseconds.
    probe_round_trip_us: AtomicU64,
}

impl Readiness {
    /// Readiness for a single node (always ready until draining) or, with `probed`, for
    /// an instance whose subscription must prove itself alive.
    pub fn new(probed: bool) -> Self {
        Self {
            draining: AtomicBool::new(false),
            probed,
            started: Instant::now(),
            probe_returned_at: AtomicU64::new(0),
            probe_round_trip_us: AtomicU64::new(0),
        }
    }

    /// Ok when ready; otherwise why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining: shutting down");
        }
        if self.probed && self.since_probe_returned() > PROBE_STALE_AFTER {
            return Err("redis subscription probe is not coming back");
        }
        Ok(())
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A probe sent at `sent_at` (milliseconds since start, as given by
    /// [`Readiness::now_ms`]) came back. Returns whether the probe had gone stale before,
    /// i.e. whether the subscription may have missed messages.
    pub fn probe_returned(&self, sent_at: u64) -> bool {
        let was_stale = self.since_probe_returned() > PROBE_STALE_AFTER;
        let now = self.now_ms();
        self.probe_returned_at.store(now, Ordering::Release);
        self.probe_round_trip_us
            .store(now.saturating_sub(sent_at) * 1000, Ordering::Relaxed);
        was_stale
    }

    pub fn probe_round_trip(&self) -> Duration {
        Duration::from_micros(self.probe_round_trip_us.load(Ordering::Relaxed))
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn since_probe_returned(&self) -> Duration {
        let returned = self.probe_returned_at.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(returned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_node_is_ready_until_it_drains() {
        let readiness = Readiness::new(false);
        assert_eq!(readiness.check(), Ok(()));
        readiness.start_draining();
        assert!(readiness.check().is_err());
    }

    #[test]
    fn a_probed_instance_is_ready_while_probes_return() {
        let readiness = Readiness::new(true);
        assert_eq!(readiness.check(), Ok(()), "ready at start");
        readiness.probe_returned(readiness.now_ms());
        assert_eq!(readiness.check(), Ok(()));
        // Pretend the last probe came back long ago.
        readiness.probe_returned_at.store(0, Ordering::Release);
        std::thread::sleep(PROBE_STALE_AFTER + Duration::from_millis(50));
        assert!(readiness.check().is_err());
        assert!(
            readiness.probe_returned(readiness.now_ms()),
            "recovery is reported"
        );
        assert_eq!(readiness.check(), Ok(()));
    }
}
