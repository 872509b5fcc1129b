//! Where a feed lives in Redis: its keys and its shard channel.
//!
//! Feeds are spread over [`PARTITIONS`] partitions, each a hash tag (`{p17.40927}`), so
//! that everything of one feed (meta hash, history stream, idempotency records and the
//! shard channel its events are published on) is in one Redis Cluster slot: the publish
//! script stays one atomic single-slot call, and `SPUBLISH` from inside it is allowed.
//! Grouping feeds into partitions rather than giving each its own slot lets one
//! `SSUBSCRIBE` cover every feed of a partition that an instance needs (Redis refuses a
//! subscription across slots), which is what keeps subscribe churn bounded in a
//! reconnect storm. Channels stay per feed, so an instance receives only the events of
//! the users and topics it serves.
//!
//! Each partition's tag is chosen to hash to the middle slot of its own 1/128th of the
//! slot space (see [`TAGS`]), so however many masters split the slots evenly, each owns
//! ⌊128/n⌋ or ⌈128/n⌉ partitions. (The tags before topics, `{p0}`…`{p127}`, hashed
//! where CRC16 put them: 37, 40 and 51 partitions on 3 masters.)

use fred::util::redis_keyslot;

use super::Feed;

/// How many partitions feeds are spread over. Part of the data layout: every instance
/// must agree, so it is not a setting. A trade-off: more partitions spread the load over
/// more masters evenly, fewer batch more feeds into each `SSUBSCRIBE` (a reconnect storm
/// costs at most 128 commands per batch window).
pub const PARTITIONS: u16 = 128;

/// The hash tag of each partition: `p<n>.<k>`, with the first `k` whose key slot is
/// `128·n + 64`. Part of the data layout: never change one.
pub const TAGS: [&str; PARTITIONS as usize] = [
    "p0.29838",
    "p1.7943",
    "p2.43743",
    "p3.31",
    "p4.40886",
    "p5.23907",
    "p6.20918",
    "p7.43899",
    "p8.1158",
    "p9.2276",
    "p10.48074",
    "p11.641",
    "p12.19321",
    "p13.11898",
    "p14.12009",
    "p15.7852",
    "p16.1887",
    "p17.40927",
    "p18.19948",
    "p19.3805",
    "p20.22319",
    "p21.13686",
    "p22.1048",
    "p23.2366",
    "p24.21275",
    "p25.15098",
    "p26.16087",
    "p27.2723",
    "p28.45959",
    "p29.1687",
    "p30.2123",
    "p31.826",
    "p32.41001",
    "p33.11143",
    "p34.18737",
    "p35.42890",
    "p36.27928",
    "p37.19520",
    "p38.12151",
    "p39.9759",
    "p40.101364",
    "p41.61909",
    "p42.40994",
    "p43.23815",
    "p44.43651",
    "p45.13713",
    "p46.42312",
    "p47.7966",
    "p48.15299",
    "p49.21074",
    "p50.3733",
    "p51.20509",
    "p52.8278",
    "p53.10281",
    "p54.8679",
    "p55.83848",
    "p56.22672",
    "p57.44081",
    "p58.9591",
    "p59.29203",
    "p60.29328",
    "p61.12852",
    "p62.2017",
    "p63.1339",
    "p64.10218",
    "p65.12744",
    "p66.14029",
    "p67.2906",
    "p68.8569",
    "p69.18122",
    "p70.414",
    "p71.55997",
    "p72.7830",
    "p73.14169",
    "p74.103165",
    "p75.65838",
    "p76.22902",
    "p77.19278",
    "p78.2341",
    "p79.10355",
    "p80.3428",
    "p81.5074",
    "p82.13567",
    "p83.9045",
    "p84.8562",
    "p85.445",
    "p86.1221",
    "p87.19458",
    "p88.983",
    "p89.19272",
    "p90.9200",
    "p91.21929",
    "p92.7039",
    "p93.1465",
    "p94.7438",
    "p95.1064",
    "p96.256",
    "p97.9933",
    "p98.1754",
    "p99.7308",
    "p100.22105",
    "p101.2682",
    "p102.10485",
    "p103.4856",
    "p104.21069",
    "p105.15284",
    "p106.25258",
    "p107.22076",
    "p108.12829",
    "p109.8420",
    "p110.72989",
    "p111.11808",
    "p112.11538",
    "p113.607",
    "p114.23836",
    "p115.8022",
    "p116.5135",
    "p117.3569",
    "p118.4299",
    "p119.8820",
    "p120.8221",
    "p121.4898",
    "p122.724",
    "p123.15886",
    "p124.6419",
    "p125.5737",
    "p126.42430",
    "p127.9706",
];

/// The partition of a feed: Redis's own key slot of its name (CRC16), folded.
pub fn partition(feed: &Feed) -> u16 {
    redis_keyslot(feed.key_name().as_bytes()) % PARTITIONS
}

