//! The event stream speaks the SSE protocol the browser expects, and only to its owner.

use std::time::Duration;

use backend::auth::Claims;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_starts_with_retry_then_carries_named_events_with_ids() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let response = app
        .client
        .get(app.url("/api/events"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("stream request");
    assert_eq!(response.status(), 200);
    let mut stream = SseStream::new(response);
    assert_eq!(stream.headers["content-type"], "text/event-stream");
    assert_eq!(stream.headers["cache-control"], "no-cache");
    assert_eq!(stream.headers["x-accel-buffering"], "no");

    let first = stream
        .next_frame_within(PATIENCE)
        .await
        .flatten()
        .expect("a first frame");
    assert_eq!(first.retry, Some(2000), "retry: comes first");
    let opened = stream.next_event().await;
    assert_eq!(opened.event.as_deref(), Some("stream.opened"));
    assert_eq!(
        opened.id,
        Some(format!("0-0.0-0.{:016x}", events::owner_tag("alice"))),
        "the opening frame carries the cursor: no history yet"
    );
    assert_eq!(opened.json()["data"]["serverId"], app.server_id.as_str());

    let accepted = app
        .publish("alice", "orders.shipped", json!({"orderId": 7}))
        .await;
    assert_eq!(accepted["id"], 1);

    let event = stream.next_event().await;
    assert_eq!(event.event.as_deref(), Some("orders.shipped"));
    let epoch = accepted["epoch"].as_u64().expect("an epoch");
    assert_eq!(
        event.id,
        Some(format!("{epoch}-1.0-0.{:016x}", events::owner_tag("alice"))),
        "the cursor after this event"
    );
    let envelope = event.json();
    assert_eq!(envelope["userId"], "alice");
    assert_eq!(envelope["eventType"], "orders.shipped");
    assert_eq!(envelope["data"], json!({"orderId": 7}));
    assert_eq!(envelope["serverId"], app.server_id.as_str());
    assert!(
        envelope["publishedAt"]
            .as_u64()
            .is_some_and(|t| t > 1_700_000_000_000)
    );

    app.publish("alice", "orders.shipped", json!({"orderId": 8}))
        .await;
    let second = stream.next_event().await;
    assert_eq!(
        second.id,
        Some(format!("{epoch}-2.0-0.{:016x}", events::owner_tag("alice"))),
        "ids count up per user"
    );
    assert_eq!(second.json()["id"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_gets_keep_alive_comments() {
    let mut settings = settings(None);
    settings.keep_alive_secs = 1;
    let app = spawn_app_with(settings).await;
    let token = app.token("alice").await;
    let mut stream = app.open_stream(&token).await;

    // The first keep-alive may have gone out with the opening frames; wait for a later one.
    let mut comments = 0;
    while comments < 2 {
        let frame = stream
            .next_frame_within(Duration::from_secs(5))
            .await
            .flatten()
            .expect("a frame within the keep-alive interval");
        if frame.comment.is_some() && frame.data.is_none() {
            comments += 1;
        }
    }
    assert!(stream.raw.contains(": keep-alive\n\n"), "{}", stream.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_accepts_a_bearer_header_too() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let response = app
        .client
        .get(app.url("/api/events"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("stream request");
    assert_eq!(response.status(), 200);
    let mut stream = SseStream::new(response);
    assert_eq!(
        stream.next_event().await.event.as_deref(),
        Some("stream.opened")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refuses_missing_forged_and_expired_tokens() {
    let app = spawn_app(None).await;
    let now = epoch_secs();
    let claims = |exp| Claims {
        sub: "alice".into(),
        exp,
        iat: now,
        ..Default::default()
    };
    let forged = sign(
        "some-other-secret-some-other-secret-0000",
        &claims(now + 600),
    );
    let expired = sign(JWT_SECRET, &claims(now - 600));

    let valid = app.token("alice").await;
    for (case, query, token) in [
        ("missing", String::new(), None),
        ("empty", String::new(), Some("")),
        ("garbage", String::new(), Some("not-a-jwt")),
        ("forged", String::new(), Some(forged.as_str())),
        ("expired", String::new(), Some(expired.as_str())),
        // Never a credential in the URL, not even a valid one.
        ("token in the URL", format!("?token={valid}"), None),
        (
            "unknown ticket",
            "?ticket=0123456789abcdef0123456789abcdef".into(),
            None,
        ),
    ] {
        let response = app.get(&format!("/api/events{query}"), token).await;
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{case}"
        );
        let body: Value = response.json().await.expect("error body");
        assert_eq!(body["error"]["code"], "unauthorized", "{case}");
        assert!(body["error"]["message"].is_string(), "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let app = spawn_app(None).await;
    let token = app.token("alice").await;
    let mut stream = app.open_stream(&token).await;
    // Stop and read concurrently: the stream must end while the instance stops.
    let stopping = tokio::spawn(app.stop());
    stream.expect_end().await;
    stopping
        .await
        .expect("the instance stops in time and cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_unknown_routes() {
    let app = spawn_app(None).await;
    let health: Value = app
        .get("/healthz", None)
        .await
        .json()
        .await
        .expect("health JSON");
    assert_eq!(health, json!({"status": "ok", "serverId": app.server_id}));

    let missing = app.get("/api/nothing-here", None).await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "not_found");
}
