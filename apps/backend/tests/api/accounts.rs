//! Bad input gets its status and the shared error body, and nothing is stored or published.

use std::{collections::HashSet, time::Duration};

use serde_json::{Value, json};

use crate::helpers::*;

/// (case, raw body, expected status, expected error code)
fn bad_bodies() -> Vec<(&'static str, String, u16, &'static str)> {
    vec![
        (
            "malformed JSON",
            r#"{"name": "a", "balance": "#.into(),
            400,
            "malformed_json",
        ),
        ("empty body", String::new(), 400, "malformed_json"),
        ("not an object", "[1, 2]".into(), 400, "invalid_body"),
        (
            "missing name",
            r#"{"balance": 1}"#.into(),
            400,
            "invalid_body",
        ),
        (
            "missing balance",
            r#"{"name": "a"}"#.into(),
            400,
            "invalid_body",
        ),
        (
            "empty name",
            r#"{"name": "", "balance": 1}"#.into(),
            400,
            "validation_failed",
        ),
        (
            "blank name",
            r#"{"name": "   ", "balance": 1}"#.into(),
            400,
            "validation_failed",
        ),
        (
            "name of 101 characters",
            json!({"name": "n".repeat(101), "balance": 1}).to_string(),
            400,
            "validation_failed",
        ),
        (
            "negative balance",
            r#"{"name": "a", "balance": -1}"#.into(),
            400,
            "validation_failed",
        ),
        (
            "fractional balance",
            r#"{"name": "a", "balance": 1.5}"#.into(),
            400,
            "invalid_body",
        ),
        (
            "balance as text",
            r#"{"name": "a", "balance": "10"}"#.into(),
            400,
            "invalid_body",
        ),
        (
            "unknown field",
            r#"{"name": "a", "balance": 1, "owner": "bob"}"#.into(),
            400,
            "invalid_body",
        ),
        (
            "body over the limit",
            json!({"name": "a".repeat(100_000), "balance": 1}).to_string(),
            413,
            "payload_too_large",
        ),
    ]
}

