//! Presence on Redis. Per topic, in the topic's partition (so a change and its
//! announcement are one atomic step with the topic's history): who is here (a sorted set
//! scored by arrival) and how many instances hold each of them (a hash). Per partition:
//! what each instance holds there (a set of `<topic> <user>`), and each instance's last
//! heartbeat (a hash), by which any instance finds one that died and sweeps what it held.

use events::Position;
use fred::{
    interfaces::SetsInterface,
    types::{Value, scripts::Script},
    util::redis_keyslot,
};

use super::{APPEND_LUA, META_TTL_MS, RedisBus};
use crate::bus::{
    BusError, Feed, keys,
    presence::{Applied, PresenceOp, PresentList},
};

/// Changes of one instance's presence in one partition, and their announcements.
///
/// KEYS[1]: the partition's instances hash. KEYS[2]: what the instance holds there. Then
/// four per change: the topic's presence set and holders hash, its meta hash and history.
/// ARGV[1]: the instance. ARGV[2]: empty, or (a sweep of a dead instance) how old, in ms,
/// its last heartbeat must be: if it beat since, nothing is done and the reply is `{-1}`.
/// ARGV[3..6]: the history's most entries, longest age (ms), meta TTL (ms), and `1` to
/// publish from the script (`0`: the caller publishes once replicas hold the writes, and
/// the reply carries each channel and message after the counts). Then five per change:
/// `+` or `-`, the topic, the user, the announcement's envelope (empty: none) and the
/// topic's channel. Replies `{joined, left, [channel, message]...}`.
///
/// An instance enters a user once (the set), a user counts one more holder per instance
/// (the hash), and arrives when the first holds them and leaves when the last lets go:
/// whichever instances race, each arrival and departure happens, and is announced, once.
const APPLY_SCRIPT: &str = r#"
local instance = ARGV[1]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
-- Read only for an announcement (it costs an INFO).
local at = nil
if ARGV[2] ~= '' then
  local beat = redis.call('HGET', KEYS[1], instance)
  if beat and tonumber(beat) >= now - tonumber(ARGV[2]) then
    return {-1}
  end
