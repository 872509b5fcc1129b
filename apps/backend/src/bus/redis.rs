use std::sync::Arc;

use events::{Envelope, Position, SYSTEM_EVENTS_CHANNEL, USER_EVENTS_CHANNEL};
use fred::{
    clients::{Client, SubscriberClient},
    interfaces::{EventInterface, PubsubInterface},
    types::{Message, Value, scripts::Script},
};
use tokio::{sync::broadcast::error::RecvError, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{BusError, HistoryRead, Retention, Topic};
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
/// ARGV[1]: the envelope as JSON, without `id` and `epoch`. ARGV[2]: the channel.
/// ARGV[3]: most entries kept. ARGV[4]: longest age kept, ms. ARGV[5]: meta TTL, ms.
///
/// A new epoch starts whenever the meta hash is missing (never published, expired, or
/// Redis lost its data); the history of an earlier epoch is dropped with it. The id and
/// epoch are spliced in after the opening brace rather than re-encoding with cjson,
/// which would turn an empty array in `data` into an object.
const PUBLISH_SCRIPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
if redis.call('HSETNX', KEYS[1], 'epoch', now) == 1 then
  redis.call('DEL', KEYS[2])
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
redis.call('PUBLISH', ARGV[2], message)
return {seq, tonumber(epoch)}
"#;

/// Reads a topic's head and the kept events after a sequence number, atomically.
///
/// KEYS as above. ARGV[1]: the sequence number to read after. ARGV[2]: at most this many
/// events (0: head only). Returns `{epoch, seq, oldest, envelope...}`, zeros when the
/// topic has no history.
const READ_SCRIPT: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
local reply = {tonumber(meta[1]) or 0, tonumber(meta[2]) or 0, 0}
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
if first[1] then
  reply[3] = tonumber(string.match(first[1][1], '^(%d+)'))
end
if tonumber(ARGV[2]) > 0 then
  local from = (tonumber(ARGV[1]) + 1) .. '-0'
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], from, '+', 'COUNT', ARGV[2])) do
    reply[#reply + 1] = entry[2][2]
  end
end
return reply
"#;

/// A topic's meta hash lives at least this long after its last event, so that an idle
/// user's epoch (and so the meaning of their cursors) outlives their history.
const META_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// The multi-instance bus: per-topic Redis Streams for history, Pub/Sub for fan-out.
#[derive(Debug)]
pub struct RedisBus {
    client: Client,
    retention: Retention,
    publish_script: Script,
    read_script: Script,
}

impl RedisBus {
    pub fn new(redis: &Redis, retention: Retention) -> Self {
        Self {
            client: redis.client.clone(),
            retention,
            publish_script: Script::from_lua(PUBLISH_SCRIPT),
            read_script: Script::from_lua(READ_SCRIPT),
        }
    }

    pub(super) fn retention(&self) -> Retention {
        self.retention
    }

    pub(super) async fn publish(&self, mut envelope: Envelope) -> Result<Envelope, BusError> {
        let topic = Topic::of(&envelope);
        let channel = match topic {
            Topic::User(_) => USER_EVENTS_CHANNEL,
            Topic::Broadcast => SYSTEM_EVENTS_CHANNEL,
        };
        let json = serde_json::to_string(&envelope).expect("an Envelope always serializes");
        let max_age_ms = self.retention.max_age.as_millis().max(1);
        let (seq, epoch): (u64, u64) = self
            .publish_script
            .evalsha_with_reload(
                &self.client,
                keys(&topic),
                vec![
                    json,
                    channel.to_string(),
                    self.retention.max_len.to_string(),
                    max_age_ms.to_string(),
                    u128::from(META_TTL_MS).max(max_age_ms).to_string(),
                ],
            )
            .await?;
        envelope.id = Some(seq);
        envelope.epoch = Some(epoch);
        Ok(envelope)
    }

    pub(super) async fn read(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<HistoryRead, BusError> {
        let reply: Vec<Value> = self
            .read_script
            .evalsha_with_reload(
                &self.client,
                keys(topic),
                vec![after.to_string(), limit.to_string()],
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

/// The meta hash and history stream of a topic. The braces are a hash tag, keeping both
/// keys of a topic on one Redis Cluster slot as the scripts require.
fn keys(topic: &Topic) -> Vec<String> {
    let tag = topic.user_id();
    vec![format!("ev:{{{tag}}}:meta"), format!("ev:{{{tag}}}:log")]
}

/// The channel only this instance subscribes to, for its liveness probe.
fn probe_channel(server_id: &str) -> String {
    format!("probe:{server_id}")
}

/// Subscribes to the event channels and this instance's probe channel, then starts the
/// relay (every message to the hub) and the probe. Returns once the subscriptions are
/// confirmed, so no event published after this returns can be missed.
pub async fn start_relay(
    redis: &Redis,
    hub: Hub,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    server_id: &str,
    shutdown: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, BusError> {
    let probe = probe_channel(server_id);
    // Taken before subscribing, so the first message cannot slip past.
    let messages = redis.subscriber.message_rx();
    let reconnects = redis.subscriber.reconnect_rx();
    redis
        .subscriber
        .subscribe(vec![
            USER_EVENTS_CHANNEL,
            SYSTEM_EVENTS_CHANNEL,
            probe.as_str(),
        ])
        .await?;
    let relay = Relay {
        subscriber: redis.subscriber.clone(),
        hub,
        readiness: readiness.clone(),
        metrics,
        probe: probe.clone(),
    };
    Ok(vec![
        tokio::spawn(relay.run(messages, reconnects, shutdown.clone())),
        tokio::spawn(send_probes(
            redis.client.clone(),
            probe,
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
    probe: String,
}

impl Relay {
    async fn run(
        self,
        mut messages: tokio::sync::broadcast::Receiver<Message>,
        mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                // Shutdown was requested: stop relaying.
                () = shutdown.cancelled() => break,
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
                        if let Err(error) = self.subscriber.resubscribe_all().await {
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

    fn relay(&self, message: &Message) {
        if *message.channel == *self.probe {
            let sent_at = message.value.as_u64().unwrap_or(0);
            if self.readiness.probe_returned(sent_at) {
                // The subscription had gone quiet: it may have missed events.
                tracing::warn!("subscription probe is back; streams will catch up from history");
                self.hub.catch_up_all();
            }
            return;
        }
        let Some(bytes) = message.value.as_bytes() else {
            tracing::warn!(channel = %message.channel, "ignored a non-text message");
            return;
        };
        match serde_json::from_slice::<Envelope>(bytes) {
            Ok(envelope)
                if envelope.is_broadcast()
                    || events::validate_user_id(&envelope.user_id).is_ok() =>
            {
                self.hub.deliver(&envelope);
            }
            Ok(envelope) => {
                tracing::warn!(user_id = %envelope.user_id, "ignored a message with an invalid userId");
            }
            Err(error) => tracing::warn!(%error, "ignored a message that is not an Envelope"),
        }
    }
}

/// Publishes a probe every [`PROBE_INTERVAL`] until shutdown. A publish that fails (Redis
/// unreachable) is simply not answered, which is what makes the instance unready.
async fn send_probes(
    client: Client,
    channel: String,
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
                let published: Result<i64, _> = client.publish(&channel, sent_at).await;
                if let Err(error) = published {
                    tracing::debug!(%error, "probe not sent");
                }
            }
        }
    }
}
