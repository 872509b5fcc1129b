use std::{sync::Arc, time::Duration};

use std::collections::{HashMap, HashSet};

use events::{Envelope, Position, SYSTEM_EVENTS_CHANNEL, USER_EVENTS_CHANNEL, event_type};
use fred::{
    clients::{Client, SubscriberClient},
    interfaces::{ClientLike, ClusterInterface, EventInterface, PubsubInterface, ServerInterface},
    types::{ClusterHash, Message, Value, cluster::SlotRange, config::Options, scripts::Script},
    util::redis_keyslot,
};
use tokio::{
    sync::{broadcast::error::RecvError, mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    BusError, CONTROL_CHANNEL, Control, Guard, HistoryRead, IDEMPOTENCY_TTL, Publication,
    Retention, Topic,
    keys::{self, PARTITIONS},
    subscriptions::Subscriptions,
};
use crate::{
    hub::Hub,
    metrics::Metrics,
    readiness::{PROBE_INTERVAL, Readiness},
    redis::Redis,
};

/// Numbers an event, appends it to its topic's history and publishes it, atomically and
/// in one round trip, so that every instance sees each topic's events in sequence order
/// and every published event is in the history.
///
/// KEYS[1]: the topic's meta hash (`epoch`, `seq`). KEYS[2]: its history stream, whose
/// entry ids are `<seq>-0` with fields `e` (the envelope) and `t` (Redis time, ms).
/// ARGV[1]: the envelope as JSON, without `id` and `epoch`. ARGV[2]: the topic's shard
/// channel (in the keys' slot, see `keys`), published to with `SPUBLISH`.
/// ARGV[3]: most entries kept. ARGV[4]: longest age kept, ms. ARGV[5]: meta TTL, ms.
///
/// KEYS[3], when given: the record of an idempotency key (`<seq> <epoch>` of the event it
/// published), kept ARGV[6] ms. If it exists, nothing is published: the reply is
/// `{seq, epoch, envelope}` of that event (the envelope empty if it left the history).
///
/// ARGV[7], unless empty: a field of the meta hash holding the newest version published
/// of this event type, and ARGV[8] this event's version. Unless it is newer, nothing is
/// published and the reply is `{0}` (no event has sequence number 0).
///
/// ARGV[9]: `1` to publish from the script; `0` when the caller publishes once replicas
/// have acknowledged the write (`PUBLISH_REPLICAS`).
///
/// A new epoch starts whenever the meta hash is missing (never published, expired, or
/// Redis lost its data), and when the topic was last written under another master run
/// (`run`: the writer's replication id) by a node that has since taken over from another
/// (a promoted replica: its `master_replid2` is set): a failover can lose the newest
/// events of the old master without a trace and give their ids again, and a new epoch
/// makes every stream resync rather than take a new event for one it saw. Not when
/// publishes wait for replicas (ARGV[9] `0`): nothing is published before a replica
/// holds it, so no id a stream saw can be given again, and the history the promoted
/// replica kept is worth keeping. A master restarted from its own files keeps the epoch.
/// The history of an earlier epoch is dropped with it.
///
/// The id and epoch are spliced in after the opening brace rather than re-encoding with
/// cjson, which would turn an empty array in `data` into an object.
const PUBLISH_SCRIPT: &str = r#"
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local seq, epoch = string.match(seen, '^(%d+) (%d+)$')
    local message = ''
    local entry = redis.call('XRANGE', KEYS[2], seq .. '-0', seq .. '-0')
    if entry[1] and redis.call('HGET', KEYS[1], 'epoch') == epoch then
      message = entry[1][2][2]
    end
    return {tonumber(seq), tonumber(epoch), message}
  end
end
if ARGV[7] ~= '' then
  local newest = redis.call('HGET', KEYS[1], ARGV[7])
  if newest and tonumber(ARGV[8]) <= tonumber(newest) then
    return {0}
  end
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local replication = redis.call('INFO', 'replication')
local run = string.match(replication, 'master_replid:(%w+)')
local took_over = not string.match(replication, 'master_replid2:0+%s')
local wrote = redis.call('HGET', KEYS[1], 'run')
if ARGV[9] == '1' and wrote and wrote ~= run and took_over then
  redis.call('HDEL', KEYS[1], 'epoch', 'seq')
end
redis.call('HSET', KEYS[1], 'run', run)
if redis.call('HSETNX', KEYS[1], 'epoch', now) == 1 then
  redis.call('DEL', KEYS[2])
end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[7], ARGV[8])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local message = '{"id":' .. seq .. ',"epoch":' .. epoch .. ',' .. string.sub(ARGV[1], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-0', 'e', message, 't', now)
local cutoff = now - tonumber(ARGV[4])
local keep_from = nil
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 64)) do
  if tonumber(entry[2][4]) >= cutoff then break end
  keep_from = tonumber(string.match(entry[1], '^(%d+)')) + 1