end
local reply = {0, 0}
for i = 0, (#ARGV - 6) / 5 - 1 do
  local a, k = 6 + 5 * i, 2 + 4 * i
  local topic, user, json, channel = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local member = topic .. ' ' .. user
  local changed = false
  if ARGV[a + 1] == '+' then
    if redis.call('SADD', KEYS[2], member) == 1
        and redis.call('HINCRBY', KEYS[k + 2], user, 1) == 1 then
      redis.call('ZADD', KEYS[k + 1], now, user)
      reply[1] = reply[1] + 1
      changed = true
    end
  elseif redis.call('SREM', KEYS[2], member) == 1 then
    if redis.call('HINCRBY', KEYS[k + 2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[k + 2], user)
      redis.call('ZREM', KEYS[k + 1], user)
      reply[2] = reply[2] + 1
      changed = true
    end
  end
  if changed and json ~= '' then
    at = at or moment()
    local _, _, message = append(at, KEYS[k + 3], KEYS[k + 4], json, channel, ARGV[3], ARGV[4],
      ARGV[5], ARGV[6], '', '')
    if ARGV[6] == '0' then
      reply[#reply + 1] = channel
      reply[#reply + 1] = message
    end
  end
end
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('HDEL', KEYS[1], instance)
elseif ARGV[2] == '' then
  redis.call('HSET', KEYS[1], instance, now)
end
return reply
"#;

/// An instance's heartbeat in a partition where it holds ARGV[2] users in topics.
/// KEYS: the instances hash and the instance's set. Replies 1 when Redis does not hold
/// what the instance does (it restarted empty, a failover lost writes, or the instance
/// was swept as dead while it stalled): the instance then puts it right.
const BEAT_SCRIPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local known = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
local held = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], now)
if known and held == tonumber(ARGV[2]) then
  return 0
end
return 1
"#;

/// The instances of a partition (KEYS[1]) whose last heartbeat is more than ARGV[1] ms
/// old, by the Redis clock (so that the instances' clocks need not agree).
const DEAD_SCRIPT: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local dead = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now - tonumber(ARGV[1]) then
    dead[#dead + 1] = all[i]
  end
end
return dead
"#;

/// Who is in a topic (KEYS[1]; KEYS[2] its meta hash): `{count, epoch, seq, user, since,
/// ...}` with at most ARGV[1] users, earliest first, and the topic's head at that moment.
/// One round trip, whatever the count.
const READ_SCRIPT: &str = r#"
local head = redis.call('HMGET', KEYS[2], 'epoch', 'seq')
local reply = {redis.call('ZCARD', KEYS[1]), tonumber(head[1]) or 0, tonumber(head[2]) or 0}
if tonumber(ARGV[1]) > 0 then
  local listed = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
  for _, value in ipairs(listed) do
    reply[#reply + 1] = value
  end
end
return reply
"#;

/// The presence scripts.
#[derive(Debug)]
pub(in crate::bus) struct Scripts {
    apply: Script,
    beat: Script,
    dead: Script,
    read: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Self {
            apply: Script::from_lua(format!("{APPEND_LUA}{APPLY_SCRIPT}")),
            beat: Script::from_lua(BEAT_SCRIPT),
            dead: Script::from_lua(DEAD_SCRIPT),
            read: Script::from_lua(READ_SCRIPT),
        }
    }
}

fn number(reply: &[Value], i: usize) -> Result<i64, BusError> {
    reply
        .get(i)
        .and_then(Value::as_i64)
        .ok_or_else(|| BusError::Reply(format!("field {i} of a presence reply")))
}

impl RedisBus {
    /// Applies `ops` (all of topics in `partition`) for `instance`. When `sweeping` (a
    /// dead instance's users leaving), only if its last heartbeat is older than that many
    /// ms: `None` when it beat since.
    pub(in crate::bus) async fn presence_apply(
        &self,
        instance: &str,
        partition: u16,
        ops: &[PresenceOp],
        sweeping: Option<u64>,
    ) -> Result<Option<Applied>, BusError> {
        let durable = self.replicas > 0;
        let max_age_ms = self.retention.max_age.as_millis().max(1);
        let mut keys = vec![
            keys::presence_instances(partition),
            keys::presence_held(partition, instance),
        ];
        let mut args = vec![
            instance.to_string(),
            sweeping.map(|ms| ms.to_string()).unwrap_or_default(),
            self.retention.max_len.to_string(),
            max_age_ms.to_string(),
            u128::from(META_TTL_MS).max(max_age_ms).to_string(),
            if durable { "0" } else { "1" }.to_string(),
        ];
        for op in ops {
            let feed = Feed::Topic(op.topic.clone());
            keys.extend(keys::presence(&op.topic));
            keys.extend(keys::history(&feed));
            let json = match &op.announce {
                Some(envelope) => {
                    serde_json::to_string(envelope).map_err(|e| BusError::Reply(e.to_string()))?
                }
                None => String::new(),
            };
            args.extend([
                if op.enter { "+" } else { "-" }.to_string(),
                op.topic.clone(),
                op.user_id.clone(),
                json,
                keys::channel(&feed),
            ]);
        }
        let slot = redis_keyslot(keys[0].as_bytes());
        // The publishing connection: with PUBLISH_REPLICAS, `WAIT` covers its writes.
        let reply: Vec<Value> = self
            .scripts
            .apply
            .evalsha_with_reload(&self.publisher, keys, args)
            .await?;
        let joined = number(&reply, 0)?;
        if joined < 0 {
            return Ok(None);
        }
        let applied = Applied {
            joined: joined.unsigned_abs(),
            left: number(&reply, 1)?.unsigned_abs(),
        };
        let messages: Vec<(String, String)> = reply[2..]
            .chunks_exact(2)
            .filter_map(|pair| Some((pair[0].as_string()?, pair[1].as_string()?)))
            .collect();
        if durable && !messages.is_empty() {
            // Published once replicas hold them, as any event (see `publish`); if they
            // do not in time, the announcements stay in the history only, where a
            // stream finds them at the topic's next event.
            match self.replicated(slot).await {
                Ok(()) => {
                    for (channel, message) in messages {
                        let _: i64 = fred::interfaces::PubsubInterface::spublish(
                            &self.publisher,
                            channel,
                            message,
                        )
                        .await?;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "presence announcements not published live");
                }
            }
        }
        Ok(Some(applied))
    }

    /// `instance`'s heartbeat in `partition`, where it holds `held` users in topics;
    /// whether Redis holds something else there (then see [`RedisBus::presence_held`]).
    pub(in crate::bus) async fn presence_beat(
        &self,
        instance: &str,
        partition: u16,
        held: usize,
    ) -> Result<bool, BusError> {
        let reply: i64 = self
            .scripts
            .beat
            .evalsha_with_reload(
                &self.client,
                vec![
                    keys::presence_instances(partition),
                    keys::presence_held(partition, instance),
                ],
                vec![instance.to_string(), held.to_string()],
            )
            .await?;
        Ok(reply != 0)
    }

    /// The users in topics Redis says `instance` holds in `partition`.
    pub(in crate::bus) async fn presence_held(
        &self,
        instance: &str,
        partition: u16,
    ) -> Result<Vec<(String, String)>, BusError> {
        let members: Vec<String> = self
            .client
            .smembers(keys::presence_held(partition, instance))
            .await?;
        Ok(members
            .into_iter()
            .filter_map(|member| {
                let (topic, user) = member.split_once(' ')?;
                Some((topic.to_string(), user.to_string()))
            })
            .collect())
    }

    /// The instances holding presence in `partition` whose last heartbeat is more than
    /// `stale_ms` old.
    pub(in crate::bus) async fn presence_dead(
        &self,
        partition: u16,
        stale_ms: u64,
    ) -> Result<Vec<String>, BusError> {
        let dead: Vec<String> = self
            .scripts
            .dead
            .evalsha_with_reload(
                &self.client,
                vec![keys::presence_instances(partition)],
                vec![stale_ms.to_string()],
            )
            .await?;
        Ok(dead)
    }

    /// Who is in `topic`: the count and the `max` earliest arrivals, in one round trip.
    pub(in crate::bus) async fn presence_of(
        &self,
        topic: &str,
        max: usize,
    ) -> Result<PresentList, BusError> {
        let [here, _] = keys::presence(topic);
        let [meta, _] = keys::history(&Feed::Topic(topic.to_string()));
        let reply: Vec<Value> = self
            .scripts
            .read
            .evalsha_with_reload(&self.client, vec![here, meta], vec![max.to_string()])
            .await?;
        let count = number(&reply, 0)?.unsigned_abs();
        let head = Position::new(
            number(&reply, 1)?.unsigned_abs(),
            number(&reply, 2)?.unsigned_abs(),
        );
        let users = reply[3..]
            .chunks_exact(2)
            .filter_map(|pair| {
                let user = pair[0].as_string()?;
                let since = pair[1].as_string()?.parse::<f64>().ok()?;
                // Scores are milliseconds: whole, and far below 2^53.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Some((user, since.max(0.0) as u64))
            })
            .collect();
        Ok(PresentList { count, users, head })
    }
}
