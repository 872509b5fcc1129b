//! The relay: every message Redis sends this instance, through the admission gate, to
//! the hub; resubscribing after reconnects and slot moves, and the liveness probes.

use std::{collections::HashMap, sync::Arc, time::Duration};

use events::{CONTROL_CHANNEL, Control, SYSTEM_EVENTS_CHANNEL, USER_EVENTS_CHANNEL};
use fred::{
    clients::{Client, SubscriberClient},
    interfaces::{ClientLike, ClusterInterface, EventInterface, PubsubInterface},
    types::{Message, cluster::SlotRange},
};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::super::{
    BusError, Feed,
    keys::{self, PARTITIONS},
    subscriptions::Subscriptions,
};
use super::history::History;
use crate::{
    admission::{Gate, Source},
    hub::Hub,
    metrics::Metrics,
    readiness::{PROBE_INTERVAL, Readiness},
    redis::Redis,
    tasks::Tasks,
};

/// The partitions to key probes by: on a cluster, one owned by each master that owns
/// any (the first in order); on a single Redis, partition 0.
fn probed_partitions(subscriber: &SubscriberClient) -> Vec<u16> {
    let Some(state) = subscriber.cached_cluster_state() else {
        return vec![0];
    };
    let mut by_master: HashMap<String, u16> = HashMap::new();
    for partition in 0..PARTITIONS {
        if let Some(master) = state.get_server(keys::slot(partition)) {
            by_master.entry(master.to_string()).or_insert(partition);
        }
    }
    let mut partitions: Vec<u16> = by_master.into_values().collect();
    partitions.sort_unstable();
    partitions
}

/// Subscribes to the probe channels of `partitions` (each in its own slot: a command
/// each) and has readiness expect them; unsubscribes from those of `previous` left out.
async fn subscribe_probes(
    subscriber: &SubscriberClient,
    readiness: &Readiness,
    server_id: &str,
    previous: &[u16],
    partitions: &[u16],
) -> Result<(), fred::error::Error> {
    for partition in partitions.iter().filter(|p| !previous.contains(p)) {
        subscriber
            .ssubscribe(keys::probe_channel(*partition, server_id))
            .await?;
    }
    readiness.probe(partitions);
    for partition in previous.iter().filter(|p| !partitions.contains(p)) {
        // Best effort: a stale probe subscription costs only the odd dropped message.
        let _ = subscriber
            .sunsubscribe(keys::probe_channel(*partition, server_id))
            .await;
    }
    Ok(())
}

/// What the relay listens to besides the shard channels of this instance's users.
#[derive(Debug, Clone)]
pub struct Listening<'a> {
    pub server_id: &'a str,
    /// Deliver what other services publish the original design's way (`PUBLISH
    /// user-events` and `system-events`): live only, and every instance receives all of it.
    pub legacy_channels: bool,
    /// What every message must pass before it is acted on.
    pub gate: Gate,
}

/// Subscribes to the broadcast's shard channel, the control channel, this instance's
/// probe channel (and the original design's channels if asked), then starts the relay
/// (every message to the hub), the subscriptions of users' channels as their streams
/// arrive, and the probe. Returns once the subscriptions are confirmed, so no broadcast
/// published after this returns can be missed.
pub async fn start_relay(
    redis: &Redis,
    hub: Hub,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    listening: Listening<'_>,
    tasks: &mut Tasks,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let server_id = listening.server_id.to_string();
    // Taken before subscribing, so the first message cannot slip past.
    let messages = redis.subscriber.message_rx();
    let reconnects = redis.subscriber.reconnect_rx();
    let mut channels = vec![CONTROL_CHANNEL];
    if listening.legacy_channels {
        channels.extend([USER_EVENTS_CHANNEL, SYSTEM_EVENTS_CHANNEL]);
    }
    redis.subscriber.subscribe(channels).await?;
    redis
        .subscriber
        .ssubscribe(keys::channel(&Feed::Broadcast))
        .await?;
    let partitions = probed_partitions(&redis.subscriber);
    subscribe_probes(&redis.subscriber, &readiness, &server_id, &[], &partitions).await?;
    let arrivals = hub
        .watch_arrivals()
        .ok_or_else(|| BusError::Reply("the hub is watched already".into()))?;
    let subscriptions = Subscriptions::new(
        redis.subscriber.clone(),
        History::new(redis.client.clone(), listening.gate.clone()),
        hub.clone(),
        metrics.clone(),
    );
    let relay = Relay {
        subscriber: redis.subscriber.clone(),
        hub,
        readiness: readiness.clone(),
        gate: listening.gate,
        metrics,
        server_id: server_id.clone(),
        broadcast_channel: keys::channel(&Feed::Broadcast),
        slots: redis
            .subscriber
            .cached_cluster_state()
            .map(|state| state.slots().to_vec()),
    };
    tasks.spawn("relay", relay.run(messages, reconnects, shutdown.clone()));
    tasks.spawn(
        "subscriptions",
        subscriptions.run(arrivals, shutdown.clone()),
    );
    tasks.spawn(
        "probes",
        send_probes(redis.client.clone(), server_id, readiness, shutdown),
    );
    Ok(())
}

struct Relay {
    subscriber: SubscriberClient,
    hub: Hub,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    gate: Gate,
    server_id: String,
    /// The broadcasts' shard channel, named once rather than per message.
    broadcast_channel: String,
    /// The cluster's slot map the subscriptions were last made for (`None`: one Redis).
    slots: Option<Vec<SlotRange>>,
}

