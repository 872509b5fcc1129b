//! Sharded delivery, on a real Redis Cluster and on one Redis: each instance subscribes
//! to the shard channels of the users it serves and receives nothing of anyone else's.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

/// Two instances, six users, three streams on each: every stream gets its user's events
/// exactly once and in order whichever instance publishes, and each instance receives
/// (counted by the relay) exactly the events of its own three users.
async fn each_instance_receives_only_its_users_events(redis_url: String) {
    let a = spawn_app_with(settings_for(&redis_url)).await;
    let b = spawn_app_with(settings_for(&redis_url)).await;
    let users: Vec<String> = (0..6).map(|n| format!("spread-{n}")).collect();
    let mut streams = Vec::new();
    for (n, user) in users.iter().enumerate() {
        let on = if n.is_multiple_of(2) { &a } else { &b };
        streams.push(on.open_stream(&on.token(user).await).await);
    }
    // Exact counts below need every subscription confirmed first (an event published
    // before is read from history instead, and not counted as received).
    for instance in [&a, &b] {
        eventually("three users subscribed", PATIENCE, || async {
            (instance.metric_value("redis_subscriptions").await == Some(3.0)).then_some(())
        })
        .await;
    }
    const EVENTS: u64 = 5;
    for n in 1..=EVENTS {
        for (i, user) in users.iter().enumerate() {
            let by = if (i + n as usize).is_multiple_of(2) {
                &a
            } else {
                &b
            };
            by.publish(user, "test.counted", json!({ "n": n })).await;
        }
    }
    for (user, stream) in users.iter().zip(&mut streams) {
        for n in 1..=EVENTS {
            let event = stream.next_event().await;
            let envelope = event.json();
            assert_eq!(envelope["userId"], user.as_str());
            assert_eq!(envelope["data"]["n"], n, "{user}'s events in order");
            assert_eq!(envelope["id"], n);
        }
    }
    for stream in &mut streams {
        stream.expect_no_event(Duration::from_millis(300)).await;
    }
    let received = r#"relay_messages_received_total{kind="user"}"#;
    for (name, instance) in [("a", &a), ("b", &b)] {
        assert_eq!(
            instance.metric_value(received).await,
            Some(3.0 * EVENTS as f64),
            "instance {name} receives its three users' events and no one else's"
        );
        assert_eq!(
            instance.metric_value("redis_subscriptions").await,
            Some(3.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_each_instance_receives_only_its_users_events() {
    let cluster = RedisCluster::start(3, 0).await;
    each_instance_receives_only_its_users_events(cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_redis_each_instance_receives_only_its_users_events() {
    let redis = RedisServer::start().await;
    each_instance_receives_only_its_users_events(redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_and_accounts_work_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0).await;
    let settings = settings_for(&cluster.url());
    let a = spawn_app_with(settings.clone()).await;
    let b = spawn_app_with(settings).await;
    let token = a.token("carol").await;
    let mut on_a = a.open_stream(&token).await;
    let mut on_b = b.open_stream(&b.token("dave").await).await;
    let broadcast = json!({"broadcast": true, "eventType": "maintenance.scheduled", "data": {}});
    let accepted = a
        .post_json("/api/publish", Some(PUBLISH_KEY), &broadcast)
        .await;
    assert_eq!(accepted.status(), 202);
    for stream in [&mut on_a, &mut on_b] {
        let event = stream.next_event().await;
        assert_eq!(event.event.as_deref(), Some("maintenance.scheduled"));
    }
    let account = b.create_account(&token, "Savings", 1250).await;
    assert_eq!(account["name"], "Savings");
    let snapshots = on_a.next_event().await;
    assert_eq!(snapshots.event.as_deref(), Some("snapshots.generated"));
    assert_eq!(a.list("/api/accounts", &token).await.len(), 1);
    assert_eq!(
        b.metric_value(r#"relay_messages_received_total{kind="broadcast"}"#)
            .await,
        Some(1.0)
    );
}

/// Streams of many new users at once: their subscriptions go out in batches (at most one
/// per 50 ms window, one command per partition in each), not one command per stream, and
/// every stream gets the event published once it is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_subscribes_in_batches() {
    const STREAMS: usize = 2_000;
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let address = app
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address");
    let started = Instant::now();
    let opening = (0..STREAMS).map(|n| {
        let token = sign(
            JWT_SECRET,
            &backend::auth::Claims {
                sub: format!("storm-{n}"),
                exp: epoch_secs() + 600,
                iat: epoch_secs(),
                ..Default::default()
            },
        );
        async move {
            raw_sse::open_stream([127, 0, 0, 1].into(), address, "/api/events", &token)
                .await
                .expect("the stream opens")
        }
    });
    let mut bodies = futures_util::future::join_all(opening).await;
    let elapsed = started.elapsed();
    eventually("every user subscribed", PATIENCE, || async {
        (app.metric_value("redis_subscriptions").await == Some(STREAMS as f64)).then_some(())
    })
    .await;
    let commands = app
        .metric_value(r#"redis_subscription_commands_total{command="ssubscribe"}"#)
        .await
        .unwrap_or_default();
    let batches = app
        .metric_value("redis_subscription_batches_total")
        .await
        .unwrap_or_default();
    println!(
        "{STREAMS} streams opened in {elapsed:?}: {batches} batches, {commands} SSUBSCRIBE commands"
    );
    assert!(
        commands <= batches * 128.0,
        "one command per partition per batch"
    );
    let windows = elapsed.as_millis() as f64 / 50.0 + 2.0;
    assert!(
        batches <= windows,
        "{batches} batches in {elapsed:?}: at most one per 50 ms window"
    );
    assert!(commands < STREAMS as f64, "batched: {commands} commands");

    for n in (0..STREAMS).step_by(97) {
        app.publish(&format!("storm-{n}"), "test.counted", json!({ "n": n }))
            .await;
    }
    for n in (0..STREAMS).step_by(97) {
        let body = &mut bodies[n];
        let event = loop {
            let data = tokio::time::timeout(PATIENCE, body.next_data())
                .await
                .expect("an event in time")
                .expect("the stream reads")
                .expect("the stream is open");
            let envelope: serde_json::Value =
                serde_json::from_slice(&data).expect("the data is JSON");
            if envelope["eventType"] == "test.counted" {
                break envelope;
            }
        };
        assert_eq!(event["data"]["n"], n);
    }
}

/// `PUBLISH_REPLICAS=1`: the master holding a user's history is killed (`kill -9`) while
/// events are being published. Its replica takes over; publishes in between are refused
/// (503) and retried with their idempotency key; every accepted event reaches the
/// user's stream exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_survive_the_loss_of_their_master() {
    const EVENTS: u64 = 60;
    let mut cluster = RedisCluster::start(3, 1).await;
    let mut settings = settings_for(&cluster.url());
    settings.publish_replicas = 1;
    let app = spawn_app_with(settings).await;
    let user = "failover-1";
    app.expect_no_loss_across(user, EVENTS, async {
        let masters = cluster.master_ports();
        let master = cluster.master_of(user);
        let node = cluster
            .nodes
            .iter_mut()
            .find(|node| node.port == master)
            .expect("the master is one of ours");
        node.signal("KILL");
        let survivor = *masters
            .iter()
            .find(|port| **port != master)
            .expect("another master");
        let dead = format!("127.0.0.1:{master}@");
        eventually(
            "a replica to take over",
            Duration::from_secs(20),
            || async {
                let now = cli(survivor, &["CLUSTER", "NODES"]);
                let failed = now
                    .lines()
                    .any(|line| line.contains(&dead) && line.contains("fail"));
                let masters = now
                    .lines()
                    .filter(|line| line.contains("master") && !line.contains("fail"))
                    .count();
                let ok = cli(survivor, &["CLUSTER", "INFO"]).contains("cluster_state:ok");
                (failed && masters == 3 && ok).then_some(())
            },
        )
        .await;
        // Back (empty: no persistence here) as the new master's replica, only once the
        // failover is done; until then nothing can be made durable.
        node.restart().await;
    })
    .await;
}

/// The slot holding a user's history and channel moves to another master while the
/// user's stream is open on one instance and events are published through another (so
/// the stream's instance gets no redirection of its own to notice by): the instance
/// sees the slots move, subscribes where the slot is now, and the stream misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_misses_nothing_while_its_users_slot_moves() {
    const EVENTS: u64 = 40;
    let cluster = RedisCluster::start(3, 0).await;
    let settings = settings_for(&cluster.url());
    let serving = spawn_app_with(settings.clone()).await;
    let publishing = spawn_app_with(settings).await;
    let user = "moving-1";
    let follower = tokio::spawn(follow(
        vec![serving.address.clone()],
        serving.token(user).await,
        Duration::from_secs(30),
        |received| counted(received).len() >= EVENTS as usize,
    ));
    serving.streams_started(1).await;
    let addresses = vec![publishing.address.clone()];
    publish_counted(addresses.clone(), user.into(), 1, 1, Duration::ZERO).await;
    let masters = cluster.master_ports();
    let pattern = format!("ev:*:meta:{user}");
    let from = cluster.master_of(user);
    let to = *masters
        .iter()
        .find(|port| **port != from)
        .expect("another master");
    let key = cli(from, &["--scan", "--pattern", &pattern]);
    let slot: u16 = cli(from, &["CLUSTER", "KEYSLOT", key.trim()])
        .trim()
        .parse()
        .expect("a slot number");

    let publisher = tokio::spawn(publish_counted(
        addresses,
        user.into(),
        2,
        EVENTS - 1,
        Duration::from_millis(25),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.move_slot(slot, from, to);
    assert_eq!(
        publisher.await.expect("the publisher finishes").len() as u64,
        EVENTS - 1
    );
    let (received, connections) = follower.await.expect("the follower finishes");
    assert_eq!(
        counted(&received),
        (1..=EVENTS).collect::<Vec<_>>(),
        "every event exactly once, in order"
    );
    assert_eq!(connections, 1, "on the stream it had, without reconnecting");
    assert!(
        cli(to, &["--scan", "--pattern", &pattern]).contains(user),
        "the history moved"
    );
    assert_eq!(
        serving.metric_value("redis_slots_moved_total").await,
        Some(1.0)
    );
}

/// Readiness covers every master: one of three stalls (SIGSTOP), and the instance says
/// it is not ready until that master answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_covers_every_master() {
    let cluster = RedisCluster::start(3, 0).await;
    let app = spawn_app_with(settings_for(&cluster.url())).await;
    assert!(readiness_becomes(&app.address, 200).await, "ready");
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3);
    let stalled = cluster
        .nodes
        .iter()
        .find(|node| node.port == masters[2])
        .expect("one of ours");
    stalled.signal("STOP");
    let unready = readiness_becomes(&app.address, 503).await;
    stalled.signal("CONT");
    assert!(unready, "not ready while one master is deaf");
    assert!(readiness_becomes(&app.address, 200).await, "ready again");
}

/// Without `PUBLISH_REPLICAS`, a failover may lose the newest events of the old master
/// and give their ids again. The history's next write on the promoted replica starts a
/// new epoch, so the stream is told (`stream.resync`) instead of skipping a new event
/// under an id it has seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_told_when_its_users_master_changes() {
    let cluster = RedisCluster::start(3, 1).await;
    let app = spawn_app_with(settings_for(&cluster.url())).await;
    let user = "promoted-1";
    let mut stream = app.open_stream(&app.token(user).await).await;
    for n in 1..=3 {
        app.publish(user, "test.counted", json!({ "n": n })).await;
    }
    for n in 1..=3 {
        assert_eq!(stream.next_event().await.json()["data"]["n"], n);
    }
    let master = cluster.master_of(user);
    let master_id = cli(master, &["CLUSTER", "MYID"]).trim().to_string();
    let replica = cluster
        .nodes
        .iter()
        .map(|node| node.port)
        .find(|port| {
            cli(*port, &["CLUSTER", "NODES"]).lines().any(|line| {
                line.contains("myself") && line.contains("slave") && line.contains(&master_id)
            })
        })
        .expect("the master has a replica");
    // This failover loses nothing (the replica is in sync), but the stream cannot know.
    assert!(cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"]).contains("OK"));
    eventually("the replica to take over", PATIENCE, || async {
        cli(replica, &["ROLE"]).starts_with("master").then_some(())
    })
    .await;
    // Refused (503) while the cluster settles; a client retries.
    publish_counted(vec![app.address.clone()], user.into(), 4, 1, Duration::ZERO).await;
    let resync = stream.next_event().await;
    assert_eq!(
        resync.event.as_deref(),
        Some("stream.resync"),
        "{}",
        stream.raw
    );
    let next = stream.next_event().await;
    assert_eq!(next.json()["data"]["n"], 4);
    assert_eq!(next.json()["id"], 1, "a new epoch");
}