fn tag(feed: &Feed) -> &'static str {
    TAGS[usize::from(partition(feed))]
}

/// The meta hash (`epoch`, `seq`, versions) and history stream of a feed.
pub fn history(feed: &Feed) -> [String; 2] {
    let (tag, name) = (tag(feed), feed.key_name());
    [
        format!("ev:{{{tag}}}:meta:{name}"),
        format!("ev:{{{tag}}}:log:{name}"),
    ]
}

/// The record of an idempotency key used in a feed.
pub fn idempotency(feed: &Feed, key: &str) -> String {
    format!("ev:{{{}}}:idem:{}:{key}", tag(feed), feed.key_name())
}

/// The shard channel a feed's events are published on.
pub fn channel(feed: &Feed) -> String {
    format!("ev:{{{}}}:ch:{}", tag(feed), feed.key_name())
}

/// Who is present in a topic: a sorted set of user ids (scored by when they arrived, in
/// ms) and a hash of how many instances hold each; in the topic's partition, so that its
/// presence changes and their events are one atomic step with its history.
pub fn presence(topic: &str) -> [String; 2] {
    let feed = Feed::Topic(topic.to_string());
    let (tag, name) = (tag(&feed), feed.key_name());
    [
        format!("ev:{{{tag}}}:here:{name}"),
        format!("ev:{{{tag}}}:holders:{name}"),
    ]
}

/// The users in topics of one partition that `instance` holds (members `<topic> <user>`).
pub fn presence_held(partition: u16, instance: &str) -> String {
    format!(
        "ev:{{{}}}:held:{instance}",
        TAGS[usize::from(partition % PARTITIONS)]
    )
}

/// The instances holding presence in one partition, each with its last heartbeat (ms).
pub fn presence_instances(partition: u16) -> String {
    format!(
        "ev:{{{}}}:instances",
        TAGS[usize::from(partition % PARTITIONS)]
    )
}

/// Whether `channel` is a topic's shard channel (for the relay's counts).
pub fn is_topic_channel(channel: &str) -> bool {
    channel.contains("}:ch:#")
}

/// The meta hash key of a history kept under the tags before this layout
/// (`ev:{p17}:meta:<name>`): its partition number and the feed's key name.
pub fn legacy_meta(key: &str) -> Option<(u16, &str)> {
    let rest = key.strip_prefix("ev:{p")?;
    let (partition, name) = rest.split_once("}:meta:")?;
    let digits = !partition.is_empty() && partition.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| partition.parse().ok())
        .flatten()
        .map(|p| (p, name))
}

/// Where a key kept under the tags before this layout (`ev:{p17}:…`) lives now: the
/// same key under its partition's tag today (a feed's partition number is unchanged).
pub fn migrated(key: &str) -> Option<String> {
    let rest = key.strip_prefix("ev:{p")?;
    let (partition, rest) = rest.split_once("}:")?;
    let digits = !partition.is_empty() && partition.bytes().all(|b| b.is_ascii_digit());
    let partition: usize = digits.then(|| partition.parse().ok()).flatten()?;
    let tag = TAGS.get(partition)?;
    Some(format!("ev:{{{tag}}}:{rest}"))
}

/// The hash slot of a partition's keys and channels.
pub fn slot(partition: u16) -> u16 {
    redis_keyslot(TAGS[usize::from(partition % PARTITIONS)].as_bytes())
}

/// The shard channel through which `server_id` probes its subscription to the master
/// that owns `partition`.
pub fn probe_channel(partition: u16, server_id: &str) -> String {
    format!(
        "ev:{{{}}}:probe:{server_id}",
        TAGS[usize::from(partition % PARTITIONS)]
    )
}