/// How often an instance on a Redis Cluster compares the cluster's slots with what its
/// subscriptions were made for.
const TOPOLOGY_CHECK: Duration = Duration::from_secs(2);

impl Relay {
    async fn run(
        mut self,
        mut messages: tokio::sync::broadcast::Receiver<Message>,
        mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
        shutdown: CancellationToken,
    ) {
        let mut topology = tokio::time::interval(TOPOLOGY_CHECK);
        topology.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let clustered = self.subscriber.is_clustered();
        loop {
            tokio::select! {
                // Shutdown was requested: stop relaying.
                () = shutdown.cancelled() => break,
                _ = topology.tick(), if clustered => self.follow_slots().await,
                received = messages.recv() => match received {
                    Ok(message) => self.relay(&message),
                    // We fell behind fred's buffer and messages were dropped: the streams
                    // recover them from history.
                    Err(RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "relay fell behind redis; streams will catch up from history");
                        self.hub.catch_up_all();
                    }
                    // The client was dropped: nothing more will arrive.
                    Err(RecvError::Closed) => break,
                },
                reconnected = reconnects.recv() => match reconnected {
                    // Messages published while the subscriber was away are lost to
                    // Pub/Sub: subscribe again, then have every stream catch up from
                    // history (in that order, so nothing falls between the two).
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        self.metrics.redis_reconnects.inc();
                        if let Err(error) = crate::redis::resubscribe(&self.subscriber).await {
                            tracing::error!(%error, "could not resubscribe after reconnecting");
                        }
                        self.hub.catch_up_all();
                    }
                    Err(RecvError::Closed) => break,
                },
            }
        }
        tracing::info!("relay stopped");
    }

    /// When slots moved (a reshard, a failover), the masters that gave them up dropped
    /// this instance's subscriptions to their channels without a word (fred drops the
    /// `sunsubscribe` Redis sends): subscribe again where the slots are now, and have
    /// every stream catch up on what was published in between.
    async fn follow_slots(&mut self) {
        if let Err(error) = self.subscriber.sync_cluster().await {
            tracing::debug!(%error, "could not read the cluster's slots");
            return;
        }
        // Compared with the map the subscriptions were made for, not with the one before
        // this sync: fred also updates its map by itself when it reconnects.
        let now = self
            .subscriber
            .cached_cluster_state()
            .map(|state| state.slots().to_vec());
        let moved = self.slots.is_some() && now.is_some() && now != self.slots;
        if now.is_some() {
            self.slots = now;
        }
        if moved {
            tracing::warn!(
                "cluster slots moved; resubscribing and catching streams up from history"
            );
            self.metrics.slots_moved.inc();
            if let Err(error) = crate::redis::resubscribe(&self.subscriber).await {
                tracing::error!(%error, "could not resubscribe after slots moved");
            }
            // A master may have come or gone: probe the masters there are now.
            let previous = self.readiness.probed_partitions();
            let partitions = probed_partitions(&self.subscriber);
            let probed = subscribe_probes(
                &self.subscriber,
                &self.readiness,
                &self.server_id,
                &previous,
                &partitions,
            );
            if let Err(error) = probed.await {
                tracing::error!(%error, "could not subscribe to a new master's probe");
            }
            self.hub.catch_up_all();
        }
    }

    /// The kind of channel a message came on, for `relay_messages_received_total`.
    fn kind(&self, channel: &str, probe: bool) -> &'static str {
        if probe {
            "probe"
        } else if channel == CONTROL_CHANNEL {
            "control"
        } else if channel == USER_EVENTS_CHANNEL || channel == SYSTEM_EVENTS_CHANNEL {
            "legacy"
        } else if channel == self.broadcast_channel {
            "broadcast"
        } else if keys::is_topic_channel(channel) {
            "topic"
        } else {
            "user"
        }
    }

    fn relay(&mut self, message: &Message) {
        let probe = keys::probe_partition(&message.channel, &self.server_id);
        self.metrics
            .relay_received(self.kind(&message.channel, probe.is_some()));
        if let Some(partition) = probe {
            let sent_at = message.value.as_u64().unwrap_or(0);
            if self.readiness.probe_returned(partition, sent_at) {
                // The subscription had gone quiet: it may have missed events.
                tracing::warn!("subscription probe is back; streams will catch up from history");
                self.hub.catch_up_all();
            }
            return;
        }
        let bytes = message.value.as_bytes().unwrap_or_default();
        if *message.channel == *CONTROL_CHANNEL {
            if let Some(Control::Disconnect { user_id, reason }) = self.gate.control(bytes) {
                self.hub.disconnect(&user_id, &reason);
            }
            return;
        }
        if let Some(mut envelope) = self.gate.envelope(bytes, Source::Message) {
            if self.kind(&message.channel, false) == "legacy" {
                // Who published is the server's word, from a token: never a message's.
                envelope.publisher_id = None;
            }
            self.hub.deliver(&envelope);
        }
    }
}

/// Publishes the probes every [`PROBE_INTERVAL`] until shutdown. A publish that fails
/// (its master unreachable) is simply not answered, which is what makes the instance
/// unready.
async fn send_probes(
    client: Client,
    server_id: String,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {
                let sent_at = readiness.now_ms();
                let probes = readiness.probed_partitions().into_iter().map(|partition| {
                    let client = &client;
                    let channel = keys::probe_channel(partition, &server_id);
                    async move {
                        let published: Result<i64, _> = client.spublish(channel, sent_at).await;
                        if let Err(error) = published {
                            tracing::debug!(%error, partition, "probe not sent");
                        }
                    }
                });
                futures_util::future::join_all(probes).await;
            }
        }
    }
}
