//! Fan-out across instances through a real Redis.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_from_one_instance_reaches_a_stream_on_another() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    assert_ne!(a.server_id, b.server_id);

    let token = a.token("alice").await;
    let mut on_a = a.open_stream(&token).await;

    b.create_account(&token, "Savings", 100).await;
    let event = on_a.next_event().await;
    assert_eq!(event.event.as_deref(), Some("snapshots.generated"));
    let envelope = event.json();
    assert_eq!(envelope["userId"], "alice");
    assert_eq!(envelope["serverId"], b.server_id.as_str());
    assert_eq!(envelope["data"]["serverId"], b.server_id.as_str());
    assert_eq!(envelope["data"]["snapshotCount"], 1);

    // The count is this user's accounts (not the instance's), whichever instance serves.
    a.create_account(&token, "Checking", 5).await;
    let envelope = on_a.next_event().await.json();
    assert_eq!(envelope["data"]["snapshotCount"], 2);
    assert_eq!(envelope["serverId"], a.server_id.as_str());

    // Stored in Redis: every instance sees the same accounts and snapshots.
    let accounts = b.list("/api/accounts", &token).await;
    let names: Vec<_> = accounts.iter().map(|a| a["name"].as_str()).collect();
    assert_eq!(names, [Some("Savings"), Some("Checking")]);
    let snapshots = a.list("/api/snapshots", &token).await;
    assert_eq!(snapshots.len(), 3, "one snapshot, then two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_one_tab_keeps_the_other_receiving() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let token = a.token("alice").await;
    let mut tab_on_a = a.open_stream(&token).await;
    let mut second_tab_on_a = a.open_stream(&token).await;
    let mut tab_on_b = b.open_stream(&token).await;

    b.publish("alice", "chat.message-posted", json!({"n": 1}))
        .await;
    for tab in [&mut tab_on_a, &mut second_tab_on_a, &mut tab_on_b] {
        assert_eq!(tab.next_event().await.json()["data"]["n"], 1);
    }

    drop(second_tab_on_a);
    drop(tab_on_b);
    eventually("both servers notice the closed tabs", PATIENCE, || async {
        (a.hub.stream_count() == 1 && b.hub.stream_count() == 0).then_some(())
    })
    .await;

    a.publish("alice", "chat.message-posted", json!({"n": 2}))
        .await;
    b.publish("alice", "chat.message-posted", json!({"n": 3}))
        .await;
    assert_eq!(tab_on_a.next_event().await.json()["data"]["n"], 2);
    assert_eq!(tab_on_a.next_event().await.json()["data"]["n"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_never_see_each_others_events() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let x = a.token("user-x").await;
    let y = b.token("user-y").await;
    let mut x_on_a = a.open_stream(&x).await;
    let mut y_on_a = a.open_stream(&y).await;
    let mut y_on_b = b.open_stream(&y).await;

    b.create_account(&y, "Y's account", 1).await;
    b.publish("user-y", "secrets.revealed", json!({"for": "y"}))
        .await;
    // The snapshot event is published asynchronously, so the two may come either way round.
    for stream in [&mut y_on_a, &mut y_on_b] {
        let mut types = vec![
            stream.next_event().await.event,
            stream.next_event().await.event,
        ];
        types.sort();
        assert_eq!(
            types,
            [
                Some("secrets.revealed".to_string()),
                Some("snapshots.generated".to_string())
            ]
        );
    }
    // Y's stream on instance A has seen both events, so X's stream on A would have too.
    x_on_a.expect_no_event(Duration::from_millis(300)).await;

    let x_accounts = a.list("/api/accounts", &x).await;
    assert!(x_accounts.is_empty(), "X sees none of Y's accounts");
    let x_snapshots = a.list("/api/snapshots", &x).await;
    assert!(x_snapshots.is_empty(), "X sees none of Y's snapshots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_in_the_original_shape_published_with_plain_redis_is_delivered() {
    let redis = RedisServer::start().await;
    let a = spawn_app_with(Settings {
        legacy_channels: true,
        ..settings(Some(&redis))
    })
    .await;
    let token = a.token("123").await;
    let mut stream = a.open_stream(&token).await;

    let original = r#"{"userId":"123","eventType":"snapshots.generated","data":{"snapshotCount":1,"timestamp":"2025-08-26T10:00:00.000Z","serverId":"backend-1"}}"#;
    let receivers = redis
        .command(&["PUBLISH", "user-events", original])
        .await
        .expect("PUBLISH");
    assert_eq!(receivers, ":1", "the instance is subscribed");

    let event = stream.next_event().await;
    assert_eq!(event.event.as_deref(), Some("snapshots.generated"));
    assert_eq!(
        event.id, None,
        "a message that bypassed the backend has no sequence id"
    );
    let envelope = event.json();
    assert_eq!(envelope["data"]["snapshotCount"], 1);
    assert_eq!(envelope["data"]["serverId"], "backend-1");

    // Garbage on the channel is ignored and does not break the relay.
    redis
        .command(&["PUBLISH", "user-events", "not json"])
        .await
        .expect("PUBLISH");
    a.publish("123", "orders.shipped", json!({})).await;
    assert_eq!(
        stream.next_event().await.event.as_deref(),
        Some("orders.shipped")
    );
}
