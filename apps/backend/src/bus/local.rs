use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard, PoisonError},
};

use events::{Envelope, Position};
use lru::LruCache;

use super::{
    Feed, Guard, HistoryRead, IDEMPOTENCY_TTL, Publication, Retention,
    presence::{Applied, LocalPresence, PresenceOp, PresentList},
};
use crate::clock::now_millis;
use crate::hub::Hub;

/// The single-node bus: publishing appends to an in-memory ring per feed and delivers
/// straight to this instance's hub.
///
/// Memory is bounded two ways. A ring whose events have all expired, whose idempotency
/// keys have too, and whose user has no stream open here is dropped by [`LocalBus::sweep`]
/// (its next event starts a new history, with a new epoch). And all rings together keep
/// at most `max_bytes` of events: past that, the rings published to least recently lose
/// their events first, as if trimmed; a client resuming into them is told to resync.
#[derive(Debug)]
pub struct LocalBus {
    hub: Hub,
    retention: Retention,
    max_bytes: usize,
    state: Mutex<State>,
    presence: LocalPresence,
}

#[derive(Debug)]
struct State {
    /// Least recently published first.
    rings: LruCache<Feed, Ring>,
    /// What the kept events and keys of every ring take, as counted by [`cost`].
    bytes: usize,
    /// The most rings held since the table was last rebuilt.
    peak: usize,
    /// The last epoch given to a ring. Each history life gets its own, later than any
    /// before it in this process, so a cursor never reads as a position in a newer life.
    last_epoch: u64,
}

#[derive(Debug)]
struct Ring {
    epoch: u64,
    last_seq: u64,
    events: VecDeque<Envelope>,
    /// Idempotency keys used in the last [`IDEMPOTENCY_TTL`], oldest first: the key, the
    /// sequence number it published, and when (ms).
    keys: VecDeque<(String, u64, u64)>,
    /// The newest version published per event type (see [`Guard::version`]).
    versions: HashMap<String, u64>,
}

/// What an event is counted as in the memory bound: its JSON, roughly, and the
/// bookkeeping around it.
fn cost(envelope: &Envelope) -> usize {
    const OVERHEAD: usize = 160;
    envelope.data.json().len()
        + envelope.user_id.len()
        + envelope.topic.as_ref().map_or(0, String::len)
        + envelope.publisher_id.as_ref().map_or(0, String::len)
        + envelope.event_type.len()
        + envelope.server_id.as_ref().map_or(0, String::len)
        + OVERHEAD
}

fn key_cost(key: &str) -> usize {
    key.len() + 48
}

impl LocalBus {
    pub fn new(hub: Hub, retention: Retention, max_bytes: usize) -> Self {
        Self {
            hub,
            retention,
            max_bytes,
            state: Mutex::new(State {
                rings: LruCache::unbounded(),
                bytes: 0,
                peak: 0,
                last_epoch: 0,
            }),
            presence: LocalPresence::default(),
        }
    }

    pub(super) fn retention(&self) -> Retention {
        self.retention
    }

    pub(super) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Applies presence changes; their announcements are published like any event.
    pub(super) fn presence_apply(&self, ops: Vec<PresenceOp>) -> Applied {
        let (applied, announcements) = self.presence.apply(ops);
        for envelope in announcements {
            self.publish(envelope, Guard::default());
        }
        applied
    }

