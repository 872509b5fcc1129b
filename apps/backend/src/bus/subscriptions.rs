//! Which users' and topics' shard channels this instance listens to.
//!
//! A user's (or a topic's) channel is subscribed when its first stream opens here (the hub
//! reports each arrival) and unsubscribed once it has had no stream here for [`LINGER`],
//! so an instance receives the events of the users and topics it serves and no others. Arrivals are
//! gathered into batches, at most one per [`BATCH_WINDOW`], and subscribed with one
//! `SSUBSCRIBE` per partition (see `keys`), all in flight at once, so a reconnect storm
//! costs at most [`PARTITIONS`] commands per window and no stream waits on a round trip
//! of its own. A stream is registered with the
//! hub before it reads history, and once the subscription is confirmed its user's
//! head is read (one read for all the users of a partition's command): the streams not
//! already at that head are told to catch up, so an event published in between is read
//! from history, never lost, and a stream that saw everything reads nothing more.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use fred::{clients::SubscriberClient, interfaces::PubsubInterface};
use futures_util::future::join_all;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    Feed,
    keys::{self, PARTITIONS},
    redis::history::History,
};
use crate::{hub::Hub, metrics::Metrics};

/// How long a user's channel stays subscribed after their last stream here closed: a
/// reload or a reconnection through another path comes back within it without churn.
pub const LINGER: Duration = Duration::from_secs(30);

/// How often channels of users gone for [`LINGER`] are unsubscribed (in one batch), and
/// failed subscriptions retried.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Batches are sent at most this often: during a reconnect storm, arrivals gather for
/// this long and go out together, which bounds subscribe commands to [`PARTITIONS`] per
/// window however many streams arrive. After a quiet spell the first arrival goes at
/// once. A stream waits on none of it (see the module's documentation).
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// Arrivals taken into one batch at most.
const MAX_BATCH: usize = 100_000;

/// The subscriptions of one instance (see the module's documentation).
#[derive(Debug)]
pub struct Subscriptions {
    subscriber: SubscriberClient,
    /// Reads the heads of the feeds just subscribed.
    history: History,
    hub: Hub,
    metrics: Arc<Metrics>,
    /// Feeds (users and topics) subscribed, and since when they have no stream here.
    held: HashMap<Feed, Option<Instant>>,
    /// Feeds whose subscription failed (Redis away): retried at the next sweep.
    failed: HashSet<Feed>,
}

