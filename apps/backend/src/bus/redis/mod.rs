//! The bus on Redis: per-feed Redis Streams for history, sharded Pub/Sub for fan-out,
//! on a single node or a Cluster. `history` reads, `relay` receives; publishing is here.

mod fleet;
pub(in crate::bus) mod history;
mod presence;
mod relay;

use std::time::Duration;

use events::{CONTROL_CHANNEL, Control, Envelope, Position};
use fred::{
    clients::Client,
    interfaces::{ClientLike, PubsubInterface, ServerInterface},
    types::{ClusterHash, Value, config::Options, scripts::Script},
    util::redis_keyslot,
};
use tokio_util::sync::CancellationToken;

use super::{BusError, Feed, Guard, HistoryRead, IDEMPOTENCY_TTL, Publication, Retention, keys};
use crate::{admission::Gate, redis::Redis, tasks::Tasks};
use history::{History, SharedReads};
pub use relay::{Listening, start_relay};

/// Numbers an event, appends it to its feed's history and publishes it, atomically and
/// in one round trip, so that every instance sees each feed's events in sequence order
/// and every published event is in the history.
///
/// KEYS[1]: the feed's meta hash (`epoch`, `seq`). KEYS[2]: its history stream, whose
/// entry ids are `<seq>-0` with fields `e` (the envelope) and `t` (Redis time, ms).
/// ARGV[1]: the envelope as JSON, without `id` and `epoch`. ARGV[2]: the feed's shard
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
/// Redis lost its data), and when the feed was last written under another master run
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
/// cjson, which would turn an empty array in `data` into an object. (The appending itself
/// is [`APPEND_LUA`], shared with the presence script, which announces arrivals and
/// departures as events of their topic in the same atomic step.)
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
local seq, epoch = append(moment(), KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  ARGV[5], ARGV[9], ARGV[7], ARGV[8])
if KEYS[3] then
  redis.call('SET', KEYS[3], seq .. ' ' .. epoch, 'PX', ARGV[6])
end
return {seq, tonumber(epoch)}
"#;

/// The Lua functions that number an event, append it to its feed's history and publish
/// it (see [`PUBLISH_SCRIPT`] for the rules), put before every script that publishes.
///
/// `moment()` reads the time and the replication ids once per script. `append(at, meta,
/// log, json, channel, max_len, max_age_ms, meta_ttl_ms, publish, version_field,
/// version)` returns the event's sequence number, its epoch and the message as published.
pub(super) const APPEND_LUA: &str = r#"
local function moment()
  local time = redis.call('TIME')
  local replication = redis.call('INFO', 'replication')
  return {
    now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000),
    run = string.match(replication, 'master_replid:(%w+)'),
    took_over = not string.match(replication, 'master_replid2:0+%s'),
  }
end

local function append(at, meta, log, json, channel, max_len, max_age, meta_ttl, publish,
                      version_field, version)
  local wrote = redis.call('HGET', meta, 'run')
  if publish == '1' and wrote and wrote ~= at.run and at.took_over then
    redis.call('HDEL', meta, 'epoch', 'seq')
  end
  redis.call('HSET', meta, 'run', at.run)
  if redis.call('HSETNX', meta, 'epoch', at.now) == 1 then
    redis.call('DEL', log)
  end
  if version_field ~= '' then
    redis.call('HSET', meta, version_field, version)
  end
  local epoch = redis.call('HGET', meta, 'epoch')
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local message = '{"id":' .. seq .. ',"epoch":' .. epoch .. ',' .. string.sub(json, 2)
  redis.call('XADD', log, 'MAXLEN', max_len, seq .. '-0', 'e', message, 't', at.now)
  local cutoff = at.now - tonumber(max_age)
  local keep_from = nil
  for _, entry in ipairs(redis.call('XRANGE', log, '-', '+', 'COUNT', 64)) do
    if tonumber(entry[2][4]) >= cutoff then break end
    keep_from = tonumber(string.match(entry[1], '^(%d+)')) + 1
  end
  if keep_from then
    redis.call('XTRIM', log, 'MINID', keep_from .. '-0')
  end
  redis.call('PEXPIRE', log, max_age)
  redis.call('PEXPIRE', meta, meta_ttl)
  if publish == '1' then
    redis.call('SPUBLISH', channel, message)
  end
  return seq, epoch, message