end
if keep_from then
  redis.call('XTRIM', KEYS[2], 'MINID', keep_from .. '-0')
end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if ARGV[9] == '1' then
  redis.call('SPUBLISH', ARGV[2], message)
end
if KEYS[3] then
  redis.call('SET', KEYS[3], seq .. ' ' .. epoch, 'PX', ARGV[6])
end
return {seq, tonumber(epoch)}
"#;

/// Reads a topic's head and the kept events after a sequence number, atomically.
///
/// KEYS as above. ARGV[1]: the first entry id to read (`<seq>-0`, computed by the caller:
/// Lua's numbers are doubles, and `seq + 1` of a large client-chosen number would turn
/// into `1e+14`, which Redis refuses). ARGV[2]: at most this many events (0: head only).
/// Returns `{epoch, seq, oldest, envelope...}`, zeros when the topic has no history.
const READ_SCRIPT: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local reply = {tonumber(meta[1]) or 0, tonumber(meta[2]) or 0, 0}
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if first[1] then
  reply[3] = tonumber(string.match(first[1][1], '^(%d+)'))
end
if tonumber(ARGV[2]) > 0 then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])) do
    reply[#reply + 1] = entry[2][2]
  end
end
return reply
"#;

/// A topic's meta hash lives at least this long after its last event, so that an idle
/// user's epoch (and so the meaning of their cursors) outlives their history.
const META_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long a publish waits for `PUBLISH_REPLICAS` replicas to acknowledge its write.
pub const REPLICA_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// The multi-instance bus: per-topic Redis Streams for history, sharded Pub/Sub for
/// fan-out.
#[derive(Debug)]
pub struct RedisBus {
    client: Client,
    /// Runs the publish script and its `WAIT` when publishes wait for replicas: a
    /// connection of its own, since `WAIT` holds up every command behind it.
    publisher: Client,
    /// Replicas that must acknowledge an event before it is published and accepted.
    replicas: u64,
    retention: Retention,
    publish_script: Script,
    history: History,
    broadcast_heads: SharedReads,
}

impl RedisBus {
    /// Also starts the task that reads the broadcast history's head for the streams
    /// that open (see [`SharedReads`]), until `shutdown`.
    pub fn new(
        redis: &Redis,
        retention: Retention,
        replicas: u64,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let history = History {
            client: redis.client.clone(),
            script: Script::from_lua(READ_SCRIPT),
        };
        let (broadcast_heads, reads) = SharedReads::start(history.clone(), shutdown);
        let bus = Self {
            client: redis.client.clone(),
            publisher: redis.publisher.clone(),
            replicas,
            retention,
            publish_script: Script::from_lua(PUBLISH_SCRIPT),
            history,
            broadcast_heads,
        };
        (bus, reads)
    }

    pub(super) fn retention(&self) -> Retention {
        self.retention
    }

    pub(super) async fn publish(
        &self,
        mut envelope: Envelope,
        guard: Guard<'_>,
    ) -> Result<Publication, BusError> {
        let topic = Topic::of(&envelope);
        let json = serde_json::to_string(&envelope).map_err(|e| BusError::Reply(e.to_string()))?;
        let max_age_ms = self.retention.max_age.as_millis().max(1);
        let mut keys = Vec::from(keys::history(&topic));
        if let Some(key) = guard.idempotency_key {
            keys.push(keys::idempotency(&topic, key));
        }
        let (version_field, version) = match guard.version {
            Some(version) => (format!("v:{}", envelope.event_type), version.to_string()),
            None => (String::new(), String::new()),
        };
        let durable = self.replicas > 0;
        let slot = redis_keyslot(keys[0].as_bytes());
        let reply: Vec<Value> = self
            .publish_script
            .evalsha_with_reload(
                &self.publisher,
                keys,
                vec![
                    json.clone(),
                    keys::channel(&topic),
                    self.retention.max_len.to_string(),
                    max_age_ms.to_string(),
                    u128::from(META_TTL_MS).max(max_age_ms).to_string(),
                    IDEMPOTENCY_TTL.as_millis().to_string(),
                    version_field,
                    version,
                    if durable { "0" } else { "1" }.to_string(),
                ],
            )
            .await?;
        let number = |i: usize| {
            reply
                .get(i)
                .and_then(Value::as_u64)
                .ok_or_else(|| BusError::Reply(format!("field {i} of the publish")))
        };
        let seq = number(0)?;
        if seq == 0 {
            return Ok(Publication::Superseded);
        }
        envelope.id = Some(seq);
        envelope.epoch = Some(number(1)?);
        let Some(first) = reply.get(2) else {
            if durable {
                self.publish_once_replicated(&topic, slot, seq, number(1)?, &json)
                    .await?;
            }
            return Ok(Publication::Published(envelope));
        };
        // A repeated key: the first publish's event, as delivered, when still kept.
        let kept = first
            .as_bytes()
            .and_then(|bytes| serde_json::from_slice::<Envelope>(bytes).ok());
        if durable && let Some(kept) = &kept {
            // The first attempt may have failed waiting for replicas, and so never have
            // published it: publish it now (streams drop what they have seen).
            let json = serde_json::to_string(&Envelope {
                id: None,
                epoch: None,
                ..kept.clone()
            })
            .map_err(|e| BusError::Reply(e.to_string()))?;
            self.publish_once_replicated(&topic, slot, seq, number(1)?, &json)
                .await?;
        }
        Ok(Publication::Replayed(kept.unwrap_or(envelope)))
    }

    /// Waits until `replicas` replicas hold the write just made on this connection, then
    /// publishes the event (as the script would have). Published only once durable, an
    /// event a failover loses was never delivered either, so its id, given again by the
    /// promoted replica, cannot be mistaken for one a stream has seen. Out of order with
    /// another publisher's event at worst, which streams repair from history.
    async fn publish_once_replicated(
        &self,
        topic: &Topic,
        slot: u16,
        seq: u64,
        epoch: u64,
        json: &str,
    ) -> Result<(), BusError> {
        // On the master that ran the script: the slot's.
        let on_master = self.publisher.with_options(&Options {
            cluster_hash: Some(ClusterHash::Custom(slot)),
            ..Options::default()
        });
        let timeout = i64::try_from(REPLICA_ACK_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
        let acknowledged: i64 = on_master
            .wait(i64::try_from(self.replicas).unwrap_or(i64::MAX), timeout)
            .await?;
        let acknowledged = u64::try_from(acknowledged).unwrap_or(0);
        if acknowledged < self.replicas {
            return Err(BusError::NotReplicated {
                acknowledged,
                wanted: self.replicas,
            });
        }
        let message = format!(r#"{{"id":{seq},"epoch":{epoch},{}"#, &json[1..]);
        let _: i64 = self
            .publisher
            .spublish(keys::channel(topic), message)
            .await?;
        Ok(())
    }

    /// Asks every instance (this one included) to carry out `control`.
    pub(super) async fn control(&self, control: &Control) -> Result<(), BusError> {
        let json = serde_json::to_string(control).map_err(|e| BusError::Reply(e.to_string()))?;
        let _: i64 = self.client.publish(CONTROL_CHANNEL, json).await?;
        Ok(())
    }

    pub(super) async fn read(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<HistoryRead, BusError> {
        self.history.read(topic, after, limit).await
    }

    /// The head of the broadcast history, read after this call began.
    pub(super) async fn broadcast_head(&self) -> Result<Position, BusError> {
        self.broadcast_heads.read().await
    }
}

/// Reads of a topic's history (the read script).
#[derive(Debug, Clone)]
struct History {
    client: Client,
    script: Script,
}

impl History {
    async fn read(&self, topic: &Topic, after: u64, limit: usize) -> Result<HistoryRead, BusError> {
        // Past the last possible id there is nothing to read, only the head.
        let (from, limit) = match after.checked_add(1) {
            Some(next) => (format!("{next}-0"), limit),
            None => ("0-0".to_string(), 0),
        };
        let reply: Vec<Value> = self
            .script
            .evalsha_with_reload(
                &self.client,
                Vec::from(keys::history(topic)),
                vec![from, limit.to_string()],
            )
            .await?;
        let number = |i: usize| -> Result<u64, BusError> {
            reply
                .get(i)
                .and_then(Value::as_u64)
                .ok_or_else(|| BusError::Reply(format!("field {i} of the history read")))
        };
        let head = Position::new(number(0)?, number(1)?);
        let oldest = number(2)?;
        let events = reply[3..]
            .iter()
            .map(|value| {
                let bytes = value.as_bytes().unwrap_or_default();
                serde_json::from_slice::<Envelope>(bytes)
                    .map_err(|e| BusError::Reply(format!("history entry: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(HistoryRead {
            head,
            oldest,
            events,
        })
    }
}

/// The head of the broadcast history, read once for all the streams that ask at about
/// the same time.
///
/// Every stream that opens needs that head, and in a reconnect storm thousands ask each
/// second. A read that *began* after a stream registered with the hub serves it exactly
/// as its own read would: whatever is published after the read began reaches the stream
/// live. So the askers queue, and one task reads for all those queued when a read
/// begins; those that ask meanwhile wait for the next read. One command instead of one
/// per stream, at the cost of waiting out at most one read in flight.
#[derive(Debug)]
struct SharedReads {
    asks: mpsc::UnboundedSender<oneshot::Sender<Result<Position, BusError>>>,
}

impl SharedReads {
    fn start(history: History, shutdown: CancellationToken) -> (Self, JoinHandle<()>) {
        let (asks, mut queue) = mpsc::unbounded_channel::<oneshot::Sender<_>>();
        let reads = tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    () = shutdown.cancelled() => return,
                    ask = queue.recv() => match ask {
                        Some(ask) => ask,
                        None => return,
                    },
                };
                // Everyone queued by now: the read below begins after they all asked.
                let mut waiting = vec![first];
                while let Ok(ask) = queue.try_recv() {
                    waiting.push(ask);
                }
                let head = history
                    .read(&Topic::Broadcast, u64::MAX, 0)
                    .await
                    .map(|read| read.head);
                for ask in waiting {
                    let _ = ask.send(head.clone());
                }
            }
        });
        (Self { asks }, reads)
    }

    async fn read(&self) -> Result<Position, BusError> {
        let (answer, answered) = oneshot::channel();
        self.asks.send(answer).map_err(|_| BusError::Stopping)?;
        answered.await.map_err(|_| BusError::Stopping)?
    }
}

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
    pub max_event_bytes: u64,
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
    shutdown: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, BusError> {
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
        .ssubscribe(keys::channel(&Topic::Broadcast))
        .await?;
    let partitions = probed_partitions(&redis.subscriber);
    subscribe_probes(&redis.subscriber, &readiness, &server_id, &[], &partitions).await?;
    let arrivals = hub
        .watch_arrivals()
        .ok_or_else(|| BusError::Reply("the hub is watched already".into()))?;
    let subscriptions = Subscriptions::new(
        redis.subscriber.clone(),
        redis.client.clone(),
        hub.clone(),
        metrics.clone(),
    );
    let relay = Relay {
        subscriber: redis.subscriber.clone(),
        hub,
        readiness: readiness.clone(),
        admission: Admission::new(metrics.clone(), listening.max_event_bytes),
        metrics,
        server_id: server_id.clone(),
        broadcast_channel: keys::channel(&Topic::Broadcast),
        slots: redis
            .subscriber
            .cached_cluster_state()
            .map(|state| state.slots().to_vec()),
    };
    Ok(vec![
        tokio::spawn(relay.run(messages, reconnects, shutdown.clone())),
        tokio::spawn(subscriptions.run(arrivals, shutdown.clone())),
        tokio::spawn(send_probes(
            redis.client.clone(),
            server_id,
            readiness,
            shutdown,
        )),
    ])
}

struct Relay {
    subscriber: SubscriberClient,
    hub: Hub,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    admission: Admission,
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
            match serde_json::from_slice::<Control>(bytes) {
                Ok(Control::Disconnect { user_id, reason }) => {
                    self.hub.disconnect(&user_id, &reason);
                }
                Err(_) => self.admission.reject(Rejection::NotAnEnvelope, bytes),
            }
            return;
        }
        if let Some(envelope) = self.admission.admit(bytes) {
            self.hub.deliver(&envelope);
        }
    }
}

/// Why a message on an event channel was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Not JSON of the envelope's shape (or not text at all).
    NotAnEnvelope,
    /// Larger than any event the API accepts.
    TooLarge,
    /// The `userId` breaks the user id rule (and is not the broadcast's `*`).
    BadUserId,
    /// The `eventType` breaks the naming rule, or claims the server's `stream.` domain.
    BadEventType,
    /// The `data` nests deeper than the API allows.
    TooDeep,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Self::NotAnEnvelope => "not_an_envelope",
            Self::TooLarge => "too_large",
            Self::BadUserId => "bad_user_id",
            Self::BadEventType => "bad_event_type",
            Self::TooDeep => "too_deep",
        }
    }
}

