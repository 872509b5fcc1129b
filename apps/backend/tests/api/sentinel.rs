//! Redis behind Sentinels: the master is found through them, and when it dies under
//! load with `PUBLISH_REPLICAS=1` a replica is promoted and no accepted event is lost.

use std::time::Duration;

use crate::helpers::{
    RedisSentinels, counted, eventually, follow, publish_counted, settings_for, spawn_app_with,
};

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
    let user = "sentinel-1";
    let token = app.token(user).await;
    let follower = tokio::spawn(follow(
        vec![app.address.clone()],
        token,
        Duration::from_secs(60),
        |received| counted(received).len() >= EVENTS as usize,
    ));
    app.streams_started(1).await;
    publish_counted(vec![app.address.clone()], user.into(), 1, 1, Duration::ZERO).await;
    let first_master = redis.master.port;
    assert_eq!(redis.master_port(), Some(first_master));

    let publisher = tokio::spawn(publish_counted(
        vec![app.address.clone()],
        user.into(),
        2,
        EVENTS - 1,
        Duration::from_millis(20),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.master.signal("KILL");
    eventually(
        "the Sentinels to promote the replica",
        Duration::from_secs(30),
        || async { (redis.master_port() == Some(redis.replica.port)).then_some(()) },
    )
    .await;
    // Back, empty (no persistence here): the Sentinels make it the new master's replica,
    // and publishes can be made durable again.
    redis.master.restart().await;

    let accepted = publisher.await.expect("the publisher finishes");
    assert_eq!(accepted, (2..=EVENTS).collect::<Vec<_>>());
    let (received, _) = follower.await.expect("the follower finishes");
    assert_eq!(
        counted(&received),
        (1..=EVENTS).collect::<Vec<_>>(),
        "every accepted event exactly once, in order"
    );
    let refused = app
        .metric_value(r#"http_requests_total{method="POST",route="/api/publish",status="503"}"#)
        .await;
    assert!(
        refused.is_some_and(|n| n >= 1.0),
        "publishes during the failover were refused: {refused:?}"
    );
}