/// The partition of a probe channel of `server_id`'s; `None` for any other channel.
pub fn probe_partition(channel: &str, server_id: &str) -> Option<u16> {
    let rest = channel.strip_prefix("ev:{")?;
    let (tag, rest) = rest.split_once('}')?;
    if rest.strip_prefix(":probe:")? != server_id {
        return None;
    }
    TAGS.iter()
        .position(|known| *known == tag)
        .and_then(|partition| u16::try_from(partition).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feeds_keys_and_channel_share_one_slot() {
        for feed in [
            Feed::User("alice".into()),
            Feed::User("user:42".into()),
            Feed::Broadcast,
            Feed::Topic("chat:room-7".into()),
        ] {
            let [meta, log] = history(&feed);
            let slot = redis_keyslot(channel(&feed).as_bytes());
            assert_eq!(redis_keyslot(meta.as_bytes()), slot);
            assert_eq!(redis_keyslot(log.as_bytes()), slot);
            assert_eq!(redis_keyslot(idempotency(&feed, "k-1").as_bytes()), slot);
            assert!(
                channel(&feed).ends_with(&*feed.key_name()),
                "one channel per feed"
            );
        }
    }

    #[test]
    fn a_topics_presence_lives_with_its_history() {
        let topic = Feed::Topic("chat:room-7".into());
        let slot = redis_keyslot(channel(&topic).as_bytes());
        let partition = partition(&topic);
        for key in presence("chat:room-7").into_iter().chain([
            presence_held(partition, "b-1~x"),
            presence_instances(partition),
        ]) {
            assert_eq!(redis_keyslot(key.as_bytes()), slot, "{key}");
        }
        assert_ne!(presence("a"), presence("b"));
    }

    #[test]
    fn a_user_and_a_topic_of_one_name_never_share_a_key() {
        let user = Feed::User("room".into());
        let topic = Feed::Topic("room".into());
        assert_ne!(history(&user), history(&topic));
        assert_ne!(channel(&user), channel(&topic));
        assert!(is_topic_channel(&channel(&topic)));
        assert!(!is_topic_channel(&channel(&user)));
        assert!(!is_topic_channel(&channel(&Feed::Broadcast)));
    }

    #[test]
    fn keys_of_the_earlier_layout_are_recognised_and_todays_are_not() {
        assert_eq!(legacy_meta("ev:{p17}:meta:alice"), Some((17, "alice")));
        assert_eq!(legacy_meta("ev:{p0}:meta:*"), Some((0, "*")));
        let [meta, log] = history(&Feed::User("alice".into()));
        let partition = partition(&Feed::User("alice".into()));
        assert_eq!(
            migrated(&format!("ev:{{p{partition}}}:meta:alice")),
            Some(meta)
        );
        assert_eq!(
            migrated(&format!("ev:{{p{partition}}}:log:alice")),
            Some(log)
        );
        assert_eq!(migrated("ev:{p128}:meta:alice"), None);
        assert_eq!(
            migrated("ev:{p17.40927}:meta:alice"),
            None,
            "today's are not moved"
        );
        let [today, _] = history(&Feed::User("alice".into()));
        assert_eq!(legacy_meta(&today), None);
        assert_eq!(legacy_meta("ev:{p}:meta:alice"), None);
        assert_eq!(legacy_meta("ev:{p1}:log:alice"), None);
    }

    #[test]
    fn a_probe_channel_names_its_partition_and_instance() {
        let channel = probe_channel(17, "backend-1");
        assert_eq!(redis_keyslot(channel.as_bytes()), slot(17));
        assert_eq!(probe_partition(&channel, "backend-1"), Some(17));
        assert_eq!(probe_partition(&channel, "backend-2"), None);
        let user = super::channel(&Feed::User("alice".into()));
        assert_eq!(probe_partition(&user, "backend-1"), None);
        assert_eq!(
            probe_partition("ev:{px}:probe:backend-1", "backend-1"),
            None
        );
    }

    #[test]
    fn feeds_spread_over_the_partitions() {
        let mut used = std::collections::HashSet::new();
        for n in 0..2_000 {
            used.insert(partition(&Feed::User(format!("user-{n}"))));
            used.insert(partition(&Feed::Topic(format!("room-{n}"))));
        }
        assert!(used.iter().all(|p| *p < PARTITIONS));
        assert_eq!(
            used.len(),
            usize::from(PARTITIONS),
            "every partition gets feeds"
        );
    }

    /// The slots each of `n` masters owns when the 16384 slots are split evenly, as
    /// `redis-cli --cluster create` does (`slots_per_node` as a float, each range ending
    /// at the rounded running total).
    fn redis_cli_split(n: u32) -> Vec<(u16, u16)> {
        let per_node = 16384.0 / f64::from(n);
        let (mut first, mut cursor) = (0u16, 0.0f64);
        (0..n)
            .map(|i| {
                let mut last = (cursor + per_node - 1.0).round() as u16;
                if last > 16383 || i == n - 1 {
                    last = 16383;
                }
                last = last.max(first);
                let range = (first, last);
                first = last + 1;
                cursor += per_node;
                range
            })
            .collect()
    }

    #[test]
    fn every_even_split_of_the_slots_gives_each_master_its_share_of_partitions() {
        let slots: Vec<u16> = (0..PARTITIONS).map(slot).collect();
        for (partition, slot) in slots.iter().enumerate() {
            assert_eq!(
                usize::from(*slot),
                128 * partition + 64,
                "tag {}",
                TAGS[partition]
            );
        }
        for n in 1..=128u32 {
            let floor_split: Vec<(u16, u16)> = (0..n)
                .map(|i| ((i * 16384 / n) as u16, ((i + 1) * 16384 / n - 1) as u16))
                .collect();
            for split in [redis_cli_split(n), floor_split] {
                for (first, last) in split {
                    let owned = slots.iter().filter(|s| (first..=last).contains(*s)).count();
                    let (low, high) = (128 / n as usize, (128usize).div_ceil(n as usize));
                    assert!(
                        (low..=high).contains(&owned),
                        "{n} masters: slots {first}..={last} hold {owned} partitions"
                    );
                }
            }
        }
    }
}
