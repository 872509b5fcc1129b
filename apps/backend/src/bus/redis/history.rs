//! Reads of a feed's history: the read script, and the broadcast head read once for
//! all the streams that open together.

use std::future::Future;

use events::{Envelope, Position};
use fred::{
    clients::Client,
    interfaces::ClientLike,
    types::{Value, scripts::Script},
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::super::{BusError, Feed, HistoryRead, keys};
use crate::admission::{Gate, Source};

/// Reads a feed's head and the kept events after a sequence number, atomically.
///
/// KEYS as above. ARGV[1]: the first entry id to read (`<seq>-0`, computed by the caller:
/// Lua's numbers are doubles, and `seq + 1` of a large client-chosen number would turn
/// into `1e+14`, which Redis refuses). ARGV[2]: at most this many events (0: head only).
/// Returns `{epoch, seq, oldest, envelope...}`, zeros when the feed has no history.
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

/// The head (`epoch`, `seq`) of each history whose meta hash is in `KEYS`: zeros for one
/// that does not exist.
const HEADS_SCRIPT: &str = r#"
local reply = {}
for _, key in ipairs(KEYS) do
  local meta = redis.call('HMGET', key, 'epoch', 'seq')
  reply[#reply + 1] = tonumber(meta[1]) or 0
  reply[#reply + 1] = tonumber(meta[2]) or 0
end
return reply
"#;

/// Reads of a feed's history (the read script) and of several feeds' heads at once.
#[derive(Debug, Clone)]
pub(in crate::bus) struct History {
    client: Client,
    script: Script,
    heads: Script,
    /// What every entry read passes.
    gate: Gate,
}

impl History {
    pub(in crate::bus) fn new(client: Client, gate: Gate) -> Self {
        Self {
            client,
            script: Script::from_lua(READ_SCRIPT),
            heads: Script::from_lua(HEADS_SCRIPT),
            gate,
        }
    }

    pub(super) async fn read(
        &self,
        feed: &Feed,
        after: u64,
        limit: usize,
    ) -> Result<HistoryRead, BusError> {
        // Past the last possible id there is nothing to read, only the head.
        let (from, limit) = match after.checked_add(1) {
            Some(next) => (format!("{next}-0"), limit),
            None => ("0-0".to_string(), 0),
        };
        let reply: Vec<Value> = self
            .script
            .evalsha_with_reload(
                &self.client,
                Vec::from(keys::history(feed)),
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
        // An entry that breaks the rules (written by hand, or by an older version) is
        // skipped and counted: one bad entry must not make every read of the history
        // fail, and so its streams reconnect and read it again, forever.
        let entries = &reply[3..];
        let events: Vec<Envelope> = entries
            .iter()
            .filter_map(|value| {
                let bytes = value.as_bytes().unwrap_or_default();
                self.gate.envelope(bytes, Source::History)
            })
            .collect();
        Ok(HistoryRead {
            head,
            oldest,
            skipped: entries.len() - events.len(),
            events,
        })
    }
}

impl History {
    /// The heads of `feeds`, in order: one script call for all of them on one Redis,
    /// one per partition (all at once) on a cluster, where a call covers one slot.
    pub(in crate::bus) async fn heads(&self, feeds: &[Feed]) -> Result<Vec<Position>, BusError> {
        if !self.client.is_clustered() {
            return self.heads_in_one_slot(feeds).await;
        }
        let mut by_partition: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
        for (i, feed) in feeds.iter().enumerate() {
            by_partition
                .entry(keys::partition(feed))
                .or_default()
                .push(i);
        }
        let reads = by_partition.into_values().map(|indexes| async move {
            let group: Vec<Feed> = indexes.iter().map(|&i| feeds[i].clone()).collect();
            Ok::<_, BusError>((indexes, self.heads_in_one_slot(&group).await?))
        });
        let mut heads = vec![Position::default(); feeds.len()];
        for (indexes, read) in futures_util::future::try_join_all(reads).await? {
            for (i, head) in indexes.into_iter().zip(read) {
                heads[i] = head;
            }
        }
        Ok(heads)
    }

    /// The heads of `feeds`, all of one slot (or on one Redis), in one call.
    pub(in crate::bus) async fn heads_in_one_slot(
        &self,
        feeds: &[Feed],
    ) -> Result<Vec<Position>, BusError> {
        if feeds.is_empty() {
            return Ok(Vec::new());
        }
        let metas: Vec<String> = feeds
            .iter()
            .map(|feed| {
                let [meta, _] = keys::history(feed);
                meta
            })
            .collect();
        let reply: Vec<Value> = self
            .heads
            .evalsha_with_reload(&self.client, metas, Vec::<String>::new())
            .await?;
        let numbers: Vec<u64> = reply.iter().filter_map(Value::as_u64).collect();
        if numbers.len() != 2 * feeds.len() {
            return Err(BusError::Reply("unexpected reply to the heads read".into()));
        }
        Ok(numbers
            .chunks(2)
            .map(|pair| Position::new(pair[0], pair[1]))
            .collect())
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
pub(super) struct SharedReads {
    /// Bounded: when it is full, an asker waits for room (the reads are behind, and one
    /// more asker queued would only wait longer), so a storm cannot grow it.
    asks: mpsc::Sender<oneshot::Sender<Result<Position, BusError>>>,
}

/// Askers queued for the next shared read at most; more wait for room.
const MAX_ASKERS: usize = 4096;

impl SharedReads {
    /// The reads' handle, and the task that reads for it until `shutdown`.
    pub(super) fn start(
        history: History,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (asks, mut queue) = mpsc::channel::<oneshot::Sender<_>>(MAX_ASKERS);
        let reads = async move {
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
                    .read(&Feed::Broadcast, u64::MAX, 0)
                    .await
                    .map(|read| read.head);
                for ask in waiting {
                    // An asker that gave up (its client left) needs no answer.
                    let _ = ask.send(head.clone());
                }
            }
        };
        (Self { asks }, reads)
    }

    pub(super) async fn read(&self) -> Result<Position, BusError> {
        let (answer, answered) = oneshot::channel();
        self.asks
            .send(answer)
            .await
            .map_err(|_| BusError::Stopping)?;
        answered.await.map_err(|_| BusError::Stopping)?
    }
}