    /// Who is in `topic`, with the topic's head read first: announcements are published
    /// after the change they announce, so every one up to the head is counted.
    pub(super) fn presence_of(&self, topic: &str, max: usize) -> PresentList {
        let head = self.read(&Feed::Topic(topic.to_string()), u64::MAX, 0).head;
        PresentList {
            head,
            ..self.presence.of(topic, max)
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state whole before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn publish(&self, mut envelope: Envelope, guard: Guard<'_>) -> Publication {
        // Numbering, appending and delivery happen under one lock, so that concurrent
        // publishers to one feed deliver in the order of their sequence numbers.
        let mut state = self.state();
        let now = now_millis();
        let feed = Feed::of(&envelope);
        let State {
            rings,
            bytes,
            last_epoch,
            ..
        } = &mut *state;
        let ring = rings.get_or_insert_mut(feed, || {
            // In microseconds, so that even bursts of new histories stay at the wall
            // clock: a restarted process never hands out an epoch of the last one.
            let epoch = now.saturating_mul(1000).max(*last_epoch + 1);
            *last_epoch = epoch;
            Ring::new(epoch)
        });
        *bytes = bytes.saturating_sub(ring.expire_keys(now));
        if let Some(key) = guard.idempotency_key
            && let Some(&(_, seq, _)) = ring.keys.iter().find(|(used, _, _)| used == key)
        {
            let kept = ring.events.iter().find(|e| e.id == Some(seq)).cloned();
            envelope.id = Some(seq);
            envelope.epoch = Some(ring.epoch);
            return Publication::Replayed(kept.unwrap_or(envelope));
        }
        if let Some(version) = guard.version {
            let newest = ring.versions.get(&envelope.event_type);
            if newest.is_some_and(|&newest| version <= newest) {
                return Publication::Superseded;
            }
            ring.versions.insert(envelope.event_type.clone(), version);
        }
        ring.last_seq += 1;
        envelope.id = Some(ring.last_seq);
        envelope.epoch = Some(ring.epoch);
        if let Some(key) = guard.idempotency_key {
            ring.keys.push_back((key.to_string(), ring.last_seq, now));
            *bytes += key_cost(key);
            // Bounded like the history itself.
            while ring.keys.len() as u64 > self.retention.max_len {
                *bytes =
                    bytes.saturating_sub(ring.keys.pop_front().map_or(0, |(k, _, _)| key_cost(&k)));
            }
        }
        *bytes += cost(&envelope);
        ring.events.push_back(envelope.clone());
        *bytes = bytes.saturating_sub(ring.trim(self.retention, now));
        self.evict(&mut state);
        // Delivered once the histories' lock is let go: delivering writes to sockets,
        // and every publish and every history read waits on that lock. In the history
        // before it is delivered, so a stream that finds a gap reads it there.
        drop(state);
        self.hub.deliver(&envelope);
        Publication::New(envelope)
    }

    pub(super) fn read(&self, feed: &Feed, after: u64, limit: usize) -> HistoryRead {
        let mut state = self.state();
        let State { rings, bytes, .. } = &mut *state;
        // A read is not a publish: it leaves the ring's place in the eviction order.
        let Some(ring) = rings.peek_mut(feed) else {
            return HistoryRead::default();
        };
        *bytes = bytes.saturating_sub(ring.trim(self.retention, now_millis()));
        HistoryRead {
            skipped: 0,
            head: Position::new(ring.epoch, ring.last_seq),
            oldest: ring.events.front().and_then(|e| e.id).unwrap_or(0),
            events: ring
                .events
                .iter()
                .filter(|e| e.id.is_some_and(|id| id > after))
                .take(limit)
                .cloned()
                .collect(),
        }
    }

    /// Drops what has expired: old events and keys everywhere, and every ring left with
    /// nothing that a client could still need (no events, no live keys, no stream of its
    /// user open here). Returns how many rings are left.
    pub fn sweep(&self) -> usize {
        let mut state = self.state();
        let now = now_millis();
        let State {
            rings, bytes, peak, ..
        } = &mut *state;
        let mut idle = Vec::new();
        for (feed, ring) in rings.iter_mut() {
            let freed = ring.trim(self.retention, now) + ring.expire_keys(now);
            *bytes = bytes.saturating_sub(freed);
            if ring.events.is_empty() && ring.keys.is_empty() && !self.has_streams(feed) {
                idle.push(feed.clone());
            }
        }
        for feed in &idle {
            rings.pop(feed);
        }
        if rings.len() * 4 < *peak {
            // A hash table keeps its size when emptied: rebuild it, in the same order, so
            // the memory of the dropped rings comes back.
            let mut rebuilt = LruCache::unbounded();
            while let Some((feed, ring)) = rings.pop_lru() {
                rebuilt.put(feed, ring);
            }
            *rings = rebuilt;
            *peak = rings.len();
        }
        rings.len()
    }

    /// Whether a stream that reads `feed` is open here, and so may hold a cursor in it.
    fn has_streams(&self, feed: &Feed) -> bool {
        // The broadcast history is every stream's: kept while any is open.
        self.hub.has_streams(feed)
    }

    /// Past the memory bound, empties the least recently published rings until the
    /// events kept fit again. Their clients resume with a resync, as after any trim.
    fn evict(&self, state: &mut State) {
        state.peak = state.peak.max(state.rings.len());
        // Each ring is looked at most once: rings with streams stay, emptied.
        for _ in 0..state.rings.len() {
            if state.bytes <= self.max_bytes {
                return;
            }
            let Some((feed, mut ring)) = state.rings.pop_lru() else {
                return;
            };
            let freed = ring.events.iter().map(cost).sum::<usize>();
            state.bytes = state.bytes.saturating_sub(freed);
            tracing::warn!(
                ?feed,
                freed,
                "history memory bound reached (HISTORY_MAX_MEMORY_MIB): dropped the events \
                 of the least recently published history"
            );
            // Its streams' cursors stay meaningful while its numbering stays, and a retry
            // of a recent publish stays a retry while its key does: such a ring loses only
            // its events (keys are few, and expire within IDEMPOTENCY_TTL anyway).
            if self.has_streams(&feed) || !ring.keys.is_empty() {
                ring.events.clear();
                state.rings.put(feed, ring);
            }
        }
    }
}

impl Ring {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            last_seq: 0,
            events: VecDeque::new(),
            keys: VecDeque::new(),
            versions: HashMap::new(),
        }
    }

