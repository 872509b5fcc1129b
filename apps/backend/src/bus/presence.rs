//! Presence as the engine keeps it: which users are in which topics, through which
//! instances. Each instance tells the engine when it starts or stops holding a user in a
//! topic ([`PresenceOp`]); a user is present while any instance holds them, and their
//! arrival and departure are announced (as events of the topic) exactly once, in the same
//! atomic step that counts them.
//!
//! The in-process engine ([`LocalPresence`]) is here; the Redis one is `redis/presence.rs`.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use events::{Envelope, Position};

use crate::clock::now_millis;

/// One instance starting or stopping to hold a user in a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceOp {
    /// Starting (`true`) or stopping.
    pub enter: bool,
    pub topic: String,
    pub user_id: String,
    /// The event to publish to the topic if this makes the user arrive (their first
    /// instance) or leave (their last); `None` for a topic without presence events.
    pub announce: Option<Envelope>,
}

/// What a batch of [`PresenceOp`]s did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Users who arrived in a topic.
    pub joined: u64,
    /// Users who left one.
    pub left: u64,
}

/// Who is present in a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresentList {
    /// How many users: exact.
    pub count: u64,
    /// At most the number asked for, earliest arrival first: each user id and since when
    /// (ms since the Unix epoch).
    pub users: Vec<(String, u64)>,
    /// The topic's head when this was read (or earlier): every arrival and departure
    /// announced up to it is counted.
    pub head: Position,
}

/// Presence on a single node: this process is the only instance, so a user is present
/// exactly while it holds them. Bounded by what the instance's book holds.
#[derive(Debug, Default)]
pub struct LocalPresence {
    /// Topic → user → since (ms).
    topics: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl LocalPresence {
    /// Applies `ops`; returns what they did and the announcements to publish (after the
    /// lock is let go: publishing delivers to streams).
    pub fn apply(&self, ops: Vec<PresenceOp>) -> (Applied, Vec<Envelope>) {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let mut applied = Applied::default();
        let mut announcements = Vec::new();
        for op in ops {
            let changed = if op.enter {
                let users = topics.entry(op.topic).or_default();
                let arrived = !users.contains_key(&op.user_id);
                if arrived {
                    users.insert(op.user_id, now_millis());
                    applied.joined += 1;
                }
                arrived
            } else {
                let Some(users) = topics.get_mut(&op.topic) else {
                    continue;
                };
                let left = users.remove(&op.user_id).is_some();
                if users.is_empty() {
                    topics.remove(&op.topic);
                }
                applied.left += u64::from(left);
                left
            };
            if changed && let Some(announce) = op.announce {
                announcements.push(announce);
            }
        }
        (applied, announcements)
    }

    /// Who is in `topic`: the count, and the `max` earliest arrivals.
    pub fn of(&self, topic: &str, max: usize) -> PresentList {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(users) = topics.get(topic) else {
            return PresentList::default();
        };
        let mut listed: Vec<(String, u64)> = users
            .iter()
            .map(|(user, since)| (user.clone(), *since))
            .collect();
        listed.sort_unstable_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        listed.truncate(max);
        PresentList {
            count: users.len() as u64,
            users: listed,
            head: Position::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(enter: bool, topic: &str, user: &str) -> PresenceOp {
        PresenceOp {
            enter,
            topic: topic.into(),
            user_id: user.into(),
            announce: Some(Envelope::to_topic(
                topic,
                "stream.joined",
                events::Payload::null(),
            )),
        }
    }

    #[test]
    fn a_user_arrives_once_and_leaves_once() {
        let presence = LocalPresence::default();
        let (applied, announced) =
            presence.apply(vec![op(true, "room", "alice"), op(true, "room", "alice")]);
        assert_eq!((applied.joined, announced.len()), (1, 1));
        presence.apply(vec![op(true, "room", "bob")]);
        let list = presence.of("room", 1);
        assert_eq!(list.count, 2);
        assert_eq!(list.users.len(), 1, "capped");
        assert_eq!(list.users[0].0, "alice", "earliest first");
        let (applied, announced) =
            presence.apply(vec![op(false, "room", "alice"), op(false, "room", "alice")]);
        assert_eq!((applied.left, announced.len()), (1, 1));
        presence.apply(vec![op(false, "room", "bob")]);
        assert_eq!(presence.of("room", 10), PresentList::default());
        assert!(presence.topics.lock().expect("lock").is_empty(), "freed");
    }
}