impl Subscriptions {
    pub fn new(
        subscriber: SubscriberClient,
        history: History,
        hub: Hub,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            subscriber,
            history,
            hub,
            metrics,
            held: HashMap::new(),
            failed: HashSet::new(),
        }
    }

    /// Subscribes for each arrival, and sweeps, until `shutdown`.
    pub async fn run(mut self, mut arrivals: mpsc::Receiver<Feed>, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_batch = Instant::now() - BATCH_WINDOW;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                arrived = arrivals.recv() => {
                    let Some(user) = arrived else { break };
                    // Let the rest of a storm gather (no wait after a quiet spell).
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep_until(last_batch + BATCH_WINDOW) => {}
                    }
                    let mut batch = vec![user];
                    while batch.len() < MAX_BATCH
                        && let Ok(user) = arrivals.try_recv()
                    {
                        batch.push(user);
                    }
                    // Some did not fit in the queue: take every user here instead.
                    batch.extend(self.hub.missed_arrivals().unwrap_or_default());
                    last_batch = Instant::now();
                    self.metrics.subscription_batches.inc();
                    self.subscribe(batch).await;
                }
                _ = sweep.tick() => {
                    // Missed arrivals, noted after the last batch was taken.
                    if let Some(missed) = self.hub.missed_arrivals() {
                        self.subscribe(missed).await;
                    }
                    self.sweep().await;
                }
            }
        }
        tracing::info!("subscriptions stopped");
    }

    /// Subscribes to the channels of `users` (users and topics) not subscribed yet, then
    /// tells their streams to catch up.
    async fn subscribe(&mut self, users: Vec<Feed>) {
        let mut fresh = Vec::new();
        for user in users {
            if user == Feed::Broadcast {
                // Subscribed all along (see `relay`).
                continue;
            }
            match self.held.get_mut(&user) {
                // Back before its channel was dropped.
                Some(absent_since) => *absent_since = None,
                None => {
                    self.held.insert(user.clone(), None);
                    fresh.push(user);
                }
            }
        }
        let batches = by_partition(fresh);
        let subscriber = &self.subscriber;
        let metrics = &self.metrics;
        let history = &self.history;
        let results = join_all(batches.into_iter().map(|users| async move {
            metrics.subscription_command("ssubscribe");
            let channels: Vec<String> = users.iter().map(keys::channel).collect();
            let result = subscriber.ssubscribe(channels).await;
            // Read after the subscription is confirmed: from these heads on, every
            // event of these users arrives live.
            let heads = match result {
                Ok(()) => Some(history.heads_in_one_slot(&users).await),
                Err(_) => None,
            };
            (users, result, heads)
        }))
        .await;
        for (users, result, heads) in results {
            match result {
                Ok(()) => match heads {
                    Some(Ok(heads)) => {
                        for (user, head) in users.iter().zip(heads) {
                            self.hub.catch_up_unless_at(user, head);
                        }
                    }
                    _ => {
                        for user in &users {
                            self.hub.catch_up(user);
                        }
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, users = users.len(), "could not subscribe; retrying at the next sweep");
                    for user in users {
                        self.held.remove(&user);
                        self.failed.insert(user);
                    }
                }
            }
        }
        self.metrics.subscriptions.set(self.held.len() as i64);
    }

    /// Unsubscribes from the channels of users gone for [`LINGER`], and retries failed
    /// subscriptions of users still here.
    async fn sweep(&mut self) {
        let now = Instant::now();
        let absent: HashSet<Feed> = self
            .hub
            .absent(self.held.keys())
            .into_iter()
            .cloned()
            .collect();
        let mut leaving = Vec::new();
        for (user, absent_since) in &mut self.held {
            if !absent.contains(user) {
                *absent_since = None;
            } else if now.duration_since(*absent_since.get_or_insert(now)) >= LINGER {
                leaving.push(user.clone());
            }
        }
        for user in &leaving {
            self.held.remove(user);
        }
        let subscriber = &self.subscriber;
        let metrics = &self.metrics;
        join_all(by_partition(leaving).into_iter().map(|users| async move {
            metrics.subscription_command("sunsubscribe");
            let channels: Vec<String> = users.iter().map(keys::channel).collect();
            if let Err(error) = subscriber.sunsubscribe(channels).await {
                // Only costs messages this instance drops: nothing is missed.
                tracing::warn!(%error, users = users.len(), "could not unsubscribe");
            }
        }))
        .await;
        self.metrics.subscriptions.set(self.held.len() as i64);

        let retry: Vec<Feed> = std::mem::take(&mut self.failed).into_iter().collect();
        let present: Vec<Feed> = {
            let gone: HashSet<&Feed> = self.hub.absent(retry.iter()).into_iter().collect();
            retry
                .iter()
                .filter(|feed| !gone.contains(feed))
                .cloned()
                .collect()
        };
        if !present.is_empty() {
            self.subscribe(present).await;
        }
    }
}

/// `users` (users and topics) grouped by partition: one group, one single-slot command.
fn by_partition(users: Vec<Feed>) -> Vec<Vec<Feed>> {
    let mut groups: BTreeMap<u16, Vec<Feed>> = BTreeMap::new();
    for user in users {
        let partition = keys::partition(&user);
        debug_assert!(partition < PARTITIONS);
        groups.entry(partition).or_default().push(user);
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_of_users_takes_one_command_per_partition() {
        let users: Vec<Feed> = (0..10_000)
            .map(|n| Feed::User(format!("user-{n}")))
            .chain((0..10_000).map(|n| Feed::Topic(format!("room-{n}"))))
            .collect();
        let groups = by_partition(users);
        assert_eq!(groups.len(), usize::from(PARTITIONS));
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), 20_000);
        for group in &groups {
            let slots: HashSet<u16> = group
                .iter()
                .map(|feed| fred::util::redis_keyslot(keys::channel(feed).as_bytes()))
                .collect();
            assert_eq!(slots.len(), 1, "one slot per command");
        }
    }
}
