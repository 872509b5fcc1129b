//! Redis behind Sentinels: the master is found through them, and when it dies under
//! load with `PUBLISH_REPLICAS=1` a replica is promoted and no accepted event is lost.

use std::time::Duration;

use crate::helpers::{RedisSentinels, eventually, settings_for, spawn_app_with};

/// `kill -9` of the master while events are being published: the Sentinels promote the
/// replica, the instance finds it through them, publishes in between are refused (503)
/// and retried with their idempotency key, and the stream, which resumes by itself,
/// gets every accepted event exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_survive_a_sentinel_failover() {
    const EVENTS: u64 = 60;
    let mut redis = RedisSentinels::start().await;
    let mut settings = settings_for(&redis.url());
    settings.publish_replicas = 1;
    let app = spawn_app_with(settings).await;
    let first_master = redis.master.port;
    assert_eq!(redis.master_port(), Some(first_master));
    app.expect_no_loss_across("sentinel-1", EVENTS, async {
        redis.master.signal("KILL");
        eventually(
            "the Sentinels to promote the replica",
            Duration::from_secs(30),
            || async { (redis.master_port() == Some(redis.replica.port)).then_some(()) },
        )
        .await;
        // Back, empty (no persistence here): the Sentinels make it the new master's
        // replica, and publishes can be made durable again.
        redis.master.restart().await;
    })
    .await;
}
