//! Only publishers may publish, and only well-formed events.

use backend::auth::Claims;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_a_publisher_credential() {
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let user_token = app.token("alice").await;
    let publisher_token = sign(
        JWT_SECRET,
        &Claims {
            sub: "billing-service".into(),
            exp: epoch_secs() + 600,
            iat: epoch_secs(),
            publish: true,
            ..Default::default()
        },
    );
    let mut stream = app.open_stream(&user_token).await;
    let body = json!({"userId": "alice", "eventType": "invoices.paid", "data": {"amount": 3}});

    let refused = [
        ("no credential", None, 401, "unauthorized"),
        ("wrong key", Some("wrong-key"), 401, "unauthorized"),
        (
            "a user's token",
            Some(user_token.as_str()),
            403,
            "forbidden",
        ),
    ];
    for (case, credential, status, code) in refused {
        let response = app.post_json("/api/publish", credential, &body).await;
        assert_eq!(response.status(), status, "{case}");
        let error: Value = response.json().await.expect("error body");
        assert_eq!(error["error"]["code"], code, "{case}");
    }

    for credential in [PUBLISH_KEY, publisher_token.as_str()] {
        let response = app.post_json("/api/publish", Some(credential), &body).await;
        assert_eq!(response.status(), 202);
        let accepted: Value = response.json().await.expect("accepted body");
        assert_eq!(accepted["userId"], "alice");
        assert_eq!(accepted["serverId"], app.server_id.as_str());
    }
    let first = stream.next_event().await.json();
    let second = stream.next_event().await.json();
    assert_eq!((&first["id"], &second["id"]), (&json!(1), &json!(2)));
    assert_eq!(first["data"]["amount"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_publishes_are_refused_and_deliver_nothing() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let mut stream = app.open_stream(&token).await;

    for (case, body) in [
        (
            "reserved type",
            json!({"userId": "alice", "eventType": "stream.opened", "data": {}}),
        ),
        (
            "uppercase type",
            json!({"userId": "alice", "eventType": "Orders.Shipped", "data": {}}),
        ),
        (
            "one-segment type",
            json!({"userId": "alice", "eventType": "shipped", "data": {}}),
        ),
        (
            "bad user id",
            json!({"userId": "a b", "eventType": "orders.shipped", "data": {}}),
        ),
        (
            "unknown field",
            json!({"userId": "alice", "eventType": "orders.shipped", "to": "all"}),
        ),
    ] {
        let response = app
            .post_json("/api/publish", Some(PUBLISH_KEY), &body)
            .await;
        assert_eq!(response.status(), 400, "{case}");
    }
    stream
        .expect_no_event(std::time::Duration::from_millis(300))
        .await;

    // Without data, an event still goes out, with `data: null`.
    let response = app
        .post_json(
            "/api/publish",
            Some(PUBLISH_KEY),
            &json!({"userId": "alice", "eventType": "pings.sent"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(stream.next_event().await.json()["data"], Value::Null);
}

/// With `PUBLISH_REPLICAS`, a publish the replicas did not acknowledge in time is in the
/// history already: its 503 says it may have been published and to retry with the same
/// key, and a stream that resumes from before it does get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_for_late_replicas_says_the_event_may_have_been_published() {
    let redis = RedisServer::start().await;
    let mut settings = settings(Some(&redis));
    // This Redis has no replica: none ever acknowledges.
    settings.publish_replicas = 1;
    let app = spawn_app_with(settings).await;
    let token = app.token("alice").await;
    let (_stream, opened) = app.open_stream_opened(&token, None).await;
    let cursor = opened.id.expect("the opening frame carries the cursor");
    let response = app
        .client
        .post(app.url("/api/publish"))
        .bearer_auth(PUBLISH_KEY)
        .header("idempotency-key", "late-replicas")
        .json(&json!({"userId": "alice", "eventType": "test.counted", "data": {"n": 1}}))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("an error body");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("may have been published") && message.contains("Idempotency-Key"),
        "{message}"
    );
    let mut resumed = app.resume_stream(&token, Some(&cursor)).await;
    assert_eq!(
        resumed.next_event().await.json()["data"]["n"],
        1,
        "it is in the history"
    );
}

/// Finding 2 of the correctness issue: a 503 can mean the write happened (Redis ran the
/// queued script once it caught up). With an idempotency key, the retry publishes
/// nothing and answers with the event that was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_with_the_same_idempotency_key_after_a_stalled_redis_delivers_once() {
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let mut stream = app.open_stream(&app.token("alice").await).await;
    let publish = |key: &str, n: u64| {
        app.client
            .post(app.url("/api/publish"))
            .bearer_auth(PUBLISH_KEY)
            .header("idempotency-key", key)
            .json(&json!({"userId": "alice", "eventType": "test.counted", "data": {"n": n}}))
            .send()
    };
    assert_eq!(publish("warm-up", 0).await.expect("answered").status(), 202);
    assert_eq!(stream.next_event().await.json()["data"]["n"], 0);

    redis.signal("STOP");
    let stalled = publish("retry-me", 1).await.expect("answered");
    redis.signal("CONT");
    assert_eq!(stalled.status(), 503, "no answer from Redis in time");
    let published = stream.next_event().await;
    assert_eq!(
        published.json()["data"]["n"],
        1,
        "Redis ran the write after all"
    );

    let retry = publish("retry-me", 1).await.expect("answered");
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let body: Value = retry.json().await.expect("the event");
    assert_eq!(
        body["id"],
        published.json()["id"],
        "the first publish's event"
    );
    assert_eq!(body["data"]["n"], 1);

    // Nothing was published twice: the next event is the next one.
    app.publish("alice", "test.counted", json!({"n": 2})).await;
    assert_eq!(stream.next_event().await.json()["data"]["n"], 2);

    let bad = publish("no spaces {allowed}", 3).await.expect("answered");
    assert_eq!(bad.status(), 400);
}

/// Finding 5 of the correctness issue: what a publisher sends in `data` is what
/// subscribers get, byte for byte (numbers that do not fit a float, exponents, key order,
/// spacing), live and replayed, through Redis and on a single node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_reaches_subscribers_byte_for_byte() {
    let data = r#"{"z": 18446744073709551616, "a":1e5,"big":123456789012345678901234567890,"f":0.10,"list":[ ]}"#;
    let body = format!(r#"{{"userId":"alice","eventType":"test.exact","data":{data}}}"#);
    let redis = RedisServer::start().await;
    for app in [spawn_app(Some(&redis)).await, spawn_app(None).await] {
        let token = app.token("alice").await;
        let mut live = app.open_stream(&token).await;
        app.publish("alice", "test.before", json!({})).await;
        let before = live.next_event().await.id.expect("an id");
        let response = app
            .client
            .post(app.url("/api/publish"))
            .bearer_auth(PUBLISH_KEY)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 202);
        let accepted = response.text().await.expect("body");
        assert!(accepted.contains(data), "the 202 body: {accepted}");

        let delivered = live.next_event().await;
        let text = delivered.data.as_deref().expect("data");
        assert!(text.contains(&format!(r#""data":{data}"#)), "live: {text}");

        let mut replayed = app.resume_stream(&token, Some(&before)).await;
        let replay = replayed.next_event().await;
        let text = replay.data.as_deref().expect("data");
        assert!(
            text.contains(&format!(r#""data":{data}"#)),
            "replayed: {text}"
        );
    }
}