    /// Drops events beyond the retention's length or age; returns the bytes freed.
    fn trim(&mut self, retention: Retention, now: u64) -> usize {
        let max_age_ms = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now.saturating_sub(max_age_ms);
        let mut freed = 0;
        while self.events.len() as u64 > retention.max_len
            || self
                .events
                .front()
                .is_some_and(|e| e.published_at.unwrap_or(0) < cutoff)
        {
            freed += self.events.pop_front().as_ref().map_or(0, cost);
        }
        freed
    }

    /// Forgets idempotency keys older than [`IDEMPOTENCY_TTL`]; returns the bytes freed.
    fn expire_keys(&mut self, now: u64) -> usize {
        let ttl = u64::try_from(IDEMPOTENCY_TTL.as_millis()).unwrap_or(u64::MAX);
        let mut freed = 0;
        while self
            .keys
            .front()
            .is_some_and(|(_, _, at)| now.saturating_sub(*at) > ttl)
        {
            freed += self
                .keys
                .pop_front()
                .map_or(0, |(key, _, _)| key_cost(&key));
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::Value;

    fn bus_with(max_len: u64, max_age: Duration, max_bytes: usize) -> LocalBus {
        let retention = Retention { max_len, max_age };
        LocalBus::new(
            Hub::new(
                crate::hub::Capacity::with_queue(8),
                std::sync::Arc::default(),
            ),
            retention,
            max_bytes,
        )
    }

    fn bus(max_len: u64) -> LocalBus {
        bus_with(max_len, Duration::from_secs(60), usize::MAX)
    }

    fn event(user: &str) -> Envelope {
        Envelope {
            published_at: Some(now_millis()),
            ..Envelope::new(user, "a.b", Value::Null)
        }
    }

    fn publish(bus: &LocalBus, user: &str) -> Envelope {
        match bus.publish(event(user), Guard::default()) {
            Publication::New(envelope) => envelope,
            other => panic!("not published: {other:?}"),
        }
    }

    #[test]
    fn numbers_each_topic_separately_and_keeps_a_capped_history() {
        let bus = bus(3);
        for _ in 0..5 {
            publish(&bus, "alice");
        }
        assert_eq!(publish(&bus, "bob").id, Some(1));

        let read = bus.read(&Feed::User("alice".into()), 3, 10);
        assert_eq!(read.head.seq, 5);
        assert_eq!(read.oldest, 3, "only the last 3 are kept");
        let ids: Vec<_> = read.events.iter().filter_map(|e| e.id).collect();
        assert_eq!(ids, [4, 5]);
        assert_eq!(bus.read(&Feed::Broadcast, 0, 10), HistoryRead::default());
    }

    #[test]
    fn every_history_has_an_epoch_of_its_own() {
        let bus = bus(3);
        let alice = publish(&bus, "alice");
        let bob = publish(&bus, "bob");
        assert_ne!(alice.epoch, bob.epoch, "one user's cursor is no other's");
    }

    #[test]
    fn a_repeated_idempotency_key_publishes_nothing_and_returns_the_first_event() {
        let bus = bus(10);
        let event = |n: i64| Envelope {
            published_at: Some(now_millis()),
            ..Envelope::new("alice", "a.b", serde_json::json!({ "n": n }))
        };
        let key = |key| Guard {
            idempotency_key: Some(key),
            ..Guard::default()
        };
        let Publication::New(first) = bus.publish(event(1), key("k1")) else {
            panic!("published")
        };
        assert_eq!(
            bus.publish(event(2), key("k1")),
            Publication::Replayed(first.clone()),
            "the first event, as delivered"
        );
        let Publication::New(other) = bus.publish(event(3), key("k2")) else {
            panic!("published")
        };
        assert_eq!(other.id, Some(2), "only one event per key");
        let elsewhere = bus.publish(
            Envelope {
                user_id: "bob".into(),
                ..event(4)
            },
            key("k1"),
        );
        assert!(
            matches!(elsewhere, Publication::New(_)),
            "keys are per feed"
        );
    }

    #[test]
    fn an_older_version_never_follows_a_newer_one() {
        let bus = bus(10);
        let versioned = |version| Guard {
            version: Some(version),
            ..Guard::default()
        };
        assert!(matches!(
            bus.publish(event("u"), versioned(81)),
            Publication::New(_)
        ));
        assert_eq!(
            bus.publish(event("u"), versioned(34)),
            Publication::Superseded
        );
        assert_eq!(
            bus.publish(event("u"), versioned(81)),
            Publication::Superseded
        );
        assert!(matches!(
            bus.publish(event("u"), versioned(82)),
            Publication::New(_)
        ));
    }

    #[test]
    fn expired_histories_of_users_without_streams_are_dropped() {
        let bus = bus_with(10, Duration::from_millis(50), usize::MAX);
        for user in 0..1000 {
            publish(&bus, &format!("user-{user}"));
        }
        let _open = bus.hub.open("watched", &Default::default()).expect("opens");
        let first = publish(&bus, "watched");
        assert_eq!(bus.sweep(), 1001, "nothing has expired yet");
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            bus.sweep(),
            1,
            "only the history with an open stream is left"
        );
        assert_eq!(bus.state().bytes, 0, "no event is counted any more");
        let next = publish(&bus, "watched");
        assert_eq!(
            (next.epoch, next.id),
            (first.epoch, Some(2)),
            "an open stream's history keeps its numbering"
        );
        let again = publish(&bus, "user-8");
        assert_eq!(again.id, Some(1), "a dropped history starts anew");
        assert!(again.epoch > first.epoch, "with a new epoch");
    }

    #[test]
    fn past_the_memory_bound_the_least_recently_published_history_empties_first() {
        let one = cost(&Envelope {
            server_id: None,
            ..event("user-0")
        });
        let bus = bus_with(100, Duration::from_secs(60), 10 * one);
        for user in 0..5 {
            publish(&bus, &format!("user-{user}"));
            publish(&bus, &format!("user-{user}"));
        }
        publish(&bus, "user-0");
        let kept = |user: &str| bus.read(&Feed::User(user.into()), 0, 100).events.len();
        assert_eq!(
            kept("user-1"),
            0,
            "the least recently published lost its events"
        );
        assert_eq!(
            kept("user-0"),
            3,
            "the one just published kept all of its events"
        );
        assert_eq!(kept("user-4"), 2);
        assert!(bus.state().bytes <= 10 * one);
        let next = publish(&bus, "user-1");
        assert_eq!(next.id, Some(1), "a new history: a resuming client resyncs");

        // A history with a live idempotency key loses its events, not the key.
        let keyed = Guard {
            idempotency_key: Some("k"),
            ..Guard::default()
        };
        let Publication::New(first) = bus.publish(event("user-9"), keyed) else {
            panic!("published")
        };
        for user in 10..30 {
            publish(&bus, &format!("user-{user}"));
        }
        assert_eq!(kept("user-9"), 0, "evicted");
        let Publication::Replayed(again) = bus.publish(event("user-9"), keyed) else {
            panic!("a retry stays a retry after eviction")
        };
        assert_eq!((again.id, again.epoch), (first.id, first.epoch));
        let user_0 = bus.read(&Feed::User("user-0".into()), 0, 0).head.epoch;
        assert!(next.epoch > Some(user_0), "with an epoch of its own");
    }
}
