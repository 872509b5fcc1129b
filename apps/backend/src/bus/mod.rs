//! Carries events from the instance that accepts them to every instance holding a stream
//! of their user, and keeps each history so a stream can replay what it missed.
//!
//! Two implementations behind one interface: Redis (Streams for history, sharded Pub/Sub
//! for fan-out, a single node or a Cluster) when Redis is configured, and an in-process one on a single node. Nothing
//! above the bus knows which one runs.

mod keys;
mod local;
mod migrate;
mod presence;
mod redis;
mod subscriptions;

use std::{sync::Arc, time::Duration};

use events::{Control, Envelope, Position};
use tokio_util::sync::CancellationToken;

pub use crate::feed::Feed;
use crate::{clock::now_millis, metrics::Metrics};

pub use self::{
    local::LocalBus,
    migrate::{Migrated, migrate_partitions},
    presence::{Applied, PresenceOp, PresentList},
    redis::{Listening, RedisBus, start_relay},
};

/// The bus of one instance: an engine, and what it stamps and counts on the way.
#[derive(Debug)]
pub struct Bus {
    engine: Engine,
    server_id: String,
    metrics: Arc<Metrics>,
}

/// What carries events between instances and keeps their histories: this process
/// alone, or Redis.
#[derive(Debug)]
pub enum Engine {
    Local(LocalBus),
    Redis(RedisBus),
}

/// How long an idempotency key is remembered after its publish.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(600);

/// How often the in-process bus drops expired histories.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Conditions on a publish, checked in the same atomic step that would publish.
#[derive(Debug, Clone, Copy, Default)]
pub struct Guard<'a> {
    /// Publish at most once per key and feed within [`IDEMPOTENCY_TTL`].
    pub idempotency_key: Option<&'a str>,
    /// Publish only if no event of the same type in the feed carried this version or a
    /// newer one: an event that reports a state (a count, say) never follows a newer one.
    /// Below 2^53: Redis compares versions as Lua numbers.
    pub version: Option<u64>,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq)]
pub enum Publication {
    /// Published now: the event as delivered. (Not `frame::Published`, which is an event
    /// as the hub fans it out.)
    New(Envelope),
    /// The idempotency key had been used, so nothing was published: the first call's
    /// event, as delivered.
    Replayed(Envelope),
    /// A newer version had been published, so nothing was.
    Superseded,
}

/// How much history is kept per feed: both limits apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_len: u64,
    pub max_age: Duration,
}

/// A feed's history as read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryRead {
    /// The current epoch and the last sequence number given; epoch 0: no history.
    pub head: Position,
    /// The oldest sequence number still kept; 0 when nothing is kept.
    pub oldest: u64,
    /// The kept events after the sequence number asked for, in order (at most the
    /// number asked for).
    pub events: Vec<Envelope>,
    /// Entries read but left out of `events` because they break the event rules (see
    /// `admission::Gate`): the stream must not skip them silently.
    pub skipped: usize,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis returned an unexpected reply: {0}")]
    Reply(String),
    /// `PUBLISH_REPLICAS` asked for more replicas to acknowledge the write than did in
    /// time: the event was not published, and may or may not survive a failover.
    #[error("{acknowledged} of {wanted} replicas acknowledged the write in time")]
    NotReplicated { acknowledged: u64, wanted: u64 },
    /// The instance is stopping: its background reads have ended.
    #[error("the instance is stopping")]
    Stopping,
}

impl Bus {
    pub fn new(engine: Engine, server_id: impl Into<String>, metrics: Arc<Metrics>) -> Self {
        Self {
            engine,
            server_id: server_id.into(),
            metrics,
        }
    }

    /// Publishes `envelope` to its user's streams (or to every stream, for a broadcast)
    /// on every instance, and appends it to the feed's history. Stamps it with this
    /// instance's id, the time, and its epoch and position in the feed's sequence, all
    /// in one atomic step; returns it as delivered.
    pub async fn publish(&self, envelope: Envelope) -> Result<Envelope, BusError> {
        match self.publish_guarded(envelope, Guard::default()).await? {
            Publication::New(envelope) | Publication::Replayed(envelope) => Ok(envelope),
            Publication::Superseded => Err(BusError::Reply(
                "an unversioned publish was superseded".into(),
            )),
        }
    }

