//! Balancing streams over the fleet. Streams stay where they opened: after a scale-out
//! the new instance gets only new streams, and after a rolling update the last instance
//! to restart holds almost nothing. So every instance beats its stream count into Redis
//! and learns the fleet's; one holding more than `REBALANCE_ABOVE` × the fleet's mean
//! sheds streams down to the mean, at most `REBALANCE_RATE` a second, each with a last
//! `stream.reconnect` frame (its client resumes at once, from its cursor, losing
//! nothing), while `/readyz` and new streams are refused so that they open elsewhere.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{bus::Bus, hub::Hub, metrics::Metrics, readiness::Readiness};

/// How often an instance beats its stream count and reads the fleet's.
const BEAT: Duration = Duration::from_secs(2);

/// An instance not heard from for this long is no longer counted (it stopped, or died).
const STALE: Duration = Duration::from_secs(10);

/// How often a shedding instance closes its next few streams.
const TICK: Duration = Duration::from_millis(100);

/// An instance this few streams above the mean, or closer, sheds none: moving them would
/// cost their clients a reconnection for nothing that matters.
const MIN_EXCESS: u64 = 8;

/// After shedding, no new round before this: the shed streams must have opened elsewhere
/// and been counted there, or the fleet would look smaller than it is and this instance
/// would shed again what it already moved.
const SETTLE: Duration = Duration::from_secs(10);

/// What the shed streams' last frame says.
const REASON: &str = "this instance holds more than its share of streams; resume elsewhere";

/// The rebalancing task of one instance.
#[derive(Debug)]
pub struct Rebalancer {
    pub hub: Hub,
    pub bus: Arc<Bus>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// This process in the fleet (a server id and a nonce).
    pub instance: String,
    /// Shed above this many times the mean; 0: never.
    pub above: f64,
    /// Streams shed per second at most.
    pub rate: u64,
}

impl Rebalancer {
    /// Beats and sheds until `shutdown`, then leaves the fleet.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut beat = tokio::time::interval(BEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The number of streams to shed down to, while shedding.
        let mut goal: Option<u64> = None;
        // No new round of shedding before this.
        let mut settled = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = beat.tick() => {
                    let now = self.beat().await;
                    goal = match (goal, now) {
                        // Within a round, the goal only rises: streams on their way to
                        // other instances are counted nowhere yet.
                        (Some(goal), Some(now)) => Some(goal.max(now)),
                        (Some(_), None) => None,
                        (None, now) if tokio::time::Instant::now() >= settled => now,
                        (None, _) => None,
                    };
                }
                _ = tick.tick(), if goal.is_some() => {
                    goal = self.shed(goal);
                    if goal.is_none() {
                        settled = tokio::time::Instant::now() + SETTLE;
                    }
                }
            }
            self.readiness.set_rebalancing(goal.is_some());
        }
        self.readiness.set_rebalancing(false);
        if let Err(error) = self.bus.fleet_leave(&self.instance).await {
            tracing::debug!(%error, "could not leave the fleet; it forgets this instance soon");
        }
    }

    /// Beats; returns the goal to shed down to, if this instance holds too many.
    async fn beat(&self) -> Option<u64> {
        if self.readiness.is_draining() {
            // Its streams all go anyway: the others should not count them.
            let _ = self.bus.fleet_leave(&self.instance).await;
            return None;
        }
        let holding = self.hub.stream_count() as u64;
        // Room only while it would take streams: not full, and its own checks pass (a
        // deaf subscription, say). A shedding instance has none for the others.
        let ready = self.readiness.check().is_ok();
        let room = if ready { self.hub.room() as u64 } else { 0 };
        let stale_ms = u64::try_from(STALE.as_millis()).unwrap_or(u64::MAX);
        let fleet = match self
            .bus
            .fleet_beat(&self.instance, (holding, room), stale_ms)
            .await
        {
            Ok(fleet) => fleet,
            Err(error) => {
                tracing::warn!(%error, "fleet heartbeat failed; not rebalancing meanwhile");
                return None;
            }
        };
        self.metrics
            .fleet_instances
            .set(i64::try_from(fleet.len()).unwrap_or(i64::MAX));
        let goal = goal(&fleet, (holding, room), self.above);
        if let Some(goal) = goal {
            tracing::info!(
                holding,
                instances = fleet.len(),
                goal,
                "holding more than this instance's share of streams: shedding"
            );
        }
        goal
    }

    /// Sheds this tick's share of streams; returns the goal while still above it.
    fn shed(&self, goal: Option<u64>) -> Option<u64> {
        let goal = goal?;
        // Streams not yet closed: one shed already whose task has not ended (its client
        // does not read) must not be taken for one still to shed.
        let holding = self.hub.stream_count() as u64;
        if holding <= goal {
            return None;
        }
        let per_tick = (self.rate * u64::try_from(TICK.as_millis()).unwrap_or(1) / 1000).max(1);
        let count = per_tick.min(holding - goal);
        let shed = self
            .hub
            .shed(usize::try_from(count).unwrap_or(usize::MAX), REASON);
        self.metrics.rebalance_shed.inc_by(shed as u64);
        (shed > 0).then_some(goal)
    }
}

