//! Presence: who is in a topic, each user once whatever their tabs and instances;
//! arrivals and departures announced once; no ghost after an instance is killed or Redis
//! loses what it held.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Api, BackendProcess, PATIENCE, PUBLISH_KEY, RedisCluster, RedisServer, Settings, SseStream,
    eventually, settings, settings_for, spawn_app_with,
};

/// Instance settings with presence events for `room:*` and a short grace window.
fn with_presence(mut settings: Settings, grace_ms: u64) -> Settings {
    settings.presence_events = vec!["room:*".into()];
    settings.presence_grace_ms = grace_ms;
    settings.presence_ttl_secs = 2;
    settings
}

/// `GET /api/topics/{topic}/presence` with `token`: its status and body.
async fn presence_of(api: &Api, topic: &str, token: &str) -> (u16, Value) {
    let response = api
        .get(&format!("/api/topics/{topic}/presence"), Some(token))
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The ids of the users present in `topic`, sorted, as a service sees them.
async fn present(api: &Api, topic: &str) -> Vec<String> {
    let (status, body) = presence_of(api, topic, PUBLISH_KEY).await;
    assert_eq!(status, 200, "{body}");
    let mut users: Vec<String> = body["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|user| user["userId"].as_str().expect("a user id").to_string())
        .collect();
    users.sort();
    assert_eq!(body["count"], json!(users.len()), "{body}");
    users
}

/// The next presence event of `stream`: `(event type, user, reason)`; skips other events
/// and the watcher's own arrival (published as its stream opens, it may fall before or
/// after the stream's starting point).
async fn next_presence(stream: &mut SseStream) -> (String, String, String) {
    loop {
        let frame = stream.next_event().await;
        let kind = frame.event.clone().unwrap_or_default();
        if kind == "stream.joined" || kind == "stream.left" {
            let json: Value = serde_json::from_str(frame.data.as_deref().unwrap_or("null"))
                .expect("presence data is JSON");
            if json["data"]["userId"] == "watcher" && kind == "stream.joined" {
                continue;
            }
            return (
                kind,
                json["data"]["userId"].as_str().unwrap_or_default().into(),
                json["data"]["reason"].as_str().unwrap_or_default().into(),
            );
        }
    }
}

fn change(kind: &str, user: &str, reason: &str) -> (String, String, String) {
    (kind.into(), user.into(), reason.into())
}

/// Waits until `user` is present in `topic` (arrivals are told in batches: one that
/// should come first must be waited for).
async fn arrived(api: &Api, topic: &str, user: &str) {
    eventually("the user present", PATIENCE, || async {
        present(api, topic)
            .await
            .iter()
            .any(|u| u == user)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn each_user_counts_once_and_only_those_allowed_may_ask() {
    let mut settings = with_presence(settings(None), 200);
    settings.presence_list_max = 2;
    settings.presence_topics = vec!["room:*".into(), "doc:*".into()];
    let app = spawn_app_with(settings).await;
    let alice = app.token_with("alice", &["room:*"], &[]).await;
    let bob = app.token_with("bob", &["room:1"], &[]).await;
    let carol = app.token_with("carol", &["room:1"], &[]).await;
    let mallory = app.token_with("mallory", &["room:2"], &[]).await;
    // Alice in three tabs, one of them with another topic too.
    let _tabs = [
        app.open_topics(&alice, &["room:1"], None).await,
        app.open_topics(&alice, &["room:1"], None).await,
        app.open_topics(&alice, &["room:1", "room:2"], None).await,
    ];
    let _bob = app.open_topics(&bob, &["room:1"], None).await;
    let _carol = app.open_topics(&carol, &["room:1"], None).await;
    let body = eventually("three users in room:1", PATIENCE, || async {
        let (status, body) = presence_of(&app, "room:1", &bob).await;
        (status == 200 && body["count"] == json!(3)).then_some(body)
    })
    .await;
    // The three arrivals are the topic's first events, and the answer counts them all.
    let head = eventually("the arrivals announced", PATIENCE, || async {
        let (_, body) = presence_of(&app, "room:1", &bob).await;
        (body["head"]["id"] == json!(3)).then_some(body["head"].clone())
    })
    .await;
    assert!(head["epoch"].as_u64() > Some(0), "{head}");
    assert_eq!(body["topic"], json!("room:1"));
    assert_eq!(body["truncated"], json!(true), "PRESENCE_LIST_MAX is 2");
    let listed = body["users"].as_array().expect("users");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["userId"], json!("alice"), "earliest first");
    assert!(listed.iter().all(|user| user["since"].as_u64() > Some(0)));
    assert_eq!(present(&app, "room:2").await, vec!["alice"]);

    // Not allowed the topic: refused, as subscribing would be.
    let (status, body) = presence_of(&app, "room:1", &mallory).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("topic_forbidden"))
    );
    let (status, _) = presence_of(&app, "room:1", "not-a-token").await;
    assert_eq!(status, 401);
    let anonymous = app.get("/api/topics/room:1/presence", None).await;
    assert_eq!(anonymous.status(), 401);
    for (topic, status, code) in [
        ("a%20b", 400, "invalid_topic"),
        (&"t".repeat(129), 400, "invalid_topic"),
        ("orders:1", 404, "presence_not_kept"),
    ] {
        let (got, body) = presence_of(&app, topic, PUBLISH_KEY).await;
        assert_eq!((got, body["error"]["code"].clone()), (status, json!(code)));
    }
    // Nobody can announce a presence of their own.
    let forged = app
        .post_json(
            "/api/publish",
            Some(PUBLISH_KEY),
            &json!({"topic": "room:1", "eventType": "stream.joined", "data": {"userId": "x"}}),
        )
        .await;
    assert_eq!(forged.status(), 400);
}

#[tokio::test]
async fn a_single_node_announces_arrivals_and_departures_and_a_reload_says_nothing() {
    let app = spawn_app_with(with_presence(settings(None), 500)).await;
    let watcher = app.token_with("watcher", &["room:*"], &[]).await;
    let alice = app.token_with("alice", &["room:*"], &[]).await;
    let (mut watching, _) = app.open_topics(&watcher, &["room:1"], None).await;
    arrived(&app, "room:1", "watcher").await;
    let (tab, _) = app.open_topics(&alice, &["room:1"], None).await;
    assert_eq!(
        next_presence(&mut watching).await,
        change("stream.joined", "alice", "opened")
    );
    // A reload: closed and opened again within the grace window.
    drop(tab);
    let (tab, _) = app.open_topics(&alice, &["room:1"], None).await;
    watching.expect_no_event(Duration::from_millis(900)).await;
    assert_eq!(present(&app, "room:1").await, vec!["alice", "watcher"]);
    drop(tab);
    assert_eq!(
        next_presence(&mut watching).await,
        change("stream.left", "alice", "closed")
    );
    assert_eq!(present(&app, "room:1").await, vec!["watcher"]);
    // A topic without presence events gets none, but its presence is kept.
    let mut quiet = with_presence(settings(None), 0);
    quiet.presence_events = Vec::new();
    let quiet = spawn_app_with(quiet).await;
    let watcher = quiet.token_with("watcher", &["room:*"], &[]).await;
    let (mut watching, _) = quiet.open_topics(&watcher, &["room:1"], None).await;
    let _alice = quiet.open_topics(&alice, &["room:1"], None).await;
    watching.expect_no_event(Duration::from_millis(300)).await;
    assert_eq!(present(&quiet, "room:1").await, vec!["alice", "watcher"]);
}

#[tokio::test]
async fn tabs_on_two_instances_join_once_and_leave_once() {
    let redis = RedisServer::start().await;
    let a = spawn_app_with(with_presence(settings(Some(&redis)), 400)).await;
    let b = spawn_app_with(with_presence(settings(Some(&redis)), 400)).await;
    let watcher = a.token_with("watcher", &["room:*"], &[]).await;
    let alice = a.token_with("alice", &["room:*"], &[]).await;
    let (mut watching, _) = a.open_topics(&watcher, &["room:7"], None).await;
    arrived(&a, "room:7", "watcher").await;
    // One tab on each instance, a second on b: one arrival.
    let (on_a, _) = a.open_topics(&alice, &["room:7"], None).await;
    let (on_b, _) = b.open_topics(&alice, &["room:7"], None).await;
    let (on_b_too, _) = b.open_topics(&alice, &["room:7"], None).await;
    assert_eq!(
        next_presence(&mut watching).await,
        change("stream.joined", "alice", "opened")
    );
    assert_eq!(present(&b, "room:7").await, vec!["alice", "watcher"]);
    // The tab on a closes: she is still here through b.
    drop(on_a);
    drop(on_b);
    watching.expect_no_event(Duration::from_millis(1_000)).await;
    assert_eq!(present(&a, "room:7").await, vec!["alice", "watcher"]);
    // Her last tab closes, and she moves to a within the grace window (a reconnection
    // landing elsewhere): nothing.
    drop(on_b_too);
    let (back, _) = a.open_topics(&alice, &["room:7"], None).await;
    watching.expect_no_event(Duration::from_millis(1_000)).await;
    drop(back);
    assert_eq!(
        next_presence(&mut watching).await,
        change("stream.left", "alice", "closed")
    );
    watching.expect_no_event(Duration::from_millis(600)).await;
    assert_eq!(present(&b, "room:7").await, vec!["watcher"]);
    let joins = a.metric_value("presence_joins_total").await.unwrap_or(0.0)
        + b.metric_value("presence_joins_total").await.unwrap_or(0.0);
    assert_eq!(joins, 2.0, "watcher and alice, once each");
}

#[tokio::test]
async fn the_users_of_a_killed_instance_leave_within_the_ttl() {
    let redis = RedisServer::start().await;
    let env = [
        ("PRESENCE_EVENTS", "room:*"),
        ("PRESENCE_TTL_SECS", "2"),
        ("PRESENCE_GRACE_MS", "200"),
    ];
    let doomed = BackendProcess::start(Some(&redis), &env).await;
    let survivor = spawn_app_with(with_presence(settings(Some(&redis)), 200)).await;
    let on_doomed = Api::new(doomed.address.clone());
    let watcher = survivor.token_with("watcher", &["room:*"], &[]).await;
    let (mut watching, _) = survivor.open_topics(&watcher, &["room:1"], None).await;
    arrived(&survivor, "room:1", "watcher").await;
    let alice = on_doomed.token_with("alice", &["room:*"], &[]).await;
    let bob = on_doomed.token_with("bob", &["room:*"], &[]).await;
    let _alice = on_doomed.open_topics(&alice, &["room:1"], None).await;
    let _bob_there = on_doomed.open_topics(&bob, &["room:1"], None).await;
    // Bob has a tab on the survivor too: he stays.
    let _bob_here = survivor.open_topics(&bob, &["room:1"], None).await;
    let mut joined = vec![
        next_presence(&mut watching).await,
        next_presence(&mut watching).await,
    ];
    joined.sort();
    assert_eq!(
        joined,
        vec![
            change("stream.joined", "alice", "opened"),
            change("stream.joined", "bob", "opened")
        ]
    );

    drop(doomed); // SIGKILL: no goodbye.
    let left = tokio::time::timeout(Duration::from_secs(6), next_presence(&mut watching))
        .await
        .expect("a departure within the TTL (and a sweep's margin)");
    assert_eq!(left, change("stream.left", "alice", "timeout"));
    assert_eq!(present(&survivor, "room:1").await, vec!["bob", "watcher"]);
    watching.expect_no_event(Duration::from_millis(1_500)).await;
    assert!(
        survivor
            .metric_value("presence_sweeps_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn presence_is_rebuilt_after_redis_loses_it() {
    let redis = RedisServer::start().await;
    let app = spawn_app_with(with_presence(settings(Some(&redis)), 200)).await;
    let alice = app.token_with("alice", &["room:*", "doc:*"], &[]).await;
    let _tab = app.open_topics(&alice, &["room:1", "doc:1"], None).await;
    eventually("alice present", PATIENCE, || async {
        (present(&app, "doc:1").await == ["alice"]).then_some(())
    })
    .await;
    redis.command(&["FLUSHALL"]).await.expect("FLUSHALL runs");
    // Within the TTL (2 s here), from the streams still open.
    eventually("presence rebuilt", Duration::from_secs(4), || async {
        (present(&app, "doc:1").await == ["alice"] && present(&app, "room:1").await == ["alice"])
            .then_some(())
    })
    .await;
    assert!(
        app.metric_value("presence_resyncs_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn presence_on_a_cluster_counts_every_topic_on_its_own_master() {
    let cluster = RedisCluster::start(3, 0).await;
    let a = spawn_app_with(with_presence(settings_for(&cluster.url()), 200)).await;
    let b = spawn_app_with(with_presence(settings_for(&cluster.url()), 200)).await;
    let topics: Vec<String> = (0..12).map(|n| format!("doc:{n}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut streams = Vec::new();
    for (n, user) in ["alice", "bob", "carol"].iter().enumerate() {
        let token = a.token_with(user, &["doc:*"], &[]).await;
        let on = if n % 2 == 0 { &a } else { &b };
        streams.push(on.open_topics(&token, &names, None).await);
        // And a second tab of everyone on the other instance.
        let other = if n % 2 == 0 { &b } else { &a };
        streams.push(other.open_topics(&token, &names, None).await);
    }
    for topic in &names {
        let users = eventually("three in each topic", PATIENCE, || async {
            let users = present(&a, topic).await;
            (users.len() == 3).then_some(users)
        })
        .await;
        assert_eq!(users, vec!["alice", "bob", "carol"], "{topic}");
    }
    drop(streams);
    for topic in &names {
        eventually("everyone gone", PATIENCE, || async {
            present(&b, topic).await.is_empty().then_some(())
        })
        .await;
    }
}