    /// [`Bus::publish`], if `guard` allows. With an idempotency key, a repeated key
    /// publishes nothing and returns the event the first call published, so a publisher
    /// that got no answer (a timeout, a 503 while Redis stalled, and Redis ran the write
    /// after all) can retry safely. With a version, an older state is never published
    /// after a newer one, whichever instance publishes it.
    pub async fn publish_guarded(
        &self,
        mut envelope: Envelope,
        guard: Guard<'_>,
    ) -> Result<Publication, BusError> {
        envelope.id = None;
        envelope.epoch = None;
        envelope.server_id = Some(self.server_id.clone());
        envelope.published_at = Some(now_millis());
        let publication = match &self.engine {
            Engine::Local(bus) => bus.publish(envelope, guard),
            Engine::Redis(bus) => bus.publish(envelope, guard).await?,
        };
        if let Publication::New(envelope) = &publication {
            self.metrics
                .events_published
                .get_or_create(&self.metrics.event_labels(&envelope.event_type))
                .inc();
        }
        Ok(publication)
    }

    /// Whether histories are kept in this process, and so must be swept
    /// ([`Bus::expire_histories`]); Redis expires its keys itself.
    pub fn keeps_histories_in_memory(&self) -> bool {
        matches!(self.engine, Engine::Local(_))
    }