/// The number of streams an instance holding `held.0` (with room for `held.1` more)
/// should shed down to, given every instance's `(streams, room)` (`fleet`, its own
/// included): the mean, rounded up, when it holds more than `above` times the mean (and
/// [`MIN_EXCESS`] more than it), but never more than the other instances have room for
/// (one full, or not ready, takes none).
pub fn goal(fleet: &[(u64, u64)], held: (u64, u64), above: f64) -> Option<u64> {
    let (holding, own_room) = held;
    if fleet.len() < 2 || above <= 0.0 {
        return None;
    }
    let total: u64 = fleet.iter().map(|(streams, _)| streams).sum();
    let room_elsewhere = fleet
        .iter()
        .map(|(_, room)| room)
        .sum::<u64>()
        .saturating_sub(own_room);
    let mean = total as f64 / fleet.len() as f64;
    // Stream counts are far below 2^53.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let share = mean.ceil() as u64;
    let goal = share.max(holding.saturating_sub(room_elsewhere));
    (holding as f64 > above * mean && holding >= goal + MIN_EXCESS).then_some(goal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_above_its_share_sheds_down_to_the_mean() {
        let room = 10_000;
        // A new instance joins one holding 2,000.
        let fleet = [(2_000, room), (0, room)];
        assert_eq!(goal(&fleet, (2_000, room), 1.2), Some(1_000));
        assert_eq!(
            goal(&fleet, (0, room), 1.2),
            None,
            "the new one sheds nothing"
        );
        // Three instances after a rolling update: the last to restart holds little.
        let fleet = [(1_400, room), (1_400, room), (200, room)];
        assert_eq!(goal(&fleet, (1_400, room), 1.2), Some(1_000));
        // Within the margin: nothing moves.
        assert_eq!(
            goal(&[(1_100, room), (900, room)], (1_100, room), 1.2),
            None
        );
        assert_eq!(
            goal(&[(13, room), (0, room)], (13, room), 1.2),
            None,
            "too few to be worth moving"
        );
        assert_eq!(goal(&[(2_000, room)], (2_000, room), 1.2), None, "alone");
        assert_eq!(goal(&fleet, (1_400, room), 0.0), None, "off");
    }

    #[test]
    fn streams_are_shed_only_where_they_can_land() {
        // The other instance is full, or not ready: nothing is shed.
        assert_eq!(
            goal(&[(9_000, 1_000), (3_584, 0)], (9_000, 1_000), 1.2),
            None
        );
        // It has room for 500 only: 500 are shed, not 2,708.
        assert_eq!(
            goal(&[(9_000, 1_000), (3_084, 500)], (9_000, 1_000), 1.2),
            Some(8_500)
        );
        // Two shedding at once have no room for each other; each counts the third's.
        let fleet = [(6_000, 0), (6_000, 0), (0, 1_500)];
        assert_eq!(goal(&fleet, (6_000, 0), 1.2), Some(4_500));
    }
}