/// The relay's gate: every message from Redis is untrusted bytes (other services publish
/// straight to the channels), held to the same rules as the API before it reaches a
/// stream, so that no message can break a stream's framing, pass for a frame of the
/// server's own, or crash anything. What fails is counted and dropped; the first of each
/// kind is logged with a sample.
#[derive(Debug)]
pub struct Admission {
    metrics: Arc<Metrics>,
    /// An envelope larger than this cannot have come through the API.
    max_message_bytes: usize,
    logged: HashSet<Rejection>,
}

/// Room for an envelope's fields around its `data`: the longest user id, event type and
/// server id, two 20-digit numbers, a 13-digit time and the keys, with room to spare.
/// Too small, and the largest event the API accepts would be dropped by every relay.
const ENVELOPE_OVERHEAD: u64 =
    (events::MAX_USER_ID_CHARS + event_type::MAX_LEN + crate::config::MAX_SERVER_ID_CHARS + 512)
        as u64;

impl Admission {
    pub fn new(metrics: Arc<Metrics>, max_event_bytes: u64) -> Self {
        Self {
            metrics,
            max_message_bytes: usize::try_from(max_event_bytes + ENVELOPE_OVERHEAD)
                .unwrap_or(usize::MAX),
            logged: HashSet::new(),
        }
    }

