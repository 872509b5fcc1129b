//! The presence worker, one per instance: tells the engine what the book says (in
//! batches, one script call per partition), beats in each partition where this instance
//! holds users, puts right what Redis lost, and sweeps instances that stopped beating.
//! One task, so that the engine hears an instance's changes in the order they were made.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use events::{Envelope, Payload, PresenceChange, PresenceReason, event_type, patterns_allow};
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::{
    Presence,
    book::{Change, Key},
};
use crate::bus::PresenceOp;

/// Changes sent in one script call at most.
const BATCH: usize = 200;

/// How long the worker waits after the engine failed before it tries again.
const RETRY: Duration = Duration::from_millis(500);

/// How long the worker gathers changes after the first wakes it: a burst of streams
/// opening (a deploy, a reconnect storm) is told in a few calls rather than one each.
const GATHER: Duration = Duration::from_millis(10);

/// Partitions asked about at once by a sweep.
const SWEEP_CONCURRENCY: usize = 16;

/// How long a stopping instance waits for the engine to take its users' departures.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Keys entered again after the engine lost them: their arrival is announced as
/// `rebuilt`, not `opened`.
type Rebuilt = HashSet<Key>;

impl Presence {
    /// Runs until `shutdown`; then lets the grace windows that are running end (their
    /// users may be reconnecting elsewhere) and takes every user held here out.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // Heartbeats and sweeps four times per TTL: an instance counts as dead once it
        // missed a heartbeat for half the TTL, and is swept within a quarter more.
        let period = self.settings.ttl / 4;
        let mut beat = tokio::time::interval(period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Instances started together sweep at different moments.
        let offset = period.mul_f64(f64::from(uuid::Uuid::new_v4().as_u128() as u16) / 65_536.0);
        let mut sweep = tokio::time::interval_at((Instant::now() + offset).into(), period);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.bus.shares_presence();
        let mut rebuilt = Rebuilt::new();
        loop {
            let due = self.tracker.book().next_due();
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.tracker.wake.notified() => tokio::time::sleep(GATHER).await,
                () = until(due) => {}
                _ = beat.tick(), if shared => self.beat(&mut rebuilt).await,
                _ = sweep.tick(), if shared => self.sweep().await,
            }
            if !self.flush(&mut rebuilt).await {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(RETRY) => {}
                }
                // Try again at once, whether or not a stream opens or closes meanwhile.
                self.tracker.wake.notify_one();
            } else if self.tracker.book().has_pending() {
                // A user came back (or went) while their change was on its way.
                self.tracker.wake.notify_one();
            }
        }
        self.stop(&mut rebuilt).await;
    }

    /// Tells the engine what the book says has changed; whether all of it was taken.
    async fn flush(&self, rebuilt: &mut Rebuilt) -> bool {
        let changes = {
            let mut book = self.tracker.book();
            book.due(Instant::now());
            book.take()
        };
        if changes.is_empty() {
            return true;
        }
        let mut by_partition: HashMap<u16, Vec<(Key, Change)>> = HashMap::new();
        for change in changes {
            by_partition
                .entry(self.bus.presence_partition(&change.0.0))
                .or_default()
                .push(change);
        }
        let mut batches = Vec::new();
        for (partition, changes) in by_partition {
            for chunk in changes.chunks(BATCH) {
                let ops = chunk
                    .iter()
                    .map(|(key, change)| {
                        let reason = match change {
                            Change::Enter if rebuilt.remove(key) => PresenceReason::Rebuilt,
                            Change::Enter => PresenceReason::Opened,
                            Change::Leave => PresenceReason::Closed,
                        };
                        self.op(key, *change == Change::Enter, reason)
                    })
                    .collect();
                batches.push((partition, chunk.to_vec(), ops));
            }
        }
        let results = join_all(
            batches
                .into_iter()
                .map(|(partition, chunk, ops)| async move {
                    let result = self
                        .bus
                        .presence_apply(&self.instance, partition, ops, None)
                        .await;
                    (chunk, result)
                }),
        )
        .await;
        let mut all_taken = true;
        let mut book = self.tracker.book();
        for (chunk, result) in results {
            match result {
                Ok(applied) => {
                    book.settle(&chunk, true);
                    let applied = applied.unwrap_or_default();
                    self.metrics.presence_joins.inc_by(applied.joined);
                    self.metrics.presence_left("closed", applied.left);
                }
                Err(error) => {
                    tracing::warn!(%error, changes = chunk.len(), "presence changes not taken; retrying");
                    book.settle(&chunk, false);
                    all_taken = false;
                }
            }
        }
        self.metrics
            .presence_entries
            .set(i64::try_from(book.announced_count()).unwrap_or(i64::MAX));
        all_taken
    }

    /// The engine's change for `key`, with its announcement if the topic has them.
    fn op(&self, (topic, user_id): &Key, enter: bool, reason: PresenceReason) -> PresenceOp {
        let announce = patterns_allow(&self.settings.events, topic).then(|| {
            let change = PresenceChange {
                user_id: user_id.clone(),
                reason,
            };
            let name = if enter {
                event_type::STREAM_JOINED
            } else {
                event_type::STREAM_LEFT
            };
            Envelope::to_topic(
                topic.clone(),
                name,
                Payload::of(&change).unwrap_or_default(),
            )
        });
        PresenceOp {
            enter,
            topic: topic.clone(),
            user_id: user_id.clone(),
            announce,
        }
    }

    /// A heartbeat in every partition where this instance holds users; where Redis
    /// holds something else, puts it right.
    async fn beat(&self, rebuilt: &mut Rebuilt) {
        let mut held: HashMap<u16, usize> = HashMap::new();
        for (topic, _) in self.tracker.book().announced() {
            *held.entry(self.bus.presence_partition(topic)).or_default() += 1;
        }
        let beats = join_all(held.into_iter().map(|(partition, count)| async move {
            let result = self
                .bus
                .presence_beat(&self.instance, partition, count)
                .await;
            (partition, result)
        }))
        .await;
        for (partition, result) in beats {
            match result {
                Ok(false) => {}
                Ok(true) => self.resync(partition, rebuilt).await,
                Err(error) => tracing::warn!(%error, partition, "presence heartbeat failed"),
            }
        }
    }

    /// Makes what Redis says this instance holds in `partition` what the book says: the
    /// users it lost enter again (announced as `rebuilt`), those it holds but the book
    /// does not (a departure a failover lost) leave.
    async fn resync(&self, partition: u16, rebuilt: &mut Rebuilt) {
        let held = match self.bus.presence_held(&self.instance, partition).await {
            Ok(held) => held.into_iter().collect::<HashSet<Key>>(),
            Err(error) => {
                tracing::warn!(%error, partition, "presence resync failed; next heartbeat");
                return;
            }
        };
        let extra: Vec<Key> = {
            let book = self.tracker.book();
            held.iter()
                .filter(|key| !book.is_announced(key))
                .cloned()
                .collect()
        };
        for chunk in extra.chunks(BATCH) {
            let ops = chunk
                .iter()
                .map(|key| self.op(key, false, PresenceReason::Closed))
                .collect();
            match self
                .bus
                .presence_apply(&self.instance, partition, ops, None)
                .await
            {
                Ok(applied) => self
                    .metrics
                    .presence_left("closed", applied.unwrap_or_default().left),
                Err(error) => {
                    tracing::warn!(%error, partition, "presence resync failed; next heartbeat");
                    return;
                }
            }
        }
        let lost = self.tracker.book().forget_announced(|key| {
            self.bus.presence_partition(&key.0) == partition && !held.contains(key)
        });
        tracing::info!(
            partition,
            lost = lost.len(),
            extra = extra.len(),
            "Redis did not hold this instance's presence; put right"
        );
        rebuilt.extend(lost);
        self.metrics.presence_resyncs.inc();
    }

    /// Finds the instances that stopped beating, in every partition, and takes their
    /// users out (announced with reason `timeout`). Any instance may do it, and two at
    /// once do it once.
    async fn sweep(&self) {
        let stale_ms = u64::try_from((self.settings.ttl / 2).as_millis()).unwrap_or(u64::MAX);
        let partitions: Vec<u16> = (0..self.bus.presence_partitions()).collect();
        for group in partitions.chunks(SWEEP_CONCURRENCY) {
            let found = join_all(group.iter().map(|&partition| async move {
                (partition, self.bus.presence_dead(partition, stale_ms).await)
            }))
            .await;
            for (partition, dead) in found {
                match dead {
                    Ok(dead) => {
                        for instance in dead {
                            self.sweep_instance(&instance, partition, stale_ms).await;
                        }
                    }
                    Err(error) => tracing::warn!(%error, partition, "presence sweep failed"),
                }
            }
        }
    }

    /// Takes every user `instance` held in `partition` out, unless it beats meanwhile.
    async fn sweep_instance(&self, instance: &str, partition: u16, stale_ms: u64) {
        let held = match self.bus.presence_held(instance, partition).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, partition, "presence sweep failed");
                return;
            }
        };
        let mut left = 0;
        // At least one call, which also drops the instance's heartbeat once it holds
        // nothing.
        let chunks: Vec<&[Key]> = if held.is_empty() {
            vec![&[]]
        } else {
            held.chunks(BATCH).collect()
        };
        for chunk in chunks {
            let ops = chunk
                .iter()
                .map(|key| self.op(key, false, PresenceReason::Timeout))
                .collect();
            match self
                .bus
                .presence_apply(instance, partition, ops, Some(stale_ms))
                .await
            {
                Ok(Some(applied)) => left += applied.left,
                Ok(None) => {
                    tracing::info!(instance, partition, "a silent instance beat again");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, partition, "presence sweep failed");
                    break;
                }
            }
        }
        self.metrics.presence_left("timeout", left);
        self.metrics.presence_sweeps.inc();
        tracing::info!(
            instance,
            partition,
            users = held.len(),
            left,
            "swept the presence of an instance that stopped beating"
        );
    }

    /// At shutdown: the grace windows running end as they would have (bounded), then
    /// every user still held here leaves.
    async fn stop(&self, rebuilt: &mut Rebuilt) {
        let deadline = Instant::now() + self.settings.grace + Duration::from_millis(50);
        let stopping = async {
            loop {
                let next = self.tracker.book().next_due();
                match next {
                    Some(at) if at <= deadline => {
                        tokio::time::sleep_until(at.into()).await;
                        self.flush(rebuilt).await;
                    }
                    _ => break,
                }
            }
            let all = self.tracker.book().leave_all();
            let mut by_partition: HashMap<u16, Vec<(Key, Change)>> = HashMap::new();
            for change in all {
                by_partition
                    .entry(self.bus.presence_partition(&change.0.0))
                    .or_default()
                    .push(change);
            }
            for (partition, changes) in by_partition {
                for chunk in changes.chunks(BATCH) {
                    let ops = chunk
                        .iter()
                        .map(|(key, _)| self.op(key, false, PresenceReason::Closed))
                        .collect();
                    let result = self
                        .bus
                        .presence_apply(&self.instance, partition, ops, None)
                        .await;
                    if let Ok(applied) = &result {
                        let left = applied.unwrap_or_default().left;
                        self.metrics.presence_left("closed", left);
                    }
                    self.tracker.book().settle(chunk, result.is_ok());
                }
            }
        };
        let limit = self.settings.grace + STOP_TIMEOUT;
        if tokio::time::timeout(limit, stopping).await.is_err() {
            tracing::warn!(
                "presence not taken out in time at shutdown: other instances will sweep it"
            );
        }
    }
}

/// Completes at `due`, or never.
async fn until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
