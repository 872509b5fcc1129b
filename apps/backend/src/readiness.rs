//! Whether this instance should receive traffic: not while draining, not while it sheds
//! streams to balance the fleet (`rebalance`), and not while a Redis subscription it
//! depends on is deaf.
//!
//! A TCP connection can look healthy while the subscription behind it delivers nothing
//! (a proxy dropped it, the server was restarted and the client has not noticed yet).
//! So each instance publishes probes, every [`PROBE_INTERVAL`], to shard channels only it
//! subscribes to: one per Redis master that owns users' partitions (one in all on a
//! single Redis), each keyed by a partition that master owns. The instance is ready only
//! while every probe keeps coming back.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How often the probes are published.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long without a returning probe before the instance reports itself not ready.
pub const PROBE_STALE_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Readiness {
    draining: AtomicBool,
    rebalancing: AtomicBool,
    /// Whether the subscription probes apply (Redis mode).
    probed: bool,
    started: Instant,
    /// The partition each probe is keyed by (one per master), and when it last came
    /// back, in milliseconds since `started`.
    probes: Mutex<HashMap<u16, u64>>,
    /// The last probe's round trip, in microseconds.
    probe_round_trip_us: AtomicU64,
}

impl Readiness {
    /// Readiness for a single node (always ready until draining) or, with `probed`, for
    /// an instance whose subscriptions must prove themselves alive.
    pub fn new(probed: bool) -> Self {
        Self {
            draining: AtomicBool::new(false),
            rebalancing: AtomicBool::new(false),
            probed,
            started: Instant::now(),
            probes: Mutex::new(HashMap::new()),
            probe_round_trip_us: AtomicU64::new(0),
        }
    }

    /// Ok when ready; otherwise why not.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining: shutting down");
        }
        if self.rebalancing.load(Ordering::Acquire) {
            return Err("rebalancing: holding more than its share of the fleet's streams");
        }
        let now = self.now_ms();
        let stale = self.probes().values().any(|returned| {
            Duration::from_millis(now.saturating_sub(*returned)) > PROBE_STALE_AFTER
        });
        if self.probed && stale {
            return Err("a redis subscription probe is not coming back");
        }
        Ok(())
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// While set, new streams are sent elsewhere (see `rebalance`).
    pub fn set_rebalancing(&self, rebalancing: bool) {
        self.rebalancing.store(rebalancing, Ordering::Release);
    }

    pub fn is_rebalancing(&self) -> bool {
        self.rebalancing.load(Ordering::Acquire)
    }

    /// From now on, probes keyed by `partitions` (one per master); each new one has
    /// [`PROBE_STALE_AFTER`] to come back a first time.
    pub fn probe(&self, partitions: &[u16]) {
        let now = self.now_ms();
        let mut probes = self.probes();
        probes.retain(|partition, _| partitions.contains(partition));
        for partition in partitions {
            probes.entry(*partition).or_insert(now);
        }
    }

    /// The partitions probes are keyed by.
    pub fn probed_partitions(&self) -> Vec<u16> {
        let mut partitions: Vec<u16> = self.probes().keys().copied().collect();
        partitions.sort_unstable();
        partitions
    }

    /// The probe keyed by `partition`, sent at `sent_at` (milliseconds since start, as
    /// given by [`Readiness::now_ms`]), came back. Returns whether it had gone stale,
    /// i.e. whether that subscription may have missed messages.
    pub fn probe_returned(&self, partition: u16, sent_at: u64) -> bool {
        let now = self.now_ms();
        let mut probes = self.probes();
        let Some(returned) = probes.get_mut(&partition) else {
            return false;
        };
        let was_stale = Duration::from_millis(now.saturating_sub(*returned)) > PROBE_STALE_AFTER;
        *returned = now;
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

    fn probes(&self) -> std::sync::MutexGuard<'_, HashMap<u16, u64>> {
        // Each critical section is one read or one small update: a poisoned lock is usable.
        self.probes.lock().unwrap_or_else(PoisonError::into_inner)
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
    fn a_probed_instance_is_ready_while_every_probe_returns() {
        let readiness = Readiness::new(true);
        readiness.probe(&[3, 70]);
        assert_eq!(readiness.check(), Ok(()), "ready at start");
        assert!(!readiness.probe_returned(3, readiness.now_ms()));
        assert!(!readiness.probe_returned(99, 0), "not a probe of ours");
        // Both go quiet, then only shard 3's probe comes back.
        std::thread::sleep(PROBE_STALE_AFTER + Duration::from_millis(50));
        assert!(readiness.check().is_err());
        assert!(readiness.probe_returned(3, readiness.now_ms()));
        assert!(readiness.check().is_err(), "one shard is still deaf");
        assert!(
            readiness.probe_returned(70, readiness.now_ms()),
            "recovery is reported"
        );
        assert_eq!(readiness.check(), Ok(()));
        // Slots moved: another master, another probe.
        readiness.probe(&[70, 12]);
        assert_eq!(readiness.probed_partitions(), [12, 70]);
        assert_eq!(readiness.check(), Ok(()));
    }
}
