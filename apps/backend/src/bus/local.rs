use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, PoisonError},
};

use events::{Envelope, Position};

use super::{HistoryRead, IDEMPOTENCY_TTL, Publication, Retention, Topic, now_millis};
use crate::hub::Hub;

/// The single-node bus: publishing appends to an in-memory ring per topic and delivers
/// straight to this instance's hub.
#[derive(Debug)]
pub struct LocalBus {
    hub: Hub,
    retention: Retention,
    /// The epoch of every history here: this process's start. A restarted node has lost
    /// its histories, and its new epoch tells returning clients so.
    epoch: u64,
    histories: Mutex<HashMap<Topic, Ring>>,
}

#[derive(Debug, Default)]
struct Ring {
    last_seq: u64,
    events: VecDeque<Envelope>,
    /// Idempotency keys used in the last [`IDEMPOTENCY_TTL`], oldest first: the key, the
    /// sequence number it published, and when (ms).
    keys: VecDeque<(String, u64, u64)>,
}

impl LocalBus {
    pub fn new(hub: Hub, retention: Retention) -> Self {
        Self {
            hub,
            retention,
            epoch: now_millis(),
            histories: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn retention(&self) -> Retention {
        self.retention
    }

    pub(super) fn hub(&self) -> &Hub {
        &self.hub
    }

    pub(super) fn publish(
        &self,
        mut envelope: Envelope,
        idempotency_key: Option<&str>,
    ) -> Publication {
        // Numbering, appending and delivery happen under one lock, so that concurrent
        // publishers to one topic deliver in the order of their sequence numbers.
        let mut histories = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ring = histories.entry(Topic::of(&envelope)).or_default();
        let now = now_millis();
        let ttl = u64::try_from(IDEMPOTENCY_TTL.as_millis()).unwrap_or(u64::MAX);
        while ring
            .keys
            .front()
            .is_some_and(|(_, _, at)| now.saturating_sub(*at) > ttl)
        {
            ring.keys.pop_front();
        }
        if let Some(key) = idempotency_key
            && let Some((_, seq, _)) = ring.keys.iter().find(|(used, _, _)| used == key)
        {
            let seq = *seq;
            let kept = ring.events.iter().find(|e| e.id == Some(seq)).cloned();
            envelope.id = Some(seq);
            envelope.epoch = Some(self.epoch);
            return Publication {
                envelope: kept.unwrap_or(envelope),
                replayed: true,
            };
        }
        ring.last_seq += 1;
        envelope.id = Some(ring.last_seq);
        envelope.epoch = Some(self.epoch);
        if let Some(key) = idempotency_key {
            ring.keys.push_back((key.to_string(), ring.last_seq, now));
            // Bounded like the history itself.
            while ring.keys.len() as u64 > self.retention.max_len {
                ring.keys.pop_front();
            }
        }
        ring.events.push_back(envelope.clone());
        self.trim(ring);
        self.hub.deliver(&envelope);
        Publication {
            envelope,
            replayed: false,
        }
    }

    pub(super) fn read(&self, topic: &Topic, after: u64, limit: usize) -> HistoryRead {
        let mut histories = self
            .histories
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(ring) = histories.get_mut(topic) else {
            return HistoryRead::default();
        };
        self.trim(ring);
        HistoryRead {
            head: Position::new(self.epoch, ring.last_seq),
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

    fn trim(&self, ring: &mut Ring) {
        let max_age_ms = u64::try_from(self.retention.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_millis().saturating_sub(max_age_ms);
        while ring.events.len() as u64 > self.retention.max_len
            || ring
                .events
                .front()
                .is_some_and(|e| e.published_at.unwrap_or(0) < cutoff)
        {
            ring.events.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use serde_json::Value;

    fn bus(max_len: u64) -> LocalBus {
        let retention = Retention {
            max_len,
            max_age: Duration::from_secs(60),
        };
        LocalBus::new(
            Hub::new(
                crate::hub::Capacity::with_queue(8),
                std::sync::Arc::default(),
            ),
            retention,
        )
    }

    fn publish(bus: &LocalBus, user: &str) -> Envelope {
        let mut envelope = Envelope::new(user, "a.b", Value::Null);
        envelope.published_at = Some(now_millis());
        bus.publish(envelope, None).envelope
    }

    #[test]
    fn numbers_each_topic_separately_and_keeps_a_capped_history() {
        let bus = bus(3);
        for _ in 0..5 {
            publish(&bus, "alice");
        }
        assert_eq!(publish(&bus, "bob").id, Some(1));

        let read = bus.read(&Topic::User("alice".into()), 3, 10);
        assert_eq!(read.head, Position::new(bus.epoch, 5));
        assert_eq!(read.oldest, 3, "only the last 3 are kept");
        let ids: Vec<_> = read.events.iter().filter_map(|e| e.id).collect();
        assert_eq!(ids, [4, 5]);
        assert_eq!(bus.read(&Topic::Broadcast, 0, 10), HistoryRead::default());
    }

    #[test]
    fn a_repeated_idempotency_key_publishes_nothing_and_returns_the_first_event() {
        let bus = bus(10);
        let event = |n: i64| Envelope {
            published_at: Some(now_millis()),
            ..Envelope::new("alice", "a.b", serde_json::json!({ "n": n }))
        };
        let first = bus.publish(event(1), Some("k1"));
        let again = bus.publish(event(2), Some("k1"));
        assert!(!first.replayed && again.replayed);
        assert_eq!(
            again.envelope, first.envelope,
            "the first event, as delivered"
        );
        let other = bus.publish(event(3), Some("k2"));
        assert_eq!(other.envelope.id, Some(2), "only one event per key");
        let elsewhere = bus.publish(
            Envelope {
                user_id: "bob".into(),
                ..event(4)
            },
            Some("k1"),
        );
        assert!(!elsewhere.replayed, "keys are per topic");
    }
}
