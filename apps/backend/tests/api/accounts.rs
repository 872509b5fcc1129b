//! Bad input gets its status and the shared error body, and nothing is stored or published.

use std::time::Duration;

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