    /// Drops expired histories every [`SWEEP_INTERVAL`] until `shutdown`. Only the
    /// in-process bus needs it (returns at once for the other).
    pub async fn expire_histories(self: Arc<Self>, shutdown: CancellationToken) {
        let Engine::Local(bus) = &self.engine else {
            return;
        };
        let mut interval = tokio::time::interval(SWEEP_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    let held = bus.sweep();
                    tracing::debug!(histories = held, "expired histories dropped");
                }
            }
        }
    }

    /// Ends every stream of `user_id` on every instance, each told `reason`.
    pub async fn disconnect(&self, user_id: &str, reason: &str) -> Result<(), BusError> {
        match &self.engine {
            Engine::Local(bus) => {
                bus.hub().disconnect(user_id, reason);
                Ok(())
            }
            Engine::Redis(bus) => {
                bus.control(&Control::Disconnect {
                    user_id: user_id.to_string(),
                    reason: reason.to_string(),
                })
                .await
            }
        }
    }

    /// The head of `feed`'s history, and up to `limit` kept events after sequence
    /// number `after`.
    pub async fn read(
        &self,
        feed: &Feed,
        after: u64,
        limit: usize,
    ) -> Result<HistoryRead, BusError> {
        match &self.engine {
            Engine::Local(bus) => Ok(bus.read(feed, after, limit)),
            Engine::Redis(bus) => bus.read(feed, after, limit).await,
        }
    }

    /// The heads of `feeds` (their current epoch and last sequence number), in order, in
    /// as few reads as the engine allows.
    pub async fn heads(&self, feeds: &[Feed]) -> Result<Vec<Position>, BusError> {
        match &self.engine {
            Engine::Local(bus) => Ok(feeds
                .iter()
                .map(|feed| bus.read(feed, u64::MAX, 0).head)
                .collect()),
            Engine::Redis(bus) => bus.heads(feeds).await,
        }
    }

    /// The head of the broadcast history, read after this call began (so, for a stream
    /// registered before the call, everything after it reaches the stream live).
    /// Streams opening together share one read.
    pub async fn broadcast_head(&self) -> Result<Position, BusError> {
        match &self.engine {
            Engine::Local(bus) => Ok(bus.read(&Feed::Broadcast, u64::MAX, 0).head),
            Engine::Redis(bus) => bus.broadcast_head().await,
        }
    }

    /// How many partitions presence is kept in (1 in-process; see `keys` for Redis).
    pub fn presence_partitions(&self) -> u16 {
        match &self.engine {
            Engine::Local(_) => 1,
            Engine::Redis(_) => keys::PARTITIONS,
        }
    }

    /// The partition of `topic`'s presence.
    pub fn presence_partition(&self, topic: &str) -> u16 {
        match &self.engine {
            Engine::Local(_) => 0,
            Engine::Redis(_) => keys::partition(&Feed::Topic(topic.to_string())),
        }
    }

    /// Whether other instances share presence (and so heartbeats and sweeps matter).
    pub fn shares_presence(&self) -> bool {
        matches!(self.engine, Engine::Redis(_))
    }

    /// Tells the engine that `instance` starts or stops holding users in topics (`ops`,
    /// all of one partition), and publishes the arrivals and departures this makes,
    /// stamped like any event, in the same atomic step. When `sweeping` (the instance is
    /// dead), only if its last heartbeat is more than that many ms old: `None` if not.
    pub async fn presence_apply(
        &self,
        instance: &str,
        partition: u16,
        mut ops: Vec<PresenceOp>,
        sweeping: Option<u64>,
    ) -> Result<Option<Applied>, BusError> {
        for announce in ops.iter_mut().filter_map(|op| op.announce.as_mut()) {
            announce.id = None;
            announce.epoch = None;
            announce.server_id = Some(self.server_id.clone());
            announce.published_at = Some(now_millis());
        }
        match &self.engine {
            Engine::Local(bus) => Ok(Some(bus.presence_apply(ops))),
            Engine::Redis(bus) => {
                bus.presence_apply(instance, partition, &ops, sweeping)
                    .await
            }
        }
    }

    /// `instance`'s heartbeat in `partition`, where it holds `held` users in topics:
    /// whether the engine holds something else (see [`Bus::presence_held`]).
    pub async fn presence_beat(
        &self,
        instance: &str,
        partition: u16,
        held: usize,
    ) -> Result<bool, BusError> {
        match &self.engine {
            Engine::Local(_) => Ok(false),
            Engine::Redis(bus) => bus.presence_beat(instance, partition, held).await,
        }
    }

    /// The users in topics (`(topic, user)`) the engine says `instance` holds in
    /// `partition`.
    pub async fn presence_held(
        &self,
        instance: &str,
        partition: u16,
    ) -> Result<Vec<(String, String)>, BusError> {
        match &self.engine {
            Engine::Local(_) => Ok(Vec::new()),
            Engine::Redis(bus) => bus.presence_held(instance, partition).await,
        }
    }

    /// The instances holding presence in `partition` that have not beat for `stale_ms`.
    pub async fn presence_dead(
        &self,
        partition: u16,
        stale_ms: u64,
    ) -> Result<Vec<String>, BusError> {
        match &self.engine {
            Engine::Local(_) => Ok(Vec::new()),
            Engine::Redis(bus) => bus.presence_dead(partition, stale_ms).await,
        }
    }

    /// Who is in `topic`: how many, and the `max` who arrived first, in one read.
    pub async fn presence_of(&self, topic: &str, max: usize) -> Result<PresentList, BusError> {
        match &self.engine {
            Engine::Local(bus) => Ok(bus.presence_of(topic, max)),
            Engine::Redis(bus) => bus.presence_of(topic, max).await,
        }
    }

    /// `instance` holds `held.0` streams and has room for `held.1` more: the `(streams,
    /// room)` of every instance of the fleet heard from within `stale_ms` (this one
    /// included); on a single node, this one's alone.
    pub async fn fleet_beat(
        &self,
        instance: &str,
        held: (u64, u64),
        stale_ms: u64,
    ) -> Result<Vec<(u64, u64)>, BusError> {
        match &self.engine {
            Engine::Local(_) => Ok(vec![held]),
            Engine::Redis(bus) => bus.fleet_beat(instance, held, stale_ms).await,
        }
    }

    /// `instance` leaves the fleet (it is stopping).
    pub async fn fleet_leave(&self, instance: &str) -> Result<(), BusError> {
        match &self.engine {
            Engine::Local(_) => Ok(()),
            Engine::Redis(bus) => bus.fleet_leave(instance).await,
        }
    }

    /// A short name for logs: "redis" or "in-process".
    pub fn kind(&self) -> &'static str {
        match &self.engine {
            Engine::Local(_) => "in-process",
            Engine::Redis(_) => "redis",
        }
    }

    pub fn retention(&self) -> Retention {
        match &self.engine {
            Engine::Local(bus) => bus.retention(),
            Engine::Redis(bus) => bus.retention(),
        }
    }
}