    /// The envelope in `bytes`, if it may be delivered.
    pub fn admit(&mut self, bytes: &[u8]) -> Option<Envelope> {
        match self.check(bytes) {
            Ok(envelope) => Some(envelope),
            Err(rejection) => {
                self.reject(rejection, bytes);
                None
            }
        }
    }

    fn check(&self, bytes: &[u8]) -> Result<Envelope, Rejection> {
        if bytes.len() > self.max_message_bytes {
            return Err(Rejection::TooLarge);
        }
        let envelope =
            serde_json::from_slice::<Envelope>(bytes).map_err(|_| Rejection::NotAnEnvelope)?;
        if !envelope.is_broadcast() && events::validate_user_id(&envelope.user_id).is_err() {
            return Err(Rejection::BadUserId);
        }
        if !event_type::is_publishable(&envelope.event_type) {
            return Err(Rejection::BadEventType);
        }
        if envelope.data.depth() > events::MAX_PAYLOAD_DEPTH {
            return Err(Rejection::TooDeep);
        }
        Ok(envelope)
    }

    fn reject(&mut self, rejection: Rejection, bytes: &[u8]) {
        self.metrics.relay_rejected(rejection.label());
        if self.logged.insert(rejection) {
            let sample: String = String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                .escape_debug()
                .collect();
            tracing::warn!(
                reason = rejection.label(),
                sample,
                "dropped a message from Redis that breaks the event rules (counted in \
                 relay_messages_rejected_total; only the first of each kind is logged)"
            );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Capacity, Notice};
    use bytes::BytesMut;
    use futures_util::{FutureExt, StreamExt};

    fn admission() -> Admission {
        Admission::new(Arc::default(), 1024)
    }

    proptest::proptest! {
        /// Whatever bytes arrive on a channel, the relay never panics, and whatever it
        /// admits reaches an open stream as a frame that encodes: no message can break
        /// a stream.
        #[test]
        fn no_message_can_break_a_stream(
            user in "[a-z*]{1,3}|\\PC{0,4}",
            event_type in "[a-z.\\-_]{0,12}|\\PC{0,12}",
            data in "\\PC{0,40}",
            raw in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let json = serde_json::json!({"userId": user, "eventType": event_type, "data": data}).to_string();
            let mut gate = admission();
            let hub = Hub::new(Capacity::with_queue(8), Arc::default());
            let mut stream = hub.open("a").map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            for bytes in [json.as_bytes(), &raw[..]] {
                if let Some(envelope) = gate.admit(bytes) {
                    proptest::prop_assert!(event_type::is_publishable(&envelope.event_type));
                    hub.deliver(&envelope);
                }
            }
            while let Some(Some(Notice::Event(published))) = stream.next().now_or_never() {
                let mut out = BytesMut::new();
                proptest::prop_assert!(published.frame(Some("1-1.0-0".into())).encode(&mut out));
            }
            proptest::prop_assert_eq!(hub.stream_count(), 1, "the stream is still open");
        }
    }

    #[test]
    fn the_original_designs_message_is_admitted_and_spoofs_and_breaks_are_not() {
        let mut gate = admission();
        let ok = br#"{"userId":"123","eventType":"snapshots.generated","data":{}}"#;
        assert!(gate.admit(ok).is_some());
        for bad in [
            &br#"{"userId":"*","eventType":"a\nb","data":{}}"#[..],
            br#"{"userId":"u","eventType":"stream.resync","data":{}}"#,
            br#"{"userId":"u u","eventType":"a.b"}"#,
            br#"{"userId":"u","eventType":"a.b","data":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
            b"\xff\xfe",
        ] {
            assert!(
                gate.admit(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = format!(
            r#"{{"userId":"u","eventType":"a.b","data":"{}"}}"#,
            "x".repeat(4096)
        );
        assert!(gate.admit(big.as_bytes()).is_none());
    }

    #[test]
    fn the_largest_event_the_api_accepts_passes_every_relay() {
        let max_event_bytes = 1024;
        // `data` of exactly the limit, once encoded (a string: its quotes count).
        let data = serde_json::Value::String("x".repeat(max_event_bytes as usize - 2));
        let data = events::Payload::from(data);
        let envelope = Envelope {
            id: Some(u64::MAX),
            epoch: Some(u64::MAX),
            server_id: Some("s".repeat(crate::config::MAX_SERVER_ID_CHARS)),
            published_at: Some(9_999_999_999_999),
            ..Envelope::new(
                "u".repeat(events::MAX_USER_ID_CHARS),
                format!("a.{}", "b".repeat(event_type::MAX_LEN - 2)),
                data,
            )
        };
        let bytes = serde_json::to_vec(&envelope).expect("serializes");
        let mut gate = Admission::new(Arc::default(), max_event_bytes);
        assert!(gate.admit(&bytes).is_some(), "{} bytes", bytes.len());
    }
}