async fn refuses_bad_input_and_stores_nothing(app: &TestApp) {
    let token = app.token("alice").await;
    let mut stream = app.open_stream(&token).await;

    for (case, body, status, code) in bad_bodies() {
        let response = app
            .client
            .post(app.url("/api/accounts"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request is sent");
        assert_eq!(response.status(), status, "{case}");
        let error: Value = response.json().await.expect("error body is JSON");
        assert_eq!(error["error"]["code"], code, "{case}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{case}"
        );
    }

    let good = json!({"name": "ok", "balance": 1});
    for (case, token) in [("no token", None), ("bad token", Some("nope"))] {
        let response = app.post_json("/api/accounts", token, &good).await;
        assert_eq!(response.status(), 401, "{case}");
        let error: Value = response.json().await.expect("error body is JSON");
        assert_eq!(error["error"]["code"], "unauthorized", "{case}");
    }

    let accounts = app.list("/api/accounts", &token).await;
    assert!(accounts.is_empty(), "nothing stored: {accounts:?}");
    let snapshots = app.list("/api/snapshots", &token).await;
    assert!(snapshots.is_empty(), "no snapshots: {snapshots:?}");
    stream.expect_no_event(Duration::from_millis(300)).await;

    // The same user can still create a valid account afterwards, and it is the only one.
    let account = app.create_account(&token, "  Savings  ", 0).await;
    assert_eq!(account["name"], "Savings", "the name is trimmed");
    assert_eq!(account["userId"], "alice");
    assert_eq!(account["balance"], 0);
    assert!(account["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(
        account["createdAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(stream.next_event().await.json()["data"]["snapshotCount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_account_input_is_refused_and_nothing_is_stored_with_redis() {
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    refuses_bad_input_and_stores_nothing(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_account_input_is_refused_and_nothing_is_stored_on_a_single_node() {
    let app = spawn_app(None).await;
    refuses_bad_input_and_stores_nothing(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_validates_the_user_id() {
    let app = spawn_app(None).await;
    for (case, body, code) in [
        ("empty", json!({"userId": ""}), "validation_failed"),
        ("spaces", json!({"userId": "a b"}), "validation_failed"),
        ("missing", json!({}), "invalid_body"),
        (
            "unknown field",
            json!({"userId": "a", "admin": true}),
            "invalid_body",
        ),
    ] {
        let response = app.post_json("/api/auth/token", None, &body).await;
        assert_eq!(response.status(), 400, "{case}");
        let error: Value = response.json().await.expect("error body");
        assert_eq!(error["error"]["code"], code, "{case}");
    }
    let ok: Value = app
        .post_json("/api/auth/token", None, &json!({"userId": "alice"}))
        .await
        .json()
        .await
        .expect("token body");
    assert!(ok["token"].is_string());
    assert!(ok["expiresAt"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_mints_no_tokens_but_accepts_the_host_applications() {
    let mut settings = settings(None);
    settings.dev_tokens = false;
    let app = spawn_app_with(settings).await;
    let response = app
        .post_json("/api/auth/token", None, &json!({"userId": "alice"}))
        .await;
    assert_eq!(response.status(), 403);
    let error: Value = response.json().await.expect("error body");
    assert_eq!(error["error"]["code"], "forbidden");

    // A token the host application signed with the shared secret works.
    let token = sign(
        JWT_SECRET,
        &backend::auth::Claims {
            sub: "alice".into(),
            exp: epoch_secs() + 600,
            iat: epoch_secs(),
            ..Default::default()
        },
    );
    let mut stream = app.open_stream(&token).await;
    app.create_account(&token, "Savings", 1).await;
    assert_eq!(
        stream.next_event().await.json()["eventType"],
        "snapshots.generated"
    );
}

/// Correctness finding 2, for accounts: after a 503 the account may exist all the same
/// (Redis ran the write once it caught up). A retry with the same `Idempotency-Key`
/// creates nothing more, answers with that account, and the user still gets its
/// snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_retry_with_the_same_idempotency_key_creates_it_once() {
    let redis = RedisServer::start().await;
    let app = spawn_app(Some(&redis)).await;
    let token = app.token("alice").await;
    let mut stream = app.open_stream(&token).await;
    let create = |key: &'static str| {
        app.client
            .post(app.url("/api/accounts"))
            .bearer_auth(&token)
            .header("idempotency-key", key)
            .json(&json!({"name": "Savings", "balance": 100}))
            .send()
    };

    // Loads the script into Redis, as a running system would have.
    assert_eq!(create("warm-up").await.expect("answered").status(), 201);
    let warm_up = stream.next_event().await;
    assert_eq!(warm_up.json()["data"]["snapshotCount"], 1);

    redis.signal("STOP");
    let stalled = create("open-savings").await.expect("answered");
    redis.signal("CONT");
    assert_eq!(stalled.status(), 503, "no answer from Redis in time");

    let retry = create("open-savings").await.expect("answered");
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let account: Value = retry.json().await.expect("the account");
    let accounts = app.list("/api/accounts", &token).await;
    assert_eq!(accounts.len(), 2, "created once: {accounts:?}");
    assert_eq!(accounts[1]["id"], account["id"], "the account Redis stored");

    let generated = stream.next_event().await;
    assert_eq!(generated.event.as_deref(), Some("snapshots.generated"));
    assert_eq!(generated.json()["data"]["snapshotCount"], 2);

    assert_eq!(
        create("open-checking").await.expect("answered").status(),
        201
    );
    assert_eq!(app.list("/api/accounts", &token).await.len(), 3);
    assert_eq!(stream.next_event().await.json()["data"]["snapshotCount"], 3);

    // Another replay asks for snapshots again; a generation that adds nothing new is
    // neither kept nor sent: 1 + 2 + 3 snapshots, not 3 more copies.
    let again = create("open-savings").await.expect("answered");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    stream.expect_no_event(Duration::from_millis(500)).await;
    assert_eq!(app.list("/api/snapshots", &token).await.len(), 6);
}

/// Correctness finding 7: with account creations racing through two instances, a user's
/// `snapshots.generated` counts never go backwards (nor repeat), and the last one counts
/// every account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_counts_never_go_backwards_across_instances() {
    const ACCOUNTS: usize = 80;
    let redis = RedisServer::start().await;
    let a = spawn_app(Some(&redis)).await;
    let b = spawn_app(Some(&redis)).await;
    let token = a.token("alice").await;
    let mut stream = a.open_stream(&token).await;

    let creations = (0..ACCOUNTS).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let body = json!({"name": format!("account {i}"), "balance": i});
        let token = &token;
        async move { app.post_json("/api/accounts", Some(token), &body).await }
    });
    for response in futures_util::future::join_all(creations).await {
        assert_eq!(response.status(), 201);
    }

    let mut counts = Vec::new();
    while counts.last() != Some(&(ACCOUNTS as u64)) {
        let frame = stream.next_event().await;
        assert_eq!(frame.event.as_deref(), Some("snapshots.generated"));
        let count = frame.json()["data"]["snapshotCount"]
            .as_u64()
            .expect("a count");
        counts.push(count);
    }
    assert!(
        counts.windows(2).all(|pair| pair[0] < pair[1]),
        "counts only grow: {counts:?}"
    );
    stream.expect_no_event(Duration::from_millis(500)).await;

    // And the stored snapshots: the newest generation is on top, whole, not an older one
    // that finished later.
    let snapshots = a.list("/api/snapshots", &token).await;
    let newest = &snapshots[..ACCOUNTS];
    let taken: HashSet<_> = newest.iter().map(|s| s["takenAt"].clone()).collect();
    let accounts: HashSet<_> = newest.iter().map(|s| s["accountId"].clone()).collect();
    assert_eq!(
        (taken.len(), accounts.len()),
        (1, ACCOUNTS),
        "one generation of every account on top"
    );
}
