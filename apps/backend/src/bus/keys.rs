//! Where a topic lives in Redis: its keys and its shard channel.
//!
//! Topics are spread over [`PARTITIONS`] partitions, each a hash tag (`{p17}`), so that
//! everything of one topic (meta hash, history stream, idempotency records and the shard
//! channel its events are published on) is in one Redis Cluster slot: the publish script
//! stays one atomic single-slot call, and `SPUBLISH` from inside it is allowed. Grouping
//! users into partitions rather than giving each its own slot lets one `SSUBSCRIBE`
//! cover every user of a partition that an instance needs (Redis refuses a subscription
//! across slots), which is what keeps subscribe churn bounded in a reconnect storm.
//! Channels stay per user, so an instance receives only the events of users it serves.

use fred::util::redis_keyslot;

use super::Topic;

/// How many partitions topics are spread over. Part of the data layout: every instance
/// must agree, so it is not a setting. A trade-off: more partitions spread the load over
/// more masters evenly (128 over 3 masters: 42 or 43 each; over 32: 4 each), fewer
/// batch more users into each `SSUBSCRIBE` (a reconnect storm costs at most 128
/// commands per batch window).
pub const PARTITIONS: u16 = 128;

/// The partition of a topic: Redis's own key slot of its user id (CRC16), folded.
pub fn partition(topic: &Topic) -> u16 {
    redis_keyslot(topic.user_id().as_bytes()) % PARTITIONS
}

fn tag(topic: &Topic) -> String {
    format!("{{p{}}}", partition(topic))
}

/// The meta hash (`epoch`, `seq`, versions) and history stream of a topic.
pub fn history(topic: &Topic) -> [String; 2] {
    let (tag, user) = (tag(topic), topic.user_id());
    [
        format!("ev:{tag}:meta:{user}"),
        format!("ev:{tag}:log:{user}"),
    ]
}

/// The record of an idempotency key used in a topic.
pub fn idempotency(topic: &Topic, key: &str) -> String {
    format!("ev:{}:idem:{}:{key}", tag(topic), topic.user_id())
}

/// The shard channel a topic's events are published on.
pub fn channel(topic: &Topic) -> String {
    format!("ev:{}:ch:{}", tag(topic), topic.user_id())
}

/// The hash slot of a partition's keys and channels.
pub fn slot(partition: u16) -> u16 {
    redis_keyslot(format!("{{p{partition}}}").as_bytes())
}

/// The shard channel through which `server_id` probes its subscription to the master
/// that owns `partition`.
pub fn probe_channel(partition: u16, server_id: &str) -> String {
    format!("ev:{{p{partition}}}:probe:{server_id}")
}

/// The partition of a probe channel of `server_id`'s; `None` for any other channel.
pub fn probe_partition(channel: &str, server_id: &str) -> Option<u16> {
    let rest = channel.strip_prefix("ev:{p")?;
    let (partition, rest) = rest.split_once('}')?;
    (rest.strip_prefix(":probe:")? == server_id)
        .then(|| partition.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topics_keys_and_channel_share_one_slot() {
        for topic in [
            Topic::User("alice".into()),
            Topic::User("user:42".into()),
            Topic::Broadcast,
        ] {
            let [meta, log] = history(&topic);
            let slot = redis_keyslot(channel(&topic).as_bytes());
            assert_eq!(redis_keyslot(meta.as_bytes()), slot);
            assert_eq!(redis_keyslot(log.as_bytes()), slot);
            assert_eq!(redis_keyslot(idempotency(&topic, "k-1").as_bytes()), slot);
            assert!(
                channel(&topic).ends_with(topic.user_id()),
                "one channel per user"
            );
        }
    }

    #[test]
    fn a_probe_channel_names_its_partition_and_instance() {
        let channel = probe_channel(17, "backend-1");
        assert_eq!(redis_keyslot(channel.as_bytes()), slot(17));
        assert_eq!(probe_partition(&channel, "backend-1"), Some(17));
        assert_eq!(probe_partition(&channel, "backend-2"), None);
        let user = super::channel(&Topic::User("alice".into()));
        assert_eq!(probe_partition(&user, "backend-1"), None);
        assert_eq!(
            probe_partition("ev:{px}:probe:backend-1", "backend-1"),
            None
        );
    }

    #[test]
    fn users_spread_over_the_partitions() {
        let mut used = std::collections::HashSet::new();
        for n in 0..2_000 {
            used.insert(partition(&Topic::User(format!("user-{n}"))));
        }
        assert!(used.iter().all(|p| *p < PARTITIONS));
        assert_eq!(
            used.len(),
            usize::from(PARTITIONS),
            "every partition gets users"
        );
    }
}
