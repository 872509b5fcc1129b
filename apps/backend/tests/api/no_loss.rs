//! No event lost: resume from history, and survival of backend and Redis failures.
//! Each test is bounded in time and runs against real redis-server processes.

use std::{collections::HashSet, time::Duration};

use serde_json::json;

use crate::helpers::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// Asserts that `received` holds exactly `expected`, once each, in order, with
/// contiguous ids.
fn assert_exactly_in_order(received: &[Received], expected: &[u64], who: &str) {
    assert_eq!(
        counted(received),
        expected,
        "{who}: every event once, in order"
    );
    let ids: Vec<u64> = received
        .iter()
        .filter(|r| r.event == "test.counted")
        .filter_map(|r| r.envelope["id"].as_u64())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "{who}: contiguous ids: {ids:?}"
    );
}

/// Clients of `users` open their streams on `first` and fail over to `second`; each
/// user gets `total` events published through `second` while `disrupt` runs against
/// `first`. Every client must end with every event once, in order, having reconnected.
async fn hand_over<F: std::future::Future<Output = ()>>(
    first: &str,
    second: &TestApp,
    users: &[&str],
    total: u64,
    pause: Duration,
    disrupt: F,
) {
    let mut clients = Vec::new();
    for user in users {
        let token = second.token(user).await;
        let addresses = vec![first.to_string(), second.address.clone()];
        clients.push(tokio::spawn(follow(addresses, token, DEADLINE, move |r| {
            counted(r).len() >= total as usize
        })));
    }
    let connected = users.len() as f64;
    eventually(
        "every client connects to the first instance",
        PATIENCE,
        || async {
            (metric_value(first, "sse_streams_open").await == Some(connected)).then_some(())
        },
    )
    .await;
    assert_eq!(
        second.hub.stream_count(),
        0,
        "every client starts on the first instance"
    );

    let publishers: Vec<_> = users
        .iter()
        .map(|user| {
            let address = second.address.clone();
            tokio::spawn(publish_counted(
                vec![address],
                user.to_string(),
                1,
                total,
                pause,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    disrupt.await;

    let expected: Vec<u64> = (1..=total).collect();
    for publisher in publishers {
        assert_eq!(publisher.await.expect("publisher"), expected);
    }
    for (user, client) in users.iter().zip(clients) {
        let (received, connections) = client.await.expect("client");
        assert!(connections >= 2, "{user} reconnected");
        assert_exactly_in_order(&received, &expected, user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_with_its_last_id_gets_exactly_what_it_missed() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let token = a.token("alice").await;

    let mut stream = a.open_stream(&token).await;
    for n in 1..=3 {
        a.publish("alice", "test.counted", json!({ "n": n })).await;
    }
    let mut last_id = None;
    for n in 1..=3 {
        let event = stream.next_event().await;
        assert_eq!(event.json()["data"]["n"], n);
        last_id = event.id;
    }
    drop(stream);

    for n in 4..=7 {
        b.publish("alice", "test.counted", json!({ "n": n })).await;
    }
    // Resumed on the other instance, with the header a browser sends.
    let mut resumed = b.resume_stream(&token, last_id.as_deref()).await;
    for n in 4..=7 {
        let event = resumed.next_event().await;
        assert_eq!(event.event.as_deref(), Some("test.counted"));
        assert_eq!(event.json()["data"]["n"], n, "exactly k+1..k+m, in order");
    }
    // Live events continue after the replay, without a gap or a duplicate at the seam.
    a.publish("alice", "test.counted", json!({ "n": 8 })).await;
    assert_eq!(resumed.next_event().await.json()["data"]["n"], 8);
    resumed.expect_no_event(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_backend_dies_its_clients_resume_on_another_and_miss_nothing() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let first = a.address.clone();
    let users = ["u1", "u2", "u3"];
    hand_over(&first, &b, &users, 60, Duration::from_millis(10), a.kill()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_accepted_event_and_readiness_reflects_it() {
    let mut redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let total = 40;
    let token = a.token("alice").await;
    let addresses = vec![a.address.clone(), b.address.clone()];
    let client = tokio::spawn(follow(addresses.clone(), token, DEADLINE, move |r| {
        counted(r).contains(&total)
    }));
    eventually("the client connects", PATIENCE, || async {
        (a.hub.stream_count() == 1).then_some(())
    })
    .await;
    assert_eq!(a.get("/readyz", None).await.status(), 200);

    let publisher = tokio::spawn(publish_counted(
        addresses,
        "alice".into(),
        1,
        total,
        Duration::from_millis(50),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    // Readiness turns false once the subscription probe stops coming back.
    assert!(
        readiness_becomes(&a.address, 503).await,
        "/readyz answers 503 while Redis is away"
    );
    let refused = a
        .post_json(
            "/api/publish",
            Some(PUBLISH_KEY),
            &json!({"userId": "alice", "eventType": "test.probe", "data": {}}),
        )
        .await;
    assert_eq!(
        refused.status(),
        503,
        "publishing during the outage is refused, not lost"
    );
    redis.restart().await;

    let accepted = publisher.await.expect("publisher");
    let (received, _) = client.await.expect("client");
    let got: HashSet<u64> = counted(&received).into_iter().collect();
    let missing: Vec<_> = accepted.iter().filter(|n| !got.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "accepted but never received: {missing:?}"
    );
    // Redis came back empty: the client was told its history restarted.
    assert!(received.iter().any(|r| r.event == "stream.resync"));

    assert!(
        readiness_becomes(&a.address, 200).await,
        "/readyz answers 200 once Redis is back"
    );
}

/// A stalled client wakes up: it reads the `test.counted` events that reached it until
/// the stream ends, then resumes from its last id until it has the event with id
/// `last`. Returns the ids it got, in order.
async fn read_then_resume(
    app: &TestApp,
    mut stalled: SseStream,
    token: &str,
    last: u64,
) -> Vec<u64> {
    let mut received = Vec::new();
    let mut last_id = None;
    while let Some(Some(frame)) = stalled.next_frame_within(PATIENCE).await {
        if frame.event.as_deref() == Some("test.counted") {
            received.push(frame.json()["id"].as_u64().expect("an id"));
            last_id = frame.id;
        }
    }
    let mut resumed = app.resume_stream(token, last_id.as_deref()).await;
    while received.last() != Some(&last) {
        let event = resumed.next_event().await;
        received.push(event.json()["id"].as_u64().expect("an id"));
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_then_resumes_with_nothing_missing() {
    let redis = RedisServer::start().await;
    let mut settings = settings(Some(&redis));
    settings.stream_queue_size = 8;
    settings.max_event_bytes = 64 * 1024;
    let a = spawn_app_with(settings).await;
    let token = a.token("alice").await;
    let stalled = a.open_stream(&token).await;

    // Enough data to fill the socket buffers on both sides, then the 8-event queue.
    let total: u64 = 600;
    let padding = "x".repeat(32 * 1024);
    for n in 1..=total {
        a.publish(
            "alice",
            "test.counted",
            json!({ "n": n, "padding": padding }),
        )
        .await;
        if a.metric_value("sse_slow_consumer_disconnects_total").await > Some(0.0) {
            break;
        }
    }
    assert_eq!(
        a.metric_value("sse_slow_consumer_disconnects_total").await,
        Some(1.0),
        "the stalled stream was closed"
    );
    assert_eq!(
        a.hub.stream_count(),
        0,
        "and removed: its queue no longer holds memory"
    );
    let published = a.publish("alice", "test.counted", json!({ "n": 0 })).await["id"]
        .as_u64()
        .expect("an id");

    let received = read_then_resume(&a, stalled, &token, published).await;
    let expected: Vec<u64> = (1..=published).collect();
    assert_eq!(received, expected, "every event once, in order");
}

/// A stream of a user new to the instance opens, and an event is published to the user
/// at once: most likely before the instance's subscription to the user's channel is
/// confirmed (subscriptions go out in batches, one per 50 ms). Each stream still gets its
/// one event: nothing later would reveal a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_as_its_users_first_stream_opens_arrives() {
    const USERS: usize = 40;
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let mut tokens = Vec::new();
    for u in 0..USERS {
        tokens.push(app.token(&format!("window-{u}")).await);
    }
    let streams = futures_util::future::join_all(tokens.iter().enumerate().map(|(u, token)| {
        let app = &app;
        async move {
            let (stream, _) = app.api.open_stream_served(token, None).await;
            app.publish(&format!("window-{u}"), "test.counted", json!({ "u": u }))
                .await;
            stream
        }
    }))
    .await;
    for (u, mut stream) in streams.into_iter().enumerate() {
        let event = stream.next_event().await;
        assert_eq!(event.json()["data"]["u"], u, "user {u}: its one event");
    }
}

/// The same with broadcasts, which each worker's dispatcher writes straight to its
/// streams: the stalled stream is cut off, a stream reading beside it gets every
/// broadcast, and the stalled one resumes with nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_among_broadcast_readers_is_cut_off_alone_and_resumes_whole() {
    let redis = RedisServer::start().await;
    let mut settings = settings(Some(&redis));
    settings.stream_queue_size = 8;
    settings.max_event_bytes = 64 * 1024;
    let a = spawn_app_with(settings).await;
    let alice = a.token("alice").await;
    let stalled = a.open_stream(&alice).await;
    let mut reading = a.open_stream(&a.token("bob").await).await;
    let reader = tokio::spawn(async move {
        let mut ids = Vec::new();
        loop {
            let event = reading.next_event().await;
            let id = event.json()["id"].as_u64().expect("an id");
            ids.push(id);
            if event.json()["data"]["last"] == true {
                return ids;
            }
        }
    });

    let padding = "x".repeat(32 * 1024);
    let broadcast = |n: u64, last: bool| {
        json!({"broadcast": true, "eventType": "test.counted",
               "data": {"n": n, "padding": padding, "last": last}})
    };
    let mut published = 0;
    for n in 1..=600 {
        let response = a
            .post_json("/api/publish", Some(PUBLISH_KEY), &broadcast(n, false))
            .await;
        assert_eq!(response.status(), 202);
        published = n;
        if a.metric_value("sse_slow_consumer_disconnects_total").await > Some(0.0) {
            break;
        }
    }
    assert_eq!(
        a.metric_value("sse_slow_consumer_disconnects_total").await,
        Some(1.0),
        "the stalled stream, and only it, was closed"
    );
    let last = a
        .post_json("/api/publish", Some(PUBLISH_KEY), &broadcast(0, true))
        .await;
    assert_eq!(last.status(), 202);
    let last: u64 = last.json::<serde_json::Value>().await.expect("JSON")["id"]
        .as_u64()
        .expect("an id");
    assert!(last > published);

    let expected: Vec<u64> = (1..=last).collect();
    let read = tokio::time::timeout(PATIENCE * 4, reader)
        .await
        .expect("the reading stream keeps up")
        .expect("the reader finishes");
    assert_eq!(
        read, expected,
        "the reading stream: every broadcast once, in order"
    );

    let received = read_then_resume(&a, stalled, &alice, last).await;
    assert_eq!(
        received, expected,
        "the stalled stream, resumed: every broadcast once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_sent_sigterm_drains_its_clients_to_another_without_loss() {
    let redis = RedisServer::start().await;
    // A is the real binary, so the signal handling in main is under test too.
    let a = BackendProcess::start(Some(&redis), &[("DRAIN_SECS", "1")]).await;
    let b = spawn_app(Some(&redis)).await;
    let first = a.address.clone();
    let users = ["d1", "d2", "d3", "d4"];
    let drain = async move {
        a.terminate();
        assert!(
            a.wait(Duration::from_secs(15)).await,
            "A exits cleanly after draining"
        );
    };
    hand_over(&first, &b, &users, 50, Duration::from_millis(20), drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_history_was_lost_is_told_to_resync() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let token = a.token("alice").await;
    let mut stream = a.open_stream(&token).await;
    a.publish("alice", "test.counted", json!({ "n": 1 })).await;
    let last_id = stream.next_event().await.id;
    drop(stream);

    assert_eq!(redis.command(&["FLUSHALL"]).await.expect("FLUSHALL"), "+OK");
    a.publish("alice", "test.counted", json!({ "n": 2 })).await;

    let mut resumed = a.resume_stream(&token, last_id.as_deref()).await;
    let resync = resumed.next_event().await;
    assert_eq!(resync.event.as_deref(), Some("stream.resync"));
    assert_eq!(resync.json()["data"]["scope"], "user");
    // What the new history holds follows the resync.
    assert_eq!(resumed.next_event().await.json()["data"]["n"], 2);

    // An id the server never wrote is a resync too, not an error.
    let mut odd = a.resume_stream(&token, Some("not-a-cursor")).await;
    assert_eq!(
        odd.next_event().await.event.as_deref(),
        Some("stream.resync")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_through_several_instances_yield_one_total_order() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let token = a.token("alice").await;
    let per_publisher = 30;
    let publishers = 4;
    let total = per_publisher * publishers;
    let mut clients = Vec::new();
    for address in [&a.address, &b.address] {
        clients.push(tokio::spawn(follow(
            vec![address.clone()],
            token.clone(),
            DEADLINE,
            move |r| counted(r).len() >= total as usize,
        )));
    }
    eventually("both clients connect", PATIENCE, || async {
        (a.hub.stream_count() == 1 && b.hub.stream_count() == 1).then_some(())
    })
    .await;
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            tokio::spawn(publish_counted(
                vec![a.address.clone(), b.address.clone()],
                "alice".into(),
                p * 1000,
                per_publisher,
                Duration::ZERO,
            ))
        })
        .collect();
    for task in tasks {
        task.await.expect("publisher");
    }
    let (on_a, _) = clients.remove(0).await.expect("client on A");
    let (on_b, _) = clients.remove(0).await.expect("client on B");
    let order_a = counted(&on_a);
    assert_eq!(order_a.len(), total as usize);
    assert_eq!(
        order_a,
        counted(&on_b),
        "both clients see the same total order"
    );
    let ids: Vec<u64> = on_a
        .iter()
        .filter_map(|r| r.envelope["id"].as_u64())
        .collect();
    assert_eq!(
        ids,
        (1..=total).collect::<Vec<_>>(),
        "contiguous sequence numbers"
    );
    // Each publisher's own events keep their order within the total order.
    for p in 0..publishers {
        let own: Vec<u64> = order_a.iter().copied().filter(|n| n / 1000 == p).collect();
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "publisher {p} in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_every_stream_and_are_resumable() {
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let alice = a.token("alice").await;
    let bob = b.token("bob").await;
    let mut alice_stream = a.open_stream(&alice).await;
    let mut bob_stream = b.open_stream(&bob).await;

    let broadcast =
        |n: u64| json!({"broadcast": true, "eventType": "system.announced", "data": {"n": n}});
    let accepted = a
        .post_json("/api/publish", Some(PUBLISH_KEY), &broadcast(1))
        .await;
    assert_eq!(accepted.status(), 202);
    let last_alice = alice_stream.next_event().await;
    assert_eq!(last_alice.json()["data"]["n"], 1);
    assert_eq!(last_alice.json()["userId"], "*");
    assert_eq!(bob_stream.next_event().await.json()["data"]["n"], 1);
    drop(alice_stream);

    b.post_json("/api/publish", Some(PUBLISH_KEY), &broadcast(2))
        .await;
    b.publish("alice", "test.counted", json!({"n": 3})).await;
    let mut resumed = b.resume_stream(&alice, last_alice.id.as_deref()).await;
    let mut missed = vec![
        resumed.next_event().await.json()["data"]["n"].as_u64(),
        resumed.next_event().await.json()["data"]["n"].as_u64(),
    ];
    missed.sort();
    assert_eq!(missed, [Some(2), Some(3)], "both histories replayed");

    for (case, body) in [
        (
            "both",
            json!({"broadcast": true, "userId": "a", "eventType": "a.b"}),
        ),
        ("neither", json!({"eventType": "a.b"})),
    ] {
        let response = a.post_json("/api/publish", Some(PUBLISH_KEY), &body).await;
        assert_eq!(response.status(), 400, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_resumes_from_its_in_memory_history() {
    let a = spawn_app(None).await;
    let token = a.token("alice").await;
    let mut stream = a.open_stream(&token).await;
    a.publish("alice", "test.counted", json!({"n": 1})).await;
    let last_id = stream.next_event().await.id;
    drop(stream);
    a.publish("alice", "test.counted", json!({"n": 2})).await;
    a.publish("alice", "test.counted", json!({"n": 3})).await;
    let mut resumed = a.resume_stream(&token, last_id.as_deref()).await;
    assert_eq!(resumed.next_event().await.json()["data"]["n"], 2);
    assert_eq!(resumed.next_event().await.json()["data"]["n"], 3);
    assert_eq!(a.get("/readyz", None).await.status(), 200, "always ready");
}