end
"#;

/// A feed's meta hash lives at least this long after its last event, so that an idle
/// user's epoch (and so the meaning of their cursors) outlives their history.
const META_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long a publish waits for `PUBLISH_REPLICAS` replicas to acknowledge its write.
pub const REPLICA_ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// The multi-instance bus: per-feed Redis Streams for history, sharded Pub/Sub for
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
    // Boxed: the engine enum stays small.
    scripts: Box<presence::Scripts>,
    fleet_script: Box<Script>,
    history: History,
    broadcast_heads: SharedReads,
}

impl RedisBus {
    /// Also starts, in `tasks`, the task that reads the broadcast history's head for
    /// the streams that open (see [`SharedReads`]), until `shutdown`. Every entry read
    /// from a history passes `gate`.
    pub fn new(
        redis: &Redis,
        retention: Retention,
        replicas: u64,
        gate: Gate,
        tasks: &mut Tasks,
        shutdown: CancellationToken,
    ) -> Self {
        let history = History::new(redis.client.clone(), gate);
        let (broadcast_heads, reads) = SharedReads::start(history.clone(), shutdown);
        tasks.spawn("broadcast head reads", reads);
        Self {
            client: redis.client.clone(),
            publisher: redis.publisher.clone(),
            replicas,
            retention,
            publish_script: Script::from_lua(format!("{APPEND_LUA}{PUBLISH_SCRIPT}")),
            scripts: Box::default(),
            fleet_script: fleet::script(),
            history,
            broadcast_heads,
        }
    }

    pub(super) fn retention(&self) -> Retention {
        self.retention
    }

    pub(super) async fn publish(
        &self,
        mut envelope: Envelope,
        guard: Guard<'_>,
    ) -> Result<Publication, BusError> {
        let feed = Feed::of(&envelope);
        let json = serde_json::to_string(&envelope).map_err(|e| BusError::Reply(e.to_string()))?;
        let max_age_ms = self.retention.max_age.as_millis().max(1);
        let mut keys = Vec::from(keys::history(&feed));
        if let Some(key) = guard.idempotency_key {
            keys.push(keys::idempotency(&feed, key));
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
                    keys::channel(&feed),
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
                self.publish_once_replicated(&feed, slot, seq, number(1)?, &json)
                    .await?;
            }
            return Ok(Publication::New(envelope));
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
            self.publish_once_replicated(&feed, slot, seq, number(1)?, &json)
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
        feed: &Feed,
        slot: u16,
        seq: u64,
        epoch: u64,
        json: &str,
    ) -> Result<(), BusError> {
        self.replicated(slot).await?;
        let message = format!(r#"{{"id":{seq},"epoch":{epoch},{}"#, &json[1..]);
        let _: i64 = self
            .publisher
            .spublish(keys::channel(feed), message)
            .await?;
        Ok(())
    }

    /// Waits until `replicas` replicas hold the writes made so far on the publishing
    /// connection to the master of `slot`.
    async fn replicated(&self, slot: u16) -> Result<(), BusError> {
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
        feed: &Feed,
        after: u64,
        limit: usize,
    ) -> Result<HistoryRead, BusError> {
        self.history.read(feed, after, limit).await
    }

    /// The heads of `feeds`, in order.
    pub(super) async fn heads(&self, feeds: &[Feed]) -> Result<Vec<Position>, BusError> {
        self.history.heads(feeds).await
    }

    /// The head of the broadcast history, read after this call began.
    pub(super) async fn broadcast_head(&self) -> Result<Position, BusError> {
        self.broadcast_heads.read().await
    }
}
